//! The Rust client across a lost connection (issue 14): URLs with several hosts, reconnecting
//! after `kill -9` (to the same broker restarted, or to the next host), consumers that go on,
//! unconfirmed publishes written again (kept single by a dedup window), deliveries of the
//! lost connection refused with `DeliveryLost`; and, with reconnection off, today's behaviour.

use std::collections::{HashMap, HashSet};
use std::ops::Range;
use std::time::Duration;

use futures_util::StreamExt;
use sluice_client::{
    Client, ConsumeOptions, Consumer, Error, Message, OutgoingMessage, PublishConfirm,
    PublishOptions, QueueArguments, QueueOptions,
};
use sluice_tests::broker::{within, BrokerProcess};
use tokio::sync::{mpsc, watch};

async fn connect(url: &str, resend: bool) -> Client {
    within("connect", Client::builder().resend(resend).connect(url))
        .await
        .unwrap()
}

/// A durable queue whose dedup window holds every id of the test.
async fn declare_dedup(client: &Client, queue: &str) {
    let mut options = QueueOptions::new();
    options.arguments = QueueArguments {
        dedup_window_ms: Some(3_600_000),
        dedup_window_count: Some(100_000),
        ..QueueArguments::default()
    };
    within("declare", client.declare_queue(queue, options))
        .await
        .unwrap();
}

fn batch(queue: &str, range: Range<usize>) -> Vec<OutgoingMessage> {
    range
        .map(|i| OutgoingMessage::new("", queue, format!("m-{i}")))
        .collect()
}

async fn publish_all(client: &Client, messages: Vec<OutgoingMessage>) {
    for outcome in within("publish", client.publish_batch(messages)).await {
        outcome.expect("every message is confirmed");
    }
}

async fn next(consumer: &mut Consumer) -> Message {
    within("a delivery", consumer.next())
        .await
        .expect("the stream goes on")
        .expect("no error on the stream")
}

fn body(message: &Message) -> String {
    String::from_utf8(message.body.to_vec()).unwrap()
}

