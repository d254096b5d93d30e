//! Spans over OTLP (`--otlp-endpoint`, docs/tracing.md), against the real broker and a real
//! OTLP/HTTP receiver in the test: a message published with a sampled `traceparent` gets the
//! broker's `publish` span under the publisher's span, with `route`, `store` and `confirm`
//! under it; each delivery a `deliver` span under the publisher's span, ended by `nack` or
//! `ack`; a rejected one a `dead-letter` span. The consumer receives the publisher's
//! `traceparent` unchanged, so its own span continues the trace. An unsampled message makes
//! no span, and with a sample ratio the broker starts traces for messages that carry none.

use std::process::Stdio;

use sluice_client::wire::TraceParent;
use sluice_client::{ConsumeOptions, PublishOptions, QueueOptions};
use sluice_tests::broker::{
    connect, next_delivery as next, sluice_command, wait_output, within, BrokerProcess,
};
use sluice_tests::http::HttpClient;
use sluice_tests::otlp::{OtlpReceiver, ReceivedSpan};

fn traced(tp: TraceParent) -> PublishOptions {
    let mut options = PublishOptions::new();
    options.properties.trace_parent = Some(tp);
    options
}

fn one<'a>(spans: &'a [ReceivedSpan], name: &str) -> &'a ReceivedSpan {
    let found: Vec<_> = spans.iter().filter(|s| s.name == name).collect();
    assert_eq!(found.len(), 1, "one {name} span in {spans:#?}");
    found[0]
}

