//! The queue's spans of traced messages (`crate::telemetry`): `store`, then per delivery a
//! `deliver` span ended by its settlement, and `dead-letter`. Nothing happens without an
//! OTLP endpoint, and only messages with a sampled `traceparent` are followed.

use std::collections::HashMap;

use sluice_client::wire::TraceParent;

use super::Actor;
use crate::routing::namespace;
use crate::telemetry::{self, DeliverySpan, Outcome, StoreParent, Telemetry};

/// A traced message in the queue: its publisher's span, and its open delivery.
#[derive(Debug)]
pub(super) struct TracedMessage {
    parent: TraceParent,
    delivery: Option<DeliverySpan>,
}

/// The traced messages of a queue, by sequence number.
pub(super) type Traced = HashMap<u64, TracedMessage>;

impl Actor {
    fn queue_name(&self) -> &str {
        namespace::split(&self.meta.name).local
    }

    /// Message `seq` was stored (`None`: refused with `error`).
    pub(super) fn span_stored(
        &mut self,
        seq: Option<u64>,
        meta: &[u8],
        parent: Option<&StoreParent>,
        error: Option<String>,
    ) {
        let Some(t) = self.telemetry.clone() else {
            return;
        };
        if let Some(parent) = parent {
            telemetry::store_span(&t, parent, self.queue_name(), seq, error);
        }
        if let (Some(seq), Some(parent)) = (seq, Telemetry::traced_parent(meta)) {
            let traced = TracedMessage {
                parent,
                delivery: None,
            };
            self.traced.insert(seq, traced);
        }
    }

    /// Delivery `count` of message `seq` went to `consumer_tag` on `connection_id`.
    pub(super) fn span_delivered(
        &mut self,
        seq: u64,
        consumer_tag: &str,
        connection_id: u64,
        count: u32,
    ) {
        let Some(t) = self.telemetry.clone() else {
            return;
        };
        let queue = namespace::split(&self.meta.name).local;
        let Some(m) = self.traced.get_mut(&seq) else {
            return;
        };
        let span = DeliverySpan::open(&m.parent, queue, consumer_tag, connection_id, count);
        if let Some(earlier) = m.delivery.replace(span) {
            earlier.close(&t, Outcome::Returned, None);
        }
    }

    /// The delivery of message `seq` ended with `outcome`.
    pub(super) fn span_settled(&mut self, seq: u64, outcome: Outcome, detail: Option<&str>) {
        let Some(t) = self.telemetry.clone() else {
            return;
        };
        let Some(m) = self.traced.get_mut(&seq) else {
            return;
        };
        if let Some(span) = m.delivery.take() {
            span.close(&t, outcome, detail);
        }
        if outcome == Outcome::Ack {
            self.traced.remove(&seq);
        }
    }

    /// Message `seq` left for the dead-letter exchange `dlx` (client's name), or was dropped.
    pub(super) fn span_dead_lettered(&mut self, seq: u64, reason: &str, dlx: Option<&str>) {
        let Some(t) = self.telemetry.clone() else {
            return;
        };
        // Kept until the message is gone (`span_forget`): a copy the dead-letter exchange's
        // queues cannot store leaves the message here, and its next deliveries are traced.
        let queue = namespace::split(&self.meta.name).local;
        if let Some(m) = self.traced.get_mut(&seq) {
            if let Some(span) = m.delivery.take() {
                span.close(&t, Outcome::Reject, None);
            }
            telemetry::dead_letter_span(&t, &m.parent, queue, reason, dlx);
        }
    }

    /// Message `seq` left the queue: nothing more to trace.
    pub(super) fn span_forget(&mut self, seq: u64) {
        if !self.traced.is_empty() {
            self.traced.remove(&seq);
        }
    }
}
