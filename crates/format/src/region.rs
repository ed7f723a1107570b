//! A shared region seen as a slice of 64-bit atomic words.
//!
//! This module holds the crate's `unsafe` code over shared memory (the other `unsafe` blocks
//! are CPU intrinsics: prefetch, SIMD stores, the time-stamp counter). Every access to shared
//! memory goes through [`Region::words`]: a `&[AtomicU64]` over the mapping (or, for the
//! futex syscalls only, `Region::futex_half`). References to atomics are sound over memory another process changes (that is what
//! atomics are for), and `Relaxed` atomic loads are allowed on read-only memory (std's "atomic
//! accesses to read-only memory"), so a reader's `PROT_READ` mapping is covered too; an acquire
//! there is `crate::sync::load_acquire` (a `Relaxed` load and an `Acquire` fence).
//!
//! Mappings are held as [`memmap2::MmapRaw`]: a base pointer and a length, never a `&[u8]` or
//! `&mut [u8]` (`Mmap`'s `Deref<Target = [u8]>` would assert that no other process stores to
//! those bytes while the reference lives, which is false here). No `&[u8]` or `&T` is ever
//! formed over shared bytes: payloads are copied word by word with `copy_out` / `copy_in`.

use crate::sync::{AtomicU64, Ordering};

/// Where the words of a [`Region`] live.
enum Backing {
    /// Process-local heap words: tests and loom models.
    Heap(#[allow(dead_code)] Box<[AtomicU64]>),
    /// A file mapping: read-only (`PROT_READ`, a reader's) or read-write (the single writer's).
    /// Held only to keep the mapping alive and to unmap it on drop.
    #[cfg(not(loom))]
    Map(#[allow(dead_code)] memmap2::MmapRaw),
}

/// Which file a mapping is of: device and inode number as `fstat` gave them when it was
/// opened. A path that names another identity now was replaced (or removed).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileId {
    /// `st_dev`.
    pub dev: u64,
    /// `st_ino`.
    pub ino: u64,
}

/// A region of shared memory, 8-byte aligned, a whole number of words long.
pub struct Region {
    base: *const AtomicU64,
    len_words: usize,
    writable: bool,
    file_id: Option<FileId>,
    _backing: Backing,
}

// SAFETY: the region only hands out `&[AtomicU64]`, which is `Sync`; the backing (heap box or
// mapping) is owned and lives as long as the region.
unsafe impl Send for Region {}
// SAFETY: as above: all shared access is through atomics.
unsafe impl Sync for Region {}

impl Region {
    /// A zeroed heap region of `len_words` words (tests and loom models).
    pub fn heap(len_words: usize) -> Region {
        let words: Box<[AtomicU64]> = (0..len_words).map(|_| AtomicU64::new(0)).collect();
        let base = words.as_ptr();
        Region { base, len_words, writable: true, file_id: None, _backing: Backing::Heap(words) }
    }

    /// A region over a file mapping made with `MmapOptions::map_raw_read_only` (`writable`
    /// false) or `MmapOptions::map_raw` (`writable` true). Only the raw base pointer is taken:
    /// no reference to the mapped bytes is formed.
    #[cfg(not(loom))]
    pub(crate) fn from_raw_map(map: memmap2::MmapRaw, writable: bool, file_id: FileId) -> Region {
        // mmap returns page-aligned addresses, so word alignment always holds.
        let ptr = map.as_ptr();
        assert_eq!(ptr as usize % 8, 0, "mapping is not 8-byte aligned");
        let len_words = map.len() / 8;
        Region {
            base: ptr.cast::<AtomicU64>(),
            len_words,
            writable,
            file_id: Some(file_id),
            _backing: Backing::Map(map),
        }
    }

    /// The identity of the mapped file (`None` for a heap region).
    pub fn file_id(&self) -> Option<FileId> {
        self.file_id
    }

    /// The region as atomic words.
    #[inline]
    pub fn words(&self) -> &[AtomicU64] {
        // SAFETY: `base` points to `len_words` initialised, 8-byte aligned words owned by
        // `_backing` for the lifetime of `self` (a mapping of at least that many bytes, or the
        // heap box). `AtomicU64` has the layout of `u64` and allows shared mutation (by this or
        // another process) through `&`; on a `PROT_READ` mapping the crate only loads through
        // it (`Relaxed` loads, see `crate::sync::load_acquire`).
        unsafe { std::slice::from_raw_parts(self.base, self.len_words) }
    }

