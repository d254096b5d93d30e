//! Publish dedup end to end (queue arguments `dedup_window_ms` / `dedup_window_count`,
//! protocol.md §6.1, §8.4): a duplicate `message_id` within a queue's window is confirmed,
//! reported to the publisher, stored once, and counted in `inspect`, `/metrics` and the HTTP
//! API; the window survives `kill -9`.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;
use sluice_client::{
    Client, Confirmed, ExchangeKind, ExchangeOptions, OutgoingMessage, PublishOptions,
    QueueArguments, QueueOptions,
};
use sluice_tests::broker::{within, BrokerProcess, WAIT};
use sluice_tests::http::HttpClient;

async fn connect(broker: &BrokerProcess) -> Client {
    within("connect", Client::connect(&broker.url()))
        .await
        .unwrap()
}

async fn declare(client: &Client, queue: &str, ms: Option<u64>, count: Option<u32>) {
    let mut options = QueueOptions::new();
    options.arguments = QueueArguments {
        dedup_window_ms: ms,
        dedup_window_count: count,
        ..QueueArguments::default()
    };
    within("declare", client.declare_queue(queue, options))
        .await
        .unwrap();
}

/// Publishes `body` to `queue` through the default exchange, with `id` as its message_id.
async fn publish(client: &Client, queue: &str, body: &str, id: Option<&str>) -> Confirmed {
    let mut options = PublishOptions::new();
    if let Some(id) = id {
        options = options.message_id(id);
    }
    within(
        "publish",
        client.publish("", queue, body.to_owned(), &options),
    )
    .await
    .unwrap()
}

/// The bodies of `queue`'s ready messages, taken and acked.
async fn drain(client: &Client, queue: &str) -> Vec<String> {
    let mut bodies = Vec::new();
    while let Some(m) = within("get", client.get(queue)).await.unwrap() {
        bodies.push(String::from_utf8(m.body.to_vec()).unwrap());
        within("ack", m.ack()).await.unwrap();
    }
    bodies
}

