//! The file header shared by every podcache file, and the attach protocol.
//!
//! Byte map (all fields little-endian, each in its own 64-bit word so that it can be read with
//! one atomic load; the first 256 bytes of every file):
//!
//! | offset | word | field        | written                                    |
//! |-------:|-----:|--------------|--------------------------------------------|
//! | 0x00   | 0    | magic        | [`CREATING`] first; [`MAGIC`] last, Release |
//! | 0x08   | 1    | version, kind| at creation: low u32 version, high u32 kind|
//! | 0x10   | 2    | file_size    | at creation: total bytes of the file       |
//! | 0x18   | 3    | params_hash  | at creation: FNV-1a of kind + params       |
//! | 0x20   | 4    | created_ns   | at creation: unix time in ns               |
//! | 0x28   | 5    | header_crc   | at creation: crc32 of words 0..5 and 8..16 |
//! | 0x30   | 6    | epoch        | +1 by every writer that attaches           |
//! | 0x38   | 7    | ready        | [`READY`], just before the real magic      |
//! | 0x40   | 8-15 | params       | kind-specific layout parameters            |
//! | 0x80   | 16   | writer_state | [`WRITER_RUNNING`] / [`WRITER_CLOSED`] / [`RETIRED`] |
//! | 0x88   | 17-31| reserved     | zero                                       |
//!
//! The offsets of `magic`, `version` and `ready` are frozen for every future version, so any
//! reader can tell "not yet initialised" from "a version I do not understand".
//!
//! ## Creation states (docs/design.md §2)
//!
//! A creator's first store into a file is [`CREATING`] at offset 0 (into an empty file, before
//! it is extended). Every other field follows; the table or ring is initialised; then
//! `publish_ready` stores `ready` and, last, the real [`MAGIC`] with Release. So:
//!
//! * magic [`CREATING`]: a creation in progress or one that died: not ready; a writer may
//!   initialise it again (no reader ever mapped it).
//! * magic [`MAGIC`]: the creator finished. `ready` must then be [`READY`]: a real magic
//!   without it is damage (a flipped word), reported as corrupt, never wiped.
//! * anything else: not a podcache file (of this version family); a writer never touches it.

use crate::sync::{load_acquire, AtomicU64, Ordering};

#[cfg(feature = "write")]
use crate::layout::HEADER_WORDS;
pub use crate::layout::{HEADER_BYTES, PARAM_WORDS};
pub(crate) use crate::layout::{
    W_CREATED_NS, W_EPOCH, W_FILE_SIZE, W_HEADER_CRC, W_MAGIC, W_PARAMS, W_PARAMS_HASH, W_READY, W_VERSION_KIND,
    W_WRITER_STATE,
};
/// `b"PODCACHE"` read as a little-endian u64: a complete podcache file.
pub const MAGIC: u64 = u64::from_le_bytes(*b"PODCACHE");
/// `b"PODCREAT"` read as a little-endian u64: the first word a creator writes, replaced by
/// [`MAGIC`] as the last store of creation. Only a file that is empty or starts with it may be
/// (re)initialised by a writer.
pub const CREATING: u64 = u64::from_le_bytes(*b"PODCREAT");
/// Layout version this build reads and writes. See "Version changes" in docs/design.md.
pub const LAYOUT_VERSION: u32 = 4;
/// Value of the ready word once the creator finished initialising the file.
pub const READY: u64 = u64::from_le_bytes(*b"READY!\0\x01");
/// `writer_state`: a writer holds (or held, until it crashed) the file.
pub const WRITER_RUNNING: u64 = 1;
/// `writer_state`: the last writer closed the file cleanly.
pub const WRITER_CLOSED: u64 = 2;
/// `writer_state`: the file was replaced by a new file at the same path; re-open it.
pub const RETIRED: u64 = 3;

/// The parameter word that names the records' checksum algorithm (both kinds).
pub const PARAM_CHECKSUM: usize = 7;
/// Checksum algorithm 1: CRC-32 with the IEEE polynomial (`crc32fast`), docs/design.md §6. The
/// default, and the only one a table uses.
pub const CHECKSUM_CRC32: u64 = 1;
/// "No checksum", rings only: records carry no payload checksum (their `crc` field is zero and
/// readers do not verify it); the lease and sequence checks alone detect overwrites
/// (docs/design.md §6 says what each choice detects). The word is the ASCII bytes `nocrc`
/// (little-endian), not 0, so a zeroed word never turns checksums off. Readers of releases
/// before it refuse such a ring as corrupt (an unknown checksum algorithm).
pub const CHECKSUM_NONE: u64 = u64::from_le_bytes(*b"nocrc\0\0\0");

