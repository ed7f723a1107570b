//! One `TableReader` shared by many threads (it is `Sync`): every thread reads right values
//! while the writer overwrites them, and the counters sum every thread's gets.

use podcache_reader::TableReader;
use podcache_writer::TableWriter;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

const KEYS: u64 = 500;
const THREADS: u64 = 8;
const GETS_PER_THREAD: u64 = 20_000;

fn key(i: u64) -> [u8; 8] {
    i.to_le_bytes()
}

/// A value names its key and version, so a wrong or torn one is recognised.
fn value(i: u64, version: u64) -> Vec<u8> {
    let mut v = Vec::with_capacity(40);
    for _ in 0..5 {
        v.extend_from_slice(&(i ^ version.rotate_left(32)).to_le_bytes());
    }
    v.extend_from_slice(&version.to_le_bytes());
    v
}

fn is_value_of(i: u64, v: &[u8]) -> bool {
    let Some((_, version)) = v.split_last_chunk::<8>() else { return false };
    *v == value(i, u64::from_le_bytes(*version))[..]
}

#[test]
fn one_reader_serves_eight_threads_while_the_writer_overwrites() {
    let dir = tempfile::tempdir_in(if std::path::Path::new("/dev/shm").is_dir() { "/dev/shm" } else { "/tmp" })
        .expect("temp dir");
    let path = dir.path().join("shared.table");
    let mut w = TableWriter::builder(&path).max_items(4 * KEYS).data_bytes(1 << 20).create().expect("create");
    for i in 0..KEYS {
        w.put(&key(i), value(i, 0)).expect("put");
    }
    let reader = Arc::new(TableReader::open(&path).expect("open"));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut version = 1;
            while !stop.load(Ordering::Relaxed) {
                for i in 0..KEYS {
                    w.put(&key(i), value(i, version)).expect("put");
                }
                version += 1;
            }
        })
    };
    let threads: Vec<_> = (0..THREADS)
        .map(|t| {
            let reader = reader.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 64];
                let mut hits = 0;
                for n in 0..GETS_PER_THREAD {
                    let i = (n * 7 + t * 13) % KEYS;
                    let len = reader.get(&key(i), &mut buf).expect("get").expect("every key is present");
                    assert!(is_value_of(i, &buf[..len]), "thread {t}, key {i}: {:?}", &buf[..len]);
                    hits += 1;
                }
                hits
            })
        })
        .collect();
    let hits: u64 = threads.into_iter().map(|t| t.join().expect("reader thread")).sum();
    stop.store(true, Ordering::Relaxed);
    writer.join().expect("writer thread");
    assert_eq!(hits, THREADS * GETS_PER_THREAD);
    let c = reader.counters();
    assert_eq!((c.hits, c.misses), (THREADS * GETS_PER_THREAD, 0), "{c:?}");
    // The counters go on from the same totals on the threads that are left.
    assert_eq!(reader.get(&key(KEYS + 1), &mut [0u8; 64]).expect("get"), None);
    assert_eq!(reader.counters().misses, 1);
}
