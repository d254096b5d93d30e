//! Delayed delivery and retry with backoff (protocol.md §8.1, §10, §19), against the real
//! broker: a delayed message is confirmed at once, is never delivered before its time and is
//! delivered promptly after it, in due order; operators browse and cancel scheduled messages;
//! a nack with a delay and a queue's retry backoff make requeues wait; `Extend` to 0 releases a
//! delivery without counting it; and a `kill -9` while messages wait neither delivers one
//! early nor loses one.
//!
//! "Not before its time" is checked strictly by the test's clock (the broker runs on the same
//! machine). "Promptly after" has a generous bound: a busy 2-core machine running a debug
//! build can delay any task by hundreds of milliseconds; the precise figure (10 ms p99) is the
//! bench's (benches/delays.sh).

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::StreamExt;
use sluice_client::{
    Client, ConsumeOptions, Consumer, DeleteQueueOptions, ErrorCode, Message, PublishOptions,
    QueueOptions,
};
use sluice_tests::broker::{within, BrokerProcess};

/// Latest a test may observe a delivery after its due time (see the module comment).
const OBSERVED_LATENESS_MS: u64 = 1_500;

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_millis() as u64
}

async fn connect(process: &BrokerProcess) -> Client {
    within("connect", Client::connect(&process.url()))
        .await
        .expect("connect")
}

async fn publish_delayed(client: &Client, queue: &str, body: &str, delay: Duration) {
    let options = PublishOptions::new().delay(delay);
    within(
        "publish",
        client.publish("", queue, body.to_owned(), &options),
    )
    .await
    .expect("a delayed message is confirmed at once");
}

async fn next(consumer: &mut Consumer) -> (Message, u64) {
    let m = within("a delivery", consumer.next())
        .await
        .expect("the consumer ended")
        .expect("a delivery");
    (m, now_ms())
}

fn body(m: &Message) -> String {
    String::from_utf8(m.body.to_vec()).unwrap()
}

