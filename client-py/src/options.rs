//! Keyword arguments → the Rust client's option structs, the `OutgoingMessage` class for
//! batches, and the result classes `DeclaredQueue` and `QueueInfo`.

use std::time::Duration;

use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyTuple};
use sluice_client::{
    ConsumeOptions, DeclareQueueOk, ExchangeKind, ExchangeOptions, Headers, InspectQueueOk,
    Overflow, PublishOptions, QueueArguments, QueueOptions, RetryBackoff,
    ScheduledMessage as Scheduled,
};

use crate::convert;

/// The `declare_queue` keywords past `name` and `durable`.
pub(crate) struct QueueArgs {
    pub exclusive: bool,
    pub auto_delete: bool,
    pub passive: bool,
    pub max_length: Option<u64>,
    pub max_length_bytes: Option<u64>,
    pub overflow: Option<String>,
    pub message_ttl: Option<f64>,
    pub dead_letter_exchange: Option<String>,
    pub dead_letter_routing_key: Option<String>,
    pub ack_timeout: Option<f64>,
    pub delivery_limit: Option<u32>,
    pub expires: Option<f64>,
    pub max_priority: Option<u8>,
    /// `(initial seconds, multiplier, max seconds)`.
    pub retry_backoff: Option<(f64, f64, f64)>,
    pub dedup_window: Option<f64>,
    pub dedup_window_count: Option<u32>,
    pub single_active_consumer: bool,
    /// Copies of a replicated queue in a cluster (1..=7; protocol.md §6.1).
    pub replicas: Option<u8>,
}

impl QueueArgs {
    pub(crate) fn into_options(self, durable: bool) -> PyResult<QueueOptions> {
        let mut options = QueueOptions::new()
            .durable(durable)
            .exclusive(self.exclusive)
            .auto_delete(self.auto_delete);
        options.passive = self.passive;
        let overflow = match self.overflow.as_deref() {
            None => None,
            Some("drop-head") => Some(Overflow::DropHead),
            Some("reject-publish") => Some(Overflow::RejectPublish),
            Some("reject-publish-dlx") => Some(Overflow::RejectPublishDlx),
            Some(other) => {
                return Err(PyValueError::new_err(format!(
                    "overflow must be 'drop-head', 'reject-publish' or 'reject-publish-dlx', not {other:?}"
                )))
            }
        };
        let millis_at_least_1 =
            |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1);
        options.arguments = QueueArguments {
            max_length: self.max_length,
            max_length_bytes: self.max_length_bytes,
            overflow,
            message_ttl_ms: self
                .message_ttl
                .map(|s| convert::millis("message_ttl", s))
                .transpose()?,
            dead_letter_exchange: self.dead_letter_exchange,
            dead_letter_routing_key: self.dead_letter_routing_key,
            ack_timeout_ms: convert::opt_seconds("ack_timeout", self.ack_timeout)?
                .map(millis_at_least_1),
            delivery_limit: self.delivery_limit,
            expires_ms: convert::opt_seconds("expires", self.expires)?.map(millis_at_least_1),
            // Not offered by the Python declare yet; the Rust client and the HTTP API set it.
            max_message_bytes: None,
            max_priority: self.max_priority,
            retry_backoff: self.retry_backoff.map(retry_backoff).transpose()?,
            dedup_window_ms: convert::opt_seconds("dedup_window", self.dedup_window)?
                .map(millis_at_least_1),
            dedup_window_count: self.dedup_window_count,
            single_active_consumer: self.single_active_consumer.then_some(1),
            replicas: self.replicas,
        };
        Ok(options)
    }
}

/// A retry backoff from `(initial seconds, multiplier, max seconds)`.
fn retry_backoff((initial, multiplier, max): (f64, f64, f64)) -> PyResult<RetryBackoff> {
    if !(1.0..=1000.0).contains(&multiplier) {
        return Err(PyValueError::new_err(format!(
            "retry_backoff multiplier must be between 1 and 1000, not {multiplier}"
        )));
    }
    Ok(RetryBackoff {
        initial_ms: convert::millis("retry_backoff initial", initial)?,
        multiplier_percent: (multiplier * 100.0).round() as u32,
        max_ms: convert::millis("retry_backoff max", max)?,
    })
}

