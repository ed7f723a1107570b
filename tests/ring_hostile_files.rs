//! The file is untrusted input (rule 4): truncated, foreign, corrupted, random and crafted
//! files given to `Subscriber::open` and to reads give a typed error, `Ok(None)`, `Corrupt` or
//! `Overrun` — never a panic, an out-of-bounds access or an endless loop (every open and read
//! runs under a watchdog, and read loops are bounded). A publisher attaching to a damaged
//! ring recovers (discarding what it cannot verify) instead of panicking.

use podcache_format::header::{self, params_hash, HEADER_BYTES, LAYOUT_VERSION};
use podcache_reader::{Kind, OpenError, RecvError, Start, Subscriber};
use podcache_tests::{bounded, payload_into, payload_matches, shm_tempdir, Rng};
use podcache_writer::Publisher;
use std::path::{Path, PathBuf};
use std::time::Duration;

const CAPACITY: u64 = 4096;
const MAX_MSG: usize = 256;
/// Data offset of a ring file (the data region starts on its own page).
const DATA: usize = 4096;
const FILE_LEN: usize = DATA + CAPACITY as usize;

// Byte offsets of header and control words (see header.rs and ring.rs).
const VERSION_KIND: usize = 0x08;
const FILE_SIZE: usize = 0x10;
const PARAMS_HASH: usize = 0x18;
const HEADER_CRC: usize = 0x28;
const P_DATA_OFFSET: usize = 0x40;
const P_CAPACITY: usize = 0x48;
const P_MAX_MSG: usize = 0x50;
/// Parameter word 7: the records' checksum algorithm (1 = CRC-32/IEEE; `CHECKSUM_NONE`, the
/// bytes `nocrc`, for a ring without payload checksums; nothing else, 0 included).
const P_CHECKSUM: usize = 0x78;
const TAIL: usize = 0x100;
const TAIL_SEQ: usize = 0x108;
const LEASE: usize = 0x180;
const HEAD: usize = 0x188;
const NOTIFY: usize = 0x200;
const WAKE_WINDOW: usize = 0x208;
/// Seconds any one open-and-read may take before the watchdog aborts the test binary.
const BOUND_SECS: u64 = 120;

fn word(b: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(b[off..off + 8].try_into().unwrap())
}

fn set_word(b: &mut [u8], off: usize, v: u64) {
    b[off..off + 8].copy_from_slice(&v.to_le_bytes());
}

/// Recompute the layout hash and header crc after editing header words, so that the edit is
/// what the reader rejects (not the checksum).
fn reseal(b: &mut [u8]) {
    let kind = if word(b, VERSION_KIND) >> 32 == 2 { Kind::Table } else { Kind::Ring };
    let params: [u64; 8] = std::array::from_fn(|i| word(b, P_DATA_OFFSET + 8 * i));
    set_word(b, PARAMS_HASH, params_hash(kind, &params));
    let mut h = crc32fast::Hasher::new();
    h.update(&b[..0x28]);
    h.update(&b[0x40..0x80]);
    set_word(b, HEADER_CRC, u64::from(h.finalize()));
}

/// A real ring file holding messages `1..=n` (it wraps for n beyond ~60).
fn real_ring(dir: &Path, n: u64) -> Vec<u8> {
    let path = dir.join(format!("real-{n}.ring"));
    let mut p = Publisher::builder(&path).capacity(CAPACITY).max_message(MAX_MSG as u32).create().unwrap();
    let mut buf = Vec::new();
    for seq in 1..=n {
        payload_into(seq, MAX_MSG, &mut buf);
        p.publish(&buf).unwrap();
    }
    drop(p);
    let bytes = std::fs::read(&path).unwrap();
    std::fs::remove_file(&path).unwrap();
    assert_eq!(bytes.len(), FILE_LEN);
    check_record_crc(&bytes);
    bytes
}

