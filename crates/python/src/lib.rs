//! # podcache-python
//!
//! The `podcache._podcache` extension module: [`podcache_reader`] for Python, built by maturin
//! into the `podcache` package (`python/podcache`, which re-exports it with the exception
//! classes and type stubs). One abi3 wheel serves CPython 3.10 and later.
//!
//! - `Table(path)`: gets from a key-value table, each value copied out of shared memory and
//!   validated by the Rust reader, then handed to Python as a new `bytes`.
//! - `Subscriber(path, start="oldest")`: a broadcast ring's messages in order; `recv` sleeps
//!   on the ring's futex with the GIL released.
//!
//! Like the Rust reader, nothing here writes to the file: it is opened `O_RDONLY` and mapped
//! `PROT_READ`. Errors become the exception classes of `podcache/_errors.py` (the table in `src/errors.rs`).
//!
//! Thread safety: the Rust readers are `Send` but not `Sync` (their counters and cursors are
//! plain cells), so each Python object keeps its reader in a `Mutex`. With the GIL held the
//! lock is never contended, except by a `Subscriber.recv` that waits with the GIL released:
//! another thread using that same subscriber meanwhile gets a `RuntimeError` instead of
//! waiting for the lock (which could deadlock on the GIL).

#![deny(missing_docs)]

mod errors;
mod key;
mod subscriber;
mod table;
mod wait;

use pyo3::prelude::*;

/// The extension module `podcache._podcache`.
#[pymodule]
fn _podcache(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<table::Table>()?;
    m.add_class::<subscriber::Subscriber>()?;
    Ok(())
}
