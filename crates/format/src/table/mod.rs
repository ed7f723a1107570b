//! The key-value table: one writer, any number of read-only readers, lock-free gets.
//!
//! # Layout
//!
//! A table file is the 256-byte [header](crate::header), then (byte offsets):
//!
//! | offset         | what |
//! |---------------:|------|
//! | 0x100          | statistics, one word each: items, live bytes, puts, deletes, evictions, expirations, clears, next segment sequence |
//! | 0x180          | segment table: 4 words per segment: `state` (`gen << 32 \| fill`: a 32-bit generation, +1 each time the segment is recycled, and the bytes published in it), `seq` (FIFO order, 0 = free), `max_expiry` (unix ms; `u64::MAX` if an item never expires), `live` (bytes of live records) |
//! | `index_offset` | the index: `nbuckets` buckets of 64 bytes (home bucket: `(hash mod 2^32) × nbuckets >> 32`). Word 0 of a bucket counts the items whose probe passed over it (it lets lookups stop); words 1–7 are slots: `tag << 52 \| gen << 36 \| loc`, 0 = empty. `loc` is the record's offset in the data region in 4-byte units; `gen` the low 16 bits of the generation of the record's segment when the slot was stored; `tag` the top 12 bits of the key's hash (lowest bit forced to 1, so never 0). |
//! | `data_offset`  | `nsegments` segments of `segment_size` bytes, filled with records in append order |
//!
//! A record is 4-byte aligned: a header word (`crc: u32 \| klen: u8 \| vlen: u23 \| has_expiry: 1`),
//! the expiry (unix ms) if `has_expiry`, the key, the value, zero padding to 4 bytes (so two
//! records can share a word; see [`record_size`]). The crc
//! is crc32 (IEEE) of the value XORed with a mix of header bits 32–63, the expiry and the key's
//! hash (see docs/design.md, "Checksums").
//!
//! # Protocol
//!
//! Records are immutable once written. A put appends a record to the current segment (Release
//! stores), publishes it by storing the segment's `fill` (Release), then stores the key's slot
//! (Release): the old record, if any, is now dead. A delete stores 0 in the slot. When the
//! writer needs a segment and none is free it evicts one: expired-first (a segment all of whose
//! items expired), else the oldest (FIFO). Eviction clears every slot that points into the
//! segment, then bumps the segment's generation and resets its fill (one store), then reuses it.
//!
//! A get hashes the key, loads the slots of its bucket (acquire), and for a slot whose tag
//! matches loads the segment `state` (acquire). The record is a candidate only if the state's
//! generation is the one the slot names: the writer stores a slot only in the generation of
//! its record, after the record is complete below the fill, and clears every slot naming a
//! segment before it recycles the segment. The get then copies the header, key and value out
//! with Relaxed loads, issues an Acquire fence and loads `state` again. If the generation
//! changed the segment was recycled while it copied: the get starts over (bounded). Otherwise
//! the copy is what the writer wrote for this very slot; the get compares the key, checks the
//! crc and the expiry, and anything inconsistent is corruption, never a race (see
//! docs/design.md §4.4 for each interleaving).

mod reader;
mod verify;
#[cfg(feature = "write")]
mod writer;

pub use reader::{Expiry, GetError, KeyIter, RawTableReader, ReaderCounters, SharedBytes, BATCH, MAX_RETRIES};
pub use verify::{verify, TableCheck};
#[cfg(feature = "write")]
pub use writer::{EvictionPolicy, PutError, RawTableWriter, TableRecovery};

use crate::header::{HeaderView, PARAM_WORDS};
use crate::layout;
use crate::sync::{AtomicU64, Ordering};

