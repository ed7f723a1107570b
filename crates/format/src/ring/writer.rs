//! The writer side of the ring: reserving space, the lease, writing records, committing.

use super::*;
use crate::checksum::Crc;
use crate::clock::WakeClock;
use crate::region::{copy_in, WordWriter};
use std::sync::Arc;

/// A writer's [`WakePolicy`], with the adaptive policy's clock.
enum Waking {
    Never,
    Always,
    Adaptive(WakeClock),
}

/// The single writer of a ring. Lives in the format crate so loom can check it; the writer
/// library wraps it with file handling.
pub struct RingWriter {
    pub(super) region: Arc<Region>,
    pub(super) g: Geometry,
    /// Committed end position (mirror of the `tail` word).
    pub(super) tail: u64,
    pub(super) next_seq: u64,
    pub(super) lease: u64,
    pub(super) head: u64,
    pub(super) chunk: u64,
    waking: Waking,
    /// End position of the record last written (scratch for the commit that follows).
    pub(super) tail_after: u64,
}

impl RingWriter {
    /// Initialise the control block of a freshly created ring (all zero) and take it over.
    pub fn create(region: Arc<Region>, params: &RingParams, policy: WakePolicy) -> RingWriter {
        assert!(region.is_writable(), "ring writer needs a writable region");
        let g = Geometry::new(&region, params);
        let w = region.words();
        for word in &w[W_TAIL..g.data_word.min(W_WAKE_WINDOW + 16)] {
            word.store(0, Ordering::Relaxed);
        }
        w[W_TAIL_SEQ].store(1, Ordering::Relaxed);
        w[W_WAKE_WINDOW].store(policy.to_word(), Ordering::Relaxed);
        Self::with_state(region, g, 0, 1, 0, 0, policy)
    }

    pub(super) fn with_state(
        region: Arc<Region>,
        g: Geometry,
        tail: u64,
        next_seq: u64,
        lease: u64,
        head: u64,
        policy: WakePolicy,
    ) -> RingWriter {
        let chunk = (g.cap / 16).max(8);
        // The window as stored in the file: readers spin for twice what the file says.
        let policy = policy.normalized();
        RingWriter {
            region,
            g,
            tail,
            next_seq,
            lease,
            head,
            chunk,
            waking: match policy {
                WakePolicy::Never => Waking::Never,
                WakePolicy::Always => Waking::Always,
                WakePolicy::Adaptive(window) => Waking::Adaptive(WakeClock::new(window)),
            },
            tail_after: tail,
        }
    }

    /// Largest payload accepted.
    pub fn max_msg(&self) -> u32 {
        self.g.max_msg
    }

    /// Sequence number the next message will get.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Committed end position.
    pub fn tail(&self) -> u64 {
        self.tail
    }

    /// Publish one message.
    pub fn publish(&mut self, msg: &[u8]) -> Result<u64, PublishError> {
        let seq = self.write_record(self.tail, msg)?;
        self.commit(self.tail_after);
        Ok(seq)
    }

    /// Publish several messages with one tail store and at most one wake. Messages are
    /// checked first: on error nothing is published. Returns the sequence of the last one.
    pub fn publish_batch<'m, I>(&mut self, msgs: I) -> Result<Option<u64>, PublishError>
    where
        I: IntoIterator<Item = &'m [u8]>,
        I::IntoIter: Clone,
    {
        let iter = msgs.into_iter();
        for m in iter.clone() {
            self.check_len(m.len())?;
        }
        let mut pos = self.tail;
        let mut last = None;
        for m in iter {
            // Commit part-way so a batch never overwrites its own uncommitted records.
            if pos - self.tail > self.g.cap / 4 {
                self.commit(pos);
            }
            last = Some(self.write_record(pos, m)?);
            pos = self.tail_after;
        }
        if last.is_some() {
            self.commit(pos);
        }
        Ok(last)
    }

    #[inline]
    fn check_len(&self, len: usize) -> Result<(), PublishError> {
        if len == 0 {
            Err(PublishError::Empty)
        } else if len > self.g.max_msg as usize {
            Err(PublishError::TooLarge { len, max: self.g.max_msg })
        } else {
            Ok(())
        }
    }

    /// Make room for a record of `len` payload bytes at `pos` (writing a padding marker if it
    /// would straddle the end) and return the record's start position.
    #[inline]
    fn reserve(&mut self, pos: u64, len: u64) -> u64 {
        let rec = record_len(len);
        let off = pos & self.g.mask;
        let start = if off + rec > self.g.cap { pos + (self.g.cap - off) } else { pos };
        if start + rec > self.lease {
            self.extend_lease(pos, start + rec);
        }
        if start != pos {
            // SYNC: Release, pairs with the Acquire fence in `ring::lapped` (the reader's lap
            // check after it loaded the marker).
            self.region.words()[self.g.word(pos)].store(u64::from(PAD_LEN), Ordering::Release);
        }
        start
    }

