//! Helpers shared by the multi-process tests.
//!
//! - [`Rng`] / [`test_seed`]: a seeded splitmix64 generator; the seed is printed so a failing
//!   run can be replayed with `PODCACHE_TEST_SEED=<seed>`.
//! - [`payload`] / [`payload_matches`]: message bytes derived from the sequence number alone,
//!   so a reader checks every message independently of the ring's crc.
//! - [`lapped_reader`] / [`publish_loans`]: a reader thread that a publisher laps, checking
//!   each message it gets, and the publisher's side (loans that start as garbage).
//! - [`self_command`] / [`child_role`] / [`ChildProc`]: a test re-executes its own binary as
//!   a child process (`PODCACHE_TEST_ROLE=<role>`, libtest filtered to the one test with
//!   `--exact`). Children report to the parent with [`report`] lines on stdout; the handle
//!   kills and reaps the child when dropped, and [`die_with_parent`] makes a child die with
//!   its parent.
//! - [`Watchdog`] / [`bounded`] / [`watched`]: abort the test binary when something hangs, so a
//!   hung test fails instead of blocking CI. Tests never assert durations.
//! - [`shm_tempdir`], [`map_perms`], [`MountGuard`]: files on `/dev/shm`, the permissions of
//!   this process's mappings of a file, and tmpfs / read-only bind mounts removed on drop.
//! - [`kv_key`] / [`kv_value`] / [`kv_check`]: table keys derived from a number, and values
//!   that carry their own identity (key, version) and checksum, so a reader in another process
//!   can tell a genuine value from a torn or mixed one without knowing what the writer did;
//!   [`random_get`] reads keys with a randomly chosen get flavour.
//! - [`TableImage`]: a table file as bytes, with the byte map of docs/design.md §4.2, to read
//!   and corrupt it at known offsets and to recompute what the writer keeps (overflow counts).

use podcache_reader::{Msg, Start, Subscriber};
use podcache_writer::Publisher;
use std::ffi::CString;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------------------------
// Randomness and payloads

/// One step of splitmix64: a good 64-bit mix of `x`.
pub fn splitmix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A small seeded pseudo-random generator (splitmix64): reproducible from its seed.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        splitmix(self.0)
    }

    /// A number in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        assert!(n > 0, "below(0)");
        self.next_u64() % n
    }

    /// A `usize` in `0..n` (`n > 0`).
    pub fn below_usize(&mut self, n: usize) -> usize {
        self.below(n as u64) as usize
    }

    /// Fill `out` with random bytes.
    pub fn fill(&mut self, out: &mut [u8]) {
        for chunk in out.chunks_mut(8) {
            let r = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&r[..chunk.len()]);
        }
    }
}

/// The seed of this run: `PODCACHE_TEST_SEED` if set, else one drawn from the clock. Printed
/// with the test's name so a failure can be replayed.
pub fn test_seed(test: &str) -> u64 {
    let seed = match std::env::var("PODCACHE_TEST_SEED") {
        Ok(s) => s.trim().parse().expect("PODCACHE_TEST_SEED must be a u64"),
        Err(_) => {
            let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
            splitmix(t.as_nanos() as u64 ^ u64::from(std::process::id()))
        }
    };
    println!("{test}: seed {seed} (replay with PODCACHE_TEST_SEED={seed})");
    seed
}

/// A `u64` from the environment variable `name`, or `default`.
pub fn env_u64(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(s) => s.trim().parse().unwrap_or_else(|_| panic!("{name} must be a number, got {s:?}")),
        Err(_) => default,
    }
}

/// Length of the payload of message `seq` in a ring whose largest message is `max` bytes:
/// mostly short, one in eight up to `max` (so records of every size wrap around the ring).
pub fn payload_len(seq: u64, max: usize) -> usize {
    let h = splitmix(seq ^ 0x05EE_D5EE_D5EE_D5EE);
    let limit = if h & 7 == 0 { max } else { max.min(64) };
    1 + ((h >> 8) % limit as u64) as usize
}

/// Write the payload of message `seq` into `out` (cleared first).
pub fn payload_into(seq: u64, max: usize, out: &mut Vec<u8>) {
    out.clear();
    out.resize(payload_len(seq, max), 0);
    let mut s = seq;
    for chunk in out.chunks_mut(8) {
        s = splitmix(s);
        chunk.copy_from_slice(&s.to_le_bytes()[..chunk.len()]);
    }
}

