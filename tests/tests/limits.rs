//! The limits of issue #12 end to end: each one configured small on a real broker, hit with
//! its typed error, while another client keeps working; `GET /api/limits` shows them.

use std::time::{Duration, Instant};

use bytes::BytesMut;
use futures_util::StreamExt;
use serde_json::Value;
use sluice_client::wire::{ErrorCode, FrameDecoder, HeaderValue, Reply, HANDSHAKE_MAX_FRAME_LEN};
use sluice_client::{
    Client, ConsumeOptions, ExchangeKind, ExchangeOptions, OutgoingMessage, PublishOptions,
    QueueOptions,
};
use sluice_tests::broker::{users_file_command, within, BrokerProcess};
use sluice_tests::http::HttpClient;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A broker started with `flags`, and its data directory.
struct Broker {
    process: BrokerProcess,
    dir: tempfile::TempDir,
}

impl Broker {
    fn start(flags: &[&str]) -> Broker {
        let dir = tempfile::tempdir().unwrap();
        let process = BrokerProcess::start(&dir.path().join("data"), flags);
        Broker { process, dir }
    }

    /// Starts with the user `app` (password `pw`, every permission on `/`) beside guest.
    fn start_with_app(flags: &[&str]) -> Broker {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        users_file_command(&data, &["user", "add", "app"], Some("pw"));
        let everything = ["--configure", ".*", "--write", ".*", "--read", ".*"];
        users_file_command(
            &data,
            &[&["permissions", "set", "app"], &everything[..]].concat(),
            None,
        );
        let process = BrokerProcess::start(&data, flags);
        Broker { process, dir }
    }

    /// Like [`start`](Self::start), logging at `info` (handshake timeouts are info lines).
    fn start_verbose(flags: &[&str]) -> Broker {
        let dir = tempfile::tempdir().unwrap();
        let process = BrokerProcess::start_with(&dir.path().join("data"), flags, |cmd| {
            cmd.env("SLUICE_LOG", "info");
        });
        Broker { process, dir }
    }

    async fn client(&self) -> Client {
        within("connect", Client::connect(&self.process.url()))
            .await
            .expect("connect")
    }

    fn url_of(&self, user: &str, password: &str) -> String {
        format!("sluice://{user}:{password}@{}", self.process.addr())
    }

    async fn limits(&self) -> Value {
        let http = HttpClient::new(self.process.http_addr().unwrap(), "guest", "guest");
        let r = within("GET /api/limits", http.get("/api/limits")).await;
        assert_eq!(r.status, 200, "{r:?}");
        serde_json::from_str(&r.body).unwrap()
    }
}

/// The code and reason of the `Close` a socket received before the broker closed it, reading
/// until the end of the stream (bounded).
async fn close_received(mut stream: TcpStream) -> Option<(ErrorCode, String)> {
    let mut buf = BytesMut::new();
    within("the broker closes the socket", async {
        while matches!(stream.read_buf(&mut buf).await, Ok(n) if n > 0) {}
    })
    .await;
    let frame = FrameDecoder::new(HANDSHAKE_MAX_FRAME_LEN)
        .decode::<Reply>(&mut buf)
        .ok()??;
    match frame.body {
        Reply::Close(close) => Some((close.code?, close.reason)),
        _ => None,
    }
}

