//! `podcache_subscriber_*`: reading a broadcast ring.

use crate::args::{self, out_slice};
use crate::status::{guard, podcache_status, Failure, PODCACHE_EMPTY, PODCACHE_OK, PODCACHE_TIMEOUT};
use podcache_reader::{Msg, RecvError, Start, Subscriber};
use std::ffi::c_char;

/// A subscriber of a ring, read-only, with its own cursor. Opaque: created by
/// `podcache_subscriber_open`, freed by `podcache_subscriber_close`.
///
/// Thread-safety: a handle may be passed to another thread, but must not be used by two
/// threads at the same time (a receive moves its cursor). Each thread that reads the ring opens
/// its own subscriber: every subscriber sees every message (a broadcast ring).
pub struct podcache_subscriber {
    sub: Subscriber,
}

// The documented contract above: the handle may move between threads.
const _: () = {
    const fn send<T: Send>() {}
    send::<podcache_subscriber>();
};

/// Where a new subscriber starts.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum podcache_start {
    /// At the oldest message still in the ring.
    PODCACHE_START_OLDEST = 0,
    /// After the newest message: only messages published from now on.
    PODCACHE_START_NEWEST = 1,
}

/// What a receive returned with a message.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct podcache_msg {
    /// Payload length in bytes (with `PODCACHE_ERR_BUFFER_TOO_SMALL`: the length needed).
    pub len: usize,
    /// Sequence number (the first message of a ring has sequence 1; +1 per message).
    pub seq: u64,
    /// Messages this subscriber lost just before this one because the writer overwrote them
    /// (it was lapped); 0 normally.
    pub lost: u64,
}

/// A subscriber's counters and the writer's position (a snapshot).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct podcache_subscriber_stats {
    /// Messages lost to laps since this subscriber opened (the sum of `podcache_msg.lost`).
    pub lost: u64,
    /// Times this subscriber was lapped.
    pub laps: u64,
    /// Bytes published and not yet read by this subscriber (more than `capacity` means it
    /// will be lapped).
    pub backlog_bytes: u64,
    /// The writer's oldest intact position (bytes since the ring was created).
    pub oldest_position: u64,
    /// The writer's committed end position (bytes ever published).
    pub end_position: u64,
    /// Sequence number the writer gives its next message.
    pub next_seq: u64,
    /// The writer epoch: 1 for the creator, +1 for every writer that re-attached since.
    pub writer_epoch: u64,
    /// Largest message of this ring: a buffer this big always fits.
    pub max_message: u64,
}

/// The subscriber of a non-NULL handle.
///
/// # Safety
///
/// `s` must be NULL or a handle from `podcache_subscriber_open` not yet closed, not used by
/// another thread during the call.
unsafe fn handle<'a>(s: *mut podcache_subscriber) -> Result<&'a mut Subscriber, Failure> {
    // SAFETY: the caller guarantees `s` is NULL or a live handle (a Box leaked by
    // `podcache_subscriber_open`) that only this thread uses during the call.
    match unsafe { s.as_mut() } {
        Some(s) => Ok(&mut s.sub),
        None => Err(Failure::invalid("subscriber handle is NULL")),
    }
}

/// The subscriber of a non-NULL handle, for reading its counters.
///
/// # Safety
///
/// As [`handle`].
unsafe fn handle_ref<'a>(s: *const podcache_subscriber) -> Result<&'a Subscriber, Failure> {
    // SAFETY: the caller guarantees `s` is NULL or a live handle that no other thread uses
    // during the call.
    match unsafe { s.as_ref() } {
        Some(s) => Ok(&s.sub),
        None => Err(Failure::invalid("subscriber handle is NULL")),
    }
}

