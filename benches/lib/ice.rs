//! iceoryx2 publish-subscribe as a peer (cargo feature `iceoryx2`; building it needs libclang).
//!
//! A `[u8]` slice service per harness, named after this process and a counter, so runs never
//! meet stale services. The publisher copies each message into a loaned sample
//! (`loan_slice_uninit` + `write_from_slice`) and sends it; the subscriber polls `receive` in a
//! loop and copies the payload into its own buffer, the same work a podcache consumer does.
//! Safe overflow is off and the publisher's strategy is `Block`, so a full subscriber queue
//! would throttle the publisher instead of dropping samples; the stream harness keeps fewer
//! samples in flight than the queue holds (the consumer publishes its count on a shared cache
//! line, [`SharedLines`]), so the publisher never waits inside iceoryx2.
//!
//! iceoryx2's publisher drops samples sent before it has seen a subscriber, so every harness
//! waits until the child has subscribed (the child connects a Unix socket after creating its
//! subscriber), refreshes the publisher's connections, then exchanges a warm-up batch whose
//! count must come back exact before anything is timed.

use crate::roundtrip::RoundTrip;
use crate::stream::payload;
use crate::{
    accept_child, child_var, spin_until, Child, SharedLines, ShmDir, CHILD_TIMEOUT, FLAG_DATA, FLAG_END, FLAG_EXIT,
};
use iceoryx2::node::Node;
use iceoryx2::port::publisher::Publisher;
use iceoryx2::port::subscriber::Subscriber;
use iceoryx2::port::update_connections::UpdateConnections;
use iceoryx2::prelude::*;
use iceoryx2::service::port_factory::publish_subscribe::PortFactory;
use iceoryx2::service::port_factory::PortFactory as _;
use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Child role: stream subscriber.
pub const ROLE_SUB: &str = "ice-subscriber";
/// Child role: round-trip echo.
pub const ROLE_ECHO: &str = "ice-echo";
const VAR_SERVICE: &str = "PODCACHE_BENCH_SERVICE";
const VAR_SOCK: &str = "PODCACHE_BENCH_SOCK";
const VAR_SHARED: &str = "PODCACHE_BENCH_SHARED";
const VAR_SIZE: &str = "PODCACHE_BENCH_SIZE";
const VAR_IN_PLACE: &str = "PODCACHE_BENCH_IN_PLACE";
/// Samples a round-trip subscriber's queue holds.
const PING_QUEUE: usize = 16;

/// Samples a stream subscriber's queue holds for `size`-byte messages: about the bytes in
/// flight of the other stream harnesses ([`crate::stream::WINDOW`]), at most 16,384 samples.
/// A small queue would make every handoff wait for the consumer to be scheduled.
fn stream_queue(size: usize) -> usize {
    (crate::stream::WINDOW as usize / size).clamp(64, 16384)
}

type Pub = Publisher<ipc::Service, [u8], ()>;
type Sub = Subscriber<ipc::Service, [u8], ()>;
type Service = PortFactory<ipc::Service, [u8], ()>;

/// A fresh service name prefix for one harness.
fn unique_name() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    // Relaxed: only uniqueness within this process matters.
    format!("podcache-bench/{}/{}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed))
}

fn node() -> Node<ipc::Service> {
    set_log_level(LogLevel::Error);
    NodeBuilder::new().create::<ipc::Service>().expect("iceoryx2 node")
}

fn service(node: &Node<ipc::Service>, name: &str, queue: usize) -> Service {
    let name: ServiceName = name.try_into().expect("service name");
    node.service_builder(&name)
        .publish_subscribe::<[u8]>()
        .enable_safe_overflow(false)
        .subscriber_max_buffer_size(queue)
        .history_size(0)
        .max_publishers(1)
        .max_subscribers(1)
        .open_or_create()
        .expect("iceoryx2 service")
}

fn publisher(service: &Service, max_len: usize) -> Pub {
    service
        .publisher_builder()
        .initial_max_slice_len(max_len)
        .unable_to_deliver_strategy(UnableToDeliverStrategy::Block)
        .create()
        .expect("iceoryx2 publisher")
}

fn subscriber(service: &Service, queue: usize) -> Sub {
    service.subscriber_builder().buffer_size(queue).create().expect("iceoryx2 subscriber")
}

fn send(publisher: &Pub, msg: &[u8]) {
    let sample = publisher.loan_slice_uninit(msg.len()).expect("loan a sample");
    sample.write_from_slice(msg).send().expect("send a sample");
}

