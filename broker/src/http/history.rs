//! The recent past of the broker and of each queue, so the dashboard's charts show the last
//! minutes as soon as a page opens: `GET /api/overview/history` and
//! `GET /api/queues/NAME/history`.
//!
//! A sampler task reads every queue's live counters every [`SAMPLE_INTERVAL`] and keeps, per
//! sample, the depth (ready, unacked) and how many messages were published, delivered and
//! acknowledged since the previous sample; rates are those differences over the time between
//! the two samples. Broker totals are sums over the queues of the same sample, so a deleted
//! queue does not make a total drop.
//!
//! # Memory
//! The broker's history holds [`BROKER_SAMPLES`] samples (10 minutes, about 8 KiB). A queue's
//! holds [`QUEUE_SAMPLES`] (5 minutes) of [`QueueSample`]s, 20 bytes each with saturating
//! `u32` fields, in a ring allocated once: about 1.3 KiB per queue with its name and map entry,
//! so about 13 MiB for 10,000 queues. A deleted queue's history goes at the next sample.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::Json;

use super::access::Scope;
use super::auth::Monitoring;
use super::error::ApiError;
use super::Api;
use crate::auth::ResourceKind;
use crate::queue::{QueueHandle, QueueStats};

/// How often the sampler reads the counters.
pub const SAMPLE_INTERVAL: Duration = Duration::from_secs(5);
/// Broker-wide samples kept: 10 minutes.
pub const BROKER_SAMPLES: usize = 120;
/// Samples kept per queue: 5 minutes.
pub const QUEUE_SAMPLES: usize = 60;

/// Totals since a queue was created (this run), read from its live counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Totals {
    published: u64,
    delivered: u64,
    acked: u64,
}

impl Totals {
    fn of(stats: &QueueStats) -> Self {
        Totals {
            published: stats.published.load(Ordering::Relaxed),
            delivered: stats.delivered.load(Ordering::Relaxed),
            acked: stats.acked.load(Ordering::Relaxed),
        }
    }
}

/// Messages counted between two samples.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Counts {
    published: u64,
    delivered: u64,
    acked: u64,
}

impl Counts {
    /// What happened from `before` to `now`; a counter that went back (it cannot, short of a
    /// new queue under the same name, which is caught by its uid) counts as nothing.
    fn between(before: Totals, now: Totals) -> Self {
        Counts {
            published: now.published.saturating_sub(before.published),
            delivered: now.delivered.saturating_sub(before.delivered),
            acked: now.acked.saturating_sub(before.acked),
        }
    }

    fn add(&mut self, other: Counts) {
        self.published += other.published;
        self.delivered += other.delivered;
        self.acked += other.acked;
    }
}

/// One sample of one queue, compact: the history of 10,000 queues must stay small.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct QueueSample {
    ready: u32,
    unacked: u32,
    published: u32,
    delivered: u32,
    acked: u32,
}

fn clamp(n: u64) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// One sample of the whole broker.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct BrokerSample {
    ready: u64,
    unacked: u64,
    counts: Counts,
    consumers: u64,
    connections: u64,
}

/// When a sample was taken, and over how long its counts ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Tick {
    at_ms: u64,
    span_ms: u64,
}

/// A queue's samples, and the totals the next sample's counts start from.
#[derive(Debug)]
struct QueueTrack {
    /// Tells a queue from a new one declared under the same name.
    uid: u64,
    last: Totals,
    samples: VecDeque<QueueSample>,
}

/// A ring that forgets its oldest entry once full.
fn push_bounded<T>(ring: &mut VecDeque<T>, item: T, capacity: usize) {
    if ring.len() == capacity {
        ring.pop_front();
    }
    ring.push_back(item);
}

#[derive(Debug, Default)]
struct Samples {
    /// One per broker sample, oldest first; the last `n` also time a queue's last `n` samples.
    ticks: VecDeque<Tick>,
    broker: VecDeque<BrokerSample>,
    queues: HashMap<Arc<str>, QueueTrack>,
}

/// What one queue looked like at a sample, read by the sampler.
#[derive(Debug, Clone)]
struct QueueReading {
    name: Arc<str>,
    uid: u64,
    ready: u64,
    unacked: u64,
    consumers: u64,
    totals: Totals,
}

