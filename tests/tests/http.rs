//! The HTTP admin API end to end: a real broker process, requests over real sockets, and
//! the wire protocol's client beside it to make the state the API reports.

use std::io::Read;
use std::process::Stdio;
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::{json, Value};
use sluice_client::{Client, ConsumeOptions, PublishOptions, QueueOptions};
use sluice_tests::broker::{sluice_command, users_file_command, wait_bounded, BrokerProcess, WAIT};
use sluice_tests::http::{HttpClient, HttpResponse};

/// A broker with its HTTP API, and a client of both doors.
struct Broker {
    process: BrokerProcess,
    http: HttpClient,
    _dir: tempfile::TempDir,
}

impl Broker {
    fn start() -> Broker {
        Self::start_with(&[])
    }

    fn start_with(extra: &[&str]) -> Broker {
        let dir = tempfile::tempdir().expect("temporary directory");
        Self::start_in(dir, extra)
    }

    /// Starts on `dir/data`, whose users file may already be set up.
    fn start_in(dir: tempfile::TempDir, extra: &[&str]) -> Broker {
        let process = BrokerProcess::start(&dir.path().join("data"), extra);
        let addr = process.http_addr().expect("the HTTP API is on");
        let http = HttpClient::new(addr, "guest", "guest");
        Broker {
            process,
            http,
            _dir: dir,
        }
    }

    fn http_addr(&self) -> &str {
        self.process.http_addr().expect("the HTTP API is on")
    }

    async fn client(&self) -> Client {
        within("connect", Client::connect(&self.process.url()))
            .await
            .expect("connect")
    }

    fn stop(self) {
        let log = self.process.stop_and_log();
        // Every test ends here: the API must not hold up a clean stop.
        assert!(!log.contains("assumes a crash"), "{log}");
    }
}

use sluice_tests::broker::within;

/// The answer's body as JSON, after checking its status.
fn json_of(r: &HttpResponse, status: u16) -> Value {
    assert_eq!(r.status, status, "{r:?}");
    assert_eq!(r.header("content-type"), Some("application/json"), "{r:?}");
    serde_json::from_str(&r.body).unwrap_or_else(|e| panic!("{e}: {r:?}"))
}