/// The payload of message `seq`: length and bytes derive from `seq` alone.
pub fn payload(seq: u64, max: usize) -> Vec<u8> {
    let mut v = Vec::new();
    payload_into(seq, max, &mut v);
    v
}

/// Whether `bytes` are exactly the payload of message `seq` (no allocation).
pub fn payload_matches(seq: u64, max: usize, bytes: &[u8]) -> bool {
    if bytes.len() != payload_len(seq, max) {
        return false;
    }
    let mut s = seq;
    bytes.chunks(8).all(|chunk| {
        s = splitmix(s);
        chunk == &s.to_le_bytes()[..chunk.len()]
    })
}

/// A reader thread on the ring at `path` (from its oldest message) that a fast publisher laps.
/// `read` returns the next message and its bytes, or `None` after a short wait; every message
/// must be [`payload_matches`]-intact and follow the previous one after the messages counted
/// lost. Once `done` is set and a read finds nothing, the thread returns
/// `(received, lost, last sequence seen)`.
pub fn lapped_reader(
    path: &Path,
    max: usize,
    done: &Arc<AtomicBool>,
    mut read: impl FnMut(&mut Subscriber) -> Option<(Msg, Vec<u8>)> + Send + 'static,
) -> JoinHandle<(u64, u64, u64)> {
    let (path, done) = (path.to_path_buf(), Arc::clone(done));
    std::thread::spawn(move || {
        let mut sub = Subscriber::builder(&path).start(Start::Oldest).open().expect("open");
        let (mut received, mut last) = (0u64, 0u64);
        loop {
            let finished = done.load(Ordering::Acquire);
            match read(&mut sub) {
                Some((m, bytes)) => {
                    assert!(payload_matches(m.seq, max, &bytes), "message {} torn", m.seq);
                    assert!(received == 0 || m.seq == last + 1 + m.lost, "order after {last}: {m:?}");
                    received += 1;
                    last = m.seq;
                }
                None if finished => return (received, sub.lost(), last),
                None => {}
            }
        }
    })
}

/// Publish `total` messages ([`payload`] of up to `max` bytes) through loans that are first
/// filled with `garbage`, so that a reader's torn copy of one would show it.
pub fn publish_loans(p: &mut Publisher, total: u64, max: usize, garbage: u8) {
    for _ in 0..total {
        let seq = p.next_seq();
        let msg = payload(seq, max);
        let mut loan = p.loan(msg.len()).expect("loan");
        loan.fill(garbage);
        loan.copy_from_slice(&msg);
        loan.commit();
    }
}

// ---------------------------------------------------------------------------------------------
// Table keys and self-checking values

/// The key of item `id`: its decimal digits, a `.`, then 0..24 filler bytes (length derived
/// from `id`); one id in 97 has the longest key a table allows (255 bytes). Unique per id.
pub fn kv_key(id: u64) -> Vec<u8> {
    let mut k = format!("{id}.").into_bytes();
    let len = if id.is_multiple_of(97) { 255 } else { k.len() + (splitmix(id ^ 0x004B_4559) % 24) as usize };
    let mut i = 0u8;
    while k.len() < len {
        k.push(b'a' + i % 26);
        i = i.wrapping_add(1);
    }
    k
}

/// The id of a key made by [`kv_key`], if `key` is one.
pub fn kv_key_id(key: &[u8]) -> Option<u64> {
    let digits = key.iter().position(|&b| b == b'.')?;
    let id: u64 = std::str::from_utf8(&key[..digits]).ok()?.parse().ok()?;
    (kv_key(id) == key).then_some(id)
}

/// Bytes of a [`kv_value`] before its payload: key id, version, checksum (u64 LE each).
pub const KV_VALUE_HEADER: usize = 24;

/// Length of the value of (`id`, `version`): mostly short, one in eight up to `max` bytes
/// (`max >= KV_VALUE_HEADER`).
pub fn kv_value_len(id: u64, version: u64, max: usize) -> usize {
    assert!(max >= KV_VALUE_HEADER, "values need at least {KV_VALUE_HEADER} bytes");
    let h = splitmix(id.rotate_left(32) ^ version ^ 0x0056_414C);
    let room = (max - KV_VALUE_HEADER) as u64;
    let limit = if h & 7 == 0 { room } else { room.min(48) };
    KV_VALUE_HEADER + ((h >> 8) % (limit + 1)) as usize
}

