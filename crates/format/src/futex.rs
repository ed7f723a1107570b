//! Futex wait and wake on a word of a shared file mapping.
//!
//! Not `FUTEX_PRIVATE`: the futex key of a shared file mapping is (inode, offset), so waiters
//! and wakers in different processes, containers and PID namespaces meet. `FUTEX_WAIT` only
//! reads the word, so it works on a reader's `PROT_READ` mapping.
//!
//! The futex is the low 32 bits (little-endian: the first four bytes) of a 64-bit word of the
//! mapping; the ring uses its `tail` word, which changes on every commit. The kernel compares
//! only those 32 bits, so a sleeper misses a change of the word only if it changed by an exact
//! multiple of 2^32 (docs/design.md §3.6).

use crate::region::Region;
use rustix::thread::futex;
use std::time::Duration;

/// Sleep while the low 32 bits of word `index` equal `expected`, at most `timeout` (`None`:
/// until woken). Returns on wake, timeout, signal or a changed value; the caller re-checks its
/// condition.
pub(crate) fn wait(region: &Region, index: usize, expected: u32, timeout: Option<Duration>) {
    let ts = timeout.map(|t| rustix::time::Timespec {
        tv_sec: t.as_secs().min(i64::MAX as u64) as i64,
        tv_nsec: i64::from(t.subsec_nanos()),
    });
    // Errors (EAGAIN: value changed, ETIMEDOUT, EINTR) all mean "re-check": ignore them.
    let _ = futex::wait(region.futex_half(index), futex::Flags::empty(), expected, ts.as_ref());
}

/// Wake every waiter on word `index`. The caller's store to the word comes first in program
/// order; the syscall orders it before the kernel looks for waiters, so a waiter either sees
/// the store in its compare or is queued and woken.
pub(crate) fn wake_all(region: &Region, index: usize) {
    // Errors cannot happen for a valid, aligned address; nothing to do about one anyway.
    let _ = futex::wake(region.futex_half(index), futex::Flags::empty(), i32::MAX as u32);
}
