//! The writer side of the ring: reserving space, the lease, writing records, committing.

use super::*;
use crate::checksum::Crc;
use crate::clock::WakeClock;
use crate::region::{copy_in, fill_bytes, store_bytes, WordWriter};
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
        // SYNC: Release fence, pairs with the Acquire fence in `ring::lapped`. It orders every
        // later store of this writer after the lease store, the Relaxed payload stores of a
        // `Loan` included (region::store_bytes / fill_bytes): a lapped reader that loaded one of
        // them sees this lease after its fence and discards its copy. The writer's other record
        // stores are Release stores and need no fence; the loan's are Relaxed so that a loan
        // costs one plain store per word on every CPU. One fence per lease step (capacity/16
        // bytes), not per message; on x86 it is only a compiler barrier.
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

/// A message written in place: `len` bytes of the ring itself, lent by a ring writer's
/// [`loan`](RingWriter::loan) (`Publisher::loan` in the writer library). The bytes are filled
/// through the loan's methods ([`write_at`](Loan::write_at), [`fill`](Loan::fill),
/// [`put_u64_le`](Loan::put_u64_le), or [`std::io::Write`] from a cursor, so a serialiser can
/// encode straight into the ring); [`commit`](Loan::commit) publishes them, and dropping the
/// loan publishes nothing.
///
/// No reference to the ring is ever handed out: every write is a run of atomic word stores
/// into the mapping (a partial word at either edge merged with the word's other bytes), as a
/// publish's copy is. The loan starts with whatever the ring held there, so write all of it.
///
/// # Offsets
///
/// Offsets are byte offsets into the message, `0..len()`. A write that would reach past
/// `len()` is a bug in the caller and panics with a message naming the offset, the length
/// and the loan's size, as indexing a slice would; nothing of it is stored. The
/// [`std::io::Write`] form never panics: it writes what fits and then returns `WriteZero`.
///
/// # Ordering
///
/// The stores are Relaxed. A reader that takes the message does so only after loading the
/// `tail` that [`commit`](Loan::commit) stores with Release after the record header, so it
/// sees every store the loan made. A reader still copying an older record at the same place
/// is one the lease laps: the lease store covering these bytes is followed by a Release fence
/// (`extend_lease`) that every later store of the writer comes after, so a reader that loaded
/// one of the loan's bytes sees that lease after its Acquire fence and discards its copy.
pub struct Loan<'w> {
    writer: &'w mut RingWriter,
    start: u64,
    /// Byte index (in the region) of the payload's first byte; word-aligned.
    byte: usize,
    len: usize,
    /// The cursor of the `io::Write` form.
    pos: usize,
    /// The checksum of bytes `0..crc_upto` as written, while the message is written front to
    /// back (`None` once a write left that order, or in a ring without checksums): `commit`
    /// then needs no second pass over the payload. Otherwise `commit` reads it back.
    crc: Option<Crc>,
    crc_upto: usize,
}

impl RingWriter {
    /// The checksum of a loan's `len` bytes at byte `byte`, read back (the loan was not
    /// written front to back); 0 in a ring without checksums.
    #[inline(never)]
    fn loan_crc(&self, byte: usize, len: usize) -> u32 {
        if !self.g.crc {
            return 0;
        }
        let mut h = Crc::new(self.next_seq);
        // The writer's own stores: Relaxed loads return them.
        h.update_from_words(self.region.words(), byte, len);
        h.finalize()
    }

    /// Publish the loan's record at `start`: header, then tail (and a wake per the policy).
    #[inline(never)]
    fn commit_loan(&mut self, start: u64, len: usize, crc: u32) -> u64 {
        let seq = self.next_seq;
        self.finish_record(start, seq, len as u32, crc);
        let end = self.tail_after;
        self.commit(end);
        seq
    }

    /// Lend `len` bytes of the ring to write a message in place (see [`Loan`]). Space is made
    /// as for a publish of `len` bytes: a slow reader may be lapped by it even if the loan is
    /// dropped.
    #[inline]
    pub fn loan(&mut self, len: usize) -> Result<Loan<'_>, PublishError> {
        self.check_len(len)?;
        // `reserve` moves the lease past the record if needed; the Release fence after every
        // lease store (`extend_lease`) orders the loan's Relaxed stores after it.
        let start = self.reserve(self.tail, len as u64);
        let byte = (self.g.word(start) + 2) * 8;
        Ok(Loan { writer: self, start, byte, len, pos: 0, crc: None, crc_upto: 0 })
    }
}

