//! Message priorities against the real broker: a queue with `max_priority` delivers higher
//! priorities first and each priority in order, puts returned messages back into their
//! priority, caps priorities above its maximum, keeps every message's priority across a
//! `kill -9`, and refuses a `max_priority` out of range. The CLI and the HTTP API set and show
//! the same.

use std::io::Read;
use std::process::{Command, Stdio};

use futures_util::StreamExt;
use serde_json::{json, Value};
use sluice_client::wire::ErrorCode;
use sluice_client::{Client, ConsumeOptions, OutgoingMessage, PublishOptions, QueueOptions};
use sluice_tests::broker::{sluice_command, wait_bounded, within, BrokerProcess, WAIT};
use sluice_tests::http::HttpClient;

async fn connect(process: &BrokerProcess) -> Client {
    within("connect", Client::connect(&process.url()))
        .await
        .expect("connect")
}

/// Publishes `(body, priority)` pairs in order, each confirmed before the next is sent.
async fn publish(client: &Client, queue: &str, messages: &[(&str, Option<u8>)]) {
    let batch = messages.iter().map(|&(body, priority)| {
        let mut options = PublishOptions::new();
        if let Some(p) = priority {
            options = options.priority(p);
        }
        OutgoingMessage::new("", queue, body.to_owned()).with_options(options)
    });
    let outcomes = within("publish", client.publish_batch(batch)).await;
    assert!(outcomes.iter().all(Result::is_ok), "{outcomes:?}");
}

/// Takes every ready message with `Get`, acking each: their bodies in the order taken.
async fn take_all(client: &Client, queue: &str) -> Vec<String> {
    let mut bodies = Vec::new();
    while let Some(m) = within("get", client.get(queue)).await.expect("get") {
        bodies.push(String::from_utf8(m.body.to_vec()).expect("UTF-8 body"));
        m.ack().await.expect("ack");
    }
    bodies
}

