//! Loom models of the broadcast ring protocol (`podcache_format::ring`): one writer thread
//! and one or two reader threads on a tiny heap region, checked over every interleaving (up to
//! a preemption bound) and every value a weak-memory load may return.
//!
//! ```text
//! RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=target/loom \
//!     cargo test -p podcache-format --release --test loom_ring
//! ```
//!
//! (`-- --nocapture` prints how many executions each model explored.) `LOOM_MAX_PREEMPTIONS=N`
//! overrides every model's preemption bound; `LOOM_MAX_BRANCHES` the branch limit.
//!
//! What every reader checks, in every execution: each message it receives has exactly the bytes
//! its sequence number implies (so never a torn or partial message, never a dropped claim's
//! poison); sequence numbers increase with `seq == previous + 1 + lost`; a read never fails
//! (no `Corrupt`; no `Overrun` either: the writer laps a reader at most twice in these models,
//! far fewer times than a read retries). After the writer is done, every reader drains the
//! ring to the last message and `received + lost` adds up. Each model also checks it is not
//! vacuous: some execution lapped its lapped reader, or had its poller receive a message.
//!
//! The ring is `MIN_DATA_OFFSET` (0x280) + 128 bytes = 96 loom atomics. Payloads of 8..=16
//! bytes make records of 24 or 32 bytes, so four fill the ring and a fifth wraps (with a
//! padding marker at offset 120) and overwrites the first. Messages `1..=prefill` are
//! published before any thread starts (not interleaved: they only set the stage):
//!
//! | seq | len | record   | notes                                              |
//! |----:|----:|----------|----------------------------------------------------|
//! | 1   | 16  | 0..32    |                                                    |
//! | 2   | 8   | 32..56   |                                                    |
//! | 3   | 16  | 56..88   |                                                    |
//! | 4   | 16  | 88..120  | the ring now holds 120 of 128 bytes                |
//! | 5   | 13  | 128..160 | padding marker at 120; overwrites 1; head = 32     |
//! | 6   | 16  | 160..192 | overwrites 2 and 3; head = 88                      |
//!
//! The wait models (model 4 and 5) check the wait and wake protocol (docs/design.md §3.6): a
//! reader blocked in `RingReader::wait` is never left asleep while a message waits for it,
//! with an adaptive writer and a "time" thread that preempts anyone at any point, and across a
//! writer that dies between its tail store and its wake and one that attaches after it. A
//! reader left asleep shows as the deadlock loom reports. A model of the `tail_seq` hint
//! checks it is never ahead of the tail.
//!
//! The negative controls at the end run a hand-written reader that skips part of the
//! validation, and check that loom catches it.
#![cfg(loom)]

use loom::model::Builder;
use loom::sync::atomic::{fence, Ordering};
use loom::thread;
use podcache_format::region::Region;
use podcache_format::ring::{Msg, RingParams, RingReader, RingWriter, Start, WakePolicy, MIN_DATA_OFFSET};
use podcache_format::LoomWord as AtomicU64;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering as StdOrdering};
use std::sync::Arc;
use std::time::Instant;

/// The ring of every model: 128 bytes of data right after the control block.
const PARAMS: RingParams = RingParams { data_offset: MIN_DATA_OFFSET, capacity: 128, max_msg: 16, checksums: true };

/// Payload lengths by sequence number (index 0 unused); see the table in the module docs.
const LENS: [usize; 7] = [0, 16, 8, 16, 16, 13, 16];

/// Byte that poisons the payload of a claim that is dropped: no message ever contains it.
const POISON: u8 = 0xEE;

/// The payload of message `seq`: `LENS[seq]` bytes, each derived from `seq` and its index.
fn payload(seq: u64) -> Vec<u8> {
    let len = LENS[usize::try_from(seq).expect("small seq")];
    (0..len).map(|i| (seq as u8).wrapping_mul(0x10).wrapping_add(i as u8)).collect()
}

