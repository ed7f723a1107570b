//! A full, read-only integrity check of a table (what `podcache verify` runs).
//!
//! [`verify`] walks every record of every segment (bounds, key length, checksum) and every slot
//! of the index (points at an intact record, tag and home bucket match the key's hash, no key
//! indexed twice, the overflow counts cover every probe chain). It only loads words, so it runs
//! on a `PROT_READ` mapping of a live file. On a live file it is a snapshot: a segment recycled
//! by the writer during the walk is skipped (and counted), so findings are never caused by a
//! race with the writer; an index slot changed during the walk can still be reported, so a
//! finding on a live file should be confirmed by a second run.

use super::{
    read_stats, record_crc, slot_matches_state, slot_tag, Bitmap, Geo, RecHeader, TableParams, TableStats, FILL_BITS,
    FILL_MASK, LOC_MASK,
};
use crate::hash::hash;
use crate::region::{copy_out_bytes, load_at, Region};
use crate::sync::{fence, load_acquire, AtomicU64, Ordering};

/// At most this many problems are listed (the count goes on).
const MAX_LISTED: usize = 100;

/// What [`verify`] found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TableCheck {
    /// The statistics words of the file.
    pub stats: TableStats,
    /// Intact records found in the segments (live and dead).
    pub records: u64,
    /// Segments holding records.
    pub segments_used: u64,
    /// Segments recycled by the writer while they were walked (skipped).
    pub segments_changed: u64,
    /// Items reachable from the index.
    pub indexed_items: u64,
    /// Problems found (the first 100).
    pub problems: Vec<String>,
    /// Number of problems found.
    pub problem_count: u64,
}

impl TableCheck {
    /// Whether the table is intact.
    pub fn is_ok(&self) -> bool {
        self.problem_count == 0
    }

    fn problem(&mut self, p: String) {
        self.problem_count += 1;
        if self.problems.len() < MAX_LISTED {
            self.problems.push(p);
        }
    }
}

