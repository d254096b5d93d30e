//! A queue's ready set: every message that waits for a delivery, whether never delivered
//! (`Fresh`) or delivered before and returned, with the deadlines of those that carry a TTL
//! of their own and the oldest one (for the queue's TTL and its age in listings).
//!
//! Within a priority, messages come out in sequence order: a returned message goes back
//! ahead of newer ones. A queue with `max_priority` keeps one such [`Level`] per priority and
//! serves the highest non-empty one first; a queue without has only the base level, and
//! pays one branch (`higher_len == 0`) for the feature.

use std::collections::BTreeMap;

use super::ready::{Expiries, Fresh};

/// A message taken from the ready set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct ReadyMessage {
    /// Its sequence number in the queue.
    pub(super) seq: u64,
    /// Deliveries so far (0 for a message never delivered).
    pub(super) count: u32,
    /// Its priority level (its priority, capped by the queue's `max_priority`; 0 without).
    pub(super) priority: u8,
}

/// The oldest ready message: the next to expire by the queue's TTL, and the age listings show.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct OldestReady {
    /// Its sequence number.
    pub(super) seq: u64,
    /// When the queue stored it (Unix ms); `None` if its record could not be read.
    pub(super) enqueued_at_ms: Option<u64>,
}

/// The ready messages of one priority, in sequence order.
#[derive(Debug, Default)]
struct Level {
    /// Never-delivered messages, in seq order.
    fresh: Fresh,
    /// Messages delivered before and returned, with their delivery count so far.
    returned: BTreeMap<u64, u32>,
}

impl Level {
    fn len(&self) -> usize {
        self.fresh.len() + self.returned.len()
    }

    fn lowest_seq(&self) -> Option<u64> {
        match (self.fresh.front(), self.returned.first_key_value()) {
            (Some(f), Some((&r, _))) => Some(f.min(r)),
            (f, r) => f.or(r.map(|(&s, _)| s)),
        }
    }

    /// Takes the message with the lowest seq: `(seq, count)`.
    fn pop_lowest(&mut self) -> Option<(u64, u32)> {
        let fresh = self.fresh.front();
        let returned = self.returned.first_key_value().map(|(&s, _)| s);
        let take_fresh = match (fresh, returned) {
            (None, None) => return None,
            (Some(f), Some(r)) => f < r,
            (fresh, _) => fresh.is_some(),
        };
        if take_fresh {
            self.fresh.pop_front().map(|seq| (seq, 0))
        } else {
            self.returned.pop_first()
        }
    }

    /// Takes `seq` out wherever it is; its count, `None` if it is not here.
    fn remove(&mut self, seq: u64) -> Option<u32> {
        match self.returned.remove(&seq) {
            Some(count) => Some(count),
            None => self.fresh.remove(seq).then_some(0),
        }
    }

    fn contains(&self, seq: u64) -> bool {
        self.returned.contains_key(&seq) || self.fresh.contains(seq)
    }

    fn after(&self, after: u64) -> impl Iterator<Item = u64> + '_ {
        let returned = self
            .returned
            .range(after.saturating_add(1)..)
            .map(|(&s, _)| s);
        merge_sorted(self.fresh.after(after), returned)
    }

    fn drain_into(&mut self, seqs: &mut Vec<u64>) {
        seqs.extend(self.fresh.drain());
        seqs.extend(std::mem::take(&mut self.returned).into_keys());
    }

    fn clear(&mut self) {
        self.fresh.clear();
        self.returned.clear();
    }
}

/// The messages ready for delivery.
#[derive(Debug, Default)]
pub(super) struct ReadySet {
    /// Priority 0: every message of a queue without priorities.
    base: Level,
    /// Priorities 1 to `max_priority` (index `priority - 1`); empty without priorities.
    higher: Vec<Level>,
    /// Messages in `higher`.
    higher_len: usize,
    /// Deadlines (Unix ms) of ready messages with a TTL of their own.
    expiries: Expiries,
    /// The oldest ready message, as last looked up (see [`ReadySet::refresh_oldest`]).
    oldest: Option<OldestReady>,
}

impl ReadySet {
    /// An empty set with priorities 0 to `max_priority` (only 0 when `None`).
    pub(super) fn new(max_priority: Option<u8>) -> Self {
        let levels = usize::from(max_priority.unwrap_or(0));
        Self {
            higher: (0..levels).map(|_| Level::default()).collect(),
            ..Self::default()
        }
    }

