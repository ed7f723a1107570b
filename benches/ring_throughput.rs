//! Cross-process streaming throughput, one message per criterion iteration, for 64 B, 1 KiB and
//! 64 KiB messages. In the same run, on the same workload:
//!
//! - `podcache_spin`: a podcache ring with [`WakePolicy::Never`]; the producer is the bench
//!   process, the consumer a real child process (this binary re-executed) spinning in
//!   `recv_spin`. Every message is copied out and crc-checked by the library.
//! - `podcache_poll`: the same ring, the consumer polls `try_recv` in a loop (no clock read per
//!   message, unlike `recv_spin`, which reads the clock once per call for its deadline).
//! - `podcache_adaptive`: the same with the default adaptive wake policy and a consumer in
//!   `recv_timeout` (spins, then sleeps on the futex), so the cost of waking is visible.
//! - `uds`: a Unix domain socket stream to a child process, 4-byte length prefix, writer in a
//!   64 KiB `BufWriter`, reader in a 64 KiB `BufReader` reading every byte. Messages leave in
//!   64 KiB batches: a message waits in the buffer until 64 KiB are queued.
//! - `uds_flush`: the same, flushed after every message, so each message is sent (and can be
//!   seen by the consumer) as soon as it is written, as with podcache.
//! - `rtrb`: an in-process SPSC queue (rtrb) with the consumer on another thread: `[u8; 64]`
//!   slots for 64 B, a byte ring (`push_entire_slice` / `pop_entire_slice`) otherwise. The
//!   ceiling: no process boundary, no checksum.
//!
//! and a `memcpy` group: single-thread `copy_from_slice` of 64 KiB (cache-resident), 4 MiB
//! (the streaming window, L3) and 64 MiB (beyond every cache).
//!
//! Timing (`iter_custom`): from the first publish of an iteration until the consumer confirms
//! it has received all of that iteration's messages. The last message of an iteration carries
//! [`FLAG_END`] in its first byte; the consumer answers with its running count (podcache: on a
//! second, small ring; UDS: on the socket; rtrb: an atomic).
//!
//! Flow control: a broadcast ring never waits for readers, so a producer faster than the
//! consumer would lap it. The producer keeps at most [`WINDOW`] bytes of records in flight: the
//! consumer reports its count every quarter window on the ack ring, and the producer waits for
//! it when the window is used up. The same window is rtrb's capacity. A lost message (which
//! would mean the flow control or the ring is broken) aborts the bench rather than being
//! counted as delivered.

use criterion::{black_box, BenchmarkId, Criterion, Throughput};
use podcache_benches::stream::{payload, PodStream, RtrbStream, UdsStream, SIZES};
use podcache_benches::{child_role, pin_parent, run_child, PodMode};
use std::time::Duration;

/// Run one streaming bench, creating its harness on first use (criterion calls the closure
/// once per sample) and dropping it (killing any child) afterwards.
fn bench_stream<H>(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    name: &str,
    label: &str,
    make: impl Fn() -> H,
    run: impl Fn(&mut H, u64) -> Duration,
) {
    let mut harness: Option<H> = None;
    group.bench_function(BenchmarkId::new(name, label), |b| {
        let h = harness.get_or_insert_with(&make);
        b.iter_custom(|iters| run(h, iters));
    });
    drop(harness);
}

fn throughput(c: &mut Criterion) {
    let mut group = c.benchmark_group("ring_throughput");
    group.throughput(Throughput::Elements(1));
    for (size, label) in SIZES {
        for mode in [PodMode::Spin, PodMode::Poll, PodMode::Adaptive] {
            let name = format!("podcache_{}", mode.name());
            bench_stream(&mut group, &name, label, || PodStream::new(mode, size), PodStream::run);
        }
        bench_stream(&mut group, "uds", label, || UdsStream::new(size, false), UdsStream::run);
        bench_stream(&mut group, "uds_flush", label, || UdsStream::new(size, true), UdsStream::run);
        bench_stream(&mut group, "rtrb", label, || RtrbStream::new(size), RtrbStream::run);
    }
    group.finish();
}

fn memcpy(c: &mut Criterion) {
    let mut group = c.benchmark_group("memcpy");
    for (size, label) in [(64usize << 10, "64KiB"), (4 << 20, "4MiB"), (64 << 20, "64MiB")] {
        group.throughput(Throughput::Bytes(size as u64));
        let mut buffers: Option<(Vec<u8>, Vec<u8>)> = None;
        group.bench_function(BenchmarkId::new("copy_from_slice", label), |b| {
            let (src, dst) = buffers.get_or_insert_with(|| (payload(size, 1), vec![0u8; size]));
            b.iter(|| {
                dst.copy_from_slice(black_box(&src[..]));
                black_box(&mut dst[..]);
            });
        });
    }
    group.finish();
}

fn main() {
    if let Some(role) = child_role() {
        assert!(run_child(&role), "unknown child role {role}");
        return;
    }
    pin_parent();
    // What `criterion_group!` + `criterion_main!` expand to, after the child-role check.
    let mut c = podcache_benches::criterion().configure_from_args();
    throughput(&mut c);
    memcpy(&mut c);
    c.final_summary();
}