/// Check the table in `region` (validated `params`). Never writes, never panics on a hostile
/// or live file: every offset is bounds-checked before use, and what is read from a segment is
/// trusted only if the segment's generation did not change meanwhile. Memory: one bit per 4
/// bytes of the data region and 4 bytes per bucket, whatever the number of records.
pub fn verify(region: &Region, params: &TableParams) -> TableCheck {
    let g = Geo::new(region.len_bytes(), params);
    let words = region.words();
    let mut check = TableCheck { stats: read_stats(words, params.data_bytes()), ..TableCheck::default() };
    // SYNC: acquire, pairs with the Release stores of the segment state in RawTableWriter (put,
    // reset_segment), as in RawTableReader::read_record.
    let state_of = |seg: u64| load_acquire(&words[g.seg_state(seg)]);
    // Whether segment `seg` is still in the generation of `state` (after copies from it).
    let unchanged = |seg: u64, state: u64| {
        // SYNC: Acquire fence, pairs with the Release record stores of a later generation, as
        // in RawTableReader::still_valid.
        fence(Ordering::Acquire);
        state_of(seg) >> FILL_BITS == state >> FILL_BITS
    };
    // Where intact records start (4-byte units into the data region).
    let mut intact = Bitmap::new(g.nsegments * g.seg_size / super::REC_ALIGN);
    let mut value = Vec::new();
    for seg in 0..g.nsegments {
        let state = state_of(seg);
        let fill = state & FILL_MASK;
        if fill == 0 {
            continue;
        }
        check.segments_used += 1;
        if fill > g.seg_size || !fill.is_multiple_of(super::REC_ALIGN) {
            check.problem(format!("segment {seg}: fill {fill} beyond its size {} or unaligned", g.seg_size));
            continue;
        }
        let mut found = Vec::new();
        let mut bad = Vec::new();
        let mut off = 0u64;
        while off < fill {
            let loc = g.loc(seg, off);
            let rb = g.rec_byte(loc);
            if off + 8 > fill {
                bad.push(format!("segment {seg} offset {off}: {} bytes left, too few for a record", fill - off));
                break;
            }
            // Relaxed loads: validated by the generation re-check below.
            let hdr = RecHeader::decode(load_at(words, rb));
            if hdr.klen == 0 {
                bad.push(format!("segment {seg} offset {off}: record with an empty key"));
                break;
            }
            if off + hdr.len() > fill {
                bad.push(format!(
                    "segment {seg} offset {off}: record of {} bytes runs past the fill {fill}",
                    hdr.len()
                ));
                break;
            }
            let expiry = hdr.has_expiry.then(|| load_at(words, rb + 8));
            let mut key = [0u8; super::MAX_KEY];
            let key = &mut key[..hdr.klen];
            copy_out_bytes(words, rb + hdr.key_off(), key);
            value.resize(hdr.vlen, 0);
            copy_out_bytes(words, rb + hdr.key_off() + hdr.klen, &mut value);
            let hi = RecHeader::encode_hi(hdr.klen, hdr.vlen, hdr.has_expiry);
            // The crc covers the value, the header bits, the expiry and the key's hash; a changed
            // key byte shows as a tag or home-bucket mismatch in the index check below.
            if record_crc(hi, expiry, hash(g.seed, key), &value) == hdr.crc {
                found.push(loc);
            } else {
                bad.push(format!("segment {seg} offset {off}: record checksum mismatch"));
            }
            off += hdr.len();
        }
        if !unchanged(seg, state) {
            check.segments_changed += 1;
            continue;
        }
        check.records += found.len() as u64;
        found.into_iter().for_each(|loc| intact.set(loc));
        bad.into_iter().for_each(|p| check.problem(p));
    }

    // The index. Pass 1: every slot names an intact record of its segment's current
    // generation, its tag and home bucket match the key's hash, within the probe bound; count
    // the probe chains passing each bucket.
    let mut passing = vec![0u32; g.nbuckets as usize];
    let mut kbuf = [0u8; super::MAX_KEY];
    for b in 0..g.nbuckets {
        for slot in 1..=super::SLOTS {
            let Some((s, klen)) = slot_key(&g, words, &intact, b, slot, &mut kbuf, &mut check) else {
                continue;
            };
            let (home, tag) = g.home(hash(g.seed, &kbuf[..klen]));
            if slot_tag(s) != tag {
                check.problem(format!("bucket {b} slot {slot}: tag does not match the key's hash"));
            }
            let dist = (b + g.nbuckets - home) % g.nbuckets;
            if dist >= g.max_probe {
                check.problem(format!("bucket {b} slot {slot}: {dist} buckets from home, beyond the probe bound"));
            }
            let mut p = home;
            for _ in 0..dist.min(g.max_probe) {
                passing[p as usize] += 1;
                p = g.next_bucket(p);
            }
            check.indexed_items += 1;
        }
    }
    // Pass 2: no key indexed twice (each key is compared with the slots of its own chain, from
    // its home up to the first bucket no chain passes).
    let mut quiet = TableCheck::default();
    let mut other = [0u8; super::MAX_KEY];
    for b in 0..g.nbuckets {
        for slot in 1..=super::SLOTS {
            let Some((_, klen)) = slot_key(&g, words, &intact, b, slot, &mut kbuf, &mut quiet) else {
                continue;
            };
            let key = &kbuf[..klen];
            let (mut p, _) = g.home(hash(g.seed, key));
            for _ in 0..g.max_probe {
                // Slots before this one on the chain: earlier buckets, and earlier in this one.
                for o in (1..=super::SLOTS).filter(|&o| p != b || o < slot) {
                    if slot_key(&g, words, &intact, p, o, &mut other, &mut quiet)
                        .is_some_and(|(_, l)| &other[..l] == key)
                    {
                        check.problem(format!("bucket {b} slot {slot}: key indexed twice (also in bucket {p})"));
                    }
                }
                if p == b || passing[p as usize] == 0 {
                    break;
                }
                p = g.next_bucket(p);
            }
        }
    }
    for (b, &n) in passing.iter().enumerate() {
        // Relaxed: a snapshot; a count may over-state (harmless) but never under-state.
        let stored = words[g.bucket(b as u64)].load(Ordering::Relaxed);
        if stored < u64::from(n) {
            check.problem(format!(
                "bucket {b}: overflow count {stored} below the {n} probe chains passing it (lookups would miss keys)"
            ));
        }
    }
    check
}