/// An exchange kind from its name.
pub(crate) fn exchange_kind(kind: &str) -> PyResult<ExchangeKind> {
    match kind {
        "direct" => Ok(ExchangeKind::Direct),
        "fanout" => Ok(ExchangeKind::Fanout),
        "topic" => Ok(ExchangeKind::Topic),
        "headers" => Ok(ExchangeKind::Headers),
        "weighted" => Ok(ExchangeKind::Weighted),
        "consistent-hash" => Ok(ExchangeKind::ConsistentHash),
        other => Err(PyValueError::new_err(format!(
            "exchange kind must be 'direct', 'fanout', 'topic', 'headers', 'weighted' or \
             'consistent-hash', not {other:?}"
        ))),
    }
}

/// The `declare_exchange` keywords.
pub(crate) fn exchange_options(
    durable: bool,
    auto_delete: bool,
    passive: bool,
    alternate_exchange: Option<String>,
    hash_header: Option<String>,
) -> ExchangeOptions {
    let mut options = ExchangeOptions::new()
        .durable(durable)
        .auto_delete(auto_delete)
        .passive(passive);
    options.alternate_exchange = alternate_exchange;
    options.hash_header = hash_header;
    options
}

/// The `bind` arguments, with `weight` (weighted and consistent-hash exchanges) as
/// `x-weight`.
pub(crate) fn binding_arguments(
    arguments: Option<&Bound<'_, PyAny>>,
    weight: Option<u32>,
) -> PyResult<Headers> {
    let mut headers = convert::headers(arguments)?;
    if let Some(weight) = weight {
        sluice_client::set_weight(&mut headers, weight);
    }
    Ok(headers)
}

/// The `consume` keywords.
pub(crate) fn consume_options(
    prefetch: Option<u32>,
    consumer_tag: Option<String>,
    exclusive: bool,
    ack_timeout: Option<f64>,
    priority: Option<i32>,
    circuit_breaker: Option<&Bound<'_, PyAny>>,
) -> PyResult<ConsumeOptions> {
    let mut options = ConsumeOptions::new().exclusive(exclusive);
    if let Some(settings) = circuit_breaker {
        options.circuit_breaker = Some(circuit_breaker_settings(settings)?);
    }
    options.prefetch = prefetch;
    options.priority = priority;
    if let Some(tag) = consumer_tag {
        options = options.consumer_tag(tag);
    }
    if let Some(timeout) = convert::opt_seconds("ack_timeout", ack_timeout)? {
        options = options.ack_timeout(timeout);
    }
    Ok(options)
}

/// The `circuit_breaker` keyword of `consume`: a mapping with `failure_threshold`, `window`
/// (seconds), `cool_down` (seconds) and `success_threshold`, all required. Ranges are the
/// broker's to check (`InvalidArgument`).
fn circuit_breaker_settings(
    settings: &Bound<'_, PyAny>,
) -> PyResult<sluice_client::CircuitBreaker> {
    let get = |key: &str| -> PyResult<Bound<'_, PyAny>> {
        settings.get_item(key).map_err(|_| {
            pyo3::exceptions::PyValueError::new_err(format!(
                "circuit_breaker needs '{key}' (failure_threshold, window, cool_down, \
                 success_threshold)"
            ))
        })
    };
    let ms = |key: &str| -> PyResult<u64> { convert::millis(key, get(key)?.extract()?) };
    Ok(sluice_client::CircuitBreaker {
        failure_threshold: get("failure_threshold")?.extract()?,
        window_ms: ms("window")?.max(1),
        cool_down_ms: ms("cool_down")?.max(1),
        success_threshold: get("success_threshold")?.extract()?,
    })
}

/// A consumer's circuit (circuit breaking): `Consumer.circuit`, and in `ConsumerInfo`.
#[pyclass(module = "sluice", frozen, get_all)]
#[derive(Clone)]
pub(crate) struct CircuitInfo {
    /// `"closed"`, `"open"` or `"half-open"`.
    state: &'static str,
    /// When an open circuit becomes half-open (Unix seconds); `None` otherwise.
    until: Option<f64>,
    /// Failures that opened it (or counted in the window, in listings).
    failures: u32,
    /// The broker's words (empty in listings and before any notice).
    reason: String,
}