fn server_code(e: &sluice_client::Error) -> ErrorCode {
    e.code()
        .unwrap_or_else(|| panic!("expected a server error, got {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn higher_priorities_are_delivered_first_and_each_priority_in_publish_order() {
    let dir = tempfile::tempdir().unwrap();
    let process = BrokerProcess::start(dir.path(), &[]);
    let client = connect(&process).await;
    client
        .declare_queue("jobs", QueueOptions::new().max_priority(5))
        .await
        .unwrap();
    publish(
        &client,
        "jobs",
        &[
            ("low-1", None),
            ("mid-1", Some(2)),
            ("high-1", Some(5)),
            ("low-2", Some(0)),
            ("mid-2", Some(2)),
            ("high-2", Some(5)),
            ("one-1", Some(1)),
        ],
    )
    .await;
    assert_eq!(client.inspect_queue("jobs").await.unwrap().ready, 7);

    // A consumer gets them by priority, FIFO within each.
    let mut consumer = client
        .consume("jobs", ConsumeOptions::new().prefetch(100))
        .await
        .unwrap();
    let mut bodies = Vec::new();
    for _ in 0..7 {
        let m = within("delivery", consumer.next())
            .await
            .expect("a delivery")
            .expect("no error");
        bodies.push(String::from_utf8(m.body.to_vec()).unwrap());
        let expected = match bodies.last().unwrap().split('-').next().unwrap() {
            "high" => Some(5),
            "mid" => Some(2),
            "one" => Some(1),
            _ => m.meta().priority.filter(|&p| p == 0),
        };
        assert_eq!(m.meta().priority, expected, "the priority travels with it");
        m.ack().await.unwrap();
    }
    assert_eq!(
        bodies,
        ["high-1", "high-2", "mid-1", "mid-2", "one-1", "low-1", "low-2"]
    );
    process.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_requeued_message_goes_back_into_its_priority_ahead_of_newer_ones() {
    let dir = tempfile::tempdir().unwrap();
    let process = BrokerProcess::start(dir.path(), &[]);
    let client = connect(&process).await;
    client
        .declare_queue("jobs", QueueOptions::new().max_priority(3))
        .await
        .unwrap();
    publish(
        &client,
        "jobs",
        &[
            ("a", Some(2)),
            ("b", Some(2)),
            ("c", Some(2)),
            ("x", Some(1)),
        ],
    )
    .await;
    let a = within("get", client.get("jobs")).await.unwrap().unwrap();
    let b = within("get", client.get("jobs")).await.unwrap().unwrap();
    assert_eq!((&a.body[..], &b.body[..]), (&b"a"[..], &b"b"[..]));
    // A newer message of a higher priority, then the two come back, the later one first.
    publish(&client, "jobs", &[("top", Some(3))]).await;
    b.nack(true).await.unwrap();
    a.nack(true).await.unwrap();

    let mut taken = Vec::new();
    while let Some(m) = within("get", client.get("jobs")).await.unwrap() {
        let body = String::from_utf8(m.body.to_vec()).unwrap();
        taken.push((body, m.redelivered, m.delivery_count));
        m.ack().await.unwrap();
    }
    let expected = [
        ("top", false, 1),
        ("a", true, 2),
        ("b", true, 2),
        ("c", false, 1),
        ("x", false, 1),
    ];
    let expected: Vec<_> = expected
        .iter()
        .map(|&(b, r, c)| (b.to_owned(), r, c))
        .collect();
    assert_eq!(taken, expected);
    process.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_priority_above_the_queue_maximum_counts_as_the_maximum() {
    let dir = tempfile::tempdir().unwrap();
    let process = BrokerProcess::start(dir.path(), &[]);
    let client = connect(&process).await;
    client
        .declare_queue("capped", QueueOptions::new().max_priority(3))
        .await
        .unwrap();
    publish(
        &client,
        "capped",
        &[
            ("none", None),
            ("three", Some(3)),
            ("two", Some(2)),
            ("max-u8", Some(255)),
            ("nine", Some(9)),
        ],
    )
    .await;
    assert_eq!(
        take_all(&client, "capped").await,
        ["three", "max-u8", "nine", "two", "none"],
        "3, 255 and 9 share the top priority, in publish order"
    );
    process.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_without_max_priority_ignores_priorities() {
    let dir = tempfile::tempdir().unwrap();
    let process = BrokerProcess::start(dir.path(), &[]);
    let client = connect(&process).await;
    client
        .declare_queue("plain", QueueOptions::new())
        .await
        .unwrap();
    publish(
        &client,
        "plain",
        &[("first", Some(1)), ("second", Some(9)), ("third", None)],
    )
    .await;
    assert_eq!(
        take_all(&client, "plain").await,
        ["first", "second", "third"]
    );
    process.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn priorities_survive_kill_9_with_unacked_messages_back_in_their_priority() {
    let dir = tempfile::tempdir().unwrap();
    let process = BrokerProcess::start(dir.path(), &[]);
    let client = connect(&process).await;
    client
        .declare_queue("durable-jobs", QueueOptions::new().max_priority(10))
        .await
        .unwrap();
    publish(
        &client,
        "durable-jobs",
        &[
            ("p0-a", None),
            ("p7-a", Some(7)),
            ("p10-a", Some(10)),
            ("p7-b", Some(7)),
            ("p0-b", None),
            ("p10-b", Some(10)),
            ("p7-c", Some(7)),
        ],
    )
    .await;
    // Held, unacked, at the crash: p10-a, p10-b and p7-a; acked before it: nothing.
    let mut held = Vec::new();
    for expected in ["p10-a", "p10-b", "p7-a"] {
        let m = within("get", client.get("durable-jobs"))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&m.body[..], expected.as_bytes());
        held.push(m);
    }
    process.kill9();

    let process = BrokerProcess::start(dir.path(), &[]);
    let client = connect(&process).await;
    let inspected = client.inspect_queue("durable-jobs").await.unwrap();
    assert_eq!(inspected.arguments.max_priority, Some(10));
    assert_eq!((inspected.ready, inspected.unacked), (7, 0));
    assert_eq!(
        take_all(&client, "durable-jobs").await,
        ["p10-a", "p10-b", "p7-a", "p7-b", "p7-c", "p0-a", "p0-b"]
    );
    drop(held);

    // A clean restart keeps the order too.
    publish(
        &client,
        "durable-jobs",
        &[("late-low", Some(1)), ("late-high", Some(4))],
    )
    .await;
    process.stop();
    let process = BrokerProcess::start(dir.path(), &[]);
    let client = connect(&process).await;
    assert_eq!(
        take_all(&client, "durable-jobs").await,
        ["late-high", "late-low"]
    );
    process.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_priority_must_be_between_1_and_10_and_a_redeclare_must_match_it() {
    let dir = tempfile::tempdir().unwrap();
    let process = BrokerProcess::start(dir.path(), &[]);
    let client = connect(&process).await;
    for refused in [0, 11, 255] {
        let err = client
            .declare_queue("q", QueueOptions::new().max_priority(refused))
            .await
            .unwrap_err();
        assert_eq!(server_code(&err), ErrorCode::InvalidArgument, "{refused}");
        assert!(err.to_string().contains("max_priority"), "{err}");
    }
    for accepted in [1, 10] {
        let name = format!("q{accepted}");
        client
            .declare_queue(&name, QueueOptions::new().max_priority(accepted))
            .await
            .unwrap();
        let inspected = client.inspect_queue(&name).await.unwrap();
        assert_eq!(inspected.arguments.max_priority, Some(accepted));
    }
    let err = client
        .declare_queue("q1", QueueOptions::new().max_priority(2))
        .await
        .unwrap_err();
    assert_eq!(server_code(&err), ErrorCode::PreconditionFailed);
    assert!(err.to_string().contains("max_priority"), "{err}");
    // The connection keeps serving.
    client
        .declare_queue("q1", QueueOptions::new().max_priority(1))
        .await
        .unwrap();
    process.stop();
}

/// Runs `sluice ARGS --url URL --json`, which must succeed: its parsed output.
fn sluice_json(url: &str, args: &[&str]) -> Value {
    let mut child = sluice_command()
        .args(args)
        .args(["--url", url, "--json"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting sluice");
    let mut stdout = child.stdout.take().expect("stdout is piped");
    let reader = std::thread::spawn(move || {
        let mut out = String::new();
        stdout.read_to_string(&mut out).map(|_| out)
    });
    let status = wait_bounded(child, WAIT).expect("sluice finished in time");
    let out = reader.join().unwrap().expect("UTF-8 output");
    assert!(status.success(), "sluice {args:?}: {status}\n{out}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("no JSON from {args:?} ({e}): {out}"))
}

/// Runs `sluice ARGS --url URL`: its exit status and standard error.
fn sluice_status(url: &str, args: &[&str]) -> (Option<i32>, String) {
    let mut command: Command = sluice_command();
    let mut child = command
        .args(args)
        .args(["--url", url])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting sluice");
    let mut stderr = child.stderr.take().expect("stderr is piped");
    let reader = std::thread::spawn(move || {
        let mut out = String::new();
        stderr.read_to_string(&mut out).map(|_| out)
    });
    let status = wait_bounded(child, WAIT).expect("sluice finished in time");
    (status.code(), reader.join().unwrap().expect("UTF-8 output"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_and_the_http_api_declare_publish_and_show_priorities() {
    let dir = tempfile::tempdir().unwrap();
    let process = BrokerProcess::start(dir.path(), &["--http-listen", "127.0.0.1:0"]);
    let url = process.cli_url();

    // CLI: declare, publish with priorities, inspect.
    let declared = sluice_json(&url, &["declare-queue", "cli-jobs", "--max-priority", "4"]);
    assert_eq!(declared["name"], "cli-jobs");
    for (body, priority) in [("low", "0"), ("high", "4"), ("capped", "9")] {
        let (code, stderr) = sluice_status(
            &url,
            &["publish", "", "cli-jobs", body, "--priority", priority],
        );
        assert_eq!(code, Some(0), "{stderr}");
    }
    let inspected = sluice_json(&url, &["inspect", "cli-jobs"]);
    assert_eq!(inspected["arguments"]["max_priority"], 4, "{inspected}");
    assert_eq!(inspected["ready"], 3, "{inspected}");
    let (code, stderr) = sluice_status(&url, &["declare-queue", "bad", "--max-priority", "0"]);
    assert_ne!(code, Some(0));
    assert!(stderr.contains("INVALID_ARGUMENT"), "{stderr}");
    let first = sluice_json(&url, &["get", "cli-jobs"]);
    assert_eq!(first["body"], "high", "{first}");
    assert_eq!(first["priority"], 4, "{first}");

    // HTTP: declare, publish, show.
    let http = HttpClient::new(process.http_addr().unwrap(), "guest", "guest");
    let put = http
        .put(
            "/api/queues/http-jobs",
            &json!({"arguments": {"max_priority": 2}}).to_string(),
        )
        .await;
    assert_eq!(put.status, 200, "{}", put.body);
    let refused = http
        .put(
            "/api/queues/too-many",
            &json!({"arguments": {"max_priority": 11}}).to_string(),
        )
        .await;
    assert_eq!(refused.status, 400, "{}", refused.body);
    for (payload, priority) in [("later", json!(null)), ("sooner", json!(2))] {
        let body = json!({"routing_key": "http-jobs", "payload": payload,
                          "properties": {"priority": priority}});
        let published = http
            .post("/api/exchanges/amq.default/publish", &body.to_string())
            .await;
        assert_eq!(published.status, 200, "{}", published.body);
    }
    // /metrics counts the ready messages of each priority.
    let expected = [("0", 1), ("1", 0), ("2", 1)].map(|(priority, n)| {
        format!(
            "sluice_queue_ready_by_priority_messages{{vhost=\"/\",queue=\"http-jobs\",priority=\"{priority}\"}} {n}\n"
        )
    });
    within("the per-priority counts in /metrics", async {
        loop {
            let scraped = http.get("/metrics").await.body;
            if expected.iter().all(|line| scraped.contains(line.as_str())) {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await;
    let shown: Value = serde_json::from_str(&http.get("/api/queues/http-jobs").await.body).unwrap();
    assert_eq!(shown["arguments"]["max_priority"], 2, "{shown}");
    let browsed: Value =
        serde_json::from_str(&http.get("/api/queues/http-jobs/messages").await.body).unwrap();
    assert_eq!(browsed[1]["properties"]["priority"], 2, "{browsed}");
    let got = http
        .post(
            "/api/queues/http-jobs/get",
            &json!({"count": 2}).to_string(),
        )
        .await;
    assert_eq!(got.status, 200, "{}", got.body);
    let got: Value = serde_json::from_str(&got.body).unwrap();
    assert_eq!(got[0]["payload"], "sooner", "{got}");
    assert_eq!(got[1]["payload"], "later", "{got}");

    let client = connect(&process).await;
    assert_eq!(take_all(&client, "cli-jobs").await, ["capped", "low"]);
    process.stop();
}
