//! Depth after `kill -9` is exactly what a consumer can then take: transient messages that
//! do not survive a restart are never counted as ready, persistent ones (acked or not before
//! the crash) are.

use std::collections::BTreeSet;

use bytes::Bytes;
use sluice_client::{Client, PublishOptions, QueueOptions};
use sluice_tests::broker::BrokerProcess;

use sluice_tests::broker::within;

async fn connect(process: &BrokerProcess) -> Client {
    within("connect", Client::connect(&process.url()))
        .await
        .expect("connect")
}

/// Message `id`: persistent when `id` is even, transient when odd.
fn is_persistent(id: u32) -> bool {
    id % 2 == 0
}

fn id_of(body: &[u8]) -> u32 {
    u32::from_le_bytes(body.try_into().expect("a 4-byte id"))
}

/// Publishes ids `0..count` (confirmed), persistent and transient in turn.
async fn publish_mixed(client: &Client, queue: &str, count: u32) {
    let publisher = client.publisher();
    let mut confirms = Vec::new();
    for id in 0..count {
        let mut options = PublishOptions::new();
        if !is_persistent(id) {
            options = options.transient();
        }
        let body = Bytes::copy_from_slice(&id.to_le_bytes());
        confirms.push(publisher.publish("", queue, body, &options).await.unwrap());
    }
    for c in confirms {
        within("confirm", c).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn depth_after_kill_9_is_exactly_what_a_consumer_then_takes() {
    let dir = tempfile::tempdir().unwrap();
    let process = BrokerProcess::start(dir.path(), &[]);
    let client = connect(&process).await;
    client
        .declare_queue("mixed", QueueOptions::new())
        .await
        .unwrap();
    publish_mixed(&client, "mixed", 400).await;
    assert_eq!(client.inspect_queue("mixed").await.unwrap().ready, 400);

    // A worker takes 100 (by Get: no window to refill): acks 60, still holds 40 at the crash.
    let mut acked = BTreeSet::new();
    let mut held = Vec::new();
    for n in 0..100 {
        let m = within("get", client.get("mixed")).await.unwrap().unwrap();
        if n < 60 {
            m.ack().await.unwrap();
            acked.insert(id_of(&m.body));
        } else {
            held.push(m);
        }
    }
    within("the acks to land", async {
        while client.inspect_queue("mixed").await.unwrap().unacked != 40 {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    })
    .await;
    process.kill9();

    let process = BrokerProcess::start(dir.path(), &[]);
    let client = connect(&process).await;
    let depth = client.inspect_queue("mixed").await.unwrap();
    assert_eq!(depth.unacked, 0);
    let mut taken = Vec::new();
    while let Some(m) = within("get", client.get("mixed")).await.unwrap() {
        taken.push(id_of(&m.body));
        m.ack().await.unwrap();
    }
    assert_eq!(
        depth.ready,
        taken.len() as u64,
        "the depth after the restart is what a consumer can take"
    );
    assert!(
        taken.iter().all(|&id| is_persistent(id)),
        "no transient message survives"
    );
    // Every persistent message not acked before the crash is there (an ack not yet synced may
    // bring one more back: at least once).
    let taken: BTreeSet<u32> = taken.into_iter().collect();
    let expected: BTreeSet<u32> = (0..400)
        .filter(|&id| is_persistent(id) && !acked.contains(&id))
        .collect();
    assert!(
        expected.is_subset(&taken),
        "missing {:?}",
        expected.difference(&taken).collect::<Vec<_>>()
    );
    assert_eq!(client.inspect_queue("mixed").await.unwrap().ready, 0);
    drop(held);

    // And after a clean restart the numbers stay true.
    process.stop();
    let process = BrokerProcess::start(dir.path(), &[]);
    let client = connect(&process).await;
    let after = client.inspect_queue("mixed").await.unwrap();
    assert_eq!((after.ready, after.unacked), (0, 0));
    process.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_messages_are_not_counted_after_a_clean_restart_either() {
    let dir = tempfile::tempdir().unwrap();
    let process = BrokerProcess::start(dir.path(), &[]);
    let client = connect(&process).await;
    client
        .declare_queue("mixed", QueueOptions::new())
        .await
        .unwrap();
    publish_mixed(&client, "mixed", 10).await;
    process.stop();

    let process = BrokerProcess::start(dir.path(), &[]);
    let client = connect(&process).await;
    let listed = client.list_queues().await.unwrap();
    let mixed = listed.iter().find(|q| q.name == "mixed").unwrap();
    assert_eq!(
        mixed.ready, 5,
        "the listing counts the persistent messages only"
    );
    assert_eq!(client.inspect_queue("mixed").await.unwrap().ready, 5);
    let mut taken = Vec::new();
    while let Some(m) = within("get", client.get("mixed")).await.unwrap() {
        taken.push(id_of(&m.body));
        m.ack().await.unwrap();
    }
    assert_eq!(taken, [0, 2, 4, 6, 8]);
    process.stop();
}
