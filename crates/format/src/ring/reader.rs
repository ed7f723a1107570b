//! The reader side of the ring: a cursor that never stores to the region.

use super::*;
use crate::checksum::{Checksummer, Crc};
use crate::region::{copy_out, copy_out_bytes, load_at};
use crate::sync::load_acquire;
use std::sync::Arc;

/// A reader's cursor over a ring. Never stores to the region: it works on a `PROT_READ`
/// mapping. A clone is an independent cursor at the same place (one to [`wait`](Self::wait)
/// on another thread, for instance).
#[derive(Clone)]
pub struct RingReader {
    pub(super) region: Arc<Region>,
    pub(super) g: Geometry,
    pub(super) pos: u64,
    pub(super) cached_tail: u64,
    /// What the next record's sequence number must be.
    expect: Expect,
    /// Prototype of every record checksum this reader takes.
    pub(super) crc: Checksummer,
    pub(super) lost_total: u64,
    pub(super) laps: u64,
}

/// What a reader knows about the sequence number of the next record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expect {
    /// Exactly this one: the successor of the last message read.
    Seq(u64),
    /// Any (right after a start or a lap); not below `gap_from`, the sequence we expected when
    /// we were lapped (or the oldest there was at start), from which losses are counted.
    Any { gap_from: Option<u64> },
}

/// What the straight-line path of [`RingReader::read`] concluded.
enum Fast {
    /// A message was read, checked and consumed.
    Msg(Msg),
    /// The ring holds no message for us yet.
    Empty,
    /// Anything else: the general path decides.
    Unsure,
}

impl RingReader {
    /// A reader of the ring in `region`, starting at `start`.
    pub fn new(region: Arc<Region>, params: &RingParams, start: Start) -> RingReader {
        let g = Geometry::new(&region, params);
        let mut r = RingReader {
            region,
            g,
            pos: 0,
            cached_tail: 0,
            expect: Expect::Any { gap_from: None },
            crc: Checksummer::new(),
            lost_total: 0,
            laps: 0,
        };
        match start {
            Start::Oldest => {
                // The writer's next sequence, loaded before the tail resync loads: it belongs to
                // a tail no later than that one, so it is never above the sequence of the first
                // record this reader can meet, and it is the baseline when the ring is empty.
                let next = r.writer_next_seq();
                r.resync();
                let oldest = r.peek_seq();
                let empty = r.pos == r.cached_tail;
                r.expect = Expect::Any { gap_from: oldest.or(empty.then_some(next)) };
            }
            Start::Newest => r.skip_to_newest(),
        }
        r
    }

    /// Bytes of the ring's data region (what it holds before a writer laps a reader).
    pub fn capacity(&self) -> u64 {
        self.g.cap
    }

    /// Move to the end: the next message read is the next one published.
    pub fn skip_to_newest(&mut self) {
        // SYNC: Acquire, pairs with the Release store of tail in RingWriter::commit (and in
        // RingWriter::attach when it empties the ring).
        self.pos = load_acquire(&self.region.words()[W_TAIL]);
        self.cached_tail = self.pos;
        self.expect = Expect::Any { gap_from: None };
    }

    /// Total messages this reader lost to laps.
    pub fn lost(&self) -> u64 {
        self.lost_total
    }

    /// Number of times this reader was lapped.
    pub fn laps(&self) -> u64 {
        self.laps
    }

    /// This reader's position (bytes since the ring was created).
    pub fn position(&self) -> u64 {
        self.pos
    }

    /// The writer's committed tail position now.
    pub fn writer_tail(&self) -> u64 {
        // SYNC: Acquire, pairs with the Release store of tail in RingWriter::commit (and in
        // RingWriter::attach when it empties the ring).
        load_acquire(&self.region.words()[W_TAIL])
    }

    /// Sequence number the writer will give its next message (a hint, for statistics: never
    /// ahead of the tail this reader sees after it).
    pub fn writer_next_seq(&self) -> u64 {
        // SYNC: Acquire, pairs with the Release store of tail_seq in RingWriter::commit (stored
        // after tail): the tail loaded after this covers the messages the hint counts.
        load_acquire(&self.region.words()[W_TAIL_SEQ])
    }

