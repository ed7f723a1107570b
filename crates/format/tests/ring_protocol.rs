//! The ring protocol on a heap region: order, wrap-around, lapping, claims, batches, recovery.
#![cfg(not(loom))]

use podcache_format::region::Region;
use podcache_format::ring::{Msg, ReadError, RingParams, RingReader, RingWriter, Start, WakePolicy};
use std::sync::atomic::Ordering;
use std::sync::Arc;

fn params(capacity: u64, max_msg: u32) -> RingParams {
    RingParams { data_offset: 4096, capacity, max_msg, checksums: true }
}

fn region(p: &RingParams) -> Arc<Region> {
    Arc::new(Region::heap((p.file_size() / 8) as usize))
}

/// Payload for sequence `seq`: its length and bytes are derived from `seq`.
fn payload(seq: u64, max: u32) -> Vec<u8> {
    let len = 1 + (seq.wrapping_mul(2654435761) % u64::from(max)) as usize;
    (0..len).map(|i| (seq as usize + i * 31) as u8).collect()
}

fn recv(r: &mut RingReader, buf: &mut [u8]) -> Option<(Msg, Vec<u8>)> {
    r.read(buf).unwrap().map(|m| (m, buf[..m.len].to_vec()))
}

#[test]
fn messages_arrive_in_order_across_many_wraps() {
    let p = params(4096, 200);
    let reg = region(&p);
    let mut w = RingWriter::create(reg.clone(), &p, WakePolicy::Never);
    let mut r = RingReader::new(reg, &p, Start::Oldest);
    let mut buf = vec![0u8; 200];
    assert!(r.read(&mut buf).unwrap().is_none());
    for seq in 1..=20_000u64 {
        assert_eq!(w.publish(&payload(seq, 200)).unwrap(), seq);
        let (m, got) = recv(&mut r, &mut buf).expect("a message");
        assert_eq!((m.seq, m.lost), (seq, 0));
        assert_eq!(got, payload(seq, 200), "seq {seq}");
    }
    assert!(r.read(&mut buf).unwrap().is_none());
}

#[test]
fn lapped_reader_reports_exact_loss_and_continues() {
    let p = params(4096, 64);
    let reg = region(&p);
    let mut w = RingWriter::create(reg.clone(), &p, WakePolicy::Never);
    let mut r = RingReader::new(reg, &p, Start::Oldest);
    let mut buf = vec![0u8; 64];
    w.publish(&payload(1, 64)).unwrap();
    assert_eq!(recv(&mut r, &mut buf).unwrap().0.seq, 1);
    for seq in 2..=10_000u64 {
        w.publish(&payload(seq, 64)).unwrap();
    }
    let (first, bytes) = recv(&mut r, &mut buf).unwrap();
    assert!(first.seq > 9_000, "jumped to the oldest intact message, got {}", first.seq);
    assert_eq!(first.lost, first.seq - 2, "lost exactly the messages between");
    assert_eq!(bytes, payload(first.seq, 64));
    let mut last = first.seq;
    while let Some((m, bytes)) = recv(&mut r, &mut buf) {
        assert_eq!((m.seq, m.lost), (last + 1, 0));
        assert_eq!(bytes, payload(m.seq, 64));
        last = m.seq;
    }
    assert_eq!(last, 10_000);
    assert_eq!(r.lost() + 1 + (last - first.seq + 1), 10_000);
    assert_eq!(r.laps(), 1);
}

#[test]
fn buffer_too_small_does_not_consume() {
    let p = params(4096, 100);
    let reg = region(&p);
    let mut w = RingWriter::create(reg.clone(), &p, WakePolicy::Never);
    let mut r = RingReader::new(reg, &p, Start::Oldest);
    w.publish(&[7u8; 50]).unwrap();
    assert_eq!(r.read(&mut [0u8; 10]), Err(ReadError::BufferTooSmall { needed: 50 }));
    let mut buf = [0u8; 50];
    assert_eq!(r.read(&mut buf).unwrap().unwrap().len, 50);
}

