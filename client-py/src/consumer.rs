//! Consumers: [`Consumer`] is an iterator of `Message`s for the blocking API, and
//! [`AsyncConsumer`] an async iterator of `AsyncMessage`s. Both wrap one [`ConsumerCore`].
//!
//! `AsyncClient.consume()` is not awaited (`async for msg in client.consume(...)`), so an
//! async consumer starts on first use; a blocking one starts in `Client.consume()`, where its
//! errors belong.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use futures_util::{FutureExt, StreamExt};
use pyo3::exceptions::PyStopAsyncIteration;
use pyo3::prelude::*;
use sluice_client::ConsumeOptions;
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;

use crate::client::Connection;
use crate::convert;
use crate::errors::{to_py, IntoPyResult};
use crate::message::{Handoff, Message};
use crate::options::CircuitInfo;
use crate::runtime;

enum State {
    /// Not started yet (async consumers start on first use).
    Pending {
        connection: Arc<Connection>,
        options: ConsumeOptions,
    },
    Active(sluice_client::Consumer),
    Ended,
}

/// What both consumer classes share: the Rust consumer behind a lock (one reader at a time),
/// and a token that stops a reader waiting on it.
pub(crate) struct ConsumerCore {
    queue: String,
    state: tokio::sync::Mutex<State>,
    stop: CancellationToken,
    ended: AtomicBool,
    tag: OnceLock<String>,
    /// Messages taken for an async caller that had stopped waiting (see [`Handoff`]): the
    /// next reader gets them first.
    given_back: Mutex<VecDeque<sluice_client::Message>>,
    /// Wakes a reader waiting on the stream when a message is given back.
    given_back_wake: Notify,
    /// The consumer's circuit as last noticed (circuit breaking), once it has started.
    circuit: OnceLock<watch::Receiver<sluice_client::CircuitNotice>>,
}

/// One step of a reader waiting for a message.
enum Step {
    Item(Option<sluice_client::Result<sluice_client::Message>>),
    GivenBack(sluice_client::Message),
    Stopped,
}

impl ConsumerCore {
    pub(crate) fn pending(
        connection: Arc<Connection>,
        queue: String,
        options: ConsumeOptions,
    ) -> Self {
        Self::new(
            queue,
            State::Pending {
                connection,
                options,
            },
        )
    }

    pub(crate) fn active(consumer: sluice_client::Consumer) -> Self {
        let queue = consumer.queue().to_owned();
        let tag = consumer.tag().to_owned();
        let circuit = consumer.circuit_changes();
        let core = Self::new(queue, State::Active(consumer));
        let _ = core.tag.set(tag);
        let _ = core.circuit.set(circuit);
        core
    }

    fn new(queue: String, state: State) -> Self {
        ConsumerCore {
            queue,
            state: tokio::sync::Mutex::new(state),
            stop: CancellationToken::new(),
            ended: AtomicBool::new(false),
            tag: OnceLock::new(),
            given_back: Mutex::default(),
            given_back_wake: Notify::new(),
            circuit: OnceLock::new(),
        }
    }

    /// Takes back a message a reader received after its caller stopped waiting for it (an
    /// asyncio `wait_for` that timed out, a cancelled task): it goes to the next reader, ahead
    /// of the stream. Once the consumer has ended it returns to the queue instead.
    pub(crate) fn give_back(&self, message: sluice_client::Message) {
        if self.is_closed() {
            requeue(message);
            return;
        }
        self.given_back
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push_back(message);
        self.given_back_wake.notify_one();
    }

    fn take_given_back(&self) -> Option<sluice_client::Message> {
        self.given_back
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop_front()
    }

    fn is_closed(&self) -> bool {
        self.stop.is_cancelled() || self.ended.load(Ordering::Relaxed)
    }

    /// Starts the consumer if it has not started.
    async fn start_locked(&self, state: &mut State) -> PyResult<()> {
        if let State::Pending {
            connection,
            options,
        } = state
        {
            let client = connection.get().await?;
            let consumer = client.consume(&self.queue, options.clone()).await.py()?;
            let _ = self.tag.set(consumer.tag().to_owned());
            let _ = self.circuit.set(consumer.circuit_changes());
            *state = State::Active(consumer);
        }
        Ok(())
    }

    async fn start(&self) -> PyResult<()> {
        let mut state = self.state.lock().await;
        self.start_locked(&mut state).await
    }

    /// What one item of the Rust stream means here.
    fn item(
        &self,
        state: &mut State,
        item: Option<sluice_client::Result<sluice_client::Message>>,
    ) -> PyResult<Option<sluice_client::Message>> {
        match item {
            Some(Ok(message)) => Ok(Some(message)),
            Some(Err(error)) => {
                self.end(state);
                Err(to_py(error))
            }
            None => {
                self.end(state);
                Ok(None)
            }
        }
    }

    fn end(&self, state: &mut State) {
        *state = State::Ended;
        self.ended.store(true, Ordering::Relaxed);
    }

