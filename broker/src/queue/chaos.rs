//! Chaos injection per queue (docs/chaos.md, protocol.md §21): for a bounded time a queue
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

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sluice_client::wire::{ChaosDelay, ChaosPlan, ChaosRate, ChaosStats, ErrorCode};

use crate::error::RequestError;

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

/// A small, fast pseudo-random generator (SplitMix64): chaos needs cheap, roughly uniform
/// draws, not cryptographic ones.
#[derive(Debug, Clone)]
pub(super) struct SplitMix64(u64);

impl SplitMix64 {
    pub(super) fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }

    pub(super) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Whether this draw falls in `rate`.
    pub(super) fn hits(&mut self, rate: ChaosRate) -> bool {
        rate.0 > 0 && self.next_u64() % u64::from(ChaosRate::ALL.0) < u64::from(rate.0)
    }

    /// A float in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// What the running injection decides for one delivery to a consumer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(super) struct DeliveryChaos {
    /// Hold the message back this long instead of delivering it (delay mode).
    pub(super) delay: Option<Duration>,
    /// Count the delivery but do not send it; the message is ready again after this long.
    pub(super) drop_for: Option<Duration>,
    /// Send the delivery twice.
    pub(super) duplicate: bool,
    /// Give the delivery this lease instead of its consumer's.
    pub(super) short_lease: Option<Duration>,
}

/// The injection running on a queue, owned by its task.
#[derive(Debug)]
pub(super) struct Injection {
    plan: ChaosPlan,
    until: Instant,
    rng: SplitMix64,
}

impl Injection {
    /// Starts `plan` for `duration`; `shared` shows it to listings until it ends.
    pub(super) fn start(
        plan: ChaosPlan,
        duration: Duration,
        seed: u64,
        shared: &ChaosShared,
    ) -> (Self, u64) {
        let until_ms = super::unix_now_ms().saturating_add(duration.as_millis() as u64);
        shared.set(Some(Running { plan, until_ms }));
        let injection = Injection {
            plan,
            until: Instant::now() + duration,
            rng: SplitMix64::new(seed),
        };
        (injection, until_ms)
    }

    /// Ends the injection for listings.
    pub(super) fn end(self, shared: &ChaosShared) {
        shared.set(None);
    }

    /// When it ends by itself.
    pub(super) fn until(&self) -> Instant {
        self.until
    }

    /// The code to refuse one published message with, if this one is to fail.
    pub(super) fn fail_publish(&mut self) -> Option<ErrorCode> {
        let f = self.plan.fail_publish?;
        self.rng.hits(f.rate).then_some(f.code)
    }

    /// What happens to one delivery. A delayed or dropped delivery is not sent, so the other
    /// modes do not apply to it; `may_delay` is false for a message just released from a
    /// delay (it was held back once already).
    pub(super) fn on_delivery(&mut self, may_delay: bool) -> DeliveryChaos {
        let mut out = DeliveryChaos::default();
        if let Some(d) = self.plan.delay.filter(|_| may_delay) {
            if self.rng.hits(d.rate) {
                out.delay = Some(self.sample(d.delay));
                return out;
            }
        }
        if let Some(d) = self.plan.drop {
            if self.rng.hits(d.rate) {
                out.drop_for = Some(Duration::from_millis(u64::from(d.redeliver_after_ms)));
                return out;
            }
        }
        if let Some(rate) = self.plan.duplicate {
            out.duplicate = self.rng.hits(rate);
        }
        if let Some(l) = self.plan.short_lease {
            if self.rng.hits(l.rate) {
                out.short_lease = Some(Duration::from_millis(u64::from(l.lease_ms)));
            }
        }
        out
    }

    /// A delay drawn from `dist`.
    fn sample(&mut self, dist: ChaosDelay) -> Duration {
        let ms = match dist {
            ChaosDelay::Fixed { ms } => u64::from(ms),
            ChaosDelay::Uniform { min_ms, max_ms } => {
                let span = u64::from(max_ms - min_ms) + 1;
                u64::from(min_ms) + self.rng.next_u64() % span
            }
            ChaosDelay::Exponential { mean_ms } => {
                let draw = -(1.0 - self.rng.unit()).ln() * f64::from(mean_ms);
                // The tail is cut at 20 means (and the longest wait): a test ends.
                let cap = (u64::from(mean_ms) * 20).min(u64::from(MAX_CHAOS_WAIT_MS));
                (draw as u64).min(cap)
            }
        };
        Duration::from_millis(ms)
    }
}

/// A message held back by chaos: neither ready nor in flight, still in the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct HeldMessage {
    /// Its deliveries so far (a dropped delivery counts).
    pub(super) count: u32,
    /// Its priority level.
    pub(super) priority: u8,
    /// When its own TTL runs out (Unix ms).
    pub(super) expires_at_ms: Option<u64>,
    /// Meta and body bytes.
    pub(super) bytes: u64,
    /// Held by the delay mode (its next delivery is not delayed again).
    pub(super) delayed: bool,
}

/// The messages chaos holds back, by release time. They outlive the injection only until the
/// next round: clearing or ending an injection releases them all.
#[derive(Debug, Default)]
pub(super) struct ChaosHeld {
    by_time: BTreeSet<(Instant, u64)>,
    messages: HashMap<u64, (Instant, HeldMessage)>,
    bytes: u64,
    /// Messages released from a delay: their next delivery is not delayed again.
    passed: HashSet<u64>,
}

