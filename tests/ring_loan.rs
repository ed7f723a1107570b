//! Writing in place with `Publisher::loan`: a committed loan arrives exactly as written, a
//! dropped one publishes nothing and takes no sequence number, and a reader the loans lap
//! never returns bytes a loan was writing (the crash test, `ring_crash`, SIGKILLs publishers
//! with loans outstanding).

use podcache_reader::{Start, Subscriber};
use podcache_tests::{bounded, payload, payload_into, payload_matches, shm_tempdir, Rng};
use podcache_writer::{PublishError, Publisher};
use std::collections::VecDeque;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

const CAPACITY: u64 = 1 << 14;
const MAX_MSG: usize = 1000;

fn publisher(path: &Path) -> Publisher {
    Publisher::builder(path).capacity(CAPACITY).max_message(MAX_MSG as u32).create().expect("create ring")
}

#[test]
fn committed_loans_arrive_as_written_and_dropped_loans_publish_nothing() {
    bounded("loan model", 120, || {
        let dir = shm_tempdir();
        let path = dir.path().join("loan.ring");
        let mut p = publisher(&path);
        let mut sub = Subscriber::open(&path).expect("open");
        let mut rng = Rng::new(0x10A2);
        let mut expected: VecDeque<(u64, Vec<u8>)> = VecDeque::new();
        let mut buf = vec![0u8; MAX_MSG];
        let mut scratch = Vec::new();
        // Several times around the ring, with records of every size wrapping at the end.
        for _ in 0..20_000 {
            let seq = p.next_seq();
            match rng.below(4) {
                0 => {
                    payload_into(seq, MAX_MSG, &mut scratch);
                    assert_eq!(p.publish(&scratch).expect("publish"), seq);
                    expected.push_back((seq, scratch.clone()));
                }
                1 | 2 => {
                    let msg = payload(seq, MAX_MSG);
                    let mut loan = p.loan(msg.len()).expect("loan");
                    assert_eq!(loan.len(), msg.len());
                    loan.copy_from_slice(&msg);
                    assert_eq!(loan.commit(), seq);
                    expected.push_back((seq, msg));
                }
                _ => {
                    {
                        let mut loan = p.loan(1 + rng.below_usize(MAX_MSG)).expect("loan");
                        loan.fill(0xEE);
                    } // dropped uncommitted
                    assert_eq!(p.next_seq(), seq, "a dropped loan takes no sequence number");
                }
            }
            // Read everything published so far (the ring never laps this reader).
            while let Some(m) = sub.try_recv(&mut buf).expect("read") {
                let (seq, msg) = expected.pop_front().expect("a message the test did not publish");
                assert_eq!(m.seq, seq);
                assert_eq!(m.lost, 0);
                assert_eq!(&buf[..m.len], &msg[..], "message {seq}");
            }
            assert!(expected.is_empty(), "a published message was not readable");
        }
    });
}

#[test]
fn loans_are_refused_like_publishes() {
    let dir = shm_tempdir();
    let path = dir.path().join("loan.ring");
    let mut p = publisher(&path);
    assert_eq!(p.loan(0).err(), Some(PublishError::Empty));
    assert_eq!(p.loan(MAX_MSG + 1).err(), Some(PublishError::TooLarge { len: MAX_MSG + 1, max: MAX_MSG as u32 }));
    let mut loan = p.loan(MAX_MSG).expect("the largest message");
    loan.fill(1);
    assert_eq!(loan.commit(), 1);
}

#[test]
fn a_reader_lapped_by_loans_never_returns_what_a_loan_was_writing() {
    bounded("lapped by loans", 300, || {
        let dir = shm_tempdir();
        let path = dir.path().join("loan.ring");
        let mut p = publisher(&path);
        let done = Arc::new(AtomicBool::new(false));
        let reader = {
            let (path, done) = (path.clone(), Arc::clone(&done));
            std::thread::spawn(move || {
                let mut sub = Subscriber::builder(&path).start(Start::Oldest).open().expect("open");
                let mut buf = vec![0u8; MAX_MSG];
                let (mut received, mut last) = (0u64, 0u64);
                loop {
                    let finished = done.load(Ordering::Acquire);
                    match sub.recv_spin(&mut buf, Duration::from_millis(10)).expect("read") {
                        Some(m) => {
                            assert!(payload_matches(m.seq, MAX_MSG, &buf[..m.len]), "message {} torn", m.seq);
                            assert!(received == 0 || m.seq == last + 1 + m.lost, "order after {last}: {m:?}");
                            received += 1;
                            last = m.seq;
                        }
                        None if finished => return (received, sub.lost(), last),
                        None => {}
                    }
                }
            })
        };
        // The loans start with garbage, so a torn copy would show it.
        let total = 300_000u64;
        for _ in 0..total {
            let seq = p.next_seq();
            let msg = payload(seq, MAX_MSG);
            let mut loan = p.loan(msg.len()).expect("loan");
            loan.fill(0x5A);
            loan.copy_from_slice(&msg);
            loan.commit();
        }
        done.store(true, Ordering::Release);
        let (received, lost, last) = reader.join().expect("reader thread");
        assert_eq!(last, total, "the reader reaches the last message");
        assert!(received > 0);
        assert!(received + lost <= total, "received {received} + lost {lost} > published {total}");
    });
}
