//! Chaos injection per queue (docs/chaos.md, protocol.md §22): for a bounded time a queue
//! delays, drops (and later redelivers), duplicates deliveries, refuses publishes or gives
//! deliveries short leases, so that consumers and publishers can be tested against the
//! failures they will meet in production.
//!
//! The queue's task owns the running injection ([`Injection`]: the plan, its end and its
//! random numbers) and the messages it holds back ([`ChaosHeld`]); listings and `/metrics`
//! read [`ChaosShared`] (in the queue's stats) without asking the task. With no injection the
//! task checks one `Option` per publish and per delivery batch, nothing more.
//!
//! Never losing a message is kept by construction: a held message stays in the queue's log
//! and returns to the ready set when its time comes, when the injection is cleared or ends,
//! or (being in the log) at the next start; a refused publish is never stored and its
//! publisher is told; an extra (duplicate) delivery carries its own tag and settling it does
//! nothing, so the message is deleted exactly once, by its real delivery's ack.

//!
//! # Layout
//! - this file: the limits, [`validate`], and [`ChaosShared`] (what listings see);
//! - `injection.rs`: the running [`Injection`] (the plan, its end, its random draws);
//! - `held.rs`: the messages chaos holds back ([`ChaosHeld`]) and the extra deliveries of
//!   the duplicate mode ([`ExtraDeliveries`]).

mod held;
mod injection;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use sluice_client::wire::{ChaosDelay, ChaosPlan, ChaosRate, ChaosStats, ErrorCode};

use crate::error::RequestError;

pub(super) use held::{ChaosHeld, ExtraDeliveries, HeldMessage};
pub(super) use injection::{DeliveryChaos, Injection};

/// The longest an injection may run: chaos is for tests, and a forgotten one ends by itself.
pub const MAX_CHAOS_DURATION: Duration = Duration::from_secs(24 * 3600);
/// The longest delay, drop-redelivery time or short lease one mode may ask for.
pub const MAX_CHAOS_WAIT_MS: u32 = 3_600_000;
/// The shortest drop-redelivery time and short lease: shorter would spin the queue's task.
pub const MIN_CHAOS_WAIT_MS: u32 = 10;
/// Most extra (duplicate) deliveries outstanding at once per queue; past it the duplicate
/// mode pauses, so a consumer that never settles its extra tags cannot grow the queue's
/// memory without bound.
pub const MAX_EXTRA_DELIVERIES: usize = 100_000;

/// Publish refusal codes the fail-publish mode may answer with: those a real broker sends.
pub const FAIL_PUBLISH_CODES: [ErrorCode; 6] = [
    ErrorCode::MessageTooLarge,
    ErrorCode::StorageFull,
    ErrorCode::QueueFull,
    ErrorCode::MemoryLimit,
    ErrorCode::InternalError,
    ErrorCode::ResourceExhausted,
];

/// Checks a plan and its duration before a queue takes it.
pub fn validate(plan: &ChaosPlan, duration_ms: u64) -> Result<(), RequestError> {
    if plan.is_empty() {
        return Err(RequestError::invalid(
            "a chaos injection needs at least one mode (delay, drop, duplicate, fail_publish, short_lease)",
        ));
    }
    let max = MAX_CHAOS_DURATION.as_millis() as u64;
    if duration_ms == 0 || duration_ms > max {
        return Err(RequestError::invalid(format!(
            "a chaos injection's duration must be between 1 ms and {max} ms (24 h), not {duration_ms} ms"
        )));
    }
    let rates = [
        ("delay", plan.delay.map(|d| d.rate)),
        ("drop", plan.drop.map(|d| d.rate)),
        ("duplicate", plan.duplicate),
        ("fail_publish", plan.fail_publish.map(|f| f.rate)),
        ("short_lease", plan.short_lease.map(|l| l.rate)),
    ];
    for (mode, rate) in rates {
        if let Some(rate) = rate.filter(|r| r.0 > ChaosRate::ALL.0) {
            return Err(RequestError::invalid(format!(
                "chaos {mode}: {}% is more than 100%",
                rate.percent()
            )));
        }
    }
    if let Some(d) = &plan.delay {
        let longest = match d.delay {
            ChaosDelay::Fixed { ms } => ms,
            ChaosDelay::Uniform { min_ms, max_ms } if min_ms > max_ms => {
                return Err(RequestError::invalid(format!(
                    "chaos delay: uniform:{min_ms}-{max_ms} has its minimum above its maximum"
                )));
            }
            ChaosDelay::Uniform { max_ms, .. } => max_ms,
            ChaosDelay::Exponential { mean_ms } => mean_ms,
        };
        check_wait("delay", longest, 0)?;
    }
    if let Some(d) = &plan.drop {
        check_wait(
            "drop redelivery time",
            d.redeliver_after_ms,
            MIN_CHAOS_WAIT_MS,
        )?;
    }
    if let Some(l) = &plan.short_lease {
        check_wait("short lease", l.lease_ms, MIN_CHAOS_WAIT_MS)?;
    }
    if let Some(f) = &plan.fail_publish {
        if !FAIL_PUBLISH_CODES.contains(&f.code) {
            let known: Vec<&str> = FAIL_PUBLISH_CODES.iter().map(|c| c.name()).collect();
            return Err(RequestError::invalid(format!(
                "chaos fail_publish: code {} is not a publish refusal (one of {})",
                f.code.as_u16(),
                known.join(", ")
            )));
        }
    }
    Ok(())
}

