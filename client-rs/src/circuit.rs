//! Consumer circuit breaking as a consumer sees it (docs/circuit-breaking.md): the broker
//! stops delivering to a consumer whose deliveries keep failing, and says so with a
//! `ConsumerCircuit` notice. [`Consumer::circuit`](crate::Consumer::circuit) is the last
//! state noticed; [`Consumer::circuit_changes`](crate::Consumer::circuit_changes) a
//! [`watch`](tokio::sync::watch) receiver to await changes with. The stream of messages is
//! not affected: it simply yields nothing while the circuit is open.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::wire::{CircuitState, ConsumerCircuit};

/// A consumer's circuit, as the broker last said.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CircuitNotice {
    /// Closed (the default, also without circuit breaking), open or half-open.
    pub state: CircuitState,
    /// When an open circuit becomes half-open (the broker's clock).
    pub until: Option<SystemTime>,
    /// Failures that opened it (open); 0 otherwise.
    pub failures: u32,
    /// The broker's words.
    pub reason: String,
}

impl From<ConsumerCircuit> for CircuitNotice {
    fn from(c: ConsumerCircuit) -> Self {
        CircuitNotice {
            state: c.state,
            until: (c.until_ms > 0).then(|| UNIX_EPOCH + Duration::from_millis(c.until_ms)),
            failures: c.failures,
            reason: c.reason,
        }
    }
}
