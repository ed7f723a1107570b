//! Near cache over Redis (issue 15): a hit read through the linked reader next to a Redis `GET`
//! from the same process, and the invalidation latency, in one run against a real
//! `redis-server` on loopback TCP (persistence off).
//!
//! * `near_get/linked_reader_hit`: `TableReader::get` of a filled 100-byte value from the
//!   mirrored table (what an app container does on a hit).
//! * `near_get/redis_get`: one `GET` round trip to the same Redis, blocking, one at a time.
//! * `near_get/redis_get_pipelined_64`: 64 `GET`s per write (throughput per `GET`).
//! * `near_invalidate/set_ack_to_local_gone`: another client's `SET` is acknowledged, then this
//!   process spins on the shared-memory table until the key is gone (Redis's invalidation
//!   reached the sidecar, which deleted it). Each iteration refills the key first (untimed).
//!   Also printed as a histogram (p50, p99) over individually timed invalidations, once with
//!   the observer spinning and once with it yielding its CPU while it waits.
//!
//! Skips (prints why) when `redis-server` is not installed. `PODCACHE_BENCH_QUICK=1` shortens.

use criterion::{BenchmarkId, Throughput};
use podcache_benches::{criterion, quick, test_mode};
use podcache_reader::TableReader;
use podcache_sidecar::near::resp::{self, Frame, Limits};
use podcache_sidecar::near::{parse_mirror, NearConfig, UpstreamConfig};
use podcache_sidecar::{Config, TableSpec};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct RedisServer(Child);

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A blocking RESP client.
struct Conn {
    s: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    fn open(port: u16) -> Conn {
        let s = TcpStream::connect(("127.0.0.1", port)).expect("connect to redis");
        s.set_nodelay(true).unwrap();
        Conn { s, buf: Vec::new() }
    }

    fn send(&mut self, args: &[&[u8]]) {
        let mut out = Vec::new();
        resp::encode(&mut out, args);
        self.s.write_all(&out).unwrap();
    }

    fn send_many(&mut self, n: usize, args: &[&[u8]]) {
        let mut out = Vec::new();
        for _ in 0..n {
            resp::encode(&mut out, args);
        }
        self.s.write_all(&out).unwrap();
    }

    fn recv(&mut self) -> Frame {
        loop {
            if let Some((f, used)) = resp::parse(&self.buf, &Limits::default()).unwrap() {
                self.buf.drain(..used);
                return f;
            }
            let mut chunk = [0u8; 65536];
            let n = self.s.read(&mut chunk).unwrap();
            assert!(n > 0, "redis closed the connection");
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    fn cmd(&mut self, args: &[&[u8]]) -> Frame {
        self.send(args);
        self.recv()
    }
}

fn start_redis() -> Option<(RedisServer, u16)> {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        .stdout(Stdio::null())
        .spawn();
    let Ok(child) = child else {
        eprintln!("near_cache: SKIPPED, redis-server is not installed (apt-get install redis-server)");
        return None;
    };
    let server = RedisServer(child);
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "redis-server did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    Some((server, port))
}

/// An in-process sidecar mirroring `k:` into table `t`; returns its API address.
fn start_sidecar(dir: &std::path::Path, port: u16) -> SocketAddr {
    let mut upstream = UpstreamConfig::parse(&format!("redis://127.0.0.1:{port}")).unwrap();
    upstream.ping_timeout = Duration::from_secs(10);
    let config = Config {
        dir: dir.to_path_buf(),
        tables: vec![TableSpec { name: "t".into(), max_items: 1024, data_bytes: 4 << 20 }],
        listen: Some("127.0.0.1:0".parse().unwrap()),
        ops_listen: None,
        near: Some(NearConfig { upstream, mirrors: vec![parse_mirror("t=k:").unwrap()] }),
        ..Config::default()
    };
    podcache_benches::start_sidecar(config)
}

/// `GET /v1/tables/t/keys/{key}` (fills on a miss); returns the status.
fn http_get(api: SocketAddr, key: &str) -> u16 {
    let mut s = TcpStream::connect(api).unwrap();
    write!(s, "GET /v1/tables/t/keys/{key} HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n").unwrap();
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).unwrap();
    line.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0)
}

