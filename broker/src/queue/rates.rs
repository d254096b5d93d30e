//! The per-second publish and ack rates a queue shows, measured from its running totals.

use std::time::{Duration, Instant};

/// The totals when the rates were last measured, and when.
#[derive(Debug, Clone, Copy)]
pub(super) struct RateBase {
    published: u64,
    acked: u64,
    at: Instant,
}

/// Messages per second over the last measurement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Rates {
    /// Messages stored per second.
    pub(super) publish: u64,
    /// Messages acknowledged per second.
    pub(super) ack: u64,
}

impl RateBase {
    /// Measuring starts at `now` from zero totals.
    pub(super) fn new(now: Instant) -> Self {
        Self {
            published: 0,
            acked: 0,
            at: now,
        }
    }

    /// The rates since the last measurement, if that was at least `every` ago; the totals
    /// become the base of the next one.
    pub(super) fn measure(
        &mut self,
        published: u64,
        acked: u64,
        now: Instant,
        every: Duration,
    ) -> Option<Rates> {
        let elapsed = now.saturating_duration_since(self.at);
        if elapsed < every {
            return None;
        }
        let per_sec = |total: u64, before: u64| {
            (total.saturating_sub(before) as f64 / elapsed.as_secs_f64()).round() as u64
        };
        let rates = Rates {
            publish: per_sec(published, self.published),
            ack: per_sec(acked, self.acked),
        };
        *self = Self {
            published,
            acked,
            at: now,
        };
        Some(rates)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_are_the_growth_of_the_totals_per_second_measured_at_most_once_a_period() {
        let t0 = Instant::now();
        let second = Duration::from_secs(1);
        let mut base = RateBase::new(t0);
        assert_eq!(base.measure(10, 0, t0 + second / 2, second), None);
        assert_eq!(
            base.measure(100, 40, t0 + second * 2, second),
            Some(Rates {
                publish: 50,
                ack: 20
            })
        );
        assert_eq!(
            base.measure(130, 40, t0 + second * 3, second),
            Some(Rates {
                publish: 30,
                ack: 0
            })
        );
    }
}