    /// Move the lease to cover `end` (and a chunk more), first moving `head` past every record
    /// the new lease lets us overwrite. `from` is the first uncommitted position.
    #[cold]
    fn extend_lease(&mut self, from: u64, end: u64) {
        let w = self.region.words();
        let new = end.max(self.lease + self.chunk).min(from + self.g.cap);
        debug_assert!(end <= new, "a record never needs more than the whole ring");
        let floor = new.saturating_sub(self.g.cap);
        while self.head < floor && self.head < from {
            let off = self.head & self.g.mask;
            let w0 = w[self.g.word(self.head)].load(Ordering::Relaxed);
            let len = w0 as u32;
            self.head += if len == PAD_LEN {
                self.g.cap - off
            } else if len == 0 || len > self.g.max_msg {
                // Our own data is damaged (not by us): keep nothing older than `from`.
                from - self.head
            } else {
                record_len(u64::from(len))
            };
        }
        // SYNC: Release, pairs with the acquire load of head in RingReader::resync: a reader
        // that sees the new head also sees the records below the tail that covered it.
        w[W_HEAD].store(self.head, Ordering::Release);
        // SYNC: Release, pairs with the acquire load of lease in RingReader::resync (a reader
        // lapped by this lease then sees the head stored before it). For the data it covers,
        // the data's own Release stores order it.
        w[W_LEASE].store(new, Ordering::Release);
        // Keep every later store of this writer behind the lease store, the plain stores a
        // caller makes into a `Loan` included: a lapped reader that copies one of them must see
        // the lease that laps it. The writer's own record stores are Release stores sequenced
        // after the lease for that; a loan's are the caller's, so this fence stands in. On x86
        // stores are never reordered (a compiler barrier); on aarch64 it is the `dmb` that
        // keeps later plain stores behind the lease's `stlr`. Once per lease step
        // (capacity/16 bytes), not per message.
        fence(Ordering::Release);
        self.lease = new;
    }

    /// Write one record (not yet committed) at `pos`; sets `tail_after`.
    #[inline]
    fn write_record(&mut self, pos: u64, msg: &[u8]) -> Result<u64, PublishError> {
        self.check_len(msg.len())?;
        let start = self.reserve(pos, msg.len() as u64);
        let seq = self.next_seq;
        let w = self.region.words();
        let first = self.g.word(start);
        copy_in(w, first + 2, msg);
        self.finish_record(start, seq, msg.len() as u32, record_crc(&self.g, seq, msg));
        Ok(seq)
    }

    #[inline]
    fn finish_record(&mut self, start: u64, seq: u64, len: u32, crc: u32) {
        let w = self.region.words();
        let first = self.g.word(start);
        // SYNC: Release (both), pair with the Acquire fence in `ring::lapped` (the reader's lap
        // check after it copied the record).
        w[first].store(u64::from(len) | (u64::from(crc) << 32), Ordering::Release);
        w[first + 1].store(seq, Ordering::Release);
        self.next_seq = seq + 1;
        self.tail_after = start + record_len(u64::from(len));
    }

    /// Publish everything up to `end`: store tail, then wake sleepers per the policy.
    #[inline]
    fn commit(&mut self, end: u64) {
        let w = self.region.words();
        // SYNC: Release, pairs with the acquire loads of tail in RingReader (`read_fast`,
        // `read_general`, `has_data`, `resync`, `skip_to_newest`, `writer_tail`): a reader
        // that sees this tail sees every record below it. Its low half is also the futex word
        // (wait.rs): it changes on every commit.
        w[W_TAIL].store(end, Ordering::Release);
        // SYNC: Release, after the tail store; pairs with the acquire load of tail_seq in
        // RingReader::writer_next_seq, so a reader that sees this hint also sees the tail that
        // holds its messages (the hint is never ahead of a visible tail).
        w[W_TAIL_SEQ].store(self.next_seq, Ordering::Release);
        self.tail = end;
        let wake = match &mut self.waking {
            Waking::Never => false,
            Waking::Always => true,
            Waking::Adaptive(clock) => clock.commit_needs_wake(),
        };
        if wake {
            self.wake();
        }
    }

    /// Claim space for a message of up to `max_len` bytes, written in place with
    /// [`Claim::write`] and published with [`Claim::commit`]. Dropping the claim publishes
    /// nothing.
    pub fn claim(&mut self, max_len: usize) -> Result<Claim<'_>, PublishError> {
        self.check_len(max_len)?;
        let start = self.reserve(self.tail, max_len as u64);
        let out = WordWriter::new(self.g.word(start) + 2);
        // No other record can be written while the claim borrows the writer: `next_seq` is
        // the claim's sequence number.
        let crc = self.g.crc.then(|| Crc::new(self.next_seq));
        Ok(Claim { writer: self, start, cap: max_len, out, crc })
    }
}

