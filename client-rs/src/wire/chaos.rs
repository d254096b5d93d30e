//! Chaos injection per queue (protocol.md §22): an administrator makes a queue misbehave on
//! purpose for a bounded time, to test its consumers and publishers before production.
//!
//! ```text
//! SetChaos:     queue str, duration_ms u64, plan
//! SetChaosOk:   until_ms u64
//! ClearChaos:   queue str
//! ClearChaosOk: was_active bool
//! ListChaos:    (empty)
//! ListChaosOk:  count u16, more bool, then count × (queue str, until_ms u64 (0 = off),
//!               plan, stats: delayed u64, dropped u64, duplicated u64, publishes_failed u64,
//!               leases_shortened u64, leases_expired_early u64)
//! plan:         modes u8 (bit 0 delay, 1 drop, 2 duplicate, 3 fail_publish, 4 short_lease),
//!               then for each bit set, in bit order:
//!   delay:        rate u16, distribution u8 (0 fixed, 1 uniform, 2 exponential), a_ms u32,
//!                 b_ms u32 (fixed: a; uniform: a..=b; exponential: mean a, b = 0)
//!   drop:         rate u16, redeliver_after_ms u32
//!   duplicate:    rate u16
//!   fail_publish: rate u16, code u16
//!   short_lease:  rate u16, lease_ms u32
//! ```
//! A rate is in hundredths of a percent: 0 to 10,000 (100 %).

use bytes::BytesMut;

use super::error::{ErrorCode, WireError};
use super::frame::Payload;
use super::primitives::{self as p, Reader};

/// The most entries one `ListChaosOk` carries.
pub const MAX_CHAOS_ENTRIES: usize = 1000;

/// A share of deliveries or publishes, in hundredths of a percent (10,000 = every one).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ChaosRate(pub u16);

impl ChaosRate {
    /// Every one.
    pub const ALL: ChaosRate = ChaosRate(10_000);

    /// The rate for `percent` (0.0 to 100.0, rounded to hundredths); `None` outside that.
    pub fn from_percent(percent: f64) -> Option<ChaosRate> {
        if !(0.0..=100.0).contains(&percent) {
            return None;
        }
        Some(ChaosRate((percent * 100.0).round() as u16))
    }

    /// The rate as a percentage.
    pub fn percent(self) -> f64 {
        f64::from(self.0) / 100.0
    }
}

/// How long a delayed delivery is held back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChaosDelay {
    /// Always this long.
    Fixed {
        /// Milliseconds.
        ms: u32,
    },
    /// Uniformly between `min_ms` and `max_ms` (both included).
    Uniform {
        /// Shortest.
        min_ms: u32,
        /// Longest.
        max_ms: u32,
    },
    /// Exponentially distributed with this mean (many short, a few long).
    Exponential {
        /// The mean, in milliseconds.
        mean_ms: u32,
    },
}

impl Default for ChaosDelay {
    fn default() -> Self {
        ChaosDelay::Fixed { ms: 0 }
    }
}

impl ChaosDelay {
    const FIXED: u8 = 0;
    const UNIFORM: u8 = 1;
    const EXPONENTIAL: u8 = 2;

    fn put(&self, buf: &mut BytesMut) {
        let (kind, a, b) = match *self {
            ChaosDelay::Fixed { ms } => (Self::FIXED, ms, 0),
            ChaosDelay::Uniform { min_ms, max_ms } => (Self::UNIFORM, min_ms, max_ms),
            ChaosDelay::Exponential { mean_ms } => (Self::EXPONENTIAL, mean_ms, 0),
        };
        p::put_u8(buf, kind);
        p::put_u32(buf, a);
        p::put_u32(buf, b);
    }

    fn read(r: &mut Reader<'_>) -> Result<Self, WireError> {
        let kind = r.u8()?;
        let (a, b) = (r.u32()?, r.u32()?);
        match kind {
            Self::FIXED => Ok(ChaosDelay::Fixed { ms: a }),
            Self::UNIFORM => Ok(ChaosDelay::Uniform {
                min_ms: a,
                max_ms: b,
            }),
            Self::EXPONENTIAL => Ok(ChaosDelay::Exponential { mean_ms: a }),
            other => Err(WireError::InvalidValue {
                what: "chaos delay distribution",
                value: u64::from(other),
            }),
        }
    }