/// Poll until a sample arrives; copy it into `buf`; its length.
fn receive(sub: &Sub, buf: &mut [u8], mut check: impl FnMut()) -> usize {
    let mut len = 0;
    spin_until(
        || match sub.receive().expect("receive") {
            Some(s) => {
                let p = s.payload();
                buf[..p.len()].copy_from_slice(p);
                len = p.len();
                true
            }
            None => false,
        },
        &mut check,
    );
    len
}

/// Stream: this process publishes, a child subscribes and confirms counts on a Unix socket.
pub struct IceStream {
    // Field order is drop order: child first, then the ports, then the node.
    child: Option<Child>,
    /// Line 0: the count of samples the subscriber has received.
    counts: SharedLines,
    publisher: Pub,
    _service: Service,
    _node: Node<ipc::Service>,
    data: Vec<u8>,
    end: Vec<u8>,
    published: u64,
    /// Samples in flight at most: half the subscriber's queue.
    credit: u64,
    _dir: ShmDir,
}

impl IceStream {
    /// Create the service, start the subscriber child, warm up.
    pub fn new(size: usize) -> IceStream {
        IceStream::with_contract(size, false)
    }

    /// [`new`](Self::new); with `in_place`, the subscriber checks the first and last 8 bytes
    /// of each sample where it lies instead of copying it (the in-place contract,
    /// [`crate::stream::Contract`]; the publisher writes into the loaned sample either way).
    pub fn with_contract(size: usize, in_place: bool) -> IceStream {
        let dir = ShmDir::new();
        let name = format!("{}/stream", unique_name());
        let node = node();
        let queue = stream_queue(size);
        let svc = service(&node, &name, queue);
        let publisher = publisher(&svc, size);
        let sock = dir.path("ready.sock");
        let lines_path = dir.path("counts");
        let counts = SharedLines::open(&lines_path);
        let listener = UnixListener::bind(&sock).expect("bind");
        let mut child = Child::spawn(
            ROLE_SUB,
            &[
                (VAR_SERVICE, name.into()),
                (VAR_SOCK, sock.into_os_string()),
                (VAR_SHARED, lines_path.into_os_string()),
                (VAR_SIZE, size.to_string().into()),
                (VAR_IN_PLACE, (if in_place { "1" } else { "0" }).into()),
            ],
        );
        // The child connects once its subscriber exists.
        drop(accept_child(&listener, &mut child));
        publisher.update_connections().expect("connect to the subscriber");
        let mut s = IceStream {
            child: Some(child),
            counts,
            publisher,
            _service: svc,
            _node: node,
            data: payload(size, FLAG_DATA),
            end: payload(size, FLAG_END),
            published: 0,
            credit: (queue / 2) as u64,
            _dir: dir,
        };
        // Warm-up: `run` asserts that the subscriber's count matches, so nothing was dropped.
        s.run(1000);
        s
    }

    /// Stream `iters` messages; the time until the subscriber confirmed the last one.
    pub fn run(&mut self, iters: u64) -> Duration {
        let start = Instant::now();
        for i in 0..iters {
            if self.published >= self.credit {
                self.wait_received(self.published + 1 - self.credit);
            }
            send(&self.publisher, if i + 1 == iters { &self.end } else { &self.data });
            self.published += 1;
        }
        self.wait_received(self.published);
        let elapsed = start.elapsed();
        // SYNC: Acquire, pairs with the subscriber's Release store of its count.
        let received = self.counts.line(0).load(Ordering::Acquire);
        assert_eq!(received, self.published, "iceoryx2 subscriber count (a sample was dropped)");
        elapsed
    }

    /// Spin until the subscriber has received `target` samples.
    fn wait_received(&mut self, target: u64) {
        let (counts, child) = (&self.counts, self.child.as_mut().expect("child"));
        // SYNC: Acquire, pairs with the subscriber's Release store of its count.
        spin_until(|| counts.line(0).load(Ordering::Acquire) >= target, || child.check_alive());
    }
}

impl Drop for IceStream {
    fn drop(&mut self) {
        send(&self.publisher, &payload(self.data.len(), FLAG_EXIT));
        if let Some(child) = self.child.take() {
            child.finish(Duration::from_secs(2));
        }
    }
}

