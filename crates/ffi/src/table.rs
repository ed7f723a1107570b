//! `podcache_table_*`: gets from a key-value table file.

use crate::args::{self, in_slice, out_slice, overlap};
use crate::status::{guard, podcache_status, Failure, PODCACHE_NOT_FOUND, PODCACHE_OK};
use podcache_reader::{TableReader, TableStats};
use std::ffi::{c_char, c_void};

/// An open table, read-only. Opaque: created by `podcache_table_open`, freed by
/// `podcache_table_close`.
///
/// Thread-safety: any number of threads may use one handle at the same time (gets never write
/// shared state; hit/miss counters are kept per thread). Only `podcache_table_close` needs
/// every other call on the handle to have returned.
pub struct podcache_table {
    reader: TableReader,
}

// The documented contract above: the handle may move between threads and be shared by them.
const _: () = {
    const fn send_sync<T: Send + Sync>() {}
    send_sync::<podcache_table>();
};

/// Statistics of a table: the writer's (stored in the file) and this handle's own.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct podcache_table_stats {
    /// Live items (expired ones not yet removed included).
    pub items: u64,
    /// Bytes of live records.
    pub bytes_used: u64,
    /// Bytes of the data region.
    pub bytes_capacity: u64,
    /// Puts since the file was created.
    pub puts: u64,
    /// Deletes of present keys since the file was created.
    pub deletes: u64,
    /// Items evicted to make room.
    pub evictions: u64,
    /// Expired items removed.
    pub expirations: u64,
    /// Times the writer cleared the table.
    pub clears: u64,
    /// Gets of this handle that found a value.
    pub hits: u64,
    /// Gets of this handle that found nothing.
    pub misses: u64,
    /// Gets of this handle restarted because the writer recycled the record under them.
    pub retries: u64,
    /// The writer epoch: 1 for the creator, +1 for every writer that re-attached since.
    pub writer_epoch: u64,
}

/// Called by `podcache_table_get_many` once per key, in order: `index` is the key's position
/// in the arrays, `status` what `podcache_table_get` would have returned for it
/// (`PODCACHE_OK`, `PODCACHE_NOT_FOUND`, or an error), `value`/`value_len` the value when
/// `status` is `PODCACHE_OK` (`value` points into the caller's buffer and is valid until the
/// callback returns; NULL otherwise). For `PODCACHE_ERR_BUFFER_TOO_SMALL`, `value` is NULL and
/// `value_len` the length the value needs.
///
/// The callback must not unwind or `longjmp` out (C++: it must not throw), and must not call
/// podcache on the same handle or touch the buffer except to read `value`.
pub type podcache_get_many_fn = Option<
    unsafe extern "C" fn(ctx: *mut c_void, index: usize, status: podcache_status, value: *const u8, value_len: usize),
>;

/// The table of a non-NULL handle.
///
/// # Safety
///
/// `t` must be NULL or a handle from `podcache_table_open`, not closed before the call returns.
unsafe fn handle<'a>(t: *const podcache_table) -> Result<&'a TableReader, Failure> {
    // SAFETY: the caller guarantees `t` is NULL or a live handle (a Box leaked by
    // `podcache_table_open`) for the whole call; sharing it is sound (`TableReader: Sync`).
    match unsafe { t.as_ref() } {
        Some(t) => Ok(&t.reader),
        None => Err(Failure::invalid("table handle is NULL")),
    }
}