fn kv_fold(id: u64, version: u64, payload: &[u8]) -> u64 {
    let mut c = splitmix(id ^ splitmix(version ^ payload.len() as u64));
    for chunk in payload.chunks(8) {
        let mut w = [0u8; 8];
        w[..chunk.len()].copy_from_slice(chunk);
        c = splitmix(c ^ u64::from_le_bytes(w));
    }
    c
}

/// Write the value of key `id` at `version` into `out` (cleared first): the id, the version,
/// a checksum of everything, then a payload derived from (id, version). At most `max` bytes.
pub fn kv_value_into(id: u64, version: u64, max: usize, out: &mut Vec<u8>) {
    let len = kv_value_len(id, version, max);
    out.clear();
    out.extend_from_slice(&id.to_le_bytes());
    out.extend_from_slice(&version.to_le_bytes());
    out.extend_from_slice(&[0; 8]);
    let mut s = splitmix(id) ^ version;
    while out.len() < len {
        s = splitmix(s);
        let n = (len - out.len()).min(8);
        out.extend_from_slice(&s.to_le_bytes()[..n]);
    }
    let check = kv_fold(id, version, &out[KV_VALUE_HEADER..]);
    out[16..24].copy_from_slice(&check.to_le_bytes());
}

/// The value of key `id` at `version`; see [`kv_value_into`].
pub fn kv_value(id: u64, version: u64, max: usize) -> Vec<u8> {
    let mut v = Vec::new();
    kv_value_into(id, version, max, &mut v);
    v
}

/// What a reader got for one key: the value copied out, or the error.
pub type Got = Result<Option<Vec<u8>>, podcache_reader::GetError>;

/// Read key `id` (of the ids below `nkeys`) with a get flavour chosen by `rng`: `get`,
/// `get_vec`, `get_with`, `contains` (never a value), or `get_many` of a random batch of up to
/// two `BATCH`es of keys, the first one `id`. Every key read, in order, with what it got.
pub fn random_get(
    rd: &podcache_reader::TableReader,
    rng: &mut Rng,
    id: u64,
    nkeys: u64,
    buf: &mut [u8],
) -> Vec<(u64, Got)> {
    let key = kv_key(id);
    match rng.below(5) {
        0 => vec![(id, rd.get(&key, buf).map(|o| o.map(|len| buf[..len].to_vec())))],
        1 => vec![(id, rd.get_vec(&key))],
        2 => vec![(id, rd.get_with(&key, |v| v.to_vec()))],
        3 => vec![(id, rd.contains(&key).map(|_| None))],
        _ => {
            let ids: Vec<u64> = std::iter::once(id).chain((0..rng.below(40)).map(|_| rng.below(nkeys))).collect();
            let keys: Vec<Vec<u8>> = ids.iter().map(|&id| kv_key(id)).collect();
            let mut got = Vec::with_capacity(ids.len());
            rd.get_many(&keys, buf, |i, r| got.push((ids[i], r.map(|v| v.map(<[u8]>::to_vec)))));
            assert_eq!(got.len(), ids.len(), "get_many reports every key");
            got
        }
    }
}

/// Check that `bytes` are a whole value of key `id` (as made by [`kv_value_into`] with the
/// same `max`) and return its version; `Err` says what is wrong (torn, mixed, another key's).
pub fn kv_check(id: u64, max: usize, bytes: &[u8]) -> Result<u64, &'static str> {
    if bytes.len() < KV_VALUE_HEADER {
        return Err("shorter than a value header");
    }
    let word = |i: usize| u64::from_le_bytes(bytes[i * 8..i * 8 + 8].try_into().expect("8 bytes"));
    let (vid, version, check) = (word(0), word(1), word(2));
    if vid != id {
        return Err("the value of another key");
    }
    if bytes.len() != kv_value_len(id, version, max) {
        return Err("wrong length for its version");
    }
    if check != kv_fold(id, version, &bytes[KV_VALUE_HEADER..]) {
        return Err("checksum mismatch");
    }
    let mut s = splitmix(id) ^ version;
    let payload_ok = bytes[KV_VALUE_HEADER..].chunks(8).all(|chunk| {
        s = splitmix(s);
        chunk == &s.to_le_bytes()[..chunk.len()]
    });
    if !payload_ok {
        return Err("payload differs from its version's");
    }
    Ok(version)
}

// ---------------------------------------------------------------------------------------------
// Table file images

