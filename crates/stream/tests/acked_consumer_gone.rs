//! A consumer that dies (SIGKILL) is reported to the publisher, and one that restarts with its
//! id resumes after its last acknowledgement.

mod support;

use podcache_stream::{PublishError, StreamConsumer, StreamPublisher, WaitAckedError};
use std::path::PathBuf;
use std::time::Duration;
use support::{check, fill, len_of, report, role, ChildProc, Watchdog, PATH};

const MAX: usize = 256;
const CAPACITY: u64 = 64 << 10;
/// Messages the first consumer reads before it stops (and is killed): fewer than a window
/// holds (about 350 here), so the publisher gets that far without it acknowledging.
const READ_BEFORE_STALL: u64 = 100;
const WATCHDOG_SECS: u64 = 120;

fn data_path() -> PathBuf {
    PathBuf::from(std::env::var(PATH).unwrap())
}

/// Child "stall": consumer `victim` reads `READ_BEFORE_STALL` messages, reports, then stops
/// reading (and acknowledging) until it is killed.
fn stall_child() {
    let _w = Watchdog::new("stalling consumer", WATCHDOG_SECS);
    let mut c = StreamConsumer::builder(data_path(), "victim").wait_ready(Duration::from_secs(60)).open().unwrap();
    let mut buf = vec![0u8; c.max_message()];
    for want in 1..=READ_BEFORE_STALL {
        let m = c.recv(&mut buf, Duration::MAX).unwrap().unwrap();
        assert_eq!((m.seq, m.lost), (want, 0));
        assert!(check(m.seq, &buf[..m.len]));
    }
    report(format!("stalled acked={}", c.acked()));
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

/// Child "resume": consumer `victim` re-opens, reports where it resumes, then reads up to
/// message `LAST`, checking that every message follows the one before.
fn resume_child() {
    let _w = Watchdog::new("resuming consumer", WATCHDOG_SECS);
    let last: u64 = std::env::var("LAST").unwrap().parse().unwrap();
    let mut c = StreamConsumer::builder(data_path(), "victim").wait_ready(Duration::from_secs(60)).open().unwrap();
    report(format!("resumed_after={}", c.resumed_after()));
    let mut buf = vec![0u8; c.max_message()];
    let (mut first, mut prev, mut bad) = (0, c.resumed_after(), 0u64);
    while prev < last {
        let m = c.recv(&mut buf, Duration::MAX).unwrap().unwrap();
        if first == 0 {
            first = m.seq;
        }
        if m.seq != prev + 1 || m.lost != 0 || m.len != len_of(m.seq, MAX) || !check(m.seq, &buf[..m.len]) {
            bad += 1;
        }
        prev = m.seq;
    }
    drop(c);
    report(format!("first={first} last={prev} bad={bad}"));
}

/// Publish numbered messages from `publisher.next_seq()` on until one fails; returns the error.
fn publish_until_error(publisher: &mut StreamPublisher, timeout: Duration) -> PublishError {
    let mut buf = vec![0u8; MAX];
    loop {
        let seq = publisher.next_seq();
        let len = len_of(seq, MAX);
        fill(seq, &mut buf[..len]);
        if let Err(e) = publisher.publish(&buf[..len], timeout) {
            return e;
        }
    }
}

fn publisher(path: &std::path::Path) -> StreamPublisher {
    StreamPublisher::builder(path).capacity(CAPACITY).max_message(MAX as u32).consumers(["victim"]).create().unwrap()
}

#[test]
fn a_consumer_killed_while_the_publisher_waits_for_it_is_reported_gone() {
    const TEST: &str = "a_consumer_killed_while_the_publisher_waits_for_it_is_reported_gone";
    if role().as_deref() == Some("stall") {
        return stall_child();
    }
    let _w = Watchdog::new(TEST, WATCHDOG_SECS);
    let dir = tempfile::tempdir_in("/dev/shm").unwrap();
    let path = dir.path().join("gone.ring");
    let mut publisher = publisher(&path);
    let mut child = ChildProc::spawn(TEST, "stall", &path, &[]);
    // The publisher runs ahead until it has to wait for the stalled consumer, and waits with no
    // timeout: only the consumer's death can end the wait.
    let waiting = std::thread::spawn(move || {
        let err = publish_until_error(&mut publisher, Duration::MAX);
        (err, publisher)
    });
    let line = child.next_report().expect("the consumer reported");
    assert!(line.starts_with("stalled"), "{line}");
    // Give the publisher time to reach its wait (not required: it is told either way).
    std::thread::sleep(Duration::from_millis(300));
    child.kill();
    let (err, mut publisher) = waiting.join().unwrap();
    assert!(matches!(&err, PublishError::ConsumerGone { id } if id == "victim"), "{err}");
    assert!(err.to_string().contains("\"victim\" is gone"), "{err}");
    // Everything before the failed message was published, the failed one was not.
    let published = publisher.next_seq() - 1;
    assert!(published >= READ_BEFORE_STALL, "{published}");
    assert!(publisher.acked("victim").unwrap() < published);
    assert_eq!(publisher.gone_consumers(), ["victim"]);
    // The caller's decision: go on without it.
    assert!(publisher.remove_consumer("victim"));
    publisher.publish(b"after", Duration::ZERO).unwrap();
    assert_eq!(publisher.next_seq(), published + 2);
}

#[test]
fn a_killed_consumer_that_restarts_resumes_after_its_last_ack() {
    const TEST: &str = "a_killed_consumer_that_restarts_resumes_after_its_last_ack";
    match role().as_deref() {
        Some("stall") => return stall_child(),
        Some("resume") => return resume_child(),
        _ => {}
    }
    let _w = Watchdog::new(TEST, WATCHDOG_SECS);
    let dir = tempfile::tempdir_in("/dev/shm").unwrap();
    let path = dir.path().join("restart.ring");
    let mut publisher = publisher(&path);
    let mut first = ChildProc::spawn(TEST, "stall", &path, &[]);
    // Publish until the stalled consumer holds the publisher back (retrying while the child
    // process has not registered yet: its start-up takes what it takes).
    loop {
        match publish_until_error(&mut publisher, Duration::from_millis(200)) {
            PublishError::Timeout { registered: true, .. } => break,
            PublishError::Timeout { registered: false, .. } => {}
            other => panic!("{other}"),
        }
    }
    assert!(first.next_report().expect("first consumer reported").starts_with("stalled"));
    first.kill();
    let err = publish_until_error(&mut publisher, Duration::MAX);
    assert!(matches!(&err, PublishError::ConsumerGone { .. }), "{err}");
    let acked_before = publisher.acked("victim").unwrap();
    assert!(acked_before <= READ_BEFORE_STALL, "acked {acked_before} of {READ_BEFORE_STALL} read");

    // The same consumer comes back; the publisher, still holding the unpublished message,
    // goes on once it has registered.
    let last = publisher.next_seq() + 5_000;
    let mut second = ChildProc::spawn(TEST, "resume", &path, &[("LAST", last.to_string())]);
    let line = second.next_report().expect("second consumer reported");
    assert_eq!(line, format!("resumed_after={acked_before}"));
    let mut buf = vec![0u8; MAX];
    while publisher.next_seq() <= last {
        let seq = publisher.next_seq();
        let len = len_of(seq, MAX);
        fill(seq, &mut buf[..len]);
        publisher.publish(&buf[..len], Duration::MAX).unwrap();
    }
    publisher.wait_acked(Duration::MAX).unwrap();
    // It got everything after its last acknowledgement, in order: the messages the first
    // process read but did not acknowledge again (at least once), then the rest.
    assert_eq!(second.next_report().unwrap(), format!("first={} last={last} bad=0", acked_before + 1));
    assert!(second.wait_success());
}

#[test]
fn a_consumer_that_drops_is_gone_and_is_not_waited_for_once_done() {
    let dir = tempfile::tempdir_in("/dev/shm").unwrap();
    let path = dir.path().join("drop.ring");
    let mut publisher = StreamPublisher::builder(&path).capacity(CAPACITY).consumers(["a", "b"]).create().unwrap();
    let mut a = StreamConsumer::builder(&path, "a").open().unwrap();
    let mut b = StreamConsumer::builder(&path, "b").open().unwrap();
    publisher.publish(b"one", Duration::ZERO).unwrap();
    publisher.publish(b"two", Duration::ZERO).unwrap();
    let mut buf = [0u8; 16];
    for c in [&mut a, &mut b] {
        assert_eq!(c.recv(&mut buf, Duration::ZERO).unwrap().unwrap().seq, 1);
        assert_eq!(c.recv(&mut buf, Duration::ZERO).unwrap().unwrap().seq, 2);
    }
    assert!(publisher.gone_consumers().is_empty());
    // "a" leaves having received everything: dropping acknowledges it.
    drop(a);
    assert_eq!(publisher.gone_consumers(), ["a"]);
    // "b" has not acknowledged message 2 yet (it has not asked for the next one): the publisher
    // waits for it, not for "a", which is done.
    let err = publisher.wait_acked(Duration::ZERO).unwrap_err();
    assert!(matches!(&err, WaitAckedError::Timeout { id, registered: true } if id == "b"), "{err}");
    assert!(b.try_recv(&mut buf).unwrap().is_none());
    publisher.wait_acked(Duration::ZERO).unwrap();
    assert_eq!(publisher.acked("a"), Some(2));
    // A gone consumer that holds the publisher back makes it fail.
    publisher.publish(b"three", Duration::ZERO).unwrap();
    let err = publisher.wait_acked(Duration::from_secs(30)).unwrap_err();
    assert!(matches!(&err, WaitAckedError::ConsumerGone { id } if id == "a"), "{err}");
}

#[test]
fn a_restarted_publisher_waits_until_consumers_pass_its_predecessors_messages() {
    let dir = tempfile::tempdir_in("/dev/shm").unwrap();
    let path = dir.path().join("restart-pub.ring");
    let open = || StreamPublisher::builder(&path).capacity(CAPACITY).consumers(["c"]).create().unwrap();
    let mut first = open();
    let mut c = StreamConsumer::builder(&path, "c").open().unwrap();
    for i in 1..=10u64 {
        first.publish(&i.to_le_bytes(), Duration::ZERO).unwrap();
    }
    let mut buf = [0u8; 8];
    for want in 1..=5 {
        assert_eq!(c.recv(&mut buf, Duration::ZERO).unwrap().unwrap().seq, want);
    }
    drop(first);
    // The new publisher does not know where its predecessor's messages lie in the ring, so a
    // consumer behind them counts as a whole ring behind.
    let mut second = open();
    assert_eq!(second.next_seq(), 11);
    let err = second.publish(b"x", Duration::ZERO).unwrap_err();
    assert!(matches!(&err, PublishError::Timeout { id, registered: true } if id == "c"), "{err}");
    for want in 6..=10 {
        assert_eq!(c.recv(&mut buf, Duration::ZERO).unwrap().unwrap().seq, want);
    }
    // Found the ring empty: acknowledged 10, the last of the predecessor's messages.
    assert!(c.try_recv(&mut buf).unwrap().is_none());
    assert_eq!(second.publish(b"x", Duration::ZERO).unwrap(), 11);
    assert_eq!(c.recv(&mut buf, Duration::ZERO).unwrap().unwrap().seq, 11);
}

#[test]
fn a_consumer_that_panics_does_not_acknowledge_the_message_in_hand() {
    let dir = tempfile::tempdir_in("/dev/shm").unwrap();
    let path = dir.path().join("panic.ring");
    let mut publisher = StreamPublisher::builder(&path).capacity(CAPACITY).consumers(["p"]).create().unwrap();
    for i in 1..=3u64 {
        publisher.publish(&i.to_le_bytes(), Duration::ZERO).unwrap();
    }
    let handler = {
        let path = path.clone();
        std::thread::spawn(move || {
            let mut c = StreamConsumer::builder(&path, "p").open().unwrap();
            let mut buf = [0u8; 8];
            for _ in 0..2 {
                c.recv(&mut buf, Duration::ZERO).unwrap().unwrap();
            }
            panic!("handling message 2 failed");
        })
    };
    assert!(handler.join().is_err());
    // Message 1 is done (it asked for message 2); message 2 was in hand when it panicked.
    let err = publisher.wait_acked(Duration::from_secs(30)).unwrap_err();
    assert!(matches!(&err, WaitAckedError::ConsumerGone { id } if id == "p"), "{err}");
    assert_eq!(publisher.acked("p"), Some(1));
    let mut again = StreamConsumer::builder(&path, "p").open().unwrap();
    assert_eq!(again.resumed_after(), 1);
    let mut buf = [0u8; 8];
    assert_eq!(again.recv(&mut buf, Duration::ZERO).unwrap().unwrap().seq, 2);
}