#[cfg(feature = "write")]
pub(crate) use crate::layout::W_NEXT_SEG_SEQ;
pub(crate) use crate::layout::{
    TABLE_BUCKET_WORDS as BUCKET_WORDS, TABLE_SEG_WORDS as SEG_WORDS, TABLE_SLOTS as SLOTS, W_STAT_BYTES,
    W_STAT_CLEARS, W_STAT_DELETES, W_STAT_EVICTIONS, W_STAT_EXPIRATIONS, W_STAT_ITEMS, W_STAT_PUTS,
};
/// Byte offset of the segment table.
pub const SEG_TABLE_OFFSET: u64 = crate::layout::TABLE_SEG_TABLE_OFFSET;
/// A slot is `tag << TAG_SHIFT | gen << LOC_BITS | loc`: `loc` (bits 0–35) is the record's
/// offset in the data region in 4-byte units, `gen` (bits 36–51) the low 16 bits of its
/// segment's generation when the slot was stored, `tag` (bits 52–63) the top 12 bits of the
/// key's hash with the lowest of them forced to 1, so a used slot is never 0.
pub(crate) const LOC_BITS: u32 = 36;
pub(crate) const LOC_MASK: u64 = (1 << LOC_BITS) - 1;
pub(crate) const SLOT_GEN_BITS: u32 = 16;
pub(crate) const SLOT_GEN_MASK: u64 = (1 << SLOT_GEN_BITS) - 1;
pub(crate) const TAG_SHIFT: u32 = LOC_BITS + SLOT_GEN_BITS;
const _: () = assert!(TAG_SHIFT == 52);
/// Records start at multiples of this many bytes (the unit of a slot's `loc`).
pub(crate) const REC_ALIGN: u64 = 4;
/// A segment's state word is `gen << FILL_BITS | fill`: a 32-bit generation (+1 each time the
/// segment is recycled, wrapping) and the bytes of records published in it.
pub(crate) const FILL_BITS: u32 = 32;
pub(crate) const FILL_MASK: u64 = (1 << FILL_BITS) - 1;
/// Largest segment: a fill must fit its 32 bits.
pub const MAX_SEGMENT: u64 = 1 << 30;
/// Largest data region: every record offset in 4-byte units fits a slot's 36-bit `loc`.
pub const MAX_DATA: u64 = (LOC_MASK + 1) * REC_ALIGN;

#[cfg(feature = "write")]
/// The slot naming the record at `loc`, written while its segment's state was `state`.
#[inline]
pub(crate) fn slot_value(tag: u64, state: u64, loc: u64) -> u64 {
    debug_assert!(loc <= LOC_MASK && tag >> (64 - TAG_SHIFT) == 0);
    (tag << TAG_SHIFT) | (((state >> FILL_BITS) & SLOT_GEN_MASK) << LOC_BITS) | loc
}

/// Whether a slot's generation bits are those of the segment state `state`: only then does
/// the slot name a record of the segment's current generation.
#[inline]
pub(crate) fn slot_matches_state(slot: u64, state: u64) -> bool {
    (slot >> LOC_BITS) & SLOT_GEN_MASK == (state >> FILL_BITS) & SLOT_GEN_MASK
}

/// The tag of a slot.
#[inline]
pub(crate) fn slot_tag(slot: u64) -> u64 {
    slot >> TAG_SHIFT
}

#[cfg(feature = "write")]
/// The state word of a segment recycled from `state`: next generation, empty.
#[inline]
pub(crate) fn next_generation(state: u64) -> u64 {
    ((state >> FILL_BITS).wrapping_add(1) & 0xffff_ffff) << FILL_BITS
}

/// Longest key in bytes.
pub const MAX_KEY: usize = 255;
/// Longest value the record format can describe (8 MiB − 1); a table's own limit is also
/// bounded by its segment size.
pub const MAX_VALUE_FORMAT: usize = (1 << 23) - 1;
/// Smallest segment (loom models use tiny ones: every word is a modelled atomic).
pub const MIN_SEGMENT: u64 = if cfg!(loom) { 64 } else { 4096 };
/// Buckets a lookup visits at most (a longer chain is a corrupt file).
pub const MAX_PROBE: u64 = 128;

/// Statistics the writer keeps in the file.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct TableStats {
    /// Live items (including expired ones not yet removed).
    pub items: u64,
    /// Bytes of live records (headers, keys, values, padding).
    pub bytes_used: u64,
    /// Bytes of the data region.
    pub bytes_capacity: u64,
    /// Puts since creation.
    pub puts: u64,
    /// Deletes of present keys since creation.
    pub deletes: u64,
    /// Items evicted to make room.
    pub evictions: u64,
    /// Expired items removed.
    pub expirations: u64,
    /// `clear()` calls.
    pub clears: u64,
}

/// Geometry of a table: what the header's parameter words hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TableParams {
    /// Number of segments.
    pub nsegments: u64,
    /// Bytes per segment (a power of two).
    pub segment_size: u64,
    /// Index buckets (up to 2^32), 7 slots each.
    pub nbuckets: u64,
    /// Most items the table holds.
    pub max_items: u64,
    /// Seed of the key hash.
    pub hash_seed: u64,
    /// Byte offset of the index.
    pub index_offset: u64,
    /// Byte offset of the data region.
    pub data_offset: u64,
}