impl CircuitInfo {
    pub(crate) fn from_notice(n: &sluice_client::CircuitNotice) -> Self {
        CircuitInfo {
            state: n.state.as_str(),
            until: n.until.and_then(|t| {
                t.duration_since(std::time::UNIX_EPOCH)
                    .ok()
                    .map(|d| d.as_secs_f64())
            }),
            failures: n.failures,
            reason: n.reason.clone(),
        }
    }

    fn from_summary(c: sluice_client::CircuitSummary) -> Self {
        CircuitInfo {
            state: c.state.as_str(),
            until: (c.until_ms > 0).then(|| c.until_ms as f64 / 1000.0),
            failures: c.failures,
            reason: String::new(),
        }
    }
}

#[pymethods]
impl CircuitInfo {
    fn __repr__(&self) -> String {
        format!(
            "CircuitInfo(state={:?}, failures={}, reason={:?})",
            self.state, self.failures, self.reason
        )
    }
}

/// The keywords every publishing call takes: flags and properties.
pub(crate) struct PublishArgs<'a, 'py> {
    pub py: Python<'py>,
    pub headers: Option<&'a Bound<'py, PyAny>>,
    pub mandatory: bool,
    pub persistent: bool,
    pub content_type: Option<String>,
    pub content_encoding: Option<String>,
    pub message_id: Option<String>,
    pub correlation_id: Option<String>,
    pub reply_to: Option<String>,
    pub expiration: Option<f64>,
    pub timestamp: Option<f64>,
    pub priority: Option<u8>,
    /// Seconds after the queue stores it.
    pub delay: Option<f64>,
    /// A `datetime` (or Unix seconds).
    pub deliver_at: Option<&'a Bound<'py, PyAny>>,
    /// W3C `traceparent` header; None: the current OpenTelemetry span's, if any.
    pub trace_parent: Option<String>,
    /// W3C `tracestate` header.
    pub trace_state: Option<String>,
}

impl PublishArgs<'_, '_> {
    pub(crate) fn into_options(self) -> PyResult<PublishOptions> {
        let mut options = PublishOptions::new();
        options.mandatory = self.mandatory;
        let properties = &mut options.properties;
        properties.persistent = self.persistent;
        properties.content_type = self.content_type;
        properties.content_encoding = self.content_encoding;
        properties.message_id = self.message_id;
        properties.correlation_id = self.correlation_id;
        properties.reply_to = self.reply_to;
        properties.expiration_ms = self
            .expiration
            .map(|s| convert::millis("expiration", s))
            .transpose()?;
        properties.timestamp_ms = self
            .timestamp
            .map(|s| convert::millis("timestamp", s))
            .transpose()?;
        properties.headers = convert::headers(self.headers)?;
        properties.priority = self.priority;
        if self.delay.is_some() && self.deliver_at.is_some() {
            return Err(PyValueError::new_err(
                "a message has delay or deliver_at, not both",
            ));
        }
        properties.delay_ms = self
            .delay
            .map(|s| convert::millis("delay", s))
            .transpose()?;
        properties.deliver_at_ms = self.deliver_at.map(unix_millis).transpose()?;
        (properties.trace_parent, properties.trace_state) =
            crate::trace::trace_context(self.py, self.trace_parent, self.trace_state)?;
        Ok(options)
    }
}

/// Unix milliseconds of a `datetime` (its `timestamp()`; a naive one is local time) or of
/// Unix seconds; a time before 1970 is 0 (it means now).
fn unix_millis(at: &Bound<'_, PyAny>) -> PyResult<u64> {
    let seconds: f64 = if at.hasattr("timestamp")? {
        at.call_method0("timestamp")?.extract()?
    } else {
        at.extract()
            .map_err(|_| PyTypeError::new_err("deliver_at must be a datetime or Unix seconds"))?
    };
    if !seconds.is_finite() {
        return Err(PyValueError::new_err(format!(
            "deliver_at must be a finite time, not {seconds}"
        )));
    }
    Ok((seconds.max(0.0) * 1000.0).round() as u64)
}

/// A message for `publish_batch`: where it goes, its body, and the same keywords as
/// `publish`.
#[pyclass(module = "sluice", frozen)]
pub(crate) struct OutgoingMessage {
    pub(crate) inner: sluice_client::OutgoingMessage,
}

