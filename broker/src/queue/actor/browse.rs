//! Browsing: the queue shows its ready messages, in sequence order, without taking them. No
//! delivery tag, no lease, no delivery counted, no counter changed: a consumer that takes
//! them afterwards gets exactly what it would have got without the browse.

use sluice_client::wire::{BrowseQueueOk, BrowsedMessage, MIN_BROWSED_LEN};

use super::Actor;
use crate::queue::BrowsePage;

impl Actor {
    /// The ready messages after `page.after_seq`, as many as `page` allows.
    pub(super) fn browse(&self, page: &BrowsePage) -> BrowseQueueOk {
        let mut seqs = self.ready_after(page.after_seq).peekable();
        let mut messages = Vec::new();
        let mut bytes = 0;
        while messages.len() < page.limit {
            let Some(&seq) = seqs.peek() else { break };
            let Some(message) = self.browsed(seq) else {
                // Unreadable: the recovery report names it; a browse shows what it can.
                seqs.next();
                continue;
            };
            let cost =
                MIN_BROWSED_LEN + message.meta.len() + message.body.len().min(page.body_budget);
            if !messages.is_empty() && bytes + cost > page.max_bytes {
                break;
            }
            bytes += cost;
            messages.push(message);
            seqs.next();
        }
        let more = seqs.peek().is_some();
        // An empty page that says "more" would make a client ask for it again forever; it
        // can only happen when every message left is unreadable.
        let more = more && !messages.is_empty();
        BrowseQueueOk { messages, more }
    }

    /// Ready messages (never delivered, and returned ones) above `after`, in sequence order.
    fn ready_after(&self, after: u64) -> impl Iterator<Item = u64> + '_ {
        // `fresh` is in sequence order: messages enter it only at the back, in order.
        let fresh = self.fresh.after(after);
        let returned = self
            .returned
            .range(after.saturating_add(1)..)
            .map(|(&s, _)| s);
        merge_sorted(fresh, returned)
    }

    fn browsed(&self, seq: u64) -> Option<BrowsedMessage> {
        let message = self.log.as_ref()?.read(seq).ok()?;
        let count = self.returned.get(&seq).copied().unwrap_or(0);
        Some(BrowsedMessage {
            message_seq: seq,
            delivery_count: count,
            // What its next delivery will say (see `take_deliverable`).
            redelivered: self.may_have_been_delivered(seq, count),
            enqueued_at_ms: message.timestamp_ms,
            meta: message.meta,
            body: message.body,
        })
    }
}

/// Merges two ascending sequences into one.
fn merge_sorted(
    a: impl Iterator<Item = u64>,
    b: impl Iterator<Item = u64>,
) -> impl Iterator<Item = u64> {
    let (mut a, mut b) = (a.peekable(), b.peekable());
    std::iter::from_fn(move || match (a.peek(), b.peek()) {
        (Some(&x), Some(&y)) if y < x => b.next(),
        (Some(_), _) => a.next(),
        (None, _) => b.next(),
    })
}

#[cfg(test)]
mod tests {
    use super::merge_sorted;

    #[test]
    fn merging_keeps_sequence_order() {
        let merged: Vec<u64> =
            merge_sorted([1, 4, 5, 9].into_iter(), [2, 3, 10].into_iter()).collect();
        assert_eq!(merged, [1, 2, 3, 4, 5, 9, 10]);
        let merged: Vec<u64> = merge_sorted([].into_iter(), [7].into_iter()).collect();
        assert_eq!(merged, [7]);
    }
}
