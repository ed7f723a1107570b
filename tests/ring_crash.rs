//! Real crash test of the ring: publisher processes are `SIGKILL`ed at random points while two
//! subscriber processes read.
//!
//! The test binary re-executes itself: one child publisher at a time creates (first) or
//! attaches to (every later one) the ring on `/dev/shm` and publishes, with `publish`,
//! `publish_batch`, claims (written in odd-sized pieces), loans (written in place, garbage
//! first) and abandoned claims and loans in a seeded mix,
//! messages whose bytes derive from their sequence number. The parent kills each publisher
//! after a random delay (0..3 ms after it reported being attached; one in six is killed at a
//! random point of its start-up instead, possibly inside the attach itself) and starts the
//! next, which must recover without discarding anything, bump the epoch by exactly one and
//! continue the sequence. Two subscriber processes read the whole time and check every
//! message: bytes as the sequence implies, sequence strictly increasing with
//! `seq == previous + 1 + lost`, and the subscriber's loss count equal to the sum of the gaps.
//!
//! `PODCACHE_CRASH_KILLS` sets the number of kills (default 200); `PODCACHE_TEST_SEED` replays
//! a run.

use podcache_reader::{RecvError, Subscriber};
use podcache_tests::{
    child_role, die_with_parent, env_u64, killed_by_sigkill, payload, payload_into, payload_matches, report,
    self_command, test_seed, ChildProc, Report, Rng, Watchdog,
};
use podcache_writer::Publisher;
use std::io::BufRead;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const TEST: &str = "killed_publishers_never_hand_readers_a_bad_message";
const PATH_ENV: &str = "PODCACHE_CRASH_RING";
const SEED_ENV: &str = "PODCACHE_CRASH_CHILD_SEED";
/// A small ring (64 KiB) so that it wraps and laps readers constantly.
const CAPACITY: u64 = 1 << 16;
const MAX_MSG: usize = 1024;
/// Messages the last, clean publisher adds before the readers are told to stop.
const FINAL_MESSAGES: u64 = 20_000;
/// Generous: a hang fails the test; the run itself takes seconds.
const WATCHDOG_SECS: u64 = 600;

