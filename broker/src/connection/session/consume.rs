//! Consuming (protocol.md §9) and settling (§10): the connection's consumers, the deliveries
//! outstanding on it, and the requests that act on them.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use sluice_client::wire::{
    Cancel, CancelOk, Consume, ConsumerId, Deliver, Delivery, DeliveryTag, ErrorCode, Extend,
    GetOk, Reply, RequestId,
};

use super::limits;
use super::Session;
use crate::auth::{Permission, ResourceKind};
use crate::error::RequestError;
use crate::queue::{delivery_bytes, QueueCmd, QueueHandle, Settlement};

/// Fixed bytes of a `Deliver` frame (protocol.md §9.5).
const DELIVER_FRAME_FIXED: usize = 12 + 4 + 4;

/// A consumer of this connection.
pub(super) struct ConsumerEntry {
    pub(super) queue: QueueHandle,
    pub(super) tag: String,
}

/// A delivery sent on this connection and not settled yet: which queue holds it.
pub(super) struct Outstanding {
    queue: QueueHandle,
    /// The message's sequence number in that queue.
    message_seq: u64,
}

/// The deliveries outstanding on a connection, by tag.
pub(super) type OutstandingDeliveries = BTreeMap<DeliveryTag, Outstanding>;

impl Session {
    pub(super) fn on_consume(&mut self, id: RequestId, c: Consume) {
        let name = match self
            .access
            .grant(Permission::Read, ResourceKind::Queue, &c.queue)
        {
            Ok(n) => n.into_owned(),
            Err(e) => return self.send_error(id, e),
        };
        let q = match self.broker.queue(&name, self.link.id) {
            Ok(q) => q,
            Err(e) => return self.send_error(id, e),
        };
        if c.ack_timeout_ms == Some(0) {
            return self.send_error(
                id,
                RequestError::invalid("ack_timeout_ms must be at least 1"),
            );
        }
        if let Some(why) = c.circuit_breaker.as_ref().and_then(|b| b.invalid()) {
            return self.send_error(id, RequestError::invalid(why));
        }
        let tag = if c.consumer_tag.is_empty() {
            format!("sluice.ctag-{}-{}", self.link.id, self.next_consumer.0)
        } else {
            c.consumer_tag
        };
        let max = self.broker.config.limits.max_consumers_per_connection;
        if let Err(e) = limits::check_consumers(self.link.id, self.consumers.len(), max) {
            return self.send_error(id, e);
        }
        if self.consumers.values().any(|e| e.tag == tag) {
            return self.send_error(
                id,
                RequestError::new(
                    ErrorCode::NotAllowed,
                    format!("consumer tag '{tag}' is already used on this connection"),
                ),
            );
        }
        let consumer_id = self.next_consumer;
        self.next_consumer.0 += 1;
        let sent = q.send(QueueCmd::Consume {
            conn: Arc::clone(&self.link),
            request_id: id,
            consumer_id,
            tag: tag.clone(),
            prefetch: self.broker.config.limits.effective_prefetch(c.prefetch),
            exclusive: c.exclusive,
            ack_timeout: c.ack_timeout_ms.map(Duration::from_millis),
            priority: c.priority.unwrap_or(0),
            circuit_breaker: c.circuit_breaker,
        });
        if !sent {
            return self.send_error(id, RequestError::no_queue(&c.queue));
        }
        self.touch(&q);
        self.pending_consumes.insert(id, consumer_id);
        self.consumers
            .insert(consumer_id, ConsumerEntry { queue: q, tag });
    }

    pub(super) fn on_cancel(&mut self, id: RequestId, c: Cancel) {
        let Some(entry) = self.consumers.get(&c.consumer_id) else {
            return self.send_error(id, no_consumer(c.consumer_id));
        };
        let sent = entry.queue.send(QueueCmd::Cancel {
            conn: Arc::clone(&self.link),
            consumer_id: c.consumer_id,
            request_id: Some(id),
        });
        if !sent {
            self.consumers.remove(&c.consumer_id);
            self.send(
                id,
                CancelOk {
                    consumer_id: c.consumer_id,
                },
            );
        }
    }

    /// Asks the queue of the consumer tagged `tag` to stop it for an operator: the queue
    /// takes back its deliveries and answers `ConsumerStopped`, which the client sees as
    /// `ConsumerCancelled`.
    pub(super) fn stop_consumer(&mut self, tag: &str) -> Result<(), RequestError> {
        let Some((&consumer_id, entry)) = self.consumers.iter().find(|(_, e)| e.tag == tag) else {
            return Err(RequestError::new(
                ErrorCode::NotFound,
                format!("connection {} has no consumer '{tag}'", self.link.id),
            ));
        };
        tracing::info!(
            conn = self.link.id,
            consumer_tag = tag,
            "an operator cancels a consumer"
        );
        // A queue that is gone has stopped the consumer already (QUEUE_DELETED).
        entry.queue.send(QueueCmd::StopConsumer {
            conn: Arc::clone(&self.link),
            consumer_id,
            code: ErrorCode::ConsumerCancelled,
            reason: format!("consumer '{tag}' was cancelled by an operator"),
        });
        Ok(())
    }

    pub(super) fn on_set_prefetch(
        &mut self,
        id: RequestId,
        consumer_id: ConsumerId,
        prefetch: u32,
    ) {
        match self.consumers.get(&consumer_id) {
            Some(entry) => {
                entry.queue.send(QueueCmd::SetPrefetch {
                    conn_id: self.link.id,
                    consumer_id,
                    prefetch: self.broker.config.limits.effective_prefetch(prefetch),
                });
            }
            None => self.send_error(id, no_consumer(consumer_id)),
        }
    }