/// What a podcache file holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum Kind {
    /// A broadcast ring (message stream).
    Ring = 1,
    /// A key-value table.
    Table = 2,
}

impl Kind {
    fn from_u32(v: u32) -> Option<Kind> {
        match v {
            1 => Some(Kind::Ring),
            2 => Some(Kind::Table),
            _ => None,
        }
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Kind::Ring => "ring",
            Kind::Table => "table",
        })
    }
}

/// Why a header was rejected. `Copy`, no allocation; callers add the path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum HeaderError {
    /// The creator has not finished initialising the file (or died while doing so): the magic
    /// is [`CREATING`].
    NotReady,
    /// The magic bytes are neither `PODCACHE` nor [`CREATING`]: not a podcache file.
    BadMagic,
    /// The magic says the creator finished, but `ready` is not [`READY`]: the file was damaged
    /// (a creator stores `ready` before the magic). Reported, never wiped.
    ReadyLost,
    /// The file's layout version is not the one this build understands.
    VersionMismatch {
        /// Version stored in the file.
        found: u32,
        /// Version this build reads.
        expected: u32,
    },
    /// The file holds another kind of structure.
    WrongKind {
        /// Kind number stored in the file.
        found: u32,
        /// Kind the caller asked for.
        expected: Kind,
    },
    /// The file is shorter than its header says (or than a header).
    Truncated {
        /// Bytes the header requires.
        expected: u64,
        /// Bytes the file has.
        actual: u64,
    },
    /// The header is inconsistent (bad checksum, impossible sizes).
    Corrupt(&'static str),
}

impl std::fmt::Display for HeaderError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HeaderError::NotReady => f.write_str("file is not initialised yet"),
            HeaderError::BadMagic => f.write_str("not a podcache file (bad magic)"),
            HeaderError::ReadyLost => f.write_str(
                "corrupt header: complete (real magic) but its ready word is not set; the file was damaged \
                 after creation (podcache never wipes it: remove the file to start over)",
            ),
            HeaderError::VersionMismatch { found, expected } => f.write_str(&version_advice(*found, *expected)),
            HeaderError::WrongKind { found, expected } => match Kind::from_u32(*found) {
                Some(k) => write!(f, "file holds a {k}, expected a {expected}"),
                None => write!(f, "file holds unknown kind {found}, expected a {expected}"),
            },
            HeaderError::Truncated { expected, actual } => {
                write!(f, "file is truncated: {actual} bytes, header requires {expected}")
            }
            HeaderError::Corrupt(why) => write!(f, "corrupt header: {why}"),
        }
    }
}

impl std::error::Error for HeaderError {}

/// What to do about a file of layout `found` met by code that reads layout `expected`.
pub fn version_advice(found: u32, expected: u32) -> String {
    if found < expected {
        format!(
            "written by an older podcache (layout version {found}); this build reads layout version \
             {expected}: upgrade the writer (sidecar image) or pin this reader to a release that reads \
             layout version {found}; the HTTP API works across versions"
        )
    } else {
        format!(
            "written by a newer podcache (layout version {found}); this build reads layout version \
             {expected}: upgrade this reader (app image) or pin the writer to a release that writes \
             layout version {expected}; the HTTP API works across versions"
        )
    }
}

/// An immutable snapshot of a validated header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeaderView {
    /// Kind of structure.
    pub kind: Kind,
    /// Total size of the file in bytes.
    pub file_size: u64,
    /// Hash of kind and params; two files with equal hashes have the same layout.
    pub params_hash: u64,
    /// Creation time, unix nanoseconds.
    pub created_ns: u64,
    /// Kind-specific parameters.
    pub params: [u64; PARAM_WORDS],
}

/// FNV-1a over the kind and the parameter words.
pub fn params_hash(kind: Kind, params: &[u64; PARAM_WORDS]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |w: u64| {
        for b in w.to_le_bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    };
    eat(kind as u64);
    eat(u64::from(LAYOUT_VERSION));
    params.iter().copied().for_each(eat);
    h
}

fn header_crc(fixed: &[u64; 5], params: &[u64; PARAM_WORDS]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    fixed.iter().chain(params.iter()).for_each(|w| h.update(&w.to_le_bytes()));
    h.finalize()
}