#[test]
fn claims_write_in_place_and_uncommitted_claims_vanish() {
    let p = params(4096, 500);
    let reg = region(&p);
    let mut w = RingWriter::create(reg.clone(), &p, WakePolicy::Never);
    let mut r = RingReader::new(reg, &p, Start::Oldest);
    let mut buf = vec![0u8; 500];
    let whole: Vec<u8> = (0..300u32).map(|i| i as u8).collect();
    for round in 0..50 {
        let mut c = w.claim(500).unwrap();
        // Odd-sized pieces exercise the partial-word path.
        for piece in whole.chunks(7 + round % 5) {
            assert_eq!(c.write(piece), piece.len());
        }
        assert_eq!(c.len(), 300);
        c.commit().unwrap();
        {
            // Goes out of scope uncommitted.
            let mut dropped = w.claim(100).unwrap();
            dropped.write(b"never seen");
        }
        let (m, got) = recv(&mut r, &mut buf).unwrap();
        assert_eq!((got, m.lost), (whole.clone(), 0));
        assert!(r.read(&mut buf).unwrap().is_none());
    }
    let mut full = w.claim(3).unwrap();
    assert_eq!(full.write(b"abcdef"), 3);
    assert_eq!(full.commit().unwrap(), 51);
    assert!(w.claim(501).is_err());
    assert!(w.claim(10).unwrap().commit().is_err(), "empty claims are not published");
}

#[test]
fn batches_commit_together_and_reject_bad_members() {
    let p = params(4096, 64);
    let reg = region(&p);
    let mut w = RingWriter::create(reg.clone(), &p, WakePolicy::Never);
    let mut r = RingReader::new(reg, &p, Start::Oldest);
    let msgs: Vec<Vec<u8>> = (1..=500u64).map(|s| payload(s, 64)).collect();
    assert!(w.publish_batch([&b"ok"[..], &[][..]]).is_err());
    assert!(r.read(&mut [0u8; 64]).unwrap().is_none(), "a refused batch publishes nothing");
    assert_eq!(w.publish_batch(msgs.iter().take(20).map(|m| &m[..])).unwrap(), Some(20));
    let mut buf = [0u8; 64];
    for s in 1..=20u64 {
        let (m, got) = recv(&mut r, &mut buf).unwrap();
        assert_eq!((m.seq, got), (s, payload(s, 64)));
    }
    // A batch larger than the ring commits in parts and the slow reader is lapped, not fed
    // garbage.
    w.publish_batch(msgs.iter().skip(20).map(|m| &m[..])).unwrap();
    let (m, _) = recv(&mut r, &mut buf).unwrap();
    assert_eq!(m.lost, m.seq - 21);
}

#[test]
fn start_newest_sees_only_new_messages() {
    let p = params(4096, 64);
    let reg = region(&p);
    let mut w = RingWriter::create(reg.clone(), &p, WakePolicy::Never);
    w.publish(b"old").unwrap();
    let mut r = RingReader::new(reg, &p, Start::Newest);
    assert!(r.read(&mut [0u8; 64]).unwrap().is_none());
    w.publish(b"new").unwrap();
    let mut buf = [0u8; 64];
    let (m, got) = recv(&mut r, &mut buf).unwrap();
    assert_eq!((m.seq, m.lost, &got[..]), (2, 0, &b"new"[..]));
}

#[test]
fn a_new_writer_continues_the_sequence_after_an_unfinished_claim() {
    let p = params(4096, 64);
    let reg = region(&p);
    let mut w = RingWriter::create(reg.clone(), &p, WakePolicy::Never);
    let mut r = RingReader::new(reg.clone(), &p, Start::Oldest);
    for s in 1..=300u64 {
        w.publish(&payload(s, 64)).unwrap();
    }
    // The "crash": a claim half-written and never committed, then the writer is gone.
    {
        let mut c = w.claim(64).unwrap();
        c.write(&[0xAA; 40]);
    }
    drop(w);
    let (mut w2, rec) = RingWriter::attach(reg, &p, WakePolicy::Never);
    assert!(!rec.discarded);
    assert!(rec.intact > 0);
    assert_eq!(w2.next_seq(), 301);
    w2.publish(&payload(301, 64)).unwrap();
    let mut buf = [0u8; 64];
    let mut last = 0;
    while let Some((m, got)) = recv(&mut r, &mut buf) {
        assert_eq!(got, payload(m.seq, 64));
        last = m.seq;
    }
    assert_eq!(last, 301);
}

