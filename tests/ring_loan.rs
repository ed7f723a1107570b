//! Writing in place with `Publisher::loan`: a committed loan arrives exactly as written
//! (whichever of its write methods filled it, in whatever pieces and order), a dropped one
//! publishes nothing and takes no sequence number, writes past the loan's end panic (or, through
//! `io::Write`, fail with `WriteZero`) without storing anything, and a reader the loans lap never
//! returns bytes a loan was writing (the crash test, `ring_crash`, SIGKILLs publishers with loans
//! outstanding).

use podcache_reader::Subscriber;
use podcache_tests::{bounded, lapped_reader, payload, payload_into, publish_loans, shm_tempdir, Rng};
use podcache_writer::{Loan, PublishError, Publisher};
use std::collections::VecDeque;
use std::io::Write;
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
                    fill_some_way(&mut loan, &msg, &mut rng);
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

/// Write `msg` into `loan` by one of the loan's methods, chosen by `rng`: whole, in pieces at
/// odd offsets and in reverse order (partial words at both edges of each piece), word by word
/// with `put_u64_le`/`put_u32_le` at unaligned offsets, or through `io::Write` in odd-sized
/// pieces. The loan starts with garbage, so a piece merged wrongly into its word shows.
fn fill_some_way(loan: &mut Loan<'_>, msg: &[u8], rng: &mut Rng) {
    loan.fill(0xEE);
    match rng.below(4) {
        0 => loan.copy_from_slice(msg),
        1 => {
            let mut cuts: Vec<usize> = (0..rng.below_usize(8)).map(|_| rng.below_usize(msg.len() + 1)).collect();
            cuts.extend([0, msg.len()]);
            cuts.sort_unstable();
            for w in cuts.windows(2).rev() {
                loan.write_at(w[0], &msg[w[0]..w[1]]);
            }
        }
        2 => {
            // From a random start, u64s then u32s then single bytes; the bytes before the start
            // with fill_at byte by byte.
            let start = rng.below_usize(msg.len().min(8));
            for (i, &b) in msg[..start].iter().enumerate() {
                loan.fill_at(i, 1, b);
            }
            let mut at = start;
            while at + 8 <= msg.len() {
                loan.put_u64_le(at, u64::from_le_bytes(msg[at..at + 8].try_into().unwrap()));
                at += 8;
            }
            while at + 4 <= msg.len() {
                loan.put_u32_le(at, u32::from_le_bytes(msg[at..at + 4].try_into().unwrap()));
                at += 4;
            }
            loan.write_at(at, &msg[at..]);
        }
        _ => {
            for piece in msg.chunks(1 + rng.below_usize(23)) {
                loan.write_all(piece).expect("fits");
            }
            assert_eq!(loan.remaining(), 0);
        }
    }
}