impl Loan<'_> {
    /// The message's length in bytes (what [`loan`](RingWriter::loan) was asked for).
    #[inline]
    pub fn len(&self) -> usize {
        self.len
    }

    /// Always `false`: a loan holds at least one byte.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Panic unless `at..at + n` lies inside the message.
    #[inline]
    #[track_caller]
    fn check(&self, what: &str, at: usize, n: usize) {
        if at.checked_add(n).is_none_or(|end| end > self.len) {
            out_of_range(what, at, n, self.len);
        }
    }

    /// Keep the running checksum for `n` bytes stored at `at` (`hash` feeds them): a write at
    /// offset 0 starts it again, one at its end extends it, any other write drops it.
    #[inline]
    fn track(&mut self, at: usize, n: usize, hash: impl FnOnce(&mut Crc)) {
        if n == 0 || !self.writer.g.crc {
            return;
        }
        if at == 0 {
            self.crc = Some(Crc::new(self.writer.next_seq));
            self.crc_upto = 0;
        }
        match &mut self.crc {
            Some(c) if at == self.crc_upto => {
                hash(c);
                self.crc_upto += n;
            }
            _ => self.crc = None,
        }
    }

    /// Store `bytes` at offset `at` of the message.
    ///
    /// # Panics
    ///
    /// If `at + bytes.len() > self.len()` (see [Offsets](Loan#offsets)).
    #[inline]
    #[track_caller]
    pub fn write_at(&mut self, at: usize, bytes: &[u8]) {
        self.check("write_at", at, bytes.len());
        store_bytes(self.writer.region.words(), self.byte + at, bytes);
        self.track(at, bytes.len(), |c| c.update(bytes));
    }

    /// Store `src` as the whole message.
    ///
    /// # Panics
    ///
    /// If `src.len() != self.len()`, as [`slice::copy_from_slice`] does.
    #[inline]
    #[track_caller]
    pub fn copy_from_slice(&mut self, src: &[u8]) {
        if src.len() != self.len {
            panic!("Loan::copy_from_slice: {} bytes given for a loan of {} bytes", src.len(), self.len);
        }
        store_bytes(self.writer.region.words(), self.byte, src);
        self.track(0, src.len(), |c| c.update(src));
    }

    /// Set every byte of the message to `byte`.
    #[inline]
    pub fn fill(&mut self, byte: u8) {
        self.fill_at(0, self.len, byte);
    }

    /// Set `n` bytes from offset `at` to `byte`.
    ///
    /// # Panics
    ///
    /// If `at + n > self.len()`.
    #[inline]
    #[track_caller]
    pub fn fill_at(&mut self, at: usize, n: usize, byte: u8) {
        self.check("fill_at", at, n);
        fill_bytes(self.writer.region.words(), self.byte + at, n, byte);
        self.track(at, n, |c| {
            let block = [byte; 256];
            let mut left = n;
            while left > 0 {
                let k = left.min(block.len());
                c.update(&block[..k]);
                left -= k;
            }
        });
    }

    /// Store `v` little-endian at offset `at` (any alignment).
    ///
    /// # Panics
    ///
    /// If `at + 8 > self.len()`.
    #[inline]
    #[track_caller]
    pub fn put_u64_le(&mut self, at: usize, v: u64) {
        self.check("put_u64_le", at, 8);
        let byte = self.byte + at;
        let words = self.writer.region.words();
        if byte.is_multiple_of(8) {
            // Relaxed: see the type's docs (Ordering).
            words[byte / 8].store(v, Ordering::Relaxed);
        } else {
            store_bytes(words, byte, &v.to_le_bytes());
        }
        self.track(at, 8, |c| c.update(&v.to_le_bytes()));
    }

    /// Store `v` little-endian at offset `at` (any alignment).
    ///
    /// # Panics
    ///
    /// If `at + 4 > self.len()`.
    #[inline]
    #[track_caller]
    pub fn put_u32_le(&mut self, at: usize, v: u32) {
        self.check("put_u32_le", at, 4);
        store_bytes(self.writer.region.words(), self.byte + at, &v.to_le_bytes());
        self.track(at, 4, |c| c.update(&v.to_le_bytes()));
    }

    /// Where the next [`std::io::Write::write`] stores (0 when the loan is made).
    #[inline]
    pub fn position(&self) -> usize {
        self.pos
    }

    /// Move the [`std::io::Write`] cursor.
    ///
    /// # Panics
    ///
    /// If `pos > self.len()`.
    #[inline]
    #[track_caller]
    pub fn set_position(&mut self, pos: usize) {
        self.check("set_position", pos, 0);
        self.pos = pos;
    }

    /// Bytes the [`std::io::Write`] form can still take.
    #[inline]
    pub fn remaining(&self) -> usize {
        self.len - self.pos
    }

    /// Publish the message: the checksum of its bytes, the record header, then the tail.
    /// Returns its sequence number. The checksum was kept as the bytes were stored if the
    /// message was written front to back (each write starting at offset 0 or where the last
    /// one ended); otherwise it is computed here, reading the payload back with word loads.
    #[inline(always)]
    pub fn commit(self) -> u64 {
        let Loan { writer, start, byte, len, crc, crc_upto, .. } = self;
        let crc = match crc {
            Some(c) if crc_upto == len => c.finalize(),
            _ => writer.loan_crc(byte, len),
        };
        // Scalars only: the loan itself is not passed on (copying it through the stack made
        // each 64-byte commit wait on a store-forwarding stall).
        writer.commit_loan(start, len, crc)
    }
}

#[cold]
#[track_caller]
fn out_of_range(what: &str, at: usize, n: usize, len: usize) -> ! {
    panic!("Loan::{what}: {n} bytes at offset {at} do not fit in a loan of {len} bytes")
}

impl std::io::Write for Loan<'_> {
    /// Store as much of `buf` as fits from the cursor on; `WriteZero` when nothing fits.
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = buf.len().min(self.remaining());
        if n == 0 && !buf.is_empty() {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        store_bytes(self.writer.region.words(), self.byte + self.pos, &buf[..n]);
        self.track(self.pos, n, |c| c.update(&buf[..n]));
        self.pos += n;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl std::fmt::Debug for Loan<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Loan").field("len", &self.len).field("position", &self.pos).finish_non_exhaustive()
    }
}
