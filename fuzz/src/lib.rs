//! Helpers shared by the podcache fuzz targets (see fuzz/README.md).
//!
//! The targets use only the public APIs of `podcache-reader` and `podcache-writer`: they fuzz
//! what a user (or a hostile container sharing the volume) can reach, not the internals.

use podcache_format::header::{self, HEADER_BYTES, PARAM_WORDS};
use podcache_format::Kind;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::OnceLock;

/// Largest input a target looks at. A hostile file is a few pages at most here: what matters is
/// what its header claims, not its size, and the reader must never allocate what the file says.
pub const MAX_INPUT: usize = 64 << 10;

/// A scratch directory for this process, on tmpfs (`/dev/shm`) when there is one, as on a
/// Kubernetes `emptyDir: {medium: Memory}` volume, or in `$PODCACHE_FUZZ_DIR` if set.
///
/// libFuzzer ends the process with `exit`, so the directory outlives it: `.ci/fuzz` points
/// `PODCACHE_FUZZ_DIR` at a directory it removes afterwards.
pub fn scratch_dir() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| {
        let parent = std::env::var_os("PODCACHE_FUZZ_DIR").map(PathBuf::from);
        let shm = parent.as_deref().unwrap_or(Path::new("/dev/shm"));
        let builder = {
            let mut b = tempfile::Builder::new();
            b.prefix("podcache-fuzz-");
            b
        };
        if shm.is_dir() {
            if let Ok(d) = builder.tempdir_in(shm) {
                return d;
            }
        }
        builder.tempdir().expect("a temporary directory")
    })
    .path()
}

/// A path in the scratch directory.
pub fn scratch_path(name: &str) -> PathBuf {
    scratch_dir().join(name)
}

/// Write `bytes` as a fresh file at `path` (a new inode: readers of the previous input are
/// gone, but a new inode is what a replaced file looks like anyway).
pub fn write_fresh(path: &Path, bytes: &[u8]) {
    let _ = std::fs::remove_file(path);
    std::fs::write(path, bytes).expect("write the fuzz input file");
}

/// Build the file a target opens from its input.
///
/// The first byte chooses how the rest is used:
/// - `0 mod 5`: the rest is the whole file (raw hostile bytes).
/// - `1 mod 5`: the rest is a list of patches applied to `valid` (a real file written by the
///   writer library): each patch is a 2-byte little-endian offset (scaled over the file),
///   a length byte, then that many bytes to store there.
/// - `2 mod 5`: as 1, then the file is truncated to a length taken from the first two bytes.
/// - `3 mod 5`: the rest is XORed over `valid` from an offset taken from the first two bytes
///   (flips bits rather than storing values: checksummed words stay almost right).
/// - `4 mod 5`: as 1, then the header is signed again (layout hash and header checksum made to
///   match the patched parameters, the file marked ready): a hostile writer can compute both,
///   so this reaches the checks of the parameters themselves.
pub fn build_file(input: &[u8], valid: &[u8], kind: Kind) -> Vec<u8> {
    let Some((&mode, rest)) = input.split_first() else {
        return Vec::new();
    };
    match mode % 5 {
        0 => rest.to_vec(),
        1 => patch(valid, rest),
        4 => {
            let mut f = patch(valid, rest);
            resign_header(&mut f, kind);
            f
        }
        2 => {
            let (cut, rest) = take_u16(rest);
            let mut f = patch(valid, rest);
            let len = (usize::from(cut) * f.len()) >> 16;
            f.truncate(len);
            f
        }
        _ => {
            let (at, rest) = take_u16(rest);
            let mut f = valid.to_vec();
            let start = (usize::from(at) * f.len()) >> 16;
            for (b, x) in f[start..].iter_mut().zip(rest) {
                *b ^= x;
            }
            f
        }
    }
}

fn take_u16(b: &[u8]) -> (u16, &[u8]) {
    match b {
        [a, c, rest @ ..] => (u16::from_le_bytes([*a, *c]), rest),
        _ => (0, &[]),
    }
}

fn patch(valid: &[u8], mut rest: &[u8]) -> Vec<u8> {
    let mut f = valid.to_vec();
    while rest.len() >= 3 {
        let at = u16::from_le_bytes([rest[0], rest[1]]);
        let len = usize::from(rest[2]);
        rest = &rest[3..];
        let bytes = &rest[..len.min(rest.len())];
        rest = &rest[bytes.len()..];
        // Offsets below 8 KiB hit exact bytes (header, segment table, ring words); above that
        // they are scaled over the rest of the file.
        let at = usize::from(at);
        let start = if at < 0x2000 { at } else { 0x2000 + ((at - 0x2000) * f.len().saturating_sub(0x2000)) / 0xE000 };
        if start >= f.len() {
            continue;
        }
        let end = (start + bytes.len()).min(f.len());
        f[start..end].copy_from_slice(&bytes[..end - start]);
    }
    f
}

/// Sign the header of `f` again with the format's own header writer: file size, creation time
/// and parameters are kept as the patches left them (at their byte-map offsets 0x10, 0x20 and
/// 0x40), the layout hash and header checksum are recomputed, and the file is marked ready.
fn resign_header(f: &mut [u8], kind: Kind) {
    let n = HEADER_BYTES as usize;
    if f.len() < n {
        return;
    }
    let word = |i: usize| u64::from_le_bytes(f[i * 8..i * 8 + 8].try_into().expect("8 bytes"));
    let mut params = [0u64; PARAM_WORDS];
    for (i, p) in params.iter_mut().enumerate() {
        *p = word(8 + i);
    }
    let words: Vec<AtomicU64> = (0..n / 8).map(|i| AtomicU64::new(word(i))).collect();
    header::write_fields(&words, kind, word(2), &params, word(4));
    header::publish_ready(&words);
    for (i, w) in words.iter().enumerate() {
        f[i * 8..i * 8 + 8].copy_from_slice(&w.load(std::sync::atomic::Ordering::Relaxed).to_le_bytes());
    }
}