/// Open the table file at `path` read-only (`O_RDONLY`, `PROT_READ`: the volume may be mounted
/// read-only) and validate its header. Waits up to `wait_ms` milliseconds for a file that does
/// not exist yet or is not ready (0: do not wait; negative: wait as long as it takes). Nothing is
/// ever written to the file.
///
/// On success stores a new handle in `*out` and returns `PODCACHE_OK`; on failure stores NULL
/// there and returns `PODCACHE_ERR_NO_FILE`, `PODCACHE_ERR_NOT_READY`,
/// `PODCACHE_ERR_VERSION_MISMATCH`, `PODCACHE_ERR_WRONG_KIND`, `PODCACHE_ERR_TRUNCATED`,
/// `PODCACHE_ERR_FOREIGN`, `PODCACHE_ERR_CORRUPT`, `PODCACHE_ERR_IO` or
/// `PODCACHE_ERR_INVALID_ARGUMENT` (`path` or `out` NULL).
///
/// # Safety
///
/// `path` must be NULL or a NUL-terminated string; `out` must be NULL or valid for a write of
/// one pointer.
#[no_mangle]
pub unsafe extern "C" fn podcache_table_open(
    path: *const c_char,
    wait_ms: i64,
    out: *mut *mut podcache_table,
) -> podcache_status {
    guard(|| {
        if out.is_null() {
            return Err(Failure::invalid("out is NULL"));
        }
        // SAFETY: `out` is not NULL and the caller guarantees it is valid for a write.
        unsafe { out.write(std::ptr::null_mut()) };
        // SAFETY: the caller guarantees `path` is NULL or NUL-terminated.
        let path = unsafe { args::path(path) }?;
        let reader = TableReader::open_wait(path, args::timeout(wait_ms))?;
        let handle = Box::into_raw(Box::new(podcache_table { reader }));
        // SAFETY: as above.
        unsafe { out.write(handle) };
        Ok(PODCACHE_OK)
    })
}

/// Copy the value of the `key_len` bytes at `key` into `buf` (`buf_len` bytes).
///
/// Returns `PODCACHE_OK` with the value's length in `*value_len`; `PODCACHE_NOT_FOUND` if the
/// key is absent or expired (`*value_len` = 0); `PODCACHE_ERR_BUFFER_TOO_SMALL` with the length
/// the value needs in `*value_len` (so `buf` NULL and `buf_len` 0 asks the length); or
/// `PODCACHE_ERR_CORRUPT`, `PODCACHE_ERR_CONTENDED`, `PODCACHE_ERR_INVALID_ARGUMENT`.
/// `value_len` may be NULL if the caller does not want the length.
///
/// Lock-free, no allocation, no system call. A get that races with the writer returns the old
/// or the new value, never a mix: the value is copied, then validated (generation re-check,
/// key comparison, checksum) before this returns. An empty value is a present key with
/// `*value_len` = 0. Keys are at most 255 bytes (a longer key is never present).
///
/// # Safety
///
/// `table` must be NULL or an open handle, not closed during the call; `key`
/// must be valid for reads of `key_len` bytes (may be NULL if `key_len` is 0); `buf` valid for
/// writes of `buf_len` bytes (may be NULL if `buf_len` is 0); `value_len` NULL or valid for a
/// write. `buf` must not overlap `key` (refused with `PODCACHE_ERR_INVALID_ARGUMENT`).
#[no_mangle]
pub unsafe extern "C" fn podcache_table_get(
    table: *const podcache_table,
    key: *const u8,
    key_len: usize,
    buf: *mut u8,
    buf_len: usize,
    value_len: *mut usize,
) -> podcache_status {
    guard(|| {
        let set_len = |n: usize| {
            if !value_len.is_null() {
                // SAFETY: not NULL; the caller guarantees it is valid for a write.
                unsafe { value_len.write(n) };
            }
        };
        set_len(0);
        // SAFETY: the caller's contract on `table`.
        let reader = unsafe { handle(table) }?;
        if overlap(key, key_len, buf, buf_len) {
            return Err(Failure::invalid("buf overlaps key"));
        }
        // SAFETY: the caller guarantees `key_len` readable bytes at `key`, and `buf_len`
        // writable ones at `buf`, which do not overlap them (checked above).
        let (key, buf) = unsafe { (in_slice(key, key_len, "key")?, out_slice(buf, buf_len)?) };
        match reader.get(key, buf) {
            Ok(Some(n)) => {
                set_len(n);
                Ok(PODCACHE_OK)
            }
            Ok(None) => Ok(PODCACHE_NOT_FOUND),
            Err(e) => {
                if let podcache_reader::GetError::BufferTooSmall { needed } = e {
                    set_len(needed);
                }
                Err(e.into())
            }
        }
    })
}

/// Whether the key is present (and not expired): `PODCACHE_OK` if it is, `PODCACHE_NOT_FOUND`
/// if not, or an error (`PODCACHE_ERR_CORRUPT`, `PODCACHE_ERR_CONTENDED`,
/// `PODCACHE_ERR_INVALID_ARGUMENT`). Validates the record like a get, without copying the value.
///
/// # Safety
///
/// As `podcache_table_get` for `table`, `key` and `key_len`.
#[no_mangle]
pub unsafe extern "C" fn podcache_table_contains(
    table: *const podcache_table,
    key: *const u8,
    key_len: usize,
) -> podcache_status {
    guard(|| {
        // SAFETY: the caller's contract on `table`.
        let reader = unsafe { handle(table) }?;
        // SAFETY: the caller guarantees `key_len` readable bytes at `key`.
        let key = unsafe { in_slice(key, key_len, "key") }?;
        Ok(if reader.contains(key)? { PODCACHE_OK } else { PODCACHE_NOT_FOUND })
    })
}

