//! Overflow `reject-publish-dlx` and batch `get` with a long-poll wait (issue #13, feature 6),
//! against the real binary.

use sluice_client::{
    Client, ErrorCode, ExchangeKind, ExchangeOptions, HeaderValue, Message, Overflow,
    PublishOptions, QueueArguments, QueueOptions,
};
use sluice_tests::broker::{within, BrokerProcess};

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
