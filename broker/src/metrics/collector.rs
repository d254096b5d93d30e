//! The scrape: a prometheus-client [`Collector`] that encodes every metric straight from the
//! queues' atomics and the broker-wide [`Metrics`](super::Metrics).
//!
//! Names and labels are the contract listed in README ("Metrics"); a test compares a live
//! scrape with that list. Counters are named here without `_total`: the encoders add it.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeCounterValue, EncodeGaugeValue, NoLabelSet,
};
use prometheus_client::metrics::exemplar::Exemplar;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};

use super::HistogramSnapshot;
use crate::broker::Broker;
use crate::connection::ConnectionRegistry;
use crate::queue::{DeathReason, QueueHandle, QueueStats};
use crate::routing::namespace;

/// The text format of a scrape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// OpenMetrics 1.0 text, what Prometheus asks for first (the default).
    OpenMetrics,
    /// The Prometheus text format 0.0.4, for clients that ask for `text/plain` only (older
    /// scrapers, `promtool check metrics`).
    PrometheusText,
}

impl Format {
    /// The format an `Accept` header asks for: OpenMetrics when it names it, or names
    /// neither format (`*/*`, no header); the Prometheus text format when it asks for
    /// `text/plain` and not OpenMetrics.
    pub fn from_accept(accept: Option<&str>) -> Self {
        let accept = accept.unwrap_or("").to_ascii_lowercase();
        if !accept.contains("application/openmetrics-text") && accept.contains("text/plain") {
            Format::PrometheusText
        } else {
            Format::OpenMetrics
        }
    }

    /// The answer's `Content-Type`.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
            Format::PrometheusText => prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
        }
    }
}

/// Renders the broker's metrics; cheap to share.
#[derive(Debug)]
pub struct Exporter {
    registry: Registry,
    broker: Arc<Broker>,
}

impl Exporter {
    /// The exporter of `broker`, whose server lists its connections in `connections`.
    pub(crate) fn new(broker: Arc<Broker>, connections: Arc<ConnectionRegistry>) -> Self {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(BrokerCollector {
            broker: Arc::clone(&broker),
            connections,
        }));
        Self { registry, broker }
    }

    /// One scrape's text. Reads atomics only; the caller runs it off the async workers
    /// (tens of milliseconds for ten thousand queues).
    pub fn render(&self, format: Format) -> String {
        // About 1 KiB of text per queue.
        let queues = self.broker.read().queues.len();
        let mut out = String::with_capacity(4096 + queues * 1024);
        let written = match format {
            Format::OpenMetrics => {
                prometheus_client::encoding::text::encode(&mut out, &self.registry)
            }
            Format::PrometheusText => {
                prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)
            }
        };
        // Writing into a String cannot fail, and the collector itself never fails.
        written.expect("encoding metrics into a String");
        out
    }
}

#[derive(Debug)]
struct BrokerCollector {
    broker: Arc<Broker>,
    connections: Arc<ConnectionRegistry>,
}

impl Collector for BrokerCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> fmt::Result {
        let registry = self.broker.read();
        let mut queues: Vec<&QueueHandle> = registry.queues.values().collect();
        queues.sort_unstable_by(|a, b| a.meta.name.cmp(&b.meta.name));
        self.encode_broker(&mut enc, queues.len())?;
        encode_queue_gauges(&mut enc, &queues)?;
        encode_queue_counters(&mut enc, &queues)?;
        encode_circuits(&mut enc, &queues)?;
        super::chaos::encode_queue_chaos(&mut enc, &queues)?;
        self.encode_histograms(&mut enc)
    }
}

