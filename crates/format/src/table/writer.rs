//! The write side of a table: puts, deletes, eviction, expiry, recovery.

use super::{
    next_generation, now_ms, read_stats, record_crc, slot_matches_state, slot_tag, slot_value, Bitmap, Geo, RecHeader,
    TableParams, TableStats, FILL_MASK, LOC_MASK, MAX_KEY, SLOTS, W_NEXT_SEG_SEQ, W_STAT_BYTES, W_STAT_CLEARS,
    W_STAT_DELETES, W_STAT_EVICTIONS, W_STAT_EXPIRATIONS, W_STAT_ITEMS, W_STAT_PUTS,
};
use crate::hash::hash;
use crate::region::{copy_out_bytes, load_at, Region, WordWriter};
use crate::sync::{AtomicU64, Ordering};
use std::collections::VecDeque;
use std::sync::Arc;

/// Which segment the writer empties when it needs room.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum EvictionPolicy {
    /// A segment all of whose items have expired, if there is one; else the oldest segment.
    #[default]
    ExpiredFirst,
    /// Always the oldest segment (strict FIFO by segment).
    Fifo,
}

/// A put was refused; the value is handed back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum PutError<V> {
    /// The key is empty or longer than [`MAX_KEY`](super::MAX_KEY) bytes.
    BadKey {
        /// Length of the key.
        len: usize,
        /// The value, handed back.
        value: V,
    },
    /// The value is larger than the table can hold (a record must fit in one segment).
    TooLarge {
        /// Length of the value.
        len: usize,
        /// Largest value this table accepts with this key.
        max: usize,
        /// The value, handed back.
        value: V,
    },
    /// No free index slot within the probe bound (the index is too small for the keys).
    IndexFull {
        /// The value, handed back.
        value: V,
    },
}

impl<V> PutError<V> {
    /// The refused value.
    pub fn into_value(self) -> V {
        match self {
            PutError::BadKey { value, .. } | PutError::TooLarge { value, .. } | PutError::IndexFull { value } => value,
        }
    }
}

impl<V> std::fmt::Display for PutError<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PutError::BadKey { len, .. } => write!(f, "key of {len} B (keys are 1 to {MAX_KEY} B)"),
            PutError::TooLarge { len, max, .. } => {
                write!(f, "value of {len} B exceeds this table's maximum of {max} B")
            }
            PutError::IndexFull { .. } => {
                f.write_str("index full near this key's bucket: create the table with more items")
            }
        }
    }
}

impl<V: std::fmt::Debug> std::error::Error for PutError<V> {}

/// What attaching to an existing table found.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TableRecovery {
    /// Live items found.
    pub items: u64,
    /// Index slots cleared because they pointed nowhere valid.
    pub cleared_slots: u64,
    /// Segments whose records were inconsistent from some point on (cut there).
    pub damaged_segments: u64,
}

/// The single writer of a table. Lives in the format crate so loom can check it; the writer
/// library wraps it with file handling.
pub struct RawTableWriter {
    region: Arc<Region>,
    g: Geo,
    data_bytes: u64,
    policy: EvictionPolicy,
    cur: Option<u64>,
    cur_fill: u64,
    fifo: VecDeque<u64>,
    free: Vec<u64>,
    next_seq: u64,
    max_expiry: Vec<u64>,
    live: Vec<u64>,
    stats: TableStats,
    /// Segments recycled so far (a put looks its key up again only after one was).
    recycled: u64,
}

impl RawTableWriter {
    /// Take over a freshly created (all-zero) table.
    pub fn create(region: Arc<Region>, params: &TableParams, policy: EvictionPolicy) -> RawTableWriter {
        assert!(region.is_writable(), "table writer needs a writable region");
        let g = Geo::new(region.len_bytes(), params);
        let n = g.nsegments as usize;
        let stats = TableStats { bytes_capacity: params.data_bytes(), ..TableStats::default() };
        RawTableWriter {
            region,
            g,
            data_bytes: params.data_bytes(),
            policy,
            cur: None,
            cur_fill: 0,
            fifo: VecDeque::new(),
            free: (0..g.nsegments).rev().collect(),
            next_seq: 1,
            max_expiry: vec![0; n],
            live: vec![0; n],
            stats,
            recycled: 0,
        }
    }

