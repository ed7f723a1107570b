//! Blocking: a reader's wait on the futex and the writer's wake.
//!
//! The futex word is the low half of `tail`, which changes on every commit. A blocked reader
//! (1) observes `tail == T` (the load that found the ring empty), (2) starts a stopwatch, (3)
//! keeps loading `tail`, each load after a stopwatch read, until a read says twice the wake
//! window passed and the load after it still returns `T`, then (4) calls `FUTEX_WAIT(tail, T)`
//! with the low half of `T`. The kernel refuses the sleep if `tail` changed after that last
//! load, so only a commit the writer makes while the reader sleeps can leave it asleep, and
//! that commit came at least two windows after the one before it (the reader saw `T` for that
//! long): the adaptive writer wakes every such commit (docs/design.md §3.6).

use super::reader::RingReader;
#[cfg(feature = "write")]
use super::writer::RingWriter;
use super::*;
use crate::clock::Stopwatch;
#[cfg(not(loom))]
use crate::sync::spin_hint;
#[cfg(not(loom))]
use std::time::Instant;

/// How long a reader spins before sleeping when the writer's policy is not adaptive (so its
/// sleep does not depend on the spin): long enough to catch a reply to a message it just sent.
const SPIN_NOT_ADAPTIVE: Duration = Duration::from_micros(20);
/// Longest nap of a reader of a ring whose writer never wakes ([`WakePolicy::Never`]).
const NAP: Duration = Duration::from_micros(200);

#[cfg(feature = "write")]
impl RingWriter {
    /// Wake every reader blocked in [`RingReader::wait`] (they re-check the ring and sleep
    /// again if it has nothing new for them).
    pub fn wake(&self) {
        wake_readers(&self.region);
    }
}

/// Wake every reader blocked on the ring in `region` (a writer attaching, closing or retiring
/// the file: readers then re-check the ring and the file's state). A region too short to hold
/// the word (a file of another kind being replaced) has nobody to wake.
pub fn wake_readers(region: &Region) {
    if (W_TAIL as u64 + 1) * 8 <= region.len_bytes() {
        futex::wake_all(region, W_TAIL);
    }
}

impl RingReader {
    /// Wait until a message may be available or `deadline` passes (`None`: no deadline).
    /// Spins first (for twice the writer's adaptive window), then sleeps on the futex word.
    /// Returns whether data is there.
    ///
    /// Under `--cfg loom` the deadline must be `None` (loom has no time).
    pub fn wait(&mut self, deadline: Option<Instant>) -> bool {
        // The first observation of `T`: if it says "empty", `cached_tail == pos == T`.
        if self.has_data() {
            return true;
        }
        // Relaxed: the policy is a hint of how long to spin, read once; any value is safe
        // (a nonsense one is read as the default by `from_word`).
        let policy = WakePolicy::from_word(self.region.words()[W_WAKE_WINDOW].load(Ordering::Relaxed));
        let spin = match policy {
            WakePolicy::Adaptive(window) => window * 2,
            WakePolicy::Always | WakePolicy::Never => SPIN_NOT_ADAPTIVE,
        };
        let spin = spin.as_nanos() as u64;
        // Started after the first observation: every stopwatch reading below bounds from
        // below how long `tail` has been `T`, as long as a load after that reading sees `T`.
        let clock = Stopwatch::start();
        let deadline = deadline_ns(&clock, deadline);
        let mut spins = 0u32;
        loop {
            // The clock first, then the load: a commit after this load is after this reading.
            let now = clock.elapsed_ns();
            if self.has_data() {
                return true;
            }
            if deadline.is_some_and(|d| now >= d) {
                return false;
            }
            if now >= spin {
                break;
            }
            spins = spins.wrapping_add(1);
            // Under loom no yield: the loop is bounded (every clock read advances the logical
            // clock), and loom would not run a yielding thread on while another can run, so
            // the spin could never end before the writer's next commit.
            #[cfg(not(loom))]
            if spins.is_multiple_of(64) {
                std::thread::yield_now();
            } else {
                spin_hint();
            }
        }
        // Every load since the first observation returned `T`, the last one after a reading of
        // at least two windows. Sleep until the word differs from that last load's low half.
        loop {
            let left = deadline.map(|d| Duration::from_nanos(d.saturating_sub(clock.elapsed_ns())));
            if left.is_some_and(|l| l.is_zero()) {
                return self.has_data();
            }
            let expected = self.cached_tail as u32;
            match policy {
                WakePolicy::Never => nap(left.map_or(NAP, |l| l.min(NAP))),
                WakePolicy::Always | WakePolicy::Adaptive(_) => futex::wait(&self.region, W_TAIL, expected, left),
            }
            // A wake, a timeout, a signal or a changed word: re-check. If `tail` is still `T`,
            // the reader still saw it unchanged for two windows, and sleeps again.
            if self.has_data() {
                return true;
            }
        }
    }
}

/// `deadline` in stopwatch nanoseconds.
#[cfg(not(loom))]
fn deadline_ns(clock: &Stopwatch, deadline: Option<Instant>) -> Option<u64> {
    deadline.map(|d| clock.at(d))
}

#[cfg(loom)]
fn deadline_ns(_clock: &Stopwatch, deadline: Option<Instant>) -> Option<u64> {
    assert!(deadline.is_none(), "loom models wait without a deadline (loom has no time)");
    None
}

#[cfg(loom)]
use std::time::Instant;

/// Sleep for `d` (a reader of a writer that never wakes).
fn nap(d: Duration) {
    #[cfg(not(loom))]
    std::thread::sleep(d);
    #[cfg(loom)]
    {
        let _ = d;
        loom::thread::yield_now();
    }
}

#[cfg(not(loom))]
use crate::futex;

/// Futex wait and wake for loom models: loom has no futex, so a wait locks a mutex, compares
/// the word and waits on a condition variable, and a wake locks the mutex and notifies every
/// waiter. That is the kernel's contract: the compare and the enqueue are atomic with respect
/// to a wake, so a wake that follows a store either finds the waiter queued or the waiter's
/// compare sees the store. One condition variable serves every word (a model has one ring; a
/// wake meant for another word is a spurious wake-up, which every waiter tolerates). Timeouts
/// are not modelled: a model's waits have no deadline.
#[cfg(loom)]
mod futex {
    use crate::region::Region;
    use crate::sync::Ordering;
    use loom::sync::{Condvar, Mutex};
    use std::time::Duration;

    loom::lazy_static! {
        static ref QUEUE: (Mutex<()>, Condvar) = (Mutex::new(()), Condvar::new());
    }

    pub(crate) fn wait(region: &Region, index: usize, expected: u32, _timeout: Option<Duration>) {
        let guard = QUEUE.0.lock().unwrap();
        // Relaxed: the mutex orders this compare against every wake (as the kernel's futex
        // bucket lock does).
        if region.words()[index].load(Ordering::Relaxed) as u32 == expected {
            drop(QUEUE.1.wait(guard).unwrap());
        }
    }

    pub(crate) fn wake_all(_region: &Region, _index: usize) {
        let _guard = QUEUE.0.lock().unwrap();
        QUEUE.1.notify_all();
    }
}
