//! The byte map of every podcache file, in one place.
//!
//! Each field's offset is defined from the field before it (`*_OFFSET`, in bytes), so moving or
//! growing one field moves everything after it, and the `const` assertions at the end pin each
//! offset to the value documented in the module docs of [`crate::header`], [`crate::ring`] and
//! [`crate::table`] and in docs/format.md. A change to the byte map therefore fails to compile
//! until those docs (and [`LAYOUT_VERSION`](crate::header::LAYOUT_VERSION)) are updated with it.
//!
//! Every field is one little-endian 64-bit word, read and written only as an atomic word
//! ([`crate::region`]). The word indices (`W_*`, crate-private) are the offsets divided by 8.

/// Bytes of one word: every field is one.
pub const WORD: u64 = 8;
/// Distance between hot words that different parties write at different rates: two cache
/// lines, because x86's adjacent-line prefetcher pulls lines in pairs.
pub const SPREAD: u64 = 128;

/// The first offset at or after `offset` that starts a new [`SPREAD`] block.
const fn spread(offset: u64) -> u64 {
    offset.next_multiple_of(SPREAD)
}

/// The word index of byte offset `offset`.
const fn word(offset: u64) -> usize {
    (offset / WORD) as usize
}

// ---------------------------------------------------------------------------------------------
// The header: the first 256 bytes of every file (crate::header).

/// `magic`: `PODCREAT` while a creation is in progress, `PODCACHE` once it finished. Frozen for
/// every version.
pub const MAGIC_OFFSET: u64 = 0;
/// `version` (low 32 bits) and `kind` (high 32 bits). Frozen for every version.
pub const VERSION_KIND_OFFSET: u64 = MAGIC_OFFSET + WORD;
/// `file_size`: total bytes of the file.
pub const FILE_SIZE_OFFSET: u64 = VERSION_KIND_OFFSET + WORD;
/// `params_hash`: FNV-1a of the kind and the parameter words.
pub const PARAMS_HASH_OFFSET: u64 = FILE_SIZE_OFFSET + WORD;
/// `created_ns`: unix time of the creation in nanoseconds.
pub const CREATED_NS_OFFSET: u64 = PARAMS_HASH_OFFSET + WORD;
/// `header_crc`: crc32 of the words before it and of the parameter words.
pub const HEADER_CRC_OFFSET: u64 = CREATED_NS_OFFSET + WORD;
/// `epoch`: +1 by every writer that attaches.
pub const EPOCH_OFFSET: u64 = HEADER_CRC_OFFSET + WORD;
/// `ready`: stored just before the real magic. Frozen for every version.
pub const READY_OFFSET: u64 = EPOCH_OFFSET + WORD;
/// The kind-specific parameter words.
pub const PARAMS_OFFSET: u64 = READY_OFFSET + WORD;
/// Number of kind-specific parameter words.
pub const PARAM_WORDS: usize = 8;
/// `writer_state`: running, closed or retired.
pub const WRITER_STATE_OFFSET: u64 = PARAMS_OFFSET + PARAM_WORDS as u64 * WORD;
/// Bytes reserved for the header at the start of every file (the words after `writer_state`
/// are reserved, zero).
pub const HEADER_BYTES: u64 = 256;

pub(crate) const W_MAGIC: usize = word(MAGIC_OFFSET);
pub(crate) const W_VERSION_KIND: usize = word(VERSION_KIND_OFFSET);
pub(crate) const W_FILE_SIZE: usize = word(FILE_SIZE_OFFSET);
pub(crate) const W_PARAMS_HASH: usize = word(PARAMS_HASH_OFFSET);
pub(crate) const W_CREATED_NS: usize = word(CREATED_NS_OFFSET);
pub(crate) const W_HEADER_CRC: usize = word(HEADER_CRC_OFFSET);
pub(crate) const W_EPOCH: usize = word(EPOCH_OFFSET);
pub(crate) const W_READY: usize = word(READY_OFFSET);
pub(crate) const W_PARAMS: usize = word(PARAMS_OFFSET);
pub(crate) const W_WRITER_STATE: usize = word(WRITER_STATE_OFFSET);
#[cfg(feature = "write")]
pub(crate) const HEADER_WORDS: usize = word(HEADER_BYTES);