#[test]
fn killed_publishers_never_hand_readers_a_bad_message() {
    match child_role().as_deref() {
        Some("publisher") => return publisher_child(false),
        Some("final-publisher") => return publisher_child(true),
        Some("subscriber") => return subscriber_child(),
        Some(other) => panic!("unknown role {other}"),
        None => {}
    }
    let seed = test_seed(TEST);
    let kills = env_u64("PODCACHE_CRASH_KILLS", 200);
    assert!(kills >= 1, "PODCACHE_CRASH_KILLS must be at least 1");
    let _watchdog = Watchdog::new(TEST, WATCHDOG_SECS);
    let started = Instant::now();
    let mut rng = Rng::new(seed);
    let dir = podcache_tests::shm_tempdir();
    let path = dir.path().join("crash.ring");

    // Subscribers first: they wait for the file to be created.
    let mut subscribers: Vec<ChildProc> = (0..2)
        .map(|i| {
            let mut cmd = self_command(TEST, "subscriber");
            cmd.env(PATH_ENV, &path);
            ChildProc::spawn(cmd, &format!("subscriber {i}"))
        })
        .collect();

    let mut restarts = Restarts::default();
    let mut early_kills = 0u64;
    let mut ready_latency = Duration::from_millis(5);
    for i in 0..kills {
        let mut cmd = self_command(TEST, "publisher");
        cmd.env(PATH_ENV, &path).env(SEED_ENV, rng.next_u64().to_string());
        let spawned = Instant::now();
        let mut child = ChildProc::spawn(cmd, &format!("publisher {i}"));
        let early = i > 0 && rng.below(6) == 0;
        let (status, rest) = if early {
            // Somewhere in the start-up (exec, open, flock, attach, epoch bump): anywhere up to
            // the usual time to report, or (half of the time) close to the attach, which comes
            // just before the report.
            let l = ready_latency.as_micros() as u64;
            let delay = if rng.below(2) == 0 { rng.below(l * 5 / 4 + 1) } else { l * 3 / 4 + rng.below(l / 2 + 1) };
            std::thread::sleep(Duration::from_micros(delay));
            early_kills += 1;
            child.sigkill()
        } else {
            let ready = child.expect("READY", Duration::from_secs(60));
            ready_latency = spawned.elapsed();
            restarts.check(&ready, i == 0);
            std::thread::sleep(Duration::from_micros(rng.below(3000)));
            child.sigkill()
        };
        assert!(killed_by_sigkill(&status), "publisher {i} died before it was killed: {status}");
        match rest.iter().find(|r| r.tag == "READY") {
            Some(r) => restarts.check(r, false),
            None if early => restarts.unreported += 1,
            None => {}
        }
    }

    // A last publisher recovers, adds messages and exits cleanly.
    let mut cmd = self_command(TEST, "final-publisher");
    cmd.env(PATH_ENV, &path).env(SEED_ENV, rng.next_u64().to_string());
    let mut last = ChildProc::spawn(cmd, "final publisher");
    let ready = last.expect("READY", Duration::from_secs(60));
    restarts.check(&ready, false);
    let done = last.expect("DONE", Duration::from_secs(120));
    let (status, _) = last.wait(Duration::from_secs(60));
    assert!(status.success(), "final publisher: {status}");
    let last_seq = done.get("last");
    assert_eq!(last_seq, done.get("next_seq") - 1);

    for s in &mut subscribers {
        s.send(&last_seq.to_string());
    }
    let mut total_received = 0;
    let mut restarts_seen = 0;
    for (i, s) in subscribers.iter_mut().enumerate() {
        let r = s.expect("RESULT", Duration::from_secs(120));
        let (status, _) = s.wait(Duration::from_secs(60));
        assert!(status.success(), "subscriber {i}: {status}");
        println!("subscriber {i}: {r:?}");
        let (received, lost, first, last) = (r.get("received"), r.get("lost"), r.get("first"), r.get("last"));
        assert_eq!(r.get("bad"), 0, "subscriber {i} was handed bad messages: {r:?}");
        assert_eq!(r.get("errors"), 0, "subscriber {i} got read errors other than Overrun: {r:?}");
        assert_eq!(last, last_seq, "subscriber {i} read up to the last message");
        assert_eq!(received + lost, last - first + 1, "subscriber {i}: received + lost covers every message");
        assert_eq!(
            r.get("sub_lost"),
            lost + r.get("first_lost"),
            "subscriber {i}: Subscriber::lost() is the sum of Msg::lost"
        );
        assert!(received >= FINAL_MESSAGES / 2, "subscriber {i} received only {received} messages");
        total_received += received;
        restarts_seen += r.get("restarts");
    }
    assert!(restarts_seen > 0, "no subscriber noticed a publisher restart");
    println!(
        "{TEST}: {kills} kills ({early_kills} during start-up, {} of them after the epoch bump), \
         {last_seq} messages published, {total_received} received and checked by 2 subscribers, \
         {restarts_seen} restarts seen, final epoch {}, {:.1} s",
        restarts.killed_after_bump,
        restarts.last_epoch,
        started.elapsed().as_secs_f64()
    );
}

/// What the publishers reported so far, checked at each report.
#[derive(Debug, Default)]
struct Restarts {
    last_epoch: u64,
    /// Publishers killed before they reported: each may or may not have bumped the epoch.
    unreported: u64,
    last_next_seq: u64,
    /// Unreported publishers that had bumped the epoch (killed after attaching).
    killed_after_bump: u64,
}

