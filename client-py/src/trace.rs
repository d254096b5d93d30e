//! W3C trace context on published messages (protocol.md §8.1): `trace_parent=` and
//! `trace_state=` as header strings, or, when the caller gave none, what the Python layer's
//! injector finds in the current OpenTelemetry context (`sluice/_tracing.py` registers it
//! only when `opentelemetry-api` is importable, so without that package a publish costs one
//! empty check here).

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use sluice_client::TraceParent;

/// The Python callable returning the current context's `(traceparent, tracestate)` headers
/// or None.
static INJECTOR: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

/// Registers the injector (once per process; later calls change nothing).
#[pyfunction]
pub(crate) fn _set_trace_injector(py: Python<'_>, injector: Py<PyAny>) {
    let _ = INJECTOR.set(py, injector);
}

/// A message's trace context: the caller's headers (a malformed `traceparent` is a
/// `ValueError`), else the current OpenTelemetry span's when an injector is registered.
pub(crate) fn trace_context(
    py: Python<'_>,
    trace_parent: Option<String>,
    trace_state: Option<String>,
) -> PyResult<(Option<TraceParent>, Option<String>)> {
    if let Some(header) = trace_parent {
        let parsed =
            TraceParent::parse(&header).map_err(|e| PyValueError::new_err(e.to_string()))?;
        return Ok((Some(parsed), trace_state));
    }
    let Some(injector) = INJECTOR.get(py) else {
        return Ok((None, trace_state));
    };
    let current: Option<(String, Option<String>)> = injector.call0(py)?.extract(py)?;
    // What the propagator wrote is the SDK's business: a value we cannot carry is left out
    // rather than failing the publish.
    match current.and_then(|(tp, ts)| Some((TraceParent::parse(&tp).ok()?, ts))) {
        Some((tp, ts)) => Ok((Some(tp), trace_state.or(ts))),
        None => Ok((None, trace_state)),
    }
}
