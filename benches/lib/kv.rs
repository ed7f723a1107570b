//! Key-value workloads: 16-byte keys, 100-byte values; gets from reader *processes* (this binary
//! re-executed, see [`crate::run_child`]) and puts from this process, against podcache, LMDB
//! (`heed`, file on `/dev/shm`, one long-lived read transaction), Redis (RESP over a Unix
//! socket, one GET per round trip or [`crate::redis::PIPELINE`] per write) and an in-process
//! `HashMap<Box<[u8]>, Box<[u8]>>` (built inside the reader process, value copied into a reused
//! buffer like every other peer).

use crate::redis::{self, Conn};
use crate::{accept_child, child_var, Child, ShmDir};
use heed::types::Bytes;
use heed::{Database, EnvOpenOptions};
use podcache_reader::TableReader;
use podcache_writer::{record_size, TableWriter};
use std::collections::HashMap;
use std::ffi::OsString;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Value bytes.
pub const VALUE_LEN: usize = 100;
/// Keys per `get_many` call of [`GetPeer::PodcacheMany`].
pub const MANY: usize = 64;
/// Length of the precomputed random index sequence (a power of two).
pub const SEQ_LEN: usize = 1 << 20;
/// Zipf exponent of the skewed key distribution.
pub const ZIPF_S: f64 = 0.99;

/// Child role: a reader process (see [`reader_child`]).
pub const ROLE_READER: &str = "kv-reader";
const VAR_SOCK: &str = "PODCACHE_BENCH_SOCK";
const VAR_PEER: &str = "PODCACHE_BENCH_PEER";
const VAR_PATH: &str = "PODCACHE_BENCH_TABLE";
const VAR_KEYS: &str = "PODCACHE_BENCH_KEYS";
const VAR_SEED: &str = "PODCACHE_BENCH_SEED";
const VAR_DIST: &str = "PODCACHE_BENCH_DIST";

/// Key `i`: 16 bytes, a scrambled half (so keys do not share prefixes) and the index.
pub fn key(i: u64) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&i.wrapping_mul(0x9E37_79B9_7F4A_7C15).to_le_bytes());
    k[8..].copy_from_slice(&i.to_le_bytes());
    k
}

/// Value of key `i`.
pub fn value(i: u64) -> [u8; VALUE_LEN] {
    let mut v = [0u8; VALUE_LEN];
    for (j, b) in v.iter_mut().enumerate() {
        *b = (i as usize + j) as u8;
    }
    v
}

/// Key popularity.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Dist {
    /// Every key equally likely.
    Uniform,
    /// Zipf with exponent [`ZIPF_S`]; rank `r` is key `(r * 7919) % n`, so hot keys are not
    /// neighbours in insertion order.
    Zipf,
}

impl Dist {
    /// Short name.
    pub fn name(self) -> &'static str {
        match self {
            Dist::Uniform => "uniform",
            Dist::Zipf => "zipf",
        }
    }

    fn from_name(s: &str) -> Dist {
        match s {
            "uniform" => Dist::Uniform,
            "zipf" => Dist::Zipf,
            other => panic!("unknown distribution {other}"),
        }
    }
}

/// [`SEQ_LEN`] key indices below `n` drawn from `dist` (xorshift, seeded).
pub fn sequence(n: u64, seed: u64, dist: Dist) -> Vec<u64> {
    let mut x = seed | 1;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    match dist {
        Dist::Uniform => (0..SEQ_LEN).map(|_| next() % n).collect(),
        Dist::Zipf => {
            let mut cdf = Vec::with_capacity(n as usize);
            let mut total = 0.0f64;
            for r in 0..n {
                total += 1.0 / ((r + 1) as f64).powf(ZIPF_S);
                cdf.push(total);
            }
            (0..SEQ_LEN)
                .map(|_| {
                    let u = (next() >> 11) as f64 / (1u64 << 53) as f64 * total;
                    let rank = cdf.partition_point(|&c| c < u).min(n as usize - 1) as u64;
                    (rank * 7919) % n
                })
                .collect()
        }
    }
}

/// Create a podcache table at `path` holding keys `0..n`.
pub fn fill_table(path: &Path, n: u64) -> TableWriter {
    let _ = std::fs::remove_file(path);
    let mut w = TableWriter::builder(path).max_items(n).data_bytes(n * 128 + (256 << 10)).create().expect("table");
    for i in 0..n {
        w.put(&key(i), value(i)).expect("put");
    }
    w
}

