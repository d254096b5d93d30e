//! `Client.trace_message`'s answer (protocol.md §21): what happened to the messages with a
//! `message_id`, one `MessageHistory` per queue that holds (or held, within its window) one,
//! each with its `HistoryEvent`s, oldest first.

use pyo3::prelude::*;
use sluice_client::wire::{self, HistoryEventKind};

/// One queue's record of one message.
#[pyclass(module = "sluice", frozen, get_all)]
#[derive(Debug)]
pub(crate) struct MessageHistory {
    /// The queue.
    queue: String,
    /// The message's sequence number in that queue.
    message_seq: u64,
    /// Its `message_id`.
    message_id: String,
    /// Where it is now: "ready", "delivered", "scheduled", "moving" or "gone".
    state: &'static str,
    /// Lease deadline (delivered) or due time (scheduled), Unix ms; None otherwise.
    deadline_ms: Option<u64>,
    /// The W3C `traceparent` it was published with, or None.
    trace_parent: Option<String>,
    /// Events dropped because the record was full (between the first and the last 63).
    events_dropped: u32,
    /// What happened, oldest first.
    events: Vec<HistoryEvent>,
}

/// One thing that happened to a message. `kind` says what; the fields that do not belong
/// to the kind are None.
#[pyclass(module = "sluice", frozen, get_all)]
#[derive(Debug, Clone, Default)]
pub(crate) struct HistoryEvent {
    /// When, Unix ms.
    at_ms: u64,
    /// "stored", "delivered", "acked", "nacked", "rejected", "lease-expired",
    /// "lease-extended", "returned", "dead-lettered", "purged" or "moved".
    kind: &'static str,
    /// stored: the exchange it was published to ("" = the default exchange);
    /// dead-lettered: the dead-letter exchange, None when it was dropped.
    exchange: Option<String>,
    /// stored: its routing key.
    routing_key: Option<String>,
    /// delivered: the consumer's tag ("" for a `get`).
    consumer_tag: Option<String>,
    /// delivered, acked, lease-expired: the connection (as `list_connections` numbers it).
    connection_id: Option<u64>,
    /// delivered: its delivery tag on that connection.
    delivery_tag: Option<u64>,
    /// delivered: deliveries so far, this one included.
    delivery_count: Option<u32>,
    /// delivered, lease-extended: when the lease runs out, Unix ms.
    lease_deadline_ms: Option<u64>,
    /// nacked: the requeue's own delay, ms (0 = none).
    delay_ms: Option<u64>,
    /// nacked, rejected: the worker's reason (None = none given); dead-lettered: the
    /// `x-death-reason` ("rejected", "expired", "maxlen", "delivery-limit").
    reason: Option<String>,
    /// returned: "released", "connection-closed" or "consumer-cancelled".
    cause: Option<&'static str>,
    /// moved: the queue it went to.
    to_queue: Option<String>,
}

impl HistoryEvent {
    fn from_wire(event: wire::HistoryEvent) -> Self {
        use HistoryEventKind as K;
        let base = HistoryEvent {
            at_ms: event.at_ms,
            kind: event.kind.name(),
            ..HistoryEvent::default()
        };
        match event.kind {
            K::Stored {
                exchange,
                routing_key,
            } => HistoryEvent {
                exchange: Some(exchange),
                routing_key: Some(routing_key),
                ..base
            },
            K::Delivered {
                consumer_tag,
                connection_id,
                delivery_tag,
                delivery_count,
                lease_deadline_ms,
            } => HistoryEvent {
                consumer_tag: Some(consumer_tag),
                connection_id: Some(connection_id),
                delivery_tag: Some(delivery_tag),
                delivery_count: Some(delivery_count),
                lease_deadline_ms: Some(lease_deadline_ms),
                ..base
            },
            K::Acked { connection_id } | K::LeaseExpired { connection_id } => HistoryEvent {
                connection_id: Some(connection_id),
                ..base
            },
            K::Nacked { delay_ms, reason } => HistoryEvent {
                delay_ms: Some(delay_ms),
                reason,
                ..base
            },
            K::Rejected { reason } => HistoryEvent { reason, ..base },
            K::LeaseExtended { lease_deadline_ms } => HistoryEvent {
                lease_deadline_ms: Some(lease_deadline_ms),
                ..base
            },
            K::Returned { cause } => HistoryEvent {
                cause: Some(cause.as_str()),
                ..base
            },
            K::DeadLettered { reason, exchange } => HistoryEvent {
                reason: Some(reason),
                exchange,
                ..base
            },
            K::Purged => base,
            K::Moved { to_queue } => HistoryEvent {
                to_queue: Some(to_queue),
                ..base
            },
        }
    }
}

#[pymethods]
impl HistoryEvent {
    fn __repr__(&self) -> String {
        let detail = [
            self.reason.as_ref().map(|r| format!("reason={r:?}")),
            self.consumer_tag
                .as_ref()
                .map(|t| format!("consumer_tag={t:?}")),
            self.cause.map(|c| format!("cause={c:?}")),
        ];
        let detail: Vec<String> = detail.into_iter().flatten().collect();
        let sep = if detail.is_empty() { "" } else { ", " };
        format!(
            "HistoryEvent(kind={:?}, at_ms={}{sep}{})",
            self.kind,
            self.at_ms,
            detail.join(", ")
        )
    }
}

#[pymethods]
impl MessageHistory {
    fn __repr__(&self) -> String {
        format!(
            "MessageHistory(queue={:?}, message_id={:?}, state={:?}, events={})",
            self.queue,
            self.message_id,
            self.state,
            self.events.len()
        )
    }
}

/// `(histories, truncated)`: `truncated` when more records were found than one answer
/// holds (the first are returned).
pub(crate) fn histories(ok: wire::TraceMessageOk) -> (Vec<MessageHistory>, bool) {
    let histories = ok
        .messages
        .into_iter()
        .map(|m| {
            let events = m.events.into_iter().map(HistoryEvent::from_wire).collect();
            MessageHistory {
                queue: m.queue,
                message_seq: m.message_seq,
                message_id: m.message_id,
                state: m.state.as_str(),
                deadline_ms: (m.deadline_ms != 0).then_some(m.deadline_ms),
                trace_parent: m.trace_parent.map(|tp| tp.to_string()),
                events_dropped: m.events_dropped,
                events,
            }
        })
        .collect();
    (histories, ok.truncated)
}
