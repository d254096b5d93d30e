//! Permissions on every request (protocol.md §5.8) and per-vhost limits, against the real
//! broker with users made by the `sluice` CLI: each refusal is `ACCESS_REFUSED` naming the
//! permission missing (`LIMIT_EXCEEDED` naming the limit), the refused connection goes on,
//! and everyone else keeps working.

use std::path::PathBuf;

use serde_json::Value;
use sluice_client::{
    Client, ConsumeOptions, Error, ErrorCode, ExchangeKind, ExchangeOptions, OutgoingMessage,
    PublishOptions, QueueOptions,
};
use sluice_tests::broker::{users_file_command, within, BrokerProcess};
use sluice_tests::http::{HttpClient, HttpResponse};

const PASSWORD: &str = "limited-secret";

/// A broker whose users file was prepared by `setup` (`sluice ARGS --data-dir DIR`).
struct Broker {
    process: BrokerProcess,
    _dir: tempfile::TempDir,
}

impl Broker {
    fn start(setup: &[&[&str]]) -> Broker {
        let dir = tempfile::tempdir().expect("temporary directory");
        let data: PathBuf = dir.path().join("data");
        for args in setup {
            let password = (args[..2] == ["user", "add"]).then_some(PASSWORD);
            users_file_command(&data, args, password);
        }
        let process = BrokerProcess::start(&data, &[]);
        Broker { process, _dir: dir }
    }

    async fn login(&self, user: &str, vhost: &str) -> Client {
        let password = if user == "guest" { "guest" } else { PASSWORD };
        let url = format!("sluice://{user}:{password}@{}/{vhost}", self.process.addr());
        within("login", Client::connect(&url)).await.expect("login")
    }

    fn http(&self, user: &str) -> HttpClient {
        let password = if user == "guest" { "guest" } else { PASSWORD };
        HttpClient::new(self.process.http_addr().expect("HTTP on"), user, password)
    }
}

/// The user `limited` in `/`: it configures `own.*`, writes to `own.*` and `inbox`, reads
/// from `own.*` and `feed`.
fn limited_user() -> Broker {
    Broker::start(&[
        &["user", "add", "limited", "--tags", "management"],
        &[
            "permissions",
            "set",
            "limited",
            "--configure",
            "^own\\.",
            "--write",
            "^(own\\..*|inbox)$",
            "--read",
            "^(own\\..*|feed)$",
        ],
    ])
}

/// What guest (every permission) sets up for `limited` to be refused on.
async fn guest_topology(guest: &Client) {
    for q in ["secret", "inbox"] {
        guest.declare_queue(q, QueueOptions::new()).await.unwrap();
    }
    guest
        .declare_exchange("feed", ExchangeKind::Fanout, ExchangeOptions::new())
        .await
        .unwrap();
    guest
        .declare_exchange("x", ExchangeKind::Direct, ExchangeOptions::new())
        .await
        .unwrap();
    guest.bind("secret", "x", "k", Vec::new()).await.unwrap();
}

/// The error is a request's `ACCESS_REFUSED` whose message holds `wanted`.
fn assert_refused<T: std::fmt::Debug>(result: Result<T, Error>, wanted: &str) {
    match result {
        Err(Error::Server { code, message }) => {
            assert_eq!(code, ErrorCode::AccessRefused, "{message}");
            assert!(message.contains(wanted), "{message:?} lacks {wanted:?}");
        }
        other => panic!("not a refusal: {other:?}"),
    }
}