/// Open (creating) an LMDB environment in directory `path`; with `fill`, put keys `0..fill`.
pub fn lmdb(path: &Path, fill: u64) -> (heed::Env, Database<Bytes, Bytes>) {
    std::fs::create_dir_all(path).expect("lmdb dir");
    // SAFETY: heed requires that an environment is opened at most once per process; each
    // caller opens a distinct directory once (the reader children open the parent's directory,
    // in other processes, which LMDB supports).
    let env = unsafe { EnvOpenOptions::new().map_size(1 << 30).open(path) }.expect("lmdb env");
    let mut wtxn = env.write_txn().expect("txn");
    let db: Database<Bytes, Bytes> = env.create_database(&mut wtxn, None).expect("db");
    for i in 0..fill {
        db.put(&mut wtxn, &key(i), &value(i)).expect("lmdb put");
    }
    wtxn.commit().expect("commit");
    (env, db)
}

/// The get peers.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum GetPeer {
    /// podcache `TableReader::get` into a reused buffer.
    Podcache,
    /// podcache `TableReader::get_many`, [`MANY`] keys per call, each value then copied once
    /// more, into the caller's buffer.
    PodcacheMany,
    /// LMDB, one read transaction, value copied.
    Lmdb,
    /// Redis GET, one request per round trip.
    Redis,
    /// Redis GET, [`redis::PIPELINE`] requests per write.
    RedisPipelined,
    /// `HashMap` in the reader process, value copied.
    HashMap,
}

impl GetPeer {
    /// Every get peer.
    pub const ALL: [GetPeer; 6] = [
        GetPeer::Podcache,
        GetPeer::PodcacheMany,
        GetPeer::Lmdb,
        GetPeer::Redis,
        GetPeer::RedisPipelined,
        GetPeer::HashMap,
    ];

    /// Short name.
    pub fn name(self) -> &'static str {
        match self {
            GetPeer::Podcache => "podcache",
            GetPeer::PodcacheMany => "podcache_many",
            GetPeer::Lmdb => "lmdb",
            GetPeer::Redis => "redis",
            GetPeer::RedisPipelined => "redis_pipelined",
            GetPeer::HashMap => "hashmap",
        }
    }

    fn from_name(s: &str) -> GetPeer {
        GetPeer::ALL.into_iter().find(|p| p.name() == s).unwrap_or_else(|| panic!("unknown peer {s}"))
    }
}

/// The data sets the get peers read: a podcache table and an LMDB environment holding keys
/// `0..n`, and the Redis socket if Redis holds them too.
pub struct GetData {
    /// Number of keys.
    pub n: u64,
    /// The podcache table file.
    pub table: PathBuf,
    /// The LMDB directory.
    pub lmdb: PathBuf,
    /// The Redis server's socket, if Redis runs and holds the keys.
    pub redis: Option<PathBuf>,
}

impl GetData {
    /// Fill a podcache table and an LMDB environment in `dir` (and Redis, if given) with keys
    /// `0..n`.
    pub fn create(dir: &ShmDir, n: u64, redis: Option<&Path>) -> GetData {
        let table = dir.path(&format!("gets-{n}.table"));
        drop(fill_table(&table, n));
        let lmdb_dir = dir.path(&format!("lmdb-gets-{n}"));
        drop(lmdb(&lmdb_dir, n));
        if let Some(sock) = redis {
            let mut c = Conn::connect(sock);
            for chunk in (0..n).collect::<Vec<_>>().chunks(redis::PIPELINE) {
                for &i in chunk {
                    c.send(&[b"SET", &key(i), &value(i)]);
                }
                c.flush();
                for _ in chunk {
                    c.expect_ok();
                }
            }
        }
        GetData { n, table, lmdb: lmdb_dir, redis: redis.map(Path::to_path_buf) }
    }
}

/// Reader processes of one peer, driven over Unix sockets: each gets a line `"<iterations>"`,
/// does that many gets and answers `"<wall ns> <checksum> <CPU ns>"`.
pub struct Readers {
    streams: Vec<(BufReader<UnixStream>, UnixStream)>,
    cpu_time: bool,
    _children: Vec<Child>,
    _dir: ShmDir,
}

