//! The tokio runtime shared by every client of the process, and the ways Python waits for a
//! Rust future on it.
//!
//! Blocking calls ([`block_on`]) release the GIL while they wait, in slices, checking for
//! signals between slices so that Ctrl-C interrupts even a consumer waiting on an empty
//! queue. Async calls ([`awaitable`]) hand the future to the runtime and return an asyncio
//! future, through pyo3-async-runtimes' generic bridge over [`SharedRuntime`]; the methods
//! users call by name wrap that in a coroutine ([`coroutine`]) that starts it when awaited.

use std::cell::OnceCell;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures_util::FutureExt;
use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyCFunction;
use pyo3::IntoPyObjectExt;
use pyo3_async_runtimes::generic::{self, ContextExt, Runtime as GenericRuntime};
use pyo3_async_runtimes::TaskLocals;
use tokio::runtime::{Builder, Runtime};

/// How long a blocking call waits with the GIL released before it checks for signals.
const SIGNAL_CHECK_INTERVAL: Duration = Duration::from_millis(50);

/// How long the shutdown at interpreter exit waits for the runtime's tasks and threads.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(1);

/// The runtime and the process that started it.
static RUNTIME: Mutex<Option<(u32, Arc<Runtime>)>> = Mutex::new(None);

/// The shared runtime, started on first use.
///
/// A process forked after it started (multiprocessing's default start method on Linux)
/// inherits the runtime without its worker threads, so a child starts its own. The parent's
/// is forgotten there: dropping it would wait for threads that do not exist. Clients created
/// before the fork belong to the parent and cannot be used in the child.
pub(crate) fn runtime() -> Arc<Runtime> {
    let pid = std::process::id();
    let mut slot = RUNTIME.lock().unwrap_or_else(PoisonError::into_inner);
    match &*slot {
        Some((owner, runtime)) if *owner == pid => runtime.clone(),
        _ => {
            let runtime = Arc::new(
                Builder::new_multi_thread()
                    .enable_all()
                    .thread_name("sluice-runtime")
                    .build()
                    .expect("cannot start the tokio runtime of the sluice client"),
            );
            if let Some(inherited) = slot.replace((pid, runtime.clone())) {
                std::mem::forget(inherited);
            }
            runtime
        }
    }
}

/// Stops the runtime at interpreter exit (registered with `atexit`), before finalization
/// starts: a task finishing later would attach to a finalizing interpreter (an asyncio
/// future being resolved after its loop and the interpreter are gone), which crashes CPython.
/// Waits with the GIL released, so tasks already waiting for it can finish.
///
/// The runtime is taken only while the slot holds its last reference. Runtime threads clone
/// it for a moment when they spawn a task (pyo3-async-runtimes does so when it resolves an
/// asyncio future); had the slot let go of it then, the last reference would drop on a
/// runtime thread, which tokio forbids: it panics there and the process dies of SIGSEGV on
/// its way out. Such a clone is gone within microseconds, so this waits a little for it; a
/// daemon thread still blocked in a call holds its reference for longer, and then the runtime
/// is left to it.
#[pyfunction]
pub(crate) fn shutdown(py: Python<'_>) {
    let pid = std::process::id();
    let deadline = std::time::Instant::now() + SHUTDOWN_TIMEOUT;
    let runtime = loop {
        match take_if_last(pid) {
            Taken::Last(runtime) => break runtime,
            Taken::NotOurs => return,
            Taken::Shared if std::time::Instant::now() >= deadline => return,
            Taken::Shared => py.detach(|| std::thread::sleep(Duration::from_millis(1))),
        }
    };
    py.detach(|| runtime.shutdown_timeout(SHUTDOWN_TIMEOUT));
}

/// What [`take_if_last`] found in the slot.
enum Taken {
    /// The runtime, which nothing else references any more.
    Last(Runtime),
    /// Another thread holds a reference: the slot keeps the runtime.
    Shared,
    /// No runtime of this process.
    NotOurs,
}

/// Takes this process's runtime out of the slot if the slot holds its only reference.
/// References are only cloned from the slot under its lock, so the count cannot grow while
/// this looks at it.
fn take_if_last(pid: u32) -> Taken {
    let mut slot = RUNTIME.lock().unwrap_or_else(PoisonError::into_inner);
    match &*slot {
        Some((owner, runtime)) if *owner == pid => {
            if Arc::strong_count(runtime) > 1 {
                return Taken::Shared;
            }
        }
        _ => return Taken::NotOurs,
    }
    let Some((_, runtime)) = slot.take() else {
        return Taken::NotOurs;
    };
    match Arc::try_unwrap(runtime) {
        Ok(runtime) => Taken::Last(runtime),
        Err(runtime) => {
            // Unreachable while clones come from the slot only; keep it rather than drop it.
            *slot = Some((pid, runtime));
            Taken::Shared
        }
    }
}