fn put(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

/// The record checksum as the format defines it (ring.rs, checksum.rs): crc32 of the payload,
/// XORed with a mix of `seq`. [`check_record_crc`] keeps this copy honest.
fn record_crc(seq: u64, payload: &[u8]) -> u32 {
    let x = seq.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    crc32fast::hash(payload) ^ (x >> 32) as u32 ^ x as u32
}

/// Fail loudly if the format's checksum no longer matches [`record_crc`] (crafted records
/// would then test nothing but the checksum), and if [`reseal`] changes a valid header.
fn check_record_crc(real: &[u8]) {
    let w0 = word(real, DATA);
    let len = (w0 as u32) as usize;
    let seq = word(real, DATA + 8);
    let crc = record_crc(seq, &real[DATA + 16..DATA + 16 + len]);
    assert_eq!(crc, (w0 >> 32) as u32, "the record checksum changed: update record_crc in this test");
    let mut resealed = real.to_vec();
    reseal(&mut resealed);
    assert!(resealed == real, "the header checksum changed: update reseal in this test");
}

/// Store a record with a valid crc at ring position `pos` of a file image.
fn put_record(b: &mut [u8], pos: u64, seq: u64, payload: &[u8]) {
    let off = DATA + (pos % CAPACITY) as usize;
    let crc = record_crc(seq, payload);
    set_word(b, off, payload.len() as u64 | (u64::from(crc) << 32));
    set_word(b, off + 8, seq);
    // A record that would run past the end of the data region is cut there.
    let end = (off + 16 + payload.len().div_ceil(8) * 8).min(FILE_LEN);
    b[off + 16..end].fill(0);
    let n = payload.len().min(end - off - 16);
    b[off + 16..off + 16 + n].copy_from_slice(&payload[..n]);
}

/// What a bounded series of reads returned.
#[derive(Debug, Default)]
struct Outcome {
    msgs: u64,
    /// Messages whose bytes are not what their sequence number implies.
    foreign: u64,
    last_seq: Option<u64>,
    corrupt: u64,
    overrun: u64,
}

/// Read up to 3000 times (after `Corrupt`, skip to the newest message, as an application
/// would), then one blocking read with a short timeout. `Overrun` and `Corrupt` are counted;
/// any other error fails the test (the buffer is always `max_message` long).
fn drain(sub: &mut Subscriber) -> Outcome {
    let mut out = Outcome::default();
    let mut buf = vec![0u8; sub.max_message()];
    for _ in 0..3000 {
        match sub.try_recv(&mut buf) {
            Ok(Some(m)) => {
                assert!(m.len >= 1 && m.len <= buf.len(), "impossible length {m:?}");
                out.msgs += 1;
                out.foreign += u64::from(!payload_matches(m.seq, MAX_MSG, &buf[..m.len]));
                out.last_seq = Some(m.seq);
            }
            Ok(None) => break,
            Err(RecvError::Corrupt { .. }) => {
                out.corrupt += 1;
                sub.skip_to_newest();
            }
            Err(RecvError::Overrun) => out.overrun += 1,
            Err(e) => panic!("unexpected read error: {e:?}"),
        }
    }
    match sub.recv_timeout(&mut buf, Duration::from_millis(2)) {
        Ok(Some(m)) => {
            out.msgs += 1;
            out.foreign += u64::from(!payload_matches(m.seq, MAX_MSG, &buf[..m.len]));
            out.last_seq = Some(m.seq);
        }
        Ok(None) | Err(RecvError::Corrupt { .. } | RecvError::Overrun) => {}
        Err(e) => panic!("unexpected read error: {e:?}"),
    }
    out
}

/// Open `path` from the oldest and from the newest message and drain both, under a watchdog.
/// Returns the open error, or what the reads from the oldest message returned.
fn open_and_drain(path: &Path) -> Result<Outcome, OpenError> {
    bounded(&format!("open and read {}", path.display()), BOUND_SECS, || {
        if let Ok(mut sub) = Subscriber::builder(path).start(Start::Newest).open() {
            drain(&mut sub);
        }
        Subscriber::builder(path).start(Start::Oldest).open().map(|mut sub| drain(&mut sub))
    })
}

fn open_err(path: &Path) -> OpenError {
    match open_and_drain(path) {
        Err(e) => e,
        Ok(o) => panic!("{}: opened a hostile file ({o:?})", path.display()),
    }
}

/// Attach a publisher to a damaged ring, publish, and check that a new subscriber reads only
/// genuine messages in order up to the last one. Returns whether recovery discarded the ring.
fn attach_and_publish(path: &Path) -> bool {
    bounded(&format!("attach to {}", path.display()), BOUND_SECS, || {
        let mut p = Publisher::builder(path)
            .capacity(CAPACITY)
            .max_message(MAX_MSG as u32)
            .create()
            .expect("a publisher attaches to a ring with a valid header, whatever its contents");
        let rec = p.recovery().expect("attached, not created");
        let mut buf = Vec::new();
        let mut last = 0;
        for _ in 0..40 {
            let seq = p.next_seq();
            payload_into(seq, MAX_MSG, &mut buf);
            last = p.publish(&buf).unwrap();
        }
        let mut sub = Subscriber::open(path).unwrap();
        let mut rbuf = vec![0u8; sub.max_message()];
        let mut prev: Option<u64> = None;
        for _ in 0..10_000 {
            match sub.try_recv(&mut rbuf) {
                Ok(Some(m)) => {
                    assert!(payload_matches(m.seq, MAX_MSG, &rbuf[..m.len]), "bad message {m:?} after recovery");
                    if let Some(prev) = prev {
                        assert_eq!(m.seq, prev + 1 + m.lost);
                    }
                    prev = Some(m.seq);
                }
                Ok(None) => break,
                Err(e) => panic!("read error after recovery ({rec:?}): {e}"),
            }
        }
        assert_eq!(prev, Some(last), "a new subscriber reads up to the last message after recovery");
        rec.discarded
    })
}

#[test]
fn an_empty_file_is_not_ready() {
    let dir = shm_tempdir();
    let path = put(dir.path(), "empty.ring", &[]);
    assert!(matches!(open_err(&path), OpenError::NotReady { .. }));
    // All zeros: not a podcache file (a v4 creator's first store is the creating magic).
    let path = put(dir.path(), "zeros.ring", &[0u8; FILE_LEN]);
    assert!(matches!(open_err(&path), OpenError::Foreign { .. }));
    // Every field written, the creating magic still in place: a creator that died half-way.
    let mut b = real_ring(dir.path(), 10);
    set_word(&mut b, 0, header::CREATING);
    let path = put(dir.path(), "unready.ring", &b);
    assert!(matches!(open_err(&path), OpenError::NotReady { .. }));
}

#[test]
fn a_file_shorter_than_a_header_is_truncated() {
    let dir = shm_tempdir();
    let real = real_ring(dir.path(), 10);
    for len in [1usize, 7, 8, 100, 255] {
        let path = put(dir.path(), &format!("short-{len}.ring"), &real[..len]);
        match open_err(&path) {
            OpenError::Truncated { expected, actual, .. } => assert_eq!((expected, actual), (HEADER_BYTES, len as u64)),
            other => panic!("{len} bytes: expected Truncated, got {other:?}"),
        }
    }
}

#[test]
fn a_file_shorter_than_its_header_says_is_truncated() {
    let dir = shm_tempdir();
    let real = real_ring(dir.path(), 10);
    for len in [256usize, 4096, FILE_LEN - 8, FILE_LEN - 1] {
        let path = put(dir.path(), &format!("cut-{len}.ring"), &real[..len]);
        let err = open_err(&path);
        match &err {
            OpenError::Truncated { expected, actual, .. } => {
                assert_eq!((*expected, *actual), (FILE_LEN as u64, len as u64))
            }
            other => panic!("{len} bytes: expected Truncated, got {other:?}"),
        }
        assert!(err.to_string().contains(&len.to_string()), "{err}");
    }
    // A longer file is fine: the ring only uses what its header says.
    let mut longer = real.clone();
    longer.extend_from_slice(&[0xEE; 4096]);
    let path = put(dir.path(), "longer.ring", &longer);
    let o = open_and_drain(&path).expect("extra bytes after the ring are ignored");
    assert_eq!((o.msgs, o.foreign, o.last_seq), (10, 0, Some(10)));
}

#[test]
fn a_foreign_file_is_foreign() {
    let dir = shm_tempdir();
    let real = real_ring(dir.path(), 10);
    let mut text = b"# not a podcache file\n".repeat(400);
    text.truncate(FILE_LEN);
    let path = put(dir.path(), "text.ring", &text);
    assert!(matches!(open_err(&path), OpenError::Foreign { .. }));

    for magic in [*b"PODCACHF", *b"podcache", [0xFF; 8]] {
        let mut b = real.clone();
        b[..8].copy_from_slice(&magic);
        reseal(&mut b);
        let path = put(dir.path(), "magic.ring", &b);
        let err = open_err(&path);
        assert!(matches!(&err, OpenError::Foreign { .. }), "magic {magic:?}: {err:?}");
        assert!(err.to_string().contains(&path.display().to_string()), "{err}");
    }
}

#[test]
fn another_layout_version_is_a_version_mismatch() {
    let dir = shm_tempdir();
    let real = real_ring(dir.path(), 10);
    for version in [LAYOUT_VERSION + 1, 0, u32::MAX] {
        let mut b = real.clone();
        set_word(&mut b, VERSION_KIND, u64::from(version) | (1 << 32));
        reseal(&mut b);
        let path = put(dir.path(), "version.ring", &b);
        let err = open_err(&path);
        match &err {
            OpenError::VersionMismatch { found, expected, .. } => {
                assert_eq!((*found, *expected), (version, LAYOUT_VERSION))
            }
            other => panic!("version {version}: expected VersionMismatch, got {other:?}"),
        }
        let shown = err.to_string();
        assert!(shown.contains(&version.to_string()) && shown.contains(&LAYOUT_VERSION.to_string()), "{shown}");
    }
}

#[test]
fn another_kind_of_file_is_wrong_kind() {
    let dir = shm_tempdir();
    let real = real_ring(dir.path(), 10);
    for kind in [2u32, 0, 99, u32::MAX] {
        let mut b = real.clone();
        set_word(&mut b, VERSION_KIND, u64::from(LAYOUT_VERSION) | (u64::from(kind) << 32));
        reseal(&mut b);
        let path = put(dir.path(), "kind.ring", &b);
        match open_err(&path) {
            OpenError::WrongKind { found, expected, .. } => assert_eq!((found, expected), (kind, Kind::Ring)),
            other => panic!("kind {kind}: expected WrongKind, got {other:?}"),
        }
    }
}

#[test]
fn a_header_that_does_not_match_its_checksums_is_corrupt() {
    let dir = shm_tempdir();
    let real = real_ring(dir.path(), 10);
    // Edits without resealing: the header crc catches them.
    for (off, v) in [(P_CAPACITY, 8192), (P_MAX_MSG, 100), (FILE_SIZE, 4096), (HEADER_CRC, 0)] {
        let mut b = real.clone();
        set_word(&mut b, off, v);
        let path = put(dir.path(), "crc.ring", &b);
        assert!(matches!(open_err(&path), OpenError::Corrupt { .. }), "word {off:#x} = {v}");
    }
    // A layout hash that does not match the parameters, with a valid crc.
    let mut b = real.clone();
    set_word(&mut b, PARAMS_HASH, 12345);
    let mut h = crc32fast::Hasher::new();
    h.update(&b[..0x28]);
    h.update(&b[0x40..0x80]);
    set_word(&mut b, HEADER_CRC, u64::from(h.finalize()));
    let path = put(dir.path(), "hash.ring", &b);
    assert!(matches!(open_err(&path), OpenError::Corrupt { .. }));
    // Impossible file sizes.
    for size in [0u64, 100, FILE_LEN as u64 + 3] {
        let mut b = real.clone();
        set_word(&mut b, FILE_SIZE, size);
        reseal(&mut b);
        let path = put(dir.path(), "size.ring", &b);
        assert!(matches!(open_err(&path), OpenError::Corrupt { .. } | OpenError::Truncated { .. }), "size {size}");
    }
}

/// A sealed header with ring parameters this format never produces.
fn absurd(dir: &Path, real: &[u8], data_offset: u64, capacity: u64, max_msg: u64) -> PathBuf {
    let mut b = real.to_vec();
    set_word(&mut b, P_DATA_OFFSET, data_offset);
    set_word(&mut b, P_CAPACITY, capacity);
    set_word(&mut b, P_MAX_MSG, max_msg);
    reseal(&mut b);
    put(dir, "absurd.ring", &b)
}

#[test]
fn absurd_ring_parameters_are_corrupt() {
    let dir = shm_tempdir();
    let real = real_ring(dir.path(), 10);
    let cases: [(u64, u64, u64); 11] = [
        (4096, 3000, 256),    // capacity not a power of two
        (4096, 0, 256),       // no capacity
        (4096, 64, 8),        // below the minimum
        (4096, 1 << 50, 256), // beyond the maximum
        (4096, 4096, 0),      // no message fits
        (4096, 4096, 2000),   // message larger than a quarter of the ring
        (4096, 4096, 1 << 40),
        (4096, 4096, u64::MAX),
        (100, 4096, 256),     // overlaps the header and control block
        (4097, 4096, 256),    // unaligned
        (1 << 30, 4096, 256), // absurdly far
    ];
    for (data_offset, capacity, max_msg) in cases {
        let path = absurd(dir.path(), &real, data_offset, capacity, max_msg);
        let err = open_err(&path);
        assert!(
            matches!(&err, OpenError::Corrupt { .. }),
            "data offset {data_offset}, capacity {capacity}, max {max_msg}: {err:?}"
        );
    }
}

/// A sealed header naming no checksum algorithm, or one this build does not know: a reader
/// that went on would accept records it cannot check, so the file is corrupt for it.
#[test]
fn a_ring_naming_an_unknown_checksum_algorithm_is_corrupt() {
    let dir = shm_tempdir();
    let real = real_ring(dir.path(), 10);
    assert_eq!(word(&real, P_CHECKSUM), 1, "the real ring names CRC-32/IEEE");
    for algorithm in [0u64, 2, u64::MAX] {
        let mut b = real.clone();
        set_word(&mut b, P_CHECKSUM, algorithm);
        reseal(&mut b);
        let path = put(dir.path(), "checksum.ring", &b);
        let err = open_err(&path);
        assert!(matches!(&err, OpenError::Corrupt { .. }), "checksum algorithm {algorithm}: {err:?}");
        assert!(err.to_string().contains("checksum algorithm"), "the error names the cause: {err}");
    }
}

/// A (sparse) file that is as large as its header says, describing a 16 GiB ring with
/// messages of up to 4 GiB: every check of layout version 3 passed, and a subscriber sized its
/// buffers by that. Messages over 64 MiB are beyond the format, so it is corrupt.
#[test]
fn a_ring_claiming_messages_over_the_format_limit_is_corrupt() {
    let dir = shm_tempdir();
    let real = real_ring(dir.path(), 10);
    let capacity = 1u64 << 34;
    let max_msg = (capacity / 4 - 16) & !7;
    let mut b = real[..DATA].to_vec();
    set_word(&mut b, P_CAPACITY, capacity);
    set_word(&mut b, P_MAX_MSG, max_msg);
    set_word(&mut b, FILE_SIZE, DATA as u64 + capacity);
    reseal(&mut b);
    let path = put(dir.path(), "huge.ring", &b);
    std::fs::OpenOptions::new().write(true).open(&path).unwrap().set_len(DATA as u64 + capacity).unwrap();
    let err = open_err(&path);
    assert!(matches!(&err, OpenError::Corrupt { .. }), "max message {max_msg}: {err:?}");
}

/// Parameters that pass every check on their own but describe a ring that does not fit in
/// the file: the reader must compare them with the file size before using them.
#[test]
fn ring_parameters_beyond_the_end_of_the_file_are_an_error() {
    let dir = shm_tempdir();
    let real = real_ring(dir.path(), 10);
    for (data_offset, capacity, max_msg) in [(1 << 20, 4096, 256), (4096, 1 << 20, 256), (8192, 4096, 256)] {
        let path = absurd(dir.path(), &real, data_offset, capacity, max_msg);
        let result = open_and_drain(&path);
        assert!(
            matches!(result, Err(OpenError::Corrupt { .. } | OpenError::Truncated { .. })),
            "ring at {data_offset} of {capacity} B in a file of {FILE_LEN} B: {result:?}"
        );
    }
}

#[test]
fn random_bytes_give_errors_not_panics_or_hangs() {
    let dir = shm_tempdir();
    let real = real_ring(dir.path(), 100);
    let mut rng = Rng::new(0x5EED_0001);
    let (mut opened, mut failed) = (0, 0);
    for case in 0..600u64 {
        let len = match case % 3 {
            0 => [0, 1, 255, 256, 257, 4096, FILE_LEN, FILE_LEN + 8, 3 * 4096][rng.below_usize(9)],
            _ => [FILE_LEN, FILE_LEN + 8, 3 * 4096][rng.below_usize(3)],
        };
        let mut b = vec![0u8; len];
        rng.fill(&mut b);
        match case % 3 {
            // Pure noise.
            0 => {}
            // A valid header over noise: control words and records are random.
            1 => b[..DATA].copy_from_slice(&real[..DATA]),
            // A valid header and data region with random control words only.
            _ => {
                b[..DATA].copy_from_slice(&real[..DATA]);
                b[DATA..FILE_LEN].copy_from_slice(&real[DATA..]);
                for off in [TAIL, TAIL_SEQ, LEASE, HEAD] {
                    // Mostly small positions (near the real ones), sometimes anything.
                    let v = if rng.below(2) == 0 { rng.below(1 << 16) } else { rng.next_u64() };
                    set_word(&mut b, off, v);
                }
            }
        }
        let path = put(dir.path(), &format!("random-{case}.ring"), &b);
        match open_and_drain(&path) {
            Ok(o) => {
                opened += 1;
                if case % 3 == 2 {
                    assert_eq!(o.foreign, 0, "case {case}: a message that is not genuine was returned: {o:?}");
                }
            }
            Err(_) => failed += 1,
        }
        std::fs::remove_file(&path).unwrap();
    }
    println!("random files: {opened} opened (and read), {failed} refused");
    assert!(opened >= 300 && failed >= 100);
}

#[test]
fn random_damage_to_a_real_ring_never_yields_a_bad_message() {
    let dir = shm_tempdir();
    let real = real_ring(dir.path(), 300);
    let mut rng = Rng::new(0x5EED_0002);
    let (mut corrupt, mut discarded) = (0, 0);
    for case in 0..300 {
        let mut b = real.clone();
        for _ in 0..1 + rng.below(8) {
            // Anywhere after the header: control block or data region.
            let at = 0x100 + rng.below_usize(FILE_LEN - 0x100);
            b[at] ^= 1 << rng.below(8);
        }
        let path = put(dir.path(), &format!("damaged-{case}.ring"), &b);
        let o = open_and_drain(&path).expect("the header is intact");
        assert_eq!(o.foreign, 0, "case {case}: a damaged ring handed out a wrong message: {o:?}");
        corrupt += o.corrupt;
        discarded += u64::from(attach_and_publish(&path));
        std::fs::remove_file(&path).unwrap();
    }
    println!("damaged rings: {corrupt} corrupt records reported, {discarded} of 300 discarded by the publisher");
    assert!(corrupt > 0 && discarded > 0);
}

#[test]
fn garbage_control_words_give_typed_errors_and_a_publisher_recovers() {
    let dir = shm_tempdir();
    let real = real_ring(dir.path(), 300);
    let (tail, head) = (word(&real, TAIL), word(&real, HEAD));
    assert!(head < tail && tail > CAPACITY, "the real ring has wrapped");
    let cap = CAPACITY;
    let aligned_max = !7u64;
    let cases: Vec<(&str, Vec<(usize, u64)>)> = vec![
        ("tail at u64::MAX", vec![(TAIL, u64::MAX)]),
        ("tail unaligned", vec![(TAIL, tail + 3)]),
        ("head unaligned", vec![(HEAD, head + 4)]),
        ("tail below head", vec![(HEAD, tail + 800)]),
        ("tail many rings past head", vec![(TAIL, head + 5 * cap)]),
        ("tail inside a record", vec![(TAIL, tail - 8)]),
        ("head inside a record", vec![(HEAD, head + 8)]),
        ("lease zero", vec![(LEASE, 0)]),
        ("lease at u64::MAX", vec![(LEASE, u64::MAX)]),
        ("everything at u64::MAX", vec![(TAIL, aligned_max), (HEAD, aligned_max), (LEASE, aligned_max)]),
        ("everything zero", vec![(TAIL, 0), (HEAD, 0), (LEASE, 0), (TAIL_SEQ, 0)]),
        ("tail_seq at u64::MAX", vec![(TAIL_SEQ, u64::MAX)]),
        ("notify and wake window at u64::MAX", vec![(NOTIFY, u64::MAX), (WAKE_WINDOW, u64::MAX)]),
        ("wake window of centuries", vec![(WAKE_WINDOW, u64::MAX - 1)]),
    ];
    for (what, edits) in cases {
        let mut b = real.clone();
        for (off, v) in edits {
            set_word(&mut b, off, v);
        }
        let path = put(dir.path(), "ctrl.ring", &b);
        // A subscriber that has the damaged ring open while the publisher repairs it.
        let mut old = bounded(what, BOUND_SECS, || Subscriber::open(&path)).expect("the header is intact");
        let o = bounded(what, BOUND_SECS, || drain(&mut old));
        assert_eq!(o.foreign, 0, "{what}: a wrong message was returned: {o:?}");
        let discarded = attach_and_publish(&path);
        // The open subscriber follows the repaired ring to its end without further errors.
        let after = bounded(what, BOUND_SECS, || drain(&mut old));
        assert_eq!((after.foreign, after.corrupt), (0, 0), "{what}: after recovery: {after:?}");
        assert!(after.last_seq.is_some(), "{what}: the open subscriber reads the new messages: {after:?}");
        println!("{what}: before recovery {o:?}; discarded {discarded}; after {after:?}");
    }
}

#[test]
fn records_claiming_impossible_lengths_are_corrupt() {
    let dir = shm_tempdir();
    let real = real_ring(dir.path(), 10);
    let head = word(&real, HEAD);
    assert_eq!(head, 0, "ten messages do not wrap");
    let first = DATA;
    let crc_hi = word(&real, first) & !0xFFFF_FFFF;
    // (len word, why)
    let cases = [
        (0xFFFF_FFF0u64, "huge"),
        (MAX_MSG as u64 + 1, "longer than the ring's maximum"),
        (0, "empty"),
        (0xFFFF_FFFF, "a padding marker at the start of the ring"),
    ];
    for (len, why) in cases {
        let mut b = real.clone();
        set_word(&mut b, first, crc_hi | len);
        let path = put(dir.path(), "len.ring", &b);
        let mut sub = bounded(why, BOUND_SECS, || Subscriber::open(&path)).unwrap();
        let mut buf = vec![0u8; sub.max_message()];
        match bounded(why, BOUND_SECS, || sub.try_recv(&mut buf)) {
            Err(RecvError::Corrupt { pos, .. }) => assert_eq!(pos, 0, "{why}"),
            other => panic!("{why}: expected Corrupt, got {other:?}"),
        }
        assert!(attach_and_publish(&path), "{why}: the publisher discards a ring it cannot verify");
    }
    // A record that would run past the end of the data region.
    let mut b = real.clone();
    let near_end = CAPACITY - 32;
    put_record(&mut b, near_end, 1, &[7u8; 100]);
    set_word(&mut b, HEAD, near_end);
    set_word(&mut b, TAIL, near_end + 128);
    set_word(&mut b, LEASE, near_end + 128);
    let path = put(dir.path(), "straddle.ring", &b);
    let mut sub = Subscriber::open(&path).unwrap();
    let mut buf = vec![0u8; sub.max_message()];
    assert!(matches!(bounded("straddle", BOUND_SECS, || sub.try_recv(&mut buf)), Err(RecvError::Corrupt { .. })));
    attach_and_publish(&path);
}

/// Three crafted records with valid checksums: sequence numbers `u64::MAX - 1`, `u64::MAX`, 0.
fn largest_sequence_ring(dir: &Path) -> PathBuf {
    let mut b = real_ring(dir, 1);
    put_record(&mut b, 0, u64::MAX - 1, b"first");
    put_record(&mut b, 24, u64::MAX, b"last");
    put_record(&mut b, 48, 0, b"after");
    set_word(&mut b, HEAD, 0);
    set_word(&mut b, TAIL, 72);
    set_word(&mut b, LEASE, CAPACITY);
    set_word(&mut b, TAIL_SEQ, 1);
    put(dir, "largest-seq.ring", &b)
}

/// Attach a publisher to a crafted ring, publish three messages, and check that a new
/// subscriber reads up to the last of them (what it reads before is crafted, not checked).
fn attach_publish_and_read(path: &Path) {
    bounded(&format!("attach to {}", path.display()), BOUND_SECS, || {
        let mut p = Publisher::builder(path).capacity(CAPACITY).max_message(MAX_MSG as u32).create().expect("attach");
        assert!(p.recovery().is_some());
        let (mut buf, mut last) = (Vec::new(), 0);
        for _ in 0..3 {
            payload_into(p.next_seq(), MAX_MSG, &mut buf);
            last = p.publish(&buf).expect("publish");
        }
        let o = drain(&mut Subscriber::open(path).expect("open"));
        assert_eq!(o.last_seq, Some(last), "{o:?}");
    })
}

/// Sequence numbers above `MAX_SEQ` (2^63) only exist in hostile files: the record is
/// reported corrupt (no arithmetic overflows, no panic in debug builds).
#[test]
fn a_record_with_the_largest_sequence_number_is_corrupt() {
    let dir = shm_tempdir();
    let path = largest_sequence_ring(dir.path());
    let o = open_and_drain(&path).expect("valid header");
    assert_eq!((o.msgs, o.corrupt), (0, 1), "{o:?}");
}

/// The same ring given to a publisher: recovery walks the records and continues the sequence.
#[test]
fn a_record_with_the_largest_sequence_number_does_not_panic_a_recovering_publisher() {
    let dir = shm_tempdir();
    attach_publish_and_read(&largest_sequence_ring(dir.path()));
}

/// A ring whose records sit at the very end of the `u64` position range: the first record
/// starts 64 bytes before 2^64, the second (or a padding marker) ends exactly at 2^64.
fn end_of_range_ring(dir: &Path, pad: bool) -> PathBuf {
    let start = u64::MAX - 63;
    let mut b = real_ring(dir, 1);
    put_record(&mut b, start, 1, b"sixteen bytes!!!");
    if pad {
        set_word(&mut b, DATA + ((start + 32) % CAPACITY) as usize, 0xFFFF_FFFF);
    } else {
        put_record(&mut b, start + 32, 2, b"sixteen more!!!!");
    }
    set_word(&mut b, HEAD, start);
    set_word(&mut b, TAIL, !7u64);
    set_word(&mut b, LEASE, 0);
    put(dir, &format!("end-of-range-{pad}.ring"), &b)
}

/// Positions above `MAX_POS` (2^62) only exist in hostile files: a record or padding marker
/// there is reported corrupt (advancing past it would overflow).
#[test]
fn records_at_the_end_of_the_position_range_are_corrupt() {
    let dir = shm_tempdir();
    for pad in [false, true] {
        let o = open_and_drain(&end_of_range_ring(dir.path(), pad)).expect("valid header");
        assert_eq!((o.msgs, o.corrupt), (0, 1), "pad {pad}: {o:?}");
    }
}

#[test]
fn a_publisher_discards_a_ring_at_the_end_of_the_position_range() {
    let dir = shm_tempdir();
    for pad in [false, true] {
        assert!(attach_and_publish(&end_of_range_ring(dir.path(), pad)), "positions that far are implausible");
    }
}

/// An empty ring whose next sequence number is the largest one: publishing must not panic.
#[test]
fn a_publisher_attaching_at_the_last_sequence_number_does_not_panic() {
    let dir = shm_tempdir();
    let mut b = real_ring(dir.path(), 1);
    let tail = word(&b, TAIL);
    set_word(&mut b, HEAD, tail);
    set_word(&mut b, TAIL_SEQ, u64::MAX);
    let path = put(dir.path(), "exhausted.ring", &b);
    let result = bounded("attach at the last sequence", BOUND_SECS, || {
        let mut p = Publisher::builder(&path).capacity(CAPACITY).max_message(MAX_MSG as u32).create()?;
        for _ in 0..3 {
            let _ = p.publish(b"more");
        }
        Ok::<_, podcache_writer::CreateError>(p.next_seq())
    });
    println!("attach at the last sequence number: {result:?}");
    assert!(open_and_drain(&path).is_ok());
}
