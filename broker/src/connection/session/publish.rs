//! Publishing (protocol.md §8): numbering and routing a publish frame's messages, handing
//! them to their queues, and confirming them once durable, with their rejections first.

use std::sync::Arc;
use std::time::Instant;

use sluice_client::wire::{
    Confirm, ErrorCode, MetaView, Publish, PublishDuplicates, PublishRejected, PublishSeq,
    Rejection, RequestId,
};
use tokio::sync::mpsc;

use super::publish_tracker::{BatchId, SentBatch, ToConfirm};
use super::Session;
use crate::metrics::Metrics;
use crate::publish::{route_message, PublishLimits};
use crate::queue::PublishOrigin;
use crate::queue::{ConnEvent, ConnLink, Incoming, QueueCmd, QueueHandle};
use crate::routing::RouteResult;
use crate::storage::{Durability, Epoch};
use crate::telemetry::PublishSpans;

/// A publish frame's messages, numbered and routed.
struct Routed {
    /// What goes to each queue.
    per_queue: Vec<(QueueHandle, Vec<Incoming>)>,
    /// Messages refused before they reached a queue.
    rejections: Vec<Rejection>,
    /// Bytes of messages handed to queues (counted once per queue).
    bytes: usize,
}

impl Session {
    pub(super) async fn on_publish(&mut self, p: Publish) {
        let received = Instant::now();
        let messages = p.messages.len() as u64;
        let batch = self.publishes.begin_batch();
        let Routed {
            per_queue,
            rejections,
            bytes,
        } = self.route_publish(p);
        let mut waiting = 0;
        for (q, messages) in per_queue {
            // Waits while the queue's mailbox is full of other publishes: a slow queue slows
            // down the publishers that write to it (this session stops reading meanwhile, so
            // the peer counts as alive once it is done).
            let room = q.publish_room(&messages).await;
            self.mark_alive();
            if q.send(QueueCmd::Publish {
                conn: Arc::clone(&self.link),
                batch: batch.0,
                messages,
                room: Some(room),
                origin: PublishOrigin::Client,
            }) {
                waiting += 1;
            }
        }
        self.broker.note_published(bytes);
        self.publishes.push(SentBatch {
            id: batch,
            waiting,
            bytes,
            rejections,
            received,
            messages,
        });
        self.forward_finished();
    }

    /// Numbers a publish's messages and routes them: what goes to which queue, and what is
    /// refused (under the routing table's read lock, which is never held across an await).
    fn route_publish(&mut self, p: Publish) -> Routed {
        let mut rejections = Vec::new();
        let mut per_queue: Vec<(QueueHandle, Vec<Incoming>)> = Vec::new();
        let mut bytes = 0;
        let blocking = if self.broker.is_blocked() {
            self.broker.flow_control().blocking()
        } else {
            None
        };
        let broker = Arc::clone(&self.broker);
        let reg = broker.read();
        let mut route = RouteResult::default();
        let refused = &broker.metrics().refused;
        let mut reject = |seq: PublishSeq, code: ErrorCode, message: String| {
            refused.add(code, 1);
            rejections.push(Rejection { seq, code, message });
        };
        let limits = PublishLimits {
            max_message_len: self.agreed.max_message_len,
            blocking: blocking.as_ref(),
            headers: self.broker.config.limits.headers,
        };
        let access = &mut self.access;
        let telemetry = broker.telemetry();
        let mut traced = Vec::new();
        for mut m in p.messages {
            let seq = self.publishes.number();
            let mut spans = telemetry.and_then(|t| PublishSpans::start(t, seq.0, &mut m.meta));
            let size = m.meta.len() + m.body.len();
            let persistent =
                match route_message(&reg, &m.meta, m.body.len(), limits, access, &mut route) {
                    Ok(persistent) => persistent,
                    Err(e) => {
                        let message = access.namespace().localize(e.message);
                        if let (Some(t), Some(s)) = (telemetry, spans) {
                            s.confirmed(t, Some(message.clone()));
                        }
                        reject(seq, e.code, message);
                        continue;
                    }
                };
            let store_parent = match (telemetry, spans.as_mut()) {
                (Some(t), Some(s)) => {
                    let view = MetaView::parse(&m.meta).ok();
                    let (exchange, key) = view.map_or(("", ""), |v| (v.exchange, v.routing_key));
                    Some(s.routed(t, exchange, key, route.queues.len()))
                }
                _ => None,
            };
            traced.extend(spans);
            for name in &route.queues {
                let Some(q) = reg.queues.get(name) else {
                    continue;
                };
                let incoming = Incoming {
                    publish_seq: seq.0,
                    meta: m.meta.clone(),
                    body: m.body.clone(),
                    persistent,
                    trace: store_parent,
                };
                bytes += size;
                match per_queue.iter_mut().find(|(h, _)| h.meta.uid == q.meta.uid) {
                    Some((_, v)) => v.push(incoming),
                    None => per_queue.push((q.clone(), vec![incoming])),
                }
            }
        }
        drop(reg);
        self.traced_publishes.extend(traced);
        Routed {
            per_queue,
            rejections,
            bytes,
        }
    }