#[test]
fn attach_to_a_damaged_ring_empties_it_and_readers_see_a_lap() {
    let p = params(4096, 64);
    let reg = region(&p);
    let mut w = RingWriter::create(reg.clone(), &p, WakePolicy::Never);
    let mut r = RingReader::new(reg.clone(), &p, Start::Oldest);
    for s in 1..=10u64 {
        w.publish(&payload(s, 64)).unwrap();
    }
    drop(w);
    let mut buf = [0u8; 64];
    assert_eq!(recv(&mut r, &mut buf).unwrap().0.seq, 1);
    // Flip a payload byte of the second record: its crc no longer matches.
    let word = &reg.words()[(4096 + r.position() as usize) / 8 + 2];
    word.store(word.load(std::sync::atomic::Ordering::Relaxed) ^ 1, std::sync::atomic::Ordering::Relaxed);
    assert!(matches!(r.read(&mut buf), Err(ReadError::Corrupt { reason: "checksum mismatch", .. })));
    let (mut w2, rec) = RingWriter::attach(reg.clone(), &p, WakePolicy::Never);
    assert!(rec.discarded);
    assert_eq!(w2.next_seq(), 11);
    w2.publish(&payload(11, 64)).unwrap();
    let (m, got) = recv(&mut r, &mut buf).unwrap();
    assert_eq!((m.seq, m.lost, got), (11, 9, payload(11, 64)));
}

#[test]
fn concurrent_reader_never_sees_a_bad_message() {
    let p = params(1 << 14, 256);
    let reg = region(&p);
    let mut w = RingWriter::create(reg.clone(), &p, WakePolicy::Never);
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let mut r = RingReader::new(reg.clone(), &p, Start::Oldest);
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 256];
                // The readers opened the empty ring at its oldest message: losses are counted
                // from the first message published (sequence 1), even if a lap comes first.
                let (mut got, mut next) = (0u64, 1u64);
                while next <= 200_000 {
                    if let Some(m) = r.read(&mut buf).unwrap() {
                        assert_eq!(m.seq, next + m.lost);
                        assert_eq!(&buf[..m.len], &payload(m.seq, 256)[..]);
                        next = m.seq + 1;
                        got += 1;
                    }
                }
                (got, r.lost())
            })
        })
        .collect();
    for s in 1..=200_000u64 {
        w.publish(&payload(s, 256)).unwrap();
    }
    for h in readers {
        let (got, lost) = h.join().unwrap();
        assert_eq!(got + lost, 200_000);
    }
}

// `RingReader::read` takes a straight-line path for a reader in step with the writer (it read
// the previous message) and leaves everything else to its general path. The tests below put
// such a reader in front of each case the straight line must decline; each fails if the
// straight line drew a conclusion of its own.

/// Word `i` of the heap region.
fn word(reg: &Region, i: usize) -> &std::sync::atomic::AtomicU64 {
    &reg.words()[i]
}

const LEASE_WORD: usize = 0x180 / 8;

#[test]
fn an_in_step_reader_crosses_padding_at_the_end_of_the_ring() {
    let p = params(1024, 100);
    let reg = region(&p);
    let mut w = RingWriter::create(reg.clone(), &p, WakePolicy::Never);
    let mut r = RingReader::new(reg, &p, Start::Oldest);
    let mut buf = [0u8; 100];
    let mut padded = 0;
    // 96-byte records (16 B header, 80 B payload) do not divide 1024, so most wraps leave a
    // gap that the writer fills with a padding marker.
    for seq in 1..=200u64 {
        let msg = [seq as u8; 80];
        let before = r.position();
        w.publish(&msg).unwrap();
        let (m, got) = recv(&mut r, &mut buf).expect("a message");
        assert_eq!((m.seq, m.lost, &got[..]), (seq, 0, &msg[..]));
        // Crossed the end of the ring: the record did not start where the last one ended.
        if r.position() - before != 96 {
            assert_eq!(r.position() % 1024, 96, "the record after padding starts at offset 0");
            padded += 1;
        }
    }
    assert!(padded >= 10, "padding was crossed {padded} times");
    assert_eq!(r.laps(), 0);
}

