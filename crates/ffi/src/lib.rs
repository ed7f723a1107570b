//! # podcache-ffi
//!
//! The podcache **reader** as a C ABI, for every language that can call C (C, C++, Go with cgo,
//! Java with the FFM API, Node, Ruby, ...). It opens podcache files read-only (`O_RDONLY`,
//! `PROT_READ`), so a consumer container can mount the shared volume `readOnly: true`; it has
//! no write path. The C declarations are in `include/podcache.h` (generated from this crate by
//! cbindgen; `tests/header.rs` checks it is current); build with `cargo build -p podcache-ffi
//! --release` and link `target/release/libpodcache.so` (or the static `libpodcache.a` with
//! `-lpthread -ldl -lm`).
//!
//! ## Semantics
//!
//! * **Tables** (`podcache_table_*`): lock-free gets into the caller's buffer. A get racing
//!   with the writer returns the old or the new value, never a mix: the value is copied out with
//!   atomic word loads and validated (the record was not recycled meanwhile, the key matches,
//!   the checksum matches) before the call returns. A buffer too small gets
//!   `PODCACHE_ERR_BUFFER_TOO_SMALL` and the length needed.
//! * **Rings** (`podcache_subscriber_*`): a broadcast ring; every subscriber has its own cursor
//!   in its own memory. The writer never waits: a subscriber that falls a ring behind is
//!   lapped, jumps to the oldest message still there and is told how many it lost
//!   (`podcache_msg.lost`). Receives poll or block with a timeout (a futex on the shared
//!   mapping).
//! * **Errors**: every fallible function returns a `podcache_status`: 0 and positive values are
//!   outcomes (`PODCACHE_OK`, `PODCACHE_NOT_FOUND`, `PODCACHE_EMPTY`, `PODCACHE_TIMEOUT`),
//!   negative ones errors with stable values; `podcache_error_message` names a code and
//!   `podcache_last_error` gives the calling thread's last error detail. No panic crosses the
//!   boundary (each entry point catches one and returns `PODCACHE_ERR_PANIC`); NULL handles and
//!   pointers are refused with `PODCACHE_ERR_INVALID_ARGUMENT`.
//! * **Threads**: a table handle may be used by many threads at once; a subscriber handle (a
//!   cursor) may move between threads but is used by one at a time. Closing needs every other
//!   call on the handle to have returned. The error functions are thread-safe.
//! * **The file is untrusted**: a truncated, foreign, corrupt or hostile file gives an error
//!   code, never a crash, an out-of-bounds read or an endless loop.
//!
//! ## Example (C)
//!
//! ```c
//! podcache_table *t = NULL;
//! if (podcache_table_open("/shared/features.table", 1000, &t) != PODCACHE_OK) {
//!     char why[256];
//!     podcache_last_error(why, sizeof why);
//!     fprintf(stderr, "open: %s\n", why);
//!     return 1;
//! }
//! uint8_t value[4096];
//! size_t len = 0;
//! podcache_status s = podcache_table_get(t, (const uint8_t *)"user:42", 7, value, sizeof value, &len);
//! if (s == PODCACHE_OK) { /* value[0..len] */ }
//! podcache_table_close(&t); /* t is NULL now */
//! ```
//!
//! `examples/c/` has complete programs. The same calls from Rust (this crate is also an rlib,
//! which is how its tests call it):
//!
//! ```
//! # let dir = tempfile::tempdir().unwrap();
//! # let path = dir.path().join("features.table");
//! # let mut writer = podcache_writer::TableWriter::builder(&path).max_items(100).create()?;
//! # writer.put(b"user:42", b"gold")?;
//! use podcache::*;
//! use std::ffi::CString;
//!
//! let c_path = CString::new(path.to_str().unwrap())?;
//! let mut table = std::ptr::null_mut();
//! let (mut buf, mut len) = ([0u8; 64], 0usize);
//! // SAFETY: valid NUL-terminated path, pointers to live locals, the handle closed once.
//! unsafe {
//!     assert_eq!(podcache_table_open(c_path.as_ptr(), 0, &mut table), PODCACHE_OK);
//!     let status = podcache_table_get(table, b"user:42".as_ptr(), 7, buf.as_mut_ptr(), buf.len(), &mut len);
//!     assert_eq!(status, PODCACHE_OK);
//!     podcache_table_close(&mut table);
//! }
//! assert_eq!(&buf[..len], b"gold");
//! assert!(table.is_null());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![deny(missing_docs)]
// The exported names are the C names (`podcache_table`, `PODCACHE_OK`): one spelling in the
// header, the Rust docs and every binding.
#![allow(non_camel_case_types)]

mod args;
mod status;
mod subscriber;
mod table;

pub use status::*;
pub use subscriber::*;
pub use table::*;

/// The file layout version this library reads (see docs/format.md, "Version rules"). A file
/// of another version is refused with `PODCACHE_ERR_VERSION_MISMATCH`.
#[no_mangle]
pub extern "C" fn podcache_layout_version() -> u32 {
    podcache_format::header::LAYOUT_VERSION
}