/// Why table parameters were refused.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct TableParamsError(pub String);

impl std::fmt::Display for TableParamsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "invalid table layout: {}", self.0)
    }
}

impl std::error::Error for TableParamsError {}

fn align_up(v: u64, a: u64) -> u64 {
    v.div_ceil(a) * a
}

/// Bytes a record takes in the data region: the 8-byte header, 8 more for an expiry, the key,
/// the value, rounded up to 4. Size a table's data region as the sum of its items' records
/// (a segment also leaves unused the tail too short for the next record).
pub const fn record_size(klen: usize, vlen: usize, with_ttl: bool) -> u64 {
    let hdr = if with_ttl { 16 } else { 8 };
    (hdr + klen as u64 + vlen as u64).next_multiple_of(REC_ALIGN)
}

impl TableParams {
    /// Geometry for up to `max_items` items in a data region of at least `data_bytes` bytes
    /// (see [`record_size`]), in segments of `segment_size` bytes rounded up to a power of two
    /// (0: choose: the power of two at or below 1/64 of the data, between 64 KiB and 4 MiB, so
    /// rounding the data up to whole segments adds under 1/64). The largest value is a segment
    /// minus the record header and key.
    pub fn new(
        max_items: u64,
        data_bytes: u64,
        segment_size: u64,
        hash_seed: u64,
    ) -> Result<TableParams, TableParamsError> {
        if max_items == 0 || max_items > 1 << 36 {
            return Err(TableParamsError(format!("max_items {max_items} must be between 1 and 2^36")));
        }
        // A power of two, so a reader splits a record's location with a shift, not a division.
        let seg = if segment_size == 0 {
            let target = (data_bytes / 64).clamp(64 << 10, 4 << 20);
            1 << (63 - target.leading_zeros())
        } else {
            segment_size.max(MIN_SEGMENT).next_power_of_two()
        };
        let nsegments = data_bytes.div_ceil(seg).max(2);
        // About 87% slot load at max_items: 7 slots per bucket.
        let nbuckets = (max_items * 8 / 7).div_ceil(SLOTS as u64).max(1);
        let index_offset = align_up(SEG_TABLE_OFFSET + nsegments * (SEG_WORDS as u64) * 8, 64);
        let data_offset = align_up(index_offset + nbuckets * 64, 4096);
        let p = TableParams { nsegments, segment_size: seg, nbuckets, max_items, hash_seed, index_offset, data_offset };
        p.check()?;
        Ok(p)
    }

    /// Validate the geometry (also for parameters read from an untrusted file).
    pub fn check(&self) -> Result<(), TableParamsError> {
        let bad = |m: String| Err(TableParamsError(m));
        if self.segment_size < MIN_SEGMENT || !self.segment_size.is_power_of_two() || self.segment_size > MAX_SEGMENT {
            return bad(format!(
                "segment size {} must be a power of two between {MIN_SEGMENT} and 2^30",
                self.segment_size
            ));
        }
        if self.nsegments < 2 || self.nsegments > 1 << 24 {
            return bad(format!("{} segments (2 to 2^24)", self.nsegments));
        }
        if self.nbuckets == 0 || self.nbuckets > 1 << 32 {
            return bad(format!("{} buckets (1 to 2^32)", self.nbuckets));
        }
        if self.max_items == 0 || self.max_items > self.nbuckets * SLOTS as u64 {
            return bad(format!(
                "max_items {} exceeds the index ({} slots)",
                self.max_items,
                self.nbuckets * SLOTS as u64
            ));
        }
        // Every sum below is of values bounded above (segments <= 2^24, buckets <= 2^32,
        // segment size <= 2^30) or checked, so nothing overflows on hostile parameters.
        let seg_end = SEG_TABLE_OFFSET + self.nsegments * SEG_WORDS as u64 * 8;
        if !self.index_offset.is_multiple_of(64) || self.index_offset < seg_end || self.index_offset > 1 << 48 {
            return bad(format!("index offset {} overlaps the segment table or is too large", self.index_offset));
        }
        let index_end = self.index_offset + self.nbuckets * 64;
        if !self.data_offset.is_multiple_of(8) || self.data_offset < index_end || self.data_offset > 1 << 50 {
            return bad(format!("data offset {} overlaps the index or is too large", self.data_offset));
        }
        // Both factors are bounded above, so the product does not overflow.
        if self.nsegments * self.segment_size > MAX_DATA {
            return bad(format!("data region of {} bytes exceeds {MAX_DATA}", self.nsegments * self.segment_size));
        }
        Ok(())
    }