#[test]
fn an_in_step_reader_whose_record_is_leased_away_reports_a_lap() {
    // The writer leases space a chunk (capacity / 16) ahead of what it writes, so there is a
    // moment when the lease already covers the reader's record but the record is intact: the
    // bytes copied are exactly what was committed, and only the lease says they may not be.
    let p = params(4096, 64);
    let reg = region(&p);
    let mut w = RingWriter::create(reg.clone(), &p, WakePolicy::Never);
    let mut r = RingReader::new(reg.clone(), &p, Start::Oldest);
    let mut buf = [0u8; 64];
    w.publish(&payload(1, 64)).unwrap();
    w.publish(&payload(2, 64)).unwrap();
    assert_eq!(recv(&mut r, &mut buf).unwrap().0.seq, 1);
    let pos = r.position();
    let mut seq = 2;
    while word(&reg, LEASE_WORD).load(std::sync::atomic::Ordering::Relaxed) <= pos + 4096 {
        seq += 1;
        w.publish(&payload(seq, 64)).unwrap();
    }
    assert!(w.tail() <= pos + 4096, "the record at the reader's position is not overwritten yet");
    let (m, got) = recv(&mut r, &mut buf).unwrap();
    assert_eq!(r.laps(), 1, "the lease, not the intact bytes, decides");
    assert!(m.seq > 2 && m.lost == m.seq - 2, "resynced to the oldest intact message: {m:?}");
    assert_eq!(got, payload(m.seq, 64));
}

#[test]
fn an_in_step_reader_with_a_small_buffer_is_told_and_keeps_its_place() {
    let p = params(4096, 100);
    let reg = region(&p);
    let mut w = RingWriter::create(reg.clone(), &p, WakePolicy::Never);
    let mut r = RingReader::new(reg, &p, Start::Oldest);
    w.publish(&[1u8; 10]).unwrap();
    w.publish(&[2u8; 50]).unwrap();
    assert_eq!(r.read(&mut [0u8; 20]).unwrap().unwrap().seq, 1);
    assert_eq!(r.read(&mut [0u8; 20]), Err(ReadError::BufferTooSmall { needed: 50 }));
    let mut buf = [0u8; 50];
    let m = r.read(&mut buf).unwrap().unwrap();
    assert_eq!((m.seq, m.len, m.lost, buf), (2, 50, 0, [2u8; 50]));
}

#[test]
fn an_in_step_reader_reports_corrupt_records() {
    type Damage = fn(&Region, usize);
    let cases: [(&str, Damage); 4] = [
        ("checksum mismatch", |reg, first| {
            let w = word(reg, first + 2);
            w.store(w.load(std::sync::atomic::Ordering::Relaxed) ^ 1, std::sync::atomic::Ordering::Relaxed);
        }),
        ("sequence number out of order", |reg, first| {
            let w = word(reg, first + 1);
            w.store(w.load(std::sync::atomic::Ordering::Relaxed) + 1, std::sync::atomic::Ordering::Relaxed);
        }),
        ("record length out of range", |reg, first| {
            word(reg, first).store(65, std::sync::atomic::Ordering::Relaxed);
        }),
        ("record length out of range", |reg, first| {
            word(reg, first).store(0, std::sync::atomic::Ordering::Relaxed);
        }),
    ];
    for (reason, damage) in cases {
        let p = params(4096, 64);
        let reg = region(&p);
        let mut w = RingWriter::create(reg.clone(), &p, WakePolicy::Never);
        let mut r = RingReader::new(reg.clone(), &p, Start::Oldest);
        // Larger than the ring's largest message: the buffer does not refuse a bad length.
        let mut buf = [0u8; 128];
        w.publish(&payload(1, 64)).unwrap();
        w.publish(&payload(2, 64)).unwrap();
        assert_eq!(recv(&mut r, &mut buf).unwrap().0.seq, 1);
        damage(&reg, (4096 + r.position() as usize) / 8);
        let pos = r.position();
        assert_eq!(r.read(&mut buf), Err(ReadError::Corrupt { pos, reason }), "{reason}");
        assert_eq!(r.position(), pos, "{reason}: nothing consumed");
    }
}