/// Byte offset of the table statistics (items, bytes, puts, deletes, evictions, expirations,
/// clears, next segment sequence).
pub const TABLE_STATS: usize = 0x100;
/// Byte offset of the segment table (4 words per segment: state, seq, max expiry, live bytes).
pub const TABLE_SEGMENTS: usize = 0x180;
/// Bits of `fill` in a segment's state word (`gen << 32 | fill`).
pub const FILL_BITS: u32 = 32;
/// Bits of `loc` in an index slot (`tag << 52 | gen << 36 | loc`).
pub const LOC_BITS: u32 = 36;
/// Shift of the tag in an index slot; the 16 bits below it are the low bits of the
/// generation of the segment the slot names.
pub const TAG_SHIFT: u32 = 52;
/// Bytes per unit of `loc`: records start at multiples of 4 bytes of the data region.
pub const REC_ALIGN: u64 = 4;

/// The geometry in a table header's parameter words (at 0x40).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TableLayout {
    /// Segments.
    pub nsegments: u64,
    /// Bytes per segment.
    pub segment_size: u64,
    /// Index buckets (8 words: overflow count, 7 slots).
    pub nbuckets: u64,
    /// Item limit.
    pub max_items: u64,
    /// Seed of the key hash.
    pub hash_seed: u64,
    /// Byte offset of the index.
    pub index_offset: u64,
    /// Byte offset of the data region.
    pub data_offset: u64,
}

/// A record's header as stored (see docs/design.md §4.2).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableRecord {
    /// Byte offset of the record in the file.
    pub offset: usize,
    /// Key length.
    pub klen: usize,
    /// Value length.
    pub vlen: usize,
    /// Whether an expiry word follows the header.
    pub has_expiry: bool,
    /// The key bytes.
    pub key: Vec<u8>,
    /// Bytes the record takes (4-aligned).
    pub len: usize,
}

/// A table file read into memory, to inspect and corrupt at known offsets.
#[derive(Clone, Debug)]
pub struct TableImage {
    /// The file's bytes.
    pub bytes: Vec<u8>,
}

