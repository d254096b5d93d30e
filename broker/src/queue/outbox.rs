//! [`Outbox`]: the bytes on their way to one connection's socket, shared by the queues that
//! deliver to it, its session and its writer.
//!
//! Every byte meant for the socket is counted from the moment it is produced until the writer
//! has written it: deliveries from the moment a queue hands them out, replies from the moment
//! the session encodes them. Past [`Outbox::HIGH_WATER`] the connection is *full*: queues
//! stop delivering to its consumers (their messages go to other consumers) and the session
//! stops reading requests. When the writer brings the count below [`Outbox::LOW_WATER`] it
//! wakes the session, which tells the queues to resume.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use sluice_client::wire::Delivery;
use tokio::sync::Notify;

/// Bytes a delivery takes in a `Deliver` frame (protocol.md §9.5), as counted against an
/// [`Outbox`].
pub fn delivery_bytes(d: &Delivery) -> usize {
    d.encoded_len()
}

/// What a connection owes its socket; see the module documentation.
#[derive(Debug, Default)]
pub struct Outbox {
    bytes: AtomicUsize,
    /// Someone (a queue that paused a consumer, or the session) waits for the drain.
    wanted: AtomicBool,
    drained: Notify,
}

impl Outbox {
    /// Bytes a connection may have on their way to its socket before it counts as full.
    pub const HIGH_WATER: usize = 8 << 20;
    /// A full connection takes deliveries and requests again below this.
    pub const LOW_WATER: usize = Self::HIGH_WATER / 2;

    /// Bytes produced and not yet written.
    pub fn bytes(&self) -> usize {
        self.bytes.load(Ordering::SeqCst)
    }

    /// Whether the connection is full.
    pub fn is_full(&self) -> bool {
        self.bytes() >= Self::HIGH_WATER
    }

    /// Bytes that may still be produced before the connection is full.
    pub fn room(&self) -> usize {
        Self::HIGH_WATER.saturating_sub(self.bytes())
    }

    /// Counts `n` bytes produced for the socket.
    pub fn add(&self, n: usize) {
        self.bytes.fetch_add(n, Ordering::SeqCst);
    }

    /// Takes back `n` bytes counted with [`add`](Self::add): written, or handed on to be
    /// counted again in another form (a delivery encoded into a frame).
    pub fn remove(&self, n: usize) {
        let before = self.bytes.fetch_sub(n, Ordering::SeqCst);
        debug_assert!(before >= n, "outbox count below zero");
        if before - n < Self::LOW_WATER && self.wanted.swap(false, Ordering::SeqCst) {
            self.drained.notify_one();
        }
    }

    /// Whether more may be produced now; when full, asks for a wake-up at the drain first, so
    /// a drain that races with this check is never missed (the writer either sees the request
    /// or this sees its subtraction).
    pub fn accepts_more(&self) -> bool {
        if !self.is_full() {
            return true;
        }
        self.wanted.store(true, Ordering::SeqCst);
        !self.is_full()
    }

    /// Resolves once the count fell below [`LOW_WATER`](Self::LOW_WATER) after a wake-up was
    /// asked for with [`accepts_more`](Self::accepts_more) (spuriously at most once more).
    pub async fn drained(&self) {
        self.drained.notified().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_full_outbox_wakes_its_waiter_only_below_the_low_watermark() {
        let outbox = Outbox::default();
        outbox.add(Outbox::HIGH_WATER);
        assert!(outbox.is_full());
        assert!(!outbox.accepts_more());
        assert_eq!(outbox.room(), 0);
        // Still above the low watermark: nobody is woken.
        outbox.remove(Outbox::LOW_WATER);
        assert!(!outbox.is_full());
        let woken = tokio::time::timeout(std::time::Duration::from_millis(20), outbox.drained());
        assert!(woken.await.is_err());
        outbox.remove(1);
        tokio::time::timeout(std::time::Duration::from_secs(5), outbox.drained())
            .await
            .expect("woken below the low watermark");
        assert_eq!(outbox.bytes(), Outbox::LOW_WATER - 1);
    }

    #[tokio::test]
    async fn no_wake_up_is_sent_when_none_was_asked_for() {
        let outbox = Outbox::default();
        outbox.add(100);
        outbox.remove(100);
        let woken = tokio::time::timeout(std::time::Duration::from_millis(20), outbox.drained());
        assert!(woken.await.is_err());
    }
}