/// Open the ring file at `path` read-only and subscribe at `start` (a `podcache_start` value:
/// `PODCACHE_START_OLDEST` or `PODCACHE_START_NEWEST`). Waits up to `wait_ms` milliseconds for a
/// file that does not exist yet or is not ready (0: do not wait; negative: as long as it
/// takes). Nothing is ever written to the file: the writer never waits for a subscriber.
///
/// On success stores a new handle in `*out` and returns `PODCACHE_OK`; on failure stores NULL
/// there and returns an error as `podcache_table_open` does (`PODCACHE_ERR_INVALID_ARGUMENT`
/// also for an unknown `start`).
///
/// # Safety
///
/// `path` must be NULL or a NUL-terminated string; `out` must be NULL or valid for a write of
/// one pointer.
#[no_mangle]
pub unsafe extern "C" fn podcache_subscriber_open(
    path: *const c_char,
    start: u32,
    wait_ms: i64,
    out: *mut *mut podcache_subscriber,
) -> podcache_status {
    guard(|| {
        if out.is_null() {
            return Err(Failure::invalid("out is NULL"));
        }
        // SAFETY: `out` is not NULL and the caller guarantees it is valid for a write.
        unsafe { out.write(std::ptr::null_mut()) };
        // SAFETY: the caller guarantees `path` is NULL or NUL-terminated.
        let path = unsafe { args::path(path) }?;
        let start = match start {
            s if s == podcache_start::PODCACHE_START_OLDEST as u32 => Start::Oldest,
            s if s == podcache_start::PODCACHE_START_NEWEST as u32 => Start::Newest,
            other => return Err(Failure::invalid(&format!("start {other} is not a podcache_start"))),
        };
        let sub = Subscriber::builder(path).start(start).wait_ready(args::timeout(wait_ms)).open()?;
        let handle = Box::into_raw(Box::new(podcache_subscriber { sub }));
        // SAFETY: as above.
        unsafe { out.write(handle) };
        Ok(PODCACHE_OK)
    })
}

/// Store a receive's result in `*msg` and turn it into a status.
fn report(
    got: Result<Option<Msg>, RecvError>,
    none: podcache_status,
    msg: *mut podcache_msg,
) -> Result<podcache_status, Failure> {
    let (status, m) = match got {
        Ok(Some(m)) => (Ok(PODCACHE_OK), podcache_msg { len: m.len, seq: m.seq, lost: m.lost }),
        Ok(None) => (Ok(none), podcache_msg::default()),
        Err(RecvError::BufferTooSmall { needed }) => {
            (Err(RecvError::BufferTooSmall { needed }.into()), podcache_msg { len: needed, ..Default::default() })
        }
        Err(e) => (Err(e.into()), podcache_msg::default()),
    };
    if !msg.is_null() {
        // SAFETY: not NULL; the caller guarantees it is valid for a write.
        unsafe { msg.write(m) };
    }
    status
}

/// Copy the next message into `buf` (`buf_len` bytes; `max_message` bytes always fit, see
/// `podcache_subscriber_get_stats`) without blocking.
///
/// Returns `PODCACHE_OK` with the message's length, sequence number and losses in `*msg`;
/// `PODCACHE_EMPTY` if no message is waiting; `PODCACHE_ERR_BUFFER_TOO_SMALL` with the length
/// needed in `msg->len` (the message is not consumed: call again with a larger buffer);
/// `PODCACHE_ERR_CORRUPT` (the ring holds bytes no writer produces: nothing is skipped; call
/// `podcache_subscriber_skip_to_newest` to go on); `PODCACHE_ERR_OVERRUN` (lapped on every
/// retry: call again); `PODCACHE_ERR_INVALID_ARGUMENT`. `msg` may be NULL.
///
/// Being lapped is not an error: the writer never waits, so a subscriber that falls more than
/// a ring behind jumps to the oldest message still there, and that message's `msg->lost` says
/// how many it missed. Every message is copied, then validated (not overwritten meanwhile,
/// sequence, checksum): a torn or partial message is never returned.
///
/// # Safety
///
/// `sub` must be NULL or an open handle no other thread uses during the call; `buf` valid for
/// writes of `buf_len` bytes (may be NULL if `buf_len` is 0); `msg` NULL or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn podcache_subscriber_try_recv(
    sub: *mut podcache_subscriber,
    buf: *mut u8,
    buf_len: usize,
    msg: *mut podcache_msg,
) -> podcache_status {
    guard(|| {
        // SAFETY: the caller's contract on `sub`.
        let sub = unsafe { handle(sub) }?;
        // SAFETY: the caller guarantees `buf_len` writable bytes at `buf`.
        let buf = unsafe { out_slice(buf, buf_len) }?;
        report(sub.try_recv(buf), PODCACHE_EMPTY, msg)
    })
}

