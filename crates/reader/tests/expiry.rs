//! `get_into_with_expiry`: a value's expiry, read from the same validated record as the value.

use podcache_reader::{Expiry, TableReader};
use podcache_writer::TableWriter;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

fn shm() -> tempfile::TempDir {
    tempfile::tempdir_in(if std::path::Path::new("/dev/shm").is_dir() { "/dev/shm" } else { "/tmp" }).expect("temp dir")
}

#[test]
fn expiry_is_never_without_a_ttl_and_the_deadline_with_one() {
    let dir = shm();
    let path = dir.path().join("ttl.table");
    let mut w = TableWriter::builder(&path).max_items(64).create().expect("create");
    let before = now_ms();
    w.put_with_ttl(b"t", b"with ttl", Duration::from_secs(60)).unwrap();
    let after = now_ms();
    w.put(b"n", b"no ttl").unwrap();
    let r = TableReader::open(&path).unwrap();
    let mut v = Vec::new();
    assert_eq!(r.get_into_with_expiry(b"n", &mut v).unwrap(), Some(Expiry::Never));
    assert_eq!(v, b"no ttl");
    let Some(Expiry::AtMs(at)) = r.get_into_with_expiry(b"t", &mut v).unwrap() else { panic!("no expiry") };
    assert_eq!(v, b"with ttl");
    // The writer adds the TTL to its clock at the put, which lies between the two readings.
    assert!(before + 60_000 <= at && at <= after + 60_000, "{before} {at} {after}");
    assert_eq!(Expiry::AtMs(at).remaining_at(at - 5), Some(Duration::from_millis(5)));
    assert_eq!(Expiry::AtMs(at).remaining_at(at + 5), Some(Duration::ZERO));
    assert_eq!(Expiry::Never.remaining(), None);
    assert_eq!(r.get_into_with_expiry(b"absent", &mut v).unwrap(), None);
    assert!(v.is_empty(), "a miss leaves no stale value behind");
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64
}

/// A writer alternates one key between a value put without a TTL and another put with one,
/// and churns other keys so that segments are recycled under the reader. Every get returns a
/// value with its own expiry: never the first value with a TTL, nor the second without one.
#[test]
fn racing_puts_never_pair_a_value_with_another_records_expiry() {
    let dir = shm();
    let path = dir.path().join("race.table");
    let mut w = TableWriter::builder(&path).max_items(256).data_bytes(64 << 10).create().expect("create");
    w.put(b"key", b"plain").unwrap();
    let r = TableReader::open(&path).unwrap();
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        let reader = s.spawn(|| {
            let (mut v, mut seen) = (Vec::new(), [0u64; 2]);
            while !stop.load(Ordering::Relaxed) {
                match r.get_into_with_expiry(b"key", &mut v) {
                    Ok(Some(Expiry::Never)) => {
                        assert_eq!(v, b"plain", "a value with a TTL returned as Never");
                        seen[0] += 1;
                    }
                    Ok(Some(Expiry::AtMs(_))) => {
                        assert_eq!(v, vec![7u8; 300], "a value without a TTL returned with an expiry");
                        seen[1] += 1;
                    }
                    // Evicted by the churn for a moment, or the writer recycled it too often.
                    Ok(None) | Err(podcache_reader::GetError::Contended) => {}
                    Err(e) => panic!("{e}"),
                }
            }
            seen
        });
        for i in 0..200_000u32 {
            if i % 2 == 0 {
                w.put(b"key", b"plain").unwrap();
            } else {
                w.put_with_ttl(b"key", vec![7u8; 300], Duration::from_secs(3600)).unwrap();
            }
            w.put(format!("churn{}", i % 200).as_bytes(), vec![1u8; 200]).unwrap();
        }
        stop.store(true, Ordering::Relaxed);
        let seen = reader.join().unwrap();
        eprintln!("gets: {} without a TTL, {} with one", seen[0], seen[1]);
    });
}
