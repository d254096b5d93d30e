//! Parts of a queue's ready set: the never-delivered messages in order, and when ready
//! messages with a TTL of their own expire.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};

/// Never-delivered messages in sequence order.
///
/// A message taken from the middle (one whose own TTL ran out before older messages) stays in
/// the deque as a tombstone, so removing it shifts nothing; the front is never a tombstone.
/// The methods are named as `VecDeque`'s and only ever show live messages.
#[derive(Debug, Default)]
pub(super) struct Fresh {
    seqs: VecDeque<u64>,
    /// Seqs still in `seqs` that have left the ready set.
    removed: HashSet<u64>,
}

impl Fresh {
    /// Adds a message newer than every other.
    pub(super) fn push_back(&mut self, seq: u64) {
        debug_assert!(self.seqs.back().is_none_or(|&b| b < seq));
        self.seqs.push_back(seq);
    }

    /// The oldest message.
    pub(super) fn front(&self) -> Option<u64> {
        self.seqs.front().copied()
    }

    /// Takes the oldest message.
    pub(super) fn pop_front(&mut self) -> Option<u64> {
        let seq = self.seqs.pop_front()?;
        self.drop_leading_tombstones();
        Some(seq)
    }

    /// Takes `seq` out wherever it is; false if it is not here.
    pub(super) fn remove(&mut self, seq: u64) -> bool {
        if self.front() == Some(seq) {
            self.pop_front();
            return true;
        }
        if self.seqs.binary_search(&seq).is_err() || !self.removed.insert(seq) {
            return false;
        }
        // Tombstones behind a front that stays (an old message without a TTL of its own)
        // would pile up: once they are half the deque, sweep them out, which costs as much
        // as the removals that made them.
        if self.removed.len() > self.seqs.len() / 2 {
            let removed = std::mem::take(&mut self.removed);
            self.seqs.retain(|s| !removed.contains(s));
        }
        true
    }

    /// Whether `seq` is here.
    pub(super) fn contains(&self, seq: u64) -> bool {
        self.seqs.binary_search(&seq).is_ok() && !self.removed.contains(&seq)
    }

    /// Messages here.
    pub(super) fn len(&self) -> usize {
        self.seqs.len() - self.removed.len()
    }

    /// Whether there is none.
    #[cfg(test)]
    pub(super) fn is_empty(&self) -> bool {
        self.seqs.is_empty()
    }

    /// The messages newer than `after`, oldest first (for browsing).
    pub(super) fn after(&self, after: u64) -> impl Iterator<Item = u64> + '_ {
        let start = self.seqs.partition_point(|&s| s <= after);
        self.seqs
            .range(start..)
            .copied()
            .filter(|s| !self.removed.contains(s))
    }

    /// Takes every message, oldest first.
    pub(super) fn drain(&mut self) -> impl Iterator<Item = u64> {
        let removed = std::mem::take(&mut self.removed);
        std::mem::take(&mut self.seqs)
            .into_iter()
            .filter(move |s| removed.is_empty() || !removed.contains(s))
    }

    /// Gives back memory when at most a quarter of a large allocation is in use.
    pub(super) fn shrink_if_sparse(&mut self) {
        let used = self.seqs.len();
        if self.seqs.capacity() > 4096 && used < self.seqs.capacity() / 4 {
            self.seqs.shrink_to(used * 2);
        }
    }

    /// Forgets every message.
    pub(super) fn clear(&mut self) {
        self.seqs.clear();
        self.removed.clear();
    }

    fn drop_leading_tombstones(&mut self) {
        if self.removed.is_empty() {
            return;
        }
        while let Some(&front) = self.seqs.front() {
            if !self.removed.remove(&front) {
                break;
            }
            self.seqs.pop_front();
        }
    }
}

/// Deadlines (Unix ms) of ready messages that carry their own TTL (`expiration_ms`), soonest
/// first. Messages that only have the queue's TTL are not here: for them the oldest ready
/// message is always the next to expire. Holds ready messages only, so it is bounded by the
/// ready set.
#[derive(Debug, Default)]
pub(super) struct Expiries {
    by_deadline: BTreeSet<(u64, u64)>,
    by_seq: HashMap<u64, u64>,
}

impl Expiries {
    /// Notes that ready message `seq` expires at `deadline_ms`.
    pub(super) fn insert(&mut self, seq: u64, deadline_ms: u64) {
        if let Some(old) = self.by_seq.insert(seq, deadline_ms) {
            self.by_deadline.remove(&(old, seq));
        }
        self.by_deadline.insert((deadline_ms, seq));
    }

