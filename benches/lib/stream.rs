//! Cross-process streaming harnesses: a producer in this process, a consumer in a child process
//! (this binary re-executed, see [`crate::run_child`]) or, for rtrb, a thread.
//!
//! Timing: from the first message of a batch until the consumer confirms it has received all of
//! that batch's messages. The last message of a batch carries [`FLAG_END`] in its first byte;
//! the consumer answers with its running count (podcache: on a second, small ring; UDS: on the
//! socket; rtrb: an atomic).
//!
//! Flow control: a broadcast ring never waits for readers, so a producer faster than the
//! consumer would lap it. The producer keeps at most [`WINDOW`] bytes of records in flight: the
//! consumer reports its count every quarter window on the ack ring, and the producer waits for
//! it when the window is used up. The same window is rtrb's capacity. A lost message (which
//! would mean the flow control or the ring is broken) aborts the bench rather than being
//! counted as delivered.

use crate::{
    accept_child, child_var, pin_consumer_thread, spin_until, Child, PodMode, ShmDir, FLAG_DATA, FLAG_END, FLAG_EXIT,
};
use podcache_reader::Subscriber;
use podcache_writer::{Publisher, WakePolicy};
use std::hint::black_box;
use std::io::{BufReader, BufWriter, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Message sizes and their labels.
pub const SIZES: [(usize, &str); 3] = [(64, "64B"), (1024, "1KiB"), (65536, "64KiB")];
/// Bytes of the podcache data ring.
pub const RING_CAPACITY: u64 = 8 << 20;
/// Bytes of records (podcache) or payload (rtrb) the producer keeps in flight at most.
pub const WINDOW: u64 = 4 << 20;
/// Largest message of the data ring.
pub const MAX_MSG: u32 = 65536;

/// Child role: podcache stream consumer.
pub const ROLE_POD: &str = "pod-consumer";
/// Child role: Unix-socket stream consumer.
pub const ROLE_UDS: &str = "uds-consumer";
const VAR_DATA: &str = "PODCACHE_BENCH_DATA";
const VAR_ACK: &str = "PODCACHE_BENCH_ACK";
const VAR_MODE: &str = "PODCACHE_BENCH_MODE";
const VAR_SIZE: &str = "PODCACHE_BENCH_SIZE";
const VAR_ACK_EVERY: &str = "PODCACHE_BENCH_ACK_EVERY";
const VAR_SOCK: &str = "PODCACHE_BENCH_SOCK";
const VAR_CONTRACT: &str = "PODCACHE_BENCH_IN_PLACE";

/// The in-place contract of the zero-copy comparison: the producer writes each whole message
/// into the buffer the transport hands out (podcache: `Publisher::loan`), and the consumer
/// checks the first and last 8 bytes where the message lies (podcache: one
/// `recv_spin_in_place` per message), copying nothing else.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Contract {
    /// `publish` a prepared message; the consumer copies it out (the stream rows).
    Copy,
    /// Loan and check in place, on a ring with payload checksums (`checksums`) or without.
    InPlace {
        /// Whether the ring carries payload checksums.
        checksums: bool,
    },
}

/// The first and last 8 bytes of a message as little-endian words (the in-place check).
pub fn ends(msg: &[u8]) -> (u64, u64) {
    let w = |b: &[u8]| u64::from_le_bytes(b.try_into().expect("8 bytes"));
    (w(&msg[..8]), w(&msg[msg.len() - 8..]))
}

/// A payload of `size` bytes with `flag` in its first byte.
pub fn payload(size: usize, flag: u8) -> Vec<u8> {
    let mut v: Vec<u8> = (0..size).map(|i| (i * 31 + 7) as u8).collect();
    v[0] = flag;
    v
}

/// Bytes a podcache record of `size` payload bytes takes in the ring.
pub fn record_len(size: usize) -> u64 {
    (16 + size as u64 + 7) & !7
}

/// Producer side of the podcache stream; the consumer is a child process.
pub struct PodStream {
    // Field order is drop order: child first, then the rings, then the directory.
    child: Option<Child>,
    publisher: Publisher,
    acks: Subscriber,
    ack_buf: Vec<u8>,
    data: Vec<u8>,
    end: Vec<u8>,
    /// Messages the producer may have in flight.
    credit: u64,
    contract: Contract,
    published: u64,
    /// Messages the consumer has confirmed (received + lost).
    acked: u64,
    _dir: ShmDir,
}

impl PodStream {
    /// Create the rings and start the consumer child.
    pub fn new(mode: PodMode, size: usize) -> PodStream {
        PodStream::with_contract(mode, size, Contract::Copy)
    }

