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
//! | 0x100  | tail         | every commit: end position of the last committed record; its low 32 bits are the futex word blocked readers sleep on |
//! | 0x108  | tail_seq     | every commit, after `tail`: sequence number the next message will get |
//! | 0x180  | lease        | every `capacity/16` bytes: the writer may overwrite any position below `lease - capacity` |
//! | 0x188  | head         | with `lease`: start of the oldest record not yet overwritten |
//! | 0x200  | (reserved)   | zero (was the `notify` futex word before layout version 4) |
//! | 0x208  | wake_window  | at attach: the writer's [`WakePolicy`] in ns              |
//!
//! Positions are byte counts since the ring was created (`u64`, never wrap); the offset of
//! position `p` in the data region is `p % capacity`. A record is a 16-byte header — word 0:
//! `len: u32 | crc: u32`, word 1: `seq: u64` — then the payload, padded to 8 bytes. A record
//! never straddles the end of the data region: when it does not fit, the writer stores a
//! padding marker (`len == u32::MAX`, 8 bytes) and starts the record at offset 0. The crc is
//! crc32 (IEEE) of the payload XORed with a mix of `seq` (see docs/design.md, "Checksums"), or 0 in
//! a ring created without payload checksums ([`RingParams::checksums`]).
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
//!
//! Waiting ([`RingReader::wait`]): a reader that found the ring empty spins until it has seen
//! the same `tail` for twice the writer's wake window, then sleeps in `FUTEX_WAIT` on the low
//! half of `tail`, compared with the value of its last load; so a commit after that load makes
//! the kernel refuse the sleep, and the writer's adaptive policy wakes every commit that can
//! follow such a sleep (docs/design.md §3.6 has the argument).
//!
//! One concern per file: `writer.rs` (publish path), `recovery.rs` (a writer attaching to a
//! ring a previous one left), `reader.rs` (the cursor), `wait.rs` (blocking and waking).

mod reader;
#[cfg(feature = "write")]
mod recovery;
mod wait;
#[cfg(feature = "write")]
mod writer;

pub use reader::{MsgBytes, RingReader};
#[cfg(feature = "write")]
pub use recovery::Recovery;
pub use wait::wake_readers;
#[cfg(feature = "write")]
pub use writer::{Claim, Loan, RingWriter};

/// Let `ticks` of the logical clock pass (loom models only: the clock that stands in for time
/// under `--cfg loom`, see `clock.rs`): a thread preempted for that long.
#[cfg(loom)]
pub fn advance_logical_clock(ticks: u64) {
    crate::clock::advance_logical_clock(ticks);
}

#[cfg(feature = "write")]
use crate::checksum::checksum;
use crate::header::{HeaderView, PARAM_WORDS};
use crate::region::Region;
use crate::sync::{fence, AtomicU64, Ordering};
use std::time::Duration;

/// Control-block word indices (see the module docs and [`crate::layout`] for the byte map).
use crate::layout::{W_HEAD, W_LEASE, W_TAIL, W_TAIL_SEQ, W_WAKE_WINDOW};
/// Smallest legal data offset: the control block ends at 0x280.
pub const MIN_DATA_OFFSET: u64 = crate::layout::RING_MIN_DATA_OFFSET;
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
/// Largest message any ring carries (64 MiB): a format limit, so a reader never sizes a buffer
/// by what a hostile file claims beyond it (a record also stays within a quarter of the ring).
pub const MAX_MESSAGE: u64 = 64 << 20;
/// Longest adaptive wake window (1 ms): a writer clamps its window to it, and a reader treats a
/// larger `wake_window` word as nonsense (the default), so a hostile file cannot make blocking
/// waits spin for long before they sleep.
pub const MAX_WAKE_WINDOW: Duration = Duration::from_millis(1);
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
    /// Whether records carry a payload checksum (crc32) that readers verify: header parameter
    /// word 7 is [`CHECKSUM_CRC32`](crate::header::CHECKSUM_CRC32) or
    /// [`CHECKSUM_NONE`](crate::header::CHECKSUM_NONE).
    pub checksums: bool,
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
    /// The file names a checksum algorithm this build does not know.
    UnknownChecksum(u64),
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
            ParamsError::UnknownChecksum(id) => {
                write!(
                    f,
                    "checksum algorithm {id} unknown (this build knows {} and {})",
                    crate::header::CHECKSUM_NONE,
                    crate::header::CHECKSUM_CRC32
                )
            }
            ParamsError::BeyondFile { needed, file_size } => {
                write!(f, "ring layout needs {needed} B but the file has {file_size} B")
            }
        }
    }
}

impl std::error::Error for ParamsError {}

impl RingParams {
    /// Parameters for a ring file holding `capacity` bytes of records, with checksums.
    pub fn new(capacity: u64, max_msg: u32) -> Result<RingParams, ParamsError> {
        let p = RingParams { data_offset: FILE_DATA_OFFSET, capacity, max_msg, checksums: true };
        p.check()?;
        Ok(p)
    }

    /// The same parameters with payload checksums on or off.
    pub fn with_checksums(self, on: bool) -> RingParams {
        RingParams { checksums: on, ..self }
    }

    /// Largest payload a ring of `capacity` bytes accepts.
    pub fn max_msg_limit(capacity: u64) -> u64 {
        ((capacity / 4).saturating_sub(RECORD_HEADER) & !7).min(MAX_MESSAGE)
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
        let checksum = if self.checksums { crate::header::CHECKSUM_CRC32 } else { crate::header::CHECKSUM_NONE };
        [self.data_offset, self.capacity, u64::from(self.max_msg), 0, 0, 0, 0, checksum]
    }