/// Child: receive the stream, confirm the count at every end-of-batch message.
pub fn subscriber_child() {
    let node = node();
    let size: usize = child_var(VAR_SIZE).parse().expect("size");
    let queue = stream_queue(size);
    let svc = service(&node, &child_var(VAR_SERVICE), queue);
    let sub = subscriber(&svc, queue);
    let counts = SharedLines::open(std::path::Path::new(&child_var(VAR_SHARED)));
    drop(UnixStream::connect(child_var(VAR_SOCK)).expect("connect"));
    let mut buf = vec![0u8; size];
    let mut received = 0u64;
    let in_place = child_var(VAR_IN_PLACE) == "1";
    let data = crate::stream::ends(&payload(size, FLAG_DATA));
    loop {
        if in_place {
            // The first and last 8 bytes, checked in the sample; only the flag byte is kept.
            spin_until(
                || match sub.receive().expect("receive") {
                    Some(s) => {
                        let p = s.payload();
                        let (first, last) = crate::stream::ends(p);
                        assert_eq!(last, data.1, "last 8 bytes");
                        assert!(first >> 8 == data.0 >> 8, "first 8 bytes");
                        buf[0] = first as u8;
                        true
                    }
                    None => false,
                },
                || {},
            );
        } else {
            receive(&sub, &mut buf, || {});
        }
        if buf[0] == FLAG_EXIT {
            return;
        }
        received += 1;
        // Every 16th sample and at the end of a batch, so the producer's credit comes back.
        if received.is_multiple_of(16) || buf[0] == FLAG_END {
            // SYNC: Release, pairs with the producer's Acquire loads in IceStream.
            counts.line(0).store(received, Ordering::Release);
        }
    }
}

/// 64 B round trip: ping service written here, pong service written by the echo child; both
/// sides poll `receive`.
pub struct IcePingPong {
    child: Option<Child>,
    ping: Pub,
    pong: Sub,
    _services: (Service, Service),
    _node: Node<ipc::Service>,
    msg: Vec<u8>,
    buf: Vec<u8>,
}

// No `Default`: `new` starts a child process, which a default value should not hide.
#[allow(clippy::new_without_default)]
impl IcePingPong {
    /// Create both services, start the echo child, warm up.
    pub fn new() -> IcePingPong {
        let dir = ShmDir::new();
        let name = unique_name();
        let node = node();
        let ping_svc = service(&node, &format!("{name}/ping"), PING_QUEUE);
        let pong_svc = service(&node, &format!("{name}/pong"), PING_QUEUE);
        let ping = publisher(&ping_svc, 64);
        let pong = subscriber(&pong_svc, PING_QUEUE);
        let sock = dir.path("ready.sock");
        let listener = UnixListener::bind(&sock).expect("bind");
        let mut child = Child::spawn(ROLE_ECHO, &[(VAR_SERVICE, name.into()), (VAR_SOCK, sock.into_os_string())]);
        let mut ready = accept_child(&listener, &mut child);
        ready.set_read_timeout(Some(CHILD_TIMEOUT)).expect("read timeout");
        // The child says when its pong publisher has seen this subscriber.
        let mut b = [0u8; 1];
        ready.read_exact(&mut b).expect("child ready");
        ping.update_connections().expect("connect to the echo child");
        let mut p = IcePingPong {
            child: Some(child),
            ping,
            pong,
            _services: (ping_svc, pong_svc),
            _node: node,
            msg: payload(64, FLAG_DATA),
            buf: vec![0; 256],
        };
        for _ in 0..1000 {
            p.round_trip();
        }
        p
    }
}

impl RoundTrip for IcePingPong {
    fn round_trip(&mut self) {
        send(&self.ping, &self.msg);
        let child = self.child.as_mut().expect("child");
        let n = receive(&self.pong, &mut self.buf, || child.check_alive());
        assert_eq!(n, 64, "pong length");
    }
}

impl Drop for IcePingPong {
    fn drop(&mut self) {
        send(&self.ping, &payload(64, FLAG_EXIT));
        if let Some(child) = self.child.take() {
            child.finish(Duration::from_secs(2));
        }
    }
}

/// Child: echo every ping as a pong.
pub fn echo_child() {
    let name = child_var(VAR_SERVICE);
    let node = node();
    let ping_svc = service(&node, &format!("{name}/ping"), PING_QUEUE);
    let pong_svc = service(&node, &format!("{name}/pong"), PING_QUEUE);
    let ping = subscriber(&ping_svc, PING_QUEUE);
    let pong = publisher(&pong_svc, 64);
    let mut ready = UnixStream::connect(child_var(VAR_SOCK)).expect("connect");
    // Wait until the parent's pong subscriber is visible to this publisher.
    let deadline = Instant::now() + CHILD_TIMEOUT;
    while pong_svc.dynamic_config().number_of_subscribers() < 1 {
        assert!(Instant::now() < deadline, "the parent never subscribed");
        std::thread::sleep(Duration::from_millis(1));
    }
    pong.update_connections().expect("connect to the parent");
    ready.write_all(&[1]).expect("ready");
    let mut buf = vec![0u8; 256];
    loop {
        let n = receive(&ping, &mut buf, || {});
        if buf[0] == FLAG_EXIT {
            return;
        }
        send(&pong, &buf[..n]);
    }
}
