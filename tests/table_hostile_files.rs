//! The file is untrusted input (rule 4): truncated, foreign, corrupted, random and crafted
//! table files given to `TableReader::open` and to gets and `keys()` give a typed error, a miss
//! or a genuine value of the key asked for — never a panic, an out-of-bounds access, an endless
//! loop or another key's value (every open and read runs under a watchdog; key walks are
//! bounded). A `TableWriter` attaching to a damaged table recovers (clears bad slots, cuts bad
//! segments, recounts the index) and then works.
//!
//! Files are built by a real `TableWriter`, then edited at the offsets of the byte map
//! (docs/design.md §4.2, `TableImage` in support.rs); header edits go through
//! `header::write_fields` + `publish_ready` so that the reader rejects the edit, not the
//! header checksum.

use podcache_format::header::{self, HEADER_BYTES, PARAM_WORDS};
use podcache_reader::{GetError, Kind, OpenError, Subscriber, TableReader};
use podcache_tests::{
    kv_key, kv_key_id, kv_value, shm_tempdir, watched, Rng, SharedWords, TableImage, TableLayout, Watchdog, FILL_BITS,
    LOC_BITS, REC_ALIGN, TABLE_STATS, TAG_SHIFT,
};
use podcache_writer::{CreateError, Publisher, TableRecovery, TableWriter};
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// Seconds any one open-and-read or attach may take before the watchdog aborts the binary.
const BOUND_SECS: u64 = 120;
const SEGMENT: u64 = 4096;
const MAX_VALUE: usize = 300;
const LOC_MASK: u64 = (1 << LOC_BITS) - 1;
const FILL_MASK: u64 = (1 << FILL_BITS) - 1;

/// A table geometry, as a writer is configured.
#[derive(Clone, Copy, Debug)]
struct Geometry {
    max_items: u64,
    data_bytes: u64,
    /// Keys `0..keys` are written.
    keys: u64,
}

/// 49 buckets: fewer than the probe bound, so a probe can wrap around the whole index.
const SMALL: Geometry = Geometry { max_items: 300, data_bytes: 16 * SEGMENT, keys: 250 };
/// 327 buckets: more than the probe bound (128).
const BIG: Geometry = Geometry { max_items: 2000, data_bytes: 64 * SEGMENT, keys: 1500 };

impl Geometry {
    fn writer(&self, path: &Path) -> Result<TableWriter, CreateError> {
        TableWriter::builder(path).max_items(self.max_items).data_bytes(self.data_bytes).segment_size(SEGMENT).create()
    }

    /// Key ids to probe: every written one and as many never written.
    fn universe(&self) -> std::ops::Range<u64> {
        0..2 * self.keys
    }
}

/// Every value ever written for each key (a hostile slot may point at an old one: it is still
/// a genuine value of the key), and the value each key has now.
#[derive(Clone, Debug, Default)]
struct Written {
    all: HashMap<u64, Vec<Vec<u8>>>,
    current: HashMap<u64, Vec<u8>>,
}

impl Written {
    fn is_genuine(&self, id: u64, v: &[u8]) -> bool {
        self.all.get(&id).is_some_and(|vs| vs.iter().any(|x| x == v))
    }

    /// What [`read_all`] gives on the intact table: every present key found with each of the
    /// 3 get flavours and listed once, every absent key of the universe a miss with each.
    fn intact(&self, g: Geometry) -> Outcome {
        let present = self.current.len() as u64;
        let absent = g.universe().end - g.universe().start - present;
        Outcome { hits: 3 * present, misses: 3 * absent, corrupt: 0, keys_listed: present, keys_corrupt: 0 }
    }
}

/// A real table: keys `0..keys` put with version 1; every 4th overwritten (version 2), every
/// 5th put again with an hour's TTL (version 3), every 9th deleted. No eviction happens.
fn real_table(dir: &Path, name: &str, g: Geometry) -> (PathBuf, TableImage, Written) {
    let path = dir.join(name);
    let mut w = g.writer(&path).expect("create");
    let mut written = Written::default();
    let mut put = |w: &mut TableWriter, id: u64, version: u64, ttl: bool| {
        let v = kv_value(id, version, MAX_VALUE);
        if ttl {
            w.put_with_ttl(&kv_key(id), &v, Duration::from_secs(3600)).unwrap();
        } else {
            w.put(&kv_key(id), &v).unwrap();
        }
        written.all.entry(id).or_default().push(v.clone());
        written.current.insert(id, v);
    };
    for id in 0..g.keys {
        put(&mut w, id, 1, false);
    }
    for id in (0..g.keys).step_by(4) {
        put(&mut w, id, 2, false);
    }
    for id in (0..g.keys).step_by(5) {
        put(&mut w, id, 3, true);
    }
    for id in (0..g.keys).step_by(9) {
        assert!(w.delete(&kv_key(id)));
        written.current.remove(&id);
    }
    let s = w.stats();
    assert_eq!((s.evictions, s.items), (0, written.current.len() as u64), "no eviction in the real table");
    drop(w);
    let img = TableImage::read(&path);
    assert_eq!(img.stored_overflow_counts(), img.true_overflow_counts(), "the writer's overflow counts");
    assert_eq!(img.layout().data_offset + img.layout().nsegments * SEGMENT, img.bytes.len() as u64);
    (path, img, written)
}

