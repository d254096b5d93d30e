//! Moving ready messages between queues end to end: `MoveMessages`/`MoveStatus` on the wire,
//! `POST /api/queues/NAME/move` and `/api/moves` over HTTP, `sluice move-messages`, and a
//! `kill -9` in the middle of a move, after which no message is lost.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Stdio;
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::{json, Value};
use sluice_client::{
    Client, ConsumeOptions, ErrorCode, HeaderValue, MoveId, MoveState, MoveStatusOk,
    OutgoingMessage, PublishOptions, QueueArguments, QueueOptions,
};
use sluice_tests::broker::{sluice_command, wait_bounded, BrokerProcess, WAIT};
use sluice_tests::http::{HttpClient, HttpResponse};

/// A broker with its HTTP API on a data directory that outlives it (for restarts).
struct Broker {
    process: BrokerProcess,
    http: HttpClient,
}

impl Broker {
    fn start(dir: &std::path::Path) -> Broker {
        let process = BrokerProcess::start(&dir.join("data"), &[]);
        let http = HttpClient::new(process.http_addr().expect("HTTP on"), "guest", "guest");
        Broker { process, http }
    }

    async fn client(&self) -> Client {
        within("connect", Client::connect(&self.process.url()))
            .await
            .expect("connect")
    }
}

use sluice_tests::broker::within;

fn json_of(r: &HttpResponse, status: u16) -> Value {
    assert_eq!(r.status, status, "{r:?}");
    serde_json::from_str(&r.body).unwrap_or_else(|e| panic!("{e}: {r:?}"))
}

/// Declares `q` (durable) and publishes bodies `prefix0`, `prefix1`, ... into it, confirmed.
async fn fill(client: &Client, q: &str, ids: std::ops::Range<u64>) {
    client.declare_queue(q, QueueOptions::new()).await.unwrap();
    let ids: Vec<u64> = ids.collect();
    for chunk in ids.chunks(5_000) {
        let batch = chunk
            .iter()
            .map(|i| OutgoingMessage::new("", q, i.to_string()));
        for outcome in within("publish", client.publish_batch(batch)).await {
            outcome.unwrap();
        }
    }
}

fn id_of(body: &[u8]) -> u64 {
    std::str::from_utf8(body).unwrap().parse().unwrap()
}

/// Takes every ready message of `q` (acking them): their ids, in delivery order.
async fn drain(client: &Client, q: &str) -> Vec<u64> {
    let ready = client.inspect_queue(q).await.unwrap().ready;
    take(client, q, ready).await
}

/// Takes `count` messages of `q` (acking them), waiting for them as long as the test may:
/// their ids, in delivery order.
async fn take(client: &Client, q: &str, count: u64) -> Vec<u64> {
    let mut ids = Vec::new();
    if count == 0 {
        return ids;
    }
    let mut consumer = client
        .consume(q, ConsumeOptions::new().prefetch(1000))
        .await
        .unwrap();
    while (ids.len() as u64) < count {
        let m = within("messages to take", consumer.next())
            .await
            .unwrap()
            .unwrap();
        ids.push(id_of(&m.body));
        if ids.len() % 500 == 0 || ids.len() as u64 == count {
            m.ack_multiple().await.unwrap();
        }
    }
    consumer.cancel().await.unwrap();
    ids
}

