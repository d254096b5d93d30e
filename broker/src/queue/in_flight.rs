//! A queue's deliveries in flight: handed to a consumer (or a `Get`) and not settled yet,
//! each with the deadline of its lease. One type keeps the two indexes (by message, by
//! deadline) and the byte count consistent.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Instant;

use sluice_client::wire::{ConsumerId, DeliveryTag};

use super::{ConnId, ConnLink};

/// One delivery in flight.
#[derive(Debug)]
pub(super) struct Delivered {
    /// The connection that holds it.
    pub(super) conn: Arc<ConnLink>,
    /// Its consumer (`None`: taken by a `Get`).
    pub(super) consumer: Option<ConsumerId>,
    /// Its tag on that connection.
    pub(super) tag: DeliveryTag,
    /// When its lease runs out.
    pub(super) deadline: Instant,
    /// When it was handed out, for the delivery→ack time.
    pub(super) delivered_at: Instant,
    /// Deliveries of the message, this one included.
    pub(super) count: u32,
    /// The message's priority level, to return it there.
    pub(super) priority: u8,
    /// Meta and body bytes.
    pub(super) bytes: u64,
    /// When the message's own TTL runs out (Unix ms), for the deadline index if it returns.
    pub(super) expires_at_ms: Option<u64>,
    /// Its lease was shortened by a chaos injection (counted when it runs out).
    pub(super) short_lease: bool,
}

impl Delivered {
    /// Whether this is the delivery `tag` of connection `conn`.
    fn is(&self, conn: ConnId, tag: DeliveryTag) -> bool {
        self.conn.id == conn && self.tag == tag
    }
}

/// The deliveries in flight, by message seq and by lease deadline.
#[derive(Debug, Default)]
pub(super) struct InFlight {
    by_seq: HashMap<u64, Delivered>,
    /// `(deadline, seq)` of every delivery in `by_seq`, soonest first.
    deadlines: BTreeSet<(Instant, u64)>,
    /// Meta and body bytes of every delivery.
    bytes: u64,
}

impl InFlight {
    /// Records the delivery of message `seq`.
    pub(super) fn insert(&mut self, seq: u64, delivered: Delivered) {
        self.bytes += delivered.bytes;
        let deadline = delivered.deadline;
        if let Some(old) = self.by_seq.insert(seq, delivered) {
            // A message is in flight once at most; keep the indexes right regardless.
            self.deadlines.remove(&(old.deadline, seq));
            self.bytes -= old.bytes;
        }
        self.deadlines.insert((deadline, seq));
    }

    /// Whether message `seq` is in flight as delivery `tag` of connection `conn`.
    pub(super) fn holds(&self, seq: u64, conn: ConnId, tag: DeliveryTag) -> bool {
        self.by_seq.get(&seq).is_some_and(|d| d.is(conn, tag))
    }

    /// The consumer message `seq` is in flight with (`None`: a `Get`, or not in flight).
    pub(super) fn consumer_of(&self, seq: u64) -> Option<ConsumerId> {
        self.by_seq.get(&seq).and_then(|d| d.consumer)
    }

    /// Marks the delivery of message `seq` as one whose lease chaos shortened.
    pub(super) fn mark_short_lease(&mut self, seq: u64) {
        if let Some(d) = self.by_seq.get_mut(&seq) {
            d.short_lease = true;
        }
    }

    /// Whether message `seq` is in flight.
    pub(super) fn contains(&self, seq: u64) -> bool {
        self.by_seq.contains_key(&seq)
    }

    /// When the lease of message `seq` runs out, if it is in flight.
    pub(super) fn deadline_of(&self, seq: u64) -> Option<Instant> {
        self.by_seq.get(&seq).map(|d| d.deadline)
    }

    /// Takes message `seq` out of flight.
    pub(super) fn take(&mut self, seq: u64) -> Option<Delivered> {
        let delivered = self.by_seq.remove(&seq)?;
        self.deadlines.remove(&(delivered.deadline, seq));
        self.bytes -= delivered.bytes;
        Some(delivered)
    }

    /// Moves the lease deadline of delivery `tag` of connection `conn` (message `seq`) to
    /// `deadline`; false if that delivery is not in flight.
    pub(super) fn extend(
        &mut self,
        seq: u64,
        conn: ConnId,
        tag: DeliveryTag,
        deadline: Instant,
    ) -> bool {
        match self.by_seq.get_mut(&seq) {
            Some(d) if d.is(conn, tag) => {
                self.deadlines.remove(&(d.deadline, seq));
                d.deadline = deadline;
                self.deadlines.insert((deadline, seq));
                true
            }
            _ => false,
        }
    }

    /// The soonest lease deadline.
    pub(super) fn next_deadline(&self) -> Option<Instant> {
        self.deadlines.first().map(|&(deadline, _)| deadline)
    }

    /// Takes the delivery whose lease ran out soonest, if that is at or before `now`.
    pub(super) fn take_expired(&mut self, now: Instant) -> Option<(u64, Delivered)> {
        let &(deadline, seq) = self.deadlines.first()?;
        if deadline > now {
            return None;
        }
        let delivered = self.take(seq).expect("the indexes agree");
        Some((seq, delivered))
    }

