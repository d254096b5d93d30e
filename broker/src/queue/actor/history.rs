//! What the queue task tells its [`History`](crate::queue::history::History) and its spans
//! (`spans.rs`): one method per thing that happens to a message, each a no-op for messages
//! neither follows.

use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice_client::wire::{
    ConsumerId, DeliveryTag, HistoryEventKind, MessageHistory, MessageState, ReturnCause,
};

use super::{now_ms, Actor};
use crate::queue::{ConnLink, DeathReason, Settlement};
use crate::routing::namespace;
use crate::telemetry::Outcome;

impl Actor {
    /// Message `seq` was handed to `conn` (by `consumer`, or a `Get`) with a lease of `lease`.
    pub(super) fn note_delivered(
        &mut self,
        seq: u64,
        conn: &Arc<ConnLink>,
        consumer: Option<ConsumerId>,
        tag: DeliveryTag,
        count: u32,
        lease: Duration,
    ) {
        if !self.history.follows(seq) && !self.traced.contains_key(&seq) {
            return;
        }
        let consumer_tag = consumer
            .and_then(|id| {
                self.consumers
                    .iter()
                    .find(|(c, _)| c.conn.id == conn.id && c.id == id)
                    .map(|(c, _)| c.tag.clone())
            })
            .unwrap_or_default();
        self.span_delivered(seq, &consumer_tag, conn.id, count);
        let now = now_ms();
        let kind = HistoryEventKind::Delivered {
            consumer_tag,
            connection_id: conn.id,
            delivery_tag: tag.0,
            delivery_count: count,
            lease_deadline_ms: now.saturating_add(lease.as_millis() as u64),
        };
        self.history.record(seq, now, kind);
    }

    /// Delivery `seq` was settled by connection `conn_id` as `how`, with the worker's reason.
    pub(super) fn note_settled(
        &mut self,
        seq: u64,
        conn_id: u64,
        how: Settlement,
        reason: Option<&Arc<str>>,
    ) {
        let outcome = match how {
            Settlement::Ack => Outcome::Ack,
            Settlement::Requeue | Settlement::RequeueAfter(_) => Outcome::Nack,
            Settlement::Reject => Outcome::Reject,
            Settlement::Release => Outcome::Returned,
        };
        self.span_settled(seq, outcome, reason.map(|r| &**r));
        if !self.history.follows(seq) {
            return;
        }
        let reason = reason.map(|r| r.to_string());
        let now = now_ms();
        match how {
            Settlement::Ack => self.history.left(
                seq,
                now,
                HistoryEventKind::Acked {
                    connection_id: conn_id,
                },
            ),
            Settlement::Requeue | Settlement::RequeueAfter(_) => {
                let delay_ms = match how {
                    Settlement::RequeueAfter(ms) => ms,
                    _ => 0,
                };
                self.history
                    .record(seq, now, HistoryEventKind::Nacked { delay_ms, reason });
            }
            Settlement::Reject => {
                self.history
                    .record(seq, now, HistoryEventKind::Rejected { reason });
            }
            Settlement::Release => self.note_returned(seq, ReturnCause::Released),
        }
    }

    /// Delivery `seq` came back to the queue unsettled.
    pub(super) fn note_returned(&mut self, seq: u64, cause: ReturnCause) {
        if cause != ReturnCause::Released {
            self.span_settled(seq, Outcome::Returned, Some(cause.as_str()));
        }
        if self.history.follows_any() {
            let kind = HistoryEventKind::Returned { cause };
            self.history.record(seq, now_ms(), kind);
        }
    }

    /// The lease of delivery `seq`, held by connection `conn_id`, ran out.
    pub(super) fn note_lease_expired(&mut self, seq: u64, conn_id: u64) {
        self.span_settled(seq, Outcome::LeaseExpired, None);
        if self.history.follows_any() {
            let kind = HistoryEventKind::LeaseExpired {
                connection_id: conn_id,
            };
            self.history.record(seq, now_ms(), kind);
        }
    }

    /// The lease of delivery `seq` now runs out at `deadline`.
    pub(super) fn note_lease_extended(&mut self, seq: u64, deadline: Instant) {
        if self.history.follows_any() {
            let kind = HistoryEventKind::LeaseExtended {
                lease_deadline_ms: unix_ms_of(deadline),
            };
            self.history.record(seq, now_ms(), kind);
        }
    }

    /// Message `seq` left for the dead-letter exchange `dlx` (in the broker's names), or was
    /// dropped (`None`: the queue has none, or it routed the copy nowhere).
    pub(super) fn note_dead_lettered(&mut self, seq: u64, reason: DeathReason, dlx: Option<&str>) {
        let exchange = dlx.map(|x| namespace::split(x).local);
        self.span_dead_lettered(seq, reason.as_str(), exchange);
        if self.history.follows_any() {
            let kind = HistoryEventKind::DeadLettered {
                reason: reason.as_str().to_owned(),
                exchange: exchange.map(str::to_owned),
            };
            // Not gone yet: the copies must be stored first (`ack_in_log` says when it is);
            // if they cannot be, the message stays, and its history says so.
            self.history.record(seq, now_ms(), kind);
        }
    }

    /// Message `seq` was purged.
    pub(super) fn note_purged(&mut self, seq: u64) {
        if self.history.follows_any() {
            self.history.left(seq, now_ms(), HistoryEventKind::Purged);
        }
    }

    /// The histories of this queue's messages whose id is `message_id`.
    pub(super) fn trace(&self, message_id: &str) -> Vec<MessageHistory> {
        let queue = namespace::split(&self.meta.name).local;
        self.history.find(queue, message_id, |seq, due_ms| {
            if let Some(deadline) = self.in_flight.deadline_of(seq) {
                return (MessageState::Delivered, unix_ms_of(deadline));
            }
            if self.held.contains(seq) {
                return (MessageState::Moving, 0);
            }
            if self.ready.contains(seq) {
                return (MessageState::Ready, 0);
            }
            (MessageState::Scheduled, due_ms.unwrap_or(0))
        })
    }
}

/// The Unix time (ms) of a monotonic instant, as the history shows deadlines.
fn unix_ms_of(at: Instant) -> u64 {
    now_ms().saturating_add(at.saturating_duration_since(Instant::now()).as_millis() as u64)
}
