//! Replicated queues (`replicas = 3`) on a 3-node cluster of real `sluice serve` processes:
//! declared on one node, published to through another (forwarded to the queue's leader),
//! consumed on the leader (followers answer `NOT_LEADER` naming it); a `kill -9` of the leader
//! under confirmed publishing loses no confirmed message; arguments the replicated mode does
//! not support are refused, never ignored.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use sluice_client::{
    Client, ConsumeOptions, Consumer, DeleteQueueOptions, Error, ErrorCode, PublishOptions,
    QueueArguments, QueueOptions,
};
use sluice_tests::broker::{within, BrokerProcess};
use sluice_tests::cluster::{replicated, ClusterProcess, NodeId};
use sluice_tests::history::{AckOutcome, History};

/// Bounded wait for a leader to be elected and known (election timeout 1–2 s, on a busy
/// 2-core machine).
const ELECTION: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(100);

/// A client that neither reconnects nor follows `NOT_LEADER`: these tests watch what each
/// node answers (tests/tests/cluster_clients.rs has the client that follows).
async fn connect(url: &str) -> Client {
    let client = Client::builder()
        .reconnect_timeout(std::time::Duration::ZERO)
        .connect(url);
    within("connect", client).await.unwrap()
}

/// The node whose client address is `addr`.
fn node_at(cluster: &ClusterProcess, addr: &str) -> Option<NodeId> {
    (1..=cluster.len() as NodeId).find(|&id| cluster.node(id).addr() == addr)
}

/// Starts a consumer of `queue` on its leader, found by asking `first` and following
/// `NOT_LEADER` (bounded: an election may be under way). Returns the leader, its client and
/// the consumer.
async fn consume_on_leader(
    cluster: &mut ClusterProcess,
    first: NodeId,
    queue: &str,
    not: Option<NodeId>,
) -> (NodeId, Client, Consumer) {
    let deadline = Instant::now() + ELECTION;
    let mut ask = first;
    loop {
        assert!(
            Instant::now() < deadline,
            "no leader of {queue} found within {ELECTION:?}"
        );
        if Some(ask) == not || !cluster.running().contains(&ask) {
            ask = *cluster.running().iter().find(|&&n| Some(n) != not).unwrap();
        }
        let client = connect(&cluster.node(ask).url()).await;
        match client
            .consume(queue, ConsumeOptions::new().prefetch(50))
            .await
        {
            Ok(consumer) => return (ask, client, consumer),
            Err(Error::Server {
                code: ErrorCode::NotLeader,
                message,
            }) => {
                match node_at(cluster, &message).filter(|&n| Some(n) != not) {
                    Some(leader) => ask = leader,
                    // No leader known yet (or the old one): ask again shortly.
                    None => tokio::time::sleep(POLL).await,
                }
            }
            // Not known there yet (the metadata group's apply is on its way): ask again.
            Err(Error::Server {
                code: ErrorCode::NotFound,
                ..
            }) => tokio::time::sleep(POLL).await,
            Err(e) => panic!("consume {queue} on node {ask}: {e}"),
        }
    }
}

/// Waits (bounded) until the node of `client` knows `queue`: a declare on another node
/// reaches it with the metadata group's next apply there.
async fn await_known(client: &Client, queue: &str) {
    let known = async {
        loop {
            match client.declare_queue(queue, QueueOptions::passive()).await {
                Ok(_) => return,
                Err(Error::Server {
                    code: ErrorCode::NotFound,
                    ..
                }) => tokio::time::sleep(POLL).await,
                Err(e) => panic!("passive declare of {queue}: {e}"),
            }
        }
    };
    within("the queue known", known).await;
}

