//! The broadcast ring: one writer, any number of read-only readers, each with its own cursor.
//!
//! # Layout
//!
//! A ring file is the 256-byte [header](crate::header), a control block, and a data region of
//! `capacity` bytes (a power of two) at `data_offset`. Control words (offsets in bytes; hot
//! words written at different rates live 128 bytes apart):
//!
//! | offset | field        | written by the writer                                     |
//! |-------:|--------------|-----------------------------------------------------------|
//! | 0x100  | tail         | every commit: end position of the last committed record  |
//! | 0x108  | tail_seq     | every commit: sequence number the next message will get  |
//! | 0x180  | lease        | every `capacity/16` bytes: the writer may overwrite any position below `lease - capacity` |
//! | 0x188  | head         | with `lease`: start of the oldest record not yet overwritten |
//! | 0x200  | notify       | futex word, +1 on each wake                               |
//! | 0x208  | wake_window  | at attach: the writer's [`WakePolicy`] in ns              |
//!
//! Positions are byte counts since the ring was created (`u64`, never wrap); the offset of
//! position `p` in the data region is `p % capacity`. A record is a 16-byte header — word 0:
//! `len: u32 | crc: u32`, word 1: `seq: u64` — then the payload, padded to 8 bytes. A record
//! never straddles the end of the data region: when it does not fit, the writer stores a
//! padding marker (`len == u32::MAX`, 8 bytes) and starts the record at offset 0. The crc is
//! crc32 (IEEE) of the payload XORed with a mix of `seq` (see docs/design.md, "Checksums").
//!
//! # Protocol
//!
//! Writer, per record: (1) if the record ends beyond `lease`, advance `head` past every record
//! the new lease will overwrite, store `head` (Release) and the new `lease` (Release); (2) store
//! the record's words with Release stores; (3) store `tail` with Release.
//!
//! Reader, per record: load `tail` (Acquire) when its cached copy is used up; copy the record
//! out with Relaxed word loads; Acquire fence; load `lease`. If `lease > pos + capacity` the
//! writer may have overwritten part of what was copied: the reader was **lapped**, jumps to
//! `head` and reports the messages it lost (the difference of sequence numbers). Otherwise the
//! copy is exactly what the writer committed; the reader then checks `seq` and the crc.
//!
//! Why the check is sound: every data store is a Release store sequenced after the lease store
//! that allowed it. If any word the reader copied came from such a store, the reader's Acquire
//! fence synchronises with it and the following load of `lease` sees the new lease. So either
//! every copied word is from the committed record, or the lease check fails.

use crate::checksum::{checksum, Checksummer, Crc};
use crate::clock::WakeClock;
use crate::header::{HeaderView, PARAM_WORDS};
use crate::region::{copy_in, copy_out, Region, WordWriter};
#[cfg(not(loom))]
use crate::sync::spin_hint;
use crate::sync::{fence, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Control-block word indices (see the module docs for the byte map).
const W_TAIL: usize = 0x100 / 8;
const W_TAIL_SEQ: usize = 0x108 / 8;
const W_LEASE: usize = 0x180 / 8;
const W_HEAD: usize = 0x188 / 8;
pub(crate) const W_NOTIFY: usize = 0x200 / 8;
const W_WAKE_WINDOW: usize = 0x208 / 8;
/// Smallest legal data offset: the control block ends at 0x280.
pub const MIN_DATA_OFFSET: u64 = 0x280;
/// Data offset used for files: the data region starts on its own page.
pub const FILE_DATA_OFFSET: u64 = 4096;
/// Bytes of a record header.
pub const RECORD_HEADER: u64 = 16;
/// `len` value of a padding marker.
const PAD_LEN: u32 = u32::MAX;
/// Smallest ring capacity.
pub const MIN_CAPACITY: u64 = 128;
/// Largest sequence number a valid ring holds (a larger one is corrupt; 2^63 messages at a
/// billion a second take three centuries).
pub const MAX_SEQ: u64 = u64::MAX / 2;
/// Largest position a valid ring reaches (2^62 bytes).
pub const MAX_POS: u64 = u64::MAX / 4;
/// Resyncs a single read may do before giving up with [`ReadError::Overrun`].
const MAX_RESYNCS: u32 = 64;

/// Geometry of a ring: what the header's parameter words hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RingParams {
    /// Byte offset of the data region in the file.
    pub data_offset: u64,
    /// Bytes in the data region; a power of two.
    pub capacity: u64,
    /// Largest message payload in bytes.
    pub max_msg: u32,
}

