//! `consistent-hash` exchanges: each message goes to exactly one bound queue, picked by a hash
//! of its routing key (or of one header) on a ring where every binding holds points in
//! proportion to its weight. The same key reaches the same queue for as long as the bound
//! queues do not change; binding one more queue moves only the keys that now land on its
//! points, about its share of them, and every one of them to the new queue.
//!
//! The hash (64-bit FNV-1a, then MurmurHash3's finalizer to spread nearby keys) is fixed: it
//! is the same on every node and in every version, so a key keeps its queue across restarts
//! and in a cluster.

use std::sync::Arc;

use sluice_client::wire::HeaderValue;

use super::table::QueueName;
use super::weighted::Weights;

/// Points on the ring per unit of weight.
const POINTS_PER_WEIGHT: u32 = 100;
/// The largest weight of a `consistent-hash` binding (so a queue holds at most 10,000 points).
pub const MAX_RING_WEIGHT: u32 = 100;
/// The most points one ring holds (16 bytes each): a bind past it is refused.
const MAX_RING_POINTS: u64 = 1_000_000;

/// The bound queues of a `consistent-hash` exchange and their points on the ring.
#[derive(Debug, Clone, Default)]
pub(super) struct HashRing {
    members: Weights,
    /// Each point and the member (index into `members`) that holds it, sorted by point;
    /// shared by the copies of the routing table that every topology change makes.
    points: Arc<Vec<(u64, u32)>>,
}

impl HashRing {
    /// Binds `queue` with `weight`, or changes its weight; refused (nothing changed) when the
    /// ring would hold more than [`MAX_RING_POINTS`].
    pub(super) fn set(&mut self, queue: &QueueName, weight: u32) -> Result<(), String> {
        let points = self.members.total_with(queue, weight) * u64::from(POINTS_PER_WEIGHT);
        if points > MAX_RING_POINTS {
            return Err(format!(
                "the exchange's ring would hold {points} points, more than {MAX_RING_POINTS} \
                 ({POINTS_PER_WEIGHT} per unit of weight): bind fewer queues or lower weights"
            ));
        }
        self.members.set(queue, weight);
        self.rebuild();
        Ok(())
    }

    /// Unbinds `queue`.
    pub(super) fn remove(&mut self, queue: &str) {
        if self.members.remove(queue) {
            self.rebuild();
        }
    }

    /// The queue for a message whose key is `key`; `None` when nothing is bound.
    pub(super) fn pick(&self, key: &[u8]) -> Option<&QueueName> {
        if self.points.is_empty() {
            return None;
        }
        let h = hash(key);
        let at = self.points.partition_point(|(p, _)| *p < h);
        let (_, member) = self.points[at % self.points.len()];
        Some(&self.members.as_slice()[member as usize].queue)
    }

    fn rebuild(&mut self) {
        let mut points = Vec::new();
        for (i, m) in self.members.as_slice().iter().enumerate() {
            let mut point_key = Vec::with_capacity(m.queue.len() + 5);
            for n in 0..m.weight * POINTS_PER_WEIGHT {
                point_key.clear();
                point_key.extend_from_slice(m.queue.as_bytes());
                point_key.push(0);
                point_key.extend_from_slice(&n.to_le_bytes());
                points.push((hash(&point_key), i as u32));
            }
        }
        // Two queues on one point (a 64-bit collision) are ordered by queue, so every node
        // builds the same ring.
        points.sort_unstable();
        self.points = Arc::new(points);
    }
}

/// The bytes of a header value that a ring hashes: text and bytes as they are, whole numbers
/// and timestamps in decimal. Other types (and a missing header) pick no queue.
pub(super) fn header_key(value: &HeaderValue) -> Option<std::borrow::Cow<'_, [u8]>> {
    use std::borrow::Cow;
    match value {
        HeaderValue::Str(s) => Some(Cow::Borrowed(s.as_bytes())),
        HeaderValue::Bytes(b) => Some(Cow::Borrowed(b)),
        HeaderValue::Int(n) => Some(Cow::Owned(n.to_string().into_bytes())),
        HeaderValue::Timestamp(t) => Some(Cow::Owned(t.to_string().into_bytes())),
        _ => None,
    }
}

