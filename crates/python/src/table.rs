//! `podcache.Table`: gets from a key-value table.

use crate::errors::{get_error, open_error};
use crate::key::key_bytes;
use crate::wait::{deadline, lock, next_slice};
use podcache_reader::{GetError, TableReader};
use pyo3::exceptions::{PyKeyError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyType};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Instant;

/// Bytes of the buffer a get copies a value into before it knows the value's size; it grows
/// to the largest value met.
const FIRST_BUF: usize = 4096;

/// An open table and the buffer its gets copy into.
struct Open {
    reader: TableReader,
    buf: Vec<u8>,
}

impl Open {
    fn get<'py>(&mut self, py: Python<'py>, key: &[u8]) -> PyResult<Option<Bound<'py, PyBytes>>> {
        loop {
            match self.reader.get(key, &mut self.buf) {
                Ok(Some(len)) => return Ok(Some(PyBytes::new(py, &self.buf[..len]))),
                Ok(None) => return Ok(None),
                // Nothing was returned: grow and get again (the value may have changed).
                Err(GetError::BufferTooSmall { needed }) => self.buf.resize(needed, 0),
                Err(e) => return Err(get_error(py, e)),
            }
        }
    }
}

/// Open the table at `path`, retrying a missing or not-ready file until `wait` seconds have
/// passed (`None`: no limit), with the GIL released, in slices between which signals are
/// handled.
pub(crate) fn open_table(py: Python<'_>, path: &Path, wait: Option<f64>) -> PyResult<TableReader> {
    let deadline = deadline(wait)?;
    loop {
        let slice = next_slice(deadline);
        match py.detach(|| TableReader::open_wait(path, slice)) {
            Ok(r) => return Ok(r),
            Err(e) if e.is_transient() && deadline.is_none_or(|d| Instant::now() < d) => py.check_signals()?,
            Err(e) => return Err(open_error(py, e)),
        }
    }
}

/// A key-value table, opened read-only. See `python/podcache/_podcache.pyi` for the Python
/// documentation.
#[pyclass(module = "podcache", name = "Table", frozen)]
pub(crate) struct Table {
    path: PathBuf,
    state: Mutex<Option<Open>>,
}

impl Table {
    /// Run `f` on the open table; `ValueError` once closed.
    #[inline]
    fn with<R>(&self, f: impl FnOnce(&mut Open) -> PyResult<R>) -> PyResult<R> {
        let mut guard = lock(&self.state, "Table")?;
        match guard.as_mut() {
            Some(open) => f(open),
            None => Err(PyValueError::new_err("operation on a closed podcache.Table")),
        }
    }
}

#[pymethods]
impl Table {
    #[new]
    #[pyo3(signature = (path, *, wait = Some(0.0)))]
    fn new(py: Python<'_>, path: PathBuf, wait: Option<f64>) -> PyResult<Table> {
        let reader = open_table(py, &path, wait)?;
        Ok(Table { path, state: Mutex::new(Some(Open { reader, buf: vec![0; FIRST_BUF] })) })
    }

    /// The value of `key`, or `None`.
    fn get<'py>(&self, py: Python<'py>, key: &Bound<'py, PyAny>) -> PyResult<Option<Bound<'py, PyBytes>>> {
        let key = key_bytes(key)?;
        self.with(|o| o.get(py, key))
    }

    /// The values of `keys` in order (`None` for a missing key).
    fn get_many<'py>(&self, py: Python<'py>, keys: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyList>> {
        let objs = keys.try_iter()?.collect::<PyResult<Vec<_>>>()?;
        let keys = objs.iter().map(key_bytes).collect::<PyResult<Vec<&[u8]>>>()?;
        self.with(|o| {
            let mut out: Vec<Option<Bound<'py, PyBytes>>> = vec![None; keys.len()];
            let mut too_big = Vec::new();
            let mut failed = None;
            o.reader.get_many(&keys, &mut o.buf, |i, r| match r {
                Ok(Some(v)) => out[i] = Some(PyBytes::new(py, v)),
                Ok(None) => {}
                Err(GetError::BufferTooSmall { .. }) => too_big.push(i),
                Err(e) => {
                    failed.get_or_insert(e);
                }
            });
            if let Some(e) = failed {
                return Err(get_error(py, e));
            }
            for i in too_big {
                out[i] = o.get(py, keys[i])?;
            }
            PyList::new(py, out)
        })
    }

    fn __contains__(&self, py: Python<'_>, key: &Bound<'_, PyAny>) -> PyResult<bool> {
        let key = key_bytes(key)?;
        self.with(|o| o.reader.contains(key).map_err(|e| get_error(py, e)))
    }

    fn __getitem__<'py>(&self, py: Python<'py>, key: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyBytes>> {
        let k = key_bytes(key)?;
        self.with(|o| o.get(py, k))?.ok_or_else(|| PyKeyError::new_err(key.clone().unbind()))
    }

    /// The live keys, as a list of `bytes` (a snapshot per slot).
    fn keys<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        self.with(|o| {
            let mut out = Vec::new();
            for k in o.reader.keys() {
                out.push(PyBytes::new(py, &k.map_err(|e| get_error(py, e))?));
            }
            PyList::new(py, out)
        })
    }

    /// The writer's statistics, kept in the file.
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let s = self.with(|o| Ok(o.reader.stats()))?;
        let d = PyDict::new(py);
        d.set_item("items", s.items)?;
        d.set_item("bytes_used", s.bytes_used)?;
        d.set_item("bytes_capacity", s.bytes_capacity)?;
        d.set_item("puts", s.puts)?;
        d.set_item("deletes", s.deletes)?;
        d.set_item("evictions", s.evictions)?;
        d.set_item("expirations", s.expirations)?;
        d.set_item("clears", s.clears)?;
        Ok(d)
    }

    /// This reader's own counters, kept in this process.
    fn counters<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let c = self.with(|o| Ok(o.reader.counters()))?;
        let d = PyDict::new(py);
        d.set_item("hits", c.hits)?;
        d.set_item("misses", c.misses)?;
        d.set_item("retries", c.retries)?;
        Ok(d)
    }

    #[getter]
    fn writer_epoch(&self) -> PyResult<u64> {
        self.with(|o| Ok(o.reader.writer_epoch()))
    }

    #[getter]
    fn path(&self) -> String {
        self.path.to_string_lossy().into_owned()
    }

    #[getter]
    fn closed(&self) -> PyResult<bool> {
        Ok(lock(&self.state, "Table")?.is_none())
    }

    fn is_retired(&self) -> PyResult<bool> {
        self.with(|o| Ok(o.reader.is_retired()))
    }

    fn file_replaced(&self) -> PyResult<bool> {
        self.with(|o| Ok(o.reader.file_replaced()))
    }

    #[pyo3(signature = (*, wait = Some(0.0)))]
    fn reopen(&self, py: Python<'_>, wait: Option<f64>) -> PyResult<()> {
        // Open first, without the lock (the open may wait with the GIL released).
        let reader = open_table(py, &self.path, wait)?;
        self.with(|o| {
            o.reader = reader;
            Ok(())
        })
    }

    /// Unmap the file. Later calls raise `ValueError`; closing again does nothing.
    fn close(&self) -> PyResult<()> {
        lock(&self.state, "Table")?.take();
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
        format!("podcache.Table({:?})", self.path.to_string_lossy())
    }
}