    /// The form `fixed:MS`, `uniform:MIN-MAX` or `exponential:MEAN` (what the CLI takes).
    pub fn spec(&self) -> String {
        match *self {
            ChaosDelay::Fixed { ms } => format!("fixed:{ms}"),
            ChaosDelay::Uniform { min_ms, max_ms } => format!("uniform:{min_ms}-{max_ms}"),
            ChaosDelay::Exponential { mean_ms } => format!("exponential:{mean_ms}"),
        }
    }

    /// Parses [`spec`](Self::spec)'s form.
    pub fn parse(s: &str) -> Result<ChaosDelay, String> {
        let bad = || format!("'{s}' is not fixed:MS, uniform:MIN-MAX or exponential:MEAN");
        let (kind, rest) = s.split_once(':').ok_or_else(bad)?;
        let ms = |v: &str| v.trim().parse::<u32>().map_err(|_| bad());
        match kind {
            "fixed" => Ok(ChaosDelay::Fixed { ms: ms(rest)? }),
            "uniform" => {
                let (a, b) = rest.split_once('-').ok_or_else(bad)?;
                Ok(ChaosDelay::Uniform {
                    min_ms: ms(a)?,
                    max_ms: ms(b)?,
                })
            }
            "exponential" => Ok(ChaosDelay::Exponential { mean_ms: ms(rest)? }),
            _ => Err(bad()),
        }
    }
}

/// Hold back a share of deliveries for a while.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DelayChaos {
    /// Which share.
    pub rate: ChaosRate,
    /// For how long.
    pub delay: ChaosDelay,
}

/// Lose a share of deliveries on the way: the consumer never sees them, and the message is
/// delivered again (counted as a delivery) after `redeliver_after_ms`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DropChaos {
    /// Which share.
    pub rate: ChaosRate,
    /// When the message comes back.
    pub redeliver_after_ms: u32,
}

/// Refuse a share of the publishes to the queue with `code` (nothing is stored).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FailPublishChaos {
    /// Which share.
    pub rate: ChaosRate,
    /// The refusal's code: a 3xx publish refusal or 500.
    pub code: ErrorCode,
}

impl Default for FailPublishChaos {
    fn default() -> Self {
        FailPublishChaos {
            rate: ChaosRate::default(),
            code: ErrorCode::InternalError,
        }
    }
}

/// Give a share of deliveries a short lease instead of the queue's or consumer's.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ShortLeaseChaos {
    /// Which share.
    pub rate: ChaosRate,
    /// Their lease.
    pub lease_ms: u32,
}

/// What a queue does wrong while a chaos injection runs; each mode is optional.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ChaosPlan {
    /// Delay deliveries.
    pub delay: Option<DelayChaos>,
    /// Drop deliveries, redelivering them later.
    pub drop: Option<DropChaos>,
    /// Deliver a share of messages twice.
    pub duplicate: Option<ChaosRate>,
    /// Refuse publishes.
    pub fail_publish: Option<FailPublishChaos>,
    /// Shorten leases.
    pub short_lease: Option<ShortLeaseChaos>,
}

impl ChaosPlan {
    const DELAY: u8 = 1;
    const DROP: u8 = 1 << 1;
    const DUPLICATE: u8 = 1 << 2;
    const FAIL_PUBLISH: u8 = 1 << 3;
    const SHORT_LEASE: u8 = 1 << 4;
    const DEFINED: u8 = 0x1f;

    /// Whether no mode is set.
    pub fn is_empty(&self) -> bool {
        *self == ChaosPlan::default()
    }