    /// Total file size.
    pub fn file_size(&self) -> u64 {
        self.data_offset + self.nsegments * self.segment_size
    }

    /// Bytes of the data region.
    pub fn data_bytes(&self) -> u64 {
        self.nsegments * self.segment_size
    }

    /// Largest value for a key of `klen` bytes with a TTL (the worst case).
    pub fn max_value(&self, klen: usize) -> usize {
        (self.segment_size as usize - 16 - klen).min(MAX_VALUE_FORMAT)
    }

    /// The header parameter words.
    pub fn to_words(&self) -> [u64; PARAM_WORDS] {
        [
            self.nsegments,
            self.segment_size,
            self.nbuckets,
            self.max_items,
            self.hash_seed,
            self.index_offset,
            self.data_offset,
            crate::header::CHECKSUM_CRC32,
        ]
    }

    /// Read back from a validated header; still checked (the file is untrusted).
    pub fn from_header(h: &HeaderView) -> Result<TableParams, TableParamsError> {
        let w = h.params;
        if w[crate::header::PARAM_CHECKSUM] != crate::header::CHECKSUM_CRC32 {
            return Err(TableParamsError(format!(
                "checksum algorithm {} unknown (this build knows {})",
                w[crate::header::PARAM_CHECKSUM],
                crate::header::CHECKSUM_CRC32
            )));
        }
        let p = TableParams {
            nsegments: w[0],
            segment_size: w[1],
            nbuckets: w[2],
            max_items: w[3],
            hash_seed: w[4],
            index_offset: w[5],
            data_offset: w[6],
        };
        p.check()?;
        if p.file_size() > h.file_size {
            return Err(TableParamsError("layout larger than the file".into()));
        }
        Ok(p)
    }
}

/// Word offsets derived once from validated params.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Geo {
    pub(crate) seg_word: usize,
    pub(crate) index_word: usize,
    pub(crate) data_word: usize,
    pub(crate) nsegments: u64,
    pub(crate) seg_size: u64,
    seg_shift: u32,
    pub(crate) nbuckets: u64,
    pub(crate) seed: u64,
    #[cfg_attr(not(feature = "write"), allow(dead_code))]
    pub(crate) max_items: u64,
    pub(crate) max_probe: u64,
}

impl Geo {
    pub(crate) fn new(region_bytes: u64, p: &TableParams) -> Geo {
        p.check().expect("table params are validated before use");
        assert!(p.file_size() <= region_bytes, "region smaller than the table");
        Geo {
            seg_word: (SEG_TABLE_OFFSET / 8) as usize,
            index_word: (p.index_offset / 8) as usize,
            data_word: (p.data_offset / 8) as usize,
            nsegments: p.nsegments,
            seg_size: p.segment_size,
            seg_shift: p.segment_size.trailing_zeros(),
            nbuckets: p.nbuckets,
            seed: p.hash_seed,
            max_items: p.max_items,
            max_probe: MAX_PROBE.min(p.nbuckets),
        }
    }

    #[inline]
    pub(crate) fn seg_state(&self, seg: u64) -> usize {
        self.seg_word + seg as usize * SEG_WORDS + (layout::TABLE_SEG_STATE / layout::WORD) as usize
    }
    #[inline]
    pub(crate) fn seg_seq(&self, seg: u64) -> usize {
        self.seg_word + seg as usize * SEG_WORDS + (layout::TABLE_SEG_SEQ / layout::WORD) as usize
    }
    #[inline]
    pub(crate) fn seg_max_expiry(&self, seg: u64) -> usize {
        self.seg_word + seg as usize * SEG_WORDS + (layout::TABLE_SEG_MAX_EXPIRY / layout::WORD) as usize
    }
    #[inline]
    pub(crate) fn seg_live(&self, seg: u64) -> usize {
        self.seg_word + seg as usize * SEG_WORDS + (layout::TABLE_SEG_LIVE / layout::WORD) as usize
    }
    #[inline]
    pub(crate) fn bucket(&self, b: u64) -> usize {
        self.index_word + b as usize * BUCKET_WORDS
    }
    /// The segment and the offset in it of the record at `loc`.
    #[inline]
    pub(crate) fn split(&self, loc: u64) -> (u64, u64) {
        let byte = loc * REC_ALIGN;
        (byte >> self.seg_shift, byte & (self.seg_size - 1))
    }
    /// The `loc` of the record at offset `off` of segment `seg`.
    #[inline]
    pub(crate) fn loc(&self, seg: u64, off: u64) -> u64 {
        (seg * self.seg_size + off) / REC_ALIGN
    }
    /// Byte offset in the region of the record at `loc` (4-byte units into the data region).
    #[inline]
    pub(crate) fn rec_byte(&self, loc: u64) -> usize {
        self.data_word * 8 + (loc * REC_ALIGN) as usize
    }
    #[inline]
    pub(crate) fn home(&self, h: u64) -> (u64, u64) {
        let tag = (h >> TAG_SHIFT) | 1;
        // Multiply-shift of the low 32 bits: any bucket count, independent of the tag bits.
        (((h & 0xffff_ffff) * self.nbuckets) >> 32, tag)
    }