impl Restarts {
    /// Check the READY report of a publisher (the first one creates the ring).
    fn check(&mut self, r: &Report, first: bool) {
        let (epoch, next_seq) = (r.get("epoch"), r.get("next_seq"));
        if first {
            assert_eq!((r.get("fresh"), epoch), (1, 1), "the first publisher creates the ring: {r:?}");
        } else {
            assert_eq!(r.get("fresh"), 0, "a restarted publisher attaches: {r:?}");
            assert_eq!(r.get("discarded"), 0, "a crash must never make recovery discard the ring: {r:?}");
            let last = self.last_epoch;
            assert!(
                (last + 1..=last + 1 + self.unreported).contains(&epoch),
                "epoch {epoch} after {last} with {} unreported publishers in between: {r:?}",
                self.unreported
            );
            if self.unreported == 0 {
                assert_eq!(epoch, last + 1, "the epoch goes up by one per restart");
            }
            self.killed_after_bump += epoch - last - 1;
            assert!(next_seq >= self.last_next_seq, "the sequence goes on: {next_seq} after {}", self.last_next_seq);
            if next_seq > 1 {
                assert!(r.get("intact") > 0, "a ring with messages has intact records: {r:?}");
            }
        }
        self.last_epoch = epoch;
        self.unreported = 0;
        self.last_next_seq = next_seq;
    }
}

/// A publisher: attach (or create), report, then publish until killed (or, for the final one,
/// publish [`FINAL_MESSAGES`] and exit).
fn publisher_child(final_run: bool) {
    die_with_parent();
    let _watchdog = Watchdog::new("crash publisher", WATCHDOG_SECS);
    let path = std::env::var_os(PATH_ENV).expect("ring path");
    let mut rng = Rng::new(env_u64(SEED_ENV, 0));
    let mut publisher = Publisher::builder(Path::new(&path))
        .capacity(CAPACITY)
        .max_message(MAX_MSG as u32)
        .create()
        .expect("a publisher attaches to the ring its killed predecessor left");
    let rec = publisher.recovery();
    report(
        "READY",
        &[
            ("epoch", publisher.epoch()),
            ("fresh", u64::from(rec.is_none())),
            ("intact", rec.map_or(0, |r| r.intact)),
            ("discarded", u64::from(rec.is_some_and(|r| r.discarded))),
            ("next_seq", publisher.next_seq()),
        ],
    );
    let mut scratch = Vec::new();
    let garbage: Vec<u8> = (0..MAX_MSG).map(|i| (i as u8) ^ 0xA5).collect();
    if final_run {
        let end = publisher.next_seq() + FINAL_MESSAGES;
        while publisher.next_seq() < end {
            publish_some(&mut publisher, &mut rng, &mut scratch, &garbage);
        }
        report("DONE", &[("last", publisher.next_seq() - 1), ("next_seq", publisher.next_seq())]);
        return;
    }
    loop {
        publish_some(&mut publisher, &mut rng, &mut scratch, &garbage);
    }
}

/// One publishing step, chosen at random.
fn publish_some(p: &mut Publisher, rng: &mut Rng, scratch: &mut Vec<u8>, garbage: &[u8]) {
    let seq = p.next_seq();
    let op = rng.below(13);
    match op {
        0..=3 => {
            payload_into(seq, MAX_MSG, scratch);
            assert_eq!(p.publish(scratch).expect("publish"), seq);
        }
        4 | 5 => {
            let n = 1 + rng.below(16);
            let msgs: Vec<Vec<u8>> = (seq..seq + n).map(|s| payload(s, MAX_MSG)).collect();
            assert_eq!(p.publish_batch(msgs.iter().map(|m| &m[..])).expect("batch"), Some(seq + n - 1));
        }
        6..=8 => {
            payload_into(seq, MAX_MSG, scratch);
            let room = scratch.len() + rng.below_usize(MAX_MSG - scratch.len() + 1);
            let mut claim = p.claim(room).expect("claim");
            let piece = 1 + rng.below_usize(40);
            for part in scratch.chunks(piece) {
                assert_eq!(claim.write(part), part.len());
            }
            assert_eq!(claim.commit().expect("commit"), seq);
        }
        9 => {
            // Abandoned: written in place, never committed. No reader may ever see these bytes.
            p.claim(MAX_MSG).expect("claim").write(&garbage[..rng.below_usize(MAX_MSG)]);
            assert_eq!(p.next_seq(), seq, "an abandoned claim takes no sequence number");
        }
        10 | 11 => {
            // A loan: garbage first (what a publisher killed part-way leaves), then the message,
            // whole or through io::Write in odd-sized pieces (partial words at both edges).
            payload_into(seq, MAX_MSG, scratch);
            let mut loan = p.loan(scratch.len()).expect("loan");
            let n = loan.len();
            loan.copy_from_slice(&garbage[..n]);
            if op == 10 {
                loan.copy_from_slice(scratch);
            } else {
                for piece in scratch.chunks(7) {
                    std::io::Write::write_all(&mut loan, piece).expect("fits");
                }
            }
            assert_eq!(loan.commit(), seq);
        }
        _ => {
            // An abandoned loan, filled with garbage (whole, then a piece at an odd offset)
            // and dropped: never visible to a reader.
            {
                let mut loan = p.loan(1 + rng.below_usize(MAX_MSG)).expect("loan");
                let n = loan.len();
                loan.copy_from_slice(&garbage[..n]);
                let at = rng.below_usize(n);
                loan.write_at(at, &garbage[..n - at]);
            } // dropped uncommitted
            assert_eq!(p.next_seq(), seq, "an abandoned loan takes no sequence number");
        }
    }
}