    fn put(&self, buf: &mut BytesMut) {
        let mut modes = 0;
        let bits = [
            (self.delay.is_some(), Self::DELAY),
            (self.drop.is_some(), Self::DROP),
            (self.duplicate.is_some(), Self::DUPLICATE),
            (self.fail_publish.is_some(), Self::FAIL_PUBLISH),
            (self.short_lease.is_some(), Self::SHORT_LEASE),
        ];
        for (set, bit) in bits {
            if set {
                modes |= bit;
            }
        }
        p::put_u8(buf, modes);
        if let Some(d) = &self.delay {
            p::put_u16(buf, d.rate.0);
            d.delay.put(buf);
        }
        if let Some(d) = &self.drop {
            p::put_u16(buf, d.rate.0);
            p::put_u32(buf, d.redeliver_after_ms);
        }
        if let Some(rate) = self.duplicate {
            p::put_u16(buf, rate.0);
        }
        if let Some(f) = &self.fail_publish {
            p::put_u16(buf, f.rate.0);
            p::put_u16(buf, f.code.as_u16());
        }
        if let Some(l) = &self.short_lease {
            p::put_u16(buf, l.rate.0);
            p::put_u32(buf, l.lease_ms);
        }
    }

    fn read(r: &mut Reader<'_>) -> Result<Self, WireError> {
        let modes = r.flags_u8("chaos modes", Self::DEFINED)?;
        let mut plan = ChaosPlan::default();
        if modes & Self::DELAY != 0 {
            plan.delay = Some(DelayChaos {
                rate: ChaosRate(r.u16()?),
                delay: ChaosDelay::read(r)?,
            });
        }
        if modes & Self::DROP != 0 {
            plan.drop = Some(DropChaos {
                rate: ChaosRate(r.u16()?),
                redeliver_after_ms: r.u32()?,
            });
        }
        if modes & Self::DUPLICATE != 0 {
            plan.duplicate = Some(ChaosRate(r.u16()?));
        }
        if modes & Self::FAIL_PUBLISH != 0 {
            plan.fail_publish = Some(FailPublishChaos {
                rate: ChaosRate(r.u16()?),
                code: ErrorCode::from_u16(r.u16()?),
            });
        }
        if modes & Self::SHORT_LEASE != 0 {
            plan.short_lease = Some(ShortLeaseChaos {
                rate: ChaosRate(r.u16()?),
                lease_ms: r.u32()?,
            });
        }
        Ok(plan)
    }
}

/// `SetChaos` (0x0620): starts (or replaces) a queue's chaos injection for `duration_ms`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SetChaos {
    /// The queue.
    pub queue: String,
    /// How long the injection runs (at least 1 ms, at most the server's maximum).
    pub duration_ms: u64,
    /// What it does.
    pub plan: ChaosPlan,
}

impl Payload for SetChaos {
    fn encode(&self, buf: &mut BytesMut) -> Result<(), WireError> {
        p::put_str(buf, "queue name", &self.queue)?;
        p::put_u64(buf, self.duration_ms);
        self.plan.put(buf);
        Ok(())
    }

    fn decode(r: &mut Reader<'_>) -> Result<Self, WireError> {
        Ok(SetChaos {
            queue: r.string()?,
            duration_ms: r.u64()?,
            plan: ChaosPlan::read(r)?,
        })
    }
}

/// `SetChaosOk` (0x0621): the injection runs until `until_ms`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SetChaosOk {
    /// When it ends by itself (Unix ms).
    pub until_ms: u64,
}

impl Payload for SetChaosOk {
    fn encode(&self, buf: &mut BytesMut) -> Result<(), WireError> {
        p::put_u64(buf, self.until_ms);
        Ok(())
    }

    fn decode(r: &mut Reader<'_>) -> Result<Self, WireError> {
        Ok(SetChaosOk { until_ms: r.u64()? })
    }
}

/// `ClearChaos` (0x0622): ends a queue's chaos injection now.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClearChaos {
    /// The queue.
    pub queue: String,
}

impl Payload for ClearChaos {
    fn encode(&self, buf: &mut BytesMut) -> Result<(), WireError> {
        p::put_str(buf, "queue name", &self.queue)
    }

    fn decode(r: &mut Reader<'_>) -> Result<Self, WireError> {
        Ok(ClearChaos { queue: r.string()? })
    }
}

/// `ClearChaosOk` (0x0623): the queue behaves normally again.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClearChaosOk {
    /// An injection was running (false: there was nothing to clear).
    pub was_active: bool,
}

impl Payload for ClearChaosOk {
    fn encode(&self, buf: &mut BytesMut) -> Result<(), WireError> {
        p::put_bool(buf, self.was_active);
        Ok(())
    }

