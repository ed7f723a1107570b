//! Status codes, the thread-local error detail, and the guard every entry point runs in.

use podcache_reader::{GetError, OpenError, RecvError};
use std::cell::RefCell;
use std::ffi::{c_char, CStr};
use std::panic::{catch_unwind, AssertUnwindSafe};

/// What a podcache call did. Every function that can fail returns one of these.
///
/// Zero and positive values are outcomes, not errors: `PODCACHE_OK`, `PODCACHE_NOT_FOUND` (a
/// key is absent), `PODCACHE_EMPTY` (no message yet), `PODCACHE_TIMEOUT` (no message before the
/// timeout). Negative values are errors; each one also sets the calling thread's error detail
/// (see `podcache_last_error`). The values are stable: a value's meaning never changes, and new
/// codes get new values (treat an unknown negative value as an error).
#[repr(i32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum podcache_status {
    /// Success.
    PODCACHE_OK = 0,
    /// The key is absent (or expired). Not an error.
    PODCACHE_NOT_FOUND = 1,
    /// No message is waiting (`podcache_subscriber_try_recv`). Not an error.
    PODCACHE_EMPTY = 2,
    /// The timeout passed with no message (`podcache_subscriber_recv`). Not an error.
    PODCACHE_TIMEOUT = 3,
    /// The value or message does not fit the buffer; the length it needs was stored where the
    /// call reports lengths. Nothing was consumed: call again with a larger buffer.
    PODCACHE_ERR_BUFFER_TOO_SMALL = -1,
    /// No file at the path (has the writer created it yet?).
    PODCACHE_ERR_NO_FILE = -2,
    /// The file exists but its writer has not finished creating it. Wait and retry (or open
    /// with a wait).
    PODCACHE_ERR_NOT_READY = -3,
    /// The file has a layout version this library does not read. The detail says which side
    /// to upgrade.
    PODCACHE_ERR_VERSION_MISMATCH = -4,
    /// The file holds the other kind of structure (a ring where a table was expected, or the
    /// reverse).
    PODCACHE_ERR_WRONG_KIND = -5,
    /// The file is shorter than its header says (or than a header).
    PODCACHE_ERR_TRUNCATED = -6,
    /// Not a podcache file at all (its first 8 bytes are not a podcache magic, or it is not a
    /// regular file).
    PODCACHE_ERR_FOREIGN = -7,
    /// The file holds bytes no podcache writer produces (bad header checksum, impossible
    /// layout, a record whose checksum or sequence does not match). Never served as data.
    PODCACHE_ERR_CORRUPT = -8,
    /// Another operating-system error (permissions, ...); the detail has the OS message.
    PODCACHE_ERR_IO = -9,
    /// A get gave up after the writer recycled the record under it many times in a row (a
    /// writer cycling through the whole table faster than one get copies one value). Retry.
    PODCACHE_ERR_CONTENDED = -10,
    /// A receive was lapped on every retry (a writer overwriting the ring faster than this
    /// reader copies one message). Calling again retries.
    PODCACHE_ERR_OVERRUN = -11,
    /// A NULL handle or pointer where one is required, a length too large, overlapping buffers,
    /// or a value outside its enumeration.
    PODCACHE_ERR_INVALID_ARGUMENT = -12,
    /// A bug in podcache: a Rust panic was caught at the boundary. The handle may be left in
    /// an unspecified (but memory-safe) state: close it.
    PODCACHE_ERR_PANIC = -13,
}

pub use podcache_status::*;