impl Readers {
    /// Start `count` reader processes of `peer` on `data`, keys drawn from `dist`.
    pub fn spawn(data: &GetData, peer: GetPeer, dist: Dist, count: usize) -> Readers {
        let dir = ShmDir::new();
        let mut streams = Vec::new();
        let mut children = Vec::new();
        let path: OsString = match peer {
            GetPeer::Podcache | GetPeer::PodcacheMany | GetPeer::HashMap => data.table.clone().into(),
            GetPeer::Lmdb => data.lmdb.clone().into(),
            GetPeer::Redis | GetPeer::RedisPipelined => {
                data.redis.clone().expect("Redis holds no data: the caller skips Redis peers").into()
            }
        };
        for r in 0..count {
            let sock = dir.path(&format!("reader-{r}.sock"));
            let listener = UnixListener::bind(&sock).expect("bind");
            let vars: [(&str, OsString); 6] = [
                (VAR_SOCK, sock.into()),
                (VAR_PEER, peer.name().into()),
                (VAR_PATH, path.clone()),
                (VAR_KEYS, data.n.to_string().into()),
                (VAR_SEED, (0x1234 + r as u64).to_string().into()),
                (VAR_DIST, dist.name().into()),
            ];
            let mut child = Child::spawn(ROLE_READER, &vars);
            let stream = accept_child(&listener, &mut child);
            streams.push((BufReader::new(stream.try_clone().expect("clone")), stream));
            children.push(child);
        }
        Readers { streams, cpu_time: false, _children: children, _dir: dir }
    }

    /// Time the gets by each reader's CPU time (`CLOCK_THREAD_CPUTIME_ID`) instead of the wall
    /// clock. Time slices the readers lose to other processes (and, in a VM, to the host) do
    /// not count; everything a get costs on its CPU does, including cache lines bouncing
    /// between readers that write shared memory and the syscalls of a lock. Time a reader
    /// spends asleep (blocked on a lock) does not count. The CI gate uses this; the comparison
    /// uses the wall clock.
    pub fn cpu_time(mut self, yes: bool) -> Readers {
        self.cpu_time = yes;
        self
    }

    /// Each reader does `iters / count` gets at the same time; the time of the slower one,
    /// scaled to `iters` gets (so `iters / time` is the aggregate rate).
    pub fn run(&mut self, iters: u64) -> Duration {
        let each = (iters / self.streams.len() as u64).max(1);
        for (_, w) in &mut self.streams {
            writeln!(w, "{each}").expect("command");
        }
        let mut slowest = 0u128;
        for (r, _) in &mut self.streams {
            let mut line = String::new();
            r.read_line(&mut line).expect("answer");
            let field = if self.cpu_time { 2 } else { 0 };
            let ns: u128 = line.split_whitespace().nth(field).and_then(|v| v.parse().ok()).expect("ns");
            slowest = slowest.max(ns);
        }
        Duration::from_nanos((slowest as f64 * iters as f64 / (each * self.streams.len() as u64) as f64) as u64)
    }
}

/// CPU time of the calling thread, in ns.
fn thread_cpu_ns() -> u128 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_THREAD_CPUTIME_ID needs nothing else.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID)");
    ts.tv_sec as u128 * 1_000_000_000 + ts.tv_nsec as u128
}

/// One get of key index `i` into the buffer; the value length.
type GetFn = Box<dyn FnMut(u64, &mut [u8]) -> usize>;

