//! Messages that wait for their time (protocol.md §19): delayed at publish, or requeued with a
//! delay (a nack with a delay, or the queue's `retry_backoff`). They are stored in the log like
//! any other but are in no ready set: the timer index (`queue/schedule/`) holds them, on disk
//! past a small window, and the queue's timer fires at the soonest due time.
//!
//! Due messages join the ready set in bounded batches, and only while it is below
//! [`READY_HIGH_WATER`]: a burst of millions due at once streams out of the index as
//! consumers take them, instead of filling memory.

use std::time::{Duration, Instant};

use bytes::Bytes;
use sluice_client::wire::{
    DeliveryDelay, ErrorCode, ListScheduledOk, MessageMeta, MetaView, Reply, RequestId,
    ScheduledMessage, MIN_SCHEDULED_LEN,
};

use super::{now_ms, Actor};
use crate::error::RequestError;
use crate::queue::schedule::Entry;
use crate::queue::{ConnEvent, ConnLink, ScheduledPage};
use crate::storage::{MessageHead, RecoveredDeliveries};

/// Due messages are moved into the ready set only while it holds fewer than this.
const READY_HIGH_WATER: u64 = 64 * 1024;
/// Most due messages moved into the ready set per round.
const RELEASE_PER_ROUND: usize = 4096;

/// When a message with this meta block, stored at `enqueued_at_ms`, is ready: its delivery
/// delay's due time, or when it was stored. A message's TTL counts from then.
pub(super) fn ready_since_ms(enqueued_at_ms: u64, meta: &[u8]) -> u64 {
    match MetaView::peek_delivery_delay(meta) {
        Some(d) => d.due_ms(enqueued_at_ms).max(enqueued_at_ms),
        None => enqueued_at_ms,
    }
}

/// The due time of a message just stored with a delivery delay, if it is in the future.
pub(super) fn due_after_publish(delay: DeliveryDelay, stored_at_ms: u64) -> Option<u64> {
    Some(delay.due_ms(stored_at_ms)).filter(|&due| due > stored_at_ms)
}

/// The meta block without its delivery delay, for a copy of a message that was ready already
/// (a move): the destination must not delay it again, now or after a restart. A block without
/// one is returned as it is.
pub(super) fn without_delivery_delay(meta: Bytes) -> Bytes {
    if MetaView::peek_delivery_delay(&meta).is_none() {
        return meta;
    }
    match MessageMeta::from_slice(&meta) {
        Ok(mut m) => {
            m.properties.deliver_at_ms = None;
            m.properties.delay_ms = None;
            m.to_bytes().unwrap_or(meta)
        }
        Err(_) => meta,
    }
}

/// The index entry of a message found at start, if it still waits: its due time is the one
/// recorded by its last requeue with a delay, or its delivery delay's.
pub(super) fn recovered_entry(
    seq: u64,
    head: &MessageHead<'_>,
    recovered: &RecoveredDeliveries,
    now_ms: u64,
) -> Option<Entry> {
    let (due_ms, delivery_count) = match recovered.dues.get(&seq) {
        // Requeued after a delivery: it was delivered at least once.
        Some(&due) => (due, recovered.counts.get(&seq).copied().unwrap_or(1)),
        None => {
            let delay = MetaView::peek_delivery_delay(head.meta)?;
            let count = recovered.counts.get(&seq).copied().unwrap_or(0);
            (delay.due_ms(head.timestamp_ms), count)
        }
    };
    (due_ms > now_ms).then_some(Entry {
        due_ms,
        seq,
        delivery_count,
    })
}

impl Actor {
    /// Makes stored message `seq` (of `bytes` bytes) wait until `due_ms`.
    pub(super) fn schedule(&mut self, seq: u64, due_ms: u64, delivery_count: u32, bytes: u64) {
        self.history.scheduled(seq, due_ms);
        self.schedule.insert(Entry {
            due_ms,
            seq,
            delivery_count,
        });
        self.scheduled_bytes += bytes;
    }

    /// Requeues a delivery taken from flight to wait `delay_ms` first: the due time is
    /// recorded in the log (written this round, synced with the next group commit), so a
    /// restart neither delivers it early nor loses it.
    pub(super) fn requeue_after(
        &mut self,
        seq: u64,
        delivery_count: u32,
        bytes: u64,
        delay_ms: u64,
    ) {
        let due = now_ms().saturating_add(delay_ms);
        if let Err(e) = self.log().record_due(seq, due) {
            tracing::warn!(queue = %self.meta.name, seq, error = %e, "could not record a due time");
        }
        self.dirty = true;
        self.flush_due_soon = true;
        self.schedule(seq, due, delivery_count, bytes);
    }

    /// When the timer must wake for the soonest scheduled message; `None` when nothing waits
    /// or due messages wait for room in the ready set (a round that takes ready messages
    /// releases them).
    pub(super) fn next_due(&mut self) -> Option<Instant> {
        let due = self.schedule.next_due()?;
        let now = now_ms();
        if due <= now && self.ready_count() >= READY_HIGH_WATER {
            return None;
        }
        Some(Instant::now() + Duration::from_millis(due.saturating_sub(now)))
    }