    /// The writer epoch in the file header (+1 for every writer that attached).
    pub fn writer_epoch(&self) -> u64 {
        // SYNC: Acquire, pairs with the Release store of the epoch in header::bump_epoch
        // (WriterFile::finish): a reader that sees a new epoch sees what the new writer's
        // attach repaired and stored before it.
        load_acquire(&self.region.words()[crate::header::W_EPOCH])
    }

    /// The writer-state word in the file header (running, closed, retired).
    pub fn writer_state(&self) -> u64 {
        // SYNC: Acquire, pairs with the Release store in header::set_writer_state: a reader
        // that sees a writer closed or the file retired sees everything stored before.
        load_acquire(&self.region.words()[crate::header::W_WRITER_STATE])
    }

    /// Oldest intact position (statistics; may be stale by the time it is used).
    pub fn writer_head(&self) -> u64 {
        // Relaxed: statistics only.
        self.region.words()[W_HEAD].load(Ordering::Relaxed)
    }

    /// Whether a message is (probably) waiting: cheap, for spin loops.
    #[inline]
    pub fn has_data(&mut self) -> bool {
        if self.pos < self.cached_tail {
            return true;
        }
        // SYNC: Acquire, pairs with the Release store of tail in RingWriter::commit (and in
        // RingWriter::attach when it empties the ring).
        self.cached_tail = load_acquire(&self.region.words()[W_TAIL]);
        self.pos != self.cached_tail
    }

    /// Jump to the oldest intact record after being lapped (or at start).
    fn resync(&mut self) {
        let w = self.region.words();
        // SYNC: Acquire, pairs with the Release store of lease in RingWriter::extend_lease: a
        // reader lapped by a lease it saw then sees the head stored before that lease, which is
        // at least lease - capacity, so the same lease cannot lap it again.
        let _ = load_acquire(&w[W_LEASE]);
        // SYNC: Acquire, pairs with the Release store of head in RingWriter::extend_lease:
        // the records from head up to the tail that covered them are visible.
        let head = load_acquire(&w[W_HEAD]);
        // SYNC: Acquire, pairs with the Release store of tail in RingWriter::commit (and in
        // RingWriter::attach when it empties the ring).
        self.cached_tail = load_acquire(&w[W_TAIL]);
        self.pos = head;
        if let Expect::Seq(e) = self.expect {
            self.expect = Expect::Any { gap_from: Some(e) };
        }
    }

    /// The sequence number of the record at our position, if one is there and intact: the
    /// baseline for counting losses when a reader is lapped before its first message. A
    /// padding marker at our position is skipped to the record at the next lap boundary.
    fn peek_seq(&self) -> Option<u64> {
        if self.pos >= self.cached_tail || self.pos > MAX_POS || !self.pos.is_multiple_of(8) {
            return None;
        }
        let w = self.region.words();
        let off = self.pos & self.g.mask;
        // Relaxed (all loads here): validated by the lap check below (its Acquire fence).
        let w0 = w[self.g.word(self.pos)].load(Ordering::Relaxed);
        // Where the record is: here, or after the padding at the start of the next lap.
        let at = if w0 as u32 == PAD_LEN && off != 0 { self.pos + (self.g.cap - off) } else { self.pos };
        if at >= self.cached_tail || (at & self.g.mask) + RECORD_HEADER > self.g.cap {
            return None;
        }
        let seq = w[self.g.word(at) + 1].load(Ordering::Relaxed);
        // Not lapped at `pos` means no word from `pos` on was overwritten while we loaded it
        // (`at` is further on), so both the marker and `seq` are what the writer committed.
        (!self.lapped(self.pos) && seq <= MAX_SEQ).then_some(seq)
    }

    /// Whether records of this ring carry payload checksums to verify.
    #[inline]
    fn checks_crc(&self) -> bool {
        self.g.crc
    }

    #[inline]
    fn lapped(&self, pos: u64) -> bool {
        lapped(self.region.words(), &self.g, pos)
    }

    fn on_lap(&mut self) {
        self.laps += 1;
        self.resync();
    }