/// Keys looked up together (the reader overlaps their cache misses).
const BATCH: usize = podcache_format::table::BATCH;

/// Get `n` keys at once: key `i` is the `key_lens[i]` bytes at `keys[i]`. Calls
/// `callback(ctx, i, status, value, value_len)` for every key, in order, with each value
/// copied into `buf` (see `podcache_get_many_fn`). Faster than `n` calls of
/// `podcache_table_get` on a table larger than the CPU caches (the keys' memory accesses
/// overlap).
///
/// Returns `PODCACHE_OK` once every key was reported (per-key misses and errors go to the
/// callback), or `PODCACHE_ERR_INVALID_ARGUMENT` before any callback if `table`, `callback`,
/// `keys` or `key_lens` is NULL (the arrays may be NULL when `n` is 0) or a key is NULL with a
/// non-zero length. No allocation.
///
/// # Safety
///
/// `table` as in `podcache_table_get`; `keys` and `key_lens` valid for reads of `n` elements;
/// each `keys[i]` valid for reads of `key_lens[i]` bytes; `buf` valid for writes of `buf_len`
/// bytes and overlapping no key; `callback` a function that follows the rules of
/// `podcache_get_many_fn`; `ctx` is passed through untouched.
#[no_mangle]
pub unsafe extern "C" fn podcache_table_get_many(
    table: *const podcache_table,
    keys: *const *const u8,
    key_lens: *const usize,
    n: usize,
    buf: *mut u8,
    buf_len: usize,
    callback: podcache_get_many_fn,
    ctx: *mut c_void,
) -> podcache_status {
    guard(|| {
        // SAFETY: the caller's contract on `table`.
        let reader = unsafe { handle(table) }?;
        let Some(callback) = callback else { return Err(Failure::invalid("callback is NULL")) };
        if n > 0 && (keys.is_null() || key_lens.is_null()) {
            return Err(Failure::invalid("keys or key_lens is NULL"));
        }
        if n > isize::MAX as usize / std::mem::size_of::<*const u8>() {
            return Err(Failure::invalid("too many keys"));
        }
        // SAFETY: not NULL when `n > 0` (checked), `n` elements fit an allocation (checked),
        // and the caller guarantees `n` readable elements in each array; a pointer and a
        // `usize` are aligned as the C arrays of `const uint8_t *` and `size_t` are.
        let (keys, key_lens) = unsafe {
            if n == 0 {
                (&[][..], &[][..])
            } else {
                (std::slice::from_raw_parts(keys, n), std::slice::from_raw_parts(key_lens, n))
            }
        };
        // Validate every key before the first callback, so an invalid argument reports nothing.
        for (i, (&k, &len)) in keys.iter().zip(key_lens).enumerate() {
            if k.is_null() && len > 0 {
                return Err(Failure::invalid(&format!("key {i} is NULL with a length of {len}")));
            }
            if len > isize::MAX as usize {
                return Err(Failure::invalid(&format!("key {i} length {len} is too large")));
            }
            if overlap(k, len, buf, buf_len) {
                return Err(Failure::invalid(&format!("buf overlaps key {i}")));
            }
        }
        // SAFETY: the caller guarantees `buf_len` writable bytes at `buf`, overlapping no key
        // (checked above).
        let buf = unsafe { out_slice(buf, buf_len) }?;
        let mut batch: [&[u8]; BATCH] = [&[]; BATCH];
        for (chunk_no, (chunk, lens)) in keys.chunks(BATCH).zip(key_lens.chunks(BATCH)).enumerate() {
            for (slot, (&k, &len)) in batch.iter_mut().zip(chunk.iter().zip(lens)) {
                // SAFETY: checked above (not NULL unless empty, length in range); the caller
                // guarantees `len` readable bytes at `k`, not written during the call.
                *slot = unsafe { in_slice(k, len, "key") }?;
            }
            let base = chunk_no * BATCH;
            reader.get_many(&batch[..chunk.len()], buf, |i, result| {
                let (status, ptr, len) = match result {
                    Ok(Some(v)) => (PODCACHE_OK, v.as_ptr(), v.len()),
                    Ok(None) => (PODCACHE_NOT_FOUND, std::ptr::null(), 0),
                    Err(e) => {
                        let needed = match e {
                            podcache_reader::GetError::BufferTooSmall { needed } => needed,
                            _ => 0,
                        };
                        (Failure::from(e).code, std::ptr::null(), needed)
                    }
                };
                // SAFETY: `callback` is a non-NULL function pointer the caller supplied for
                // this signature; `ptr` is NULL or points to `len` bytes of `buf`, valid until
                // the callback returns (the caller promises not to write `buf` meanwhile).
                unsafe { callback(ctx, base + i, status, ptr, len) };
            });
        }
        Ok(PODCACHE_OK)
    })
}