/// Validate the header in `words` (at least [`HEADER_BYTES`] long) against a file of
/// `actual_len` bytes. Every field is read with an atomic load; nothing is trusted before it is
/// checked.
pub fn validate(words: &[AtomicU64], actual_len: u64, expected: Kind) -> Result<HeaderView, HeaderError> {
    if (words.len() as u64) * 8 < HEADER_BYTES {
        return Err(HeaderError::Truncated { expected: HEADER_BYTES, actual: actual_len });
    }
    // SYNC: Acquire (the read-only-safe form), pairs with the Release store of MAGIC in
    // `publish_ready`, the last store of creation: every field and every structure word the
    // creator wrote before it is visible to this thread from here on.
    let magic = load_acquire(&words[W_MAGIC]);
    // Relaxed for the rest: written before MAGIC and never changed afterwards.
    let load = |i: usize| words[i].load(Ordering::Relaxed);
    match magic {
        MAGIC => {}
        CREATING => return Err(HeaderError::NotReady),
        _ => return Err(HeaderError::BadMagic),
    }
    // The version first (its offset is frozen): a file of another version may order its
    // creation differently, so nothing else of it is interpreted.
    let vk = load(W_VERSION_KIND);
    let version = vk as u32;
    if version != LAYOUT_VERSION {
        return Err(HeaderError::VersionMismatch { found: version, expected: LAYOUT_VERSION });
    }
    if load(W_READY) != READY {
        return Err(HeaderError::ReadyLost);
    }
    let kind_raw = (vk >> 32) as u32;
    let kind = match Kind::from_u32(kind_raw) {
        Some(k) if k == expected => k,
        _ => return Err(HeaderError::WrongKind { found: kind_raw, expected }),
    };
    let fixed = [load(0), load(1), load(2), load(3), load(4)];
    let mut params = [0u64; PARAM_WORDS];
    for (i, p) in params.iter_mut().enumerate() {
        *p = load(W_PARAMS + i);
    }
    if load(W_HEADER_CRC) != u64::from(header_crc(&fixed, &params)) {
        return Err(HeaderError::Corrupt("header checksum mismatch"));
    }
    let file_size = load(W_FILE_SIZE);
    if file_size < HEADER_BYTES || file_size % 8 != 0 {
        return Err(HeaderError::Corrupt("impossible file size in header"));
    }
    if actual_len < file_size {
        return Err(HeaderError::Truncated { expected: file_size, actual: actual_len });
    }
    let params_hash = load(W_PARAMS_HASH);
    if params_hash != self::params_hash(kind, &params) {
        return Err(HeaderError::Corrupt("layout hash does not match parameters"));
    }
    Ok(HeaderView { kind, file_size, params_hash, created_ns: load(W_CREATED_NS), params })
}

/// Parse a header from plain bytes (read with `pread` before mapping).
pub fn validate_bytes(bytes: &[u8], actual_len: u64, expected: Kind) -> Result<HeaderView, HeaderError> {
    let words: Vec<AtomicU64> =
        bytes.chunks_exact(8).map(|c| AtomicU64::new(u64::from_le_bytes(c.try_into().expect("8 bytes")))).collect();
    validate(&words, actual_len, expected)
}

/// Write every header field except `ready`, with the magic [`CREATING`] (the creator owns
/// the file exclusively here; the real magic comes last, in [`publish_ready`]). `created_ns` is
/// passed in so that tests are deterministic. The header checksum covers the final [`MAGIC`].
#[cfg(feature = "write")]
pub fn write_fields(words: &[AtomicU64], kind: Kind, file_size: u64, params: &[u64; PARAM_WORDS], created_ns: u64) {
    // Relaxed everywhere: nothing in this process or another reads these words before the
    // Release store of MAGIC in `publish_ready` publishes them (readers refuse CREATING).
    words[W_MAGIC].store(CREATING, Ordering::Relaxed);
    for w in &words[1..HEADER_WORDS] {
        w.store(0, Ordering::Relaxed);
    }
    let vk = u64::from(LAYOUT_VERSION) | ((kind as u64) << 32);
    let hash = params_hash(kind, params);
    let fixed = [MAGIC, vk, file_size, hash, created_ns];
    for (i, v) in fixed.iter().enumerate().skip(1) {
        words[i].store(*v, Ordering::Relaxed);
    }
    for (i, p) in params.iter().enumerate() {
        words[W_PARAMS + i].store(*p, Ordering::Relaxed);
    }
    words[W_HEADER_CRC].store(u64::from(header_crc(&fixed, params)), Ordering::Relaxed);
    words[W_EPOCH].store(0, Ordering::Relaxed);
}

/// Publish the file: store `ready`, then the real magic, the last store of creation.
#[cfg(feature = "write")]
pub fn publish_ready(words: &[AtomicU64]) {
    // Relaxed: made visible to readers by the Release store of MAGIC just below. Stored before
    // the magic so that a complete magic always comes with a set ready word: a creator killed
    // between the two stores leaves CREATING (initialised again), never "MAGIC without READY"
    // (which is damage).
    words[W_READY].store(READY, Ordering::Relaxed);
    // SYNC: Release, pairs with the `load_acquire` of the magic in `validate`.
    words[W_MAGIC].store(MAGIC, Ordering::Release);
}