fn count(spans: &[ReceivedSpan], name: &str) -> usize {
    spans.iter().filter(|s| s.name == name).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_traced_message_has_linked_spans_from_publish_to_ack() {
    let receiver = OtlpReceiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let endpoint = receiver.endpoint();
    let broker = BrokerProcess::start(dir.path(), &["--otlp-endpoint", &endpoint]);
    let client = connect(&broker).await;
    client
        .declare_queue("dead", QueueOptions::new())
        .await
        .unwrap();
    client
        .declare_queue(
            "work",
            QueueOptions::new()
                .dead_letter_exchange("")
                .dead_letter_routing_key("dead"),
        )
        .await
        .unwrap();

    let producer =
        TraceParent::parse("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01").unwrap();
    client
        .publish("", "work", "job", &traced(producer))
        .await
        .unwrap();
    let unsampled =
        TraceParent::parse("00-11111111111111111111111111111111-2222222222222222-00").unwrap();
    client
        .publish("", "work", "not sampled", &traced(unsampled))
        .await
        .unwrap();

    let mut worker = client
        .consume("work", ConsumeOptions::new().consumer_tag("w1").prefetch(1))
        .await
        .unwrap();
    let first = next(&mut worker).await;
    // The consumer gets the publisher's context, to continue the trace.
    assert_eq!(first.meta().trace_parent, Some(producer));
    first.nack_with_reason(true, "try again").await.unwrap();
    let mut acked = 0;
    while acked < 2 {
        let m = next(&mut worker).await;
        m.ack().await.unwrap();
        acked += 1;
    }

    let trace = producer.trace_id_hex();
    let spans = receiver
        .wait_for_trace(&trace, |s| {
            count(s, "publish") == 1
                && count(s, "confirm") == 1
                && count(s, "deliver") == 2
                && count(s, "ack") == 1
                && count(s, "nack") == 1
        })
        .await;
    let publish = one(&spans, "publish");
    assert_eq!(
        publish.parent_span_id,
        producer.span_id_hex(),
        "under the publisher's span"
    );
    assert!(!publish.error);
    for child in ["route", "store", "confirm"] {
        assert_eq!(
            one(&spans, child).parent_span_id,
            publish.span_id,
            "{child} under publish"
        );
    }
    assert_eq!(
        one(&spans, "store").attr("messaging.destination.name"),
        Some("work")
    );
    let deliveries: Vec<&ReceivedSpan> = spans.iter().filter(|s| s.name == "deliver").collect();
    for d in &deliveries {
        assert_eq!(
            d.parent_span_id,
            producer.span_id_hex(),
            "deliver under the publisher"
        );
        assert_eq!(d.attr("sluice.consumer_tag"), Some("w1"));
    }
    let nack = one(&spans, "nack");
    let ack = one(&spans, "ack");
    assert_eq!(nack.attr("sluice.reason"), Some("try again"));
    let by_id = |id: &str| deliveries.iter().find(|d| d.span_id == id).copied();
    assert_eq!(
        by_id(&nack.parent_span_id)
            .unwrap()
            .attr("sluice.delivery_count"),
        Some("1")
    );
    assert_eq!(
        by_id(&ack.parent_span_id)
            .unwrap()
            .attr("sluice.delivery_count"),
        Some("2")
    );

    // Nothing of the unsampled message: its trace id never reached the receiver (the
    // sampled trace's last spans came after its delivery).
    assert!(receiver
        .spans()
        .iter()
        .all(|s| s.trace_id != unsampled.trace_id_hex()));

    // A rejected traced message: a dead-letter span, and the copy is traced in its queue.
    let rejected =
        TraceParent::parse("00-aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-bbbbbbbbbbbbbbbb-01").unwrap();
    client
        .publish("", "work", "bad", &traced(rejected))
        .await
        .unwrap();
    next(&mut worker)
        .await
        .reject_with_reason("malformed")
        .await
        .unwrap();
    let spans = receiver
        .wait_for_trace(&rejected.trace_id_hex(), |s| {
            count(s, "dead-letter") == 1 && count(s, "reject") == 1 && count(s, "store") == 1
        })
        .await;
    let dead = one(&spans, "dead-letter");
    assert_eq!(dead.parent_span_id, rejected.span_id_hex());
    assert_eq!(dead.attr("sluice.death_reason"), Some("rejected"));
    assert_eq!(
        one(&spans, "reject").attr("sluice.reason"),
        Some("malformed")
    );

    let http = HttpClient::anonymous(broker.http_addr().unwrap());
    assert!(metric(&http, "sluice_otlp_spans_exported_total").await >= 10);

    drop(worker);
    client.close().await.unwrap();
    broker.stop();
}

/// A counter's value on `/metrics` (0 when absent).
async fn metric(http: &HttpClient, name: &str) -> u64 {
    let page = http.get("/metrics").await;
    page.body
        .lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_sample_ratio_the_broker_starts_the_trace_and_the_consumer_continues_it() {
    let receiver = OtlpReceiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let endpoint = receiver.endpoint();
    let broker = BrokerProcess::start(
        dir.path(),
        &["--otlp-endpoint", &endpoint, "--otlp-sample-ratio", "1.0"],
    );
    let client = connect(&broker).await;
    client
        .declare_queue("q", QueueOptions::new())
        .await
        .unwrap();
    client
        .publish("", "q", "untraced by its publisher", &PublishOptions::new())
        .await
        .unwrap();
    let m = within("a message", client.get("q"))
        .await
        .unwrap()
        .expect("a message");
    let started = m
        .meta()
        .trace_parent
        .expect("the broker wrote a traceparent");
    assert!(started.sampled());
    m.ack().await.unwrap();
    let spans = receiver
        .wait_for_trace(&started.trace_id_hex(), |s| {
            count(s, "publish") == 1 && count(s, "ack") == 1
        })
        .await;
    let publish = one(&spans, "publish");
    assert_eq!(publish.parent_span_id, "", "a root span");
    assert_eq!(publish.span_id, started.span_id_hex());
    assert_eq!(one(&spans, "deliver").parent_span_id, publish.span_id);
    client.close().await.unwrap();
    broker.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_that_is_down_costs_spans_not_messages() {
    // A port nothing listens on: every export fails, the messages flow as always.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(dir.path(), &["--otlp-endpoint", &endpoint]);
    let client = connect(&broker).await;
    client
        .declare_queue("q", QueueOptions::new())
        .await
        .unwrap();
    let tp = TraceParent::parse("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01").unwrap();
    for i in 0..50 {
        client
            .publish("", "q", format!("m{i}"), &traced(tp))
            .await
            .unwrap();
    }
    let mut consumer = client.consume("q", ConsumeOptions::new()).await.unwrap();
    for _ in 0..50 {
        next(&mut consumer).await.ack().await.unwrap();
    }
    // The spans that could not go are counted.
    let http = HttpClient::anonymous(broker.http_addr().unwrap());
    within("the dropped spans counted", async {
        while metric(&http, "sluice_otlp_spans_dropped_total").await == 0 {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    })
    .await;
    drop(consumer);
    client.close().await.unwrap();
    broker.stop();
}

#[test]
fn an_endpoint_the_exporter_cannot_use_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    for (args, why) in [
        (
            &["--otlp-endpoint", "https://collector:4318"][..],
            "otlp_endpoint",
        ),
        (
            &[
                "--otlp-endpoint",
                "http://127.0.0.1:4318",
                "--otlp-sample-ratio",
                "2",
            ][..],
            "otlp_sample_ratio",
        ),
        (&["--otlp-sample-ratio", "0.5"][..], "otlp_sample_ratio"),
    ] {
        let child = sluice_command()
            .arg("serve")
            .arg("--data-dir")
            .arg(dir.path())
            .args(["--listen", "127.0.0.1:0", "--http-listen", "off"])
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let out = wait_output(child);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} started");
        assert!(stderr.contains(why), "{args:?}: {stderr}");
    }
}
