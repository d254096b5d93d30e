//! The queue task's side of chaos injection (`queue::chaos`, docs/chaos.md): starting and
//! ending an injection, deciding the fate of each delivery to a consumer, holding messages
//! back and releasing them, and the extra deliveries of the duplicate mode.

use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice_client::wire::{ChaosPlan, Delivery, ErrorCode};

use super::{Actor, Deliverable};
use crate::error::RequestError;
use crate::queue::chaos::{ChaosShared, DeliveryChaos, HeldMessage, Injection};
use crate::queue::ConnLink;

impl Actor {
    /// Starts (or replaces) the queue's injection; returns when it ends (Unix ms).
    pub(super) fn set_chaos(
        &mut self,
        plan: ChaosPlan,
        duration: Duration,
    ) -> Result<u64, RequestError> {
        if self.replica.is_some() {
            return Err(RequestError::new(
                ErrorCode::NotAllowed,
                format!(
                    "queue '{}' is replicated: chaos injection works on local queues only",
                    self.meta.name
                ),
            ));
        }
        crate::queue::chaos::validate(&plan, duration.as_millis() as u64)?;
        if let Some(old) = self.chaos.take() {
            old.end(&self.meta.stats.chaos);
        }
        // Per queue and per injection: two queues (or two runs) do not draw alike.
        let seed = self.meta.uid ^ (super::now_ms() << 20) ^ self.meta.stats.chaos.stats().dropped;
        let (injection, until_ms) = Injection::start(plan, duration, seed, &self.meta.stats.chaos);
        tracing::warn!(queue = %self.meta.name, ?plan, until_ms, "chaos injection started");
        self.chaos = Some(injection);
        Ok(until_ms)
    }

    /// Ends the injection now and makes every message it held back ready again; true when
    /// one was running.
    pub(super) fn clear_chaos(&mut self) -> bool {
        let was = self.chaos.take();
        let running = was.is_some();
        if let Some(injection) = was {
            injection.end(&self.meta.stats.chaos);
            tracing::warn!(queue = %self.meta.name, "chaos injection ended");
        }
        self.release_chaos_held(None);
        self.chaos_held.forget_passes();
        running
    }

    /// When the task must wake for chaos: the injection's end or a held message's release.
    pub(super) fn next_chaos_wake(&self) -> Option<Instant> {
        let end = self.chaos.as_ref().map(Injection::until);
        match (end, self.chaos_held.next_release()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Every round: ends an injection whose time is up, and releases held messages now due.
    pub(super) fn chaos_round(&mut self) {
        if self.chaos.is_none() && self.chaos_held.len() == 0 {
            return;
        }
        let now = Instant::now();
        if self.chaos.as_ref().is_some_and(|c| c.until() <= now) {
            self.clear_chaos();
            return;
        }
        self.release_chaos_held(Some(now));
    }

    /// Makes held messages due at `now` (every one with `None`) ready again, ahead of newer
    /// messages, with the delivery count they have.
    fn release_chaos_held(&mut self, now: Option<Instant>) {
        for (seq, m) in self.chaos_held.take_due(now) {
            self.ready
                .push_returned(seq, m.count, m.priority, m.expires_at_ms);
        }
    }

    /// The code to refuse one published message with, while the fail-publish mode runs.
    pub(super) fn chaos_fail_publish(&mut self) -> Option<ErrorCode> {
        let code = self.chaos.as_mut()?.fail_publish()?;
        ChaosShared::count(&self.meta.stats.chaos.publishes_failed);
        Some(code)
    }

    /// Decides what happens to a delivery to a consumer while an injection runs: `None` when
    /// the message is held back (delayed, or dropped on the way) instead of delivered.
    pub(super) fn chaos_divert(&mut self, d: &Deliverable) -> Option<DeliveryChaos> {
        let may_delay = self.chaos_held.may_delay(d.seq);
        let injection = self.chaos.as_mut()?;
        let c = injection.on_delivery(may_delay);
        let bytes = (d.delivery.meta.len() + d.delivery.body.len()) as u64;
        let held = |count, delayed| HeldMessage {
            count,
            priority: d.priority,
            expires_at_ms: d.expires_at_ms,
            bytes,
            delayed,
        };
        let shared = &self.meta.stats.chaos;
        if let Some(delay) = c.delay {
            // Not delivered: the count stays what it was.
            let m = held(d.count - 1, true);
            self.chaos_held.hold(d.seq, Instant::now() + delay, m);
            ChaosShared::count(&shared.delayed);
            return None;
        }
        if let Some(after) = c.drop_for {
            // Delivered and lost on the way: it counts, as a lease that ran out would.
            ChaosShared::count(&shared.dropped);
            self.meta
                .stats
                .delivered
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            self.chaos_held
                .hold(d.seq, Instant::now() + after, held(d.count, false));
            self.note_handed_out(d.seq);
            if d.count > 1 {
                if let Err(e) = self.log().record_delivery_count(d.seq, d.count) {
                    tracing::warn!(queue = %self.meta.name, seq = d.seq, error = %e, "could not record a delivery count");
                }
                self.dirty = true;
            }
            return None;
        }
        if c.short_lease.is_some() {
            ChaosShared::count(&shared.leases_shortened);
        }
        let duplicate = c.duplicate && self.chaos_extra.has_room();
        Some(DeliveryChaos { duplicate, ..c })
    }

    /// The extra delivery of `original` (just recorded in flight) for the duplicate mode: the
    /// same message under a tag of its own, flagged redelivered. Settling it does nothing.
    pub(super) fn chaos_duplicate(
        &mut self,
        conn: &Arc<ConnLink>,
        original: &Delivery,
    ) -> Delivery {
        let tag = conn.take_tag();
        self.chaos_extra
            .insert(conn.id, tag.0, original.message_seq);
        ChaosShared::count(&self.meta.stats.chaos.duplicated);
        Delivery {
            delivery_tag: tag,
            redelivered: true,
            ..original.clone()
        }
    }

    /// Deletes the messages chaos holds back (a purge deletes the scheduled ones too);
    /// returns how many.
    pub(super) fn purge_chaos_held(&mut self) -> u64 {
        if self.chaos_held.len() == 0 {
            return 0;
        }
        let held = self.chaos_held.take_due(None);
        self.chaos_held.forget_passes();
        for &(seq, _) in &held {
            self.ack_in_log(seq);
        }
        held.len() as u64
    }

    /// Messages held back by chaos.
    pub(super) fn chaos_held_len(&self) -> u64 {
        self.chaos_held.len() as u64
    }
}
