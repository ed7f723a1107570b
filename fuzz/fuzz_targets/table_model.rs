//! Random table operations checked against a `HashMap` model.
//!
//! The input is a list of operations (put with and without a TTL, delete, get, clear, expire,
//! reopen = drop the writer and attach a new one to the same file) on a table of a few small
//! segments, so eviction happens all the time. Every value put is unique (it carries the number
//! of its put), so a value returned for a key can be traced to exactly one put. The rules:
//!
//! - a get returns `None` or exactly the last value put for that key: eviction and expiry may
//!   drop keys, but never bring back an older value, or a value of another key;
//! - a deleted (or cleared) key is absent until it is put again;
//! - right after a put that returned `Ok` (without a short TTL) the key is present: eviction
//!   happens before the new record is written, never to it;
//! - with no writer running concurrently, every get flavour (`get`, `get_vec`, `get_with`,
//!   `contains`, `get_many`) and `keys()` agree;
//! - no get of a healthy table fails (`Corrupt`, `Contended`).

#![no_main]

use libfuzzer_sys::fuzz_target;
use podcache_fuzz::{scratch_path, MAX_INPUT};
use podcache_reader::TableReader;
use podcache_writer::{TableWriter, TableWriterBuilder};
use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

/// The keys the operations pick from (different lengths, so records differ in size).
const KEYS: [&[u8]; 12] =
    [b"a", b"b", b"c", b"dd", b"eee", b"ffff", b"g-key-7", b"h-key-eight", b"i", b"j-0123456789abcdef", b"k", b"l"];

/// What the model knows about one key.
#[derive(Clone, Debug)]
struct Expect {
    /// The last value put (`None`: never put, deleted or cleared).
    value: Option<Vec<u8>>,
    /// Its TTL is short enough to run out during the check: present or not, both are right.
    short_ttl: bool,
}

/// What the model expects of `key` (never put: absent).
fn expected(model: &HashMap<&'static [u8], Expect>, key: &[u8]) -> Expect {
    model.get(key).cloned().unwrap_or(Expect { value: None, short_ttl: false })
}

fn builder(path: &Path) -> TableWriterBuilder {
    // Three segments of 4 KiB and room for fewer items than keys: puts evict by bytes and by
    // items.
    TableWriter::builder(path).max_items(10).data_bytes(3 * 4096).segment_size(4096)
}

/// A value unique to put number `n`, `len` bytes long (at least the 4 bytes of `n`).
fn value(n: u32, len: usize) -> Vec<u8> {
    let mut v = n.to_le_bytes().to_vec();
    v.extend((0..len.saturating_sub(4)).map(|i| (n as usize).wrapping_mul(31).wrapping_add(i) as u8));
    v
}

/// Check one key against the model, with every get flavour.
fn check_key(table: &TableReader, key: &[u8], want: &Expect, buf: &mut [u8]) {
    let got = table.get(key, buf).unwrap_or_else(|e| panic!("get {key:?} on a healthy table: {e}"));
    let got = got.map(|len| buf[..len].to_vec());
    match (&got, &want.value) {
        (None, _) => {}
        (Some(g), Some(w)) => assert_eq!(g, w, "get {key:?} returned a value that is not the last put"),
        (Some(g), None) => panic!("get {key:?} returned {} B for a key deleted or never put", g.len()),
    }
    if want.short_ttl {
        return;
    }
    let vec = table.get_vec(key).unwrap_or_else(|e| panic!("get_vec {key:?}: {e}"));
    assert_eq!(vec, got, "get_vec and get disagree on {key:?}");
    let with = table
        .get_with(key, |v| {
            let mut out = vec![0u8; v.len()];
            v.copy_to(0, &mut out);
            out
        })
        .unwrap_or_else(|e| panic!("get_with {key:?}: {e}"));
    assert_eq!(with, got, "get_with and get disagree on {key:?}");
    let has = table.contains(key).unwrap_or_else(|e| panic!("contains {key:?}: {e}"));
    assert_eq!(has, got.is_some(), "contains and get disagree on {key:?}");
    if let Some(g) = &got {
        if !g.is_empty() {
            let mut short = vec![0u8; g.len() - 1];
            match table.get(key, &mut short) {
                Err(podcache_reader::GetError::BufferTooSmall { needed }) => assert_eq!(needed, g.len()),
                other => panic!("get {key:?} into a short buffer: {other:?}"),
            }
        }
    }
}

