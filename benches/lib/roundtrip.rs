//! 64 B round-trip harnesses between this process and an echoing child process (this binary
//! re-executed, see [`crate::run_child`]): podcache rings in each [`PodMode`], the cache-line
//! ping-pong floor, and a Unix domain socket.

use crate::{
    accept_child, child_var, spin_until, Child, PodMode, SharedLines, ShmDir, CHILD_TIMEOUT, FLAG_DATA, FLAG_EXIT,
};
use podcache_reader::Subscriber;
use podcache_writer::{Publisher, WakePolicy};
use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// Payload bytes each way.
pub const MSG: usize = 64;

/// Child role: podcache echo.
pub const ROLE_POD: &str = "pod-echo";
/// Child role: cache-line echo.
pub const ROLE_LINE: &str = "cacheline-echo";
/// Child role: Unix-socket echo.
pub const ROLE_UDS: &str = "uds-echo";
/// Environment variable: path of the ping ring.
pub const VAR_PING: &str = "PODCACHE_BENCH_PING";
/// Environment variable: path of the pong ring.
pub const VAR_PONG: &str = "PODCACHE_BENCH_PONG";
const VAR_MODE: &str = "PODCACHE_BENCH_MODE";
/// Environment variable: path of the shared cache-line file.
pub const VAR_SHARED: &str = "PODCACHE_BENCH_SHARED";
const VAR_SOCK: &str = "PODCACHE_BENCH_SOCK";

/// Receive one message in `mode`'s way, waiting at most `timeout`; its length.
pub fn recv(mode: PodMode, sub: &mut Subscriber, buf: &mut [u8], timeout: Duration) -> Option<usize> {
    let m = mode.recv(sub, buf, timeout).expect("read a ring")?;
    assert_eq!(m.lost, 0, "a ping-pong reader is never lapped");
    Some(m.len)
}

/// A round-trip harness: `round_trip` sends 64 B and waits for the echo.
pub trait RoundTrip {
    /// One round trip.
    fn round_trip(&mut self);

    /// `iters` round trips; their total time.
    fn run(&mut self, iters: u64) -> Duration {
        let start = Instant::now();
        for _ in 0..iters {
            self.round_trip();
        }
        start.elapsed()
    }
}

/// Ping on ring A (written here), pong on ring B (written by the child).
pub struct PodPingPong {
    child: Option<Child>,
    mode: PodMode,
    ping: Publisher,
    pong: Subscriber,
    msg: Vec<u8>,
    buf: Vec<u8>,
    _dir: ShmDir,
}

impl PodPingPong {
    /// Create the ping ring and start the echo child.
    pub fn new(mode: PodMode) -> PodPingPong {
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

/// In an echo child: open the ping ring ([`VAR_PING`]) and create the pong ring ([`VAR_PONG`]).
pub fn echo_rings(policy: WakePolicy) -> (Subscriber, Publisher) {
    let ping = Subscriber::builder(child_var(VAR_PING))
        .wait_ready(Duration::from_secs(10))
        .open()
        .expect("open the ping ring");
    let pong = Publisher::builder(child_var(VAR_PONG))
        .capacity(1 << 20)
        .max_message(MSG as u32)
        .wake(policy)
        .create()
        .expect("create the pong ring");
    (ping, pong)
}

/// Child: echo every ping of ring A on ring B.
pub fn pod_echo() {
    let mode = PodMode::from_name(&child_var(VAR_MODE));
    let (mut ping, mut pong) = echo_rings(mode.policy());
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
pub struct LinePingPong {
    child: Option<Child>,
    lines: SharedLines,
    seq: u64,
    _dir: ShmDir,
}

// No `Default`: `new` starts a child process, which a default value should not hide.
#[allow(clippy::new_without_default)]
impl LinePingPong {
    /// Map the lines and start the echo child.
    pub fn new() -> LinePingPong {
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
pub fn cacheline_echo() {
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
pub struct UdsPingPong {
    child: Option<Child>,
    stream: UnixStream,
    msg: [u8; MSG],
    _dir: ShmDir,
}

// No `Default`: `new` starts a child process, which a default value should not hide.
#[allow(clippy::new_without_default)]
impl UdsPingPong {
    /// Connect the echo child.
    pub fn new() -> UdsPingPong {
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
pub fn uds_echo() {
    let mut stream = UnixStream::connect(child_var(VAR_SOCK)).expect("connect");
    let mut buf = [0u8; MSG];
    while stream.read_exact(&mut buf).is_ok() {
        if stream.write_all(&buf).is_err() {
            return;
        }
    }
}
