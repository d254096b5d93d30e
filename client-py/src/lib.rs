//! Python bindings for the Sluice client: the native module `sluice._sluice`, wrapped by the
//! pure-Python package `sluice` (client-py/python/sluice).
//!
//! # Layout
//! - `runtime`: the one tokio runtime the process shares (stopped at interpreter exit), and
//!   the ways Python waits on it: [`runtime::block_on`] (GIL released, Ctrl-C checked),
//!   [`runtime::awaitable`] (an asyncio future, through pyo3-async-runtimes) and
//!   [`runtime::coroutine`] (a coroutine that starts such a future when awaited).
//! - `errors`: `sluice_client::Error` → the exception classes of `sluice.exceptions`, in one
//!   place.
//! - `convert`: bodies, headers and durations between Python and Rust.
//! - `options`: keyword arguments → the Rust client's option structs; `OutgoingMessage`, and
//!   the result classes `DeclaredQueue` and `QueueInfo`.
//! - `client`: the blocking `Client`; `async_client`: `AsyncClient`, with the same methods
//!   returning awaitables.
//! - `consumer`: `Consumer` (an iterator) and `AsyncConsumer` (an async iterator) over one
//!   shared core.
//! - `message`: `BaseMessage` with the delivery's fields, `Message` and `AsyncMessage` with
//!   the settling methods, and the `process()` context managers.
//! - `trace`: the W3C trace context of published messages; `history`: `trace_message`'s
//!   answer as `MessageHistory` and `HistoryEvent`.

mod async_client;
mod client;
mod consumer;
mod convert;
mod errors;
mod history;
mod message;
mod options;
mod publish_result;
mod runtime;
mod trace;

use pyo3::prelude::*;

/// The native half of the `sluice` package.
#[pymodule]
fn _sluice(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add("ERROR_CODES", errors::error_codes())?;
    m.add_function(wrap_pyfunction!(errors::_exception_for, m)?)?;
    let shutdown = wrap_pyfunction!(runtime::shutdown, m)?;
    m.py()
        .import("atexit")?
        .call_method1("register", (shutdown,))?;
    m.add_class::<client::Client>()?;
    m.add_class::<async_client::AsyncClient>()?;
    m.add_class::<consumer::Consumer>()?;
    m.add_class::<consumer::AsyncConsumer>()?;
    m.add_class::<message::BaseMessage>()?;
    m.add_class::<message::Message>()?;
    m.add_class::<message::AsyncMessage>()?;
    m.add_class::<message::MessageProcess>()?;
    m.add_class::<message::AsyncMessageProcess>()?;
    m.add_class::<options::OutgoingMessage>()?;
    m.add_class::<options::DeclaredQueue>()?;
    m.add_class::<options::QueueInfo>()?;
    m.add_class::<options::ScheduledMessage>()?;
    m.add_class::<publish_result::PublishResult>()?;
    m.add_class::<options::ConsumerInfo>()?;
    m.add_class::<options::CircuitInfo>()?;
    m.add_function(wrap_pyfunction!(trace::_set_trace_injector, m)?)?;
    m.add_class::<history::MessageHistory>()?;
    m.add_class::<history::HistoryEvent>()?;
    Ok(())
}
