//! `weighted` exchanges: each message goes to exactly one bound queue, in proportion to the
//! bindings' weights, by smooth weighted round robin. The split is deterministic: over any run
//! of messages a queue's count is within a few messages of its share, so "5 % to v2" holds
//! over every thousand messages, not only on average.

use std::sync::{Arc, Mutex};

use sluice_client::wire::HeaderValue;

use super::table::QueueName;

pub use sluice_client::WEIGHT_ARGUMENT;
/// The largest weight of a `weighted` binding.
pub const MAX_WEIGHT: u32 = 1_000_000;

/// The weight a binding's arguments give, `default` without `x-weight`. A binding of these
/// kinds takes no other argument, so a typo is refused rather than ignored.
pub(super) fn weight_of(
    arguments: &[(String, HeaderValue)],
    default: u32,
    range: std::ops::RangeInclusive<u32>,
) -> Result<u32, String> {
    let mut weight = default;
    for (key, value) in arguments {
        if key != WEIGHT_ARGUMENT {
            return Err(format!(
                "unknown binding argument '{key}': bindings of this exchange take only '{WEIGHT_ARGUMENT}'"
            ));
        }
        let parsed = match value {
            HeaderValue::Int(n) => u32::try_from(*n).ok(),
            HeaderValue::Str(s) => s.trim().parse().ok(),
            _ => None,
        };
        weight = parsed.filter(|w| range.contains(w)).ok_or_else(|| {
            format!(
                "'{WEIGHT_ARGUMENT}' must be a whole number from {} to {}",
                range.start(),
                range.end()
            )
        })?;
    }
    Ok(weight)
}

/// A bound queue and its weight.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Weighted {
    pub(super) queue: QueueName,
    pub(super) weight: u32,
}

/// Bound queues and their weights, sorted by queue name: what both kinds that pick one queue
/// keep, each with its own index on top (a round robin, a hash ring).
#[derive(Debug, Clone, Default)]
pub(super) struct Weights(Vec<Weighted>);

impl Weights {
    /// Sets `queue`'s weight, binding it if it was not.
    pub(super) fn set(&mut self, queue: &QueueName, weight: u32) {
        match self.position(queue) {
            Ok(i) => self.0[i].weight = weight,
            Err(i) => self.0.insert(
                i,
                Weighted {
                    queue: QueueName::clone(queue),
                    weight,
                },
            ),
        }
    }

    /// Unbinds `queue`; whether it was bound.
    pub(super) fn remove(&mut self, queue: &str) -> bool {
        let found = self.position(queue);
        if let Ok(i) = found {
            self.0.remove(i);
        }
        found.is_ok()
    }

    /// The sum of the weights, with `queue`'s (bound or not) taken as `weight`.
    pub(super) fn total_with(&self, queue: &str, weight: u32) -> u64 {
        let others: u64 = self
            .0
            .iter()
            .filter(|m| *m.queue != *queue)
            .map(|m| u64::from(m.weight))
            .sum();
        others + u64::from(weight)
    }

    pub(super) fn as_slice(&self) -> &[Weighted] {
        &self.0
    }

    fn position(&self, queue: &str) -> Result<usize, usize> {
        self.0.binary_search_by(|m| (*m.queue).cmp(queue))
    }
}

/// The queues of a `weighted` exchange and where the round robin stands.
///
/// The table is cloned for every change and routes through `&self`, so the round robin's
/// state is shared (behind a lock held for a few additions) by the clones of one set of
/// weights; a new set of weights starts a new round.
#[derive(Debug, Clone, Default)]
pub(super) struct WeightedQueues {
    members: Weights,
    total: i64,
    /// Smooth weighted round robin's current weight of each member.
    current: Arc<Mutex<Vec<i64>>>,
}

impl WeightedQueues {
    /// Binds `queue` with `weight`, or changes its weight.
    pub(super) fn set(&mut self, queue: &QueueName, weight: u32) {
        self.members.set(queue, weight);
        self.restart();
    }