/// Consumes until `total` distinct bodies were seen. Holds every message unsettled until
/// `restarted` turns true (so that the dedup window remembers every id through the crash:
/// protocol.md §6.1 keeps an id while its message is in the queue), then acks each (an ack
/// of a delivery lost with its connection fails, and the message comes again). Returns each
/// body's distinct `message_seq`s: more than one means stored twice.
fn consume_all(
    mut consumer: Consumer,
    total: usize,
    restarted: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<HashMap<String, HashSet<u64>>> {
    tokio::spawn(async move {
        let mut copies: HashMap<String, HashSet<u64>> = HashMap::new();
        let mut held = Vec::new();
        while copies.len() < total {
            let message = next(&mut consumer).await;
            copies
                .entry(body(&message))
                .or_default()
                .insert(message.message_seq);
            if !*restarted.borrow() {
                held.push(message);
                continue;
            }
            for message in held.drain(..).chain(Some(message)) {
                match message.ack().await {
                    Ok(()) | Err(Error::DeliveryLost) => {}
                    Err(e) => panic!("ack: {e}"),
                }
            }
        }
        copies
    })
}

/// Waits until a count sent on `counts` reaches `at_least`.
async fn wait_count(counts: &mut mpsc::UnboundedReceiver<usize>, at_least: usize) {
    within("progress", async {
        while counts.recv().await.expect("the task runs") < at_least {}
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_kill_9_and_a_restart_consumers_go_on_and_unconfirmed_publishes_are_resent_once() {
    const TOTAL: usize = 300;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let broker = BrokerProcess::start(&data, &[]);
    let addr = broker.addr().to_owned();
    let client = connect(&broker.url(), true).await;
    declare_dedup(&client, "jobs").await;
    let consumer = within(
        "consume",
        client.consume("jobs", ConsumeOptions::new().prefetch(20)),
    )
    .await
    .unwrap();
    let (restarted_tx, restarted) = watch::channel(false);
    let consuming = consume_all(consumer, TOTAL, restarted);

    publish_all(&client, batch("jobs", 0..50)).await;
    // Publish on through a window while the broker dies: some messages are in flight, some
    // stored without their confirm.
    let publisher = client.publisher_with_window(32);
    let (confirmed_tx, mut confirmed) = mpsc::unbounded_channel();
    let publishing = tokio::spawn(async move {
        let (confirms_tx, mut confirms) = mpsc::unbounded_channel::<PublishConfirm>();
        let settling = tokio::spawn(async move {
            let mut outcomes = Vec::new();
            while let Some(confirm) = confirms.recv().await {
                outcomes.push(confirm.await);
                let _ = confirmed_tx.send(outcomes.len());
            }
            outcomes
        });
        for message in batch("jobs", 50..250) {
            let confirm = publisher
                .publish("", "jobs", message.body, &PublishOptions::new())
                .await
                .expect("publishing waits while the client reconnects");
            confirms_tx.send(confirm).unwrap();
        }
        drop(confirms_tx);
        settling.await.unwrap()
    });
    wait_count(&mut confirmed, 30).await;
    broker.kill9();
    let broker = BrokerProcess::start(&data, &["--listen", &addr]);
    restarted_tx.send(true).unwrap();

    let outcomes = within("confirms after the restart", publishing)
        .await
        .unwrap();
    assert_eq!(outcomes.len(), 200);
    for outcome in outcomes {
        outcome.expect("a message unconfirmed at the crash is published again and confirmed");
    }
    publish_all(&client, batch("jobs", 250..TOTAL)).await;
    let copies = within("every message consumed", consuming).await.unwrap();
    for i in 0..TOTAL {
        let seqs = &copies[&format!("m-{i}")];
        assert_eq!(seqs.len(), 1, "m-{i} was stored {} times", seqs.len());
    }
    let info = within("inspect", client.inspect_queue("jobs"))
        .await
        .unwrap();
    assert_eq!(info.ready, 0, "nothing left over: {info:?}");
    within("close", client.close()).await.unwrap();
    broker.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_url_whose_first_host_is_down_connects_to_the_next() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(&dir.path().join("data"), &[]);
    let down = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let down_addr = down.local_addr().unwrap();
    drop(down); // nothing listens there now: connecting is refused
    let url = format!("sluice://guest:guest@{down_addr},{}", broker.addr());
    let client = connect(&url, false).await;
    within("declare", client.declare_queue("q", QueueOptions::new()))
        .await
        .unwrap();
    within(
        "publish",
        client.publish("", "q", "hello", &PublishOptions::new()),
    )
    .await
    .unwrap();
    let message = within("get", client.get("q")).await.unwrap().unwrap();
    assert_eq!(body(&message), "hello");
    within("close", client.close()).await.unwrap();
    broker.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_the_first_of_two_brokers_dies_the_client_goes_on_with_the_second() {
    let dir = tempfile::tempdir().unwrap();
    let first = BrokerProcess::start(&dir.path().join("first"), &[]);
    let second = BrokerProcess::start(&dir.path().join("second"), &[]);
    // The application's queue exists on both (the test declares it on the second first).
    let standby = connect(&second.url(), false).await;
    within("declare", standby.declare_queue("q", QueueOptions::new()))
        .await
        .unwrap();
    let url = format!("sluice://guest:guest@{},{}", first.addr(), second.addr());
    let client = connect(&url, false).await;
    within("declare", client.declare_queue("q", QueueOptions::new()))
        .await
        .unwrap();
    let mut consumer = within("consume", client.consume("q", ConsumeOptions::new()))
        .await
        .unwrap();
    publish_all(&client, batch("q", 0..5)).await;
    for i in 0..5 {
        let message = next(&mut consumer).await;
        assert_eq!(body(&message), format!("m-{i}"));
        within("ack", message.ack_confirmed()).await.unwrap();
    }

    first.kill9();
    publish_all(&client, batch("q", 5..10)).await;
    for i in 5..10 {
        let message = next(&mut consumer).await;
        assert_eq!(body(&message), format!("m-{i}"), "from the second broker");
        within("ack", message.ack_confirmed()).await.unwrap();
    }
    let on_second = within("inspect", standby.inspect_queue("q")).await.unwrap();
    assert_eq!((on_second.ready, on_second.unacked), (0, 0));
    within("close", client.close()).await.unwrap();
    within("close", standby.close()).await.unwrap();
    second.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acking_a_delivery_of_the_lost_connection_fails_with_delivery_lost() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let broker = BrokerProcess::start(&data, &[]);
    let addr = broker.addr().to_owned();
    let client = connect(&broker.url(), false).await;
    within("declare", client.declare_queue("q", QueueOptions::new()))
        .await
        .unwrap();
    publish_all(&client, batch("q", 0..1)).await;
    let mut consumer = within("consume", client.consume("q", ConsumeOptions::new()))
        .await
        .unwrap();
    let before = next(&mut consumer).await;
    assert!(before.is_deliverable());

    broker.kill9();
    let broker = BrokerProcess::start(&data, &["--listen", &addr]);
    // The consumer consumed again: the unacked message comes again on the new connection.
    let again = next(&mut consumer).await;
    assert_eq!(body(&again), "m-0");
    assert!(!before.is_deliverable());
    assert!(matches!(before.ack().await, Err(Error::DeliveryLost)));
    let confirmed = before.nack_confirmed(true).await;
    assert!(
        matches!(
            confirmed,
            Err(Error::AlreadySettled) | Err(Error::DeliveryLost)
        ),
        "{confirmed:?}"
    );
    within("ack", again.ack_confirmed()).await.unwrap();
    let info = within("inspect", client.inspect_queue("q")).await.unwrap();
    assert_eq!((info.ready, info.unacked), (0, 0));
    within("close", client.close()).await.unwrap();
    broker.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_an_operator_closes_is_made_again_and_its_consumer_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(&dir.path().join("data"), &[]);
    let admin = connect(&broker.url(), false).await;
    let client = connect(&broker.url(), false).await;
    within("declare", client.declare_queue("q", QueueOptions::new()))
        .await
        .unwrap();
    let mut consumer = within("consume", client.consume("q", ConsumeOptions::new()))
        .await
        .unwrap();
    within(
        "close the connection",
        admin.close_connection(client.server_info().connection_id, "maintenance"),
    )
    .await
    .unwrap();
    publish_all(&client, batch("q", 0..3)).await;
    for i in 0..3 {
        let message = next(&mut consumer).await;
        assert_eq!(body(&message), format!("m-{i}"));
        within("ack", message.ack_confirmed()).await.unwrap();
    }
    assert!(!client.is_closed());
    within("close", client.close()).await.unwrap();
    within("close", admin.close()).await.unwrap();
    broker.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_reconnection_off_a_lost_connection_ends_everything_as_before() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(&dir.path().join("data"), &[]);
    let client = within(
        "connect",
        Client::builder()
            .reconnect_timeout(Duration::ZERO)
            .connect(&broker.url()),
    )
    .await
    .unwrap();
    within("declare", client.declare_queue("q", QueueOptions::new()))
        .await
        .unwrap();
    let mut consumer = within("consume", client.consume("q", ConsumeOptions::new()))
        .await
        .unwrap();
    broker.kill9();
    let ended = within("the stream ends", consumer.next()).await;
    assert!(
        matches!(ended, Some(Err(Error::ConnectionClosed(_)))),
        "{ended:?}"
    );
    assert!(within("no more", consumer.next()).await.is_none());
    let publish = client
        .publish("", "q", "late", &PublishOptions::new())
        .await;
    assert!(
        matches!(publish, Err(Error::ConnectionClosed(_))),
        "{publish:?}"
    );
    assert!(client.is_closed());
}

/// Sends `signal` (`-STOP`, `-CONT`) to process `pid`.
fn signal(pid: u32, signal: &str) {
    let status = std::process::Command::new("kill")
        .args([signal, &pid.to_string()])
        .status()
        .expect("kill");
    assert!(status.success(), "kill {signal} {pid}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_that_stops_answering_is_left_after_the_heartbeat_timeout_for_the_next_host() {
    let dir = tempfile::tempdir().unwrap();
    let first = BrokerProcess::start(&dir.path().join("first"), &[]);
    let second = BrokerProcess::start(&dir.path().join("second"), &[]);
    let standby = connect(&second.url(), false).await;
    within("declare", standby.declare_queue("q", QueueOptions::new()))
        .await
        .unwrap();
    // The shortest heartbeat a broker agrees to: silence for 2.25 s ends the connection.
    let url = format!(
        "sluice://guest:guest@{},{}?heartbeat_ms=1000",
        first.addr(),
        second.addr()
    );
    let client = connect(&url, false).await;
    within("declare", client.declare_queue("q", QueueOptions::new()))
        .await
        .unwrap();
    let mut consumer = within("consume", client.consume("q", ConsumeOptions::new()))
        .await
        .unwrap();

    // Frozen, not dead: its sockets stay open, only the heartbeats stop.
    signal(first.pid(), "-STOP");
    publish_all(&client, batch("q", 0..3)).await;
    for i in 0..3 {
        let message = next(&mut consumer).await;
        assert_eq!(body(&message), format!("m-{i}"), "from the second broker");
        within("ack", message.ack_confirmed()).await.unwrap();
    }
    first.kill9();
    within("close", client.close()).await.unwrap();
    within("close", standby.close()).await.unwrap();
    second.stop();
}