/// Store a record at word `first` exactly as a writer would (a valid checksum, docs/design.md
/// §6), whatever its fields say: only the check aimed at can refuse it.
fn forge(reg: &Region, first: usize, len: u32, seq: u64, payload: &[u8]) {
    use std::sync::atomic::Ordering::Relaxed;
    let m = seq.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let crc = crc32fast::hash(payload) ^ (m >> 32) as u32 ^ m as u32;
    word(reg, first).store(u64::from(len) | u64::from(crc) << 32, Relaxed);
    word(reg, first + 1).store(seq, Relaxed);
    for (i, chunk) in payload.chunks(8).enumerate() {
        let mut bytes = [0u8; 8];
        bytes[..chunk.len()].copy_from_slice(chunk);
        word(reg, first + 2 + i).store(u64::from_le_bytes(bytes), Relaxed);
    }
}

#[test]
fn an_in_step_reader_refuses_well_checksummed_records_that_break_the_format() {
    // (what the record at the reader's position says, at which offset, what the reader says)
    let cases: [(u32, u64, u64, &str); 3] = [
        (65, 2, 0, "record length out of range"),         // over max_msg
        (64, 3, 0, "sequence number out of order"),       // skips a number
        (64, 2, 4096 - 24, "record length out of range"), // runs past the end of the ring
    ];
    for (len, seq, at, reason) in cases {
        let p = params(4096, 64);
        // Room after the ring: a record running past its end still reads mapped memory.
        let reg = Arc::new(Region::heap((p.file_size() / 8) as usize + 64));
        let mut w = RingWriter::create(reg.clone(), &p, WakePolicy::Never);
        let mut r = RingReader::new(reg.clone(), &p, Start::Oldest);
        let mut buf = [0u8; 4096];
        // Messages up to the offset wanted, plus one to forge over.
        let mut n = 0;
        while w.tail() < at || n < 2 {
            n += 1;
            w.publish(&[n as u8; 8]).unwrap();
        }
        while r.position() < w.tail() - 24 {
            recv(&mut r, &mut buf).unwrap();
        }
        let pos = r.position();
        let first = (4096 + pos as usize) / 8;
        // The reader expects message `n` there; `seq` 2 stands for that one, 3 for the next.
        forge(&reg, first, len, seq - 2 + n, &vec![9u8; len as usize]);
        assert_eq!(r.read(&mut buf), Err(ReadError::Corrupt { pos, reason }), "{reason}");
        assert_eq!(r.position(), pos, "{reason}: nothing consumed");
    }
}

const HEAD_WORD: usize = 0x188 / 8;

/// A reader that starts at the oldest message while `head` is a padding marker takes the
/// record after the marker (the first of the next lap) as its loss baseline: when it is lapped
/// before its first read, the first message it gets counts every message it lost.
#[test]
fn start_oldest_keeps_its_loss_baseline_when_head_is_a_padding_marker() {
    let p = params(1024, 100);
    let reg = region(&p);
    let mut w = RingWriter::create(reg.clone(), &p, WakePolicy::Never);
    // 96-byte records leave a 64-byte gap at the end of each lap, filled with a padding marker;
    // publish until the lease moves head onto one.
    let head_is_padding = |reg: &Region| {
        let head = word(reg, HEAD_WORD).load(Ordering::Relaxed);
        let at = (p.data_offset + head % p.capacity) / 8;
        word(reg, at as usize).load(Ordering::Relaxed) as u32 == u32::MAX
    };
    while !head_is_padding(&reg) {
        w.publish(&[7u8; 80]).unwrap();
        assert!(w.next_seq() < 1000, "head never landed on a padding marker");
    }
    let oldest = w.next_seq() - (w.tail() - word(&reg, HEAD_WORD).load(Ordering::Relaxed)) / 96;
    let mut r = RingReader::new(reg.clone(), &p, Start::Oldest);
    // Lap the reader before its first read.
    for _ in 0..40 {
        w.publish(&[7u8; 80]).unwrap();
    }
    let mut buf = [0u8; 100];
    let m = r.read(&mut buf).unwrap().expect("a message");
    assert!(r.laps() > 0, "the reader was lapped");
    assert_eq!(m.lost, m.seq - oldest, "lost counts from the oldest message there was at open ({oldest})");
    assert_eq!(r.lost(), m.lost);
}

