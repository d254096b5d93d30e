//! Overflow `reject-publish-dlx` and batch `get` with a long-poll wait (issue #13, feature 6),
//! against the real binary.

use std::future::Future;
use std::pin::Pin;
use std::task::Poll;
use std::time::Duration;

use sluice_client::{
    Client, ErrorCode, ExchangeKind, ExchangeOptions, HeaderValue, Message, Overflow,
    PublishOptions, QueueArguments, QueueOptions,
};
use sluice_tests::broker::{within, BrokerProcess};
use sluice_tests::http::HttpClient;

async fn connect(process: &BrokerProcess) -> Client {
    within("connect", Client::connect(&process.url()))
        .await
        .expect("connect")
}

/// Declares a fanout dead-letter exchange `dlx` with the durable queue `dead` bound to it.
async fn dead_letter_queue(client: &Client) {
    client
        .declare_exchange("dlx", ExchangeKind::Fanout, ExchangeOptions::new())
        .await
        .unwrap();
    client
        .declare_queue("dead", QueueOptions::new())
        .await
        .unwrap();
    client.bind("dead", "dlx", "", vec![]).await.unwrap();
}

/// A durable queue holding at most `max_length` ready messages, refusing and dead-letter the
/// rest to `dlx`.
fn full_dlx_queue(max_length: u64) -> QueueOptions {
    QueueOptions {
        arguments: QueueArguments {
            max_length: Some(max_length),
            overflow: Some(Overflow::RejectPublishDlx),
            dead_letter_exchange: Some("dlx".to_owned()),
            ..QueueArguments::default()
        },
        ..QueueOptions::new()
    }
}

async fn publish(client: &Client, queue: &str, body: &str) -> sluice_client::Result<()> {
    let options = PublishOptions::new();
    within(
        "publish",
        client.publish("", queue, body.to_owned(), &options),
    )
    .await
    .map(drop)
}

fn str_header(m: &Message, key: &str) -> String {
    match m.header(key) {
        Some(HeaderValue::Str(s)) => s,
        other => panic!("header {key}: {other:?}"),
    }
}

/// Takes every message of `queue` with `Get` (acked), in order, as text.
async fn drain(client: &Client, queue: &str) -> Vec<Message> {
    let mut taken = Vec::new();
    while let Some(m) = within("get", client.get(queue)).await.unwrap() {
        m.ack().await.unwrap();
        taken.push(m);
    }
    taken
}

