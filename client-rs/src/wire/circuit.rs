//! Consumer circuit breaking (protocol.md §9.8): the settings a consumer (`Consume` flags
//! bit 3) or a queue (argument bit 16) gives, the states, and the `ConsumerCircuit` notice.

use bytes::BytesMut;

use super::error::WireError;
use super::frame::{ConsumerId, Payload};
use super::primitives::{self as p, Reader};

/// When a consumer's circuit opens and closes again.
///
/// ```text
/// failure_threshold u32, window_ms u64, cool_down_ms u64, success_threshold u32
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CircuitBreaker {
    /// Failures (nacks, rejects, lease timeouts) within `window_ms` that open the circuit;
    /// 1 to [`MAX_FAILURE_THRESHOLD`].
    pub failure_threshold: u32,
    /// The sliding window failures are counted in, in ms; 1 to [`MAX_CIRCUIT_MS`].
    pub window_ms: u64,
    /// How long an open circuit stays open before it is half-open, in ms; 1 to
    /// [`MAX_CIRCUIT_MS`].
    pub cool_down_ms: u64,
    /// Acks in the half-open state that close the circuit; 1 to
    /// [`MAX_SUCCESS_THRESHOLD`].
    pub success_threshold: u32,
}

/// The largest `failure_threshold`.
pub const MAX_FAILURE_THRESHOLD: u32 = 1_000_000;
/// The largest `success_threshold`.
pub const MAX_SUCCESS_THRESHOLD: u32 = 1_000;
/// The largest `window_ms` and `cool_down_ms`: one day.
pub const MAX_CIRCUIT_MS: u64 = 86_400_000;
/// Encoded length of [`CircuitBreaker`].
pub const CIRCUIT_BREAKER_LEN: usize = 4 + 8 + 8 + 4;

impl CircuitBreaker {
    /// Why these settings are out of range, if they are (the server answers
    /// `INVALID_ARGUMENT` with it).
    pub fn invalid(&self) -> Option<String> {
        if !(1..=MAX_FAILURE_THRESHOLD).contains(&self.failure_threshold) {
            return Some(format!(
                "circuit breaker failure_threshold must be 1 to {MAX_FAILURE_THRESHOLD}, not {}",
                self.failure_threshold
            ));
        }
        if !(1..=MAX_SUCCESS_THRESHOLD).contains(&self.success_threshold) {
            return Some(format!(
                "circuit breaker success_threshold must be 1 to {MAX_SUCCESS_THRESHOLD}, not {}",
                self.success_threshold
            ));
        }
        for (name, ms) in [
            ("window_ms", self.window_ms),
            ("cool_down_ms", self.cool_down_ms),
        ] {
            if !(1..=MAX_CIRCUIT_MS).contains(&ms) {
                return Some(format!(
                    "circuit breaker {name} must be 1 to {MAX_CIRCUIT_MS}, not {ms}"
                ));
            }
        }
        None
    }

    pub(super) fn put(&self, buf: &mut BytesMut) {
        p::put_u32(buf, self.failure_threshold);
        p::put_u64(buf, self.window_ms);
        p::put_u64(buf, self.cool_down_ms);
        p::put_u32(buf, self.success_threshold);
    }

    pub(super) fn read(r: &mut Reader<'_>) -> Result<Self, WireError> {
        Ok(CircuitBreaker {
            failure_threshold: r.u32()?,
            window_ms: r.u64()?,
            cool_down_ms: r.u64()?,
            success_threshold: r.u32()?,
        })
    }
}

/// A consumer's circuit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[repr(u8)]
pub enum CircuitState {
    /// It receives as usual (also: no circuit breaking configured).
    #[default]
    Closed = 0,
    /// It receives nothing until its cool-down ends.
    Open = 1,
    /// Trial deliveries, one at a time: acks close the circuit, a failure opens it again.
    HalfOpen = 2,
}