async fn duplicates_dropped(client: &Client, queue: &str) -> u64 {
    within("inspect", client.inspect_queue(queue))
        .await
        .unwrap()
        .duplicates_dropped
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duplicate_is_confirmed_and_reported_but_stored_once() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(&dir.path().join("data"), &[]);
    let client = connect(&broker).await;
    declare(&client, "payments", None, Some(100)).await;

    assert_eq!(
        publish(&client, "payments", "1", Some("p-1")).await,
        Confirmed::Stored
    );
    assert_eq!(
        publish(&client, "payments", "1 again", Some("p-1")).await,
        Confirmed::Duplicate
    );
    // Without a message_id a message is never a duplicate.
    assert_eq!(
        publish(&client, "payments", "anon", None).await,
        Confirmed::Stored
    );
    assert_eq!(
        publish(&client, "payments", "anon", None).await,
        Confirmed::Stored
    );
    // Within one batch too: the first of two is stored, the second reported.
    let batch = ["p-2", "p-2", "p-3"].map(|id| {
        OutgoingMessage::new("", "payments", id).with_options(PublishOptions::new().message_id(id))
    });
    let outcomes: Vec<Confirmed> = within("batch", client.publish_batch(batch))
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert_eq!(
        outcomes,
        [Confirmed::Stored, Confirmed::Duplicate, Confirmed::Stored]
    );

    assert_eq!(duplicates_dropped(&client, "payments").await, 2);
    assert_eq!(
        drain(&client, "payments").await,
        ["1", "anon", "anon", "p-2", "p-3"]
    );

    // The count shows in /metrics and in the HTTP API the dashboard reads.
    let http = HttpClient::new(broker.http_addr().unwrap(), "guest", "guest");
    let metrics = within("metrics", http.get_accepting("/metrics", "text/plain")).await;
    assert!(
        metrics.body.contains(
            "sluice_queue_duplicates_dropped_messages_total{vhost=\"/\",queue=\"payments\"} 2"
        ),
        "{}",
        metrics.body
    );
    let queue = within("queue json", http.get("/api/queues/payments")).await;
    let json: Value = serde_json::from_str(&queue.body).unwrap();
    assert_eq!(json["message_stats"]["duplicates_dropped"], 2, "{json}");
    assert_eq!(json["arguments"]["dedup_window_count"], 100, "{json}");
    client.close().await.unwrap();
    broker.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_count_window_remembers_only_the_last_ids() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(&dir.path().join("data"), &[]);
    let client = connect(&broker).await;
    declare(&client, "q", None, Some(2)).await;
    for id in ["a", "b", "c"] {
        assert_eq!(publish(&client, "q", id, Some(id)).await, Confirmed::Stored);
    }
    assert_eq!(
        publish(&client, "q", "c", Some("c")).await,
        Confirmed::Duplicate
    );
    assert_eq!(
        publish(&client, "q", "a", Some("a")).await,
        Confirmed::Stored,
        "b and c pushed a out of a window of two"
    );
    assert_eq!(drain(&client, "q").await, ["a", "b", "c", "a"]);
    client.close().await.unwrap();
    broker.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_time_window_forgets_an_id_once_it_is_old_enough() {
    const WINDOW_MS: u64 = 3_000;
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(&dir.path().join("data"), &[]);
    let client = connect(&broker).await;
    declare(&client, "q", Some(WINDOW_MS), None).await;
    let before_first = Instant::now();
    assert_eq!(
        publish(&client, "q", "1", Some("t")).await,
        Confirmed::Stored
    );
    let second = publish(&client, "q", "2", Some("t")).await;
    assert!(
        before_first.elapsed() < Duration::from_millis(WINDOW_MS),
        "the machine is too slow for this test's window"
    );
    assert_eq!(second, Confirmed::Duplicate);
    // The subject here is time itself: wait until the window has passed for sure.
    let after_first_accepted = Instant::now();
    tokio::time::sleep_until(
        (after_first_accepted + Duration::from_millis(WINDOW_MS + 100)).into(),
    )
    .await;
    assert_eq!(
        publish(&client, "q", "3", Some("t")).await,
        Confirmed::Stored
    );
    assert_eq!(drain(&client, "q").await, ["1", "3"]);
    client.close().await.unwrap();
    broker.stop();
}

/// Waits (bounded) until the dedup journal of the only queue under `data` names `id`.
async fn journal_holds(data: &Path, id: &str) {
    let deadline = Instant::now() + WAIT;
    loop {
        let queues = std::fs::read_dir(data.join("queues")).unwrap();
        let found = queues.filter_map(Result::ok).any(|q| {
            std::fs::read(q.path().join("dedup.journal"))
                .is_ok_and(|b| b.windows(id.len()).any(|w| w == id.as_bytes()))
        });
        if found {
            return;
        }
        assert!(Instant::now() < deadline, "the journal never recorded {id}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_kill_9_the_window_still_holds_for_acked_and_for_stored_messages() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let broker = BrokerProcess::start(&data, &[]);
    let client = connect(&broker).await;
    declare(&client, "orders", Some(3_600_000), Some(1000)).await;
    publish(&client, "orders", "acked", Some("o-1")).await;
    assert_eq!(drain(&client, "orders").await, ["acked"]);
    journal_holds(&data, "o-1").await;
    // Confirmed and still in the queue at the crash.
    publish(&client, "orders", "kept", Some("o-2")).await;
    broker.kill9();

    let broker = BrokerProcess::start(&data, &[]);
    let client = connect(&broker).await;
    assert_eq!(
        publish(&client, "orders", "x", Some("o-1")).await,
        Confirmed::Duplicate
    );
    assert_eq!(
        publish(&client, "orders", "x", Some("o-2")).await,
        Confirmed::Duplicate
    );
    assert_eq!(
        publish(&client, "orders", "new", Some("o-3")).await,
        Confirmed::Stored
    );
    assert_eq!(drain(&client, "orders").await, ["kept", "new"]);
    client.close().await.unwrap();
    broker.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_routed_to_two_queues_is_a_duplicate_only_where_it_was_seen() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(&dir.path().join("data"), &[]);
    let client = connect(&broker).await;
    declare(&client, "seen", None, Some(10)).await;
    declare(&client, "fresh", None, Some(10)).await;
    within(
        "exchange",
        client.declare_exchange("both", ExchangeKind::Fanout, ExchangeOptions::new()),
    )
    .await
    .unwrap();
    for q in ["seen", "fresh"] {
        within("bind", client.bind(q, "both", "", Vec::new()))
            .await
            .unwrap();
    }
    assert_eq!(
        publish(&client, "seen", "first", Some("m")).await,
        Confirmed::Stored
    );
    let options = PublishOptions::new().message_id("m");
    let outcome = within("publish", client.publish("both", "", "fanned", &options))
        .await
        .unwrap();
    assert_eq!(outcome, Confirmed::Duplicate, "one queue had it");
    assert_eq!(drain(&client, "seen").await, ["first"]);
    assert_eq!(drain(&client, "fresh").await, ["fanned"]);
    assert_eq!(duplicates_dropped(&client, "seen").await, 1);
    assert_eq!(duplicates_dropped(&client, "fresh").await, 0);
    client.close().await.unwrap();
    broker.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_window_of_zero_is_refused_and_the_connection_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(&dir.path().join("data"), &[]);
    let client = connect(&broker).await;
    for (ms, count) in [(Some(0), None), (None, Some(0)), (None, Some(1_000_001))] {
        let mut options = QueueOptions::new();
        options.arguments.dedup_window_ms = ms;
        options.arguments.dedup_window_count = count;
        let e = within("declare", client.declare_queue("q", options))
            .await
            .unwrap_err();
        assert_eq!(
            e.code(),
            Some(sluice_client::ErrorCode::InvalidArgument),
            "{e}"
        );
    }
    declare(&client, "q", Some(1), None).await;
    client.close().await.unwrap();
    broker.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_declares_a_window_and_says_when_a_publish_was_a_duplicate() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(&dir.path().join("data"), &[]);
    broker.cli(&[
        "declare-queue",
        "q",
        "--dedup-window-ms",
        "60000",
        "--dedup-window-count",
        "5",
    ]);
    let publish = ["publish", "", "q", "body", "--message-id", "cli-1"];
    let first = broker.cli(&publish);
    assert!(!first.contains("duplicate"), "{first}");
    let second = broker.cli(&publish);
    assert!(second.contains("confirmed as a duplicate"), "{second}");
    let json: Value = serde_json::from_str(&broker.cli(&["--json", "inspect", "q"])).unwrap();
    assert_eq!(json["duplicates_dropped"], 1, "{json}");
    assert_eq!(json["ready"], 1, "{json}");
    assert_eq!(json["arguments"]["dedup_window_ms"], 60000, "{json}");
    assert_eq!(json["arguments"]["dedup_window_count"], 5, "{json}");
    let text = broker.cli(&["inspect", "q"]);
    assert!(text.contains("duplicates-dropped"), "{text}");
    broker.stop();
}

/// A dead-lettered or moved copy keeps its `message_id`: the dedup window of the queue it
/// comes back to must not take it for a duplicate of itself, which would lose it (the
/// dead-letter path and the move both count it as stored).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copies_that_come_back_by_dead_lettering_or_a_move_are_not_duplicates() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(&dir.path().join("data"), &[]);
    let client = connect(&broker).await;
    let mut options = QueueOptions::new();
    options.arguments = QueueArguments {
        dedup_window_count: Some(100),
        dead_letter_exchange: Some(String::new()),
        dead_letter_routing_key: Some("jobs.dlq".to_owned()),
        ..QueueArguments::default()
    };
    within("declare", client.declare_queue("jobs", options))
        .await
        .unwrap();
    declare(&client, "jobs.dlq", None, None).await;
    assert_eq!(
        publish(&client, "jobs", "task", Some("t-1")).await,
        Confirmed::Stored
    );

    // Rejected: dead-lettered to jobs.dlq, then moved back into jobs, within the window.
    let m = within("get", client.get("jobs")).await.unwrap().unwrap();
    within("reject", m.reject()).await.unwrap();
    within("the dead-lettered copy", async {
        while client.inspect_queue("jobs.dlq").await.unwrap().ready == 0 {
            tokio::task::yield_now().await;
        }
    })
    .await;
    let id = within("move", client.move_messages("jobs.dlq", "jobs", None))
        .await
        .unwrap();
    within("the move", async {
        while !client.move_status(id).await.unwrap().state.is_finished() {
            tokio::task::yield_now().await;
        }
    })
    .await;
    assert_eq!(
        drain(&client, "jobs").await,
        ["task"],
        "the moved copy is there"
    );
    assert_eq!(drain(&client, "jobs.dlq").await, Vec::<String>::new());
    assert_eq!(duplicates_dropped(&client, "jobs").await, 0);

    // A publisher's retry of the same id is still a duplicate.
    assert_eq!(
        publish(&client, "jobs", "task again", Some("t-1")).await,
        Confirmed::Duplicate
    );
    client.close().await.unwrap();
}
