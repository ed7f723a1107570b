//! The read side of a table: lock-free gets that never store to shared memory.

use super::{
    crc_header, now_ms, read_stats, record_crc, slot_matches_state, slot_tag, Geo, RecHeader, TableParams, TableStats,
    FILL_BITS, FILL_MASK, LOC_MASK, MAX_KEY,
};
use crate::checksum::Crc;
use crate::hash::hash;
use crate::region::{copy_out_bytes, eq_bytes, load_at, prefetch, Region};
use crate::sync::{fence, load_acquire, AtomicU64, Ordering};
use std::sync::Arc;

/// Times a get starts over because the writer recycled the segment it was reading, before it
/// gives up with [`GetError::Contended`]. Each retry needs the writer to evict the segment that
/// holds this very key during the get, so reaching the bound means a writer cycling through
/// the whole data region faster than one get copies one value.
pub const MAX_RETRIES: u32 = 64;

/// Keys a batched get (`get_many`) looks up together.
pub const BATCH: usize = 16;

/// When a record stops being visible to gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Expiry {
    /// Put without a TTL: visible until it is deleted, replaced or evicted.
    Never,
    /// Invisible from this Unix time in milliseconds on (`CLOCK_REALTIME`, see [`now_ms`]).
    AtMs(u64),
}

impl Expiry {
    /// The time left at Unix time `now_ms` (milliseconds): `None` for [`Expiry::Never`], zero
    /// once the expiry is reached.
    pub fn remaining_at(self, now_ms: u64) -> Option<std::time::Duration> {
        match self {
            Expiry::Never => None,
            Expiry::AtMs(at) => Some(std::time::Duration::from_millis(at.saturating_sub(now_ms))),
        }
    }

    /// The time left now ([`remaining_at`](Self::remaining_at) the current [`now_ms`]).
    pub fn remaining(self) -> Option<std::time::Duration> {
        self.remaining_at(now_ms())
    }
}

/// A get failed. `Copy`, no allocation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum GetError {
    /// The value does not fit the buffer.
    BufferTooSmall {
        /// Bytes needed.
        needed: usize,
    },
    /// The file holds something no writer of this format produces.
    Corrupt {
        /// What was wrong.
        reason: &'static str,
    },
    /// The record was recycled under the get [`MAX_RETRIES`] times in a row.
    Contended,
}

impl std::fmt::Display for GetError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            GetError::BufferTooSmall { needed } => write!(f, "buffer too small: value needs {needed} B"),
            GetError::Corrupt { reason } => write!(f, "corrupt table: {reason}"),
            GetError::Contended => {
                write!(f, "gave up after {MAX_RETRIES} retries: the writer recycles memory faster than this get copies")
            }
        }
    }
}

impl std::error::Error for GetError {}

/// Bytes of a value still in shared memory, for a zero-copy get (`get_with`). They may be
/// changing while the closure runs (the get validates afterwards and calls the closure again if
/// they were), so the closure must not trust them: it can copy them out or look at them, and
/// only the closure's result of the validated call is returned.
pub struct SharedBytes<'a> {
    words: &'a [AtomicU64],
    byte_off: usize,
    len: usize,
}

impl SharedBytes<'_> {
    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the value is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Copy `out.len()` bytes starting at `start` (panics if out of range).
    pub fn copy_to(&self, start: usize, out: &mut [u8]) {
        assert!(start + out.len() <= self.len, "range out of the value");
        copy_out_bytes(self.words, self.byte_off + start, out);
    }

    /// Copy the whole value into a `Vec`.
    pub fn to_vec(&self) -> Vec<u8> {
        let mut v = vec![0u8; self.len];
        self.copy_to(0, &mut v);
        v
    }

    fn crc_into(&self, h: &mut Crc) {
        h.update_from_words(self.words, self.byte_off, self.len);
    }
}