impl TableImage {
    /// Read the file at `path`.
    pub fn read(path: &Path) -> TableImage {
        TableImage { bytes: std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display())) }
    }

    /// Write the image to `path` (replacing any file there).
    pub fn write(&self, path: &Path) {
        std::fs::write(path, &self.bytes).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    }

    /// The little-endian word at byte offset `off`.
    pub fn word(&self, off: usize) -> u64 {
        u64::from_le_bytes(self.bytes[off..off + 8].try_into().expect("8 bytes"))
    }

    /// Store `v` at byte offset `off`.
    pub fn set_word(&mut self, off: usize, v: u64) {
        self.bytes[off..off + 8].copy_from_slice(&v.to_le_bytes());
    }

    /// The geometry from the header.
    pub fn layout(&self) -> TableLayout {
        let p = |i: usize| self.word(0x40 + 8 * i);
        TableLayout {
            nsegments: p(0),
            segment_size: p(1),
            nbuckets: p(2),
            max_items: p(3),
            hash_seed: p(4),
            index_offset: p(5),
            data_offset: p(6),
        }
    }

    /// Byte offset of segment `seg`'s state word (`+8` seq, `+16` max expiry, `+24` live).
    pub fn seg_state_off(&self, seg: u64) -> usize {
        TABLE_SEGMENTS + 32 * seg as usize
    }

    /// Byte offset of bucket `b` (its overflow count; slots follow).
    pub fn bucket_off(&self, b: u64) -> usize {
        (self.layout().index_offset + 64 * b) as usize
    }

    /// Byte offset of slot `s` (0..7) of bucket `b`.
    pub fn slot_off(&self, b: u64, s: usize) -> usize {
        assert!(s < 7);
        self.bucket_off(b) + 8 * (1 + s)
    }

    /// Byte offset of the record at `loc` (4-byte units into the data region).
    pub fn loc_off(&self, loc: u64) -> usize {
        (self.layout().data_offset + REC_ALIGN * loc) as usize
    }

    /// The segment of the record at `loc`.
    pub fn seg_of_loc(&self, loc: u64) -> u64 {
        loc * REC_ALIGN / self.layout().segment_size
    }

    /// The `loc` of byte `off` of the data region.
    pub fn loc_at(off: u64) -> u64 {
        off / REC_ALIGN
    }

    /// Home bucket and tag of `key` (docs/design.md §4.2 and table/mod.rs `Geo::home`).
    pub fn home_tag(&self, key: &[u8]) -> (u64, u64) {
        let l = self.layout();
        let h = podcache_format::hash::hash(l.hash_seed, key);
        (((h & 0xffff_ffff) * l.nbuckets) >> 32, (h >> TAG_SHIFT) | 1)
    }

    /// The record at `loc`, if its header and key lie inside the image.
    pub fn record(&self, loc: u64) -> Option<TableRecord> {
        let offset = usize::try_from(self.layout().data_offset.checked_add(loc.checked_mul(REC_ALIGN)?)?).ok()?;
        if offset + 8 > self.bytes.len() {
            return None;
        }
        let w = self.word(offset);
        let (klen, vlen, has_expiry) = (((w >> 32) & 0xff) as usize, ((w >> 40) & 0x7f_ffff) as usize, w >> 63 == 1);
        let key_at = offset + if has_expiry { 16 } else { 8 };
        let key = self.bytes.get(key_at..key_at + klen)?.to_vec();
        let len = (key_at - offset + klen + vlen).next_multiple_of(REC_ALIGN as usize);
        Some(TableRecord { offset, klen, vlen, has_expiry, key, len })
    }

    /// Every used slot: (bucket, slot index, byte offset of the slot, slot value).
    pub fn used_slots(&self) -> Vec<(u64, usize, usize, u64)> {
        let mut out = Vec::new();
        for b in 0..self.layout().nbuckets {
            for s in 0..7 {
                let off = self.slot_off(b, s);
                let v = self.word(off);
                if v != 0 {
                    out.push((b, s, off, v));
                }
            }
        }
        out
    }

    /// The slot (byte offset, value) that holds `key`, if any.
    pub fn slot_of(&self, key: &[u8]) -> Option<(usize, u64)> {
        self.used_slots().into_iter().find_map(|(_, _, off, v)| {
            let rec = self.record(v & ((1 << LOC_BITS) - 1))?;
            (rec.key == key).then_some((off, v))
        })
    }

    /// The overflow counts stored in the index.
    pub fn stored_overflow_counts(&self) -> Vec<u64> {
        (0..self.layout().nbuckets).map(|b| self.word(self.bucket_off(b))).collect()
    }

    /// The overflow counts the index should have: for every used slot, +1 on each bucket from
    /// its key's home up to (not including) the slot's bucket.
    pub fn true_overflow_counts(&self) -> Vec<u64> {
        let nb = self.layout().nbuckets;
        let mut counts = vec![0u64; nb as usize];
        for (b, _, _, v) in self.used_slots() {
            let rec = self.record(v & ((1 << LOC_BITS) - 1)).expect("a slot of a valid table points at a record");
            let (home, _) = self.home_tag(&rec.key);
            let dist = (b + nb - home) % nb;
            for i in 0..dist {
                counts[((home + i) % nb) as usize] += 1;
            }
        }
        counts
    }
}

// ---------------------------------------------------------------------------------------------
// Child processes

/// Environment variable that selects the role of a re-executed test binary.
pub const ROLE_ENV: &str = "PODCACHE_TEST_ROLE";

/// The role this process was started in, if it is a child of a test.
pub fn child_role() -> Option<String> {
    std::env::var(ROLE_ENV).ok()
}

/// A command that re-executes this test binary running only `test` (the name libtest gives
/// it) in child role `role`. Stdin and stdout are pipes; stderr is inherited so a child's
/// panic message shows in the test output.
pub fn self_command(test: &str, role: &str) -> Command {
    let exe = std::env::current_exe().expect("path of the test binary");
    let mut cmd = Command::new(exe);
    cmd.args(["--exact", test, "--nocapture", "--test-threads=1", "--quiet"])
        .env(ROLE_ENV, role)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    cmd
}

/// In a child: be killed (`SIGKILL`) when the parent dies, so an aborted test leaves nothing
/// running.
pub fn die_with_parent() {
    // SAFETY: prctl(PR_SET_PDEATHSIG) takes a signal number and touches no memory of ours.
    let rc = unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) };
    assert_eq!(rc, 0, "prctl(PR_SET_PDEATHSIG): {}", std::io::Error::last_os_error());
}

/// Print a report line for the parent: `@@TAG key=value ...`, flushed at once.
pub fn report(tag: &str, fields: &[(&str, u64)]) {
    let mut line = format!("@@{tag}");
    for (k, v) in fields {
        line.push_str(&format!(" {k}={v}"));
    }
    line.push('\n');
    let mut out = std::io::stdout().lock();
    out.write_all(line.as_bytes()).expect("write report");
    out.flush().expect("flush report");
}

