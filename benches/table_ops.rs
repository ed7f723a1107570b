//! Key-value table: gets and puts next to LMDB (`heed`) and an in-process `HashMap`, in one run.
//!
//! Workload (issue "key-value cache"): keys of 16 bytes, values of 100 bytes, uniform random
//! keys; 100,000 keys (more than the L2 cache: every get misses it) and 1,000 keys (cache
//! resident).
//!
//! * `table_get/<n>/podcache_1_reader`: one reader *process* (this binary re-executed) doing
//!   gets into a reused buffer from a table a writer filled.
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
use heed::types::Bytes;
use heed::{Database, EnvOpenOptions};
use podcache_benches::{accept_child, child_role, child_var, criterion, pin_parent, Child, ShmDir};
use podcache_reader::TableReader;
use podcache_writer::TableWriter;
use std::collections::HashMap;
use std::ffi::OsString;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::{Duration, Instant};

const VALUE_LEN: usize = 100;
const VAR_SOCK: &str = "PODCACHE_BENCH_SOCK";
const VAR_TABLE: &str = "PODCACHE_BENCH_TABLE";
const VAR_KEYS: &str = "PODCACHE_BENCH_KEYS";
const VAR_SEED: &str = "PODCACHE_BENCH_SEED";
/// Length of the precomputed random index sequence (a power of two).
const SEQ_LEN: usize = 1 << 20;

/// Key `i`: 16 bytes, a scrambled half (so keys do not share prefixes) and the index.
fn key(i: u64) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&i.wrapping_mul(0x9E37_79B9_7F4A_7C15).to_le_bytes());
    k[8..].copy_from_slice(&i.to_le_bytes());
    k
}

fn value(i: u64) -> [u8; VALUE_LEN] {
    let mut v = [0u8; VALUE_LEN];
    for (j, b) in v.iter_mut().enumerate() {
        *b = (i as usize + j) as u8;
    }
    v
}

/// Uniform random key indices below `n` (xorshift, seeded).
fn sequence(n: u64, seed: u64) -> Vec<u64> {
    let mut x = seed | 1;
    (0..SEQ_LEN)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % n
        })
        .collect()
}

fn fill_table(path: &std::path::Path, n: u64) -> TableWriter {
    let _ = std::fs::remove_file(path);
    let mut w = TableWriter::builder(path).max_items(n).data_bytes(n * 128 + (256 << 10)).create().expect("table");
    for i in 0..n {
        w.put(&key(i), value(i)).expect("put");
    }
    w
}

/// A reader process: connects, then for each line "<iterations>" does that many gets and
/// answers "<nanoseconds> <checksum>".
fn reader_child() {
    let table = TableReader::open(child_var(VAR_TABLE)).expect("open table");
    let n: u64 = child_var(VAR_KEYS).parse().expect("keys");
    let seq = sequence(n, child_var(VAR_SEED).parse().expect("seed"));
    let stream = UnixStream::connect(child_var(VAR_SOCK)).expect("connect");
    let mut out = stream.try_clone().expect("clone");
    let mut buf = [0u8; 256];
    let mut at = 0usize;
    for line in BufReader::new(stream).lines() {
        let iters: u64 = match line {
            Ok(l) => l.trim().parse().expect("iterations"),
            Err(_) => return,
        };
        let mut sum = 0usize;
        let start = Instant::now();
        for _ in 0..iters {
            let i = seq[at & (SEQ_LEN - 1)];
            at += 1;
            sum += table.get(&key(i), &mut buf).expect("get").expect("present");
        }
        let ns = start.elapsed().as_nanos();
        writeln!(out, "{ns} {sum}").expect("answer");
    }
}

/// Reader processes on one table, driven over Unix sockets.
struct Readers {
    streams: Vec<(BufReader<UnixStream>, UnixStream)>,
    _children: Vec<Child>,
}

impl Readers {
    fn spawn(dir: &ShmDir, table: &std::path::Path, n: u64, count: usize) -> Readers {
        let mut streams = Vec::new();
        let mut children = Vec::new();
        for r in 0..count {
            let sock = dir.path(&format!("reader-{n}-{count}-{r}.sock"));
            let listener = UnixListener::bind(&sock).expect("bind");
            let vars: [(&str, OsString); 4] = [
                (VAR_SOCK, sock.into()),
                (VAR_TABLE, table.into()),
                (VAR_KEYS, n.to_string().into()),
                (VAR_SEED, (0x1234 + r as u64).to_string().into()),
            ];
            let mut child = Child::spawn("table_reader", &vars);
            let stream = accept_child(&listener, &mut child);
            streams.push((BufReader::new(stream.try_clone().expect("clone")), stream));
            children.push(child);
        }
        Readers { streams, _children: children }
    }

