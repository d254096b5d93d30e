//! Browsing: the queue shows its ready messages, in sequence order, without taking them. No
//! delivery tag, no lease, no delivery counted, no counter changed: a consumer that takes
//! them afterwards gets exactly what it would have got without the browse.

use sluice_client::wire::{BrowseQueueOk, BrowsedMessage, MIN_BROWSED_LEN};

use super::Actor;
use crate::queue::BrowsePage;

impl Actor {
    /// The ready messages after `page.after_seq`, as many as `page` allows.
    pub(super) fn browse(&self, page: &BrowsePage) -> BrowseQueueOk {
        let mut seqs = self.ready.after(page.after_seq).peekable();
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

    fn browsed(&self, seq: u64) -> Option<BrowsedMessage> {
        let message = self.log.as_ref()?.read(seq).ok()?;
        let count = self.ready.delivery_count(seq);
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