    /// The next message; `None` once the consumer has ended or was cancelled, or when
    /// `timeout` passes first.
    async fn next(&self, timeout: Option<Duration>) -> PyResult<Option<sluice_client::Message>> {
        let mut state = tokio::select! {
            state = self.state.lock() => state,
            () = self.stop.cancelled() => return Ok(None),
        };
        if self.stop.is_cancelled() {
            return Ok(None);
        }
        self.start_locked(&mut state).await?;
        let State::Active(consumer) = &mut *state else {
            return Ok(None);
        };
        if let Some(message) = self.take_given_back() {
            return Ok(Some(message));
        }
        let next = async {
            loop {
                tokio::select! {
                    item = consumer.next() => return Step::Item(item),
                    () = self.stop.cancelled() => return Step::Stopped,
                    () = self.given_back_wake.notified() => {
                        if let Some(message) = self.take_given_back() {
                            return Step::GivenBack(message);
                        }
                    }
                }
            }
        };
        let step = match timeout {
            None => next.await,
            Some(timeout) => match tokio::time::timeout(timeout, next).await {
                Ok(step) => step,
                Err(_elapsed) => return Ok(None),
            },
        };
        match step {
            Step::Item(item) => self.item(&mut state, item),
            Step::GivenBack(message) => Ok(Some(message)),
            Step::Stopped => Ok(None),
        }
    }

    /// The next message if one is already here, without waiting; `None` when it would have
    /// to wait.
    fn next_now(&self) -> Option<PyResult<Option<sluice_client::Message>>> {
        if self.stop.is_cancelled() {
            return Some(Ok(None));
        }
        let mut state = self.state.try_lock().ok()?;
        if let Some(message) = self.take_given_back() {
            return Some(Ok(Some(message)));
        }
        match &mut *state {
            State::Active(consumer) => {
                // In the runtime's context: polling may start consuming again after a
                // reconnection, which arms a timer.
                let runtime = crate::runtime::runtime();
                let _context = runtime.enter();
                let item = consumer.next().now_or_never()?;
                Some(self.item(&mut state, item))
            }
            State::Ended => Some(Ok(None)),
            State::Pending { .. } => None,
        }
    }

    /// Its circuit as last noticed; closed before it started.
    fn circuit(&self) -> CircuitInfo {
        let notice = self
            .circuit
            .get()
            .map(|rx| rx.borrow().clone())
            .unwrap_or_default();
        CircuitInfo::from_notice(&notice)
    }

    fn describe(&self, class: &str) -> String {
        let tag = self
            .tag
            .get()
            .map_or("None".to_owned(), |t| format!("{t:?}"));
        let closed = if self.is_closed() { "True" } else { "False" };
        format!("<{class} queue={:?} tag={tag} closed={closed}>", self.queue)
    }

    /// Stops the consumer: no delivery follows, iteration ends, and the messages received
    /// but not yet handed out return to the queue. Idempotent; a closed connection is not
    /// an error (its consumers are gone already).
    async fn cancel(&self) -> PyResult<()> {
        self.stop.cancel();
        let mut state = self.state.lock().await;
        let previous = std::mem::replace(&mut *state, State::Ended);
        self.ended.store(true, Ordering::Relaxed);
        while let Some(message) = self.take_given_back() {
            requeue(message);
        }
        match previous {
            State::Active(mut consumer) => match consumer.cancel().await {
                Err(error) if error.is_connection_closed() => Ok(()),
                outcome => outcome.py(),
            },
            State::Pending { .. } | State::Ended => Ok(()),
        }
    }
}

/// A consumer of the blocking API: iterate it for messages. Ends when cancelled or when the
/// client closes; raises `ConsumerCancelled` if the broker stops it (its queue was deleted).
#[pyclass(module = "sluice", frozen)]
pub(crate) struct Consumer {
    core: Arc<ConsumerCore>,
}

impl Consumer {
    pub(crate) fn new(consumer: sluice_client::Consumer) -> Self {
        Consumer {
            core: Arc::new(ConsumerCore::active(consumer)),
        }
    }
}

fn to_message(
    py: Python<'_>,
    item: Option<sluice_client::Message>,
) -> PyResult<Option<Bound<'_, Message>>> {
    item.map(|m| Message::create(py, m)).transpose()
}

#[pymethods]
impl Consumer {
    fn __iter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    fn __next__<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, Message>>> {
        let item = match self.core.next_now() {
            Some(item) => item?,
            None => {
                let core = self.core.clone();
                runtime::block_on(py, async move { core.next(None).await })?
            }
        };
        to_message(py, item)
    }