/// Store the table's statistics in `*out`: the writer's (stored in the file: a snapshot, each
/// counter read atomically) and this handle's own hit/miss/retry counters. Returns `PODCACHE_OK`
/// or `PODCACHE_ERR_INVALID_ARGUMENT`.
///
/// # Safety
///
/// `table` as in `podcache_table_get`; `out` NULL or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn podcache_table_get_stats(
    table: *const podcache_table,
    out: *mut podcache_table_stats,
) -> podcache_status {
    guard(|| {
        // SAFETY: the caller's contract on `table`.
        let reader = unsafe { handle(table) }?;
        if out.is_null() {
            return Err(Failure::invalid("out is NULL"));
        }
        let s: TableStats = reader.stats();
        let c = reader.counters();
        let stats = podcache_table_stats {
            items: s.items,
            bytes_used: s.bytes_used,
            bytes_capacity: s.bytes_capacity,
            puts: s.puts,
            deletes: s.deletes,
            evictions: s.evictions,
            expirations: s.expirations,
            clears: s.clears,
            hits: c.hits,
            misses: c.misses,
            retries: c.retries,
            writer_epoch: reader.writer_epoch(),
        };
        // SAFETY: not NULL; the caller guarantees it is valid for a write. `write` does not read
        // or drop the old (possibly uninitialised) contents.
        unsafe { out.write(stats) };
        Ok(PODCACHE_OK)
    })
}

/// Whether the path now names another file than the one this handle reads: the writer replaced
/// it (a new layout) or removed it. `*replaced` is set to 1 if so (then reopen: close this
/// handle and open the path again), 0 if not. One `stat` system call: check now and then, not
/// on every get. Returns `PODCACHE_OK` or `PODCACHE_ERR_INVALID_ARGUMENT`.
///
/// # Safety
///
/// `table` as in `podcache_table_get`; `replaced` NULL or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn podcache_table_file_replaced(
    table: *const podcache_table,
    replaced: *mut i32,
) -> podcache_status {
    guard(|| {
        // SAFETY: the caller's contract on `table`.
        let reader = unsafe { handle(table) }?;
        if replaced.is_null() {
            return Err(Failure::invalid("replaced is NULL"));
        }
        // SAFETY: not NULL; the caller guarantees it is valid for a write.
        unsafe { replaced.write(i32::from(reader.file_replaced())) };
        Ok(PODCACHE_OK)
    })
}

/// Close the table `*table` points to and set `*table` to NULL, so that closing the same
/// variable twice is harmless. `table` NULL or `*table` NULL: nothing to do. Never fails.
///
/// Closing a copy of a handle that was already closed through another variable is a
/// use-after-free, as with `free`.
///
/// # Safety
///
/// `table` must be NULL or point to a variable holding NULL or an open handle that no other
/// thread uses.
#[no_mangle]
pub unsafe extern "C" fn podcache_table_close(table: *mut *mut podcache_table) {
    guard(|| {
        if table.is_null() {
            return Ok(PODCACHE_OK);
        }
        // SAFETY: not NULL; the caller guarantees it points to a readable and writable
        // handle variable.
        let t = unsafe { table.replace(std::ptr::null_mut()) };
        if !t.is_null() {
            // SAFETY: `t` came from `Box::into_raw` in `podcache_table_open` and was not freed:
            // the caller guarantees an open handle, and the variable now holds NULL.
            drop(unsafe { Box::from_raw(t) });
        }
        Ok(PODCACHE_OK)
    });
}
