//! Single-thread cost of each step of the ring's hot path, to explain the cross-process
//! figures of `ring_throughput` and `ring_roundtrip` (no second core, no cache-line transfers):
//!
//! - `publish_never/<size>`: `Publisher::publish` with [`WakePolicy::Never`], no reader.
//! - `publish_adaptive/<size>`: the same with the default adaptive policy (two clock reads per
//!   publish, no wake while messages flow).
//! - `publish_always/<size>`: with [`WakePolicy::Always`]: a `FUTEX_WAKE` syscall per publish
//!   (no waiter: the syscall's own cost).
//! - `try_recv/<size>`: `Subscriber::try_recv` of messages already in the ring (the writer
//!   fills a batch outside the timed section, the same thread reads it; copy out, lapping
//!   check, sequence and crc check).
//! - `crc32/<size>`: `crc32fast` over what the ring checksums per message (8-byte sequence,
//!   4-byte length, payload); each side computes it once per message.
//! - `instant_now`: one `Instant::now()`, the adaptive policy's clock read.
//!
//! For profilers (callgrind, perf) the binary also runs one step in a plain loop without
//! criterion: `PODCACHE_BENCH_LOOP=<step>:<size>:<count>` with step `publish_never`,
//! `publish_adaptive`, `publish_always` or `try_recv`, e.g.
//! `PODCACHE_BENCH_LOOP=try_recv:64:1000000 valgrind --tool=callgrind target/release/deps/ring_ops-…`.

use criterion::{black_box, BenchmarkId, Criterion, Throughput};
use podcache_benches::{child_role, ShmDir};
use podcache_reader::Subscriber;
use podcache_writer::{Publisher, WakePolicy};
use std::time::{Duration, Instant};

const SIZES: [(usize, &str); 3] = [(64, "64B"), (1024, "1KiB"), (65536, "64KiB")];
const RING_CAPACITY: u64 = 8 << 20;

fn payload(size: usize) -> Vec<u8> {
    (0..size).map(|i| (i * 31 + 7) as u8).collect()
}

fn publisher(dir: &ShmDir, name: &str, policy: WakePolicy) -> Publisher {
    Publisher::builder(dir.path(name))
        .capacity(RING_CAPACITY)
        .max_message(65536)
        .wake(policy)
        .create()
        .expect("create a ring")
}

fn ops(c: &mut Criterion) {
    let dir = ShmDir::new();
    let mut group = c.benchmark_group("ring_ops");
    group.throughput(Throughput::Elements(1));
    for (size, label) in SIZES {
        let msg = payload(size);
        for (name, policy) in [
            ("publish_never", WakePolicy::Never),
            ("publish_adaptive", WakePolicy::DEFAULT),
            ("publish_always", WakePolicy::Always),
        ] {
            let mut publ: Option<Publisher> = None;
            group.bench_function(BenchmarkId::new(name, label), |b| {
                let p = publ.get_or_insert_with(|| publisher(&dir, &format!("{name}-{label}.ring"), policy));
                b.iter(|| p.publish(black_box(&msg)).expect("publish"));
            });
        }

        let mut pair: Option<(Publisher, Subscriber, Vec<u8>)> = None;
        group.bench_function(BenchmarkId::new("try_recv", label), |b| {
            let (p, s, buf) = pair.get_or_insert_with(|| {
                let p = publisher(&dir, &format!("recv-{label}.ring"), WakePolicy::Never);
                let s = Subscriber::open(p.path()).expect("subscribe");
                let buf = vec![0u8; s.max_message()];
                (p, s, buf)
            });
            // Batches of at most half the ring: the reader is never lapped.
            let batch = (RING_CAPACITY / 2 / (size as u64 + 16)).max(1);
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                let mut left = iters;
                while left > 0 {
                    let n = left.min(batch);
                    for _ in 0..n {
                        p.publish(&msg).expect("publish");
                    }
                    let start = Instant::now();
                    for _ in 0..n {
                        let m = s.try_recv(buf).expect("read").expect("a message");
                        black_box(m);
                    }
                    total += start.elapsed();
                    left -= n;
                }
                total
            });
        });

        let mut hashed = vec![0u8; 12 + size];
        hashed[12..].copy_from_slice(&msg);
        group.bench_function(BenchmarkId::new("crc32", label), |b| {
            b.iter(|| crc32fast::hash(black_box(&hashed)));
        });
    }
    group.bench_function("instant_now", |b| b.iter(Instant::now));
    group.finish();
}

/// `PODCACHE_BENCH_LOOP=<step>:<size>:<count>`: run one step `count` times, print ns/op.
fn profile_loop(spec: &str) {
    let parts: Vec<&str> = spec.split(':').collect();
    let [step, size, count] = parts[..] else { panic!("PODCACHE_BENCH_LOOP=<step>:<size>:<count>") };
    let size: usize = size.parse().expect("size");
    let count: u64 = count.parse().expect("count");
    let dir = ShmDir::new();
    let msg = payload(size);
    let policy = match step {
        "publish_adaptive" => WakePolicy::DEFAULT,
        "publish_always" => WakePolicy::Always,
        _ => WakePolicy::Never,
    };
    let mut p = publisher(&dir, "loop.ring", policy);
    let start = Instant::now();
    match step {
        "publish_never" | "publish_adaptive" | "publish_always" => {
            for _ in 0..count {
                p.publish(black_box(&msg)).expect("publish");
            }
        }
        "try_recv" => {
            let mut s = Subscriber::open(p.path()).expect("subscribe");
            let mut buf = vec![0u8; s.max_message()];
            let batch = RING_CAPACITY / 2 / (size as u64 + 16);
            let mut left = count;
            while left > 0 {
                let n = left.min(batch);
                for _ in 0..n {
                    p.publish(&msg).expect("publish");
                }
                for _ in 0..n {
                    black_box(s.try_recv(&mut buf).expect("read").expect("a message"));
                }
                left -= n;
            }
        }
        other => panic!("unknown step {other}"),
    }
    let ns = start.elapsed().as_nanos() as f64 / count as f64;
    println!("{step} {size} B x {count}: {ns:.1} ns/op (try_recv includes the publishes)");
}

fn main() {
    // No child roles here, but keep the same entry point as the other benches.
    if child_role().is_some() {
        return;
    }
    if let Ok(spec) = std::env::var("PODCACHE_BENCH_LOOP") {
        profile_loop(&spec);
        return;
    }
    let mut c = podcache_benches::criterion().configure_from_args();
    ops(&mut c);
    c.final_summary();
}