#[pymethods]
impl OutgoingMessage {
    #[new]
    #[pyo3(signature = (
        exchange, routing_key, body, *, headers=None, mandatory=false, persistent=true,
        content_type=None, content_encoding=None, message_id=None, correlation_id=None,
        reply_to=None, expiration=None, timestamp=None, priority=None, delay=None,
        deliver_at=None, trace_parent=None, trace_state=None,
    ))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        exchange: String,
        routing_key: String,
        body: &Bound<'_, PyAny>,
        headers: Option<&Bound<'_, PyAny>>,
        mandatory: bool,
        persistent: bool,
        content_type: Option<String>,
        content_encoding: Option<String>,
        message_id: Option<String>,
        correlation_id: Option<String>,
        reply_to: Option<String>,
        expiration: Option<f64>,
        timestamp: Option<f64>,
        priority: Option<u8>,
        delay: Option<f64>,
        deliver_at: Option<&Bound<'_, PyAny>>,
        trace_parent: Option<String>,
        trace_state: Option<String>,
    ) -> PyResult<Self> {
        let options = PublishArgs {
            py: body.py(),
            headers,
            mandatory,
            persistent,
            content_type,
            content_encoding,
            message_id,
            correlation_id,
            reply_to,
            expiration,
            timestamp,
            priority,
            delay,
            deliver_at,
            trace_parent,
            trace_state,
        }
        .into_options()?;
        let inner =
            sluice_client::OutgoingMessage::new(exchange, routing_key, convert::body(body)?)
                .with_options(options);
        Ok(OutgoingMessage { inner })
    }

    /// The exchange.
    #[getter]
    fn exchange(&self) -> &str {
        &self.inner.exchange
    }

    /// The routing key.
    #[getter]
    fn routing_key(&self) -> &str {
        &self.inner.routing_key
    }

    /// The body.
    #[getter]
    fn body<'py>(&self, py: Python<'py>) -> Bound<'py, pyo3::types::PyBytes> {
        pyo3::types::PyBytes::new(py, &self.inner.body)
    }

    /// The headers.
    #[getter]
    fn headers<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        convert::headers_to_dict(py, self.inner.options.properties.headers.clone())
    }

    /// Whether the broker refuses the message if it reaches no queue.
    #[getter]
    fn mandatory(&self) -> bool {
        self.inner.options.mandatory
    }

    /// Whether the message is stored durably.
    #[getter]
    fn persistent(&self) -> bool {
        self.inner.options.properties.persistent
    }

    fn __repr__(&self) -> String {
        format!(
            "OutgoingMessage(exchange={:?}, routing_key={:?}, body=<{} bytes>)",
            self.inner.exchange,
            self.inner.routing_key,
            self.inner.body.len()
        )
    }
}

