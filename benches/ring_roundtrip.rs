//! 64 B round-trip latency between two processes (the bench process and a child that echoes),
//! one round trip per criterion iteration (`iter_custom`: total time / iterations). In the same
//! run:
//!
//! - `podcache_spin`: ping on ring A, pong on ring B, both [`WakePolicy::Never`], both sides
//!   in `recv_spin`.
//! - `podcache_poll`: as `podcache_spin`, but both sides poll `try_recv` in a loop (no clock
//!   read per message; `recv_spin` reads the clock once per call for its deadline).
//! - `podcache_adaptive`: both rings with the default adaptive wake policy, both sides in
//!   `recv_timeout` (spin, then futex sleep).
//! - `podcache_always`: both rings with [`WakePolicy::Always`] (a `FUTEX_WAKE` per publish),
//!   both sides in `recv_timeout`.
//! - `cacheline`: the floor: one `u64` per direction on separate 128-byte lines of a
//!   `MAP_SHARED` file on `/dev/shm`, both sides spinning.
//! - `uds`: a Unix domain socket, 64 B each way, blocking reads.
//!
//! After each criterion bench (not in `--test` mode) the same harness times single round trips
//! and prints a `hist …` line with p50/p90/p99/p99.9. Then a paired measurement alternates
//! blocks of podcache (spin) and cache-line round trips with one child and prints a `pair …`
//! line: the median over block pairs of the p50 ratio (see [`paired`]).
use criterion::{BenchmarkId, Criterion, Throughput};
use podcache_benches::roundtrip::{
    echo_rings, recv, LinePingPong, PodPingPong, RoundTrip, UdsPingPong, MSG, VAR_PING, VAR_PONG, VAR_SHARED,
};
use podcache_benches::{
    child_role, child_var, histogram_samples, pin_parent, run_child, spin_until, test_mode, Child, Histogram, PodMode,
    SharedLines, ShmDir, CHILD_TIMEOUT, FLAG_DATA, FLAG_EXIT,
};
use podcache_reader::Subscriber;
use podcache_writer::{Publisher, WakePolicy};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

const ROLE_PAIR: &str = "pair-echo";

/// One round-trip bench: the harness is created on first use (criterion calls the closure once
/// per sample), then a latency histogram is taken with it (outside `--test`), then it is
/// dropped, which stops the child.
fn bench_round_trip<H: RoundTrip>(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    name: &str,
    make: impl Fn() -> H,
) -> bool {
    let mut harness: Option<H> = None;
    group.bench_function(BenchmarkId::new(name, "64B"), |b| {
        let h = harness.get_or_insert_with(&make);
        b.iter_custom(|iters| h.run(iters));
    });
    if let Some(h) = harness.as_mut() {
        if !test_mode() {
            Histogram::measure(&format!("ring_roundtrip/{name}/64B"), histogram_samples(), || h.round_trip()).print();
        }
    }
    harness.is_some()
}

fn roundtrip(c: &mut Criterion) {
    let mut group = c.benchmark_group("ring_roundtrip");
    group.throughput(Throughput::Elements(1));
    let mut spin_ran = false;
    for mode in PodMode::ALL {
        let ran = bench_round_trip(&mut group, &format!("podcache_{}", mode.name()), || PodPingPong::new(mode));
        spin_ran |= ran && mode == PodMode::Spin;
    }
    let line_ran = bench_round_trip(&mut group, "cacheline", LinePingPong::new);
    bench_round_trip(&mut group, "uds", UdsPingPong::new);
    group.finish();
    if spin_ran && line_ran && !test_mode() {
        paired();
    }
}

/// Payload flag (ring) / line value (cache line) that switches the paired child's mode.
const FLAG_SWITCH: u8 = 3;
const LINE_SWITCH: u64 = u64::MAX - 1;
/// Round trips per block of the paired measurement.
const PAIR_BLOCK: usize = 2000;

