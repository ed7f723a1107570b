//! Loom models of the broadcast ring protocol: one writer thread and two reader threads on a
//! tiny heap region, checked over every interleaving (up to a preemption bound) and every value
//! a weak-memory load may return.
//!
//! Run with:
//!
//! ```text
//! RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=target/loom \
//!     cargo test -p podcache-format --release --test loom_ring
//! ```
//!
//! `LOOM_MAX_PREEMPTIONS=N` overrides the default bound of each model (a larger bound explores
//! more and takes much longer).
//!
//! The ring is `MIN_DATA_OFFSET` (0x280) + 128 bytes = 96 loom atomics. Records of 8..=16-byte
//! payloads are 24 or 32 bytes, so four of them fill the ring and a fifth wraps (with a padding
//! marker at offset 120) and overwrites the first: the writer laps a reader still at position 0.
//!
//! Record positions used by the models (payload length -> record length):
//!
//! | seq | len | record   | notes                                              |
//! |----:|----:|----------|----------------------------------------------------|
//! | 1   | 16  | 0..32    |                                                    |
//! | 2   | 8   | 32..56   |                                                    |
//! | 3   | 16  | 56..88   |                                                    |
//! | 4   | 16  | 88..120  | ring now holds 120 of 128 bytes                    |
//! | 5   | 13  | 128..160 | padding marker at 120; overwrites seq 1; head = 32 |
//! | 6   | 16  | 160..192 | overwrites seq 2 and 3; head = 88                  |
#![cfg(loom)]

use loom::model::Builder;
use loom::sync::atomic::{fence, AtomicU64, Ordering};
use loom::thread;
use podcache_format::region::Region;
use podcache_format::ring::{Msg, ReadError, RingParams, RingReader, RingWriter, Start, WakePolicy, MIN_DATA_OFFSET};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering as StdOrdering};
use std::sync::Arc;
use std::time::Instant;

/// The ring of every model: 128 bytes of data right after the control block.
const PARAMS: RingParams = RingParams { data_offset: MIN_DATA_OFFSET, capacity: 128, max_msg: 16 };

/// Payload lengths by sequence number (index 0 unused); see the table in the module docs.
const LENS: [usize; 7] = [0, 16, 8, 16, 16, 13, 16];

/// Byte that poisons the payload of a claim that is dropped: no message ever contains it.
const POISON: u8 = 0xEE;

/// The payload of message `seq`: `LENS[seq]` bytes, each derived from `seq` and its index.
fn payload(seq: u64) -> Vec<u8> {
    let len = LENS[usize::try_from(seq).expect("small seq")];
    (0..len).map(|i| (seq as u8).wrapping_mul(0x10).wrapping_add(i as u8)).collect()
}

/// Check `model` over every execution with at most `preemption_bound` preemptions (unless
/// `LOOM_MAX_PREEMPTIONS` says otherwise) and print how many executions that was.
fn check<F>(name: &str, preemption_bound: usize, model: F)
where
    F: Fn() + Sync + Send + 'static,
{
    let mut b = Builder::new();
    if b.preemption_bound.is_none() {
        b.preemption_bound = Some(preemption_bound);
    }
    let bound = b.preemption_bound;
    // Counts executions from outside the model: a std atomic that loom does not track.
    let executions = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&executions);
    let started = Instant::now();
    b.check(move || {
        counter.fetch_add(1, StdOrdering::Relaxed);
        model();
    });
    eprintln!(
        "{name}: {} executions, preemption bound {bound:?}, {:.1?}",
        executions.load(StdOrdering::Relaxed),
        started.elapsed()
    );
}

/// A fresh ring with messages `1..=prefill` already published (before any thread starts, so
/// this part is not interleaved: it only sets the stage).
fn ring(policy: WakePolicy, prefill: u64) -> (Arc<Region>, RingWriter) {
    let region = Arc::new(Region::heap((PARAMS.file_size() / 8) as usize));
    let mut w = RingWriter::create(Arc::clone(&region), &PARAMS, policy);
    for seq in 1..=prefill {
        assert_eq!(w.publish(&payload(seq)), Ok(seq));
    }
    (region, w)
}

/// What a reader saw, checked as it goes.
#[derive(Default)]
struct Seen {
    /// Sequence numbers received, in order.
    seqs: Vec<u64>,
}