/// The messages of a `publish_batch` call: `OutgoingMessage`s, or
/// `(exchange, routing_key, body)` tuples.
pub(crate) fn outgoing_messages(
    messages: &Bound<'_, PyAny>,
) -> PyResult<Vec<sluice_client::OutgoingMessage>> {
    let mut batch = Vec::with_capacity(messages.len().unwrap_or(0));
    for item in messages.try_iter()? {
        let item = item?;
        if let Ok(message) = item.cast::<OutgoingMessage>() {
            batch.push(message.get().inner.clone());
        } else if let Ok(tuple) = item.cast::<PyTuple>() {
            let (exchange, routing_key, body): (String, String, Bound<'_, PyAny>) =
                tuple.extract()?;
            batch.push(sluice_client::OutgoingMessage::new(
                exchange,
                routing_key,
                convert::body(&body)?,
            ));
        } else {
            return Err(PyTypeError::new_err(format!(
                "publish_batch takes OutgoingMessage objects or (exchange, routing_key, body) \
                 tuples, not {}",
                item.get_type().name()?
            )));
        }
    }
    Ok(batch)
}

/// What `declare_queue` answers: the queue's name (the generated one for an empty name),
/// its ready messages and its consumers.
#[pyclass(module = "sluice", frozen, get_all)]
pub(crate) struct DeclaredQueue {
    /// The queue's name.
    name: String,
    /// Messages ready for delivery.
    ready: u64,
    /// Active consumers.
    consumers: u32,
}

impl From<DeclareQueueOk> for DeclaredQueue {
    fn from(ok: DeclareQueueOk) -> Self {
        DeclaredQueue {
            name: ok.name,
            ready: ok.ready,
            consumers: ok.consumers,
        }
    }
}

#[pymethods]
impl DeclaredQueue {
    fn __repr__(&self) -> String {
        format!(
            "DeclaredQueue(name={:?}, ready={}, consumers={})",
            self.name, self.ready, self.consumers
        )
    }
}

/// One consumer of `list_consumers` (protocol.md §15.2).
#[pyclass(module = "sluice", frozen, get_all)]
pub(crate) struct ConsumerInfo {
    /// The queue it consumes from.
    queue: String,
    /// Its tag.
    consumer_tag: String,
    /// The server's number for its connection.
    connection_id: u64,
    /// Its window; 0 = unlimited.
    prefetch: u32,
    /// Deliveries it holds unsettled (refreshed a few times a second).
    unacked: u32,
    /// It receives messages; false for a standby of a single-active-consumer queue.
    active: bool,
    /// Its priority (0 unless set).
    priority: i32,
    /// Its circuit; `None` without circuit breaking.
    circuit: Option<CircuitInfo>,
}

impl From<sluice_client::ConsumerSummary> for ConsumerInfo {
    fn from(c: sluice_client::ConsumerSummary) -> Self {
        ConsumerInfo {
            circuit: c.circuit.map(CircuitInfo::from_summary),
            queue: c.queue,
            consumer_tag: c.consumer_tag,
            connection_id: c.connection_id,
            prefetch: c.prefetch,
            unacked: c.unacked,
            active: c.active,
            priority: c.priority,
        }
    }
}

#[pymethods]
impl ConsumerInfo {
    fn __repr__(&self) -> String {
        format!(
            "ConsumerInfo(queue={:?}, consumer_tag={:?}, active={}, priority={})",
            self.queue,
            self.consumer_tag,
            if self.active { "True" } else { "False" },
            self.priority
        )
    }
}

/// What `inspect_queue` answers: a queue's settings and counters.
#[pyclass(module = "sluice", frozen)]
pub(crate) struct QueueInfo {
    /// The queue's name.
    #[pyo3(get)]
    name: String,
    /// As declared.
    #[pyo3(get)]
    durable: bool,
    /// As declared.
    #[pyo3(get)]
    exclusive: bool,
    /// As declared.
    #[pyo3(get)]
    auto_delete: bool,
    /// Messages ready for delivery.
    #[pyo3(get)]
    ready: u64,
    /// Messages delivered and not yet settled.
    #[pyo3(get)]
    unacked: u64,
    /// Active consumers.
    #[pyo3(get)]
    consumers: u32,
    /// Bytes (meta plus body) of ready and unacked messages.
    #[pyo3(get)]
    bytes: u64,
    /// How long the oldest ready message has waited, in milliseconds; 0 when none is ready.
    #[pyo3(get)]
    oldest_ready_age_ms: u64,
    /// Messages stored but waiting for their time (delayed, or requeued with a delay).
    #[pyo3(get)]
    scheduled: u64,
    /// Publishes confirmed as duplicates without being stored again (dedup window).
    #[pyo3(get)]
    duplicates_dropped: u64,
    args: QueueArguments,
}

impl From<InspectQueueOk> for QueueInfo {
    fn from(ok: InspectQueueOk) -> Self {
        QueueInfo {
            name: ok.name,
            durable: ok.durable,
            exclusive: ok.exclusive,
            auto_delete: ok.auto_delete,
            ready: ok.ready,
            unacked: ok.unacked,
            consumers: ok.consumers,
            bytes: ok.bytes,
            oldest_ready_age_ms: ok.oldest_ready_age_ms,
            scheduled: ok.scheduled,
            duplicates_dropped: ok.duplicates_dropped,
            args: ok.arguments,
        }
    }
}

#[pymethods]
impl QueueInfo {
    /// The arguments it was declared with (only those set), named as `declare_queue`'s
    /// keywords, durations in seconds.
    #[getter]
    fn arguments<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let args = PyDict::new(py);
        let a = &self.args;
        let secs = |ms: u64| ms as f64 / 1000.0;
        if let Some(v) = a.max_length {
            args.set_item("max_length", v)?;
        }
        if let Some(v) = a.max_length_bytes {
            args.set_item("max_length_bytes", v)?;
        }
        if let Some(v) = a.overflow {
            let name = match v {
                Overflow::DropHead => "drop-head",
                Overflow::RejectPublish => "reject-publish",
                Overflow::RejectPublishDlx => "reject-publish-dlx",
            };
            args.set_item("overflow", name)?;
        }
        if let Some(v) = a.message_ttl_ms {
            args.set_item("message_ttl", secs(v))?;
        }
        if let Some(v) = &a.dead_letter_exchange {
            args.set_item("dead_letter_exchange", v)?;
        }
        if let Some(v) = &a.dead_letter_routing_key {
            args.set_item("dead_letter_routing_key", v)?;
        }
        if let Some(v) = a.ack_timeout_ms {
            args.set_item("ack_timeout", secs(v))?;
        }
        if let Some(v) = a.delivery_limit {
            args.set_item("delivery_limit", v)?;
        }
        if let Some(v) = a.expires_ms {
            args.set_item("expires", secs(v))?;
        }
        if a.single_active_consumer == Some(1) {
            args.set_item("single_active_consumer", true)?;
        }
        if let Some(v) = a.max_message_bytes {
            args.set_item("max_message_bytes", v)?;
        }
        if let Some(v) = a.max_priority {
            args.set_item("max_priority", v)?;
        }
        if let Some(b) = a.retry_backoff {
            let multiplier = f64::from(b.multiplier_percent) / 100.0;
            args.set_item(
                "retry_backoff",
                (secs(b.initial_ms), multiplier, secs(b.max_ms)),
            )?;
        }
        if let Some(v) = a.dedup_window_ms {
            args.set_item("dedup_window", secs(v))?;
        }
        if let Some(v) = a.dedup_window_count {
            args.set_item("dedup_window_count", v)?;
        }
        Ok(args)
    }

    fn __repr__(&self) -> String {
        format!(
            "QueueInfo(name={:?}, ready={}, unacked={}, consumers={})",
            self.name, self.ready, self.unacked, self.consumers
        )
    }
}

