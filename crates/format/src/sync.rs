//! The one place atomics come from.
//!
//! Under `--cfg loom` every atomic, fence and spin hint is loom's, so the protocols in
//! [`crate::ring`] can be model-checked on a heap region. Everything else in the crate imports
//! from here, never from `std::sync::atomic` directly.
//!
//! Loom models only Acquire fences, so the protocols are written with Release *stores* and
//! Acquire *fences* (never Release fences).

#[cfg(loom)]
pub(crate) use loom::sync::atomic::{fence, AtomicU64, Ordering};

#[cfg(not(loom))]
pub(crate) use std::sync::atomic::{fence, AtomicU64, Ordering};

/// An acquire load that is valid on read-only memory: a `Relaxed` load followed by an
/// `Acquire` fence.
///
/// A reader's mapping is `PROT_READ`, and std only promises that small `Relaxed` atomic loads
/// work on read-only memory (an `Acquire` load may be compiled to an instruction that needs
/// write access on some targets). A `Relaxed` load followed by an `Acquire` fence
/// synchronises with the same `Release` stores an `Acquire` load would (the fence's
/// release-acquire rule), so every reader-side acquire goes through here. On x86_64 both forms
/// compile to a plain load; on aarch64 this is a load and a `dmb ishld`.
#[inline(always)]
pub(crate) fn load_acquire(word: &AtomicU64) -> u64 {
    let v = word.load(Ordering::Relaxed);
    fence(Ordering::Acquire);
    v
}

/// Hint to the CPU that we are spinning (loom: yield to the model scheduler).
#[inline]
#[cfg_attr(loom, allow(dead_code))]
pub(crate) fn spin_hint() {
    #[cfg(loom)]
    loom::thread::yield_now();
    #[cfg(not(loom))]
    std::hint::spin_loop();
}
