//! The Rust client against a 3-node cluster of real `sluice serve` processes (issue 14): a
//! consumer (and a `get`) started on a follower of a replicated queue follows `NOT_LEADER` to
//! the leader; with the cluster's URL (every node), a `kill -9` of the queue's leader (the
//! client's own node, or the one it followed) costs the user nothing: the consumer stream goes
//! on with the new leader, publishing goes on, and every confirmed message arrives; a
//! leadership transfer (`LEADER_MOVED`) moves the consumer with it.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use sluice_client::{Client, ConsumeOptions, Error, ErrorCode, PublishOptions, QueueArguments};
use sluice_tests::broker::within;
use sluice_tests::cluster::{replicated, ClusterProcess, NodeId};

/// Bounded wait for a leader to be elected and known (election timeout 1–2 s, on a busy
/// 2-core machine).
const ELECTION: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(100);

async fn connect(url: &str) -> Client {
    within("connect", Client::connect(url)).await.unwrap()
}

/// The queue's leader, as the nodes name it in `NOT_LEADER` (asked with a client that does
/// not follow), waiting (bounded) for an election.
async fn leader_of(cluster: &ClusterProcess, queue: &str) -> NodeId {
    let deadline = Instant::now() + ELECTION;
    loop {
        assert!(Instant::now() < deadline, "no leader of {queue}");
        for id in 1..=cluster.len() as NodeId {
            let url = cluster.node(id).url();
            let raw = Client::builder()
                .reconnect_timeout(Duration::ZERO)
                .connect(&url);
            let Ok(Ok(client)) = tokio::time::timeout(Duration::from_secs(10), raw).await else {
                continue;
            };
            let answer = client.get(queue).await;
            let _ = client.close().await;
            match answer {
                Ok(_) => return id,
                Err(Error::Server {
                    code: ErrorCode::NotLeader,
                    message,
                }) => {
                    if let Some(leader) = (1..=cluster.len() as NodeId)
                        .find(|&n| !message.is_empty() && cluster.node(n).addr() == message)
                    {
                        return leader;
                    }
                }
                Err(_) => {}
            }
        }
        tokio::time::sleep(POLL).await;
    }
}

