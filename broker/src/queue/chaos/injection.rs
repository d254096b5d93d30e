//! The injection running on a queue (`queue::chaos`): its plan, its end, and the random
//! draws that decide each delivery's and each publish's fate.

use std::time::{Duration, Instant};

use sluice_client::wire::{ChaosDelay, ChaosPlan, ChaosRate, ErrorCode};

use super::{ChaosShared, Running, MAX_CHAOS_WAIT_MS};

/// A small, fast pseudo-random generator (SplitMix64): chaos needs cheap, roughly uniform
/// draws, not cryptographic ones.
#[derive(Debug, Clone)]
pub(in crate::queue) struct SplitMix64(u64);

impl SplitMix64 {
    pub(in crate::queue) fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }

    pub(in crate::queue) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Whether this draw falls in `rate`.
    pub(in crate::queue) fn hits(&mut self, rate: ChaosRate) -> bool {
        rate.0 > 0 && self.next_u64() % u64::from(ChaosRate::ALL.0) < u64::from(rate.0)
    }

    /// A float in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// What the running injection decides for one delivery to a consumer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(in crate::queue) struct DeliveryChaos {
    /// Hold the message back this long instead of delivering it (delay mode).
    pub(in crate::queue) delay: Option<Duration>,
    /// Count the delivery but do not send it; the message is ready again after this long.
    pub(in crate::queue) drop_for: Option<Duration>,
    /// Send the delivery twice.
    pub(in crate::queue) duplicate: bool,
    /// Give the delivery this lease instead of its consumer's.
    pub(in crate::queue) short_lease: Option<Duration>,
}

/// The injection running on a queue, owned by its task.
#[derive(Debug)]
pub(in crate::queue) struct Injection {
    plan: ChaosPlan,
    until: Instant,
    rng: SplitMix64,
}

impl Injection {
    /// Starts `plan` for `duration`; `shared` shows it to listings until it ends.
    pub(in crate::queue) fn start(
        plan: ChaosPlan,
        duration: Duration,
        seed: u64,
        shared: &ChaosShared,
    ) -> (Self, u64) {
        let until_ms = crate::queue::unix_now_ms().saturating_add(duration.as_millis() as u64);
        shared.set(Some(Running { plan, until_ms }));
        let injection = Injection {
            plan,
            until: Instant::now() + duration,
            rng: SplitMix64::new(seed),
        };
        (injection, until_ms)
    }

    /// Ends the injection for listings.
    pub(in crate::queue) fn end(self, shared: &ChaosShared) {
        shared.set(None);
    }

    /// When it ends by itself.
    pub(in crate::queue) fn until(&self) -> Instant {
        self.until
    }

    /// The code to refuse one published message with, if this one is to fail.
    pub(in crate::queue) fn fail_publish(&mut self) -> Option<ErrorCode> {
        let f = self.plan.fail_publish?;
        self.rng.hits(f.rate).then_some(f.code)
    }

    /// What happens to one delivery. A delayed or dropped delivery is not sent, so the other
    /// modes do not apply to it; `may_delay` is false for a message just released from a
    /// delay (it was held back once already).
    pub(in crate::queue) fn on_delivery(&mut self, may_delay: bool) -> DeliveryChaos {
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

#[cfg(test)]
mod tests {
    use sluice_client::wire::{DelayChaos, DropChaos, ShortLeaseChaos};

    use super::*;

    fn plan() -> ChaosPlan {
        ChaosPlan {
            duplicate: Some(ChaosRate(3000)),
            ..ChaosPlan::default()
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