/// Why ring parameters were refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ParamsError {
    /// Capacity is not a power of two of at least [`MIN_CAPACITY`] bytes.
    BadCapacity(u64),
    /// The largest record (16-byte header plus `max_msg`, 8-aligned) exceeds a quarter of the
    /// capacity, or `max_msg` is zero.
    BadMaxMessage {
        /// Requested maximum payload.
        max_msg: u32,
        /// Largest payload this capacity allows.
        limit: u64,
    },
    /// The data offset is not 8-aligned or overlaps the control block.
    BadDataOffset(u64),
    /// The layout reaches past the end of the file.
    BeyondFile {
        /// Bytes the layout needs.
        needed: u64,
        /// Bytes the header says the file has.
        file_size: u64,
    },
}

impl std::fmt::Display for ParamsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ParamsError::BadCapacity(c) => {
                write!(f, "ring capacity {c} is not a power of two >= {MIN_CAPACITY}")
            }
            ParamsError::BadMaxMessage { max_msg, limit } => {
                write!(f, "max message {max_msg} B must be between 1 and {limit} B for this capacity")
            }
            ParamsError::BadDataOffset(o) => write!(f, "data offset {o} is invalid"),
            ParamsError::BeyondFile { needed, file_size } => {
                write!(f, "ring layout needs {needed} B but the file has {file_size} B")
            }
        }
    }
}

impl std::error::Error for ParamsError {}

impl RingParams {
    /// Parameters for a ring file holding `capacity` bytes of records.
    pub fn new(capacity: u64, max_msg: u32) -> Result<RingParams, ParamsError> {
        let p = RingParams { data_offset: FILE_DATA_OFFSET, capacity, max_msg };
        p.check()?;
        Ok(p)
    }

    /// Largest payload a ring of `capacity` bytes accepts.
    pub fn max_msg_limit(capacity: u64) -> u64 {
        (capacity / 4).saturating_sub(RECORD_HEADER) & !7
    }

    /// Validate the geometry (also used on parameters read from an untrusted file).
    pub fn check(&self) -> Result<(), ParamsError> {
        if !self.capacity.is_power_of_two() || self.capacity < MIN_CAPACITY || self.capacity > 1 << 46 {
            return Err(ParamsError::BadCapacity(self.capacity));
        }
        let limit = Self::max_msg_limit(self.capacity);
        if self.max_msg == 0 || u64::from(self.max_msg) > limit {
            return Err(ParamsError::BadMaxMessage { max_msg: self.max_msg, limit });
        }
        if !self.data_offset.is_multiple_of(8) || self.data_offset < MIN_DATA_OFFSET || self.data_offset > 1 << 20 {
            return Err(ParamsError::BadDataOffset(self.data_offset));
        }
        Ok(())
    }

    /// Total file size.
    pub fn file_size(&self) -> u64 {
        self.data_offset + self.capacity
    }

    /// The header parameter words.
    pub fn to_words(&self) -> [u64; PARAM_WORDS] {
        [self.data_offset, self.capacity, u64::from(self.max_msg), 0, 0, 0, 0, 0]
    }

