//! A subscriber that falls more than a ring behind is lapped: it jumps to the oldest intact
//! message, the next message tells exactly how many it lost, and it goes on in order. After
//! the first message, `received + lost == published`, to the message.

use podcache_reader::{RecvError, Start, Subscriber};
use podcache_tests::{
    child_role, die_with_parent, payload, payload_into, payload_matches, report, self_command, shm_tempdir, ChildProc,
    Watchdog,
};
use podcache_writer::Publisher;
use std::io::BufRead;
use std::path::Path;
use std::time::Duration;

const CAPACITY: u64 = 1 << 14;
const MAX_MSG: usize = 200;

fn publisher(path: &Path) -> Publisher {
    Publisher::builder(path).capacity(CAPACITY).max_message(MAX_MSG as u32).create().expect("create ring")
}

fn publish_range(p: &mut Publisher, seqs: std::ops::RangeInclusive<u64>) {
    let mut buf = Vec::new();
    for seq in seqs {
        payload_into(seq, MAX_MSG, &mut buf);
        assert_eq!(p.publish(&buf).expect("publish"), seq);
    }
}

/// Counts of what a subscriber received, checking every message on the way.
#[derive(Debug, Default)]
struct Tally {
    received: u64,
    lost: u64,
    last: u64,
}

impl Tally {
    /// Check and count one message (the first one of a subscriber included).
    fn take(&mut self, m: podcache_reader::Msg, bytes: &[u8]) {
        assert!(payload_matches(m.seq, MAX_MSG, bytes), "message {m:?} has the wrong bytes");
        if self.received > 0 {
            assert_eq!(m.seq, self.last + 1 + m.lost, "message {m:?} after {}", self.last);
        }
        self.received += 1;
        self.lost += m.lost;
        self.last = m.seq;
    }
}

#[test]
fn a_lapped_subscriber_reports_exactly_what_it_lost_and_continues_in_order() {
    let dir = shm_tempdir();
    let path = dir.path().join("lapped.ring");
    let mut p = publisher(&path);
    let mut sub = Subscriber::open(&path).expect("open");
    let mut buf = vec![0u8; sub.max_message()];
    let mut tally = Tally::default();

    publish_range(&mut p, 1..=1);
    let m = sub.try_recv(&mut buf).unwrap().expect("message 1");
    tally.take(m, &buf[..m.len]);

    // Several laps, each one far more than a ring ahead of the subscriber.
    let mut published = 1;
    for (round, burst) in [5_000u64, 777, 20_000, 3_000].into_iter().enumerate() {
        publish_range(&mut p, published + 1..=published + burst);
        published += burst;
        // Where a lapped subscriber must land: the oldest message still in the ring, which is
        // where a subscriber opened now starts.
        let oldest = {
            let mut fresh = Subscriber::builder(&path).start(Start::Oldest).open().unwrap();
            fresh.try_recv(&mut buf).unwrap().expect("the ring holds messages").seq
        };
        assert!(oldest > tally.last + 1, "round {round}: the burst overwrote unread messages");
        let m = sub.try_recv(&mut buf).unwrap().expect("a message after the lap");
        assert_eq!(m.seq, oldest, "round {round}: jumped to the oldest intact message");
        assert_eq!(m.lost, oldest - tally.last - 1, "round {round}: lost exactly the overwritten messages");
        tally.take(m, &buf[..m.len]);
        // Read half of what is left, so the next lap starts from the middle of the ring.
        let left = published - tally.last;
        for _ in 0..left / 2 {
            let m = sub.try_recv(&mut buf).unwrap().expect("in order after the lap");
            assert_eq!(m.lost, 0);
            tally.take(m, &buf[..m.len]);
        }
        assert_eq!(sub.laps(), round as u64 + 1);
    }
    while let Some(m) = sub.try_recv(&mut buf).unwrap() {
        tally.take(m, &buf[..m.len]);
    }
    assert_eq!(tally.last, published);
    assert_eq!(sub.lost(), tally.lost, "Subscriber::lost() is the sum of Msg::lost");
    assert_eq!(tally.received + tally.lost, published, "every message was either received or counted lost");
    assert!(tally.lost > 20_000);
}

#[test]
fn a_subscriber_that_starts_at_the_newest_message_is_lapped_like_any_other() {
    let dir = shm_tempdir();
    let path = dir.path().join("newest.ring");
    let mut p = publisher(&path);
    publish_range(&mut p, 1..=10_000);
    let mut sub = Subscriber::builder(&path).start(Start::Newest).open().unwrap();
    let mut buf = vec![0u8; sub.max_message()];
    assert!(sub.try_recv(&mut buf).unwrap().is_none(), "nothing new yet");
    publish_range(&mut p, 10_001..=10_001);
    let m = sub.try_recv(&mut buf).unwrap().unwrap();
    assert_eq!((m.seq, m.lost), (10_001, 0));
    publish_range(&mut p, 10_002..=30_000);
    let m = sub.try_recv(&mut buf).unwrap().unwrap();
    assert_eq!(m.lost, m.seq - 10_002);
    assert!(payload_matches(m.seq, MAX_MSG, &buf[..m.len]));
    assert_eq!(sub.lost(), m.lost);
}