    /// Read back from a validated header. The values are still checked: the file is untrusted.
    pub fn from_header(h: &HeaderView) -> Result<RingParams, ParamsError> {
        let max_msg = u32::try_from(h.params[2])
            .map_err(|_| ParamsError::BadMaxMessage { max_msg: u32::MAX, limit: Self::max_msg_limit(h.params[1]) })?;
        let checksums = match h.params[crate::header::PARAM_CHECKSUM] {
            crate::header::CHECKSUM_CRC32 => true,
            crate::header::CHECKSUM_NONE => false,
            other => return Err(ParamsError::UnknownChecksum(other)),
        };
        let p = RingParams { data_offset: h.params[0], capacity: h.params[1], max_msg, checksums };
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
    /// syscall while messages flow faster than the window. Windows are clamped to
    /// 1 ns..=[`MAX_WAKE_WINDOW`].
    Adaptive(Duration),
    /// Never wake: readers poll or spin (blocking waits sleep in short naps).
    Never,
}

impl WakePolicy {
    /// The default: adaptive with a 50 µs window.
    pub const DEFAULT: WakePolicy = WakePolicy::Adaptive(Duration::from_micros(50));

    #[cfg(feature = "write")]
    fn to_word(self) -> u64 {
        match self {
            WakePolicy::Always => 0,
            WakePolicy::Adaptive(d) => d.as_nanos().clamp(1, MAX_WAKE_WINDOW.as_nanos()) as u64,
            WakePolicy::Never => u64::MAX,
        }
    }

    /// The policy a `wake_window` word stands for. The word is untrusted: a window beyond
    /// [`MAX_WAKE_WINDOW`] (no writer stores one) is read as the default.
    fn from_word(w: u64) -> WakePolicy {
        match w {
            0 => WakePolicy::Always,
            u64::MAX => WakePolicy::Never,
            ns if u128::from(ns) <= MAX_WAKE_WINDOW.as_nanos() => WakePolicy::Adaptive(Duration::from_nanos(ns)),
            _ => WakePolicy::DEFAULT,
        }
    }

    /// The policy as the writer applies it: the window clamped as stored in the file.
    #[cfg(feature = "write")]
    fn normalized(self) -> WakePolicy {
        WakePolicy::from_word(self.to_word())
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
    /// checksum). The reader skips nothing: skip to the newest message (`skip_to_newest`) to go on.
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

/// Bytes of ring a message of `len` bytes takes: its 16-byte record header and the payload,
/// padded to 8 bytes. A ring of capacity `C` holds at least `C / record_size(len) - 1` such
/// messages (one padding marker at most is lost where the ring wraps).
pub const fn record_size(len: usize) -> u64 {
    (RECORD_HEADER + len as u64).next_multiple_of(8)
}

#[cfg(feature = "write")]
/// The record checksum: crc32 of the payload under the sequence number (see
/// [`crate::checksum`]); a wrong `len` makes the reader hash other bytes, so it is caught too.
/// Zero in a ring without checksums.
#[inline]
fn record_crc(g: &Geometry, seq: u64, payload: &[u8]) -> u32 {
    if g.crc {
        checksum(seq, &[payload])
    } else {
        0
    }
}

/// Whether the writer may have overwritten anything a reader copied from the record at `pos`
/// (the reader's validation; see the module docs).
#[inline(always)]
fn lapped(w: &[AtomicU64], g: &Geometry, pos: u64) -> bool {
    // SYNC: Acquire fence, pairs with the Release stores of record words (RingWriter::
    // finish_record, the payload stores of region::copy_in and WordWriter::write, the padding
    // marker in RingWriter::reserve), each sequenced after the lease store in
    // RingWriter::extend_lease that allowed it, and with the Release fence after that lease
    // store, which orders a Loan's Relaxed payload stores (region::store_bytes).
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
    /// Whether records carry payload checksums.
    crc: bool,
}

impl Geometry {
    fn new(region: &Region, p: &RingParams) -> Geometry {
        p.check().expect("ring params are validated before use");
        assert!(p.file_size() <= region.len_bytes(), "region smaller than the ring");
        Geometry {
            data_word: (p.data_offset / 8) as usize,
            cap: p.capacity,
            mask: p.capacity - 1,
            max_msg: p.max_msg,
            crc: p.checksums,
        }
    }

    /// Word index of position `pos` in the region.
    #[inline]
    fn word(&self, pos: u64) -> usize {
        self.data_word + ((pos & self.mask) / 8) as usize
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

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn wake_window_words_are_clamped_and_nonsense_reads_as_the_default() {
        assert_eq!(WakePolicy::DEFAULT.to_word(), 50_000);
        assert_eq!(WakePolicy::from_word(50_000), WakePolicy::DEFAULT);
        // A writer never stores a window over the limit, and applies the clamped one itself.
        let long = WakePolicy::Adaptive(Duration::from_secs(10));
        assert_eq!(long.to_word(), MAX_WAKE_WINDOW.as_nanos() as u64);
        assert_eq!(long.normalized(), WakePolicy::Adaptive(MAX_WAKE_WINDOW));
        assert_eq!(WakePolicy::Adaptive(Duration::ZERO).normalized(), WakePolicy::Adaptive(Duration::from_nanos(1)));
        // A hostile word cannot make readers spin for long.
        for w in [MAX_WAKE_WINDOW.as_nanos() as u64 + 1, 10_000_000_000, u64::MAX - 1] {
            assert_eq!(WakePolicy::from_word(w), WakePolicy::DEFAULT, "word {w}");
        }
        assert_eq!(WakePolicy::from_word(0), WakePolicy::Always);
        assert_eq!(WakePolicy::from_word(u64::MAX), WakePolicy::Never);
    }
}
