//! A sorted, deduplicated list of queues that routing copies as is.

use super::table::QueueName;

/// Queues sorted by name, each with the number of bindings that lead to it, so that routing
/// copies a ready, deduplicated, ordered list.
#[derive(Debug, Clone, Default)]
pub(super) struct QueueList {
    entries: Vec<(QueueName, u32)>,
}

impl QueueList {
    /// Counts one more binding to `queue`.
    pub(super) fn add(&mut self, queue: &QueueName) {
        match self.position(queue) {
            Ok(i) => self.entries[i].1 += 1,
            Err(i) => self.entries.insert(i, (QueueName::clone(queue), 1)),
        }
    }

    /// Counts one binding to `queue` less; returns whether the list is now empty.
    pub(super) fn remove(&mut self, queue: &str) -> bool {
        if let Ok(i) = self.position(queue) {
            self.entries[i].1 -= 1;
            if self.entries[i].1 == 0 {
                self.entries.remove(i);
            }
        }
        self.entries.is_empty()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Appends the queues, each once, in name order.
    pub(super) fn extend_into(&self, out: &mut Vec<QueueName>) {
        out.extend(self.entries.iter().map(|(q, _)| QueueName::clone(q)));
    }

    fn position(&self, queue: &str) -> Result<usize, usize> {
        self.entries.binary_search_by(|(q, _)| (**q).cmp(queue))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_bindings_and_keeps_order() {
        let mut list = QueueList::default();
        for q in ["b", "a", "b", "c"] {
            list.add(&QueueName::from(q));
        }
        let mut out = Vec::new();
        list.extend_into(&mut out);
        assert_eq!(out, ["a", "b", "c"].map(QueueName::from));
        assert!(!list.remove("b"));
        assert!(!list.remove("b"));
        assert!(!list.remove("missing"));
        assert!(!list.remove("a"));
        assert!(list.remove("c"));
        assert!(list.is_empty());
    }
}