impl BrokerCollector {
    fn encode_broker(&self, enc: &mut DescriptorEncoder, queues: usize) -> fmt::Result {
        let broker = &self.broker;
        gauge(enc, "sluice_queues", "Queues.", None, queues as u64)?;
        gauge(
            enc,
            "sluice_connections",
            "Client connections (wire protocol) open now.",
            None,
            self.connections.len() as u64,
        )?;
        gauge(
            enc,
            "sluice_publishing_blocked",
            "1 while publishers are blocked (disk space, memory), else 0.",
            None,
            u64::from(broker.is_blocked()),
        )?;
        // Left out when the file system cannot say (the broker's disk watch logs that).
        if let Ok(st) = rustix::fs::statvfs(&broker.config.data_dir) {
            gauge(
                enc,
                "sluice_disk_free",
                "Free space for the broker on the data directory's file system.",
                Some(&Unit::Bytes),
                st.f_bavail.saturating_mul(st.f_frsize),
            )?;
        }
        let refused = &broker.metrics().refused;
        let mut m = enc.encode_descriptor(
            "sluice_publish_refused_messages",
            "Messages refused before they reached any queue (too large, blocked, unroutable, malformed), by wire error code.",
            None,
            MetricType::Counter,
        )?;
        for (code, n) in refused.nonzero() {
            let labels = [("code", code.name())];
            counter_value(&mut m.encode_family(&labels)?, n)?;
        }
        if let Some(t) = broker.telemetry() {
            encode_span_export(enc, t.stats())?;
        }
        Ok(())
    }

    fn encode_histograms(&self, enc: &mut DescriptorEncoder) -> fmt::Result {
        let m = self.broker.metrics();
        histogram(
            enc,
            "sluice_publish_confirm",
            "Time from a publish frame reaching the broker to the release of its confirm, per message.",
            Some(&Unit::Seconds),
            &m.publish_confirm.snapshot(),
        )?;
        histogram(
            enc,
            "sluice_group_commit_messages",
            "Messages made durable by one group commit (one round of fdatasync calls).",
            None,
            &m.group_commit.snapshot(),
        )?;
        histogram(
            enc,
            "sluice_fdatasync",
            "Duration of each fdatasync (or syncfs) of the group commit.",
            Some(&Unit::Seconds),
            &m.fdatasync.snapshot(),
        )?;
        histogram(
            enc,
            "sluice_delivery_ack",
            "Time from a delivery to its ack.",
            Some(&Unit::Seconds),
            &m.delivery_ack.snapshot(),
        )
    }
}

fn load(c: &AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}

fn encode_queue_gauges(enc: &mut DescriptorEncoder, queues: &[&QueueHandle]) -> fmt::Result {
    per_queue_gauge(
        enc,
        queues,
        "sluice_queue_ready_messages",
        "Messages ready for delivery (not counting those delivered and not yet settled).",
        None,
        |s| load(&s.ready),
    )?;
    encode_ready_by_priority(enc, queues)?;
    per_queue_gauge(
        enc,
        queues,
        "sluice_queue_unacked_messages",
        "Messages delivered and not yet settled.",
        None,
        |s| load(&s.unacked),
    )?;
    per_queue_gauge(
        enc,
        queues,
        "sluice_queue_consumers",
        "Consumers of the queue.",
        None,
        |s| u64::from(s.consumers.load(Ordering::Relaxed)),
    )?;
    per_queue_gauge(
        enc,
        queues,
        "sluice_queue_scheduled_messages",
        "Messages stored but waiting for their time (delayed, or requeued with a delay); not ready.",
        None,
        |s| load(&s.scheduled),
    )?;
    per_queue_gauge(
        enc,
        queues,
        "sluice_queue_standby_consumers",
        "Consumers waiting as standbys of a single-active-consumer queue.",
        None,
        |s| {
            let list = s.consumers_list.lock().unwrap_or_else(|e| e.into_inner());
            list.iter().filter(|c| !c.active).count() as u64
        },
    )?;
    let now_ms = crate::queue::unix_now_ms();
    per_queue_gauge(
        enc,
        queues,
        "sluice_queue_oldest_ready_age",
        "Age of the oldest ready message (0 when none is ready).",
        Some(&Unit::Seconds),
        |s| s.oldest_ready_age_ms(now_ms) as f64 / 1000.0,
    )?;
    per_queue_gauge(
        enc,
        queues,
        "sluice_queue_message",
        "Metadata and body bytes of the queue's ready and unacked messages.",
        Some(&Unit::Bytes),
        |s| load(&s.bytes),
    )
}

/// Ready messages per priority, for the queues with `max_priority` only (each with a series
/// per priority, 0 to its maximum).
fn encode_ready_by_priority(enc: &mut DescriptorEncoder, queues: &[&QueueHandle]) -> fmt::Result {
    let mut m = enc.encode_descriptor(
        "sluice_queue_ready_by_priority_messages",
        "Messages ready for delivery in a queue with max_priority, by priority.",
        None,
        MetricType::Gauge,
    )?;
    for q in queues {
        let Some(max) = q.meta.arguments.max_priority else {
            continue;
        };
        let name = namespace::split(&q.meta.name);
        let stats = &q.meta.stats;
        for (priority, ready) in stats.ready_by_priority.iter().enumerate() {
            if priority > usize::from(max) {
                break;
            }
            let priority = priority.to_string();
            let labels = [
                ("vhost", name.vhost),
                ("queue", name.local),
                ("priority", priority.as_str()),
            ];
            m.encode_family(&labels)?.encode_gauge(&load(ready))?;
        }
    }
    Ok(())
}

