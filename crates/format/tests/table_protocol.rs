//! The table protocol on a heap region: gets, overwrites, deletes, TTL, eviction, recovery,
//! and a randomized comparison with a `HashMap` oracle.
#![cfg(not(loom))]

use podcache_format::region::Region;
use podcache_format::table::{now_ms, EvictionPolicy, GetError, PutError, RawTableReader, RawTableWriter, TableParams};
use std::collections::HashMap;
use std::sync::Arc;

fn table(items: u64, data: u64, seg: u64) -> (TableParams, Arc<Region>) {
    let p = TableParams::new(items, data, seg, 0x5eed).unwrap();
    let r = Arc::new(Region::heap((p.file_size() / 8) as usize));
    (p, r)
}

fn value_for(key: u64, version: u64, len: usize) -> Vec<u8> {
    (0..len).map(|i| (key as usize * 7 + version as usize * 13 + i) as u8).collect()
}

#[test]
fn put_get_overwrite_delete() {
    let (p, r) = table(1000, 1 << 20, 0);
    let mut w = RawTableWriter::create(r.clone(), &p, EvictionPolicy::default());
    let rd = RawTableReader::new(r, &p);
    let mut buf = [0u8; 256];
    assert_eq!(rd.get(b"k", &mut buf), Ok(None));
    w.put(b"k", b"v1", None).unwrap();
    assert_eq!(rd.get(b"k", &mut buf), Ok(Some(2)));
    assert_eq!(&buf[..2], b"v1");
    w.put(b"k", b"value two", None).unwrap();
    assert_eq!(rd.get_vec(b"k").unwrap().unwrap(), b"value two");
    assert_eq!(rd.get(b"k", &mut [0u8; 3]), Err(GetError::BufferTooSmall { needed: 9 }));
    w.put(b"empty", b"", None).unwrap();
    assert_eq!(rd.get_vec(b"empty").unwrap(), Some(vec![]));
    assert!(rd.contains(b"k").unwrap());
    assert_eq!(rd.get_with(b"k", |v| v.to_vec()).unwrap().unwrap(), b"value two");
    assert!(w.delete(b"k"));
    assert!(!w.delete(b"k"));
    assert_eq!(rd.get(b"k", &mut buf), Ok(None));
    let s = rd.stats();
    assert_eq!((s.items, s.puts, s.deletes), (1, 3, 1));
    let c = rd.counters();
    assert!(c.hits >= 4 && c.misses >= 2, "{c:?}");
}

/// Two keys whose 16-bit tags collide in one bucket: a get of the second sees the first's
/// slot first, so it leaves the straight-line path for the full lookup, which must find it.
#[test]
fn tag_collisions_in_a_bucket_are_resolved_by_comparing_keys() {
    let (p, r) = table(100, 1 << 18, 4096);
    let mut w = RawTableWriter::create(r.clone(), &p, EvictionPolicy::default());
    let rd = RawTableReader::new(r, &p);
    let place = |k: &[u8]| {
        let h = podcache_format::hash::hash(p.hash_seed, k);
        (((h & 0xffff_ffff) * p.nbuckets) >> 32, (h >> 48) | 1)
    };
    let mut seen = HashMap::new();
    let (a, b) = (0u64..)
        .map(|i| format!("key-{i}").into_bytes())
        .find_map(|k| seen.insert(place(&k), k.clone()).map(|other| (other, k)))
        .unwrap();
    assert_ne!(a, b);
    w.put(&a, b"first", None).unwrap();
    w.put(&b, b"second", None).unwrap();
    let mut buf = [0u8; 16];
    assert_eq!(rd.get(&b, &mut buf), Ok(Some(6)));
    assert_eq!(&buf[..6], b"second");
    assert_eq!(rd.get(&a, &mut buf), Ok(Some(5)));
    assert_eq!(&buf[..5], b"first");
    assert!(w.delete(&a));
    assert_eq!(rd.get(&a, &mut buf), Ok(None));
    assert_eq!(rd.get_vec(&b).unwrap().unwrap(), b"second");
    assert_eq!((rd.counters().hits, rd.counters().misses, rd.counters().retries), (3, 1, 0));
}