/// Asserts that `m`, received at `received_ms`, came no earlier than `due_ms` and promptly.
fn assert_on_time(m: &Message, received_ms: u64, due_ms: u64) {
    assert!(
        received_ms >= due_ms,
        "'{}' delivered {} ms before its time",
        body(m),
        due_ms - received_ms
    );
    assert!(
        received_ms - due_ms <= OBSERVED_LATENESS_MS,
        "'{}' delivered {} ms after its time",
        body(m),
        received_ms - due_ms
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delayed_messages_are_confirmed_at_once_and_delivered_in_due_order_never_before_their_time()
{
    let dir = tempfile::tempdir().unwrap();
    let process = BrokerProcess::start(dir.path(), &[]);
    let client = connect(&process).await;
    client
        .declare_queue("work", QueueOptions::new())
        .await
        .unwrap();
    let start = now_ms();
    for (name, ms) in [("c", 900), ("a", 300), ("b", 600)] {
        publish_delayed(&client, "work", name, Duration::from_millis(ms)).await;
    }
    within(
        "publish",
        client.publish("", "work", "now", &PublishOptions::new()),
    )
    .await
    .unwrap();
    let q = client.inspect_queue("work").await.unwrap();
    assert_eq!(
        (q.ready, q.scheduled),
        (1, 3),
        "delayed messages are not ready"
    );
    let mut consumer = client.consume("work", ConsumeOptions::new()).await.unwrap();
    let (first, _) = next(&mut consumer).await;
    assert_eq!(body(&first), "now");
    first.ack().await.unwrap();
    for (name, delay) in [("a", 300), ("b", 600), ("c", 900)] {
        let (m, at) = next(&mut consumer).await;
        assert_eq!(body(&m), name, "due order, not publish order");
        assert_on_time(&m, at, start + delay);
        assert_eq!(m.delivery_count, 1);
        assert!(!m.redelivered);
        m.ack().await.unwrap();
    }
    let q = client.inspect_queue("work").await.unwrap();
    assert_eq!((q.ready, q.unacked, q.scheduled), (0, 0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deliver_at_time_is_honoured_a_past_one_means_now_and_both_kinds_at_once_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let process = BrokerProcess::start(dir.path(), &[]);
    let client = connect(&process).await;
    client
        .declare_queue("work", QueueOptions::new())
        .await
        .unwrap();
    let at = SystemTime::now() + Duration::from_millis(400);
    let due = at.duration_since(UNIX_EPOCH).unwrap().as_millis() as u64;
    let later = PublishOptions::new().deliver_at(at);
    client.publish("", "work", "later", &later).await.unwrap();
    let past = PublishOptions::new().deliver_at(UNIX_EPOCH + Duration::from_secs(1));
    client.publish("", "work", "past", &past).await.unwrap();
    let mut both = PublishOptions::new().delay(Duration::from_secs(1));
    both.properties.deliver_at_ms = Some(due);
    let refused = client.publish("", "work", "both", &both).await.unwrap_err();
    assert_eq!(
        refused.code(),
        Some(ErrorCode::InvalidArgument),
        "{refused}"
    );
    let mut consumer = client.consume("work", ConsumeOptions::new()).await.unwrap();
    let (m, _) = next(&mut consumer).await;
    assert_eq!(body(&m), "past", "a time in the past means now");
    let (m, received) = next(&mut consumer).await;
    assert_eq!(body(&m), "later");
    assert_on_time(&m, received, due);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_ttl_counts_from_when_it_becomes_ready() {
    let dir = tempfile::tempdir().unwrap();
    let process = BrokerProcess::start(dir.path(), &[]);
    let client = connect(&process).await;
    client
        .declare_queue("work", QueueOptions::new())
        .await
        .unwrap();
    // A TTL shorter than the delay: counted from the publish, it would have run out.
    let options = PublishOptions::new()
        .delay(Duration::from_millis(500))
        .expiration(Duration::from_millis(5_000));
    client.publish("", "work", "m", &options).await.unwrap();
    let short = PublishOptions::new()
        .delay(Duration::from_millis(600))
        .expiration(Duration::from_millis(300));
    client.publish("", "work", "short", &short).await.unwrap();
    let mut consumer = client.consume("work", ConsumeOptions::new()).await.unwrap();
    let (m, _) = next(&mut consumer).await;
    assert_eq!(body(&m), "m");
    let (m, _) = next(&mut consumer).await;
    assert_eq!(
        body(&m),
        "short",
        "ready at 600 ms, its 300 ms TTL counts from then"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_page_through_scheduled_messages_in_due_order_and_cancel_one() {
    let dir = tempfile::tempdir().unwrap();
    let process = BrokerProcess::start(dir.path(), &[]);
    let client = connect(&process).await;
    client
        .declare_queue("work", QueueOptions::new())
        .await
        .unwrap();
    for (name, secs) in [("d", 400), ("b", 200), ("e", 500), ("a", 100), ("c", 300)] {
        publish_delayed(&client, "work", name, Duration::from_secs(secs)).await;
    }
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let page = client.list_scheduled("work", 2, after).await.unwrap();
        assert!(page.messages.len() <= 2);
        after = page.messages.last().map(|m| (m.due_at_ms, m.message_seq));
        seen.extend(page.messages);
        if !page.more {
            break;
        }
    }
    let names: Vec<String> = seen
        .iter()
        .map(|m| String::from_utf8(m.body.to_vec()).unwrap())
        .collect();
    assert_eq!(names, ["a", "b", "c", "d", "e"]);
    assert!(seen.windows(2).all(|w| w[0].due_at_ms <= w[1].due_at_ms));
    assert!(seen.iter().all(|m| m.delivery_count == 0));
    let b = seen[1].message_seq;
    client.cancel_scheduled("work", b).await.unwrap();
    let again = client.cancel_scheduled("work", b).await.unwrap_err();
    assert_eq!(again.code(), Some(ErrorCode::NotFound), "{again}");
    let missing = client.cancel_scheduled("work", 9_999).await.unwrap_err();
    assert_eq!(missing.code(), Some(ErrorCode::NotFound), "{missing}");
    let q = client.inspect_queue("work").await.unwrap();
    assert_eq!((q.ready, q.scheduled), (0, 4));
    let page = client.list_scheduled("work", 0, None).await.unwrap();
    assert_eq!(page.messages.len(), 4);
    assert!(page.messages.iter().all(|m| m.message_seq != b));
    assert!(
        client
            .browse("work", 0, 0)
            .await
            .unwrap()
            .messages
            .is_empty(),
        "scheduled messages are not ready ones"
    );
    let refused = client
        .delete_queue(
            "work",
            DeleteQueueOptions {
                if_unused: false,
                if_empty: true,
            },
        )
        .await
        .unwrap_err();
    assert_eq!(
        refused.code(),
        Some(ErrorCode::PreconditionFailed),
        "{refused}"
    );
    assert_eq!(
        client.purge_queue("work").await.unwrap(),
        4,
        "a purge takes them too"
    );
    assert_eq!(client.inspect_queue("work").await.unwrap().scheduled, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nack_with_a_delay_makes_the_message_wait_before_it_is_delivered_again() {
    let dir = tempfile::tempdir().unwrap();
    let process = BrokerProcess::start(dir.path(), &[]);
    let client = connect(&process).await;
    client
        .declare_queue("work", QueueOptions::new())
        .await
        .unwrap();
    client
        .publish("", "work", "job", &PublishOptions::new())
        .await
        .unwrap();
    let mut consumer = client.consume("work", ConsumeOptions::new()).await.unwrap();
    let (m, _) = next(&mut consumer).await;
    let nacked_at = now_ms();
    m.nack_with_delay(Duration::from_millis(500)).await.unwrap();
    let (again, received) = next(&mut consumer).await;
    assert_eq!(body(&again), "job");
    assert_on_time(&again, received, nacked_at + 500);
    assert_eq!(again.delivery_count, 2);
    assert!(again.redelivered);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_retry_backoff_grows_the_wait_of_each_requeue_up_to_its_max() {
    let dir = tempfile::tempdir().unwrap();
    let process = BrokerProcess::start(dir.path(), &[]);
    let client = connect(&process).await;
    let options = QueueOptions::new().retry_backoff(
        Duration::from_millis(200),
        200,
        Duration::from_millis(500),
    );
    client.declare_queue("work", options).await.unwrap();
    client
        .publish("", "work", "job", &PublishOptions::new())
        .await
        .unwrap();
    let mut consumer = client.consume("work", ConsumeOptions::new()).await.unwrap();
    let (mut m, _) = next(&mut consumer).await;
    for (count, wait) in [(1, 200), (2, 400), (3, 500), (4, 500)] {
        assert_eq!(m.delivery_count, count);
        let nacked = now_ms();
        m.nack(true).await.unwrap();
        let q = client.inspect_queue("work").await.unwrap();
        assert_eq!((q.ready, q.scheduled), (0, 1), "the requeue waits");
        let (again, received) = next(&mut consumer).await;
        assert_on_time(&again, received, nacked + wait);
        m = again;
    }
    m.ack().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extend_to_zero_releases_at_once_and_never_counts_against_the_delivery_limit() {
    let dir = tempfile::tempdir().unwrap();
    let process = BrokerProcess::start(dir.path(), &[]);
    let client = connect(&process).await;
    let options = QueueOptions::new().delivery_limit(2).retry_backoff(
        Duration::from_secs(60),
        100,
        Duration::from_secs(60),
    );
    client.declare_queue("work", options).await.unwrap();
    client
        .publish("", "work", "job", &PublishOptions::new())
        .await
        .unwrap();
    for _ in 0..5 {
        let m = within("get", client.get("work"))
            .await
            .unwrap()
            .expect("ready");
        assert_eq!(m.delivery_count, 1, "a release is not counted");
        m.extend(Duration::ZERO).await.unwrap();
        assert!(m.is_settled(), "a release settles the delivery");
        let q = client.inspect_queue("work").await.unwrap();
        assert_eq!(
            (q.ready, q.unacked, q.scheduled),
            (1, 0, 0),
            "ready again at once, without the backoff"
        );
    }
    // Counted deliveries still reach the limit: the second nack dead-letters (drops) it.
    let m = client.get("work").await.unwrap().unwrap();
    m.nack_with_delay(Duration::ZERO).await.unwrap();
    let m = within("get", client.get("work"))
        .await
        .unwrap()
        .expect("ready");
    assert_eq!(m.delivery_count, 2);
    m.nack(true).await.unwrap();
    let q = client.inspect_queue("work").await.unwrap();
    assert_eq!(
        (q.ready, q.unacked, q.scheduled),
        (0, 0, 0),
        "past its limit"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_kill_9_while_messages_wait_none_is_delivered_early_and_none_is_lost() {
    let dir = tempfile::tempdir().unwrap();
    let process = BrokerProcess::start(dir.path(), &[]);
    let client = connect(&process).await;
    client
        .declare_queue("work", QueueOptions::new())
        .await
        .unwrap();
    let start = now_ms();
    let delay = Duration::from_millis(3_000);
    for i in 0..200 {
        publish_delayed(&client, "work", &format!("d{i}"), delay).await;
    }
    // One requeued with a delay: its new due time must survive too.
    client
        .publish("", "work", "retry", &PublishOptions::new())
        .await
        .unwrap();
    let m = client.get("work").await.unwrap().expect("ready");
    let nacked = now_ms();
    m.nack_with_delay(Duration::from_millis(3_500))
        .await
        .unwrap();
    // Served after the nack by the same queue, in order: the nack was handled (and its due
    // time written) before this answer.
    let q = client.inspect_queue("work").await.unwrap();
    assert_eq!((q.ready, q.scheduled), (0, 201));
    process.kill9();

    let process = BrokerProcess::start(dir.path(), &[]);
    let client = connect(&process).await;
    let q = client.inspect_queue("work").await.unwrap();
    assert_eq!(
        (q.ready, q.scheduled),
        (0, 201),
        "every message still waits after the restart"
    );
    let mut consumer = client
        .consume("work", ConsumeOptions::new().prefetch(0))
        .await
        .unwrap();
    let mut seen = std::collections::HashSet::new();
    let started = Instant::now();
    while seen.len() < 201 {
        let (m, received) = next(&mut consumer).await;
        let name = body(&m);
        let due = if name == "retry" {
            nacked + 3_500
        } else {
            start + delay.as_millis() as u64
        };
        assert!(
            received >= due,
            "'{name}' delivered {} ms early after the restart",
            due - received
        );
        assert!(seen.insert(name.clone()), "'{name}' delivered twice");
        m.ack().await.unwrap();
        assert!(started.elapsed() < Duration::from_secs(60));
    }
    assert!(seen.contains("retry"));
    let q = client.inspect_queue("work").await.unwrap();
    assert_eq!((q.ready, q.unacked, q.scheduled), (0, 0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http_api_the_cli_and_metrics_show_scheduled_messages_and_cancel_one() {
    use sluice_tests::broker::sluice_command;
    use sluice_tests::http::HttpClient;
    let dir = tempfile::tempdir().unwrap();
    let process = BrokerProcess::start(dir.path(), &["--http-listen", "127.0.0.1:0"]);
    let http = HttpClient::new(process.http_addr().expect("HTTP on"), "guest", "guest");
    let declared = http
        .put(
            "/api/queues/work",
            r#"{"arguments": {"retry_backoff": {"initial_ms": 100, "multiplier_percent": 200, "max_ms": 1000}}}"#,
        )
        .await;
    assert_eq!(declared.status, 200, "{}", declared.body);
    let published = http
        .post(
            "/api/exchanges/amq.default/publish",
            r#"{"routing_key": "work", "payload": "via-http", "properties": {"delay_ms": 600000}}"#,
        )
        .await;
    assert_eq!(published.status, 200, "{}", published.body);
    let both = http
        .post(
            "/api/exchanges/amq.default/publish",
            r#"{"routing_key": "work", "payload": "x", "properties": {"delay_ms": 1, "deliver_at_ms": 1}}"#,
        )
        .await;
    assert_eq!(both.status, 400, "{}", both.body);
    let out = sluice_command()
        .args([
            "publish",
            "",
            "work",
            "via-cli",
            "--delay",
            "5m",
            "--url",
            &process.cli_url(),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let queue: serde_json::Value =
        serde_json::from_str(&http.get("/api/queues/work").await.body).unwrap();
    assert_eq!(queue["scheduled"], 2);
    assert_eq!(queue["ready"], 0);
    assert_eq!(
        queue["arguments"]["retry_backoff"]["multiplier_percent"],
        200
    );
    let listed: serde_json::Value =
        serde_json::from_str(&http.get("/api/queues").await.body).unwrap();
    assert_eq!(listed[0]["scheduled"], 2);

    let page = http.get("/api/queues/work/scheduled?limit=1").await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert_eq!(page.header("x-sluice-more"), Some("true"));
    let first: serde_json::Value = serde_json::from_str(&page.body).unwrap();
    assert_eq!(first[0]["payload"], "via-cli", "the sooner one first");
    let (due, seq) = (&first[0]["due_at_ms"], &first[0]["message_seq"]);
    let rest = http
        .get(&format!(
            "/api/queues/work/scheduled?after_due_ms={due}&after_seq={seq}"
        ))
        .await;
    let rest: serde_json::Value = serde_json::from_str(&rest.body).unwrap();
    assert_eq!(rest[0]["payload"], "via-http");
    assert_eq!(rest.as_array().unwrap().len(), 1);

    let out = sluice_command()
        .args(["scheduled", "list", "work", "--url", &process.cli_url()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("via-cli") && text.contains("via-http"),
        "{text}"
    );
    let cancelled = http
        .delete(&format!("/api/queues/work/scheduled/{seq}"), None)
        .await;
    assert_eq!(cancelled.status, 200, "{}", cancelled.body);
    let again = http
        .delete(&format!("/api/queues/work/scheduled/{seq}"), None)
        .await;
    assert_eq!(again.status, 404, "{}", again.body);
    let remaining = rest[0]["message_seq"].to_string();
    let out = sluice_command()
        .args([
            "scheduled",
            "cancel",
            "work",
            &remaining,
            "--url",
            &process.cli_url(),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let metrics = http.get("/metrics").await.body;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("sluice_queue_scheduled_messages{") && l.ends_with(" 0")),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_moved_copy_of_a_delayed_message_is_not_delayed_again_even_after_a_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let process = BrokerProcess::start(dir.path(), &[]);
    let client = connect(&process).await;
    for q in ["source", "destination"] {
        client.declare_queue(q, QueueOptions::new()).await.unwrap();
    }
    let delay = Duration::from_millis(300);
    publish_delayed(&client, "source", "m", delay).await;
    within("the message to be ready", async {
        while client.inspect_queue("source").await.unwrap().ready == 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    let id = client
        .move_messages("source", "destination", None)
        .await
        .unwrap();
    within("the move", async {
        while !client.move_status(id).await.unwrap().state.is_finished() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    let q = client.inspect_queue("destination").await.unwrap();
    assert_eq!(
        (q.ready, q.scheduled),
        (1, 0),
        "ready at once in its new queue"
    );
    process.kill9();
    let process = BrokerProcess::start(dir.path(), &[]);
    let client = connect(&process).await;
    let q = client.inspect_queue("destination").await.unwrap();
    assert_eq!((q.ready, q.scheduled), (1, 0), "and still after a restart");
    let m = client.get("destination").await.unwrap().expect("ready");
    assert_eq!(body(&m), "m");
}