    /// Each reader does `iters / count` gets at the same time; the slower one's time.
    fn run(&mut self, iters: u64) -> Duration {
        let each = (iters / self.streams.len() as u64).max(1);
        for (_, w) in &mut self.streams {
            writeln!(w, "{each}").expect("command");
        }
        let mut slowest = 0u128;
        for (r, _) in &mut self.streams {
            let mut line = String::new();
            r.read_line(&mut line).expect("answer");
            let ns: u128 = line.split_whitespace().next().and_then(|v| v.parse().ok()).expect("ns");
            slowest = slowest.max(ns);
        }
        // Per element of the whole batch: `iters` gets took `slowest`.
        Duration::from_nanos((slowest as f64 * iters as f64 / (each * self.streams.len() as u64) as f64) as u64)
    }
}

fn lmdb(dir: &ShmDir, name: &str, n: u64) -> (heed::Env, Database<Bytes, Bytes>) {
    let path = dir.path(name);
    std::fs::create_dir_all(&path).expect("lmdb dir");
    // SAFETY: the environment is opened once in this process and not opened elsewhere.
    let env = unsafe { EnvOpenOptions::new().map_size(1 << 30).open(&path) }.expect("lmdb env");
    let mut wtxn = env.write_txn().expect("txn");
    let db: Database<Bytes, Bytes> = env.create_database(&mut wtxn, None).expect("db");
    for i in 0..n {
        db.put(&mut wtxn, &key(i), &value(i)).expect("lmdb put");
    }
    wtxn.commit().expect("commit");
    (env, db)
}

fn bench_gets(c: &mut Criterion, dir: &ShmDir, n: u64) {
    let table_path = dir.path(&format!("gets-{n}.table"));
    let writer = fill_table(&table_path, n);
    drop(writer);
    let seq = sequence(n, 0x1234);
    let mut g = c.benchmark_group(format!("table_get/{n}"));
    g.throughput(Throughput::Elements(1));

    let mut one = Readers::spawn(dir, &table_path, n, 1);
    g.bench_function(BenchmarkId::from_parameter("podcache_1_reader"), |b| b.iter_custom(|iters| one.run(iters)));
    drop(one);
    let mut two = Readers::spawn(dir, &table_path, n, 2);
    g.bench_function(BenchmarkId::from_parameter("podcache_2_readers"), |b| b.iter_custom(|iters| two.run(iters)));
    drop(two);

    let (env, db) = lmdb(dir, &format!("lmdb-gets-{n}"), n);
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
    let seq = sequence(n, 0x9876);
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

    let (env, db) = lmdb(dir, "lmdb-puts", n);
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

/// File bytes per byte of keys and values, for a table sized for 100,000 items of 16 + 100
/// bytes (by the sizing rule: 8 + key + value rounded up to 8 per item) and filled to 90%.
fn memory_efficiency(dir: &ShmDir) {
    let (items, kv) = (100_000u64, 16 + VALUE_LEN as u64);
    let path = dir.path("efficiency.table");
    let per_item = (8 + kv).div_ceil(8) * 8;
    let mut w = TableWriter::builder(&path).max_items(items).data_bytes(items * per_item).create().expect("table");
    let fill = items * 9 / 10;
    for i in 0..fill {
        w.put(&key(i), value(i)).expect("put");
    }
    let stats = w.stats();
    assert_eq!(stats.items, fill, "nothing evicted at 90% fill");
    let file = std::fs::metadata(&path).expect("metadata").len();
    println!(
        "memory efficiency: file {file} B / keys+values {} B = {:.3} (100,000-item table at 90% fill; \
         {} B of records, {} B index and header)",
        fill * kv,
        file as f64 / (fill * kv) as f64,
        stats.bytes_used,
        file - stats.bytes_capacity
    );
}

fn main() {
    if let Some(role) = child_role() {
        match role.as_str() {
            "table_reader" => reader_child(),
            other => panic!("unknown child role {other}"),
        }
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