    /// Copy the next message into `buf`. `Ok(None)` when there is none yet.
    #[inline]
    pub fn read(&mut self, buf: &mut [u8]) -> Result<Option<Msg>, ReadError> {
        let mut sink = Buf(buf);
        match self.read_fast(&mut sink) {
            Fast::Msg(m) => Ok(Some(m)),
            Fast::Empty => Ok(None),
            Fast::Unsure => self.read_general(&mut sink),
        }
    }

    /// Zero-copy read: call `f` on the next message while it is still in the ring, then
    /// validate (not lapped, sequence and checksum). `Ok(None)` when there is no message yet.
    ///
    /// `f` looks at bytes the writer may be overwriting at that moment (a reader lapped while
    /// `f` runs): it may see torn bytes, so it must not trust them (no indexing by a length
    /// read from them without a bounds check, no `unsafe` based on them). When validation fails
    /// the result of `f` is dropped, the reader jumps as it does after any lap, and `f` is
    /// called again on the next message; only the result of a call on validated bytes is
    /// returned, with the message's metadata.
    #[inline]
    pub fn read_with<R>(&mut self, f: impl FnMut(&MsgBytes<'_>) -> R) -> Result<Option<(Msg, R)>, ReadError> {
        let mut sink = InPlace { f, out: None, crc: 0, crc_on: self.checks_crc() };
        let got = match self.read_fast(&mut sink) {
            Fast::Msg(m) => Some(m),
            Fast::Empty => None,
            Fast::Unsure => self.read_general(&mut sink)?,
        };
        Ok(got.map(|m| (m, sink.out.take().expect("a message read in place ran the closure"))))
    }

    /// The common case of [`read`](Self::read) and [`read_with`](Self::read_with) in a
    /// straight line: the next record lies below the cached tail, is a message (not padding)
    /// of a valid length that fits the sink, was not overwritten while loaded, and is the
    /// successor of the last message read. Anything else (padding, a lap, a start, a too-small
    /// buffer, a corrupt record) is `Unsure` and [`read_general`](Self::read_general), which
    /// handles every case, decides from scratch (loading the record into the sink again).
    /// Both conclusions drawn here are ones `read_general` draws from the same loads, and
    /// nothing but `cached_tail` (which `read_general` reloads the same way) changes unless a
    /// message is returned.
    #[inline(always)]
    fn read_fast<S: Sink>(&mut self, sink: &mut S) -> Fast {
        let g = &self.g;
        let w = self.region.words();
        let pos = self.pos;
        if pos >= self.cached_tail {
            // SYNC: Acquire, pairs with the Release store of tail in RingWriter::commit (and in
            // RingWriter::attach when it empties the ring).
            self.cached_tail = load_acquire(&w[W_TAIL]);
            if pos == self.cached_tail {
                return Fast::Empty;
            }
            if pos > self.cached_tail {
                return Fast::Unsure;
            }
        }
        let Expect::Seq(expected) = self.expect else { return Fast::Unsure };
        // `pos <= MAX_POS` (the top two bits clear), 8-aligned, and not more than a ring behind
        // the tail: as `read_general` requires before it looks at the record.
        const BAD_POS_BITS: u64 = !MAX_POS | 7;
        if pos & BAD_POS_BITS != 0 || self.cached_tail - pos > g.cap {
            return Fast::Unsure;
        }
        let off = pos & g.mask;
        let first = g.word(pos);
        // In the mapping: `Geometry::new` checked the data region is, and `off < cap`.
        let w0 = w[first].load(Ordering::Relaxed);
        let len = w0 as u32;
        // One compare refuses a zero length, a padding marker (`u32::MAX`) and anything over
        // `max_msg` (which is below `u32::MAX`).
        if len.wrapping_sub(1) >= g.max_msg {
            return Fast::Unsure;
        }
        let rec = record_len(u64::from(len));
        let len = len as usize;
        if off + rec > g.cap || !sink.fits(len) {
            return Fast::Unsure;
        }
        // The record's words after `w0` (seq, payload), in the data region: `off + rec <= cap`.
        let Some(body) = w.get(first + 1..first + (rec / 8) as usize) else { return Fast::Unsure };
        let seq = body[0].load(Ordering::Relaxed);
        sink.load(body, 1, len, seq);
        if lapped(w, g, pos) || seq != expected || seq > MAX_SEQ {
            return Fast::Unsure;
        }
        if g.crc && sink.checksum(&self.crc, seq, len) != (w0 >> 32) as u32 {
            return Fast::Unsure;
        }
        self.expect = Expect::Seq(seq + 1);
        self.pos = pos + rec;
        Fast::Msg(Msg { len, seq, lost: 0 })
    }

    /// [`read`](Self::read) (and [`read_with`](Self::read_with)) for every case: starts, laps,
    /// padding, errors.
    #[inline(never)]
    fn read_general<S: Sink>(&mut self, sink: &mut S) -> Result<Option<Msg>, ReadError> {
        let mut resyncs = 0;
        loop {
            if resyncs > MAX_RESYNCS {
                return Err(ReadError::Overrun);
            }
            if self.pos >= self.cached_tail {
                // SYNC: Acquire, pairs with the Release store of tail in RingWriter::commit (and in
                // RingWriter::attach when it empties the ring).
                self.cached_tail = load_acquire(&self.region.words()[W_TAIL]);
                if self.pos == self.cached_tail {
                    return Ok(None);
                }
                if self.pos > self.cached_tail {
                    // Only a discarded (emptied) ring moves tail; treat it as a lap.
                    resyncs += 1;
                    self.on_lap();
                    continue;
                }
            }
            if self.pos > MAX_POS {
                return Err(ReadError::Corrupt { pos: self.pos, reason: "position out of range" });
            }
            if self.cached_tail - self.pos > self.g.cap || !self.pos.is_multiple_of(8) {
                resyncs += 1;
                self.on_lap();
                continue;
            }
            let pos = self.pos;
            let off = pos & self.g.mask;
            let w = self.region.words();
            let first = self.g.word(pos);
            let w0 = w[first].load(Ordering::Relaxed);
            let len = w0 as u32;
            if len == PAD_LEN {
                if self.lapped(pos) {
                    resyncs += 1;
                    self.on_lap();
                    continue;
                }
                if off == 0 {
                    return Err(ReadError::Corrupt { pos, reason: "padding at the start of the ring" });
                }
                self.pos += self.g.cap - off;
                continue;
            }
            let rec = record_len(u64::from(len));
            if len == 0 || len > self.g.max_msg || off + rec > self.g.cap {
                if self.lapped(pos) {
                    resyncs += 1;
                    self.on_lap();
                    continue;
                }
                return Err(ReadError::Corrupt { pos, reason: "record length out of range" });
            }
            let len = len as usize;
            if !sink.fits(len) {
                if self.lapped(pos) {
                    resyncs += 1;
                    self.on_lap();
                    continue;
                }
                return Err(ReadError::BufferTooSmall { needed: len });
            }
            let seq = w[first + 1].load(Ordering::Relaxed);
            // `first + 2 .. first + rec / 8` is in the data region: `off + rec <= cap`.
            sink.load(w, first + 2, len, seq);
            if self.lapped(pos) {
                resyncs += 1;
                self.on_lap();
                continue;
            }
            // The copy is exactly what the writer committed; now check it is what it meant.
            let in_order = match self.expect {
                Expect::Seq(e) => seq == e,
                Expect::Any { gap_from } => gap_from.is_none_or(|g| seq >= g),
            };
            if seq > MAX_SEQ || !in_order {
                return Err(ReadError::Corrupt { pos, reason: "sequence number out of order" });
            }
            if self.checks_crc() && sink.checksum(&self.crc, seq, len) != (w0 >> 32) as u32 {
                return Err(ReadError::Corrupt { pos, reason: "checksum mismatch" });
            }
            let lost = match self.expect {
                Expect::Any { gap_from: Some(g) } => seq - g,
                _ => 0,
            };
            self.lost_total += lost;
            self.expect = Expect::Seq(seq + 1);
            self.pos += rec;
            return Ok(Some(Msg { len, seq, lost }));
        }
    }
}

/// Where [`RingReader::read_general`] puts a message.
trait Sink {
    /// Whether a message of `len` bytes fits.
    fn fits(&self, len: usize) -> bool;
    /// Take the `len` payload bytes at word `first` of `w` (a message with sequence `seq`) with
    /// Relaxed loads; the caller validates (lap check) afterwards.
    fn load(&mut self, w: &[AtomicU64], first: usize, len: usize, seq: u64);
    /// The checksum of what `load` took, under `seq` (called once the load was validated).
    fn checksum(&self, crc: &Checksummer, seq: u64, len: usize) -> u32;
}

/// Copy into the caller's buffer.
struct Buf<'b>(&'b mut [u8]);