    fn decode(r: &mut Reader<'_>) -> Result<Self, WireError> {
        Ok(ClearChaosOk {
            was_active: r.bool()?,
        })
    }
}

/// What chaos did to a queue since the broker started (every injection added up).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ChaosStats {
    /// Deliveries held back by the delay mode.
    pub delayed: u64,
    /// Deliveries dropped on the way (and redelivered later).
    pub dropped: u64,
    /// Extra deliveries sent by the duplicate mode.
    pub duplicated: u64,
    /// Published messages refused by the fail-publish mode.
    pub publishes_failed: u64,
    /// Deliveries given a short lease.
    pub leases_shortened: u64,
    /// Of those, leases that ran out before the delivery was settled.
    pub leases_expired_early: u64,
}

impl ChaosStats {
    fn put(&self, buf: &mut BytesMut) {
        for v in [
            self.delayed,
            self.dropped,
            self.duplicated,
            self.publishes_failed,
            self.leases_shortened,
            self.leases_expired_early,
        ] {
            p::put_u64(buf, v);
        }
    }

    fn read(r: &mut Reader<'_>) -> Result<Self, WireError> {
        Ok(ChaosStats {
            delayed: r.u64()?,
            dropped: r.u64()?,
            duplicated: r.u64()?,
            publishes_failed: r.u64()?,
            leases_shortened: r.u64()?,
            leases_expired_early: r.u64()?,
        })
    }
}

/// One queue in a `ListChaosOk`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChaosEntry {
    /// The queue.
    pub queue: String,
    /// When its injection ends (Unix ms); 0 when none runs.
    pub until_ms: u64,
    /// What the running injection does (empty when none runs).
    pub plan: ChaosPlan,
    /// What chaos did to it since the broker started.
    pub stats: ChaosStats,
}

impl ChaosEntry {
    /// queue str (2) + until (8) + modes (1) + stats (48).
    const MIN_LEN: usize = 2 + 8 + 1 + 48;

    /// Whether an injection runs.
    pub fn is_active(&self) -> bool {
        self.until_ms != 0
    }
}

/// `ListChaosOk` (0x0625): the queues of the connection's vhost with an injection running or
/// with chaos counters, by name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListChaosOk {
    /// The queues.
    pub entries: Vec<ChaosEntry>,
    /// More queues than [`MAX_CHAOS_ENTRIES`] qualified; the rest were left out.
    pub more: bool,
}

impl Payload for ListChaosOk {
    fn encode(&self, buf: &mut BytesMut) -> Result<(), WireError> {
        let count = p::checked_len("chaos entries", self.entries.len(), usize::from(u16::MAX))?;
        p::put_u16(buf, count as u16);
        p::put_bool(buf, self.more);
        for e in &self.entries {
            p::put_str(buf, "queue name", &e.queue)?;
            p::put_u64(buf, e.until_ms);
            e.plan.put(buf);
            e.stats.put(buf);
        }
        Ok(())
    }

