//! Blocking: a reader's wait on the futex and the writer's wake.

use super::reader::RingReader;
use super::writer::RingWriter;
use super::*;
#[cfg(not(loom))]
use crate::sync::spin_hint;
#[cfg(not(loom))]
use std::sync::Arc;
#[cfg(not(loom))]
use std::time::Instant;

impl RingWriter {
    /// Bump the notify word and wake every reader blocked on it.
    pub fn wake(&self) {
        let w = self.region.words();
        let n = w[W_NOTIFY].load(Ordering::Relaxed).wrapping_add(1) & 0xffff_ffff;
        // SYNC: Release, pairs with the Acquire load of notify in RingReader::wait.
        w[W_NOTIFY].store(n, Ordering::Release);
        #[cfg(not(loom))]
        crate::futex::wake_all(&self.region, W_NOTIFY);
    }
}

impl RingReader {
    /// Wait until a message may be available or `deadline` passes. Spins first (for twice the
    /// writer's adaptive window), then sleeps on the futex word. Returns whether data is there.
    #[cfg(not(loom))]
    pub fn wait(&mut self, deadline: Instant) -> bool {
        let region = Arc::clone(&self.region);
        let w = region.words();
        // SYNC: Acquire, pairs with the Release store of notify in RingWriter::wake.
        let mut notified = w[W_NOTIFY].load(Ordering::Acquire);
        if self.has_data() {
            return true;
        }
        let policy = WakePolicy::from_word(w[W_WAKE_WINDOW].load(Ordering::Relaxed));
        let spin_for = match policy {
            WakePolicy::Adaptive(window) => window.saturating_mul(2),
            WakePolicy::Always | WakePolicy::Never => Duration::from_micros(20),
        };
        let spin_until = Instant::now() + spin_for;
        let mut spins = 0u32;
        loop {
            if self.has_data() {
                return true;
            }
            let t = Instant::now();
            if t >= deadline {
                return false;
            }
            if t >= spin_until {
                break;
            }
            spins += 1;
            if spins.is_multiple_of(64) {
                std::thread::yield_now();
            } else {
                spin_hint();
            }
        }
        loop {
            let t = Instant::now();
            if t >= deadline {
                return self.has_data();
            }
            let nap = deadline - t;
            match policy {
                WakePolicy::Never => std::thread::sleep(nap.min(Duration::from_micros(200))),
                _ => crate::futex::wait(&self.region, W_NOTIFY, notified as u32, nap),
            }
            if self.has_data() {
                return true;
            }
            // SYNC: Acquire, as above.
            notified = w[W_NOTIFY].load(Ordering::Acquire);
            if self.has_data() {
                return true;
            }
        }
    }
}