#[test]
fn every_write_method_stores_exactly_its_bytes() {
    let dir = shm_tempdir();
    let path = dir.path().join("loan.ring");
    let mut p = publisher(&path);
    let mut sub = Subscriber::open(&path).expect("open");
    let mut buf = vec![0u8; MAX_MSG];
    // Lengths around word and 16-byte boundaries; a write at every offset of the first words.
    for len in [1usize, 7, 8, 9, 15, 16, 17, 31, 33, 64, 100] {
        for at in 0..len.min(19) {
            for n in [0usize, 1, 3, 8, 13, 16, 24] {
                if at + n > len {
                    continue;
                }
                let mut want = vec![0x11u8; len];
                let piece: Vec<u8> = (0..n).map(|i| (i as u8).wrapping_mul(41).wrapping_add(at as u8) | 0x80).collect();
                want[at..at + n].copy_from_slice(&piece);
                let mut loan = p.loan(len).expect("loan");
                loan.fill(0x11);
                loan.write_at(at, &piece);
                let seq = loan.commit();
                let m = sub.try_recv(&mut buf).expect("read").expect("the message");
                assert_eq!((m.seq, m.len), (seq, len));
                assert_eq!(&buf[..len], &want[..], "write_at({at}, {n} bytes) into {len}");

                let mut loan = p.loan(len).expect("loan");
                loan.fill(0x22);
                loan.fill_at(at, n, 0x99);
                want.fill(0x22);
                want[at..at + n].fill(0x99);
                loan.commit();
                let m = sub.try_recv(&mut buf).expect("read").expect("the message");
                assert_eq!(&buf[..m.len], &want[..], "fill_at({at}, {n}) into {len}");
            }
            if at + 8 <= len {
                let mut loan = p.loan(len).expect("loan");
                loan.fill(0);
                loan.put_u64_le(at, 0x0102_0304_0506_0708);
                loan.commit();
                let m = sub.try_recv(&mut buf).expect("read").expect("the message");
                assert_eq!(buf[at..at + 8], 0x0102_0304_0506_0708u64.to_le_bytes(), "put_u64_le({at}) into {len}");
                assert!(buf[..at].iter().chain(&buf[at + 8..m.len]).all(|&b| b == 0), "around put_u64_le({at})");
            }
            if at + 4 <= len {
                let mut loan = p.loan(len).expect("loan");
                loan.fill(0xff);
                loan.put_u32_le(at, 0xa1b2_c3d4);
                loan.commit();
                let m = sub.try_recv(&mut buf).expect("read").expect("the message");
                assert_eq!(buf[at..at + 4], 0xa1b2_c3d4u32.to_le_bytes(), "put_u32_le({at}) into {len}");
                assert!(buf[..at].iter().chain(&buf[at + 4..m.len]).all(|&b| b == 0xff), "around put_u32_le({at})");
            }
        }
    }
}

#[test]
fn bulk_sized_writes_and_reads_keep_every_byte_around_them() {
    // From 1 KiB up, writes into the ring and copies out of it are one bulk copy: check its
    // edges at every alignment, through each way in and each way out.
    let dir = shm_tempdir();
    let path = dir.path().join("bulk.ring");
    let mut p = Publisher::builder(&path).capacity(1 << 16).max_message(8192).create().expect("create ring");
    let mut sub = Subscriber::open(&path).expect("open");
    let mut buf = vec![0u8; 8192];
    for len in [1024usize, 1025, 1031, 1039, 2047, 4101, 8192] {
        for at in 0..9 {
            for n in [1024, 1025, len - at] {
                if at + n > len {
                    continue;
                }
                let piece: Vec<u8> = (0..n).map(|i| (i as u8).wrapping_mul(7).wrapping_add(at as u8) | 1).collect();
                let mut want = vec![0x5Au8; len];
                want[at..at + n].copy_from_slice(&piece);
                let what = format!("{n} bytes at {at} of {len}");

                // In through a loan, out through a copy.
                let mut loan = p.loan(len).expect("loan");
                loan.fill(0x5A);
                loan.write_at(at, &piece);
                let seq = loan.commit();
                let m = sub.try_recv(&mut buf).expect("read").expect("the message");
                assert_eq!((m.seq, m.len), (seq, len), "{what}");
                assert_eq!(&buf[..len], &want[..], "loan then copy: {what}");

                // In through publish, out in place from an unaligned start.
                p.publish(&want).expect("publish");
                let (m, got) = sub
                    .try_recv_in_place(|b| {
                        let mut out = vec![0u8; n];
                        b.copy_to(at, &mut out);
                        out
                    })
                    .expect("read")
                    .expect("the message");
                assert_eq!(m.len, len, "{what}");
                assert_eq!(got, piece, "publish then copy_to: {what}");
            }
        }
    }
}