/// A scheduled message, as `list_scheduled` returns it: stored, waiting for its time.
#[pyclass(module = "sluice", frozen)]
pub(crate) struct ScheduledMessage {
    /// Its sequence number in the queue (what `cancel_scheduled` takes).
    #[pyo3(get)]
    message_seq: u64,
    /// When it becomes ready, Unix milliseconds.
    #[pyo3(get)]
    due_at_ms: u64,
    /// When the queue stored it, Unix milliseconds.
    #[pyo3(get)]
    enqueued_at_ms: u64,
    /// Deliveries so far (0 unless requeued with a delay).
    #[pyo3(get)]
    delivery_count: u32,
    /// The exchange it was published to.
    #[pyo3(get)]
    exchange: String,
    /// Its routing key.
    #[pyo3(get)]
    routing_key: String,
    body: bytes::Bytes,
}

impl From<Scheduled> for ScheduledMessage {
    fn from(m: Scheduled) -> Self {
        let meta = sluice_client::wire::MessageMeta::from_slice(&m.meta).unwrap_or_default();
        ScheduledMessage {
            message_seq: m.message_seq,
            due_at_ms: m.due_at_ms,
            enqueued_at_ms: m.enqueued_at_ms,
            delivery_count: m.delivery_count,
            exchange: meta.exchange,
            routing_key: meta.routing_key,
            body: m.body,
        }
    }
}

#[pymethods]
impl ScheduledMessage {
    /// The body.
    #[getter]
    fn body<'py>(&self, py: Python<'py>) -> Bound<'py, pyo3::types::PyBytes> {
        pyo3::types::PyBytes::new(py, &self.body)
    }

    fn __repr__(&self) -> String {
        format!(
            "ScheduledMessage(message_seq={}, due_at_ms={}, delivery_count={})",
            self.message_seq, self.due_at_ms, self.delivery_count
        )
    }
}

/// One page of `list_scheduled`: the messages, and whether more follow.
pub(crate) fn scheduled_page(ok: sluice_client::ListScheduledOk) -> (Vec<ScheduledMessage>, bool) {
    (ok.messages.into_iter().map(Into::into).collect(), ok.more)
}
