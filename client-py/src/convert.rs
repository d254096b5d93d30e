//! Values between Python and Rust: message bodies, header tables and durations.

use std::time::Duration;

use bytes::Bytes;
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::pybacked::{PyBackedBytes, PyBackedStr};
use pyo3::types::{
    PyBool, PyByteArray, PyBytes, PyDict, PyFloat, PyInt, PyList, PyMemoryView, PyString, PyTuple,
};
use pyo3::PyTypeInfo;
use sluice_client::wire::MAX_HEADER_DEPTH;
use sluice_client::{Decimal, HeaderValue, Headers};

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

/// A header table from a mapping of `str` to header values (see [`header_value`]); `None`
/// is an empty table.
pub(crate) fn headers(value: Option<&Bound<'_, PyAny>>) -> PyResult<Headers> {
    let Some(value) = value else {
        return Ok(Headers::new());
    };
    if value.is_none() {
        return Ok(Headers::new());
    }
    table(value, 0).map_err(|e| {
        e.unwrap_or_else(|| {
            PyTypeError::new_err("headers must be a mapping of str to header values")
        })
    })
}

/// A table from a mapping; `None` as the error: `value` is not a mapping. `depth`: the
/// arrays and tables this one is nested in.
fn table(value: &Bound<'_, PyAny>, depth: usize) -> Result<Headers, Option<PyErr>> {
    let items = match value.cast::<PyDict>() {
        Ok(dict) => dict.items().into_any(),
        Err(_) => value.call_method0("items").map_err(|_| None)?,
    };
    let mut headers = Headers::new();
    for item in items.try_iter()? {
        let (key, value): (String, Bound<'_, PyAny>) = item?.extract()?;
        let value = header_value(&key, &value, depth + 1)?;
        headers.push((key, value));
    }
    Ok(headers)
}

/// One header value, at `depth` (1 for a value of the header table): `None` is void, `bool`
/// a boolean (checked before `int`, which it subclasses), `int` an integer, `float` a float
/// (finite), `str` a string, `bytes`/`bytearray` bytes, `list`/`tuple` an array, a mapping
/// a table, `datetime.datetime` a timestamp (whole seconds; naive means UTC) and
/// `decimal.Decimal` a decimal.
fn header_value(key: &str, value: &Bound<'_, PyAny>, depth: usize) -> PyResult<HeaderValue> {
    let py = value.py();
    if value.is_none() {
        Ok(HeaderValue::Void)
    } else if value.is_instance_of::<PyBool>() {
        Ok(HeaderValue::Bool(value.extract()?))
    } else if value.is_instance_of::<PyInt>() {
        let n: i64 = value.extract().map_err(|_| {
            PyValueError::new_err(format!("header {key:?}: integers must fit in 64 bits"))
        })?;
        Ok(HeaderValue::Int(n))
    } else if value.is_instance_of::<PyFloat>() {
        let f: f64 = value.extract()?;
        if !f.is_finite() {
            return Err(PyValueError::new_err(format!(
                "header {key:?}: floats must be finite, not {f}"
            )));
        }
        Ok(HeaderValue::Float(f))
    } else if value.is_instance_of::<PyString>() {
        Ok(HeaderValue::Str(value.extract()?))
    } else if value.is_instance_of::<PyBytes>() || value.is_instance_of::<PyByteArray>() {
        let backed: PyBackedBytes = value.extract()?;
        Ok(HeaderValue::Bytes(Bytes::from_owner(backed)))
    } else if value.is_instance_of::<PyList>() || value.is_instance_of::<PyTuple>() {
        check_depth(key, depth)?;
        value
            .try_iter()?
            .map(|item| header_value(key, &item?, depth + 1))
            .collect::<PyResult<_>>()
            .map(HeaderValue::Array)
    } else if value.is_instance_of::<PyDict>() || value.hasattr("items")? {
        check_depth(key, depth)?;
        table(value, depth).map(HeaderValue::Table).map_err(|e| {
            e.unwrap_or_else(|| PyTypeError::new_err(format!("header {key:?}: not a mapping")))
        })
    } else if value.is_instance(&py.import("datetime")?.getattr("datetime")?)? {
        timestamp(key, value)
    } else if value.is_instance(&py.import("decimal")?.getattr("Decimal")?)? {
        decimal(key, value)
    } else {
        Err(PyTypeError::new_err(format!(
            "header {key:?}: values must be None, bool, int, float, str, bytes, list, tuple, \
             dict, datetime.datetime or decimal.Decimal, not {}",
            value.get_type().name()?
        )))
    }
}

fn check_depth(key: &str, depth: usize) -> PyResult<()> {
    if depth > MAX_HEADER_DEPTH {
        return Err(PyValueError::new_err(format!(
            "header {key:?}: lists and dicts nest at most {MAX_HEADER_DEPTH} deep"
        )));
    }
    Ok(())
}

/// Whole seconds since 1970 of a `datetime` (a naive one is taken as UTC, as pika does);
/// the fraction of a second is dropped, as AMQP timestamps have none.
fn timestamp(key: &str, value: &Bound<'_, PyAny>) -> PyResult<HeaderValue> {
    let py = value.py();
    let value = if value.getattr("tzinfo")?.is_none() {
        let utc = py.import("datetime")?.getattr("timezone")?.getattr("utc")?;
        let kwargs = PyDict::new(py);
        kwargs.set_item("tzinfo", utc)?;
        value.call_method("replace", (), Some(&kwargs))?
    } else {
        value.clone()
    };
    let seconds: f64 = value.call_method0("timestamp")?.extract()?;
    if seconds < 0.0 {
        return Err(PyValueError::new_err(format!(
            "header {key:?}: timestamps start in 1970"
        )));
    }
    Ok(HeaderValue::Timestamp(seconds.floor() as u64))
}

/// A `Decimal` as AMQP's `value × 10^-scale`: not negative, at most 255 digits after the
/// point, a value below 2^32.
fn decimal(key: &str, value: &Bound<'_, PyAny>) -> PyResult<HeaderValue> {
    let (sign, digits, exponent): (u8, Vec<u32>, Bound<'_, PyAny>) =
        value.call_method0("as_tuple")?.extract()?;
    let bad = || {
        PyValueError::new_err(format!(
            "header {key:?}: a decimal must be finite, not negative, with at most 255 digits \
             after the point and a value below 2^32, not {value}"
        ))
    };
    let exponent: i64 = exponent.extract().map_err(|_| bad())?;
    if sign != 0 && digits.iter().any(|d| *d != 0) {
        return Err(bad());
    }
    let mut unscaled: u64 = 0;
    for d in digits {
        unscaled = unscaled.checked_mul(10).ok_or_else(bad)? + u64::from(d);
    }
    // A positive exponent (`1E+2`) has no scale: multiply it out.
    let mut scale = -exponent;
    while scale < 0 {
        unscaled = unscaled.checked_mul(10).ok_or_else(bad)?;
        scale += 1;
    }
    Ok(HeaderValue::Decimal(Decimal {
        scale: u8::try_from(scale).map_err(|_| bad())?,
        value: u32::try_from(unscaled).map_err(|_| bad())?,
    }))
}

/// A header table as a `dict`.
pub(crate) fn headers_to_dict<'py>(
    py: Python<'py>,
    headers: Headers,
) -> PyResult<Bound<'py, PyDict>> {
    let dict = PyDict::new(py);
    for (key, value) in headers {
        dict.set_item(key, header_to_py(py, value)?)?;
    }
    Ok(dict)
}