impl podcache_status {
    /// The static message of this code.
    pub(crate) fn message(self) -> &'static CStr {
        match self {
            PODCACHE_OK => c"ok",
            PODCACHE_NOT_FOUND => c"key not found",
            PODCACHE_EMPTY => c"no message waiting",
            PODCACHE_TIMEOUT => c"timed out with no message",
            PODCACHE_ERR_BUFFER_TOO_SMALL => c"buffer too small",
            PODCACHE_ERR_NO_FILE => c"no such file (has the writer created it?)",
            PODCACHE_ERR_NOT_READY => c"file not ready (the writer is still creating it)",
            PODCACHE_ERR_VERSION_MISMATCH => c"file has another layout version",
            PODCACHE_ERR_WRONG_KIND => c"file holds another kind of structure",
            PODCACHE_ERR_TRUNCATED => c"file is truncated",
            PODCACHE_ERR_FOREIGN => c"not a podcache file",
            PODCACHE_ERR_CORRUPT => c"file is corrupt",
            PODCACHE_ERR_IO => c"input/output error",
            PODCACHE_ERR_CONTENDED => c"gave up: the writer recycles memory faster than this get copies",
            PODCACHE_ERR_OVERRUN => c"lapped on every retry: the writer overwrites faster than this reader copies",
            PODCACHE_ERR_INVALID_ARGUMENT => c"invalid argument",
            PODCACHE_ERR_PANIC => c"internal error (a bug in podcache)",
        }
    }

    const ALL: [podcache_status; 17] = [
        PODCACHE_OK,
        PODCACHE_NOT_FOUND,
        PODCACHE_EMPTY,
        PODCACHE_TIMEOUT,
        PODCACHE_ERR_BUFFER_TOO_SMALL,
        PODCACHE_ERR_NO_FILE,
        PODCACHE_ERR_NOT_READY,
        PODCACHE_ERR_VERSION_MISMATCH,
        PODCACHE_ERR_WRONG_KIND,
        PODCACHE_ERR_TRUNCATED,
        PODCACHE_ERR_FOREIGN,
        PODCACHE_ERR_CORRUPT,
        PODCACHE_ERR_IO,
        PODCACHE_ERR_CONTENDED,
        PODCACHE_ERR_OVERRUN,
        PODCACHE_ERR_INVALID_ARGUMENT,
        PODCACHE_ERR_PANIC,
    ];

    /// The code of value `v`, if it is one.
    pub(crate) fn from_i32(v: i32) -> Option<podcache_status> {
        Self::ALL.into_iter().find(|s| *s as i32 == v)
    }
}

/// An error on its way to the boundary: the code returned and the detail kept for
/// `podcache_last_error`.
#[derive(Debug)]
pub(crate) struct Failure {
    pub(crate) code: podcache_status,
    pub(crate) detail: String,
}

impl Failure {
    pub(crate) fn invalid(what: &str) -> Failure {
        Failure { code: PODCACHE_ERR_INVALID_ARGUMENT, detail: format!("invalid argument: {what}") }
    }
}

impl From<OpenError> for Failure {
    fn from(e: OpenError) -> Failure {
        let code = match &e {
            OpenError::NotFound { .. } => PODCACHE_ERR_NO_FILE,
            OpenError::NotReady { .. } => PODCACHE_ERR_NOT_READY,
            OpenError::VersionMismatch { .. } => PODCACHE_ERR_VERSION_MISMATCH,
            OpenError::WrongKind { .. } => PODCACHE_ERR_WRONG_KIND,
            OpenError::Truncated { .. } => PODCACHE_ERR_TRUNCATED,
            OpenError::Foreign { .. } => PODCACHE_ERR_FOREIGN,
            OpenError::Corrupt { .. } => PODCACHE_ERR_CORRUPT,
            OpenError::Io { .. } => PODCACHE_ERR_IO,
            // `OpenError` is non-exhaustive: a variant added later is an I/O-level failure
            // until this library learns it (the detail still says what it is).
            _ => PODCACHE_ERR_IO,
        };
        Failure { code, detail: e.to_string() }
    }
}

impl From<GetError> for Failure {
    fn from(e: GetError) -> Failure {
        let code = match e {
            GetError::BufferTooSmall { .. } => PODCACHE_ERR_BUFFER_TOO_SMALL,
            GetError::Corrupt { .. } => PODCACHE_ERR_CORRUPT,
            GetError::Contended => PODCACHE_ERR_CONTENDED,
            _ => PODCACHE_ERR_CORRUPT,
        };
        Failure { code, detail: e.to_string() }
    }
}

impl From<RecvError> for Failure {
    fn from(e: RecvError) -> Failure {
        let code = match e {
            RecvError::BufferTooSmall { .. } => PODCACHE_ERR_BUFFER_TOO_SMALL,
            RecvError::Corrupt { .. } => PODCACHE_ERR_CORRUPT,
            RecvError::Overrun => PODCACHE_ERR_OVERRUN,
            _ => PODCACHE_ERR_CORRUPT,
        };
        Failure { code, detail: e.to_string() }
    }
}

thread_local! {
    /// The detail of the last error on this thread, NUL-free text.
    static LAST_ERROR: RefCell<String> = const { RefCell::new(String::new()) };
}