/// A report line received from a child.
#[derive(Clone, Debug)]
pub struct Report {
    /// The tag (first word after `@@`).
    pub tag: String,
    fields: Vec<(String, String)>,
}

impl Report {
    fn parse(line: &str) -> Report {
        let mut words = line.split_whitespace();
        let tag = words.next().unwrap_or_default().to_string();
        let fields = words.filter_map(|w| w.split_once('=').map(|(k, v)| (k.to_string(), v.to_string()))).collect();
        Report { tag, fields }
    }

    /// The numeric field `key`; panics (failing the test) if it is missing.
    pub fn get(&self, key: &str) -> u64 {
        self.fields
            .iter()
            .find(|(k, _)| k == key)
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or_else(|| panic!("report {self:?} has no numeric field {key}"))
    }
}

/// A child process running this test binary in some role; killed and reaped when dropped.
pub struct ChildProc {
    name: String,
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<Report>,
    stdout_thread: Option<JoinHandle<()>>,
}

impl ChildProc {
    /// Spawn `cmd` (from [`self_command`]); `name` is used in failure messages.
    pub fn spawn(mut cmd: Command, name: &str) -> ChildProc {
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {name}: {e}"));
        let stdout = child.stdout.take().expect("stdout is piped");
        let stdin = child.stdin.take();
        let (tx, lines) = mpsc::channel();
        let stdout_thread = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(rest) = line.strip_prefix("@@") {
                    if tx.send(Report::parse(rest)).is_err() {
                        break;
                    }
                }
            }
        });
        ChildProc { name: name.to_string(), child, stdin, lines, stdout_thread: Some(stdout_thread) }
    }

    /// The child's process id.
    pub fn pid(&self) -> libc::pid_t {
        self.child.id() as libc::pid_t
    }

    /// Wait for the report tagged `tag` (skipping others); panics if it does not come within
    /// `timeout` or the child exits first.
    pub fn expect(&self, tag: &str, timeout: Duration) -> Report {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(r) if r.tag == tag => return r,
                Ok(_) => {}
                Err(RecvTimeoutError::Timeout) => panic!("{}: no {tag} report within {timeout:?}", self.name),
                Err(RecvTimeoutError::Disconnected) => panic!("{}: exited before reporting {tag}", self.name),
            }
        }
    }

    /// Send one line to the child's stdin.
    pub fn send(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin is piped");
        writeln!(stdin, "{line}").and_then(|()| stdin.flush()).unwrap_or_else(|e| panic!("{}: send: {e}", self.name));
    }

    /// `SIGKILL` the child and reap it. Returns its exit status and every report it printed
    /// that was not yet taken.
    pub fn sigkill(&mut self) -> (ExitStatus, Vec<Report>) {
        // SAFETY: kill(2) with the pid of our own child, which is not reaped yet (so the pid
        // cannot have been reused); it touches no memory.
        let rc = unsafe { libc::kill(self.pid(), libc::SIGKILL) };
        assert_eq!(rc, 0, "{}: kill: {}", self.name, std::io::Error::last_os_error());
        let status = self.child.wait().unwrap_or_else(|e| panic!("{}: wait: {e}", self.name));
        (status, self.drain())
    }

    /// Wait for the child to exit on its own, at most `timeout` (then panic). Returns its exit
    /// status and every report not yet taken.
    pub fn wait(&mut self, timeout: Duration) -> (ExitStatus, Vec<Report>) {
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap_or_else(|e| panic!("{}: wait: {e}", self.name)) {
                break status;
            }
            assert!(Instant::now() < deadline, "{}: still running after {timeout:?}", self.name);
            std::thread::sleep(Duration::from_millis(2));
        };
        (status, self.drain())
    }

    /// After the child exited: every report left in the pipe.
    fn drain(&mut self) -> Vec<Report> {
        if let Some(t) = self.stdout_thread.take() {
            // The child is gone, so its stdout reaches EOF and the thread ends.
            t.join().expect("stdout reader thread");
        }
        self.lines.try_iter().collect()
    }
}

impl Drop for ChildProc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Whether `status` is "killed by SIGKILL".
pub fn killed_by_sigkill(status: &ExitStatus) -> bool {
    status.signal() == Some(libc::SIGKILL)
}

// ---------------------------------------------------------------------------------------------
// Watchdogs