    /// Read back from a validated header. The values are still checked: the file is untrusted.
    pub fn from_header(h: &HeaderView) -> Result<RingParams, ParamsError> {
        let max_msg = u32::try_from(h.params[2])
            .map_err(|_| ParamsError::BadMaxMessage { max_msg: u32::MAX, limit: Self::max_msg_limit(h.params[1]) })?;
        let p = RingParams { data_offset: h.params[0], capacity: h.params[1], max_msg };
        p.check()?;
        if p.file_size() > h.file_size {
            return Err(ParamsError::BeyondFile { needed: p.file_size(), file_size: h.file_size });
        }
        Ok(p)
    }
}

/// When the writer wakes readers blocked in a futex wait.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WakePolicy {
    /// A `FUTEX_WAKE` syscall after every publish call.
    Always,
    /// Wake only after a quiet gap of at least this long. Blocking readers spin for twice the
    /// window before they sleep, so a reader can only be asleep if the writer was quiet that
    /// long, and the writer then wakes it. Costs one clock read per publish call and no
    /// syscall while messages flow faster than the window.
    Adaptive(Duration),
    /// Never wake: readers poll or spin (blocking waits sleep in short naps).
    Never,
}

impl WakePolicy {
    /// The default: adaptive with a 50 µs window.
    pub const DEFAULT: WakePolicy = WakePolicy::Adaptive(Duration::from_micros(50));

    fn to_word(self) -> u64 {
        match self {
            WakePolicy::Always => 0,
            WakePolicy::Adaptive(d) => (d.as_nanos() as u64).clamp(1, u64::MAX - 1),
            WakePolicy::Never => u64::MAX,
        }
    }

    #[cfg_attr(loom, allow(dead_code))]
    fn from_word(w: u64) -> WakePolicy {
        match w {
            0 => WakePolicy::Always,
            u64::MAX => WakePolicy::Never,
            ns => WakePolicy::Adaptive(Duration::from_nanos(ns)),
        }
    }
}

impl Default for WakePolicy {
    fn default() -> Self {
        WakePolicy::DEFAULT
    }
}

/// A message payload was refused. `Copy`, no allocation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum PublishError {
    /// Empty messages are not allowed (a message is 1 byte or more).
    Empty,
    /// The message is longer than the ring's maximum.
    TooLarge {
        /// Length of the refused message.
        len: usize,
        /// The ring's maximum message length.
        max: u32,
    },
}

impl std::fmt::Display for PublishError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PublishError::Empty => f.write_str("empty message (messages are 1 byte or more)"),
            PublishError::TooLarge { len, max } => {
                write!(f, "message of {len} B exceeds the ring's maximum of {max} B")
            }
        }
    }
}

impl std::error::Error for PublishError {}

/// Metadata of a received message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Msg {
    /// Payload length in bytes.
    pub len: usize,
    /// Sequence number (the first message of a ring has sequence 1).
    pub seq: u64,
    /// Messages lost (overwritten before this reader got to them) just before this one. A
    /// reader that starts at the oldest message counts from the oldest message there was when it
    /// opened; one that starts at the newest, from its first message.
    pub lost: u64,
}

/// A read failed. `Copy`, no allocation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ReadError {
    /// The next message does not fit the buffer; it is not consumed. Retry with a larger one.
    BufferTooSmall {
        /// Bytes needed.
        needed: usize,
    },
    /// The ring holds bytes that no writer of this format produces (bad length, sequence or
    /// checksum). The reader skips nothing: call [`RingReader::skip_to_newest`] to go on.
    Corrupt {
        /// Position of the bad record.
        pos: u64,
        /// What was wrong.
        reason: &'static str,
    },
    /// The writer overwrote the oldest message again and again before it could be copied
    /// (a writer far faster than this reader, or a hostile file). Calling again retries.
    Overrun,
}

impl std::fmt::Display for ReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReadError::BufferTooSmall { needed } => write!(f, "buffer too small: message needs {needed} B"),
            ReadError::Corrupt { pos, reason } => write!(f, "corrupt record at position {pos}: {reason}"),
            ReadError::Overrun => {
                f.write_str("lapped on every retry: the writer overwrites faster than this reader copies")
            }
        }
    }
}