/// A get's result with the value copied out.
type Owned = Result<Option<Vec<u8>>, GetError>;

/// What `get` returns for `key`, the value copied out.
fn get_owned(rd: &RawTableReader, key: &[u8], buf: &mut [u8]) -> Owned {
    rd.get(key, buf).map(|found| found.map(|len| buf[..len].to_vec()))
}

/// `get_many`'s results, in the order it reported them, each with the index it gave.
fn get_many_owned(rd: &RawTableReader, keys: &[Vec<u8>], buf: &mut [u8]) -> Vec<(usize, Owned)> {
    let mut out = Vec::new();
    rd.get_many(keys, buf, |i, r| out.push((i, r.map(|v| v.map(<[u8]>::to_vec)))));
    out
}

#[test]
fn get_many_returns_what_get_returns_for_every_key_in_order() {
    let (p, r) = table(1000, 1 << 20, 0);
    let mut w = RawTableWriter::create(r.clone(), &p, EvictionPolicy::default());
    let rd = RawTableReader::new(r.clone(), &p);
    let mut keys: Vec<Vec<u8>> = Vec::new();
    for i in 0..(3 * podcache_format::table::BATCH as u64 + 5) {
        let key = format!("key-{i}").into_bytes();
        match i % 6 {
            0 => {}                                                              // absent
            1 => w.put(&key, value_for(i, 0, 200), Some(now_ms() - 1)).unwrap(), // expired
            2 => w.put(&key, b"", None).unwrap(),
            3 => w.put(&key, value_for(i, 0, 100), Some(now_ms() + 60_000)).unwrap(),
            _ => w.put(&key, value_for(i, 1, i as usize), None).unwrap(),
        }
        keys.push(key);
    }
    keys.push(vec![]); // never a valid key
    keys.push(vec![7u8; 256]); // longer than any key
    keys.push(b"key-10".to_vec()); // twice in one call
    w.put(b"big", vec![3u8; 300], None).unwrap();
    keys.push(b"big".to_vec()); // does not fit the buffer below
    let mut buf = [0u8; 256];
    let expected: Vec<_> = keys.iter().map(|k| get_owned(&rd, k, &mut buf)).collect();
    assert!(expected.iter().any(|r| matches!(r, Ok(Some(v)) if v.len() > 50)), "some values are found");
    assert_eq!(expected.last(), Some(&Err(GetError::BufferTooSmall { needed: 300 })));
    let before = rd.counters();
    let got = get_many_owned(&rd, &keys, &mut buf);
    let after = rd.counters();
    assert_eq!(got, expected.into_iter().enumerate().collect::<Vec<_>>(), "each key once, in order, as get");
    let gets = RawTableReader::new(r, &p);
    for k in &keys {
        let _ = gets.get(k, &mut buf);
    }
    let each = gets.counters();
    assert_eq!((after.hits - before.hits, after.misses - before.misses), (each.hits, each.misses), "counted as gets");
    assert!(get_many_owned(&rd, &[], &mut buf).is_empty(), "no keys, no calls");
}

