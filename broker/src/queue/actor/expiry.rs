//! Eager expiry: one timer per queue fires at the next deadline, whether the queue's TTL (the
//! oldest ready message is always next) or a message's own (the deadline index), and at the
//! queue's own `expires_ms`. Also the oldest ready message, for its age.

use std::time::{Duration, Instant};

use sluice_client::wire::MetaView;

use super::{expiry_deadline, now_ms, Actor, EXPIRE_PER_ROUND, TOPOLOGY_WAIT};
use crate::queue::DeathReason;

impl Actor {
    /// Whether an `expires_ms` queue has gone unused for that long.
    pub(super) fn expired_unused(&self) -> bool {
        self.meta.arguments.expires_ms.is_some_and(|ms| {
            self.consumers.is_empty() && self.last_used.elapsed() >= Duration::from_millis(ms)
        })
    }

    /// Looks up the oldest ready message again if it changed (one header read).
    pub(super) fn refresh_oldest(&mut self) {
        let log = self.log.as_ref();
        self.ready
            .refresh_oldest(|seq| log.and_then(|l| l.peek(seq).ok()).map(|h| h.timestamp_ms));
    }

    /// When the oldest ready message runs out of the queue's TTL (Unix ms).
    pub(super) fn queue_ttl_deadline(&self) -> Option<u64> {
        let ttl = self.meta.arguments.message_ttl_ms?;
        let enqueued = self.ready.oldest()?.enqueued_at_ms?;
        Some(enqueued.saturating_add(ttl))
    }

    /// When the timer must next wake: the soonest message deadline, or the moment an
    /// `expires_ms` queue has been unused long enough. Free for queues without a TTL.
    pub(super) fn next_expiry(&self) -> Option<Instant> {
        let unused = self
            .meta
            .arguments
            .expires_ms
            .filter(|_| self.consumers.is_empty())
            .map(|ms| self.last_used + Duration::from_millis(ms));
        let message = match (self.ready.next_expiry(), self.queue_ttl_deadline()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
        .map(|deadline_ms| {
            // Rounded so the timer never fires before the deadline's millisecond.
            let now = Instant::now();
            let at = now + Duration::from_millis(deadline_ms.saturating_sub(now_ms()));
            let at = self.expiry_paused_until.map_or(at, |p| at.max(p));
            if self.registered {
                at
            } else {
                at.max(now + TOPOLOGY_WAIT)
            }
        });
        match (unused, message) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Dead-letters (reason `expired`) ready messages whose TTL has run out, soonest deadline
    /// first, each with its deadline as the time of death.
    pub(super) fn expire_messages(&mut self) {
        if !self.topology_published()
            || self.expiry_paused_until.is_some_and(|p| Instant::now() < p)
        {
            return;
        }
        self.expiry_paused_until = None;
        let now = now_ms();
        for _ in 0..EXPIRE_PER_ROUND {
            let own = self.ready.next_expiry().filter(|&d| d <= now);
            self.refresh_oldest();
            let by_queue = self.queue_ttl_deadline().filter(|&d| d <= now);
            match (own, by_queue) {
                (Some(own), by_queue) if by_queue.is_none_or(|q| own <= q) => {
                    let (taken, deadline) = self.ready.take_expired(now).expect("due");
                    self.dead_letter_at(taken.seq, DeathReason::Expired, deadline);
                }
                (_, Some(deadline)) => {
                    // The oldest ready message is the next to run out of the queue's TTL.
                    let Some(oldest) = self.ready.take_oldest() else {
                        break;
                    };
                    self.dead_letter_at(oldest.seq, DeathReason::Expired, deadline);
                }
                _ => break,
            }
        }
    }

    /// Makes a message that was taken but not delivered (a move that did not take it, a
    /// dead-letter copy that found no space) ready again, delivered `count` times so far, with
    /// the deadline of its own TTL if it has one (one header read).
    pub(super) fn make_ready_again(&mut self, seq: u64, count: u32) {
        let queue_ttl = self.meta.arguments.message_ttl_ms;
        let head = self.log.as_ref().and_then(|l| l.peek(seq).ok());
        let expires_at_ms = head.and_then(|head| {
            let own = MetaView::peek_expiration_ms(head.meta)?;
            Some(expiry_deadline(head.timestamp_ms, own, queue_ttl))
        });
        self.ready.push_returned(seq, count, expires_at_ms);
    }

    /// Whether the broker's published topology names this queue, so a dead-lettered copy is
    /// routed by the whole topology (at start, queues run before it is published).
    pub(super) fn topology_published(&mut self) -> bool {
        if !self.registered {
            self.registered = self.broker.upgrade().is_none_or(|b| {
                b.read()
                    .queues
                    .get(&*self.meta.name)
                    .is_some_and(|h| h.same(&self.handle))
            });
        }
        self.registered
    }

    /// An `expires_ms` queue counts its unused time from when its last consumer left.
    pub(super) fn note_if_unused(&mut self) {
        if self.consumers.is_empty() {
            self.last_used = Instant::now();
        }
    }
}