#[test]
fn serialisers_write_straight_into_a_loan() {
    let dir = shm_tempdir();
    let path = dir.path().join("loan.ring");
    let mut p = publisher(&path);
    let mut sub = Subscriber::open(&path).expect("open");
    let mut buf = vec![0u8; MAX_MSG];
    let value = serde_json::json!({ "id": 17, "name": "in place", "xs": [1, 2, 3] });
    let encoded = serde_json::to_vec(&value).expect("encode");
    let mut loan = p.loan(encoded.len()).expect("loan");
    serde_json::to_writer(&mut loan, &value).expect("serialise into the ring");
    assert_eq!(loan.position(), encoded.len());
    loan.commit();
    let m = sub.try_recv(&mut buf).expect("read").expect("the message");
    let back: serde_json::Value = serde_json::from_slice(&buf[..m.len]).expect("decode");
    assert_eq!(back, value);

    // Too small a loan: the serialiser gets an error, nothing panics, nothing is published.
    {
        let mut loan = p.loan(encoded.len() - 1).expect("loan");
        assert!(serde_json::to_writer(&mut loan, &value).is_err(), "one byte short");
        assert_eq!(loan.remaining(), 0, "what fitted was written");
        let err = loan.write(b"x").expect_err("past the end");
        assert_eq!(err.kind(), std::io::ErrorKind::WriteZero);
        assert_eq!(loan.write(b"").expect("an empty write always fits"), 0);
    }
    assert_eq!(sub.try_recv(&mut buf).expect("read"), None, "a dropped loan publishes nothing");

    // write! with a cursor moved back: the second write overwrites the first's tail.
    let mut loan = p.loan(10).expect("loan");
    write!(loan, "abcdefghij").expect("fits");
    loan.set_position(4);
    write!(loan, "XY").expect("fits");
    assert_eq!(loan.position(), 6);
    loan.commit();
    let m = sub.try_recv(&mut buf).expect("read").expect("the message");
    assert_eq!(&buf[..m.len], b"abcdXYghij");
}

/// Every out-of-range write panics with a message naming the call, and stores nothing: the
/// next loan at the same place, committed, holds exactly what it wrote.
#[test]
fn out_of_range_writes_panic_and_store_nothing() {
    let dir = shm_tempdir();
    let path = dir.path().join("loan.ring");
    let mut p = publisher(&path);
    let mut sub = Subscriber::open(&path).expect("open");
    let mut buf = vec![0u8; MAX_MSG];
    type Bad = fn(&mut Loan<'_>);
    let cases: [(&str, Bad); 7] = [
        ("write_at", |l| l.write_at(10, &[1, 2, 3])),
        ("write_at", |l| l.write_at(usize::MAX, &[1])),
        ("fill_at", |l| l.fill_at(5, 8, 1)),
        ("put_u64_le", |l| l.put_u64_le(5, 1)),
        ("put_u32_le", |l| l.put_u32_le(9, 1)),
        ("set_position", |l| l.set_position(13)),
        ("copy_from_slice", |l| l.copy_from_slice(&[0; 13])),
    ];
    for (name, bad) in cases {
        let mut loan = p.loan(12).expect("loan");
        loan.fill(0x33);
        let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| bad(&mut loan)));
        let msg = caught.expect_err("out of range must panic");
        let text = msg.downcast_ref::<String>().map(String::as_str).unwrap_or("");
        assert!(text.contains(name) && text.contains("12 bytes"), "{name}: panic message {text:?}");
        loan.commit();
        let m = sub.try_recv(&mut buf).expect("read").expect("the message");
        assert_eq!(&buf[..m.len], &[0x33; 12], "{name} stored nothing");
    }
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
        let mut buf = vec![0u8; MAX_MSG];
        let reader = lapped_reader(&path, MAX_MSG, &done, move |sub| {
            let m = sub.recv_spin(&mut buf, Duration::from_millis(10)).expect("read")?;
            Some((m, buf[..m.len].to_vec()))
        });
        // The loans start with garbage, so a torn copy would show it.
        let total = 300_000u64;
        publish_loans(&mut p, total, MAX_MSG, 0x5A);
        done.store(true, Ordering::Release);
        let (received, lost, last) = reader.join().expect("reader thread");
        assert_eq!(last, total, "the reader reaches the last message");
        assert!(received > 0);
        assert!(received + lost <= total, "received {received} + lost {lost} > published {total}");
    });
}
