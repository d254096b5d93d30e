//! Consumer circuit breaking (docs/circuit-breaking.md, protocol.md §9.8): one state
//! machine per consumer that has it configured. Pure: the queue passes the time in and acts
//! on the transitions it returns (notice to the consumer, listing, metrics).
//!
//! - **Closed**: deliveries as usual. Failures (a nack with requeue, a reject, a lease that
//!   timed out: each delivery counts once) are kept with their time; when
//!   `failure_threshold` of them fall within `window`, the circuit opens. Acks do not forgive
//!   failures: the window is a rate, not a streak.
//! - **Open**: no delivery until `cool_down` has passed, then half-open. Settlements of
//!   deliveries it still holds change nothing.
//! - **HalfOpen**: one trial delivery at a time (and only once the consumer holds nothing
//!   unsettled); `success_threshold` acks close the circuit, one failure opens it again.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use sluice_client::wire::{CircuitBreaker as Settings, CircuitState};

/// A change of state the queue tells the consumer about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Transition {
    pub(super) state: CircuitState,
    /// When an open circuit becomes half-open.
    pub(super) until: Option<Instant>,
    /// Failures in the window when it opened.
    pub(super) failures: u32,
    pub(super) reason: String,
}

/// What a consumer may receive now, as far as its circuit goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Admits {
    /// Its usual credit.
    All,
    /// One trial delivery (half-open, nothing unsettled).
    One,
    /// Nothing.
    None,
}

/// One consumer's circuit.
#[derive(Debug)]
pub(super) struct CircuitBreaker {
    settings: Settings,
    state: State,
    /// Times of the failures still in the window (closed state only), oldest first; never
    /// more than `failure_threshold`.
    failures: VecDeque<Instant>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Closed,
    Open { until: Instant, failures: u32 },
    HalfOpen { successes: u32 },
}

impl CircuitBreaker {
    pub(super) fn new(settings: Settings) -> Self {
        Self {
            settings,
            state: State::Closed,
            failures: VecDeque::new(),
        }
    }

    pub(super) fn state(&self) -> CircuitState {
        match self.state {
            State::Closed => CircuitState::Closed,
            State::Open { .. } => CircuitState::Open,
            State::HalfOpen { .. } => CircuitState::HalfOpen,
        }
    }

    /// When an open circuit becomes half-open.
    pub(super) fn deadline(&self) -> Option<Instant> {
        match self.state {
            State::Open { until, .. } => Some(until),
            _ => None,
        }
    }

    /// Failures counted now: in the window when closed, those that opened it when open.
    pub(super) fn failures(&self, now: Instant) -> u32 {
        match self.state {
            State::Closed => {
                let window = Duration::from_millis(self.settings.window_ms);
                self.failures
                    .iter()
                    .filter(|&&t| now.saturating_duration_since(t) < window)
                    .count() as u32
            }
            State::Open { failures, .. } => failures,
            State::HalfOpen { .. } => 0,
        }
    }

    /// What the consumer may receive, given what it holds unsettled.
    pub(super) fn admits(&self, unacked: u32) -> Admits {
        match self.state {
            State::Closed => Admits::All,
            State::Open { .. } => Admits::None,
            State::HalfOpen { .. } if unacked == 0 => Admits::One,
            State::HalfOpen { .. } => Admits::None,
        }
    }

    /// A delivery of this consumer was acked.
    pub(super) fn on_success(&mut self) -> Option<Transition> {
        let State::HalfOpen { successes } = self.state else {
            return None;
        };
        let successes = successes + 1;
        if successes < self.settings.success_threshold {
            self.state = State::HalfOpen { successes };
            return None;
        }
        self.state = State::Closed;
        self.failures.clear();
        Some(Transition {
            state: CircuitState::Closed,
            until: None,
            failures: 0,
            reason: format!("{successes} trial deliveries acked"),
        })
    }

    /// `n` deliveries of this consumer failed (`what`: "nacks", "rejects", "lease
    /// timeouts").
    pub(super) fn on_failures(&mut self, n: u32, what: &str, now: Instant) -> Option<Transition> {
        if n == 0 {
            return None;
        }
        match self.state {
            State::Open { .. } => None,
            State::HalfOpen { .. } => Some(self.open(
                now,
                n,
                format!("a trial delivery failed ({what}) while half-open"),
            )),
            State::Closed => {
                let window = Duration::from_millis(self.settings.window_ms);
                let threshold = self.settings.failure_threshold as usize;
                for _ in 0..n.min(self.settings.failure_threshold) {
                    self.failures.push_back(now);
                }
                while self.failures.len() > threshold
                    || self
                        .failures
                        .front()
                        .is_some_and(|&t| now.saturating_duration_since(t) >= window)
                {
                    self.failures.pop_front();
                }
                if self.failures.len() < threshold {
                    return None;
                }
                let failures = self.failures.len() as u32;
                Some(self.open(
                    now,
                    failures,
                    format!(
                        "{failures} failures (last: {what}) within {} ms",
                        self.settings.window_ms
                    ),
                ))
            }
        }
    }