/// Child: a reader process of one peer (see [`Readers`]).
pub fn reader_child() {
    let peer = GetPeer::from_name(&child_var(VAR_PEER));
    let path = PathBuf::from(child_var(VAR_PATH));
    let n: u64 = child_var(VAR_KEYS).parse().expect("keys");
    let dist = Dist::from_name(&child_var(VAR_DIST));
    let seq = sequence(n, child_var(VAR_SEED).parse().expect("seed"), dist);
    let mut get: GetFn = match peer {
        GetPeer::Podcache => {
            let table = TableReader::open(&path).expect("open table");
            Box::new(move |i, buf| table.get(&key(i), buf).expect("get").expect("present"))
        }
        GetPeer::PodcacheMany => {
            // As `RedisPipelined`: the keys go to `get_many` MANY at a time, walking a copy of
            // the caller's sequence, and each call hands back one of the values.
            let table = TableReader::open(&path).expect("open table");
            let mut seq2 = seq.clone().into_iter().cycle();
            let mut keys = [[0u8; 16]; MANY];
            let mut values = vec![[0u8; VALUE_LEN]; MANY];
            let mut scratch = [0u8; 256];
            let mut next = MANY;
            Box::new(move |_i, buf| {
                if next == MANY {
                    for k in &mut keys {
                        *k = key(seq2.next().expect("endless"));
                    }
                    table.get_many(&keys, &mut scratch, |j, v| {
                        values[j].copy_from_slice(v.expect("get").expect("present"));
                    });
                    next = 0;
                }
                buf[..VALUE_LEN].copy_from_slice(&values[next]);
                next += 1;
                VALUE_LEN
            })
        }
        GetPeer::HashMap => {
            let map: HashMap<Box<[u8]>, Box<[u8]>> =
                (0..n).map(|i| (Box::from(&key(i)[..]), Box::from(&value(i)[..]))).collect();
            Box::new(move |i, buf| {
                let v = map.get(&key(i)[..]).expect("present");
                buf[..v.len()].copy_from_slice(v);
                v.len()
            })
        }
        GetPeer::Lmdb => {
            let (env, db) = lmdb(&path, 0);
            // One long-lived read transaction (heed's static read txn owns a clone of the env).
            let rtxn = env.static_read_txn().expect("read txn");
            Box::new(move |i, buf| {
                let v = db.get(&rtxn, &key(i)).expect("get").expect("present");
                buf[..v.len()].copy_from_slice(v);
                v.len()
            })
        }
        GetPeer::Redis => {
            let mut c = Conn::connect(&path);
            Box::new(move |i, buf| {
                c.send(&[b"GET", &key(i)]);
                c.flush();
                c.read_bulk(buf).expect("present")
            })
        }
        GetPeer::RedisPipelined => {
            // Requests go out PIPELINE at a time; the closure hands back one reply per call.
            let mut c = Conn::connect(&path);
            // The requests are sent ahead, so this closure walks its own copy of the sequence
            // (the same keys in the same order as the caller's `i`).
            let mut pending = 0usize;
            let mut seq2 = seq.clone().into_iter().cycle();
            Box::new(move |_i, buf| {
                if pending == 0 {
                    for _ in 0..redis::PIPELINE {
                        c.send(&[b"GET", &key(seq2.next().expect("endless"))]);
                    }
                    c.flush();
                    pending = redis::PIPELINE;
                }
                pending -= 1;
                c.read_bulk(buf).expect("present")
            })
        }
    };
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
        let cpu = thread_cpu_ns();
        let start = Instant::now();
        for _ in 0..iters {
            let i = seq[at & (SEQ_LEN - 1)];
            at += 1;
            sum += get(i, &mut buf);
        }
        let ns = start.elapsed().as_nanos();
        let cpu = (thread_cpu_ns() - cpu).max(1);
        writeln!(out, "{ns} {sum} {cpu}").expect("answer");
    }
}

/// The put peers (all in this process, overwriting keys `0..n` in uniform random order).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum PutPeer {
    /// podcache `TableWriter::put`.
    Podcache,
    /// LMDB, one write transaction per put.
    LmdbPerPut,
    /// LMDB, one write transaction per 1,000 puts.
    LmdbBatched,
    /// Redis SET, one request per round trip.
    Redis,
    /// Redis SET, [`redis::PIPELINE`] requests per write.
    RedisPipelined,
    /// `HashMap::insert` of freshly boxed key and value.
    HashMap,
}

impl PutPeer {
    /// Every put peer.
    pub const ALL: [PutPeer; 6] = [
        PutPeer::Podcache,
        PutPeer::LmdbPerPut,
        PutPeer::LmdbBatched,
        PutPeer::Redis,
        PutPeer::RedisPipelined,
        PutPeer::HashMap,
    ];

    /// Short name.
    pub fn name(self) -> &'static str {
        match self {
            PutPeer::Podcache => "podcache",
            PutPeer::LmdbPerPut => "lmdb_txn_per_put",
            PutPeer::LmdbBatched => "lmdb_txn_per_1000",
            PutPeer::Redis => "redis",
            PutPeer::RedisPipelined => "redis_pipelined",
            PutPeer::HashMap => "hashmap",
        }
    }

    /// Whether this peer needs the Redis server.
    pub fn is_redis(self) -> bool {
        matches!(self, PutPeer::Redis | PutPeer::RedisPipelined)
    }
}

enum PutTarget {
    Podcache(Box<TableWriter>),
    Lmdb(heed::Env, Database<Bytes, Bytes>, u64),
    Redis(Conn, bool),
    HashMap(HashMap<Box<[u8]>, Box<[u8]>>),
}

/// Uniform random key indices, consumed in order.
struct KeyStream {
    seq: Vec<u64>,
    at: usize,
}

impl KeyStream {
    fn next(&mut self) -> u64 {
        let i = self.seq[self.at & (SEQ_LEN - 1)];
        self.at += 1;
        i
    }
}

