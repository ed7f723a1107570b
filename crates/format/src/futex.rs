//! Futex wait and wake on a word of a shared file mapping.
//!
//! Not `FUTEX_PRIVATE`: the futex key of a shared file mapping is (inode, offset), so waiters
//! and wakers in different processes, containers and PID namespaces meet. `FUTEX_WAIT` only
//! reads the word, so it works on a reader's `PROT_READ` mapping.
//!
//! The notify word is a 64-bit word whose low 32 bits (little-endian: the first four bytes)
//! are the futex; the writer keeps the high half zero.

use crate::region::Region;
use rustix::thread::futex;
use std::sync::atomic::AtomicU32;
use std::time::Duration;

const _: () = assert!(cfg!(target_endian = "little"), "the futex word is the low half of a LE word");

fn futex_word(region: &Region, index: usize) -> &AtomicU32 {
    let ptr = region.word_ptr(index).cast::<AtomicU32>();
    // SAFETY: `ptr` is the 8-aligned address of a live word of `region`, so its first 4 bytes
    // are a valid, aligned `AtomicU32` for the lifetime of `&region`. This reference is only
    // handed to the kernel (which reads the word); Rust code never loads through it, so no
    // mixed-size atomic access happens in this process.
    unsafe { &*ptr }
}

/// Sleep while the low 32 bits of word `index` equal `expected`, at most `timeout`.
/// Returns on wake, timeout, signal or a changed value; the caller re-checks its condition.
pub(crate) fn wait(region: &Region, index: usize, expected: u32, timeout: Duration) {
    let ts = rustix::time::Timespec {
        tv_sec: timeout.as_secs().min(i64::MAX as u64) as i64,
        tv_nsec: i64::from(timeout.subsec_nanos()),
    };
    // Errors (EAGAIN: value changed, ETIMEDOUT, EINTR) all mean "re-check": ignore them.
    let _ = futex::wait(futex_word(region, index), futex::Flags::empty(), expected, Some(&ts));
}

/// Wake every waiter on word `index`.
pub(crate) fn wake_all(region: &Region, index: usize) {
    let _ = futex::wake(futex_word(region, index), futex::Flags::empty(), i32::MAX as u32);
}
