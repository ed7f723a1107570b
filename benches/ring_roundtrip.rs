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
use podcache_benches::{
    accept_child, child_role, child_var, histogram_samples, pin_parent, spin_until, test_mode, Child, Histogram,
    SharedLines, ShmDir, CHILD_TIMEOUT, FLAG_DATA, FLAG_EXIT,
};
use podcache_reader::Subscriber;
use podcache_writer::{Publisher, WakePolicy};
use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// Payload bytes each way.
const MSG: usize = 64;

const ROLE_POD: &str = "pod-echo";
const ROLE_LINE: &str = "cacheline-echo";
const ROLE_UDS: &str = "uds-echo";
const ROLE_PAIR: &str = "pair-echo";
const VAR_PING: &str = "PODCACHE_BENCH_PING";
const VAR_PONG: &str = "PODCACHE_BENCH_PONG";
const VAR_MODE: &str = "PODCACHE_BENCH_MODE";
const VAR_SHARED: &str = "PODCACHE_BENCH_SHARED";
const VAR_SOCK: &str = "PODCACHE_BENCH_SOCK";

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum PodMode {
    /// `WakePolicy::Never`, `recv_spin`.
    Spin,
    /// `WakePolicy::Never`, `try_recv` polled in a loop (no clock read per call).
    Poll,
    /// `WakePolicy::DEFAULT`, `recv_timeout`.
    Adaptive,
    /// `WakePolicy::Always`, `recv_timeout`.
    Always,
}

impl PodMode {
    const ALL: [PodMode; 4] = [PodMode::Spin, PodMode::Poll, PodMode::Adaptive, PodMode::Always];

    fn name(self) -> &'static str {
        match self {
            PodMode::Spin => "spin",
            PodMode::Poll => "poll",
            PodMode::Adaptive => "adaptive",
            PodMode::Always => "always",
        }
    }

    fn from_name(s: &str) -> PodMode {
        PodMode::ALL.into_iter().find(|m| m.name() == s).unwrap_or_else(|| panic!("unknown mode {s}"))
    }

    fn policy(self) -> WakePolicy {
        match self {
            PodMode::Spin | PodMode::Poll => WakePolicy::Never,
            PodMode::Adaptive => WakePolicy::DEFAULT,
            PodMode::Always => WakePolicy::Always,
        }
    }
}

/// Receive one message in `mode`'s way, waiting at most `timeout`.
fn recv(mode: PodMode, sub: &mut Subscriber, buf: &mut [u8], timeout: Duration) -> Option<usize> {
    let got = match mode {
        PodMode::Spin => sub.recv_spin(buf, timeout),
        PodMode::Poll => {
            // Read the clock only every 4096 empty polls, so the hot path has none.
            let mut deadline = None;
            let mut polls = 0u32;
            loop {
                if let Some(m) = sub.try_recv(buf).expect("read a ring") {
                    break Ok(Some(m));
                }
                polls = polls.wrapping_add(1);
                if polls.is_multiple_of(4096) && Instant::now() >= *deadline.get_or_insert(Instant::now() + timeout) {
                    break Ok(None);
                }
                std::hint::spin_loop();
            }
        }
        PodMode::Adaptive | PodMode::Always => sub.recv_timeout(buf, timeout),
    };
    let m = got.expect("read a ring")?;
    assert_eq!(m.lost, 0, "a ping-pong reader is never lapped");
    Some(m.len)
}

/// A round-trip harness: `round_trip` sends 64 B and waits for the echo.
trait RoundTrip {
    fn round_trip(&mut self);

    fn run(&mut self, iters: u64) -> Duration {
        let start = Instant::now();
        for _ in 0..iters {
            self.round_trip();
        }
        start.elapsed()
    }
}

/// Ping on ring A (written here), pong on ring B (written by the child).
struct PodPingPong {
    child: Option<Child>,
    mode: PodMode,
    ping: Publisher,
    pong: Subscriber,
    msg: Vec<u8>,
    buf: Vec<u8>,
    _dir: ShmDir,
}

