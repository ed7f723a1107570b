//! Waiting with the GIL released, in bounded slices, so Ctrl-C still works.

use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use std::sync::{Mutex, MutexGuard, TryLockError};
use std::time::{Duration, Instant};

/// Longest single wait with the GIL released: between two, pending signals are handled
/// (`KeyboardInterrupt` raised), so a wait "forever" can be interrupted.
pub(crate) const SLICE: Duration = Duration::from_millis(50);

/// A deadline `seconds` from now: `None` for `None` (no limit) and for a wait too long to add.
pub(crate) fn deadline(seconds: Option<f64>) -> PyResult<Option<Instant>> {
    match seconds {
        None => Ok(None),
        Some(s) => {
            let d = Duration::try_from_secs_f64(s)
                .map_err(|_| PyValueError::new_err(format!("a timeout is a number of seconds >= 0, not {s}")))?;
            Ok(Instant::now().checked_add(d))
        }
    }
}

/// The next slice to wait before `deadline`: zero once it has passed.
pub(crate) fn next_slice(deadline: Option<Instant>) -> Duration {
    match deadline {
        None => SLICE,
        Some(d) => d.saturating_duration_since(Instant::now()).min(SLICE),
    }
}

/// Lock the state of a Python object. Never blocks: with the GIL held the lock is free unless
/// another thread holds it while waiting with the GIL released (`Subscriber.recv`), and
/// blocking here, GIL held, could then deadlock; that thread's use is reported instead.
pub(crate) fn lock<'a, T>(m: &'a Mutex<T>, what: &str) -> PyResult<MutexGuard<'a, T>> {
    match m.try_lock() {
        Ok(g) => Ok(g),
        // A panic (a bug) while the lock was held: the state is counters and a cursor, still
        // usable; the panic itself was raised as an exception.
        Err(TryLockError::Poisoned(p)) => Ok(p.into_inner()),
        Err(TryLockError::WouldBlock) => Err(PyRuntimeError::new_err(format!(
            "this {what} is in use by another thread (waiting in recv); use one per thread"
        ))),
    }
}