impl std::error::Error for ReadError {}

#[inline]
fn record_len(payload: u64) -> u64 {
    (RECORD_HEADER + payload + 7) & !7
}

/// The record checksum: crc32 of the payload under the sequence number (see
/// [`crate::checksum`]); a wrong `len` makes the reader hash other bytes, so it is caught too.
#[inline]
fn record_crc(seq: u64, payload: &[u8]) -> u32 {
    checksum(seq, &[payload])
}

/// Whether the writer may have overwritten anything a reader copied from the record at `pos`
/// (the reader's validation; see the module docs).
#[inline(always)]
fn lapped(w: &[AtomicU64], g: &Geometry, pos: u64) -> bool {
    // SYNC: Acquire fence, pairs with the Release stores of record words in RingWriter (which
    // are sequenced after the lease store that allowed them).
    fence(Ordering::Acquire);
    // Relaxed: ordered by the fence above.
    let lease = w[W_LEASE].load(Ordering::Relaxed);
    lease > pos.saturating_add(g.cap)
}

/// Geometry shared by writer and reader, derived once from validated params.
#[derive(Clone, Copy, Debug)]
struct Geometry {
    data_word: usize,
    cap: u64,
    mask: u64,
    max_msg: u32,
}

impl Geometry {
    fn new(region: &Region, p: &RingParams) -> Geometry {
        p.check().expect("ring params are validated before use");
        assert!(p.file_size() <= region.len_bytes(), "region smaller than the ring");
        Geometry { data_word: (p.data_offset / 8) as usize, cap: p.capacity, mask: p.capacity - 1, max_msg: p.max_msg }
    }

    /// Word index of position `pos` in the region.
    #[inline]
    fn word(&self, pos: u64) -> usize {
        self.data_word + ((pos & self.mask) / 8) as usize
    }
}

/// Result of a writer's attach to an existing ring.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Recovery {
    /// Records found intact between `head` and `tail`.
    pub intact: u64,
    /// Whether the control block or a record was inconsistent and the ring was emptied
    /// (readers behind are told they lost what they had not read).
    pub discarded: bool,
}

/// A writer's [`WakePolicy`], with the adaptive policy's clock.
enum Waking {
    Never,
    Always,
    Adaptive(WakeClock),
}

/// The single writer of a ring. Lives in the format crate so loom can check it; the writer
/// library wraps it with file handling.
pub struct RingWriter {
    region: Arc<Region>,
    g: Geometry,
    /// Committed end position (mirror of the `tail` word).
    tail: u64,
    next_seq: u64,
    lease: u64,
    head: u64,
    chunk: u64,
    waking: Waking,
    /// End position of the record last written (scratch for the commit that follows).
    tail_after: u64,
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

