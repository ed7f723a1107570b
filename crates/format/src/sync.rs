//! The one place atomics come from.
//!
//! Under `--cfg loom` every atomic, fence and spin hint is loom's, so the protocols in
//! [`crate::ring`] can be model-checked on a heap region. Everything else in the crate imports
//! from here, never from `std::sync::atomic` directly.
//!
//! The protocols are written with Release *stores* and Acquire *fences*, with one exception:
//! the Release fence after the ring writer's lease store, which orders a loan's Relaxed payload
//! stores (loom 0.7 models Release fences too, and the loan models check that one).

#[cfg(loom)]
pub use crash::crash_after_stores;
#[cfg(loom)]
pub use crash::AtomicU64;
#[cfg(loom)]
pub(crate) use loom::sync::atomic::{fence, Ordering};

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

/// Under loom: loom's atomic word, with a crash switch for recovery models. A model arms it
/// with [`crash_after_stores`]; the store that would exceed the budget panics instead, so the
/// region holds exactly the stores a writer killed at that instruction leaves (every store
/// before it, in program order, none after), and the model catches the panic and recovers.
#[cfg(loom)]
mod crash {
    use std::cell::Cell;

    std::thread_local! {
        /// Stores left before the crash; `usize::MAX`: never. Per OS thread, so that models
        /// run in parallel by the test harness do not share it (loom runs a model's threads
        /// on the OS thread that called it).
        static BUDGET: Cell<usize> = const { Cell::new(usize::MAX) };
    }

    /// Let the next `n` stores to shared words happen, then panic at the one after (`None`:
    /// disarm). Meant for a model's single thread while it runs the operation to crash.
    pub fn crash_after_stores(n: Option<usize>) {
        BUDGET.with(|b| b.set(n.unwrap_or(usize::MAX)));
    }

    /// A shared word.
    #[derive(Debug)]
    pub struct AtomicU64(loom::sync::atomic::AtomicU64);

    impl AtomicU64 {
        /// A word holding `v`.
        pub fn new(v: u64) -> AtomicU64 {
            AtomicU64(loom::sync::atomic::AtomicU64::new(v))
        }

        /// As loom's `load`.
        #[inline]
        pub fn load(&self, order: loom::sync::atomic::Ordering) -> u64 {
            self.0.load(order)
        }

        /// As loom's `fetch_add` (the loom clock's; no writer uses read-modify-writes, so the
        /// crash budget does not count them).
        #[inline]
        pub fn fetch_add(&self, v: u64, order: loom::sync::atomic::Ordering) -> u64 {
            self.0.fetch_add(v, order)
        }

        /// As loom's `store`, unless the crash budget is spent: then it panics.
        #[inline]
        pub fn store(&self, v: u64, order: loom::sync::atomic::Ordering) {
            let left = BUDGET.with(Cell::get);
            if left != usize::MAX {
                if left == 0 {
                    panic!("simulated crash");
                }
                BUDGET.with(|b| b.set(left - 1));
            }
            self.0.store(v, order);
        }
    }
}