    /// The next message, waiting at most `timeout` seconds (forever if `None`). `None` when
    /// the time passed first or the consumer has ended (see `is_closed`).
    #[pyo3(signature = (timeout = None))]
    fn receive<'py>(
        &self,
        py: Python<'py>,
        timeout: Option<f64>,
    ) -> PyResult<Option<Bound<'py, Message>>> {
        let timeout = convert::opt_seconds("timeout", timeout)?;
        let item = match self.core.next_now() {
            Some(item) => item?,
            None => {
                let core = self.core.clone();
                runtime::block_on(py, async move { core.next(timeout).await })?
            }
        };
        to_message(py, item)
    }

    /// Stops the consumer (idempotent). Messages already handed out must still be settled.
    fn cancel(&self, py: Python<'_>) -> PyResult<()> {
        let core = self.core.clone();
        runtime::block_on(py, async move { core.cancel().await })
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    fn __exit__(
        &self,
        py: Python<'_>,
        _exc_type: Option<&Bound<'_, PyAny>>,
        _exc_value: Option<&Bound<'_, PyAny>>,
        _traceback: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<bool> {
        self.cancel(py)?;
        Ok(false)
    }

    /// The queue it consumes from.
    #[getter]
    fn queue(&self) -> &str {
        &self.core.queue
    }

    /// The consumer tag (the broker's if none was asked for); `None` before it started.
    #[getter]
    fn tag(&self) -> Option<&str> {
        self.core.tag.get().map(String::as_str)
    }

    /// Its circuit (circuit breaking): `state` is `"closed"`, `"open"` or `"half-open"`,
    /// as the broker last said. Notices arrive while the consumer waits for messages.
    #[getter]
    fn circuit(&self) -> CircuitInfo {
        self.core.circuit()
    }

    /// True once the consumer was cancelled or has ended.
    #[getter]
    fn is_closed(&self) -> bool {
        self.core.is_closed()
    }

    fn __repr__(&self) -> String {
        self.core.describe("Consumer")
    }
}

/// A consumer of the async API: `async for msg in consumer`. Starts on first use (or in
/// `async with`), ends when cancelled or when the client closes.
#[pyclass(module = "sluice", frozen)]
pub(crate) struct AsyncConsumer {
    core: Arc<ConsumerCore>,
}

impl AsyncConsumer {
    pub(crate) fn new(connection: Arc<Connection>, queue: String, options: ConsumeOptions) -> Self {
        AsyncConsumer {
            core: Arc::new(ConsumerCore::pending(connection, queue, options)),
        }
    }
}

#[pymethods]
impl AsyncConsumer {
    fn __aiter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    fn __anext__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let core = self.core.clone();
        let or_stop = move |item: Option<sluice_client::Message>| {
            item.map(|message| Handoff::from_consumer(message, core.clone()))
                .ok_or_else(|| PyStopAsyncIteration::new_err(()))
        };
        if let Some(item) = self.core.next_now() {
            return runtime::ready(py, item.and_then(or_stop));
        }
        let core = self.core.clone();
        runtime::awaitable(py, async move { or_stop(core.next(None).await?) })
    }

    /// The next message, waiting at most `timeout` seconds (forever if `None`). `None` when
    /// the time passed first or the consumer has ended (see `is_closed`).
    #[pyo3(signature = (timeout = None))]
    fn receive<'py>(&self, py: Python<'py>, timeout: Option<f64>) -> PyResult<Bound<'py, PyAny>> {
        let timeout = convert::opt_seconds("timeout", timeout)?;
        let core = self.core.clone();
        runtime::coroutine(py, async move {
            let item = core.next(timeout).await?;
            Ok(item.map(|message| Handoff::from_consumer(message, core.clone())))
        })
    }

    /// Stops the consumer (idempotent). Messages already handed out must still be settled.
    fn cancel<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let core = self.core.clone();
        runtime::coroutine(py, async move { core.cancel().await })
    }

    fn __aenter__<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyAny>> {
        let core = slf.get().core.clone();
        let this = slf.clone().unbind();
        runtime::awaitable(slf.py(), async move {
            core.start().await?;
            Ok(this)
        })
    }

    fn __aexit__<'py>(
        &self,
        py: Python<'py>,
        _exc_type: Option<&Bound<'py, PyAny>>,
        _exc_value: Option<&Bound<'py, PyAny>>,
        _traceback: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let core = self.core.clone();
        runtime::awaitable(py, async move {
            core.cancel().await?;
            Ok(false)
        })
    }

    /// The queue it consumes from.
    #[getter]
    fn queue(&self) -> &str {
        &self.core.queue
    }

    /// The consumer tag (the broker's if none was asked for); `None` before it started.
    #[getter]
    fn tag(&self) -> Option<&str> {
        self.core.tag.get().map(String::as_str)
    }

    /// Its circuit (circuit breaking): `state` is `"closed"`, `"open"` or `"half-open"`,
    /// as the broker last said. Notices arrive while the consumer waits for messages.
    #[getter]
    fn circuit(&self) -> CircuitInfo {
        self.core.circuit()
    }

    /// True once the consumer was cancelled or has ended.
    #[getter]
    fn is_closed(&self) -> bool {
        self.core.is_closed()
    }

    fn __repr__(&self) -> String {
        self.core.describe("AsyncConsumer")
    }
}

/// Returns a message that no caller will see to its queue (delivered again, `redelivered`).
pub(crate) fn requeue(message: sluice_client::Message) {
    runtime::runtime().spawn(async move {
        // Fails only when the connection is gone, and then the broker has requeued it.
        let _ = message.nack(true).await;
    });
}