/// Polls a move until it has finished.
async fn finished(client: &Client, id: MoveId) -> MoveStatusOk {
    within("the move", async {
        loop {
            let status = client.move_status(id).await.unwrap();
            if status.state.is_finished() {
                return status;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moving_n_of_m_messages_moves_the_oldest_n_with_their_meta() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path());
    let client = broker.client().await;
    client
        .declare_queue("dlq", QueueOptions::new())
        .await
        .unwrap();
    client
        .declare_queue("work", QueueOptions::new())
        .await
        .unwrap();
    for i in 0..10 {
        let options = PublishOptions::new()
            .message_id(format!("id-{i}"))
            .header("attempt", HeaderValue::Int(i));
        client
            .publish("", "dlq", i.to_string(), &options)
            .await
            .unwrap();
    }
    let id = client.move_messages("dlq", "work", Some(4)).await.unwrap();
    let status = finished(&client, id).await;
    assert_eq!(
        status,
        MoveStatusOk {
            state: MoveState::Done,
            moved: 4,
            requested: 4
        }
    );
    assert_eq!(client.inspect_queue("dlq").await.unwrap().ready, 6);
    let mut consumer = client
        .consume("work", ConsumeOptions::new().prefetch(10))
        .await
        .unwrap();
    for i in 0..4 {
        let m = within("moved message", consumer.next())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(id_of(&m.body), i);
        let props = m.properties();
        assert_eq!(props.message_id, Some(format!("id-{i}")));
        assert!(props.persistent);
        assert_eq!(m.header("attempt"), Some(HeaderValue::Int(i as i64)));
        assert_eq!((m.delivery_count, m.redelivered), (1, false));
        m.ack().await.unwrap();
    }
    assert_eq!(client.inspect_queue("work").await.unwrap().ready, 0);
    assert_eq!(drain(&client, "dlq").await, (4..10).collect::<Vec<_>>());
    client.close().await.unwrap();
    broker.process.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moving_all_while_a_consumer_takes_from_the_source_puts_every_message_in_exactly_one_place()
{
    const N: u64 = 5_000;
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path());
    let client = broker.client().await;
    fill(&client, "src", 0..N).await;
    client
        .declare_queue("dst", QueueOptions::new())
        .await
        .unwrap();

    // A consumer on the source, acking as it goes, from before the move until the source is
    // empty.
    let consumer_client = broker.client().await;
    let mut consumer = consumer_client
        .consume("src", ConsumeOptions::new().prefetch(20))
        .await
        .unwrap();
    let first = within("first delivery", consumer.next())
        .await
        .unwrap()
        .unwrap();
    let mut consumed = vec![id_of(&first.body)];
    first.ack().await.unwrap();
    let id = client.move_messages("src", "dst", None).await.unwrap();
    let mut status = client.move_status(id).await.unwrap();
    while !status.state.is_finished() {
        // Keep consuming while the move runs.
        if let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(5), consumer.next()).await {
            let m = m.unwrap();
            consumed.push(id_of(&m.body));
            m.ack().await.unwrap();
        }
        status = client.move_status(id).await.unwrap();
    }
    assert_eq!(status.state, MoveState::Done);
    consumer.cancel().await.unwrap();
    consumer_client.close().await.unwrap();
    let moved = drain(&client, "dst").await;
    assert_eq!(moved.len() as u64, status.moved);
    // The consumer's unsettled deliveries return to the source as its connection closes.
    let left = take(&client, "src", N - consumed.len() as u64 - status.moved).await;
    let src = client.inspect_queue("src").await.unwrap();
    assert_eq!((src.ready, src.unacked), (0, 0));

    let mut places: BTreeMap<u64, usize> = BTreeMap::new();
    for id in consumed.iter().chain(&moved).chain(&left) {
        *places.entry(*id).or_default() += 1;
    }
    assert_eq!(places.len() as u64, N, "every message is somewhere");
    assert!(
        places.values().all(|&n| n == 1),
        "no message twice without a crash"
    );
    assert!(status.moved > 0);
    client.close().await.unwrap();
    broker.process.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moves_to_a_missing_queue_or_to_the_same_queue_fail_before_starting() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path());
    let client = broker.client().await;
    fill(&client, "src", 0..3).await;
    let err = client.move_messages("src", "nope", None).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::NotFound));
    let err = client.move_messages("nope", "src", None).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::NotFound));
    let err = client.move_messages("src", "src", None).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::InvalidArgument));
    let err = client.move_status(MoveId(999)).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::NotFound));

    let post = |body: Value| {
        let http = &broker.http;
        async move { http.post("/api/queues/src/move", &body.to_string()).await }
    };
    let r = post(json!({"destination": "nope"})).await;
    assert_eq!(json_of(&r, 404)["error"], "NOT_FOUND");
    let r = post(json!({"destination": "src"})).await;
    assert_eq!(json_of(&r, 400)["error"], "INVALID_ARGUMENT");
    let r = post(json!({"destination": "src", "bogus": 1})).await;
    assert_eq!(json_of(&r, 400)["error"], "INVALID_ARGUMENT");
    let r = broker.http.get("/api/moves/12345").await;
    assert_eq!(json_of(&r, 404)["error"], "NOT_FOUND");
    let r = broker.http.get("/api/moves/x").await;
    assert_eq!(json_of(&r, 400)["error"], "INVALID_ARGUMENT");
    // Nothing started, nothing moved.
    assert_eq!(
        json_of(&broker.http.get("/api/moves").await, 200),
        json!([])
    );
    assert_eq!(client.inspect_queue("src").await.unwrap().ready, 3);

    let anonymous = HttpClient::anonymous(broker.process.http_addr().unwrap());
    let r = anonymous
        .post("/api/queues/src/move", r#"{"destination": "x"}"#)
        .await;
    assert_eq!(json_of(&r, 401)["error"], "ACCESS_REFUSED");
    for path in ["/api/moves", "/api/moves/1"] {
        assert_eq!(
            json_of(&anonymous.get(path).await, 401)["error"],
            "ACCESS_REFUSED"
        );
    }
    client.close().await.unwrap();
    broker.process.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_move_into_a_full_queue_fails_with_queue_full_and_leaves_the_rest_in_the_source() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path());
    let client = broker.client().await;
    fill(&client, "src", 0..10).await;
    let full = QueueOptions {
        arguments: QueueArguments {
            max_length: Some(3),
            overflow: Some(sluice_client::Overflow::RejectPublish),
            ..QueueArguments::default()
        },
        ..QueueOptions::new()
    };
    client.declare_queue("small", full).await.unwrap();
    let id = client.move_messages("src", "small", None).await.unwrap();
    let status = finished(&client, id).await;
    let MoveState::Failed { code, message } = &status.state else {
        panic!("{status:?}")
    };
    assert_eq!(*code, ErrorCode::QueueFull);
    assert!(message.contains("small"), "{message}");
    assert_eq!((status.moved, status.requested), (3, 10));
    assert_eq!(drain(&client, "small").await, vec![0, 1, 2]);
    // The refused ones are ready again, in their order, as first deliveries.
    assert_eq!(drain(&client, "src").await, (3..10).collect::<Vec<_>>());
    let failed = json_of(&broker.http.get(&format!("/api/moves/{id}")).await, 200);
    assert_eq!(failed["state"], "failed");
    assert_eq!(failed["error"]["code"], "QUEUE_FULL");
    client.close().await.unwrap();
    broker.process.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moves_are_started_and_followed_over_http_and_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path());
    let client = broker.client().await;
    fill(&client, "dlq", 0..20).await;
    client
        .declare_queue("work", QueueOptions::new())
        .await
        .unwrap();
    let r = broker
        .http
        .post(
            "/api/queues/dlq/move",
            r#"{"destination": "work", "max": 5}"#,
        )
        .await;
    let id = json_of(&r, 202)["id"].as_u64().expect("an id");
    let shown = within("the move", async {
        loop {
            let m = json_of(&broker.http.get(&format!("/api/moves/{id}")).await, 200);
            if m["state"] != "running" {
                return m;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert_eq!(shown["id"], id);
    assert_eq!(shown["source"], "dlq");
    assert_eq!(shown["destination"], "work");
    assert_eq!(shown["requested"], 5);
    assert_eq!(shown["moved"], 5);
    assert_eq!(shown["state"], "done");
    assert_eq!(shown["error"], Value::Null);
    let started = shown["started_at_ms"].as_u64().unwrap();
    assert!(shown["finished_at_ms"].as_u64().unwrap() >= started);

    // `null` moves everything ready; the list holds both moves, oldest first.
    let r = broker
        .http
        .post(
            "/api/queues/dlq/move",
            r#"{"destination": "work", "max": null}"#,
        )
        .await;
    let second = json_of(&r, 202)["id"].as_u64().unwrap();
    let status = finished(&client, MoveId(second)).await;
    assert_eq!((status.moved, status.requested), (15, 15));
    let all = json_of(&broker.http.get("/api/moves").await, 200);
    let ids: Vec<u64> = all
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_u64().unwrap())
        .collect();
    assert_eq!(ids, [id, second]);

    // And back with the command line, which reports the count and exits 0.
    let (ok, out, _) = run_cli(&broker, &["move-messages", "work", "dlq", "--max", "7"]);
    assert!(ok, "{out}");
    assert_eq!(out, "moved 7 messages from 'work' to 'dlq'\n");
    let (ok, _, err) = run_cli(&broker, &["move-messages", "work", "nope"]);
    assert!(!ok);
    assert!(err.contains("NOT_FOUND"), "{err}");
    assert_eq!(client.inspect_queue("dlq").await.unwrap().ready, 7);
    assert_eq!(client.inspect_queue("work").await.unwrap().ready, 13);
    client.close().await.unwrap();
    broker.process.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_in_the_middle_of_a_move_loses_no_message() {
    broker_stopped_in_the_middle_of_a_move_loses_no_message(BrokerProcess::kill9).await;
}

/// A graceful stop closes the destination while a batch may wait in its mailbox: that batch
/// was never stored, so the source must keep it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_stop_in_the_middle_of_a_move_loses_no_message() {
    broker_stopped_in_the_middle_of_a_move_loses_no_message(BrokerProcess::stop).await;
}

async fn broker_stopped_in_the_middle_of_a_move_loses_no_message(stop: fn(BrokerProcess)) {
    const N: u64 = 50_000;
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path());
    let client = broker.client().await;
    fill(&client, "src", 0..N).await;
    client
        .declare_queue("dst", QueueOptions::new())
        .await
        .unwrap();
    client.close().await.unwrap();

    let r = broker
        .http
        .post("/api/queues/src/move", r#"{"destination": "dst"}"#)
        .await;
    let id = json_of(&r, 202)["id"].as_u64().unwrap();
    // Progress shows while the move runs; the kill comes once some of it is done.
    let running = within("progress", async {
        loop {
            let m = json_of(&broker.http.get(&format!("/api/moves/{id}")).await, 200);
            if m["moved"].as_u64().unwrap() > 0 {
                return m;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    stop(broker.process);
    assert_eq!(running["state"], "running", "{running}");
    assert_eq!(running["requested"], N);
    assert!(running["moved"].as_u64().unwrap() < N, "{running}");

    let broker = Broker::start(dir.path());
    let client = broker.client().await;
    let left = drain(&client, "src").await;
    let moved = drain(&client, "dst").await;
    let everywhere: BTreeSet<u64> = left.iter().chain(&moved).copied().collect();
    let missing: Vec<u64> = (0..N)
        .filter(|i| !everywhere.contains(i))
        .take(10)
        .collect();
    assert!(missing.is_empty(), "lost messages, e.g. {missing:?}");
    assert!(!moved.is_empty(), "some messages had moved before the stop");
    eprintln!(
        "after the stop: {} in the source, {} in the destination, {} duplicates",
        left.len(),
        moved.len(),
        left.len() + moved.len() - N as usize
    );
    client.close().await.unwrap();
    broker.process.stop();
}

/// Runs `sluice ARGS --url <broker>`: whether it succeeded, its stdout and its stderr.
fn run_cli(broker: &Broker, args: &[&str]) -> (bool, String, String) {
    let url = broker.process.cli_url();
    let mut child = sluice_command()
        .args(args)
        .args(["--url", &url])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start sluice");
    let read = |mut pipe: Box<dyn std::io::Read + Send>| {
        std::thread::spawn(move || {
            let mut out = String::new();
            pipe.read_to_string(&mut out).unwrap();
            out
        })
    };
    let stdout = read(Box::new(child.stdout.take().unwrap()));
    let stderr = read(Box::new(child.stderr.take().unwrap()));
    let status = wait_bounded(child, WAIT + Duration::from_secs(1)).expect("sluice exits");
    (
        status.success(),
        stdout.join().unwrap(),
        stderr.join().unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishing_and_consuming_go_on_while_a_long_move_runs() {
    const N: u64 = 50_000;
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path());
    let client = broker.client().await;
    fill(&client, "src", 0..N).await;
    client
        .declare_queue("dst", QueueOptions::new())
        .await
        .unwrap();
    let id = client.move_messages("src", "dst", None).await.unwrap();
    let started = std::time::Instant::now();
    // Into the destination and out of the source, one confirmed message at a time: each
    // waits behind a batch or two of the move, not behind the whole move.
    for i in 0..10u64 {
        client
            .publish("", "dst", (N + i).to_string(), &PublishOptions::new())
            .await
            .unwrap();
        let m = client.get("src").await.unwrap().expect("a ready message");
        m.ack().await.unwrap();
    }
    let during = started.elapsed();
    let status = client.move_status(id).await.unwrap();
    let status_after_work = status.clone();
    let done = finished(&client, id).await;
    eprintln!(
        "10 publishes and gets in {during:?}; the move: {status_after_work:?} then, all of it in {:?}",
        started.elapsed()
    );
    assert_eq!(
        status.state,
        MoveState::Running,
        "{status:?} after {during:?}"
    );
    assert_eq!(done.state, MoveState::Done);
    assert_eq!(done.moved, N - 10);
    client.close().await.unwrap();
    broker.process.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_move_whose_source_is_deleted_fails_with_not_found_and_keeps_what_it_moved() {
    const N: u64 = 50_000;
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path());
    let client = broker.client().await;
    fill(&client, "src", 0..N).await;
    client
        .declare_queue("dst", QueueOptions::new())
        .await
        .unwrap();
    let id = client.move_messages("src", "dst", None).await.unwrap();
    within("some progress", async {
        while client.move_status(id).await.unwrap().moved == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    client
        .delete_queue("src", sluice_client::DeleteQueueOptions::default())
        .await
        .unwrap();
    let status = finished(&client, id).await;
    let MoveState::Failed { code, message } = &status.state else {
        panic!("{status:?}")
    };
    assert_eq!(*code, ErrorCode::NotFound, "{message}");
    assert!(message.contains("src"), "{message}");
    assert!(status.moved < N, "{status:?}");
    // Every message counted as moved is in the destination, once, in order.
    let moved = drain(&client, "dst").await;
    assert_eq!(moved, (0..status.moved).collect::<Vec<_>>());
    client.close().await.unwrap();
    broker.process.stop();
}
