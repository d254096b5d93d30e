//! `kill -9` of the broker under publishing load, repeated: every confirmed message is
//! delivered after the restart, with identical bytes.

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use futures_util::stream::FuturesOrdered;
use futures_util::StreamExt;
use sluice_client::{ConsumeOptions, PublishOptions, QueueOptions};

use crate::harness::{within, Broker};

/// Message `id`'s exact bytes: its id, then a deterministic pattern of varying length.
fn payload(id: u64) -> Bytes {
    let mut x = id.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut v = format!("{id}:").into_bytes();
    v.extend((0..64 + id % 700).map(|_| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x as u8
    }));
    Bytes::from(v)
}

fn id_of(body: &[u8]) -> u64 {
    let end = body.iter().position(|&b| b == b':').expect("an id");
    std::str::from_utf8(&body[..end]).unwrap().parse().unwrap()
}

/// Publishes from `first` until the connection dies; sends every confirmed id.
async fn publish_until_killed(
    client: sluice_client::Client,
    first: u64,
    confirmed: tokio::sync::mpsc::UnboundedSender<u64>,
) {
    let publisher = client.publisher_with_window(512);
    let mut pending = FuturesOrdered::new();
    let mut id = first;
    loop {
        let confirm = match publisher
            .publish("", "load", payload(id), &PublishOptions::new())
            .await
        {
            Ok(c) => c,
            Err(_) => break,
        };
        let this = id;
        pending.push_back(async move { (this, confirm.await) });
        id += 1;
        while pending.len() >= 512 {
            match pending.next().await {
                Some((i, Ok(_))) => {
                    let _ = confirmed.send(i);
                }
                _ => return,
            }
        }
    }
    while let Some((i, r)) = pending.next().await {
        if r.is_ok() {
            let _ = confirmed.send(i);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confirmed_messages_survive_repeated_kill_9_under_load() {
    let dir = tempfile::tempdir().unwrap();
    let mut confirmed = BTreeSet::new();
    let mut next_id = 0;
    for round in 0..4u64 {
        let broker = Broker::start(dir.path());
        let client = broker.client().await;
        client
            .declare_queue("load", QueueOptions::new())
            .await
            .unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let publisher = tokio::spawn(publish_until_killed(client.clone(), next_id, tx));
        // Let a varying number of confirms arrive, then crash the broker mid-stream.
        let target = 1_000 + round * 700;
        let mut this_round = 0;
        within("confirms before the kill", async {
            while this_round < target {
                let id = rx.recv().await.expect("publisher alive");
                confirmed.insert(id);
                this_round += 1;
            }
        })
        .await;
        broker.kill9();
        within("publisher notices the crash", publisher)
            .await
            .unwrap();
        while let Ok(id) = rx.try_recv() {
            confirmed.insert(id);
        }
        next_id = confirmed.last().copied().unwrap_or(0) + 10_000;
    }

    let broker = Broker::start(dir.path());
    let client = broker.client().await;
    let mut consumer = client
        .consume("load", ConsumeOptions::new().prefetch(1000))
        .await
        .unwrap();
    let mut seen: BTreeMap<u64, u32> = BTreeMap::new();
    within("every confirmed message delivered", async {
        while !confirmed.iter().all(|id| seen.contains_key(id)) {
            let m = consumer.next().await.expect("stream").expect("message");
            let id = id_of(&m.body);
            assert_eq!(
                m.body,
                payload(id),
                "message {id} came back with different bytes"
            );
            *seen.entry(id).or_default() += 1;
            m.ack().await.unwrap();
        }
    })
    .await;
    assert!(
        confirmed.len() >= 4_000,
        "only {} confirmed",
        confirmed.len()
    );
    broker.stop();
}

/// Publishes 10 messages to `q` and takes the first 4 without acking them.
async fn four_of_ten_delivered(client: &sluice_client::Client, q: &str) {
    client.declare_queue(q, QueueOptions::new()).await.unwrap();
    for id in 0..10 {
        client
            .publish("", q, payload(id), &PublishOptions::new())
            .await
            .unwrap();
    }
    for _ in 0..4 {
        let m = within("get", client.get(q))
            .await
            .unwrap()
            .expect("a message");
        assert!(!m.redelivered);
    }
}

/// The redelivered flags of every message of `q`, by id.
async fn flags(client: &sluice_client::Client, q: &str) -> BTreeMap<u64, bool> {
    let mut out = BTreeMap::new();
    while let Some(m) = within("get", client.get(q)).await.unwrap() {
        out.insert(id_of(&m.body), m.redelivered);
        m.ack().await.unwrap();
    }
    out
}

/// The delivered watermark rides lazy writes, so after a crash the broker cannot know which
/// messages went out last: it flags every recovered message redelivered (AMQP's "may have been
/// delivered"), never one less. After a clean stop the watermark is exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_crash_every_recovered_message_is_flagged_after_a_clean_stop_only_delivered_ones() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path());
    let client = broker.client().await;
    four_of_ten_delivered(&client, "crashed").await;
    drop(client);
    broker.kill9();
    let broker = Broker::start(dir.path());
    let client = broker.client().await;
    let after_crash = flags(&client, "crashed").await;
    assert_eq!(after_crash.len(), 10);
    assert!(after_crash.values().all(|&r| r), "{after_crash:?}");

    four_of_ten_delivered(&client, "stopped").await;
    drop(client);
    broker.stop();
    let broker = Broker::start(dir.path());
    let client = broker.client().await;
    let after_stop = flags(&client, "stopped").await;
    let expected: BTreeMap<u64, bool> = (0..10).map(|id| (id, id < 4)).collect();
    assert_eq!(after_stop, expected);
    broker.stop();
}
