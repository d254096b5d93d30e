//! The broker's spans, exported over OTLP (`--otlp-endpoint`; docs/tracing.md).
//!
//! A message is traced when its meta block carries a sampled W3C `traceparent` (protocol.md
//! §8.1): the publisher's span is the parent of the broker's `publish` span (with `route`,
//! `store` and `confirm` children) and of each `deliver` span (with an `ack`, `nack`,
//! `reject`, `lease-expired` or `returned` child), and of a `dead-letter` span. A message
//! without one is traced for `--otlp-sample-ratio` of them: the broker then starts the trace
//! and writes its `traceparent` into the stored message, so the consumer continues it.
//!
//! Spans are assembled here from times the session and the queue task measured, then handed
//! to the exporter task (`export.rs`) over a bounded channel: when the collector is slow or
//! down, spans are dropped and counted, never waited for. With no endpoint there is no
//! [`Telemetry`] and nothing on the hot path but an `Option` test.

mod delivery;
mod export;
mod publish;

use std::sync::atomic::Ordering;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::http::Uri;
use sluice_client::wire::{MetaView, TraceParent};
use tokio::sync::mpsc;

pub use delivery::{dead_letter_span, store_span, DeliverySpan, Outcome};
pub use export::ExportStats;
pub use publish::{PublishSpans, StoreParent};

/// Where and how much to export.
#[derive(Debug, Clone, PartialEq)]
pub struct OtlpSettings {
    /// The collector's OTLP/HTTP traces URL (`http://host:port/v1/traces`).
    pub endpoint: Uri,
    /// Share of messages without a `traceparent` the broker starts a trace for.
    pub sample_ratio: f64,
}

impl OtlpSettings {
    /// Settings from an `http://host:port[/path]` URL; without a path, `/v1/traces` (the
    /// OTLP/HTTP default) is used.
    pub fn new(endpoint: &str, sample_ratio: f64) -> Result<Self, &'static str> {
        let uri: Uri = endpoint
            .parse()
            .map_err(|_| "must be a URL like http://127.0.0.1:4318")?;
        if uri.scheme_str() != Some("http") {
            return Err("must be an http:// URL (OTLP over HTTP/1.1 with protobuf)");
        }
        let Some(authority) = uri.authority() else {
            return Err("must name a host and port");
        };
        let path = match uri.path() {
            "" | "/" => "/v1/traces",
            p => p,
        };
        let endpoint = Uri::builder()
            .scheme("http")
            .authority(authority.clone())
            .path_and_query(path)
            .build()
            .map_err(|_| "must be a URL like http://127.0.0.1:4318")?;
        Ok(OtlpSettings {
            endpoint,
            sample_ratio,
        })
    }
}

/// The span exporter's handle, shared by sessions and queue tasks.
#[derive(Debug)]
pub struct Telemetry {
    tx: mpsc::Sender<SpanRecord>,
    sample_ratio: f64,
    stats: ExportStats,
}

impl Telemetry {
    /// Starts the exporter task (on the current tokio runtime) for `settings`, naming the
    /// spans' service `service_name`.
    pub fn start(settings: &OtlpSettings, service_name: String) -> std::sync::Arc<Telemetry> {
        let (tx, rx) = mpsc::channel(export::CHANNEL_SPANS);
        let telemetry = std::sync::Arc::new(Telemetry {
            tx,
            sample_ratio: settings.sample_ratio,
            stats: ExportStats::default(),
        });
        export::spawn(
            settings.endpoint.clone(),
            service_name,
            rx,
            std::sync::Arc::downgrade(&telemetry),
        );
        telemetry
    }

    /// The trace parent of a message the broker traces: its `traceparent` when sampled.
    pub fn traced_parent(meta: &[u8]) -> Option<TraceParent> {
        MetaView::peek_trace_parent(meta).filter(TraceParent::sampled)
    }

    /// Whether to start a trace for a message that has no `traceparent`.
    pub fn sample_root(&self) -> bool {
        self.sample_ratio > 0.0 && fastrand::f64() < self.sample_ratio
    }