    /// Statistics as the writer keeps them.
    pub fn stats(&self) -> TableStats {
        self.stats
    }

    /// Largest value accepted with a key of `klen` bytes.
    pub fn max_value(&self, klen: usize, with_ttl: bool) -> usize {
        let hdr = if with_ttl { 16 } else { 8 };
        (self.g.seg_size as usize - hdr - klen.min(MAX_KEY)).min(super::MAX_VALUE_FORMAT)
    }

    #[inline]
    fn words(&self) -> &[AtomicU64] {
        self.region.words()
    }

    /// Put `key` → `value`, with an absolute expiry in unix milliseconds (`None`: never).
    pub fn put<V: AsRef<[u8]>>(&mut self, key: &[u8], value: V, expiry_ms: Option<u64>) -> Result<(), PutError<V>> {
        let v = value.as_ref();
        if key.is_empty() || key.len() > MAX_KEY {
            return Err(PutError::BadKey { len: key.len(), value });
        }
        let max = self.max_value(key.len(), expiry_ms.is_some());
        if v.len() > max {
            return Err(PutError::TooLarge { len: v.len(), max, value });
        }
        let hdr = RecHeader { crc: 0, klen: key.len(), vlen: v.len(), has_expiry: expiry_ms.is_some() };
        let rec_len = hdr.len();
        let h = hash(self.g.seed, key);
        let (home, tag) = self.g.home(h);
        // A refused put changes nothing: a new key without a free slot within the probe bound
        // is refused before anything is evicted, unless the table is at `max_items` (then the
        // put evicts whatever happens, and is refused only if that freed no slot on its chain).
        let mut existing = self.find(key, home, tag);
        let mut free = if existing.is_none() { self.free_slot(home) } else { None };
        if existing.is_none() && free.is_none() && self.stats.items < self.g.max_items {
            return Err(PutError::IndexFull { value });
        }
        let recycled = self.recycled;
        // Make room first (eviction may remove this very key); an overwrite needs no room.
        if self.stats.items >= self.g.max_items && existing.is_none() {
            while self.stats.items >= self.g.max_items && self.evict_one() {}
        }
        if self.cur.is_none() || self.cur_fill + rec_len > self.g.seg_size {
            self.next_segment();
        }
        if self.recycled != recycled {
            // An eviction may have removed the key, or freed a slot: look again.
            existing = self.find(key, home, tag);
            free = if existing.is_none() { self.free_slot(home) } else { None };
        }
        if existing.is_none() && free.is_none() {
            return Err(PutError::IndexFull { value });
        }
        let seg = self.cur.expect("a current segment after next_segment");
        let loc = self.g.loc(seg, self.cur_fill);
        let hi = RecHeader::encode_hi(key.len(), v.len(), expiry_ms.is_some());
        let crc = record_crc(hi, expiry_ms, h, v);
        let region = Arc::clone(&self.region);
        let words = region.words();
        // Record words: Release stores (SYNC: pair with the reader's Acquire fence in
        // RawTableReader::still_valid), published below by the fill store. The record may start
        // in the last word of the previous one, whose bytes are stored again unchanged.
        let mut out = WordWriter::at_byte(words, self.g.rec_byte(loc));
        out.write(words, &(u64::from(crc) | (u64::from(hi) << 32)).to_le_bytes());
        if let Some(e) = expiry_ms {
            out.write(words, &e.to_le_bytes());
        }
        out.write(words, key);
        out.write(words, v);
        self.cur_fill += rec_len;
        // Relaxed: the writer's own earlier store.
        let state = (words[self.g.seg_state(seg)].load(Ordering::Relaxed) & !FILL_MASK) | self.cur_fill;
        // SYNC: Release, pairs with the reader's acquire load of the segment state
        // (RawTableReader::read_record, get_fast): the record is complete below the new fill.
        words[self.g.seg_state(seg)].store(state, Ordering::Release);
        let exp = expiry_ms.unwrap_or(u64::MAX);
        if exp > self.max_expiry[seg as usize] {
            self.max_expiry[seg as usize] = exp;
            // Relaxed: used by the writer (and recovery) only.
            words[self.g.seg_max_expiry(seg)].store(exp, Ordering::Relaxed);
        }
        self.add_live(seg, rec_len as i64);
        // The slot names the segment's generation, so a reader that loads it accepts the record
        // only while the segment is still in that generation.
        let slot_val = slot_value(tag, state, loc);
        match existing {
            Some((slot_word, old_loc)) => {
                // SYNC: Release, pairs with the reader's acquire load of the slot (`scan`).
                words[slot_word].store(slot_val, Ordering::Release);
                let old_len = self.record_len_at(old_loc);
                self.add_live(self.seg_of(old_loc), -(old_len as i64));
            }
            None => {
                self.insert_slot(home, free.expect("a free slot for a new key (checked above)"), slot_val);
                self.stats.items += 1;
            }
        }
        self.stats.puts = self.stats.puts.wrapping_add(1);
        self.publish_stats();
        Ok(())
    }

