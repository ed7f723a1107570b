//! `podcache.Subscriber`: a broadcast ring's messages, in order.

use crate::errors::{open_error, recv_error};
use crate::wait::{deadline, lock, next_slice};
use podcache_reader::{Msg, OpenError, RecvError, Start, Subscriber as RustSubscriber};
use pyo3::exceptions::{PyStopIteration, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyType};
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Bytes of the first receive buffer; it grows to the largest message met (never to what the
/// file claims as the largest message).
const FIRST_BUF: usize = 4096;

/// An open subscriber, its receive buffer and what it received last.
struct Open {
    sub: RustSubscriber,
    buf: Vec<u8>,
    last: Option<Msg>,
}

impl Open {
    /// Receive the next message into `buf`, waiting up to `timeout` (zero: poll). Runs with the
    /// GIL released.
    fn recv(&mut self, timeout: Duration) -> Result<Option<Msg>, RecvError> {
        loop {
            let got = if timeout.is_zero() {
                self.sub.try_recv(&mut self.buf)
            } else {
                self.sub.recv_timeout(&mut self.buf, timeout)
            };
            match got {
                // The message was not consumed: grow and read it again.
                Err(RecvError::BufferTooSmall { needed }) => self.buf.resize(needed, 0),
                Ok(Some(m)) => {
                    self.last = Some(m);
                    return Ok(Some(m));
                }
                other => return other,
            }
        }
    }
}

/// A subscriber of a broadcast ring, opened read-only. See `python/podcache/_podcache.pyi`.
#[pyclass(module = "podcache", name = "Subscriber", frozen)]
pub(crate) struct Subscriber {
    path: PathBuf,
    state: Mutex<Option<Open>>,
}

impl Subscriber {
    fn with<R>(&self, f: impl FnOnce(&mut Open) -> PyResult<R>) -> PyResult<R> {
        let mut guard = lock(&self.state, "Subscriber")?;
        match guard.as_mut() {
            Some(open) => f(open),
            None => Err(PyValueError::new_err("operation on a closed podcache.Subscriber")),
        }
    }

    /// Receive with `deadline` (`None`: none): waits in slices with the GIL released,
    /// handling signals between them. The lock is held throughout, so another thread using
    /// this subscriber meanwhile gets a `RuntimeError` rather than blocking with the GIL.
    fn recv_until<'py>(&self, py: Python<'py>, deadline: Option<Instant>) -> PyResult<Option<Bound<'py, PyBytes>>> {
        self.with(|o| {
            loop {
                let slice = next_slice(deadline);
                let got = if slice.is_zero() {
                    // Nothing to wait for: no reason to release the GIL.
                    o.recv(slice)
                } else {
                    py.detach(|| o.recv(slice))
                };
                match got {
                    Ok(Some(m)) => return Ok(Some(PyBytes::new(py, &o.buf[..m.len]))),
                    Ok(None) if slice.is_zero() => return Ok(None),
                    Ok(None) => py.check_signals()?,
                    Err(e) => return Err(recv_error(py, e)),
                }
            }
        })
    }
}

#[pymethods]
impl Subscriber {
    #[new]
    #[pyo3(signature = (path, start = "oldest", *, wait = Some(0.0)))]
    fn new(py: Python<'_>, path: PathBuf, start: &str, wait: Option<f64>) -> PyResult<Subscriber> {
        let start = match start {
            "oldest" => Start::Oldest,
            "newest" => Start::Newest,
            other => {
                return Err(PyValueError::new_err(format!("start is \"oldest\" or \"newest\", not {other:?}")));
            }
        };
        let deadline = deadline(wait)?;
        let sub = loop {
            let slice = next_slice(deadline);
            let opened: Result<RustSubscriber, OpenError> =
                py.detach(|| RustSubscriber::builder(&path).start(start).wait_ready(slice).open());
            match opened {
                Ok(s) => break s,
                Err(e) if e.is_transient() && deadline.is_none_or(|d| Instant::now() < d) => py.check_signals()?,
                Err(e) => return Err(open_error(py, e)),
            }
        };
        let open = Open { sub, buf: vec![0; FIRST_BUF], last: None };
        Ok(Subscriber { path, state: Mutex::new(Some(open)) })
    }

    /// The next message, waiting up to `timeout` seconds (`None`: as long as it takes).
    #[pyo3(signature = (timeout = None))]
    fn recv<'py>(&self, py: Python<'py>, timeout: Option<f64>) -> PyResult<Option<Bound<'py, PyBytes>>> {
        // Zero: one poll (an elapsed deadline waits no slice).
        self.recv_until(py, deadline(timeout)?)
    }

    /// The next message if there is one now, else `None`. Never blocks.
    fn try_recv<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyBytes>>> {
        self.with(|o| match o.recv(Duration::ZERO) {
            Ok(Some(m)) => Ok(Some(PyBytes::new(py, &o.buf[..m.len]))),
            Ok(None) => Ok(None),
            Err(e) => Err(recv_error(py, e)),
        })
    }

    fn __iter__(slf: Bound<'_, Self>) -> Bound<'_, Self> {
        slf
    }

    fn __next__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyBytes>> {
        // Without a deadline `recv_until` returns only a message or an error.
        self.recv_until(py, None)?.ok_or_else(|| PyStopIteration::new_err(()))
    }

    /// Skip everything not yet read.
    fn skip_to_newest(&self) -> PyResult<()> {
        self.with(|o| {
            o.sub.skip_to_newest();
            Ok(())
        })
    }

    #[getter]
    fn lost(&self) -> PyResult<u64> {
        self.with(|o| Ok(o.sub.lost()))
    }

    #[getter]
    fn laps(&self) -> PyResult<u64> {
        self.with(|o| Ok(o.sub.laps()))
    }

    #[getter]
    fn last_seq(&self) -> PyResult<Option<u64>> {
        self.with(|o| Ok(o.last.map(|m| m.seq)))
    }

    #[getter]
    fn last_lost(&self) -> PyResult<Option<u64>> {
        self.with(|o| Ok(o.last.map(|m| m.lost)))
    }

    #[getter]
    fn max_message(&self) -> PyResult<usize> {
        self.with(|o| Ok(o.sub.max_message()))
    }

    #[getter]
    fn backlog_bytes(&self) -> PyResult<u64> {
        self.with(|o| Ok(o.sub.backlog_bytes()))
    }

    #[getter]
    fn writer_epoch(&self) -> PyResult<u64> {
        self.with(|o| Ok(o.sub.writer_epoch()))
    }

    fn is_retired(&self) -> PyResult<bool> {
        self.with(|o| Ok(o.sub.is_retired()))
    }

    #[getter]
    fn path(&self) -> String {
        self.path.to_string_lossy().into_owned()
    }

    #[getter]
    fn closed(&self) -> PyResult<bool> {
        Ok(lock(&self.state, "Subscriber")?.is_none())
    }

    /// Unmap the file. Later calls raise `ValueError`; closing again does nothing.
    fn close(&self) -> PyResult<()> {
        lock(&self.state, "Subscriber")?.take();
        Ok(())
    }

    fn __enter__(slf: Bound<'_, Self>) -> Bound<'_, Self> {
        slf
    }

    #[pyo3(signature = (_exc_type = None, _exc = None, _tb = None))]
    fn __exit__(
        &self,
        _exc_type: Option<&Bound<'_, PyType>>,
        _exc: Option<&Bound<'_, PyAny>>,
        _tb: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<bool> {
        self.close()?;
        Ok(false)
    }

    fn __repr__(&self) -> String {
        format!("podcache.Subscriber({:?})", self.path.to_string_lossy())
    }
}
