//! Zero-copy receive (`Subscriber::try_recv_in_place` and its waiting forms): the closure sees
//! the message in the ring; a result is returned only for bytes that were validated, so a
//! reader lapped while its closure runs never returns what it saw, and a corrupted record is
//! an error, not a result.

use podcache_reader::{RecvError, Start, Subscriber};
use podcache_tests::{bounded, payload, payload_matches, shm_tempdir};
use podcache_writer::Publisher;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

const CAPACITY: u64 = 1 << 14;
// Above 1 KiB, so that copies take the bulk path (`region::bulk_copy`) as well as the word loops.
const MAX_MSG: usize = 3000;

fn publisher(path: &Path) -> Publisher {
    Publisher::builder(path).capacity(CAPACITY).max_message(MAX_MSG as u32).create().expect("create ring")
}

#[test]
fn in_place_reads_see_what_copies_see() {
    bounded("in place", 120, || {
        let dir = shm_tempdir();
        let path = dir.path().join("r.ring");
        let mut p = publisher(&path);
        let mut sub = Subscriber::open(&path).expect("open");
        let mut copier = Subscriber::open(&path).expect("open");
        let mut buf = vec![0u8; MAX_MSG];
        for seq in 1..=10_000u64 {
            let msg = payload(seq, MAX_MSG);
            p.publish(&msg).expect("publish");
            let c = copier.try_recv(&mut buf).expect("read").expect("a message");
            assert_eq!(&buf[..c.len], &msg[..]);
            match seq % 3 {
                0 => {
                    let (m, bytes) = sub.try_recv_in_place(|b| b.to_vec()).expect("read").expect("a message");
                    assert_eq!((m.seq, m.lost, m.len), (seq, 0, bytes.len()));
                    assert_eq!(bytes, msg, "message {seq}");
                }
                1 => {
                    let (m, ends) =
                        sub.try_recv_in_place(|b| (b.byte(0), b.byte(b.len() - 1))).expect("read").expect("a message");
                    assert_eq!((m.seq, m.len), (seq, msg.len()));
                    assert_eq!(ends, (msg[0], msg[msg.len() - 1]));
                }
                _ => {
                    let (m, word) = sub
                        .try_recv_in_place(|b| (b.len() >= 8).then(|| b.u64_le_at(b.len() - 8)))
                        .expect("read")
                        .expect("a message");
                    assert_eq!(m.seq, seq);
                    if let Some(word) = word {
                        assert_eq!(word.to_le_bytes(), msg[msg.len() - 8..]);
                    }
                }
            }
        }
        assert!(sub.try_recv_in_place(|_| ()).expect("read").is_none(), "nothing left");
    });
}

#[test]
fn a_reader_lapped_while_its_closure_runs_never_returns_what_it_saw() {
    bounded("lapped in place", 300, || {
        let dir = shm_tempdir();
        let path = dir.path().join("r.ring");
        let mut p = publisher(&path);
        let done = Arc::new(AtomicBool::new(false));
        let reader = {
            let (path, done) = (path.clone(), Arc::clone(&done));
            std::thread::spawn(move || {
                let mut sub = Subscriber::builder(&path).start(Start::Oldest).open().expect("open");
                let (mut received, mut calls, mut last, mut slow) = (0u64, 0u64, 0u64, 0u64);
                loop {
                    let finished = done.load(Ordering::Acquire);
                    let got = sub
                        .recv_spin_in_place(Duration::from_millis(10), |b| {
                            calls += 1;
                            // A slow closure every so often, so the writer laps it mid-read.
                            slow += 1;
                            if slow.is_multiple_of(64) {
                                std::thread::yield_now();
                            }
                            b.to_vec()
                        })
                        .expect("read");
                    match got {
                        Some((m, bytes)) => {
                            assert!(payload_matches(m.seq, MAX_MSG, &bytes), "message {} torn", m.seq);
                            assert!(received == 0 || m.seq == last + 1 + m.lost, "order after {last}: {m:?}");
                            received += 1;
                            last = m.seq;
                        }
                        None if finished => return (received, calls, sub.lost(), last),
                        None => {}
                    }
                }
            })
        };
        let total = 300_000u64;
        for _ in 0..total {
            let seq = p.next_seq();
            let msg = payload(seq, MAX_MSG);
            let mut loan = p.loan(msg.len()).expect("loan");
            loan.fill(0xC3);
            loan.copy_from_slice(&msg);
            loan.commit();
        }
        done.store(true, Ordering::Release);
        let (received, calls, lost, last) = reader.join().expect("reader thread");
        assert_eq!(last, total, "the reader reaches the last message");
        assert!(calls >= received);
        assert!(received + lost <= total, "received {received} + lost {lost} > published {total}");
    });
}

#[test]
fn a_corrupted_payload_is_an_error_not_a_result() {
    let dir = shm_tempdir();
    let path = dir.path().join("r.ring");
    let mut p = publisher(&path);
    p.publish(&[1u8; 40]).expect("publish");
    // The first record's payload: data region at 4096, after its 16-byte header.
    let file = std::fs::OpenOptions::new().write(true).open(&path).expect("open for writing");
    file.write_all_at(&[2u8], 4096 + 16 + 5).expect("corrupt a byte");
    let mut sub = Subscriber::open(&path).expect("open");
    let mut seen = 0;
    let got = sub.try_recv_in_place(|b| {
        seen += 1;
        b.to_vec()
    });
    assert!(matches!(got, Err(RecvError::Corrupt { .. })), "{got:?}");
    assert_eq!(seen, 1, "the closure ran on the bytes, its result was not returned");
}
