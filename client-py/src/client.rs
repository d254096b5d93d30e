//! The blocking `Client`, and [`Connection`], the lazily connected Rust client that both
//! `Client` and `AsyncClient` wrap.
//!
//! Every method builds the Rust client's options from its keywords, then waits for the
//! Rust future with the GIL released ([`runtime::block_on`]).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use pyo3::prelude::*;
use pyo3::types::PyList;
use sluice_client::{
    ClientBuilder, Confirmed, ConnectUrl, DeleteExchangeOptions, DeleteQueueOptions, Error,
};

use crate::consumer::Consumer;
use crate::convert;
use crate::errors::{self, to_py, IntoPyResult};
use crate::message::Message;
use crate::options::{self, ConsumerInfo, DeclaredQueue, PublishArgs, QueueArgs, QueueInfo};
use crate::publish_result::PublishResult;
use crate::runtime;

/// The reconnection keywords of both clients: `reconnect_timeout` (seconds; 0 turns
/// reconnection off) and `resend` (a fresh `message_id` on every message without one).
pub(crate) struct Reconnect {
    pub(crate) timeout: f64,
    pub(crate) resend: bool,
}

/// A connection that is made on first use, shared by a client and its async consumers.
pub(crate) struct Connection {
    url: ConnectUrl,
    builder: ClientBuilder,
    client: tokio::sync::OnceCell<sluice_client::Client>,
    closed: AtomicBool,
}

impl Connection {
    /// Parses the URL (raising `InvalidUrl` now rather than at the first call) and keeps
    /// the settings for connecting.
    pub(crate) fn new(
        url: &str,
        name: Option<String>,
        heartbeat: Option<f64>,
        connect_timeout: Option<f64>,
        request_timeout: f64,
        prefetch: u32,
        reconnect: Reconnect,
    ) -> PyResult<Self> {
        let url = ConnectUrl::parse(url).map_err(|e| to_py(Error::InvalidUrl(e)))?;
        let mut builder = ClientBuilder::new()
            .prefetch(prefetch)
            .reconnect_timeout(convert::seconds("reconnect_timeout", reconnect.timeout)?)
            .resend(reconnect.resend);
        if let Some(name) = name {
            builder = builder.name(name);
        }
        if let Some(interval) = convert::opt_seconds("heartbeat", heartbeat)? {
            builder = builder.heartbeat(interval);
        }
        if let Some(timeout) = convert::opt_seconds("connect_timeout", connect_timeout)? {
            builder = builder.connect_timeout(timeout);
        }
        // `float("inf")` waits forever.
        let request_timeout = if request_timeout == f64::INFINITY {
            Duration::MAX
        } else {
            convert::seconds("request_timeout", request_timeout)?
        };
        builder = builder.request_timeout(request_timeout);
        Ok(Connection {
            url,
            builder,
            client: tokio::sync::OnceCell::new(),
            closed: AtomicBool::new(false),
        })
    }

    /// The connected client, connecting first if needed. A failed connect is retried by
    /// the next call; a closed connection stays closed.
    pub(crate) async fn get(&self) -> PyResult<sluice_client::Client> {
        if self.closed.load(Ordering::Acquire) {
            return Err(errors::closed());
        }
        let client = self
            .client
            .get_or_try_init(|| self.builder.clone().connect_url(&self.url))
            .await
            .py()?;
        if self.closed.load(Ordering::Acquire) {
            // `close()` ran while this call was connecting.
            let _ = client.close().await;
            return Err(errors::closed());
        }
        Ok(client.clone())
    }

    /// Closes gracefully (every publish made before is settled first). Idempotent.
    pub(crate) async fn close(&self) -> PyResult<()> {
        self.closed.store(true, Ordering::Release);
        match self.client.get() {
            Some(client) => client.close().await.py(),
            None => Ok(()),
        }
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire) || self.client.get().is_some_and(|c| c.is_closed())
    }

    pub(crate) fn describe(&self, class: &str) -> String {
        format!(
            "<{class} url={} closed={}>",
            self.url,
            if self.is_closed() { "True" } else { "False" }
        )
    }
}

