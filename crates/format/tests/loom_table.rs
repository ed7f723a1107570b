//! Loom models of the table protocol: one writer and two readers on a heap region.
//!
//! Run: `RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=target/loom cargo test -p podcache-format --release --test loom_table`
#![cfg(loom)]

use loom::thread;
use podcache_format::region::Region;
use podcache_format::table::{EvictionPolicy, GetError, RawTableReader, RawTableWriter, TableParams};

/// Two tiny segments (64 bytes: two 28-byte records each, the second starting mid-word), so
/// a few puts force eviction and reuse.
fn tiny() -> (TableParams, std::sync::Arc<Region>) {
    let p = TableParams {
        nsegments: 2,
        segment_size: 64,
        nbuckets: 1,
        max_items: 4,
        hash_seed: 1,
        index_offset: 0x1c0,
        data_offset: 0x200,
    };
    p.check().unwrap();
    (p, std::sync::Arc::new(Region::heap((p.file_size() / 8) as usize)))
}

const VLEN: usize = 19;

fn value(v: u8) -> [u8; VLEN] {
    [v; VLEN]
}

/// A get through the reader's straight-line path (`get`, `which == 0`) or its general lookup.
fn get(r: &RawTableReader, key: &[u8], which: usize) -> Option<Vec<u8>> {
    if which == 0 {
        let mut buf = [0u8; VLEN];
        r.get(key, &mut buf).unwrap().map(|n| buf[..n].to_vec())
    } else {
        r.get_vec(key).unwrap()
    }
}

/// What a reader may see for key "a": nothing, or one whole value the writer put.
fn check(got: Option<Vec<u8>>, allowed: &[u8]) {
    if let Some(v) = got {
        assert_eq!(v.len(), VLEN, "partial value {v:?}");
        assert!(v.iter().all(|b| *b == v[0]), "mixed value {v:?}");
        assert!(allowed.contains(&v[0]), "value {} never put", v[0]);
    }
}

/// Executions explored, to show the models are not trivially small.
static RUNS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

fn builder() -> loom::model::Builder {
    let mut b = loom::model::Builder::new();
    b.preemption_bound = Some(3);
    b
}

#[test]
fn get_races_overwrite_delete_and_eviction() {
    RUNS.store(0, std::sync::atomic::Ordering::Relaxed);
    builder().check(|| {
        RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (p, region) = tiny();
        let mut w = RawTableWriter::create(region.clone(), &p, EvictionPolicy::Fifo);
        w.put(b"a", value(1), None).unwrap();
        let readers: Vec<_> = (0..2)
            .map(|which| {
                let region = region.clone();
                thread::spawn(move || {
                    let r = RawTableReader::new(region, &p);
                    check(get(&r, b"a", which), &[1, 2, 3]);
                })
            })
            .collect();
        // Overwrite, fill the first segment so the next put evicts it, delete, put again.
        w.put(b"a", value(2), None).unwrap();
        w.put(b"b", value(9), None).unwrap();
        w.put(b"a", value(3), None).unwrap();
        w.delete(b"b");
        for h in readers {
            h.join().unwrap();
        }
        let r = RawTableReader::new(region, &p);
        assert_eq!(r.get_vec(b"a").unwrap(), Some(value(3).to_vec()));
    });
    let runs = RUNS.load(std::sync::atomic::Ordering::Relaxed);
    eprintln!("explored {runs} executions");
    assert!(runs > 100, "only {runs} executions explored");
}

#[test]
fn get_races_segment_recycling() {
    builder().check(|| {
        let (p, region) = tiny();
        let mut w = RawTableWriter::create(region.clone(), &p, EvictionPolicy::Fifo);
        w.put(b"a", value(1), None).unwrap();
        w.put(b"b", value(2), None).unwrap();
        let reader = {
            let region = region.clone();
            thread::spawn(move || {
                let r = RawTableReader::new(region, &p);
                check(get(&r, b"a", 0), &[1]);
                if let Some(v) = get(&r, b"b", 1) {
                    assert_eq!(v, value(2));
                }
            })
        };
        // Fill segment 2, then recycle segment 1 (which holds a and b) with new records.
        w.put(b"c", value(3), None).unwrap();
        w.put(b"d", value(4), None).unwrap();
        w.put(b"e", value(5), None).unwrap();
        reader.join().unwrap();
    });
}

// ---------------------------------------------------------------------------------------------
// Layout v4: a get accepts only a record of the generation its slot names.

/// Key `a`'s first value and the value of the other keys of [`recycle_setup`].
const A1: [u8; 3] = [1; 3];
const A2: [u8; 3] = [2; 3];