fn set_last_error(detail: &str) {
    // `try_with`: a call made while this thread's locals are being destroyed (from a C
    // destructor) keeps no detail rather than panicking.
    let _ = LAST_ERROR.try_with(|l| {
        if let Ok(mut s) = l.try_borrow_mut() {
            s.clear();
            // The detail is copied out as a C string: no interior NUL.
            s.extend(detail.chars().map(|c| if c == '\0' { '?' } else { c }));
        }
    });
}

/// Copy this thread's last error detail into `out` (see `podcache_last_error`).
pub(crate) fn copy_last_error(out: &mut [u8]) -> usize {
    LAST_ERROR
        .try_with(|l| {
            let Ok(s) = l.try_borrow() else { return 0 };
            if let Some(room) = out.len().checked_sub(1) {
                let n = s.len().min(room);
                out[..n].copy_from_slice(&s.as_bytes()[..n]);
                out[n] = 0;
            }
            s.len()
        })
        .unwrap_or(0)
}

/// Run the body of an entry point: its error becomes a status code and this thread's error
/// detail, and a panic is caught here, so no unwind crosses into C.
pub(crate) fn guard(body: impl FnOnce() -> Result<podcache_status, Failure>) -> podcache_status {
    // AssertUnwindSafe: after a panic the handle is reported (PODCACHE_ERR_PANIC) as being in
    // an unspecified state; every state it can be left in is memory-safe (plain counters and
    // positions, no invariant whose breakage leads to UB: every read validates what it reads).
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(status)) => status,
        Ok(Err(failure)) => {
            set_last_error(&failure.detail);
            failure.code
        }
        Err(payload) => {
            let what = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            set_last_error(&format!("internal error (a bug in podcache, please report it): {what}"));
            PODCACHE_ERR_PANIC
        }
    }
}

/// The static, NUL-terminated English message of status `code` (an `int32_t` so that any
/// value can be passed: an unknown one gets "unknown status code"). Never NULL; the string
/// lives as long as the program; do not free it. Thread-safe.
#[no_mangle]
pub extern "C" fn podcache_error_message(code: i32) -> *const c_char {
    match podcache_status::from_i32(code) {
        Some(s) => s.message().as_ptr(),
        None => c"unknown status code".as_ptr(),
    }
}

/// Copy the detail of the last error returned on the calling thread (which file, which
/// versions, what was corrupt; one line of English) into `buf`, NUL-terminated and truncated
/// to `buf_len - 1` bytes. Returns the detail's full length in bytes (without the NUL), so a
/// return value `>= buf_len` means it was truncated; `buf` may be NULL when `buf_len` is 0 to
/// ask the length. 0 if no error happened on this thread yet.
///
/// Each negative status sets the detail; calls that succeed leave it unchanged (as `errno`).
/// Thread-safe: each thread has its own detail.
///
/// # Safety
///
/// `buf` must be valid for writes of `buf_len` bytes (or `buf_len` must be 0).
#[no_mangle]
pub unsafe extern "C" fn podcache_last_error(buf: *mut c_char, buf_len: usize) -> usize {
    // No guard needed: nothing here can panic (slicing is bounds-checked by construction);
    // still run under catch_unwind so that no unwind can ever cross.
    catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: the caller guarantees `buf` is valid for `buf_len` writable bytes when it is
        // not NULL; `out_slice` returns an empty slice for NULL or zero length.
        let out = unsafe { crate::args::out_slice(buf.cast::<u8>(), buf_len) };
        match out {
            Ok(out) => copy_last_error(out),
            Err(_) => 0,
        }
    }))
    .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn last_error() -> String {
        let mut buf = [0u8; 256];
        let n = copy_last_error(&mut buf);
        String::from_utf8_lossy(&buf[..n.min(255)]).into_owned()
    }

    #[test]
    fn a_panic_becomes_a_status_and_a_detail() {
        let status = guard(|| panic!("boom"));
        assert_eq!(status, PODCACHE_ERR_PANIC);
        assert!(last_error().contains("boom"), "{}", last_error());
        // A success leaves the detail alone (as errno).
        assert_eq!(guard(|| Ok(PODCACHE_OK)), PODCACHE_OK);
        assert!(last_error().contains("boom"));
    }

    #[test]
    fn every_code_has_a_message_and_round_trips() {
        for s in podcache_status::ALL {
            assert_eq!(podcache_status::from_i32(s as i32), Some(s));
            assert!(!s.message().to_bytes().is_empty());
        }
        assert_eq!(podcache_status::from_i32(-1000), None);
    }
}
