//! Delivered messages: `BaseMessage` with the delivery's fields, `Message` (blocking API) and
//! `AsyncMessage` (asyncio API) with the settling methods, and the `process()` context
//! managers that ack on success and reject (or requeue) on an exception.
//!
//! Settling does not wait for the broker by default (acks are not answered on success), so
//! the blocking methods return at once and the async ones return futures that are already
//! done. With `confirm=True` they wait for the broker's outcome (one round trip) and raise
//! its error, e.g. `UnknownDeliveryTag` when the lease had expired.

use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use pyo3::exceptions::{PyException, PyRuntimeError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyType};

use crate::consumer::{self, ConsumerCore};
use crate::convert;
use crate::errors::IntoPyResult;
use crate::runtime;

/// How a `process()` block ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BlockEnd {
    Succeeded,
    Failed,
    Interrupted,
}

impl BlockEnd {
    fn of(exc_type: Option<&Bound<'_, PyAny>>) -> BlockEnd {
        match exc_type {
            None => BlockEnd::Succeeded,
            Some(t) if t.is_none() => BlockEnd::Succeeded,
            Some(t) => match t.cast::<PyType>() {
                Ok(t) if !t.is_subclass_of::<PyException>().unwrap_or(true) => {
                    BlockEnd::Interrupted
                }
                _ => BlockEnd::Failed,
            },
        }
    }
}

/// How a message is settled.
#[derive(Debug, Clone)]
enum Settle {
    Ack,
    /// With `delay`, the message waits that long before it is ready again; `reason` goes to
    /// its history (`Client.trace_message`).
    Nack {
        requeue: bool,
        delay: Option<Duration>,
        reason: Option<String>,
    },
    Reject {
        reason: Option<String>,
    },
    Extend(Duration),
}

impl Settle {
    /// What a `process()` block does with an unsettled message when it ends: ack on
    /// success; on an `Exception`, reject (or requeue with `requeue`); on an interruption
    /// (`KeyboardInterrupt`, `SystemExit`, a cancelled task: not an `Exception`), requeue,
    /// since the work was stopped rather than failed.
    fn after_block(
        message: &sluice_client::Message,
        ending: BlockEnd,
        requeue: bool,
        reject_on_redelivered: bool,
    ) -> Settle {
        match ending {
            BlockEnd::Succeeded => Settle::Ack,
            BlockEnd::Interrupted => Settle::Nack {
                requeue: true,
                delay: None,
                reason: None,
            },
            BlockEnd::Failed if requeue && !(reject_on_redelivered && message.redelivered) => {
                Settle::Nack {
                    requeue: true,
                    delay: None,
                    reason: None,
                }
            }
            BlockEnd::Failed => Settle::Reject { reason: None },
        }
    }

    async fn run(self, message: Arc<sluice_client::Message>, confirm: bool) -> PyResult<()> {
        match (self, confirm) {
            (Settle::Ack, false) => message.ack().await,
            (Settle::Ack, true) => message.ack_confirmed().await,
            (
                Settle::Nack {
                    requeue,
                    delay,
                    reason,
                },
                confirm,
            ) => message.nack_with(requeue, delay, reason, confirm).await,
            (Settle::Reject { reason }, confirm) => message.reject_with(reason, confirm).await,
            (Settle::Extend(by), false) => message.extend(by).await,
            (Settle::Extend(by), true) => message.extend_confirmed(by).await,
        }
        .py()
    }

    /// Settles from the blocking API; with `confirm`, waits for the broker's outcome.
    fn blocking(
        self,
        py: Python<'_>,
        message: &Arc<sluice_client::Message>,
        confirm: bool,
    ) -> PyResult<()> {
        runtime::now_or_block_on(py, self.run(message.clone(), confirm))
    }

    /// Settles from the async API: an asyncio future, done at once in practice unless
    /// `confirm` waits for the broker.
    fn awaitable<'py>(
        self,
        py: Python<'py>,
        message: &Arc<sluice_client::Message>,
        confirm: bool,
    ) -> PyResult<Bound<'py, PyAny>> {
        let mut future = Box::pin(self.run(message.clone(), confirm));
        let polled = {
            // Inside the runtime's context: a confirmed settle starts a timer.
            let _context = runtime::runtime().enter();
            future.as_mut().now_or_never()
        };
        match polled {
            Some(outcome) => runtime::ready(py, outcome),
            None => runtime::awaitable(py, future),
        }
    }
}