    /// Length in bytes.
    #[inline]
    pub fn len_bytes(&self) -> u64 {
        self.len_words as u64 * 8
    }

    /// Whether this process may store into the region (the writer's mapping).
    #[inline]
    pub fn is_writable(&self) -> bool {
        self.writable
    }

    /// The low 32 bits of word `index` as an `AtomicU32`, to hand to the futex syscalls (the
    /// futex word, `crate::futex`). Panics when out of range.
    #[cfg(not(loom))]
    pub(crate) fn futex_half(&self, index: usize) -> &std::sync::atomic::AtomicU32 {
        const _: () = assert!(cfg!(target_endian = "little"), "the futex word is the low half of a LE word");
        let ptr = (&self.words()[index] as *const AtomicU64).cast::<std::sync::atomic::AtomicU32>();
        // SAFETY: `ptr` is the 8-aligned address of a live word of the region, so its first 4
        // bytes (the low half, little-endian) are a valid, aligned `AtomicU32` for the lifetime
        // of `&self`. The reference is only handed to the kernel, which reads the word; Rust
        // code never loads through it, so no mixed-size atomic access happens in this process.
        unsafe { &*ptr }
    }
}

/// Ask the CPU to start loading `lines` cache lines from word `first` on (no effect on what any
/// load returns; out-of-range words are skipped). A get issues it as soon as
/// it knows where a record is, so the record's lines arrive together instead of one after the
/// other as each load's address is computed from the last.
#[inline(always)]
pub(crate) fn prefetch(words: &[AtomicU64], first: usize, lines: usize) {
    #[cfg(all(target_arch = "x86_64", not(loom)))]
    for l in 0..lines {
        if let Some(w) = words.get(first + l * 8) {
            let p: *const AtomicU64 = w;
            // SAFETY: SSE is part of the x86_64 baseline, so the instruction exists; a prefetch
            // is a hint that reads nothing into the program and cannot fault.
            unsafe { std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p.cast()) };
        }
    }
    #[cfg(not(all(target_arch = "x86_64", not(loom))))]
    let _ = (words, first, lines);
}

/// Copies of at least this many bytes between the mapping and process memory are one
/// `rep movsb` ([`bulk_copy`]) on x86_64 instead of a loop of word accesses.
#[cfg(all(target_arch = "x86_64", not(loom)))]
const BULK: usize = 1024;

/// Copy `n` bytes from `src` to `dst` with one `rep movsb`, where one side is shared memory
/// that another process may write (a lapped reader's copy) or read (a ring loan) meanwhile.
///
/// Not a data race: an `asm!` block is opaque to the compiler, and its effect is that of a
/// sequence of `Relaxed` one-byte atomic accesses in an unspecified order (the "byte-wise atomic
/// memcpy" of C++ P1478), which race with nothing; a byte cannot be torn. Ordering is the
/// caller's, as for the word loops: `rep movsb`'s stores may complete out of order among
/// themselves but not with the stores before or after the instruction, and its loads are not
/// reordered with later loads (x86-TSO; Intel SDM vol. 3, "Fast-String Operation and
/// Out-of-Order Stores"). The fast-string microcode moves whole cache lines, which word loops
/// of atomic accesses (at most 8 bytes each) cannot: several times the bandwidth for large
/// messages.
///
/// # Safety
///
/// `src..src + n` must be readable, `dst..dst + n` writable, and the two must not overlap.
#[cfg(all(target_arch = "x86_64", not(loom)))]
#[inline]
unsafe fn bulk_copy(dst: *mut u8, src: *const u8, n: usize) {
    // SAFETY: the caller's contract; the direction flag is clear on entry to an asm! block
    // (Rust's inline-assembly rules), so the copy runs forwards.
    unsafe {
        std::arch::asm!(
            "rep movsb",
            inout("rcx") n => _,
            inout("rdi") dst => _,
            inout("rsi") src => _,
            options(nostack, preserves_flags)
        );
    }
}

