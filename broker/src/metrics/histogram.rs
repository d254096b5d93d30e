//! A histogram that many tasks observe without a lock: one atomic counter per bucket, the sum
//! kept in integer units (nanoseconds, messages) so that adding to it is one `fetch_add`.
//!
//! (prometheus-client's own `Histogram` takes a mutex per observation; the queues and sessions
//! that observe these run on every core.) Hot paths that observe many values at once fill a
//! [`Tally`] on the stack and add it in one go: one atomic add per bucket touched.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Most buckets a histogram has (the `+Inf` bucket included).
const MAX_BUCKETS: usize = 24;

/// A cumulative histogram with fixed upper bounds.
#[derive(Debug)]
pub struct Histogram {
    /// Upper bounds (inclusive), ascending, in integer units.
    bounds: &'static [u64],
    /// Integer units per reported unit (1e9 for seconds kept in nanoseconds).
    units_per_value: f64,
    /// Observations per bucket (not cumulative); the last one is `+Inf`.
    counts: [AtomicU64; MAX_BUCKETS],
    /// Sum of the observed values, in integer units.
    sum: AtomicU64,
}

/// What a scrape reads of a [`Histogram`].
#[derive(Debug, Clone, PartialEq)]
pub struct HistogramSnapshot {
    /// Sum of the observed values, in the reported unit.
    pub sum: f64,
    /// Number of observations.
    pub count: u64,
    /// Upper bound (in the reported unit, `+Inf` last) and observations in that bucket alone
    /// (the encoder makes them cumulative).
    pub buckets: Vec<(f64, u64)>,
}

impl Histogram {
    /// A histogram of durations; `bounds` in nanoseconds, reported in seconds.
    pub fn seconds(bounds: &'static [u64]) -> Self {
        Self::new(bounds, 1e9)
    }

    /// A histogram of counts (messages), reported as they are.
    pub fn counts(bounds: &'static [u64]) -> Self {
        Self::new(bounds, 1.0)
    }

    fn new(bounds: &'static [u64], units_per_value: f64) -> Self {
        assert!(bounds.len() < MAX_BUCKETS, "too many buckets");
        assert!(bounds.windows(2).all(|w| w[0] < w[1]), "bounds ascend");
        Self {
            bounds,
            units_per_value,
            counts: Default::default(),
            sum: AtomicU64::new(0),
        }
    }

    fn bucket(&self, value: u64) -> usize {
        self.bounds.partition_point(|&b| b < value)
    }

    /// Records `n` observations of `value` (integer units).
    pub fn observe_many(&self, value: u64, n: u64) {
        if n == 0 {
            return;
        }
        self.counts[self.bucket(value)].fetch_add(n, Ordering::Relaxed);
        self.sum
            .fetch_add(value.saturating_mul(n), Ordering::Relaxed);
    }

    /// Records one observation of `value` (integer units).
    pub fn observe(&self, value: u64) {
        self.observe_many(value, 1);
    }

    /// Records one duration (for histograms made with [`Histogram::seconds`]).
    pub fn observe_duration(&self, d: Duration) {
        self.observe(duration_units(d));
    }

    /// Records `n` observations of one duration.
    pub fn observe_duration_many(&self, d: Duration, n: u64) {
        self.observe_many(duration_units(d), n);
    }

    /// An empty tally of observations to add later with [`Histogram::add`].
    pub fn tally(&self) -> Tally {
        Tally {
            counts: [0; MAX_BUCKETS],
            sum: 0,
            any: false,
        }
    }

    /// Adds a tally's observations: one atomic add per bucket it touched.
    pub fn add(&self, tally: &Tally) {
        if !tally.any {
            return;
        }
        for (slot, &n) in self.counts.iter().zip(&tally.counts) {
            if n > 0 {
                slot.fetch_add(n, Ordering::Relaxed);
            }
        }
        self.sum.fetch_add(tally.sum, Ordering::Relaxed);
    }

    /// Records a duration into `tally`, bucketed as this histogram does.
    pub fn tally_duration(&self, tally: &mut Tally, d: Duration) {
        let value = duration_units(d);
        tally.counts[self.bucket(value)] += 1;
        tally.sum = tally.sum.saturating_add(value);
        tally.any = true;
    }

    /// The current counts, for a scrape.
    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut buckets = Vec::with_capacity(self.bounds.len() + 1);
        let mut count = 0;
        for (i, slot) in self.counts[..=self.bounds.len()].iter().enumerate() {
            let n = slot.load(Ordering::Relaxed);
            count += n;
            let bound = self
                .bounds
                .get(i)
                .map_or(f64::INFINITY, |&b| b as f64 / self.units_per_value);
            buckets.push((bound, n));
        }
        HistogramSnapshot {
            sum: self.sum.load(Ordering::Relaxed) as f64 / self.units_per_value,
            count,
            buckets,
        }
    }
}

fn duration_units(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Observations gathered on the stack, added to a [`Histogram`] at once.
#[derive(Debug)]
pub struct Tally {
    counts: [u64; MAX_BUCKETS],
    sum: u64,
    any: bool,
}

/// Milliseconds as the nanoseconds [`Histogram::seconds`] takes.
pub const fn ms(n: u64) -> u64 {
    n * 1_000_000
}

/// Microseconds as the nanoseconds [`Histogram::seconds`] takes.
pub const fn us(n: u64) -> u64 {
    n * 1_000
}

#[cfg(test)]
mod tests {
    use super::*;

    static BOUNDS: [u64; 3] = [1, 2, 4];

    #[test]
    fn values_fall_in_the_first_bucket_whose_bound_they_do_not_exceed() {
        let h = Histogram::counts(&BOUNDS);
        for v in [0, 1, 2, 3, 4, 5, 100] {
            h.observe(v);
        }
        let s = h.snapshot();
        assert_eq!(s.count, 7);
        assert_eq!(s.sum, 115.0);
        assert_eq!(
            s.buckets,
            vec![(1.0, 2), (2.0, 1), (4.0, 2), (f64::INFINITY, 2)]
        );
    }

    #[test]
    fn durations_are_reported_in_seconds() {
        static NS: [u64; 2] = [ms(1), ms(10)];
        let h = Histogram::seconds(&NS);
        h.observe_duration(Duration::from_micros(500));
        h.observe_duration(Duration::from_millis(5));
        let mut tally = h.tally();
        h.tally_duration(&mut tally, Duration::from_secs(1));
        h.tally_duration(&mut tally, Duration::from_secs(1));
        h.add(&tally);
        let s = h.snapshot();
        assert_eq!(s.count, 4);
        assert!((s.sum - 2.0055).abs() < 1e-9, "{}", s.sum);
        assert_eq!(s.buckets, vec![(0.001, 1), (0.01, 1), (f64::INFINITY, 2)]);
    }

    #[test]
    fn many_observations_at_once_count_each() {
        let h = Histogram::counts(&BOUNDS);
        h.observe_many(3, 10);
        h.observe_many(3, 0);
        let s = h.snapshot();
        assert_eq!((s.count, s.sum), (10, 30.0));
    }
}
