//! The ring writer's clock for adaptive waking: how long since a commit, read once per commit.
//!
//! `Instant::now()` costs about 130 instructions here (the vDSO's `clock_gettime`), a third of
//! a 64-byte publish. Where the CPU's time-stamp counter is a trustworthy clock (x86_64 with
//! an invariant TSC, and the kernel itself timing with it, so it is synchronised across cores),
//! a commit reads the TSC instead (`rdtsc`, a few cycles). The TSC's rate is measured against
//! `Instant` over the first [`CALIBRATE_FOR`] of commits, during which commits read both, so
//! there is no start-up pause; on other machines `Instant` is used throughout.
//!
//! Neither clock read is ordered after the tail store that precedes it (`clock_gettime` uses
//! `rdtscp` or `lfence; rdtsc`, which do not drain the store buffer either): a stamp can be
//! early by the time a store takes to leave the core, tens of nanoseconds, against windows of
//! microseconds. The TSC window is shortened by [`MARGIN`] to cover that and the calibration
//! error, which only makes the writer wake a little more often.
//!
//! Under `--cfg loom` both the writer's stamps and a reader's [`Stopwatch`] read a **logical
//! clock** instead: a counter that every read advances by one with an `AcqRel` read-modify-write
//! and that a model can advance by any amount ([`advance_logical_clock`]: time passing while a
//! thread is preempted). The real clocks cannot be modelled (loom has no time); the logical one
//! is a stand-in that loom can explore, and it is a little stronger than a real clock: its reads
//! synchronise with each other, which the proof in docs/design.md §3.6 uses only within the
//! margin discussed there.

use std::time::{Duration, Instant};

/// How long commits read both clocks before the TSC is trusted alone.
pub(crate) const CALIBRATE_FOR: Duration = Duration::from_millis(20);
/// Fraction of the window a TSC gap must reach to count as a whole window.
const MARGIN: f64 = 0.9;

/// A point in time in the clock's own units (see [`WakeClock`]).
type Stamp = u64;

enum Mode {
    /// Nanoseconds since `origin` from `Instant`.
    Instant,
    /// As `Instant`, while measuring the TSC rate since (`at`, `tsc`).
    Calibrating { at: Instant, tsc: u64 },
    /// TSC ticks; `window` is the wake window in ticks.
    Tsc { window: u64 },
}

/// Stamps commits and says whether a wake window passed between two stamps.
pub(crate) struct WakeClock {
    origin: Instant,
    window: Duration,
    mode: Mode,
    /// Stamps taken just after the last two commits' tail stores, newest first.
    commits: [Option<Stamp>; 2],
}

impl WakeClock {
    /// A clock for windows of `window`.
    pub(crate) fn new(window: Duration) -> WakeClock {
        let origin = Instant::now();
        let mode = match tsc() {
            Some(tsc) if tsc_is_a_clock() => Mode::Calibrating { at: origin, tsc },
            _ => Mode::Instant,
        };
        WakeClock { origin, window, mode, commits: [None, None] }
    }

    /// Called just after a commit's tail store: whether readers may be asleep and need a wake.
    ///
    /// `done` is read after this tail store; the stamp two commits ago was taken after that
    /// commit's store and so before the previous commit's store. `done - two_ago` therefore
    /// bounds the true gap between the previous and this tail store from above: a reader that
    /// saw the old tail for 2 windows is asleep only if this is >= one window (docs/design.md
    /// §3, and the module documentation for what "after" means for a clock read).
    #[inline]
    pub(crate) fn commit_needs_wake(&mut self) -> bool {
        let (done, new_units) = self.stamp();
        if new_units {
            self.commits = [None, None];
        }
        let [last, two_ago] = self.commits;
        self.commits = [Some(done), last];
        two_ago.is_none_or(|t| self.window_passed(t, done))
    }

    /// Now. Returns `true` as second value when the units changed (calibration finished):
    /// earlier stamps must be dropped.
    #[inline]
    fn stamp(&mut self) -> (Stamp, bool) {
        match self.mode {
            Mode::Tsc { .. } => (tsc().unwrap_or(0), false),
            Mode::Instant => (self.now_ns(), false),
            Mode::Calibrating { at, tsc: tsc0 } => self.calibrate(at, tsc0),
        }
    }

    #[cold]
    fn calibrate(&mut self, at: Instant, tsc0: u64) -> (Stamp, bool) {
        let now = Instant::now();
        let ticks = tsc().unwrap_or(0);
        let took = now.duration_since(at);
        if took < CALIBRATE_FOR {
            return (self.nanos(now), false);
        }
        let per_ns = ticks.wrapping_sub(tsc0) as f64 / took.as_nanos() as f64;
        self.mode = if per_ns.is_finite() && per_ns > 0.01 {
            Mode::Tsc { window: (self.window.as_nanos() as f64 * per_ns * MARGIN) as u64 }
        } else {
            Mode::Instant
        };
        (self.stamp().0, true)
    }

    /// Whether at least a window passed from `earlier` to `later` (stamps of this clock).
    #[inline]
    fn window_passed(&self, earlier: Stamp, later: Stamp) -> bool {
        let gap = later.saturating_sub(earlier);
        match self.mode {
            Mode::Tsc { window } => gap >= window,
            Mode::Instant | Mode::Calibrating { .. } => gap >= self.window.as_nanos() as u64,
        }
    }

    /// Whether stamps come from the TSC (for tests and docs).
    #[cfg(all(test, not(loom)))]
    fn on_tsc(&self) -> bool {
        matches!(self.mode, Mode::Tsc { .. })
    }

