//! The exporter task: batches finished spans and posts them to the collector as an OTLP
//! `ExportTraceServiceRequest` (protobuf over HTTP/1.1), on one kept-alive connection.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Weak;
use std::time::Duration;

use axum::http::{Request, Uri};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{
    span, status, ResourceSpans, ScopeSpans, Span, Status,
};
use prost::Message;
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use super::{AttrValue, SpanKind, SpanRecord, Telemetry};

/// Spans waiting for the exporter; more are dropped.
pub(super) const CHANNEL_SPANS: usize = 16 * 1024;
/// Most spans in one request.
const BATCH_SPANS: usize = 512;
/// Longest a span waits for its batch to fill.
const BATCH_DELAY: Duration = Duration::from_millis(200);
/// Longest a request to the collector may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// What the exporter did, for `/metrics`.
#[derive(Debug, Default)]
pub struct ExportStats {
    /// Spans the collector accepted.
    pub exported: AtomicU64,
    /// Spans dropped: the exporter was behind, or the collector failed or refused them.
    pub dropped: AtomicU64,
}

pub(super) fn spawn(
    endpoint: Uri,
    service_name: String,
    rx: mpsc::Receiver<SpanRecord>,
    telemetry: Weak<Telemetry>,
) {
    let exporter = Exporter {
        endpoint,
        service_name,
        connection: None,
        telemetry,
        failing: false,
    };
    tokio::spawn(exporter.run(rx));
}

struct Exporter {
    endpoint: Uri,
    service_name: String,
    connection: Option<SendRequest<Full<Bytes>>>,
    telemetry: Weak<Telemetry>,
    /// The last request failed (logged once until one succeeds).
    failing: bool,
}

impl Exporter {
    async fn run(mut self, mut rx: mpsc::Receiver<SpanRecord>) {
        let mut batch = Vec::with_capacity(BATCH_SPANS);
        while let Some(first) = rx.recv().await {
            batch.push(first);
            let deadline = tokio::time::Instant::now() + BATCH_DELAY;
            while batch.len() < BATCH_SPANS {
                match tokio::time::timeout_at(deadline, rx.recv()).await {
                    Ok(Some(span)) => batch.push(span),
                    Ok(None) | Err(_) => break,
                }
            }
            let count = batch.len() as u64;
            let body = encode(&self.service_name, batch.drain(..));
            let sent = tokio::time::timeout(REQUEST_TIMEOUT, self.post(body)).await;
            let Some(telemetry) = self.telemetry.upgrade() else {
                return;
            };
            let stats = telemetry.stats();
            match sent {
                Ok(Ok(())) => {
                    self.failing = false;
                    stats.exported.fetch_add(count, Ordering::Relaxed);
                }
                Ok(Err(why)) => self.failed(stats, count, &why),
                Err(_) => self.failed(stats, count, "timed out"),
            }
        }
    }

    fn failed(&mut self, stats: &ExportStats, count: u64, why: &str) {
        stats.dropped.fetch_add(count, Ordering::Relaxed);
        self.connection = None;
        if !self.failing {
            tracing::warn!(endpoint = %self.endpoint, "could not export {count} spans: {why}; dropping spans until the collector answers");
            self.failing = true;
        }
    }

    /// Posts one request; the connection is kept for the next one.
    async fn post(&mut self, body: Vec<u8>) -> Result<(), String> {
        let sender = match self.connection.as_mut().filter(|s| !s.is_closed()) {
            Some(s) => s,
            None => self.connection.insert(self.connect().await?),
        };
        sender.ready().await.map_err(|e| e.to_string())?;
        let authority = self.endpoint.authority().map(|a| a.as_str()).unwrap_or("");
        let request = Request::post(self.endpoint.path())
            .header("host", authority)
            .header("content-type", "application/x-protobuf")
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| e.to_string())?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| e.to_string())?;
        let status = response.status();
        // Read the answer to the end, so the connection can carry the next request.
        let _ = response.into_body().collect().await;
        if status.is_success() {
            Ok(())
        } else {
            Err(format!("the collector answered {status}"))
        }
    }

    async fn connect(&self) -> Result<SendRequest<Full<Bytes>>, String> {
        let authority = self
            .endpoint
            .authority()
            .ok_or("the endpoint has no host")?;
        let port = authority.port_u16().unwrap_or(80);
        let stream = TcpStream::connect((authority.host(), port))
            .await
            .map_err(|e| format!("cannot connect: {e}"))?;
        let _ = stream.set_nodelay(true);
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(sender)
    }
}