    /// A queue stored (or refused) its part of publish frame `batch`.
    pub(super) fn on_stored(&mut self, batch: u64, epoch: Epoch, mut rejections: Vec<Rejection>) {
        for r in &mut rejections {
            r.message = self
                .access
                .namespace()
                .localize(std::mem::take(&mut r.message));
        }
        self.publishes.on_stored(BatchId(batch), epoch, rejections);
        self.forward_finished();
    }

    /// A queue confirms messages of publish frame `batch` without storing them again.
    pub(super) fn on_duplicates(&mut self, batch: u64, seqs: Vec<u64>) {
        self.publishes.on_duplicates(BatchId(batch), seqs);
    }

    /// Hands every finished frame at the front to the confirm task, in order.
    fn forward_finished(&mut self) {
        while let Some(finished) = self.publishes.pop_finished() {
            let _ = self.to_confirm.send(finished);
        }
    }

    /// The confirm task found every publish up to `up_to` durable.
    pub(super) fn on_confirmed(&mut self, up_to: u64) {
        let Some(settled) = self.publishes.on_confirmed(PublishSeq(up_to)) else {
            return;
        };
        if !self.traced_publishes.is_empty() {
            self.end_publish_spans(settled.up_to, &settled.rejections);
        }
        if !settled.rejections.is_empty() {
            let rejections = settled.rejections;
            self.send(RequestId(0), PublishRejected { rejections });
        }
        if !settled.duplicates.is_empty() {
            let seqs = settled.duplicates;
            self.send(RequestId(0), PublishDuplicates { seqs });
        }
        self.send(
            RequestId(0),
            Confirm {
                up_to: settled.up_to,
            },
        );
    }
}

impl Session {
    /// Ends the spans of the traced publishes up to `up_to`, now confirmed or refused.
    fn end_publish_spans(&mut self, up_to: PublishSeq, rejections: &[Rejection]) {
        let Some(telemetry) = self.broker.telemetry().cloned() else {
            return;
        };
        while let Some(spans) = self.traced_publishes.front().filter(|s| s.seq <= up_to.0) {
            let seq = spans.seq;
            let spans = self.traced_publishes.pop_front().expect("just seen");
            let refused = rejections
                .iter()
                .find(|r| r.seq.0 == seq)
                .map(|r| format!("{}: {}", r.code, r.message));
            spans.confirmed(&telemetry, refused);
        }
    }
}

/// Starts the task that confirms this connection's publishes once they are durable.
pub(super) fn spawn_confirm_task(
    durability: Durability,
    link: Arc<ConnLink>,
    metrics: Arc<Metrics>,
) -> mpsc::UnboundedSender<ToConfirm> {
    let (to_confirm, rx) = mpsc::unbounded_channel();
    tokio::spawn(confirm_task(durability, rx, link, metrics));
    to_confirm
}

/// Waits for durability in order and reports the highest settled publish sequence number.
async fn confirm_task(
    durability: Durability,
    mut rx: mpsc::UnboundedReceiver<ToConfirm>,
    link: Arc<ConnLink>,
    metrics: Arc<Metrics>,
) {
    // (received, messages) of the frames one confirm settles; kept between rounds.
    let mut timings: Vec<(Instant, u64)> = Vec::new();
    while let Some(first) = rx.recv().await {
        let (mut up_to, mut epoch) = (first.up_to, first.epoch);
        timings.push((first.received, first.messages));
        while let Ok(next) = rx.try_recv() {
            up_to = next.up_to;
            epoch = epoch.max(next.epoch);
            timings.push((next.received, next.messages));
        }
        if epoch > 0 {
            durability.wait(epoch).await;
        }
        link.send(ConnEvent::Confirmed { up_to: up_to.0 });
        let now = Instant::now();
        for (received, messages) in timings.drain(..) {
            metrics
                .publish_confirm
                .observe_duration_many(now - received, messages);
        }
        if link.events.is_closed() {
            return;
        }
    }
}