fn check_wait(what: &str, ms: u32, min: u32) -> Result<(), RequestError> {
    if ms < min || ms > MAX_CHAOS_WAIT_MS {
        return Err(RequestError::invalid(format!(
            "chaos {what}: {ms} ms is outside {min}..={MAX_CHAOS_WAIT_MS} ms"
        )));
    }
    Ok(())
}

/// A queue's chaos state as listings and `/metrics` see it: the running injection, if any,
/// and what chaos did since the broker started (every injection added up, never reset, so
/// the counters are Prometheus counters).
#[derive(Debug, Default)]
pub struct ChaosShared {
    running: Mutex<Option<Running>>,
    /// Deliveries held back by the delay mode.
    pub delayed: AtomicU64,
    /// Deliveries dropped on the way (redelivered later).
    pub dropped: AtomicU64,
    /// Extra deliveries sent by the duplicate mode.
    pub duplicated: AtomicU64,
    /// Publishes refused by the fail-publish mode.
    pub publishes_failed: AtomicU64,
    /// Deliveries given a short lease.
    pub leases_shortened: AtomicU64,
    /// Short leases that ran out before their delivery was settled.
    pub leases_expired_early: AtomicU64,
}

/// A running injection, for listings.
#[derive(Debug, Clone, Copy)]
struct Running {
    plan: ChaosPlan,
    until_ms: u64,
}

impl ChaosShared {
    /// The running injection's plan and end (Unix ms), if one runs.
    pub fn running(&self) -> Option<(ChaosPlan, u64)> {
        self.lock().map(|r| (r.plan, r.until_ms))
    }

    /// The counters.
    pub fn stats(&self) -> ChaosStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        ChaosStats {
            delayed: get(&self.delayed),
            dropped: get(&self.dropped),
            duplicated: get(&self.duplicated),
            publishes_failed: get(&self.publishes_failed),
            leases_shortened: get(&self.leases_shortened),
            leases_expired_early: get(&self.leases_expired_early),
        }
    }

    /// Whether chaos ever touched the queue: an injection runs or a counter is not 0.
    pub fn touched(&self) -> bool {
        self.running().is_some() || self.stats() != ChaosStats::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Running>> {
        self.running.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn set(&self, running: Option<Running>) {
        *self.lock() = running;
    }

    /// Adds one to `counter`.
    pub(super) fn count(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use sluice_client::wire::{DelayChaos, DropChaos, FailPublishChaos, ShortLeaseChaos};

    use super::*;

    fn plan() -> ChaosPlan {
        ChaosPlan {
            duplicate: Some(ChaosRate(3000)),
            ..ChaosPlan::default()
        }
    }

    #[test]
    fn bad_plans_are_refused_with_a_reason() {
        let hour = 3_600_000;
        assert!(validate(&plan(), hour).is_ok());
        let bad = [
            (ChaosPlan::default(), hour, "at least one mode"),
            (plan(), 0, "duration"),
            (plan(), 25 * hour, "duration"),
            (
                ChaosPlan {
                    duplicate: Some(ChaosRate(10_001)),
                    ..ChaosPlan::default()
                },
                hour,
                "more than 100%",
            ),
            (
                ChaosPlan {
                    fail_publish: Some(FailPublishChaos {
                        rate: ChaosRate(1),
                        code: ErrorCode::NotFound,
                    }),
                    ..ChaosPlan::default()
                },
                hour,
                "not a publish refusal",
            ),
            (
                ChaosPlan {
                    delay: Some(DelayChaos {
                        rate: ChaosRate(1),
                        delay: ChaosDelay::Uniform {
                            min_ms: 5,
                            max_ms: 4,
                        },
                    }),
                    ..ChaosPlan::default()
                },
                hour,
                "minimum above",
            ),
            (
                ChaosPlan {
                    drop: Some(DropChaos {
                        rate: ChaosRate(1),
                        redeliver_after_ms: 1,
                    }),
                    ..ChaosPlan::default()
                },
                hour,
                "outside",
            ),
            (
                ChaosPlan {
                    short_lease: Some(ShortLeaseChaos {
                        rate: ChaosRate(1),
                        lease_ms: MAX_CHAOS_WAIT_MS + 1,
                    }),
                    ..ChaosPlan::default()
                },
                hour,
                "outside",
            ),
        ];
        for (plan, duration, why) in bad {
            let e = validate(&plan, duration).expect_err(why);
            assert_eq!(e.code, ErrorCode::InvalidArgument);
            assert!(e.message.contains(why), "{why}: {}", e.message);
        }
    }
}
