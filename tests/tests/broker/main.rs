//! End-to-end tests of the broker: the real `sluice` binary, the real Rust client, real files.

mod bad_input;
mod crash;
mod harness;
mod routing;
mod semantics;

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use harness::{within, Broker};
use sluice_client::{
    ConsumeOptions, Consumer, ExchangeKind, ExchangeOptions, HeaderValue, Message, PublishOptions,
    QueueOptions,
};

/// The next message of a consumer, within the time limit.
async fn next(consumer: &mut Consumer) -> Message {
    within("a delivery", consumer.next())
        .await
        .expect("the stream goes on")
        .expect("a message")
}

fn body(i: usize) -> Bytes {
    Bytes::from(format!("task-{i:05}-{}", "x".repeat(i % 50)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_consume_ack_round_trip_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path());
    let client = broker.client().await;
    client
        .declare_queue("tasks", QueueOptions::new())
        .await
        .unwrap();
    for i in 0..100 {
        client
            .publish("", "tasks", body(i), &PublishOptions::new())
            .await
            .unwrap();
    }
    let info = client.inspect_queue("tasks").await.unwrap();
    assert_eq!(info.ready, 100);
    let mut consumer = client
        .consume("tasks", ConsumeOptions::new().prefetch(10))
        .await
        .unwrap();
    for i in 0..100 {
        let m = next(&mut consumer).await;
        assert_eq!(m.body, body(i), "FIFO order, identical bytes");
        assert!(!m.redelivered);
        assert_eq!(m.delivery_count, 1);
        assert_eq!(m.routing_key(), "tasks");
        m.ack().await.unwrap();
    }
    drop(consumer);
    // Settlements are processed in order before a later request on the same connection
    // (protocol.md §3.5), so one inspect sees their effect.
    let info = client.inspect_queue("tasks").await.unwrap();
    assert_eq!(info.unacked, 0);
    assert_eq!((info.ready, info.unacked), (0, 0));
    client.close().await.unwrap();
    broker.stop();
}

/// Three workers with prefetch 5 on one queue: before anyone acks, the broker hands each
/// exactly its credit (none starved, none running ahead); after that, as they ack, every
/// message goes to exactly one of them. How the rest splits depends on how fast each worker
/// is scheduled, so that is not asserted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn competing_consumers_share_the_work_under_prefetch() {
    const PREFETCH: usize = 5;
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path());
    let producer = broker.client().await;
    producer
        .declare_queue("work", QueueOptions::new())
        .await
        .unwrap();
    let workers: Vec<_> = futures_util::future::join_all((0..3).map(|_| broker.client())).await;
    let mut consumers = Vec::new();
    for client in &workers {
        let options = ConsumeOptions::new().prefetch(PREFETCH as u32);
        consumers.push(client.consume("work", options).await.unwrap());
    }
    let total = 300;
    let batch: Vec<_> = (0..total)
        .map(|i| sluice_client::OutgoingMessage::new("", "work", body(i)))
        .collect();
    for r in producer.publish_batch(batch).await {
        r.unwrap();
    }

    let mut held = Vec::new();
    for consumer in &mut consumers {
        let mut first = Vec::new();
        for _ in 0..PREFETCH {
            first.push(next(consumer).await);
        }
        held.push(first);
    }
    let info = producer.inspect_queue("work").await.unwrap();
    let credit = (3 * PREFETCH) as u64;
    assert_eq!(
        (info.ready, info.unacked),
        (total as u64 - credit, credit),
        "each worker holds exactly its prefetch before acking"
    );

    let mut handles = Vec::new();
    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel();
    for (w, (mut consumer, first)) in consumers.into_iter().zip(held).enumerate() {
        let done = done_tx.clone();
        handles.push(tokio::spawn(async move {
            for m in first {
                m.ack().await.unwrap();
                let _ = done.send((w, m.body.clone()));
            }
            while let Some(Ok(m)) = consumer.next().await {
                m.ack().await.unwrap();
                if done.send((w, m.body.clone())).is_err() {
                    break;
                }
            }
        }));
    }
    let mut per_worker: HashMap<usize, usize> = HashMap::new();
    let mut seen = std::collections::HashSet::new();
    for _ in 0..total {
        let (w, b) = within("all work done", done_rx.recv()).await.unwrap();
        *per_worker.entry(w).or_default() += 1;
        assert!(seen.insert(b), "a message was delivered twice");
    }
    assert_eq!(
        per_worker.len(),
        3,
        "every worker took part: {per_worker:?}"
    );
    for h in handles {
        h.abort();
    }
    broker.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nacked_messages_return_in_sequence_order_ahead_of_newer_ones() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path());
    let client = broker.client().await;
    client
        .declare_queue("q", QueueOptions::new())
        .await
        .unwrap();
    for i in 0..5 {
        client
            .publish("", "q", body(i), &PublishOptions::new())
            .await
            .unwrap();
    }
    let mut consumer = client
        .consume("q", ConsumeOptions::new().prefetch(5))
        .await
        .unwrap();
    let mut first = Vec::new();
    for _ in 0..5 {
        first.push(next(&mut consumer).await);
    }
    // Stop the consumer so the returns queue up instead of going straight back out; its
    // deliveries stay outstanding. Nack 3 then 1 (out of order), ack the rest, then publish
    // a newer message.
    consumer.cancel().await.unwrap();
    first[3].nack(true).await.unwrap();
    first[1].nack(true).await.unwrap();
    for i in [0, 2, 4] {
        first[i].ack().await.unwrap();
    }
    client
        .publish("", "q", body(5), &PublishOptions::new())
        .await
        .unwrap();
    let mut consumer = client
        .consume("q", ConsumeOptions::new().prefetch(5))
        .await
        .unwrap();
    let a = next(&mut consumer).await;
    let b = next(&mut consumer).await;
    let c = next(&mut consumer).await;
    assert_eq!(
        (a.body.clone(), b.body.clone(), c.body.clone()),
        (body(1), body(3), body(5))
    );
    assert!(a.redelivered && b.redelivered && !c.redelivered);
    assert_eq!(
        (a.delivery_count, b.delivery_count, c.delivery_count),
        (2, 2, 1)
    );
    for m in [a, b, c] {
        m.ack().await.unwrap();
    }
    broker.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_connections_deliveries_go_to_another_consumer_as_redelivered() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path());
    let producer = broker.client().await;
    producer
        .declare_queue("jobs", QueueOptions::new())
        .await
        .unwrap();
    for i in 0..3 {
        producer
            .publish("", "jobs", body(i), &PublishOptions::new())
            .await
            .unwrap();
    }
    let doomed = broker.client().await;
    let mut c1 = doomed
        .consume("jobs", ConsumeOptions::new().prefetch(10))
        .await
        .unwrap();
    for i in 0..3 {
        assert_eq!(next(&mut c1).await.body, body(i));
    }
    // The worker dies holding all three (its socket closes without acks).
    std::mem::forget(c1);
    doomed.close().await.unwrap();
    let survivor = broker.client().await;
    let mut c2 = survivor
        .consume("jobs", ConsumeOptions::new().prefetch(10))
        .await
        .unwrap();
    for i in 0..3 {
        let m = next(&mut c2).await;
        assert_eq!(m.body, body(i));
        assert!(m.redelivered);
        assert_eq!(m.delivery_count, 2);
        m.ack().await.unwrap();
    }
    broker.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_lease_returns_the_message_and_the_consumer_stays() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path());
    let client = broker.client().await;
    client
        .declare_queue("slow", QueueOptions::new())
        .await
        .unwrap();
    client
        .publish("", "slow", body(1), &PublishOptions::new())
        .await
        .unwrap();
    client
        .publish("", "slow", body(2), &PublishOptions::new())
        .await
        .unwrap();
    let opts = ConsumeOptions::new()
        .prefetch(10)
        .ack_timeout(Duration::from_millis(300));
    let mut consumer = client.consume("slow", opts).await.unwrap();
    let held = next(&mut consumer).await;
    let kept = next(&mut consumer).await;
    assert_eq!((held.body.clone(), kept.body.clone()), (body(1), body(2)));
    // Keep the second one alive with extends while the first one's lease runs out.
    let again = within("redelivery after the lease", async {
        loop {
            kept.extend(Duration::from_secs(5)).await.unwrap();
            tokio::select! {
                m = consumer.next() => break m.unwrap().unwrap(),
                () = tokio::time::sleep(Duration::from_millis(100)) => {}
            }
        }
    })
    .await;
    assert_eq!(again.body, body(1));
    assert!(again.redelivered);
    assert_eq!(again.delivery_count, 2);
    // The old tag is no longer outstanding; the new one is.
    again.ack().await.unwrap();
    kept.ack().await.unwrap();
    let err = held.ack().await;
    // The client may refuse locally or the server may answer UNKNOWN_DELIVERY_TAG later;
    // either way the consumer is still connected and the queue is empty.
    drop(err);
    // Settlements are processed in order before a later request on the same connection
    // (protocol.md §3.5), so one inspect sees their effect.
    let info = client.inspect_queue("slow").await.unwrap();
    assert_eq!(info.unacked, 0);
    assert_eq!((info.ready, info.consumers), (0, 1));
    broker.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_and_topology_survive_a_restart_and_unacked_come_back_redelivered() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path());
    let client = broker.client().await;
    client
        .declare_exchange("orders", ExchangeKind::Topic, ExchangeOptions::new())
        .await
        .unwrap();
    client
        .declare_queue("eu", QueueOptions::new())
        .await
        .unwrap();
    client.bind("eu", "orders", "eu.#", vec![]).await.unwrap();
    for i in 0..10 {
        client
            .publish("orders", "eu.de.new", body(i), &PublishOptions::new())
            .await
            .unwrap();
    }
    let mut consumer = client
        .consume("eu", ConsumeOptions::new().prefetch(5))
        .await
        .unwrap();
    for i in 0..5 {
        let m = next(&mut consumer).await;
        assert_eq!(m.body, body(i));
        if i < 3 {
            m.ack().await.unwrap();
        }
    }
    // A request after the acks: they have been processed when it answers.
    client.inspect_queue("eu").await.unwrap();
    std::mem::forget(consumer);
    client.close().await.unwrap();
    broker.stop();

    let broker = Broker::start(dir.path());
    let client = broker.client().await;
    // The binding survived: publishing through the exchange still reaches the queue.
    client
        .publish(
            "orders",
            "eu.fr",
            body(10),
            &PublishOptions::new().mandatory(),
        )
        .await
        .unwrap();
    let mut consumer = client
        .consume("eu", ConsumeOptions::new().prefetch(20))
        .await
        .unwrap();
    for i in 3..11 {
        let m = next(&mut consumer).await;
        assert_eq!(m.body, body(i));
        // 3 and 4 were held unacked at the stop; acks gave credit back, so 5..8 may have
        // been handed out too. The message published after the restart never was.
        if i < 5 {
            assert!(
                m.redelivered,
                "message {i} was delivered before the restart"
            );
        }
        if i == 10 {
            assert!(!m.redelivered);
        }
        m.ack().await.unwrap();
    }
    broker.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_pulls_one_message_and_it_must_be_settled() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path());
    let client = broker.client().await;
    client
        .declare_queue("pull", QueueOptions::new())
        .await
        .unwrap();
    assert!(client.get("pull").await.unwrap().is_none());
    client
        .publish("", "pull", body(7), &PublishOptions::new())
        .await
        .unwrap();
    let m = client.get("pull").await.unwrap().expect("a message");
    assert_eq!(m.body, body(7));
    m.nack(true).await.unwrap();
    let m = client.get("pull").await.unwrap().expect("requeued");
    assert!(m.redelivered);
    m.ack().await.unwrap();
    assert!(client.get("pull").await.unwrap().is_none());
    broker.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_messages_are_dead_lettered_with_their_history() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path());
    let client = broker.client().await;
    client
        .declare_exchange("dlx", ExchangeKind::Fanout, ExchangeOptions::new())
        .await
        .unwrap();
    client
        .declare_queue("dead", QueueOptions::new())
        .await
        .unwrap();
    client.bind("dead", "dlx", "", vec![]).await.unwrap();
    client
        .declare_queue(
            "work",
            QueueOptions::new()
                .dead_letter_exchange("dlx")
                .delivery_limit(2),
        )
        .await
        .unwrap();
    client
        .publish("", "work", body(1), &PublishOptions::new())
        .await
        .unwrap();
    client
        .publish("", "work", body(2), &PublishOptions::new())
        .await
        .unwrap();
    let mut consumer = client
        .consume("work", ConsumeOptions::new().prefetch(1))
        .await
        .unwrap();
    next(&mut consumer).await.reject().await.unwrap();
    // The second one is requeued until its delivery limit.
    let m = next(&mut consumer).await;
    m.nack(true).await.unwrap();
    let m = next(&mut consumer).await;
    assert_eq!(m.delivery_count, 2);
    m.nack(true).await.unwrap();
    let mut dead = client.consume("dead", ConsumeOptions::new()).await.unwrap();
    for (expected, reason) in [(body(1), "rejected"), (body(2), "delivery-limit")] {
        let m = next(&mut dead).await;
        assert_eq!(m.body, expected);
        let headers = m.headers();
        let get = |k: &str| {
            headers
                .iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.clone())
        };
        assert_eq!(get("x-death-reason"), Some(HeaderValue::from(reason)));
        assert_eq!(get("x-death-queue"), Some(HeaderValue::from("work")));
        assert_eq!(get("x-death-count"), Some(HeaderValue::Int(1)));
        assert_eq!(m.exchange(), "dlx");
        m.ack().await.unwrap();
    }
    let work = client.inspect_queue("work").await.unwrap();
    assert_eq!((work.ready, work.unacked), (0, 0));
    broker.stop();
}
