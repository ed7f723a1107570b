//! Keys from Python: `bytes` as they are, `str` as its UTF-8 bytes.

use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyString};

/// The bytes of the key `key` (a `bytes` or a `str`), borrowed from the Python object: no copy
/// (a `str`'s UTF-8 form is cached by CPython; abi3 has the call for it since 3.10).
#[inline]
pub(crate) fn key_bytes<'a>(key: &'a Bound<'_, PyAny>) -> PyResult<&'a [u8]> {
    if let Ok(b) = key.cast::<PyBytes>() {
        Ok(b.as_bytes())
    } else if let Ok(s) = key.cast::<PyString>() {
        Ok(s.to_str()?.as_bytes())
    } else {
        Err(PyTypeError::new_err(format!(
            "a podcache key is bytes or str, not {}",
            key.get_type().name().map(|n| n.to_string()).unwrap_or_else(|_| "?".into())
        )))
    }
}
