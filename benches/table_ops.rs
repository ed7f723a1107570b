//! Key-value table: gets and puts next to LMDB (`heed`) and an in-process `HashMap`, in one run.
//!
//! Workload (issue "key-value cache"): keys of 16 bytes, values of 100 bytes, uniform random
//! keys; 100,000 keys (more than the L2 cache: every get misses it) and 1,000 keys (cache
//! resident).
//!
//! * `table_get/<n>/podcache_1_reader`: one reader *process* (this binary re-executed) doing
//!   gets into a reused buffer from a table a writer filled.
//! * `table_get/<n>/podcache_get_many_1_reader`: the same reader with `get_many`, 64 keys per
//!   call (each value then copied once more, into the buffer a single get would use).
//! * `table_get/<n>/podcache_2_readers`: two reader processes at once, each doing half of the
//!   iterations; the time is the slower one's, so elements/s is the aggregate rate.
//! * `table_get/<n>/lmdb`: LMDB on `/dev/shm`, one long-lived read transaction, value copied
//!   into the same kind of buffer.
//! * `table_get/<n>/hashmap`: `HashMap<Box<[u8]>, Box<[u8]>>` in this process, value copied.
//! * `table_put/podcache`, `table_put/lmdb_txn_per_1000`, `table_put/hashmap`: overwriting puts
//!   of the 100,000 keys.
//!
//! Also printed once: the memory efficiency of the table file at 90% fill of 100,000 items.
//!
//! `PODCACHE_BENCH_QUICK=1` shortens every measurement; `-- --test` runs each bench once.

use criterion::{BenchmarkId, Criterion, Throughput};
use podcache_benches::kv::{
    fill_table, key, lmdb, sequence, value, Dist, GetData, GetPeer, MemoryEfficiency, Readers, SEQ_LEN,
};
use podcache_benches::{child_role, criterion, pin_parent, run_child, ShmDir};
use std::collections::HashMap;
use std::time::Instant;

fn bench_gets(c: &mut Criterion, dir: &ShmDir, n: u64) {
    let data = GetData::create(dir, n, None);
    let seq = sequence(n, 0x1234, Dist::Uniform);
    let mut g = c.benchmark_group(format!("table_get/{n}"));
    g.throughput(Throughput::Elements(1));

    let mut one = Readers::spawn(&data, GetPeer::Podcache, Dist::Uniform, 1);
    g.bench_function(BenchmarkId::from_parameter("podcache_1_reader"), |b| b.iter_custom(|iters| one.run(iters)));
    drop(one);
    let mut many = Readers::spawn(&data, GetPeer::PodcacheMany, Dist::Uniform, 1);
    g.bench_function(BenchmarkId::from_parameter("podcache_get_many_1_reader"), |b| {
        b.iter_custom(|iters| many.run(iters))
    });
    drop(many);
    let mut two = Readers::spawn(&data, GetPeer::Podcache, Dist::Uniform, 2);
    g.bench_function(BenchmarkId::from_parameter("podcache_2_readers"), |b| b.iter_custom(|iters| two.run(iters)));
    drop(two);

    let (env, db) = lmdb(&data.lmdb, 0);
    let rtxn = env.read_txn().expect("read txn");
    let mut buf = [0u8; 256];
    let mut at = 0usize;
    g.bench_function(BenchmarkId::from_parameter("lmdb"), |b| {
        b.iter(|| {
            let i = seq[at & (SEQ_LEN - 1)];
            at += 1;
            let v = db.get(&rtxn, &key(i)).expect("get").expect("present");
            buf[..v.len()].copy_from_slice(v);
            v.len()
        })
    });
    drop(rtxn);

    let map: HashMap<Box<[u8]>, Box<[u8]>> =
        (0..n).map(|i| (Box::from(&key(i)[..]), Box::from(&value(i)[..]))).collect();
    g.bench_function(BenchmarkId::from_parameter("hashmap"), |b| {
        b.iter(|| {
            let i = seq[at & (SEQ_LEN - 1)];
            at += 1;
            let v = map.get(&key(i)[..]).expect("present");
            buf[..v.len()].copy_from_slice(v);
            v.len()
        })
    });
    g.finish();
}

fn bench_puts(c: &mut Criterion, dir: &ShmDir) {
    let n = 100_000u64;
    let seq = sequence(n, 0x9876, Dist::Uniform);
    let mut g = c.benchmark_group("table_put");
    g.throughput(Throughput::Elements(1));
    let mut writer = fill_table(&dir.path("puts.table"), n);
    let mut at = 0usize;
    g.bench_function("podcache", |b| {
        b.iter(|| {
            let i = seq[at & (SEQ_LEN - 1)];
            at += 1;
            writer.put(&key(i), value(i)).expect("put");
        })
    });
    drop(writer);

    let (env, db) = lmdb(&dir.path("lmdb-puts"), n);
    g.bench_function("lmdb_txn_per_1000", |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            let mut done = 0;
            while done < iters {
                let mut wtxn = env.write_txn().expect("txn");
                for _ in 0..(iters - done).min(1000) {
                    let i = seq[at & (SEQ_LEN - 1)];
                    at += 1;
                    db.put(&mut wtxn, &key(i), &value(i)).expect("put");
                    done += 1;
                }
                wtxn.commit().expect("commit");
            }
            start.elapsed()
        })
    });

    let mut map: HashMap<Box<[u8]>, Box<[u8]>> =
        (0..n).map(|i| (Box::from(&key(i)[..]), Box::from(&value(i)[..]))).collect();
    g.bench_function("hashmap", |b| {
        b.iter(|| {
            let i = seq[at & (SEQ_LEN - 1)];
            at += 1;
            map.insert(Box::from(&key(i)[..]), Box::from(&value(i)[..]))
        })
    });
    g.finish();
}

fn memory_efficiency(dir: &ShmDir) {
    let e = MemoryEfficiency::measure(dir);
    println!(
        "memory efficiency: file {} B / keys+values {} B = {:.3} (100,000-item table at 90% fill; \
         {} B of records, {} B index and header)",
        e.file_bytes,
        e.kv_bytes,
        e.ratio(),
        e.records_bytes,
        e.overhead_bytes
    );
}

fn main() {
    if let Some(role) = child_role() {
        assert!(run_child(&role), "unknown child role {role}");
        return;
    }
    pin_parent();
    let dir = ShmDir::new();
    memory_efficiency(&dir);
    let mut c = criterion().configure_from_args();
    for n in [100_000u64, 1_000] {
        bench_gets(&mut c, &dir, n);
    }
    bench_puts(&mut c, &dir);
    c.final_summary();
}
