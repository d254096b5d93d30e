//! The spans of a traced message in a queue: `store` under the broker's `publish`, then per
//! delivery a `deliver` span under the publisher's span, ended by how it was settled (an
//! `ack`, `nack`, `reject`, `lease-expired` or `returned` child), and a `dead-letter` span
//! when it leaves for the dead-letter exchange.

use sluice_client::wire::TraceParent;

use super::{now_ns, SpanKind, SpanRecord, StoreParent, Telemetry};

/// Emits the `store` span of message `seq` in `queue`, stored now (or refused with `error`).
pub fn store_span(
    telemetry: &Telemetry,
    parent: &StoreParent,
    queue: &str,
    seq: Option<u64>,
    error: Option<String>,
) {
    let mut span = SpanRecord::child_of(
        &parent.publish,
        "store",
        SpanKind::Internal,
        parent.routed_ns,
    )
    .attr("messaging.destination.name", queue)
    .ended(now_ns());
    if let Some(seq) = seq {
        span = span.attr("sluice.message_seq", seq);
    }
    span.error = error;
    telemetry.emit(span);
}

/// How a delivery ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Acked: the message is deleted.
    Ack,
    /// Nacked with requeue.
    Nack,
    /// Rejected (or nacked without requeue).
    Reject,
    /// The lease ran out.
    LeaseExpired,
    /// Back to the queue unsettled (released, connection closed, consumer cancelled).
    Returned,
}

impl Outcome {
    fn name(self) -> &'static str {
        match self {
            Outcome::Ack => "ack",
            Outcome::Nack => "nack",
            Outcome::Reject => "reject",
            Outcome::LeaseExpired => "lease-expired",
            Outcome::Returned => "returned",
        }
    }
}

/// A delivery of a traced message, open until it is settled.
#[derive(Debug)]
pub struct DeliverySpan(SpanRecord);

impl DeliverySpan {
    /// Opens the `deliver` span of a message whose publisher's span is `parent`.
    pub fn open(
        parent: &TraceParent,
        queue: &str,
        consumer_tag: &str,
        connection_id: u64,
        delivery_count: u32,
    ) -> Self {
        let span = SpanRecord::child_of(parent, "deliver", SpanKind::Producer, now_ns())
            .attr("messaging.destination.name", queue)
            .attr("messaging.operation.type", "send")
            .attr("sluice.consumer_tag", consumer_tag)
            .attr("sluice.connection_id", connection_id)
            .attr("sluice.delivery_count", delivery_count);
        DeliverySpan(span)
    }

    /// Ends it with `outcome` (and the worker's reason, or why it came back): emits the
    /// outcome's child span and the `deliver` span.
    pub fn close(self, telemetry: &Telemetry, outcome: Outcome, detail: Option<&str>) {
        let now = now_ns();
        let mut child =
            SpanRecord::child_of(&self.0.context(), outcome.name(), SpanKind::Internal, now);
        if let Some(detail) = detail {
            child = child.attr("sluice.reason", detail);
        }
        telemetry.emit(child);
        let mut deliver = self.0.attr("sluice.outcome", outcome.name()).ended(now);
        if outcome == Outcome::LeaseExpired {
            deliver.error = Some("the lease ran out before the message was settled".into());
        }
        telemetry.emit(deliver);
    }
}

/// Emits the `dead-letter` span of a message whose publisher's span is `parent`.
pub fn dead_letter_span(
    telemetry: &Telemetry,
    parent: &TraceParent,
    queue: &str,
    reason: &str,
    exchange: Option<&str>,
) {
    let now = now_ns();
    let mut span = SpanRecord::child_of(parent, "dead-letter", SpanKind::Internal, now)
        .attr("messaging.destination.name", queue)
        .attr("sluice.death_reason", reason)
        .ended(now);
    match exchange {
        Some(x) => span = span.attr("sluice.dead_letter_exchange", x),
        None => span = span.attr("sluice.dropped", "true"),
    }
    telemetry.emit(span);
}