    /// Unbinds `queue`.
    pub(super) fn remove(&mut self, queue: &str) {
        if self.members.remove(queue) {
            self.restart();
        }
    }

    /// The queue for the next message; `None` when every weight is 0 (or nothing is bound).
    pub(super) fn pick(&self) -> Option<&QueueName> {
        if self.total == 0 {
            return None;
        }
        let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        let members = self.members.as_slice();
        let mut best = 0;
        for (i, m) in members.iter().enumerate() {
            current[i] += i64::from(m.weight);
            if current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= self.total;
        Some(&members[best].queue)
    }

    fn restart(&mut self) {
        let members = self.members.as_slice();
        self.total = members.iter().map(|m| i64::from(m.weight)).sum();
        self.current = Arc::new(Mutex::new(vec![0; members.len()]));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queues(weights: &[(&str, u32)]) -> WeightedQueues {
        let mut w = WeightedQueues::default();
        for (q, weight) in weights {
            w.set(&QueueName::from(*q), *weight);
        }
        w
    }

    fn counts(w: &WeightedQueues, n: usize) -> std::collections::BTreeMap<String, usize> {
        let mut counts = std::collections::BTreeMap::new();
        for _ in 0..n {
            *counts.entry(w.pick().unwrap().to_string()).or_default() += 1;
        }
        counts
    }

    #[test]
    fn every_window_of_a_thousand_is_split_by_the_weights() {
        let w = queues(&[("v1", 95), ("v2", 5)]);
        let picks: Vec<bool> = (0..20_000).map(|_| &**w.pick().unwrap() == "v2").collect();
        for window in picks.windows(1000) {
            let v2 = window.iter().filter(|p| **p).count();
            assert!((49..=51).contains(&v2), "{v2} of 1000 to v2");
        }
        let w = queues(&[("a", 1), ("b", 2), ("c", 997_000)]);
        let c = counts(&w, 997_003);
        assert_eq!(c["a"], 1);
        assert_eq!(c["b"], 2);
    }

    #[test]
    fn a_zero_weight_gets_nothing_and_all_zero_routes_nowhere() {
        let w = queues(&[("v1", 0), ("v2", 3)]);
        assert_eq!(counts(&w, 10).get("v1"), None);
        let mut w = queues(&[("v1", 0)]);
        assert_eq!(w.pick(), None);
        w.set(&QueueName::from("v1"), 1);
        assert_eq!(w.pick().map(|q| &**q), Some("v1"));
        w.remove("v1");
        assert_eq!(w.pick(), None);
    }

    #[test]
    fn a_clone_shares_the_round_and_a_new_weight_starts_another() {
        let a = queues(&[("v1", 1), ("v2", 1)]);
        let b = a.clone();
        assert_ne!(a.pick(), b.pick(), "clones take turns");
        let mut c = a.clone();
        c.set(&QueueName::from("v2"), 3);
        assert_eq!(counts(&c, 4)["v2"], 3);
    }

    #[test]
    fn weights_are_whole_numbers_in_range_and_nothing_else_is_taken() {
        let arg = |v: HeaderValue| vec![(WEIGHT_ARGUMENT.to_owned(), v)];
        assert_eq!(weight_of(&[], 1, 0..=10), Ok(1));
        assert_eq!(weight_of(&arg(HeaderValue::Int(7)), 1, 0..=10), Ok(7));
        assert_eq!(
            weight_of(&arg(HeaderValue::Str(" 7".into())), 1, 0..=10),
            Ok(7)
        );
        for bad in [
            HeaderValue::Int(-1),
            HeaderValue::Int(11),
            HeaderValue::Float(1.5),
        ] {
            let e = weight_of(&arg(bad), 1, 0..=10).unwrap_err();
            assert!(e.contains("from 0 to 10"), "{e}");
        }
        let e = weight_of(&[("weight".into(), HeaderValue::Int(1))], 1, 0..=10).unwrap_err();
        assert!(e.contains("unknown binding argument 'weight'"), "{e}");
    }
}
