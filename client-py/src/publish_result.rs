//! `PublishResult`: how the broker settled a published message it accepted.

use pyo3::prelude::*;
use sluice_client::Confirmed;

/// What `publish` returns once the broker confirmed the message (and what `publish_batch`
/// with `return_exceptions=True` lists for each accepted one). `duplicate` is true when a
/// queue it was routed to had accepted a message with the same `message_id` within its
/// dedup window, so did not store it again (other queues may have).
#[pyclass(module = "sluice", frozen, get_all, eq)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PublishResult {
    /// Confirmed as a duplicate: not stored again in some queue.
    duplicate: bool,
}

impl From<Confirmed> for PublishResult {
    fn from(c: Confirmed) -> Self {
        PublishResult {
            duplicate: c.is_duplicate(),
        }
    }
}

#[pymethods]
impl PublishResult {
    fn __repr__(&self) -> String {
        let duplicate = if self.duplicate { "True" } else { "False" };
        format!("PublishResult(duplicate={duplicate})")
    }
}