/// The outcomes of `publish_batch`: `None` (or raise the first failure), or with
/// `return_exceptions=True` a list with a `PublishResult` or the exception for each message.
pub(crate) struct BatchOutcome {
    pub(crate) outcomes: Vec<Result<Confirmed, Error>>,
    pub(crate) return_exceptions: bool,
}

impl<'py> IntoPyObject<'py> for BatchOutcome {
    type Target = PyAny;
    type Output = Bound<'py, PyAny>;
    type Error = PyErr;

    fn into_pyobject(self, py: Python<'py>) -> PyResult<Self::Output> {
        if self.return_exceptions {
            let list = PyList::empty(py);
            for outcome in self.outcomes {
                match outcome {
                    Ok(confirmed) => list.append(PublishResult::from(confirmed))?,
                    Err(error) => list.append(to_py(error).into_value(py))?,
                }
            }
            Ok(list.into_any())
        } else {
            match self.outcomes.into_iter().find_map(Result::err) {
                Some(error) => Err(to_py(error)),
                None => Ok(py.None().into_bound(py)),
            }
        }
    }
}

/// A blocking client: one connection to a Sluice broker, made in the constructor.
///
/// Calls release the GIL while they wait, so other threads run; a `Client` may be shared
/// between threads. Use it as a context manager, or call `close()`.
#[pyclass(module = "sluice", frozen)]
pub(crate) struct Client {
    connection: Arc<Connection>,
}

