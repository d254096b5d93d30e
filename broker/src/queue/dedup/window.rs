//! The ids a queue accepted recently, bounded by count and by age.

use std::collections::{HashMap, VecDeque};

/// A queue's dedup window never holds more ids than this (also the largest
/// `dedup_window_count`): with a time window only, the oldest ids beyond it are forgotten
/// early rather than let memory grow with the publish rate.
pub const MAX_WINDOW_IDS: usize = 1_000_000;

/// How far back a queue remembers `message_id`s (queue arguments, protocol.md §6.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowLimits {
    /// Ids accepted at least this long ago are forgotten.
    pub max_age_ms: Option<u64>,
    /// Only this many most recent ids are remembered.
    pub max_ids: usize,
}

impl WindowLimits {
    /// The limits of a queue's arguments; `None` when it has no dedup window.
    pub fn new(window_ms: Option<u64>, window_count: Option<u32>) -> Option<Self> {
        if window_ms.is_none() && window_count.is_none() {
            return None;
        }
        let max_ids = window_count.map_or(MAX_WINDOW_IDS, |c| (c as usize).min(MAX_WINDOW_IDS));
        Some(WindowLimits {
            max_age_ms: window_ms,
            max_ids,
        })
    }
}

/// One remembered id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    /// The message's `message_id`.
    pub id: Box<str>,
    /// When the queue accepted it (Unix ms).
    pub at_ms: u64,
}

/// The recently accepted ids, oldest first.
#[derive(Debug)]
pub struct Window {
    limits: WindowLimits,
    /// Acceptance order; an id appears once.
    order: VecDeque<Accepted>,
    /// Every id in `order`, with its acceptance time.
    ids: HashMap<Box<str>, u64>,
}

impl Window {
    /// An empty window.
    pub fn new(limits: WindowLimits) -> Self {
        Window {
            limits,
            order: VecDeque::new(),
            ids: HashMap::new(),
        }
    }

    /// Whether `id` was accepted within the window, as of `now_ms`.
    pub fn contains(&mut self, id: &str, now_ms: u64) -> bool {
        self.forget_expired(now_ms);
        self.ids.contains_key(id)
    }

    /// Remembers `id` as accepted at `at_ms` (an id already remembered keeps its first
    /// time: the window counts from the first acceptance, as SQS does).
    pub fn insert(&mut self, id: &str, at_ms: u64) {
        if self.ids.contains_key(id) {
            return;
        }
        let id: Box<str> = id.into();
        self.ids.insert(id.clone(), at_ms);
        self.order.push_back(Accepted { id, at_ms });
        while self.order.len() > self.limits.max_ids {
            self.pop_oldest();
        }
    }

    /// Forgets ids accepted `max_age_ms` or more before `now_ms`.
    pub fn forget_expired(&mut self, now_ms: u64) {
        let Some(max_age) = self.limits.max_age_ms else {
            return;
        };
        while self
            .order
            .front()
            .is_some_and(|a| a.at_ms.saturating_add(max_age) <= now_ms)
        {
            self.pop_oldest();
        }
    }

    fn pop_oldest(&mut self) {
        if let Some(a) = self.order.pop_front() {
            self.ids.remove(&a.id);
        }
    }

    /// The remembered ids, oldest first.
    pub fn iter(&self) -> impl Iterator<Item = &Accepted> {
        self.order.iter()
    }

    /// How many ids are remembered.
    pub fn len(&self) -> usize {
        self.order.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(max_age_ms: Option<u64>, max_ids: usize) -> WindowLimits {
        WindowLimits {
            max_age_ms,
            max_ids,
        }
    }

    #[test]
    fn no_limit_set_means_no_window() {
        assert_eq!(WindowLimits::new(None, None), None);
        assert_eq!(
            WindowLimits::new(Some(5), None),
            Some(limits(Some(5), MAX_WINDOW_IDS))
        );
        assert_eq!(WindowLimits::new(None, Some(3)), Some(limits(None, 3)));
        assert_eq!(
            WindowLimits::new(None, Some(u32::MAX)).unwrap().max_ids,
            MAX_WINDOW_IDS
        );
    }

    #[test]
    fn a_count_window_remembers_the_last_n_ids() {
        let mut w = Window::new(limits(None, 2));
        w.insert("a", 1);
        w.insert("b", 2);
        assert!(w.contains("a", 3));
        w.insert("c", 3);
        assert!(!w.contains("a", 4), "a was pushed out by c");
        assert!(w.contains("b", 4) && w.contains("c", 4));
        assert_eq!(w.len(), 2);
    }

    #[test]
    fn a_time_window_forgets_ids_once_they_are_old_enough() {
        let mut w = Window::new(limits(Some(100), MAX_WINDOW_IDS));
        w.insert("a", 1_000);
        w.insert("b", 1_050);
        assert!(w.contains("a", 1_099));
        assert!(
            !w.contains("a", 1_100),
            "exactly the window's age is outside it"
        );
        assert!(w.contains("b", 1_100));
        assert!(!w.contains("b", 1_150));
        assert_eq!(w.len(), 0);
    }

    #[test]
    fn both_limits_apply_together() {
        let mut w = Window::new(limits(Some(100), 1));
        w.insert("a", 0);
        w.insert("b", 10);
        assert!(!w.contains("a", 20), "the count pushed it out");
        assert!(!w.contains("b", 110), "the age did");
    }

    #[test]
    fn a_repeated_insert_keeps_the_first_acceptance_time() {
        let mut w = Window::new(limits(Some(100), 10));
        w.insert("a", 0);
        w.insert("a", 90);
        assert_eq!(w.len(), 1);
        assert!(!w.contains("a", 100));
    }
}
