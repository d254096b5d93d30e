//! The publishes of one connection from the moment they are numbered until their `Confirm`
//! is sent (protocol.md §8): the frames still with their queues, the frames waiting for
//! durability, the rejections owed before the covering confirm, and the bytes that count
//! against the connection's unsettled window; and the duplicates (messages a queue confirmed
//! without storing them again, §8.4) owed before it too.
//!
//! Pure bookkeeping: no I/O, no channels. The session numbers messages here, reports what the
//! queues stored, hands every finished frame to its confirm task ([`PublishTracker::
//! pop_finished`]) and sends what [`PublishTracker::on_confirmed`] says is settled.

use std::collections::VecDeque;
use std::time::Instant;

use sluice_client::wire::{PublishSeq, Rejection};

use crate::storage::Epoch;

/// Numbers a publish frame on its way through the queues (one per `Publish` frame).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct BatchId(pub(crate) u64);

/// A publish frame on its way through the queues.
#[derive(Debug)]
struct Batch {
    id: BatchId,
    /// The last sequence number of the frame's messages.
    up_to: PublishSeq,
    /// Queues that have not reported [`PublishTracker::on_stored`] yet.
    waiting: usize,
    /// The durability epoch every queue's part must reach before the confirm.
    epoch: Epoch,
    bytes: usize,
    rejections: Vec<Rejection>,
    /// Messages some queue took as duplicates.
    duplicates: Vec<PublishSeq>,
    /// When the frame reached the session, and its messages: for the publish→confirm time.
    received: Instant,
    messages: u64,
}

/// A publish frame handed to the queues: what [`PublishTracker::push`] records.
#[derive(Debug)]
pub(super) struct SentBatch {
    /// Its number, from [`PublishTracker::begin_batch`].
    pub(super) id: BatchId,
    /// How many queues took a part of it.
    pub(super) waiting: usize,
    /// Bytes handed to queues (counted once per queue).
    pub(super) bytes: usize,
    /// Messages refused before they reached a queue.
    pub(super) rejections: Vec<Rejection>,
    /// When the frame reached the session.
    pub(super) received: Instant,
    /// Messages in the frame.
    pub(super) messages: u64,
}

/// Publishes handed to the confirm task: confirmed once `epoch` is durable.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct ToConfirm {
    pub(super) up_to: PublishSeq,
    pub(super) epoch: Epoch,
    pub(super) received: Instant,
    pub(super) messages: u64,
}

/// The bytes of a frame handed to the confirm task, released when a confirm covers `last`.
#[derive(Debug)]
struct Confirming {
    last: PublishSeq,
    bytes: usize,
}

/// What a confirm settles: the rejections to send first, then the duplicates (each in
/// sequence order, each message once), then `Confirm { up_to }`.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Settled {
    pub(super) rejections: Vec<Rejection>,
    pub(super) duplicates: Vec<PublishSeq>,
    pub(super) up_to: PublishSeq,
}

/// Every publish of a connection until it is confirmed.
#[derive(Debug)]
pub(super) struct PublishTracker {
    /// The number the next published message gets.
    next_seq: PublishSeq,
    next_batch: BatchId,
    /// Frames with queues still to report, oldest first.
    batches: VecDeque<Batch>,
    /// Bytes of publishes not yet confirmed; the session stops reading at the connection's
    /// `max_unsettled_publish_bytes` (TCP back-pressure to the publisher).
    unsettled_bytes: usize,
    /// Frames handed to the confirm task, oldest first.
    confirming: VecDeque<Confirming>,
    /// Rejections of frames handed to the confirm task, sent before the covering confirm.
    rejections: VecDeque<Rejection>,
    /// Duplicates of frames handed to the confirm task, sent before the covering confirm.
    duplicates: VecDeque<PublishSeq>,
    /// The highest sequence number confirmed to the client (0: none yet).
    confirmed: PublishSeq,
}

impl Default for PublishTracker {
    fn default() -> Self {
        Self {
            next_seq: PublishSeq(1),
            next_batch: BatchId(1),
            batches: VecDeque::new(),
            unsettled_bytes: 0,
            confirming: VecDeque::new(),
            rejections: VecDeque::new(),
            duplicates: VecDeque::new(),
            confirmed: PublishSeq(0),
        }
    }
}

impl PublishTracker {
    /// Numbers the next publish frame.
    pub(super) fn begin_batch(&mut self) -> BatchId {
        let id = self.next_batch;
        self.next_batch.0 += 1;
        id
    }

    /// Numbers the next published message (each is numbered, refused ones included).
    pub(super) fn number(&mut self) -> PublishSeq {
        let seq = self.next_seq;
        self.next_seq.0 += 1;
        seq
    }

    /// Records a frame whose messages are numbered and handed to `sent.waiting` queues; it
    /// covers every message numbered so far.
    pub(super) fn push(&mut self, sent: SentBatch) {
        self.unsettled_bytes += sent.bytes;
        self.batches.push_back(Batch {
            id: sent.id,
            up_to: self.last_numbered(),
            waiting: sent.waiting,
            epoch: 0,
            bytes: sent.bytes,
            rejections: sent.rejections,
            duplicates: Vec::new(),
            received: sent.received,
            messages: sent.messages,
        });
    }

