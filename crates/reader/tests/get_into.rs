//! `get_into` reuses the caller's `Vec`; `max_value_len` bounds every value.

use podcache_reader::{GetError, TableReader};
use podcache_writer::TableWriter;

fn shm() -> tempfile::TempDir {
    tempfile::tempdir_in(if std::path::Path::new("/dev/shm").is_dir() { "/dev/shm" } else { "/tmp" }).expect("temp dir")
}

#[test]
fn get_into_reuses_one_vec_and_empties_it_on_a_miss() {
    let dir = shm();
    let path = dir.path().join("into.table");
    let mut w = TableWriter::builder(&path).max_items(64).data_bytes(1 << 20).create().expect("create");
    for (k, len) in [(b"small", 3usize), (b"large", 5000), (b"mid..", 700)] {
        w.put(k, vec![len as u8; len]).expect("put");
    }
    let r = TableReader::open(&path).expect("open");
    let mut out = Vec::new();
    assert!(r.get_into(b"large", &mut out).expect("get"));
    assert_eq!(out, vec![(5000 % 256) as u8; 5000]);
    let (ptr, cap) = (out.as_ptr(), out.capacity());
    for (k, len) in [(b"small", 3usize), (b"mid..", 700), (b"large", 5000)] {
        assert!(r.get_into(k, &mut out).expect("get"));
        assert_eq!(out, vec![len as u8; len], "{}", String::from_utf8_lossy(k));
        assert_eq!((out.as_ptr(), out.capacity()), (ptr, cap), "no new allocation once the largest value fit");
    }
    assert!(!r.get_into(b"absent", &mut out).expect("get"));
    assert!(out.is_empty(), "a miss leaves no stale value behind");
    assert_eq!(r.counters().hits, 4);
}

#[test]
fn a_buffer_of_max_value_len_fits_the_largest_value_a_writer_accepts() {
    let dir = shm();
    let path = dir.path().join("max.table");
    let mut w = TableWriter::builder(&path).max_items(16).data_bytes(1 << 20).create().expect("create");
    let largest = w.max_value(1, false);
    w.put(b"k", vec![9u8; largest]).expect("the largest value is accepted");
    assert!(w.put(b"k", vec![9u8; largest + 1]).is_err(), "one byte more is refused");
    let r = TableReader::open(&path).expect("open");
    assert!(r.max_value_len() >= largest, "{} < {largest}", r.max_value_len());
    let mut buf = vec![0u8; r.max_value_len()];
    assert_eq!(r.get(b"k", &mut buf).expect("fits"), Some(largest));
    let mut short = vec![0u8; largest - 1];
    assert_eq!(r.get(b"k", &mut short), Err(GetError::BufferTooSmall { needed: largest }));
}