/// A message being written in place, from a ring writer's `claim`.
pub struct Claim<'w> {
    writer: &'w mut RingWriter,
    start: u64,
    cap: usize,
    out: WordWriter,
    /// `None` in a ring without checksums.
    crc: Option<Crc>,
}

impl Claim<'_> {
    /// Bytes written so far.
    pub fn len(&self) -> usize {
        self.out.len()
    }

    /// Whether nothing was written yet.
    pub fn is_empty(&self) -> bool {
        self.out.len() == 0
    }

    /// Bytes that can still be written.
    pub fn remaining(&self) -> usize {
        self.cap - self.out.len()
    }

    /// Append bytes straight into the ring. Returns how many were taken (fewer than
    /// `bytes.len()` only when the claim is full).
    pub fn write(&mut self, bytes: &[u8]) -> usize {
        let take = bytes.len().min(self.remaining());
        if let Some(crc) = &mut self.crc {
            crc.update(&bytes[..take]);
        }
        self.out.write(self.writer.region.words(), &bytes[..take]);
        take
    }

    /// Publish what was written. An empty claim publishes nothing and returns `Empty`.
    pub fn commit(self) -> Result<u64, PublishError> {
        let len = self.out.len();
        if len == 0 {
            return Err(PublishError::Empty);
        }
        let seq = self.writer.next_seq;
        self.writer.finish_record(self.start, seq, len as u32, self.crc.map_or(0, Crc::finalize));
        let end = self.writer.tail_after;
        self.writer.commit(end);
        Ok(seq)
    }
}

impl std::io::Write for Claim<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match Claim::write(self, buf) {
            0 if !buf.is_empty() => Err(std::io::ErrorKind::WriteZero.into()),
            n => Ok(n),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A message written in place: `len` bytes of the ring itself, handed out as `&mut [u8]` by
/// `Publisher::loan`. [`commit`](Loan::commit) publishes them; dropping the loan publishes
/// nothing.
///
/// # Why a mutable slice over the ring is sound here
///
/// The bytes lie beyond the committed `tail` and inside the writer's lease, which was moved
/// past them (and fenced) before the loan was made. No reader that follows the protocol takes
/// them: a reader copies only records below the `tail` it loaded, and a reader still copying
/// an older record at the same place in the data region is one the lease has already lapped,
/// so it discards what it copied. Readers in other processes map the file read-only, and
/// there is one writer per file (the file lock), so nothing else stores to these bytes while
/// the loan lives. The record header and `tail` are stored only at `commit`, with the Release
/// stores of every publish, after the payload.
#[cfg(not(loom))]
pub struct Loan<'w> {
    writer: &'w mut RingWriter,
    start: u64,
    bytes: &'w mut [u8],
}

#[cfg(not(loom))]
impl RingWriter {
    /// Lend `len` bytes of the ring to write a message in place (see [`Loan`]). Space is made
    /// as for a publish of `len` bytes: a slow reader may be lapped by it even if the loan is
    /// dropped.
    pub fn loan(&mut self, len: usize) -> Result<Loan<'_>, PublishError> {
        self.check_len(len)?;
        // `reserve` moves the lease past the record if needed; the fence after every lease
        // store (`extend_lease`) keeps the borrower's plain stores behind it.
        let start = self.reserve(self.tail, len as u64);
        let first = self.g.word(start) + 2;
        let words = &self.region.words()[first..first + len.div_ceil(8)];
        // SAFETY: `words` are `len.div_ceil(8) * 8 >= len` bytes of the data region (`reserve`
        // placed the record so that its header and payload lie inside it, and `check` bounds
        // the region by the mapping), writable (`create`/`attach` assert a writable region),
        // and not stored to by anyone else while the loan mutably borrows the writer (see the
        // `Loan` docs: beyond the tail, inside the lease, one writer per file). The pointer
        // comes from a slice of `AtomicU64` (an `UnsafeCell`), so writing through it is
        // allowed; `u8` has no alignment or validity requirement beyond initialised memory,
        // which a mapped file is.
        let bytes = unsafe { std::slice::from_raw_parts_mut(words.as_ptr().cast::<u8>().cast_mut(), len) };
        Ok(Loan { writer: self, start, bytes })
    }
}

#[cfg(not(loom))]
impl Loan<'_> {
    /// Publish the message: the checksum of the bytes, the record header, then the tail.
    /// Returns its sequence number.
    pub fn commit(self) -> u64 {
        let Loan { writer, start, bytes } = self;
        let seq = writer.next_seq;
        let crc = record_crc(&writer.g, seq, bytes);
        writer.finish_record(start, seq, bytes.len() as u32, crc);
        let end = writer.tail_after;
        writer.commit(end);
        seq
    }
}

#[cfg(not(loom))]
impl std::ops::Deref for Loan<'_> {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.bytes
    }
}

#[cfg(not(loom))]
impl std::ops::DerefMut for Loan<'_> {
    fn deref_mut(&mut self) -> &mut [u8] {
        self.bytes
    }
}
