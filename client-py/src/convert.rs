//! Values between Python and Rust: message bodies, header tables and durations.

use std::time::Duration;

use bytes::Bytes;
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::pybacked::{PyBackedBytes, PyBackedStr};
use pyo3::types::{PyBool, PyByteArray, PyBytes, PyDict, PyInt, PyMemoryView, PyString};
use pyo3::PyTypeInfo;
use sluice_client::{HeaderValue, Headers};

/// A message body: `bytes` (shared with Python, not copied), `bytearray` or `memoryview`
/// (copied), or `str` (UTF-8).
pub(crate) fn body(value: &Bound<'_, PyAny>) -> PyResult<Bytes> {
    if value.is_instance_of::<PyBytes>() || value.is_instance_of::<PyByteArray>() {
        let backed: PyBackedBytes = value.extract()?;
        Ok(Bytes::from_owner(backed))
    } else if value.is_instance_of::<PyString>() {
        let text: PyBackedStr = value.extract()?;
        Ok(Bytes::copy_from_slice(text.as_bytes()))
    } else if value.is_instance_of::<PyMemoryView>() {
        let copy = PyBytes::type_object(value.py()).call1((value,))?;
        let backed: PyBackedBytes = copy.extract()?;
        Ok(Bytes::from_owner(backed))
    } else {
        Err(PyTypeError::new_err(format!(
            "a message body must be bytes, bytearray, memoryview or str, not {}",
            value.get_type().name()?
        )))
    }
}

/// A header table from a mapping of `str` to `str`, `int`, `bool` or `bytes`; `None` is
/// an empty table.
pub(crate) fn headers(value: Option<&Bound<'_, PyAny>>) -> PyResult<Headers> {
    let Some(value) = value else {
        return Ok(Headers::new());
    };
    if value.is_none() {
        return Ok(Headers::new());
    }
    let items = match value.cast::<PyDict>() {
        Ok(dict) => dict.items().into_any(),
        Err(_) => value.call_method0("items").map_err(|_| {
            PyTypeError::new_err("headers must be a mapping of str to str, int, bool or bytes")
        })?,
    };
    let mut headers = Headers::new();
    for item in items.try_iter()? {
        let (key, value): (String, Bound<'_, PyAny>) = item?.extract()?;
        let value = header_value(&key, &value)?;
        headers.push((key, value));
    }
    Ok(headers)
}

fn header_value(key: &str, value: &Bound<'_, PyAny>) -> PyResult<HeaderValue> {
    // bool before int: Python's bool is an int.
    if value.is_instance_of::<PyBool>() {
        Ok(HeaderValue::Bool(value.extract()?))
    } else if value.is_instance_of::<PyInt>() {
        let n: i64 = value.extract().map_err(|_| {
            PyValueError::new_err(format!("header {key:?}: integers must fit in 64 bits"))
        })?;
        Ok(HeaderValue::Int(n))
    } else if value.is_instance_of::<PyString>() {
        Ok(HeaderValue::Str(value.extract()?))
    } else if value.is_instance_of::<PyBytes>() || value.is_instance_of::<PyByteArray>() {
        let backed: PyBackedBytes = value.extract()?;
        Ok(HeaderValue::Bytes(Bytes::from_owner(backed)))
    } else {
        Err(PyTypeError::new_err(format!(
            "header {key:?}: values must be str, int, bool or bytes, not {}",
            value.get_type().name()?
        )))
    }
}

/// A header table as a `dict`.
pub(crate) fn headers_to_dict<'py>(
    py: Python<'py>,
    headers: Headers,
) -> PyResult<Bound<'py, PyDict>> {
    let dict = PyDict::new(py);
    for (key, value) in headers {
        match value {
            HeaderValue::Str(s) => dict.set_item(key, s)?,
            HeaderValue::Int(n) => dict.set_item(key, n)?,
            HeaderValue::Bool(b) => dict.set_item(key, b)?,
            HeaderValue::Bytes(b) => dict.set_item(key, PyBytes::new(py, &b))?,
        }
    }
    Ok(dict)
}

/// A duration from seconds (a float or an int, at least 0).
pub(crate) fn seconds(what: &str, value: f64) -> PyResult<Duration> {
    Duration::try_from_secs_f64(value).map_err(|_| {
        PyValueError::new_err(format!(
            "{what} must be a finite number of seconds ≥ 0, not {value}"
        ))
    })
}

/// An optional duration from seconds.
pub(crate) fn opt_seconds(what: &str, value: Option<f64>) -> PyResult<Option<Duration>> {
    value.map(|v| seconds(what, v)).transpose()
}

/// Whole milliseconds from seconds (for properties carried in milliseconds).
pub(crate) fn millis(what: &str, value: f64) -> PyResult<u64> {
    let duration = seconds(what, value)?;
    Ok(u64::try_from(duration.as_millis()).unwrap_or(u64::MAX))
}