// ---------------------------------------------------------------------------------------------
// The ring's control block, after the header (crate::ring).

/// `tail`: end position of the last committed record; its low 32 bits are the futex word.
pub const RING_TAIL_OFFSET: u64 = HEADER_BYTES;
/// `tail_seq`: the sequence number the next message will get (stored after `tail`).
pub const RING_TAIL_SEQ_OFFSET: u64 = RING_TAIL_OFFSET + WORD;
/// `lease`: written every `capacity / 16` bytes, so apart from the per-commit words.
pub const RING_LEASE_OFFSET: u64 = spread(RING_TAIL_SEQ_OFFSET + WORD);
/// `head`: start of the oldest record not yet overwritten (stored with `lease`).
pub const RING_HEAD_OFFSET: u64 = RING_LEASE_OFFSET + WORD;
/// Reserved, zero (the `notify` futex word before layout version 4).
pub const RING_RESERVED_OFFSET: u64 = spread(RING_HEAD_OFFSET + WORD);
/// `wake_window`: the writer's wake policy in nanoseconds, stored at attach.
pub const RING_WAKE_WINDOW_OFFSET: u64 = RING_RESERVED_OFFSET + WORD;
/// Smallest legal data offset: the control block ends here.
pub const RING_MIN_DATA_OFFSET: u64 = spread(RING_WAKE_WINDOW_OFFSET + WORD);

pub(crate) const W_TAIL: usize = word(RING_TAIL_OFFSET);
pub(crate) const W_TAIL_SEQ: usize = word(RING_TAIL_SEQ_OFFSET);
pub(crate) const W_LEASE: usize = word(RING_LEASE_OFFSET);
pub(crate) const W_HEAD: usize = word(RING_HEAD_OFFSET);
pub(crate) const W_WAKE_WINDOW: usize = word(RING_WAKE_WINDOW_OFFSET);

// ---------------------------------------------------------------------------------------------
// The table's statistics and segment table, after the header (crate::table). The index and the
// data region follow at offsets the parameter words give.

/// Statistics, one word each, in this order: items, live bytes, puts, deletes, evictions,
/// expirations, clears.
pub const TABLE_STAT_ITEMS_OFFSET: u64 = HEADER_BYTES;
/// Live bytes (record sizes of the live items).
pub const TABLE_STAT_BYTES_OFFSET: u64 = TABLE_STAT_ITEMS_OFFSET + WORD;
/// Puts since creation.
pub const TABLE_STAT_PUTS_OFFSET: u64 = TABLE_STAT_BYTES_OFFSET + WORD;
/// Deletes since creation.
pub const TABLE_STAT_DELETES_OFFSET: u64 = TABLE_STAT_PUTS_OFFSET + WORD;
/// Segments evicted.
pub const TABLE_STAT_EVICTIONS_OFFSET: u64 = TABLE_STAT_DELETES_OFFSET + WORD;
/// Items dropped because they expired.
pub const TABLE_STAT_EXPIRATIONS_OFFSET: u64 = TABLE_STAT_EVICTIONS_OFFSET + WORD;
/// Whole-table clears.
pub const TABLE_STAT_CLEARS_OFFSET: u64 = TABLE_STAT_EXPIRATIONS_OFFSET + WORD;
/// The FIFO sequence number the next segment taken into use gets.
pub const TABLE_NEXT_SEG_SEQ_OFFSET: u64 = TABLE_STAT_CLEARS_OFFSET + WORD;
/// The segment table: [`TABLE_SEG_WORDS`] words per segment.
pub const TABLE_SEG_TABLE_OFFSET: u64 = spread(TABLE_NEXT_SEG_SEQ_OFFSET + WORD);
/// Words per segment-table entry: `state` (`gen << 32 | fill`), `seq` (FIFO order, 0 = free),
/// `max_expiry` (unix ms), `live` (bytes of live records), at these offsets in the entry.
pub const TABLE_SEG_WORDS: usize = 4;
/// Offset of `state` in a segment-table entry.
pub const TABLE_SEG_STATE: u64 = 0;
/// Offset of `seq` in a segment-table entry.
pub const TABLE_SEG_SEQ: u64 = TABLE_SEG_STATE + WORD;
/// Offset of `max_expiry` in a segment-table entry.
pub const TABLE_SEG_MAX_EXPIRY: u64 = TABLE_SEG_SEQ + WORD;
/// Offset of `live` in a segment-table entry.
pub const TABLE_SEG_LIVE: u64 = TABLE_SEG_MAX_EXPIRY + WORD;
/// Words per bucket of the index: the overflow count, then [`TABLE_SLOTS`] slots.
pub const TABLE_BUCKET_WORDS: usize = 8;
/// Slots per bucket.
pub const TABLE_SLOTS: usize = TABLE_BUCKET_WORDS - 1;