/// The settlement of `nack(requeue, delay=..., reason=...)`: a delay needs `requeue`.
fn nack_settle(requeue: bool, delay: Option<f64>, reason: Option<String>) -> PyResult<Settle> {
    let delay = convert::opt_seconds("delay", delay)?;
    if delay.is_some() && !requeue {
        return Err(pyo3::exceptions::PyValueError::new_err(
            "a nack with a delay requeues the message: delay needs requeue=True",
        ));
    }
    Ok(Settle::Nack {
        requeue,
        delay,
        reason: checked_reason(reason)?,
    })
}

/// A settle reason the broker takes: at most `MAX_SETTLE_REASON_LEN` bytes (an empty one is
/// sent as none). Checked here so the caller gets a `ValueError` rather than a silently
/// dropped settle.
fn checked_reason(reason: Option<String>) -> PyResult<Option<String>> {
    let max = sluice_client::wire::MAX_SETTLE_REASON_LEN;
    match reason {
        Some(r) if r.len() > max => Err(pyo3::exceptions::PyValueError::new_err(format!(
            "a settle reason is at most {max} bytes of UTF-8, this one has {}",
            r.len()
        ))),
        Some(r) if r.is_empty() => Ok(None),
        other => Ok(other),
    }
}

/// Fields of a delivered message; [`Message`] and [`AsyncMessage`] add the settling methods.
#[pyclass(module = "sluice", subclass, frozen)]
pub(crate) struct BaseMessage {
    inner: Arc<sluice_client::Message>,
}

#[pymethods]
impl BaseMessage {
    /// The body.
    #[getter]
    fn body<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.inner.body)
    }

    /// The headers (a new dict on each access; empty when the message has none).
    #[getter]
    fn headers<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        convert::headers_to_dict(py, self.inner.headers())
    }

    /// The exchange it was published to (empty: the default exchange).
    #[getter]
    fn exchange(&self) -> &str {
        self.inner.exchange()
    }

    /// The routing key it was published with.
    #[getter]
    fn routing_key(&self) -> &str {
        self.inner.routing_key()
    }

    /// The message may have been delivered before.
    #[getter]
    fn redelivered(&self) -> bool {
        self.inner.redelivered
    }

    /// Deliveries of this message so far, this one included (1 = first).
    #[getter]
    fn delivery_count(&self) -> u32 {
        self.inner.delivery_count
    }

    /// Names this delivery on its connection.
    #[getter]
    fn delivery_tag(&self) -> u64 {
        self.inner.delivery_tag.0
    }

    /// The message's number in its queue (stable across redeliveries).
    #[getter]
    fn message_seq(&self) -> u64 {
        self.inner.message_seq
    }

    /// When the queue stored the message: Unix milliseconds by the broker's clock (stable
    /// across redeliveries).
    #[getter]
    fn enqueued_at_ms(&self) -> u64 {
        self.inner.enqueued_at_ms
    }

    /// Stored durably by the broker.
    #[getter]
    fn persistent(&self) -> bool {
        self.inner.meta().persistent
    }

    /// MIME type of the body.
    #[getter]
    fn content_type(&self) -> Option<&str> {
        self.inner.meta().content_type
    }

    /// Encoding of the body, e.g. `gzip`.
    #[getter]
    fn content_encoding(&self) -> Option<&str> {
        self.inner.meta().content_encoding
    }

    /// Application message id.
    #[getter]
    fn message_id(&self) -> Option<&str> {
        self.inner.meta().message_id
    }

    /// Id of the request this message answers.
    #[getter]
    fn correlation_id(&self) -> Option<&str> {
        self.inner.meta().correlation_id
    }

    /// Queue a reply should go to.
    #[getter]
    fn reply_to(&self) -> Option<&str> {
        self.inner.meta().reply_to
    }

    /// Per-message TTL in seconds.
    #[getter]
    fn expiration(&self) -> Option<f64> {
        self.inner.meta().expiration_ms.map(|ms| ms as f64 / 1000.0)
    }

    /// Application timestamp, seconds since the Unix epoch (millisecond precision).
    #[getter]
    fn timestamp(&self) -> Option<f64> {
        self.inner.meta().timestamp_ms.map(|ms| ms as f64 / 1000.0)
    }

    /// Priority (`None`: not set, the lowest).
    #[getter]
    fn priority(&self) -> Option<u8> {
        self.inner.meta().priority
    }

    /// True once this handle has acked, nacked or rejected the delivery.
    /// The W3C `traceparent` header it was published with (`00-<trace id>-<span id>-<flags>`),
    /// or None.
    #[getter]
    fn trace_parent(&self) -> Option<String> {
        self.inner.trace_parent().map(|tp| tp.to_string())
    }

    /// The W3C `tracestate` that came with `trace_parent`, or None.
    #[getter]
    fn trace_state(&self) -> Option<&str> {
        self.inner.trace_state()
    }

    /// An OpenTelemetry `Context` whose span is the publisher's (a remote parent): start the
    /// processing span in it to continue the publisher's trace. Needs the `opentelemetry-api`
    /// package (`ImportError` without it); an empty context when the message has no
    /// `trace_parent`.
    fn trace_context<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        py.import("sluice._tracing")?
            .call_method1("extract", (self.trace_parent(), self.trace_state()))
    }

    #[getter]
    fn settled(&self) -> bool {
        self.inner.is_settled()
    }

    fn __repr__(slf: &Bound<'_, Self>) -> PyResult<String> {
        let this = slf.get();
        let m = &this.inner;
        Ok(format!(
            "<{} exchange={:?} routing_key={:?} delivery_tag={} delivery_count={} body=<{} bytes>>",
            slf.get_type().name()?,
            m.exchange(),
            m.routing_key(),
            m.delivery_tag.0,
            m.delivery_count,
            m.body.len()
        ))
    }
}