    /// [`new`](Self::new) under `contract`.
    pub fn with_contract(mode: PodMode, size: usize, contract: Contract) -> PodStream {
        let dir = ShmDir::new();
        let data_path = dir.path("data.ring");
        let ack_path = dir.path("ack.ring");
        let policy = mode.policy();
        let publisher = Publisher::builder(&data_path)
            .capacity(RING_CAPACITY)
            .max_message(MAX_MSG)
            .wake(policy)
            .checksums(!matches!(contract, Contract::InPlace { checksums: false }))
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
                (VAR_CONTRACT, (if contract == Contract::Copy { "0" } else { "1" }).into()),
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
            contract,
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

    /// Stream `iters` messages; the time until the consumer confirmed the last one.
    pub fn run(&mut self, iters: u64) -> Duration {
        let start = Instant::now();
        for i in 0..iters {
            if self.published - self.acked >= self.credit {
                self.wait_acked(self.published + 1 - self.credit, false);
            }
            let msg = if i + 1 == iters { &self.end } else { &self.data };
            if self.contract == Contract::Copy {
                self.publisher.publish(msg).expect("publish");
            } else {
                // The user's form of iceoryx2's write_from_slice: the loan stores the message
                // into the ring with word stores (no staging buffer, no reference to the ring).
                let mut loan = self.publisher.loan(msg.len()).expect("loan");
                loan.copy_from_slice(msg);
                loan.commit();
            }
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
pub fn open_with_child(path: &std::path::Path, child: &mut Child) -> Subscriber {
    let deadline = Instant::now() + crate::CHILD_TIMEOUT;
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
pub fn pod_consumer() {
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
    if child_var(VAR_CONTRACT) == "1" {
        // The in-place contract: check the first and last 8 bytes where the message lies.
        let (data, end, exit) = (payload(size, FLAG_DATA), payload(size, FLAG_END), payload(size, FLAG_EXIT));
        let (data, end, exit) = (ends(&data), ends(&end), ends(&exit));
        loop {
            let got = sub
                .recv_spin_in_place(Duration::from_secs(1), |b| (b.len(), b.u64_le_at(0), b.u64_le_at(b.len() - 8)))
                .expect("read the data ring");
            let Some((m, (len, first, last))) = got else { continue };
            assert_eq!(len, size, "message length");
            lost += m.lost;
            let seen = (first, last);
            if seen == exit {
                return;
            }
            received += 1;
            if seen == end {
                ack(received, lost);
            } else {
                assert_eq!(seen, data, "first and last 8 bytes of message {}", m.seq);
                if received % ack_every == 0 {
                    ack(received, lost);
                }
            }
        }
    }
    loop {
        // Drain with `try_recv`, as the rtrb consumer drains with `pop`; the mode's call only
        // waits for an empty ring. Calling the mode's `recv` for every message instead held the
        // 64 B spin stream at 42-45 M/s on the development VM with its vCPUs close, against
        // 57-62 M/s this way in the same minutes. The cost was in going through `PodMode::recv`
        // for each message (even with a `try_recv` first inside it), not in the read: a scratch
        // consumer calling `recv_spin` itself for each message also ran at 57-62.
        //
        // `PodMode::User` is the loop a user writes: one `recv_spin` call per message.
        let next = if mode == PodMode::User {
            sub.recv_spin(&mut buf, Duration::from_secs(1)).expect("read the data ring")
        } else {
            match sub.try_recv(&mut buf).expect("read the data ring") {
                Some(m) => Some(m),
                None => mode.recv(&mut sub, &mut buf, Duration::from_secs(1)).expect("read the data ring"),
            }
        };
        let Some(m) = next else {
            continue;
        };
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
pub struct UdsStream {
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
    /// Connect a consumer child; `flush_each`: one `write` per message.
    pub fn new(size: usize, flush_each: bool) -> UdsStream {
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

    /// Stream `iters` messages; the time until the consumer confirmed the last one.
    pub fn run(&mut self, iters: u64) -> Duration {
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
pub fn uds_consumer() {
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
pub struct RtrbStream {
    producer: RtrbProducer,
    received: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
    data: Vec<u8>,
    end: Vec<u8>,
    published: u64,
}

impl RtrbStream {
    /// Start the consumer thread.
    pub fn new(size: usize) -> RtrbStream {
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

    /// Stream `iters` messages; the time until the consumer confirmed the last one.
    pub fn run(&mut self, iters: u64) -> Duration {
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