/// Waits until `GET /api/limits` counts `n` sockets in their handshake.
async fn wait_for_handshaking(broker: &Broker, n: u64) {
    within("the count of sockets in their handshake", async {
        while broker.limits().await["max_handshaking"]["current"] != n {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
}

/// Declares `queue`, publishes one message to it and takes it back: the client works.
async fn still_works(client: &Client, queue: &str) {
    within("a round trip", async {
        client
            .declare_queue(queue, QueueOptions::new())
            .await
            .unwrap();
        client
            .publish("", queue, "ping", &PublishOptions::default())
            .await
            .unwrap();
        let got = client.get(queue).await.unwrap().expect("a message");
        assert_eq!(got.body, "ping".as_bytes());
        got.ack().await.unwrap();
    })
    .await;
}

fn server_error(e: &sluice_client::Error) -> (ErrorCode, String) {
    match e {
        sluice_client::Error::Server { code, message } => (*code, message.clone()),
        other => panic!("expected a server error, got {other}"),
    }
}

fn rejection(e: &sluice_client::Error) -> (ErrorCode, String) {
    match e {
        sluice_client::Error::PublishRejected { code, message, .. } => (*code, message.clone()),
        other => panic!("expected a rejection, got {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_past_its_connection_limit_is_closed_after_login_and_other_users_get_in() {
    let broker = Broker::start_with_app(&["--max-connections-per-user", "2"]);
    let app_url = broker.url_of("app", "pw");
    let first = within("app 1", Client::connect(&app_url)).await.unwrap();
    let _second = within("app 2", Client::connect(&app_url)).await.unwrap();

    let err = within("app 3", Client::connect(&app_url))
        .await
        .expect_err("app is at its limit");
    assert_eq!(err.code(), Some(ErrorCode::ConnectionLimit), "{err}");
    assert!(err.to_string().contains("user 'app'"), "{err}");
    assert!(err.to_string().contains("limit of 2"), "{err}");
    assert!(err.is_transient());
    // A wrong password is still told as such: the limit counts logged-in users only.
    let wrong = within("bad password", Client::connect(&broker.url_of("app", "no")))
        .await
        .expect_err("wrong password");
    assert_eq!(wrong.code(), Some(ErrorCode::AccessRefused), "{wrong}");

    // Another user, and the user's own connections, are unaffected.
    let guest = broker.client().await;
    still_works(&guest, "guest-q").await;
    still_works(&first, "app-q").await;
    let limits = broker.limits().await;
    assert_eq!(limits["max_connections_per_user"]["limit"], 2);
    assert_eq!(limits["max_connections_per_user"]["current"], 2);

    // Once one of its connections is gone, the user gets in again.
    first.close().await.unwrap();
    let again = within("app after a close", async {
        loop {
            match Client::connect(&app_url).await {
                Ok(client) => break client,
                Err(e) => assert_eq!(e.code(), Some(ErrorCode::ConnectionLimit), "{e}"),
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    still_works(&again, "app-q").await;
    let log = broker.process.stop_and_log();
    assert!(
        log.contains("connection refused: the user is at its connection limit"),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sockets_past_the_handshaking_limit_are_refused_before_hello_and_others_keep_working() {
    let broker = Broker::start(&["--max-handshaking", "2", "--handshake-timeout-ms", "600000"]);
    let working = broker.client().await;
    // The broker counts a socket in its handshake until just after `Welcome` is written.
    wait_for_handshaking(&broker, 0).await;
    let silent_a = TcpStream::connect(broker.process.addr()).await.unwrap();
    let silent_b = TcpStream::connect(broker.process.addr()).await.unwrap();
    wait_for_handshaking(&broker, 2).await;

    let third = TcpStream::connect(broker.process.addr()).await.unwrap();
    let (code, reason) = close_received(third).await.expect("a Close");
    assert_eq!(code, ErrorCode::ConnectionLimit);
    assert!(reason.contains("max_handshaking"), "{reason}");
    assert!(reason.contains("limit of 2"), "{reason}");
    let refused = within("a client meanwhile", Client::connect(&broker.process.url()))
        .await
        .expect_err("no room in the handshake");
    assert_eq!(
        refused.code(),
        Some(ErrorCode::ConnectionLimit),
        "{refused}"
    );

    // The connection that finished its handshake before is not affected.
    still_works(&working, "work").await;
    let limits = broker.limits().await;
    assert_eq!(limits["max_handshaking"]["limit"], 2);
    // The working client and the two silent sockets; refused sockets hold nothing.
    assert_eq!(limits["max_connections"]["current"], 3, "{limits}");

    drop((silent_a, silent_b));
    let later = within("connect once the sockets left", async {
        loop {
            match Client::connect(&broker.process.url()).await {
                Ok(client) => break client,
                Err(e) => assert_eq!(e.code(), Some(ErrorCode::ConnectionLimit), "{e}"),
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    still_works(&later, "work").await;
    let log = broker.process.stop_and_log();
    assert!(
        log.contains("too many sockets are in their handshake"),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socket_that_does_not_finish_its_hello_in_time_is_closed_and_counted_no_more() {
    let broker = Broker::start_verbose(&["--handshake-timeout-ms", "300"]);
    let working = broker.client().await;
    let silent = TcpStream::connect(broker.process.addr()).await.unwrap();
    let mut partial = TcpStream::connect(broker.process.addr()).await.unwrap();
    // Half a frame header: the broker waits for the rest, but not beyond the timeout.
    partial.write_all(&[40, 0, 0, 0, 1, 0]).await.unwrap();
    let started = Instant::now();
    for stream in [silent, partial] {
        assert_eq!(close_received(stream).await, None);
    }
    assert!(started.elapsed() >= Duration::from_millis(250));
    broker.process.wait_for_log(Duration::from_secs(30), |l| {
        l.contains("handshake timed out; socket closed")
    });
    // The timed out sockets are no longer counted.
    wait_for_handshaking(&broker, 0).await;
    assert_eq!(broker.limits().await["handshake_timeout_ms"]["limit"], 300);
    still_works(&working, "work").await;
    broker.process.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumers_past_the_per_connection_limit_get_limit_exceeded_and_others_consume() {
    let broker = Broker::start(&["--max-consumers-per-connection", "2"]);
    let client = broker.client().await;
    client
        .declare_queue("jobs", QueueOptions::new())
        .await
        .unwrap();
    let mut first = client.consume("jobs", ConsumeOptions::new()).await.unwrap();
    let _second = client.consume("jobs", ConsumeOptions::new()).await.unwrap();
    let err = client
        .consume("jobs", ConsumeOptions::new())
        .await
        .expect_err("a third consumer");
    let (code, message) = server_error(&err);
    assert_eq!(code, ErrorCode::LimitExceeded);
    assert!(
        message.contains("max_consumers_per_connection"),
        "{message}"
    );
    assert!(message.contains("limit of 2"), "{message}");
    assert_eq!(
        broker.limits().await["max_consumers_per_connection"]["limit"],
        2
    );

    // The connection stays up, another connection has its own count, and a cancelled
    // consumer makes room.
    let other = broker.client().await;
    let _elsewhere = other.consume("jobs", ConsumeOptions::new()).await.unwrap();
    still_works(&other, "elsewhere").await;
    first.cancel().await.unwrap();
    let _third = client.consume("jobs", ConsumeOptions::new()).await.unwrap();
    still_works(&client, "same-connection").await;
    broker.process.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binds_past_the_per_exchange_limit_get_limit_exceeded_and_a_lower_limit_keeps_old_ones() {
    let broker = Broker::start(&["--max-bindings-per-exchange", "3"]);
    let client = broker.client().await;
    client
        .declare_exchange("events", ExchangeKind::Topic, ExchangeOptions::new())
        .await
        .unwrap();
    for q in ["a", "b", "c", "d"] {
        client.declare_queue(q, QueueOptions::new()).await.unwrap();
    }
    for q in ["a", "b", "c"] {
        client.bind(q, "events", "x.#", Vec::new()).await.unwrap();
    }
    // Binding again what exists is no new binding.
    client.bind("a", "events", "x.#", Vec::new()).await.unwrap();
    let err = client
        .bind("d", "events", "x.#", Vec::new())
        .await
        .expect_err("a fourth binding");
    let (code, message) = server_error(&err);
    assert_eq!(code, ErrorCode::LimitExceeded);
    assert!(message.contains("exchange 'events'"), "{message}");
    assert!(message.contains("max_bindings_per_exchange"), "{message}");
    // Other exchanges have their own count; the refused binding was not made.
    client
        .bind("d", "amq.topic", "x.#", Vec::new())
        .await
        .unwrap();
    client
        .publish("events", "x.1", "m", &PublishOptions::default())
        .await
        .unwrap();
    assert_eq!(client.inspect_queue("c").await.unwrap().ready, 1);
    assert_eq!(client.inspect_queue("d").await.unwrap().ready, 0);
    let limits = broker.limits().await;
    assert_eq!(limits["max_bindings_per_exchange"]["limit"], 3);
    assert_eq!(limits["max_bindings_per_exchange"]["current"], 3);
    drop(client);

    // Restarted with a lower limit: the broker starts, keeps the bindings and says so.
    let Broker { process, dir } = broker;
    process.stop();
    let data = dir.path().join("data");
    let process = BrokerProcess::start(&data, &["--max-bindings-per-exchange", "1"]);
    process.wait_for_log(Duration::from_secs(30), |l| {
        l.contains("exchange has more bindings than its limit") && l.contains("events")
    });
    let client = within("connect", Client::connect(&process.url()))
        .await
        .unwrap();
    client
        .publish("events", "x.2", "m", &PublishOptions::default())
        .await
        .unwrap();
    assert_eq!(client.inspect_queue("c").await.unwrap().ready, 2);
    let err = client
        .bind("d", "events", "x.#", Vec::new())
        .await
        .expect_err("still over the limit");
    assert_eq!(server_error(&err).0, ErrorCode::LimitExceeded);
    // Unbinding is never limited.
    client
        .unbind("a", "events", "x.#", Vec::new())
        .await
        .unwrap();
    process.stop();
}

fn headers(n: usize) -> Vec<(String, HeaderValue)> {
    (0..n)
        .map(|i| (format!("h{i}"), HeaderValue::Int(i as i64)))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_tables_over_the_configured_limits_are_refused_alone() {
    let broker = Broker::start(&["--max-header-entries", "4", "--max-header-bytes", "200"]);
    let client = broker.client().await;
    client
        .declare_queue("q", QueueOptions::new())
        .await
        .unwrap();
    let with_headers = |hs: Vec<(String, HeaderValue)>| {
        let mut options = PublishOptions::default();
        for (k, v) in hs {
            options = options.header(k, v);
        }
        OutgoingMessage::new("", "q", "m").with_options(options)
    };
    let long = vec![("k".to_owned(), HeaderValue::from("v".repeat(300).as_str()))];
    let outcomes = client
        .publish_batch([
            with_headers(headers(4)),
            with_headers(headers(5)),
            with_headers(long.clone()),
            with_headers(headers(1)),
        ])
        .await;
    assert!(outcomes[0].is_ok() && outcomes[3].is_ok(), "{outcomes:?}");
    let (code, message) = rejection(outcomes[1].as_ref().unwrap_err());
    assert_eq!(code, ErrorCode::InvalidArgument);
    assert!(message.contains("max_header_entries"), "{message}");
    let (code, message) = rejection(outcomes[2].as_ref().unwrap_err());
    assert_eq!(code, ErrorCode::InvalidArgument);
    assert!(message.contains("max_header_bytes"), "{message}");
    assert_eq!(client.inspect_queue("q").await.unwrap().ready, 2);

    client
        .declare_exchange("h", ExchangeKind::Headers, ExchangeOptions::new())
        .await
        .unwrap();
    client.bind("q", "h", "", headers(4)).await.unwrap();
    let err = client
        .bind("q", "h", "", headers(5))
        .await
        .expect_err("too many arguments");
    assert_eq!(server_error(&err).0, ErrorCode::InvalidArgument);
    let limits = broker.limits().await;
    assert_eq!(limits["max_header_entries"]["limit"], 4);
    assert_eq!(limits["max_header_bytes"]["limit"], 200);
    still_works(&client, "after").await;
    broker.process.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_refuses_messages_over_its_max_message_bytes_naming_its_limit() {
    let broker = Broker::start(&[]);
    let client = broker.client().await;
    client
        .declare_queue("small", QueueOptions::new().max_message_bytes(100))
        .await
        .unwrap();
    client
        .declare_queue("large", QueueOptions::new())
        .await
        .unwrap();
    client
        .declare_exchange("both", ExchangeKind::Fanout, ExchangeOptions::new())
        .await
        .unwrap();
    client.bind("small", "both", "", Vec::new()).await.unwrap();
    client.bind("large", "both", "", Vec::new()).await.unwrap();
    let big = "x".repeat(200);
    let outcomes = client
        .publish_batch([
            OutgoingMessage::new("", "small", big.clone()),
            OutgoingMessage::new("", "small", "fits"),
            OutgoingMessage::new("", "large", big.clone()),
            OutgoingMessage::new("both", "", big.clone()),
        ])
        .await;
    let (code, message) = rejection(outcomes[0].as_ref().unwrap_err());
    assert_eq!(code, ErrorCode::MessageTooLarge);
    assert!(message.contains("queue 'small'"), "{message}");
    assert!(message.contains("max_message_bytes"), "{message}");
    assert!(outcomes[1].is_ok() && outcomes[2].is_ok(), "{outcomes:?}");
    // Refused as a whole: stored in no queue it was routed to.
    assert_eq!(
        rejection(outcomes[3].as_ref().unwrap_err()).0,
        ErrorCode::MessageTooLarge
    );
    assert_eq!(client.inspect_queue("small").await.unwrap().ready, 1);
    assert_eq!(client.inspect_queue("large").await.unwrap().ready, 1);

    // The argument is the queue's: declared again only the same, and kept over a restart.
    let err = client
        .declare_queue("small", QueueOptions::new().max_message_bytes(200))
        .await
        .expect_err("a different limit");
    assert_eq!(server_error(&err).0, ErrorCode::PreconditionFailed);
    let zero = client
        .declare_queue("zero", QueueOptions::new().max_message_bytes(0))
        .await
        .expect_err("a zero limit");
    assert_eq!(server_error(&zero).0, ErrorCode::InvalidArgument);
    drop(client);
    let Broker { process, dir } = broker;
    process.stop();
    let process = BrokerProcess::start(&dir.path().join("data"), &[]);
    let client = within("connect", Client::connect(&process.url()))
        .await
        .unwrap();
    let args = client.inspect_queue("small").await.unwrap().arguments;
    assert_eq!(args.max_message_bytes, Some(100));
    let refused = client
        .publish("", "small", big, &PublishOptions::default())
        .await
        .expect_err("still limited");
    assert_eq!(rejection(&refused).0, ErrorCode::MessageTooLarge);
    process.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publisher_past_its_unsettled_window_is_slowed_down_never_refused() {
    const WINDOW: usize = 64 << 10;
    let window = WINDOW.to_string();
    let broker = Broker::start(&["--max-unsettled-publish-bytes", &window]);
    let publisher = broker.client().await;
    publisher
        .declare_queue("bulk", QueueOptions::new())
        .await
        .unwrap();
    // Twenty windows' worth in one pipelined batch: the broker stops reading at the window
    // and takes the rest as confirms free it.
    let body = "b".repeat(4096);
    let messages = (0..20 * WINDOW / 4096).map(|_| OutgoingMessage::new("", "bulk", body.clone()));
    let other = broker.client().await;
    let (outcomes, ()) = tokio::join!(
        within("the bulk publish", publisher.publish_batch(messages)),
        still_works(&other, "meanwhile"),
    );
    assert_eq!(outcomes.len(), 20 * WINDOW / 4096);
    assert!(outcomes.iter().all(Result::is_ok), "{outcomes:?}");
    assert_eq!(
        publisher.inspect_queue("bulk").await.unwrap().ready,
        outcomes.len() as u64
    );
    assert_eq!(
        broker.limits().await["max_unsettled_publish_bytes"]["limit"],
        WINDOW as u64
    );
    broker.process.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_without_a_prefetch_limit_holds_at_most_max_prefetch_deliveries() {
    let broker = Broker::start(&["--max-prefetch", "3"]);
    let client = broker.client().await;
    client
        .declare_queue("jobs", QueueOptions::new())
        .await
        .unwrap();
    let jobs = (0..10).map(|i| OutgoingMessage::new("", "jobs", format!("job-{i}")));
    assert!(client.publish_batch(jobs).await.iter().all(Result::is_ok));
    let mut consumer = client
        .consume("jobs", ConsumeOptions::new().prefetch(0))
        .await
        .unwrap();
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(
            within("a delivery", consumer.next())
                .await
                .unwrap()
                .unwrap(),
        );
    }
    let inspect = client.inspect_queue("jobs").await.unwrap();
    assert_eq!((inspect.ready, inspect.unacked), (7, 3));
    let consumers = client.list_consumers().await.unwrap();
    assert_eq!(consumers[0].prefetch, 3);
    // Acking one lets exactly one more through.
    held.remove(0).ack().await.unwrap();
    held.push(
        within("the next delivery", consumer.next())
            .await
            .unwrap()
            .unwrap(),
    );
    assert_eq!(held.last().unwrap().body, "job-3".as_bytes());
    assert_eq!(broker.limits().await["max_prefetch"]["limit"], 3);
    broker.process.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_limits_api_lists_every_limit_with_its_default() {
    let broker = Broker::start(&["--max-connections", "50"]);
    let _client = broker.client().await;
    let limits = broker.limits().await;
    let expected = [
        ("max_connections", Some(50)),
        ("max_handshaking", Some(1024)),
        ("handshake_timeout_ms", Some(10_000)),
        ("max_connections_per_user", None),
        ("max_consumers_per_connection", Some(1024)),
        ("max_unsettled_publish_bytes", Some(64 << 20)),
        ("max_prefetch", Some(65_536)),
        ("max_bindings_per_exchange", Some(10_000)),
        ("max_header_entries", Some(1024)),
        ("max_header_bytes", Some(65_536)),
        ("max_message_bytes", Some(16 << 20)),
    ];
    for (name, limit) in expected {
        assert_eq!(limits[name]["limit"].as_u64(), limit, "{name}: {limits}");
    }
    assert_eq!(
        limits.as_object().unwrap().len(),
        expected.len(),
        "{limits}"
    );
    assert_eq!(limits["max_connections"]["current"], 1);
    assert_eq!(limits["max_connections_per_user"]["current"], 1);
    broker.process.stop();
}
