//! The result of a run: [`Report`], printed as a table and serialised as JSON.

use std::fmt::Write as _;
use std::sync::atomic::Ordering;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

use super::proc::{DiskUsage, PhaseStats};
use super::{Backend, Shared, Workload};

const MIB: f64 = 1024.0 * 1024.0;

pub(crate) fn ser_secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

pub(crate) fn ser_opt_secs<S: serde::Serializer>(
    d: &Option<Duration>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.serialize_some(&d.as_secs_f64()),
        None => s.serialize_none(),
    }
}

/// Message counts, and whether every message arrived.
#[derive(Debug, Clone, Serialize)]
pub struct Counts {
    /// Messages handed to the client library.
    pub sent: u64,
    /// Messages the broker confirmed.
    pub confirmed: u64,
    /// Messages refused, or whose confirm failed.
    pub failed: u64,
    /// Deliveries expected: confirmed × fan-out.
    pub expected: u64,
    /// Deliveries received, duplicates included.
    pub received: u64,
    /// Body bytes received.
    pub received_bytes: u64,
    /// Deliveries of a message already received on the same queue.
    pub duplicates: u64,
    /// Deliveries whose body was not one of ours.
    pub malformed: u64,
    /// Expected deliveries that never arrived.
    pub missing: u64,
    /// Every confirmed message arrived on every queue it was routed to, once, with all its
    /// bytes, and nothing failed.
    pub complete: bool,
    /// The run stopped waiting for deliveries (none came for the drain timeout).
    pub timed_out: bool,
}

/// Rates.
#[derive(Debug, Clone, Serialize)]
pub struct Throughput {
    /// Seconds from the first publish to the last confirm.
    pub publish_seconds: f64,
    /// Confirmed messages per second while publishing.
    pub publish_msgs_per_s: f64,
    pub publish_mib_per_s: f64,
    /// Seconds from the start of delivery (the first publish; for a backlog run, the start
    /// of the drain) to the last delivery.
    pub deliver_seconds: f64,
    /// Deliveries per second over `deliver_seconds`: the end-to-end rate.
    pub deliver_msgs_per_s: f64,
    pub deliver_mib_per_s: f64,
}

/// Latency percentiles, milliseconds.
#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    pub samples: u64,
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

impl Latency {
    fn of(h: &Histogram<u64>) -> Latency {
        let q = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
        Latency {
            samples: h.len(),
            mean_ms: h.mean() / 1000.0,
            p50_ms: q(0.5),
            p90_ms: q(0.9),
            p99_ms: q(0.99),
            p999_ms: q(0.999),
            max_ms: h.max() as f64 / 1000.0,
        }
    }
}

/// The broker's resources.
#[derive(Debug, Clone, Serialize)]
pub struct Resources {
    /// Backlog runs: RSS while publishing with no consumer.
    pub publish_phase: Option<PhaseStats>,
    /// RSS while delivering (the whole run, or a backlog run's drain).
    pub deliver_phase: PhaseStats,
    /// RSS at the end, after the settle time.
    pub rss_after_bytes: Option<u64>,
    /// Disk use of the data directory at the end.
    pub disk_after: Option<DiskUsage>,
    /// CPU seconds the broker used during the run.
    pub broker_cpu_seconds: Option<f64>,
    /// CPU seconds the generator used during the run.
    pub generator_cpu_seconds: Option<f64>,
}

/// Everything a run measured.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub label: String,
    pub backend: Backend,
    pub workload: Workload,
    pub counts: Counts,
    pub throughput: Throughput,
    pub latency: Latency,
    /// Publish→confirm latency, milliseconds: what a publisher waits for durability.
    pub confirm_latency: Latency,
    pub resources: Resources,
    /// The first error a task hit.
    pub error: Option<String>,
}

pub(crate) struct Inputs<'a> {
    pub label: String,
    pub backend: Backend,
    pub workload: Workload,
    pub shared: &'a Shared,
    pub latency: Histogram<u64>,
    pub confirm_latency: Histogram<u64>,
    pub expected: u64,
    pub timed_out: bool,
    pub publish_start_ns: u64,
    pub publish_end_ns: u64,
    pub drain_start_ns: u64,
    pub end_ns: u64,
    pub publish_phase: Option<PhaseStats>,
    pub deliver_phase: PhaseStats,
    pub rss_after: Option<u64>,
    pub disk: Option<DiskUsage>,
    pub broker_cpu: Option<f64>,
    pub self_cpu: Option<f64>,
    pub error: Option<String>,
}