fn assert_status(r: &HttpResponse, status: u16, error: &str) -> String {
    assert_eq!(r.status, status, "{r:?}");
    let body: Value = serde_json::from_str(&r.body).expect("JSON");
    assert_eq!(body["error"], error, "{r:?}");
    body["message"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_missing_permission_is_refused_by_name_and_the_connection_goes_on() {
    let broker = limited_user();
    let guest = broker.login("guest", "").await;
    guest_topology(&guest).await;
    let limited = broker.login("limited", "").await;

    assert_refused(
        limited.declare_queue("secret", QueueOptions::new()).await,
        "user 'limited' lacks configure permission on queue 'secret' in vhost '/'",
    );
    assert_refused(
        limited.delete_queue("secret", Default::default()).await,
        "lacks configure permission on queue 'secret'",
    );
    assert_refused(
        limited
            .declare_exchange("x", ExchangeKind::Direct, ExchangeOptions::new())
            .await,
        "lacks configure permission on exchange 'x'",
    );
    assert_refused(
        limited.consume("secret", ConsumeOptions::new()).await,
        "lacks read permission on queue 'secret'",
    );
    assert_refused(
        limited.get("secret").await,
        "lacks read permission on queue 'secret'",
    );
    assert_refused(
        limited.purge_queue("secret").await,
        "read permission on queue 'secret'",
    );
    // Looking needs any one of the three: limited writes to inbox, so it may inspect it.
    assert_eq!(limited.inspect_queue("inbox").await.unwrap().ready, 0);
    assert_refused(
        limited.inspect_queue("secret").await,
        "configure permission on queue 'secret'",
    );
    // A dead-letter exchange is written to: declaring with one needs write on it.
    assert_refused(
        limited
            .declare_queue("own.q", QueueOptions::new().dead_letter_exchange("x"))
            .await,
        "lacks write permission on exchange 'x'",
    );
    let publish = limited
        .publish("x", "k", "m", &PublishOptions::new())
        .await
        .unwrap_err();
    match &publish {
        Error::PublishRejected { code, message, .. } => {
            assert_eq!(*code, ErrorCode::AccessRefused);
            assert!(
                message.contains("lacks write permission on exchange 'x'"),
                "{message}"
            );
        }
        other => panic!("not a rejection: {other:?}"),
    }

    // The refused connection goes on with what it may do.
    limited
        .declare_queue("own.q", QueueOptions::new())
        .await
        .unwrap();
    limited
        .declare_exchange("own.x", ExchangeKind::Direct, ExchangeOptions::new())
        .await
        .unwrap();
    limited
        .bind("own.q", "own.x", "k", Vec::new())
        .await
        .unwrap();
    limited
        .publish("own.x", "k", "mine", &PublishOptions::new())
        .await
        .unwrap();
    let mine = within("get", limited.get("own.q")).await.unwrap().unwrap();
    assert_eq!(&mine.body[..], b"mine");
    mine.ack().await.unwrap();
    // And the others were never held up.
    guest
        .publish("x", "k", "for guest", &PublishOptions::new())
        .await
        .unwrap();
    let theirs = within("get", guest.get("secret")).await.unwrap().unwrap();
    assert_eq!(&theirs.body[..], b"for guest");
    assert!(broker
        .process
        .log()
        .contains("access refused: user 'limited' lacks configure permission on queue 'secret'"));
    broker.process.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binding_needs_write_on_the_queue_and_read_on_the_exchange() {
    let broker = limited_user();
    let guest = broker.login("guest", "").await;
    guest_topology(&guest).await;
    let limited = broker.login("limited", "").await;
    limited.bind("inbox", "feed", "", Vec::new()).await.unwrap();
    assert_refused(
        limited.bind("inbox", "x", "k", Vec::new()).await,
        "lacks read permission on exchange 'x'",
    );
    assert_refused(
        limited.bind("secret", "feed", "", Vec::new()).await,
        "lacks write permission on queue 'secret'",
    );
    assert_refused(
        limited.unbind("secret", "x", "k", Vec::new()).await,
        "lacks write permission on queue 'secret'",
    );
    assert_eq!(guest.list_bindings().await.unwrap().len(), 2);
    broker.process.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_is_refused_per_message_and_the_rest_of_the_batch_is_stored() {
    let broker = limited_user();
    let guest = broker.login("guest", "").await;
    guest_topology(&guest).await;
    let limited = broker.login("limited", "").await;
    limited
        .declare_queue("own.q", QueueOptions::new())
        .await
        .unwrap();
    limited
        .declare_exchange("own.x", ExchangeKind::Fanout, ExchangeOptions::new())
        .await
        .unwrap();
    limited
        .bind("own.q", "own.x", "", Vec::new())
        .await
        .unwrap();
    let batch = [
        ("own.x", "1"),
        ("x", "2"),
        ("own.x", "3"),
        ("", "4"),
        ("x", "5"),
    ]
    .map(|(exchange, body)| OutgoingMessage::new(exchange, "own.q", body));
    let outcomes = within("publish", limited.publish_batch(batch)).await;
    let refused: Vec<bool> = outcomes
        .iter()
        .map(|o| matches!(o, Err(e) if e.code() == Some(ErrorCode::AccessRefused)))
        .collect();
    // The default exchange is `amq.default`, which limited may not write to either.
    assert_eq!(refused, [false, true, false, true, true], "{outcomes:?}");
    assert_eq!(limited.inspect_queue("own.q").await.unwrap().ready, 2);
    broker.process.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http_api_answers_403_naming_the_permission_missing() {
    let broker = limited_user();
    let guest = broker.login("guest", "").await;
    guest_topology(&guest).await;
    let http = broker.http("limited");
    let message = assert_status(
        &http.put("/api/queues/secret2", "{}").await,
        403,
        "ACCESS_REFUSED",
    );
    assert!(
        message.contains("lacks configure permission on queue 'secret2'"),
        "{message}"
    );
    let message = assert_status(
        &http.get("/api/queues/secret/messages").await,
        403,
        "ACCESS_REFUSED",
    );
    assert!(
        message.contains("read permission on queue 'secret'"),
        "{message}"
    );
    let message = assert_status(
        &http
            .post(
                "/api/exchanges/x/publish",
                r#"{"routing_key": "k", "payload": "p"}"#,
            )
            .await,
        403,
        "ACCESS_REFUSED",
    );
    assert!(
        message.contains("write permission on exchange 'x'"),
        "{message}"
    );
    // No permission in a vhost at all: refused before anything is looked up.
    let message = assert_status(
        &http.get("/api/queues/secret?vhost=other").await,
        403,
        "ACCESS_REFUSED",
    );
    assert!(message.contains("vhost 'other'"), "{message}");
    // What it may do goes through.
    assert_eq!(http.put("/api/queues/own.q", "{}").await.status, 200);
    assert_eq!(guest.inspect_queue("secret").await.unwrap().ready, 0);
    broker.process.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vhost_s_limits_are_limit_exceeded_while_another_vhost_keeps_going() {
    let broker = Broker::start(&[
        &["user", "add", "app", "--tags", "management"],
        &[
            "vhost",
            "add",
            "small",
            "--max-queues",
            "2",
            "--max-exchanges",
            "1",
            "--max-message-bytes",
            "300",
        ],
        &["vhost", "add", "big"],
        &[
            "permissions",
            "set",
            "app",
            "--vhost",
            "small",
            "--configure",
            ".*",
            "--write",
            ".*",
            "--read",
            ".*",
        ],
        &[
            "permissions",
            "set",
            "app",
            "--vhost",
            "big",
            "--configure",
            ".*",
            "--write",
            ".*",
            "--read",
            ".*",
        ],
    ]);
    let small = broker.login("app", "small").await;
    let big = broker.login("app", "big").await;
    for q in ["q1", "q2"] {
        small.declare_queue(q, QueueOptions::new()).await.unwrap();
    }
    let limit = |e: Error, wanted: &str| match e {
        Error::Server { code, message } => {
            assert_eq!(code, ErrorCode::LimitExceeded, "{message}");
            assert!(message.contains(wanted), "{message:?} lacks {wanted:?}");
        }
        other => panic!("not LIMIT_EXCEEDED: {other:?}"),
    };
    limit(
        small
            .declare_queue("q3", QueueOptions::new())
            .await
            .unwrap_err(),
        "vhost 'small' has reached its max_queues limit of 2",
    );
    // Declaring an existing one again is no new queue.
    small
        .declare_queue("q1", QueueOptions::new())
        .await
        .unwrap();
    small
        .declare_exchange("e1", ExchangeKind::Fanout, ExchangeOptions::new())
        .await
        .unwrap();
    limit(
        small
            .declare_exchange("e2", ExchangeKind::Fanout, ExchangeOptions::new())
            .await
            .unwrap_err(),
        "max_exchanges limit of 1",
    );
    let too_large = small
        .publish("", "q1", vec![b'x'; 500], &PublishOptions::new())
        .await
        .unwrap_err();
    match &too_large {
        Error::PublishRejected { code, message, .. } => {
            assert_eq!(*code, ErrorCode::MessageTooLarge);
            assert!(
                message.contains("max_message_bytes limit of 300 of vhost 'small'"),
                "{message}"
            );
        }
        other => panic!("not a rejection: {other:?}"),
    }
    small
        .publish("", "q1", "small enough", &PublishOptions::new())
        .await
        .unwrap();
    // The HTTP API counts the same queues.
    let r = broker
        .http("app")
        .put("/api/queues/q4?vhost=small", "{}")
        .await;
    let message = assert_status(&r, 429, "LIMIT_EXCEEDED");
    assert!(message.contains("max_queues"), "{message}");
    // The other vhost is not limited by them.
    for q in ["q1", "q2", "q3", "q4"] {
        big.declare_queue(q, QueueOptions::new()).await.unwrap();
    }
    big.publish("", "q1", vec![b'x'; 500], &PublishOptions::new())
        .await
        .unwrap();
    assert!(broker.process.log().contains("vhost limit reached"));
    broker.process.stop();
}
