//! Rust errors to Python exceptions.
//!
//! The exception classes are plain Python (`python/podcache/_errors.py`, where each is
//! documented), looked up once per process. Their meanings are those of the Rust errors:
//!
//! | Rust                                         | Python                                  |
//! |----------------------------------------------|-----------------------------------------|
//! | `OpenError::NotFound`                        | `FileNotFound` (also a `FileNotFoundError`) |
//! | `OpenError::NotReady`                        | `NotReady`                              |
//! | `OpenError::VersionMismatch`                 | `VersionMismatch` (`.found`, `.expected`) |
//! | `OpenError::WrongKind`                       | `WrongKind`                             |
//! | `OpenError::Foreign`                         | `Foreign` (a `Corrupt`)                 |
//! | `OpenError::Corrupt`, `OpenError::Truncated` | `Corrupt`                               |
//! | `OpenError::Io`                              | `Error`, caused by the `OSError`        |
//! | `GetError::Corrupt`, `RecvError::Corrupt`    | `Corrupt`                               |
//! | `GetError::Contended`                        | `Contended`                             |
//! | `RecvError::Overrun`                         | `Overrun`                               |
//!
//! Every exception derives from `podcache.Error` and carries the file's `path` (`None` for
//! errors of a get or receive, which do not know it).

use podcache_reader::{GetError, OpenError, RecvError};
use pyo3::exceptions::PyOSError;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyType;
use std::path::Path;

/// The module that defines the exception classes.
const MODULE: &str = "podcache._errors";

/// `podcache._errors.<name>`, looked up once.
fn class<'py>(py: Python<'py>, cell: &'static PyOnceLock<Py<PyType>>, name: &str) -> PyResult<&'py Bound<'py, PyType>> {
    cell.import(py, MODULE, name)
}

macro_rules! classes {
    ($($fn_name:ident => $py_name:literal),* $(,)?) => {
        $(
            fn $fn_name(py: Python<'_>) -> PyResult<&Bound<'_, PyType>> {
                static CELL: PyOnceLock<Py<PyType>> = PyOnceLock::new();
                class(py, &CELL, $py_name)
            }
        )*
    };
}

classes! {
    base_class => "Error",
    not_found_class => "FileNotFound",
    not_ready_class => "NotReady",
    version_class => "VersionMismatch",
    wrong_kind_class => "WrongKind",
    foreign_class => "Foreign",
    corrupt_class => "Corrupt",
    contended_class => "Contended",
    overrun_class => "Overrun",
}

/// An exception of class `cls` with the message `msg` and the attribute `path`.
fn make(cls: PyResult<&Bound<'_, PyType>>, msg: String, path: Option<&Path>) -> PyErr {
    let built = (|| {
        let exc = cls?.call1((msg,))?;
        exc.setattr("path", path.map(|p| p.to_string_lossy().into_owned()))?;
        Ok::<_, PyErr>(exc)
    })();
    match built {
        Ok(exc) => PyErr::from_value(exc),
        // The package is broken (its _errors module missing): say that, not something else.
        Err(e) => e,
    }
}

/// An [`OpenError`] as a Python exception.
pub(crate) fn open_error(py: Python<'_>, e: OpenError) -> PyErr {
    let msg = e.to_string();
    match &e {
        OpenError::NotFound { path } => {
            let built = (|| {
                // An OSError subclass: (errno, strerror, filename) fills errno and filename.
                let exc = not_found_class(py)?.call1((ENOENT, msg, path.to_string_lossy().into_owned()))?;
                exc.setattr("path", path.to_string_lossy().into_owned())?;
                Ok::<_, PyErr>(exc)
            })();
            built.map_or_else(|e| e, PyErr::from_value)
        }
        OpenError::NotReady { path } => make(not_ready_class(py), msg, Some(path)),
        OpenError::VersionMismatch { path, found, expected } => {
            let err = make(version_class(py), msg, Some(path));
            let v = err.value(py);
            if let Err(e) = v.setattr("found", *found).and_then(|()| v.setattr("expected", *expected)) {
                return e;
            }
            err
        }
        OpenError::WrongKind { path, .. } => make(wrong_kind_class(py), msg, Some(path)),
        OpenError::Foreign { path, .. } => make(foreign_class(py), msg, Some(path)),
        OpenError::Corrupt { path, .. } | OpenError::Truncated { path, .. } => make(corrupt_class(py), msg, Some(path)),
        OpenError::Io { path, source } => {
            let err = make(base_class(py), msg, Some(path));
            let cause = PyOSError::new_err((source.raw_os_error().unwrap_or(0), source.to_string()));
            err.set_cause(py, Some(cause));
            err
        }
        // `OpenError` is non-exhaustive: a kind added later is at least a podcache.Error.
        _ => make(base_class(py), msg, None),
    }
}

/// `ENOENT`: 2 on every Linux architecture (the reader is Linux-only).
const ENOENT: i32 = 2;

/// A [`GetError`] as a Python exception. `BufferTooSmall` never reaches here (the caller grows
/// its buffer).
pub(crate) fn get_error(py: Python<'_>, e: GetError) -> PyErr {
    let msg = e.to_string();
    match e {
        GetError::Corrupt { .. } => make(corrupt_class(py), msg, None),
        GetError::Contended => make(contended_class(py), msg, None),
        _ => make(base_class(py), msg, None),
    }
}

/// A [`RecvError`] as a Python exception (`BufferTooSmall` never reaches here).
pub(crate) fn recv_error(py: Python<'_>, e: RecvError) -> PyErr {
    let msg = e.to_string();
    match e {
        RecvError::Corrupt { .. } => make(corrupt_class(py), msg, None),
        RecvError::Overrun => make(overrun_class(py), msg, None),
        _ => make(base_class(py), msg, None),
    }
}