    /// Forgets `seq` (it left the ready set); its deadline, if it had one.
    pub(super) fn remove(&mut self, seq: u64) -> Option<u64> {
        if self.by_seq.is_empty() {
            return None;
        }
        let deadline = self.by_seq.remove(&seq)?;
        self.by_deadline.remove(&(deadline, seq));
        Some(deadline)
    }

    /// The soonest deadline.
    pub(super) fn next_deadline(&self) -> Option<u64> {
        self.by_deadline.first().map(|&(d, _)| d)
    }

    /// Takes the message with the soonest deadline if that is at or before `now_ms`:
    /// `(seq, deadline)`.
    pub(super) fn pop_due(&mut self, now_ms: u64) -> Option<(u64, u64)> {
        let &(deadline, seq) = self.by_deadline.first()?;
        if deadline > now_ms {
            return None;
        }
        self.by_deadline.pop_first();
        self.by_seq.remove(&seq);
        Some((seq, deadline))
    }

    /// Messages with a deadline.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.by_seq.len()
    }

    /// Forgets every deadline.
    pub(super) fn clear(&mut self) {
        self.by_deadline.clear();
        self.by_seq.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fresh(seqs: &[u64]) -> Fresh {
        let mut f = Fresh::default();
        seqs.iter().for_each(|&s| f.push_back(s));
        f
    }

    #[test]
    fn tombstones_behind_a_front_that_stays_are_swept_out() {
        let mut f = fresh(&(1..=1000).collect::<Vec<_>>());
        for seq in 2..=1000 {
            assert!(f.remove(seq));
        }
        assert_eq!(f.len(), 1);
        assert!(
            f.seqs.len() <= 2,
            "{} slots kept for 1 message",
            f.seqs.len()
        );
        assert!(f.removed.len() <= 1);
        assert_eq!(f.drain().collect::<Vec<_>>(), vec![1]);
    }

    #[test]
    fn a_message_removed_from_the_middle_is_skipped_and_no_longer_counted() {
        let mut f = fresh(&[1, 2, 3, 4]);
        assert!(f.remove(3));
        assert!(!f.remove(3), "already gone");
        assert!(!f.remove(9), "never there");
        assert_eq!(f.len(), 3);
        assert_eq!(f.after(0).collect::<Vec<_>>(), [1, 2, 4]);
        assert_eq!(f.after(2).collect::<Vec<_>>(), [4]);
        assert_eq!(f.pop_front(), Some(1));
        assert_eq!(f.pop_front(), Some(2));
        assert_eq!(f.front(), Some(4), "the tombstone never shows at the front");
        assert_eq!(f.len(), 1);
        assert_eq!(f.pop_front(), Some(4));
        assert!(f.is_empty());
        assert_eq!(f.len(), 0);
    }

    #[test]
    fn removing_the_front_also_drops_tombstones_behind_it() {
        let mut f = fresh(&[1, 2, 3]);
        assert!(f.remove(2));
        assert!(f.remove(1));
        assert_eq!(f.front(), Some(3));
        assert_eq!(f.len(), 1);
        f.push_back(7);
        assert_eq!(f.drain().collect::<Vec<_>>(), [3, 7]);
        assert!(f.is_empty());
    }

    #[test]
    fn draining_skips_removed_messages() {
        let mut f = fresh(&[5, 6, 7]);
        f.remove(6);
        assert_eq!(f.drain().collect::<Vec<_>>(), [5, 7]);
        assert_eq!(f.len(), 0);
    }

    #[test]
    fn deadlines_come_out_soonest_first_and_only_when_due() {
        let mut e = Expiries::default();
        e.insert(1, 300);
        e.insert(2, 100);
        e.insert(3, 200);
        assert_eq!(e.next_deadline(), Some(100));
        assert_eq!(e.pop_due(99), None);
        assert_eq!(e.pop_due(250), Some((2, 100)));
        assert_eq!(e.pop_due(250), Some((3, 200)));
        assert_eq!(e.pop_due(250), None);
        assert_eq!(e.len(), 1);
    }

    #[test]
    fn a_message_that_leaves_the_ready_set_leaves_the_index() {
        let mut e = Expiries::default();
        e.insert(1, 100);
        e.insert(2, 50);
        assert_eq!(e.remove(2), Some(50));
        assert_eq!(e.remove(2), None);
        assert_eq!(e.next_deadline(), Some(100));
        e.insert(1, 40);
        assert_eq!(e.len(), 1, "a second insert replaces the deadline");
        assert_eq!(e.pop_due(1000), Some((1, 40)));
        assert_eq!(e.next_deadline(), None);
    }
}
