//! The spans of a publish, as one session sees it: `publish` from the frame to the confirm,
//! with `route` and `confirm` children (each queue adds its own `store` child, from the
//! [`StoreParent`] its message carries).

use bytes::Bytes;
use sluice_client::wire::{MessageMeta, TraceParent};

use super::{new_span_id, new_trace_id, now_ns, SpanKind, SpanRecord, Telemetry};

/// What a queue needs to hang its `store` span under a traced publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreParent {
    /// The broker's `publish` span.
    pub publish: TraceParent,
    /// When routing ended (the `store` span starts there: it covers the queue's mailbox).
    pub routed_ns: u64,
}

/// A traced publish, from its frame until its confirm.
#[derive(Debug)]
pub struct PublishSpans {
    /// Its publish sequence number.
    pub seq: u64,
    publish: SpanRecord,
    routed_ns: u64,
}

impl PublishSpans {
    /// Starts the spans of a message if it is traced: its `traceparent` is sampled, or it has
    /// none and the sample ratio picks it. In the second case the broker starts the trace
    /// and writes its `traceparent` into `meta`, so deliveries and consumers continue it.
    pub fn start(telemetry: &Telemetry, seq: u64, meta: &mut Bytes) -> Option<PublishSpans> {
        let start = now_ns();
        let publish = match Telemetry::traced_parent(meta) {
            Some(parent) => SpanRecord::child_of(&parent, "publish", SpanKind::Server, start),
            None if telemetry.sample_root() && !has_trace_parent(meta) => {
                let root = TraceParent::new(new_trace_id(), new_span_id(), 1)?;
                let mut owned = MessageMeta::from_slice(meta).ok()?;
                owned.properties.trace_parent = Some(root);
                *meta = owned.to_bytes().ok()?;
                SpanRecord {
                    parent_span_id: [0; 8],
                    span_id: root.span_id,
                    ..SpanRecord::child_of(&root, "publish", SpanKind::Server, start)
                }
            }
            None => return None,
        };
        Some(PublishSpans {
            seq,
            publish,
            routed_ns: start,
        })
    }

    /// Routing ended: emits the `route` span; the parent the message's queues store under.
    pub fn routed(
        &mut self,
        telemetry: &Telemetry,
        exchange: &str,
        routing_key: &str,
        queues: usize,
    ) -> StoreParent {
        let now = now_ns();
        self.routed_ns = now;
        self.publish
            .attributes
            .push(("messaging.destination.name", exchange.into()));
        self.publish.attributes.push((
            "messaging.rabbitmq.destination.routing_key",
            routing_key.into(),
        ));
        telemetry.emit(
            SpanRecord::child_of(
                &self.publish.context(),
                "route",
                SpanKind::Internal,
                self.publish.start_ns,
            )
            .attr("sluice.routed_queues", queues as u64)
            .ended(now),
        );
        StoreParent {
            publish: self.publish.context(),
            routed_ns: now,
        }
    }

    /// The message is settled for its publisher: emits `confirm` (from routing to the
    /// confirm, the wait for durability) and the `publish` span; `refused` is why it was
    /// refused, if it was.
    pub fn confirmed(self, telemetry: &Telemetry, refused: Option<String>) {
        let now = now_ns();
        let confirm = SpanRecord::child_of(
            &self.publish.context(),
            "confirm",
            SpanKind::Internal,
            self.routed_ns,
        )
        .ended(now);
        telemetry.emit(confirm);
        let mut publish = self
            .publish
            .attr("messaging.operation.type", "receive")
            .attr("sluice.publish_seq", self.seq)
            .ended(now);
        publish.error = refused;
        telemetry.emit(publish);
    }
}

fn has_trace_parent(meta: &[u8]) -> bool {
    sluice_client::wire::MetaView::peek_trace_parent(meta).is_some()
}