/// Aborts the whole process if it is still alive `secs` seconds after creation: a hung test
/// fails (loudly) instead of hanging CI. Dropping the watchdog disarms it.
pub struct Watchdog {
    _disarm: mpsc::Sender<()>,
}

impl Watchdog {
    /// Arm a watchdog for `what`.
    pub fn new(what: &str, secs: u64) -> Watchdog {
        let (tx, rx) = mpsc::channel::<()>();
        let what = what.to_string();
        std::thread::spawn(move || {
            if let Err(RecvTimeoutError::Timeout) = rx.recv_timeout(Duration::from_secs(secs)) {
                eprintln!("WATCHDOG: {what} still running after {secs} s: aborting the test process");
                std::process::abort();
            }
        });
        Watchdog { _disarm: tx }
    }
}

/// Run `f` on another thread and wait for it at most `secs` seconds; abort the process if it
/// does not finish (a library call that loops forever cannot be interrupted otherwise).
/// Panics of `f` propagate.
pub fn bounded<T: Send>(what: &str, secs: u64, f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        let _watchdog = Watchdog::new(what, secs);
        let handle = s.spawn(f);
        match handle.join() {
            Ok(v) => v,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    })
}

/// Run `f` on this thread under a [`Watchdog`]: like [`bounded`], for closures that borrow
/// something that cannot cross threads (a `TableReader` is `Send`, not `Sync`).
pub fn watched<T>(what: &str, secs: u64, f: impl FnOnce() -> T) -> T {
    let _watchdog = Watchdog::new(what, secs);
    f()
}

// ---------------------------------------------------------------------------------------------
// Files, mappings and mounts

/// A temporary directory on `/dev/shm` (tmpfs, like a Pod's `emptyDir: {medium: Memory}`),
/// or in the default temporary directory where there is no `/dev/shm`.
pub fn shm_tempdir() -> tempfile::TempDir {
    let builder = {
        let mut b = tempfile::Builder::new();
        b.prefix("podcache-test-");
        b
    };
    if Path::new("/dev/shm").is_dir() {
        builder.tempdir_in("/dev/shm").expect("tempdir in /dev/shm")
    } else {
        builder.tempdir().expect("tempdir")
    }
}

/// The permission strings (`r--s`, `rw-s`, ...) of this process's mappings of `path`, one per
/// mapping, read from `/proc/self/maps`.
pub fn map_perms(path: &Path) -> Vec<String> {
    let want = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let maps = std::fs::read_to_string("/proc/self/maps").expect("read /proc/self/maps");
    maps.lines()
        .filter_map(|line| {
            // address perms offset dev inode [pathname]
            let mut parts = line.splitn(6, ' ');
            let _addr = parts.next()?;
            let perms = parts.next()?;
            let name = parts.nth(3)?.trim_start();
            (Path::new(name) == want).then(|| perms.to_string())
        })
        .collect()
}

/// Whether this process runs as root.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

fn cstr(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).expect("path without NUL")
}

/// A mount made by a test, detached when dropped (also when the test panics).
pub struct MountGuard {
    target: PathBuf,
}

impl MountGuard {
    /// Mount a tmpfs with `options` (e.g. `size=1m`) on the existing directory `target`.
    pub fn tmpfs(target: &Path, options: &str) -> std::io::Result<MountGuard> {
        let (src, fstype, data, t) = (c"tmpfs", c"tmpfs", CString::new(options).expect("options"), cstr(target));
        // SAFETY: every pointer is a NUL-terminated string that outlives the call.
        let rc = unsafe { libc::mount(src.as_ptr(), t.as_ptr(), fstype.as_ptr(), 0, data.as_ptr().cast()) };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(MountGuard { target: target.to_path_buf() })
    }

    /// Bind-mount `source` on the existing directory `target`, read-only: like a Kubernetes
    /// `volumeMounts[].readOnly: true`, writes fail with `EROFS` even for root.
    pub fn bind_read_only(source: &Path, target: &Path) -> std::io::Result<MountGuard> {
        let (s, t) = (cstr(source), cstr(target));
        // SAFETY: NUL-terminated strings that outlive the call; null fstype and data are
        // allowed for a bind mount.
        let rc = unsafe { libc::mount(s.as_ptr(), t.as_ptr(), std::ptr::null(), libc::MS_BIND, std::ptr::null()) };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let guard = MountGuard { target: target.to_path_buf() };
        let flags = libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY;
        // SAFETY: as above; a remount of the bind mount just made.
        let rc = unsafe { libc::mount(std::ptr::null(), t.as_ptr(), std::ptr::null(), flags, std::ptr::null()) };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(guard)
    }
}