/// A message from the blocking API. Settle it once: `ack()`, `nack()` or `reject()`.
#[pyclass(module = "sluice", extends = BaseMessage, frozen)]
pub(crate) struct Message {
    inner: Arc<sluice_client::Message>,
}

impl Message {
    pub(crate) fn create(
        py: Python<'_>,
        message: sluice_client::Message,
    ) -> PyResult<Bound<'_, Message>> {
        let inner = Arc::new(message);
        let init = PyClassInitializer::from(BaseMessage {
            inner: inner.clone(),
        })
        .add_subclass(Message { inner });
        Bound::new(py, init)
    }
}

#[pymethods]
impl Message {
    /// The message was processed: the broker deletes it. Returns once the ack is sent; with
    /// `confirm=True`, once the broker handled it, raising `UnknownDeliveryTag` if the lease
    /// had expired (the message will be delivered again).
    #[pyo3(signature = (*, confirm = false))]
    fn ack(&self, py: Python<'_>, confirm: bool) -> PyResult<()> {
        Settle::Ack.blocking(py, &self.inner, confirm)
    }

    /// The message was not processed: back to its queue if `requeue` (delivered again;
    /// with `delay` seconds, only after that long, kept across a broker restart), else
    /// dead-lettered (or dropped). `reason` (at most 1024 bytes) is kept in the message's
    /// history for operators (`Client.trace_message`, `sluice trace`). `confirm` as in `ack`.
    #[pyo3(signature = (requeue = true, *, delay = None, reason = None, confirm = false))]
    fn nack(
        &self,
        py: Python<'_>,
        requeue: bool,
        delay: Option<f64>,
        reason: Option<String>,
        confirm: bool,
    ) -> PyResult<()> {
        nack_settle(requeue, delay, reason)?.blocking(py, &self.inner, confirm)
    }

    /// The message is bad: dead-lettered, or dropped if its queue has no dead-letter
    /// exchange. `reason` as in `nack`; `confirm` as in `ack`.
    #[pyo3(signature = (*, reason = None, confirm = false))]
    fn reject(&self, py: Python<'_>, reason: Option<String>, confirm: bool) -> PyResult<()> {
        let reason = checked_reason(reason)?;
        Settle::Reject { reason }.blocking(py, &self.inner, confirm)
    }

