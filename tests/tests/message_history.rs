//! "Why is this message stuck" (protocol.md §21, `sluice trace`, `GET /api/trace/{id}`),
//! against the real broker: a message nacked twice with reasons, then rejected and
//! dead-lettered, has its whole life in its history, in the source queue and in the
//! dead-letter queue, on the wire, in the CLI and in the HTTP API; a delivered message shows
//! its consumer, connection and lease; messages without an id are not followed; and a
//! record goes once the history window has passed.

use std::time::Duration;

use serde_json::Value;
use sluice_client::wire::{HistoryEventKind, MessageState, TraceMessageOk};
use sluice_client::{Client, ConsumeOptions, PublishOptions, QueueOptions};
use sluice_tests::broker::{connect, next_delivery as next, within, BrokerProcess};
use sluice_tests::http::HttpClient;

fn start(extra: &[&str]) -> (BrokerProcess, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(dir.path(), extra);
    (broker, dir)
}

/// Polls the trace until `done` holds (settlements are not answered, so the queue may not
/// have handled the last one when the client asks).
async fn trace_until(
    client: &Client,
    id: &str,
    done: impl Fn(&TraceMessageOk) -> bool,
) -> TraceMessageOk {
    within("the expected history", async {
        loop {
            let t = client.trace_message(id).await.expect("trace");
            if done(&t) {
                return t;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
}

async fn declare_with_dead_letters(client: &Client) {
    client
        .declare_queue("dead", QueueOptions::new())
        .await
        .unwrap();
    client
        .declare_queue(
            "orders",
            QueueOptions::new()
                .dead_letter_exchange("")
                .dead_letter_routing_key("dead"),
        )
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_nacked_twice_then_dead_lettered_shows_its_whole_life() {
    let (broker, _dir) = start(&[]);
    let client = connect(&broker).await;
    declare_with_dead_letters(&client).await;
    let options = PublishOptions::new().message_id("order-17");
    client
        .publish("", "orders", "payload", &options)
        .await
        .unwrap();
    client
        .publish("", "orders", "no id", &PublishOptions::new())
        .await
        .unwrap();

    let mut worker = client
        .consume("orders", ConsumeOptions::new().consumer_tag("billing-1"))
        .await
        .unwrap();
    let first = next(&mut worker).await;
    first
        .nack_with_reason(true, "payment service timed out")
        .await
        .unwrap();
    let second = next(&mut worker).await;
    // The message without an id comes in between or after; settle whichever we got.
    let mut pending = vec![second];
    let mut nacks = 1;
    let mut rejected = false;
    while !rejected {
        let m = match pending.pop() {
            Some(m) => m,
            None => next(&mut worker).await,
        };
        if m.meta().message_id != Some("order-17") {
            m.ack().await.unwrap();
            continue;
        }
        if nacks < 2 {
            m.nack_with_reason(true, "payment service timed out again")
                .await
                .unwrap();
            nacks += 1;
        } else {
            m.reject_with_reason("card declined: will never succeed")
                .await
                .unwrap();
            rejected = true;
        }
    }

    let trace = trace_until(&client, "order-17", |t| {
        t.messages.len() == 2 && t.messages[0].state == MessageState::Gone
    })
    .await;
    let source = &trace.messages[0];
    assert_eq!(source.queue, "orders");
    let names: Vec<&str> = source.events.iter().map(|e| e.kind.name()).collect();
    assert_eq!(
        names,
        [
            "stored",
            "delivered",
            "nacked",
            "delivered",
            "nacked",
            "delivered",
            "rejected",
            "dead-lettered"
        ]
    );
    let deliveries: Vec<(String, u32)> = source
        .events
        .iter()
        .filter_map(|e| match &e.kind {
            HistoryEventKind::Delivered {
                consumer_tag,
                delivery_count,
                lease_deadline_ms,
                ..
            } => {
                assert!(
                    *lease_deadline_ms > e.at_ms,
                    "a lease deadline after the delivery"
                );
                Some((consumer_tag.clone(), *delivery_count))
            }
            _ => None,
        })
        .collect();
    assert_eq!(
        deliveries,
        [
            ("billing-1".to_owned(), 1),
            ("billing-1".to_owned(), 2),
            ("billing-1".to_owned(), 3)
        ]
    );
    assert!(matches!(
        &source.events[2].kind,
        HistoryEventKind::Nacked { reason: Some(r), .. } if r == "payment service timed out"
    ));
    assert!(matches!(
        &source.events[6].kind,
        HistoryEventKind::Rejected { reason: Some(r) } if r == "card declined: will never succeed"
    ));
    assert!(matches!(
        &source.events[7].kind,
        HistoryEventKind::DeadLettered { reason, exchange: Some(x) } if reason == "rejected" && x.is_empty()
    ));
    // The copy's own record, in the dead-letter queue, where it now waits.
    let copy = &trace.messages[1];
    assert_eq!(copy.queue, "dead");
    assert_eq!(copy.state, MessageState::Ready);
    assert_eq!(copy.events[0].kind.name(), "stored");
    // A message without an id is not followed.
    assert!(client
        .trace_message("no id")
        .await
        .unwrap()
        .messages
        .is_empty());

    // The CLI tells the same story, with the reasons.
    let text = broker.cli(&["trace", "order-17"]);
    assert!(text.contains("queue 'orders'"), "{text}");
    assert!(text.contains("now: gone"), "{text}");
    assert!(
        text.contains("reason \"payment service timed out again\""),
        "{text}"
    );
    assert!(text.contains("to consumer billing-1"), "{text}");
    assert!(text.contains("rejected; to exchange (default)"), "{text}");
    assert!(text.contains("queue 'dead'"), "{text}");
    let json: Value = serde_json::from_str(&broker.cli(&["trace", "order-17", "--json"])).unwrap();
    assert_eq!(json["messages"][0]["events"][6]["event"], "rejected");
    assert_eq!(
        json["messages"][0]["events"][6]["reason"],
        "card declined: will never succeed"
    );

    // And the HTTP API.
    let http = HttpClient::new(broker.http_addr().unwrap(), "guest", "guest");
    let answer = http.get("/api/trace/order-17").await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    let v: Value = serde_json::from_str(&answer.body).unwrap();
    assert_eq!(v["messages"][0]["state"], "gone");
    assert_eq!(v["messages"][0]["events"][1]["consumer_tag"], "billing-1");
    assert_eq!(v["messages"][0]["events"][7]["reason"], "rejected");
    assert_eq!(v["messages"][1]["queue"], "dead");
    let none = http.get("/api/trace/nothing-like-it").await;
    assert_eq!(none.status, 200);
    assert_eq!(
        serde_json::from_str::<Value>(&none.body).unwrap()["messages"],
        serde_json::json!([])
    );

    drop(worker);
    client.close().await.unwrap();
    broker.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivered_message_shows_who_holds_it_and_until_when() {
    let (broker, _dir) = start(&[]);
    let client = connect(&broker).await;
    client
        .declare_queue("jobs", QueueOptions::new())
        .await
        .unwrap();
    client
        .publish("", "jobs", "x", &PublishOptions::new().message_id("job-1"))
        .await
        .unwrap();
    let mut worker = client
        .consume(
            "jobs",
            ConsumeOptions::new()
                .consumer_tag("slow-worker")
                .ack_timeout(Duration::from_secs(60)),
        )
        .await
        .unwrap();
    let m = next(&mut worker).await;
    let trace = trace_until(&client, "job-1", |t| {
        t.messages
            .first()
            .is_some_and(|m| m.state == MessageState::Delivered)
    })
    .await;
    let record = &trace.messages[0];
    let HistoryEventKind::Delivered {
        consumer_tag,
        lease_deadline_ms,
        ..
    } = &record.events[1].kind
    else {
        panic!("a delivery: {record:?}");
    };
    assert_eq!(consumer_tag, "slow-worker");
    assert!(
        record.deadline_ms.abs_diff(*lease_deadline_ms) < 1_000,
        "the state shows the lease"
    );
    let text = broker.cli(&["trace", "job-1"]);
    assert!(text.contains("now: delivered, lease until"), "{text}");
    m.extend(Duration::from_secs(120)).await.unwrap();
    trace_until(&client, "job-1", |t| {
        t.messages[0].events.last().unwrap().kind.name() == "lease-extended"
    })
    .await;
    m.ack().await.unwrap();
    trace_until(&client, "job-1", |t| {
        t.messages[0].state == MessageState::Gone
    })
    .await;
    drop(worker);
    client.close().await.unwrap();
    broker.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_goes_once_the_window_has_passed() {
    let (broker, _dir) = start(&["--message-history-window-ms", "300"]);
    let client = connect(&broker).await;
    client
        .declare_queue("q", QueueOptions::new())
        .await
        .unwrap();
    client
        .publish(
            "",
            "q",
            "x",
            &PublishOptions::new().message_id("short-lived"),
        )
        .await
        .unwrap();
    let got = client.get("q").await.unwrap().expect("a message");
    got.ack().await.unwrap();
    trace_until(&client, "short-lived", |t| {
        t.messages
            .first()
            .is_some_and(|m| m.state == MessageState::Gone)
    })
    .await;
    // Forgotten at a maintenance round after the window.
    trace_until(&client, "short-lived", |t| t.messages.is_empty()).await;
    client.close().await.unwrap();
    broker.stop();
}
