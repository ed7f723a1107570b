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
use podcache_benches::{
    accept_child, child_role, child_var, pin_consumer_thread, pin_parent, spin_until, Child, ShmDir, FLAG_DATA,
    FLAG_END, FLAG_EXIT,
};
use podcache_reader::{Msg, RecvError, Subscriber};
use podcache_writer::{Publisher, WakePolicy};
use std::io::{BufReader, BufWriter, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Message sizes and their labels.
const SIZES: [(usize, &str); 3] = [(64, "64B"), (1024, "1KiB"), (65536, "64KiB")];
/// Bytes of the podcache data ring.
const RING_CAPACITY: u64 = 8 << 20;
/// Bytes of records (podcache) or payload (rtrb) the producer keeps in flight at most.
const WINDOW: u64 = 4 << 20;
/// Largest message of the data ring.
const MAX_MSG: u32 = 65536;

const ROLE_POD: &str = "pod-consumer";
const ROLE_UDS: &str = "uds-consumer";
const VAR_DATA: &str = "PODCACHE_BENCH_DATA";
const VAR_ACK: &str = "PODCACHE_BENCH_ACK";
const VAR_MODE: &str = "PODCACHE_BENCH_MODE";
const VAR_SIZE: &str = "PODCACHE_BENCH_SIZE";
const VAR_ACK_EVERY: &str = "PODCACHE_BENCH_ACK_EVERY";
const VAR_SOCK: &str = "PODCACHE_BENCH_SOCK";

/// A payload of `size` bytes with `flag` in its first byte.
fn payload(size: usize, flag: u8) -> Vec<u8> {
    let mut v: Vec<u8> = (0..size).map(|i| (i * 31 + 7) as u8).collect();
    v[0] = flag;
    v
}

/// Bytes a podcache record of `size` payload bytes takes in the ring.
fn record_len(size: usize) -> u64 {
    (16 + size as u64 + 7) & !7
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum PodMode {
    /// `WakePolicy::Never`, consumer in `recv_spin`.
    Spin,
    /// `WakePolicy::Never`, consumer polling `try_recv` in a loop (no clock reads).
    Poll,
    /// `WakePolicy::DEFAULT`, consumer in `recv_timeout`.
    Adaptive,
}

impl PodMode {
    const ALL: [PodMode; 3] = [PodMode::Spin, PodMode::Poll, PodMode::Adaptive];

    fn name(self) -> &'static str {
        match self {
            PodMode::Spin => "spin",
            PodMode::Poll => "poll",
            PodMode::Adaptive => "adaptive",
        }
    }

    fn from_name(s: &str) -> PodMode {
        PodMode::ALL.into_iter().find(|m| m.name() == s).unwrap_or_else(|| panic!("unknown mode {s}"))
    }

    fn policy(self) -> WakePolicy {
        match self {
            PodMode::Spin | PodMode::Poll => WakePolicy::Never,
            PodMode::Adaptive => WakePolicy::DEFAULT,
        }
    }

    /// Receive the next message the way this mode does.
    fn recv(self, sub: &mut Subscriber, buf: &mut [u8]) -> Result<Option<Msg>, RecvError> {
        match self {
            PodMode::Spin => sub.recv_spin(buf, Duration::from_secs(1)),
            PodMode::Poll => {
                // Read the clock only every 4096 empty polls, so the hot path has none.
                let mut deadline = None;
                let mut polls = 0u32;
                loop {
                    if let Some(m) = sub.try_recv(buf)? {
                        return Ok(Some(m));
                    }
                    polls = polls.wrapping_add(1);
                    if polls.is_multiple_of(4096)
                        && Instant::now() >= *deadline.get_or_insert(Instant::now() + Duration::from_secs(1))
                    {
                        return Ok(None);
                    }
                    std::hint::spin_loop();
                }
            }
            PodMode::Adaptive => sub.recv_timeout(buf, Duration::from_secs(1)),
        }
    }
}

/// Producer side of the podcache stream; the consumer is a child process.
struct PodStream {
    // Field order is drop order: child first, then the rings, then the directory.
    child: Option<Child>,
    publisher: Publisher,
    acks: Subscriber,
    ack_buf: Vec<u8>,
    data: Vec<u8>,
    end: Vec<u8>,
    /// Messages the producer may have in flight.
    credit: u64,
    published: u64,
    /// Messages the consumer has confirmed (received + lost).
    acked: u64,
    _dir: ShmDir,
}

impl PodStream {
    fn new(mode: PodMode, size: usize) -> PodStream {
        let dir = ShmDir::new();
        let data_path = dir.path("data.ring");
        let ack_path = dir.path("ack.ring");
        let policy = mode.policy();
        let publisher = Publisher::builder(&data_path)
            .capacity(RING_CAPACITY)
            .max_message(MAX_MSG)
            .wake(policy)
            .create()
            .expect("create the data ring");
        let credit = WINDOW / record_len(size);
        let ack_every = (credit / 4).max(1);
        let mut child = Child::spawn(
            ROLE_POD,
            &[
                (VAR_DATA, data_path.into_os_string()),
                (VAR_ACK, ack_path.clone().into_os_string()),
                (VAR_MODE, mode.name().into()),
                (VAR_SIZE, size.to_string().into()),
                (VAR_ACK_EVERY, ack_every.to_string().into()),
            ],
        );
        let acks = open_with_child(&ack_path, &mut child);
        let mut s = PodStream {
            child: Some(child),
            publisher,
            acks,
            ack_buf: vec![0; 16],
            data: payload(size, FLAG_DATA),
            end: payload(size, FLAG_END),
            credit,
            published: 0,
            acked: 0,
            _dir: dir,
        };
        // The consumer's first ack (0 received) says it is subscribed.
        s.wait_acked(0, true);
        s
    }

    /// Wait until the consumer has confirmed `target` messages (with `any`: any ack at all).
    fn wait_acked(&mut self, target: u64, any: bool) {
        let PodStream { child, acks, ack_buf, acked, .. } = self;
        let child = child.as_mut().expect("child");
        let mut seen = false;
        spin_until(
            || {
                while let Some(m) = acks.try_recv(ack_buf).expect("read the ack ring") {
                    assert_eq!(m.len, 16, "ack message");
                    let received = u64::from_le_bytes(ack_buf[..8].try_into().expect("8 bytes"));
                    let lost = u64::from_le_bytes(ack_buf[8..16].try_into().expect("8 bytes"));
                    assert_eq!(lost, 0, "consumer was lapped and lost {lost} messages: the bench is invalid");
                    *acked = (*acked).max(received);
                    seen = true;
                }
                (seen || !any) && *acked >= target
            },
            || child.check_alive(),
        );
    }

    fn run(&mut self, iters: u64) -> Duration {
        let start = Instant::now();
        for i in 0..iters {
            if self.published - self.acked >= self.credit {
                self.wait_acked(self.published + 1 - self.credit, false);
            }
            let msg = if i + 1 == iters { &self.end } else { &self.data };
            self.publisher.publish(msg).expect("publish");
            self.published += 1;
        }
        self.wait_acked(self.published, false);
        start.elapsed()
    }
}

impl Drop for PodStream {
    fn drop(&mut self) {
        let _ = self.publisher.publish(&payload(self.data.len(), FLAG_EXIT));
        if let Some(child) = self.child.take() {
            child.finish(Duration::from_secs(2));
        }
    }
}

/// Open the ring a child creates, waiting for it to appear.
fn open_with_child(path: &std::path::Path, child: &mut Child) -> Subscriber {
    let deadline = Instant::now() + podcache_benches::CHILD_TIMEOUT;
    loop {
        match Subscriber::builder(path).wait_ready(Duration::from_millis(100)).open() {
            Ok(s) => return s,
            Err(e) => {
                child.check_alive();
                assert!(Instant::now() < deadline, "ring {} never became ready: {e}", path.display());
            }
        }
    }
}

/// Child: consume the podcache stream and confirm counts on the ack ring.
fn pod_consumer() {
    let size: usize = child_var(VAR_SIZE).parse().expect("size");
    let ack_every: u64 = child_var(VAR_ACK_EVERY).parse().expect("ack interval");
    let mode = PodMode::from_name(&child_var(VAR_MODE));
    let mut sub = Subscriber::builder(child_var(VAR_DATA))
        .wait_ready(Duration::from_secs(10))
        .open()
        .expect("open the data ring");
    let mut acks = Publisher::builder(child_var(VAR_ACK))
        .capacity(1 << 16)
        .max_message(16)
        .wake(WakePolicy::Never)
        .create()
        .expect("create the ack ring");
    let mut ack = |received: u64, lost: u64| {
        let mut m = [0u8; 16];
        m[..8].copy_from_slice(&received.to_le_bytes());
        m[8..].copy_from_slice(&lost.to_le_bytes());
        acks.publish(&m).expect("publish an ack");
    };
    ack(0, 0);
    let mut buf = vec![0u8; sub.max_message()];
    let (mut received, mut lost) = (0u64, 0u64);
    loop {
        let Some(m) = mode.recv(&mut sub, &mut buf).expect("read the data ring") else { continue };
        assert_eq!(m.len, size, "message length");
        lost += m.lost;
        match buf[0] {
            FLAG_EXIT => return,
            FLAG_END => {
                received += 1;
                ack(received, lost);
            }
            _ => {
                received += 1;
                if received % ack_every == 0 {
                    ack(received, lost);
                }
            }
        }
    }
}

/// Producer side of the Unix-socket stream; the consumer is a child process.
struct UdsStream {
    child: Option<Child>,
    writer: BufWriter<UnixStream>,
    reader: UnixStream,
    data: Vec<u8>,
    end: Vec<u8>,
    published: u64,
    /// Flush after every message (one `write` per message) instead of every 64 KiB.
    flush_each: bool,
    _dir: ShmDir,
}

impl UdsStream {
    fn new(size: usize, flush_each: bool) -> UdsStream {
        let dir = ShmDir::new();
        let sock = dir.path("stream.sock");
        let listener = UnixListener::bind(&sock).expect("bind");
        let mut child = Child::spawn(ROLE_UDS, &[(VAR_SOCK, sock.into_os_string())]);
        let stream = accept_child(&listener, &mut child);
        let reader = stream.try_clone().expect("clone the socket");
        UdsStream {
            child: Some(child),
            writer: BufWriter::with_capacity(64 << 10, stream),
            reader,
            data: payload(size, FLAG_DATA),
            end: payload(size, FLAG_END),
            published: 0,
            flush_each,
            _dir: dir,
        }
    }

    fn run(&mut self, iters: u64) -> Duration {
        let start = Instant::now();
        let len = (self.data.len() as u32).to_le_bytes();
        for i in 0..iters {
            let msg = if i + 1 == iters { &self.end } else { &self.data };
            self.writer.write_all(&len).expect("write");
            self.writer.write_all(msg).expect("write");
            if self.flush_each {
                self.writer.flush().expect("flush");
            }
        }
        self.published += iters;
        self.writer.flush().expect("flush");
        let mut ack = [0u8; 8];
        self.reader.read_exact(&mut ack).expect("read the ack");
        let elapsed = start.elapsed();
        assert_eq!(u64::from_le_bytes(ack), self.published, "uds consumer count");
        elapsed
    }
}

impl Drop for UdsStream {
    fn drop(&mut self) {
        let len = (self.data.len() as u32).to_le_bytes();
        let _ = self.writer.write_all(&len);
        let _ = self.writer.write_all(&payload(self.data.len(), FLAG_EXIT));
        let _ = self.writer.flush();
        if let Some(child) = self.child.take() {
            child.finish(Duration::from_secs(2));
        }
    }
}

/// Child: read the length-prefixed stream, confirm counts on the socket.
fn uds_consumer() {
    let stream = UnixStream::connect(child_var(VAR_SOCK)).expect("connect");
    let mut writer = stream.try_clone().expect("clone the socket");
    let mut reader = BufReader::with_capacity(64 << 10, stream);
    let mut buf = vec![0u8; MAX_MSG as usize];
    let mut received = 0u64;
    loop {
        let mut len = [0u8; 4];
        if reader.read_exact(&mut len).is_err() {
            return; // the parent closed the socket
        }
        let len = u32::from_le_bytes(len) as usize;
        reader.read_exact(&mut buf[..len]).expect("read a message");
        received += 1;
        match buf[0] {
            FLAG_EXIT => return,
            FLAG_END => writer.write_all(&received.to_le_bytes()).expect("write the ack"),
            _ => {}
        }
    }
}

/// The two producer kinds of the rtrb baseline.
enum RtrbProducer {
    /// `[u8; 64]` slots (64 B messages).
    Slots(rtrb::Producer<[u8; 64]>),
    /// A byte ring (larger messages).
    Bytes(rtrb::Producer<u8>),
}

/// In-process SPSC baseline: rtrb with the consumer on another thread.
struct RtrbStream {
    producer: RtrbProducer,
    received: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
    data: Vec<u8>,
    end: Vec<u8>,
    published: u64,
}

impl RtrbStream {
    fn new(size: usize) -> RtrbStream {
        let received = Arc::new(AtomicU64::new(0));
        let barrier = Arc::new(Barrier::new(2));
        let (producer, thread) = if size == 64 {
            let (p, c) = rtrb::RingBuffer::<[u8; 64]>::new((WINDOW / 64) as usize);
            let (r, b) = (Arc::clone(&received), Arc::clone(&barrier));
            (RtrbProducer::Slots(p), std::thread::spawn(move || rtrb_slot_consumer(c, &r, &b)))
        } else {
            let (p, c) = rtrb::RingBuffer::<u8>::new(WINDOW as usize);
            let (r, b) = (Arc::clone(&received), Arc::clone(&barrier));
            (RtrbProducer::Bytes(p), std::thread::spawn(move || rtrb_byte_consumer(c, size, &r, &b)))
        };
        barrier.wait();
        RtrbStream {
            producer,
            received,
            thread: Some(thread),
            data: payload(size, FLAG_DATA),
            end: payload(size, FLAG_END),
            published: 0,
        }
    }

    fn push(&mut self, flag: u8) {
        let other;
        let msg: &[u8] = match flag {
            FLAG_DATA => &self.data,
            FLAG_END => &self.end,
            _ => {
                other = payload(self.data.len(), flag);
                &other
            }
        };
        match &mut self.producer {
            RtrbProducer::Slots(p) => {
                let mut v: [u8; 64] = msg[..].try_into().expect("64 bytes");
                while let Err(rtrb::PushError::Full(back)) = p.push(v) {
                    v = back;
                    std::hint::spin_loop();
                }
            }
            RtrbProducer::Bytes(p) => {
                while p.push_entire_slice(msg).is_err() {
                    std::hint::spin_loop();
                }
            }
        }
    }

    fn run(&mut self, iters: u64) -> Duration {
        let start = Instant::now();
        for i in 0..iters {
            self.push(if i + 1 == iters { FLAG_END } else { FLAG_DATA });
        }
        self.published += iters;
        let target = self.published;
        let (received, thread) = (&self.received, &self.thread);
        spin_until(
            // SYNC: Acquire, pairs with the consumer's Release store of its count.
            || received.load(Ordering::Acquire) >= target,
            || assert!(!thread.as_ref().is_some_and(|t| t.is_finished()), "rtrb consumer thread died"),
        );
        start.elapsed()
    }
}

impl Drop for RtrbStream {
    fn drop(&mut self) {
        if self.thread.as_ref().is_some_and(|t| !t.is_finished()) {
            self.push(FLAG_EXIT);
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn rtrb_slot_consumer(mut c: rtrb::Consumer<[u8; 64]>, count: &AtomicU64, barrier: &Barrier) {
    pin_consumer_thread();
    barrier.wait();
    let mut received = 0u64;
    loop {
        match c.pop() {
            Ok(v) => {
                let v = black_box(v);
                received += 1;
                match v[0] {
                    FLAG_EXIT => return,
                    // SYNC: Release, pairs with the producer's Acquire load.
                    FLAG_END => count.store(received, Ordering::Release),
                    _ => {}
                }
            }
            Err(_) => std::hint::spin_loop(),
        }
    }
}

fn rtrb_byte_consumer(mut c: rtrb::Consumer<u8>, size: usize, count: &AtomicU64, barrier: &Barrier) {
    pin_consumer_thread();
    barrier.wait();
    let mut buf = vec![0u8; size];
    let mut received = 0u64;
    loop {
        if c.pop_entire_slice(&mut buf).is_err() {
            std::hint::spin_loop();
            continue;
        }
        black_box(&mut buf);
        received += 1;
        match buf[0] {
            FLAG_EXIT => return,
            // SYNC: Release, pairs with the producer's Acquire load.
            FLAG_END => count.store(received, Ordering::Release),
            _ => {}
        }
    }
}

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
        for mode in PodMode::ALL {
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
        match role.as_str() {
            ROLE_POD => pod_consumer(),
            ROLE_UDS => uds_consumer(),
            other => panic!("unknown child role {other}"),
        }
        return;
    }
    pin_parent();
    // What `criterion_group!` + `criterion_main!` expand to, after the child-role check.
    let mut c = podcache_benches::criterion().configure_from_args();
    throughput(&mut c);
    memcpy(&mut c);
    c.final_summary();
}