/// Check every key, with `get_many` and `keys()` too.
fn check_all(table: &TableReader, model: &HashMap<&'static [u8], Expect>, buf: &mut [u8]) {
    let mut singles = Vec::new();
    for key in KEYS {
        check_key(table, key, &expected(model, key), buf);
        singles.push(table.get_vec(key).expect("get_vec"));
    }
    let mut many = Vec::new();
    table.get_many(&KEYS, buf, |i, r| {
        let r = r.unwrap_or_else(|e| panic!("get_many {:?}: {e}", KEYS[i]));
        many.push((i, r.map(<[u8]>::to_vec)));
    });
    assert_eq!(many.len(), KEYS.len(), "get_many calls back once per key");
    let mut listed = Vec::new();
    for k in table.keys().take(1000) {
        listed.push(k.unwrap_or_else(|e| panic!("keys() on a healthy table: {e}")));
    }
    assert!(listed.len() <= KEYS.len(), "keys() lists {} keys", listed.len());
    for (i, got) in many {
        let key = KEYS[i];
        if expected(model, key).short_ttl {
            continue;
        }
        assert_eq!(got, singles[i], "get_many and get_vec disagree on {key:?}");
        assert_eq!(listed.iter().any(|k| k == key), got.is_some(), "keys() and get disagree on {key:?}");
    }
    for k in &listed {
        assert!(KEYS.contains(&k.as_slice()), "keys() lists {k:?}, which was never put");
        let want = model.get(k.as_slice()).cloned();
        assert!(want.is_some_and(|w| w.value.is_some()), "keys() lists {k:?}, which was deleted");
    }
}

fuzz_target!(|input: &[u8]| {
    if input.len() > MAX_INPUT {
        return;
    }
    let path = scratch_path("model.table");
    let _ = std::fs::remove_file(&path);
    let mut writer = Some(builder(&path).create().expect("create the table"));
    let table = TableReader::open(&path).expect("open the table");
    let mut model: HashMap<&'static [u8], Expect> = HashMap::new();
    let mut buf = vec![0u8; 8192];
    let mut puts = 0u32;

    let mut ops = input;
    while let [op, arg, rest @ ..] = ops {
        ops = rest;
        let key = KEYS[usize::from(*arg) % KEYS.len()];
        let w = writer.as_mut().expect("a writer");
        match op % 10 {
            // put, put with a long TTL, put with a short TTL
            0..=4 => {
                let Some((&size, rest)) = ops.split_first() else { break };
                ops = rest;
                // Up to about 1.5 KiB: a few values fill a 4 KiB segment.
                let len = usize::from(size) * 6;
                puts += 1;
                let v = value(puts, len);
                let ttl = match op % 10 {
                    3 => Some(Duration::from_secs(3600)),
                    4 => Some(Duration::from_millis(u64::from(arg >> 4))),
                    _ => None,
                };
                let short_ttl = op % 10 == 4;
                let put = match ttl {
                    Some(t) => w.put_with_ttl(key, v.clone(), t),
                    None => w.put(key, v.clone()),
                };
                // A refused put changes nothing in the model: the new value must never appear,
                // the old one may remain or not (None is always allowed).
                if put.is_ok() {
                    model.insert(key, Expect { value: Some(v.clone()), short_ttl });
                    if !short_ttl {
                        let got = table.get_vec(key).unwrap_or_else(|e| panic!("get {key:?} after put: {e}"));
                        assert_eq!(got.as_deref(), Some(&v[..]), "a put of {key:?} that returned Ok is not visible");
                    }
                }
            }
            5 => {
                let was = w.delete(key);
                if was {
                    let known = model.get(key).is_some_and(|e| e.value.is_some());
                    assert!(known, "delete {key:?} found a key the model says is absent");
                }
                model.insert(key, Expect { value: None, short_ttl: false });
            }
            6 => check_key(&table, key, &expected(&model, key), &mut buf),
            7 => match arg % 4 {
                0 => {
                    w.clear();
                    model.clear();
                }
                1 => {
                    let _ = w.expire();
                }
                _ => check_all(&table, &model, &mut buf),
            },
            8 => {
                // Reopen: the next writer attaches to the file the last one left.
                drop(writer.take());
                writer = Some(builder(&path).create().expect("re-attach the writer"));
            }
            _ => {
                // A reader opened now must see what the long-lived one sees.
                let fresh = TableReader::open(&path).expect("open a second reader");
                check_all(&fresh, &model, &mut buf);
            }
        }
    }
    check_all(&table, &model, &mut buf);
    drop(writer);
    check_all(&table, &model, &mut buf);
});