impl Sink for Buf<'_> {
    #[inline]
    fn fits(&self, len: usize) -> bool {
        self.0.len() >= len
    }

    #[inline]
    fn load(&mut self, w: &[AtomicU64], first: usize, len: usize, _seq: u64) {
        copy_out(w, first, &mut self.0[..len]);
    }

    #[inline]
    fn checksum(&self, crc: &Checksummer, seq: u64, len: usize) -> u32 {
        crc.checksum(seq, &self.0[..len])
    }
}

/// Leave the message in the ring: run the caller's closure on it there.
struct InPlace<F, R> {
    f: F,
    out: Option<R>,
    /// Checksum of the bytes as loaded for it, before the lap check.
    crc: u32,
    crc_on: bool,
}

impl<F: FnMut(&MsgBytes<'_>) -> R, R> Sink for InPlace<F, R> {
    #[inline]
    fn fits(&self, _len: usize) -> bool {
        true
    }

    #[inline]
    fn load(&mut self, w: &[AtomicU64], first: usize, len: usize, seq: u64) {
        let bytes = MsgBytes { words: w, first, len };
        // A previous call's result was on bytes that failed validation: dropped here.
        self.out = Some((self.f)(&bytes));
        // The checksum must come from loads made before the lap check, as the closure's did:
        // a copy after it could see a later writer's bytes. (The closure and the checksum load
        // the bytes separately; validated, both loaded what the writer committed.)
        if self.crc_on {
            let mut h = Crc::new(seq);
            h.update_from_words(w, first * 8, len);
            self.crc = h.finalize();
        }
    }

    #[inline]
    fn checksum(&self, _crc: &Checksummer, _seq: u64, _len: usize) -> u32 {
        self.crc
    }
}