impl QueueReading {
    fn of(queue: &QueueHandle) -> Self {
        let stats = &queue.meta.stats;
        QueueReading {
            name: Arc::clone(&queue.meta.name),
            uid: queue.meta.uid,
            ready: stats.ready.load(Ordering::Relaxed),
            unacked: stats.unacked.load(Ordering::Relaxed),
            consumers: u64::from(stats.consumers.load(Ordering::Relaxed)),
            totals: Totals::of(stats),
        }
    }
}

impl Samples {
    /// Records one sample of every queue in `queues`, taken at `tick`.
    fn record(&mut self, tick: Tick, queues: &[QueueReading], connections: u64) {
        let mut broker = BrokerSample {
            connections,
            ..BrokerSample::default()
        };
        let mut seen = std::collections::HashSet::with_capacity(queues.len());
        for q in queues {
            seen.insert(Arc::clone(&q.name));
            let track = self
                .queues
                .entry(Arc::clone(&q.name))
                .or_insert_with(|| QueueTrack::new(q.uid));
            if track.uid != q.uid {
                *track = QueueTrack::new(q.uid);
            }
            // A queue first seen counts from its creation, when its counters were zero.
            let counts = Counts::between(track.last, q.totals);
            track.last = q.totals;
            let sample = QueueSample {
                ready: clamp(q.ready),
                unacked: clamp(q.unacked),
                published: clamp(counts.published),
                delivered: clamp(counts.delivered),
                acked: clamp(counts.acked),
            };
            push_bounded(&mut track.samples, sample, QUEUE_SAMPLES);
            broker.ready += q.ready;
            broker.unacked += q.unacked;
            broker.consumers += q.consumers;
            broker.counts.add(counts);
        }
        self.queues.retain(|name, _| seen.contains(name));
        push_bounded(&mut self.ticks, tick, BROKER_SAMPLES);
        push_bounded(&mut self.broker, broker, BROKER_SAMPLES);
    }

    fn broker_history(&self) -> BrokerHistory {
        let points = self
            .ticks
            .iter()
            .zip(&self.broker)
            .map(|(tick, s)| BrokerPoint {
                at_ms: tick.at_ms,
                ready: s.ready,
                unacked: s.unacked,
                publish_rate: per_second(s.counts.published, tick.span_ms),
                deliver_rate: per_second(s.counts.delivered, tick.span_ms),
                ack_rate: per_second(s.counts.acked, tick.span_ms),
                consumers: s.consumers,
                connections: s.connections,
            })
            .collect();
        BrokerHistory {
            interval_ms: SAMPLE_INTERVAL.as_millis() as u64,
            samples: points,
        }
    }

    fn queue_history(&self, name: &str) -> Option<QueueHistory> {
        let track = self.queues.get(name)?;
        // Every sample records every queue, so a queue's samples are the last ticks.
        let ticks = self
            .ticks
            .iter()
            .skip(self.ticks.len() - track.samples.len());
        let points = ticks
            .zip(&track.samples)
            .map(|(tick, s)| QueuePoint {
                at_ms: tick.at_ms,
                ready: s.ready,
                unacked: s.unacked,
                publish_rate: per_second(u64::from(s.published), tick.span_ms),
                deliver_rate: per_second(u64::from(s.delivered), tick.span_ms),
                ack_rate: per_second(u64::from(s.acked), tick.span_ms),
            })
            .collect();
        Some(QueueHistory {
            interval_ms: SAMPLE_INTERVAL.as_millis() as u64,
            samples: points,
        })
    }
}

impl Samples {
    /// The rates of queue `name` in its latest sample, if it has one.
    fn latest_rates(&self, name: &str) -> Option<Rates> {
        let track = self.queues.get(name)?;
        let sample = track.samples.back()?;
        let span_ms = self.ticks.back()?.span_ms;
        Some(Rates {
            publish: per_second(u64::from(sample.published), span_ms),
            deliver: per_second(u64::from(sample.delivered), span_ms),
            ack: per_second(u64::from(sample.acked), span_ms),
        })
    }
}

/// Messages per second of one queue over its latest sample, as listings show them.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Rates {
    publish: f64,
    deliver: f64,
    ack: f64,
}

impl QueueTrack {
    fn new(uid: u64) -> Self {
        QueueTrack {
            uid,
            last: Totals::default(),
            samples: VecDeque::with_capacity(QUEUE_SAMPLES),
        }
    }
}

