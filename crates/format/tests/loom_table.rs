//! Loom models of the table protocol: one writer and two readers on a heap region.
//!
//! Run: `RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=target/loom cargo test -p podcache-format --release --test loom_table`
#![cfg(loom)]

use loom::thread;
use podcache_format::region::Region;
use podcache_format::table::{EvictionPolicy, TableParams, TableReader, TableWriter};

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
fn get(r: &TableReader, key: &[u8], which: usize) -> Option<Vec<u8>> {
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
        let mut w = TableWriter::create(region.clone(), &p, EvictionPolicy::Fifo);
        w.put(b"a", value(1), None).unwrap();
        let readers: Vec<_> = (0..2)
            .map(|which| {
                let region = region.clone();
                thread::spawn(move || {
                    let r = TableReader::new(region, &p);
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
        let r = TableReader::new(region, &p);
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
        let mut w = TableWriter::create(region.clone(), &p, EvictionPolicy::Fifo);
        w.put(b"a", value(1), None).unwrap();
        w.put(b"b", value(2), None).unwrap();
        let reader = {
            let region = region.clone();
            thread::spawn(move || {
                let r = TableReader::new(region, &p);
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