/// Checks an error answer: the status and the wire code's name in the JSON body.
fn assert_error(r: &HttpResponse, status: u16, code: &str) {
    let body = json_of(r, status);
    assert_eq!(body["error"], code, "{r:?}");
    assert!(
        body["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{r:?}"
    );
}

/// Asks `GET path` until `done` holds for its JSON (counters the queues refresh a few times a
/// second), within the test-wide limit.
async fn poll_until(http: &HttpClient, path: &str, done: impl Fn(&Value) -> bool) -> Value {
    within(path, async {
        loop {
            let body = json_of(&http.get(path).await, 200);
            if done(&body) {
                return body;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_probes_answer_without_credentials() {
    let broker = Broker::start();
    let anonymous = HttpClient::anonymous(broker.http_addr());
    assert_eq!(
        json_of(&anonymous.get("/healthz").await, 200),
        json!({"status": "ok"})
    );
    assert_eq!(
        json_of(&anonymous.get("/readyz").await, 200),
        json!({"status": "ok"})
    );
    broker.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_requests_without_the_right_credentials_get_401_with_a_challenge() {
    // Two users of their own; guest is gone.
    let dir = tempfile::tempdir().expect("temporary directory");
    let data = dir.path().join("data");
    for (user, password) in [("app", "s3cret"), ("ops", "pw")] {
        let add = ["user", "add", user, "--tags", "management"];
        users_file_command(&data, &add, Some(password));
    }
    users_file_command(&data, &["user", "delete", "guest"], None);
    let broker = Broker::start_in(dir, &[]);
    let addr = broker.http_addr().to_owned();
    let refused = [
        HttpClient::anonymous(&addr),
        HttpClient::new(&addr, "guest", "guest"),
        HttpClient::new(&addr, "app", "s3cre"),
        HttpClient::new(&addr, "app", "s3cret "),
        HttpClient::new(&addr, "nobody", "s3cret"),
        HttpClient::with_authorization(&addr, "Basic !!!not-base64"),
        HttpClient::with_authorization(&addr, "Bearer YXBwOnMzY3JldA=="),
        HttpClient::with_authorization(&addr, "Basic"),
    ];
    for client in &refused {
        for path in ["/api/overview", "/api/queues", "/api/queues/q"] {
            let r = client.get(path).await;
            assert_error(&r, 401, "ACCESS_REFUSED");
            assert_eq!(r.header("www-authenticate"), Some("Basic realm=\"sluice\""));
        }
        // A refused write changes nothing.
        assert_error(
            &client.put("/api/queues/q", "{}").await,
            401,
            "ACCESS_REFUSED",
        );
    }
    // The broker serves on, every user with their own password.
    for (user, password) in [("app", "s3cret"), ("ops", "pw")] {
        let client = HttpClient::new(&addr, user, password);
        assert_eq!(json_of(&client.get("/api/queues").await, 200), json!([]));
    }
    broker.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queues_are_declared_shown_purged_and_deleted_over_http() {
    let broker = Broker::start();
    let http = &broker.http;
    let declared = http
        .put(
            "/api/queues/tasks",
            r#"{"arguments": {"max_length": 100, "overflow": "reject-publish",
                "dead_letter_exchange": "dlx"}}"#,
        )
        .await;
    assert_eq!(
        json_of(&declared, 200),
        json!({"name": "tasks", "ready": 0, "consumers": 0})
    );
    // An empty body takes every default: durable, not auto-delete, no arguments.
    json_of(&http.put("/api/queues/plain", "").await, 200);

    // Messages published over the wire protocol show in the listings.
    let client = broker.client().await;
    for i in 0..3 {
        within(
            "publish",
            client.publish("", "tasks", format!("m{i}"), &PublishOptions::new()),
        )
        .await
        .unwrap();
    }
    let shown = json_of(&http.get("/api/queues/tasks").await, 200);
    assert_eq!(shown["name"], "tasks");
    assert_eq!(shown["durable"], true);
    assert_eq!(shown["exclusive"], false);
    assert_eq!(shown["ready"], 3);
    assert_eq!(shown["arguments"]["max_length"], 100);
    assert_eq!(shown["arguments"]["overflow"], "reject-publish");
    assert_eq!(shown["arguments"]["dead_letter_exchange"], "dlx");
    assert_eq!(shown["arguments"]["message_ttl_ms"], Value::Null);
    let listed = poll_until(http, "/api/queues", |q| q[1]["ready"] == 3).await;
    let names: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|q| q["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["plain", "tasks"]);
    for field in [
        "durable",
        "exclusive",
        "auto_delete",
        "ready",
        "unacked",
        "consumers",
    ] {
        assert!(listed[1].get(field).is_some(), "{field} missing: {listed}");
    }
    for field in ["bytes", "publish_rate", "ack_rate"] {
        assert!(listed[1].get(field).is_some(), "{field} missing: {listed}");
    }

    // A delete that must find the queue empty refuses; a purge empties it.
    assert_error(
        &http.delete("/api/queues/tasks?if_empty", None).await,
        409,
        "PRECONDITION_FAILED",
    );
    assert_eq!(
        json_of(&http.delete("/api/queues/tasks/contents", None).await, 200),
        json!({"queue": "tasks", "messages": 3})
    );
    assert_eq!(
        json_of(
            &http.delete("/api/queues/tasks?if_empty=true", None).await,
            200
        ),
        json!({"queue": "tasks", "messages": 0})
    );
    assert_error(&http.get("/api/queues/tasks").await, 404, "NOT_FOUND");
    // The wire protocol sees the same broker.
    let err = client.inspect_queue("tasks").await.unwrap_err();
    assert!(err.is_not_found(), "{err:?}");
    assert_eq!(client.inspect_queue("plain").await.unwrap().ready, 0);
    broker.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_deleted_over_http_takes_its_messages_and_survives_nothing() {
    let broker = Broker::start();
    let client = broker.client().await;
    client
        .declare_queue("jobs", QueueOptions::new())
        .await
        .unwrap();
    within(
        "publish",
        client.publish("", "jobs", "x", &PublishOptions::new()),
    )
    .await
    .unwrap();
    assert_eq!(
        json_of(&broker.http.delete("/api/queues/jobs", None).await, 200),
        json!({"queue": "jobs", "messages": 1})
    );
    assert_error(
        &broker.http.delete("/api/queues/jobs", None).await,
        404,
        "NOT_FOUND",
    );
    assert_eq!(
        json_of(&broker.http.get("/api/queues").await, 200),
        json!([])
    );
    broker.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declares_that_contradict_a_queue_or_ask_for_exclusivity_are_refused() {
    let broker = Broker::start();
    let http = &broker.http;
    json_of(
        &http.put("/api/queues/q", r#"{"durable": true}"#).await,
        200,
    );
    // The same settings again: a no-op.
    json_of(
        &http.put("/api/queues/q", r#"{"durable": true}"#).await,
        200,
    );
    assert_error(
        &http.put("/api/queues/q", r#"{"durable": false}"#).await,
        409,
        "PRECONDITION_FAILED",
    );
    assert_error(
        &http.put("/api/queues/mine", r#"{"exclusive": true}"#).await,
        400,
        "INVALID_ARGUMENT",
    );
    assert_error(&http.get("/api/queues/mine").await, 404, "NOT_FOUND");
    // Another connection's exclusive queue is locked to the API, as to any other connection.
    let owner = broker.client().await;
    owner
        .declare_queue("owned", QueueOptions::new().exclusive(true))
        .await
        .unwrap();
    assert_error(&http.get("/api/queues/owned").await, 423, "RESOURCE_LOCKED");
    assert_error(
        &http.delete("/api/queues/owned", None).await,
        423,
        "RESOURCE_LOCKED",
    );
    assert_error(
        &http.delete("/api/queues/owned/contents", None).await,
        423,
        "RESOURCE_LOCKED",
    );
    broker.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_400_or_404_with_a_json_error_and_the_broker_serves_on() {
    let broker = Broker::start();
    let http = &broker.http;
    let bad_bodies = [
        "{not json",
        "[1, 2]",
        r#"{"durable": "yes"}"#,
        r#"{"durabel": true}"#,
        r#"{"arguments": {"overflow": "sideways"}}"#,
        r#"{"arguments": {"max_length": -1}}"#,
    ];
    for body in bad_bodies {
        assert_error(
            &http.put("/api/queues/q", body).await,
            400,
            "INVALID_ARGUMENT",
        );
    }
    let name_too_long = format!("/api/queues/{}", "n".repeat(300));
    assert_error(
        &http.put(&name_too_long, "{}").await,
        400,
        "INVALID_ARGUMENT",
    );
    assert_error(
        &http.delete("/api/queues/q?if_empty=maybe", None).await,
        400,
        "INVALID_ARGUMENT",
    );
    assert_error(
        &http
            .put("/api/exchanges/x", r#"{"kind": "roundrobin"}"#)
            .await,
        400,
        "INVALID_ARGUMENT",
    );
    assert_error(
        &http.put("/api/exchanges/x", "{}").await,
        400,
        "INVALID_ARGUMENT",
    );
    assert_error(
        &http
            .post("/api/bindings", r#"{"exchange": "amq.direct"}"#)
            .await,
        400,
        "INVALID_ARGUMENT",
    );
    assert_error(
        &http
            .post(
                "/api/bindings",
                r#"{"exchange": "amq.match", "queue": "q", "arguments": {"n": 18446744073709551615}}"#,
            )
            .await,
        400,
        "INVALID_ARGUMENT",
    );
    // Unknown things are 404 with the same body shape (`/` is the dashboard).
    for path in ["/api/queues/ghost", "/api/nothing", "/nothing"] {
        assert_error(&http.get(path).await, 404, "NOT_FOUND");
    }
    assert_error(
        &http.delete("/api/queues/ghost", None).await,
        404,
        "NOT_FOUND",
    );
    assert_error(
        &http.delete("/api/queues/ghost/contents", None).await,
        404,
        "NOT_FOUND",
    );
    assert_error(
        &http.delete("/api/exchanges/ghost", None).await,
        404,
        "NOT_FOUND",
    );
    // Nothing of that was created, and the broker still serves both doors.
    assert_eq!(json_of(&http.get("/api/queues").await, 200), json!([]));
    let client = broker.client().await;
    client
        .declare_queue("q", QueueOptions::new())
        .await
        .unwrap();
    json_of(&http.get("/api/queues/q").await, 200);
    // What the wire would refuse, the API refuses too: a binding stored with a string too long
    // to encode again would leave a topology file the next start cannot read.
    let huge = "v".repeat(70_000);
    let too_much = [
        json!({"exchange": "amq.match", "queue": "q", "arguments": {"k": huge}}),
        json!({"exchange": "amq.direct", "queue": "q", "routing_key": "k".repeat(300)}),
    ];
    for binding in too_much {
        assert_error(
            &http.post("/api/bindings", &binding.to_string()).await,
            400,
            "INVALID_ARGUMENT",
        );
    }
    let long_alternate = json!({"kind": "direct", "alternate_exchange": "a".repeat(300)});
    assert_error(
        &http
            .put("/api/exchanges/x", &long_alternate.to_string())
            .await,
        400,
        "INVALID_ARGUMENT",
    );
    assert_eq!(json_of(&http.get("/api/bindings").await, 200), json!([]));
    broker.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exchanges_and_bindings_made_over_http_route_messages() {
    let broker = Broker::start();
    let http = &broker.http;
    assert_eq!(
        json_of(
            &http
                .put("/api/exchanges/events", r#"{"kind": "topic"}"#)
                .await,
            200
        ),
        json!({"exchange": "events", "kind": "topic"})
    );
    assert_error(
        &http
            .put("/api/exchanges/events", r#"{"kind": "fanout"}"#)
            .await,
        409,
        "PRECONDITION_FAILED",
    );
    assert_error(
        &http
            .put("/api/exchanges/sluice.mine", r#"{"kind": "direct"}"#)
            .await,
        403,
        "NOT_ALLOWED",
    );
    let exchanges = json_of(&http.get("/api/exchanges").await, 200);
    assert_eq!(exchanges[0]["name"], "", "the default exchange sorts first");
    assert!(
        exchanges
            .as_array()
            .unwrap()
            .contains(&json!({"vhost": "/", "name": "events", "kind": "topic",
                "durable": true, "auto_delete": false, "alternate_exchange": null})),
        "{exchanges}"
    );

    json_of(&http.put("/api/queues/audit", "{}").await, 200);
    let binding = json!({"exchange": "events", "queue": "audit", "routing_key": "order.#",
        "arguments": {}});
    assert_eq!(
        json_of(&http.post("/api/bindings", &binding.to_string()).await, 200),
        binding
    );
    assert_error(
        &http
            .post(
                "/api/bindings",
                r#"{"exchange": "events", "queue": "ghost", "routing_key": "a"}"#,
            )
            .await,
        404,
        "NOT_FOUND",
    );
    let mut listed = binding.clone();
    listed["vhost"] = json!("/");
    assert_eq!(
        json_of(&http.get("/api/bindings").await, 200),
        json!([listed])
    );

    // The binding routes a publish made over the wire protocol.
    let client = broker.client().await;
    within(
        "publish",
        client.publish("events", "order.created", "o1", &PublishOptions::new()),
    )
    .await
    .unwrap();
    let shown = json_of(&http.get("/api/queues/audit").await, 200);
    assert_eq!(shown["ready"], 1);

    // Unbound, then deleted, the exchange routes nothing.
    assert_eq!(
        json_of(
            &http
                .delete("/api/bindings", Some(&binding.to_string()))
                .await,
            200
        ),
        binding
    );
    assert_eq!(json_of(&http.get("/api/bindings").await, 200), json!([]));
    assert_eq!(
        json_of(&http.delete("/api/exchanges/events", None).await, 200),
        json!({"exchange": "events", "deleted": true})
    );
    assert_error(
        &http.delete("/api/exchanges/events", None).await,
        404,
        "NOT_FOUND",
    );
    broker.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumers_and_the_overview_count_what_clients_do() {
    let broker = Broker::start();
    let http = &broker.http;
    let overview = json_of(&http.get("/api/overview").await, 200);
    assert_eq!(overview["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(overview["queues"], 0);
    assert_eq!(overview["connections"], 0);
    assert_eq!(overview["blocked"], false);
    assert_eq!(overview["blocked_reason"], Value::Null);
    assert!(overview["disk_free_bytes"].as_u64().is_some(), "{overview}");
    assert!(overview["uptime_seconds"].as_u64().is_some(), "{overview}");

    let client = broker.client().await;
    client
        .declare_queue("work", QueueOptions::new())
        .await
        .unwrap();
    for i in 0..4 {
        within(
            "publish",
            client.publish("", "work", format!("m{i}"), &PublishOptions::new()),
        )
        .await
        .unwrap();
    }
    let mut consumer = client
        .consume(
            "work",
            ConsumeOptions::new().consumer_tag("worker-1").prefetch(2),
        )
        .await
        .unwrap();
    // Two deliveries fill the window; they stay unacked.
    for _ in 0..2 {
        within("delivery", consumer.next())
            .await
            .expect("a delivery")
            .unwrap();
    }
    let consumers = poll_until(http, "/api/consumers", |c| c[0]["unacked"] == 2).await;
    let connection_id = consumers[0]["connection_id"].as_u64().unwrap();
    assert_eq!(
        consumers,
        json!([{"vhost": "/", "queue": "work", "consumer_tag": "worker-1",
            "connection_id": connection_id, "prefetch": 2, "unacked": 2,
            "active": true, "priority": 0, "circuit": null}])
    );
    let overview = poll_until(http, "/api/overview", |o| o["unacked"] == 2).await;
    assert_eq!(overview["queues"], 1);
    assert_eq!(overview["connections"], 1);
    assert_eq!(overview["consumers"], 1);
    assert_eq!(overview["ready"], 2);

    client.close().await.unwrap();
    poll_until(http, "/api/consumers", |c| c == &json!([])).await;
    poll_until(http, "/api/overview", |o| o["connections"] == 0).await;
    // The queue hears of the closed connection after the registry does, and refreshes its
    // counters a few times a second: the messages come back, a moment later.
    let overview = poll_until(http, "/api/overview", |o| o["ready"] == 4).await;
    assert_eq!(overview["unacked"], 0, "the unacked messages went back");
    assert_eq!(overview["consumers"], 0);
    broker.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_are_listed_with_who_they_are_and_what_they_moved() {
    let broker = Broker::start();
    let http = &broker.http;
    // A socket still in its handshake is not a connection yet.
    let silent = tokio::net::TcpStream::connect(&broker.process.addr())
        .await
        .unwrap();
    assert_eq!(json_of(&http.get("/api/connections").await, 200), json!([]));

    let client = within(
        "connect",
        Client::builder()
            .name("billing")
            .connect(&broker.process.url()),
    )
    .await
    .unwrap();
    client
        .declare_queue("work", QueueOptions::new())
        .await
        .unwrap();
    for i in 0..5 {
        within(
            "publish",
            client.publish("", "work", format!("m{i}"), &PublishOptions::new()),
        )
        .await
        .unwrap();
    }
    let _consumer = client
        .consume("work", ConsumeOptions::new().prefetch(1))
        .await
        .unwrap();
    let listed = poll_until(http, "/api/connections", |c| {
        c[0]["consumers"] == 1 && c[0]["frames_out"].as_u64() >= Some(8)
    })
    .await;
    let c = &listed[0];
    assert_eq!(listed.as_array().unwrap().len(), 1, "{listed}");
    assert_eq!(c["connection_id"], client.server_info().connection_id);
    assert!(c["peer"].as_str().unwrap().starts_with("127.0.0.1:"), "{c}");
    assert_eq!(c["user"], "guest");
    assert_eq!(c["client_product"], "sluice-client-rs");
    assert!(c["client_version"].as_str().is_some(), "{c}");
    assert_eq!(c["connection_name"], "billing");
    assert_eq!(c["unsettled_publishes"], 0, "every publish was confirmed");
    // declare, 5 publishes and a consume went in; their answers and a delivery came out.
    assert!(c["frames_in"].as_u64().unwrap() >= 7, "{c}");
    let bytes_in = c["bytes_in"].as_u64().unwrap();
    let bytes_out = c["bytes_out"].as_u64().unwrap();
    assert!(bytes_in > 5 * 2 && bytes_out > 2, "{c}");
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let since = c["connected_at_ms"].as_u64().unwrap();
    assert!(
        since <= now_ms && since + WAIT.as_millis() as u64 > now_ms,
        "{c}"
    );

    let overview = json_of(&http.get("/api/overview").await, 200);
    assert_eq!(overview["connections"], 1);
    client.close().await.unwrap();
    poll_until(http, "/api/connections", |c| c == &json!([])).await;
    // Gone before the stop: a socket in its handshake holds up the drain (not this test's
    // subject).
    drop(silent);
    broker.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_is_503_with_the_reason_while_publishing_is_blocked() {
    // No disk has this much free space: publishing is blocked from the start.
    let broker = Broker::start_with(&["--min-free-disk-bytes", "1000000000000000000"]);
    let anonymous = HttpClient::anonymous(broker.http_addr());
    let ready = poll_until(&anonymous, "/healthz", |_| true).await;
    assert_eq!(ready, json!({"status": "ok"}), "alive even when blocked");
    let r = anonymous.get("/readyz").await;
    let body = json_of(&r, 503);
    assert_eq!(body["status"], "unavailable");
    let reason = body["reason"].as_str().unwrap();
    assert!(reason.contains("free disk space"), "{reason}");
    let overview = json_of(&broker.http.get("/api/overview").await, 200);
    assert_eq!(overview["blocked"], true);
    assert!(
        overview["blocked_reason"]
            .as_str()
            .is_some_and(|r| r.contains("free disk space")),
        "{overview}"
    );
    broker.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_keep_alive_connection_does_not_hold_up_shutdown() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let broker = Broker::start();
    let mut idle = tokio::net::TcpStream::connect(broker.http_addr())
        .await
        .unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: sluice\r\n\r\n")
        .await
        .unwrap();
    let mut answer = [0u8; 512];
    let n = within("answer", idle.read(&mut answer)).await.unwrap();
    assert!(answer[..n].starts_with(b"HTTP/1.1 200"));
    // The connection stays open (keep-alive) while the broker stops.
    broker.stop();
    let n = within("close", idle.read(&mut answer)).await.unwrap_or(0);
    assert_eq!(n, 0, "the broker closed the idle connection");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_sockets_cannot_hold_the_api_they_are_closed_when_idle() {
    use tokio::io::AsyncReadExt;
    // The API closes connections idle for the handshake timeout.
    let broker = Broker::start_with(&["--handshake-timeout-ms", "300"]);
    // More silent sockets than the API serves at once (16): the others wait in the backlog.
    let mut silent = Vec::new();
    for _ in 0..20 {
        silent.push(
            tokio::net::TcpStream::connect(broker.http_addr())
                .await
                .unwrap(),
        );
    }
    // A request still gets its answer once idle ones made room.
    assert_eq!(
        json_of(&broker.http.get("/api/queues").await, 200),
        json!([])
    );
    for mut socket in silent {
        let mut byte = [0u8; 1];
        let n = within("idle close", socket.read(&mut byte))
            .await
            .unwrap_or(0);
        assert_eq!(n, 0, "the broker closed the idle socket");
    }
    broker.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_being_answered_is_not_idle_however_slow() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let broker = Broker::start_with(&["--handshake-timeout-ms", "300"]);
    let mut socket = tokio::net::TcpStream::connect(broker.http_addr())
        .await
        .unwrap();
    socket
        .write_all(
            b"PUT /api/queues/slow HTTP/1.1\r\nHost: sluice\r\nConnection: close\r\n\
              Authorization: Basic Z3Vlc3Q6Z3Vlc3Q=\r\nContent-Length: 2\r\n\r\n{",
        )
        .await
        .unwrap();
    // The stimulus, not a synchronisation: the body's end comes three idle timeouts later,
    // while the request is being answered (its handler waits for the body).
    tokio::time::sleep(Duration::from_millis(900)).await;
    socket.write_all(b"}").await.unwrap();
    let mut answer = Vec::new();
    within("answer", socket.read_to_end(&mut answer))
        .await
        .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    json_of(&broker.http.get("/api/queues/slow").await, 200);
    broker.stop();
}

#[test]
fn http_listen_off_starts_no_api_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let process = BrokerProcess::start(dir.path(), &["--http-listen", "off"]);
    assert_eq!(process.http_addr(), None);
    process.stop();
}

#[test]
fn a_taken_http_port_is_a_startup_error_that_names_the_address() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let mut child = sluice_command()
        .args(["serve", "--listen", "127.0.0.1:0", "--http-listen", &addr])
        .arg("--data-dir")
        .arg(dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    let status = wait_bounded(child, WAIT).expect("sluice exits");
    let stderr = reader.join().unwrap();
    assert!(!status.success(), "{stderr}");
    assert!(
        stderr.contains(&addr) && stderr.contains("HTTP"),
        "the error names the address and the API: {stderr}"
    );
}
