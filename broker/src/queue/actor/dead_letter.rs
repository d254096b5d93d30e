//! Dead-lettering: copies of rejected, expired or overflowing messages go to the queue's
//! dead-letter exchange, and the originals are acked here only once every copy is durable.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use sluice_client::wire::{ErrorCode, HeaderValue, MessageMeta};

use super::{now_ms, Actor, MAINTENANCE_INTERVAL};
use crate::queue::dead_letters::StoredCopies;
use crate::queue::PublishOrigin;
use crate::queue::{ConnEvent, DeathReason, Incoming, QueueCmd, QueueHandle};
use crate::routing::namespace;

/// The copy of a dead-lettered message, and the queues it goes to.
struct DeadLetterCopy {
    meta: Bytes,
    body: Bytes,
    persistent: bool,
    targets: Vec<QueueHandle>,
}

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
            self.note_dead_lettered(seq, reason, None);
            self.count_gone(reason);
            self.ack_in_log(seq);
            return;
        };
        // The dead-letter exchange is named in the queue's vhost, as are the headers and the
        // exchange its consumers see.
        let dlx_internal = format!("{}{dlx}", namespace::prefix_of(&self.meta.name));
        let msg = self.log().read(seq).ok();
        let copy = msg.and_then(|msg| {
            self.copy_for_dlx(&dlx, &dlx_internal, &msg.meta, msg.body, reason, died_at_ms)
        });
        let Some(DeadLetterCopy {
            meta,
            body,
            persistent,
            targets,
        }) = copy.filter(|c| !c.targets.is_empty())
        else {
            // Nowhere to go (no such exchange, or it routes nowhere): dropped, as in RabbitMQ,
            // but counted and logged.
            self.drop_dead_letter(seq, reason, &dlx_internal);
            return;
        };
        let batch = self.dead.next_batch();
        let mut waiting = 0;
        for q in targets {
            // Outside the target's publish room: a queue never waits for another queue (two
            // queues dead-lettering into each other would deadlock). The copies are bounded by
            // this queue's own messages.
            let sent = q.send(QueueCmd::Publish {
                conn: Arc::clone(&self.dl_link),
                room: None,
                origin: PublishOrigin::DeadLetter,
                batch,
                messages: vec![Incoming {
                    publish_seq: seq,
                    meta: meta.clone(),
                    body: body.clone(),
                    persistent,
                    trace: None,
                }],
            });
            waiting += usize::from(sent);
        }
        if waiting == 0 {
            // Every target queue was deleted meanwhile.
            self.drop_dead_letter(seq, reason, &dlx_internal);
        } else {
            self.note_dead_lettered(seq, reason, Some(&dlx_internal));
            self.dead.storing(batch, seq, reason, waiting);
        }
    }

    /// Dead-letters a message the queue refused with `QUEUE_FULL` (overflow
    /// `reject-publish-dlx`), reason `maxlen`. It was never stored here, so nothing waits for
    /// its copies: as in RabbitMQ the publisher has its refusal already, and the copies are
    /// stored by the target queues like any publish (protocol.md §6.1).
    pub(super) fn dead_letter_refused(&mut self, m: &Incoming) {
        let Some(dlx) = self.meta.arguments.dead_letter_exchange.clone() else {
            return;
        };
        let reason = DeathReason::MaxLen;
        let dlx_internal = format!("{}{dlx}", namespace::prefix_of(&self.meta.name));
        let copy = self
            .copy_for_dlx(
                &dlx,
                &dlx_internal,
                &m.meta,
                m.body.clone(),
                reason,
                now_ms(),
            )
            .filter(|c| !c.targets.is_empty());
        // The answers of the targets name a batch nothing waits for: they are ignored.
        let batch = self.dead.next_batch();
        let sent = copy.map_or(0, |c| {
            c.targets
                .iter()
                .filter(|q| {
                    q.send(QueueCmd::Publish {
                        conn: Arc::clone(&self.dl_link),
                        room: None,
                        origin: PublishOrigin::DeadLetter,
                        batch,
                        messages: vec![Incoming {
                            publish_seq: m.publish_seq,
                            meta: c.meta.clone(),
                            body: c.body.clone(),
                            persistent: c.persistent,
                            trace: None,
                        }],
                    })
                })
                .count()
        });
        if sent == 0 {
            self.note_dropped_dead_letter(reason, &dlx_internal);
        } else {
            self.meta.stats.dead_lettered[reason as usize].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The copy of a message (its meta block and body) for the dead-letter exchange `dlx`
    /// (`dlx_internal` in the broker's names), with its `x-death-*` headers, and the queues
    /// the exchange routes it to; `None` when the meta block cannot be read or the broker is
    /// gone.
    fn copy_for_dlx(
        &self,
        dlx: &str,
        dlx_internal: &str,
        meta: &[u8],
        body: Bytes,
        reason: DeathReason,
        died_at_ms: u64,
    ) -> Option<DeadLetterCopy> {
        let mut meta = MessageMeta::from_slice(meta).ok()?;
        let persistent = meta.properties.persistent;
        let original_exchange = std::mem::replace(&mut meta.exchange, dlx.to_owned());
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
        let targets =
            self.broker
                .upgrade()?
                .route(dlx_internal, &meta.routing_key, &meta.properties.headers);
        Some(DeadLetterCopy {
            meta: meta.to_bytes().ok()?,
            body,
            persistent,
            targets,
        })
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
            // Out of disk in a target: keep the message here and try again later. Other
            // refusals (a full reject-publish queue) drop the copy, as RabbitMQ does.
            let out_of_disk = rejections.iter().any(|r| r.code == ErrorCode::StorageFull);
            let Some(stored) = self.dead.on_stored(batch, epoch, out_of_disk) else {
                return;
            };
            self.on_copies_stored(stored);
        }
    }

    /// Every target of a dead-lettered message answered.
    fn on_copies_stored(&mut self, stored: StoredCopies) {
        let StoredCopies {
            seq,
            reason,
            epoch,
            failed,
        } = stored;
        if failed {
            // Ready again, and due again for its own TTL: tried after a pause, and
            // counted as expired only when it has left.
            self.make_ready_again(seq, 1);
            self.expiry_paused_until = Some(Instant::now() + MAINTENANCE_INTERVAL);
            return;
        }
        self.count_gone(reason);
        self.meta.stats.dead_lettered[reason as usize].fetch_add(1, Ordering::Relaxed);
        self.dead.await_sync(seq, epoch);
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

    /// Drops a message that was to be dead-lettered through `dlx` (an internal name) but had
    /// nowhere to go: the exchange does not exist, or routes it to no queue. Counted in
    /// `/metrics`, and logged at the 1st, 2nd, 4th, 8th... drop of the queue, so that a steady
    /// stream of them costs a log line per doubling rather than one per message.
    fn drop_dead_letter(&mut self, seq: u64, reason: DeathReason, dlx: &str) {
        self.note_dead_lettered(seq, reason, None);
        self.count_gone(reason);
        self.ack_in_log(seq);
        self.note_dropped_dead_letter(reason, dlx);
    }

    /// Counts a dead-letter copy dropped for want of a target, and logs it (see
    /// [`drop_dead_letter`](Self::drop_dead_letter)).
    fn note_dropped_dead_letter(&self, reason: DeathReason, dlx: &str) {
        let dropped = &self.meta.stats.dead_letters_dropped[reason as usize];
        let total = 1 + DeathReason::ALL
            .iter()
            .map(|&r| self.meta.stats.dead_letters_dropped[r as usize].load(Ordering::Relaxed))
            .sum::<u64>();
        dropped.fetch_add(1, Ordering::Relaxed);
        if !total.is_power_of_two() {
            return;
        }
        let missing = self
            .broker
            .upgrade()
            .is_some_and(|b| b.read().routing.exchange(dlx).is_none());
        let queue = namespace::split(&self.meta.name);
        let exchange = namespace::split(dlx).local;
        let why = if missing {
            "the exchange does not exist"
        } else {
            "the exchange routes it to no queue"
        };
        tracing::warn!(
            vhost = queue.vhost,
            queue = queue.local,
            dead_letter_exchange = exchange,
            reason = reason.as_str(),
            dropped_so_far = total,
            "dead-lettered message dropped: {why}"
        );
    }

    /// Counts a message that left for `reason` (dead-lettered or dropped), once.
    fn count_gone(&self, reason: DeathReason) {
        if matches!(reason, DeathReason::Expired) {
            self.meta.stats.expired.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Acks dead-lettered messages whose copies are durable.
    pub(super) fn ack_dead_letters(&mut self) {
        if !self.dead.any_syncing() {
            return;
        }
        let durable = self.log().durability().durable_epoch();
        for seq in self.dead.take_durable(durable) {
            self.ack_in_log(seq);
        }
    }
}