/// Copy `out.len()` bytes starting at word `first` out of `words` with Relaxed word loads.
///
/// The caller has bounds-checked `first..first + out.len().div_ceil(8)`. Relaxed is enough: the
/// caller validates the copy afterwards (Acquire fence, then a re-check of the writer's lease).
///
/// `out` is written from its start in 16-byte stores (see [`store16`]), then at most one 8-byte
/// store, then single bytes: `crc32fast`, which reads its input in 16-byte loads from the start,
/// finds each whole block in one store (its loads of a last partial block span several).
#[inline]
pub(crate) fn copy_out(words: &[AtomicU64], first: usize, out: &mut [u8]) {
    let src = &words[first..first + out.len().div_ceil(8)];
    #[cfg(all(target_arch = "x86_64", not(loom)))]
    if out.len() >= BULK {
        // SAFETY: `src` covers `out.len()` bytes (bounds-checked by the slice above); see
        // `bulk_copy` for why copying shared bytes this way is not a data race.
        unsafe { bulk_copy(out.as_mut_ptr(), src.as_ptr().cast(), out.len()) };
        return;
    }
    let (blocks, rest) = out.as_chunks_mut::<16>();
    let (pairs, src_rest) = src.split_at(blocks.len() * 2);
    for (b, w) in blocks.iter_mut().zip(pairs.as_chunks::<2>().0) {
        store16(b, w[0].load(Ordering::Relaxed), w[1].load(Ordering::Relaxed));
    }
    let (whole, bytes) = rest.as_chunks_mut::<8>();
    for (d, w) in whole.iter_mut().zip(src_rest) {
        *d = w.load(Ordering::Relaxed).to_le_bytes();
    }
    if let (false, Some(w)) = (bytes.is_empty(), src_rest.last()) {
        // A byte loop: cheaper than `memcpy` for the 1–7 bytes left.
        for (d, s) in bytes.iter_mut().zip(w.load(Ordering::Relaxed).to_le_bytes()) {
            *d = s;
        }
    }
}

/// Store `lo` then `hi` (little-endian) into `dst`, as one 16-byte store where there is one.
///
/// Why one store: a checksum of the copy reads it back at once in 16-byte loads. A load that
/// is contained in one earlier store takes its bytes straight from that store; a load that
/// spans two stores must wait until both have left the store buffer, which they do only when
/// every instruction before them has retired, so copy and checksum of one record could not
/// overlap the work on the record before. Measured on the 2-vCPU AMD EPYC development VM
/// (64-byte copy + crc in a loop): 21 ns with 8-byte stores, 9 ns with 16-byte ones
/// (docs/design.md, "Checksums").
#[inline(always)]
fn store16(dst: &mut [u8; 16], lo: u64, hi: u64) {
    #[cfg(all(target_arch = "x86_64", not(loom)))]
    {
        use std::arch::x86_64::{_mm_set_epi64x, _mm_storeu_si128};
        // SAFETY: SSE2 is part of the x86_64 baseline, so both instructions exist; `dst` is 16
        // writable bytes, and the unaligned store needs no alignment.
        unsafe { _mm_storeu_si128(dst.as_mut_ptr().cast(), _mm_set_epi64x(hi as i64, lo as i64)) };
    }
    #[cfg(not(all(target_arch = "x86_64", not(loom))))]
    {
        dst[..8].copy_from_slice(&lo.to_le_bytes());
        dst[8..].copy_from_slice(&hi.to_le_bytes());
    }
}

#[cfg(feature = "write")]
/// Copy `src` into `words` starting at word `first`, zero-padding the last word.
///
/// Every store is Release: whatever the writer stored before (above all its lease, see
/// `ring`) happens-before any reader's Acquire fence that follows a load of these words.
#[inline]
pub(crate) fn copy_in(words: &[AtomicU64], first: usize, src: &[u8]) {
    let (chunks, rest) = src.as_chunks::<8>();
    let dst = &words[first..first + chunks.len() + usize::from(!rest.is_empty())];
    #[cfg(all(target_arch = "x86_64", not(loom)))]
    if src.len() >= BULK {
        // SYNC: Release fence, then the copy's Relaxed byte stores: the same partner as the
        // Release stores below (a reader's Acquire fence after loading any of these bytes).
        std::sync::atomic::fence(Ordering::Release);
        // SAFETY: `dst` covers the whole words of `src` (bounds-checked by the slice above);
        // see `bulk_copy` for why storing into shared bytes this way is not a data race.
        unsafe { bulk_copy(dst.as_ptr().cast::<u8>().cast_mut(), src.as_ptr(), chunks.len() * 8) };
        if let (false, Some(w)) = (rest.is_empty(), dst.last()) {
            // SYNC: Release, as below.
            w.store(le_word(rest), Ordering::Release);
        }
        return;
    }
    for (chunk, w) in chunks.iter().zip(dst) {
        // SYNC: Release, pairs with the Acquire fence of the ring reader's lapping check
        // (`lapped` in the ring module), which it runs after copying these words out.
        w.store(u64::from_le_bytes(*chunk), Ordering::Release);
    }
    if let (false, Some(w)) = (rest.is_empty(), dst.last()) {
        // SYNC: Release, as above.
        w.store(le_word(rest), Ordering::Release);
    }
}

