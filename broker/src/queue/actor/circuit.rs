//! Consumer circuit breaking in the queue task (the state machine is `queue::breaker`): what
//! settlements and lease timeouts count, the cool-down timer, and what a transition does
//! (the notice to the consumer, the listing, the counters).
//!
//! Nothing here runs for a queue whose consumers have no circuit breaker: every entry point
//! returns at once while `breakers` is 0.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use sluice_client::wire::{CircuitState, ConsumerCircuit, ConsumerId};

use super::super::breaker::Transition;
use super::super::{ConnEvent, ConnId, Settlement};
use super::Actor;

/// How a settled or expired delivery counts for its consumer's circuit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Outcome {
    /// Acked.
    Success,
    /// Nacked with a requeue (or a delayed requeue).
    Nack,
    /// Rejected.
    Reject,
    /// Its lease ran out.
    LeaseTimeout,
}

impl Outcome {
    /// How a settlement counts; `None` for one that does not (`Extend` to 0 gives a delivery
    /// back uncounted).
    pub(super) fn of(how: Settlement) -> Option<Self> {
        match how {
            Settlement::Ack => Some(Outcome::Success),
            Settlement::Requeue | Settlement::RequeueAfter(_) => Some(Outcome::Nack),
            Settlement::Reject => Some(Outcome::Reject),
            Settlement::Release => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Outcome::Success => "acks",
            Outcome::Nack => "nacks",
            Outcome::Reject => "rejects",
            Outcome::LeaseTimeout => "lease timeouts",
        }
    }
}

/// Outcomes of one batch, per consumer, applied once the batch is done.
#[derive(Debug, Default)]
pub(super) struct Tally {
    entries: Vec<(ConnId, ConsumerId, Outcome, u32)>,
}

impl Tally {
    pub(super) fn add(&mut self, conn: ConnId, consumer: ConsumerId, outcome: Outcome) {
        match self
            .entries
            .iter_mut()
            .find(|e| e.0 == conn && e.1 == consumer && e.2 == outcome)
        {
            Some(e) => e.3 += 1,
            None => self.entries.push((conn, consumer, outcome, 1)),
        }
    }
}

impl Actor {
    /// Whether any consumer has a circuit breaker (the only cost when none has: this test).
    pub(super) fn breaking(&self) -> bool {
        self.breakers > 0
    }

    /// Applies a batch's outcomes to the consumers' circuits.
    pub(super) fn apply_tally(&mut self, tally: Tally) {
        let now = Instant::now();
        for (conn, consumer, outcome, n) in tally.entries {
            let Some(idx) = self
                .consumers
                .position(|c| c.conn.id == conn && c.id == consumer)
            else {
                continue;
            };
            let Some(breaker) = self.consumers.get_mut(idx).breaker.as_mut() else {
                continue;
            };
            let transition = match outcome {
                Outcome::Success => (0..n).find_map(|_| breaker.on_success()),
                failure => breaker.on_failures(n, failure.name(), now),
            };
            if let Some(t) = transition {
                self.on_transition(idx, t);
            }
        }
    }

    /// The soonest end of an open circuit's cool-down.
    pub(super) fn next_circuit_deadline(&self) -> Option<Instant> {
        if !self.breaking() {
            return None;
        }
        self.consumers
            .iter()
            .filter_map(|(c, _)| c.breaker.as_ref()?.deadline())
            .min()
    }

    /// Makes the circuits whose cool-down is over half-open (deliveries follow in this
    /// round's `pump`).
    pub(super) fn poll_circuits(&mut self) {
        let now = Instant::now();
        for idx in 0..self.consumers.len() {
            let transition = self
                .consumers
                .get_mut(idx)
                .breaker
                .as_mut()
                .and_then(|b| b.poll(now));
            if let Some(t) = transition {
                self.on_transition(idx, t);
            }
        }
    }

    fn on_transition(&mut self, idx: usize, t: Transition) {
        let c = self.consumers.get(idx);
        tracing::info!(queue = %self.meta.name, consumer_tag = %c.tag, state = %t.state,
            "consumer circuit: {}", t.reason);
        let until_ms = t.until.map_or(0, unix_ms_at);
        c.conn.send(ConnEvent::Circuit(ConsumerCircuit {
            consumer_id: c.id,
            state: t.state,
            until_ms,
            failures: t.failures,
            reason: t.reason,
        }));
        let stats = &self.meta.stats;
        if t.state == CircuitState::Open {
            stats.circuit_trips.fetch_add(1, Ordering::Relaxed);
        }
        self.count_open_circuits();
        self.publish_consumers();
    }

    /// Refreshes the queue's count of open circuits (after a transition or a consumer left).
    pub(super) fn count_open_circuits(&self) {
        let open = self
            .consumers
            .iter()
            .filter(|(c, _)| {
                c.breaker
                    .as_ref()
                    .is_some_and(|b| b.state() == CircuitState::Open)
            })
            .count();
        self.meta
            .stats
            .circuits_open
            .store(open as u32, Ordering::Relaxed);
    }
}

/// The Unix time in ms of a future `Instant` (for `until_ms`).
pub(super) fn unix_ms_at(at: Instant) -> u64 {
    let ahead = at.saturating_duration_since(Instant::now());
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO);
    (now + ahead).as_millis() as u64
}