/// A read-write shared mapping of a whole file as 64-bit atomic words: lets a test act as a
/// hostile (or runaway) writer process that changes the file at memory speed while readers map
/// it. Unmapped on drop.
pub struct SharedWords {
    ptr: *mut libc::c_void,
    len: usize,
}

// SAFETY: the mapping is only accessed through `&[AtomicU64]` (which is `Sync`); the pointer
// stays valid until drop.
unsafe impl Send for SharedWords {}
// SAFETY: as above.
unsafe impl Sync for SharedWords {}

impl SharedWords {
    /// Map the file at `path` (its length a multiple of 8, not 0) read-write, shared.
    pub fn map(path: &Path) -> std::io::Result<SharedWords> {
        let file = std::fs::OpenOptions::new().read(true).write(true).open(path)?;
        let len = usize::try_from(file.metadata()?.len()).expect("file size fits usize");
        assert!(len > 0 && len % 8 == 0, "map a whole number of words");
        // SAFETY: a new shared mapping of `len` bytes of an open file, at an address the kernel
        // chooses; no existing memory is affected. The descriptor may be closed afterwards.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                std::os::fd::AsRawFd::as_raw_fd(&file),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        Ok(SharedWords { ptr, len })
    }

    /// The mapping as atomic words (byte offset `off` is word `off / 8`).
    pub fn words(&self) -> &[std::sync::atomic::AtomicU64] {
        // SAFETY: `ptr` is a page-aligned mapping of `len` bytes (a multiple of 8) that lives
        // until drop; `AtomicU64` has the size and alignment of `u64` and allows shared
        // mutation, also by other processes mapping the same file. The tests never shrink it.
        unsafe { std::slice::from_raw_parts(self.ptr.cast::<std::sync::atomic::AtomicU64>(), self.len / 8) }
    }
}

impl Drop for SharedWords {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in `map`; no reference from `words` outlives
        // `self`.
        unsafe { libc::munmap(self.ptr, self.len) };
    }
}

impl Drop for MountGuard {
    fn drop(&mut self) {
        let t = cstr(&self.target);
        // SAFETY: a NUL-terminated path that outlives the call.
        let rc = unsafe { libc::umount2(t.as_ptr(), libc::MNT_DETACH) };
        if rc != 0 {
            eprintln!("umount {}: {}", self.target.display(), std::io::Error::last_os_error());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_are_a_function_of_the_sequence() {
        for seq in 1..2000u64 {
            let p = payload(seq, 1000);
            assert!((1..=1000).contains(&p.len()));
            assert!(payload_matches(seq, 1000, &p));
            assert!(!payload_matches(seq + 1, 1000, &p) || payload(seq + 1, 1000) == p);
            let mut bad = p.clone();
            bad[p.len() / 2] ^= 1;
            assert!(!payload_matches(seq, 1000, &bad));
        }
        assert!((1..5000u64).any(|s| payload_len(s, 1000) > 64), "some messages are long");
    }

    #[test]
    fn kv_values_check_their_identity_and_bytes() {
        let mut lens = std::collections::HashSet::new();
        for id in 0..500u64 {
            let key = kv_key(id);
            assert!((2..=255).contains(&key.len()), "{id}: {} bytes", key.len());
            assert_eq!(kv_key_id(&key), Some(id));
            for version in [0, 1, id * 31 + 7, u64::MAX] {
                let v = kv_value(id, version, 600);
                assert!(v.len() >= KV_VALUE_HEADER && v.len() <= 600);
                lens.insert(v.len());
                assert_eq!(kv_check(id, 600, &v), Ok(version));
                assert!(kv_check(id + 1, 600, &v).is_err(), "another key's value");
                for at in [0, 8, 16, v.len() - 1] {
                    let mut bad = v.clone();
                    bad[at] ^= 0x10;
                    assert!(kv_check(id, 600, &bad).is_err(), "{id}/{version}: flipped byte {at}");
                }
                assert!(kv_check(id, 600, &v[..v.len() - 1]).is_err(), "cut short");
            }
        }
        assert!(kv_key(97).len() == 255 && kv_key_id(b"12.x").is_none() && kv_key_id(b"nope").is_none());
        assert!(lens.iter().any(|&l| l > 100) && lens.len() > 40, "lengths vary");
    }
}