pub(crate) const W_STAT_ITEMS: usize = word(TABLE_STAT_ITEMS_OFFSET);
pub(crate) const W_STAT_BYTES: usize = word(TABLE_STAT_BYTES_OFFSET);
pub(crate) const W_STAT_PUTS: usize = word(TABLE_STAT_PUTS_OFFSET);
pub(crate) const W_STAT_DELETES: usize = word(TABLE_STAT_DELETES_OFFSET);
pub(crate) const W_STAT_EVICTIONS: usize = word(TABLE_STAT_EVICTIONS_OFFSET);
pub(crate) const W_STAT_EXPIRATIONS: usize = word(TABLE_STAT_EXPIRATIONS_OFFSET);
pub(crate) const W_STAT_CLEARS: usize = word(TABLE_STAT_CLEARS_OFFSET);
#[cfg(feature = "write")]
pub(crate) const W_NEXT_SEG_SEQ: usize = word(TABLE_NEXT_SEG_SEQ_OFFSET);

// ---------------------------------------------------------------------------------------------
// The documented values. A failure here means the byte map changed: update the docs named in
// the module docs, bump the layout version, and write its "Version changes" entry.

const _: () = {
    // Header: magic, version and ready never move (any version can tell "not ready" and "not
    // my version" apart).
    assert!(MAGIC_OFFSET == 0x00 && VERSION_KIND_OFFSET == 0x08 && READY_OFFSET == 0x38);
    assert!(FILE_SIZE_OFFSET == 0x10 && PARAMS_HASH_OFFSET == 0x18 && CREATED_NS_OFFSET == 0x20);
    assert!(HEADER_CRC_OFFSET == 0x28 && EPOCH_OFFSET == 0x30 && PARAMS_OFFSET == 0x40);
    assert!(WRITER_STATE_OFFSET == 0x80);
    assert!(WRITER_STATE_OFFSET + WORD <= HEADER_BYTES && HEADER_BYTES == 0x100);
    // Ring control block.
    assert!(RING_TAIL_OFFSET == 0x100 && RING_TAIL_SEQ_OFFSET == 0x108);
    assert!(RING_LEASE_OFFSET == 0x180 && RING_HEAD_OFFSET == 0x188);
    assert!(RING_RESERVED_OFFSET == 0x200 && RING_WAKE_WINDOW_OFFSET == 0x208);
    assert!(RING_MIN_DATA_OFFSET == 0x280);
    // Table statistics, segment table and buckets.
    assert!(TABLE_STAT_ITEMS_OFFSET == 0x100 && TABLE_STAT_CLEARS_OFFSET == 0x130);
    assert!(TABLE_NEXT_SEG_SEQ_OFFSET == 0x138 && TABLE_SEG_TABLE_OFFSET == 0x180);
    assert!((TABLE_SEG_LIVE + WORD) / WORD == TABLE_SEG_WORDS as u64);
    assert!(TABLE_BUCKET_WORDS as u64 * WORD == 64 && TABLE_SLOTS == 7);
};
