//! Metrics: what `/metrics` exports (README "Metrics" lists every one) and the totals
//! `/api/overview` reports.
//!
//! # Layout
//! - [`Metrics`] is the broker-wide part, one per broker: histograms that sessions, queues
//!   and the sync thread observe, refusals made before a message reached a queue, and the
//!   totals of deleted queues.
//! - The per-queue counters are not here: they live in each queue's
//!   [`QueueStats`](crate::queue::QueueStats), relaxed atomics that only the queue's task
//!   writes.
//! - [`Exporter`] (`collector.rs`) is the one door for a scrape: at each scrape a
//!   prometheus-client collector encodes straight from those atomics. It never sends a queue
//!   a message, takes no lock a queue takes, and runs off the async workers, so scraping ten
//!   thousand queues does not slow publishing (BENCHMARKS.md, "Scraping /metrics").
//! - `histogram.rs`: a lock-free histogram; `counters.rs`: counts per wire error code.

mod chaos;
mod collector;
mod counters;
mod histogram;

use std::sync::atomic::Ordering;
use std::sync::Mutex;
use std::time::Duration;

pub use collector::{Exporter, Format};
pub use counters::RefusedCounts;
pub use histogram::{Histogram, HistogramSnapshot, Tally};

use crate::queue::{DeathReason, QueueStats};
use crate::storage::CommitObserver;
use histogram::{ms, us};

/// Bounds for latencies of the write path (publish→confirm, fdatasync): 100 µs to 10 s.
static WRITE_LATENCY_BOUNDS: [u64; 16] = [
    us(100),
    us(250),
    us(500),
    ms(1),
    ms(2) + us(500),
    ms(5),
    ms(10),
    ms(25),
    ms(50),
    ms(100),
    ms(250),
    ms(500),
    ms(1000),
    ms(2500),
    ms(5000),
    ms(10000),
];

/// Bounds for the time consumers take to ack: 1 ms up to the default lease (30 min).
static ACK_TIME_BOUNDS: [u64; 16] = [
    ms(1),
    ms(5),
    ms(10),
    ms(50),
    ms(100),
    ms(500),
    ms(1000),
    ms(5000),
    ms(10_000),
    ms(30_000),
    ms(60_000),
    ms(120_000),
    ms(300_000),
    ms(600_000),
    ms(900_000),
    ms(1_800_000),
];

/// Bounds for messages per group commit: powers of two up to 16384.
static COMMIT_SIZE_BOUNDS: [u64; 15] = [
    1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384,
];

/// The broker-wide metrics.
#[derive(Debug)]
pub struct Metrics {
    /// From a publish frame reaching its session to the release of its confirm (every
    /// message of the frame counts once).
    pub publish_confirm: Histogram,
    /// From a delivery to its ack.
    pub delivery_ack: Histogram,
    /// Messages made durable per group commit.
    pub group_commit: Histogram,
    /// Duration of each `fdatasync` (or `syncfs`) of the sync thread.
    pub fdatasync: Histogram,
    /// Messages refused before they reached a queue (too large, blocked, unroutable, bad
    /// meta), per code.
    pub refused: RefusedCounts,
    /// What deleted queues had counted, so the broker's totals never go down.
    retired: Mutex<MessageStats>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            publish_confirm: Histogram::seconds(&WRITE_LATENCY_BOUNDS),
            delivery_ack: Histogram::seconds(&ACK_TIME_BOUNDS),
            group_commit: Histogram::counts(&COMMIT_SIZE_BOUNDS),
            fdatasync: Histogram::seconds(&WRITE_LATENCY_BOUNDS),
            refused: RefusedCounts::default(),
            retired: Mutex::default(),
        }
    }
}

impl Metrics {
    /// Keeps the counts of a queue being deleted in the broker's totals.
    pub fn retire(&self, stats: &QueueStats) {
        let mut retired = self.retired.lock().unwrap_or_else(|e| e.into_inner());
        retired.add(&MessageStats::of(stats));
    }

    /// Totals since the broker started: the queues' counters plus the deleted queues'.
    pub fn totals<'a>(&self, queues: impl IntoIterator<Item = &'a QueueStats>) -> MessageStats {
        let mut total = *self.retired.lock().unwrap_or_else(|e| e.into_inner());
        for stats in queues {
            total.add(&MessageStats::of(stats));
        }
        total
    }
}

impl CommitObserver for Metrics {
    fn file_synced(&self, took: Duration) {
        self.fdatasync.observe_duration(took);
    }

    fn committed(&self, messages: u64) {
        self.group_commit.observe(messages);
    }
}

/// Message counters since the broker started, as `/api/overview` and `/api/queues` show them
/// (`message_stats`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct MessageStats {
    /// Messages stored in queues.
    pub published: u64,
    /// Deliveries (to consumers and `Get`), redeliveries included.
    pub delivered: u64,
    /// Deliveries of messages delivered before.
    pub redelivered: u64,
    /// Messages acknowledged.
    pub acked: u64,
    /// Deliveries returned with a requeue.
    pub nacked: u64,
    /// Deliveries rejected.
    pub rejected: u64,
    /// Messages whose TTL ran out.
    pub expired: u64,
    /// Messages moved to a dead-letter exchange, whatever the reason.
    pub dead_lettered: u64,
    /// Stored messages whose confirm is settled.
    pub confirmed: u64,
    /// Publishes confirmed without being stored: duplicates within a dedup window.
    pub duplicates_dropped: u64,
}

impl MessageStats {
    /// A queue's counters now.
    pub fn of(s: &QueueStats) -> Self {
        let load = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
        Self {
            published: load(&s.published),
            delivered: load(&s.delivered),
            redelivered: load(&s.redelivered),
            acked: load(&s.acked),
            nacked: load(&s.nacked),
            rejected: load(&s.rejected),
            expired: load(&s.expired),
            dead_lettered: DeathReason::ALL
                .iter()
                .map(|&r| load(&s.dead_lettered[r as usize]))
                .sum(),
            confirmed: load(&s.confirmed),
            duplicates_dropped: load(&s.duplicates_dropped),
        }
    }

    fn add(&mut self, o: &MessageStats) {
        self.published += o.published;
        self.delivered += o.delivered;
        self.redelivered += o.redelivered;
        self.acked += o.acked;
        self.nacked += o.nacked;
        self.rejected += o.rejected;
        self.expired += o.expired;
        self.dead_lettered += o.dead_lettered;
        self.confirmed += o.confirmed;
        self.duplicates_dropped += o.duplicates_dropped;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totals_keep_what_deleted_queues_counted() {
        let metrics = Metrics::default();
        let (gone, live) = (QueueStats::default(), QueueStats::default());
        gone.published.store(5, Ordering::Relaxed);
        gone.dead_lettered[DeathReason::Expired as usize].store(2, Ordering::Relaxed);
        live.published.store(3, Ordering::Relaxed);
        live.dead_lettered[DeathReason::Rejected as usize].store(1, Ordering::Relaxed);
        metrics.retire(&gone);
        let total = metrics.totals([&live]);
        assert_eq!(total.published, 8);
        assert_eq!(total.dead_lettered, 3);
    }
}