fn put_file(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

/// What reading a hostile table gave.
#[derive(Debug, Default, PartialEq, Eq)]
struct Outcome {
    hits: u64,
    misses: u64,
    corrupt: u64,
    keys_listed: u64,
    keys_corrupt: u64,
}

/// Get every key of the universe with every flavour and walk `keys()` (bounded), checking that
/// a value is a genuine value of the key asked for and that errors are only `Corrupt` (counted:
/// tests assert how many; any other error fails the test).
fn read_all(rd: &TableReader, g: Geometry, written: &Written) -> Outcome {
    let mut o = Outcome::default();
    let mut buf = vec![0u8; SEGMENT as usize];
    let take = |o: &mut Outcome, id: u64, what: &str, r: Result<Option<Vec<u8>>, GetError>| match r {
        Ok(Some(v)) => {
            assert!(written.is_genuine(id, &v), "{what} of key {id} returned bytes that are not a value of that key");
            o.hits += 1;
        }
        Ok(None) => o.misses += 1,
        Err(GetError::Corrupt { .. }) => o.corrupt += 1,
        Err(e) => panic!("{what} of key {id} on a file nobody writes: {e:?}"),
    };
    // A batched get on a file nobody writes says what single gets say.
    let ids: Vec<u64> = g.universe().collect();
    let keys: Vec<Vec<u8>> = ids.iter().map(|&id| kv_key(id)).collect();
    let mut batched = Vec::new();
    rd.get_many(&keys, &mut buf, |i, r| batched.push((i, r.map(|v| v.map(<[u8]>::to_vec)))));
    assert_eq!(batched.len(), keys.len(), "get_many reports every key once");
    for (i, r) in batched {
        let single = rd.get(&keys[i], &mut buf).map(|r| r.map(|len| buf[..len].to_vec()));
        assert_eq!(r, single, "get_many vs get of key {}", ids[i]);
    }
    for id in g.universe() {
        let key = kv_key(id);
        take(&mut o, id, "get_vec", rd.get_vec(&key));
        take(&mut o, id, "get", rd.get(&key, &mut buf).map(|r| r.map(|len| buf[..len].to_vec())));
        let with = rd.get_with(&key, |v| v.to_vec());
        assert_eq!(rd.contains(&key), with.clone().map(|v| v.is_some()), "contains of key {id} vs get_with");
        take(&mut o, id, "get_with", with);
    }
    // The iterator yields at most one item per slot: it must end on its own long before this.
    let mut n = 0u64;
    for k in rd.keys() {
        n += 1;
        assert!(n <= 1 << 24, "keys() does not end");
        match k {
            Ok(k) => {
                let id = kv_key_id(&k).unwrap_or_else(|| panic!("keys() returned a key nobody put: {k:?}"));
                assert!(written.all.contains_key(&id), "keys() returned key {id}, never written");
                o.keys_listed += 1;
            }
            Err(GetError::Corrupt { .. }) => o.keys_corrupt += 1,
            Err(e) => panic!("keys() on a file nobody writes: {e:?}"),
        }
    }
    let _ = (rd.stats(), rd.counters(), rd.writer_epoch());
    o
}

/// Open `path` and read everything, under a watchdog.
fn open_and_read(path: &Path, g: Geometry, written: &Written) -> Result<Outcome, OpenError> {
    watched(&format!("open and read {}", path.display()), BOUND_SECS, || {
        TableReader::open(path).map(|rd| read_all(&rd, g, written))
    })
}

fn open_err(path: &Path, g: Geometry) -> OpenError {
    match open_and_read(path, g, &Written::default()) {
        Err(e) => e,
        Ok(o) => panic!("{}: opened a hostile file ({o:?})", path.display()),
    }
}

/// Attach a writer to a damaged table (it must), then check that the recovered table is
/// consistent — every get answers without error and with a genuine value, `keys()` lists each
/// key once and as many as `items` — and that puts, overwrites, deletes and evictions work.
fn attach_and_use(path: &Path, g: Geometry, written: &Written) -> TableRecovery {
    attach_and_use_keeping(path, g, written).0
}

/// [`attach_and_use`], also returning the last 20 pairs it put.
fn attach_and_use_keeping(path: &Path, g: Geometry, written: &Written) -> (TableRecovery, Vec<(u64, Vec<u8>)>) {
    watched(&format!("attach to {}", path.display()), BOUND_SECS, || {
        let mut w = g.writer(path).expect("a writer attaches to a table with a valid header, whatever its contents");
        let rec = w.recovery().expect("attached, not created");
        let rd = TableReader::open(path).expect("open after recovery");
        let after = read_all(&rd, g, written);
        assert_eq!((after.corrupt, after.keys_corrupt), (0, 0), "{rec:?}: still corrupt after recovery: {after:?}");
        let listed: Vec<Vec<u8>> = rd.keys().map(|k| k.expect("keys() after recovery")).collect();
        let unique: HashSet<&Vec<u8>> = listed.iter().collect();
        assert_eq!(unique.len(), listed.len(), "{rec:?}: keys() lists a key twice after recovery");
        assert_eq!(w.stats().items, listed.len() as u64, "{rec:?}: items after recovery");
        assert_eq!(rec.items, w.stats().items);

        // Round trips: new keys, an overwrite, a delete, then enough to evict everything old.
        let mut fresh = Written::default();
        let base = 1 << 20;
        for id in base..base + 50 {
            let v = kv_value(id, 7, MAX_VALUE);
            w.put(&kv_key(id), &v).expect("put after recovery");
            assert_eq!(rd.get_vec(&kv_key(id)).expect("get"), Some(v.clone()), "key {id} after recovery");
            fresh.all.entry(id).or_default().push(v);
        }
        let v = kv_value(base, 8, MAX_VALUE);
        w.put(&kv_key(base), &v).unwrap();
        assert_eq!(rd.get_vec(&kv_key(base)).unwrap(), Some(v));
        assert!(w.delete(&kv_key(base)));
        assert_eq!(rd.get_vec(&kv_key(base)).unwrap(), None);
        let mut id = base + 100;
        let mut last = Vec::new();
        while w.stats().evictions < g.max_items || last.len() < 20 {
            let v = kv_value(id, 9, MAX_VALUE);
            w.put(&kv_key(id), &v).expect("put");
            last.push((id, v));
            id += 1;
            assert!(id < base + 100 + 50 * g.max_items, "no eviction after many puts");
        }
        for (id, v) in &last[last.len() - 20..] {
            assert_eq!(rd.get_vec(&kv_key(*id)).unwrap().as_ref(), Some(v), "recent key {id}");
        }
        let s = w.stats();
        assert!(s.items <= g.max_items && s.bytes_used <= s.bytes_capacity, "{s:?}");
        drop(w);
        // The writer left an index whose overflow counts match its slots.
        let img = TableImage::read(path);
        assert_eq!(img.stored_overflow_counts(), img.true_overflow_counts(), "{rec:?}: overflow counts");
        (rec, last.split_off(last.len() - 20))
    })
}

fn key_slot(img: &TableImage, id: u64) -> (usize, u64) {
    img.slot_of(&kv_key(id)).unwrap_or_else(|| panic!("key {id} has a slot"))
}

/// How many present keys other than `id` carry `id`'s tag. A get of such a key may meet `id`'s
/// damaged slot on its probe path; it cannot tell whose slot that was, so `Corrupt` is a right
/// answer for it too (a wrong value never is: `read_all` checks every value it gets).
fn tag_sharers(img: &TableImage, written: &Written, id: u64) -> u64 {
    let (_, tag) = img.home_tag(&kv_key(id));
    written.current.keys().filter(|&&other| other != id && img.home_tag(&kv_key(other)).1 == tag).count() as u64
}

/// A present key whose record lies in segment `seg`, with its slot.
fn present_in_segment(img: &TableImage, written: &Written, seg: u64) -> (u64, usize, u64) {
    let mut ids: Vec<u64> = written.current.keys().copied().collect();
    ids.sort_unstable();
    ids.into_iter()
        .find_map(|id| {
            let (off, v) = key_slot(img, id);
            (img.seg_of_loc(v & LOC_MASK) == seg).then_some((id, off, v))
        })
        .expect("a key in that segment")
}

// ---------------------------------------------------------------------------------------------
// Empty, truncated, foreign files

#[test]
fn an_empty_or_unfinished_table_file_is_not_ready() {
    let dir = shm_tempdir();
    let (_, img, _) = real_table(dir.path(), "real.table", SMALL);
    let path = put_file(dir.path(), "empty.table", &[]);
    assert!(matches!(open_err(&path, SMALL), OpenError::NotReady { .. }));
    // All zeros: not a podcache file (a v4 creator's first store is the creating magic).
    let path = put_file(dir.path(), "zeros.table", &vec![0u8; img.bytes.len()]);
    assert!(matches!(open_err(&path, SMALL), OpenError::Foreign { .. }));
    // Every header field written, the creating magic still in place: a creator that died
    // half-way.
    let mut b = img.clone();
    b.set_word(0, header::CREATING);
    let path = put_file(dir.path(), "unready.table", &b.bytes);
    assert!(matches!(open_err(&path, SMALL), OpenError::NotReady { .. }));
    // A foreign file: not ready, and the magic is wrong.
    b.bytes[..8].copy_from_slice(b"NOTMAGIC");
    let path = put_file(dir.path(), "foreign.table", &b.bytes);
    assert!(matches!(open_err(&path, SMALL), OpenError::Foreign { .. }));
}

/// Regression test of a fixed bug. Before the fix, a writer that finds a file whose ready flag is not set initialises it "fresh"
/// (crates/format/src/file.rs `create_or_attach` → `init_fresh`, then
/// `table::TableWriter::create`, documented as taking "a freshly created (all-zero) table"),
/// but nothing zeroes the statistics, segment table and index that are already in the file:
/// `fallocate` keeps existing bytes. A file whose ready word was lost (a creator that died after
/// writing, a flipped bit, a hostile file) then shows readers the old keys — which the new
/// writer does not count and overwrites under the same generation —, noise in the index makes
/// every put fail with `IndexFull`, and a stale slot reaches the writer's own unchecked
/// lookup (`find` → `key_at` → `header_at`, which indexed the mapping with the slot's `loc`):
/// a put whose tag matches a slot pointing beyond the mapping panics with an out-of-bounds
/// index.
#[test]
fn a_writer_initialising_an_unfinished_file_starts_from_an_empty_table() {
    let dir = shm_tempdir();
    let (_, img, written) = real_table(dir.path(), "real.table", SMALL);
    let mut b = img.clone();
    b.set_word(0, header::CREATING);
    let path = put_file(dir.path(), "unready.table", &b.bytes);
    let w = SMALL.writer(&path).expect("a writer initialises an unfinished file");
    assert!(w.recovery().is_none() && w.epoch() == 1, "initialised, not attached");
    let rd = TableReader::open(&path).unwrap();
    let stale = written.current.keys().filter(|&&id| !matches!(rd.get_vec(&kv_key(id)), Ok(None))).count();
    assert_eq!((rd.keys().count(), stale, w.stats().items), (0, 0, 0), "an initialised table is empty");
    drop(w);
    // Noise under an unfinished header: once initialised, the table takes puts.
    let mut rng = Rng::new(0x7AB1_E004);
    rng.fill(&mut b.bytes[HEADER_BYTES as usize..]);
    let path = put_file(dir.path(), "unready-noise.table", &b.bytes);
    let mut w = SMALL.writer(&path).expect("initialise");
    for id in 0..100 {
        w.put(&kv_key(id), kv_value(id, 1, MAX_VALUE)).expect("a put into an initialised table");
    }
    drop(w);
    // A stale slot under the tag of the key being put, pointing beyond the file: the writer's
    // own lookup must not index beyond its mapping.
    let mut b = img.clone();
    b.set_word(0, header::CREATING);
    let (home, tag) = b.home_tag(&kv_key(1 << 20));
    let off = b.slot_off(home, 6);
    b.set_word(off, (tag << TAG_SHIFT) | LOC_MASK);
    let path = put_file(dir.path(), "unready-slot.table", &b.bytes);
    let outcome = std::panic::catch_unwind(|| {
        let mut w = SMALL.writer(&path).expect("initialise");
        w.put(&kv_key(1 << 20), kv_value(1 << 20, 1, MAX_VALUE)).expect("put");
    });
    assert!(outcome.is_ok(), "the writer panicked putting into an initialised table");
}

#[test]
fn a_truncated_table_file_is_truncated_for_readers_and_writers() {
    let dir = shm_tempdir();
    let (_, img, written) = real_table(dir.path(), "real.table", SMALL);
    let full = img.bytes.len();
    for len in [1usize, 8, 100, 255] {
        let path = put_file(dir.path(), &format!("short-{len}.table"), &img.bytes[..len]);
        match open_err(&path, SMALL) {
            OpenError::Truncated { expected, actual, .. } => assert_eq!((expected, actual), (HEADER_BYTES, len as u64)),
            other => panic!("{len} bytes: expected Truncated, got {other:?}"),
        }
    }
    let l = img.layout();
    for len in [256usize, 0x180, l.index_offset as usize, l.data_offset as usize, full - 8, full - 1] {
        let path = put_file(dir.path(), &format!("cut-{len}.table"), &img.bytes[..len]);
        let err = open_err(&path, SMALL);
        match &err {
            OpenError::Truncated { expected, actual, .. } => {
                assert_eq!((*expected, *actual), (full as u64, len as u64))
            }
            other => panic!("{len} bytes: expected Truncated, got {other:?}"),
        }
        assert!(err.to_string().contains(&path.display().to_string()), "{err}");
        // A writer refuses it too, and neither truncates nor extends it.
        match watched("writer on a truncated file", BOUND_SECS, || SMALL.writer(&path)) {
            Err(CreateError::Existing(OpenError::Truncated { .. })) => {}
            Err(e) => panic!("{len} bytes: a writer expected Existing(Truncated), got {e:?}"),
            Ok(_) => panic!("{len} bytes: a writer attached to a truncated table"),
        }
        assert_eq!(std::fs::metadata(&path).unwrap().len(), len as u64, "the file was resized");
    }
    // A longer file is fine: the table only uses what its header says.
    let mut longer = img.bytes.clone();
    longer.extend_from_slice(&[0xEE; 8192]);
    let path = put_file(dir.path(), "longer.table", &longer);
    let o = open_and_read(&path, SMALL, &written).expect("extra bytes after the table are ignored");
    assert_eq!(o, written.intact(SMALL));
}

#[test]
fn a_ring_is_the_wrong_kind_for_a_table_and_a_table_for_a_ring() {
    let dir = shm_tempdir();
    let ring = dir.path().join("events.ring");
    let mut p = Publisher::builder(&ring).capacity(1 << 16).max_message(256).create().unwrap();
    p.publish(b"hello").unwrap();
    drop(p);
    let (table, _, _) = real_table(dir.path(), "real.table", SMALL);
    let (ring_before, table_before) = (std::fs::read(&ring).unwrap(), std::fs::read(&table).unwrap());

    match open_err(&ring, SMALL) {
        OpenError::WrongKind { found, expected, path } => {
            assert_eq!((found, expected, path), (1, Kind::Table, ring.clone()));
        }
        other => panic!("a ring opened as a table: {other:?}"),
    }
    let err = TableReader::open(&ring).err().unwrap();
    assert!(err.to_string().contains("ring") && err.to_string().contains("table"), "{err}");
    match watched("subscriber on a table", BOUND_SECS, || Subscriber::open(&table)) {
        Err(OpenError::WrongKind { found, expected, .. }) => assert_eq!((found, expected), (2, Kind::Ring)),
        Err(e) => panic!("a table opened as a ring: {e:?}"),
        Ok(_) => panic!("a table opened as a ring"),
    }
    match watched("table writer on a ring", BOUND_SECS, || SMALL.writer(&ring)) {
        Err(CreateError::Existing(OpenError::WrongKind { found: 1, expected: Kind::Table, .. })) => {}
        Err(e) => panic!("a table writer on a ring: {e:?}"),
        Ok(_) => panic!("a table writer attached to a ring"),
    }
    match watched("publisher on a table", BOUND_SECS, || Publisher::builder(&table).capacity(1 << 16).create()) {
        Err(CreateError::Existing(OpenError::WrongKind { found: 2, expected: Kind::Ring, .. })) => {}
        Err(e) => panic!("a publisher on a table: {e:?}"),
        Ok(_) => panic!("a publisher attached to a table"),
    }
    assert!(std::fs::read(&ring).unwrap() == ring_before, "the refused table writer changed the ring");
    assert!(std::fs::read(&table).unwrap() == table_before, "the refused publisher changed the table");
}

// ---------------------------------------------------------------------------------------------
// Absurd parameters

/// Rewrite the header of `img` with `params` (sealed: checksum and layout hash match).
fn with_params(img: &TableImage, params: [u64; PARAM_WORDS], file_size: u64) -> TableImage {
    let words: Vec<std::sync::atomic::AtomicU64> = (0..HEADER_BYTES / 8).map(|_| AtomicU64::new(0)).collect();
    header::write_fields(&words, Kind::Table, file_size, &params, 42);
    header::publish_ready(&words);
    let mut out = img.clone();
    for (i, w) in words.iter().enumerate() {
        out.set_word(i * 8, w.load(Ordering::Relaxed));
    }
    out
}

fn params_of(l: &TableLayout) -> [u64; PARAM_WORDS] {
    [
        l.nsegments,
        l.segment_size,
        l.nbuckets,
        l.max_items,
        l.hash_seed,
        l.index_offset,
        l.data_offset,
        podcache_format::header::CHECKSUM_CRC32,
    ]
}

/// (what, parameter index, value): each makes the layout impossible or reach beyond the file.
fn absurd_cases(l: &TableLayout) -> Vec<(&'static str, usize, u64)> {
    let index_end = l.index_offset + 64 * l.nbuckets;
    vec![
        ("no segments", 0, 0),
        ("one segment", 0, 1),
        ("2^24 + 1 segments", 0, (1 << 24) + 1),
        ("twice the segments (beyond the file)", 0, 2 * l.nsegments),
        ("segment size 0", 1, 0),
        ("segment size 8", 1, 8),
        ("segment size not a multiple of 8", 1, SEGMENT + 4),
        ("segment size 2^41", 1, 1 << 41),
        ("segment size u64::MAX", 1, u64::MAX),
        ("bigger segments (beyond the file)", 1, 2 * SEGMENT),
        ("no buckets", 2, 0),
        ("2^32 + 1 buckets", 2, (1 << 32) + 1),
        ("more buckets than fit before the data", 2, l.nbuckets * 4),
        ("no items", 3, 0),
        ("more items than slots", 3, 7 * l.nbuckets + 1),
        ("index over the segment table", 5, 0x180),
        ("index unaligned", 5, l.index_offset + 8),
        ("index beyond the file", 5, 1 << 40),
        ("data over the index", 6, index_end - 64),
        ("data unaligned", 6, l.data_offset + 4),
        ("data beyond the file", 6, l.data_offset + 4096),
        ("data at 2^62", 6, 1 << 62),
        ("data at 2^64 - 8", 6, !7u64),
        ("no checksum algorithm", 7, 0),
        ("an unknown checksum algorithm", 7, 2),
    ]
}

#[test]
fn absurd_table_parameters_are_corrupt() {
    let dir = shm_tempdir();
    let (_, img, written) = real_table(dir.path(), "real.table", SMALL);
    let l = img.layout();
    let size = img.bytes.len() as u64;
    // The sealing itself is right: unchanged parameters open.
    let same = with_params(&img, params_of(&l), size);
    let path = put_file(dir.path(), "same.table", &same.bytes);
    let o = open_and_read(&path, SMALL, &written).expect("a resealed header opens");
    assert_eq!(o, written.intact(SMALL));
    for (what, i, v) in absurd_cases(&l) {
        let mut p = params_of(&l);
        p[i] = v;
        let path = put_file(dir.path(), "absurd.table", &with_params(&img, p, size).bytes);
        let err = open_err(&path, SMALL);
        assert!(matches!(&err, OpenError::Corrupt { .. }), "{what}: {err:?}");
        assert!(err.to_string().contains(&path.display().to_string()), "{err}");
        // A writer configured as the real table sees another layout and refuses it.
        match watched(what, BOUND_SECS, || SMALL.writer(&path)) {
            Err(CreateError::LayoutMismatch { .. }) => {}
            Err(e) => panic!("{what}: a writer expected LayoutMismatch, got {e:?}"),
            Ok(_) => panic!("{what}: a writer attached to another layout"),
        }
    }
    // A header that claims a smaller file than the layout needs.
    let path = put_file(dir.path(), "small-size.table", &with_params(&img, params_of(&l), size - 4096).bytes);
    assert!(matches!(open_err(&path, SMALL), OpenError::Corrupt { .. }));
    // A header that claims a larger file than there is.
    let path = put_file(dir.path(), "big-size.table", &with_params(&img, params_of(&l), size + 4096).bytes);
    assert!(matches!(open_err(&path, SMALL), OpenError::Truncated { .. }));
}

/// Regression test of a fixed bug. Before the fix, `TableParams::check` (crates/format/src/table/mod.rs) computes
/// `index_offset + nbuckets * 64` unchecked. With an index offset near 2^64 that overflows: a
/// panic in debug builds, and in release the sum wraps, the check passes, and the reader
/// indexes far beyond its mapping (`TableReader::lookup` panics on the slice bounds check).
#[test]
fn an_index_offset_near_the_end_of_the_address_space_is_corrupt() {
    let dir = shm_tempdir();
    let (_, img, _) = real_table(dir.path(), "real.table", SMALL);
    let l = img.layout();
    let size = img.bytes.len() as u64;
    for index_offset in [!63u64, !63u64 - 64 * (l.nbuckets - 1)] {
        let mut p = params_of(&l);
        p[5] = index_offset;
        let path = put_file(dir.path(), "wrapping-index.table", &with_params(&img, p, size).bytes);
        let result = std::panic::catch_unwind(|| open_and_read(&path, SMALL, &Written::default()));
        match result {
            Ok(Err(OpenError::Corrupt { .. })) => {}
            Ok(other) => panic!("index offset {index_offset:#x}: expected Corrupt, got {other:?}"),
            Err(_) => panic!("index offset {index_offset:#x}: the reader panicked"),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Slots

#[test]
fn slots_pointing_outside_the_data_region_or_past_fill_are_corrupt_and_a_writer_clears_them() {
    let dir = shm_tempdir();
    let (_, img, written) = real_table(dir.path(), "real.table", SMALL);
    let l = img.layout();
    let data_locs = l.nsegments * l.segment_size / REC_ALIGN;
    // The last used segment is only partly filled: a loc just past its fill.
    let used: Vec<u64> = (0..l.nsegments).filter(|&s| img.word(img.seg_state_off(s) + 8) != 0).collect();
    let last = *used.last().unwrap();
    let fill = img.word(img.seg_state_off(last)) & FILL_MASK;
    assert!(fill + 64 < SEGMENT, "the last segment is not full");
    let free = (0..l.nsegments).find(|s| !used.contains(s)).expect("a free segment");
    let cases: Vec<(&str, u64)> = vec![
        ("just past the data region", data_locs),
        ("the largest loc", LOC_MASK),
        ("past the fill of the last segment", (last * SEGMENT + fill) / REC_ALIGN),
        ("far past the fill of the last segment", (last * SEGMENT + SEGMENT - 8) / REC_ALIGN),
        ("the last 4 bytes of the last segment", (last * SEGMENT + SEGMENT - 4) / REC_ALIGN),
        ("into a free segment", free * SEGMENT / REC_ALIGN),
    ];
    let id = *written.current.keys().min().unwrap();
    for (what, loc) in cases {
        let mut b = img.clone();
        let (off, v) = key_slot(&b, id);
        b.set_word(off, (v & !LOC_MASK) | loc);
        let path = put_file(dir.path(), "slot.table", &b.bytes);
        let rd = watched(what, BOUND_SECS, || TableReader::open(&path)).expect("the header is intact");
        let r = watched(what, BOUND_SECS, || rd.get_vec(&kv_key(id)));
        assert!(matches!(r, Err(GetError::Corrupt { .. })), "{what}: {r:?}");
        let o = watched(what, BOUND_SECS, || read_all(&rd, SMALL, &written));
        assert!(o.corrupt > 0 && o.keys_corrupt > 0, "{what}: {o:?}");
        let others = written.current.len() as u64 - 1;
        let sharers = tag_sharers(&img, &written, id);
        assert!(o.hits >= 3 * (others - sharers) && o.hits <= 3 * others, "{what}: the other keys are intact: {o:?}");
        let rec = attach_and_use(&path, SMALL, &written);
        assert_eq!((rec.cleared_slots, rec.damaged_segments), (1, 0), "{what}: {rec:?}");
        assert_eq!(rec.items, written.current.len() as u64 - 1, "{what}: {rec:?}");
    }
}

#[test]
fn slots_pointing_into_the_middle_of_a_record_never_yield_a_value() {
    let dir = shm_tempdir();
    let (_, img, written) = real_table(dir.path(), "real.table", SMALL);
    let mut ids: Vec<u64> = written.current.keys().copied().collect();
    ids.sort_unstable();
    for &id in ids.iter().take(40) {
        let mut b = img.clone();
        let (off, v) = key_slot(&b, id);
        let rec = b.record(v & LOC_MASK).unwrap();
        for shift in (1..rec.len as u64 / REC_ALIGN).take(5) {
            b.set_word(off, v + shift);
            let path = put_file(dir.path(), "mid.table", &b.bytes);
            let rd = TableReader::open(&path).unwrap();
            let r = watched("mid-record slot", BOUND_SECS, || rd.get_vec(&kv_key(id)));
            assert!(matches!(r, Ok(None) | Err(GetError::Corrupt { .. })), "key {id}, +{shift} units: {r:?}");
            let o = watched("mid-record slot", BOUND_SECS, || read_all(&rd, SMALL, &written));
            let others = written.current.len() as u64 - 1;
            assert!(o.hits >= 3 * (others - tag_sharers(&img, &written, id)), "{o:?}");
        }
        let path = put_file(dir.path(), "mid.table", &b.bytes);
        let rec = attach_and_use(&path, SMALL, &written);
        assert_eq!(rec.cleared_slots, 1, "key {id}: {rec:?}");
    }
}

/// A slot whose tag is the key's but whose record is another key's: the get compares the key
/// and misses, it never returns the other key's value.
#[test]
fn slots_whose_tag_matches_but_whose_record_is_another_key_are_misses() {
    let dir = shm_tempdir();
    let (_, img, written) = real_table(dir.path(), "real.table", SMALL);
    let mut ids: Vec<u64> = written.current.keys().copied().collect();
    ids.sort_unstable();
    let (a, others) = (ids[0], &ids[1..]);
    let (a_off, a_slot) = key_slot(&img, a);
    let tag_a = a_slot >> TAG_SHIFT;
    // Another slot's generation bits and location under A's tag.
    let below_tag = (1u64 << TAG_SHIFT) - 1;
    // A's slot now points at B's record (same key length or not).
    for &bid in others.iter().take(30) {
        let mut b = img.clone();
        let (_, b_slot) = key_slot(&b, bid);
        b.set_word(a_off, (tag_a << TAG_SHIFT) | (b_slot & below_tag));
        let path = put_file(dir.path(), "tag.table", &b.bytes);
        let rd = TableReader::open(&path).unwrap();
        assert_eq!(watched("tag", BOUND_SECS, || rd.get_vec(&kv_key(a))), Ok(None), "key {a} → record of {bid}");
        assert_eq!(rd.get_vec(&kv_key(bid)).unwrap(), written.current.get(&bid).cloned(), "key {bid} itself");
        let o = watched("tag", BOUND_SECS, || read_all(&rd, SMALL, &written));
        // Key `a` is a miss; `bid` is listed twice (its own slot and `a`'s), `a` not at all.
        let intact = written.intact(SMALL);
        let expected = Outcome { hits: intact.hits - 3, misses: intact.misses + 3, ..intact };
        assert_eq!(o, expected, "key {a} → record of {bid}");
        let rec = attach_and_use(&path, SMALL, &written);
        assert_eq!(rec.cleared_slots, 1, "the slot's tag is not its record's key's: {rec:?}");
    }
    // Every slot of A's home bucket (and the next) holds A's tag over other keys' records.
    let mut b = img.clone();
    let (home, _) = b.home_tag(&kv_key(a));
    let nb = b.layout().nbuckets;
    let mut donors = others.iter();
    for bucket in [home, (home + 1) % nb] {
        for s in 0..7 {
            let (_, d) = key_slot(&img, *donors.next().unwrap());
            let off = b.slot_off(bucket, s);
            b.set_word(off, (tag_a << TAG_SHIFT) | (d & below_tag));
        }
    }
    let path = put_file(dir.path(), "tags.table", &b.bytes);
    let rd = TableReader::open(&path).unwrap();
    let r = watched("tags", BOUND_SECS, || rd.get_vec(&kv_key(a)));
    assert!(matches!(r, Ok(None)) || r == Ok(written.current.get(&a).cloned()), "{r:?}");
    let o = watched("tags", BOUND_SECS, || read_all(&rd, SMALL, &written));
    assert_eq!((o.corrupt, o.keys_corrupt), (0, 0), "records of other keys are misses, not corrupt: {o:?}");
    let rec = attach_and_use(&path, SMALL, &written);
    assert!(rec.cleared_slots >= 14, "{rec:?}");
}

/// Regression test of a fixed bug. Before the fix, recovery kept two slots that point at the same record (or at two records of the
/// same key). `TableWriter::attach` (crates/format/src/table/writer.rs, step 2) checks each slot
/// on its own; it never looks for a key held twice. The item count is then one too high, and
/// after `delete` of that key a reader finds the second slot and returns the deleted value.
#[test]
fn a_key_held_by_two_slots_is_held_once_after_recovery() {
    let dir = shm_tempdir();
    let (_, img, written) = real_table(dir.path(), "real.table", SMALL);
    let mut ids: Vec<u64> = written.current.keys().copied().collect();
    ids.sort_unstable();
    let id = ids[3];
    let mut b = img.clone();
    let (off, v) = key_slot(&b, id);
    // A second, free slot of the same bucket or the next one (within the probe of the key).
    let (home, _) = b.home_tag(&kv_key(id));
    let nb = b.layout().nbuckets;
    let free = [home, (home + 1) % nb, (home + 2) % nb]
        .into_iter()
        .flat_map(|bk| (0..7).map(move |s| (bk, s)))
        .map(|(bk, s)| b.slot_off(bk, s))
        .find(|&o| o > off && b.word(o) == 0)
        .expect("a free slot after the key's");
    b.set_word(free, v);
    // Keep the overflow counts right for the copy, so only the duplicate is wrong.
    let counts = {
        let mut c = b.clone();
        let t = c.true_overflow_counts();
        for (bk, n) in t.iter().enumerate() {
            let o = c.bucket_off(bk as u64);
            c.set_word(o, *n);
        }
        c
    };
    let path = put_file(dir.path(), "dup.table", &counts.bytes);
    let mut w = SMALL.writer(&path).unwrap();
    let rec = w.recovery().unwrap();
    let rd = TableReader::open(&path).unwrap();
    assert!(w.delete(&kv_key(id)));
    assert_eq!(rd.get_vec(&kv_key(id)).unwrap(), None, "deleted key {id} is still visible ({rec:?})");
    assert_eq!(w.stats().items, rd.keys().count() as u64, "items vs keys after recovery ({rec:?})");
}

// ---------------------------------------------------------------------------------------------
// Probe chains

/// Overflow counts that are nonzero everywhere make every probe a chain without end: a get
/// walks at most the probe bound (or the whole index when it is smaller, where the chain is a
/// cycle) and answers. A writer recounts them.
#[test]
fn overflow_counts_everywhere_never_make_a_get_loop() {
    let dir = shm_tempdir();
    for g in [SMALL, BIG] {
        let (_, img, written) = real_table(dir.path(), &format!("real-{}.table", g.max_items), g);
        let nb = img.layout().nbuckets;
        for count in [1u64, 7, u64::MAX] {
            let mut b = img.clone();
            for bk in 0..nb {
                let o = b.bucket_off(bk);
                b.set_word(o, count);
            }
            let path = put_file(dir.path(), &format!("chains-{nb}.table"), &b.bytes);
            let o = open_and_read(&path, g, &written).expect("the header is intact");
            // Present keys are found; every absent key walks the whole probe bound and is a
            // miss (the writer never places a key beyond it), not an error.
            assert_eq!(o, written.intact(g), "{nb} buckets, count {count}");
            let rec = attach_and_use(&path, g, &written);
            assert_eq!((rec.cleared_slots, rec.items), (0, written.current.len() as u64), "{rec:?}");
        }
        // Every slot of every bucket taken, every count nonzero: a get of an absent key looks at
        // up to the probe bound × 7 slots. The slots point at real records under tags that are
        // not their keys' (a writer clears them all), so gets compare many foreign keys.
        let mut b = img.clone();
        let slots = img.used_slots();
        for bk in 0..nb {
            let o = b.bucket_off(bk);
            b.set_word(o, 1);
            for s in 0..7 {
                let (_, _, _, v) = slots[(bk as usize * 7 + s) % slots.len()];
                let off = b.slot_off(bk, s);
                b.set_word(off, v ^ (2 << TAG_SHIFT));
            }
        }
        let path = put_file(dir.path(), &format!("full-{nb}.table"), &b.bytes);
        let o = open_and_read(&path, g, &written).expect("the header is intact");
        // No slot holds its key's tag: every get (of 2 × `keys` ids, 3 flavours) is a miss.
        let all_misses = Outcome { misses: 3 * 2 * g.keys, ..Outcome::default() };
        assert_eq!(o, all_misses, "{nb} buckets, every slot taken by a foreign tag");
        let rec = attach_and_use(&path, g, &written);
        assert_eq!((rec.cleared_slots, rec.items), (7 * nb, 0), "{rec:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// Records and segments

#[test]
fn records_claiming_lengths_beyond_their_segment_are_corrupt_and_a_writer_cuts_there() {
    let dir = shm_tempdir();
    let (_, img, written) = real_table(dir.path(), "real.table", SMALL);
    // A present key in the first segment; its record header is rewritten.
    let (id, _, slot) = present_in_segment(&img, &written, 0);
    let at = img.loc_off(slot & LOC_MASK);
    let hdr = img.word(at);
    let crc_klen = hdr & 0xFF_FFFF_FFFF; // crc and klen
    let cases: Vec<(&str, u64)> = vec![
        ("vlen 8 MiB - 1", crc_klen | (0x7F_FFFF << 40)),
        ("vlen one segment", crc_klen | (SEGMENT << 40)),
        ("vlen 8 MiB - 1 with an expiry", crc_klen | (0x7F_FFFF << 40) | (1 << 63)),
        ("klen 255, vlen 4000", (hdr & 0xFFFF_FFFF) | (255 << 32) | (4000 << 40)),
        ("klen 0", hdr & !(0xFF << 32)),
        ("all ones", u64::MAX),
    ];
    for (what, new) in cases {
        let mut b = img.clone();
        b.set_word(at, new);
        let path = put_file(dir.path(), "len.table", &b.bytes);
        let rd = TableReader::open(&path).unwrap();
        let r = watched(what, BOUND_SECS, || rd.get_vec(&kv_key(id)));
        assert!(matches!(r, Ok(None) | Err(GetError::Corrupt { .. })), "{what}: {r:?}");
        let o = watched(what, BOUND_SECS, || read_all(&rd, SMALL, &written));
        assert!(o.hits > 0, "{what}: {o:?}");
        let rec = attach_and_use(&path, SMALL, &written);
        assert_eq!(rec.damaged_segments, 1, "{what}: the segment is cut at the bad record: {rec:?}");
        assert!(rec.cleared_slots >= 1, "{what}: {rec:?}");
    }
}

/// The last word of the file holds a record header (of the key its slot is for) that claims
/// more bytes than the file has, in a segment whose state says it is full.
#[test]
fn a_record_at_the_end_of_the_file_claiming_more_bytes_is_corrupt() {
    let dir = shm_tempdir();
    let (_, img, written) = real_table(dir.path(), "real.table", SMALL);
    let l = img.layout();
    let mut b = img.clone();
    let last = l.nsegments - 1;
    let st = b.seg_state_off(last);
    b.set_word(st, SEGMENT);
    b.set_word(st + 8, 1000);
    let id = *written.current.keys().min().unwrap();
    let key = kv_key(id);
    let end_loc = l.nsegments * SEGMENT / REC_ALIGN - 2;
    let at = b.loc_off(end_loc);
    assert_eq!(at + 8, b.bytes.len(), "the last word of the file");
    for vlen in [1u64, 100, 0x7F_FFFF] {
        b.set_word(at, ((key.len() as u64) << 32) | (vlen << 40));
        let (off, v) = key_slot(&img, id);
        b.set_word(off, (v & !LOC_MASK) | end_loc);
        let path = put_file(dir.path(), "end.table", &b.bytes);
        let rd = TableReader::open(&path).unwrap();
        let r = watched("end of file", BOUND_SECS, || rd.get_vec(&key));
        assert!(matches!(r, Err(GetError::Corrupt { .. })), "vlen {vlen}: {r:?}");
        let o = watched("end of file", BOUND_SECS, || read_all(&rd, SMALL, &written));
        assert!(o.keys_corrupt > 0 && o.hits == 3 * (written.current.len() as u64 - 1), "{o:?}");
        let rec = attach_and_use(&path, SMALL, &written);
        assert_eq!((rec.cleared_slots, rec.damaged_segments), (1, 1), "vlen {vlen}: {rec:?}");
    }
}

#[test]
fn segment_states_with_fill_beyond_the_segment_are_clamped_and_repaired() {
    let dir = shm_tempdir();
    let (_, img, written) = real_table(dir.path(), "real.table", SMALL);
    let st = img.seg_state_off(0);
    let state = img.word(st);
    let (gen, fill) = (state >> FILL_BITS, state & FILL_MASK);
    for (what, new_fill) in [
        ("fill 2^40 - 1", FILL_MASK),
        ("fill one word past the segment", SEGMENT + 8),
        ("fill 2 segments", 2 * SEGMENT),
    ] {
        let mut b = img.clone();
        b.set_word(st, (gen << FILL_BITS) | new_fill);
        let path = put_file(dir.path(), "fill.table", &b.bytes);
        let o = open_and_read(&path, SMALL, &written).expect("the header is intact");
        // Readers clamp the fill to the segment: every record is still there.
        assert_eq!(o, written.intact(SMALL), "{what}");
        let rec = attach_and_use(&path, SMALL, &written);
        assert_eq!(rec.damaged_segments, 1, "{what}: {rec:?}");
        assert_eq!(
            (rec.cleared_slots, rec.items),
            (0, written.current.len() as u64),
            "{what}: records intact: {rec:?}"
        );
    }
    // Fill in the middle of a record: that record (and any after it) is cut.
    let mut b = img.clone();
    b.set_word(st, (gen << FILL_BITS) | (fill - 8));
    let path = put_file(dir.path(), "mid-fill.table", &b.bytes);
    let o = open_and_read(&path, SMALL, &written).expect("the header is intact");
    // The last record of the segment now ends beyond the fill: its key (and only it) is
    // corrupt; absent keys are misses.
    let intact = written.intact(SMALL);
    let cut =
        Outcome { hits: intact.hits - 3, corrupt: 3, keys_listed: intact.keys_listed - 1, keys_corrupt: 1, ..intact };
    assert_eq!(o, cut);
    let rec = attach_and_use(&path, SMALL, &written);
    assert_eq!(rec.damaged_segments, 1, "{rec:?}");
}

/// A used segment marked free (sequence 0): readers still find its records (they do not look
/// at sequences); a writer frees it and clears the slots that point into it.
#[test]
fn a_used_segment_marked_free_is_freed_by_a_writer() {
    let dir = shm_tempdir();
    let (_, img, written) = real_table(dir.path(), "real.table", SMALL);
    let mut b = img.clone();
    let st = b.seg_state_off(0);
    b.set_word(st + 8, 0);
    let in_seg0 = b.used_slots().iter().filter(|(_, _, _, v)| b.seg_of_loc(v & LOC_MASK) == 0).count() as u64;
    assert!(in_seg0 > 0);
    let path = put_file(dir.path(), "freed.table", &b.bytes);
    let o = open_and_read(&path, SMALL, &written).expect("the header is intact");
    assert_eq!(o, written.intact(SMALL));
    let rec = attach_and_use(&path, SMALL, &written);
    assert_eq!(rec.cleared_slots, in_seg0, "{rec:?}");
}

/// Generations at their largest: the writer wraps them while it recycles segments, readers are
/// not fooled.
#[test]
fn generations_at_their_largest_wrap_without_harm() {
    let dir = shm_tempdir();
    let (_, img, written) = real_table(dir.path(), "real.table", SMALL);
    let mut b = img.clone();
    for seg in 0..b.layout().nsegments {
        let st = b.seg_state_off(seg);
        let fill = b.word(st) & FILL_MASK;
        b.set_word(st, (0xFFFF_FFFF << FILL_BITS) | fill);
    }
    // The slots name the low 16 bits of their segment's generation.
    for (_, _, off, v) in b.used_slots() {
        b.set_word(off, v | (0xFFFF << LOC_BITS));
    }
    let path = put_file(dir.path(), "gens.table", &b.bytes);
    let o = open_and_read(&path, SMALL, &written).expect("the header is intact");
    assert_eq!(o, written.intact(SMALL));
    let rec = attach_and_use(&path, SMALL, &written);
    assert_eq!((rec.cleared_slots, rec.damaged_segments), (0, 0), "{rec:?}");
    // After the writer evicted everything, generations have wrapped.
    let after = TableImage::read(&path);
    let wrapped =
        (0..after.layout().nsegments).filter(|&s| after.word(after.seg_state_off(s)) >> FILL_BITS < 0xFF).count();
    assert!(wrapped > 0, "no generation wrapped");
}

/// A table for the churn tests, with two keys in its first segment: key 97 (its key is 255
/// bytes long) with a value of 3000 bytes, and key 1 with a short value. Copying the long one
/// keeps a get long enough between its load of the segment state and its check of it that a
/// churn running at the same time recycles the segment under nearly every attempt (with short
/// values only some attempts race it, and a get rarely needs all of its retries); gets of the
/// short one often complete between two bumps, so values are returned (and checked) too.
fn churn_table(dir: &Path) -> (PathBuf, TableImage, [(u64, Vec<u8>); 2]) {
    let path = dir.join("churn.table");
    let mut w = SMALL.writer(&path).expect("create");
    assert_eq!(kv_key(97).len(), 255);
    let long: Vec<u8> = (0..3000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8).collect();
    let keys = [(97, long), (1, kv_value(1, 1, MAX_VALUE))];
    for (id, v) in &keys {
        w.put(&kv_key(*id), v).unwrap();
    }
    drop(w);
    let img = TableImage::read(&path);
    (path, img, keys)
}

/// Another thread bumps the generation of the segment that holds `keys` as fast as it can (as
/// if a runaway writer recycled that very segment without end) while this thread gets the keys
/// in turn as `gets` says, until `done` says so. (The threads must run at the same time for gets to retry: on a busy machine that can
/// take a while; the watchdog bounds it. They are pinned to different CPUs, and churns run one
/// at a time, so that two of them do not take four spinning threads to two cores.)
fn churn(
    path: &Path,
    img: &TableImage,
    keys: &[(u64, Vec<u8>)],
    gets: Gets,
    done: impl Fn(&Churn) -> bool + Sync,
) -> Churn {
    let seg_of = |id: u64| img.seg_of_loc(img.slot_of(&kv_key(id)).expect("the key has a slot").1 & LOC_MASK);
    let seg = seg_of(keys[0].0);
    assert!(keys.iter().all(|(id, _)| seg_of(*id) == seg), "the keys share a segment");
    let st = img.seg_state_off(seg) / 8;
    let fill = img.word(st * 8) & FILL_MASK;
    static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let map = SharedWords::map(path).expect("map the table read-write");
    let (stop, flips) = (AtomicBool::new(false), AtomicU64::new(0));
    let rd = TableReader::open(path).unwrap();
    std::thread::scope(|scope| {
        scope.spawn(|| {
            pin_to_cpu(0);
            // Generations that differ from the segment's by multiples of 2^16, so the slots'
            // generation bits still match and every get reaches the copy and its re-check (a
            // generation the slots do not name is a corrupt file: another test).
            let mut gen = img.word(st * 8) >> FILL_BITS;
            while !stop.load(Ordering::Relaxed) {
                gen = (gen + (1 << 16)) & 0xFFFF_FFFF;
                map.words()[st].store((gen << FILL_BITS) | fill, Ordering::Release);
                flips.fetch_add(1, Ordering::Relaxed);
            }
        });
        // The gets run on a thread of their own, pinned to another CPU than the churn.
        let (flips, done) = (&flips, &done);
        let reader = scope.spawn(move || {
            pin_to_cpu(1);
            let _watchdog = Watchdog::new("gets under generation churn", BOUND_SECS);
            while flips.load(Ordering::Relaxed) == 0 {
                std::hint::spin_loop();
            }
            let mut t = Churn::default();
            for round in 0u64.. {
                t.retries = rd.counters().retries;
                if done(&t) {
                    break;
                }
                let (id, value) = &keys[(round % keys.len() as u64) as usize];
                let r = match gets {
                    Gets::VecAndWith if round / keys.len() as u64 % 2 == 1 => rd.get_with(&kv_key(*id), |b| b.to_vec()),
                    Gets::VecAndWith => rd.get_vec(&kv_key(*id)),
                    Gets::SlowWith => rd.get_with(&kv_key(*id), |b| {
                        let start = std::time::Instant::now();
                        while start.elapsed() < Duration::from_micros(5) {
                            std::hint::spin_loop();
                        }
                        b.to_vec()
                    }),
                };
                match r {
                    Ok(Some(got)) => {
                        assert_eq!(&got, value, "key {id} under generation churn");
                        t.hits += 1;
                    }
                    Ok(None) => t.misses += 1,
                    Err(GetError::Contended) => t.contended += 1,
                    Err(e) => panic!("key {id} under generation churn: {e:?}"),
                }
            }
            t.retries = rd.counters().retries;
            t
        });
        let t = reader.join();
        stop.store(true, Ordering::Relaxed);
        t.unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// Pin the calling thread to the `n`-th CPU (modulo their number) this process may run on, so
/// that the two threads of a churn run at the same time even when other processes keep the
/// machine busy (left unpinned, the scheduler may keep them on one CPU for seconds, and then
/// no get ever races the churn). Best effort: nothing happens with fewer than 2 CPUs.
fn pin_to_cpu(n: usize) {
    let size = std::mem::size_of::<libc::cpu_set_t>();
    // SAFETY: cpu_set_t is a plain bit array, valid when zeroed.
    let mut allowed: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: the pointer and size describe `allowed`, which outlives the call; pid 0 is the
    // calling thread.
    if unsafe { libc::sched_getaffinity(0, size, &mut allowed) } != 0 {
        return;
    }
    // SAFETY: CPU_ISSET reads a bit of `allowed` (the index is below CPU_SETSIZE).
    let cpus: Vec<usize> =
        (0..libc::CPU_SETSIZE as usize).filter(|&c| unsafe { libc::CPU_ISSET(c, &allowed) }).collect();
    if cpus.len() < 2 {
        return;
    }
    // SAFETY: as above.
    let mut one: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: CPU_SET writes a bit of `one` (the index is below CPU_SETSIZE).
    unsafe { libc::CPU_SET(cpus[n % cpus.len()], &mut one) };
    // SAFETY: as for sched_getaffinity; failure only leaves the thread unpinned.
    unsafe { libc::sched_setaffinity(0, size, &one) };
}

/// Every get racing endless recycling ends, and never with a wrong value or a miss (the keys
/// are present the whole time). (That a get that runs out of retries says so is
/// `a_get_that_runs_out_of_retries_is_contended_not_a_miss`.)
#[test]
fn generation_churn_never_yields_a_wrong_value_and_gets_end() {
    let dir = shm_tempdir();
    let (path, img, keys) = churn_table(dir.path());
    let t = churn(&path, &img, &keys, Gets::VecAndWith, |t| t.misses > 0 || (t.retries >= 2_000 && t.hits >= 100));
    println!("generation churn: {t:?}");
    assert_eq!(t.misses, 0, "a present key was reported absent: {t:?}");
    assert!(t.retries >= 2_000 && t.hits >= 100, "gets raced the churn and returned values: {t:?}");
}

/// `TableReader::lookup` retries at most `MAX_RETRIES` times when the segment it reads is
/// recycled under it; a get that runs out of retries fails with `GetError::Contended`, it does
/// not report the present key absent (`Ok(None)`, what it used to do). The churn runs until
/// 10 gets did run out of retries (each needs `MAX_RETRIES` retries in a row, which recycling
/// under a get whose closure takes 5 µs gives about every time; a plain get of the long value
/// is too quick since v2 for that to be sure on a 2-core machine) or one missed.
#[test]
fn a_get_that_runs_out_of_retries_is_contended_not_a_miss() {
    let dir = shm_tempdir();
    let (path, img, keys) = churn_table(dir.path());
    let done = |t: &Churn| t.misses > 0 || t.contended >= 10 || t.retries >= 5_000_000;
    let t = churn(&path, &img, &keys[..1], Gets::SlowWith, done);
    println!("generation churn, slow get_with only: {t:?}");
    assert_eq!(t.misses, 0, "a present key was reported absent: {t:?}");
    assert!(t.contended >= 10, "no get ran out of retries: {t:?}");
}

/// How [`churn`] gets the keys.
#[derive(Clone, Copy)]
enum Gets {
    /// `get_vec` and `get_with` in turn.
    VecAndWith,
    /// `get_with` with a closure that takes 5 µs: far longer than the churn needs to bump the
    /// generation, so (nearly) every attempt is recycled under the get.
    SlowWith,
}

#[derive(Debug, Default)]
struct Churn {
    hits: u64,
    misses: u64,
    contended: u64,
    retries: u64,
}

// ---------------------------------------------------------------------------------------------
// Statistics and sequence words

/// Regression test of a fixed bug (seen in debug builds). Before the fix, `TableWriter::attach` keeps the counters of the file (`..old`)
/// and recomputes only items and bytes; the writer then increments them with `+=`. A file whose
/// counters are at `u64::MAX` makes the first put (delete, eviction, clear) panic with "attempt
/// to add with overflow" (crates/format/src/table/writer.rs, `put`: `self.stats.puts += 1`).
/// Release builds wrap and go on.
#[test]
fn counters_at_their_largest_do_not_panic_a_writer() {
    let dir = shm_tempdir();
    let (_, img, written) = real_table(dir.path(), "real.table", SMALL);
    let mut b = img.clone();
    for i in 0..8 {
        b.set_word(TABLE_STATS + 8 * i, u64::MAX);
    }
    let path = put_file(dir.path(), "stats.table", &b.bytes);
    attach_and_use(&path, SMALL, &written);
}

/// Regression test of a fixed bug. Before the fix, a segment sequence of `u64::MAX` in the file: `TableWriter::attach` sets
/// `next_seq = seq + 1` (crates/format/src/table/writer.rs, end of `attach`), which panics in
/// debug builds; in release it wraps to 0, the next segment the writer takes is stored with
/// sequence 0 — the mark of a free segment — and the following writer's recovery frees that
/// segment and drops every key in it.
#[test]
fn a_sequence_at_its_largest_neither_panics_nor_loses_keys() {
    let dir = shm_tempdir();
    let (_, img, _) = real_table(dir.path(), "real.table", SMALL);
    let mut b = img.clone();
    let st = b.seg_state_off(0);
    b.set_word(st + 8, u64::MAX);
    let path = put_file(dir.path(), "seq.table", &b.bytes);
    // Enough puts to fill the current segment and take a new one, not enough to evict.
    let puts: Vec<(u64, Vec<u8>)> = (1 << 20..(1 << 20) + 60).map(|id| (id, kv_value(id, 5, MAX_VALUE))).collect();
    {
        let mut w = watched("attach", BOUND_SECS, || SMALL.writer(&path)).expect("attach");
        for (id, v) in &puts {
            w.put(&kv_key(*id), v).expect("put");
        }
        assert_eq!(w.stats().evictions, 0);
    }
    let w = SMALL.writer(&path).expect("attach again");
    let rd = TableReader::open(&path).unwrap();
    let lost: Vec<u64> = puts
        .iter()
        .filter(|(id, v)| rd.get_vec(&kv_key(*id)).unwrap().as_ref() != Some(v))
        .map(|(id, _)| *id)
        .collect();
    assert!(
        lost.is_empty(),
        "{} of {} keys lost by the next attach ({:?}): {lost:?}",
        lost.len(),
        puts.len(),
        w.recovery()
    );
}

// ---------------------------------------------------------------------------------------------
// Random bytes

#[test]
fn random_bytes_give_errors_or_misses_never_panics_or_hangs() {
    let dir = shm_tempdir();
    let (_, img, written) = real_table(dir.path(), "real.table", SMALL);
    let l = img.layout();
    let len = img.bytes.len();
    let mut rng = Rng::new(0x7AB1_E001);
    let (mut opened, mut refused, mut recovered) = (0, 0, 0);
    for case in 0..300u64 {
        let mut b = img.clone();
        match case % 3 {
            // Pure noise, of some length.
            0 => {
                let n = [0, 8, 255, 256, 4096, len, len + 8][rng.below_usize(7)];
                b.bytes = vec![0; n];
                rng.fill(&mut b.bytes);
            }
            // A valid header over noise: statistics, segment table, index and records.
            1 => rng.fill(&mut b.bytes[HEADER_BYTES as usize..]),
            // A valid table with noise over the statistics and segment table, and random
            // index words (mostly small values, near real ones).
            _ => {
                rng.fill(&mut b.bytes[TABLE_STATS..l.index_offset as usize]);
                for _ in 0..1 + rng.below(40) {
                    let off = l.index_offset as usize + 8 * rng.below_usize((64 * l.nbuckets / 8) as usize);
                    let v = match rng.below(3) {
                        0 => rng.below(1 << 16),
                        1 => b.word(off) ^ (1 << rng.below(64)),
                        _ => rng.next_u64(),
                    };
                    b.set_word(off, v);
                }
            }
        }
        let path = put_file(dir.path(), &format!("random-{case}.table"), &b.bytes);
        match open_and_read(&path, SMALL, &written) {
            Ok(_) => {
                opened += 1;
                attach_and_use(&path, SMALL, &written);
                recovered += 1;
            }
            Err(_) => refused += 1,
        }
        std::fs::remove_file(&path).unwrap();
    }
    println!("random table files: {opened} opened and read, {recovered} recovered by a writer, {refused} refused");
    assert!(opened >= 150 && refused >= 50, "{opened} {refused}");
}

#[test]
fn random_damage_to_a_real_table_never_yields_a_wrong_value() {
    let dir = shm_tempdir();
    for (g, seed, cases) in [(SMALL, 0x7AB1_E002u64, 200u64), (BIG, 0x7AB1_E003, 60)] {
        let (_, img, written) = real_table(dir.path(), &format!("real-{}.table", g.max_items), g);
        let mut rng = Rng::new(seed);
        let (mut corrupt, mut cleared, mut damaged) = (0, 0, 0);
        for case in 0..cases {
            let mut b = img.clone();
            for _ in 0..1 + rng.below(8) {
                // Anywhere after the header: statistics, segment table, index or records.
                let at = HEADER_BYTES as usize + rng.below_usize(b.bytes.len() - HEADER_BYTES as usize);
                b.bytes[at] ^= 1 << rng.below(8);
            }
            let path = put_file(dir.path(), &format!("damaged-{nb}-{case}.table", nb = g.max_items), &b.bytes);
            let o = open_and_read(&path, g, &written).expect("the header is intact");
            corrupt += o.corrupt;
            let rec = attach_and_use(&path, g, &written);
            cleared += rec.cleared_slots;
            damaged += rec.damaged_segments;
            std::fs::remove_file(&path).unwrap();
        }
        println!("damaged tables: {corrupt} corrupt gets, {cleared} slots cleared, {damaged} segments cut");
        assert!(corrupt > 0 && cleared > 0 && damaged > 0);
    }
}
