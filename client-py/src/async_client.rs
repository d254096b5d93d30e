//! `AsyncClient`: the same methods as `Client`, returning coroutines. It connects on first
//! use (or in `await client.connect()` / `async with`), since a constructor cannot await.

use std::sync::Arc;

use pyo3::prelude::*;
use sluice_client::{DeleteExchangeOptions, DeleteQueueOptions};

use crate::client::{BatchOutcome, Connection, Reconnect};
use crate::consumer::AsyncConsumer;
use crate::convert;
use crate::errors::IntoPyResult;
use crate::message::Handoff;
use crate::options::{self, ConsumerInfo, DeclaredQueue, PublishArgs, QueueArgs, QueueInfo};
use crate::publish_result::PublishResult;
use crate::runtime;

/// An asyncio client: one connection to a Sluice broker, made on first use.
///
/// Every method returns a coroutine, which starts its work on the shared tokio runtime when
/// it is awaited (or its task runs); `consume()` returns an async iterator. Use it as an
/// async context manager, or await `close()`.
#[pyclass(module = "sluice", frozen)]
pub(crate) struct AsyncClient {
    connection: Arc<Connection>,
}

#[pymethods]
impl AsyncClient {
    #[new]
    #[pyo3(signature = (
        url = "sluice://", *, name = None, heartbeat = None, connect_timeout = None,
        request_timeout = 30.0, prefetch = 1000, reconnect_timeout = 60.0, resend = false,
    ))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        url: &str,
        name: Option<String>,
        heartbeat: Option<f64>,
        connect_timeout: Option<f64>,
        request_timeout: f64,
        prefetch: u32,
        reconnect_timeout: f64,
        resend: bool,
    ) -> PyResult<Self> {
        let connection = Connection::new(
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
        )?;
        Ok(AsyncClient {
            connection: Arc::new(connection),
        })
    }

    /// Connects if needed; resolves to the client.
    fn connect<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyAny>> {
        let connection = slf.get().connection.clone();
        let this = slf.clone().unbind();
        runtime::coroutine(slf.py(), async move {
            connection.get().await?;
            Ok(this)
        })
    }

    /// Declares a queue (see `Client.declare_queue`).
    #[pyo3(signature = (
        name, durable = true, *, exclusive = false, auto_delete = false, passive = false,
        max_length = None, max_length_bytes = None, overflow = None, message_ttl = None,
        dead_letter_exchange = None, dead_letter_routing_key = None, ack_timeout = None,
        delivery_limit = None, expires = None, max_priority = None, retry_backoff = None,
        dedup_window = None, dedup_window_count = None, single_active_consumer = false,
        replicas = None,
    ))]
    #[allow(clippy::too_many_arguments)]
    fn declare_queue<'py>(
        &self,
        py: Python<'py>,
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
    ) -> PyResult<Bound<'py, PyAny>> {
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
        let connection = self.connection.clone();
        runtime::coroutine(py, async move {
            let client = connection.get().await?;
            let ok = client.declare_queue(&name, options).await.py()?;
            Ok(DeclaredQueue::from(ok))
        })
    }

    /// Deletes a queue with its messages; resolves to how many messages it held.
    #[pyo3(signature = (name, *, if_unused = false, if_empty = false))]
    fn delete_queue<'py>(
        &self,
        py: Python<'py>,
        name: String,
        if_unused: bool,
        if_empty: bool,
    ) -> PyResult<Bound<'py, PyAny>> {
        let options = DeleteQueueOptions {
            if_unused,
            if_empty,
        };
        let connection = self.connection.clone();
        runtime::coroutine(py, async move {
            let client = connection.get().await?;
            client.delete_queue(&name, options).await.py()
        })
    }

    /// Removes a queue's ready messages; resolves to how many.
    fn purge_queue<'py>(&self, py: Python<'py>, name: String) -> PyResult<Bound<'py, PyAny>> {
        let connection = self.connection.clone();
        runtime::coroutine(py, async move {
            let client = connection.get().await?;
            client.purge_queue(&name).await.py()
        })
    }

    /// A queue's settings and counters.
    /// Every consumer (see `Client.list_consumers`).
    fn list_consumers<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let connection = self.connection.clone();
        runtime::coroutine(py, async move {
            let client = connection.get().await?;
            let all = client.list_consumers().await.py()?;
            Ok(all.into_iter().map(ConsumerInfo::from).collect::<Vec<_>>())
        })
    }

    /// What happened to the messages with this `message_id` (see `Client.trace_message`).
    fn trace_message<'py>(
        &self,
        py: Python<'py>,
        message_id: String,
    ) -> PyResult<Bound<'py, PyAny>> {
        let connection = self.connection.clone();
        runtime::coroutine(py, async move {
            let client = connection.get().await?;
            let ok = client.trace_message(&message_id).await.py()?;
            Ok(crate::history::histories(ok))
        })
    }

    fn inspect_queue<'py>(&self, py: Python<'py>, name: String) -> PyResult<Bound<'py, PyAny>> {
        let connection = self.connection.clone();
        runtime::coroutine(py, async move {
            let client = connection.get().await?;
            Ok(QueueInfo::from(client.inspect_queue(&name).await.py()?))
        })
    }

    /// Declares an exchange (see `Client.declare_exchange`).
    #[pyo3(signature = (
        name, kind = "direct", *, durable = true, auto_delete = false, passive = false,
        alternate_exchange = None, hash_header = None,
    ))]
    #[allow(clippy::too_many_arguments)]
    fn declare_exchange<'py>(
        &self,
        py: Python<'py>,
        name: String,
        kind: &str,
        durable: bool,
        auto_delete: bool,
        passive: bool,
        alternate_exchange: Option<String>,
        hash_header: Option<String>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let kind = options::exchange_kind(kind)?;
        let options = options::exchange_options(
            durable,
            auto_delete,
            passive,
            alternate_exchange,
            hash_header,
        );
        let connection = self.connection.clone();
        runtime::coroutine(py, async move {
            let client = connection.get().await?;
            client.declare_exchange(&name, kind, options).await.py()
        })
    }

    /// Deletes an exchange and its bindings.
    #[pyo3(signature = (name, *, if_unused = false))]
    fn delete_exchange<'py>(
        &self,
        py: Python<'py>,
        name: String,
        if_unused: bool,
    ) -> PyResult<Bound<'py, PyAny>> {
        let options = DeleteExchangeOptions { if_unused };
        let connection = self.connection.clone();
        runtime::coroutine(py, async move {
            let client = connection.get().await?;
            client.delete_exchange(&name, options).await.py()
        })
    }

    /// Binds `queue` to `exchange` (see `Client.bind`).
    #[pyo3(signature = (queue, exchange, routing_key = "", arguments = None, *, weight = None))]
    fn bind<'py>(
        &self,
        py: Python<'py>,
        queue: String,
        exchange: String,
        routing_key: &str,
        arguments: Option<&Bound<'py, PyAny>>,
        weight: Option<u32>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let arguments = options::binding_arguments(arguments, weight)?;
        let routing_key = routing_key.to_owned();
        let connection = self.connection.clone();
        runtime::coroutine(py, async move {
            let client = connection.get().await?;
            client
                .bind(&queue, &exchange, &routing_key, arguments)
                .await
                .py()
        })
    }

    /// Removes a binding (same identity as in `bind`).
    #[pyo3(signature = (queue, exchange, routing_key = "", arguments = None))]
    fn unbind<'py>(
        &self,
        py: Python<'py>,
        queue: String,
        exchange: String,
        routing_key: &str,
        arguments: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let arguments = convert::headers(arguments)?;
        let routing_key = routing_key.to_owned();
        let connection = self.connection.clone();
        runtime::coroutine(py, async move {
            let client = connection.get().await?;
            client
                .unbind(&queue, &exchange, &routing_key, arguments)
                .await
                .py()
        })
    }

    /// Publishes one message; resolves once the broker confirmed it (see `Client.publish`).
    #[pyo3(signature = (
        exchange, routing_key, body, *, headers = None, mandatory = false, persistent = true,
        content_type = None, content_encoding = None, message_id = None, correlation_id = None,
        reply_to = None, expiration = None, timestamp = None, priority = None, delay = None,
        deliver_at = None, trace_parent = None, trace_state = None,
    ))]
    #[allow(clippy::too_many_arguments)]
    fn publish<'py>(
        &self,
        py: Python<'py>,
        exchange: String,
        routing_key: String,
        body: &Bound<'py, PyAny>,
        headers: Option<&Bound<'py, PyAny>>,
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
    ) -> PyResult<Bound<'py, PyAny>> {
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
        let connection = self.connection.clone();
        runtime::coroutine(py, async move {
            let client = connection.get().await?;
            client
                .publish(&exchange, &routing_key, body, &options)
                .await
                .map(PublishResult::from)
                .py()
        })
    }

    /// The scheduled messages of `queue`, soonest first (see `Client.list_scheduled`).
    #[pyo3(signature = (queue, *, limit = 100, after = None))]
    fn list_scheduled<'py>(
        &self,
        py: Python<'py>,
        queue: String,
        limit: u32,
        after: Option<(u64, u64)>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let connection = self.connection.clone();
        runtime::coroutine(py, async move {
            let client = connection.get().await?;
            let ok = client.list_scheduled(&queue, limit, after).await.py()?;
            Ok(options::scheduled_page(ok))
        })
    }

    /// Deletes a scheduled message before its time (see `Client.cancel_scheduled`).
    fn cancel_scheduled<'py>(
        &self,
        py: Python<'py>,
        queue: String,
        message_seq: u64,
    ) -> PyResult<Bound<'py, PyAny>> {
        let connection = self.connection.clone();
        runtime::coroutine(py, async move {
            let client = connection.get().await?;
            client.cancel_scheduled(&queue, message_seq).await.py()
        })
    }

    /// Publishes many messages, pipelined (see `Client.publish_batch`).
    #[pyo3(signature = (messages, *, return_exceptions = false))]
    fn publish_batch<'py>(
        &self,
        py: Python<'py>,
        messages: &Bound<'py, PyAny>,
        return_exceptions: bool,
    ) -> PyResult<Bound<'py, PyAny>> {
        let batch = options::outgoing_messages(messages)?;
        let connection = self.connection.clone();
        runtime::coroutine(py, async move {
            let client = connection.get().await?;
            Ok(BatchOutcome {
                outcomes: client.publish_batch(batch).await,
                return_exceptions,
            })
        })
    }

    /// Takes one ready message from `queue` without a consumer; resolves to it or `None`.
    fn get<'py>(&self, py: Python<'py>, queue: String) -> PyResult<Bound<'py, PyAny>> {
        let connection = self.connection.clone();
        runtime::coroutine(py, async move {
            let client = connection.get().await?;
            Ok(client.get(&queue).await.py()?.map(Handoff::from_get))
        })
    }

    /// Takes up to `max` ready messages from `queue`, waiting up to `wait` seconds for the
    /// first (see `Client.get_many`); resolves to a list. Messages of an answer nobody awaits
    /// any more return to the queue.
    #[pyo3(signature = (queue, *, max = 10, wait = 0.0))]
    fn get_many<'py>(
        &self,
        py: Python<'py>,
        queue: String,
        max: u32,
        wait: f64,
    ) -> PyResult<Bound<'py, PyAny>> {
        let wait = convert::seconds("wait", wait)?;
        let connection = self.connection.clone();
        runtime::coroutine(py, async move {
            let client = connection.get().await?;
            let messages = client.get_many(&queue, max, wait).await.py()?;
            Ok(messages
                .into_iter()
                .map(Handoff::from_get)
                .collect::<Vec<_>>())
        })
    }

    /// An async iterator of messages from `queue`: `async for msg in client.consume(...)`.
    /// Not awaited; the consumer starts on first use.
    #[pyo3(signature = (
        queue, *, prefetch = None, consumer_tag = None, exclusive = false, ack_timeout = None,
        priority = None, circuit_breaker = None,
    ))]
    #[allow(clippy::too_many_arguments)]
    fn consume(
        &self,
        queue: String,
        prefetch: Option<u32>,
        consumer_tag: Option<String>,
        exclusive: bool,
        ack_timeout: Option<f64>,
        priority: Option<i32>,
        circuit_breaker: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<AsyncConsumer> {
        let options = options::consume_options(
            prefetch,
            consumer_tag,
            exclusive,
            ack_timeout,
            priority,
            circuit_breaker,
        )?;
        Ok(AsyncConsumer::new(self.connection.clone(), queue, options))
    }

    /// Closes the connection gracefully (see `Client.close`). Idempotent.
    fn close<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let connection = self.connection.clone();
        runtime::coroutine(py, async move { connection.close().await })
    }

    /// True once the connection has ended.
    #[getter]
    fn is_closed(&self) -> bool {
        self.connection.is_closed()
    }

    fn __aenter__<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyAny>> {
        Self::connect(slf)
    }

    /// Closes; a failure to close does not hide an exception raised in the block.
    fn __aexit__<'py>(
        &self,
        py: Python<'py>,
        exc_type: Option<&Bound<'py, PyAny>>,
        _exc_value: Option<&Bound<'py, PyAny>>,
        _traceback: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let connection = self.connection.clone();
        let raised = exc_type.is_some();
        runtime::coroutine(py, async move {
            match connection.close().await {
                Err(error) if !raised => Err(error),
                _ => Ok(false),
            }
        })
    }

    fn __repr__(&self) -> String {
        self.connection.describe("AsyncClient")
    }
}
