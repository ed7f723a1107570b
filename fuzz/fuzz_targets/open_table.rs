//! A hostile table file: open it with `TableReader` and use every get flavour. Any `Err` is
//! fine; a panic, an out-of-bounds access, a hang or a huge allocation is a bug.

#![no_main]

use libfuzzer_sys::fuzz_target;
use podcache_format::Kind;
use podcache_fuzz::{build_file, scratch_path, write_fresh, MAX_INPUT};
use podcache_reader::TableReader;
use podcache_writer::TableWriter;
use std::sync::OnceLock;
use std::time::Duration;

/// Keys of the valid table, and the ones every input is queried for.
const KEYS: [&[u8]; 6] = [b"k0", b"k1", b"key-2", b"a-longer-key-number-3", b"k4", b"absent"];

/// A real table file, written once per process: a few keys, one with a TTL, one deleted, and
/// enough puts to evict a segment, so every kind of record and segment state is in it.
fn valid_table() -> &'static [u8] {
    static FILE: OnceLock<Vec<u8>> = OnceLock::new();
    FILE.get_or_init(|| {
        let path = scratch_path("valid.table");
        let _ = std::fs::remove_file(&path);
        {
            let mut w = TableWriter::builder(&path)
                .max_items(16)
                .data_bytes(2 * 4096)
                .segment_size(4096)
                .create()
                .expect("create the valid table");
            for round in 0..6u8 {
                for (i, k) in KEYS[..5].iter().enumerate() {
                    let v = vec![round ^ i as u8; 40 + 150 * i];
                    w.put(k, v).expect("put");
                }
            }
            w.put_with_ttl(b"ttl", b"short-lived", Duration::from_secs(3600)).expect("put ttl");
            w.put(b"gone", b"deleted").expect("put");
            w.delete(b"gone");
        }
        let bytes = std::fs::read(&path).expect("read the valid table");
        let _ = std::fs::remove_file(&path);
        bytes
    })
}

fuzz_target!(|input: &[u8]| {
    if input.len() > MAX_INPUT {
        return;
    }
    let file = build_file(input, valid_table(), Kind::Table);
    let path = scratch_path("fuzz.table");
    write_fresh(&path, &file);
    let Ok(table) = TableReader::open(&path) else {
        return;
    };
    // A key from the input too, so the fuzzer can steer which bucket is probed.
    let extra: &[u8] = &input[..input.len().min(8)];
    let mut buf = vec![0u8; 4096];
    let mut small = [0u8; 8];
    for key in KEYS.iter().copied().chain([extra]) {
        if let Ok(Some(len)) = table.get(key, &mut buf) {
            assert!(len <= buf.len());
        }
        if let Err(podcache_reader::GetError::BufferTooSmall { needed }) = table.get(key, &mut small) {
            assert!(needed > small.len());
        }
        if let Ok(Some(v)) = table.get_vec(key) {
            assert!(v.len() <= file.len(), "a value longer than the file");
        }
        let _ = table.contains(key);
        let _ = table.get_with(key, |v| {
            let mut out = vec![0u8; v.len().min(file.len())];
            v.copy_to(0, &mut out);
            out
        });
        let _ = table.get_typed::<(u32, String)>(key);
    }
    let mut n = 0usize;
    table.get_many(&KEYS, &mut buf, |i, r| {
        assert!(i < KEYS.len());
        if let Ok(Some(v)) = r {
            assert!(v.len() <= 4096);
        }
        n += 1;
    });
    assert_eq!(n, KEYS.len(), "get_many calls back once per key");
    // The key iterator must end: a file cannot hold more keys than it has bytes, so more items
    // than that is an endless iterator (checked without running it forever).
    let mut items = 0usize;
    for k in table.keys().take(file.len() + 1) {
        items += 1;
        if let Ok(k) = k {
            let _ = table.get(&k, &mut buf);
        }
    }
    assert!(items <= file.len(), "keys() does not end");
    let _ = table.stats();
    let _ = table.counters();
    let _ = table.writer_epoch();
});