/// Paired measurement: the same child alternately echoes on podcache rings (spin mode) and on
/// the shared cache lines, in blocks of [`PAIR_BLOCK`] round trips, so each podcache block is
/// compared with a cache-line block measured milliseconds apart. On a VM whose two vCPUs the
/// host places differently from second to second (this one: cache-line round trips of either
/// ~100 ns or ~500 ns), a ratio of two separate criterion benches mixes placements; the paired
/// ratio does not. Prints `pair …` with the median over block pairs of p50(podcache) ÷
/// p50(cache line).
fn paired() {
    let dir = ShmDir::new();
    let (a, b, l) = (dir.path("ping.ring"), dir.path("pong.ring"), dir.path("lines"));
    let mut ping = Publisher::builder(&a)
        .capacity(1 << 20)
        .max_message(MSG as u32)
        .wake(WakePolicy::Never)
        .create()
        .expect("create the ping ring");
    let lines = SharedLines::open(&l);
    let mut child = Child::spawn(
        ROLE_PAIR,
        &[(VAR_PING, a.into_os_string()), (VAR_PONG, b.clone().into_os_string()), (VAR_SHARED, l.into_os_string())],
    );
    let deadline = Instant::now() + CHILD_TIMEOUT;
    let mut pong = loop {
        match Subscriber::builder(&b).wait_ready(Duration::from_millis(100)).open() {
            Ok(s) => break s,
            Err(e) => {
                child.check_alive();
                assert!(Instant::now() < deadline, "pong ring never became ready: {e}");
            }
        }
    };
    let mut buf = vec![0u8; MSG];
    let mut msg = vec![0x5a; MSG];
    let mut ring_trip = |flag: u8, child: &mut Child| {
        msg[0] = flag;
        ping.publish(&msg).expect("publish a ping");
        while recv(PodMode::Spin, &mut pong, &mut buf, Duration::from_secs(1)).is_none() {
            child.check_alive();
        }
    };
    let (line_ping, line_pong) = (lines.line(0), lines.line(1));
    let mut seq = 0u64;
    let line_trip = |value: u64, child: &mut Child| {
        // SYNC: Release/Acquire, pair with the child's Acquire load / Release store.
        line_ping.store(value, Ordering::Release);
        spin_until(|| line_pong.load(Ordering::Acquire) == value, || child.check_alive());
    };
    let blocks = if podcache_benches::quick() { 20 } else { 100 };
    let mut ratios = Vec::with_capacity(blocks);
    let (mut ring_p50s, mut line_p50s) = (Vec::new(), Vec::new());
    for _ in 0..=blocks {
        let ring = Histogram::measure("ring", PAIR_BLOCK, || ring_trip(FLAG_DATA, &mut child));
        ring_trip(FLAG_SWITCH, &mut child);
        let line = Histogram::measure("line", PAIR_BLOCK, || {
            seq += 1;
            line_trip(seq, &mut child)
        });
        line_trip(LINE_SWITCH, &mut child);
        ring_p50s.push(ring.percentile(50.0));
        line_p50s.push(line.percentile(50.0));
        ratios.push(ring.percentile(50.0) as f64 / line.percentile(50.0).max(1) as f64);
    }
    // The first pair warms up.
    for v in [&mut ring_p50s, &mut line_p50s] {
        v.remove(0);
        v.sort_unstable();
    }
    ratios.remove(0);
    ratios.sort_by(f64::total_cmp);
    let med = |v: &[u64]| v[v.len() / 2];
    println!(
        "pair ring_roundtrip/podcache_spin/cacheline: blocks={} x {PAIR_BLOCK} median_ratio={:.2} min_ratio={:.2} \
         max_ratio={:.2} podcache_p50_median={} ns cacheline_p50_median={} ns cacheline_p50_range={}..{} ns",
        ratios.len(),
        ratios[ratios.len() / 2],
        ratios[0],
        ratios[ratios.len() - 1],
        med(&ring_p50s),
        med(&line_p50s),
        line_p50s[0],
        line_p50s[line_p50s.len() - 1],
    );
    ring_trip(FLAG_EXIT, &mut child);
    child.finish(Duration::from_secs(2));
}

/// Child of [`paired`]: echo on the rings until [`FLAG_SWITCH`], then on the cache lines until
/// [`LINE_SWITCH`], and so on; [`FLAG_EXIT`] ends it.
fn pair_echo() {
    let (mut ping, mut pong) = echo_rings(WakePolicy::Never);
    let lines = SharedLines::open(std::path::Path::new(&child_var(VAR_SHARED)));
    let (line_ping, line_pong) = (lines.line(0), lines.line(1));
    let mut buf = vec![0u8; ping.max_message()];
    let mut last = 0u64;
    loop {
        let Some(len) = recv(PodMode::Spin, &mut ping, &mut buf, Duration::from_secs(1)) else { continue };
        pong.publish(&buf[..len]).expect("publish a pong");
        match buf[0] {
            FLAG_EXIT => return,
            FLAG_SWITCH => loop {
                // SYNC: Acquire, pairs with the parent's Release store of line 0.
                let v = line_ping.load(Ordering::Acquire);
                if v == last {
                    std::hint::spin_loop();
                    continue;
                }
                last = v;
                // SYNC: Release, pairs with the parent's Acquire load of line 1.
                line_pong.store(v, Ordering::Release);
                if v == LINE_SWITCH {
                    break;
                }
            },
            _ => {}
        }
    }
}

fn main() {
    if let Some(role) = child_role() {
        if role == ROLE_PAIR {
            pair_echo();
        } else {
            assert!(run_child(&role), "unknown child role {role}");
        }
        return;
    }
    pin_parent();
    // What `criterion_group!` + `criterion_main!` expand to, after the child-role check.
    let mut c = podcache_benches::criterion().configure_from_args();
    roundtrip(&mut c);
    c.final_summary();
}