impl PodPingPong {
    fn new(mode: PodMode) -> PodPingPong {
        let dir = ShmDir::new();
        let (a, b) = (dir.path("ping.ring"), dir.path("pong.ring"));
        let ping = Publisher::builder(&a)
            .capacity(1 << 20)
            .max_message(MSG as u32)
            .wake(mode.policy())
            .create()
            .expect("create the ping ring");
        let mut child = Child::spawn(
            ROLE_POD,
            &[(VAR_PING, a.into_os_string()), (VAR_PONG, b.clone().into_os_string()), (VAR_MODE, mode.name().into())],
        );
        let deadline = Instant::now() + CHILD_TIMEOUT;
        let pong = loop {
            match Subscriber::builder(&b).wait_ready(Duration::from_millis(100)).open() {
                Ok(s) => break s,
                Err(e) => {
                    child.check_alive();
                    assert!(Instant::now() < deadline, "pong ring never became ready: {e}");
                }
            }
        };
        let mut msg = vec![0x5a; MSG];
        msg[0] = FLAG_DATA;
        let mut p = PodPingPong { child: Some(child), mode, ping, pong, msg, buf: vec![0; MSG], _dir: dir };
        p.round_trip();
        p
    }
}

impl RoundTrip for PodPingPong {
    #[inline]
    fn round_trip(&mut self) {
        self.ping.publish(&self.msg).expect("publish a ping");
        // The clock is read only after a receive timed out: nothing but the ring's own work
        // is on the timed path.
        let mut deadline = None;
        loop {
            if let Some(len) = recv(self.mode, &mut self.pong, &mut self.buf, Duration::from_secs(1)) {
                assert_eq!(len, MSG, "pong length");
                return;
            }
            self.child.as_mut().expect("child").check_alive();
            let now = Instant::now();
            assert!(now < *deadline.get_or_insert(now + CHILD_TIMEOUT), "no pong within {CHILD_TIMEOUT:?}");
        }
    }
}

impl Drop for PodPingPong {
    fn drop(&mut self) {
        let mut bye = self.msg.clone();
        bye[0] = FLAG_EXIT;
        let _ = self.ping.publish(&bye);
        if let Some(child) = self.child.take() {
            child.finish(Duration::from_secs(2));
        }
    }
}

/// Child: echo every ping of ring A on ring B.
fn pod_echo() {
    let mode = PodMode::from_name(&child_var(VAR_MODE));
    let mut ping = Subscriber::builder(child_var(VAR_PING))
        .wait_ready(Duration::from_secs(10))
        .open()
        .expect("open the ping ring");
    let mut pong = Publisher::builder(child_var(VAR_PONG))
        .capacity(1 << 20)
        .max_message(MSG as u32)
        .wake(mode.policy())
        .create()
        .expect("create the pong ring");
    let mut buf = vec![0u8; ping.max_message()];
    loop {
        let Some(len) = recv(mode, &mut ping, &mut buf, Duration::from_secs(1)) else { continue };
        if buf[0] == FLAG_EXIT {
            return;
        }
        pong.publish(&buf[..len]).expect("publish a pong");
    }
}

/// Cache-line ping-pong over a shared mapping: line 0 written here, line 1 by the child.
struct LinePingPong {
    child: Option<Child>,
    lines: SharedLines,
    seq: u64,
    _dir: ShmDir,
}

impl LinePingPong {
    fn new() -> LinePingPong {
        let dir = ShmDir::new();
        let path = dir.path("lines");
        let lines = SharedLines::open(&path);
        let child = Child::spawn(ROLE_LINE, &[(VAR_SHARED, path.into_os_string())]);
        let mut p = LinePingPong { child: Some(child), lines, seq: 0, _dir: dir };
        p.round_trip();
        p
    }
}

