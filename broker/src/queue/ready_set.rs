//! A queue's ready set: every message that waits for a delivery, whether never delivered
//! (`Fresh`) or delivered before and returned, with the deadlines of those that carry a TTL
//! of their own and the oldest one (for the queue's TTL and its age in listings).
//!
//! Messages come out in sequence order: a returned message goes back ahead of newer ones.

use std::collections::BTreeMap;

use super::ready::{Expiries, Fresh};

/// A message taken from the ready set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct ReadyMessage {
    /// Its sequence number in the queue.
    pub(super) seq: u64,
    /// Deliveries so far (0 for a message never delivered).
    pub(super) count: u32,
}

/// The oldest ready message: the next to expire by the queue's TTL, and the age listings show.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct OldestReady {
    /// Its sequence number.
    pub(super) seq: u64,
    /// When the queue stored it (Unix ms); `None` if its record could not be read.
    pub(super) enqueued_at_ms: Option<u64>,
}

/// The messages ready for delivery.
#[derive(Debug, Default)]
pub(super) struct ReadySet {
    /// Never-delivered messages, in seq order.
    fresh: Fresh,
    /// Messages delivered before and returned, with their delivery count so far.
    returned: BTreeMap<u64, u32>,
    /// Deadlines (Unix ms) of ready messages with a TTL of their own.
    expiries: Expiries,
    /// The oldest ready message, as last looked up (see [`ReadySet::refresh_oldest`]).
    oldest: Option<OldestReady>,
}

impl ReadySet {
    /// Adds a message never delivered, newer than every other; `expires_at_ms` is the
    /// deadline of its own TTL.
    pub(super) fn push_new(&mut self, seq: u64, expires_at_ms: Option<u64>) {
        self.fresh.push_back(seq);
        if let Some(deadline) = expires_at_ms {
            self.expiries.insert(seq, deadline);
        }
    }

    /// Puts back a message delivered `count` times (0: taken but never delivered, as by a
    /// move that did not happen), ahead of every newer message.
    pub(super) fn push_returned(&mut self, seq: u64, count: u32, expires_at_ms: Option<u64>) {
        self.returned.insert(seq, count);
        if let Some(deadline) = expires_at_ms {
            self.expiries.insert(seq, deadline);
        }
    }

    /// Takes the next message to deliver: the one with the lowest sequence number.
    pub(super) fn take_next(&mut self) -> Option<ReadyMessage> {
        let next = self.pop_lowest()?;
        self.expiries.remove(next.seq);
        Some(next)
    }

    /// Takes the oldest message (the one with the lowest sequence number): the next to run
    /// out of the queue's TTL, and the one a length limit drops first.
    pub(super) fn take_oldest(&mut self) -> Option<ReadyMessage> {
        self.take_next()
    }

    /// Takes `seq` out wherever it is; `None` if it is not ready.
    pub(super) fn remove(&mut self, seq: u64) -> Option<ReadyMessage> {
        let count = match self.returned.remove(&seq) {
            Some(count) => count,
            None if self.fresh.remove(seq) => 0,
            None => return None,
        };
        self.expiries.remove(seq);
        Some(ReadyMessage { seq, count })
    }

    /// Messages ready.
    pub(super) fn len(&self) -> usize {
        self.fresh.len() + self.returned.len()
    }

    /// Deliveries so far of ready message `seq` (0 if it was never delivered).
    pub(super) fn delivery_count(&self, seq: u64) -> u32 {
        self.returned.get(&seq).copied().unwrap_or(0)
    }