#[test]
fn refuses_bad_keys_and_oversized_values_handing_them_back() {
    let (p, r) = table(100, 1 << 18, 4096);
    let mut w = RawTableWriter::create(r, &p, EvictionPolicy::default());
    let big = vec![1u8; 5000];
    match w.put(b"k", big.clone(), None) {
        Err(PutError::TooLarge { len: 5000, max, value }) => {
            assert_eq!(value, big);
            assert_eq!(max, 4096 - 8 - 1);
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(w.put(b"", b"v", None), Err(PutError::BadKey { len: 0, .. })));
    assert!(matches!(w.put(&[1u8; 256], b"v", None), Err(PutError::BadKey { len: 256, .. })));
    w.put(b"k", vec![2u8; 4096 - 9], None).unwrap();
}

#[test]
fn expired_entries_are_invisible_at_once_and_expire_removes_them() {
    let (p, r) = table(1000, 1 << 18, 4096);
    let mut w = RawTableWriter::create(r.clone(), &p, EvictionPolicy::default());
    let rd = RawTableReader::new(r, &p);
    w.put(b"past", b"x", Some(now_ms() - 1)).unwrap();
    w.put(b"future", b"y", Some(now_ms() + 60_000)).unwrap();
    assert_eq!(rd.get_vec(b"past").unwrap(), None);
    assert_eq!(rd.get_vec(b"future").unwrap().unwrap(), b"y");
    // Fill the segment with expired items, move on, and sweep.
    for i in 0..200u32 {
        w.put(format!("gone{i}").as_bytes(), [0u8; 40], Some(now_ms() - 1)).unwrap();
    }
    let removed = w.expire();
    assert!(removed > 0);
    assert_eq!(rd.stats().expirations, removed);
    let keys: Vec<Vec<u8>> = rd.keys().map(Result::unwrap).collect();
    assert!(!keys.iter().any(|k| k.starts_with(b"gone") || k == b"past"));
}

#[test]
fn full_table_evicts_oldest_segment_first() {
    let (p, r) = table(10_000, 64 << 10, 4096);
    let mut w = RawTableWriter::create(r.clone(), &p, EvictionPolicy::Fifo);
    let rd = RawTableReader::new(r, &p);
    for i in 0..5000u64 {
        w.put(&i.to_le_bytes(), value_for(i, 0, 100), None).unwrap();
    }
    let present: Vec<u64> = (0..5000u64).filter(|i| rd.contains(&i.to_le_bytes()).unwrap()).collect();
    assert!(!present.is_empty() && present.len() < 5000);
    // FIFO: what survived is a suffix of the insertion order.
    let first = present[0];
    assert_eq!(present, (first..5000).collect::<Vec<_>>());
    for i in &present {
        assert_eq!(rd.get_vec(&i.to_le_bytes()).unwrap().unwrap(), value_for(*i, 0, 100));
    }
    let s = rd.stats();
    assert_eq!(s.items, present.len() as u64);
    assert_eq!(s.evictions, 5000 - present.len() as u64);
    assert!(s.bytes_used <= s.bytes_capacity);
}

#[test]
fn item_limit_is_enforced_by_eviction() {
    let (p, r) = table(100, 1 << 20, 4096);
    let mut w = RawTableWriter::create(r.clone(), &p, EvictionPolicy::default());
    let rd = RawTableReader::new(r, &p);
    for i in 0..1000u64 {
        w.put(&i.to_le_bytes(), [1u8; 8], None).unwrap();
        assert!(rd.stats().items <= 100);
    }
    assert!(rd.contains(&999u64.to_le_bytes()).unwrap());
}

#[test]
fn clear_removes_everything() {
    let (p, r) = table(1000, 1 << 18, 4096);
    let mut w = RawTableWriter::create(r.clone(), &p, EvictionPolicy::default());
    let rd = RawTableReader::new(r, &p);
    for i in 0..500u64 {
        w.put(&i.to_le_bytes(), [3u8; 20], None).unwrap();
    }
    w.clear();
    assert_eq!(rd.keys().count(), 0);
    assert_eq!(rd.stats().items, 0);
    w.put(b"after", b"clear", None).unwrap();
    assert_eq!(rd.get_vec(b"after").unwrap().unwrap(), b"clear");
}

#[test]
fn attach_recovers_state_and_repairs_bad_slots() {
    let (p, r) = table(2000, 1 << 18, 4096);
    let mut w = RawTableWriter::create(r.clone(), &p, EvictionPolicy::default());
    for i in 0..1500u64 {
        w.put(&(i % 700).to_le_bytes(), value_for(i % 700, i, 30), None).unwrap();
    }
    let before = w.stats();
    drop(w);
    let (mut w2, rec) = RawTableWriter::attach(r.clone(), &p, EvictionPolicy::default());
    assert_eq!(rec.items, before.items);
    assert_eq!(rec.cleared_slots, 0);
    assert_eq!(w2.stats().items, before.items);
    assert_eq!(w2.stats().bytes_used, before.bytes_used);
    w2.put(b"new", b"after restart", None).unwrap();
    let rd = RawTableReader::new(r.clone(), &p);
    assert_eq!(rd.get_vec(b"new").unwrap().unwrap(), b"after restart");
    for i in 800..1500u64 {
        assert_eq!(rd.get_vec(&(i % 700).to_le_bytes()).unwrap(), Some(value_for(i % 700, i, 30)));
    }
    // Point a slot at garbage: the reader reports corruption, a new writer clears the slot.
    let idx = (p.index_offset / 8) as usize;
    let slot = (0..(p.nbuckets as usize * 8))
        .map(|i| idx + i)
        .find(|&i| i % 8 != 0 && r.words()[i].load(std::sync::atomic::Ordering::Relaxed) != 0);
    let slot = slot.unwrap();
    let v = r.words()[slot].load(std::sync::atomic::Ordering::Relaxed);
    r.words()[slot].store(v ^ 8, std::sync::atomic::Ordering::Relaxed);
    drop(w2);
    let (w3, rec) = RawTableWriter::attach(r.clone(), &p, EvictionPolicy::default());
    assert_eq!(rec.cleared_slots, 1);
    assert_eq!(w3.stats().items, before.items);
}

/// Random operations against a `HashMap` oracle, with reopen, eviction pressure and TTLs.
#[test]
fn random_operations_match_a_hashmap_oracle() {
    let mut rng = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let (p, r) = table(400, 48 << 10, 4096);
    let mut w = RawTableWriter::create(r.clone(), &p, EvictionPolicy::ExpiredFirst);
    let rd = RawTableReader::new(r.clone(), &p);
    // key -> (value, expiry, order of the last put)
    let mut oracle: HashMap<u64, (Vec<u8>, Option<u64>, u64)> = HashMap::new();
    let mut order = 0u64;
    let now = now_ms();
    for step in 0..20_000u64 {
        let key = next() % 600;
        match next() % 1000 {
            0..=599 => {
                let len = (next() % 300) as usize;
                let val = value_for(key, step, len);
                let exp = (next() % 10 == 0).then(|| now - 1 + (next() % 2) * 3_600_000);
                w.put(&key.to_le_bytes(), &val, exp).unwrap();
                order += 1;
                oracle.insert(key, (val, exp, order));
            }
            600..=799 => {
                let was = w.delete(&key.to_le_bytes());
                let in_oracle = oracle.remove(&key).is_some();
                assert!(!was || in_oracle, "deleted a key the oracle never had");
            }
            800 => {
                w.clear();
                oracle.clear();
            }
            801..=820 => {
                drop(w);
                w = RawTableWriter::attach(r.clone(), &p, EvictionPolicy::ExpiredFirst).0;
            }
            _ => {}
        }
        if step % 97 == 0 || step > 19_900 {
            // Every present key has its last value; a missing key was evicted (FIFO: older
            // than every present one), expired, or deleted.
            let mut oldest_present = u64::MAX;
            let mut newest_missing = 0;
            for (k, (v, exp, ord)) in &oracle {
                let live = exp.is_none_or(|e| e > now_ms());
                match rd.get_vec(&k.to_le_bytes()).unwrap() {
                    Some(got) => {
                        assert!(live, "expired key {k} visible");
                        assert_eq!(&got, v, "key {k} at step {step}");
                        oldest_present = oldest_present.min(*ord);
                    }
                    None if live => newest_missing = newest_missing.max(*ord),
                    None => {}
                }
            }
            assert!(newest_missing < oldest_present, "evicted out of FIFO order at step {step}");
            assert!(rd.stats().items <= 400);
            // A batched get agrees with single gets, over present and absent keys alike.
            let keys: Vec<Vec<u8>> = (0..600u64).map(|k| k.to_le_bytes().to_vec()).collect();
            let mut buf = [0u8; 512];
            for (i, r) in get_many_owned(&rd, &keys, &mut buf) {
                assert_eq!(r, get_owned(&rd, &keys[i], &mut buf), "get_many of key {i} at step {step}");
            }
        }
    }
    let s = rd.stats();
    eprintln!("{s:?}");
    assert!(s.evictions > 100 && s.clears > 0 && s.deletes > 100, "the run exercised eviction: {s:?}");
}

/// Readers racing a writer that overwrites, deletes and evicts: every value read is one the
/// writer wrote for that key, whole.
#[test]
fn concurrent_gets_see_whole_values_only() {
    let (p, r) = table(256, 64 << 10, 4096);
    let mut w = RawTableWriter::create(r.clone(), &p, EvictionPolicy::Fifo);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    // One reader with `get`, one with `get_many`.
    let readers: Vec<_> = [false, true]
        .into_iter()
        .map(|batched| {
            let rd = RawTableReader::new(r.clone(), &p);
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 4096];
                let (mut hits, mut n) = (0u64, 0u64);
                // Value: version (8 bytes) then value_for(key, version, len - 8).
                let check = |key: u64, v: &[u8]| {
                    let version = u64::from_le_bytes(v[..8].try_into().unwrap());
                    assert_eq!(&v[8..], &value_for(key, version, v.len() - 8)[..], "key {key}");
                };
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    if batched {
                        let keys: Vec<[u8; 8]> = (n..n + 40).map(|k| (k % 300).to_le_bytes()).collect();
                        rd.get_many(&keys, &mut buf, |i, r| {
                            if let Some(v) = r.unwrap() {
                                check((n + i as u64) % 300, v);
                                hits += 1;
                            }
                        });
                        n += 40;
                        continue;
                    }
                    let key = n % 300;
                    n += 1;
                    if let Some(len) = rd.get(&key.to_le_bytes(), &mut buf).unwrap() {
                        check(key, &buf[..len]);
                        hits += 1;
                    }
                }
                (hits, rd.counters().retries)
            })
        })
        .collect();
    for version in 0..300_000u64 {
        let key = version % 300;
        if version % 7 == 0 {
            w.delete(&key.to_le_bytes());
            continue;
        }
        let mut v = version.to_le_bytes().to_vec();
        v.extend(value_for(key, version, (version % 200) as usize));
        w.put(&key.to_le_bytes(), v, None).unwrap();
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for h in readers {
        let (hits, _retries) = h.join().unwrap();
        assert!(hits > 0);
    }
}

#[test]
fn an_expired_key_is_a_miss_whatever_the_buffer() {
    let (p, region) = table(64, 64 << 10, 8 << 10);
    let mut w = RawTableWriter::create(region.clone(), &p, EvictionPolicy::default());
    let rd = RawTableReader::new(region, &p);
    w.put(b"gone", [7u8; 100], Some(now_ms() - 1)).unwrap();
    w.put(b"here", [7u8; 100], Some(now_ms() + 3_600_000)).unwrap();
    for buf_len in [0, 10, 99, 100] {
        let mut buf = vec![0u8; buf_len];
        assert_eq!(rd.get(b"gone", &mut buf), Ok(None), "buffer of {buf_len} B");
    }
    // A live key still reports the buffer it needs.
    assert_eq!(rd.get(b"here", &mut [0u8; 10]), Err(GetError::BufferTooSmall { needed: 100 }));
}
