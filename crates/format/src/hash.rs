//! The key hash of podcache tables. Part of the file format: writer and readers must compute
//! the same value in different builds, so it is written here, never taken from a crate whose
//! output may change between versions.
//!
//! A wyhash-style construction: 8-byte words folded with a 64×64→128-bit multiply. Keyed by
//! a per-file seed stored in the table's parameters. Fast for short keys (one multiply per 8
//! bytes), not meant to resist an attacker who controls the writer's keys and knows the seed.

const P0: u64 = 0xa076_1d64_78bd_642f;
const P1: u64 = 0xe703_7ed1_a0b4_28db;
const P2: u64 = 0x8ebc_6af0_9c88_c6e3;
const P3: u64 = 0x5899_65cc_7537_4cc3;

#[inline(always)]
fn mix(a: u64, b: u64) -> u64 {
    let r = u128::from(a) * u128::from(b);
    (r as u64) ^ ((r >> 64) as u64)
}

/// Hash `key` with `seed`.
#[inline]
pub fn hash(seed: u64, key: &[u8]) -> u64 {
    let mut h = seed ^ P0;
    let mut chunks = key.chunks_exact(8);
    for c in &mut chunks {
        h = mix(h ^ u64::from_le_bytes(c.try_into().expect("8 bytes")), P1 ^ h.rotate_left(17));
    }
    // The 0–7 bytes left, little-endian, zero-padded (a byte loop: cheaper than `memcpy`).
    let last = chunks.remainder().iter().rev().fold(0u64, |w, &b| (w << 8) | u64::from(b));
    h = mix(h ^ last, P2);
    mix(h ^ key.len() as u64, P3)
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn stable_and_spread() {
        // Frozen values: changing the function changes the file format (and fails here).
        assert_eq!(hash(0, b""), 0x2b58_40ee_88a2_b24c);
        assert_eq!(hash(0, b"a"), 0xef5b_7ba1_8a6d_a9a1);
        // Two whole words and a 7-byte remainder, under a seed.
        assert_eq!(hash(0x1234_5678_9abc_def0, b"podcache key 0123456789"), 0x888c_c114_b689_9faf);
        assert_ne!(hash(0, b"a"), hash(1, b"a"));
        assert_ne!(hash(0, b"a"), hash(0, b"a\0"));
        // Low and high bits of sequential keys spread over buckets.
        let mut low = std::collections::HashSet::new();
        let mut high = std::collections::HashSet::new();
        for i in 0u32..4096 {
            let h = hash(7, format!("key-{i}").as_bytes());
            low.insert(h & 1023);
            high.insert(h >> 54);
        }
        assert!(low.len() > 950 && high.len() > 950, "{} {}", low.len(), high.len());
    }
}