/// Where a get puts the value.
enum Sink<'b> {
    Buf(&'b mut [u8]),
    Vec(&'b mut Vec<u8>),
    /// Leave it in shared memory (zero-copy, checked by the caller).
    Shared,
}

/// A record found for the key: copied and validated (with `Sink::Shared` the value is not
/// checked yet: the caller does that).
#[derive(Clone, Copy)]
struct Hit {
    vlen: usize,
    seg: u64,
    state: u64,
    value_off: usize,
    /// What the record's checksum is taken under ([`crc_header`]).
    crc_header: u64,
    crc: u32,
    /// The record's expiry (Unix ms), validated with the record: it is in `crc_header`.
    expiry: Option<u64>,
}

/// What [`RawTableReader::get_fast`] concluded.
enum Fast {
    Hit(usize),
    Miss,
    /// Not the common case: ask [`RawTableReader::lookup`].
    Unsure,
}

/// What one pass over a probe chain found.
enum Probe {
    Hit(Hit),
    Miss,
    Retry,
}

/// What one look at a slot found.
enum Step {
    /// The key's record.
    Found(Hit),
    /// The slot holds another key (tag collision).
    Other,
    /// The key's record has expired.
    Expired,
    /// The writer moved on while we read (the slot is stale, or the segment was recycled
    /// while we copied): start over.
    Recycled,
    /// The file holds what no writer produces: the slot names the segment's current generation
    /// and the segment was not recycled while we read, so what we read is what the writer
    /// wrote, and it is inconsistent.
    Corrupt(&'static str),
}

/// A reader of a table: gets never block, never allocate (except `get_vec`), never write shared
/// memory. Hit/miss/retry counters live in this process. `Sync`: one reader may serve any
/// number of threads.
pub struct RawTableReader {
    region: Arc<Region>,
    g: Geo,
    data_bytes: u64,
    tally: Tally,
}

/// Which count of a [`Tally`].
#[derive(Clone, Copy)]
enum Count {
    Hit = 0,
    Miss = 1,
    Retry = 2,
}

/// A reader's hit, miss and retry counts, kept per thread in this process's memory (never in
/// the file): a reader shared by many threads counts without their cores contending for one
/// cache line, and [`RawTableReader::counters`] sums the threads' counts.
#[derive(Default)]
struct Tally(thread_local::ThreadLocal<[std::sync::atomic::AtomicU64; 3]>);

impl Tally {
    #[inline]
    fn add(&self, count: Count) {
        let c = &self.0.get_or_default()[count as usize];
        // Relaxed load and store, no read-modify-write: only this thread stores its counts,
        // and `sum` only needs each count's latest value (statistics, no ordering).
        c.store(c.load(std::sync::atomic::Ordering::Relaxed) + 1, std::sync::atomic::Ordering::Relaxed);
    }

    fn sum(&self) -> ReaderCounters {
        let mut t = [0u64; 3];
        for counts in self.0.iter() {
            for (total, c) in t.iter_mut().zip(counts) {
                // Relaxed: statistics (see `add`).
                *total += c.load(std::sync::atomic::Ordering::Relaxed);
            }
        }
        ReaderCounters {
            hits: t[Count::Hit as usize],
            misses: t[Count::Miss as usize],
            retries: t[Count::Retry as usize],
        }
    }
}

/// Counters a reader keeps in its own memory.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReaderCounters {
    /// Gets that found a value.
    pub hits: u64,
    /// Gets that found nothing (absent or expired).
    pub misses: u64,
    /// Gets restarted because the writer recycled the record under them.
    pub retries: u64,
}

impl RawTableReader {
    /// A reader of the table in `region` with (validated) `params`.
    pub fn new(region: Arc<Region>, params: &TableParams) -> RawTableReader {
        let g = Geo::new(region.len_bytes(), params);
        RawTableReader { region, g, data_bytes: params.data_bytes(), tally: Tally::default() }
    }

    /// Copy the value of `key` into `buf`; `Ok(Some(len))` if present.
    #[inline]
    pub fn get(&self, key: &[u8], buf: &mut [u8]) -> Result<Option<usize>, GetError> {
        self.get_hashed(key, hash(self.g.seed, key), buf)
    }

    /// [`get`](Self::get) of `key`, whose hash is `key_hash`.
    #[inline(always)]
    fn get_hashed(&self, key: &[u8], key_hash: u64, buf: &mut [u8]) -> Result<Option<usize>, GetError> {
        match self.get_fast(key, key_hash, buf) {
            Fast::Hit(len) => {
                self.tally.add(Count::Hit);
                Ok(Some(len))
            }
            Fast::Miss => {
                self.tally.add(Count::Miss);
                Ok(None)
            }
            Fast::Unsure => {
                let mut sink = Sink::Buf(buf);
                Ok(self.lookup(key, &mut sink)?.map(|hit| hit.vlen))
            }
        }
    }

    /// The common case of [`get`](Self::get) in straight-line code: the first slot on the
    /// key's probe chain whose tag matches holds the key's record, which fits `buf`, has not
    /// expired and did not change while it was copied; or no tag matches up to a bucket no
    /// item was ever pushed past. Anything else (a tag collision, an expired record, a race with
    /// the writer, a corrupt file) is `Unsure`, and [`lookup`](Self::lookup), which handles
    /// every case, decides. Both conclusions drawn here are ones `lookup` draws from the same
    /// loads. It costs about half of `lookup`'s instructions (no retry state, no sink, no
    /// result carried through three functions).
    #[inline(always)]
    fn get_fast(&self, key: &[u8], key_hash: u64, buf: &mut [u8]) -> Fast {
        let g = &self.g;
        let words = self.region.words();
        if key.is_empty() || key.len() > MAX_KEY {
            return Fast::Unsure;
        }
        let (mut b, tag) = g.home(key_hash);
        let mut probes = 0;
        let slot = loop {
            let base = g.bucket(b);
            let Some(bucket) = words.get(base..base + super::BUCKET_WORDS) else {
                return Fast::Unsure;
            };
            // Relaxed loads up to the first slot with the key's tag, then an Acquire fence: an
            // acquire load of that slot (as in `scan`; the common case needs no mask of all 7).
            if let Some(slot) = bucket[1..].iter().map(|s| s.load(Ordering::Relaxed)).find(|&s| slot_tag(s) == tag) {
                // SYNC: Acquire fence, pairs with the Release slot store in RawTableWriter::put.
                fence(Ordering::Acquire);
                break slot;
            }
            probes += 1;
            // Relaxed: the count only says whether to look further; a stale one is the
            // reader's view at an earlier moment of the writer's history (`probe`).
            if bucket[0].load(Ordering::Relaxed) == 0 || probes == g.max_probe {
                return Fast::Miss;
            }
            b = g.next_bucket(b);
        };
        let loc = slot & LOC_MASK;
        let (seg, off) = g.split(loc);
        if seg >= g.nsegments {
            return Fast::Unsure;
        }
        // In the mapping: the data region is (`Geo::new` checks it), and `seg` is in it. The
        // header, key and value of a small record span up to 3 lines; without the prefetch
        // the loads of the later lines wait for the header (their addresses depend on it).
        let rb = g.rec_byte(loc);
        prefetch(words, rb / 8, 3);
        // SYNC: acquire, as in `read_record`.
        let state = load_acquire(&words[g.seg_state(seg)]);
        let fill = (state & FILL_MASK).min(g.seg_size);
        if !slot_matches_state(slot, state) || off + 8 > fill {
            return Fast::Unsure;
        }
        let hdr = RecHeader::decode(load_at(words, rb));
        let (klen, vlen) = (key.len(), hdr.vlen);
        if off + hdr.len() > fill || hdr.klen != klen || vlen > buf.len() {
            return Fast::Unsure;
        }
        // The record lies below `fill` (checked), so in the mapping; what we load is trusted
        // only once `still_valid` says the segment was not recycled meanwhile.
        let expiry = hdr.has_expiry.then(|| load_at(words, rb + 8));
        let key_byte = rb + hdr.key_off();
        if !eq_bytes(words, key_byte, key) {
            return Fast::Unsure;
        }
        let out = &mut buf[..vlen];
        copy_out_bytes(words, key_byte + klen, out);
        if !self.still_valid(seg, state) || expiry.is_some_and(|e| e <= now_ms()) {
            return Fast::Unsure;
        }
        let hi = RecHeader::encode_hi(klen, vlen, hdr.has_expiry);
        if record_crc(hi, expiry, key_hash, out) != hdr.crc {
            return Fast::Unsure;
        }
        Fast::Hit(vlen)
    }

    /// Get every key of `keys`, calling `f(i, result)` for `keys[i]` in order; a found value is
    /// handed over in `buf` (reused from one key to the next), and each result is what
    /// [`get`](Self::get) returns for that key.
    ///
    /// Faster than one `get` after another when the table is larger than the CPU caches: it
    /// looks up [`BATCH`] keys at a time, first asking the CPU to load every key's index bucket,
    /// then every key's record, then doing the gets, so that the cache misses of those keys
    /// overlap instead of coming one after the other (one get is too many instructions for the
    /// CPU to run ahead into the next one's misses by itself). The prefetches change no result.
    /// On a table that fits the caches there is nothing to overlap, and the extra pass over
    /// each bucket makes a key cost a little more than a `get`.
    pub fn get_many<K: AsRef<[u8]>>(
        &self,
        keys: &[K],
        buf: &mut [u8],
        mut f: impl FnMut(usize, Result<Option<&[u8]>, GetError>),
    ) {
        let mut at = 0;
        for chunk in keys.chunks(BATCH) {
            let mut hashes = [0u64; BATCH];
            for (h, k) in hashes.iter_mut().zip(chunk) {
                *h = hash(self.g.seed, k.as_ref());
                self.prefetch_bucket(*h);
            }
            for &h in &hashes[..chunk.len()] {
                self.prefetch_record(h);
            }
            for (k, &h) in chunk.iter().zip(&hashes) {
                let r = self.get_hashed(k.as_ref(), h, buf);
                f(at, r.map(|found| found.map(|len| &buf[..len])));
                at += 1;
            }
        }
    }

    /// Ask the CPU to load the home bucket of the key with hash `key_hash`.
    #[inline]
    fn prefetch_bucket(&self, key_hash: u64) {
        prefetch(self.region.words(), self.g.bucket(self.g.home(key_hash).0), 1);
    }

    /// Ask the CPU to load the record of the first slot of the key's home bucket whose tag
    /// matches (the one a get reads first). What the slot says is not trusted: a prefetch of
    /// any word of the region changes no result.
    #[inline]
    fn prefetch_record(&self, key_hash: u64) {
        let g = &self.g;
        let words = self.region.words();
        let (b, tag) = g.home(key_hash);
        let base = g.bucket(b);
        let Some(bucket) = words.get(base..base + super::BUCKET_WORDS).and_then(|b| b.try_into().ok()) else {
            return;
        };
        let (slots, matches) = scan(bucket, tag);
        if matches != 0 {
            let loc = slots[matches.trailing_zeros() as usize] & LOC_MASK;
            if g.split(loc).0 < g.nsegments {
                prefetch(words, g.rec_byte(loc) / 8, 3);
            }
        }
    }

    /// The value of `key` in a new `Vec`.
    pub fn get_vec(&self, key: &[u8]) -> Result<Option<Vec<u8>>, GetError> {
        let mut v = Vec::new();
        Ok(self.get_into(key, &mut v)?.then_some(v))
    }

    /// Copy the value of `key` into `out`, resized to the value's length (its capacity is
    /// reused, so a loop that reuses one `Vec` stops allocating once it has held the largest
    /// value). `Ok(false)`, with `out` emptied, if `key` is absent.
    pub fn get_into(&self, key: &[u8], out: &mut Vec<u8>) -> Result<bool, GetError> {
        let found = self.lookup(key, &mut Sink::Vec(out))?.is_some();
        if !found {
            out.clear();
        }
        Ok(found)
    }

    /// [`get_into`](Self::get_into), and when the value found expires. The expiry and the value
    /// come from the one record the get validated (the record's checksum covers both), so a
    /// get racing with a put of the same key returns the old value with the old expiry or the
    /// new value with the new one, never a mix. `Ok(None)`, with `out` emptied, if `key` is
    /// absent or expired.
    pub fn get_into_with_expiry(&self, key: &[u8], out: &mut Vec<u8>) -> Result<Option<Expiry>, GetError> {
        let found = self.lookup(key, &mut Sink::Vec(out))?;
        if found.is_none() {
            out.clear();
        }
        Ok(found.map(|hit| hit.expiry.map_or(Expiry::Never, Expiry::AtMs)))
    }

    /// The largest value this table can hold: a buffer this long never gets
    /// [`GetError::BufferTooSmall`].
    pub fn max_value_len(&self) -> usize {
        // The smallest record header (no expiry) and an empty key in one segment.
        (self.g.seg_size as usize - 8).min(super::MAX_VALUE_FORMAT)
    }

    /// Whether `key` is present (and not expired).
    pub fn contains(&self, key: &[u8]) -> Result<bool, GetError> {
        Ok(self.get_with(key, |_| ())?.is_some())
    }

    /// Zero-copy get: call `f` on the value while it is still in shared memory, then validate
    /// (the segment was not recycled, the crc matches). If validation fails the get starts over
    /// and `f` is called again; only the result of a call on validated bytes is returned. `f`
    /// may therefore see bytes that turn out invalid and must tolerate that.
    pub fn get_with<R>(&self, key: &[u8], mut f: impl FnMut(&SharedBytes<'_>) -> R) -> Result<Option<R>, GetError> {
        let words = self.region.words();
        for _ in 0..=MAX_RETRIES {
            let mut sink = Sink::Shared;
            let Some(hit) = self.lookup(key, &mut sink)? else {
                return Ok(None);
            };
            let bytes = SharedBytes { words, byte_off: hit.value_off, len: hit.vlen };
            let out = f(&bytes);
            let mut h = Crc::new(hit.crc_header);
            bytes.crc_into(&mut h);
            if !self.still_valid(hit.seg, hit.state) {
                self.tally.add(Count::Retry);
                continue;
            }
            // The segment is still in the generation the slot named: these are the bytes the
            // writer published, so a mismatch is corruption, not a race.
            if h.finalize() != hit.crc {
                return Err(GetError::Corrupt { reason: "record checksum mismatch" });
            }
            return Ok(Some(out));
        }
        Err(GetError::Contended)
    }

    /// Counters of this reader.
    pub fn counters(&self) -> ReaderCounters {
        self.tally.sum()
    }

    /// The writer's statistics.
    pub fn stats(&self) -> TableStats {
        read_stats(self.region.words(), self.data_bytes)
    }

    /// Iterate over the live keys (a snapshot per slot: keys put or deleted during the walk may
    /// or may not appear).
    pub fn keys(&self) -> KeyIter<'_> {
        KeyIter { reader: self, bucket: 0, slot: 0 }
    }

    /// Whether segment `seg` is still in the generation of `state`, after copies made since
    /// `state` was loaded: then every word copied is what the writer stored in that generation.
    #[inline]
    fn still_valid(&self, seg: u64, state: u64) -> bool {
        // SYNC: Acquire fence, pairs with the Release stores of record words in RawTableWriter::put
        // (sequenced after the generation bump that recycled the segment, see `reset_segment`):
        // if a copied word came from the next generation, the load below sees the bump.
        fence(Ordering::Acquire);
        // SYNC: acquire, pairs with the Release generation bump in RawTableWriter::reset_segment: a
        // get that starts over after seeing it also sees the slot clears made before it.
        load_acquire(&self.region.words()[self.g.seg_state(seg)]) >> FILL_BITS == state >> FILL_BITS
    }

    /// Find `key`, retrying when the writer recycles what we read.
    fn lookup(&self, key: &[u8], sink: &mut Sink<'_>) -> Result<Option<Hit>, GetError> {
        if key.is_empty() || key.len() > MAX_KEY {
            self.tally.add(Count::Miss);
            return Ok(None);
        }
        let h = hash(self.g.seed, key);
        let (home, tag) = self.g.home(h);
        for _ in 0..MAX_RETRIES {
            match self.probe(key, h, home, tag, sink)? {
                Probe::Hit(hit) => {
                    self.tally.add(Count::Hit);
                    return Ok(Some(hit));
                }
                Probe::Miss => {
                    self.tally.add(Count::Miss);
                    return Ok(None);
                }
                Probe::Retry => self.tally.add(Count::Retry),
            }
        }
        Err(GetError::Contended)
    }

    /// One pass over the key's probe chain.
    #[inline]
    fn probe(&self, key: &[u8], key_hash: u64, home: u64, tag: u64, sink: &mut Sink<'_>) -> Result<Probe, GetError> {
        let words = self.region.words();
        let mut b = home;
        // The writer never places an item further than `max_probe` buckets from home, so
        // the end of the bound is a miss (a hostile file cannot make this loop longer).
        for _ in 0..self.g.max_probe {
            let base = self.g.bucket(b);
            let bucket: &[AtomicU64; super::BUCKET_WORDS] =
                words[base..base + super::BUCKET_WORDS].try_into().expect("a bucket is 8 words");
            // Visit the slots whose tag matches.
            let (slots, mut matches) = scan(bucket, tag);
            while matches != 0 {
                let i = matches.trailing_zeros() as usize;
                matches &= matches - 1;
                match self.read_record(base + 1 + i, slots[i], key, key_hash, sink)? {
                    Step::Found(hit) => return Ok(Probe::Hit(hit)),
                    Step::Other => {}
                    Step::Expired => return Ok(Probe::Miss),
                    Step::Recycled => return Ok(Probe::Retry),
                    Step::Corrupt(reason) => return Err(GetError::Corrupt { reason }),
                }
            }
            // Relaxed: the count only says whether to look further. The writer raises it before
            // it stores a slot past this bucket and lowers it after it clears one, so a get
            // that stops here saw a moment when no item of this chain lay beyond.
            if bucket[0].load(Ordering::Relaxed) == 0 {
                return Ok(Probe::Miss);
            }
            b = self.g.next_bucket(b);
        }
        Ok(Probe::Miss)
    }

    /// Read the record named by `slot` (loaded from word `slot_word`) if it is `key`'s.
    ///
    /// The record is accepted only if the segment is in the generation the slot names when
    /// the state is loaded (after the slot) and still after the copy: then the slot was stored
    /// in this generation, after its record was complete below the fill (the writer publishes
    /// the fill before the slot), and nothing in the segment was rewritten while we read.
    #[inline]
    fn read_record(
        &self,
        slot_word: usize,
        slot: u64,
        key: &[u8],
        key_hash: u64,
        sink: &mut Sink<'_>,
    ) -> Result<Step, GetError> {
        let g = &self.g;
        let words = self.region.words();
        let loc = slot & LOC_MASK;
        let (seg, off) = g.split(loc);
        if seg >= g.nsegments {
            return Err(GetError::Corrupt { reason: "slot points outside the data region" });
        }
        // SYNC: acquire, pairs with the Release store of the segment state in RawTableWriter::put
        // (the fill covering the record) and RawTableWriter::reset_segment (a recycling).
        let state = load_acquire(&words[g.seg_state(seg)]);
        if !slot_matches_state(slot, state) {
            return Ok(self.stale_slot(slot_word, slot));
        }
        let fill = (state & FILL_MASK).min(g.seg_size);
        // The slot was loaded (acquire) after the writer stored it, which it did after the
        // fill covering the record; the state loaded after it is in the same generation, so
        // its fill covers the record.
        if off + 8 > fill {
            return Ok(Step::Corrupt("slot points beyond its segment's records"));
        }
        let rb = g.rec_byte(loc);
        let hdr = RecHeader::decode(load_at(words, rb));
        if off + hdr.len() > fill || hdr.klen != key.len() {
            // The header is trusted only once the segment is known not to have been recycled.
            let step = if !self.still_valid(seg, state) {
                Step::Recycled
            } else if off + hdr.len() > fill {
                Step::Corrupt("record runs beyond its segment's records")
            } else if hdr.klen == 0 {
                Step::Corrupt("record with an empty key")
            } else {
                Step::Other
            };
            return Ok(step);
        }
        let expiry = hdr.has_expiry.then(|| load_at(words, rb + 8));
        // The record lies below `fill` (checked above), so its words are in the mapping. What
        // the loads below see is trusted only once `still_valid` says the segment was not
        // recycled meanwhile.
        let key_byte = rb + hdr.key_off();
        let same_key = eq_bytes(words, key_byte, key);
        let value_off = key_byte + hdr.klen;
        let vlen = hdr.vlen;
        let short_buf = matches!(sink, Sink::Buf(buf) if buf.len() < vlen);
        let value: Option<&[u8]> = match sink {
            Sink::Buf(buf) if same_key && buf.len() >= vlen => {
                copy_out_bytes(words, value_off, &mut buf[..vlen]);
                Some(&buf[..vlen])
            }
            Sink::Vec(v) if same_key => {
                v.resize(vlen, 0);
                copy_out_bytes(words, value_off, v);
                Some(&v[..])
            }
            _ => None,
        };
        if !self.still_valid(seg, state) {
            return Ok(Step::Recycled);
        }
        if !same_key {
            return Ok(Step::Other);
        }
        // An expired item is a miss whatever the buffer.
        if expiry.is_some_and(|e| e <= now_ms()) {
            return Ok(Step::Expired);
        }
        let hi = RecHeader::encode_hi(hdr.klen, vlen, hdr.has_expiry);
        let crc_header = crc_header(hi, expiry, key_hash);
        if short_buf {
            return Err(GetError::BufferTooSmall { needed: vlen });
        }
        if value.is_some_and(|value| crate::checksum::checksum(crc_header, &[value]) != hdr.crc) {
            return Ok(Step::Corrupt("record checksum mismatch"));
        }
        Ok(Step::Found(Hit { vlen, seg, state, value_off, crc_header, crc: hdr.crc, expiry }))
    }

    /// The slot loaded from `slot_word` names an older generation of its segment than the
    /// state loaded after it. The writer clears every slot naming a segment before it
    /// recycles the segment, and the acquire load of the state saw the recycling, so a reload
    /// of the slot sees the clear or a later store: if it still holds the same word, no writer
    /// produced it (short of the segment being recycled a multiple of 2^16 times between two
    /// loads, docs/design.md §4.4).
    #[cold]
    fn stale_slot(&self, slot_word: usize, slot: u64) -> Step {
        // SYNC: acquire, pairs with the Release slot stores in RawTableWriter (put, remove_slot).
        if load_acquire(&self.region.words()[slot_word]) != slot {
            Step::Recycled
        } else {
            Step::Corrupt("slot names a generation its segment is not in")
        }
    }

    /// Read the live key in slot `slot` of bucket `b`, if any.
    fn key_at(&self, b: u64, slot: usize) -> Result<Option<Vec<u8>>, GetError> {
        let words = self.region.words();
        let slot_word = self.g.bucket(b) + slot;
        for _ in 0..MAX_RETRIES {
            // SYNC: acquire, as in `scan`.
            let s = load_acquire(&words[slot_word]);
            if s == 0 {
                return Ok(None);
            }
            let loc = s & LOC_MASK;
            let (seg, off) = self.g.split(loc);
            if seg >= self.g.nsegments {
                return Err(GetError::Corrupt { reason: "slot points outside the data region" });
            }
            // SYNC: acquire, as in `read_record`.
            let state = load_acquire(&words[self.g.seg_state(seg)]);
            if !slot_matches_state(s, state) {
                match self.stale_slot(slot_word, s) {
                    Step::Corrupt(reason) => return Err(GetError::Corrupt { reason }),
                    _ => continue,
                }
            }
            let fill = (state & FILL_MASK).min(self.g.seg_size);
            let hdr = (off + 8 <= fill).then(|| RecHeader::decode(load_at(words, self.g.rec_byte(loc))));
            let Some(hdr) = hdr.filter(|h| off + h.len() <= fill && h.klen != 0) else {
                if !self.still_valid(seg, state) {
                    continue;
                }
                return Err(GetError::Corrupt { reason: "slot points outside its segment's records" });
            };
            let mut key = vec![0u8; hdr.klen];
            copy_out_bytes(words, self.g.rec_byte(loc) + hdr.key_off(), &mut key);
            if !self.still_valid(seg, state) {
                continue;
            }
            // The key is validated against its own record by a full get (crc, expiry).
            return Ok(if self.get_with(&key, |_| ())?.is_some() { Some(key) } else { None });
        }
        Err(GetError::Contended)
    }
}

/// The slots of `bucket` and a mask of those whose tag is `tag` (bit `i` for slot `i`),
/// computed without a branch on which slot matches: that is random, and a mispredicted branch
/// would hold up everything after it until the bucket's line arrives.
#[inline(always)]
fn scan(bucket: &[AtomicU64; super::BUCKET_WORDS], tag: u64) -> ([u64; super::SLOTS], u32) {
    // Relaxed loads, then one Acquire fence: together an acquire load of each slot that a
    // read-only mapping allows (see `sync::load_acquire`).
    let slots: [u64; super::SLOTS] = std::array::from_fn(|i| bucket[i + 1].load(Ordering::Relaxed));
    // SYNC: Acquire fence, pairs with the Release slot stores in RawTableWriter::put and
    // insert_slot: the record and the segment fill a slot names are visible.
    fence(Ordering::Acquire);
    let matches = slots.iter().enumerate().fold(0, |m, (i, s)| m | u32::from(slot_tag(*s) == tag) << i);
    (slots, matches)
}

/// Iterator over the live keys of a table (from a table reader's `keys`).
pub struct KeyIter<'r> {
    reader: &'r RawTableReader,
    bucket: u64,
    slot: usize,
}

impl Iterator for KeyIter<'_> {
    type Item = Result<Vec<u8>, GetError>;

    fn next(&mut self) -> Option<Self::Item> {
        while self.bucket < self.reader.g.nbuckets {
            self.slot += 1;
            if self.slot > super::SLOTS {
                self.slot = 0;
                self.bucket += 1;
                continue;
            }
            match self.reader.key_at(self.bucket, self.slot) {
                Ok(None) => {}
                Ok(Some(k)) => return Some(Ok(k)),
                Err(e) => return Some(Err(e)),
            }
        }
        None
    }
}