impl Seen {
    /// Check one received message: exactly the bytes its sequence implies, and sequence numbers
    /// that account for every message (`seq == prev + 1 + lost`).
    fn check(&mut self, m: Msg, buf: &[u8]) {
        assert!(!buf[..m.len].contains(&POISON), "uncommitted claim bytes visible: {m:?} {:?}", &buf[..m.len]);
        assert_eq!(&buf[..m.len], &payload(m.seq)[..], "payload of {m:?}");
        if let Some(&prev) = self.seqs.last() {
            assert!(m.seq > prev, "seq went backwards: {prev} then {m:?}");
            assert_eq!(m.seq, prev + 1 + m.lost, "loss accounting: {prev} then {m:?}");
        }
        self.seqs.push(m.seq);
    }
}

/// Call `read` up to `tries` times (a bounded reader: it may see nothing, which is fine).
fn read_some(r: &mut RingReader, seen: &mut Seen, tries: usize) {
    let mut buf = [0u8; 16];
    for _ in 0..tries {
        match r.read(&mut buf) {
            Ok(Some(m)) => seen.check(m, &buf),
            Ok(None) => {}
            Err(ReadError::Overrun) if std::env::var("LOOM_ALLOW_OVERRUN").is_ok() => {}
            Err(e) => panic!("read failed: {e:?} ({e})"),
        }
    }
}

/// After every thread is done: the reader drains the ring to the last message, and its totals
/// add up.
fn drain(mut r: RingReader, mut seen: Seen, last: u64) {
    let mut buf = [0u8; 16];
    while let Some(m) = r.read(&mut buf).expect("drain") {
        seen.check(m, &buf);
    }
    assert_eq!(seen.seqs.last().copied(), Some(last), "reader ends at the newest message");
    let first = seen.seqs[0];
    assert_eq!(seen.seqs.len() as u64 + r.lost(), last - first + 1, "received + lost since the first");
}

/// Two readers (started at the oldest message before the writer thread runs) read `tries`
/// times each while `write` runs on the writer thread; then both drain to message `last`.
fn run(policy: WakePolicy, prefill: u64, tries: usize, last: u64, write: fn(&mut RingWriter)) {
    let (region, mut w) = ring(policy, prefill);
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let mut r = RingReader::new(Arc::clone(&region), &PARAMS, Start::Oldest);
            thread::spawn(move || {
                let mut seen = Seen::default();
                read_some(&mut r, &mut seen, tries);
                (r, seen)
            })
        })
        .collect();
    let writer = thread::spawn(move || {
        write(&mut w);
        w
    });
    let w = writer.join().unwrap();
    assert_eq!(w.next_seq(), last + 1);
    for h in readers {
        let (r, seen) = h.join().unwrap();
        drain(r, seen, last);
    }
}

/// Model 1: publish/poll across a wrap with a padding marker, lapping readers still at the
/// first message. Messages 1..=3 are in the ring; the writer publishes 4, 5 (wraps, pads,
/// overwrites 1) and 6 (overwrites 2 and 3) while each reader reads three times.
#[test]
fn publish_poll_wraps_and_laps() {
    check("publish_poll_wraps_and_laps", 2, || {
        run(WakePolicy::Never, 3, 3, 6, |w| {
            for seq in 4..=6 {
                assert_eq!(w.publish(&payload(seq)), Ok(seq));
            }
        });
    });
}

/// Model 1b: as model 1 with `WakePolicy::Always` (each commit also bumps the notify word),
/// fewer messages in flight and a deeper preemption bound.
#[test]
fn publish_poll_with_wake_deeper() {
    check("publish_poll_with_wake_deeper", 3, || {
        run(WakePolicy::Always, 4, 2, 5, |w| {
            assert_eq!(w.publish(&payload(5)), Ok(5));
        });
    });
}

/// Model 2: a claim is filled with poison and dropped (it reserves space past the end of the
/// ring: padding marker at 120, lease over seq 1), then a claim is written in two pieces, 5
/// bytes (a partial word) then 8 (completing it and leaving another partial word), and
/// committed as message 5. Readers never see the poison or a partial message.
#[test]
fn claim_commit_and_dropped_claim() {
    check("claim_commit_and_dropped_claim", 2, || {
        run(WakePolicy::Never, 4, 2, 5, |w| {
            {
                let mut dropped = w.claim(16).unwrap();
                assert_eq!(dropped.write(&[POISON; 16]), 16);
            }
            let p = payload(5);
            let mut c = w.claim(16).unwrap();
            assert_eq!(c.write(&p[..5]), 5);
            assert_eq!(c.write(&p[5..]), 8);
            assert_eq!(c.commit(), Ok(5));
        });
    });
}

/// Model 3: one batch of messages 4, 5 and 6. The batch commits part-way (after 4 and 5, when
/// its uncommitted bytes exceed a quarter of the ring) and then after 6.
#[test]
fn batch_publish() {
    check("batch_publish", 2, || {
        run(WakePolicy::Never, 3, 2, 6, |w| {
            let msgs: Vec<Vec<u8>> = (4..=6).map(payload).collect();
            assert_eq!(w.publish_batch(msgs.iter().map(|m| &m[..])), Ok(Some(6)));
        });
    });
}