impl CircuitState {
    /// The wire value's state.
    pub fn from_u8(v: u8) -> Result<Self, WireError> {
        match v {
            0 => Ok(CircuitState::Closed),
            1 => Ok(CircuitState::Open),
            2 => Ok(CircuitState::HalfOpen),
            other => Err(WireError::InvalidValue {
                what: "circuit state",
                value: u64::from(other),
            }),
        }
    }

    /// Its name in listings and JSON: `closed`, `open`, `half-open`.
    pub fn as_str(self) -> &'static str {
        match self {
            CircuitState::Closed => "closed",
            CircuitState::Open => "open",
            CircuitState::HalfOpen => "half-open",
        }
    }
}

impl std::fmt::Display for CircuitState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `ConsumerCircuit` (0x040C), server to client: a consumer's circuit changed state.
///
/// ```text
/// consumer_id u32, state u8, until_ms u64, failures u32, reason str
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerCircuit {
    /// The consumer.
    pub consumer_id: ConsumerId,
    /// Its new state.
    pub state: CircuitState,
    /// When an open circuit becomes half-open (Unix ms, the server's clock); 0 otherwise.
    pub until_ms: u64,
    /// Failures counted in the window when it opened; 0 otherwise.
    pub failures: u32,
    /// Why, for people.
    pub reason: String,
}

impl Payload for ConsumerCircuit {
    fn encode(&self, buf: &mut BytesMut) -> Result<(), WireError> {
        p::put_u32(buf, self.consumer_id.0);
        p::put_u8(buf, self.state as u8);
        p::put_u64(buf, self.until_ms);
        p::put_u32(buf, self.failures);
        p::put_str(buf, "reason", &self.reason)
    }

    fn decode(r: &mut Reader<'_>) -> Result<Self, WireError> {
        Ok(ConsumerCircuit {
            consumer_id: ConsumerId(r.u32()?),
            state: CircuitState::from_u8(r.u8()?)?,
            until_ms: r.u64()?,
            failures: r.u32()?,
            reason: r.string()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::testing::{check_payload, hex};

    #[test]
    fn consumer_circuit_round_trips_and_refuses_an_unknown_state() {
        check_payload(
            &ConsumerCircuit {
                consumer_id: ConsumerId(1),
                state: CircuitState::Open,
                until_ms: 0x0102,
                failures: 3,
                reason: "x".into(),
            },
            &hex("01 00 00 00  01  02 01 00 00 00 00 00 00  03 00 00 00  01 00 78"),
        );
        check_payload(
            &ConsumerCircuit {
                consumer_id: ConsumerId(2),
                state: CircuitState::HalfOpen,
                until_ms: 0,
                failures: 0,
                reason: String::new(),
            },
            &hex("02 00 00 00  02  00 00 00 00 00 00 00 00  00 00 00 00  00 00"),
        );
        let bad = bytes::Bytes::from(hex(
            "01 00 00 00  03  00 00 00 00 00 00 00 00  00 00 00 00  00 00",
        ));
        assert!(ConsumerCircuit::decode_exact(&bad).is_err());
    }

    #[test]
    fn settings_out_of_range_are_named() {
        let ok = CircuitBreaker {
            failure_threshold: 3,
            window_ms: 1000,
            cool_down_ms: 500,
            success_threshold: 2,
        };
        assert_eq!(ok.invalid(), None);
        let cases = [
            (
                CircuitBreaker {
                    failure_threshold: 0,
                    ..ok
                },
                "failure_threshold",
            ),
            (
                CircuitBreaker {
                    success_threshold: MAX_SUCCESS_THRESHOLD + 1,
                    ..ok
                },
                "success_threshold",
            ),
            (CircuitBreaker { window_ms: 0, ..ok }, "window_ms"),
            (
                CircuitBreaker {
                    cool_down_ms: MAX_CIRCUIT_MS + 1,
                    ..ok
                },
                "cool_down_ms",
            ),
        ];
        for (c, what) in cases {
            assert!(c.invalid().unwrap().contains(what), "{what}");
        }
    }
}