    /// Acks, nacks or rejects the delivery `tag`, or with `multiple` every outstanding one up
    /// to it (0: all), grouped by queue.
    pub(super) fn settle(
        &mut self,
        id: RequestId,
        tag: DeliveryTag,
        multiple: bool,
        how: Settlement,
        reason: Option<String>,
    ) {
        let reason: Option<Arc<str>> = reason.map(Arc::from);
        let picked: Vec<(DeliveryTag, Outstanding)> = if multiple {
            if tag.0 > self.link.last_tag() {
                return self.send_error(id, unknown_tag(tag));
            }
            let upper = if tag.0 == 0 {
                DeliveryTag(u64::MAX)
            } else {
                tag
            };
            let keys: Vec<DeliveryTag> =
                self.outstanding.range(..=upper).map(|(&k, _)| k).collect();
            keys.into_iter()
                .filter_map(|k| self.outstanding.remove(&k).map(|v| (k, v)))
                .collect()
        } else {
            match self.outstanding.remove(&tag) {
                Some(v) => vec![(tag, v)],
                None => return self.send_error(id, unknown_tag(tag)),
            }
        };
        let mut groups: Vec<(QueueHandle, Vec<(u64, u64)>)> = Vec::new();
        for (tag, d) in picked {
            match groups.iter_mut().find(|(h, _)| h.same(&d.queue)) {
                Some((_, v)) => v.push((tag.0, d.message_seq)),
                None => groups.push((d.queue, vec![(tag.0, d.message_seq)])),
            }
        }
        for (q, deliveries) in groups {
            // A deleted queue accepts settlements with no effect (§6.2).
            q.send(QueueCmd::Settle {
                conn: Arc::clone(&self.link),
                request_id: id,
                deliveries,
                how,
                reason: reason.clone(),
            });
        }
    }

    pub(super) fn on_extend(&mut self, id: RequestId, e: Extend) {
        if e.extend_ms == 0 {
            // A release settles the delivery (protocol.md §10.4).
            return self.settle(id, e.delivery_tag, false, Settlement::Release, None);
        }
        match self.outstanding.get(&e.delivery_tag) {
            Some(d) => {
                d.queue.send(QueueCmd::Extend {
                    conn: Arc::clone(&self.link),
                    request_id: id,
                    tag: e.delivery_tag.0,
                    seq: d.message_seq,
                    extend: Duration::from_millis(e.extend_ms),
                });
            }
            None => self.send_error(id, unknown_tag(e.delivery_tag)),
        }
    }

    /// A queue delivered to one of this connection's consumers.
    pub(super) fn on_deliver(
        &mut self,
        consumer_id: ConsumerId,
        queue: QueueHandle,
        deliveries: Vec<Delivery>,
    ) {
        let mut bytes = 0;
        for d in &deliveries {
            self.note_outstanding(&queue, d);
            bytes += delivery_bytes(d);
        }
        self.output.take_over(bytes);
        self.send_deliveries(consumer_id, deliveries);
    }

    /// A queue answered a `Get`.
    pub(super) fn on_got(
        &mut self,
        request_id: RequestId,
        queue: QueueHandle,
        ready: u64,
        delivery: Option<Delivery>,
    ) {
        if let Some(d) = &delivery {
            self.note_outstanding(&queue, d);
        }
        self.send(request_id, Reply::GetOk(GetOk { ready, delivery }));
    }

    pub(super) fn note_outstanding(&mut self, queue: &QueueHandle, d: &Delivery) {
        self.outstanding.insert(
            d.delivery_tag,
            Outstanding {
                queue: queue.clone(),
                message_seq: d.message_seq,
            },
        );
    }

    /// Deliveries whose leases expired went back to their queue: no longer outstanding here.
    pub(super) fn forget_expired(&mut self, tags: Vec<u64>) {
        for t in tags {
            self.outstanding.remove(&DeliveryTag(t));
        }
    }

    /// Encodes deliveries as `Deliver` frames below the frame limit.
    fn send_deliveries(&mut self, consumer_id: ConsumerId, deliveries: Vec<Delivery>) {
        let max = self.agreed.max_frame_len as usize;
        let mut chunk = Vec::new();
        let mut size = DELIVER_FRAME_FIXED;
        for d in deliveries {
            let len = delivery_bytes(&d);
            if !chunk.is_empty() && size + len > max {
                let deliveries = std::mem::take(&mut chunk);
                self.send(
                    RequestId(0),
                    Deliver {
                        consumer_id,
                        deliveries,
                    },
                );
                size = DELIVER_FRAME_FIXED;
            }
            size += len;
            chunk.push(d);
        }
        if !chunk.is_empty() {
            self.send(
                RequestId(0),
                Deliver {
                    consumer_id,
                    deliveries: chunk,
                },
            );
        }
    }
}

fn no_consumer(id: ConsumerId) -> RequestError {
    RequestError::new(
        ErrorCode::NotFound,
        format!("no consumer {} on this connection", id.0),
    )
}

fn unknown_tag(tag: DeliveryTag) -> RequestError {
    RequestError::new(
        ErrorCode::UnknownDeliveryTag,
        format!(
            "delivery tag {} is not outstanding on this connection",
            tag.0
        ),
    )
}