    fn nanos(&self, t: Instant) -> Stamp {
        t.duration_since(self.origin).as_nanos() as u64
    }

    /// Now, in nanoseconds since `origin` (loom: logical ticks).
    #[inline]
    fn now_ns(&self) -> Stamp {
        #[cfg(not(loom))]
        return self.nanos(Instant::now());
        #[cfg(loom)]
        return logical_now();
    }
}

/// A reader's stopwatch for its spin before sleeping: nanoseconds since it was started
/// (`CLOCK_MONOTONIC` through `Instant`; loom: logical ticks).
pub(crate) struct Stopwatch {
    #[cfg(not(loom))]
    origin: Instant,
    #[cfg(loom)]
    origin: u64,
}

impl Stopwatch {
    /// Start now.
    #[inline]
    pub(crate) fn start() -> Stopwatch {
        #[cfg(not(loom))]
        return Stopwatch { origin: Instant::now() };
        #[cfg(loom)]
        return Stopwatch { origin: logical_now() };
    }

    /// Nanoseconds (loom: ticks) since the start.
    #[inline]
    pub(crate) fn elapsed_ns(&self) -> u64 {
        #[cfg(not(loom))]
        return self.origin.elapsed().as_nanos().min(u128::from(u64::MAX)) as u64;
        #[cfg(loom)]
        return logical_now() - self.origin;
    }

    /// `deadline` as nanoseconds since the start (0 if it is past).
    #[cfg(not(loom))]
    pub(crate) fn at(&self, deadline: Instant) -> u64 {
        deadline.saturating_duration_since(self.origin).as_nanos().min(u128::from(u64::MAX)) as u64
    }
}

#[cfg(loom)]
loom::lazy_static! {
    /// The logical clock of a loom execution (reset for each execution).
    static ref LOGICAL: crate::sync::AtomicU64 = crate::sync::AtomicU64::new(0);
}

/// Read the logical clock, advancing it by one tick.
#[cfg(loom)]
fn logical_now() -> u64 {
    // AcqRel: a clock read happens after every read it returns a later value than; see the
    // module docs.
    LOGICAL.fetch_add(1, crate::sync::Ordering::AcqRel) + 1
}

/// Let `ticks` of logical time pass (loom models: a thread preempted for that long).
#[cfg(loom)]
pub(crate) fn advance_logical_clock(ticks: u64) {
    // AcqRel: as in `logical_now`.
    LOGICAL.fetch_add(ticks, crate::sync::Ordering::AcqRel);
}

/// The time-stamp counter, where there is one.
#[inline]
fn tsc() -> Option<u64> {
    #[cfg(all(target_arch = "x86_64", not(loom)))]
    {
        // SAFETY: `rdtsc` exists on every x86_64 CPU and has no preconditions.
        Some(unsafe { std::arch::x86_64::_rdtsc() })
    }
    #[cfg(not(all(target_arch = "x86_64", not(loom))))]
    None
}

/// Whether the TSC ticks at a constant rate in every power state (CPUID 0x8000_0007 EDX bit
/// 8) and the kernel keeps time with it (so it found it synchronised across CPUs). Asked once
/// per process.
fn tsc_is_a_clock() -> bool {
    #[cfg(all(target_arch = "x86_64", not(loom)))]
    {
        static ANSWER: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *ANSWER.get_or_init(|| {
            let invariant = std::arch::x86_64::__cpuid(0x8000_0000).eax >= 0x8000_0007
                && std::arch::x86_64::__cpuid(0x8000_0007).edx & (1 << 8) != 0;
            let source = std::fs::read_to_string("/sys/devices/system/clocksource/clocksource0/current_clocksource");
            invariant && source.is_ok_and(|s| s.trim() == "tsc")
        })
    }
    #[cfg(not(all(target_arch = "x86_64", not(loom))))]
    false
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn windows_are_measured_before_and_after_calibration() {
        let window = Duration::from_millis(50);
        let mut c = WakeClock::new(window);
        // "No window passed" can only be asserted as "soon": a loaded machine may preempt us
        // between two stamps for longer than any window.
        let back_to_back = |c: &mut WakeClock| {
            (0..1000).any(|_| {
                let (a, _) = c.stamp();
                let (b, _) = c.stamp();
                !c.window_passed(a, b)
            })
        };
        assert!(back_to_back(&mut c), "back-to-back stamps are within a window");
        // Run until calibration ends (on machines without a usable TSC it never does).
        let start = Instant::now();
        let mut changed = false;
        let mut last = 0;
        while start.elapsed() < CALIBRATE_FOR * 2 {
            let (s, ch) = c.stamp();
            changed |= ch;
            last = s;
        }
        assert_eq!(changed, c.on_tsc(), "the units change exactly when the TSC takes over");
        std::thread::sleep(window * 2);
        let (after, _) = c.stamp();
        assert!(c.window_passed(last, after), "two windows of sleep count as a window");
        assert!(back_to_back(&mut c), "back-to-back stamps are within a window after calibration");
    }

    #[test]
    fn commits_wake_until_two_are_close_and_again_after_a_quiet_window() {
        let window = Duration::from_millis(50);
        let mut c = WakeClock::new(window);
        assert!(c.commit_needs_wake() && c.commit_needs_wake(), "no commit two ago: wake");
        // Back to back, the third commit on needs no wake (asserted as "soon": see above).
        assert!((0..1000).any(|_| !c.commit_needs_wake()), "close commits stop waking");
        std::thread::sleep(window * 2);
        assert!(c.commit_needs_wake(), "after a quiet gap of two windows: wake");
    }
}