    /// Whether messages are served by priority (the queue has `max_priority`).
    pub(super) fn has_priorities(&self) -> bool {
        !self.higher.is_empty()
    }

    /// Adds a message never delivered, newer than every other, with its `priority` (capped
    /// by the queue's maximum); `expires_at_ms` is the deadline of its own TTL.
    pub(super) fn push_new(&mut self, seq: u64, priority: u8, expires_at_ms: Option<u64>) {
        self.level_mut(priority).fresh.push_back(seq);
        self.note_expiry(seq, expires_at_ms);
    }

    /// Puts back a message delivered `count` times (0: taken but never delivered, as by a
    /// move that did not happen), ahead of every newer message of its priority.
    pub(super) fn push_returned(
        &mut self,
        seq: u64,
        count: u32,
        priority: u8,
        expires_at_ms: Option<u64>,
    ) {
        self.level_mut(priority).returned.insert(seq, count);
        self.note_expiry(seq, expires_at_ms);
    }

    /// Takes the next message to deliver: of the highest priority, the one with the lowest
    /// sequence number.
    pub(super) fn take_next(&mut self) -> Option<ReadyMessage> {
        let priority = if self.higher_len == 0 {
            0
        } else {
            self.highest_non_empty()
        };
        self.pop_from(priority)
    }

    /// Takes the oldest message (the one with the lowest sequence number, whatever its
    /// priority): the next to run out of the queue's TTL, and the one a length limit drops
    /// first.
    pub(super) fn take_oldest(&mut self) -> Option<ReadyMessage> {
        let priority = if self.higher_len == 0 {
            0
        } else {
            self.levels()
                .filter_map(|(p, level)| Some((level.lowest_seq()?, p)))
                .min()
                .map_or(0, |(_, p)| p)
        };
        self.pop_from(priority)
    }

    /// Takes `seq` out wherever it is; `None` if it is not ready.
    pub(super) fn remove(&mut self, seq: u64) -> Option<ReadyMessage> {
        let (count, priority) = match self.base.remove(seq) {
            Some(count) => (count, 0),
            None if self.higher_len == 0 => return None,
            None => {
                let (i, count) = self
                    .higher
                    .iter_mut()
                    .enumerate()
                    .find_map(|(i, level)| Some((i, level.remove(seq)?)))?;
                self.higher_len -= 1;
                (count, i as u8 + 1)
            }
        };
        self.expiries.remove(seq);
        Some(ReadyMessage {
            seq,
            count,
            priority,
        })
    }

    /// Whether `seq` is ready.
    pub(super) fn contains(&self, seq: u64) -> bool {
        self.levels().any(|(_, level)| level.contains(seq))
    }

    /// Messages ready.
    pub(super) fn len(&self) -> usize {
        self.base.len() + self.higher_len
    }

