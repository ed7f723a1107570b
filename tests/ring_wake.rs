//! No lost wake-up: two processes ping-pong 64-byte messages over a pair of rings, each
//! blocking in `recv_timeout` under the default wake policy, while another process wakes up at
//! random and spins on the same cores, so that both sides are preempted at every point of
//! their wait.
//!
//! The test binary re-executes itself: the parent publishes round trip `i` on ring `ping` and
//! waits for its echo on ring `pong`; the child waits for `i` on `ping` and publishes it back
//! on `pong`. Every 64th round trip the child first pauses for a random 0..300 µs, around the
//! reader's spin time (twice the 50 µs window), so the parent also goes to sleep in the futex
//! and is woken (or not) by a commit that races its last look at the tail. A receive that
//! times out (after 10 s, far beyond any scheduling delay) although the peer's message is in
//! the ring is a lost wake-up and fails the test; so does a timeout with an empty ring (the
//! peer stalled: it lost a wake-up of its own, or died), and a watchdog fails a run that does
//! not finish at all. A lost wake-up shows as a receive that returns by its timeout (the wait
//! re-checks the ring at its deadline, so it returns the message it slept through): that fails
//! the test too. The parent checks that every echo is the round trip it sent.
//!
//! `PODCACHE_WAKE_ROUND_TRIPS` sets the number of round trips (default 1,000,000);
//! `PODCACHE_WAKE_SPINNERS` the number of spinning processes (default 1).
//!
//! On two cores the default run takes about 30 s in release (about 60 s with two spinners).
//! Against the reader of layout version 3 (futex on a separate `notify` word, tail loaded
//! before the clock) it failed within 150,000 round trips in every run: a receive slept until
//! its timeout with the message in the ring.

use podcache_reader::Subscriber;
use podcache_tests::{bounded, child_role, die_with_parent, env_u64, report, self_command, ChildProc, Rng, Watchdog};
use podcache_writer::Publisher;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const TEST: &str = "blocked_subscribers_never_sleep_through_a_message";
const DIR_ENV: &str = "PODCACHE_WAKE_DIR";
/// Far beyond any scheduling delay: a receive that waits this long slept through a message.
const RECV_TIMEOUT: Duration = Duration::from_secs(10);
/// Generous: the run itself takes about half a minute on two loaded cores.
const WATCHDOG_SECS: u64 = 900;
const MSG: usize = 64;
/// The message that tells the echo child to stop.
const STOP: u64 = u64::MAX;

#[test]
fn blocked_subscribers_never_sleep_through_a_message() {
    match child_role().as_deref() {
        Some("echo") => return echo_child(),
        Some("spinner") => return spinner_child(),
        Some(other) => panic!("unknown role {other}"),
        None => {}
    }
    let round_trips = env_u64("PODCACHE_WAKE_ROUND_TRIPS", 1_000_000);
    let _watchdog = Watchdog::new(TEST, WATCHDOG_SECS);
    let dir = podcache_tests::shm_tempdir();
    let spinners: Vec<ChildProc> = (0..env_u64("PODCACHE_WAKE_SPINNERS", 1))
        .map(|i| ChildProc::spawn(self_command(TEST, "spinner"), &format!("spinner {i}")))
        .collect();

    let mut ping = publisher(&dir.path().join("ping.ring"));
    let mut cmd = self_command(TEST, "echo");
    cmd.env(DIR_ENV, dir.path());
    let mut echo = ChildProc::spawn(cmd, "echo");
    let mut pong = subscriber(&dir.path().join("pong.ring"));
    echo.expect("READY", Duration::from_secs(60));

    let started = Instant::now();
    let mut buf = [0u8; MSG];
    let mut out = [0u8; MSG];
    for i in 0..round_trips {
        out[..8].copy_from_slice(&i.to_le_bytes());
        ping.publish(&out).expect("publish");
        let m = receive(&mut pong, &mut buf, "parent", i);
        assert_eq!((m, u64::from_le_bytes(buf[..8].try_into().unwrap())), (MSG, i), "echo of round trip {i}");
    }
    ping.publish(&STOP.to_le_bytes()).expect("publish stop");
    let done = echo.expect("DONE", Duration::from_secs(60));
    let (status, _) = echo.wait(Duration::from_secs(60));
    assert!(status.success(), "echo: {status}");
    assert_eq!(done.get("echoed"), round_trips, "the echo child echoed every round trip");
    let secs = started.elapsed().as_secs_f64();
    drop(spinners);
    println!(
        "{TEST}: {round_trips} round trips with recv_timeout under the default wake policy and {} \
         spinning processes, no receive timed out, {secs:.1} s ({:.0} round trips/s)",
        env_u64("PODCACHE_WAKE_SPINNERS", 1),
        round_trips as f64 / secs
    );
}