    /// Moves the ack deadline (lease) to `seconds` from now, for long tasks. `0` releases
    /// the message now: it is ready again at once and this delivery is not counted against
    /// the queue's `delivery_limit` (the message is settled). `confirm` as in `ack`.
    #[pyo3(signature = (seconds, *, confirm = false))]
    fn extend(&self, py: Python<'_>, seconds: f64, confirm: bool) -> PyResult<()> {
        Settle::Extend(convert::seconds("seconds", seconds)?).blocking(py, &self.inner, confirm)
    }

    /// A context manager that acks the message when the block succeeds, and rejects it
    /// (or with `requeue=True`, requeues it) when the block raises an `Exception`. An
    /// interrupted block (`KeyboardInterrupt`, `SystemExit`) requeues it. A message settled
    /// inside the block is left alone; the exception always propagates.
    #[pyo3(signature = (*, requeue = false, reject_on_redelivered = false))]
    fn process(
        slf: &Bound<'_, Self>,
        requeue: bool,
        reject_on_redelivered: bool,
    ) -> MessageProcess {
        MessageProcess {
            message: slf.clone().unbind(),
            requeue,
            reject_on_redelivered,
        }
    }
}

/// A message from the async API: the settling methods return awaitables.
#[pyclass(module = "sluice", extends = BaseMessage, frozen)]
pub(crate) struct AsyncMessage {
    inner: Arc<sluice_client::Message>,
}

/// A message on its way to Python as an [`AsyncMessage`], built once the GIL is held.
///
/// The asyncio bridge drops the value unconverted when the caller stopped waiting before it
/// arrived (a `wait_for` that timed out, a cancelled task). The message is not lost with it:
/// one taken from a consumer goes back to that consumer, first in line; one taken by `get`
/// returns to its queue.
pub(crate) struct Handoff {
    message: Option<sluice_client::Message>,
    home: Home,
}

/// Where a [`Handoff`] nobody took goes.
enum Home {
    Consumer(Arc<ConsumerCore>),
    Queue,
}

impl Handoff {
    pub(crate) fn from_consumer(message: sluice_client::Message, core: Arc<ConsumerCore>) -> Self {
        Handoff {
            message: Some(message),
            home: Home::Consumer(core),
        }
    }

    pub(crate) fn from_get(message: sluice_client::Message) -> Self {
        Handoff {
            message: Some(message),
            home: Home::Queue,
        }
    }
}

impl Drop for Handoff {
    fn drop(&mut self) {
        let Some(message) = self.message.take() else {
            return; // converted: Python has it
        };
        match &self.home {
            Home::Consumer(core) => core.give_back(message),
            Home::Queue => consumer::requeue(message),
        }
    }
}

impl<'py> IntoPyObject<'py> for Handoff {
    type Target = AsyncMessage;
    type Output = Bound<'py, AsyncMessage>;
    type Error = PyErr;

    fn into_pyobject(mut self, py: Python<'py>) -> PyResult<Self::Output> {
        let message = self
            .message
            .take()
            .ok_or_else(|| PyRuntimeError::new_err("a message was handed to Python twice"))?;
        let inner = Arc::new(message);
        let init = PyClassInitializer::from(BaseMessage {
            inner: inner.clone(),
        })
        .add_subclass(AsyncMessage { inner });
        Bound::new(py, init)
    }
}