/// The last `n` (1–7) bytes of `bytes` as a little-endian word, zero-padded: one 8-byte load
/// when `bytes` has 8, else a byte loop.
#[inline]
fn le_tail(bytes: &[u8], n: usize) -> u64 {
    match bytes.last_chunk::<8>() {
        Some(c) => u64::from_le_bytes(*c) >> (64 - 8 * n),
        None => le_word(&bytes[bytes.len() - n..]),
    }
}

/// Up to 8 bytes as a little-endian word, zero-padded (a byte loop: cheaper than `memcpy`).
#[inline]
fn le_word(bytes: &[u8]) -> u64 {
    bytes.iter().rev().fold(0u64, |w, &b| (w << 8) | u64::from(b))
}

/// Whether the bytes starting at word `first` equal `bytes`, compared a word at a time with
/// Relaxed loads (the tail of the last word is ignored). The caller has bounds-checked the
/// range and trusts the answer only after validating, as for [`copy_out`].
#[inline]
pub(crate) fn eq_words(words: &[AtomicU64], first: usize, bytes: &[u8]) -> bool {
    let (chunks, rest) = bytes.as_chunks::<8>();
    let src = &words[first..first + chunks.len() + usize::from(!rest.is_empty())];
    let mut diff = 0;
    for (chunk, w) in chunks.iter().zip(src) {
        diff |= u64::from_le_bytes(*chunk) ^ w.load(Ordering::Relaxed);
    }
    if let (false, Some(w)) = (rest.is_empty(), src.last()) {
        let last = le_tail(bytes, rest.len());
        let mask = u64::MAX >> (64 - 8 * rest.len());
        diff |= (last ^ w.load(Ordering::Relaxed)) & mask;
    }
    diff == 0
}

/// Copy `out.len()` bytes starting at byte `byte_off` (any alignment) out of `words` with
/// Relaxed word loads. The caller has bounds-checked the range and validates afterwards.
#[inline(always)]
pub(crate) fn copy_out_bytes(words: &[AtomicU64], byte_off: usize, out: &mut [u8]) {
    let lead = byte_off % 8;
    if lead == 0 || out.is_empty() {
        return copy_out(words, byte_off / 8, out);
    }
    let first = byte_off / 8;
    let w = words[first].load(Ordering::Relaxed).to_le_bytes();
    let n = (8 - lead).min(out.len());
    // A byte loop: cheaper than `memcpy` for the 1–7 bytes.
    for (d, s) in out[..n].iter_mut().zip(&w[lead..]) {
        *d = *s;
    }
    if n < out.len() {
        copy_out(words, first + 1, &mut out[n..]);
    }
}

/// The 8 bytes at byte `byte` (any alignment) as a little-endian word, with one or two Relaxed
/// word loads. The caller has bounds-checked `byte..byte + 8` and validates afterwards.
#[inline(always)]
pub(crate) fn load_at(words: &[AtomicU64], byte: usize) -> u64 {
    let (first, lead) = (byte / 8, byte % 8);
    let lo = words[first].load(Ordering::Relaxed);
    if lead == 0 {
        return lo;
    }
    let hi = words[first + 1].load(Ordering::Relaxed);
    (lo >> (8 * lead)) | (hi << (64 - 8 * lead))
}