/// Timeouts that do not fit an `Instant` (`Duration::MAX`) wait until a message comes, in
/// every receive flavour, instead of panicking; the buffers `recv_vec` and `recv_typed` use
/// grow to the messages received.
#[test]
fn timeouts_as_long_as_duration_max_wait_instead_of_panicking() {
    if child_role().is_some() {
        return;
    }
    let dir = podcache_tests::shm_tempdir();
    let path = dir.path().join("forever.ring");
    let mut publisher = Publisher::builder(&path).capacity(1 << 16).create().expect("create ring");
    let mut sub = subscriber(&path);
    let big = vec![9u8; 3000];
    bounded("receives with Duration::MAX", 120, || {
        std::thread::scope(|s| {
            s.spawn(|| {
                // Each message some time after the last, so every receive below blocks.
                for step in 0..4u8 {
                    std::thread::sleep(Duration::from_millis(20));
                    match step {
                        0 => publisher.publish(b"a").map(drop),
                        1 => publisher.publish(b"bb").map(drop),
                        2 => publisher.publish(&big).map(drop),
                        _ => publisher.publish_typed("typed").map(drop).map_err(|e| panic!("{e}")),
                    }
                    .expect("publish");
                }
            });
            let mut buf = [0u8; 8];
            let m = sub.recv_timeout(&mut buf, Duration::MAX).expect("recv").expect("a message");
            assert_eq!(&buf[..m.len], b"a");
            let m = sub.recv_spin(&mut buf, Duration::MAX).expect("recv").expect("a message");
            assert_eq!(&buf[..m.len], b"bb");
            let (_, v) = sub.recv_vec(Duration::MAX).expect("recv").expect("a message");
            assert_eq!(v, big);
            let (_, t) = sub.recv_typed::<String>(Duration::MAX).expect("recv").expect("a message");
            assert_eq!(t, "typed");
        });
    });
}

fn publisher(path: &Path) -> Publisher {
    Publisher::builder(path).capacity(1 << 16).max_message(MSG as u32).create().expect("create ring")
}

fn subscriber(path: &Path) -> Subscriber {
    Subscriber::builder(path).wait_ready(Duration::from_secs(60)).open().expect("open the peer's ring")
}

/// Receive the next message with `recv_timeout`. A receive that returns by its timeout fails:
/// with a message (the wait re-checks the ring at its deadline) or with the message still in
/// the ring, the receiver slept through it (a lost wake-up); with an empty ring, the peer
/// stalled. The timeout is far beyond any scheduling delay, so this is no timing assertion:
/// only a receiver that was never woken reaches it.
fn receive(sub: &mut Subscriber, buf: &mut [u8], who: &str, round_trip: u64) -> usize {
    let started = Instant::now();
    let got = sub.recv_timeout(buf, RECV_TIMEOUT).expect("recv");
    let by_timeout = started.elapsed() >= RECV_TIMEOUT;
    match got {
        Some(m) if !by_timeout => m.len,
        Some(_) => panic!(
            "LOST WAKE-UP: {who} slept until its {RECV_TIMEOUT:?} timeout at round trip {round_trip} \
             while the message was in the ring"
        ),
        None => {
            let waiting = sub.backlog_bytes();
            assert_eq!(
                waiting, 0,
                "LOST WAKE-UP: {who} timed out in recv_timeout at round trip {round_trip} while {waiting} \
                 bytes of messages were in the ring"
            );
            panic!("{who}: no message within {RECV_TIMEOUT:?} at round trip {round_trip}: the peer stalled");
        }
    }
}

/// The echo process: receives each round trip on `ping` and sends it back on `pong`, pausing
/// now and then for about the reader's spin time so the parent goes to sleep.
fn echo_child() {
    die_with_parent();
    let _watchdog = Watchdog::new("echo", WATCHDOG_SECS);
    let dir = PathBuf::from(std::env::var_os(DIR_ENV).expect("ring directory"));
    let mut pong = publisher(&dir.join("pong.ring"));
    let mut ping = subscriber(&dir.join("ping.ring"));
    report("READY", &[]);
    let mut rng = Rng::new(0x5eed);
    let mut buf = [0u8; MSG];
    let mut echoed = 0u64;
    loop {
        let len = receive(&mut ping, &mut buf, "echo", echoed);
        if len == 8 && u64::from_le_bytes(buf[..8].try_into().unwrap()) == STOP {
            break;
        }
        if rng.below(64) == 0 {
            let pause = Duration::from_micros(rng.below(300));
            let until = Instant::now() + pause;
            while Instant::now() < until {
                std::hint::spin_loop();
            }
        }
        pong.publish(&buf[..len]).expect("publish echo");
        echoed += 1;
    }
    report("DONE", &[("echoed", echoed)]);
}

/// Load that preempts: sleeps for a random 0..2 ms, then burns a core for a random 20..400 µs,
/// until killed. Waking from its sleep, a spinner preempts whichever ping-pong process runs on
/// its core (the scheduler favours a task that slept) at a random point, for about the
/// reader's spin time; on average it takes a fifth of a core, so the round trips go on.
fn spinner_child() {
    die_with_parent();
    let mut rng = Rng::new(u64::from(std::process::id()));
    loop {
        std::thread::sleep(Duration::from_micros(rng.below(2000)));
        let until = Instant::now() + Duration::from_micros(20 + rng.below(380));
        while Instant::now() < until {
            std::hint::spin_loop();
        }
    }
}