    fn with_state(
        region: Arc<Region>,
        g: Geometry,
        tail: u64,
        next_seq: u64,
        lease: u64,
        head: u64,
        policy: WakePolicy,
    ) -> RingWriter {
        let chunk = (g.cap / 16).max(8);
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

    /// Take over a ring left by a previous writer (which may have been killed at any
    /// instruction). Nothing the previous writer had not committed is visible to readers, so
    /// the in-flight record is simply dropped: the new writer goes on from the committed tail
    /// and overwrites it. The records between `head` and `tail` are verified; if the control
    /// block or any record is inconsistent, the ring is emptied in a way readers notice as a
    /// lap.
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
        match walked {
            Some((intact, last_seq)) => {
                let next_seq = last_seq.map_or(tail_seq.max(1), |s| s + 1);
                debug_assert!(next_seq <= MAX_SEQ + 1, "walk only accepts sequence numbers up to MAX_SEQ");
                let me = Self::with_state(region, g, tail, next_seq, lease, head, policy);
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
                w[W_TAIL_SEQ].store(next_seq, Ordering::Relaxed);
                // SYNC: Release, pairs with the Acquire load of head in RingReader::resync.
                w[W_HEAD].store(tail, Ordering::Release);
                w[W_LEASE].store(tail + g.cap, Ordering::Release);
                // SYNC: Release, pairs with the Acquire load of tail in RingReader::read.
                w[W_TAIL].store(tail, Ordering::Release);
                me.lease = tail + g.cap;
                (me, Recovery { intact: 0, discarded: true })
            }
        }
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
            buf.resize(len as usize, 0);
            copy_out(w, g.word(pos) + 2, &mut buf);
            if seq > MAX_SEQ || record_crc(seq, &buf) != (w0 >> 32) as u32 || last.is_some_and(|l| l + 1 != seq) {
                return None;
            }
            last = Some(seq);
            count += 1;
            pos += record_len(u64::from(len));
        }
        (pos == tail).then_some((count, last))
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
            // SYNC: Release, pairs with the Acquire fence in RingReader::read (via the lease).
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
        // SYNC: Release, pairs with the Acquire load of head in RingReader::resync: a reader
        // that sees the new head also sees the records below the tail that covered it.
        w[W_HEAD].store(self.head, Ordering::Release);
        // SYNC: Release, pairs with the Acquire load of lease in RingReader::resync (a reader
        // lapped by this lease then sees the head stored before it). For the data it covers,
        // the data's own Release stores order it.
        w[W_LEASE].store(new, Ordering::Release);
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
        self.finish_record(start, seq, msg.len() as u32, record_crc(seq, msg));
        Ok(seq)
    }

    #[inline]
    fn finish_record(&mut self, start: u64, seq: u64, len: u32, crc: u32) {
        let w = self.region.words();
        let first = self.g.word(start);
        // SYNC: Release (both), pair with the Acquire fence in RingReader::read.
        w[first].store(u64::from(len) | (u64::from(crc) << 32), Ordering::Release);
        w[first + 1].store(seq, Ordering::Release);
        self.next_seq = seq + 1;
        self.tail_after = start + record_len(u64::from(len));
    }

    /// Publish everything up to `end`: store tail, then wake sleepers per the policy.
    #[inline]
    fn commit(&mut self, end: u64) {
        let w = self.region.words();
        // Relaxed: a hint for recovery and statistics, never used to validate data.
        w[W_TAIL_SEQ].store(self.next_seq, Ordering::Relaxed);
        // SYNC: Release, pairs with the Acquire load of tail in RingReader::read.
        w[W_TAIL].store(end, Ordering::Release);
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

    /// Bump the notify word and wake every reader blocked on it.
    pub fn wake(&self) {
        let w = self.region.words();
        let n = w[W_NOTIFY].load(Ordering::Relaxed).wrapping_add(1) & 0xffff_ffff;
        // SYNC: Release, pairs with the Acquire load of notify in RingReader::wait.
        w[W_NOTIFY].store(n, Ordering::Release);
        #[cfg(not(loom))]
        crate::futex::wake_all(&self.region, W_NOTIFY);
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
        let crc = Crc::new(self.next_seq);
        Ok(Claim { writer: self, start, cap: max_len, out, crc })
    }
}

/// A message being written in place; see [`RingWriter::claim`].
pub struct Claim<'w> {
    writer: &'w mut RingWriter,
    start: u64,
    cap: usize,
    out: WordWriter,
    crc: Crc,
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
        self.crc.update(&bytes[..take]);
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
        self.writer.finish_record(self.start, seq, len as u32, self.crc.finalize());
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

/// Where a new reader starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Start {
    /// At the oldest message still in the ring.
    #[default]
    Oldest,
    /// After the newest message: only messages published from now on.
    Newest,
}