const CROSS_TEST: &str = "a_subscriber_lapped_by_a_publisher_process_accounts_for_every_message";
const PATH_ENV: &str = "PODCACHE_LAPPED_RING";
/// Published while the subscriber waits: guarantees laps (50 000 messages of 24..216 bytes in
/// a 16 KiB ring).
const PHASE1: u64 = 50_000;
/// Published at full speed while the subscriber reads.
const PHASE2: u64 = 300_000;

#[test]
fn a_subscriber_lapped_by_a_publisher_process_accounts_for_every_message() {
    if child_role().as_deref() == Some("publisher") {
        return publisher_child();
    }
    let _watchdog = Watchdog::new(CROSS_TEST, 300);
    let dir = shm_tempdir();
    let path = dir.path().join("cross.ring");
    let mut cmd = self_command(CROSS_TEST, "publisher");
    cmd.env(PATH_ENV, &path);
    let mut child = ChildProc::spawn(cmd, "publisher");
    child.expect("READY", Duration::from_secs(60));

    let mut sub = Subscriber::open(&path).expect("open");
    let mut buf = vec![0u8; sub.max_message()];
    let mut tally = Tally::default();
    child.send("go");
    let m = sub.recv_timeout(&mut buf, Duration::from_secs(60)).unwrap().expect("message 1");
    assert_eq!((m.seq, m.lost), (1, 0));
    tally.take(m, &buf[..m.len]);
    child.send("go");
    // Wait until phase 1 is published: the subscriber is lapped for sure.
    child.expect("PHASE1", Duration::from_secs(60));
    let mut overruns = 0u64;
    let mut laps_seen = 0u64;
    let total = 1 + PHASE1 + PHASE2;
    while tally.last < total {
        match sub.recv_timeout(&mut buf, Duration::from_secs(60)) {
            Ok(Some(m)) => {
                laps_seen += u64::from(m.lost > 0);
                tally.take(m, &buf[..m.len]);
            }
            Ok(None) => panic!("no message for 60 s after {tally:?}"),
            // Lapped on every retry of one read: allowed while the publisher runs, not an error.
            Err(RecvError::Overrun) => overruns += 1,
            Err(e) => panic!("read error after {tally:?}: {e}"),
        }
    }
    let (status, _) = child.wait(Duration::from_secs(60));
    assert!(status.success(), "publisher: {status}");
    assert!(sub.try_recv(&mut buf).unwrap().is_none(), "nothing after the last message");
    println!("{CROSS_TEST}: {tally:?}, laps {}, overruns {overruns}", sub.laps());
    assert_eq!(tally.last, total);
    assert!(tally.lost >= PHASE1 / 2, "phase 1 overwrote most of itself before it was read: {tally:?}");
    assert!(laps_seen >= 1 && sub.laps() >= laps_seen, "laps: {} counted, {laps_seen} seen", sub.laps());
    assert_eq!(sub.lost(), tally.lost, "Subscriber::lost() is the sum of Msg::lost");
    assert_eq!(tally.received + tally.lost, total, "every message was either received or counted lost");
}

fn publisher_child() {
    die_with_parent();
    let _watchdog = Watchdog::new("lapping publisher", 300);
    let path = std::env::var_os(PATH_ENV).expect("ring path");
    let mut p = publisher(Path::new(&path));
    report("READY", &[]);
    let mut stdin = std::io::stdin().lock();
    let mut line = String::new();
    stdin.read_line(&mut line).expect("go");
    publish_range(&mut p, 1..=1);
    line.clear();
    stdin.read_line(&mut line).expect("go");
    publish_range(&mut p, 2..=1 + PHASE1);
    report("PHASE1", &[]);
    // Phase 2 in batches too: one tail store for several records.
    let mut seq = 2 + PHASE1;
    let end = 1 + PHASE1 + PHASE2;
    while seq <= end {
        let n = (end - seq + 1).min(1 + seq % 7);
        let msgs: Vec<Vec<u8>> = (seq..seq + n).map(|s| payload(s, MAX_MSG)).collect();
        assert_eq!(p.publish_batch(msgs.iter().map(|m| &m[..])).unwrap(), Some(seq + n - 1));
        seq += n;
    }
    report("DONE", &[]);
}
