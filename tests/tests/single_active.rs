//! Single active consumer and consumer priorities (protocol.md §9.1), against the real
//! binary: only the active consumer receives; standbys take over in registration order when
//! it is cancelled, when its connection closes and when its process is killed; its unsettled
//! messages go to the next one in queue order; listings (wire, CLI, HTTP) show who is active;
//! higher-priority consumers are served first; and the argument survives `kill -9`.
//! (Which standby takes over among priorities is unit-tested in broker/src/queue/consumers.rs.)

use std::process::Stdio;
use std::time::Duration;

use bytes::BytesMut;
use sluice_client::wire::{
    Consume, Frame, FrameDecoder, Hello, Reply, Request, RequestId, DEFAULT_MAX_FRAME_LEN,
    PROTOCOL_VERSION,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use futures_util::StreamExt;
use serde_json::Value;
use sluice_client::{
    Client, ConsumeOptions, Consumer, ConsumerSummary, Error, ErrorCode, Message, QueueArguments,
    QueueOptions,
};
use sluice_tests::broker::{sluice_command, wait_bounded, within, BrokerProcess, WAIT};
use sluice_tests::child::ChildProcess;
use sluice_tests::http::HttpClient;

async fn connect(process: &BrokerProcess) -> Client {
    within("connect", Client::connect(&process.url()))
        .await
        .expect("connect")
}

fn sac() -> QueueOptions {
    QueueOptions::new().single_active_consumer(true)
}

async fn consume(client: &Client, queue: &str, tag: &str, prefetch: u32) -> Consumer {
    let options = ConsumeOptions::new().consumer_tag(tag).prefetch(prefetch);
    client.consume(queue, options).await.expect("consume")
}

async fn publish(client: &Client, queue: &str, bodies: impl IntoIterator<Item = String>) {
    for body in bodies {
        client
            .publish("", queue, body, &Default::default())
            .await
            .expect("publish");
    }
}

fn bodies(range: std::ops::Range<u32>) -> Vec<String> {
    range.map(|i| format!("m{i}")).collect()
}

async fn next(consumer: &mut Consumer) -> Message {
    within("a delivery", consumer.next())
        .await
        .expect("consumer open")
        .expect("delivery")
}

async fn take(consumer: &mut Consumer, n: usize) -> Vec<Message> {
    let mut got = Vec::new();
    for _ in 0..n {
        got.push(next(consumer).await);
    }
    got
}

fn texts(messages: &[Message]) -> Vec<String> {
    messages
        .iter()
        .map(|m| String::from_utf8_lossy(&m.body).into_owned())
        .collect()
}

/// The consumers with these tags: (tag, active, priority), in the order of the tags given.
/// (The listing's `unacked` is a snapshot refreshed a few times a second, so not compared.)
async fn states(client: &Client, tags: &[&str]) -> Vec<(String, bool, i32)> {
    let all: Vec<ConsumerSummary> = client.list_consumers().await.expect("list consumers");
    tags.iter()
        .filter_map(|t| all.iter().find(|c| c.consumer_tag == *t))
        .map(|c| (c.consumer_tag.clone(), c.active, c.priority))
        .collect()
}

/// Which of `tags` the listing shows active.
async fn active_tags(client: &Client, tags: &[&str]) -> Vec<String> {
    states(client, tags)
        .await
        .into_iter()
        .filter(|s| s.1)
        .map(|s| s.0)
        .collect()
}

/// Waits until the listing shows exactly `tags` among the queue's consumers.
async fn wait_for_consumers(client: &Client, queue: &str, count: usize) {
    within("the consumers to register", async {
        loop {
            let all = client.list_consumers().await.expect("list consumers");
            if all.iter().filter(|c| c.queue == queue).count() == count {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_active_consumer_receives_and_every_listing_shows_the_standbys() {
    let dir = tempfile::tempdir().unwrap();
    let process = BrokerProcess::start(dir.path(), &["--http-listen", "127.0.0.1:0"]);
    let client = connect(&process).await;
    client.declare_queue("orders", sac()).await.unwrap();
    let mut a = consume(&client, "orders", "a", 100).await;
    let b_client = connect(&process).await;
    let _b = consume(&b_client, "orders", "b", 100).await;
    let _c = consume(&b_client, "orders", "c", 100).await;
    publish(&client, "orders", bodies(0..10)).await;

    let got = take(&mut a, 10).await;
    assert_eq!(
        texts(&got),
        bodies(0..10),
        "all of them, in order, to the active one"
    );
    assert_eq!(
        states(&client, &["a", "b", "c"]).await,
        [
            ("a".into(), true, 0),
            ("b".into(), false, 0),
            ("c".into(), false, 0)
        ]
    );
    // The CLI and the HTTP API say the same.
    let table = run_cli(&process, &["consumers"]);
    let line = |tag: &str| {
        table
            .lines()
            .find(|l| l.split_whitespace().nth(1) == Some(tag))
            .unwrap_or_else(|| panic!("{tag} in {table}"))
            .to_owned()
    };
    assert!(line("a").contains("active"), "{table}");
    assert!(line("b").contains("standby"), "{table}");
    let http = HttpClient::new(process.http_addr().unwrap(), "guest", "guest");
    let response = http.get("/api/consumers").await;
    let body = response.body;
    assert_eq!(response.status, 200, "{body}");
    let json: Value = serde_json::from_str(&body).unwrap();
    let by_tag = |tag: &str| {
        json.as_array()
            .unwrap()
            .iter()
            .find(|c| c["consumer_tag"] == tag)
            .cloned()
            .unwrap_or_else(|| panic!("{tag} in {body}"))
    };
    assert_eq!(by_tag("a")["active"], true);
    assert_eq!(by_tag("b")["active"], false);
    assert_eq!(by_tag("b")["priority"], 0);
    let metrics = http.get("/metrics").await.body;
    assert!(
        metrics.contains(r#"sluice_queue_standby_consumers{vhost="/",queue="orders"} 2"#),
        "{metrics}"
    );
    // Inspect shows the argument.
    let q = client.inspect_queue("orders").await.unwrap();
    assert_eq!(q.arguments.single_active_consumer, Some(1));
    let inspect = run_cli(&process, &["inspect", "orders"]);
    assert!(inspect.contains("single-active-consumer"), "{inspect}");
    for m in got {
        m.ack().await.unwrap();
    }
    process.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_the_active_consumer_hands_over_to_the_standbys_in_registration_order() {
    let dir = tempfile::tempdir().unwrap();
    let process = BrokerProcess::start(dir.path(), &[]);
    let client = connect(&process).await;
    client.declare_queue("q", sac()).await.unwrap();
    let mut a = consume(&client, "q", "a", 10).await;
    let mut b = consume(&client, "q", "b", 10).await;
    let mut c = consume(&client, "q", "c", 10).await;
    publish(&client, "q", bodies(0..1)).await;
    next(&mut a).await.ack().await.unwrap();

    a.cancel().await.unwrap();
    assert_eq!(active_tags(&client, &["b", "c"]).await, ["b"]);
    publish(&client, "q", bodies(1..2)).await;
    let m = next(&mut b).await;
    assert_eq!(m.body, "m1");
    m.ack().await.unwrap();

    b.cancel().await.unwrap();
    assert_eq!(active_tags(&client, &["c"]).await, ["c"]);
    publish(&client, "q", bodies(2..3)).await;
    let m = next(&mut c).await;
    assert_eq!(m.body, "m2");
    m.ack().await.unwrap();
    process.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_connection_gives_its_unacked_messages_to_the_next_standby_in_queue_order() {
    let dir = tempfile::tempdir().unwrap();
    let process = BrokerProcess::start(dir.path(), &[]);
    let admin = connect(&process).await;
    admin.declare_queue("q", sac()).await.unwrap();
    let a_client = connect(&process).await;
    let mut a = consume(&a_client, "q", "a", 5).await;
    let b_client = connect(&process).await;
    let mut b = consume(&b_client, "q", "b", 100).await;
    let c_client = connect(&process).await;
    let _c = consume(&c_client, "q", "c", 100).await;
    publish(&admin, "q", bodies(0..8)).await;
    // A holds five unsettled (its window); three wait in the queue.
    let held = take(&mut a, 5).await;
    assert_eq!(texts(&held), bodies(0..5));

    a_client.close().await.unwrap();
    let got = take(&mut b, 8).await;
    assert_eq!(
        texts(&got),
        bodies(0..8),
        "the returned ones first, in queue order"
    );
    assert!(got[..5].iter().all(|m| m.redelivered));
    assert!(got[5..].iter().all(|m| !m.redelivered));
    assert_eq!(
        states(&admin, &["b", "c"]).await,
        [("b".into(), true, 0), ("c".into(), false, 0)]
    );
    process.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_active_consumers_process_hands_over_to_the_standby() {
    let dir = tempfile::tempdir().unwrap();
    let process = BrokerProcess::start(dir.path(), &[]);
    let client = connect(&process).await;
    client.declare_queue("q", sac()).await.unwrap();
    // The active consumer is a `sluice consume` process (it acks after printing each one).
    let mut cli = ChildProcess::spawn({
        let mut cmd = sluice_command();
        cmd.args([
            "consume",
            "q",
            "--prefetch",
            "3",
            "--url",
            &process.cli_url(),
        ]);
        cmd
    })
    .unwrap();
    wait_for_consumers(&client, "q", 1).await;
    let mut b = consume(&client, "q", "b", 100).await;
    assert!(!states(&client, &["b"]).await[0].1, "b is a standby");
    publish(&client, "q", bodies(0..3)).await;
    for expected in bodies(0..3) {
        assert_eq!(cli.next_line(WAIT).unwrap().as_ref(), Some(&expected));
    }

    cli.kill().unwrap();
    publish(&client, "q", bodies(3..6)).await;
    // b is active now: it gets what the killed process had not acked yet (redelivered, in
    // queue order), then the new ones.
    let mut got = Vec::new();
    while got.last().map(|m: &Message| m.body.clone()) != Some("m5".into()) {
        got.push(next(&mut b).await);
    }
    let returned = got.len() - 3;
    assert_eq!(
        texts(&got),
        bodies(3 - returned as u32..6),
        "nothing lost, in order"
    );
    assert!(got[..returned].iter().all(|m| m.redelivered));
    assert_eq!(active_tags(&client, &["b"]).await, ["b"]);
    process.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abruptly_closed_socket_gives_its_unacked_messages_to_the_standby() {
    let dir = tempfile::tempdir().unwrap();
    let process = BrokerProcess::start(dir.path(), &[]);
    let client = connect(&process).await;
    client.declare_queue("q", sac()).await.unwrap();
    // The active consumer speaks the protocol on a bare socket and never acks.
    let sock = raw_consumer(&process, "q").await;
    let mut b = consume(&client, "q", "b", 100).await;
    publish(&client, "q", bodies(0..3)).await;
    within("three deliveries to the raw consumer", async {
        while client.inspect_queue("q").await.unwrap().unacked < 3 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;

    drop(sock); // no Close: the TCP connection just ends
    publish(&client, "q", bodies(3..4)).await;
    let got = take(&mut b, 4).await;
    assert_eq!(texts(&got), bodies(0..4));
    assert!(got[..3].iter().all(|m| m.redelivered));
    process.stop();
}

/// A consumer of `queue` on a bare socket (handshake and `Consume`, then nothing more read).
async fn raw_consumer(process: &BrokerProcess, queue: &str) -> TcpStream {
    let mut sock = within("connect", TcpStream::connect(process.addr()))
        .await
        .unwrap();
    let hello = Hello {
        min_version: PROTOCOL_VERSION,
        max_version: PROTOCOL_VERSION,
        username: "guest".into(),
        password: "guest".into(),
        heartbeat_ms: 600_000,
        max_frame_len: 0,
        client_properties: vec![],
    };
    let consume = Consume {
        queue: queue.into(),
        prefetch: 10,
        ..Consume::default()
    };
    let mut out = BytesMut::new();
    for (id, request) in [(1, Request::from(hello)), (2, Request::from(consume))] {
        Frame::<Request>::new(RequestId(id), request)
            .encode(&mut out, DEFAULT_MAX_FRAME_LEN)
            .unwrap();
    }
    sock.write_all(&out).await.unwrap();
    let decoder = FrameDecoder::new(DEFAULT_MAX_FRAME_LEN);
    let mut buf = BytesMut::new();
    within("ConsumeOk", async {
        loop {
            while let Some(f) = decoder.decode::<Reply>(&mut buf).unwrap() {
                if let Reply::ConsumeOk(_) = f.body {
                    return;
                }
            }
            assert_ne!(
                sock.read_buf(&mut buf).await.unwrap(),
                0,
                "connection closed"
            );
        }
    })
    .await;
    sock
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn higher_priority_consumers_get_messages_first_and_lower_ones_only_when_they_are_full() {
    let dir = tempfile::tempdir().unwrap();
    let process = BrokerProcess::start(dir.path(), &[]);
    let client = connect(&process).await;
    client
        .declare_queue("q", QueueOptions::new())
        .await
        .unwrap();
    let mut low = client
        .consume("q", ConsumeOptions::new().consumer_tag("low").prefetch(10))
        .await
        .unwrap();
    let mut high = client
        .consume(
            "q",
            ConsumeOptions::new()
                .consumer_tag("high")
                .prefetch(2)
                .priority(5),
        )
        .await
        .unwrap();
    publish(&client, "q", bodies(0..4)).await;
    let h = take(&mut high, 2).await;
    assert_eq!(texts(&h), bodies(0..2));
    let l = take(&mut low, 2).await;
    assert_eq!(
        texts(&l),
        bodies(2..4),
        "low gets what high has no room for"
    );
    assert_eq!(
        states(&client, &["low", "high"]).await,
        [("low".into(), true, 0), ("high".into(), true, 5)]
    );
    // High has room again: the next ones are its.
    for m in h {
        m.ack().await.unwrap();
    }
    publish(&client, "q", bodies(4..6)).await;
    assert_eq!(texts(&take(&mut high, 2).await), bodies(4..6));
    process.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_higher_priority_standby_becomes_active_once_the_active_one_has_settled() {
    let dir = tempfile::tempdir().unwrap();
    let process = BrokerProcess::start(dir.path(), &[]);
    let client = connect(&process).await;
    client.declare_queue("q", sac()).await.unwrap();
    let mut a = consume(&client, "q", "a", 10).await;
    publish(&client, "q", bodies(0..1)).await;
    let m0 = next(&mut a).await;
    let options = ConsumeOptions::new()
        .consumer_tag("h")
        .prefetch(10)
        .priority(5);
    let mut h = client.consume("q", options).await.unwrap();
    assert_eq!(
        states(&client, &["a", "h"]).await,
        [("a".into(), true, 0), ("h".into(), false, 5)]
    );
    // A holds a delivery: it gets nothing more, and h waits for it to settle.
    publish(&client, "q", bodies(1..2)).await;
    let q = client.inspect_queue("q").await.unwrap();
    assert_eq!((q.ready, q.unacked), (1, 1));
    m0.ack().await.unwrap();
    assert_eq!(next(&mut h).await.body, "m1");
    assert_eq!(active_tags(&client, &["a", "h"]).await, ["h"]);
    process.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_active_consumer_queue_survives_kill_9_and_hands_over_after_reconnect() {
    let dir = tempfile::tempdir().unwrap();
    let process = BrokerProcess::start(dir.path(), &[]);
    let client = connect(&process).await;
    client.declare_queue("q", sac()).await.unwrap();
    publish(&client, "q", bodies(0..4)).await;
    process.kill9();

    let process = BrokerProcess::start(dir.path(), &[]);
    let client = connect(&process).await;
    let q = client.inspect_queue("q").await.unwrap();
    assert_eq!(q.arguments.single_active_consumer, Some(1));
    assert_eq!(q.ready, 4);
    // The standby order is the order in which consumers register again.
    let a_client = connect(&process).await;
    let mut a = consume(&a_client, "q", "a", 2).await;
    let mut b = consume(&client, "q", "b", 10).await;
    assert_eq!(texts(&take(&mut a, 2).await), bodies(0..2));
    assert_eq!(active_tags(&client, &["a", "b"]).await, ["a"]);
    a_client.close().await.unwrap();
    assert_eq!(texts(&take(&mut b, 4).await), bodies(0..4));
    // Declaring it again without the argument is refused, naming it.
    let err = client
        .declare_queue("q", QueueOptions::new())
        .await
        .unwrap_err();
    let Error::Server { code, message } = err else {
        panic!("{err:?}")
    };
    assert_eq!(code, ErrorCode::PreconditionFailed);
    assert!(message.contains("single_active_consumer"), "{message}");
    process.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_active_consumer_argument_other_than_1_is_an_invalid_argument() {
    let dir = tempfile::tempdir().unwrap();
    let process = BrokerProcess::start(dir.path(), &[]);
    let client = connect(&process).await;
    for value in [0u8, 2] {
        let options = QueueOptions {
            arguments: QueueArguments {
                single_active_consumer: Some(value),
                ..QueueArguments::default()
            },
            ..QueueOptions::new()
        };
        let err = client.declare_queue("q", options).await.unwrap_err();
        let Error::Server { code, message } = err else {
            panic!("{err:?}")
        };
        assert_eq!(code, ErrorCode::InvalidArgument);
        assert!(message.contains("single_active_consumer"), "{message}");
    }
    // The connection keeps serving.
    client.declare_queue("q", sac()).await.unwrap();
    process.stop();
}

/// Runs the CLI against the broker and returns its standard output.
fn run_cli(process: &BrokerProcess, args: &[&str]) -> String {
    let mut child = sluice_command()
        .args(args)
        .args(["--url", &process.cli_url()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start sluice");
    let mut stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut out = String::new();
        std::io::Read::read_to_string(&mut stdout, &mut out).unwrap();
        out
    });
    let status = wait_bounded(child, WAIT + Duration::from_secs(1)).expect("sluice exits");
    assert!(status.success(), "sluice {args:?} failed");
    reader.join().unwrap()
}