fn body(i: u64) -> String {
    format!("m-{i}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_declared_on_one_node_takes_confirmed_publishes_through_another_and_delivers_them_on_its_leader(
) {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = ClusterProcess::start(dir.path(), 3, &[]).await;
    let c1 = connect(&cluster.node(1).url()).await;
    within(
        "declare",
        c1.declare_queue("orders", replicated(QueueArguments::default())),
    )
    .await
    .unwrap_or_else(|e| panic!("declare: {e}\n{}", cluster.node(1).log()));

    // Node 2 learns the queue from the metadata group (a moment after the declare's answer)
    // and forwards its publishes to the leader.
    let c2 = connect(&cluster.node(2).url()).await;
    await_known(&c2, "orders").await;
    for i in 0..100 {
        within(
            "publish",
            c2.publish("", "orders", body(i), &PublishOptions::new()),
        )
        .await
        .unwrap_or_else(|e| panic!("publish {i} through node 2: {e}"));
    }

    let (leader, _client, mut consumer) = consume_on_leader(&mut cluster, 2, "orders", None).await;
    let mut seen = BTreeSet::new();
    while seen.len() < 100 {
        let m = within("delivery", consumer.next()).await.unwrap().unwrap();
        seen.insert(String::from_utf8(m.body.to_vec()).unwrap());
        within("ack", m.ack_confirmed()).await.unwrap();
    }
    assert_eq!(seen, (0..100).map(body).collect());

    // The HTTP API shows the leader and the three replicas, with their lag on the leader.
    let shown = within(
        "GET /api/queues/orders",
        cluster.node(leader).http().get("/api/queues/orders"),
    )
    .await;
    assert_eq!(shown.status, 200, "{}", shown.body);
    let json: serde_json::Value = serde_json::from_str(&shown.body).unwrap();
    assert_eq!(json["leader"], leader, "{json}");
    let replicas = json["replicas"].as_array().expect("replicas");
    let nodes: BTreeSet<u64> = replicas
        .iter()
        .map(|r| r["node"].as_u64().unwrap())
        .collect();
    assert_eq!(nodes, BTreeSet::from([1, 2, 3]), "{json}");
    assert!(
        replicas.iter().all(|r| r["lag"].is_u64()),
        "the leader knows every lag: {json}"
    );

    // Every follower sends a consumer to the leader.
    let leader_addr = cluster.node(leader).addr().to_owned();
    for follower in (1..=3).filter(|&n| n != leader) {
        let c = connect(&cluster.node(follower).url()).await;
        match c.consume("orders", ConsumeOptions::new()).await {
            Err(Error::Server {
                code: ErrorCode::NotLeader,
                message,
            }) => assert_eq!(message, leader_addr, "node {follower} names the leader"),
            other => panic!(
                "node {follower} should answer NOT_LEADER, got {:?}",
                other.err()
            ),
        }
    }
    cluster.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replicated_queue_refuses_what_it_does_not_support_yet_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = ClusterProcess::start(dir.path(), 3, &[]).await;
    let c = connect(&cluster.node(1).url()).await;
    let ttl = QueueArguments {
        message_ttl_ms: Some(1000),
        ..QueueArguments::default()
    };
    match c.declare_queue("short-lived", replicated(ttl)).await {
        Err(Error::Server {
            code: ErrorCode::PreconditionFailed,
            message,
        }) => assert!(message.contains("message_ttl_ms"), "{message}"),
        other => panic!("expected PRECONDITION_FAILED, got {other:?}"),
    }
    cluster.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_kill_9_of_the_leader_every_confirmed_message_is_delivered_and_acked_ones_stay_acked(
) {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = ClusterProcess::start(dir.path(), 3, &[]).await;
    let c1 = connect(&cluster.node(1).url()).await;
    within(
        "declare",
        c1.declare_queue("jobs", replicated(QueueArguments::default())),
    )
    .await
    .unwrap_or_else(|e| panic!("declare: {e}\n{}", cluster.node(1).log()));
    let (leader, _leader_client, mut consumer) =
        consume_on_leader(&mut cluster, 1, "jobs", None).await;
    // The publisher is on a node that survives: its publishes are forwarded to the leader.
    let publisher_node = (1..=3).find(|&n| n != leader).unwrap();
    let publisher = connect(&cluster.node(publisher_node).url()).await;
    await_known(&publisher, "jobs").await;
    let history = History::new();
    let stop = Arc::new(AtomicBool::new(false));
    let publishing = {
        let (history, stop) = (history.clone(), Arc::clone(&stop));
        tokio::spawn(async move {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let id = body(i);
                history.published(id.as_str());
                let options = PublishOptions::new();
                let sent = publisher.publish("", "jobs", id.clone(), &options);
                match tokio::time::timeout(Duration::from_secs(30), sent).await {
                    Ok(Ok(_)) => history.confirmed(id.as_str()),
                    Ok(Err(e)) => history.refused(id.as_str(), e),
                    Err(_) => history.refused(id.as_str(), "no answer within 30 s"),
                }
                i += 1;
            }
            i
        })
    };

    // Consume and ack (confirmed) a first part on the leader, then kill it.
    for _ in 0..50 {
        let m = within("delivery", consumer.next()).await.unwrap().unwrap();
        let id = String::from_utf8(m.body.to_vec()).unwrap();
        history.delivered(id.as_str(), leader, m.redelivered);
        within("ack", m.ack_confirmed()).await.unwrap();
        history.acked(id.as_str(), leader, AckOutcome::Confirmed);
    }
    cluster.kill9(leader);
    history.killed(leader);
    drop(consumer);

    // A new leader takes over; publishing goes on through it, then stops.
    let (new_leader, _client, mut consumer) =
        consume_on_leader(&mut cluster, publisher_node, "jobs", Some(leader)).await;
    assert_ne!(new_leader, leader);
    let confirmed_before = history.summary().confirmed;
    let more = async {
        while history.summary().confirmed < confirmed_before + 50 {
            tokio::time::sleep(POLL).await;
        }
    };
    within("confirms through the new leader", more).await;
    stop.store(true, Ordering::Relaxed);
    within("publisher", publishing).await.unwrap();

    // Every confirmed message comes (again, for those the old leader had delivered).
    let wanted = history.summary().confirmed;
    let drained = async {
        loop {
            let unsettled = history
                .check()
                .iter()
                .filter(|v| matches!(v, sluice_tests::history::Violation::Lost { .. }))
                .count();
            if unsettled == 0 {
                return;
            }
            let m = consumer.next().await.unwrap().unwrap();
            let id = String::from_utf8(m.body.to_vec()).unwrap();
            history.delivered(id.as_str(), new_leader, m.redelivered);
            m.ack_confirmed().await.unwrap();
            history.acked(id.as_str(), new_leader, AckOutcome::Confirmed);
        }
    };
    within("every confirmed message delivered", drained).await;
    assert!(
        wanted >= 100,
        "the run confirmed too little to prove anything: {wanted}"
    );
    history.assert_clean();
    cluster.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_node_killed_and_restarted_in_turn_rebuilds_the_queue_from_its_group() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = ClusterProcess::start(dir.path(), 3, &[]).await;
    let c1 = connect(&cluster.node(1).url()).await;
    within(
        "declare",
        c1.declare_queue("ledger", replicated(QueueArguments::default())),
    )
    .await
    .unwrap_or_else(|e| panic!("declare: {e}\n{}", cluster.node(1).log()));
    for i in 0..30 {
        within(
            "publish",
            c1.publish("", "ledger", body(i), &PublishOptions::new()),
        )
        .await
        .unwrap_or_else(|e| panic!("publish {i}: {e}"));
    }
    drop(c1);
    // Each node's copy of the queue is rebuilt from its raft group at start; the queue is
    // never without a majority.
    for id in 1..=3 {
        cluster.kill9(id);
        cluster.restart(id).await;
    }
    let (_, _client, mut consumer) = consume_on_leader(&mut cluster, 1, "ledger", None).await;
    let mut seen = BTreeSet::new();
    while seen.len() < 30 {
        let m = within("delivery", consumer.next()).await.unwrap().unwrap();
        seen.insert(String::from_utf8(m.body.to_vec()).unwrap());
        within("ack", m.ack_confirmed()).await.unwrap();
    }
    assert_eq!(seen, (0..30).map(body).collect());
    cluster.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redeclare_compares_arguments_and_a_delete_on_one_node_removes_the_queue_everywhere() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = ClusterProcess::start(dir.path(), 3, &[]).await;
    let c1 = connect(&cluster.node(1).url()).await;
    let c3 = connect(&cluster.node(3).url()).await;
    within(
        "declare",
        c1.declare_queue("reports", replicated(QueueArguments::default())),
    )
    .await
    .unwrap_or_else(|e| panic!("declare: {e}\n{}", cluster.node(1).log()));
    // The same declaration on another node is the same queue; other arguments are refused.
    within(
        "redeclare",
        c3.declare_queue("reports", replicated(QueueArguments::default())),
    )
    .await
    .unwrap();
    let other = QueueArguments {
        dedup_window_ms: Some(60_000),
        ..QueueArguments::default()
    };
    match c3.declare_queue("reports", replicated(other)).await {
        Err(Error::Server {
            code: ErrorCode::PreconditionFailed,
            ..
        }) => {}
        other => panic!("expected PRECONDITION_FAILED, got {other:?}"),
    }

    within(
        "delete",
        c3.delete_queue("reports", DeleteQueueOptions::default()),
    )
    .await
    .unwrap();
    // Every node learns it from the metadata group.
    for id in 1..=3 {
        let c = connect(&cluster.node(id).url()).await;
        let gone = async {
            loop {
                match c.declare_queue("reports", QueueOptions::passive()).await {
                    Err(Error::Server {
                        code: ErrorCode::NotFound,
                        ..
                    }) => return,
                    Ok(_) => tokio::time::sleep(POLL).await,
                    Err(e) => panic!("passive declare on node {id}: {e}"),
                }
            }
        };
        within("the queue gone", gone).await;
    }
    cluster.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_node_refuses_a_replicated_queue() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(&dir.path().join("data"), &[]);
    let c = connect(&broker.url()).await;
    match c
        .declare_queue("q", replicated(QueueArguments::default()))
        .await
    {
        Err(Error::Server {
            code: ErrorCode::PreconditionFailed,
            message,
        }) => assert!(message.contains("need a cluster"), "{message}"),
        other => panic!("expected PRECONDITION_FAILED, got {other:?}"),
    }
    // A queue of one replica is a local queue, as on any single node.
    let mut one = QueueOptions::new();
    one.arguments.replicas = Some(1);
    within("declare", c.declare_queue("one", one))
        .await
        .unwrap();
}