/// A message's bytes still in the ring, handed to the closure of a zero-copy read.
///
/// The writer may be overwriting them while the closure runs (only if this reader is being
/// lapped), so they are read with word loads, never through a `&[u8]`, and the read validates
/// afterwards: the closure may see torn bytes, and its result is returned only if it was not.
pub struct MsgBytes<'a> {
    words: &'a [AtomicU64],
    /// Word index of the first payload byte (payloads start 8-aligned).
    first: usize,
    len: usize,
}

#[cold]
#[track_caller]
fn out_of_message(start: usize, n: usize, len: usize) -> ! {
    panic!("range {start}..{} out of a message of {len} bytes", start.saturating_add(n))
}

impl MsgBytes<'_> {
    /// Length in bytes.
    #[inline]
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the message is empty (never: messages are 1 byte or more).
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Copy `out.len()` bytes starting at byte `start` of the message into `out`. Panics if
    /// `start + out.len()` exceeds [`len`](Self::len).
    #[inline]
    pub fn copy_to(&self, start: usize, out: &mut [u8]) {
        let end = start.checked_add(out.len()).expect("range overflows");
        assert!(end <= self.len, "range {start}..{end} out of a message of {} bytes", self.len);
        copy_out_bytes(self.words, self.first * 8 + start, out);
    }

    /// The 8 bytes at byte `start` as a little-endian `u64` (panics past the end).
    #[inline]
    pub fn u64_le_at(&self, start: usize) -> u64 {
        if start.checked_add(8).is_none_or(|end| end > self.len) {
            out_of_message(start, 8, self.len);
        }
        // One word load, or two for an unaligned `start`: the payload starts 8-aligned.
        load_at(self.words, self.first * 8 + start)
    }

    /// The byte at `i` (panics past the end).
    #[inline]
    pub fn byte(&self, i: usize) -> u8 {
        if i >= self.len {
            out_of_message(i, 1, self.len);
        }
        (self.words[self.first + i / 8].load(Ordering::Relaxed) >> (8 * (i % 8))) as u8
    }

    /// Copy the whole message into a new `Vec`.
    pub fn to_vec(&self) -> Vec<u8> {
        let mut v = vec![0u8; self.len];
        self.copy_to(0, &mut v);
        v
    }
}