/// The writer epoch (number of writer attaches since creation).
pub fn epoch(words: &[AtomicU64]) -> u64 {
    // SYNC: Acquire (the read-only-safe form), pairs with the Release store in `bump_epoch`:
    // a reader that sees a new epoch also sees the repairs its writer made before bumping it.
    load_acquire(&words[W_EPOCH])
}

/// Bump the writer epoch; returns the new value. Writer only.
#[cfg(feature = "write")]
pub fn bump_epoch(words: &[AtomicU64]) -> u64 {
    // Relaxed: the writer's own earlier store (one writer per file, under its lock).
    let e = words[W_EPOCH].load(Ordering::Relaxed).wrapping_add(1);
    // SYNC: Release, pairs with the `load_acquire` in `epoch`: a reader that sees the new
    // epoch also sees the repairs made before it.
    words[W_EPOCH].store(e, Ordering::Release);
    e
}

/// Current `writer_state` word.
pub fn writer_state(words: &[AtomicU64]) -> u64 {
    // SYNC: Acquire (the read-only-safe form), pairs with the Release store in
    // `set_writer_state`: a reader that sees RETIRED sees it after the rename that replaced
    // the file (the replacer renames, then stores RETIRED), so re-opening the path finds the
    // new file.
    load_acquire(&words[W_WRITER_STATE])
}

/// Set the `writer_state` word. Writer only.
#[cfg(feature = "write")]
pub fn set_writer_state(words: &[AtomicU64], state: u64) {
    // SYNC: Release, pairs with the `load_acquire` in `writer_state`: a reader that sees
    // RETIRED or CLOSED sees everything written before (for RETIRED: after the rename).
    // A file too short to hold the word (a truncated file being replaced) has no state to set.
    if let Some(w) = words.get(W_WRITER_STATE) {
        w.store(state, Ordering::Release);
    }
}

#[cfg(all(test, not(loom), feature = "write"))]
mod tests {
    use super::*;
    use crate::region::Region;

    fn made() -> Region {
        let r = Region::heap(64);
        write_fields(r.words(), Kind::Ring, 512, &[1, 2, 3, 0, 0, 0, 0, 0], 42);
        r
    }

    #[test]
    fn not_ready_until_published() {
        let r = made();
        assert_eq!(validate(r.words(), 512, Kind::Ring), Err(HeaderError::NotReady));
        publish_ready(r.words());
        let v = validate(r.words(), 512, Kind::Ring).unwrap();
        assert_eq!((v.kind, v.file_size, v.params[2], v.created_ns), (Kind::Ring, 512, 3, 42));
    }

    #[test]
    fn rejects_each_bad_field() {
        let r = made();
        publish_ready(r.words());
        assert_eq!(
            validate(r.words(), 512, Kind::Table),
            Err(HeaderError::WrongKind { found: 1, expected: Kind::Table })
        );
        assert_eq!(validate(r.words(), 300, Kind::Ring), Err(HeaderError::Truncated { expected: 512, actual: 300 }));
        r.words()[W_PARAMS + 1].store(9, Ordering::Relaxed);
        assert_eq!(validate(r.words(), 512, Kind::Ring), Err(HeaderError::Corrupt("header checksum mismatch")));
        r.words()[W_VERSION_KIND].store(7 | (1 << 32), Ordering::Relaxed);
        assert_eq!(
            validate(r.words(), 512, Kind::Ring),
            Err(HeaderError::VersionMismatch { found: 7, expected: LAYOUT_VERSION })
        );
        r.words()[W_READY].store(0, Ordering::Relaxed);
        assert_eq!(
            validate(r.words(), 512, Kind::Ring),
            Err(HeaderError::VersionMismatch { found: 7, expected: LAYOUT_VERSION }),
            "another version is reported before anything else of it is interpreted"
        );
        r.words()[W_VERSION_KIND].store(u64::from(LAYOUT_VERSION) | (1 << 32), Ordering::Relaxed);
        assert_eq!(validate(r.words(), 512, Kind::Ring), Err(HeaderError::ReadyLost));
        r.words()[W_MAGIC].store(CREATING, Ordering::Relaxed);
        assert_eq!(validate(r.words(), 512, Kind::Ring), Err(HeaderError::NotReady));
        r.words()[W_MAGIC].store(5, Ordering::Relaxed);
        assert_eq!(validate(r.words(), 512, Kind::Ring), Err(HeaderError::BadMagic));
        r.words()[W_MAGIC].store(0, Ordering::Relaxed);
        assert_eq!(validate(r.words(), 512, Kind::Ring), Err(HeaderError::BadMagic));
    }
}