/// Whether the bytes at byte `byte` (any alignment) equal `bytes`; as [`eq_words`].
#[inline(always)]
pub(crate) fn eq_bytes(words: &[AtomicU64], byte: usize, bytes: &[u8]) -> bool {
    let (first, lead) = (byte / 8, byte % 8);
    if lead == 0 || bytes.is_empty() {
        return eq_words(words, first, bytes);
    }
    let n = (8 - lead).min(bytes.len());
    let w = words[first].load(Ordering::Relaxed) >> (8 * lead);
    let head = match bytes.first_chunk::<8>() {
        Some(c) => u64::from_le_bytes(*c),
        None => le_word(&bytes[..n]),
    };
    let mask = u64::MAX >> (64 - 8 * n);
    (w ^ head) & mask == 0 && eq_words(words, first + 1, &bytes[n..])
}

#[cfg(feature = "write")]
/// Store `src` at byte `byte` (any alignment) of `words` with Relaxed word stores: whole words
/// in pairs (16 bytes of `src` a step), then one word, then a partial last word. A partial word
/// at either edge is merged with what the word holds (a Relaxed load of the writer's own
/// earlier store), so the bytes around `byte..byte + src.len()` keep their values.
///
/// The caller has bounds-checked `byte..byte + src.len()`, is the only writer of those words,
/// and orders the stores for readers itself: Relaxed is enough only where a Release fence after
/// the lease store and a Release store of the record header and tail come around them (a ring
/// loan, see `ring::writer::Loan`).
#[inline]
pub(crate) fn store_bytes(words: &[AtomicU64], byte: usize, mut src: &[u8]) {
    if src.is_empty() {
        return;
    }
    #[cfg(all(target_arch = "x86_64", not(loom)))]
    if src.len() >= BULK {
        let dst = &words[byte / 8..(byte + src.len()).div_ceil(8)];
        // SAFETY: `dst` covers bytes `byte..byte + src.len()` (bounds-checked by the slice
        // above); see `bulk_copy` for why storing into shared bytes this way is not a data race.
        unsafe { bulk_copy(dst.as_ptr().cast::<u8>().cast_mut().add(byte % 8), src.as_ptr(), src.len()) };
        return;
    }
    let (mut first, lead) = (byte / 8, byte % 8);
    if lead != 0 {
        let n = (8 - lead).min(src.len());
        merge_word(&words[first], lead, n, le_word(&src[..n]));
        src = &src[n..];
        first += 1;
    }
    let (pairs, rest) = src.as_chunks::<16>();
    let dst = &words[first..first + src.len().div_ceil(8)];
    let (dst_pairs, dst_rest) = dst.split_at(pairs.len() * 2);
    for (p, w) in pairs.iter().zip(dst_pairs.as_chunks::<2>().0) {
        let (lo, hi) = p.split_at(8);
        // Relaxed: see the function docs (the caller orders the stores).
        w[0].store(u64::from_le_bytes(lo.try_into().expect("8 bytes")), Ordering::Relaxed);
        w[1].store(u64::from_le_bytes(hi.try_into().expect("8 bytes")), Ordering::Relaxed);
    }
    let (whole, bytes) = rest.as_chunks::<8>();
    if let (Some(c), Some(w)) = (whole.first(), dst_rest.first()) {
        // Relaxed: as above.
        w.store(u64::from_le_bytes(*c), Ordering::Relaxed);
    }
    if let (false, Some(w)) = (bytes.is_empty(), dst_rest.last()) {
        merge_word(w, 0, bytes.len(), le_word(bytes));
    }
}

#[cfg(feature = "write")]
/// Store `len` copies of `byte` from byte `at` (any alignment) of `words`; as [`store_bytes`].
#[inline]
pub(crate) fn fill_bytes(words: &[AtomicU64], at: usize, mut len: usize, byte: u8) {
    if len == 0 {
        return;
    }
    let splat = u64::from_ne_bytes([byte; 8]);
    let (mut first, lead) = (at / 8, at % 8);
    if lead != 0 {
        let n = (8 - lead).min(len);
        merge_word(&words[first], lead, n, splat);
        len -= n;
        first += 1;
    }
    for w in &words[first..first + len / 8] {
        // Relaxed: as in `store_bytes`.
        w.store(splat, Ordering::Relaxed);
    }
    if !len.is_multiple_of(8) {
        merge_word(&words[first + len / 8], 0, len % 8, splat);
    }
}