fn main() {
    let Some((_redis, port)) = start_redis() else { return };
    let dir = tempfile::tempdir_in("/dev/shm").or_else(|_| tempfile::tempdir()).unwrap();
    let api = start_sidecar(dir.path(), port);
    let mut c = Conn::open(port);
    let value = vec![b'v'; 100];
    // Wait for the tracking connection, then fill the hit key.
    let deadline = Instant::now() + Duration::from_secs(20);
    c.cmd(&[b"SET", b"k:hit", &value]);
    while http_get(api, "hit") != 200 {
        assert!(Instant::now() < deadline, "the sidecar never filled k:hit");
        std::thread::sleep(Duration::from_millis(20));
    }
    let reader = TableReader::open(dir.path().join("t.table")).unwrap();
    let mut crit = criterion().configure_from_args();

    let mut g = crit.benchmark_group("near_get");
    g.throughput(Throughput::Elements(1));
    let mut buf = [0u8; 256];
    g.bench_function(BenchmarkId::from_parameter("linked_reader_hit"), |b| {
        b.iter(|| reader.get(b"hit", &mut buf).unwrap().expect("filled"))
    });
    g.bench_function(BenchmarkId::from_parameter("redis_get"), |b| {
        b.iter(|| match c.cmd(&[b"GET", b"k:hit"]) {
            Frame::Bulk(v) => v.len(),
            other => panic!("{other:?}"),
        })
    });
    g.throughput(Throughput::Elements(64));
    g.bench_function(BenchmarkId::from_parameter("redis_get_pipelined_64"), |b| {
        b.iter(|| {
            c.send_many(64, &[b"GET", b"k:hit"]);
            (0..64).map(|_| matches!(c.recv(), Frame::Bulk(_)) as usize).sum::<usize>()
        })
    });
    g.finish();

    // One invalidation: refill (untimed), then time from the SET's acknowledgement to the key
    // leaving the shared-memory table.
    let mut version = 0u64;
    let mut invalidate = |c: &mut Conn, yielding: bool| -> Duration {
        version += 1;
        assert_eq!(http_get(api, "inv"), 200, "fill k:inv");
        assert!(reader.contains(b"inv").unwrap(), "filled");
        c.send(&[b"SET", b"k:inv", version.to_string().as_bytes()]);
        c.recv();
        let acked = Instant::now();
        while reader.contains(b"inv").unwrap() {
            if yielding {
                std::thread::yield_now();
            } else {
                std::hint::spin_loop();
            }
        }
        acked.elapsed()
    };
    c.cmd(&[b"SET", b"k:inv", b"0"]);
    let mut g = crit.benchmark_group("near_invalidate");
    g.throughput(Throughput::Elements(1));
    g.bench_function(BenchmarkId::from_parameter("set_ack_to_local_gone"), |b| {
        b.iter_custom(|iters| (0..iters).map(|_| invalidate(&mut c, false)).sum())
    });
    g.finish();
    if !test_mode() {
        // The observer spins (as above), or yields its CPU while it waits: on a machine with
        // few cores a spinning observer competes with the sidecar and Redis for them, and the
        // difference between the two histograms is that competition, not the sidecar's path.
        let n = if quick() { 200 } else { 2000 };
        for (what, yielding) in [("", false), (" (observer yields)", true)] {
            let mut samples: Vec<Duration> = (0..n).map(|_| invalidate(&mut c, yielding)).collect();
            samples.sort_unstable();
            let p = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
            println!(
                "hist near_invalidate/set_ack_to_local_gone{what}: n={n} p50={:?} p90={:?} p99={:?} max={:?}",
                p(0.50),
                p(0.90),
                p(0.99),
                samples[samples.len() - 1]
            );
        }
    }
    crit.final_summary();
}