/// 64-bit FNV-1a, finished with MurmurHash3's `fmix64`.
fn hash(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn ring(weights: &[(&str, u32)]) -> HashRing {
        let mut r = HashRing::default();
        for (q, w) in weights {
            r.set(&QueueName::from(*q), *w).unwrap();
        }
        r
    }

    fn placement(r: &HashRing, keys: usize) -> Vec<String> {
        (0..keys)
            .map(|k| r.pick(format!("user-{k}").as_bytes()).unwrap().to_string())
            .collect()
    }

    #[test]
    fn the_hash_is_fixed() {
        // Changing it would move every key of every user: these values are part of the
        // protocol's promise that a key keeps its queue across versions.
        assert_eq!(hash(b""), 0xefd0_1f60_ba99_2926);
        assert_eq!(hash(b"user-1"), hash(b"user-1"));
        assert_ne!(hash(b"user-1"), hash(b"user-2"));
    }

    #[test]
    fn keys_spread_by_weight_and_stay_put() {
        let r = ring(&[("a", 1), ("b", 1), ("c", 2)]);
        let first = placement(&r, 20_000);
        assert_eq!(first, placement(&r, 20_000), "same key, same queue");
        let mut share: BTreeMap<&str, usize> = BTreeMap::new();
        for q in &first {
            *share.entry(q.as_str()).or_default() += 1;
        }
        for (q, expected) in [("a", 5_000), ("b", 5_000), ("c", 10_000)] {
            let got = share[q] as i64;
            assert!(
                (got - expected).abs() < 1_000,
                "{q}: {got} keys, about {expected} expected"
            );
        }
    }

    #[test]
    fn a_new_queue_takes_about_its_share_and_only_from_the_others() {
        let mut r = ring(&[("a", 1), ("b", 1), ("c", 1), ("d", 1)]);
        let before = placement(&r, 20_000);
        r.set(&QueueName::from("e"), 1).unwrap();
        let after = placement(&r, 20_000);
        let moved: Vec<_> = before.iter().zip(&after).filter(|(b, a)| b != a).collect();
        assert!(
            moved.iter().all(|(_, a)| a.as_str() == "e"),
            "keys only move to the new queue"
        );
        assert!(
            (3_000..5_000).contains(&moved.len()),
            "{} of 20000 keys moved, about a fifth expected",
            moved.len()
        );
        r.remove("e");
        assert_eq!(
            placement(&r, 20_000),
            before,
            "unbinding it moves them back"
        );
    }

    #[test]
    fn a_ring_past_a_million_points_is_refused_and_left_as_it_was() {
        // A full ring's members, without building its million points.
        let mut members = Weights::default();
        for i in 0..100 {
            members.set(&QueueName::from(format!("q{i:03}").as_str()), 100);
        }
        let mut r = HashRing {
            members,
            ..HashRing::default()
        };
        let e = r.set(&QueueName::from("one-too-many"), 1).unwrap_err();
        assert!(e.contains("more than 1000000"), "{e}");
        assert_eq!(r.members.as_slice().len(), 100);
        assert!(r.points.is_empty(), "nothing was rebuilt");
        // Lowering a bound queue's weight is fine.
        r.set(&QueueName::from("q000"), 1).unwrap();
        assert_eq!(r.points.len(), 99 * 100 * 100 + 100);
    }

    #[test]
    fn header_values_hash_as_text_or_decimal() {
        assert_eq!(header_key(&HeaderValue::Int(42)).unwrap().as_ref(), b"42");
        assert_eq!(
            header_key(&HeaderValue::Str("42".into())).unwrap().as_ref(),
            b"42"
        );
        assert!(header_key(&HeaderValue::Bool(true)).is_none());
        assert!(ring(&[]).pick(b"k").is_none());
    }
}
