//! `GetMany` requests waiting for a message (protocol.md §9.7): a long poll is parked here,
//! in arrival order, until a message is ready, its wait ends, its connection closes or the
//! queue is deleted. The actor's side, taking and answering, is in `actor/get_many.rs`.
//!
//! Bounded: a connection has at most
//! [`MAX_WAITING_GET_MANY`](sluice_client::wire::MAX_WAITING_GET_MANY) requests unanswered
//! (its session refuses more), so this holds at most that many per connection.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use sluice_client::wire::RequestId;

use super::{ConnId, ConnLink};

/// What a `GetMany` takes at most.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchLimit {
    /// Most messages.
    pub max: usize,
    /// Most bytes of encoded deliveries (the answer's frame); at least one message is taken.
    pub max_bytes: usize,
}

/// A `GetMany` that found no ready message and waits for one.
#[derive(Debug)]
pub(super) struct WaitingGet {
    pub(super) conn: Arc<ConnLink>,
    pub(super) request_id: RequestId,
    pub(super) limit: BatchLimit,
    /// When it is answered empty.
    pub(super) deadline: Instant,
}

/// The waiting `GetMany` requests of a queue, oldest first.
#[derive(Debug, Default)]
pub(super) struct Getters {
    waiting: VecDeque<WaitingGet>,
}

impl Getters {
    /// Parks a request behind the others.
    pub(super) fn push(&mut self, get: WaitingGet) {
        self.waiting.push_back(get);
    }

    /// Takes the request that waits longest (the next to serve).
    pub(super) fn pop_oldest(&mut self) -> Option<WaitingGet> {
        self.waiting.pop_front()
    }

    /// Whether none waits.
    pub(super) fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }

    /// The earliest deadline, for the queue's timer.
    pub(super) fn next_deadline(&self) -> Option<Instant> {
        self.waiting.iter().map(|g| g.deadline).min()
    }

    /// Takes the requests whose wait ended at `now`, in arrival order.
    pub(super) fn take_expired(&mut self, now: Instant) -> Vec<WaitingGet> {
        if self.next_deadline().is_none_or(|d| d > now) {
            return Vec::new();
        }
        let (expired, waiting): (VecDeque<_>, VecDeque<_>) = std::mem::take(&mut self.waiting)
            .into_iter()
            .partition(|g| g.deadline <= now);
        self.waiting = waiting;
        expired.into()
    }

    /// Forgets the requests of a closed connection (nobody reads their answer).
    pub(super) fn forget_connection(&mut self, conn: ConnId) {
        self.waiting.retain(|g| g.conn.id != conn);
    }

    /// Takes every request (the queue is going away).
    pub(super) fn take_all(&mut self) -> Vec<WaitingGet> {
        self.waiting.drain(..).collect()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::sync::mpsc;

    use super::*;

    fn get(conn: ConnId, request: u32, deadline: Instant) -> WaitingGet {
        WaitingGet {
            conn: ConnLink::new(conn, mpsc::unbounded_channel().0, Arc::default()),
            request_id: RequestId(request),
            limit: BatchLimit {
                max: 10,
                max_bytes: 1 << 20,
            },
            deadline,
        }
    }

    fn ids(gets: &[WaitingGet]) -> Vec<u32> {
        gets.iter().map(|g| g.request_id.0).collect()
    }

    #[test]
    fn requests_are_served_in_arrival_order() {
        let now = Instant::now();
        let mut getters = Getters::default();
        getters.push(get(1, 1, now + Duration::from_secs(5)));
        getters.push(get(2, 2, now + Duration::from_secs(1)));
        assert_eq!(getters.pop_oldest().map(|g| g.request_id.0), Some(1));
        assert_eq!(getters.pop_oldest().map(|g| g.request_id.0), Some(2));
        assert!(getters.pop_oldest().is_none());
    }

    #[test]
    fn the_timer_follows_the_earliest_deadline_and_takes_only_what_expired() {
        let now = Instant::now();
        let mut getters = Getters::default();
        assert_eq!(getters.next_deadline(), None);
        getters.push(get(1, 1, now + Duration::from_secs(5)));
        getters.push(get(1, 2, now + Duration::from_secs(1)));
        getters.push(get(1, 3, now + Duration::from_secs(1)));
        assert_eq!(getters.next_deadline(), Some(now + Duration::from_secs(1)));
        assert!(getters.take_expired(now).is_empty());
        let expired = getters.take_expired(now + Duration::from_secs(1));
        assert_eq!(ids(&expired), [2, 3]);
        assert_eq!(getters.next_deadline(), Some(now + Duration::from_secs(5)));
    }

    #[test]
    fn a_closed_connection_leaves_no_request_behind() {
        let later = Instant::now() + Duration::from_secs(5);
        let mut getters = Getters::default();
        getters.push(get(1, 1, later));
        getters.push(get(2, 2, later));
        getters.push(get(1, 3, later));
        getters.forget_connection(1);
        assert_eq!(ids(&getters.take_all()), [2]);
        assert!(getters.is_empty());
    }
}