#[cfg(feature = "write")]
/// Replace bytes `lead..lead + n` (little-endian) of `word` with the low `n` bytes of `value`.
#[inline(always)]
fn merge_word(word: &AtomicU64, lead: usize, n: usize, value: u64) {
    debug_assert!(n >= 1 && lead + n <= 8);
    let mask = (u64::MAX >> (64 - 8 * n)) << (8 * lead);
    // Relaxed (both): the caller is the only writer of the word, so the load returns its own
    // last store; ordering for readers as in `store_bytes`.
    let old = word.load(Ordering::Relaxed);
    word.store((old & !mask) | ((value << (8 * lead)) & mask), Ordering::Relaxed);
}

#[cfg(feature = "write")]
/// Appends a byte stream to shared words, one Release store per word (SYNC: pairs with the
/// Acquire fence of the reader's validation: `lapped` in the ring module for a ring claim, the
/// table reader's `still_valid` for a table record). A word is stored each time it fills, and the
/// partial last word (zero-padded) at once, so what was written is in shared memory when
/// `write` returns.
pub(crate) struct WordWriter {
    first: usize,
    /// Bytes of the first word before the stream (kept as they are).
    lead: usize,
    /// `lead` + bytes written.
    len: usize,
    partial: [u8; 8],
}

#[cfg(feature = "write")]
impl WordWriter {
    /// A writer at word `first`.
    pub(crate) fn new(first: usize) -> WordWriter {
        WordWriter { first, lead: 0, len: 0, partial: [0; 8] }
    }

    /// A writer at byte `byte` (any alignment). The bytes of its first word before `byte` are
    /// stored again unchanged with the stream's first bytes: whoever reads them concurrently
    /// sees the same values before and after.
    pub(crate) fn at_byte(words: &[AtomicU64], byte: usize) -> WordWriter {
        let (first, lead) = (byte / 8, byte % 8);
        let mut partial = [0u8; 8];
        if lead != 0 {
            // Relaxed: the writer's own earlier store.
            let keep = words[first].load(Ordering::Relaxed).to_le_bytes();
            partial[..lead].copy_from_slice(&keep[..lead]);
        }
        WordWriter { first, lead, len: lead, partial }
    }

    /// Bytes written so far.
    pub(crate) fn len(&self) -> usize {
        self.len - self.lead
    }

