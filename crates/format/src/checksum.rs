//! Record checksums: crc32 (IEEE, `crc32fast`) of the record's bytes, started from a state
//! derived from the record's header fields.
//!
//! Seeding the state with the header (instead of feeding the header bytes first) covers the
//! header in the checksum without extra `update` calls, which cost ~4 ns each on the short
//! inputs of a 64-byte message or a small value.

/// A hasher whose initial state is derived from `header`.
#[inline]
pub(crate) fn seeded(header: u64) -> crc32fast::Hasher {
    let x = header.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    crc32fast::Hasher::new_with_initial((x >> 32) as u32 ^ x as u32)
}

/// Checksum of `parts` under `header`.
#[inline]
pub(crate) fn checksum(header: u64, parts: &[&[u8]]) -> u32 {
    let mut h = seeded(header);
    for p in parts {
        h.update(p);
    }
    h.finalize()
}
