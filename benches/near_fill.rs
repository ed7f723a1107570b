//! The linked reader's fill (`podcache-reader` feature `fill`, issue 15) in one run against a
//! real `redis-server` (Unix socket, persistence off) and an in-process sidecar mirroring it.
//!
//! * `near_fill_hit/table_reader`: `TableReader::get_into` of a filled 100-byte value: the
//!   baseline.
//! * `near_fill_hit/near_table`: `NearTable::get_into` of the same key (what the fill feature
//!   adds to a hit: nothing but the branch on the result).
//! * `near_fill_miss/redis_get`: a `GET` of a key absent in Redis, straight to Redis: the
//!   upstream round trip every fill includes.
//! * `near_fill_miss/near_table_unix_socket`: `NearTable::get_into` of a key never asked
//!   before: the table misses, the sidecar is asked over its Unix socket, fetches from Redis,
//!   stores a negative entry, answers, and the table is read again.
//! * `near_fill_miss/http_get_tcp`: the same fill through `GET /v1/tables/t/keys/K` over
//!   loopback TCP, as a container that does not link the reader would.
//!
//! Every miss uses a key not asked before, so each is a whole fill. Skips (prints why) when
//! `redis-server` is not installed. `PODCACHE_BENCH_QUICK=1` shortens.

use criterion::{BenchmarkId, Throughput};
use podcache_benches::criterion;
use podcache_benches::redis::{Conn, RedisServer};
use podcache_reader::{Got, NearTable, Source, TableReader};
use podcache_sidecar::near::{parse_mirror, NearConfig, UpstreamConfig};
use podcache_sidecar::{Config, TableSpec};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

/// An in-process sidecar mirroring `k:` into table `t`, with its API on TCP and on the Unix
/// socket `podcache.sock`; returns the TCP address.
fn start_sidecar(dir: &Path, redis: &Path) -> SocketAddr {
    let mut upstream = UpstreamConfig::parse(&format!("unix://{}", redis.display())).unwrap();
    upstream.ping_timeout = Duration::from_secs(10);
    let config = Config {
        dir: dir.to_path_buf(),
        tables: vec![TableSpec { name: "t".into(), max_items: 1 << 16, data_bytes: 16 << 20 }],
        listen: Some("127.0.0.1:0".parse().unwrap()),
        socket: Some("podcache.sock".into()),
        ops_listen: None,
        near: Some(NearConfig { upstream, mirrors: vec![parse_mirror("t=k:").unwrap()] }),
        ..Config::default()
    };
    podcache_benches::start_sidecar(config)
}

/// `GET /v1/tables/t/keys/{key}` over TCP, whole response read; returns the status.
fn http_get(api: SocketAddr, key: &str, buf: &mut Vec<u8>) -> u16 {
    let mut s = TcpStream::connect(api).unwrap();
    write!(s, "GET /v1/tables/t/keys/{key} HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n").unwrap();
    buf.clear();
    s.read_to_end(buf).unwrap();
    std::str::from_utf8(&buf[9..12]).ok().and_then(|c| c.parse().ok()).unwrap_or(0)
}

fn main() {
    let redis = match RedisServer::start() {
        Ok(r) => r,
        Err(why) => {
            eprintln!("near_fill: SKIPPED, {why}");
            return;
        }
    };
    let dir = podcache_benches::ShmDir::new();
    let api = start_sidecar(Path::new(&dir.path("")), redis.socket());
    let mut c = Conn::connect(redis.socket());
    c.send(&[b"SET", b"k:hit", &[b'v'; 100]]);
    c.flush();
    c.expect_ok();
    let near = NearTable::builder(dir.path(""), "t").open().unwrap();
    let reader = TableReader::open(dir.path("t.table")).unwrap();
    // Wait for the tracking connection: the first fills answer 503 until it is up.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut out = Vec::new();
    while near.get_into(b"hit", &mut out).is_err() {
        assert!(Instant::now() < deadline, "the sidecar never filled k:hit");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(reader.get_into(b"hit", &mut out).unwrap(), "filled");
    let mut crit = criterion().configure_from_args();

    let mut g = crit.benchmark_group("near_fill_hit");
    g.throughput(Throughput::Elements(1));
    g.bench_function(BenchmarkId::from_parameter("table_reader"), |b| {
        b.iter(|| reader.get_into(b"hit", &mut out).unwrap())
    });
    g.bench_function(BenchmarkId::from_parameter("near_table"), |b| {
        b.iter(|| near.get_into(b"hit", &mut out).unwrap() == Got::Value(Source::Table))
    });
    g.finish();

    let mut n = 0u64;
    let mut fresh = move || {
        n += 1;
        format!("m{n}")
    };
    let mut g = crit.benchmark_group("near_fill_miss");
    g.throughput(Throughput::Elements(1));
    let mut buf = [0u8; 256];
    g.bench_function(BenchmarkId::from_parameter("redis_get"), |b| {
        b.iter(|| {
            let k = format!("k:{}", fresh());
            c.send(&[b"GET", k.as_bytes()]);
            c.flush();
            c.read_bulk(&mut buf)
        })
    });
    g.bench_function(BenchmarkId::from_parameter("near_table_unix_socket"), |b| {
        b.iter(|| {
            let got = near.get_into(fresh().as_bytes(), &mut out).expect("fill");
            assert_eq!(got, Got::Absent(Source::Filled));
        })
    });
    let mut body = Vec::new();
    g.bench_function(BenchmarkId::from_parameter("http_get_tcp"), |b| {
        b.iter(|| assert_eq!(http_get(api, &fresh(), &mut body), 404))
    });
    g.finish();
    crit.final_summary();
}
