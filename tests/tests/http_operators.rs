//! The HTTP API's operator routes end to end: closing connections and cancelling consumers,
//! publish and get for debugging, and definitions (export, import, and the CLI's same format).

use std::io::Read;
use std::process::Stdio;
use std::thread::{self, JoinHandle};

use futures_util::StreamExt;
use serde_json::{json, Value};
use sluice_client::{
    Client, CloseReason, ConsumeOptions, Consumer, Error, ErrorCode, QueueOptions,
};
use sluice_tests::broker::{sluice_command, wait_bounded, BrokerProcess, WAIT};
use sluice_tests::http::{HttpClient, HttpResponse};

struct Broker {
    process: BrokerProcess,
    http: HttpClient,
    dir: tempfile::TempDir,
}

impl Broker {
    fn start() -> Broker {
        let dir = tempfile::tempdir().expect("temporary directory");
        let process = BrokerProcess::start(&dir.path().join("data"), &[]);
        let http = HttpClient::new(process.http_addr().expect("HTTP on"), "guest", "guest");
        Broker { process, http, dir }
    }

    async fn client(&self, name: &str) -> Client {
        let url = self.process.url();
        // These tests watch connections an operator closes end: no reconnecting.
        let connect = Client::builder()
            .name(name)
            .reconnect_timeout(std::time::Duration::ZERO)
            .connect(&url);
        within("connect", connect).await.expect("connect")
    }

    fn anonymous(&self) -> HttpClient {
        HttpClient::anonymous(self.process.http_addr().expect("HTTP on"))
    }

    /// Runs `sluice ARGS --url <this broker>` off the runtime's threads; returns its exit
    /// code and stdout.
    async fn sluice(&self, args: &[&str]) -> (Option<i32>, String) {
        let mut args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
        args.extend(["--url".to_owned(), self.process.cli_url()]);
        tokio::task::spawn_blocking(move || {
            let mut child = sluice_command()
                .args(&args)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("starting sluice");
            let stdout = drain(child.stdout.take().expect("piped"));
            let stderr = drain(child.stderr.take().expect("piped"));
            let status = wait_bounded(child, WAIT).expect("sluice finished in time");
            let (out, err) = (stdout.join().unwrap(), stderr.join().unwrap());
            eprintln!("$ sluice {args:?}\n{out}{err}");
            (status.code(), out)
        })
        .await
        .expect("the command's thread")
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!("broker log:\n{}", self.process.log());
        }
    }
}

fn drain(mut pipe: impl Read + Send + 'static) -> JoinHandle<String> {
    thread::spawn(move || {
        let mut text = String::new();
        let _ = pipe.read_to_string(&mut text);
        text
    })
}

use sluice_tests::broker::within;

fn json_of(r: &HttpResponse, status: u16) -> Value {
    assert_eq!(r.status, status, "{r:?}");
    serde_json::from_str(&r.body).unwrap_or_else(|e| panic!("{e}: {r:?}"))
}

fn assert_error(r: &HttpResponse, status: u16, code: &str) {
    let body = json_of(r, status);
    assert_eq!(body["error"], code, "{r:?}");
}

/// The id of the connection named `name` in `GET /api/connections`.
async fn connection_id(http: &HttpClient, name: &str) -> u64 {
    let all = json_of(&http.get("/api/connections").await, 200);
    all.as_array()
        .expect("an array")
        .iter()
        .find(|c| c["connection_name"] == name)
        .and_then(|c| c["connection_id"].as_u64())
        .unwrap_or_else(|| panic!("no connection {name} in {all}"))
}

/// Reads a consumer until it ends with an error.
async fn ended(consumer: &mut Consumer) -> Error {
    loop {
        match within("the consumer to end", consumer.next()).await {
            Some(Ok(_)) => continue,
            Some(Err(e)) => return e,
            None => panic!("the consumer ended without an error"),
        }
    }
}

/// Publishes over HTTP and expects `{"routed": routed}`.
async fn publish(http: &HttpClient, exchange: &str, body: Value, routed: bool) {
    let path = format!("/api/exchanges/{exchange}/publish");
    let r = http.post(&path, &body.to_string()).await;
    assert_eq!(json_of(&r, 200), json!({ "routed": routed }));
}