    /// Hands a finished span to the exporter; dropped (and counted) when it is behind.
    pub fn emit(&self, span: SpanRecord) {
        if self.tx.try_send(span).is_err() {
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Spans exported and dropped so far.
    pub fn stats(&self) -> &ExportStats {
        &self.stats
    }
}

/// A new random span id (never all zeroes).
pub fn new_span_id() -> [u8; 8] {
    loop {
        let id = fastrand::u64(..).to_le_bytes();
        if id != [0; 8] {
            return id;
        }
    }
}

/// A new random trace id (never all zeroes).
pub fn new_trace_id() -> [u8; 16] {
    loop {
        let id = fastrand::u128(..).to_le_bytes();
        if id != [0; 16] {
            return id;
        }
    }
}

/// Now, in nanoseconds since the Unix epoch (span times).
pub fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// What kind of work a span stands for (OTLP's `SpanKind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpanKind {
    /// A step inside the broker.
    Internal,
    /// The broker receiving a publish.
    Server,
    /// The broker handing a message to a consumer.
    Producer,
}

/// An attribute's value.
#[derive(Debug, Clone, PartialEq)]
pub enum AttrValue {
    /// Text.
    Str(String),
    /// A whole number.
    Int(i64),
}

impl From<&str> for AttrValue {
    fn from(s: &str) -> Self {
        AttrValue::Str(s.to_owned())
    }
}

impl From<String> for AttrValue {
    fn from(s: String) -> Self {
        AttrValue::Str(s)
    }
}

impl From<u64> for AttrValue {
    fn from(v: u64) -> Self {
        AttrValue::Int(v as i64)
    }
}

impl From<u32> for AttrValue {
    fn from(v: u32) -> Self {
        AttrValue::Int(i64::from(v))
    }
}

/// One span, being built or finished.
#[derive(Debug, Clone, PartialEq)]
pub struct SpanRecord {
    /// The trace.
    pub trace_id: [u8; 16],
    /// This span.
    pub span_id: [u8; 8],
    /// Its parent (in this process or the publisher's).
    pub parent_span_id: [u8; 8],
    /// What it is, e.g. `publish`.
    pub name: &'static str,
    /// Its kind.
    pub kind: SpanKind,
    /// Start and end, ns since the Unix epoch.
    pub start_ns: u64,
    /// See `start_ns`.
    pub end_ns: u64,
    /// Key-value attributes (OpenTelemetry's messaging conventions where they apply).
    pub attributes: Vec<(&'static str, AttrValue)>,
    /// An error description: the span's status is ERROR with this message.
    pub error: Option<String>,
}

impl SpanRecord {
    /// A span under `parent` (a message's `traceparent`, or a broker span's context),
    /// starting at `start_ns`.
    pub fn child_of(
        parent: &TraceParent,
        name: &'static str,
        kind: SpanKind,
        start_ns: u64,
    ) -> Self {
        SpanRecord {
            trace_id: parent.trace_id,
            span_id: new_span_id(),
            parent_span_id: parent.span_id,
            name,
            kind,
            start_ns,
            end_ns: start_ns,
            attributes: Vec::new(),
            error: None,
        }
    }

    /// The context its children name as their parent.
    pub fn context(&self) -> TraceParent {
        TraceParent::new(self.trace_id, self.span_id, 1).expect("ids are never zero")
    }

    /// Adds an attribute.
    pub fn attr(mut self, key: &'static str, value: impl Into<AttrValue>) -> Self {
        self.attributes.push((key, value.into()));
        self
    }

    /// Ends it at `end_ns`.
    pub fn ended(mut self, end_ns: u64) -> Self {
        self.end_ns = end_ns.max(self.start_ns);
        self
    }

    /// Marks it failed.
    pub fn failed(mut self, why: impl Into<String>) -> Self {
        self.error = Some(why.into());
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_get_the_otlp_path_and_must_be_http() {
        let s = OtlpSettings::new("http://127.0.0.1:4318", 0.0).unwrap();
        assert_eq!(s.endpoint.to_string(), "http://127.0.0.1:4318/v1/traces");
        let s = OtlpSettings::new("http://collector:4318/custom/traces", 0.5).unwrap();
        assert_eq!(s.endpoint.path(), "/custom/traces");
        assert!(OtlpSettings::new("https://collector:4318", 0.0).is_err());
        assert!(OtlpSettings::new("collector", 0.0).is_err());
        assert!(OtlpSettings::new("", 0.0).is_err());
    }

    #[test]
    fn a_child_span_continues_its_parents_trace() {
        let parent = TraceParent::new([1; 16], [2; 8], 1).unwrap();
        let span = SpanRecord::child_of(&parent, "store", SpanKind::Internal, 10).ended(5);
        assert_eq!(span.trace_id, [1; 16]);
        assert_eq!(span.parent_span_id, [2; 8]);
        assert_ne!(span.span_id, [2; 8]);
        assert_eq!(span.end_ns, 10, "an end before the start is clamped");
        assert_eq!(span.context().span_id, span.span_id);
    }
}
