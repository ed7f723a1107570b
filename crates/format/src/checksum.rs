//! Record checksums: crc32 (IEEE, `crc32fast`) of the record's bytes, XORed with a 32-bit mix
//! of the record's header fields.
//!
//! `crc(bytes) ^ mix(header)` covers the header as well as seeding the crc with it would, but
//! lets every checksum start from one prototype [`crc32fast::Hasher`] made once per process:
//! `crc32fast` picks its implementation (table or carry-less multiply) when a hasher is made,
//! and that check costs about as much as checksumming a 64-byte message. A corrupted payload
//! byte changes the crc; a corrupted header field changes the mix (the multiplication is a
//! bijection of the header word; folded to 32 bits, two different headers share a mix with
//! probability about 2^-32, as two payloads share a crc).

use crate::region::copy_out_bytes;
use crate::sync::AtomicU64;
use std::sync::OnceLock;

/// Bytes of shared memory copied out per step of [`Crc::update_from_words`]: big enough that
/// `crc32fast`'s per-call set-up and final fold are amortised (its carry-less-multiply loop
/// runs several times faster per byte on 4 KiB than on 512 B), small enough for the stack and
/// the L1 cache.
const WORDS_BLOCK: usize = 4096;

/// Records up to this many bytes are copied out in one step into a buffer of this size (and
/// up to [`TINY_BLOCK`] into one of that size: the buffer is zeroed on every call, which for a
/// 64-byte message cost as much as copying it).
const SMALL_BLOCK: usize = 256;
const TINY_BLOCK: usize = 64;

/// A checksum under construction; see the module documentation.
#[derive(Clone)]
pub(crate) struct Crc {
    hasher: crc32fast::Hasher,
    mix: u32,
}

impl Crc {
    /// A checksum of bytes still to come under `header`.
    #[inline]
    pub(crate) fn new(header: u64) -> Crc {
        Crc { hasher: proto().clone(), mix: mix(header) }
    }

    /// Feed `bytes`.
    #[inline]
    pub(crate) fn update(&mut self, bytes: &[u8]) {
        self.hasher.update(bytes);
    }

    /// Feed `len` bytes of shared memory from byte `byte` of `words`, copied out a block at a
    /// time with word loads (design rule 2: never a `&[u8]` over the mapping). The caller has
    /// bounds-checked the range and validates what the checksum was for afterwards.
    pub(crate) fn update_from_words(&mut self, words: &[AtomicU64], byte: usize, len: usize) {
        // A small record gets a small buffer: the block is zeroed on every call.
        if len <= TINY_BLOCK {
            return self.update_from_words_in::<TINY_BLOCK>(words, byte, len);
        }
        if len <= SMALL_BLOCK {
            return self.update_from_words_in::<SMALL_BLOCK>(words, byte, len);
        }
        let mut block = [0u8; WORDS_BLOCK];
        let mut at = 0;
        while at < len {
            let n = (len - at).min(WORDS_BLOCK);
            copy_out_bytes(words, byte + at, &mut block[..n]);
            self.update(&block[..n]);
            at += n;
        }
    }

    /// [`update_from_words`](Self::update_from_words) of `len <= N` bytes, in one step.
    #[inline(always)]
    fn update_from_words_in<const N: usize>(&mut self, words: &[AtomicU64], byte: usize, len: usize) {
        let mut block = [0u8; N];
        copy_out_bytes(words, byte, &mut block[..len]);
        self.update(&block[..len]);
    }

    /// The checksum.
    #[inline]
    pub(crate) fn finalize(self) -> u32 {
        self.hasher.finalize() ^ self.mix
    }
}

/// The process's prototype hasher (made once: making one picks the implementation).
#[inline]
fn proto() -> &'static crc32fast::Hasher {
    static PROTO: OnceLock<crc32fast::Hasher> = OnceLock::new();
    PROTO.get_or_init(crc32fast::Hasher::new)
}

/// A copy of the prototype hasher kept by a hot path (the ring reader), so that a checksum
/// there starts from a field instead of the process-wide `OnceLock`. Same checksums as [`Crc`]
/// and [`checksum`].
#[derive(Clone)]
pub(crate) struct Checksummer {
    proto: crc32fast::Hasher,
}

impl Checksummer {
    /// A copy of the process's prototype.
    pub(crate) fn new() -> Checksummer {
        Checksummer { proto: proto().clone() }
    }

    /// Checksum of `bytes` under `header`.
    #[inline]
    pub(crate) fn checksum(&self, header: u64, bytes: &[u8]) -> u32 {
        let mut c = Crc { hasher: self.proto.clone(), mix: mix(header) };
        c.update(bytes);
        c.finalize()
    }
}

/// 64 → 32 bits: a multiplication by an odd constant (a bijection of the word), folded.
#[inline]
fn mix(header: u64) -> u32 {
    let x = header.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    (x >> 32) as u32 ^ x as u32
}

/// Checksum of `parts` under `header`.
#[inline]
pub(crate) fn checksum(header: u64, parts: &[&[u8]]) -> u32 {
    let mut c = Crc::new(header);
    for p in parts {
        c.update(p);
    }
    c.finalize()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_and_header_both_count() {
        let whole = checksum(7, &[b"hello world"]);
        assert_eq!(whole, checksum(7, &[b"hello", b" world"]), "split input, same checksum");
        assert_ne!(whole, checksum(8, &[b"hello world"]), "the header is covered");
        assert_ne!(whole, checksum(7, &[b"hello worle"]), "the bytes are covered");
        assert_eq!(whole, crc32fast::hash(b"hello world") ^ mix(7), "the definition in the docs");
        assert_eq!(whole, Checksummer::new().checksum(7, b"hello world"), "a kept prototype agrees");
    }
}