async fn get(http: &HttpClient, queue: &str, body: Value) -> Vec<Value> {
    let r = http
        .post(&format!("/api/queues/{queue}/get"), &body.to_string())
        .await;
    match json_of(&r, 200) {
        Value::Array(messages) => messages,
        other => panic!("not an array: {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_operator_route_wants_credentials() {
    let broker = Broker::start();
    let anonymous = broker.anonymous();
    let requests = [
        ("DELETE", "/api/connections/1", None),
        ("DELETE", "/api/connections/1/consumers/w", None),
        ("POST", "/api/exchanges/amq.default/publish", Some("{}")),
        ("POST", "/api/queues/q/get", Some("{}")),
        ("GET", "/api/definitions", None),
        ("POST", "/api/definitions", Some(r#"{"version": 1}"#)),
    ];
    for (method, path, body) in requests {
        let r = anonymous.request(method, path, body).await;
        assert_error(&r, 401, "ACCESS_REFUSED");
    }
    assert_eq!(
        json_of(&broker.http.get("/api/queues").await, 200),
        json!([])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_connection_closes_it_with_the_reason_and_redelivers_its_messages() {
    let broker = Broker::start();
    let http = &broker.http;
    assert_eq!(http.put("/api/queues/jobs", "{}").await.status, 200);
    for i in 0..2 {
        let body = json!({"routing_key": "jobs", "payload": format!("m{i}")});
        publish(http, "amq.default", body, true).await;
    }
    let victim = broker.client("victim").await;
    let mut consumer = victim
        .consume("jobs", ConsumeOptions::new().prefetch(10))
        .await
        .expect("consume");
    for _ in 0..2 {
        within("delivery", consumer.next()).await.unwrap().unwrap();
    }
    let id = connection_id(http, "victim").await;
    let path = format!("/api/connections/{id}");
    let r = http.delete(&path, Some(r#"{"reason": "drain"}"#)).await;
    assert_eq!((r.status, r.body.as_str()), (204, ""), "{r:?}");
    match ended(&mut consumer).await {
        Error::ConnectionClosed(CloseReason::Server { code, reason }) => {
            assert_eq!(code, Some(ErrorCode::ConnectionForced));
            assert_eq!(reason, "drain");
        }
        other => panic!("expected CONNECTION_FORCED, got {other:?}"),
    }
    // Gone: a second close is a 404.
    assert_error(&http.delete(&path, None).await, 404, "NOT_FOUND");
    // Its two messages are ready again, marked redelivered.
    let again = get(http, "jobs", json!({"count": 5})).await;
    assert_eq!(again.len(), 2, "{again:?}");
    assert!(again.iter().all(|m| m["redelivered"] == true), "{again:?}");

    // Without a body the client is told the default words.
    let other = broker.client("other").await;
    let mut waiting = other.consume("jobs", ConsumeOptions::new()).await.unwrap();
    let id = connection_id(http, "other").await;
    let r = http.delete(&format!("/api/connections/{id}"), None).await;
    assert_eq!(r.status, 204, "{r:?}");
    let e = ended(&mut waiting).await;
    assert!(e.to_string().contains("closed by an operator"), "{e}");

    assert_error(
        &http.delete("/api/connections/999999", None).await,
        404,
        "NOT_FOUND",
    );
    assert_error(
        &http.delete("/api/connections/abc", None).await,
        404,
        "NOT_FOUND",
    );
    assert_error(
        &http
            .delete(&format!("/api/connections/{id}"), Some(r#"{"why": 1}"#))
            .await,
        400,
        "INVALID_ARGUMENT",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_consumer_cancels_it_and_keeps_its_connection() {
    let broker = Broker::start();
    let http = &broker.http;
    let victim = broker.client("victim").await;
    victim
        .declare_queue("jobs", QueueOptions::new())
        .await
        .unwrap();
    publish(
        http,
        "amq.default",
        json!({"routing_key": "jobs", "payload": "x"}),
        true,
    )
    .await;
    let mut consumer = victim
        .consume("jobs", ConsumeOptions::new().consumer_tag("worker 1"))
        .await
        .unwrap();
    within("delivery", consumer.next()).await.unwrap().unwrap();
    let id = connection_id(http, "victim").await;

    // The tag is a path segment: percent-encoded.
    let path = format!("/api/connections/{id}/consumers/worker%201");
    let r = http.delete(&path, None).await;
    assert_eq!(r.status, 204, "{r:?}");
    match ended(&mut consumer).await {
        Error::ConsumerCancelled { code, .. } => assert_eq!(code, ErrorCode::ConsumerCancelled),
        other => panic!("expected CONSUMER_CANCELLED, got {other:?}"),
    }
    assert_error(&http.delete(&path, None).await, 404, "NOT_FOUND");
    assert_error(
        &http
            .delete("/api/connections/999999/consumers/w", None)
            .await,
        404,
        "NOT_FOUND",
    );
    // The connection lives on, and the message is back for it.
    let m = victim.get("jobs").await.unwrap().expect("returned");
    assert!(m.redelivered);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_published_message_comes_back_from_get_with_its_properties() {
    let broker = Broker::start();
    let http = &broker.http;
    assert_eq!(http.put("/api/queues/dbg", "{}").await.status, 200);
    let text = json!({
        "routing_key": "dbg",
        "payload": "hello",
        "properties": {
            "content_type": "text/plain",
            "message_id": "m-1",
            "correlation_id": "c-1",
            "reply_to": "answers",
            "expiration_ms": 600000,
            "headers": {"n": 7, "ok": true, "who": "ops", "raw": {"bytes": "00ff"}},
        },
    });
    publish(http, "amq.default", text, true).await;
    let binary = json!({
        "routing_key": "dbg",
        "payload": "AP8B",
        "payload_encoding": "base64",
        "persistent": false,
    });
    publish(http, "amq.default", binary, true).await;

    let peeked = get(http, "dbg", json!({"count": 10, "requeue": true})).await;
    assert_eq!(peeked.len(), 2, "{peeked:?}");
    let first = &peeked[0];
    assert_eq!(first["payload"], "hello");
    assert_eq!(first["payload_encoding"], "string");
    assert_eq!(first["routing_key"], "dbg");
    assert_eq!(first["exchange"], "");
    assert_eq!(first["redelivered"], false);
    assert_eq!(first["delivery_count"], 1);
    let p = &first["properties"];
    assert_eq!(
        (&p["content_type"], &p["message_id"], &p["correlation_id"]),
        (&json!("text/plain"), &json!("m-1"), &json!("c-1"))
    );
    assert_eq!(
        (&p["reply_to"], &p["expiration_ms"]),
        (&json!("answers"), &json!(600000))
    );
    assert_eq!(p["persistent"], true);
    assert_eq!(
        first["headers"],
        json!({"n": 7, "ok": true, "who": "ops", "raw": {"bytes": "00ff"}})
    );
    let second = &peeked[1];
    assert_eq!(
        (&second["payload"], &second["payload_encoding"]),
        (&json!("AP8B"), &json!("base64"))
    );
    assert_eq!(second["properties"]["persistent"], false);

    // Requeued: both are there again, marked; this time they are acked.
    let taken = get(http, "dbg", json!({"count": 100})).await;
    assert_eq!(taken.len(), 2);
    assert!(taken
        .iter()
        .all(|m| m["redelivered"] == true && m["delivery_count"] == 2));
    assert_eq!(get(http, "dbg", json!({})).await, Vec::<Value>::new());
    let queue = json_of(&http.get("/api/queues/dbg").await, 200);
    assert_eq!((&queue["ready"], &queue["unacked"]), (&json!(0), &json!(0)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_and_get_refusals_are_typed_errors() {
    let broker = Broker::start();
    let http = &broker.http;
    let post =
        |path: &'static str, body: Value| async move { http.post(path, &body.to_string()).await };
    // Routed nowhere: fine unless mandatory.
    publish(http, "amq.direct", json!({"routing_key": "none"}), false).await;
    let r = post(
        "/api/exchanges/amq.direct/publish",
        json!({"routing_key": "none", "mandatory": true}),
    )
    .await;
    assert_error(&r, 422, "UNROUTABLE");
    let r = post("/api/exchanges/nope/publish", json!({})).await;
    assert_error(&r, 404, "NOT_FOUND");
    let r = post(
        "/api/exchanges/amq.default/publish",
        json!({"payload": "*", "payload_encoding": "base64"}),
    )
    .await;
    assert_error(&r, 400, "INVALID_ARGUMENT");
    let r = post(
        "/api/exchanges/amq.default/publish",
        json!({"properties": {"headers": {"f": {"bytes": "zz"}}}}),
    )
    .await;
    assert_error(&r, 400, "INVALID_ARGUMENT");
    let r = post("/api/exchanges/amq.default/publish", json!({"colour": 1})).await;
    assert_error(&r, 400, "INVALID_ARGUMENT");

    assert_eq!(http.put("/api/queues/q", "{}").await.status, 200);
    for count in [0, 101] {
        let r = post("/api/queues/q/get", json!({ "count": count })).await;
        assert_error(&r, 400, "INVALID_ARGUMENT");
    }
    let r = post("/api/queues/missing/get", json!({})).await;
    assert_error(&r, 404, "NOT_FOUND");
    // The broker serves on.
    publish(http, "amq.default", json!({"routing_key": "q"}), true).await;
}

/// A topology with something of every kind, some of which an export leaves out.
async fn build_topology(broker: &Broker) {
    let http = &broker.http;
    let put = |path: String, body: Value| async move {
        let r = http.put(&path, &body.to_string()).await;
        assert_eq!(r.status, 200, "{path}: {r:?}");
    };
    put("/api/exchanges/dlx".into(), json!({"kind": "fanout"})).await;
    put(
        "/api/exchanges/orders".into(),
        json!({"kind": "topic", "alternate_exchange": "dlx"}),
    )
    .await;
    put(
        "/api/exchanges/scratch-x".into(),
        json!({"kind": "direct", "durable": false}),
    )
    .await;
    put(
        "/api/queues/tasks".into(),
        json!({"arguments": {"max_length": 10, "overflow": "reject-publish",
                             "dead_letter_exchange": "dlx", "delivery_limit": 3}}),
    )
    .await;
    put("/api/queues/dead".into(), json!({})).await;
    put("/api/queues/scratch".into(), json!({"durable": false})).await;
    let bind = |body: Value| async move {
        let r = http.post("/api/bindings", &body.to_string()).await;
        assert_eq!(r.status, 200, "{r:?}");
    };
    bind(json!({"exchange": "orders", "queue": "tasks", "routing_key": "eu.#"})).await;
    bind(json!({"exchange": "dlx", "queue": "dead"})).await;
    bind(json!({"exchange": "amq.headers", "queue": "tasks",
                "arguments": {"x-match": "any", "kind": "urgent"}}))
    .await;
    bind(json!({"exchange": "orders", "queue": "scratch", "routing_key": "#"})).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn definitions_exported_and_imported_into_a_fresh_broker_give_the_same_topology() {
    let source = Broker::start();
    build_topology(&source).await;
    let exported = json_of(&source.http.get("/api/definitions").await, 200);
    assert_eq!(
        exported,
        json!({
            "version": 1,
            "exchanges": [
                {"name": "dlx", "kind": "fanout", "auto_delete": false},
                {"name": "orders", "kind": "topic", "auto_delete": false,
                 "alternate_exchange": "dlx"},
            ],
            "queues": [
                {"name": "dead", "auto_delete": false, "arguments": {}},
                {"name": "tasks", "auto_delete": false,
                 "arguments": {"max_length": 10, "overflow": "reject-publish",
                               "dead_letter_exchange": "dlx", "delivery_limit": 3}},
            ],
            "bindings": [
                {"exchange": "amq.headers", "queue": "tasks", "routing_key": "",
                 "arguments": {"x-match": "any", "kind": "urgent"}},
                {"exchange": "dlx", "queue": "dead", "routing_key": ""},
                {"exchange": "orders", "queue": "tasks", "routing_key": "eu.#"},
            ],
        })
    );

    let target = Broker::start();
    let report = target
        .http
        .post("/api/definitions", &exported.to_string())
        .await;
    let all_in = json!({"exchanges": 2, "queues": 2, "bindings": 3, "errors": []});
    assert_eq!(json_of(&report, 200), all_in);
    assert_eq!(
        json_of(&target.http.get("/api/definitions").await, 200),
        exported
    );
    let bindings = json_of(&target.http.get("/api/bindings").await, 200);
    // Importing again changes nothing, and says every item is as given.
    let again = target
        .http
        .post("/api/definitions", &exported.to_string())
        .await;
    assert_eq!(json_of(&again, 200), all_in);
    assert_eq!(
        json_of(&target.http.get("/api/definitions").await, 200),
        exported
    );
    assert_eq!(
        json_of(&target.http.get("/api/bindings").await, 200),
        bindings
    );
    let tasks = json_of(&target.http.get("/api/queues/tasks").await, 200);
    assert_eq!(tasks["durable"], true);
    assert_eq!(tasks["arguments"]["max_length"], 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_import_reports_a_conflicting_queue_and_imports_the_rest() {
    let source = Broker::start();
    build_topology(&source).await;
    let exported = json_of(&source.http.get("/api/definitions").await, 200);

    let target = Broker::start();
    let r = target
        .http
        .put("/api/queues/tasks", r#"{"arguments": {"max_length": 5}}"#)
        .await;
    assert_eq!(r.status, 200);
    let report = json_of(
        &target
            .http
            .post("/api/definitions", &exported.to_string())
            .await,
        200,
    );
    assert_eq!(
        (&report["exchanges"], &report["queues"], &report["bindings"]),
        (&json!(2), &json!(1), &json!(3)),
        "{report}"
    );
    let errors = report["errors"].as_array().expect("errors");
    assert_eq!(errors.len(), 1, "{report}");
    assert_eq!(errors[0]["item"], "queue");
    assert_eq!(errors[0]["name"], "tasks");
    assert_eq!(errors[0]["error"], "PRECONDITION_FAILED");
    assert!(errors[0]["message"].as_str().is_some_and(|m| !m.is_empty()));
    // The queue kept its own arguments; the others are there.
    let tasks = json_of(&target.http.get("/api/queues/tasks").await, 200);
    assert_eq!(tasks["arguments"]["max_length"], 5);
    assert_eq!(target.http.get("/api/queues/dead").await.status, 200);

    let r = target
        .http
        .post("/api/definitions", r#"{"version": 2}"#)
        .await;
    assert_error(&r, 400, "INVALID_ARGUMENT");
    let r = target
        .http
        .post("/api/definitions", r#"{"version": 1, "queue": []}"#)
        .await;
    assert_error(&r, 400, "INVALID_ARGUMENT");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_exports_and_imports_the_same_format_over_the_wire() {
    let source = Broker::start();
    build_topology(&source).await;
    let over_http = json_of(&source.http.get("/api/definitions").await, 200);
    let (code, stdout) = source.sluice(&["definitions", "export"]).await;
    assert_eq!(code, Some(0));
    let over_wire: Value = serde_json::from_str(&stdout).expect("JSON");
    assert_eq!(over_wire, over_http);

    let file = source.dir.path().join("topology.json");
    let file = file.to_str().expect("UTF-8 path");
    let (code, _) = source.sluice(&["definitions", "export", file]).await;
    assert_eq!(code, Some(0));
    let target = Broker::start();
    let (code, stdout) = target.sluice(&["definitions", "import", file]).await;
    assert_eq!(code, Some(0));
    assert_eq!(stdout, "imported 2 exchanges, 2 queues, 3 bindings\n");
    assert_eq!(
        json_of(&target.http.get("/api/definitions").await, 200),
        over_http
    );

    // A conflict: reported, the rest imported, exit status 1.
    let third = Broker::start();
    let r = third
        .http
        .put(
            "/api/queues/dead",
            r#"{"arguments": {"message_ttl_ms": 5}}"#,
        )
        .await;
    assert_eq!(r.status, 200);
    let (code, stdout) = third
        .sluice(&["definitions", "import", file, "--json"])
        .await;
    assert_eq!(code, Some(1));
    let report: Value = serde_json::from_str(&stdout).expect("JSON");
    assert_eq!(report["queues"], 1);
    assert_eq!(report["errors"][0]["name"], "dead");
    assert_eq!(report["errors"][0]["error"], "PRECONDITION_FAILED");
}