    /// The ready messages above `after`, in sequence order (for browsing).
    pub(super) fn after(&self, after: u64) -> impl Iterator<Item = u64> + '_ {
        let returned = self
            .returned
            .range(after.saturating_add(1)..)
            .map(|(&s, _)| s);
        merge_sorted(self.fresh.after(after), returned)
    }

    /// Takes every message (in no particular order).
    pub(super) fn drain(&mut self) -> impl Iterator<Item = u64> + '_ {
        self.expiries.clear();
        self.oldest = None;
        self.fresh
            .drain()
            .chain(std::mem::take(&mut self.returned).into_keys())
    }

    /// Forgets every message.
    pub(super) fn clear(&mut self) {
        self.fresh.clear();
        self.returned.clear();
        self.expiries.clear();
        self.oldest = None;
    }

    /// Gives back memory a drained backlog no longer needs.
    pub(super) fn shrink_if_sparse(&mut self) {
        self.fresh.shrink_if_sparse();
    }

    /// The soonest deadline of a message's own TTL (Unix ms).
    pub(super) fn next_expiry(&self) -> Option<u64> {
        self.expiries.next_deadline()
    }

    /// Takes the message whose own TTL runs out soonest, if that is at or before `now_ms`:
    /// the message and its deadline.
    pub(super) fn take_expired(&mut self, now_ms: u64) -> Option<(ReadyMessage, u64)> {
        loop {
            let (seq, deadline) = self.expiries.pop_due(now_ms)?;
            if let Some(taken) = self.remove(seq) {
                return Some((taken, deadline));
            }
        }
    }

    /// The oldest ready message as last looked up.
    pub(super) fn oldest(&self) -> Option<OldestReady> {
        self.oldest
    }

    /// Looks up the oldest ready message again if it changed, with `enqueued_at` (one
    /// header read) for a new one.
    pub(super) fn refresh_oldest(
        &mut self,
        enqueued_at: impl FnOnce(u64) -> Option<u64>,
    ) -> Option<OldestReady> {
        self.oldest = match (self.lowest_seq(), self.oldest) {
            (None, _) => None,
            (Some(seq), Some(o)) if o.seq == seq => Some(o),
            (Some(seq), _) => Some(OldestReady {
                seq,
                enqueued_at_ms: enqueued_at(seq),
            }),
        };
        self.oldest
    }

    fn lowest_seq(&self) -> Option<u64> {
        match (self.fresh.front(), self.returned.first_key_value()) {
            (Some(f), Some((&r, _))) => Some(f.min(r)),
            (f, r) => f.or(r.map(|(&s, _)| s)),
        }
    }

    fn pop_lowest(&mut self) -> Option<ReadyMessage> {
        let fresh = self.fresh.front();
        let returned = self.returned.first_key_value().map(|(&s, _)| s);
        let take_fresh = match (fresh, returned) {
            (None, None) => return None,
            (Some(f), Some(r)) => f < r,
            (fresh, _) => fresh.is_some(),
        };
        if take_fresh {
            let seq = self.fresh.pop_front()?;
            Some(ReadyMessage { seq, count: 0 })
        } else {
            let (seq, count) = self.returned.pop_first()?;
            Some(ReadyMessage { seq, count })
        }
    }
}