/// The OTLP request for `spans`, encoded.
fn encode(service_name: &str, spans: impl Iterator<Item = SpanRecord>) -> Vec<u8> {
    let request = ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![
                    key_value("service.name", AttrValue::Str(service_name.to_owned())),
                    key_value("messaging.system", AttrValue::Str("sluice".into())),
                ],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                scope: Some(InstrumentationScope {
                    name: "sluice-broker".into(),
                    version: env!("CARGO_PKG_VERSION").into(),
                    ..Default::default()
                }),
                spans: spans.map(to_proto).collect(),
                ..Default::default()
            }],
            ..Default::default()
        }],
    };
    request.encode_to_vec()
}

fn to_proto(s: SpanRecord) -> Span {
    let kind = match s.kind {
        SpanKind::Internal => span::SpanKind::Internal,
        SpanKind::Server => span::SpanKind::Server,
        SpanKind::Producer => span::SpanKind::Producer,
    };
    let status = match s.error {
        Some(message) => Status {
            message,
            code: status::StatusCode::Error as i32,
        },
        None => Status {
            message: String::new(),
            code: status::StatusCode::Unset as i32,
        },
    };
    Span {
        trace_id: s.trace_id.to_vec(),
        span_id: s.span_id.to_vec(),
        // A span the broker started a trace with has no parent.
        parent_span_id: if s.parent_span_id == [0; 8] {
            Vec::new()
        } else {
            s.parent_span_id.to_vec()
        },
        // Sampled; the parent is remote only for spans right under the publisher's.
        flags: 0x1,
        name: s.name.to_owned(),
        kind: kind as i32,
        start_time_unix_nano: s.start_ns,
        end_time_unix_nano: s.end_ns,
        attributes: s
            .attributes
            .into_iter()
            .map(|(k, v)| key_value(k, v))
            .collect(),
        status: Some(status),
        ..Default::default()
    }
}

fn key_value(key: &str, value: AttrValue) -> KeyValue {
    let value = match value {
        AttrValue::Str(s) => any_value::Value::StringValue(s),
        AttrValue::Int(i) => any_value::Value::IntValue(i),
    };
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue { value: Some(value) }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_client::wire::TraceParent;

    #[test]
    fn spans_encode_as_an_otlp_request_with_their_links() {
        let parent = TraceParent::new([7; 16], [8; 8], 1).unwrap();
        let publish = SpanRecord::child_of(&parent, "publish", SpanKind::Server, 100)
            .attr("messaging.destination.name", "orders")
            .ended(200);
        let store = SpanRecord::child_of(&publish.context(), "store", SpanKind::Internal, 120)
            .attr("sluice.message_seq", 5u64)
            .failed("disk full")
            .ended(150);
        let bytes = encode("sluice", vec![publish.clone(), store.clone()].into_iter());
        let back = ExportTraceServiceRequest::decode(&bytes[..]).unwrap();
        let spans = &back.resource_spans[0].scope_spans[0].spans;
        assert_eq!(spans.len(), 2);
        assert_eq!(spans[0].trace_id, vec![7; 16]);
        assert_eq!(spans[0].parent_span_id, vec![8; 8]);
        assert_eq!(spans[1].parent_span_id, publish.span_id.to_vec());
        assert_eq!(spans[1].status.as_ref().unwrap().message, "disk full");
        assert_eq!(spans[0].kind, span::SpanKind::Server as i32);
        assert_eq!(
            (spans[1].start_time_unix_nano, spans[1].end_time_unix_nano),
            (120, 150)
        );
    }
}