    #[inline]
    pub(crate) fn next_bucket(&self, b: u64) -> u64 {
        if b + 1 == self.nbuckets {
            0
        } else {
            b + 1
        }
    }
}

/// Decoded record header word.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct RecHeader {
    pub(crate) crc: u32,
    pub(crate) klen: usize,
    pub(crate) vlen: usize,
    pub(crate) has_expiry: bool,
}

impl RecHeader {
    #[inline]
    pub(crate) fn decode(w: u64) -> RecHeader {
        RecHeader {
            crc: w as u32,
            klen: ((w >> 32) & 0xff) as usize,
            vlen: ((w >> 40) & 0x7f_ffff) as usize,
            has_expiry: w >> 63 == 1,
        }
    }

    #[inline]
    pub(crate) fn encode_hi(klen: usize, vlen: usize, has_expiry: bool) -> u32 {
        (klen as u32) | ((vlen as u32) << 8) | (u32::from(has_expiry) << 31)
    }

    /// Bytes from the record start to the key.
    #[inline]
    pub(crate) fn key_off(&self) -> usize {
        if self.has_expiry {
            16
        } else {
            8
        }
    }

    /// Whole record length (see [`record_size`]).
    #[inline]
    pub(crate) fn len(&self) -> u64 {
        record_size(self.klen, self.vlen, self.has_expiry)
    }
}

/// The header a record's checksum is taken under: the header word's upper half, the expiry
/// and the key's hash (so the key is covered without checksumming its bytes again: a reader
/// compares them with the key it looks up anyway).
#[inline]
pub(crate) fn crc_header(hi: u32, expiry: Option<u64>, key_hash: u64) -> u64 {
    u64::from(hi) ^ expiry.unwrap_or(0).rotate_left(32) ^ key_hash
}

/// The record checksum: crc32 of the value under [`crc_header`] (see [`crate::checksum`]).
#[inline]
pub(crate) fn record_crc(hi: u32, expiry: Option<u64>, key_hash: u64, value: &[u8]) -> u32 {
    crate::checksum::checksum(crc_header(hi, expiry, key_hash), &[value])
}

/// Unix time in milliseconds (the clock expiries are measured against: `CLOCK_REALTIME`,
/// which every container on a node shares; time namespaces do not virtualise it).
#[inline]
pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// Read the statistics words.
pub(crate) fn read_stats(w: &[AtomicU64], data_bytes: u64) -> TableStats {
    // Relaxed: statistics are informational; each counter is written by the single writer.
    let l = |i: usize| w[i].load(Ordering::Relaxed);
    TableStats {
        items: l(W_STAT_ITEMS),
        bytes_used: l(W_STAT_BYTES),
        bytes_capacity: data_bytes,
        puts: l(W_STAT_PUTS),
        deletes: l(W_STAT_DELETES),
        evictions: l(W_STAT_EVICTIONS),
        expirations: l(W_STAT_EXPIRATIONS),
        clears: l(W_STAT_CLEARS),
    }
}

/// One bit per record position (4-byte unit) of the data region.
pub(crate) struct Bitmap(Vec<u64>, u64);

impl Bitmap {
    pub(crate) fn new(bits: u64) -> Bitmap {
        Bitmap(vec![0; bits.div_ceil(64) as usize], bits)
    }
    pub(crate) fn len(&self) -> u64 {
        self.1
    }
    pub(crate) fn set(&mut self, i: u64) {
        self.0[(i / 64) as usize] |= 1 << (i % 64);
    }
    pub(crate) fn get(&self, i: u64) -> bool {
        self.0[(i / 64) as usize] >> (i % 64) & 1 == 1
    }
}