    /// A queue stored (or refused) its part of frame `batch`, durable at `epoch`.
    pub(super) fn on_stored(&mut self, batch: BatchId, epoch: Epoch, rejections: Vec<Rejection>) {
        if let Some(b) = self.batch_mut(batch) {
            b.waiting -= 1;
            b.epoch = b.epoch.max(epoch);
            b.rejections.extend(rejections);
        }
    }

    /// A queue took messages of frame `batch` as duplicates (before its `on_stored`).
    pub(super) fn on_duplicates(&mut self, batch: BatchId, seqs: Vec<u64>) {
        if let Some(b) = self.batch_mut(batch) {
            b.duplicates.extend(seqs.into_iter().map(PublishSeq));
        }
    }

    fn batch_mut(&mut self, batch: BatchId) -> Option<&mut Batch> {
        let front = self.batches.front()?.id;
        self.batches.get_mut((batch.0 - front.0) as usize)
    }

    /// The oldest frame if every queue has reported on it, for the confirm task; frames are
    /// handed over in order, so call this until `None`.
    pub(super) fn pop_finished(&mut self) -> Option<ToConfirm> {
        if self.batches.front()?.waiting > 0 {
            return None;
        }
        let mut b = self.batches.pop_front().expect("checked");
        self.confirming.push_back(Confirming {
            last: b.up_to,
            bytes: b.bytes,
        });
        // A message routed to several queues may be refused by more than one.
        b.rejections.sort_by_key(|r| r.seq);
        b.rejections.dedup_by_key(|r| r.seq);
        self.rejections.extend(b.rejections);
        // And taken as a duplicate by more than one.
        b.duplicates.sort_unstable();
        b.duplicates.dedup();
        self.duplicates.extend(b.duplicates);
        Some(ToConfirm {
            up_to: b.up_to,
            epoch: b.epoch,
            received: b.received,
            messages: b.messages,
        })
    }

    /// The confirm task reports every publish up to `up_to` durable: releases their bytes,
    /// and says what to send unless a confirm already covered them.
    pub(super) fn on_confirmed(&mut self, up_to: PublishSeq) -> Option<Settled> {
        self.release_unsettled(up_to);
        if up_to <= self.confirmed {
            return None;
        }
        let n = self
            .rejections
            .iter()
            .take_while(|r| r.seq <= up_to)
            .count();
        let rejections = self.rejections.drain(..n).collect();
        let n = self.duplicates.iter().take_while(|&&s| s <= up_to).count();
        let duplicates = self.duplicates.drain(..n).collect();
        self.confirmed = up_to;
        Some(Settled {
            rejections,
            duplicates,
            up_to,
        })
    }

    /// The frames whose messages are all settled by a confirm up to `up_to` no longer count
    /// against the connection's unsettled window.
    fn release_unsettled(&mut self, up_to: PublishSeq) {
        while let Some(c) = self.confirming.front() {
            if c.last > up_to {
                break;
            }
            self.unsettled_bytes -= c.bytes;
            self.confirming.pop_front();
        }
    }

    /// Whether every message numbered so far is confirmed (a client `Close` waits for it).
    pub(super) fn all_settled(&self) -> bool {
        self.batches.is_empty() && self.confirmed == self.last_numbered()
    }

    /// Messages numbered but not confirmed yet.
    pub(super) fn unsettled_messages(&self) -> u64 {
        self.last_numbered().0.saturating_sub(self.confirmed.0)
    }

    /// Bytes of messages not confirmed yet.
    pub(super) fn unsettled_bytes(&self) -> usize {
        self.unsettled_bytes
    }

    fn last_numbered(&self) -> PublishSeq {
        PublishSeq(self.next_seq.0 - 1)
    }
}

#[cfg(test)]
mod tests {
    use sluice_client::wire::ErrorCode;

    use super::*;

    fn rejection(seq: u64, code: ErrorCode) -> Rejection {
        Rejection {
            seq: PublishSeq(seq),
            code,
            message: code.name().to_owned(),
        }
    }

    /// Numbers `messages` messages as one frame sent to `queues` queues.
    fn publish(t: &mut PublishTracker, messages: u64, queues: usize, bytes: usize) -> BatchId {
        let id = t.begin_batch();
        for _ in 0..messages {
            t.number();
        }
        t.push(SentBatch {
            id,
            waiting: queues,
            bytes,
            rejections: Vec::new(),
            received: Instant::now(),
            messages,
        });
        id
    }

    fn drain(t: &mut PublishTracker) -> Vec<(PublishSeq, Epoch)> {
        std::iter::from_fn(|| t.pop_finished())
            .map(|c| (c.up_to, c.epoch))
            .collect()
    }

    #[test]
    fn messages_are_numbered_from_one_across_frames() {
        let mut t = PublishTracker::default();
        assert_eq!(t.begin_batch(), BatchId(1));
        assert_eq!(t.number(), PublishSeq(1));
        assert_eq!(t.number(), PublishSeq(2));
        assert_eq!(t.begin_batch(), BatchId(2));
        assert_eq!(t.number(), PublishSeq(3));
        assert_eq!(t.unsettled_messages(), 3);
    }