/// No ring carries messages over `MAX_MESSAGE`, whatever its capacity: a file that claims more
/// is refused, so a reader never sizes a buffer by it.
#[test]
fn max_message_is_capped_by_the_format() {
    use podcache_format::ring::{ParamsError, MAX_MESSAGE};
    let cap = 1u64 << 34;
    assert_eq!(RingParams::max_msg_limit(cap), MAX_MESSAGE);
    assert!(RingParams::new(cap, MAX_MESSAGE as u32).is_ok());
    let too_big = RingParams { data_offset: 4096, capacity: cap, max_msg: u32::MAX - 7, checksums: true };
    assert_eq!(too_big.check(), Err(ParamsError::BadMaxMessage { max_msg: u32::MAX - 7, limit: MAX_MESSAGE }));
    // Small rings keep their quarter-of-the-ring limit.
    assert_eq!(RingParams::max_msg_limit(1024), 240);
}

/// `wait` without a deadline returns at once when a message is waiting, and after the
/// writer's wake when one is published later (a watchdog thread would catch a hang).
#[test]
fn wait_without_a_deadline_returns_for_a_message() {
    let p = params(4096, 100);
    let reg = region(&p);
    let mut w = RingWriter::create(reg.clone(), &p, WakePolicy::DEFAULT);
    let mut r = RingReader::new(reg, &p, Start::Oldest);
    w.publish(b"first").unwrap();
    assert!(r.wait(None));
    let mut buf = [0u8; 100];
    assert_eq!(recv(&mut r, &mut buf).unwrap().1, b"first");
    let (tx, rx) = std::sync::mpsc::channel();
    let watchdog = std::thread::spawn(move || {
        if rx.recv_timeout(std::time::Duration::from_secs(60)).is_err() {
            eprintln!("WATCHDOG: wait(None) did not return");
            std::process::abort();
        }
    });
    let publisher = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(20));
        w.publish(b"second").unwrap();
        w
    });
    assert!(r.wait(None));
    tx.send(()).unwrap();
    watchdog.join().unwrap();
    drop(publisher.join().unwrap());
    assert_eq!(recv(&mut r, &mut buf).unwrap().1, b"second");
}

/// A reader that starts at the oldest message of an empty ring and is lapped before its first
/// read counts as lost every message it missed: the baseline is the writer's next sequence.
#[test]
fn start_oldest_on_an_empty_ring_counts_what_a_first_lap_lost() {
    let p = params(1024, 100);
    let reg = region(&p);
    let mut w = RingWriter::create(reg.clone(), &p, WakePolicy::Never);
    let first = w.next_seq();
    let mut r = RingReader::new(reg.clone(), &p, Start::Oldest);
    for _ in 0..40 {
        w.publish(&[7u8; 80]).unwrap();
    }
    let mut buf = [0u8; 100];
    let m = r.read(&mut buf).unwrap().expect("a message");
    assert!(r.laps() > 0, "the reader was lapped");
    assert_eq!(m.lost, m.seq - first, "lost counts from the first message published after open");
    let mut seen = 1;
    while r.read(&mut buf).unwrap().is_some() {
        seen += 1;
    }
    assert_eq!(m.lost + seen, 40, "every message is read or counted lost");
    assert_eq!(r.lost(), m.lost);
}