/// Check `model` over every execution with at most `preemption_bound` preemptions (`None`:
/// unbounded; `LOOM_MAX_PREEMPTIONS` overrides) and print how many executions that was.
fn check<F>(name: &str, preemption_bound: Option<usize>, model: F)
where
    F: Fn() + Sync + Send + 'static,
{
    let mut b = Builder::new();
    if b.preemption_bound.is_none() {
        b.preemption_bound = preemption_bound;
    }
    // A reader that keeps retrying shows up as a failed read (the report we want), not as
    // loom's "exceeded maximum number of branches" (1000 by default: fewer than 64 retries).
    if std::env::var_os("LOOM_MAX_BRANCHES").is_none() {
        b.max_branches = 10_000;
    }
    let bound = b.preemption_bound;
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

/// Counts over all the executions of a model, kept outside the model (std atomics, which loom
/// does not track), to show the model reached the cases it is about.
#[derive(Default)]
struct Coverage {
    /// Executions in which a `LAPPED` reader was lapped while the writer ran.
    lapped: AtomicUsize,
    /// Executions in which a `POLLER` received a message while the writer ran.
    polled: AtomicUsize,
    /// Executions in which a hand-written reader detected a lap (negative controls).
    detected: AtomicUsize,
}

impl Coverage {
    fn count(counter: &AtomicUsize) {
        counter.fetch_add(1, StdOrdering::Relaxed);
    }

    fn get(counter: &AtomicUsize) -> usize {
        counter.load(StdOrdering::Relaxed)
    }
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
    /// `lost` of the first message: a reader that starts at the oldest message counts what it
    /// lost before its first read from the oldest message there was when it opened.
    first_lost: u64,
}

impl Seen {
    /// Check one received message: exactly the bytes its sequence implies, and sequence numbers
    /// that account for every message (`seq == prev + 1 + lost`).
    fn check(&mut self, m: Msg, buf: &[u8]) {
        assert!((1..LENS.len() as u64).contains(&m.seq), "no message has this seq: {m:?}");
        assert!(!buf[..m.len].contains(&POISON), "uncommitted claim bytes visible: {m:?} {:?}", &buf[..m.len]);
        assert_eq!(&buf[..m.len], &payload(m.seq)[..], "payload of {m:?}");
        if let Some(&prev) = self.seqs.last() {
            assert!(m.seq > prev, "seq went backwards: {prev} then {m:?}");
            assert_eq!(m.seq, prev + 1 + m.lost, "loss accounting: {prev} then {m:?}");
        } else {
            self.first_lost = m.lost;
        }
        self.seqs.push(m.seq);
    }
}

/// Call `read` up to `tries` times (a bounded reader: it may see nothing, which is fine).
///
/// `Overrun` is a failure too: in these models the writer laps a reader at most twice, far
/// fewer times than a read retries before giving up.
fn read_some(r: &mut RingReader, seen: &mut Seen, tries: usize) {
    let mut buf = [0u8; 16];
    for _ in 0..tries {
        match r.read(&mut buf) {
            Ok(Some(m)) => seen.check(m, &buf),
            Ok(None) => {}
            Err(e) => panic!("read failed: {e:?} ({e})"),
        }
    }
}

/// [`read_some`] with zero-copy reads: the closure copies what it sees (possibly torn bytes);
/// only a validated call's copy may come back, and it is checked as a copied read is.
fn read_some_in_place(r: &mut RingReader, seen: &mut Seen, tries: usize) {
    for _ in 0..tries {
        match r.read_with(|b| b.to_vec()) {
            Ok(Some((m, bytes))) => {
                assert_eq!(m.len, bytes.len(), "length of {m:?}");
                seen.check(m, &bytes);
            }
            Ok(None) => {}
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
    assert_eq!(
        seen.seqs.len() as u64 + r.lost(),
        last - first + 1 + seen.first_lost,
        "received + lost since the reader's baseline"
    );
}

/// A reader still at message 1 when the writer starts: the writer overwrites what it is
/// reading (laps it) unless it is quick.
const LAPPED: Start = Start::Oldest;
/// A reader at the end of the ring: it polls for the messages the writer is publishing.
const POLLER: Start = Start::Newest;

/// A model: messages `1..=prefill` are in the ring; one reader thread per entry of `readers`
/// (where it starts, how many times it calls `read`) runs while the writer thread calls
/// `write`, which publishes up to message `last`. Then every reader drains the ring.
struct Model {
    name: &'static str,
    /// Preemption bound (`None`: unbounded).
    bound: Option<usize>,
    policy: WakePolicy,
    prefill: u64,
    readers: &'static [(Start, usize)],
    /// How a reader thread reads (`read_some` copies, `read_some_in_place` does not).
    read: fn(&mut RingReader, &mut Seen, usize),
    last: u64,
    write: fn(&mut RingWriter),
}

impl Model {
    /// Check every execution, then that the model is not vacuous: some execution lapped the
    /// `LAPPED` reader, and in some execution the `POLLER` received a message while the writer
    /// ran.
    fn check(self) {
        let name = self.name;
        let readers = self.readers;
        let cov = Arc::new(Coverage::default());
        let c = Arc::clone(&cov);
        check(name, self.bound, move || self.run(&c));
        let (lapped, polled) = (Coverage::get(&cov.lapped), Coverage::get(&cov.polled));
        eprintln!("{name}: reader lapped in {lapped} executions, poller received in {polled}");
        if readers.iter().any(|&(start, _)| start == LAPPED) {
            assert!(lapped > 0, "{name}: no execution lapped the reader");
        }
        if readers.iter().any(|&(start, _)| start == POLLER) {
            assert!(polled > 0, "{name}: in no execution did the poller receive a message");
        }
    }

    /// One execution.
    fn run(&self, cov: &Coverage) {
        let (region, mut w) = ring(self.policy, self.prefill);
        let readers: Vec<_> = self
            .readers
            .iter()
            .map(|&(start, tries)| {
                let mut r = RingReader::new(Arc::clone(&region), &PARAMS, start);
                let read = self.read;
                thread::spawn(move || {
                    let mut seen = Seen::default();
                    read(&mut r, &mut seen, tries);
                    (r, seen)
                })
            })
            .collect();
        // The writer thread is the model's main thread: one thread fewer to create per
        // execution (and half the executions: the main thread has nothing else to do).
        (self.write)(&mut w);
        assert_eq!(w.next_seq(), self.last + 1);
        let (mut lapped, mut polled) = (false, false);
        for (h, &(start, _)) in readers.into_iter().zip(self.readers) {
            let (r, seen) = h.join().unwrap();
            lapped |= start == LAPPED && r.laps() > 0;
            polled |= start == POLLER && !seen.seqs.is_empty();
            drain(r, seen, self.last);
        }
        if lapped {
            Coverage::count(&cov.lapped);
        }
        if polled {
            Coverage::count(&cov.polled);
        }
    }
}

/// Publish message `seq`.
fn publish(w: &mut RingWriter, seq: u64) {
    assert_eq!(w.publish(&payload(seq)), Ok(seq));
}

/// A claim filled with poison and dropped; then message 5 claimed at the same place, written
/// in two pieces, 5 bytes (a partial word) then 8 (completing that word and leaving another
/// partial one), and committed.
fn dropped_claim_then_claim(w: &mut RingWriter) {
    {
        let mut dropped = w.claim(16).unwrap();
        assert_eq!(dropped.write(&[POISON; 16]), 16);
    }
    let p = payload(5);
    let mut c = w.claim(16).unwrap();
    assert_eq!(c.write(&p[..5]), 5);
    assert_eq!(c.write(&p[5..]), 8);
    assert_eq!(c.len(), 13);
    assert_eq!(c.commit(), Ok(5));
}

/// A loan filled with poison and dropped; then message 5 loaned at the same place and written
/// in place in two pieces, 5 bytes at offset 0 then 8 at offset 5: each piece merges a partial
/// word into what the ring holds there (the dropped loan's poison), with Relaxed stores; then
/// committed.
fn dropped_loan_then_loan(w: &mut RingWriter) {
    {
        let mut dropped = w.loan(16).unwrap();
        dropped.fill(POISON);
    }
    let p = payload(5);
    let mut l = w.loan(13).unwrap();
    l.write_at(0, &p[..5]);
    l.write_at(5, &p[5..]);
    assert_eq!(l.commit(), 5);
}

/// Publish messages `4..=last` as one batch.
fn batch(w: &mut RingWriter, last: u64) {
    let msgs: Vec<Vec<u8>> = (4..=last).map(payload).collect();
    assert_eq!(w.publish_batch(msgs.iter().map(|m| &m[..])), Ok(Some(last)));
}

// Preemption bounds. Readers never store to the region, so what one reader may observe does
// not depend on the other: a second reader adds no behaviour to check, but it multiplies the
// executions loom explores. So the two-reader models (one reader of each kind) keep the
// writer's concurrent part to one commit and take a bound of 3 or 4, and the models of longer
// writes have one reader each: unbounded for a poller (small: it only races the writer's tail
// store), 3 for a lapped reader (4 would take about 8 times longer, a minute for the largest).
// Every model explores at most about 150,000 executions: a few seconds in release.

/// Model 1: publish/poll. Messages 1..=4 fill the ring; the writer publishes message 5, which
/// wraps (padding marker at 120), overwrites message 1 and moves head to 32. One reader, still
/// at message 1, is lapped; the other polls for message 5 and must skip the padding.
#[test]
fn publish_poll_two_readers() {
    Model {
        name: "publish_poll_two_readers",
        bound: Some(4),
        policy: WakePolicy::Never,
        prefill: 4,
        readers: &[(LAPPED, 2), (POLLER, 2)],
        read: read_some,
        last: 5,
        write: |w| publish(w, 5),
    }
    .check();
}

/// Model 1, longer, lapped reader: messages 1..=3 are in the ring; the writer publishes 4, 5
/// (wraps, pads, overwrites 1) and 6 (overwrites 2 and 3, head 88) with `WakePolicy::Always`
/// (each commit also wakes, through the model futex); the reader can be lapped twice.
#[test]
fn publish_three_lapped_reader() {
    Model {
        name: "publish_three_lapped_reader",
        bound: Some(3),
        policy: WakePolicy::Always,
        prefill: 3,
        readers: &[(LAPPED, 3)],
        read: read_some,
        last: 6,
        write: |w| (4..=6).for_each(|seq| publish(w, seq)),
    }
    .check();
}

/// Model 1, longer, lapped reader reading in place (`read_with`): a closure that ran on bytes
/// the writer was overwriting never yields a result.
#[test]
fn publish_three_lapped_reader_in_place() {
    Model {
        name: "publish_three_lapped_reader_in_place",
        bound: Some(3),
        policy: WakePolicy::Always,
        prefill: 3,
        readers: &[(LAPPED, 3)],
        read: read_some_in_place,
        last: 6,
        write: |w| (4..=6).for_each(|seq| publish(w, seq)),
    }
    .check();
}

/// Model 1, longer, polling reader: as above with a reader that follows the writer.
#[test]
fn publish_three_polling_reader() {
    Model {
        name: "publish_three_polling_reader",
        bound: None,
        policy: WakePolicy::Always,
        prefill: 3,
        readers: &[(POLLER, 3)],
        read: read_some,
        last: 6,
        write: |w| (4..=6).for_each(|seq| publish(w, seq)),
    }
    .check();
}

/// Model 2: claim/commit. Messages 1..=4 fill the ring. A claim reserves space past the end
/// (padding marker at 120, lease over message 1, head 32), is filled with poison and dropped;
/// then message 5 is claimed at the same place, written in two pieces and committed. The
/// lapped reader never takes the poison for message 1; the poller never sees the dropped
/// claim, its padding marker or part of message 5.
#[test]
fn claim_commit_two_readers() {
    Model {
        name: "claim_commit_two_readers",
        bound: Some(3),
        policy: WakePolicy::Never,
        prefill: 4,
        readers: &[(LAPPED, 2), (POLLER, 2)],
        read: read_some,
        last: 5,
        write: dropped_claim_then_claim,
    }
    .check();
}

/// Model 2, unbounded, with the lapped reader only.
#[test]
fn claim_commit_lapped_reader() {
    Model {
        name: "claim_commit_lapped_reader",
        bound: None,
        policy: WakePolicy::Never,
        prefill: 4,
        readers: &[(LAPPED, 2)],
        read: read_some,
        last: 5,
        write: dropped_claim_then_claim,
    }
    .check();
}

/// Model 2 with a loan instead of a claim: a loan is filled with poison and dropped, then
/// message 5 is loaned at the same place, written in place with Relaxed word stores (partial
/// words merged) and committed. The lapped reader never takes the poison or part of message 5
/// for message 1 (the Release fence after the lease store orders the loan's Relaxed stores);
/// the poller never sees the dropped loan or part of message 5 (the Release store of tail).
#[test]
fn loan_commit_two_readers() {
    Model {
        name: "loan_commit_two_readers",
        bound: Some(3),
        policy: WakePolicy::Never,
        prefill: 4,
        readers: &[(LAPPED, 2), (POLLER, 2)],
        read: read_some,
        last: 5,
        write: dropped_loan_then_loan,
    }
    .check();
}

/// The loan model, unbounded, with the lapped reader only.
#[test]
fn loan_commit_lapped_reader() {
    Model {
        name: "loan_commit_lapped_reader",
        bound: None,
        policy: WakePolicy::Never,
        prefill: 4,
        readers: &[(LAPPED, 2)],
        read: read_some,
        last: 5,
        write: dropped_loan_then_loan,
    }
    .check();
}

/// The loan model with a lapped reader reading in place: its closure may run on a loan's
/// bytes, but such a read yields nothing.
#[test]
fn loan_commit_lapped_reader_in_place() {
    Model {
        name: "loan_commit_lapped_reader_in_place",
        bound: Some(3),
        policy: WakePolicy::Never,
        prefill: 4,
        readers: &[(LAPPED, 2)],
        read: read_some_in_place,
        last: 5,
        write: dropped_loan_then_loan,
    }
    .check();
}

/// Model 3: a batch of messages 4 and 5 (the second wraps and overwrites message 1) published
/// with one tail store.
#[test]
fn batch_two_readers() {
    Model {
        name: "batch_two_readers",
        bound: Some(4),
        policy: WakePolicy::Never,
        prefill: 3,
        readers: &[(LAPPED, 1), (POLLER, 2)],
        read: read_some,
        last: 5,
        write: |w| batch(w, 5),
    }
    .check();
}

/// Model 3, longer: a batch of messages 4, 5 and 6 commits part-way (after 5, once its
/// uncommitted bytes exceed a quarter of the ring) and again after 6; the poller may receive 4
/// and 5 before 6 is committed.
#[test]
fn batch_three_polling_reader() {
    Model {
        name: "batch_three_polling_reader",
        bound: None,
        policy: WakePolicy::Never,
        prefill: 3,
        readers: &[(POLLER, 3)],
        read: read_some,
        last: 6,
        write: |w| batch(w, 6),
    }
    .check();
}

/// As above with a reader lapped by the batch.
#[test]
fn batch_three_lapped_reader() {
    Model {
        name: "batch_three_lapped_reader",
        bound: Some(3),
        policy: WakePolicy::Never,
        prefill: 3,
        readers: &[(LAPPED, 2)],
        read: read_some,
        last: 6,
        write: |w| batch(w, 6),
    }
    .check();
}

/// The `tail_seq` hint is never ahead of a tail the reader can see: a reader that loads the
/// hint and then the tail finds every message the hint counts below that tail (the writer
/// stores `tail_seq` after `tail`, with Release; up to layout version 3 it was stored before).
#[test]
fn the_tail_seq_hint_is_never_ahead_of_the_tail() {
    check("the_tail_seq_hint_is_never_ahead_of_the_tail", None, || {
        let (region, mut w) = ring(WakePolicy::Never, 0);
        let r = RingReader::new(Arc::clone(&region), &PARAMS, Start::Oldest);
        let reader = thread::spawn(move || {
            let next = r.writer_next_seq();
            let tail = r.writer_tail();
            // Message 1 is 16 bytes: a 32-byte record.
            assert!(next == 1 || tail >= 32, "hint says {next} but the tail is {tail}");
        });
        publish(&mut w, 1);
        reader.join().unwrap();
    });
}

// ---------------------------------------------------------------------------------------------
// Negative controls: a reader that skips part of the validation must be caught by loom. The
// reader is written out here over `Region::words`, following the byte map in `ring.rs`.

/// Control-block words (byte offsets from the map in `ring.rs`, divided by 8).
const W_TAIL: usize = 0x100 / 8;
const W_LEASE: usize = 0x180 / 8;
const W_WAKE_WINDOW: usize = 0x208 / 8;
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
fn hand_reader_model(v: Validation, cov: Arc<Coverage>) {
    check(&format!("hand_reader({v:?})"), None, move || {
        let cov = Arc::clone(&cov);
        let (region, mut w) = ring(WakePolicy::Never, 4);
        let reader_region = Arc::clone(&region);
        let reader = thread::spawn(move || {
            let words = reader_region.words();
            // SYNC: Acquire, pairs with the Release store of tail in RingWriter::commit.
            assert!(words[W_TAIL].load(Ordering::Acquire) > 0);
            match hand_read(words, 0, v) {
                Some((seq, bytes)) => {
                    assert!(seq == 1 || seq == 5, "torn read: seq {seq}");
                    assert_eq!(bytes, payload(seq), "torn read: bytes of seq {seq}");
                }
                None => Coverage::count(&cov.detected),
            }
        });
        assert_eq!(w.publish(&payload(5)), Ok(5));
        reader.join().unwrap();
    });
}

/// The hand-written reader with the real validation passes: it is a faithful copy.
#[test]
fn hand_reader_with_fence_and_lease_passes() {
    let cov = Arc::new(Coverage::default());
    hand_reader_model(Validation::FenceAndLease, Arc::clone(&cov));
    assert!(Coverage::get(&cov.detected) > 0, "no execution overwrote message 1 during the read");
}

/// Run a model that must fail and return its panic message.
fn expect_model_failure(v: Validation) -> String {
    let err = catch_unwind(AssertUnwindSafe(|| hand_reader_model(v, Arc::default())))
        .expect_err("loom must find a torn read");
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

// ---------------------------------------------------------------------------------------------
// Waiting and waking (docs/design.md §3.6). A reader thread receives with `read` and blocks in
// `RingReader::wait(None)` (no deadline) whenever the ring is empty, until it has every
// message it expects; the model's main thread then joins it. A reader left asleep while a
// message waits for it blocks forever, and loom reports the deadlock (every thread blocked).
//
// Under loom the futex is a mutex and a condition variable (ring/wait.rs), and time is a
// logical clock (clock.rs): every clock read advances it by one tick, and a "time" thread
// advances it by a jump at any point loom chooses, which is a thread preempted for that long.
// The real clocks (TSC, CLOCK_MONOTONIC) cannot be modelled: loom has no time.

/// The adaptive window of the wait models, in logical ticks (`Duration` nanoseconds are ticks
/// under loom). Readers spin for twice that. Five ticks, so that three back-to-back commits
/// (and a reader's clock reads between them) can fall within one window.
const WINDOW_TICKS: u64 = 5;
const ADAPTIVE: WakePolicy = WakePolicy::Adaptive(std::time::Duration::from_nanos(WINDOW_TICKS));

/// A ring whose writer dies between a commit's tail store and its wake: a `Never` writer
/// (its commits store the tail and never wake; dropping it runs no wake), with the file's
/// `wake_window` word saying `ADAPTIVE`, as the dying writer's own would, so that readers
/// sleep in the futex after their spin.
fn ring_with_dying_writer() -> (Arc<Region>, RingWriter) {
    let (region, w) = ring(WakePolicy::Never, 0);
    region.words()[W_WAKE_WINDOW].store(WINDOW_TICKS, Ordering::Relaxed);
    (region, w)
}

/// Receive until message `last`, blocking in `wait` when the ring is empty; check each one.
fn receive_blocking(r: &mut RingReader, last: u64) -> Seen {
    let mut seen = Seen::default();
    let mut buf = [0u8; 16];
    while seen.seqs.last() != Some(&last) {
        match r.read(&mut buf) {
            Ok(Some(m)) => seen.check(m, &buf),
            Ok(None) => {
                r.wait(None);
            }
            Err(e) => panic!("read failed: {e:?} ({e})"),
        }
    }
    seen
}

/// Model 4, the adaptive wake-up: messages 1 and 2 were published back to back (the writer's
/// clock has two recent commits), a reader at the end blocks for message 3, which the writer
/// publishes while a time thread lets more than two windows pass at any point (the reader, or
/// the writer, preempted). Whatever the interleaving, the reader is not left asleep: either
/// a load of `tail` or the futex compare sees message 3, or message 3 came more than a window
/// after message 1 and the writer wakes it.
#[test]
fn adaptive_wake_never_leaves_a_reader_asleep() {
    check("adaptive_wake_never_leaves_a_reader_asleep", Some(3), || {
        let (region, mut w) = ring(ADAPTIVE, 2);
        let mut r = RingReader::new(Arc::clone(&region), &PARAMS, Start::Newest);
        let reader = thread::spawn(move || receive_blocking(&mut r, 3));
        let time = thread::spawn(|| podcache_format::ring::advance_logical_clock(3 * WINDOW_TICKS));
        publish(&mut w, 3);
        time.join().unwrap();
        assert_eq!(reader.join().unwrap().seqs, [3]);
    });
}

/// Model 5, a restart: the writer publishes message 1 and dies between its tail store and its
/// wake (see `ring_with_dying_writer`), and a new writer attaches. A reader blocked on the ring must get message 1 without any further
/// publish: the attach wakes it.
#[test]
fn attach_wakes_readers_a_dead_writer_left_asleep() {
    check("attach_wakes_readers_a_dead_writer_left_asleep", None, || {
        let (region, mut dying) = ring_with_dying_writer();
        let mut r = RingReader::new(Arc::clone(&region), &PARAMS, Start::Oldest);
        let reader = thread::spawn(move || receive_blocking(&mut r, 1));
        publish(&mut dying, 1);
        drop(dying);
        let (w, rec) = RingWriter::attach(Arc::clone(&region), &PARAMS, ADAPTIVE);
        assert_eq!((rec.intact, rec.discarded), (1, false));
        assert_eq!(reader.join().unwrap().seqs, [1]);
        drop(w);
    });
}

/// Model 5, continued: as above, and the new writer publishes message 2 at once. The reader
/// gets both: the new writer's first commit wakes (its clock knows no earlier commit), also
/// when the reader went back to sleep after the attach's wake.
#[test]
fn a_restarted_writers_first_message_wakes_readers() {
    check("a_restarted_writers_first_message_wakes_readers", Some(2), || {
        let (region, mut dying) = ring_with_dying_writer();
        let mut r = RingReader::new(Arc::clone(&region), &PARAMS, Start::Oldest);
        let reader = thread::spawn(move || receive_blocking(&mut r, 2));
        publish(&mut dying, 1);
        drop(dying);
        let (mut w, _) = RingWriter::attach(Arc::clone(&region), &PARAMS, ADAPTIVE);
        publish(&mut w, 2);
        assert_eq!(reader.join().unwrap().seqs, [1, 2]);
    });
}
