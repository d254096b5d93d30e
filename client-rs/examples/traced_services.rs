//! An order traced end to end through two services and the broker, with OpenTelemetry.
//!
//! ```text
//! sluice serve --otlp-endpoint http://127.0.0.1:4318     # optional: the broker's spans too
//! cargo run -p sluice-client --features opentelemetry --example traced_services [URL]
//! ```
//!
//! - **checkout** publishes `order-N` to `orders` inside its span. With the `opentelemetry`
//!   feature the client puts the current span's W3C `traceparent` into the message itself.
//! - **billing** (service 1) continues the trace from the message
//!   (`message.trace_context()`). Its first try at each order fails with a reason
//!   (`nack_with_reason`). Then it publishes a receipt from inside its span
//!   (`.with_context(cx)` makes the span current while the publish runs).
//! - **mailer** (service 2) continues the trace from the receipt.
//!
//! The spans stay in memory, and the example prints each trace as a tree: one trace per
//! order, across both services. It then prints the broker's record of `order-1`, the same
//! as `sluice trace order-1`. With `--otlp-endpoint`, the broker's own spans land in the
//! same traces in your collector. In a real service, give the SDK an OTLP exporter instead
//! of the in-memory one.

use std::collections::HashMap;
use std::time::Duration;

use futures_util::StreamExt;
use opentelemetry::trace::{FutureExt, SpanKind, TraceContextExt, Tracer, TracerProvider as _};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use sluice_client::{Client, ConsumeOptions, PublishOptions, QueueOptions};

const ORDERS: usize = 3;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::args()
        .nth(1)
        .or_else(|| std::env::var("SLUICE_URL").ok())
        .unwrap_or_else(|| "sluice://".to_owned());
    let spans = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(spans.clone())
        .build();
    opentelemetry::global::set_tracer_provider(provider.clone());

    let client = Client::connect(&url).await?;
    for queue in ["orders", "receipts"] {
        client.declare_queue(queue, QueueOptions::new()).await?;
        client.purge_queue(queue).await?;
    }
    let billing = tokio::spawn(billing(url.clone()));
    let mailer = tokio::spawn(mailer(url.clone()));

    let tracer = provider.tracer("checkout");
    for i in 1..=ORDERS {
        let span = tracer
            .span_builder("checkout")
            .with_kind(SpanKind::Producer)
            .start(&tracer);
        let cx = Context::current_with_span(span);
        let options = PublishOptions::new().message_id(format!("order-{i}"));
        // The span is current while the publish runs: the client injects it.
        client
            .publish("", "orders", format!("order {i}"), &options)
            .with_context(cx.clone())
            .await?;
        cx.span().end();
    }
    billing.await??;
    mailer.await??;

    print_trees(&spans.get_finished_spans()?);
    let record = client.trace_message("order-1").await?;
    for m in &record.messages {
        println!(
            "\nthe broker's record of order-1 in {}: now {}",
            m.queue,
            m.state.as_str()
        );
        for e in &m.events {
            println!("  {}", e.kind.name());
        }
    }
    client.close().await?;
    Ok(())
}

/// Service 1: bills orders (the first try of each fails), publishes a receipt for each.
async fn billing(url: String) -> Result<(), sluice_client::Error> {
    let tracer = opentelemetry::global::tracer("billing");
    let client = Client::connect(&url).await?;
    let mut orders = client
        .consume("orders", ConsumeOptions::new().consumer_tag("billing-1"))
        .await?;
    let mut tried = std::collections::HashSet::new();
    let mut billed = 0;
    while billed < ORDERS {
        let message = next(&mut orders).await?;
        let order = message.meta().message_id.unwrap_or("?").to_owned();
        let span = tracer
            .span_builder(format!("bill {order}"))
            .with_kind(SpanKind::Consumer)
            .start_with_context(&tracer, &message.trace_context());
        let cx = Context::current_with_span(span);
        if tried.insert(order.clone()) {
            cx.span().set_attribute(KeyValue::new(
                "billing.outcome",
                "payment service timed out",
            ));
            message
                .nack_with_reason(true, "payment service timed out")
                .await?;
        } else {
            // Published inside this span: the receipt carries its traceparent.
            let options = PublishOptions::new().message_id(format!("receipt-{order}"));
            client
                .publish("", "receipts", format!("receipt for {order}"), &options)
                .with_context(cx.clone())
                .await?;
            message.ack().await?;
            billed += 1;
        }
        cx.span().end();
    }
    client.close().await
}

/// Service 2: sends receipts.
async fn mailer(url: String) -> Result<(), sluice_client::Error> {
    let tracer = opentelemetry::global::tracer("mailer");
    let client = Client::connect(&url).await?;
    let mut receipts = client
        .consume("receipts", ConsumeOptions::new().consumer_tag("mailer-1"))
        .await?;
    for _ in 0..ORDERS {
        let message = next(&mut receipts).await?;
        let id = message.meta().message_id.unwrap_or("?").to_owned();
        let span = tracer
            .span_builder(format!("mail {id}"))
            .with_kind(SpanKind::Consumer)
            .start_with_context(&tracer, &message.trace_context());
        message.ack().await?;
        Context::current_with_span(span).span().end();
    }
    client.close().await
}

async fn next(
    consumer: &mut sluice_client::Consumer,
) -> Result<sluice_client::Message, sluice_client::Error> {
    match tokio::time::timeout(Duration::from_secs(10), consumer.next()).await {
        Ok(Some(message)) => message,
        _ => panic!("no message came within 10 s"),
    }
}

/// Each trace as a tree of its spans, by parent.
fn print_trees(spans: &[SpanData]) {
    let mut by_trace: HashMap<_, Vec<&SpanData>> = HashMap::new();
    for s in spans {
        by_trace
            .entry(s.span_context.trace_id())
            .or_default()
            .push(s);
    }
    for (trace_id, mut members) in by_trace {
        members.sort_by_key(|s| s.start_time);
        println!("trace {trace_id}");
        let ids: Vec<_> = members.iter().map(|s| s.span_context.span_id()).collect();
        let roots = members.iter().filter(|s| !ids.contains(&s.parent_span_id));
        for root in roots {
            show(root, &members, 1);
        }
    }
}

fn show(span: &SpanData, all: &[&SpanData], depth: usize) {
    println!("{}{}", "  ".repeat(depth), span.name);
    for child in all
        .iter()
        .filter(|c| c.parent_span_id == span.span_context.span_id())
    {
        show(child, all, depth + 1);
    }
}