    /// Append `src`; the caller has bounds-checked the room.
    pub(crate) fn write(&mut self, words: &[AtomicU64], mut src: &[u8]) {
        let fill = self.len % 8;
        if fill != 0 {
            let n = (8 - fill).min(src.len());
            self.partial[fill..fill + n].copy_from_slice(&src[..n]);
            // SYNC: Release, pairs with the reader's Acquire fence before its re-check
            // (`lapped` in the ring module, `still_valid` in the table reader).
            words[self.first + self.len / 8].store(u64::from_le_bytes(self.partial), Ordering::Release);
            self.len += n;
            src = &src[n..];
        }
        let whole = src.len() & !7;
        copy_in(words, self.first + self.len / 8, &src[..whole]);
        self.len += whole;
        let rest = &src[whole..];
        if !rest.is_empty() {
            self.partial = [0; 8];
            self.partial[..rest.len()].copy_from_slice(rest);
            // SYNC: Release, as above.
            words[self.first + self.len / 8].store(u64::from_le_bytes(self.partial), Ordering::Release);
            self.len += rest.len();
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn copy_round_trips_every_length() {
        let region = Region::heap(32);
        for len in 0..=200usize {
            let src: Vec<u8> = (0..len).map(|i| (i * 7 + len) as u8).collect();
            copy_in(region.words(), 3, &src);
            let mut out = vec![0u8; len];
            copy_out(region.words(), 3, &mut out);
            assert_eq!(out, src, "len {len}");
        }
    }

    #[test]
    fn word_writer_and_unaligned_copy_out_agree() {
        let region = Region::heap(64);
        let stream: Vec<u8> = (0..300u32).map(|i| (i * 13) as u8).collect();
        let mut ww = WordWriter::new(2);
        for piece in stream.chunks(5).chain(std::iter::once(&[][..])) {
            ww.write(region.words(), piece);
        }
        assert_eq!(ww.len(), 300);
        for start in 0..20 {
            for len in 0..=100 {
                let mut out = vec![0u8; len];
                copy_out_bytes(region.words(), 16 + start, &mut out);
                assert_eq!(out, &stream[start..start + len], "start {start}, len {len}");
            }
        }
        // A copy may end on the region's last byte, at every alignment, and reads nothing past it
        // (a load past the end would panic on the slice bound).
        let end = 16 + stream.len();
        let short = Region::heap(end.div_ceil(8));
        let mut ww = WordWriter::new(2);
        ww.write(short.words(), &stream);
        let mut all = vec![0u8; short.len_bytes() as usize];
        all[16..end].copy_from_slice(&stream);
        for len in 0..=40 {
            let mut out = vec![0u8; len];
            copy_out_bytes(short.words(), all.len() - len, &mut out);
            assert_eq!(out, &all[all.len() - len..], "last {len} bytes");
        }
    }

    #[test]
    fn byte_addressed_writes_loads_and_compares_agree() {
        let region = Region::heap(64);
        let w = region.words();
        // Streams laid end to end at every 4-byte-aligned and odd offset: earlier bytes survive.
        let mut at = 3usize;
        let mut placed = Vec::new();
        for n in [1usize, 4, 8, 9, 13, 20, 31] {
            let bytes: Vec<u8> = (0..n).map(|i| (i * 29 + n + at) as u8 | 1).collect();
            let mut ww = WordWriter::at_byte(w, at);
            ww.write(w, &bytes[..n / 2]);
            ww.write(w, &bytes[n / 2..]);
            assert_eq!(ww.len(), n);
            placed.push((at, bytes));
            at += n;
        }
        assert!(eq_bytes(w, 3, &[]), "nothing equals nothing");
        copy_out_bytes(w, 3, &mut []);
        for (at, bytes) in &placed {
            let mut out = vec![0u8; bytes.len()];
            copy_out_bytes(w, *at, &mut out);
            assert_eq!(&out, bytes, "at {at}");
            assert!(eq_bytes(w, *at, bytes), "at {at}: equal");
            for flip in 0..bytes.len() {
                let mut other = bytes.clone();
                other[flip] ^= 0x80;
                assert!(!eq_bytes(w, *at, &other), "at {at}: byte {flip} differs");
            }
            if bytes.len() >= 8 {
                assert_eq!(load_at(w, *at).to_le_bytes(), bytes[..8], "at {at}");
            }
        }
    }

    #[test]
    #[cfg(feature = "write")]
    fn store_and_fill_bytes_touch_exactly_their_range() {
        // Every start alignment and length up to 40 bytes, over a region holding a known
        // background: the range holds what was stored, every byte outside it is unchanged.
        let background: Vec<u8> = (0..64 * 8).map(|i| (i * 37 + 11) as u8).collect();
        for at in 8..24usize {
            for len in 0..=40usize {
                let region = Region::heap(64);
                let w = region.words();
                copy_in(w, 0, &background);
                let src: Vec<u8> = (0..len).map(|i| (i * 5 + at) as u8 ^ 0x5a).collect();
                store_bytes(w, at, &src);
                let mut want = background.clone();
                want[at..at + len].copy_from_slice(&src);
                let mut got = vec![0u8; want.len()];
                copy_out(w, 0, &mut got);
                assert_eq!(got, want, "store at {at}, len {len}");

                fill_bytes(w, at, len, 0xc3);
                want[at..at + len].fill(0xc3);
                copy_out(w, 0, &mut got);
                assert_eq!(got, want, "fill at {at}, len {len}");
            }
        }
    }

    #[test]
    fn eq_words_compares_exactly_the_given_bytes() {
        let region = Region::heap(40);
        for len in 1..=64usize {
            let key: Vec<u8> = (0..len).map(|i| (i * 31 + 5) as u8).collect();
            // The key, then bytes that differ from anything a key holds (as a value would).
            let mut stored = key.clone();
            stored.extend([0xEE; 9]);
            copy_in(region.words(), 4, &stored);
            assert!(eq_words(region.words(), 4, &key), "len {len}: equal");
            for flip in 0..len {
                let mut other = key.clone();
                other[flip] ^= 0x40;
                assert!(!eq_words(region.words(), 4, &other), "len {len}: byte {flip} differs");
            }
        }
    }
}