#[pymethods]
impl AsyncMessage {
    /// The message was processed: the broker deletes it. With `confirm=True` the awaitable
    /// waits for the broker and raises `UnknownDeliveryTag` if the lease had expired.
    #[pyo3(signature = (*, confirm = false))]
    fn ack<'py>(&self, py: Python<'py>, confirm: bool) -> PyResult<Bound<'py, PyAny>> {
        Settle::Ack.awaitable(py, &self.inner, confirm)
    }

    /// The message was not processed: back to its queue if `requeue` (after `delay`
    /// seconds, if given), else dead-lettered. `reason` goes to the message's history (see
    /// `Message.nack`). `confirm` as in `ack`.
    #[pyo3(signature = (requeue = true, *, delay = None, reason = None, confirm = false))]
    fn nack<'py>(
        &self,
        py: Python<'py>,
        requeue: bool,
        delay: Option<f64>,
        reason: Option<String>,
        confirm: bool,
    ) -> PyResult<Bound<'py, PyAny>> {
        nack_settle(requeue, delay, reason)?.awaitable(py, &self.inner, confirm)
    }

    /// The message is bad: dead-lettered, or dropped. `reason` as in `nack`.
    #[pyo3(signature = (*, reason = None, confirm = false))]
    fn reject<'py>(
        &self,
        py: Python<'py>,
        reason: Option<String>,
        confirm: bool,
    ) -> PyResult<Bound<'py, PyAny>> {
        let reason = checked_reason(reason)?;
        Settle::Reject { reason }.awaitable(py, &self.inner, confirm)
    }

    /// Moves the ack deadline (lease) to `seconds` from now; `0` releases the message now.
    #[pyo3(signature = (seconds, *, confirm = false))]
    fn extend<'py>(
        &self,
        py: Python<'py>,
        seconds: f64,
        confirm: bool,
    ) -> PyResult<Bound<'py, PyAny>> {
        Settle::Extend(convert::seconds("seconds", seconds)?).awaitable(py, &self.inner, confirm)
    }

    /// An async context manager: ack when the block succeeds, reject (or requeue) when it
    /// raises an `Exception`, requeue when it is interrupted or cancelled.
    #[pyo3(signature = (*, requeue = false, reject_on_redelivered = false))]
    fn process(
        slf: &Bound<'_, Self>,
        requeue: bool,
        reject_on_redelivered: bool,
    ) -> AsyncMessageProcess {
        AsyncMessageProcess {
            message: slf.clone().unbind(),
            requeue,
            reject_on_redelivered,
        }
    }
}

/// Settles a message as its `process()` block ends. When the block raised, a failure to
/// settle (the connection is gone: the message returns to its queue anyway) must not hide
/// the block's exception.
fn end_block(
    py: Python<'_>,
    message: &Arc<sluice_client::Message>,
    exc_type: Option<&Bound<'_, PyAny>>,
    requeue: bool,
    reject_on_redelivered: bool,
) -> PyResult<bool> {
    if message.is_settled() {
        return Ok(false);
    }
    let ending = BlockEnd::of(exc_type);
    let how = Settle::after_block(message, ending, requeue, reject_on_redelivered);
    match how.blocking(py, message, false) {
        Err(error) if ending == BlockEnd::Succeeded => Err(error),
        _ => Ok(false),
    }
}

/// What `Message.process()` returns.
#[pyclass(module = "sluice", frozen)]
pub(crate) struct MessageProcess {
    message: Py<Message>,
    requeue: bool,
    reject_on_redelivered: bool,
}

#[pymethods]
impl MessageProcess {
    fn __enter__(&self, py: Python<'_>) -> Py<Message> {
        self.message.clone_ref(py)
    }

    fn __exit__(
        &self,
        py: Python<'_>,
        exc_type: Option<&Bound<'_, PyAny>>,
        _exc_value: Option<&Bound<'_, PyAny>>,
        _traceback: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<bool> {
        let message = &self.message.get().inner;
        end_block(
            py,
            message,
            exc_type,
            self.requeue,
            self.reject_on_redelivered,
        )
    }
}

/// What `AsyncMessage.process()` returns.
#[pyclass(module = "sluice", frozen)]
pub(crate) struct AsyncMessageProcess {
    message: Py<AsyncMessage>,
    requeue: bool,
    reject_on_redelivered: bool,
}

#[pymethods]
impl AsyncMessageProcess {
    fn __aenter__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        runtime::ready(py, Ok(self.message.clone_ref(py)))
    }

    fn __aexit__<'py>(
        &self,
        py: Python<'py>,
        exc_type: Option<&Bound<'py, PyAny>>,
        _exc_value: Option<&Bound<'py, PyAny>>,
        _traceback: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let message = &self.message.get().inner;
        let outcome = end_block(
            py,
            message,
            exc_type,
            self.requeue,
            self.reject_on_redelivered,
        );
        runtime::ready(py, outcome)
    }
}