/// Segment 0: `b` (a 16-byte record) at offset 0, `a` (12 bytes) at 16; segment 1: `c` (52
/// bytes), so the next record of 16 bytes or more recycles segment 0 and starts at offset 0.
fn recycle_setup() -> (TableParams, std::sync::Arc<Region>, RawTableWriter) {
    let (p, region) = tiny();
    let mut w = RawTableWriter::create(region.clone(), &p, EvictionPolicy::Fifo);
    w.put(b"b", [7u8; 7], None).unwrap();
    w.put(b"a", A1, None).unwrap();
    w.put(b"c", [3u8; 43], None).unwrap();
    (p, region, w)
}

/// Recycle segment 0 (which evicts `a` and `b`) with `y` at offset 0, then put `a` again at
/// the very place its old record lay (offset 16), with `value`.
fn recycle_and_reput_a(w: &mut RawTableWriter, value: [u8; 3]) {
    w.put(b"y", [5u8; 7], None).unwrap();
    w.put(b"a", value, None).unwrap();
}

/// A thread that runs `f` on a reader of the table in `region`.
fn spawn_reader(
    region: &std::sync::Arc<Region>,
    p: TableParams,
    f: impl FnOnce(RawTableReader) + Send + 'static,
) -> thread::JoinHandle<()> {
    let region = region.clone();
    thread::spawn(move || f(RawTableReader::new(region, &p)))
}

/// How a model reads key `a`: every get flavour of the reader (`contains` and `keys` report
/// presence as an empty value).
fn read_a(r: &RawTableReader, flavour: usize) -> Result<Option<Vec<u8>>, GetError> {
    match flavour {
        0 => {
            let mut buf = [0u8; 8];
            r.get(b"a", &mut buf).map(|f| f.map(|n| buf[..n].to_vec()))
        }
        1 => r.get_vec(b"a"),
        2 => r.get_with(b"a", |v| v.to_vec()),
        3 => {
            let mut buf = [0u8; 8];
            let mut out = None;
            r.get_many(&[b"a"], &mut buf, |_, got| out = Some(got.map(|v| v.map(<[u8]>::to_vec))));
            out.expect("get_many calls back once per key")
        }
        4 => r.contains(b"a").map(|present| present.then(Vec::new)),
        _ => {
            let mut present = false;
            for k in r.keys() {
                present |= k? == b"a";
            }
            Ok(present.then(Vec::new))
        }
    }
}

const FLAVOURS: usize = 6;

#[test]
fn a_crafted_value_never_poses_as_another_keys_record() {
    // A record for `a` with value EE EE EE, checksummed as the writer does, taken from a
    // scratch table of the same seed: a value can carry it byte for byte.
    let fake: Vec<u8> = {
        let fake = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let out = fake.clone();
        loom::model(move || {
            let (p, region) = tiny();
            let mut w = RawTableWriter::create(region.clone(), &p, EvictionPolicy::Fifo);
            w.put(b"a", [0xEE; 3], None).unwrap();
            let d = (p.data_offset / 8) as usize;
            let words: Vec<u8> = (d..d + 2)
                .flat_map(|i| region.words()[i].load(loom::sync::atomic::Ordering::Relaxed).to_le_bytes())
                .collect();
            *out.lock().unwrap() = words[..12].to_vec();
        });
        let fake = fake.lock().unwrap().clone();
        assert_eq!(fake.len(), 12);
        fake
    };
    // `x`'s record starts at offset 0 of the recycled segment: header (8), key (1), then its
    // value, whose bytes 7..19 lie at offset 16, where `a`'s record lay.
    let mut xval = vec![0u8; 7];
    xval.extend_from_slice(&fake);
    for flavour in 0..4 {
        let xval = xval.clone();
        builder().check(move || {
            let (p, region, mut w) = recycle_setup();
            let reader = spawn_reader(&region, p, move |r| {
                let got = read_a(&r, flavour).expect("a healthy table");
                assert!(got.is_none() || got.as_deref() == Some(&A1[..]), "flavour {flavour}: a = {got:?}, never put");
            });
            w.put(b"x", &xval, None).unwrap();
            reader.join().unwrap();
        });
    }
}

#[test]
fn one_reader_sees_a_key_monotonically() {
    for flavour in 0..2 {
        builder().check(move || {
            let (p, region, mut w) = recycle_setup();
            let reader = spawn_reader(&region, p, move |r| {
                let first = read_a(&r, flavour).unwrap();
                let second = read_a(&r, flavour).unwrap();
                // `a` is put (1), evicted (absent), put again (2), and nothing removes it after.
                let order = |v: &Option<Vec<u8>>| match v.as_deref() {
                    None => 1,
                    Some(v) if v == A1 => 0,
                    Some(v) if v == A2 => 2,
                    Some(other) => panic!("a = {other:?}, never put"),
                };
                assert!(order(&first) <= order(&second), "flavour {flavour}: {first:?} then {second:?}");
            });
            recycle_and_reput_a(&mut w, A2);
            reader.join().unwrap();
        });
    }
}