fn body(m: &Message) -> String {
    String::from_utf8(m.body.to_vec()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reject_publish_dlx_refuses_the_new_message_and_dead_letters_it_with_reason_maxlen() {
    let dir = tempfile::tempdir().unwrap();
    let process = BrokerProcess::start(dir.path(), &[]);
    let client = connect(&process).await;
    dead_letter_queue(&client).await;
    client
        .declare_queue("small", full_dlx_queue(2))
        .await
        .unwrap();
    assert_eq!(
        client
            .inspect_queue("small")
            .await
            .unwrap()
            .arguments
            .overflow,
        Some(Overflow::RejectPublishDlx)
    );
    publish(&client, "small", "m1").await.unwrap();
    publish(&client, "small", "m2").await.unwrap();
    let refused = publish(&client, "small", "m3").await.unwrap_err();
    assert_eq!(refused.code(), Some(ErrorCode::QueueFull), "{refused}");
    // A confirmed publish into the dead-letter queue after the refusal is stored after the
    // copy (protocol.md §6.1): once it is confirmed, the copy is there, and durable.
    publish(&client, "dead", "marker").await.unwrap();

    // The queue kept its oldest messages (unlike drop-head).
    let kept: Vec<String> = drain(&client, "small").await.iter().map(body).collect();
    assert_eq!(kept, ["m1", "m2"]);
    let dead = drain(&client, "dead").await;
    assert_eq!(dead.iter().map(body).collect::<Vec<_>>(), ["m3", "marker"]);
    assert_eq!(str_header(&dead[0], "x-death-reason"), "maxlen");
    assert_eq!(str_header(&dead[0], "x-death-queue"), "small");
    assert_eq!(str_header(&dead[0], "x-death-exchange"), "");
    assert_eq!(str_header(&dead[0], "x-death-routing-key"), "small");
    client.close().await.unwrap();
    process.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_and_dead_lettered_message_survives_kill_9_in_the_dead_letter_queue() {
    let dir = tempfile::tempdir().unwrap();
    let process = BrokerProcess::start(dir.path(), &[]);
    let client = connect(&process).await;
    dead_letter_queue(&client).await;
    client
        .declare_queue("small", full_dlx_queue(1))
        .await
        .unwrap();
    publish(&client, "small", "kept").await.unwrap();
    let refused = publish(&client, "small", "refused").await.unwrap_err();
    assert_eq!(refused.code(), Some(ErrorCode::QueueFull), "{refused}");
    publish(&client, "dead", "marker").await.unwrap();
    process.kill9();

    let process = BrokerProcess::start(dir.path(), &[]);
    let client = connect(&process).await;
    // The argument is durable too.
    let small = client.inspect_queue("small").await.unwrap();
    assert_eq!(small.arguments.overflow, Some(Overflow::RejectPublishDlx));
    assert_eq!(small.ready, 1);
    let dead = drain(&client, "dead").await;
    assert_eq!(
        dead.iter().map(body).collect::<Vec<_>>(),
        ["refused", "marker"]
    );
    assert_eq!(str_header(&dead[0], "x-death-reason"), "maxlen");
    client.close().await.unwrap();
    process.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_full_reject_publish_dlx_queues_dead_lettering_into_each_other_do_not_loop() {
    let dir = tempfile::tempdir().unwrap();
    let process = BrokerProcess::start(dir.path(), &[]);
    let client = connect(&process).await;
    // "a" dead-letters to "b" and "b" to "a", both full: a refused message goes to "b" once,
    // is refused there, and is dropped.
    for (queue, dlx) in [("a", "to-b"), ("b", "to-a")] {
        client
            .declare_exchange(dlx, ExchangeKind::Fanout, ExchangeOptions::new())
            .await
            .unwrap();
        let mut options = full_dlx_queue(1);
        options.arguments.dead_letter_exchange = Some(dlx.to_owned());
        client.declare_queue(queue, options).await.unwrap();
    }
    client.bind("b", "to-b", "", vec![]).await.unwrap();
    client.bind("a", "to-a", "", vec![]).await.unwrap();
    publish(&client, "a", "a1").await.unwrap();
    publish(&client, "b", "b1").await.unwrap();
    let refused = publish(&client, "a", "a2").await.unwrap_err();
    assert_eq!(refused.code(), Some(ErrorCode::QueueFull), "{refused}");
    // Both queues still answer and hold their one message each.
    publish(&client, "b", "b2").await.unwrap_err();
    assert_eq!(client.inspect_queue("a").await.unwrap().ready, 1);
    assert_eq!(client.inspect_queue("b").await.unwrap().ready, 1);
    client.close().await.unwrap();
    process.stop();
}

// ----------------------------------------------------------------------------------------
// GetMany
// ----------------------------------------------------------------------------------------

/// Longest a long poll waits in these tests unless the test is about its end.
const LONG: Duration = Duration::from_secs(20);

/// Sends a `GetMany` now (its first poll hands the request to the connection), and returns
/// the future of its answer: requests sent after it on the same connection reach the queue
/// after it (protocol.md §3.5).
async fn send_get_many<'a>(
    client: &'a Client,
    queue: &'a str,
    max: u32,
    wait: Duration,
) -> Pin<Box<impl Future<Output = sluice_client::Result<Vec<Message>>> + 'a>> {
    let mut answer = Box::pin(client.get_many(queue, max, wait));
    let first = std::future::poll_fn(|cx| Poll::Ready(answer.as_mut().poll(cx))).await;
    assert!(
        first.is_pending(),
        "a long poll answered before it was sent"
    );
    answer
}

async fn queue_with(client: &Client, name: &str, bodies: &[&str]) {
    client
        .declare_queue(name, QueueOptions::new())
        .await
        .unwrap();
    for b in bodies {
        publish(client, name, b).await.unwrap();
    }
}

fn bodies(messages: &[Message]) -> Vec<String> {
    messages.iter().map(body).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_many_takes_up_to_max_in_order_and_reports_what_is_left() {
    let dir = tempfile::tempdir().unwrap();
    let process = BrokerProcess::start(dir.path(), &[]);
    let client = connect(&process).await;
    queue_with(&client, "q", &["1", "2", "3", "4", "5"]).await;
    let first = within("get_many", client.get_many("q", 3, Duration::ZERO))
        .await
        .unwrap();
    assert_eq!(bodies(&first), ["1", "2", "3"]);
    let tags: Vec<u64> = first.iter().map(|m| m.delivery_tag.0).collect();
    assert_eq!(tags, [1, 2, 3]);
    assert_eq!(client.inspect_queue("q").await.unwrap().ready, 2);
    // Asking for more than is there answers with what is there, without waiting for more.
    let rest = within("get_many", client.get_many("q", 10, LONG))
        .await
        .unwrap();
    assert_eq!(bodies(&rest), ["4", "5"]);
    for m in first.into_iter().chain(rest) {
        m.ack_confirmed().await.unwrap();
    }
    let q = client.inspect_queue("q").await.unwrap();
    assert_eq!((q.ready, q.unacked), (0, 0));
    client.close().await.unwrap();
    process.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_many_on_an_empty_queue_with_no_wait_answers_at_once_and_empty() {
    let dir = tempfile::tempdir().unwrap();
    let process = BrokerProcess::start(dir.path(), &[]);
    let client = connect(&process).await;
    queue_with(&client, "q", &[]).await;
    let answer = within("get_many", client.get_many("q", 10, Duration::ZERO))
        .await
        .unwrap();
    assert!(answer.is_empty());
    client.close().await.unwrap();
    process.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_poll_answers_as_soon_as_a_message_arrives_while_the_connection_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let process = BrokerProcess::start(dir.path(), &[]);
    let client = connect(&process).await;
    queue_with(&client, "q", &[]).await;
    let started = std::time::Instant::now();
    let waiting = send_get_many(&client, "q", 10, LONG).await;
    // The same connection is served while the GetMany waits: this publish (after the GetMany
    // on the connection, so the queue has parked it) is confirmed, and wakes the long poll.
    publish(&client, "q", "hello").await.unwrap();
    assert_eq!(client.inspect_queue("q").await.unwrap().consumers, 0);
    let got = within("the long poll", waiting).await.unwrap();
    assert_eq!(bodies(&got), ["hello"]);
    assert!(
        started.elapsed() < LONG,
        "answered by the message, not the wait"
    );
    got[0].ack_confirmed().await.unwrap();
    client.close().await.unwrap();
    process.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_poll_with_no_message_ends_empty_when_its_wait_passes() {
    let dir = tempfile::tempdir().unwrap();
    let process = BrokerProcess::start(dir.path(), &[]);
    let client = connect(&process).await;
    queue_with(&client, "q", &[]).await;
    let wait = Duration::from_millis(300);
    let started = std::time::Instant::now();
    let got = within("the long poll", client.get_many("q", 10, wait))
        .await
        .unwrap();
    assert!(got.is_empty());
    assert!(
        started.elapsed() >= wait,
        "ended after {:?}",
        started.elapsed()
    );
    client.close().await.unwrap();
    process.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_message_of_a_batch_has_a_lease_and_returns_to_the_queue_when_it_expires() {
    let dir = tempfile::tempdir().unwrap();
    let process = BrokerProcess::start(dir.path(), &[]);
    let client = connect(&process).await;
    let options = QueueOptions::new().ack_timeout(Duration::from_millis(500));
    client.declare_queue("q", options).await.unwrap();
    for b in ["a", "b", "c"] {
        publish(&client, "q", b).await.unwrap();
    }
    let batch = within("get_many", client.get_many("q", 3, Duration::ZERO))
        .await
        .unwrap();
    assert_eq!(bodies(&batch), ["a", "b", "c"]);
    assert!(batch
        .iter()
        .all(|m| !m.redelivered && m.delivery_count == 1));
    // One is acked; the other two leases run out, and a long poll is woken by their return.
    batch[1].ack_confirmed().await.unwrap();
    let again = within("the returned messages", client.get_many("q", 10, LONG))
        .await
        .unwrap();
    let mut again = again;
    if again.len() < 2 {
        // The two leases may end in two rounds of the queue.
        let more = within("the second", client.get_many("q", 10, LONG))
            .await
            .unwrap();
        again.extend(more);
    }
    assert_eq!(bodies(&again), ["a", "c"]);
    assert!(again.iter().all(|m| m.redelivered && m.delivery_count == 2));
    // The first batch's tags are no longer outstanding.
    let stale = batch[0].ack_confirmed().await.unwrap_err();
    assert_eq!(stale.code(), Some(ErrorCode::UnknownDeliveryTag), "{stale}");
    for m in again {
        m.ack_confirmed().await.unwrap();
    }
    client.close().await.unwrap();
    process.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_poll_on_a_queue_deleted_meanwhile_fails_with_not_found() {
    let dir = tempfile::tempdir().unwrap();
    let process = BrokerProcess::start(dir.path(), &[]);
    let client = connect(&process).await;
    queue_with(&client, "q", &[]).await;
    let waiting = send_get_many(&client, "q", 10, LONG).await;
    client
        .delete_queue("q", sluice_client::DeleteQueueOptions::default())
        .await
        .unwrap();
    let err = within("the long poll", waiting).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::NotFound), "{err}");
    client.close().await.unwrap();
    process.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_poll_of_a_closed_connection_takes_no_message() {
    let dir = tempfile::tempdir().unwrap();
    let process = BrokerProcess::start(dir.path(), &[]);
    let gone = connect(&process).await;
    let client = connect(&process).await;
    queue_with(&client, "q", &[]).await;
    let waiting = send_get_many(&gone, "q", 10, LONG).await;
    // Parked at the queue once an answer to a later request on its connection came back.
    gone.inspect_queue("q").await.unwrap();
    drop(waiting);
    gone.close().await.unwrap();
    publish(&client, "q", "for the living").await.unwrap();
    let got = within("get_many", client.get_many("q", 10, LONG))
        .await
        .unwrap();
    assert_eq!(bodies(&got), ["for the living"]);
    got[0].ack_confirmed().await.unwrap();
    let q = client.inspect_queue("q").await.unwrap();
    assert_eq!((q.ready, q.unacked), (0, 0));
    client.close().await.unwrap();
    process.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_may_have_16_long_polls_waiting_and_the_next_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let process = BrokerProcess::start(dir.path(), &[]);
    let client = connect(&process).await;
    queue_with(&client, "q", &[]).await;
    let mut waiting = Vec::new();
    for _ in 0..sluice_client::wire::MAX_WAITING_GET_MANY {
        waiting.push(send_get_many(&client, "q", 1, LONG).await);
    }
    let err = within("the one too many", client.get_many("q", 1, LONG))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::LimitExceeded), "{err}");
    // Each waiting one is answered by one message, oldest first.
    for i in 0..waiting.len() {
        publish(&client, "q", &i.to_string()).await.unwrap();
    }
    for (i, w) in waiting.into_iter().enumerate() {
        let got = within("a long poll", w).await.unwrap();
        assert_eq!(bodies(&got), [i.to_string()]);
    }
    // Answered ones no longer count.
    publish(&client, "q", "again").await.unwrap();
    let got = within("get_many", client.get_many("q", 1, LONG))
        .await
        .unwrap();
    assert_eq!(bodies(&got), ["again"]);
    client.close().await.unwrap();
    process.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_many_outside_its_limits_is_an_invalid_argument() {
    let dir = tempfile::tempdir().unwrap();
    let process = BrokerProcess::start(dir.path(), &[]);
    let client = connect(&process).await;
    queue_with(&client, "q", &["kept"]).await;
    for (max, wait) in [
        (0, Duration::ZERO),
        (1001, Duration::ZERO),
        (1, Duration::from_millis(20_001)),
    ] {
        let err = within("get_many", client.get_many("q", max, wait))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Some(ErrorCode::InvalidArgument), "{err}");
    }
    let err = within("get_many", client.get_many("nope", 1, Duration::ZERO))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::NotFound), "{err}");
    assert_eq!(client.inspect_queue("q").await.unwrap().ready, 1);
    client.close().await.unwrap();
    process.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sluice_get_with_count_and_wait_takes_a_batch_and_refuses_a_wait_above_20_s() {
    let dir = tempfile::tempdir().unwrap();
    let process = BrokerProcess::start(dir.path(), &[]);
    let client = connect(&process).await;
    queue_with(&client, "q", &["1", "2", "3"]).await;
    let out = sluice_tests::broker::sluice_command()
        .args([
            "get",
            "q",
            "--count",
            "2",
            "--wait",
            "1s",
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
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(
        shown.contains('1') && shown.contains('2') && !shown.contains('3'),
        "{shown}"
    );
    // Acked by the CLI: one is left.
    assert_eq!(client.inspect_queue("q").await.unwrap().ready, 1);
    let out = sluice_tests::broker::sluice_command()
        .args(["get", "q", "--wait", "25s", "--url", &process.cli_url()])
        .output()
        .unwrap();
    assert!(!out.status.success(), "a wait above 20 s is refused");
    client.close().await.unwrap();
    process.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_get_with_wait_ms_answers_when_a_message_arrives_or_empty_after_the_wait() {
    let dir = tempfile::tempdir().unwrap();
    let process = BrokerProcess::start(dir.path(), &["--http-listen", "127.0.0.1:0"]);
    let http = HttpClient::new(process.http_addr().expect("HTTP on"), "guest", "guest");
    let client = connect(&process).await;
    queue_with(&client, "q", &[]).await;
    let empty = http
        .post("/api/queues/q/get", r#"{"count": 5, "wait_ms": 200}"#)
        .await;
    assert_eq!(empty.status, 200, "{}", empty.body);
    assert_eq!(empty.body.trim(), "[]");
    let waiting = http.post("/api/queues/q/get", r#"{"count": 5, "wait_ms": 20000}"#);
    // Whether the publish reaches the queue before the long poll or wakes it, the get answers
    // with the message.
    let publisher = async { publish(&client, "q", "x").await.unwrap() };
    let (got, ()) = within("the long poll", async { tokio::join!(waiting, publisher) }).await;
    assert_eq!(got.status, 200, "{}", got.body);
    assert!(got.body.contains(r#""payload":"x""#), "{}", got.body);
    let refused = http
        .post("/api/queues/q/get", r#"{"wait_ms": 20001}"#)
        .await;
    assert_eq!(refused.status, 400, "{}", refused.body);
    client.close().await.unwrap();
    process.stop();
}