    #[test]
    fn a_frame_goes_to_the_confirm_task_once_every_queue_reported_at_the_highest_epoch() {
        let mut t = PublishTracker::default();
        let b = publish(&mut t, 2, 2, 100);
        assert_eq!(drain(&mut t), []);
        t.on_stored(b, 7, Vec::new());
        assert_eq!(drain(&mut t), [], "one queue still has its part");
        t.on_stored(b, 3, Vec::new());
        assert_eq!(drain(&mut t), [(PublishSeq(2), 7)]);
    }

    #[test]
    fn frames_are_handed_over_in_order_even_when_a_later_one_finishes_first() {
        let mut t = PublishTracker::default();
        let first = publish(&mut t, 1, 1, 10);
        let second = publish(&mut t, 3, 1, 10);
        t.on_stored(second, 1, Vec::new());
        assert_eq!(drain(&mut t), []);
        t.on_stored(first, 2, Vec::new());
        assert_eq!(drain(&mut t), [(PublishSeq(1), 2), (PublishSeq(4), 1)]);
    }

    #[test]
    fn a_frame_no_queue_took_is_finished_at_once() {
        let mut t = PublishTracker::default();
        publish(&mut t, 1, 0, 0);
        assert_eq!(drain(&mut t), [(PublishSeq(1), 0)]);
    }

    #[test]
    fn rejections_come_sorted_once_each_with_the_confirm_that_covers_them() {
        let mut t = PublishTracker::default();
        let id = t.begin_batch();
        for _ in 0..3 {
            t.number();
        }
        t.push(SentBatch {
            id,
            waiting: 2,
            bytes: 30,
            rejections: vec![rejection(3, ErrorCode::Unroutable)],
            received: Instant::now(),
            messages: 3,
        });
        // Message 2 went to both queues and both refused it.
        t.on_stored(id, 1, vec![rejection(2, ErrorCode::QueueFull)]);
        t.on_stored(id, 1, vec![rejection(2, ErrorCode::QueueFull)]);
        let later = publish(&mut t, 1, 1, 5);
        t.on_stored(later, 1, Vec::new());
        assert_eq!(drain(&mut t).len(), 2);
        let settled = t.on_confirmed(PublishSeq(3)).expect("new confirm");
        assert_eq!(
            settled.rejections,
            [
                rejection(2, ErrorCode::QueueFull),
                rejection(3, ErrorCode::Unroutable)
            ]
        );
        assert_eq!(settled.up_to, PublishSeq(3));
        let settled = t.on_confirmed(PublishSeq(4)).expect("new confirm");
        assert!(settled.rejections.is_empty());
    }

    #[test]
    fn a_confirm_releases_the_bytes_of_the_frames_it_covers_and_is_sent_once() {
        let mut t = PublishTracker::default();
        let a = publish(&mut t, 2, 1, 100);
        let b = publish(&mut t, 2, 1, 50);
        assert_eq!(t.unsettled_bytes(), 150);
        t.on_stored(a, 1, Vec::new());
        t.on_stored(b, 1, Vec::new());
        drain(&mut t);
        assert!(t.on_confirmed(PublishSeq(2)).is_some());
        assert_eq!(t.unsettled_bytes(), 50);
        assert!(!t.all_settled());
        assert!(t.on_confirmed(PublishSeq(2)).is_none(), "nothing new");
        assert!(t.on_confirmed(PublishSeq(4)).is_some());
        assert_eq!(t.unsettled_bytes(), 0);
        assert_eq!(t.unsettled_messages(), 0);
        assert!(t.all_settled());
    }

    #[test]
    fn duplicates_come_sorted_once_each_with_the_confirm_that_covers_them() {
        let mut t = PublishTracker::default();
        let first = publish(&mut t, 3, 2, 30);
        // Message 3 was a duplicate in both queues, message 1 in one of them.
        t.on_duplicates(first, vec![3]);
        t.on_stored(first, 1, Vec::new());
        t.on_duplicates(first, vec![1, 3]);
        t.on_stored(first, 1, Vec::new());
        let second = publish(&mut t, 1, 1, 10);
        t.on_duplicates(second, vec![4]);
        t.on_stored(second, 1, Vec::new());
        assert_eq!(drain(&mut t).len(), 2);
        let settled = t.on_confirmed(PublishSeq(3)).expect("new confirm");
        assert_eq!(settled.duplicates, [PublishSeq(1), PublishSeq(3)]);
        assert!(settled.rejections.is_empty());
        let settled = t.on_confirmed(PublishSeq(4)).expect("new confirm");
        assert_eq!(settled.duplicates, [PublishSeq(4)]);
    }

    #[test]
    fn a_new_connection_has_nothing_unsettled() {
        let t = PublishTracker::default();
        assert!(t.all_settled());
        assert_eq!(t.unsettled_messages(), 0);
        assert_eq!(t.unsettled_bytes(), 0);
    }
}