/// Merges two ascending sequences into one.
fn merge_sorted(
    a: impl Iterator<Item = u64>,
    b: impl Iterator<Item = u64>,
) -> impl Iterator<Item = u64> {
    let (mut a, mut b) = (a.peekable(), b.peekable());
    std::iter::from_fn(move || match (a.peek(), b.peek()) {
        (Some(&x), Some(&y)) if y < x => b.next(),
        (Some(_), _) => a.next(),
        (None, _) => b.next(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ready(seq: u64, count: u32) -> ReadyMessage {
        ReadyMessage { seq, count }
    }

    fn take_all(set: &mut ReadySet) -> Vec<ReadyMessage> {
        std::iter::from_fn(|| set.take_next()).collect()
    }

    #[test]
    fn returned_messages_go_back_ahead_of_newer_ones_in_sequence_order() {
        let mut set = ReadySet::default();
        for seq in [3, 4, 6] {
            set.push_new(seq, None);
        }
        set.push_returned(5, 2, None);
        set.push_returned(1, 1, None);
        assert_eq!(set.len(), 5);
        assert_eq!(
            take_all(&mut set),
            [
                ready(1, 1),
                ready(3, 0),
                ready(4, 0),
                ready(5, 2),
                ready(6, 0)
            ]
        );
        assert_eq!(set.len(), 0);
    }

    #[test]
    fn a_removed_message_is_neither_taken_nor_counted_nor_expired() {
        let mut set = ReadySet::default();
        set.push_new(1, Some(100));
        set.push_new(2, None);
        set.push_returned(0, 3, Some(50));
        assert_eq!(set.remove(1), Some(ready(1, 0)));
        assert_eq!(set.remove(0), Some(ready(0, 3)));
        assert_eq!(set.remove(1), None, "already gone");
        assert_eq!(set.len(), 1);
        assert_eq!(set.next_expiry(), None);
        assert_eq!(take_all(&mut set), [ready(2, 0)]);
    }

    #[test]
    fn expired_messages_leave_soonest_deadline_first_and_only_when_due() {
        let mut set = ReadySet::default();
        set.push_new(1, Some(300));
        set.push_new(2, None);
        set.push_returned(0, 4, Some(100));
        assert_eq!(set.next_expiry(), Some(100));
        assert_eq!(set.take_expired(99), None);
        assert_eq!(set.take_expired(1000), Some((ready(0, 4), 100)));
        assert_eq!(set.take_expired(1000), Some((ready(1, 0), 300)));
        assert_eq!(set.take_expired(1000), None);
        assert_eq!(set.len(), 1);
    }

    #[test]
    fn a_message_taken_for_delivery_no_longer_expires() {
        let mut set = ReadySet::default();
        set.push_new(1, Some(10));
        assert_eq!(set.take_next(), Some(ready(1, 0)));
        assert_eq!(set.next_expiry(), None);
        assert_eq!(set.take_expired(u64::MAX), None);
    }

    #[test]
    fn the_oldest_is_looked_up_again_only_when_the_head_changes() {
        let mut set = ReadySet::default();
        set.push_new(5, None);
        set.push_new(6, None);
        let mut lookups = Vec::new();
        let mut refresh = |set: &mut ReadySet| {
            set.refresh_oldest(|seq| {
                lookups.push(seq);
                Some(seq * 10)
            })
        };
        assert_eq!(
            refresh(&mut set),
            Some(OldestReady {
                seq: 5,
                enqueued_at_ms: Some(50)
            })
        );
        refresh(&mut set);
        set.push_returned(2, 1, None);
        assert_eq!(refresh(&mut set).map(|o| o.seq), Some(2));
        set.take_next();
        set.take_next();
        assert_eq!(refresh(&mut set).map(|o| o.seq), Some(6));
        set.take_next();
        assert_eq!(refresh(&mut set), None);
        assert_eq!(lookups, [5, 2, 6]);
    }

    #[test]
    fn browsing_shows_fresh_and_returned_messages_in_sequence_order_with_their_counts() {
        let mut set = ReadySet::default();
        for seq in [1, 4, 5, 9] {
            set.push_new(seq, None);
        }
        set.push_returned(2, 1, None);
        set.push_returned(10, 3, None);
        assert_eq!(set.after(0).collect::<Vec<_>>(), [1, 2, 4, 5, 9, 10]);
        assert_eq!(set.after(4).collect::<Vec<_>>(), [5, 9, 10]);
        assert_eq!(set.delivery_count(10), 3);
        assert_eq!(set.delivery_count(9), 0);
    }

    #[test]
    fn draining_takes_everything_and_forgets_deadlines() {
        let mut set = ReadySet::default();
        set.push_new(1, Some(5));
        set.push_returned(0, 1, Some(5));
        let mut drained: Vec<u64> = set.drain().collect();
        drained.sort_unstable();
        assert_eq!(drained, [0, 1]);
        assert_eq!(set.len(), 0);
        assert_eq!(set.next_expiry(), None);
    }

    #[test]
    fn merging_keeps_sequence_order() {
        let merged: Vec<u64> =
            merge_sorted([1, 4, 5, 9].into_iter(), [2, 3, 10].into_iter()).collect();
        assert_eq!(merged, [1, 2, 3, 4, 5, 9, 10]);
        let merged: Vec<u64> = merge_sorted([].into_iter(), [7].into_iter()).collect();
        assert_eq!(merged, [7]);
    }
}