    /// The messages connection `conn` holds, of consumer `consumer` if given.
    pub(super) fn held_by(&self, conn: ConnId, consumer: Option<ConsumerId>) -> Vec<u64> {
        self.by_seq
            .iter()
            .filter(|(_, d)| d.conn.id == conn && (consumer.is_none() || d.consumer == consumer))
            .map(|(&seq, _)| seq)
            .collect()
    }

    /// Deliveries in flight.
    pub(super) fn len(&self) -> usize {
        self.by_seq.len()
    }

    /// Meta and body bytes of the deliveries in flight.
    pub(super) fn bytes(&self) -> u64 {
        self.bytes
    }

    /// The seqs of every delivery.
    pub(super) fn seqs(&self) -> Vec<u64> {
        self.by_seq.keys().copied().collect()
    }

    /// Takes every delivery out.
    pub(super) fn drain(&mut self) -> Vec<(u64, Delivered)> {
        self.deadlines.clear();
        self.bytes = 0;
        self.by_seq.drain().collect()
    }

    /// Forgets every delivery.
    pub(super) fn clear(&mut self) {
        self.by_seq.clear();
        self.deadlines.clear();
        self.bytes = 0;
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::sync::mpsc;

    use super::*;

    fn link(id: ConnId) -> Arc<ConnLink> {
        ConnLink::new(id, mpsc::unbounded_channel().0, Arc::default())
    }

    fn delivered(conn: &Arc<ConnLink>, tag: u64, deadline: Instant, bytes: u64) -> Delivered {
        Delivered {
            conn: Arc::clone(conn),
            consumer: Some(ConsumerId(1)),
            tag: DeliveryTag(tag),
            deadline,
            delivered_at: deadline,
            count: 1,
            priority: 0,
            bytes,
            expires_at_ms: None,
            short_lease: false,
        }
    }

    #[test]
    fn leases_run_out_soonest_first_and_only_when_due() {
        let conn = link(1);
        let t0 = Instant::now();
        let mut flights = InFlight::default();
        flights.insert(10, delivered(&conn, 1, t0 + Duration::from_secs(3), 5));
        flights.insert(11, delivered(&conn, 2, t0 + Duration::from_secs(1), 7));
        assert_eq!(flights.next_deadline(), Some(t0 + Duration::from_secs(1)));
        assert!(flights.take_expired(t0).is_none());
        let (seq, d) = flights.take_expired(t0 + Duration::from_secs(2)).unwrap();
        assert_eq!((seq, d.tag), (11, DeliveryTag(2)));
        assert!(flights.take_expired(t0 + Duration::from_secs(2)).is_none());
        assert_eq!((flights.len(), flights.bytes()), (1, 5));
    }

    #[test]
    fn an_extended_lease_moves_in_the_deadline_index() {
        let conn = link(1);
        let t0 = Instant::now();
        let mut flights = InFlight::default();
        flights.insert(10, delivered(&conn, 1, t0, 5));
        let later = t0 + Duration::from_secs(60);
        assert!(!flights.extend(10, 1, DeliveryTag(9), later), "wrong tag");
        assert!(
            !flights.extend(10, 2, DeliveryTag(1), later),
            "wrong connection"
        );
        assert!(flights.extend(10, 1, DeliveryTag(1), later));
        assert_eq!(flights.next_deadline(), Some(later));
        assert!(flights.take_expired(t0).is_none());
    }

    #[test]
    fn a_settled_delivery_leaves_both_indexes_and_gives_its_bytes_back() {
        let conn = link(1);
        let t0 = Instant::now();
        let mut flights = InFlight::default();
        flights.insert(10, delivered(&conn, 1, t0, 5));
        assert!(flights.holds(10, 1, DeliveryTag(1)));
        assert!(!flights.holds(10, 2, DeliveryTag(1)));
        assert_eq!(flights.take(10).map(|d| d.bytes), Some(5));
        assert!(flights.take(10).is_none());
        assert_eq!((flights.len(), flights.bytes()), (0, 0));
        assert_eq!(flights.next_deadline(), None);
    }

    #[test]
    fn deliveries_are_found_by_connection_and_consumer() {
        let (a, b) = (link(1), link(2));
        let t0 = Instant::now();
        let mut flights = InFlight::default();
        flights.insert(1, delivered(&a, 1, t0, 1));
        let mut got = delivered(&a, 2, t0, 1);
        got.consumer = None;
        flights.insert(2, got);
        flights.insert(3, delivered(&b, 1, t0, 1));
        let mut of_a = flights.held_by(1, None);
        of_a.sort_unstable();
        assert_eq!(of_a, [1, 2]);
        assert_eq!(flights.held_by(1, Some(ConsumerId(1))), [1]);
        assert_eq!(flights.held_by(2, Some(ConsumerId(5))), Vec::<u64>::new());
        flights.clear();
        assert_eq!((flights.len(), flights.bytes()), (0, 0));
    }
}