// ---------------------------------------------------------------------------------------------
// Negative controls: a reader that skips part of the validation must be caught by loom. The
// reader is written out here over `Region::words`, following the byte map in `ring.rs`.

/// Control-block words (byte offsets from the map in `ring.rs`, divided by 8).
const W_TAIL: usize = 0x100 / 8;
const W_LEASE: usize = 0x180 / 8;
const DATA_WORD: usize = (MIN_DATA_OFFSET / 8) as usize;

/// How much of the real reader's validation the hand-written reader keeps.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Validation {
    /// Acquire fence, then the lease re-check: what `RingReader::read` does.
    FenceAndLease,
    /// The lease re-check with a Relaxed load but no fence before it.
    LeaseWithoutFence,
    /// No re-check at all: trust the Relaxed copy.
    None,
}

/// Read the record at `pos` (known to be below the committed tail) like `RingReader::read`
/// does, with `v` of its validation. Returns `(seq, payload)` or `None` when it detects a lap.
fn hand_read(words: &[AtomicU64], pos: u64, v: Validation) -> Option<(u64, Vec<u8>)> {
    let first = DATA_WORD + ((pos % PARAMS.capacity) / 8) as usize;
    let w0 = words[first].load(Ordering::Relaxed);
    let len = (w0 as u32 as usize).min(16);
    let seq = words[first + 1].load(Ordering::Relaxed);
    let mut bytes = Vec::with_capacity(16);
    for i in 0..len.div_ceil(8) {
        bytes.extend_from_slice(&words[first + 2 + i].load(Ordering::Relaxed).to_le_bytes());
    }
    bytes.truncate(len);
    let lapped = |words: &[AtomicU64]| words[W_LEASE].load(Ordering::Relaxed) > pos + PARAMS.capacity;
    match v {
        Validation::FenceAndLease => {
            fence(Ordering::Acquire);
            if lapped(words) {
                return None;
            }
        }
        Validation::LeaseWithoutFence => {
            if lapped(words) {
                return None;
            }
        }
        Validation::None => {}
    }
    Some((seq, bytes))
}

/// Messages 1..=4 fill the ring; one thread reads message 1 by hand while the writer publishes
/// message 5 over it. Panics (in the model) with "torn read" if the hand reader accepts bytes
/// that are not message `seq`.
fn hand_reader_model(v: Validation) {
    check(&format!("hand_reader({v:?})"), 2, move || {
        let (region, mut w) = ring(WakePolicy::Never, 4);
        let reader_region = Arc::clone(&region);
        let reader = thread::spawn(move || {
            let words = reader_region.words();
            // SYNC: Acquire, pairs with the Release store of tail in RingWriter::commit.
            assert!(words[W_TAIL].load(Ordering::Acquire) > 0);
            if let Some((seq, bytes)) = hand_read(words, 0, v) {
                assert!(seq == 1 || seq == 5, "torn read: seq {seq}");
                assert_eq!(bytes, payload(seq), "torn read: bytes of seq {seq}");
            }
        });
        assert_eq!(w.publish(&payload(5)), Ok(5));
        reader.join().unwrap();
    });
}

/// The hand-written reader with the real validation passes: it is a faithful copy.
#[test]
fn hand_reader_with_fence_and_lease_passes() {
    hand_reader_model(Validation::FenceAndLease);
}

/// Run a model that must fail and return its panic message.
fn expect_model_failure(v: Validation) -> String {
    let err = catch_unwind(AssertUnwindSafe(|| hand_reader_model(v))).expect_err("loom must find a torn read");
    err.downcast_ref::<String>()
        .cloned()
        .or_else(|| err.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_default()
}

/// Negative control: without the lease re-check, loom finds a read torn between message 1 and
/// the message 5 overwriting it.
#[test]
fn negative_control_no_validation_is_caught() {
    let msg = expect_model_failure(Validation::None);
    assert!(msg.contains("torn read"), "unexpected failure: {msg}");
}

/// Negative control: with the lease re-check but no Acquire fence before it, loom finds an
/// execution where a copied word is from message 5 yet the lease load still returns the old
/// lease (nothing orders it after the data loads), so the torn copy is accepted.
#[test]
fn negative_control_missing_fence_is_caught() {
    let msg = expect_model_failure(Validation::LeaseWithoutFence);
    assert!(msg.contains("torn read"), "unexpected failure: {msg}");
}
