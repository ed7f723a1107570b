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

/// Hint to the CPU that we are spinning (loom: yield to the model scheduler).
#[inline]
#[cfg_attr(loom, allow(dead_code))]
pub(crate) fn spin_hint() {
    #[cfg(loom)]
    loom::thread::yield_now();
    #[cfg(not(loom))]
    std::hint::spin_loop();
}