/// The key of the record that slot `slot` of bucket `b` names, copied into `kbuf` (the slot
/// and the key's length), if the slot is used and names an intact record of its segment's
/// current generation; problems are recorded in `check`. A slot or segment the writer changes
/// during the check is skipped, never reported.
fn slot_key(
    g: &Geo,
    words: &[AtomicU64],
    intact: &Bitmap,
    b: u64,
    slot: usize,
    kbuf: &mut [u8; super::MAX_KEY],
    check: &mut TableCheck,
) -> Option<(u64, usize)> {
    let sw = g.bucket(b) + slot;
    // SYNC: acquire, pairs with the Release slot stores in RawTableWriter, as in the reader's `scan`.
    let s = load_acquire(&words[sw]);
    if s == 0 {
        return None;
    }
    let loc = s & LOC_MASK;
    let seg = g.split(loc).0;
    if seg >= g.nsegments {
        check.problem(format!("bucket {b} slot {slot}: points outside the data region"));
        return None;
    }
    // SYNC: acquire, as in `verify`.
    let state = load_acquire(&words[g.seg_state(seg)]);
    // SYNC: acquire, as above: a slot reloaded after a state that shows a recycling shows the
    // writer's clear, so an unchanged slot was not cleared.
    let still = || load_acquire(&words[sw]) == s;
    if !slot_matches_state(s, state) {
        if still() {
            check.problem(format!(
                "bucket {b} slot {slot}: names generation {} of segment {seg}, which is in generation {}",
                (s >> super::LOC_BITS) & super::SLOT_GEN_MASK,
                state >> FILL_BITS
            ));
        }
        return None;
    }
    if !intact.get(loc) {
        if still() {
            check.problem(format!("bucket {b} slot {slot}: points at no intact record"));
        }
        return None;
    }
    // The record was intact when its segment was walked; if the segment was recycled since,
    // the header may be anything, so its key is bounds-checked and trusted only if the
    // generation did not change.
    let rb = g.rec_byte(loc);
    let hdr = RecHeader::decode(load_at(words, rb));
    let end = rb + hdr.key_off() + hdr.klen;
    if end > words.len() * 8 {
        return None;
    }
    copy_out_bytes(words, rb + hdr.key_off(), &mut kbuf[..hdr.klen]);
    fence(Ordering::Acquire);
    // SYNC: the Acquire fence above pairs with Release record stores of a later generation;
    // this acquire load then sees the recycling that preceded them.
    if load_acquire(&words[g.seg_state(seg)]) >> FILL_BITS != state >> FILL_BITS {
        return None;
    }
    Some((s, hdr.klen))
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::table::{EvictionPolicy, RawTableWriter};
    use std::sync::Arc;

    fn table() -> (Arc<Region>, TableParams, RawTableWriter) {
        let p = TableParams::new(64, 64 << 10, 8 << 10, 7).unwrap();
        let region = Arc::new(Region::heap((p.file_size() / 8) as usize));
        let w = RawTableWriter::create(Arc::clone(&region), &p, EvictionPolicy::default());
        (region, p, w)
    }

    #[test]
    fn intact_table_passes() {
        let (region, p, mut w) = table();
        for i in 0..40u32 {
            w.put(format!("k{i}").as_bytes(), i.to_le_bytes(), (i % 3 == 0).then_some(u64::MAX / 2)).unwrap();
        }
        for i in 0..10u32 {
            assert!(w.delete(format!("k{i}").as_bytes()));
        }
        w.put(b"k20", b"overwritten", None).unwrap();
        let c = verify(&region, &p);
        assert!(c.is_ok(), "{:?}", c.problems);
        assert_eq!(c.indexed_items, 30);
        assert_eq!(c.stats.items, 30);
        assert_eq!(c.records, 41, "dead records stay intact until their segment is recycled");
    }

    #[test]
    fn flipped_bits_are_found() {
        let (region, p, mut w) = table();
        for i in 0..20u32 {
            w.put(format!("key{i}").as_bytes(), b"some value bytes", None).unwrap();
        }
        // A bit of the first record's value (after its header word and 4-byte key).
        let data_word = (p.data_offset / 8) as usize;
        region.words()[data_word + 1].fetch_xor(1 << 40, Ordering::Relaxed);
        let c = verify(&region, &p);
        assert!(!c.is_ok());
        assert!(c.problems.iter().any(|m| m.contains("checksum")), "{:?}", c.problems);
        assert!(c.problems.iter().any(|m| m.contains("no intact record")), "{:?}", c.problems);
        // A slot pointing past the data region.
        let idx = (p.index_offset / 8) as usize;
        region.words()[idx + 1].store((1 << super::super::TAG_SHIFT) | LOC_MASK, Ordering::Relaxed);
        let c = verify(&region, &p);
        assert!(c.problems.iter().any(|m| m.contains("outside the data region")), "{:?}", c.problems);
    }
}