/// A reader's cursor over a ring. Never stores to the region: it works on a `PROT_READ`
/// mapping.
pub struct RingReader {
    region: Arc<Region>,
    g: Geometry,
    pos: u64,
    cached_tail: u64,
    /// What the next record's sequence number must be.
    expect: Expect,
    /// Prototype of every record checksum this reader takes.
    crc: Checksummer,
    lost_total: u64,
    laps: u64,
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
                r.resync();
                r.expect = Expect::Any { gap_from: r.peek_seq() };
            }
            Start::Newest => r.skip_to_newest(),
        }
        r
    }

    /// Move to the end: the next message read is the next one published.
    pub fn skip_to_newest(&mut self) {
        // SYNC: Acquire, pairs with the Release store of tail in RingWriter::commit.
        self.pos = self.region.words()[W_TAIL].load(Ordering::Acquire);
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
        // SYNC: Acquire, pairs with the Release store of tail in RingWriter::commit.
        self.region.words()[W_TAIL].load(Ordering::Acquire)
    }

    /// Sequence number the writer will give its next message.
    pub fn writer_next_seq(&self) -> u64 {
        // Relaxed: statistics only.
        self.region.words()[W_TAIL_SEQ].load(Ordering::Relaxed)
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
        // SYNC: Acquire, pairs with the Release store of tail in RingWriter::commit.
        self.cached_tail = self.region.words()[W_TAIL].load(Ordering::Acquire);
        self.pos != self.cached_tail
    }

    /// Jump to the oldest intact record after being lapped (or at start).
    fn resync(&mut self) {
        let w = self.region.words();
        // SYNC: Acquire, pairs with the Release store of lease in RingWriter::extend_lease: a
        // reader lapped by a lease it saw then sees the head stored before that lease, which is
        // at least lease - capacity, so the same lease cannot lap it again.
        let _ = w[W_LEASE].load(Ordering::Acquire);
        // SYNC: Acquire, pairs with the Release store of head in RingWriter::extend_lease:
        // the records from head up to the tail that covered them are visible.
        let head = w[W_HEAD].load(Ordering::Acquire);
        // SYNC: Acquire, pairs with the Release store of tail in RingWriter::commit.
        self.cached_tail = w[W_TAIL].load(Ordering::Acquire);
        self.pos = head;
        if let Expect::Seq(e) = self.expect {
            self.expect = Expect::Any { gap_from: Some(e) };
        }
    }

    /// The sequence number of the record at our position, if one is there and intact: the
    /// baseline for counting losses when a reader is lapped before its first message.
    fn peek_seq(&self) -> Option<u64> {
        if self.pos >= self.cached_tail || self.pos > MAX_POS {
            return None;
        }
        let w = self.region.words();
        let first = self.g.word(self.pos);
        let w0 = w[first].load(Ordering::Relaxed);
        if w0 as u32 == PAD_LEN || (self.pos & self.g.mask) + RECORD_HEADER > self.g.cap {
            return None;
        }
        let seq = w[first + 1].load(Ordering::Relaxed);
        (!self.lapped(self.pos) && seq <= MAX_SEQ).then_some(seq)
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
        match self.read_fast(buf) {
            Fast::Msg(m) => Ok(Some(m)),
            Fast::Empty => Ok(None),
            Fast::Unsure => self.read_general(buf),
        }
    }

    /// The common case of [`read`](Self::read) in a straight line: the next record lies below
    /// the cached tail, is a message (not padding) of a valid length that fits `buf`, was not
    /// overwritten while copied, and is the successor of the last message read. Anything else
    /// (padding, a lap, a start, a too-small buffer, a corrupt record) is `Unsure` and
    /// [`read_general`](Self::read_general), which handles every case, decides from scratch.
    /// Both conclusions drawn here are ones `read_general` draws from the same loads, and
    /// nothing but `cached_tail` (which `read_general` reloads the same way) changes unless a
    /// message is returned.
    #[inline(always)]
    fn read_fast(&mut self, buf: &mut [u8]) -> Fast {
        let g = &self.g;
        let w = self.region.words();
        let pos = self.pos;
        if pos >= self.cached_tail {
            // SYNC: Acquire, pairs with the Release store of tail in RingWriter::commit.
            self.cached_tail = w[W_TAIL].load(Ordering::Acquire);
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
        if off + rec > g.cap || buf.len() < len {
            return Fast::Unsure;
        }
        // The record's words after `w0` (seq, payload), in the data region: `off + rec <= cap`.
        let Some(body) = w.get(first + 1..first + (rec / 8) as usize) else { return Fast::Unsure };
        let seq = body[0].load(Ordering::Relaxed);
        let out = &mut buf[..len];
        copy_out(body, 1, out);
        if lapped(w, g, pos) || seq != expected || seq > MAX_SEQ {
            return Fast::Unsure;
        }
        if self.crc.checksum(seq, out) != (w0 >> 32) as u32 {
            return Fast::Unsure;
        }
        self.expect = Expect::Seq(seq + 1);
        self.pos = pos + rec;
        Fast::Msg(Msg { len, seq, lost: 0 })
    }

    /// [`read`](Self::read) for every case: starts, laps, padding, errors.
    #[inline(never)]
    fn read_general(&mut self, buf: &mut [u8]) -> Result<Option<Msg>, ReadError> {
        let mut resyncs = 0;
        loop {
            if resyncs > MAX_RESYNCS {
                return Err(ReadError::Overrun);
            }
            if self.pos >= self.cached_tail {
                // SYNC: Acquire, pairs with the Release store of tail in RingWriter::commit.
                self.cached_tail = self.region.words()[W_TAIL].load(Ordering::Acquire);
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
            if buf.len() < len {
                if self.lapped(pos) {
                    resyncs += 1;
                    self.on_lap();
                    continue;
                }
                return Err(ReadError::BufferTooSmall { needed: len });
            }
            let seq = w[first + 1].load(Ordering::Relaxed);
            copy_out(w, first + 2, &mut buf[..len]);
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
            if self.crc.checksum(seq, &buf[..len]) != (w0 >> 32) as u32 {
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

    /// Wait until a message may be available or `deadline` passes. Spins first (for twice the
    /// writer's adaptive window), then sleeps on the futex word. Returns whether data is there.
    #[cfg(not(loom))]
    pub fn wait(&mut self, deadline: Instant) -> bool {
        let region = Arc::clone(&self.region);
        let w = region.words();
        // SYNC: Acquire, pairs with the Release store of notify in RingWriter::wake.
        let mut notified = w[W_NOTIFY].load(Ordering::Acquire);
        if self.has_data() {
            return true;
        }
        let policy = WakePolicy::from_word(w[W_WAKE_WINDOW].load(Ordering::Relaxed));
        let spin_for = match policy {
            WakePolicy::Adaptive(window) => window.saturating_mul(2),
            WakePolicy::Always | WakePolicy::Never => Duration::from_micros(20),
        };
        let spin_until = Instant::now() + spin_for;
        let mut spins = 0u32;
        loop {
            if self.has_data() {
                return true;
            }
            let t = Instant::now();
            if t >= deadline {
                return false;
            }
            if t >= spin_until {
                break;
            }
            spins += 1;
            if spins.is_multiple_of(64) {
                std::thread::yield_now();
            } else {
                spin_hint();
            }
        }
        loop {
            let t = Instant::now();
            if t >= deadline {
                return self.has_data();
            }
            let nap = deadline - t;
            match policy {
                WakePolicy::Never => std::thread::sleep(nap.min(Duration::from_micros(200))),
                _ => crate::futex::wait(&self.region, W_NOTIFY, notified as u32, nap),
            }
            if self.has_data() {
                return true;
            }
            // SYNC: Acquire, as above.
            notified = w[W_NOTIFY].load(Ordering::Acquire);
            if self.has_data() {
                return true;
            }
        }
    }
}
