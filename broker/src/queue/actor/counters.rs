//! The queue's live counters ([`QueueStats`](crate::queue::QueueStats)): ready, unacked,
//! rates, consumers, and confirms counted once their epoch is synced.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use sluice_client::wire::Delivery;

use super::Actor;
use crate::storage::Epoch;

impl Actor {
    /// Counts `messages` stored under `epoch` as confirmed once that epoch is durable (at
    /// once for epoch 0: nothing to sync).
    pub(super) fn await_confirm(&mut self, epoch: Epoch, messages: u64) {
        if messages == 0 {
            return;
        }
        if epoch == 0 {
            self.meta
                .stats
                .confirmed
                .fetch_add(messages, Ordering::Relaxed);
            return;
        }
        self.unconfirmed.add(epoch, messages);
    }

    /// Moves the messages of durable epochs to the confirmed count. Called every round; a
    /// queue with nothing else to do still has its maintenance tick, so the count lags the
    /// confirms by at most [`MAINTENANCE_INTERVAL`](super::MAINTENANCE_INTERVAL), without a
    /// task per group commit on the publish path.
    pub(super) fn count_confirmed(&mut self) {
        let (false, Some(log)) = (self.unconfirmed.is_empty(), &self.log) else {
            return;
        };
        let durable = log.durability().durable_epoch();
        let confirmed = self.unconfirmed.take_durable(durable);
        if confirmed > 0 {
            self.meta
                .stats
                .confirmed
                .fetch_add(confirmed, Ordering::Relaxed);
        }
    }

    /// Counts a batch of deliveries: delivered, and how many of them are redeliveries.
    pub(super) fn count_deliveries(&self, deliveries: &[Delivery]) {
        let stats = &self.meta.stats;
        let again = deliveries.iter().filter(|d| d.redelivered).count() as u64;
        stats
            .delivered
            .fetch_add(deliveries.len() as u64, Ordering::Relaxed);
        if again > 0 {
            stats.redelivered.fetch_add(again, Ordering::Relaxed);
        }
    }

    /// Refreshes the per-second rates about once a second.
    pub(super) fn measure_rates(&mut self) {
        let s = &self.meta.stats;
        let (published, acked) = (
            s.published.load(Ordering::Relaxed),
            s.acked.load(Ordering::Relaxed),
        );
        let every = Duration::from_secs(1);
        if let Some(rates) = self.rates.measure(published, acked, Instant::now(), every) {
            s.publish_rate.store(rates.publish, Ordering::Relaxed);
            s.ack_rate.store(rates.ack, Ordering::Relaxed);
        }
    }

    /// Refreshes the consumer list that listings read.
    pub(super) fn publish_consumers(&self) {
        let now = std::time::Instant::now();
        let list = self
            .consumers
            .iter()
            .map(|(c, active)| sluice_client::wire::ConsumerSummary {
                queue: self.meta.name.to_string(),
                consumer_tag: c.tag.clone(),
                connection_id: c.conn.id,
                prefetch: c.prefetch,
                unacked: c.unacked,
                active,
                priority: c.priority,
                circuit: c
                    .breaker
                    .as_ref()
                    .map(|b| sluice_client::wire::CircuitSummary {
                        state: b.state(),
                        failures: b.failures(now),
                        until_ms: b.deadline().map_or(0, super::circuit::unix_ms_at),
                    }),
            })
            .collect();
        *self
            .meta
            .stats
            .consumers_list
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = list;
    }

    pub(super) fn update_stats(&self) {
        let s = &self.meta.stats;
        s.ready.store(self.ready_count(), Ordering::Relaxed);
        if self.ready.has_priorities() {
            let levels = self.ready.len_by_priority();
            for (slot, n) in s.ready_by_priority.iter().zip(levels) {
                slot.store(n as u64, Ordering::Relaxed);
            }
        }
        // Messages held by a move are taken, as if leased to it.
        let taken = self.in_flight.len() + self.held.len();
        s.unacked.store(taken as u64, Ordering::Relaxed);
        s.consumers
            .store(self.consumers.len() as u32, Ordering::Relaxed);
        if let Some(log) = &self.log {
            s.bytes.store(log.message_bytes(), Ordering::Relaxed);
        }
        let oldest = self.ready.oldest().and_then(|o| o.enqueued_at_ms);
        let oldest = oldest.unwrap_or(0);
        s.oldest_ready_at_ms.store(oldest, Ordering::Relaxed);
        // Messages chaos holds back wait for their time too (`chaos.rs`).
        let scheduled = self.schedule.len() + self.chaos_held_len();
        s.scheduled.store(scheduled, Ordering::Relaxed);
    }
}
