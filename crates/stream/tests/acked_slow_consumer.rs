//! A slow consumer in another process makes the publisher wait, and no message is lost.

mod support;

use podcache_stream::{StreamConsumer, StreamPublisher};
use std::path::PathBuf;
use std::time::Duration;
use support::{check, fill, len_of, report, role, ChildProc, Watchdog, PATH};

const MAX: usize = 2048;
const CAPACITY: u64 = 64 << 10;
/// Messages per run: many times what the ring holds, so a publisher that did not wait would
/// lap a slow consumer many times over.
const MESSAGES: u64 = 20_000;
const WATCHDOG_SECS: u64 = 240;

/// The child: consumer `ID` reads `MESSAGES` messages, checking each one's sequence number,
/// length and bytes, sleeping `SLOW_US` µs every 16 messages; reports what it got.
fn consumer_child() {
    let _w = Watchdog::new("consumer child", WATCHDOG_SECS);
    let path = PathBuf::from(std::env::var(PATH).unwrap());
    let id = std::env::var("ID").unwrap();
    let slow_us: u64 = std::env::var("SLOW_US").unwrap().parse().unwrap();
    let mut c = StreamConsumer::builder(&path, id).wait_ready(Duration::from_secs(60)).open().expect("open consumer");
    let mut buf = vec![0u8; c.max_message()];
    let (mut got, mut lost, mut bad, mut last) = (0u64, 0u64, 0u64, 0u64);
    while last < MESSAGES {
        let m = c.recv(&mut buf, Duration::MAX).expect("recv").expect("no timeout");
        got += 1;
        lost += m.lost;
        // In order, none skipped (`lost` counts laps; a gap without one is counted here).
        if m.seq != last + 1 + m.lost || m.len != len_of(m.seq, MAX) || !check(m.seq, &buf[..m.len]) {
            bad += 1;
        }
        last = m.seq;
        if slow_us > 0 && got % 16 == 0 {
            std::thread::sleep(Duration::from_micros(slow_us));
        }
    }
    drop(c); // acknowledges the last message
    report(format!("got={got} lost={lost} bad={bad}"));
}

#[test]
fn a_slow_consumer_process_makes_the_publisher_wait_and_loses_nothing() {
    const TEST: &str = "a_slow_consumer_process_makes_the_publisher_wait_and_loses_nothing";
    if role().is_some() {
        return consumer_child();
    }
    let _w = Watchdog::new(TEST, WATCHDOG_SECS);
    let dir = tempfile::tempdir_in("/dev/shm").unwrap();
    let path = dir.path().join("jobs.ring");
    let mut publisher = StreamPublisher::builder(&path)
        .capacity(CAPACITY)
        .max_message(MAX as u32)
        .consumers(["slow", "fast"])
        .create()
        .unwrap();
    // Started after the publisher: it must not miss the first window either.
    let mut slow = ChildProc::spawn(TEST, "consumer", &path, &[("ID", "slow".into()), ("SLOW_US", "200".into())]);
    let mut fast = ChildProc::spawn(TEST, "consumer", &path, &[("ID", "fast".into()), ("SLOW_US", "0".into())]);
    let mut buf = vec![0u8; MAX];
    let mut bytes = 0u64;
    for seq in 1..=MESSAGES {
        let len = len_of(seq, MAX);
        fill(seq, &mut buf[..len]);
        assert_eq!(publisher.publish(&buf[..len], Duration::MAX).unwrap(), seq);
        bytes += podcache_reader::ring_record_size(len);
    }
    publisher.wait_acked(Duration::MAX).unwrap();
    assert_eq!(publisher.acked("slow"), Some(MESSAGES));
    assert_eq!(publisher.acked("fast"), Some(MESSAGES));
    for (name, child) in [("slow", &mut slow), ("fast", &mut fast)] {
        assert_eq!(
            child.next_report().as_deref(),
            Some(format!("got={MESSAGES} lost=0 bad=0").as_str()),
            "consumer {name}"
        );
        assert!(child.wait_success(), "consumer {name} failed");
    }
    // The stream was many rings long, so without waiting the slow consumer would have been lapped.
    assert!(bytes > 10 * CAPACITY);
    assert!(publisher.waits() > 0, "the publisher never waited");
}

#[test]
fn a_consumer_that_has_not_registered_holds_the_publisher_within_a_window() {
    let dir = tempfile::tempdir_in("/dev/shm").unwrap();
    let path = dir.path().join("late.ring");
    let mut publisher =
        StreamPublisher::builder(&path).capacity(CAPACITY).max_message(64).consumers(["late"]).create().unwrap();
    let msg = [7u8; 64];
    let mut published = 0u64;
    let err = loop {
        match publisher.publish(&msg, Duration::ZERO) {
            Ok(_) => published += 1,
            Err(e) => break e,
        }
    };
    assert!(matches!(&err, podcache_stream::PublishError::Timeout { id, registered: false } if id == "late"), "{err}");
    // Exactly one window of records went out, and all of it is still in the ring for "late".
    let rec = podcache_reader::ring_record_size(64);
    assert_eq!(published, publisher.window() / rec);
    let mut c = StreamConsumer::builder(&path, "late").open().unwrap();
    let mut buf = [0u8; 64];
    for seq in 1..=published {
        let m = c.try_recv(&mut buf).unwrap().expect("message still in the ring");
        assert_eq!((m.seq, m.lost), (seq, 0));
    }
    assert!(c.try_recv(&mut buf).unwrap().is_none());
    // Finding the ring empty acknowledged everything: the publisher may go on.
    publisher.publish(&msg, Duration::ZERO).unwrap();
}

#[test]
fn a_second_consumer_with_the_same_id_is_refused() {
    let dir = tempfile::tempdir_in("/dev/shm").unwrap();
    let path = dir.path().join("dup.ring");
    let _publisher = StreamPublisher::builder(&path).capacity(CAPACITY).consumers(["a"]).create().unwrap();
    let _first = StreamConsumer::builder(&path, "a").open().unwrap();
    let err = StreamConsumer::builder(&path, "a").open().err().expect("second consumer opened");
    assert!(matches!(err, podcache_stream::OpenError::AckRing(podcache_writer::CreateError::Locked { .. })), "{err}");
    let err = StreamConsumer::builder(&path, "../a").open().err().expect("bad id accepted");
    assert!(matches!(err, podcache_stream::OpenError::InvalidId { .. }), "{err}");
}
