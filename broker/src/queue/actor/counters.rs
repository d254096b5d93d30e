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
        match self.unconfirmed.pending.back_mut() {
            Some((e, n)) if *e == epoch => *n += messages,
            _ => self.unconfirmed.pending.push_back((epoch, messages)),
        }
    }

    /// Moves the messages of durable epochs to the confirmed count. Called every round; a
    /// queue with nothing else to do still has its maintenance tick, so the count lags the
    /// confirms by at most [`MAINTENANCE_INTERVAL`](super::MAINTENANCE_INTERVAL), without a
    /// task per group commit on the publish path.
    pub(super) fn count_confirmed(&mut self) {
        let (Some(_), Some(log)) = (self.unconfirmed.pending.front(), &self.log) else {
            return;
        };
        let durable = log.durability().durable_epoch();
        let mut confirmed = 0;
        while let Some(&(e, n)) = self.unconfirmed.pending.front() {
            if e > durable {
                break;
            }
            confirmed += n;
            self.unconfirmed.pending.pop_front();
        }
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
        let elapsed = self.rates_at.elapsed();
        if elapsed < Duration::from_secs(1) {
            return;
        }
        let s = &self.meta.stats;
        let (published, acked) = (
            s.published.load(Ordering::Relaxed),
            s.acked.load(Ordering::Relaxed),
        );
        let per_sec =
            |now: u64, before: u64| ((now - before) as f64 / elapsed.as_secs_f64()).round() as u64;
        s.publish_rate
            .store(per_sec(published, self.rates_from.0), Ordering::Relaxed);
        s.ack_rate
            .store(per_sec(acked, self.rates_from.1), Ordering::Relaxed);
        self.rates_from = (published, acked);
        self.rates_at = Instant::now();
    }

    /// Refreshes the consumer list that listings read.
    pub(super) fn publish_consumers(&self) {
        let list = self
            .consumers
            .iter()
            .map(|c| sluice_client::wire::ConsumerSummary {
                queue: self.meta.name.to_string(),
                consumer_tag: c.tag.clone(),
                connection_id: c.conn.id,
                prefetch: c.prefetch,
                unacked: c.unacked,
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
        // Messages held by a move are taken, as if leased to it.
        let taken = self.inflight.len() + self.held.len();
        s.unacked.store(taken as u64, Ordering::Relaxed);
        s.consumers
            .store(self.consumers.len() as u32, Ordering::Relaxed);
        if let Some(log) = &self.log {
            s.bytes.store(log.message_bytes(), Ordering::Relaxed);
        }
        let oldest = self.oldest.and_then(|o| o.enqueued_at_ms).unwrap_or(0);
        s.oldest_ready_at_ms.store(oldest, Ordering::Relaxed);
        s.scheduled.store(self.schedule.len(), Ordering::Relaxed);
    }
}