#[pymethods]
impl Client {
    #[new]
    #[pyo3(signature = (
        url = "sluice://", *, name = None, heartbeat = None, connect_timeout = None,
        request_timeout = 30.0, prefetch = 1000, reconnect_timeout = 60.0, resend = false,
    ))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        url: &str,
        name: Option<String>,
        heartbeat: Option<f64>,
        connect_timeout: Option<f64>,
        request_timeout: f64,
        prefetch: u32,
        reconnect_timeout: f64,
        resend: bool,
    ) -> PyResult<Self> {
        let connection = Arc::new(Connection::new(
            url,
            name,
            heartbeat,
            connect_timeout,
            request_timeout,
            prefetch,
            Reconnect {
                timeout: reconnect_timeout,
                resend,
            },
        )?);
        runtime::block_on(py, connection.get())?;
        Ok(Client { connection })
    }

    /// Connects if needed (the constructor already did); returns the client.
    fn connect(slf: Py<Self>, py: Python<'_>) -> PyResult<Py<Self>> {
        runtime::block_on(py, slf.get().connection.get())?;
        Ok(slf)
    }

    /// Declares a queue: creates it, or checks that the existing one has the same settings
    /// (`PreconditionFailed` otherwise). An empty name asks the broker for a unique one.
    #[pyo3(signature = (
        name, durable = true, *, exclusive = false, auto_delete = false, passive = false,
        max_length = None, max_length_bytes = None, overflow = None, message_ttl = None,
        dead_letter_exchange = None, dead_letter_routing_key = None, ack_timeout = None,
        delivery_limit = None, expires = None, max_priority = None, retry_backoff = None,
        dedup_window = None, dedup_window_count = None, single_active_consumer = false,
        replicas = None,
    ))]
    #[allow(clippy::too_many_arguments)]
    fn declare_queue(
        &self,
        py: Python<'_>,
        name: String,
        durable: bool,
        exclusive: bool,
        auto_delete: bool,
        passive: bool,
        max_length: Option<u64>,
        max_length_bytes: Option<u64>,
        overflow: Option<String>,
        message_ttl: Option<f64>,
        dead_letter_exchange: Option<String>,
        dead_letter_routing_key: Option<String>,
        ack_timeout: Option<f64>,
        delivery_limit: Option<u32>,
        expires: Option<f64>,
        max_priority: Option<u8>,
        retry_backoff: Option<(f64, f64, f64)>,
        dedup_window: Option<f64>,
        dedup_window_count: Option<u32>,
        single_active_consumer: bool,
        replicas: Option<u8>,
    ) -> PyResult<DeclaredQueue> {
        let options = QueueArgs {
            exclusive,
            auto_delete,
            passive,
            max_length,
            max_length_bytes,
            overflow,
            message_ttl,
            dead_letter_exchange,
            dead_letter_routing_key,
            ack_timeout,
            delivery_limit,
            expires,
            max_priority,
            retry_backoff,
            dedup_window,
            dedup_window_count,
            single_active_consumer,
            replicas,
        }
        .into_options(durable)?;
        runtime::block_on(py, async {
            let client = self.connection.get().await?;
            Ok(client.declare_queue(&name, options).await.py()?.into())
        })
    }

    /// Deletes a queue with its messages; returns how many messages it held.
    #[pyo3(signature = (name, *, if_unused = false, if_empty = false))]
    fn delete_queue(
        &self,
        py: Python<'_>,
        name: String,
        if_unused: bool,
        if_empty: bool,
    ) -> PyResult<u64> {
        let options = DeleteQueueOptions {
            if_unused,
            if_empty,
        };
        runtime::block_on(py, async {
            let client = self.connection.get().await?;
            client.delete_queue(&name, options).await.py()
        })
    }

    /// Removes a queue's ready messages; returns how many.
    fn purge_queue(&self, py: Python<'_>, name: String) -> PyResult<u64> {
        runtime::block_on(py, async {
            let client = self.connection.get().await?;
            client.purge_queue(&name).await.py()
        })
    }

    /// Every consumer the user may see, by queue, tag and connection, with whether it is the
    /// active one (a standby of a single-active-consumer queue is not) and its priority.
    fn list_consumers(&self, py: Python<'_>) -> PyResult<Vec<ConsumerInfo>> {
        runtime::block_on(py, async {
            let client = self.connection.get().await?;
            let all = client.list_consumers().await.py()?;
            Ok(all.into_iter().map(ConsumerInfo::from).collect())
        })
    }

    /// What happened to the messages whose `message_id` is `message_id` ("why is this
    /// message stuck?"), from the queues of the vhost the user may read: `(histories,
    /// truncated)`, one `MessageHistory` per queue that holds (or held, within its window)
    /// such a message. Only messages published with a `message_id` are followed.
    fn trace_message(
        &self,
        py: Python<'_>,
        message_id: String,
    ) -> PyResult<(Vec<crate::history::MessageHistory>, bool)> {
        runtime::block_on(py, async {
            let client = self.connection.get().await?;
            Ok(crate::history::histories(
                client.trace_message(&message_id).await.py()?,
            ))
        })
    }

    /// A queue's settings and counters.
    fn inspect_queue(&self, py: Python<'_>, name: String) -> PyResult<QueueInfo> {
        runtime::block_on(py, async {
            let client = self.connection.get().await?;
            Ok(client.inspect_queue(&name).await.py()?.into())
        })
    }

    /// Declares an exchange of `kind` `"direct"`, `"fanout"`, `"topic"`, `"headers"`,
    /// `"weighted"` or `"consistent-hash"` (`hash_header`: hash that header, not the routing
    /// key).
    #[pyo3(signature = (
        name, kind = "direct", *, durable = true, auto_delete = false, passive = false,
        alternate_exchange = None, hash_header = None,
    ))]
    #[allow(clippy::too_many_arguments)]
    fn declare_exchange(
        &self,
        py: Python<'_>,
        name: String,
        kind: &str,
        durable: bool,
        auto_delete: bool,
        passive: bool,
        alternate_exchange: Option<String>,
        hash_header: Option<String>,
    ) -> PyResult<()> {
        let kind = options::exchange_kind(kind)?;
        let options = options::exchange_options(
            durable,
            auto_delete,
            passive,
            alternate_exchange,
            hash_header,
        );
        runtime::block_on(py, async {
            let client = self.connection.get().await?;
            client.declare_exchange(&name, kind, options).await.py()
        })
    }

    /// Deletes an exchange and its bindings.
    #[pyo3(signature = (name, *, if_unused = false))]
    fn delete_exchange(&self, py: Python<'_>, name: String, if_unused: bool) -> PyResult<()> {
        let options = DeleteExchangeOptions { if_unused };
        runtime::block_on(py, async {
            let client = self.connection.get().await?;
            client.delete_exchange(&name, options).await.py()
        })
    }

    /// Binds `queue` to `exchange` with a binding key (direct, topic) or header arguments
    /// (headers exchanges, with `x-match`); `weight` is a weighted or consistent-hash
    /// binding's share (binding again with another weight changes it live).
    #[pyo3(signature = (queue, exchange, routing_key = "", arguments = None, *, weight = None))]
    fn bind(
        &self,
        py: Python<'_>,
        queue: String,
        exchange: String,
        routing_key: &str,
        arguments: Option<&Bound<'_, PyAny>>,
        weight: Option<u32>,
    ) -> PyResult<()> {
        let arguments = options::binding_arguments(arguments, weight)?;
        runtime::block_on(py, async {
            let client = self.connection.get().await?;
            client
                .bind(&queue, &exchange, routing_key, arguments)
                .await
                .py()
        })
    }

    /// Removes a binding (same identity as in `bind`).
    #[pyo3(signature = (queue, exchange, routing_key = "", arguments = None))]
    fn unbind(
        &self,
        py: Python<'_>,
        queue: String,
        exchange: String,
        routing_key: &str,
        arguments: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        let arguments = convert::headers(arguments)?;
        runtime::block_on(py, async {
            let client = self.connection.get().await?;
            client
                .unbind(&queue, &exchange, routing_key, arguments)
                .await
                .py()
        })
    }

    /// Publishes one message and returns once the broker confirmed it (stored durably, if
    /// persistent and its queues are durable). Raises `PublishRejected` (`Unroutable`,
    /// `QueueFull`, ...) if the broker refused it.
    #[pyo3(signature = (
        exchange, routing_key, body, *, headers = None, mandatory = false, persistent = true,
        content_type = None, content_encoding = None, message_id = None, correlation_id = None,
        reply_to = None, expiration = None, timestamp = None, priority = None, delay = None,
        deliver_at = None, trace_parent = None, trace_state = None,
    ))]
    #[allow(clippy::too_many_arguments)]
    fn publish(
        &self,
        py: Python<'_>,
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
    ) -> PyResult<PublishResult> {
        let body = convert::body(body)?;
        let options = PublishArgs {
            py,
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
        runtime::block_on(py, async {
            let client = self.connection.get().await?;
            client
                .publish(&exchange, &routing_key, body, &options)
                .await
                .map(PublishResult::from)
                .py()
        })
    }

    /// Publishes many messages, pipelined, and returns once all are confirmed. Takes
    /// `OutgoingMessage`s or `(exchange, routing_key, body)` tuples. Raises the first
    /// failure (the other messages went out), or with `return_exceptions=True` returns one
    /// entry per message: its `PublishResult` or its exception.
    #[pyo3(signature = (messages, *, return_exceptions = false))]
    fn publish_batch<'py>(
        &self,
        py: Python<'py>,
        messages: &Bound<'py, PyAny>,
        return_exceptions: bool,
    ) -> PyResult<Bound<'py, PyAny>> {
        let batch = options::outgoing_messages(messages)?;
        let outcomes = runtime::block_on(py, async {
            let client = self.connection.get().await?;
            Ok(client.publish_batch(batch).await)
        })?;
        BatchOutcome {
            outcomes,
            return_exceptions,
        }
        .into_pyobject(py)
    }

    /// The scheduled messages of `queue` (stored, waiting for their time), soonest first:
    /// up to `limit` (at most 1000) after `after`, the `(due_at_ms, message_seq)` of the last
    /// message of the previous page. Returns `(messages, more)`.
    #[pyo3(signature = (queue, *, limit = 100, after = None))]
    fn list_scheduled(
        &self,
        py: Python<'_>,
        queue: String,
        limit: u32,
        after: Option<(u64, u64)>,
    ) -> PyResult<(Vec<options::ScheduledMessage>, bool)> {
        runtime::block_on(py, async {
            let client = self.connection.get().await?;
            let ok = client.list_scheduled(&queue, limit, after).await.py()?;
            Ok(options::scheduled_page(ok))
        })
    }

    /// Deletes scheduled message `message_seq` of `queue` before its time; `NotFound` if
    /// it does not wait there.
    fn cancel_scheduled(&self, py: Python<'_>, queue: String, message_seq: u64) -> PyResult<()> {
        runtime::block_on(py, async {
            let client = self.connection.get().await?;
            client.cancel_scheduled(&queue, message_seq).await.py()
        })
    }

    /// Takes one ready message from `queue` without a consumer, or `None`. Settle it like a
    /// consumer's.
    fn get<'py>(&self, py: Python<'py>, queue: String) -> PyResult<Option<Bound<'py, Message>>> {
        let message = runtime::block_on(py, async {
            let client = self.connection.get().await?;
            client.get(&queue).await.py()
        })?;
        message.map(|m| Message::create(py, m)).transpose()
    }

    /// Takes up to `max` (1..=1000) ready messages from `queue`, waiting up to `wait` seconds
    /// (at most 20) for the first: returns as soon as any is ready, with what is ready then,
    /// or an empty list when `wait` passes. Settle each like a consumer's message.
    #[pyo3(signature = (queue, *, max = 10, wait = 0.0))]
    fn get_many<'py>(
        &self,
        py: Python<'py>,
        queue: String,
        max: u32,
        wait: f64,
    ) -> PyResult<Vec<Bound<'py, Message>>> {
        let wait = convert::seconds("wait", wait)?;
        let messages = runtime::block_on(py, async {
            let client = self.connection.get().await?;
            client.get_many(&queue, max, wait).await.py()
        })?;
        messages
            .into_iter()
            .map(|m| Message::create(py, m))
            .collect()
    }

    /// Starts consuming from `queue`: iterate the returned `Consumer` for messages.
    /// `prefetch` caps unsettled deliveries (default: the client's); `ack_timeout` (seconds)
    /// overrides the queue's lease.
    #[pyo3(signature = (
        queue, *, prefetch = None, consumer_tag = None, exclusive = false, ack_timeout = None,
        priority = None, circuit_breaker = None,
    ))]
    #[allow(clippy::too_many_arguments)]
    fn consume(
        &self,
        py: Python<'_>,
        queue: String,
        prefetch: Option<u32>,
        consumer_tag: Option<String>,
        exclusive: bool,
        ack_timeout: Option<f64>,
        priority: Option<i32>,
        circuit_breaker: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Consumer> {
        let options = options::consume_options(
            prefetch,
            consumer_tag,
            exclusive,
            ack_timeout,
            priority,
            circuit_breaker,
        )?;
        let consumer = runtime::block_on(py, async {
            let client = self.connection.get().await?;
            client.consume(&queue, options).await.py()
        })?;
        Ok(Consumer::new(consumer))
    }

    /// Closes the connection gracefully: messages published before are settled first,
    /// consumers end, unsettled deliveries return to their queues. Idempotent.
    fn close(&self, py: Python<'_>) -> PyResult<()> {
        runtime::block_on(py, self.connection.close())
    }

    /// True once the connection has ended.
    #[getter]
    fn is_closed(&self) -> bool {
        self.connection.is_closed()
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    /// Closes; a failure to close does not hide an exception raised in the block.
    fn __exit__(
        &self,
        py: Python<'_>,
        exc_type: Option<&Bound<'_, PyAny>>,
        _exc_value: Option<&Bound<'_, PyAny>>,
        _traceback: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<bool> {
        match self.close(py) {
            Err(error) if exc_type.is_none() => Err(error),
            _ => Ok(false),
        }
    }

    fn __repr__(&self) -> String {
        self.connection.describe("Client")
    }
}