impl ChaosHeld {
    /// Holds message `seq` until `until`.
    pub(super) fn hold(&mut self, seq: u64, until: Instant, m: HeldMessage) {
        self.bytes += m.bytes;
        if let Some((old, old_m)) = self.messages.insert(seq, (until, m)) {
            self.by_time.remove(&(old, seq));
            self.bytes -= old_m.bytes;
        }
        self.by_time.insert((until, seq));
    }

    /// The soonest release.
    pub(super) fn next_release(&self) -> Option<Instant> {
        self.by_time.first().map(|&(t, _)| t)
    }

    /// Takes the messages due at `now` (all of them with `now` = `None`).
    pub(super) fn take_due(&mut self, now: Option<Instant>) -> Vec<(u64, HeldMessage)> {
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
    pub(super) fn may_delay(&mut self, seq: u64) -> bool {
        self.passed.is_empty() || !self.passed.remove(&seq)
    }

    /// Forgets which messages were just released from a delay (the injection ended).
    pub(super) fn forget_passes(&mut self) {
        self.passed = HashSet::new();
    }

    /// Messages held.
    pub(super) fn len(&self) -> usize {
        self.messages.len()
    }

    /// Their meta and body bytes.
    pub(super) fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Forgets everything (the queue is deleted).
    pub(super) fn clear(&mut self) {
        *self = ChaosHeld::default();
    }
}

/// Extra deliveries of the duplicate mode that are not settled yet: `(connection, tag)` to
/// the message. Settling one does nothing to the message (its real delivery decides).
#[derive(Debug, Default)]
pub(super) struct ExtraDeliveries {
    tags: HashMap<(u64, u64), u64>,
}

impl ExtraDeliveries {
    /// Records extra delivery `tag` of message `seq` on connection `conn`.
    pub(super) fn insert(&mut self, conn: u64, tag: u64, seq: u64) {
        self.tags.insert((conn, tag), seq);
    }

    /// Takes extra delivery `tag` of connection `conn` if it is one; true when it was.
    pub(super) fn settle(&mut self, conn: u64, tag: u64) -> bool {
        !self.tags.is_empty() && self.tags.remove(&(conn, tag)).is_some()
    }

    /// Whether `tag` of `conn` is an outstanding extra delivery.
    pub(super) fn contains(&self, conn: u64, tag: u64) -> bool {
        !self.tags.is_empty() && self.tags.contains_key(&(conn, tag))
    }

    /// Forgets the extra deliveries of a closed connection.
    pub(super) fn forget_connection(&mut self, conn: u64) {
        if !self.tags.is_empty() {
            self.tags.retain(|&(c, _), _| c != conn);
        }
    }

    /// Whether room is left for another.
    pub(super) fn has_room(&self) -> bool {
        self.tags.len() < MAX_EXTRA_DELIVERIES
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

    #[test]
    fn rates_hit_about_as_often_as_asked() {
        let mut rng = SplitMix64::new(7);
        let hits = (0..100_000).filter(|_| rng.hits(ChaosRate(3000))).count();
        assert!((28_000..32_000).contains(&hits), "{hits}");
        assert!(!(0..1000).any(|_| rng.hits(ChaosRate(0))));
        assert!((0..1000).all(|_| rng.hits(ChaosRate::ALL)));
    }

    #[test]
    fn delays_stay_in_their_distribution() {
        let shared = ChaosShared::default();
        let (mut inj, _) = Injection::start(plan(), Duration::from_secs(1), 1, &shared);
        for _ in 0..1000 {
            let d = inj.sample(ChaosDelay::Uniform {
                min_ms: 100,
                max_ms: 500,
            });
            assert!((100..=500).contains(&(d.as_millis() as u64)));
            let e = inj.sample(ChaosDelay::Exponential { mean_ms: 50 });
            assert!(e <= Duration::from_millis(1000));
        }
        let mean: u64 = (0..10_000)
            .map(|_| {
                inj.sample(ChaosDelay::Exponential { mean_ms: 100 })
                    .as_millis() as u64
            })
            .sum::<u64>()
            / 10_000;
        assert!((85..115).contains(&mean), "{mean}");
        assert!(shared.running().is_some());
        inj.end(&shared);
        assert!(shared.running().is_none());
    }

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

    #[test]
    fn each_delivery_gets_at_most_one_of_delay_and_drop() {
        let shared = ChaosShared::default();
        let every = ChaosPlan {
            delay: Some(DelayChaos {
                rate: ChaosRate::ALL,
                delay: ChaosDelay::Fixed { ms: 5 },
            }),
            drop: Some(DropChaos {
                rate: ChaosRate::ALL,
                redeliver_after_ms: 10,
            }),
            duplicate: Some(ChaosRate::ALL),
            fail_publish: None,
            short_lease: Some(ShortLeaseChaos {
                rate: ChaosRate::ALL,
                lease_ms: 10,
            }),
        };
        let (mut inj, _) = Injection::start(every, Duration::from_secs(1), 1, &shared);
        let first = inj.on_delivery(true);
        assert_eq!(first.delay, Some(Duration::from_millis(5)));
        assert_eq!((first.drop_for, first.duplicate), (None, false));
        let released = inj.on_delivery(false);
        assert_eq!(released.drop_for, Some(Duration::from_millis(10)));
        assert_eq!(inj.fail_publish(), None);
    }
}