/// A per-queue counter without labels of its own.
struct QueueCounter {
    name: &'static str,
    help: &'static str,
    counter: fn(&QueueStats) -> &AtomicU64,
}

const QUEUE_COUNTERS: [QueueCounter; 9] = [
    QueueCounter {
        name: "sluice_queue_published_messages",
        help: "Messages stored in the queue (published to it, or dead-lettered into it).",
        counter: |s| &s.published,
    },
    QueueCounter {
        name: "sluice_queue_confirmed_messages",
        help: "Stored messages whose part of the publisher's confirm is settled (durable, or transient).",
        counter: |s| &s.confirmed,
    },
    QueueCounter {
        name: "sluice_queue_delivered_messages",
        help: "Deliveries to consumers and gets, redeliveries included.",
        counter: |s| &s.delivered,
    },
    QueueCounter {
        name: "sluice_queue_redelivered_messages",
        help: "Deliveries of messages that may have been delivered before.",
        counter: |s| &s.redelivered,
    },
    QueueCounter {
        name: "sluice_queue_acked_messages",
        help: "Messages acknowledged.",
        counter: |s| &s.acked,
    },
    QueueCounter {
        name: "sluice_queue_nacked_messages",
        help: "Deliveries returned to the queue (nack with requeue).",
        counter: |s| &s.nacked,
    },
    QueueCounter {
        name: "sluice_queue_rejected_messages",
        help: "Deliveries rejected (dead-lettered, or dropped without a dead-letter exchange).",
        counter: |s| &s.rejected,
    },
    QueueCounter {
        name: "sluice_queue_expired_messages",
        help: "Messages whose TTL ran out in the queue.",
        counter: |s| &s.expired,
    },
    QueueCounter {
        name: "sluice_queue_duplicates_dropped_messages",
        help: "Publishes confirmed without being stored: duplicates of a message_id in the queue's dedup window.",
        counter: |s| &s.duplicates_dropped,
    },
];

/// A per-queue counter family split by dead-letter reason. Only the reasons that happened:
/// four zero series for each of ten thousand queues would be a third of the scrape.
fn encode_by_reason(
    enc: &mut DescriptorEncoder,
    queues: &[&QueueHandle],
    name: &str,
    help: &str,
    counters: fn(&QueueStats) -> &[AtomicU64; DeathReason::ALL.len()],
) -> fmt::Result {
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
    for q in queues {
        for reason in DeathReason::ALL {
            let n = load(&counters(&q.meta.stats)[reason as usize]);
            if n > 0 {
                let name = namespace::split(&q.meta.name);
                let labels = [
                    ("vhost", name.vhost),
                    ("queue", name.local),
                    ("reason", reason.as_str()),
                ];
                counter_value(&mut m.encode_family(&labels)?, n)?;
            }
        }
    }
    Ok(())
}

fn encode_queue_counters(enc: &mut DescriptorEncoder, queues: &[&QueueHandle]) -> fmt::Result {
    for c in &QUEUE_COUNTERS {
        let mut m = enc.encode_descriptor(c.name, c.help, None, MetricType::Counter)?;
        for q in queues {
            let name = namespace::split(&q.meta.name);
            let labels = [("vhost", name.vhost), ("queue", name.local)];
            counter_value(
                &mut m.encode_family(&labels)?,
                load((c.counter)(&q.meta.stats)),
            )?;
        }
    }
    encode_by_reason(
        enc,
        queues,
        "sluice_queue_dead_lettered_messages",
        "Messages moved to the queue's dead-letter exchange, by reason (rejected, expired, maxlen, delivery-limit; only reasons that happened).",
        |s| &s.dead_lettered,
    )?;
    encode_by_reason(
        enc,
        queues,
        "sluice_queue_dead_letters_dropped_messages",
        "Messages to be dead-lettered that were dropped because the queue's dead-letter exchange does not exist or routes them nowhere, by reason (only reasons that happened).",
        |s| &s.dead_letters_dropped,
    )?;
    let mut m = enc.encode_descriptor(
        "sluice_queue_refused_messages",
        "Messages the queue refused, by wire error code (only codes that refused any).",
        None,
        MetricType::Counter,
    )?;
    for q in queues {
        for (code, n) in q.meta.stats.refused.nonzero() {
            let name = namespace::split(&q.meta.name);
            let labels = [
                ("vhost", name.vhost),
                ("queue", name.local),
                ("code", code.name()),
            ];
            counter_value(&mut m.encode_family(&labels)?, n)?;
        }
    }
    Ok(())
}