    /// Moves due messages into the ready set (bounded per round and by the ready set's size).
    pub(super) fn release_due(&mut self) {
        if self.schedule.len() == 0 {
            return;
        }
        let now = now_ms();
        for _ in 0..RELEASE_PER_ROUND {
            if self.ready_count() >= READY_HIGH_WATER {
                break;
            }
            let Some(entry) = self.schedule.pop_due(now) else {
                break;
            };
            let Some(bytes) = self.log.as_ref().and_then(|l| l.payload_bytes(entry.seq)) else {
                // Deleted while it waited (purged, or its queue deleted).
                continue;
            };
            self.scheduled_bytes = self.scheduled_bytes.saturating_sub(bytes);
            self.make_ready_again(entry.seq, entry.delivery_count);
        }
    }

    /// The scheduled messages after `page.after`, soonest first, as many as `page` allows.
    pub(super) fn list_scheduled(&self, page: &ScheduledPage) -> ListScheduledOk {
        let Some(log) = self.log.as_ref() else {
            return ListScheduledOk::default();
        };
        let after = page.after.map(|(due_ms, seq)| Entry {
            due_ms,
            seq,
            delivery_count: u32::MAX,
        });
        // One more than asked, to know whether more follow.
        let entries = self.schedule.page(after, page.limit + 1);
        let mut messages = Vec::new();
        let mut bytes = 0;
        let mut more = false;
        for e in entries {
            let Ok(m) = log.read(e.seq) else { continue };
            let cost = MIN_SCHEDULED_LEN + m.meta.len() + m.body.len().min(page.body_budget);
            if messages.len() == page.limit || !messages.is_empty() && bytes + cost > page.max_bytes
            {
                more = true;
                break;
            }
            bytes += cost;
            messages.push(ScheduledMessage {
                message_seq: e.seq,
                due_at_ms: e.due_ms,
                enqueued_at_ms: m.timestamp_ms,
                delivery_count: e.delivery_count,
                meta: m.meta,
                body: m.body,
            });
        }
        ListScheduledOk { messages, more }
    }

    /// Deletes scheduled message `seq`; `NOT_FOUND` if it does not wait here.
    pub(super) fn cancel_scheduled(&mut self, conn: &ConnLink, request_id: RequestId, seq: u64) {
        let reply = match self.waits(seq) {
            true => {
                self.schedule.cancel(seq);
                if let Some(bytes) = self.log.as_ref().and_then(|l| l.payload_bytes(seq)) {
                    self.scheduled_bytes = self.scheduled_bytes.saturating_sub(bytes);
                }
                self.ack_in_log(seq);
                ConnEvent::Reply {
                    request_id,
                    reply: Reply::CancelScheduledOk,
                }
            }
            false => ConnEvent::Error {
                request_id,
                error: RequestError::new(
                    ErrorCode::NotFound,
                    format!(
                        "message {seq} is not scheduled in queue '{}' (never was, already due, or cancelled)",
                        crate::routing::namespace::split(&self.meta.name).local
                    ),
                ),
            },
        };
        conn.send(reply);
    }

    /// Whether stored message `seq` waits in the timer index: live, not cancelled, and in no
    /// other state (ready, in flight, held by a move or by chaos, on its way to a dead-letter
    /// exchange).
    fn waits(&self, seq: u64) -> bool {
        self.log.as_ref().is_some_and(|l| l.contains(seq))
            && !self.schedule.is_cancelled(seq)
            && !self.ready.contains(seq)
            && !self.in_flight.contains(seq)
            && !self.held.contains(seq)
            && !self.dead.contains(seq)
            && !self.chaos_held.holds(seq)
    }

    /// Deletes every scheduled message (a purge); returns how many.
    pub(super) fn purge_scheduled(&mut self) -> u64 {
        let mut purged = 0;
        while let Some(e) = self.schedule.pop_due(u64::MAX) {
            if self.log.as_ref().is_some_and(|l| l.contains(e.seq)) {
                self.ack_in_log(e.seq);
                purged += 1;
            }
        }
        self.schedule.clear();
        self.scheduled_bytes = 0;
        purged
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_client::wire::MessageMeta;

    #[test]
    fn a_message_is_ready_from_its_due_time_or_when_stored() {
        let mut meta = MessageMeta::new("", "q");
        let plain = meta.to_bytes().unwrap();
        assert_eq!(ready_since_ms(1000, &plain), 1000);
        meta.properties.delay_ms = Some(500);
        assert_eq!(ready_since_ms(1000, &meta.to_bytes().unwrap()), 1500);
        meta.properties.delay_ms = None;
        meta.properties.deliver_at_ms = Some(10);
        assert_eq!(
            ready_since_ms(1000, &meta.to_bytes().unwrap()),
            1000,
            "a time past means now"
        );
    }

    #[test]
    fn only_a_future_due_time_schedules() {
        assert_eq!(due_after_publish(DeliveryDelay::After(0), 100), None);
        assert_eq!(due_after_publish(DeliveryDelay::At(100), 100), None);
        assert_eq!(due_after_publish(DeliveryDelay::At(99), 100), None);
        assert_eq!(due_after_publish(DeliveryDelay::After(1), 100), Some(101));
        assert_eq!(
            due_after_publish(DeliveryDelay::After(u64::MAX), 100),
            Some(u64::MAX),
            "no horizon cap"
        );
    }
}