/// Like `podcache_subscriber_try_recv`, but waits up to `timeout_ms` milliseconds for a
/// message (negative: no limit; 0: do not wait), and returns `PODCACHE_TIMEOUT` if none came.
///
/// The wait spins briefly, then sleeps in the kernel (a futex on a word of the shared mapping,
/// which works across containers and on a read-only mount) until the writer publishes. The
/// calling thread is blocked meanwhile; no other podcache call is held up, and a signal does
/// not end the wait early (use a finite timeout to check for shutdown).
///
/// # Safety
///
/// As `podcache_subscriber_try_recv`.
#[no_mangle]
pub unsafe extern "C" fn podcache_subscriber_recv(
    sub: *mut podcache_subscriber,
    buf: *mut u8,
    buf_len: usize,
    timeout_ms: i64,
    msg: *mut podcache_msg,
) -> podcache_status {
    guard(|| {
        // SAFETY: the caller's contract on `sub`.
        let sub = unsafe { handle(sub) }?;
        // SAFETY: the caller guarantees `buf_len` writable bytes at `buf`.
        let buf = unsafe { out_slice(buf, buf_len) }?;
        report(sub.recv_timeout(buf, args::timeout(timeout_ms)), PODCACHE_TIMEOUT, msg)
    })
}

/// Skip every message not read yet: the next one received is the next one published (also the
/// way past a `PODCACHE_ERR_CORRUPT` record). Returns `PODCACHE_OK` or
/// `PODCACHE_ERR_INVALID_ARGUMENT`.
///
/// # Safety
///
/// `sub` must be NULL or an open handle no other thread uses during the call.
#[no_mangle]
pub unsafe extern "C" fn podcache_subscriber_skip_to_newest(sub: *mut podcache_subscriber) -> podcache_status {
    guard(|| {
        // SAFETY: the caller's contract on `sub`.
        unsafe { handle(sub) }?.skip_to_newest();
        Ok(PODCACHE_OK)
    })
}

/// Store the subscriber's counters (messages lost to laps, laps) and a snapshot of the
/// writer's position in `*out`. Returns `PODCACHE_OK` or `PODCACHE_ERR_INVALID_ARGUMENT`.
///
/// # Safety
///
/// `sub` must be NULL or an open handle no other thread uses during the call; `out` NULL or
/// valid for a write.
#[no_mangle]
pub unsafe extern "C" fn podcache_subscriber_get_stats(
    sub: *const podcache_subscriber,
    out: *mut podcache_subscriber_stats,
) -> podcache_status {
    guard(|| {
        // SAFETY: the caller's contract on `sub`.
        let sub = unsafe { handle_ref(sub) }?;
        if out.is_null() {
            return Err(Failure::invalid("out is NULL"));
        }
        let (oldest_position, end_position) = sub.writer_span();
        let stats = podcache_subscriber_stats {
            lost: sub.lost(),
            laps: sub.laps(),
            backlog_bytes: sub.backlog_bytes(),
            oldest_position,
            end_position,
            next_seq: sub.writer_next_seq(),
            writer_epoch: sub.writer_epoch(),
            max_message: sub.max_message() as u64,
        };
        // SAFETY: not NULL; the caller guarantees it is valid for a write.
        unsafe { out.write(stats) };
        Ok(PODCACHE_OK)
    })
}

/// The largest message of the subscriber's ring in bytes: a buffer of this size never gets
/// `PODCACHE_ERR_BUFFER_TOO_SMALL`. 0 if `sub` is NULL.
///
/// # Safety
///
/// `sub` must be NULL or an open handle no other thread uses during the call.
#[no_mangle]
pub unsafe extern "C" fn podcache_subscriber_max_message(sub: *const podcache_subscriber) -> usize {
    let mut n = 0;
    guard(|| {
        // SAFETY: the caller's contract on `sub`.
        n = unsafe { handle_ref(sub) }?.max_message();
        Ok(PODCACHE_OK)
    });
    n
}

/// Close the subscriber `*sub` points to and set `*sub` to NULL, so that closing the same
/// variable twice is harmless. `sub` NULL or `*sub` NULL: nothing to do. Never fails.
///
/// Closing a copy of a handle that was already closed through another variable is a
/// use-after-free, as with `free`.
///
/// # Safety
///
/// `sub` must be NULL or point to a variable holding NULL or an open handle that no other
/// thread uses.
#[no_mangle]
pub unsafe extern "C" fn podcache_subscriber_close(sub: *mut *mut podcache_subscriber) {
    guard(|| {
        if sub.is_null() {
            return Ok(PODCACHE_OK);
        }
        // SAFETY: not NULL; the caller guarantees it points to a readable and writable handle
        // variable.
        let s = unsafe { sub.replace(std::ptr::null_mut()) };
        if !s.is_null() {
            // SAFETY: `s` came from `Box::into_raw` in `podcache_subscriber_open` and was not
            // freed: the caller guarantees an open handle, and the variable now holds NULL.
            drop(unsafe { Box::from_raw(s) });
        }
        Ok(PODCACHE_OK)
    });
}