    /// Half-open once the cool-down has passed.
    pub(super) fn poll(&mut self, now: Instant) -> Option<Transition> {
        let State::Open { until, .. } = self.state else {
            return None;
        };
        if now < until {
            return None;
        }
        self.state = State::HalfOpen { successes: 0 };
        Some(Transition {
            state: CircuitState::HalfOpen,
            until: None,
            failures: 0,
            reason: format!(
                "cool-down of {} ms over: trial deliveries",
                self.settings.cool_down_ms
            ),
        })
    }

    fn open(&mut self, now: Instant, failures: u32, reason: String) -> Transition {
        let until = now + Duration::from_millis(self.settings.cool_down_ms);
        self.state = State::Open { until, failures };
        self.failures.clear();
        Transition {
            state: CircuitState::Open,
            until: Some(until),
            failures,
            reason,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn breaker(failure_threshold: u32, success_threshold: u32) -> CircuitBreaker {
        CircuitBreaker::new(Settings {
            failure_threshold,
            window_ms: 1000,
            cool_down_ms: 500,
            success_threshold,
        })
    }

    #[test]
    fn opens_at_the_threshold_within_the_window() {
        let t0 = Instant::now();
        let mut b = breaker(3, 1);
        assert_eq!(b.on_failures(1, "nacks", t0), None);
        assert_eq!(b.on_failures(1, "nacks", t0 + 10 * MS), None);
        assert_eq!(b.failures(t0 + 10 * MS), 2);
        assert_eq!(b.admits(5), Admits::All);
        let t = b.on_failures(1, "rejects", t0 + 20 * MS).expect("opens");
        assert_eq!(t.state, CircuitState::Open);
        assert_eq!(t.failures, 3);
        assert_eq!(t.until, Some(t0 + 520 * MS));
        assert!(t.reason.contains("rejects"), "{}", t.reason);
        assert_eq!(b.state(), CircuitState::Open);
        assert_eq!(b.admits(0), Admits::None);
        assert_eq!(b.deadline(), Some(t0 + 520 * MS));
    }

    #[test]
    fn failures_older_than_the_window_do_not_count() {
        let t0 = Instant::now();
        let mut b = breaker(3, 1);
        b.on_failures(2, "nacks", t0);
        // The first two have left the window by now.
        assert_eq!(b.on_failures(1, "nacks", t0 + 1000 * MS), None);
        assert_eq!(b.failures(t0 + 1000 * MS), 1);
        assert_eq!(b.on_failures(1, "nacks", t0 + 1500 * MS), None);
        assert!(b.on_failures(1, "nacks", t0 + 1600 * MS).is_some());
    }

    #[test]
    fn acks_do_not_forgive_failures_while_closed() {
        let t0 = Instant::now();
        let mut b = breaker(2, 1);
        b.on_failures(1, "nacks", t0);
        assert_eq!(b.on_success(), None);
        assert!(b.on_failures(1, "nacks", t0 + MS).is_some());
    }

    #[test]
    fn a_batch_of_failures_counts_each_and_stays_bounded() {
        let t0 = Instant::now();
        let mut b = breaker(3, 1);
        let t = b.on_failures(1000, "lease timeouts", t0).expect("opens");
        assert_eq!(t.failures, 3);
        assert_eq!(b.on_failures(0, "nacks", t0), None);
    }

    #[test]
    fn open_ignores_settlements_then_half_opens_after_the_cool_down() {
        let t0 = Instant::now();
        let mut b = breaker(1, 2);
        b.on_failures(1, "nacks", t0);
        assert_eq!(b.on_success(), None);
        assert_eq!(b.on_failures(5, "nacks", t0 + MS), None);
        assert_eq!(b.poll(t0 + 499 * MS), None);
        assert_eq!(b.state(), CircuitState::Open);
        let t = b.poll(t0 + 500 * MS).expect("half-open");
        assert_eq!(t.state, CircuitState::HalfOpen);
        assert_eq!(b.deadline(), None);
        // One trial at a time, and only once nothing is held.
        assert_eq!(b.admits(0), Admits::One);
        assert_eq!(b.admits(1), Admits::None);
        assert_eq!(b.poll(t0 + 600 * MS), None);
    }

    #[test]
    fn half_open_closes_after_enough_acks() {
        let t0 = Instant::now();
        let mut b = breaker(1, 2);
        b.on_failures(1, "nacks", t0);
        b.poll(t0 + 500 * MS);
        assert_eq!(b.on_success(), None);
        assert_eq!(b.state(), CircuitState::HalfOpen);
        let t = b.on_success().expect("closes");
        assert_eq!(t.state, CircuitState::Closed);
        assert_eq!(b.admits(7), Admits::All);
        assert_eq!(b.failures(t0 + 600 * MS), 0);
    }

    #[test]
    fn a_failure_while_half_open_opens_again_for_a_new_cool_down() {
        let t0 = Instant::now();
        let mut b = breaker(5, 3);
        b.on_failures(5, "nacks", t0);
        b.poll(t0 + 500 * MS);
        b.on_success();
        let t = b
            .on_failures(1, "lease timeouts", t0 + 700 * MS)
            .expect("opens");
        assert_eq!(t.state, CircuitState::Open);
        assert_eq!(t.until, Some(t0 + 1200 * MS));
        assert!(t.reason.contains("half-open"));
        // Its successes before do not carry over.
        b.poll(t0 + 1200 * MS);
        b.on_success();
        b.on_success();
        assert_eq!(b.state(), CircuitState::HalfOpen);
        assert!(b.on_success().is_some());
    }
}
