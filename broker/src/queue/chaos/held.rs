//! What chaos holds (`queue::chaos`): messages held back by the delay and drop modes, until
//! their release, and the extra deliveries of the duplicate mode, until settled.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::time::Instant;

use super::MAX_EXTRA_DELIVERIES;

/// A message held back by chaos: neither ready nor in flight, still in the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(in crate::queue) struct HeldMessage {
    /// Its deliveries so far (a dropped delivery counts).
    pub(in crate::queue) count: u32,
    /// Its priority level.
    pub(in crate::queue) priority: u8,
    /// When its own TTL runs out (Unix ms).
    pub(in crate::queue) expires_at_ms: Option<u64>,
    /// Meta and body bytes.
    pub(in crate::queue) bytes: u64,
    /// Held by the delay mode (its next delivery is not delayed again).
    pub(in crate::queue) delayed: bool,
}

/// The messages chaos holds back, by release time. They outlive the injection only until the
/// next round: clearing or ending an injection releases them all.
#[derive(Debug, Default)]
pub(in crate::queue) struct ChaosHeld {
    by_time: BTreeSet<(Instant, u64)>,
    messages: HashMap<u64, (Instant, HeldMessage)>,
    bytes: u64,
    /// Messages released from a delay: their next delivery is not delayed again.
    passed: HashSet<u64>,
}

impl ChaosHeld {
    /// Holds message `seq` until `until`.
    pub(in crate::queue) fn hold(&mut self, seq: u64, until: Instant, m: HeldMessage) {
        self.bytes += m.bytes;
        if let Some((old, old_m)) = self.messages.insert(seq, (until, m)) {
            self.by_time.remove(&(old, seq));
            self.bytes -= old_m.bytes;
        }
        self.by_time.insert((until, seq));
    }

    /// Whether message `seq` is held.
    pub(in crate::queue) fn holds(&self, seq: u64) -> bool {
        self.messages.contains_key(&seq)
    }

    /// The soonest release.
    pub(in crate::queue) fn next_release(&self) -> Option<Instant> {
        self.by_time.first().map(|&(t, _)| t)
    }

    /// Takes the messages due at `now` (all of them with `now` = `None`).
    pub(in crate::queue) fn take_due(&mut self, now: Option<Instant>) -> Vec<(u64, HeldMessage)> {
        let mut out = Vec::new();
        while let Some(&(t, seq)) = self.by_time.first() {
            if now.is_some_and(|now| t > now) {
                break;
            }
            self.by_time.pop_first();
            if let Some((_, m)) = self.messages.remove(&seq) {
                self.bytes -= m.bytes;
                if m.delayed {
                    self.passed.insert(seq);
                }
                out.push((seq, m));
            }
        }
        out
    }

    /// Whether the next delivery of `seq` may be delayed (it was not just released from a
    /// delay); forgets the mark.
    pub(in crate::queue) fn may_delay(&mut self, seq: u64) -> bool {
        self.passed.is_empty() || !self.passed.remove(&seq)
    }

    /// Forgets which messages were just released from a delay (the injection ended).
    pub(in crate::queue) fn forget_passes(&mut self) {
        self.passed = HashSet::new();
    }

    /// Messages held.
    pub(in crate::queue) fn len(&self) -> usize {
        self.messages.len()
    }

    /// Their meta and body bytes.
    pub(in crate::queue) fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Forgets everything (the queue is deleted).
    pub(in crate::queue) fn clear(&mut self) {
        *self = ChaosHeld::default();
    }
}

/// Extra deliveries of the duplicate mode that are not settled yet: `(connection, tag)` to
/// the message. Settling one does nothing to the message (its real delivery decides).
#[derive(Debug, Default)]
pub(in crate::queue) struct ExtraDeliveries {
    tags: HashMap<(u64, u64), u64>,
}

impl ExtraDeliveries {
    /// Records extra delivery `tag` of message `seq` on connection `conn`.
    pub(in crate::queue) fn insert(&mut self, conn: u64, tag: u64, seq: u64) {
        self.tags.insert((conn, tag), seq);
    }

    /// Takes extra delivery `tag` of connection `conn` if it is one; true when it was.
    pub(in crate::queue) fn settle(&mut self, conn: u64, tag: u64) -> bool {
        !self.tags.is_empty() && self.tags.remove(&(conn, tag)).is_some()
    }

    /// Whether `tag` of `conn` is an outstanding extra delivery.
    pub(in crate::queue) fn contains(&self, conn: u64, tag: u64) -> bool {
        !self.tags.is_empty() && self.tags.contains_key(&(conn, tag))
    }

    /// Forgets the extra deliveries of a closed connection.
    pub(in crate::queue) fn forget_connection(&mut self, conn: u64) {
        if !self.tags.is_empty() {
            self.tags.retain(|&(c, _), _| c != conn);
        }
    }

    /// Whether room is left for another.
    pub(in crate::queue) fn has_room(&self) -> bool {
        self.tags.len() < MAX_EXTRA_DELIVERIES
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn held_messages_come_back_in_time_order_and_all_at_a_clear() {
        let t0 = Instant::now();
        let m = |delayed| HeldMessage {
            count: 1,
            priority: 0,
            expires_at_ms: None,
            bytes: 10,
            delayed,
        };
        let mut held = ChaosHeld::default();
        held.hold(1, t0 + Duration::from_secs(2), m(true));
        held.hold(2, t0 + Duration::from_secs(1), m(false));
        held.hold(3, t0 + Duration::from_secs(9), m(false));
        assert_eq!((held.len(), held.bytes()), (3, 30));
        assert_eq!(held.next_release(), Some(t0 + Duration::from_secs(1)));
        let due: Vec<u64> = held
            .take_due(Some(t0 + Duration::from_secs(2)))
            .into_iter()
            .map(|(s, _)| s)
            .collect();
        assert_eq!(due, [2, 1]);
        assert!(!held.may_delay(1), "released from a delay: not again");
        assert!(held.may_delay(1), "the mark is used once");
        assert!(held.may_delay(2));
        assert_eq!(held.take_due(None).len(), 1);
        assert_eq!((held.len(), held.bytes()), (0, 0));
    }

    #[test]
    fn extra_deliveries_settle_once_and_go_with_their_connection() {
        let mut extra = ExtraDeliveries::default();
        extra.insert(1, 5, 100);
        extra.insert(2, 5, 100);
        assert!(extra.contains(1, 5));
        assert!(extra.settle(1, 5));
        assert!(!extra.settle(1, 5));
        extra.forget_connection(2);
        assert!(!extra.contains(2, 5));
        assert!(extra.has_room());
    }
}