/// Messages per second, to a tenth.
fn per_second(count: u64, span_ms: u64) -> f64 {
    if span_ms == 0 {
        return 0.0;
    }
    (count as f64 * 10_000.0 / span_ms as f64).round() / 10.0
}

/// The sampled past, shared by the sampler and the handlers.
#[derive(Default)]
pub struct History {
    samples: Mutex<Samples>,
}

impl std::fmt::Debug for History {
    // The samples of 10,000 queues are no debug output.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let samples = self.lock();
        f.debug_struct("History")
            .field("samples", &samples.ticks.len())
            .field("queues", &samples.queues.len())
            .finish()
    }
}

impl History {
    fn lock(&self) -> MutexGuard<'_, Samples> {
        // A panic while recording leaves at worst a sample short: keep serving.
        self.samples.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl History {
    /// The rates of each of `names` in its latest sample (`None` for a queue not sampled
    /// yet), for listings: one lock for the whole list.
    pub fn latest_rates<'a>(&self, names: impl Iterator<Item = &'a str>) -> Vec<Option<Rates>> {
        let samples = self.lock();
        names.map(|n| samples.latest_rates(n)).collect()
    }
}

/// Samples the broker every [`SAMPLE_INTERVAL`] into `api`'s history, the first right away;
/// runs until aborted.
pub async fn sample(api: Api) {
    let mut interval = tokio::time::interval(SAMPLE_INTERVAL);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last: Option<tokio::time::Instant> = None;
    loop {
        let now = interval.tick().await;
        let span = last.map_or(SAMPLE_INTERVAL, |l| now - l);
        last = Some(now);
        let readings: Vec<QueueReading> =
            api.broker.queues().iter().map(QueueReading::of).collect();
        let tick = Tick {
            at_ms: crate::queue::unix_now_ms(),
            span_ms: span.as_millis() as u64,
        };
        let connections = api.connections.len() as u64;
        api.history.lock().record(tick, &readings, connections);
    }
}

/// `GET /api/overview/history`.
#[derive(Debug, serde::Serialize)]
pub struct BrokerHistory {
    interval_ms: u64,
    samples: Vec<BrokerPoint>,
}

/// One sample of `GET /api/overview/history`.
#[derive(Debug, serde::Serialize)]
struct BrokerPoint {
    at_ms: u64,
    ready: u64,
    unacked: u64,
    publish_rate: f64,
    deliver_rate: f64,
    ack_rate: f64,
    consumers: u64,
    connections: u64,
}

/// `GET /api/queues/NAME/history`.
#[derive(Debug, serde::Serialize)]
pub struct QueueHistory {
    interval_ms: u64,
    samples: Vec<QueuePoint>,
}

/// One sample of `GET /api/queues/NAME/history`.
#[derive(Debug, serde::Serialize)]
struct QueuePoint {
    at_ms: u64,
    ready: u32,
    unacked: u32,
    publish_rate: f64,
    deliver_rate: f64,
    ack_rate: f64,
}

/// `GET /api/overview/history`: the broker's samples of the last 10 minutes, oldest first.
pub async fn broker(_: Monitoring, State(api): State<Api>) -> Json<BrokerHistory> {
    Json(api.history.lock().broker_history())
}

