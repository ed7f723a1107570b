//! Zero-copy receive (`Subscriber::try_recv_in_place` and its waiting forms): the closure sees
//! the message in the ring; a result is returned only for bytes that were validated, so a
//! reader lapped while its closure runs never returns what it saw, and a corrupted record is
//! an error, not a result.

use podcache_reader::{RecvError, Subscriber};
use podcache_tests::{bounded, lapped_reader, payload, publish_loans, shm_tempdir};
use podcache_writer::Publisher;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
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
        let calls = Arc::new(AtomicU64::new(0));
        let reader = {
            let calls = Arc::clone(&calls);
            lapped_reader(&path, MAX_MSG, &done, move |sub| {
                sub.recv_spin_in_place(Duration::from_millis(10), |b| {
                    // A slow closure every so often, so the writer laps it mid-read.
                    if calls.fetch_add(1, Ordering::Relaxed) % 64 == 63 {
                        std::thread::yield_now();
                    }
                    b.to_vec()
                })
                .expect("read")
            })
        };
        let total = 300_000u64;
        publish_loans(&mut p, total, MAX_MSG, 0xC3);
        done.store(true, Ordering::Release);
        let (received, lost, last) = reader.join().expect("reader thread");
        assert_eq!(last, total, "the reader reaches the last message");
        assert!(calls.load(Ordering::Relaxed) >= received);
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