/// Runs `future` on the shared runtime and waits for it with the GIL released. Signals are
/// checked every [`SIGNAL_CHECK_INTERVAL`]: a `KeyboardInterrupt` raised by a handler drops
/// the future and propagates.
pub(crate) fn block_on<F, T>(py: Python<'_>, future: F) -> PyResult<T>
where
    F: Future<Output = PyResult<T>> + Send,
    T: Send,
{
    let runtime = runtime();
    let mut future = std::pin::pin!(future);
    loop {
        let step = py.detach(|| {
            // The timer is created inside `block_on`, in the runtime's context.
            runtime.block_on(async {
                tokio::time::timeout(SIGNAL_CHECK_INTERVAL, future.as_mut()).await
            })
        });
        match step {
            Ok(output) => return output,
            Err(_elapsed) => py.check_signals()?,
        }
    }
}

/// Like [`block_on`], but first polls the future once without releasing the GIL: settling a
/// message, or taking one a consumer already holds, completes at once.
pub(crate) fn now_or_block_on<F, T>(py: Python<'_>, future: F) -> PyResult<T>
where
    F: Future<Output = PyResult<T>> + Send,
    T: Send,
{
    let mut future = std::pin::pin!(future);
    let polled = {
        // Inside the runtime's context, in case the future touches a timer.
        let runtime = runtime();
        let _context = runtime.enter();
        future.as_mut().now_or_never()
    };
    match polled {
        Some(output) => output,
        None => block_on(py, future),
    }
}

/// Spawns `future` on the shared runtime and returns an asyncio future for its output.
/// Cancelling the asyncio future drops the Rust one.
pub(crate) fn awaitable<'py, F, T>(py: Python<'py>, future: F) -> PyResult<Bound<'py, PyAny>>
where
    F: Future<Output = PyResult<T>> + Send + 'static,
    T: for<'a> IntoPyObject<'a> + Send + 'static,
{
    generic::future_into_py::<SharedRuntime, _, T>(py, future)
}

/// Like [`awaitable`], but returns a coroutine that spawns `future` when it is first run and
/// awaits it: what the async methods users call by name return, so that `asyncio.create_task`
/// and `TaskGroup.create_task` accept them, and so that they can be created outside the
/// event loop that runs them (`asyncio.run(client.connect())`).
pub(crate) fn coroutine<'py, F, T>(py: Python<'py>, future: F) -> PyResult<Bound<'py, PyAny>>
where
    F: Future<Output = PyResult<T>> + Send + 'static,
    T: for<'a> IntoPyObject<'a> + Send + 'static,
{
    static AWAIT_LATER: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    let future = Mutex::new(Some(future));
    let start = PyCFunction::new_closure(py, None, None, move |args, _kwargs| {
        let future = future.lock().unwrap_or_else(PoisonError::into_inner).take();
        match future {
            Some(future) => awaitable(args.py(), future).map(Bound::unbind),
            // Python's own words for awaiting a coroutine twice.
            None => Err(PyRuntimeError::new_err(
                "cannot reuse already awaited coroutine",
            )),
        }
    })?;
    AWAIT_LATER
        .import(py, "sluice._coroutine", "await_later")?
        .call1((start,))
}

/// An asyncio future that is already done, for calls that complete without waiting (acks).
pub(crate) fn ready<'py, T>(py: Python<'py>, outcome: PyResult<T>) -> PyResult<Bound<'py, PyAny>>
where
    T: IntoPyObject<'py>,
{
    let future = pyo3_async_runtimes::get_running_loop(py)?.call_method0("create_future")?;
    match outcome {
        Ok(value) => future.call_method1("set_result", (value.into_bound_py_any(py)?,))?,
        Err(error) => future.call_method1("set_exception", (error.into_value(py),))?,
    };
    Ok(future)
}

/// pyo3-async-runtimes' view of [`runtime()`].
pub(crate) struct SharedRuntime;

tokio::task_local! {
    /// The asyncio event loop and context of the Python call that spawned the task.
    static TASK_LOCALS: OnceCell<TaskLocals>;
}

impl GenericRuntime for SharedRuntime {
    type JoinError = tokio::task::JoinError;
    type JoinHandle = tokio::task::JoinHandle<()>;

    fn spawn<F>(future: F) -> Self::JoinHandle
    where
        F: Future<Output = ()> + Send + 'static,
    {
        runtime().spawn(future)
    }

    fn spawn_blocking<F>(f: F) -> Self::JoinHandle
    where
        F: FnOnce() + Send + 'static,
    {
        runtime().spawn_blocking(f)
    }
}

impl ContextExt for SharedRuntime {
    fn scope<F, R>(locals: TaskLocals, future: F) -> Pin<Box<dyn Future<Output = R> + Send>>
    where
        F: Future<Output = R> + Send + 'static,
    {
        let cell = OnceCell::new();
        let _ = cell.set(locals);
        Box::pin(TASK_LOCALS.scope(cell, future))
    }

    fn get_task_locals() -> Option<TaskLocals> {
        TASK_LOCALS
            .try_with(|cell| cell.get().cloned())
            .unwrap_or_default()
    }
}