    /// Delete `key`; returns whether it was present.
    pub fn delete(&mut self, key: &[u8]) -> bool {
        if key.is_empty() || key.len() > MAX_KEY {
            return false;
        }
        let (home, tag) = self.g.home(hash(self.g.seed, key));
        let Some((slot_word, loc)) = self.find(key, home, tag) else {
            return false;
        };
        self.remove_slot(home, slot_word);
        let len = self.record_len_at(loc);
        self.add_live(self.seg_of(loc), -(len as i64));
        self.stats.items = self.stats.items.saturating_sub(1);
        self.stats.deletes = self.stats.deletes.wrapping_add(1);
        self.publish_stats();
        true
    }

    /// Remove every item (readers see misses from now on; segments are recycled).
    pub fn clear(&mut self) {
        let words = self.region.words();
        for b in 0..self.g.nbuckets {
            for w in &words[self.g.bucket(b)..self.g.bucket(b) + super::BUCKET_WORDS] {
                // SYNC: Release, pairs with the Acquire slot loads in RawTableReader::lookup.
                w.store(0, Ordering::Release);
            }
        }
        let used: Vec<u64> = self.fifo.drain(..).collect();
        for seg in used {
            self.reset_segment(seg);
            self.free.push(seg);
        }
        self.cur = None;
        self.cur_fill = 0;
        self.stats.items = 0;
        self.stats.bytes_used = 0;
        self.stats.clears = self.stats.clears.wrapping_add(1);
        self.publish_stats();
    }

    /// Evict every segment (but the current one) whose items have all expired. Returns the
    /// number of items removed.
    pub fn expire(&mut self) -> u64 {
        let now = now_ms();
        let before = self.stats.expirations;
        let victims: Vec<u64> =
            self.fifo.iter().copied().filter(|&s| Some(s) != self.cur && self.max_expiry[s as usize] <= now).collect();
        for seg in victims {
            self.fifo.retain(|&s| s != seg);
            self.evict(seg);
            self.free.push(seg);
        }
        self.publish_stats();
        self.stats.expirations.wrapping_sub(before)
    }

    fn publish_stats(&self) {
        let w = self.words();
        let s = &self.stats;
        // Relaxed: statistics, single writer; readers only display them.
        for (i, v) in [
            (W_STAT_ITEMS, s.items),
            (W_STAT_BYTES, s.bytes_used),
            (W_STAT_PUTS, s.puts),
            (W_STAT_DELETES, s.deletes),
            (W_STAT_EVICTIONS, s.evictions),
            (W_STAT_EXPIRATIONS, s.expirations),
            (W_STAT_CLEARS, s.clears),
            (W_NEXT_SEG_SEQ, self.next_seq),
        ] {
            w[i].store(v, Ordering::Relaxed);
        }
    }

    fn add_live(&mut self, seg: u64, delta: i64) {
        let l = &mut self.live[seg as usize];
        *l = l.wrapping_add_signed(delta);
        self.stats.bytes_used = self.stats.bytes_used.wrapping_add_signed(delta);
        // Relaxed: statistics.
        self.region.words()[self.g.seg_live(seg)].store(*l, Ordering::Relaxed);
    }

    #[inline]
    fn seg_of(&self, loc: u64) -> u64 {
        self.g.split(loc).0
    }

