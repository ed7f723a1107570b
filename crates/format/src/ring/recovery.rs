//! A new writer taking over a ring left by a previous one (which may have been killed at any
//! instruction).

use super::writer::RingWriter;
use super::*;
use crate::region::copy_out;
use std::sync::Arc;

/// Result of a writer's attach to an existing ring.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Recovery {
    /// Records found intact between `head` and `tail`.
    pub intact: u64,
    /// Whether the control block or a record was inconsistent and the ring was emptied
    /// (readers behind are told they lost what they had not read).
    pub discarded: bool,
}

impl RingWriter {
    /// Take over a ring left by a previous writer (which may have been killed at any
    /// instruction). Nothing the previous writer had not committed is visible to readers, so
    /// the in-flight record is simply dropped: the new writer goes on from the committed tail
    /// and overwrites it. The records between `head` and `tail` are verified; if the control
    /// block or any record is inconsistent, the ring is emptied in a way readers notice as a
    /// lap.
    ///
    /// Readers may be asleep on the futex word with a message waiting: the previous writer
    /// may have died between a commit's tail store and its wake. So attaching wakes every
    /// blocked reader, and the new writer's first commits always wake (its clock knows no
    /// earlier commit).
    pub fn attach(region: Arc<Region>, params: &RingParams, policy: WakePolicy) -> (RingWriter, Recovery) {
        assert!(region.is_writable(), "ring writer needs a writable region");
        let g = Geometry::new(&region, params);
        let w = region.words();
        let tail = w[W_TAIL].load(Ordering::Relaxed);
        let tail_seq = w[W_TAIL_SEQ].load(Ordering::Relaxed);
        let lease = w[W_LEASE].load(Ordering::Relaxed);
        let head = w[W_HEAD].load(Ordering::Relaxed);
        w[W_WAKE_WINDOW].store(policy.to_word(), Ordering::Relaxed);
        let plausible = tail.is_multiple_of(8)
            && head.is_multiple_of(8)
            && head <= tail
            && lease >= tail
            && lease - tail <= g.cap
            && tail - head <= g.cap
            && lease < MAX_POS;
        // `tail_seq` is only a hint (the walk below finds the real sequence); a hostile value
        // starts the numbering again.
        let tail_seq = if tail_seq > MAX_SEQ { 1 } else { tail_seq };
        let walked = if plausible { Self::walk(w, &g, head, tail) } else { None };
        let attached = match walked {
            Some((intact, last_seq)) => {
                let next_seq = last_seq.map_or(tail_seq.max(1), |s| s + 1);
                debug_assert!(next_seq <= MAX_SEQ + 1, "walk only accepts sequence numbers up to MAX_SEQ");
                let me = Self::with_state(region, g, tail, next_seq, lease, head, policy);
                // Relaxed: a hint, and never ahead of the tail: every record below it has a
                // smaller sequence number.
                me.region.words()[W_TAIL_SEQ].store(next_seq, Ordering::Relaxed);
                (me, Recovery { intact, discarded: false })
            }
            None => {
                // Empty the ring: every reader behind the (rounded-up) tail sees the lease
                // beyond its position + capacity, i.e. a lap, and resyncs to `head == tail`.
                let tail = if plausible { tail } else { (tail.max(lease).max(head).min(u64::MAX / 8) + 7) & !7 };
                let next_seq = tail_seq.max(1);
                let mut me = Self::with_state(region, g, tail, next_seq, tail + g.cap, tail, policy);
                let w = me.region.words();
                // Relaxed: a hint; no message is added, so it is not ahead of the tail.
                w[W_TAIL_SEQ].store(next_seq, Ordering::Relaxed);
                // SYNC: Release, pairs with the acquire load of head in RingReader::resync.
                w[W_HEAD].store(tail, Ordering::Release);
                // SYNC: Release, pairs with the acquire load of lease in RingReader::resync (a
                // reader lapped by this lease then sees the head stored before it).
                w[W_LEASE].store(tail + g.cap, Ordering::Release);
                // SYNC: Release, pairs with the acquire loads of tail in RingReader (as in
                // RingWriter::commit).
                w[W_TAIL].store(tail, Ordering::Release);
                me.lease = tail + g.cap;
                (me, Recovery { intact: 0, discarded: true })
            }
        };
        attached.0.wake();
        attached
    }

    /// Verify records in `[head, tail)`: count them and return the last sequence number.
    fn walk(w: &[AtomicU64], g: &Geometry, head: u64, tail: u64) -> Option<(u64, Option<u64>)> {
        let mut pos = head;
        let mut count = 0;
        let mut last: Option<u64> = None;
        let mut buf = Vec::new();
        while pos < tail {
            let off = pos & g.mask;
            let w0 = w[g.word(pos)].load(Ordering::Relaxed);
            if w0 as u32 == PAD_LEN {
                if off == 0 {
                    return None;
                }
                pos += g.cap - off;
                continue;
            }
            let len = w0 as u32;
            if len == 0 || len > g.max_msg || off + record_len(u64::from(len)) > g.cap {
                return None;
            }
            let seq = w[g.word(pos) + 1].load(Ordering::Relaxed);
            if g.crc {
                buf.resize(len as usize, 0);
                copy_out(w, g.word(pos) + 2, &mut buf);
            }
            if seq > MAX_SEQ || record_crc(g, seq, &buf) != (w0 >> 32) as u32 || last.is_some_and(|l| l + 1 != seq) {
                return None;
            }
            last = Some(seq);
            count += 1;
            pos += record_len(u64::from(len));
        }
        (pos == tail).then_some((count, last))
    }
}