/// `GET /api/queues/NAME/history`: the queue's samples of the last 5 minutes, oldest first;
/// `404` for a queue that does not exist. A queue declared since the last sample has none yet.
pub async fn queue(
    State(api): State<Api>,
    scope: Scope,
    Path(name): Path<String>,
) -> Result<Json<QueueHistory>, ApiError> {
    let name = scope.grant_any(ResourceKind::Queue, &name)?;
    if let Some(history) = api.history.lock().queue_history(&name) {
        return Ok(Json(history));
    }
    let conn = api.broker.next_conn_id();
    // Exists (and may be looked at) but was not sampled yet: an empty history.
    api.broker
        .queue(&name, conn)
        .map_err(|e| scope.localize(e))?;
    Ok(Json(QueueHistory {
        interval_ms: SAMPLE_INTERVAL.as_millis() as u64,
        samples: Vec::new(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reading(name: &str, uid: u64, ready: u64, published: u64, acked: u64) -> QueueReading {
        QueueReading {
            name: Arc::from(name),
            uid,
            ready,
            unacked: 1,
            consumers: 2,
            totals: Totals {
                published,
                delivered: 0,
                acked,
            },
        }
    }

    fn tick(at_ms: u64) -> Tick {
        Tick {
            at_ms,
            span_ms: 5_000,
        }
    }

    #[test]
    fn rates_are_counter_differences_over_the_time_between_samples() {
        let mut s = Samples::default();
        s.record(tick(5_000), &[reading("a", 1, 10, 100, 50)], 3);
        s.record(tick(10_000), &[reading("a", 1, 12, 150, 60)], 3);
        let q = s.queue_history("a").unwrap();
        assert_eq!(q.samples.len(), 2);
        assert_eq!(q.samples[1].publish_rate, 10.0);
        assert_eq!(q.samples[1].ack_rate, 2.0);
        assert_eq!(q.samples[1].ready, 12);
        let b = s.broker_history();
        assert_eq!(b.samples[1].publish_rate, 10.0);
        assert_eq!(b.samples[1].unacked, 1);
        assert_eq!(b.samples[1].consumers, 2);
        assert_eq!(b.samples[1].connections, 3);
    }

    #[test]
    fn a_listing_gets_each_queue_s_latest_rates() {
        let mut s = Samples::default();
        let mut a = reading("a", 1, 0, 10, 0);
        s.record(tick(5_000), &[a.clone()], 0);
        a.totals.delivered = 25;
        a.totals.published = 13;
        s.record(tick(10_000), &[a], 0);
        let rates = Rates {
            publish: 0.6,
            deliver: 5.0,
            ack: 0.0,
        };
        assert_eq!(s.latest_rates("a"), Some(rates));
        assert_eq!(s.latest_rates("b"), None);
    }

    #[test]
    fn broker_totals_sum_the_queues_and_a_deleted_queue_is_forgotten() {
        let mut s = Samples::default();
        s.record(
            tick(5_000),
            &[reading("a", 1, 1, 0, 0), reading("b", 2, 2, 0, 0)],
            0,
        );
        s.record(tick(10_000), &[reading("b", 2, 4, 10, 0)], 0);
        assert!(s.queue_history("a").is_none());
        let b = s.broker_history();
        assert_eq!(b.samples[0].ready, 3);
        assert_eq!(b.samples[1].ready, 4);
        assert_eq!(b.samples[1].publish_rate, 2.0);
    }

    #[test]
    fn a_queue_declared_again_under_its_name_starts_a_new_history() {
        let mut s = Samples::default();
        s.record(tick(5_000), &[reading("a", 1, 0, 1_000, 0)], 0);
        s.record(tick(10_000), &[reading("a", 7, 0, 5, 0)], 0);
        let q = s.queue_history("a").unwrap();
        assert_eq!(q.samples.len(), 1);
        assert_eq!(q.samples[0].publish_rate, 1.0);
        assert_eq!(q.samples[0].at_ms, 10_000);
    }

    #[test]
    fn history_is_bounded_and_a_queue_s_samples_line_up_with_the_latest_ticks() {
        let mut s = Samples::default();
        for i in 0..(BROKER_SAMPLES as u64 + 10) {
            s.record(tick(i), &[reading("old", 1, i, 0, 0)], 0);
        }
        s.record(tick(1_000), &[reading("new", 2, 9, 0, 0)], 0);
        assert_eq!(s.broker_history().samples.len(), BROKER_SAMPLES);
        let new = s.queue_history("new").unwrap();
        assert_eq!(new.samples.len(), 1);
        assert_eq!(new.samples[0].at_ms, 1_000);
        assert_eq!(s.queues.len(), 1);
    }

    #[test]
    fn a_queue_keeps_five_minutes() {
        let mut s = Samples::default();
        for i in 0..(QUEUE_SAMPLES as u64 * 3) {
            s.record(tick(i), &[reading("q", 1, i, 0, 0)], 0);
        }
        let q = s.queue_history("q").unwrap();
        assert_eq!(q.samples.len(), QUEUE_SAMPLES);
        assert_eq!(
            q.samples.last().unwrap().ready as u64,
            QUEUE_SAMPLES as u64 * 3 - 1
        );
    }

    #[test]
    fn counts_past_u32_saturate_instead_of_wrapping() {
        assert_eq!(clamp(u64::MAX), u32::MAX);
        assert_eq!(clamp(7), 7);
    }
}