/// A put workload of one peer over `n` keys.
pub struct Puts {
    target: PutTarget,
    keys: KeyStream,
    _dir: ShmDir,
}

impl Puts {
    /// Prepare `peer` holding keys `0..n` (Redis: the server at `redis`).
    pub fn new(peer: PutPeer, n: u64, redis: Option<&Path>) -> Puts {
        let dir = ShmDir::new();
        let target = match peer {
            PutPeer::Podcache => PutTarget::Podcache(Box::new(fill_table(&dir.path("puts.table"), n))),
            PutPeer::LmdbPerPut | PutPeer::LmdbBatched => {
                let (env, db) = lmdb(&dir.path("lmdb-puts"), n);
                PutTarget::Lmdb(env, db, if peer == PutPeer::LmdbBatched { 1000 } else { 1 })
            }
            PutPeer::Redis | PutPeer::RedisPipelined => {
                PutTarget::Redis(Conn::connect(redis.expect("Redis socket")), peer == PutPeer::RedisPipelined)
            }
            PutPeer::HashMap => {
                PutTarget::HashMap((0..n).map(|i| (Box::from(&key(i)[..]), Box::from(&value(i)[..]))).collect())
            }
        };
        Puts { target, keys: KeyStream { seq: sequence(n, 0x9876, Dist::Uniform), at: 0 }, _dir: dir }
    }

    /// `iters` puts; their time.
    pub fn run(&mut self, iters: u64) -> Duration {
        let Puts { target, keys, .. } = self;
        let start = Instant::now();
        let mut done = 0u64;
        while done < iters {
            match target {
                PutTarget::Podcache(w) => {
                    let i = keys.next();
                    w.put(&key(i), value(i)).expect("put");
                    done += 1;
                }
                PutTarget::HashMap(m) => {
                    let i = keys.next();
                    m.insert(Box::from(&key(i)[..]), Box::from(&value(i)[..]));
                    done += 1;
                }
                PutTarget::Lmdb(env, db, per_txn) => {
                    let batch = (*per_txn).min(iters - done);
                    let mut wtxn = env.write_txn().expect("txn");
                    for _ in 0..batch {
                        let i = keys.next();
                        db.put(&mut wtxn, &key(i), &value(i)).expect("put");
                    }
                    wtxn.commit().expect("commit");
                    done += batch;
                }
                PutTarget::Redis(c, pipelined) => {
                    let batch = if *pipelined { (redis::PIPELINE as u64).min(iters - done) } else { 1 };
                    for _ in 0..batch {
                        let i = keys.next();
                        c.send(&[b"SET", &key(i), &value(i)]);
                    }
                    c.flush();
                    for _ in 0..batch {
                        c.expect_ok();
                    }
                    done += batch;
                }
            }
        }
        start.elapsed()
    }
}

/// File bytes per byte of keys and values, for a table sized for 100,000 items of 16 + 100
/// bytes (by the sizing rule: [`record_size`] per item) and filled to 90%.
pub struct MemoryEfficiency {
    /// Size of the table file.
    pub file_bytes: u64,
    /// Bytes of the keys and values stored.
    pub kv_bytes: u64,
    /// Bytes of records in the data region.
    pub records_bytes: u64,
    /// File bytes outside the data region (index and header).
    pub overhead_bytes: u64,
}

impl MemoryEfficiency {
    /// Build and fill the table in `dir`.
    pub fn measure(dir: &ShmDir) -> MemoryEfficiency {
        let (items, kv) = (100_000u64, 16 + VALUE_LEN as u64);
        let path = dir.path("efficiency.table");
        let per_item = record_size(16, VALUE_LEN, false);
        let mut w = TableWriter::builder(&path).max_items(items).data_bytes(items * per_item).create().expect("table");
        let fill = items * 9 / 10;
        for i in 0..fill {
            w.put(&key(i), value(i)).expect("put");
        }
        let stats = w.stats();
        assert_eq!(stats.items, fill, "nothing evicted at 90% fill");
        let file = std::fs::metadata(&path).expect("metadata").len();
        MemoryEfficiency {
            file_bytes: file,
            kv_bytes: fill * kv,
            records_bytes: stats.bytes_used,
            overhead_bytes: file - stats.bytes_capacity,
        }
    }

    /// File bytes ÷ key and value bytes.
    pub fn ratio(&self) -> f64 {
        self.file_bytes as f64 / self.kv_bytes as f64
    }
}