/// A subscriber: read until told the last sequence number (on stdin) and caught up, checking
/// every message, then report.
fn subscriber_child() {
    die_with_parent();
    let _watchdog = Watchdog::new("crash subscriber", WATCHDOG_SECS);
    let path = std::env::var_os(PATH_ENV).expect("ring path");
    let stop = Arc::new(AtomicU64::new(u64::MAX));
    {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            let mut line = String::new();
            std::io::stdin().lock().read_line(&mut line).expect("read stop line");
            stop.store(line.trim().parse().expect("last sequence number"), Ordering::Release);
        });
    }
    let mut sub = Subscriber::builder(Path::new(&path))
        .wait_ready(Duration::from_secs(120))
        .open()
        .expect("the subscriber opens the ring once it is created");
    let mut buf = vec![0u8; sub.max_message()];
    let (mut received, mut lost, mut bad, mut errors, mut overruns, mut restarts) = (0u64, 0u64, 0u64, 0u64, 0, 0);
    let (mut first, mut last): (Option<u64>, u64) = (None, 0);
    // Messages lost before the first one received (counted from the oldest message there was
    // when the subscriber opened: it can be lapped before its first read).
    let mut first_lost = 0u64;
    let mut epoch = sub.writer_epoch();
    loop {
        let stop_at = stop.load(Ordering::Acquire);
        match sub.recv_timeout(&mut buf, Duration::from_millis(20)) {
            Ok(Some(m)) => {
                let ok_bytes = payload_matches(m.seq, MAX_MSG, &buf[..m.len]);
                let ok_order = first.is_none() || m.seq == last + 1 + m.lost;
                if !(ok_bytes && ok_order) {
                    bad += 1;
                    if bad <= 10 {
                        eprintln!("BAD message {m:?} after seq {last}: bytes ok {ok_bytes}, order ok {ok_order}");
                    }
                }
                if first.is_none() {
                    first = Some(m.seq);
                    first_lost = m.lost;
                } else {
                    lost += m.lost;
                }
                received += 1;
                last = m.seq;
            }
            // Caught up with a publisher that is done.
            Ok(None) if stop_at != u64::MAX => break,
            Ok(None) => {}
            Err(RecvError::Overrun) => overruns += 1,
            Err(e) => {
                errors += 1;
                if errors <= 10 {
                    eprintln!("read error after seq {last}: {e}");
                }
                // Go on from the newest message (the sequence check restarts there).
                sub.skip_to_newest();
                first = None;
            }
        }
        let now = sub.writer_epoch();
        assert!(now >= epoch, "the epoch went back from {epoch} to {now}");
        epoch = now;
        if sub.take_restarted() {
            restarts += 1;
        }
    }
    report(
        "RESULT",
        &[
            ("received", received),
            ("lost", lost),
            ("sub_lost", sub.lost()),
            ("first_lost", first_lost),
            ("laps", sub.laps()),
            ("bad", bad),
            ("errors", errors),
            ("overruns", overruns),
            ("restarts", restarts),
            ("first", first.unwrap_or(0)),
            ("last", last),
            ("epoch", epoch),
        ],
    );
}