    /// Messages ready at each priority, lowest first (one entry without priorities).
    pub(super) fn len_by_priority(&self) -> impl Iterator<Item = usize> + '_ {
        self.levels().map(|(_, level)| level.len())
    }

    /// Deliveries so far of ready message `seq` (0 if it was never delivered).
    pub(super) fn delivery_count(&self, seq: u64) -> u32 {
        self.levels()
            .find_map(|(_, level)| level.returned.get(&seq).copied())
            .unwrap_or(0)
    }

    /// The ready messages above `after`, in sequence order whatever their priority (for
    /// browsing).
    pub(super) fn after(&self, after: u64) -> Box<dyn Iterator<Item = u64> + '_> {
        if self.higher_len == 0 {
            return Box::new(self.base.after(after));
        }
        let mut levels: Vec<_> = self
            .levels()
            .map(|(_, level)| level.after(after).peekable())
            .collect();
        Box::new(std::iter::from_fn(move || {
            let next = levels
                .iter_mut()
                .enumerate()
                .filter_map(|(i, it)| Some((*it.peek()?, i)))
                .min()?;
            levels[next.1].next()
        }))
    }

    /// Takes every message (in no particular order).
    pub(super) fn drain(&mut self) -> Vec<u64> {
        let mut seqs = Vec::with_capacity(self.len());
        self.base.drain_into(&mut seqs);
        for level in &mut self.higher {
            level.drain_into(&mut seqs);
        }
        self.higher_len = 0;
        self.expiries.clear();
        self.oldest = None;
        seqs
    }

    /// Forgets every message.
    pub(super) fn clear(&mut self) {
        self.base.clear();
        self.higher.iter_mut().for_each(Level::clear);
        self.higher_len = 0;
        self.expiries.clear();
        self.oldest = None;
    }

    /// Gives back memory a drained backlog no longer needs.
    pub(super) fn shrink_if_sparse(&mut self) {
        self.base.fresh.shrink_if_sparse();
        for level in &mut self.higher {
            level.fresh.shrink_if_sparse();
        }
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
        if self.higher_len == 0 {
            return self.base.lowest_seq();
        }
        self.levels()
            .filter_map(|(_, level)| level.lowest_seq())
            .min()
    }

    /// Every level with its priority, lowest first.
    fn levels(&self) -> impl Iterator<Item = (u8, &Level)> + '_ {
        std::iter::once(&self.base)
            .chain(&self.higher)
            .enumerate()
            .map(|(p, level)| (p as u8, level))
    }

    /// The level of `priority`, capped by the highest; counts a message added to it.
    fn level_mut(&mut self, priority: u8) -> &mut Level {
        let capped = usize::from(priority).min(self.higher.len());
        if capped == 0 {
            return &mut self.base;
        }
        self.higher_len += 1;
        &mut self.higher[capped - 1]
    }

    fn highest_non_empty(&self) -> u8 {
        self.higher
            .iter()
            .rposition(|level| level.len() > 0)
            .map_or(0, |i| i as u8 + 1)
    }

    fn pop_from(&mut self, priority: u8) -> Option<ReadyMessage> {
        let (seq, count) = if priority == 0 {
            self.base.pop_lowest()?
        } else {
            let taken = self.higher[usize::from(priority) - 1].pop_lowest()?;
            self.higher_len -= 1;
            taken
        };
        self.expiries.remove(seq);
        Some(ReadyMessage {
            seq,
            count,
            priority,
        })
    }

    fn note_expiry(&mut self, seq: u64, expires_at_ms: Option<u64>) {
        if let Some(deadline) = expires_at_ms {
            self.expiries.insert(seq, deadline);
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
        at(seq, count, 0)
    }

    fn at(seq: u64, count: u32, priority: u8) -> ReadyMessage {
        ReadyMessage {
            seq,
            count,
            priority,
        }
    }

    fn take_all(set: &mut ReadySet) -> Vec<ReadyMessage> {
        std::iter::from_fn(|| set.take_next()).collect()
    }

    #[test]
    fn returned_messages_go_back_ahead_of_newer_ones_in_sequence_order() {
        let mut set = ReadySet::default();
        for seq in [3, 4, 6] {
            set.push_new(seq, 0, None);
        }
        set.push_returned(5, 2, 0, None);
        set.push_returned(1, 1, 0, None);
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
        set.push_new(1, 0, Some(100));
        set.push_new(2, 0, None);
        set.push_returned(0, 3, 0, Some(50));
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
        set.push_new(1, 0, Some(300));
        set.push_new(2, 0, None);
        set.push_returned(0, 4, 0, Some(100));
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
        set.push_new(1, 0, Some(10));
        assert_eq!(set.take_next(), Some(ready(1, 0)));
        assert_eq!(set.next_expiry(), None);
        assert_eq!(set.take_expired(u64::MAX), None);
    }

    #[test]
    fn the_oldest_is_looked_up_again_only_when_the_head_changes() {
        let mut set = ReadySet::default();
        set.push_new(5, 0, None);
        set.push_new(6, 0, None);
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
        set.push_returned(2, 1, 0, None);
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
            set.push_new(seq, 0, None);
        }
        set.push_returned(2, 1, 0, None);
        set.push_returned(10, 3, 0, None);
        assert_eq!(set.after(0).collect::<Vec<_>>(), [1, 2, 4, 5, 9, 10]);
        assert_eq!(set.after(4).collect::<Vec<_>>(), [5, 9, 10]);
        assert_eq!(set.delivery_count(10), 3);
        assert_eq!(set.delivery_count(9), 0);
    }

    #[test]
    fn draining_takes_everything_and_forgets_deadlines() {
        let mut set = ReadySet::default();
        set.push_new(1, 0, Some(5));
        set.push_returned(0, 1, 0, Some(5));
        let mut drained = set.drain();
        drained.sort_unstable();
        assert_eq!(drained, [0, 1]);
        assert_eq!(set.len(), 0);
        assert_eq!(set.next_expiry(), None);
    }

    #[test]
    fn higher_priorities_come_first_and_each_priority_in_sequence_order() {
        let mut set = ReadySet::new(Some(3));
        assert!(set.has_priorities());
        set.push_new(1, 0, None);
        set.push_new(2, 2, None);
        set.push_new(3, 1, None);
        set.push_new(4, 2, None);
        set.push_new(5, 0, None);
        set.push_new(6, 3, None);
        assert_eq!(set.len(), 6);
        assert_eq!(set.len_by_priority().collect::<Vec<_>>(), [2, 1, 2, 1]);
        assert_eq!(
            take_all(&mut set),
            [
                at(6, 0, 3),
                at(2, 0, 2),
                at(4, 0, 2),
                at(3, 0, 1),
                at(1, 0, 0),
                at(5, 0, 0)
            ]
        );
    }

    #[test]
    fn a_priority_above_the_maximum_counts_as_the_maximum() {
        let mut set = ReadySet::new(Some(2));
        set.push_new(1, 2, None);
        set.push_new(2, 255, None);
        set.push_new(3, 9, None);
        let taken: Vec<_> = take_all(&mut set)
            .iter()
            .map(|m| (m.seq, m.priority))
            .collect();
        assert_eq!(taken, [(1, 2), (2, 2), (3, 2)]);
        let mut flat = ReadySet::default();
        assert!(!flat.has_priorities());
        flat.push_new(1, 0, None);
        flat.push_new(2, 7, None);
        assert_eq!(take_all(&mut flat), [ready(1, 0), ready(2, 0)]);
    }

    #[test]
    fn a_returned_message_goes_back_into_its_priority_in_sequence_order() {
        let mut set = ReadySet::new(Some(2));
        for (seq, priority) in [(1, 1), (2, 1), (3, 1), (4, 2), (5, 0)] {
            set.push_new(seq, priority, None);
        }
        assert_eq!(set.take_next(), Some(at(4, 0, 2)));
        assert_eq!(set.take_next(), Some(at(1, 0, 1)));
        assert_eq!(set.take_next(), Some(at(2, 0, 1)));
        set.push_returned(2, 1, 1, None);
        set.push_returned(1, 1, 1, None);
        assert_eq!(
            take_all(&mut set),
            [at(1, 1, 1), at(2, 1, 1), at(3, 0, 1), at(5, 0, 0)]
        );
    }

    #[test]
    fn with_priorities_the_oldest_is_the_lowest_seq_of_any_priority() {
        let mut set = ReadySet::new(Some(5));
        set.push_new(1, 0, Some(100));
        set.push_new(2, 5, None);
        set.push_new(3, 4, Some(50));
        assert_eq!(set.refresh_oldest(Some).map(|o| o.seq), Some(1));
        assert_eq!(set.take_oldest(), Some(at(1, 0, 0)));
        assert_eq!(
            set.next_expiry(),
            Some(50),
            "the taken one left the deadline index"
        );
        assert_eq!(set.take_expired(60), Some((at(3, 0, 4), 50)));
        assert_eq!(set.remove(2), Some(at(2, 0, 5)));
        assert_eq!(set.len(), 0);
        assert_eq!(set.refresh_oldest(Some), None);
    }

    #[test]
    fn browsing_with_priorities_shows_every_priority_in_sequence_order() {
        let mut set = ReadySet::new(Some(2));
        for (seq, priority) in [(1, 2), (2, 0), (3, 1), (4, 2), (6, 0)] {
            set.push_new(seq, priority, None);
        }
        set.push_returned(5, 2, 1, None);
        assert_eq!(set.after(0).collect::<Vec<_>>(), [1, 2, 3, 4, 5, 6]);
        assert_eq!(set.after(3).collect::<Vec<_>>(), [4, 5, 6]);
        assert_eq!(set.delivery_count(5), 2);
        let mut drained = set.drain();
        drained.sort_unstable();
        assert_eq!(drained, [1, 2, 3, 4, 5, 6]);
        assert_eq!(set.len(), 0);
        assert_eq!(set.take_next(), None);
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