/// Consumer circuit breaking (docs/circuit-breaking.md): open circuits now, and trips.
fn encode_circuits(enc: &mut DescriptorEncoder, queues: &[&QueueHandle]) -> fmt::Result {
    per_queue_gauge(
        enc,
        queues,
        "sluice_consumer_circuit_open",
        "Consumers of the queue whose circuit is open (receiving nothing until their cool-down ends).",
        None,
        |s| u64::from(s.circuits_open.load(Ordering::Relaxed)),
    )?;
    let mut m = enc.encode_descriptor(
        "sluice_circuit_trips",
        "Times a consumer's circuit opened (too many nacks, rejects or lease timeouts in its window).",
        None,
        MetricType::Counter,
    )?;
    for q in queues {
        let name = namespace::split(&q.meta.name);
        let labels = [("vhost", name.vhost), ("queue", name.local)];
        counter_value(
            &mut m.encode_family(&labels)?,
            load(&q.meta.stats.circuit_trips),
        )?;
    }
    Ok(())
}

fn per_queue_gauge<V: EncodeGaugeValue>(
    enc: &mut DescriptorEncoder,
    queues: &[&QueueHandle],
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    value: impl Fn(&QueueStats) -> V,
) -> fmt::Result {
    let mut m = enc.encode_descriptor(name, help, unit, MetricType::Gauge)?;
    for q in queues {
        let name = namespace::split(&q.meta.name);
        let labels = [("vhost", name.vhost), ("queue", name.local)];
        m.encode_family(&labels)?
            .encode_gauge(&value(&q.meta.stats))?;
    }
    Ok(())
}

/// The OTLP exporter's counters (only with `--otlp-endpoint`).
fn encode_span_export(
    enc: &mut DescriptorEncoder,
    stats: &crate::telemetry::ExportStats,
) -> fmt::Result {
    let families = [
        (
            "sluice_otlp_spans_exported",
            "Spans the OTLP collector accepted.",
            &stats.exported,
        ),
        (
            "sluice_otlp_spans_dropped",
            "Spans dropped: the exporter was behind, or the collector failed or refused them.",
            &stats.dropped,
        ),
    ];
    for (name, help, value) in families {
        let mut m = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
        counter_value(&mut m, load(value))?;
    }
    Ok(())
}

fn gauge(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    value: u64,
) -> fmt::Result {
    enc.encode_descriptor(name, help, unit, MetricType::Gauge)?
        .encode_gauge(&value)
}

pub(super) fn counter_value(
    m: &mut prometheus_client::encoding::MetricEncoder,
    value: impl EncodeCounterValue,
) -> fmt::Result {
    m.encode_counter::<NoLabelSet, _, u64>(&value, None::<&Exemplar<NoLabelSet, u64>>)
}

fn histogram(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    h: &HistogramSnapshot,
) -> fmt::Result {
    enc.encode_descriptor(name, help, unit, MetricType::Histogram)?
        .encode_histogram::<NoLabelSet>(h.sum, h.count, &h.buckets, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openmetrics_unless_only_the_prometheus_text_format_is_asked_for() {
        let prometheus_server = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert_eq!(
            Format::from_accept(Some(prometheus_server)),
            Format::OpenMetrics
        );
        assert_eq!(Format::from_accept(None), Format::OpenMetrics);
        assert_eq!(Format::from_accept(Some("*/*")), Format::OpenMetrics);
        assert_eq!(
            Format::from_accept(Some("text/plain; version=0.0.4")),
            Format::PrometheusText
        );
        assert_eq!(
            Format::from_accept(Some("Text/Plain")),
            Format::PrometheusText
        );
    }
}
