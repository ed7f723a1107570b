//! Turning C arguments into Rust values: every pointer is checked for NULL and every length
//! against what a Rust slice may span, before any reference is formed.

use crate::status::Failure;
use std::ffi::{c_char, CStr, OsStr};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::Duration;

/// The bytes `ptr[0..len]` as a slice; an empty slice when `len` is 0 (then `ptr` may be NULL).
///
/// # Safety
///
/// When `len > 0` and `ptr` is not NULL, `ptr` must be valid for reads of `len` bytes that
/// nothing writes while the returned slice lives.
pub(crate) unsafe fn in_slice<'a>(ptr: *const u8, len: usize, what: &str) -> Result<&'a [u8], Failure> {
    if len == 0 {
        return Ok(&[]);
    }
    if ptr.is_null() {
        return Err(Failure::invalid(&format!("{what} is NULL with a length of {len}")));
    }
    if len > isize::MAX as usize {
        return Err(Failure::invalid(&format!("{what} length {len} is too large")));
    }
    // SAFETY: `ptr` is not NULL, `len` is at most isize::MAX, and the caller guarantees `len`
    // readable bytes at `ptr` that are not written while the slice lives. A `u8` has no
    // alignment requirement.
    Ok(unsafe { std::slice::from_raw_parts(ptr, len) })
}

/// The bytes `ptr[0..len]` as a mutable slice; an empty slice when `len` is 0 or `ptr` is NULL
/// with `len` 0.
///
/// # Safety
///
/// When `len > 0` and `ptr` is not NULL, `ptr` must be valid for writes of `len` bytes that
/// nothing else accesses while the returned slice lives.
pub(crate) unsafe fn out_slice<'a>(ptr: *mut u8, len: usize) -> Result<&'a mut [u8], Failure> {
    if len == 0 {
        return Ok(&mut []);
    }
    if ptr.is_null() {
        return Err(Failure::invalid(&format!("buffer is NULL with a length of {len}")));
    }
    if len > isize::MAX as usize {
        return Err(Failure::invalid(&format!("buffer length {len} is too large")));
    }
    // SAFETY: `ptr` is not NULL, `len` is at most isize::MAX, and the caller guarantees `len`
    // writable bytes at `ptr` that nothing else accesses while the slice lives.
    Ok(unsafe { std::slice::from_raw_parts_mut(ptr, len) })
}

/// Whether the byte ranges `[a, a + a_len)` and `[b, b + b_len)` share a byte. Compares
/// addresses only (no pointer is dereferenced).
pub(crate) fn overlap(a: *const u8, a_len: usize, b: *const u8, b_len: usize) -> bool {
    if a_len == 0 || b_len == 0 {
        return false;
    }
    let (a, b) = (a as usize, b as usize);
    a < b.saturating_add(b_len) && b < a.saturating_add(a_len)
}

/// The path of the NUL-terminated string `path` (any bytes but NUL: a Unix path).
///
/// # Safety
///
/// `path` must be NULL or point to a NUL-terminated string that is not written during the call.
pub(crate) unsafe fn path<'a>(path: *const c_char) -> Result<&'a Path, Failure> {
    if path.is_null() {
        return Err(Failure::invalid("path is NULL"));
    }
    // SAFETY: not NULL, and the caller guarantees a NUL-terminated string.
    let bytes = unsafe { CStr::from_ptr(path) }.to_bytes();
    Ok(Path::new(OsStr::from_bytes(bytes)))
}

/// A timeout in milliseconds from C: negative waits forever.
pub(crate) fn timeout(ms: i64) -> Duration {
    u64::try_from(ms).map_or(Duration::MAX, Duration::from_millis)
}