impl RoundTrip for LinePingPong {
    #[inline]
    fn round_trip(&mut self) {
        self.seq += 1;
        let seq = self.seq;
        let (ping, pong) = (self.lines.line(0), self.lines.line(1));
        // SYNC: Release, pairs with the child's Acquire load of line 0.
        ping.store(seq, Ordering::Release);
        let child = self.child.as_mut().expect("child");
        // SYNC: Acquire, pairs with the child's Release store of line 1.
        spin_until(|| pong.load(Ordering::Acquire) == seq, || child.check_alive());
    }
}

impl Drop for LinePingPong {
    fn drop(&mut self) {
        // SYNC: Release, as in round_trip.
        self.lines.line(0).store(u64::MAX, Ordering::Release);
        if let Some(child) = self.child.take() {
            child.finish(Duration::from_secs(2));
        }
    }
}

/// Child: copy line 0 to line 1 whenever it changes; `u64::MAX` means exit.
fn cacheline_echo() {
    let lines = SharedLines::open(std::path::Path::new(&child_var(VAR_SHARED)));
    let (ping, pong) = (lines.line(0), lines.line(1));
    let mut last = 0;
    loop {
        // SYNC: Acquire, pairs with the parent's Release store of line 0.
        let v = ping.load(Ordering::Acquire);
        if v == last {
            std::hint::spin_loop();
            continue;
        }
        if v == u64::MAX {
            return;
        }
        // SYNC: Release, pairs with the parent's Acquire load of line 1.
        pong.store(v, Ordering::Release);
        last = v;
    }
}

/// 64 B each way over a Unix domain socket.
struct UdsPingPong {
    child: Option<Child>,
    stream: UnixStream,
    msg: [u8; MSG],
    _dir: ShmDir,
}

impl UdsPingPong {
    fn new() -> UdsPingPong {
        let dir = ShmDir::new();
        let sock = dir.path("echo.sock");
        let listener = UnixListener::bind(&sock).expect("bind");
        let mut child = Child::spawn(ROLE_UDS, &[(VAR_SOCK, sock.into_os_string())]);
        let stream = accept_child(&listener, &mut child);
        stream.set_read_timeout(Some(CHILD_TIMEOUT)).expect("read timeout");
        let mut p = UdsPingPong { child: Some(child), stream, msg: [0x5a; MSG], _dir: dir };
        p.round_trip();
        p
    }
}

impl RoundTrip for UdsPingPong {
    #[inline]
    fn round_trip(&mut self) {
        self.stream.write_all(&self.msg).expect("send a ping");
        let mut buf = [0u8; MSG];
        self.stream.read_exact(&mut buf).expect("receive the pong");
    }
}

impl Drop for UdsPingPong {
    fn drop(&mut self) {
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
        if let Some(child) = self.child.take() {
            child.finish(Duration::from_secs(2));
        }
    }
}

/// Child: echo 64 B blocks until the parent closes the socket.
fn uds_echo() {
    let mut stream = UnixStream::connect(child_var(VAR_SOCK)).expect("connect");
    let mut buf = [0u8; MSG];
    while stream.read_exact(&mut buf).is_ok() {
        if stream.write_all(&buf).is_err() {
            return;
        }
    }
}

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
    let mut ping = Subscriber::builder(child_var(VAR_PING))
        .wait_ready(Duration::from_secs(10))
        .open()
        .expect("open the ping ring");
    let mut pong = Publisher::builder(child_var(VAR_PONG))
        .capacity(1 << 20)
        .max_message(MSG as u32)
        .wake(WakePolicy::Never)
        .create()
        .expect("create the pong ring");
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
        match role.as_str() {
            ROLE_POD => pod_echo(),
            ROLE_LINE => cacheline_echo(),
            ROLE_UDS => uds_echo(),
            ROLE_PAIR => pair_echo(),
            other => panic!("unknown child role {other}"),
        }
        return;
    }
    pin_parent();
    // What `criterion_group!` + `criterion_main!` expand to, after the child-role check.
    let mut c = podcache_benches::criterion().configure_from_args();
    roundtrip(&mut c);
    c.final_summary();
}