impl Report {
    pub(crate) fn build(i: Inputs<'_>) -> Report {
        let s = i.shared;
        let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        let (received, duplicates) = (load(&s.received), load(&s.duplicates));
        let malformed = load(&s.malformed);
        let unique = received - duplicates - malformed;
        let size = i.workload.size as f64;
        let counts = Counts {
            sent: load(&s.sent),
            confirmed: load(&s.confirmed),
            failed: load(&s.failed),
            expected: i.expected,
            received,
            received_bytes: load(&s.received_bytes),
            duplicates,
            malformed,
            missing: i.expected.saturating_sub(unique),
            complete: false,
            timed_out: i.timed_out,
        };
        let complete = i.error.is_none()
            && counts.failed == 0
            && counts.sent == counts.confirmed
            && duplicates == 0
            && malformed == 0
            && unique == i.expected
            && counts.received_bytes == received * i.workload.size as u64;
        let secs = |a: u64, b: u64| b.saturating_sub(a) as f64 / 1e9;
        let publish_seconds = secs(i.publish_start_ns, i.publish_end_ns);
        let deliver_seconds = secs(i.drain_start_ns, i.end_ns);
        let per_s = |n: u64, t: f64| if t > 0.0 { n as f64 / t } else { 0.0 };
        let publish_msgs_per_s = per_s(counts.confirmed, publish_seconds);
        let deliver_msgs_per_s = per_s(received, deliver_seconds);
        Report {
            label: i.label,
            backend: i.backend,
            throughput: Throughput {
                publish_seconds,
                publish_msgs_per_s,
                publish_mib_per_s: publish_msgs_per_s * size / MIB,
                deliver_seconds,
                deliver_msgs_per_s,
                deliver_mib_per_s: deliver_msgs_per_s * size / MIB,
            },
            latency: Latency::of(&i.latency),
            confirm_latency: Latency::of(&i.confirm_latency),
            resources: Resources {
                publish_phase: i.publish_phase,
                deliver_phase: i.deliver_phase,
                rss_after_bytes: i.rss_after,
                disk_after: i.disk,
                broker_cpu_seconds: i.broker_cpu,
                generator_cpu_seconds: i.self_cpu,
            },
            counts: Counts { complete, ..counts },
            workload: i.workload,
            error: i.error,
        }
    }

    /// A human-readable table.
    pub fn table(&self) -> String {
        let w = &self.workload;
        let t = &self.throughput;
        let l = &self.latency;
        let c = &self.counts;
        let r = &self.resources;
        let mib =
            |b: Option<u64>| b.map_or("-".to_owned(), |b| format!("{:.1} MiB", b as f64 / MIB));
        let mut out = String::new();
        let mut row = |k: &str, v: String| {
            let _ = writeln!(out, "  {k:<22} {v}");
        };
        row(
            "run",
            format!("{} [{}] {}", self.label, self.backend.name(), describe(w)),
        );
        row(
            "published",
            format!(
                "{} confirmed of {} sent ({} failed) in {:.2} s: {:.0} msg/s, {:.1} MiB/s",
                c.confirmed,
                c.sent,
                c.failed,
                t.publish_seconds,
                t.publish_msgs_per_s,
                t.publish_mib_per_s
            ),
        );
        row(
            "delivered",
            format!(
                "{} of {} expected in {:.2} s: {:.0} msg/s, {:.1} MiB/s",
                c.received,
                c.expected,
                t.deliver_seconds,
                t.deliver_msgs_per_s,
                t.deliver_mib_per_s
            ),
        );
        row(
            "check",
            format!(
                "{} (missing {}, duplicates {}, malformed {}, bytes {}{})",
                if c.complete { "COMPLETE" } else { "INCOMPLETE" },
                c.missing,
                c.duplicates,
                c.malformed,
                c.received_bytes,
                if c.timed_out { ", timed out" } else { "" }
            ),
        );
        row(
            "deliver latency (ms)",
            format!(
                "p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}  mean {:.3}  ({} samples)",
                l.p50_ms, l.p90_ms, l.p99_ms, l.p999_ms, l.max_ms, l.mean_ms, l.samples
            ),
        );
        let parts = |p: &PhaseStats| {
            p.peak_rss.map_or(String::new(), |x| {
                format!(
                    " (peak anon {}, peak file-backed {})",
                    mib(Some(x.anon)),
                    mib(Some(x.file))
                )
            })
        };
        let cl = &self.confirm_latency;
        row(
            "confirm latency (ms)",
            format!(
                "p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}  mean {:.3}",
                cl.p50_ms, cl.p90_ms, cl.p99_ms, cl.p999_ms, cl.max_ms, cl.mean_ms
            ),
        );
        if let Some(p) = &r.publish_phase {
            row(
                "broker RSS publishing",
                format!(
                    "peak {}, end {}{}",
                    mib(p.peak_rss_bytes),
                    mib(p.end_rss_bytes),
                    parts(p)
                ),
            );
        }
        row(
            if r.publish_phase.is_some() {
                "broker RSS draining"
            } else {
                "broker RSS"
            },
            format!(
                "peak {}, end {}, after {}{}",
                mib(r.deliver_phase.peak_rss_bytes),
                mib(r.deliver_phase.end_rss_bytes),
                mib(r.rss_after_bytes),
                parts(&r.deliver_phase)
            ),
        );
        if let Some(d) = &r.disk_after {
            row(
                "data dir after",
                format!(
                    "{} allocated, {} apparent, {} files",
                    mib(Some(d.allocated_bytes)),
                    mib(Some(d.apparent_bytes)),
                    d.files
                ),
            );
        }
        let cpu = |s: Option<f64>| s.map_or("-".to_owned(), |s| format!("{s:.1} s"));
        row(
            "CPU",
            format!(
                "broker {}, generator {}",
                cpu(r.broker_cpu_seconds),
                cpu(r.generator_cpu_seconds)
            ),
        );
        if let Some(e) = &self.error {
            row("error", e.clone());
        }
        out
    }
}

/// One line describing a workload.
pub fn describe(w: &Workload) -> String {
    let mut s = format!(
        "{}P/{}C×{}q {} B, {:?} routing, window {}, prefetch {}",
        w.producers, w.consumers, w.queues, w.size, w.routing, w.confirm_window, w.prefetch
    );
    match w.rate {
        Some(r) => {
            let _ = write!(s, ", {r:.0} msg/s");
        }
        None => s.push_str(", flat out"),
    }
    if let Some(d) = w.duration {
        let _ = write!(s, ", {:.0} s", d.as_secs_f64());
    }
    if let Some(n) = w.count {
        let _ = write!(s, ", {n} msgs");
    }
    if w.backlog {
        s.push_str(", backlog then drain");
    }
    s
}