#[test]
fn a_healthy_table_is_never_reported_corrupt() {
    // `a` is put again with the same value at the same place after its segment was recycled:
    // in layout 3 its slot held the same word again (ABA).
    for flavour in 0..FLAVOURS {
        builder().check(move || {
            let (p, region, mut w) = recycle_setup();
            let reader = spawn_reader(&region, p, move |r| {
                let got = read_a(&r, flavour);
                assert!(got.is_ok(), "flavour {flavour}: {got:?} on a healthy table");
            });
            recycle_and_reput_a(&mut w, A1);
            reader.join().unwrap();
        });
    }
}

/// A writer operation a recovery model crashes at every store.
#[derive(Clone, Copy, Debug)]
enum Op {
    Overwrite,
    Insert,
    Delete,
    Evict,
}

impl Op {
    fn run(self, w: &mut RawTableWriter) {
        match self {
            Op::Overwrite => w.put(b"a", A2, None).unwrap(),
            Op::Insert => w.put(b"d", [4u8; 3], None).unwrap(),
            Op::Delete => assert!(w.delete(b"a")),
            // `y` does not fit segment 1: segment 0 (`b`, `a`) is evicted for it.
            Op::Evict => w.put(b"y", [5u8; 7], None).unwrap(),
        }
    }

    /// What a reader may get for `key` at any moment of the operation and of the recovery
    /// after a crash in it: the value before or the value after.
    fn allowed(self, key: &[u8]) -> Vec<Option<Vec<u8>>> {
        let before = |k: &[u8]| match k {
            b"a" => Some(A1.to_vec()),
            b"b" => Some(vec![7; 7]),
            b"c" => Some(vec![3; 43]),
            _ => None,
        };
        let after = match (self, key) {
            (Op::Overwrite, b"a") => Some(A2.to_vec()),
            (Op::Insert, b"d") => Some(vec![4; 3]),
            (Op::Delete, b"a") | (Op::Evict, b"a" | b"b") => None,
            (Op::Evict, b"y") => Some(vec![5; 7]),
            _ => before(key),
        };
        vec![before(key), after]
    }
}

const KEYS: [&[u8]; 5] = [b"a", b"b", b"c", b"d", b"y"];

#[test]
fn the_writer_recovers_from_a_crash_at_every_store() {
    // The simulated crash panics: keep its message out of the output, not others'.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if info.payload().downcast_ref::<&str>() != Some(&"simulated crash") {
            default_hook(info);
        }
    }));
    let mut b = loom::model::Builder::new();
    b.preemption_bound = Some(3);
    // Recovery reads every word of the file: many more steps than a get.
    b.max_branches = 100_000;
    for op in [Op::Overwrite, Op::Insert, Op::Delete, Op::Evict] {
        let mut stores = 0;
        RUNS.store(0, std::sync::atomic::Ordering::Relaxed);
        loop {
            let crashed = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
            let seen = crashed.clone();
            b.check(move || {
                RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let (p, region, mut w) = recycle_setup();
                podcache_format::crash_after_stores(Some(stores));
                let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| op.run(&mut w)));
                podcache_format::crash_after_stores(None);
                seen.store(outcome.is_err(), std::sync::atomic::Ordering::Relaxed);
                drop(w);
                // Readers run while the new writer recovers.
                let reader = {
                    let region = region.clone();
                    thread::spawn(move || {
                        let r = RawTableReader::new(region, &p);
                        for key in [&b"a"[..], b"y"] {
                            let got = r.get_vec(key).expect("never an error after a crash");
                            assert!(op.allowed(key).contains(&got), "{op:?} crashed at store {stores}: {got:?}");
                        }
                    })
                };
                let (mut w, _) = RawTableWriter::attach(region.clone(), &p, EvictionPolicy::Fifo);
                reader.join().unwrap();
                let check = podcache_format::table::verify(&region, &p);
                assert!(check.is_ok(), "{op:?} crashed at store {stores}: {:?}", check.problems);
                let r = RawTableReader::new(region.clone(), &p);
                for key in KEYS {
                    let got = r.get_vec(key).unwrap();
                    assert!(op.allowed(key).contains(&got), "{op:?} crashed at store {stores}: {got:?} after recovery");
                }
                assert_eq!(check.indexed_items, w.stats().items, "{op:?} crashed at store {stores}: item count");
                // The recovered writer goes on.
                w.put(b"a", [9u8; 3], None).unwrap();
                assert_eq!(r.get_vec(b"a").unwrap(), Some(vec![9; 3]));
            });
            if !crashed.load(std::sync::atomic::Ordering::Relaxed) {
                let runs = RUNS.load(std::sync::atomic::Ordering::Relaxed);
                eprintln!("{op:?}: crashed at each of its {stores} stores, {runs} executions explored");
                assert!(stores > 5, "{op:?} made only {stores} stores");
                break;
            }
            stores += 1;
        }
    }
}