fn header_to_py(py: Python<'_>, value: HeaderValue) -> PyResult<Bound<'_, PyAny>> {
    Ok(match value {
        HeaderValue::Str(s) => s.into_pyobject(py)?.into_any(),
        HeaderValue::Int(n) => n.into_pyobject(py)?.into_any(),
        HeaderValue::Bool(b) => PyBool::new(py, b).to_owned().into_any(),
        HeaderValue::Bytes(b) => PyBytes::new(py, &b).into_any(),
        HeaderValue::Float(f) => PyFloat::new(py, f).into_any(),
        HeaderValue::Void => py.None().into_bound(py),
        HeaderValue::Array(items) => {
            let list = PyList::empty(py);
            for item in items {
                list.append(header_to_py(py, item)?)?;
            }
            list.into_any()
        }
        HeaderValue::Table(table) => headers_to_dict(py, table)?.into_any(),
        HeaderValue::Timestamp(t) => {
            let datetime = py.import("datetime")?;
            let utc = datetime.getattr("timezone")?.getattr("utc")?;
            datetime
                .getattr("datetime")?
                .call_method1("fromtimestamp", (t, utc))?
        }
        HeaderValue::Decimal(d) => py
            .import("decimal")?
            .getattr("Decimal")?
            .call1((d.to_string(),))?,
    })
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
