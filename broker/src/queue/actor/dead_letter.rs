//! Dead-lettering: copies of rejected, expired or overflowing messages go to the queue's
//! dead-letter exchange, and the originals are acked here only once every copy is durable.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use sluice_client::wire::{ErrorCode, HeaderValue, MessageMeta};

use super::{now_ms, Actor, DeadLetterCopy, MAINTENANCE_INTERVAL};
use crate::queue::{ConnEvent, DeathReason, Incoming, QueueCmd};
use crate::routing::namespace;

impl Actor {
    /// Moves a message (no longer ready nor in flight) to the dead-letter exchange, or drops
    /// it when the queue has none. The message is acked here only once its copies are durable
    /// in every queue the dead-letter exchange routed it to, so a crash can duplicate but not
    /// lose it.
    pub(super) fn dead_letter(&mut self, seq: u64, reason: DeathReason) {
        self.dead_letter_at(seq, reason, now_ms());
    }

    /// [`dead_letter`](Self::dead_letter), with the time of death (`x-death-time-ms`): an
    /// expired message died at its deadline, not when the queue noticed.
    pub(super) fn dead_letter_at(&mut self, seq: u64, reason: DeathReason, died_at_ms: u64) {
        let Some(dlx) = self.meta.arguments.dead_letter_exchange.clone() else {
            self.count_gone(reason);
            self.ack_in_log(seq);
            return;
        };
        let copy = self.log().read(seq).ok().and_then(|msg| {
            let mut meta = MessageMeta::from_slice(&msg.meta).ok()?;
            let persistent = meta.properties.persistent;
            let original_exchange = std::mem::replace(&mut meta.exchange, dlx.clone());
            let routing_key = self
                .meta
                .arguments
                .dead_letter_routing_key
                .clone()
                .unwrap_or_else(|| meta.routing_key.clone());
            let original_key = std::mem::replace(&mut meta.routing_key, routing_key);
            meta.mandatory = false;
            meta.properties.expiration_ms = None;
            // The copy is ready at once in its new queue (protocol.md §8.1).
            meta.properties.deliver_at_ms = None;
            meta.properties.delay_ms = None;
            let headers = &mut meta.properties.headers;
            let count = headers
                .iter()
                .find(|(k, _)| k == "x-death-count")
                .and_then(|(_, v)| match v {
                    HeaderValue::Int(n) => Some(*n),
                    _ => None,
                })
                .unwrap_or(0);
            headers.retain(|(k, _)| !k.starts_with("x-death-"));
            headers.extend([
                (
                    "x-death-reason".to_owned(),
                    HeaderValue::from(reason.as_str()),
                ),
                (
                    "x-death-queue".to_owned(),
                    HeaderValue::from(namespace::split(&self.meta.name).local),
                ),
                (
                    "x-death-exchange".to_owned(),
                    HeaderValue::from(original_exchange.as_str()),
                ),
                (
                    "x-death-routing-key".to_owned(),
                    HeaderValue::from(original_key.as_str()),
                ),
                ("x-death-count".to_owned(), HeaderValue::Int(count + 1)),
                (
                    "x-death-time-ms".to_owned(),
                    HeaderValue::Int(died_at_ms as i64),
                ),
            ]);
            // The dead-letter exchange is named in the queue's vhost, as are the headers and
            // the exchange its consumers see.
            let dlx_internal = format!("{}{dlx}", namespace::prefix_of(&self.meta.name));
            let targets = self.broker.upgrade()?.route(
                &dlx_internal,
                &meta.routing_key,
                &meta.properties.headers,
            );
            Some((meta.to_bytes().ok()?, msg.body, persistent, targets))
        });
        let Some((meta, body, persistent, targets)) = copy.filter(|c| !c.3.is_empty()) else {
            // Nowhere to go (no such exchange, or it routes nowhere): dropped, as in RabbitMQ.
            self.count_gone(reason);
            self.ack_in_log(seq);
            return;
        };
        self.dead.next_batch += 1;
        let batch = self.dead.next_batch;
        let mut waiting = 0;
        for q in targets {
            // Outside the target's publish room: a queue never waits for another queue (two
            // queues dead-lettering into each other would deadlock). The copies are bounded by
            // this queue's own messages.
            let sent = q.send(QueueCmd::Publish {
                conn: Arc::clone(&self.dl_link),
                room: None,
                batch,
                messages: vec![Incoming {
                    publish_seq: seq,
                    meta: meta.clone(),
                    body: body.clone(),
                    persistent,
                }],
            });
            waiting += usize::from(sent);
        }
        if waiting == 0 {
            self.count_gone(reason);
            self.ack_in_log(seq);
        } else {
            self.dead.storing.insert(
                batch,
                DeadLetterCopy {
                    waiting,
                    epoch: 0,
                    seq,
                    failed: false,
                    reason,
                },
            );
        }
    }

    pub(super) fn on_dead_letter_event(&mut self, event: ConnEvent) {
        if let ConnEvent::Confirmed { .. } = event {
            // Dead-lettered copies are durable: the round after this acks the originals.
            return;
        }
        if let ConnEvent::Stored {
            batch,
            epoch,
            rejections,
        } = event
        {
            let Some(entry) = self.dead.storing.get_mut(&batch) else {
                return;
            };
            entry.waiting -= 1;
            entry.epoch = entry.epoch.max(epoch);
            // Out of disk in a target: keep the message here and try again later. Other
            // refusals (a full reject-publish queue) drop the copy, as RabbitMQ does.
            entry.failed |= rejections.iter().any(|r| r.code == ErrorCode::StorageFull);
            if entry.waiting == 0 {
                let DeadLetterCopy {
                    epoch,
                    seq,
                    failed,
                    reason,
                    ..
                } = self.dead.storing.remove(&batch).expect("present");
                if failed {
                    // Ready again, and due again for its own TTL: tried after a pause, and
                    // counted as expired only when it has left.
                    self.returned.insert(seq, 1);
                    self.note_own_expiry(seq);
                    self.expiry_paused_until = Some(Instant::now() + MAINTENANCE_INTERVAL);
                    return;
                }
                self.count_gone(reason);
                self.meta.stats.dead_lettered[reason as usize].fetch_add(1, Ordering::Relaxed);
                self.dead.syncing.push((epoch, seq));
                if epoch > 0 {
                    // Wake this task once the copies are durable.
                    let durability = self.log().durability().clone();
                    let link = Arc::clone(&self.dl_link);
                    tokio::spawn(async move {
                        durability.wait(epoch).await;
                        link.send(ConnEvent::Confirmed { up_to: epoch });
                    });
                }
            }
        }
    }

    /// Counts a message that left for `reason` (dead-lettered or dropped), once.
    fn count_gone(&self, reason: DeathReason) {
        if matches!(reason, DeathReason::Expired) {
            self.meta.stats.expired.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Acks dead-lettered messages whose copies are durable.
    pub(super) fn ack_dead_letters(&mut self) {
        if self.dead.syncing.is_empty() {
            return;
        }
        let durable = self.log().durability().durable_epoch();
        let ready: Vec<u64> = self
            .dead
            .syncing
            .iter()
            .filter(|(e, _)| *e <= durable)
            .map(|&(_, seq)| seq)
            .collect();
        self.dead.syncing.retain(|(e, _)| *e > durable);
        for seq in ready {
            self.ack_in_log(seq);
        }
    }
}