    fn decode(r: &mut Reader<'_>) -> Result<Self, WireError> {
        let count = usize::from(r.u16()?);
        let more = r.bool()?;
        let count = r.count(count, ChaosEntry::MIN_LEN)?;
        let entries = (0..count)
            .map(|_| {
                Ok(ChaosEntry {
                    queue: r.string()?,
                    until_ms: r.u64()?,
                    plan: ChaosPlan::read(r)?,
                    stats: ChaosStats::read(r)?,
                })
            })
            .collect::<Result<_, WireError>>()?;
        Ok(ListChaosOk { entries, more })
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::wire::testing::{check_payload, hex};

    fn full_plan() -> ChaosPlan {
        ChaosPlan {
            delay: Some(DelayChaos {
                rate: ChaosRate(5000),
                delay: ChaosDelay::Uniform {
                    min_ms: 1,
                    max_ms: 2,
                },
            }),
            drop: Some(DropChaos {
                rate: ChaosRate(100),
                redeliver_after_ms: 3,
            }),
            duplicate: Some(ChaosRate(10_000)),
            fail_publish: Some(FailPublishChaos {
                rate: ChaosRate(1),
                code: ErrorCode::QueueFull,
            }),
            short_lease: Some(ShortLeaseChaos {
                rate: ChaosRate(2),
                lease_ms: 4,
            }),
        }
    }

    #[test]
    fn set_chaos_with_every_mode() {
        check_payload(
            &SetChaos {
                queue: "q".into(),
                duration_ms: 60_000,
                plan: full_plan(),
            },
            &hex("01 00 71  60 ea 00 00 00 00 00 00  1f
                  88 13  01  01 00 00 00  02 00 00 00   # delay 50 %, uniform 1-2
                  64 00  03 00 00 00                    # drop 1 %, after 3 ms
                  10 27                                 # duplicate 100 %
                  01 00  2f 01                          # fail 0.01 % with QUEUE_FULL
                  02 00  04 00 00 00                    # lease 0.02 %, 4 ms"),
        );
    }

    #[test]
    fn set_chaos_with_one_mode_and_the_answers() {
        check_payload(
            &SetChaos {
                queue: "q".into(),
                duration_ms: 1,
                plan: ChaosPlan {
                    duplicate: Some(ChaosRate(3000)),
                    ..ChaosPlan::default()
                },
            },
            &hex("01 00 71  01 00 00 00 00 00 00 00  04  b8 0b"),
        );
        check_payload(&SetChaosOk { until_ms: 2 }, &hex("02 00 00 00 00 00 00 00"));
        check_payload(&ClearChaos { queue: "q".into() }, &hex("01 00 71"));
        check_payload(&ClearChaosOk { was_active: true }, &hex("01"));
    }

    #[test]
    fn list_chaos_ok_round_trips() {
        check_payload(
            &ListChaosOk {
                entries: vec![ChaosEntry {
                    queue: "q".into(),
                    until_ms: 9,
                    plan: ChaosPlan {
                        delay: Some(DelayChaos {
                            rate: ChaosRate::ALL,
                            delay: ChaosDelay::Exponential { mean_ms: 7 },
                        }),
                        ..ChaosPlan::default()
                    },
                    stats: ChaosStats {
                        delayed: 1,
                        dropped: 2,
                        duplicated: 3,
                        publishes_failed: 4,
                        leases_shortened: 5,
                        leases_expired_early: 6,
                    },
                }],
                more: true,
            },
            &hex("01 00  01
                  01 00 71  09 00 00 00 00 00 00 00
                  01  10 27  02  07 00 00 00  00 00 00 00
                  01 00 00 00 00 00 00 00  02 00 00 00 00 00 00 00
                  03 00 00 00 00 00 00 00  04 00 00 00 00 00 00 00
                  05 00 00 00 00 00 00 00  06 00 00 00 00 00 00 00"),
        );
        check_payload(&ListChaosOk::default(), &hex("00 00  00"));
    }

    #[test]
    fn undefined_modes_and_distributions_are_refused() {
        let bad_modes = hex("01 00 71  01 00 00 00 00 00 00 00  20");
        assert_eq!(
            SetChaos::decode_exact(&Bytes::from(bad_modes)),
            Err(WireError::ReservedBits {
                what: "chaos modes",
                bits: 0x20
            })
        );
        let bad_kind =
            hex("01 00 71  01 00 00 00 00 00 00 00  01  10 27  03 00 00 00 00 00 00 00 00");
        assert_eq!(
            SetChaos::decode_exact(&Bytes::from(bad_kind)),
            Err(WireError::InvalidValue {
                what: "chaos delay distribution",
                value: 3
            })
        );
    }

    #[test]
    fn delay_specs_parse_and_print_alike() {
        for spec in ["fixed:250", "uniform:100-500", "exponential:80"] {
            assert_eq!(ChaosDelay::parse(spec).unwrap().spec(), spec);
        }
        for bad in ["fixed", "uniform:5", "normal:3", "fixed:-1"] {
            assert!(ChaosDelay::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn rates_come_from_percentages() {
        assert_eq!(ChaosRate::from_percent(30.0), Some(ChaosRate(3000)));
        assert_eq!(ChaosRate::from_percent(0.05), Some(ChaosRate(5)));
        assert_eq!(ChaosRate::from_percent(100.5), None);
        assert_eq!(ChaosRate::from_percent(-1.0), None);
        assert_eq!(ChaosRate(2500).percent(), 25.0);
    }
}