    /// The header of the record at `loc`, which lies below its segment's fill (callers check
    /// `off + 8 <= fill` for records they have not written themselves).
    fn header_at(&self, loc: u64) -> RecHeader {
        // Relaxed loads: the writer reads what it wrote itself.
        RecHeader::decode(load_at(self.words(), self.g.rec_byte(loc)))
    }

    /// The expiry of the record at `loc` (it has one).
    fn expiry_at(&self, loc: u64) -> u64 {
        load_at(self.words(), self.g.rec_byte(loc) + 8)
    }

    fn record_len_at(&self, loc: u64) -> u64 {
        self.header_at(loc).len()
    }

    fn key_at<'k>(&self, loc: u64, buf: &'k mut [u8; MAX_KEY]) -> &'k [u8] {
        let hdr = self.header_at(loc);
        let k = &mut buf[..hdr.klen];
        copy_out_bytes(self.words(), self.g.rec_byte(loc) + hdr.key_off(), k);
        k
    }

    /// The slot (word index) and record location of `key`, if present.
    fn find(&self, key: &[u8], home: u64, tag: u64) -> Option<(usize, u64)> {
        let words = self.words();
        let mut kbuf = [0u8; MAX_KEY];
        let mut b = home;
        for _ in 0..self.g.max_probe {
            let base = self.g.bucket(b);
            for sw in base + 1..=base + SLOTS {
                // Relaxed: the writer's own stores.
                let s = words[sw].load(Ordering::Relaxed);
                if s != 0 && slot_tag(s) == tag && self.key_at(s & LOC_MASK, &mut kbuf) == key {
                    return Some((sw, s & LOC_MASK));
                }
            }
            if words[base].load(Ordering::Relaxed) == 0 {
                return None;
            }
            b = self.g.next_bucket(b);
        }
        None
    }

    /// The first empty slot of the probe sequence from `home` (its word, and how many buckets
    /// past home it is), if one is within the probe bound.
    fn free_slot(&self, home: u64) -> Option<(usize, u64)> {
        let words = self.words();
        let mut b = home;
        for dist in 0..self.g.max_probe {
            let base = self.g.bucket(b);
            if let Some(sw) = (base + 1..=base + SLOTS).find(|&sw| words[sw].load(Ordering::Relaxed) == 0) {
                return Some((sw, dist));
            }
            b = self.g.next_bucket(b);
        }
        None
    }

    /// Put `val` in the free slot `(slot_word, dist)` found by [`Self::free_slot`], counting it
    /// in the overflow word of every bucket it passes (before the slot store, so a reader that
    /// sees the slot also sees the counts that lead to it).
    fn insert_slot(&mut self, home: u64, (slot_word, dist): (usize, u64), val: u64) {
        let words = self.region.words();
        let mut p = home;
        for _ in 0..dist {
            let o = self.g.bucket(p);
            // SYNC: Release, pairs with the Acquire load of the overflow word in
            // RawTableReader::lookup.
            words[o].store(words[o].load(Ordering::Relaxed) + 1, Ordering::Release);
            p = self.g.next_bucket(p);
        }
        // SYNC: Release, pairs with the Acquire slot load in RawTableReader::lookup.
        words[slot_word].store(val, Ordering::Release);
    }

    /// Empty slot `slot_word` (whose key hashes to `home`) and undo its overflow counts.
    fn remove_slot(&mut self, home: u64, slot_word: usize) {
        let words = self.region.words();
        // SYNC: Release, pairs with the Acquire slot load in RawTableReader::lookup.
        words[slot_word].store(0, Ordering::Release);
        let slot_bucket = ((slot_word - self.g.index_word) / super::BUCKET_WORDS) as u64;
        let mut p = home;
        while p != slot_bucket {
            let o = self.g.bucket(p);
            // Release: as in insert_slot (a count only ever over-states, never under-states).
            words[o].store(words[o].load(Ordering::Relaxed).saturating_sub(1), Ordering::Release);
            p = self.g.next_bucket(p);
        }
    }

    /// Start a new current segment, evicting one if none is free.
    fn next_segment(&mut self) {
        let seg = match self.free.pop() {
            Some(s) => s,
            None => {
                let victim = self.pick_victim();
                self.fifo.retain(|&s| s != victim);
                self.evict(victim);
                victim
            }
        };
        self.cur = Some(seg);
        self.cur_fill = 0;
        self.fifo.push_back(seg);
        self.max_expiry[seg as usize] = 0;
        let w = self.region.words();
        // Relaxed: writer-side bookkeeping (FIFO order for recovery).
        w[self.g.seg_max_expiry(seg)].store(0, Ordering::Relaxed);
        w[self.g.seg_seq(seg)].store(self.next_seq, Ordering::Relaxed);
        self.next_seq += 1;
    }

    fn pick_victim(&self) -> u64 {
        if self.policy == EvictionPolicy::ExpiredFirst {
            let now = now_ms();
            if let Some(&s) = self.fifo.iter().find(|&&s| self.max_expiry[s as usize] <= now) {
                return s;
            }
        }
        *self.fifo.front().expect("no free segment means some segment is in use")
    }

    /// Evict the oldest segment to lower the item count; false if nothing is left to evict.
    fn evict_one(&mut self) -> bool {
        let Some(victim) = (!self.fifo.is_empty()).then(|| self.pick_victim()) else {
            return false;
        };
        self.fifo.retain(|&s| s != victim);
        if Some(victim) == self.cur {
            self.cur = None;
        }
        self.evict(victim);
        self.free.push(victim);
        true
    }

    /// Remove every live item of `seg` from the index, then recycle it.
    fn evict(&mut self, seg: u64) {
        let region = Arc::clone(&self.region);
        let words = region.words();
        // Relaxed: the writer's own store.
        let state = words[self.g.seg_state(seg)].load(Ordering::Relaxed);
        let fill = state & FILL_MASK;
        let now = now_ms();
        let mut off = 0;
        let mut kbuf = [0u8; MAX_KEY];
        while off + 8 <= fill {
            let loc = self.g.loc(seg, off);
            let hdr = self.header_at(loc);
            if hdr.len() == 0 || off + hdr.len() > fill {
                break;
            }
            let key = self.key_at(loc, &mut kbuf);
            let (home, tag) = self.g.home(hash(self.g.seed, key));
            if let Some(sw) = self.slot_pointing_at(home, slot_value(tag, state, loc)) {
                let expired = hdr.has_expiry && self.expiry_at(loc) <= now;
                self.remove_slot(home, sw);
                self.stats.items = self.stats.items.saturating_sub(1);
                if expired {
                    self.stats.expirations = self.stats.expirations.wrapping_add(1);
                } else {
                    self.stats.evictions = self.stats.evictions.wrapping_add(1);
                }
            }
            off += hdr.len();
        }
        let live = self.live[seg as usize];
        self.add_live(seg, -(live as i64));
        self.reset_segment(seg);
    }

    fn slot_pointing_at(&self, home: u64, val: u64) -> Option<usize> {
        let words = self.words();
        let mut b = home;
        for _ in 0..self.g.max_probe {
            let base = self.g.bucket(b);
            if let Some(sw) = (base + 1..=base + SLOTS).find(|&sw| words[sw].load(Ordering::Relaxed) == val) {
                return Some(sw);
            }
            if words[base].load(Ordering::Relaxed) == 0 {
                return None;
            }
            b = self.g.next_bucket(b);
        }
        None
    }

    /// Bump the generation and empty the segment (its slots are already cleared).
    fn reset_segment(&mut self, seg: u64) {
        self.recycled += 1;
        let w = self.region.words();
        let next = next_generation(w[self.g.seg_state(seg)].load(Ordering::Relaxed));
        // SYNC: Release, pairs with the reader's acquire loads of the state (read_record,
        // still_valid): a reader that sees the new generation also sees the slot clears made
        // before it. Later stores into the segment are Release stores sequenced after this one.
        w[self.g.seg_state(seg)].store(next, Ordering::Release);
        // Relaxed: writer-side bookkeeping.
        w[self.g.seg_seq(seg)].store(0, Ordering::Relaxed);
        w[self.g.seg_max_expiry(seg)].store(0, Ordering::Relaxed);
        self.max_expiry[seg as usize] = 0;
        self.live[seg as usize] = 0;
    }

    /// Take over a table left by a previous writer (which may have been killed at any
    /// instruction, or whose file may be corrupt): rebuild the writer's state from the file,
    /// clear slots that do not name an intact record of their segment's current generation,
    /// cut segments at their first inconsistent record, recount the overflow words and the
    /// statistics.
    ///
    /// Memory: one bit per 4 bytes of the data region (where intact records start) and one
    /// word per bucket, whatever the number of records.
    pub fn attach(
        region: Arc<Region>,
        params: &TableParams,
        policy: EvictionPolicy,
    ) -> (RawTableWriter, TableRecovery) {
        let mut me = Self::create(region, params, policy);
        let mut rec = TableRecovery::default();
        let g = me.g;
        let region = Arc::clone(&me.region);
        let words = region.words();
        // Relaxed loads and stores throughout, except where a reader must see an order (the
        // slot clears before a generation bump, as in `evict`): nothing else is running as the
        // writer, and readers validate whatever they load.
        let state_of = |seg: u64| words[g.seg_state(seg)].load(Ordering::Relaxed);

        // 1. Segments: the valid prefix of each used one, and where its intact records start.
        let mut starts = Bitmap::new(g.nsegments * g.seg_size / super::REC_ALIGN);
        let mut used: Vec<(u64, u64)> = Vec::new();
        let mut prefix = vec![0u64; g.nsegments as usize];
        let mut scratch = Vec::new();
        for seg in 0..g.nsegments {
            let fill = state_of(seg) & FILL_MASK;
            if words[g.seg_seq(seg)].load(Ordering::Relaxed) == 0 {
                continue;
            }
            let (mut off, mut max_exp) = (0, 0);
            while off + 8 <= fill.min(g.seg_size) {
                let loc = g.loc(seg, off);
                let hdr = me.header_at(loc);
                if hdr.klen == 0 || off + hdr.len() > fill.min(g.seg_size) || !me.record_ok(loc, &hdr, &mut scratch) {
                    break;
                }
                starts.set(loc);
                max_exp = max_exp.max(if hdr.has_expiry { me.expiry_at(loc) } else { u64::MAX });
                off += hdr.len();
            }
            if off != fill {
                rec.damaged_segments += 1;
            }
            me.max_expiry[seg as usize] = max_exp;
            words[g.seg_max_expiry(seg)].store(max_exp, Ordering::Relaxed);
            used.push((words[g.seg_seq(seg)].load(Ordering::Relaxed), seg));
            prefix[seg as usize] = off;
        }
        used.sort_unstable();
        // Renumber 1..=n in FIFO order: sequence numbers stay small whatever the file held.
        for (i, (seq, seg)) in used.iter_mut().enumerate() {
            *seq = i as u64 + 1;
            words[g.seg_seq(*seg)].store(*seq, Ordering::Relaxed);
        }

        // 2. Slots: keep those that name an intact record start of their segment's current
        //    generation, whose key hashes to the slot's tag within reach of its home.
        let mut kbuf = [0u8; MAX_KEY];
        let clear = |sw: usize, rec: &mut TableRecovery| {
            // SYNC: Release, pairs with the reader's acquire load of the slot (`scan`).
            words[sw].store(0, Ordering::Release);
            rec.cleared_slots += 1;
        };
        let reach = |b: u64, home: u64| if b >= home { b - home } else { b + g.nbuckets - home };
        for b in 0..g.nbuckets {
            let base = g.bucket(b);
            for sw in base + 1..=base + SLOTS {
                let s = words[sw].load(Ordering::Relaxed);
                if s == 0 {
                    continue;
                }
                let loc = s & LOC_MASK;
                let valid =
                    loc < starts.len() && starts.get(loc) && slot_matches_state(s, state_of(me.seg_of(loc))) && {
                        let (home, tag) = g.home(hash(g.seed, me.key_at(loc, &mut kbuf)));
                        slot_tag(s) == tag && reach(b, home) < g.max_probe
                    };
                if !valid {
                    clear(sw, &mut rec);
                }
            }
        }

        // 3. One slot per key (only a corrupt file holds two; the writer never stores a second):
        //    keep the newest record (highest segment sequence, then offset). Every slot left
        //    names an intact record, so its key can be read; the chain from a key's home is
        //    scanned up to the last bucket some kept slot's chain passes.
        let counts = |words: &[AtomicU64]| {
            let mut counts = vec![0u64; g.nbuckets as usize];
            for b in 0..g.nbuckets {
                let base = g.bucket(b);
                for sw in base + 1..=base + SLOTS {
                    let s = words[sw].load(Ordering::Relaxed);
                    if s != 0 {
                        let mut kbuf = [0u8; MAX_KEY];
                        let (home, _) = g.home(hash(g.seed, me.key_at(s & LOC_MASK, &mut kbuf)));
                        let mut p = home;
                        for _ in 0..reach(b, home) {
                            counts[p as usize] += 1;
                            p = g.next_bucket(p);
                        }
                    }
                }
            }
            counts
        };
        let passing = counts(words);
        let order = |loc: u64| (words[g.seg_seq(me.seg_of(loc))].load(Ordering::Relaxed), loc);
        let mut other = [0u8; MAX_KEY];
        for b in 0..g.nbuckets {
            for sw in g.bucket(b) + 1..=g.bucket(b) + SLOTS {
                let s = words[sw].load(Ordering::Relaxed);
                if s == 0 {
                    continue;
                }
                let key = me.key_at(s & LOC_MASK, &mut kbuf);
                let (mut p, tag) = g.home(hash(g.seed, key));
                for _ in 0..g.max_probe {
                    let base = g.bucket(p);
                    for ow in (base + 1..=base + SLOTS).filter(|&ow| ow != sw) {
                        let o = words[ow].load(Ordering::Relaxed);
                        if o != 0 && slot_tag(o) == tag && me.key_at(o & LOC_MASK, &mut other) == key {
                            let older = if order(o & LOC_MASK) < order(s & LOC_MASK) { ow } else { sw };
                            clear(older, &mut rec);
                        }
                    }
                    if passing[p as usize] == 0 || words[sw].load(Ordering::Relaxed) == 0 {
                        break;
                    }
                    p = g.next_bucket(p);
                }
            }
        }
        for (b, c) in counts(words).iter().enumerate() {
            // SYNC: Release, pairs with the reader's acquire load of the overflow word (`probe`):
            // the true count is right at any moment, no item moves during recovery.
            words[g.bucket(b as u64)].store(*c, Ordering::Release);
        }

        // 4. Cut damaged segments at their valid prefix and reset used-looking free ones. Bytes
        //    above a published fill are about to be rewritten, so the generation moves on: the
        //    slots naming the segment are cleared first (a reader that then sees the new
        //    generation sees the clears, as in `evict`), and those of the intact prefix are
        //    stored again under the new generation.
        let in_use: std::collections::HashSet<u64> = used.iter().map(|&(_, s)| s).collect();
        for seg in 0..g.nsegments {
            let state = state_of(seg);
            let cut = prefix[seg as usize];
            if state & FILL_MASK == cut || (!in_use.contains(&seg) && state & FILL_MASK == 0) {
                continue;
            }
            let mut kept = Vec::new();
            for b in 0..g.nbuckets {
                for sw in g.bucket(b) + 1..=g.bucket(b) + SLOTS {
                    let s = words[sw].load(Ordering::Relaxed);
                    if s != 0 && me.seg_of(s & LOC_MASK) == seg {
                        // SYNC: Release, as in `clear`.
                        words[sw].store(0, Ordering::Release);
                        kept.push((sw, s));
                    }
                }
            }
            let next = next_generation(state) | if in_use.contains(&seg) { cut } else { 0 };
            // SYNC: Release, pairs with the reader's acquire loads of the state, as in
            // `reset_segment`.
            words[g.seg_state(seg)].store(next, Ordering::Release);
            for (sw, s) in kept {
                // SYNC: Release, pairs with the reader's acquire load of the slot (`scan`).
                words[sw].store(slot_value(slot_tag(s), next, s & LOC_MASK), Ordering::Release);
            }
        }

        // 5. The writer's own state.
        let mut live = vec![0u64; g.nsegments as usize];
        for b in 0..g.nbuckets {
            for sw in g.bucket(b) + 1..=g.bucket(b) + SLOTS {
                let s = words[sw].load(Ordering::Relaxed);
                if s != 0 {
                    rec.items += 1;
                    live[me.seg_of(s & LOC_MASK) as usize] += me.record_len_at(s & LOC_MASK);
                }
            }
        }
        me.fifo = used.iter().map(|&(_, s)| s).collect();
        me.free = (0..g.nsegments).rev().filter(|s| !in_use.contains(s)).collect();
        me.next_seq = used.last().map_or(1, |&(seq, _)| seq + 1);
        if let Some(&(_, last)) = used.last() {
            me.cur = Some(last);
            me.cur_fill = prefix[last as usize];
        }
        me.live = live;
        for seg in 0..g.nsegments {
            words[g.seg_live(seg)].store(me.live[seg as usize], Ordering::Relaxed);
        }
        let old = read_stats(words, me.data_bytes);
        me.stats = TableStats { items: rec.items, bytes_used: me.live.iter().sum(), ..old };
        me.publish_stats();
        (me, rec)
    }

    /// Whether the record at `loc` passes its crc (`scratch` holds the key and value).
    fn record_ok(&self, loc: u64, hdr: &RecHeader, scratch: &mut Vec<u8>) -> bool {
        let expiry = hdr.has_expiry.then(|| self.expiry_at(loc));
        scratch.resize(hdr.klen + hdr.vlen, 0);
        copy_out_bytes(self.words(), self.g.rec_byte(loc) + hdr.key_off(), scratch);
        let hi = RecHeader::encode_hi(hdr.klen, hdr.vlen, hdr.has_expiry);
        record_crc(hi, expiry, hash(self.g.seed, &scratch[..hdr.klen]), &scratch[hdr.klen..]) == hdr.crc
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    /// Keys `prefix0`, `prefix1`, … whose home bucket is (or, with `same` false, is not within
    /// the probe bound after) `home`.
    fn keys_homed(g: &Geo, prefix: &str, home: u64, same: bool, n: usize) -> Vec<Vec<u8>> {
        (0u64..)
            .map(|i| format!("{prefix}{i:08}").into_bytes())
            .filter(|k| {
                let h = g.home(hash(g.seed, k)).0;
                if same {
                    h == home
                } else {
                    (h + g.nbuckets - home) % g.nbuckets >= g.max_probe && (home + g.nbuckets - h) % g.nbuckets > 8
                }
            })
            .take(n)
            .collect()
    }

    #[test]
    fn a_put_refused_for_a_full_probe_chain_changes_nothing() {
        // 229 buckets (a chain is at most 128 of them), 6 segments of 204 records of 20 bytes.
        let p = TableParams::new(1400, 6 * 4096, 4096, 7).unwrap();
        assert_eq!((p.nbuckets, p.nsegments), (229, 6));
        let region = Arc::new(Region::heap((p.file_size() / 8) as usize));
        let mut w = RawTableWriter::create(region, &p, EvictionPolicy::Fifo);
        let g = w.g;
        let chain = keys_homed(&g, "c", 0, true, 128 * SLOTS + 1);
        let others = keys_homed(&g, "o", 0, false, 204 + 124);
        assert!(chain.iter().chain(&others).all(|k| record_size_of(k) == 20));
        // Segment 0: keys of other chains; then the chain of bucket 0 fills up, every slot.
        for k in others[..204].iter().chain(&chain[..128 * SLOTS]).chain(&others[204..]) {
            w.put(k, [1u8], None).unwrap();
        }
        assert_eq!((w.stats().items, w.stats().evictions), (1224, 0), "every segment full, nothing evicted");
        let before = w.stats();
        match w.put(&chain[128 * SLOTS], [2u8], None) {
            Err(PutError::IndexFull { value }) => assert_eq!(value, [2u8]),
            other => panic!("{other:?}"),
        }
        assert_eq!(w.stats(), before, "a refused put evicts nothing");
        assert!(w.find(&others[0], g.home(hash(g.seed, &others[0])).0, g.home(hash(g.seed, &others[0])).1).is_some());
    }

    fn record_size_of(key: &[u8]) -> u64 {
        super::super::record_size(key.len(), 1, false)
    }
}
