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
    read_stats, record_crc, Geo, RecHeader, TableParams, TableStats, FILL_BITS, FILL_MASK, LOC_BITS, LOC_MASK,
};
use crate::hash::hash;
use crate::region::{copy_out_bytes, load_at, Region};
use crate::sync::Ordering;
use std::collections::{HashMap, HashSet};

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
/// file: every offset is bounds-checked before use.
pub fn verify(region: &Region, params: &TableParams) -> TableCheck {
    let g = Geo::new(region.len_bytes(), params);
    let words = region.words();
    let mut check = TableCheck { stats: read_stats(words, params.data_bytes()), ..TableCheck::default() };
    // Record locations (4-byte units into the data region) of intact records.
    let mut intact: HashSet<u64> = HashSet::new();
    let mut value = Vec::new();
    for seg in 0..g.nsegments {
        // SYNC: Acquire, pairs with the Release store of the segment state in TableWriter::put.
        let state = words[g.seg_state(seg)].load(Ordering::Acquire);
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
        // SYNC: Acquire, as above: an unchanged generation means the writer did not recycle the
        // segment while we copied (records below the fill are immutable until then).
        crate::sync::fence(Ordering::Acquire);
        if words[g.seg_state(seg)].load(Ordering::Acquire) >> FILL_BITS != state >> FILL_BITS {
            check.segments_changed += 1;
            continue;
        }
        check.records += found.len() as u64;
        intact.extend(found);
        bad.into_iter().for_each(|p| check.problem(p));
    }

    // The index.
    let mut keys: HashSet<Vec<u8>> = HashSet::new();
    let mut expected_overflow: HashMap<u64, u64> = HashMap::new();
    for b in 0..g.nbuckets {
        let base = g.bucket(b);
        for slot in 1..=super::SLOTS {
            // SYNC: Acquire, pairs with the Release slot store in TableWriter::put.
            let s = words[base + slot].load(Ordering::Acquire);
            if s == 0 {
                continue;
            }
            let loc = s & LOC_MASK;
            let seg = g.split(loc).0;
            if seg >= g.nsegments {
                check.problem(format!("bucket {b} slot {slot}: points outside the data region"));
                continue;
            }
            if !intact.contains(&loc) {
                let state = words[g.seg_state(seg)].load(Ordering::Acquire);
                if words[base + slot].load(Ordering::Acquire) == s && (state & FILL_MASK) != 0 {
                    check.problem(format!("bucket {b} slot {slot}: points at no intact record"));
                }
                continue;
            }
            let rb = g.rec_byte(loc);
            let hdr = RecHeader::decode(load_at(words, rb));
            let mut key = vec![0u8; hdr.klen];
            copy_out_bytes(words, rb + hdr.key_off(), &mut key);
            let (home, tag) = g.home(hash(g.seed, &key));
            if s >> LOC_BITS != tag {
                check.problem(format!("bucket {b} slot {slot}: tag does not match the key's hash"));
            }
            let dist = (b + g.nbuckets - home) % g.nbuckets;
            if dist >= g.max_probe {
                check.problem(format!("bucket {b} slot {slot}: {dist} buckets from home, beyond the probe bound"));
            }
            let mut p = home;
            for _ in 0..dist.min(g.max_probe) {
                *expected_overflow.entry(p).or_default() += 1;
                p = g.next_bucket(p);
            }
            if !keys.insert(key) {
                check.problem(format!("bucket {b} slot {slot}: key indexed twice"));
            }
            check.indexed_items += 1;
        }
    }
    for (b, n) in expected_overflow {
        // Relaxed: a snapshot; a count may over-state (harmless) but never under-state.
        let stored = words[g.bucket(b)].load(Ordering::Relaxed);
        if stored < n {
            check.problem(format!(
                "bucket {b}: overflow count {stored} below the {n} probe chains passing it (lookups would miss keys)"
            ));
        }
    }
    check
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::{EvictionPolicy, TableWriter};
    use std::sync::Arc;

    fn table() -> (Arc<Region>, TableParams, TableWriter) {
        let p = TableParams::new(64, 64 << 10, 8 << 10, 7).unwrap();
        let region = Arc::new(Region::heap((p.file_size() / 8) as usize));
        let w = TableWriter::create(Arc::clone(&region), &p, EvictionPolicy::default());
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
        region.words()[idx + 1].store((1 << 48) | LOC_MASK, Ordering::Relaxed);
        let c = verify(&region, &p);
        assert!(c.problems.iter().any(|m| m.contains("outside the data region")), "{:?}", c.problems);
    }
}