fn body(i: usize) -> String {
    format!("m-{i}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_and_a_get_on_a_follower_follow_not_leader_to_the_leader() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = ClusterProcess::start(dir.path(), 3, &[]).await;
    let c1 = connect(&cluster.node(1).url()).await;
    within(
        "declare",
        c1.declare_queue("orders", replicated(QueueArguments::default())),
    )
    .await
    .unwrap();
    let leader = leader_of(&cluster, "orders").await;
    let follower = (1..=3).find(|&n| n != leader).unwrap();

    // Only the follower's address: the client finds the leader by itself.
    let client = connect(&cluster.node(follower).url()).await;
    for i in 0..20 {
        within(
            "publish",
            client.publish("", "orders", body(i), &PublishOptions::new()),
        )
        .await
        .unwrap();
    }
    let got = within("get", client.get("orders"))
        .await
        .expect("get follows NOT_LEADER")
        .expect("a message");
    assert_eq!(got.body, body(0).as_bytes());
    within("ack", got.ack_confirmed()).await.unwrap();
    let mut consumer = within("consume", client.consume("orders", ConsumeOptions::new()))
        .await
        .expect("consume follows NOT_LEADER");
    let mut seen = BTreeSet::new();
    while seen.len() < 19 {
        let m = within("delivery", consumer.next()).await.unwrap().unwrap();
        seen.insert(String::from_utf8(m.body.to_vec()).unwrap());
        within("ack", m.ack_confirmed()).await.unwrap();
    }
    assert_eq!(seen, (1..20).map(body).collect());
    drop(consumer);
    within("close", client.close()).await.unwrap();
    cluster.stop();
}

/// Consumes until every body of `range` was seen, acking each (an ack of a delivery lost with
/// its connection fails: the message comes again).
async fn receive_all(
    consumer: &mut sluice_client::Consumer,
    seen: &mut BTreeSet<String>,
    upto: usize,
) {
    while seen.len() < upto {
        let m = within("a delivery", consumer.next())
            .await
            .expect("the stream goes on")
            .expect("no error on the stream");
        seen.insert(String::from_utf8(m.body.to_vec()).unwrap());
        match m.ack_confirmed().await {
            Ok(()) | Err(Error::DeliveryLost) => {}
            Err(e) => panic!("ack: {e}"),
        }
    }
}

async fn publish_range(client: &Client, queue: &str, range: std::ops::Range<usize>) {
    for i in range {
        within(
            "publish",
            client.publish("", queue, body(i), &PublishOptions::new()),
        )
        .await
        .unwrap_or_else(|e| panic!("publish {i}: {e}"));
    }
}

/// A client with every node in its URL, the queue's leader first or not, consumes; the
/// leader is killed; publishing and the same consumer stream go on.
async fn the_consumer_survives_a_kill_of_the_leader(leader_first: bool) {
    const BEFORE: usize = 30;
    const AFTER: usize = 30;
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = ClusterProcess::start(dir.path(), 3, &[]).await;
    let setup = connect(&cluster.url()).await;
    within(
        "declare",
        setup.declare_queue("jobs", replicated(QueueArguments::default())),
    )
    .await
    .unwrap();
    let _ = setup.close().await;
    let leader = leader_of(&cluster, "jobs").await;
    // The client's own node: the leader (it dies under the client) or a follower (the
    // client follows NOT_LEADER to the leader, and that connection dies).
    let mut order: Vec<NodeId> = (1..=3).filter(|&n| n != leader).collect();
    if leader_first {
        order.insert(0, leader);
    } else {
        order.push(leader);
    }
    let hosts: Vec<&str> = order.iter().map(|&n| cluster.node(n).addr()).collect();
    let client = connect(&format!("sluice://guest:guest@{}", hosts.join(","))).await;
    let mut consumer = within(
        "consume",
        client.consume("jobs", ConsumeOptions::new().prefetch(10)),
    )
    .await
    .unwrap();
    publish_range(&client, "jobs", 0..BEFORE).await;
    let mut seen = BTreeSet::new();
    receive_all(&mut consumer, &mut seen, BEFORE).await;

    cluster.kill9(leader);
    // Publishing goes on (after reconnecting, if the client's node was the leader).
    publish_range(&client, "jobs", BEFORE..BEFORE + AFTER).await;
    // The same stream: every confirmed message arrives (some perhaps twice: at least once).
    receive_all(&mut consumer, &mut seen, BEFORE + AFTER).await;
    assert_eq!(seen, (0..BEFORE + AFTER).map(body).collect());
    drop(consumer);
    within("close", client.close()).await.unwrap();
    cluster.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_the_leader_the_client_is_connected_to_is_killed_the_consumer_goes_on_with_the_new_one(
) {
    the_consumer_survives_a_kill_of_the_leader(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_the_leader_the_client_followed_to_is_killed_the_consumer_goes_on_with_the_new_one() {
    the_consumer_survives_a_kill_of_the_leader(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_follows_a_leadership_transfer_leader_moved() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = ClusterProcess::start(dir.path(), 3, &[]).await;
    let client = connect(&cluster.url()).await;
    within(
        "declare",
        client.declare_queue("moving", replicated(QueueArguments::default())),
    )
    .await
    .unwrap();
    let leader = leader_of(&cluster, "moving").await;
    let mut consumer = within("consume", client.consume("moving", ConsumeOptions::new()))
        .await
        .unwrap();
    publish_range(&client, "moving", 0..10).await;
    let mut seen = BTreeSet::new();
    receive_all(&mut consumer, &mut seen, 10).await;

    let to = (1..=3).find(|&n| n != leader).unwrap();
    within("transfer", client.transfer_leadership(Some("moving"), to))
        .await
        .unwrap();
    assert_eq!(leader_of(&cluster, "moving").await, to);
    publish_range(&client, "moving", 10..20).await;
    receive_all(&mut consumer, &mut seen, 20).await;
    assert_eq!(seen, (0..20).map(body).collect());
    drop(consumer);
    within("close", client.close()).await.unwrap();
    cluster.stop();
}

/// A transfer while a publisher keeps the leader appending: the leader stops proposing for
/// the hand-over (its appends would renew the followers' leader leases, and no follower
/// would grant the target its vote), the target takes over, and every confirmed message is
/// delivered by it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leadership_transfer_under_confirmed_load_moves_the_leader_and_loses_nothing() {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Arc;

    let dir = tempfile::tempdir().unwrap();
    let cluster = ClusterProcess::start(dir.path(), 3, &[]).await;
    let client = connect(&cluster.url()).await;
    within(
        "declare",
        client.declare_queue("busy", replicated(QueueArguments::default())),
    )
    .await
    .unwrap();
    let leader = leader_of(&cluster, "busy").await;

    let stop = Arc::new(AtomicBool::new(false));
    let confirmed = Arc::new(AtomicUsize::new(0));
    let publisher = {
        let client = connect(&cluster.url()).await;
        let (stop, confirmed) = (Arc::clone(&stop), Arc::clone(&confirmed));
        tokio::spawn(async move {
            let mut ids = BTreeSet::new();
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let id = body(i);
                i += 1;
                if client
                    .publish("", "busy", id.clone(), &PublishOptions::new())
                    .await
                    .is_ok()
                {
                    ids.insert(id);
                    confirmed.store(ids.len(), Ordering::Relaxed);
                }
            }
            ids
        })
    };
    let progress = |at_least: usize| {
        let confirmed = Arc::clone(&confirmed);
        within("confirms", async move {
            while confirmed.load(Ordering::Relaxed) < at_least {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    progress(50).await;

    let to = (1..=3).find(|&n| n != leader).unwrap();
    within("transfer", client.transfer_leadership(Some("busy"), to))
        .await
        .unwrap_or_else(|e| panic!("transfer from {leader} to {to} under load: {e}"));
    assert_eq!(leader_of(&cluster, "busy").await, to);
    let before = confirmed.load(Ordering::Relaxed);
    progress(before + 50).await;
    stop.store(true, Ordering::Relaxed);
    let ids = within("the publisher stops", publisher).await.unwrap();

    let mut consumer = within(
        "consume",
        client.consume("busy", ConsumeOptions::new().prefetch(100)),
    )
    .await
    .unwrap();
    let mut seen = BTreeSet::new();
    while !ids.is_subset(&seen) {
        let m = within("a delivery", consumer.next())
            .await
            .expect("the stream goes on")
            .expect("no error on the stream");
        seen.insert(String::from_utf8(m.body.to_vec()).unwrap());
        m.ack_confirmed().await.unwrap();
    }
    drop(consumer);
    within("close", client.close()).await.unwrap();
    cluster.stop();
}
