//! Replacing a dead node, on real `sluice serve` processes: a replica of a replicated queue is
//! killed (`kill -9`) and its disk lost, the operator removes it (`sluice cluster
//! remove-node`), and the cluster rebuilds the replica on another member, through the queue
//! group's leader (a learner first, then a voter). The rebuilt replica holds every confirmed
//! message: with one of the original replicas killed too, the queue is consumed whole from it.
//! Also: the dead replica was the queue's leader; no member is spare (the replica is dropped,
//! and a node joining later under a new id fills the gap); a node removed while it runs.

use std::collections::BTreeSet;
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::Value;
use sluice_client::{
    Client, ConsumeOptions, Error, ErrorCode, PublishOptions, QueueArguments, QueueOptions,
};
use sluice_tests::broker::{within, WAIT};
use sluice_tests::cluster::{ClusterProcess, NodeId};

const POLL: Duration = Duration::from_millis(100);
const QUEUE: &str = "orders";
/// Confirmed messages published before the replica dies.
const MESSAGES: u64 = 200;

async fn connect(url: &str) -> Client {
    let client = Client::builder()
        .reconnect_timeout(Duration::ZERO)
        .connect(url);
    within("connect", client).await.unwrap()
}

fn body(i: u64) -> String {
    format!("m-{i}")
}

/// Node `id`'s `GET /api/queues/orders`, `None` while it does not know the queue.
async fn queue_status(cluster: &ClusterProcess, id: NodeId) -> Option<Value> {
    let response = within(
        "GET /api/queues/orders",
        cluster.node(id).http().get(&format!("/api/queues/{QUEUE}")),
    )
    .await;
    if response.status == 404 {
        return None;
    }
    assert_eq!(response.status, 200, "node {id}: {}", response.body);
    Some(serde_json::from_str(&response.body).expect("JSON"))
}

/// The replicas a queue resource lists, with their lag (`None`: unknown on that node).
fn replicas(queue: &Value) -> Vec<(NodeId, Option<u64>)> {
    queue["replicas"]
        .as_array()
        .expect("a replicated queue lists its replicas")
        .iter()
        .map(|r| (r["node"].as_u64().expect("node id"), r["lag"].as_u64()))
        .collect()
}

/// Node `id`'s `GET /api/cluster`.
async fn cluster_status(cluster: &ClusterProcess, id: NodeId) -> Value {
    let response = within(
        "GET /api/cluster",
        cluster.node(id).http().get("/api/cluster"),
    )
    .await;
    assert_eq!(response.status, 200, "node {id}: {}", response.body);
    serde_json::from_str(&response.body).expect("JSON")
}

/// Panics with every running node's log and view of the queue.
async fn fail(cluster: &mut ClusterProcess, why: String) -> ! {
    let mut seen = Vec::new();
    for id in cluster.running() {
        seen.push(format!(
            "node {id}: {:?}\n=== log of node {id}\n{}",
            queue_status(cluster, id).await,
            cluster.node(id).log()
        ));
    }
    panic!("{why}\n{}", seen.join("\n"))
}

/// Waits (bounded) until one of `nodes` leads the queue and shows exactly `nodes` as its
/// replicas, each with lag 0; returns the leader.
async fn await_replicas_caught_up(
    cluster: &mut ClusterProcess,
    nodes: &BTreeSet<NodeId>,
) -> NodeId {
    let caught_up = async {
        loop {
            for &id in nodes {
                let Some(queue) = queue_status(cluster, id).await else {
                    continue;
                };
                if queue["leader"].as_u64() != Some(id) {
                    continue;
                }
                let shown = replicas(&queue);
                let listed: BTreeSet<NodeId> = shown.iter().map(|(n, _)| *n).collect();
                if &listed == nodes && shown.iter().all(|(_, lag)| *lag == Some(0)) {
                    return id;
                }
            }
            tokio::time::sleep(POLL).await;
        }
    };
    match tokio::time::timeout(WAIT, caught_up).await {
        Ok(leader) => leader,
        Err(_) => {
            fail(
                cluster,
                format!("the queue's replicas did not become {nodes:?} with lag 0 within {WAIT:?}"),
            )
            .await
        }
    }
}

/// Waits (bounded) until node `id`, a replica, knows a leader of the queue other than `not`
/// (a node just killed); returns it.
async fn await_leader_known_by(cluster: &mut ClusterProcess, id: NodeId, not: NodeId) -> NodeId {
    let known = async {
        loop {
            let leader = queue_status(cluster, id)
                .await
                .and_then(|q| q["leader"].as_u64());
            if let Some(leader) = leader.filter(|&l| l != not) {
                return leader;
            }
            tokio::time::sleep(POLL).await;
        }
    };
    match tokio::time::timeout(WAIT, known).await {
        Ok(leader) => leader,
        Err(_) => fail(cluster, format!("node {id} knew no leader within {WAIT:?}")).await,
    }
}

/// Declares the queue (3 replicas) through node 1 and publishes [`MESSAGES`] confirmed
/// messages; returns its replicas once they all caught up.
async fn declare_and_publish(cluster: &mut ClusterProcess) -> BTreeSet<NodeId> {
    let c1 = connect(&cluster.node(1).url()).await;
    let mut options = QueueOptions::new();
    options.arguments = QueueArguments {
        replicas: Some(3),
        ..QueueArguments::default()
    };
    within("declare", c1.declare_queue(QUEUE, options))
        .await
        .unwrap_or_else(|e| panic!("declare: {e}"));
    for i in 0..MESSAGES {
        within(
            "publish",
            c1.publish("", QUEUE, body(i), &PublishOptions::new()),
        )
        .await
        .unwrap_or_else(|e| panic!("publish {i}: {e}"));
    }
    let placed: BTreeSet<NodeId> =
        replicas(&queue_status(cluster, 1).await.expect("declared on node 1"))
            .into_iter()
            .map(|(n, _)| n)
            .collect();
    assert_eq!(placed.len(), 3, "{placed:?}");
    await_replicas_caught_up(cluster, &placed).await;
    placed
}

/// Which replica of the queue dies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Victim {
    /// One leading neither the queue nor the metadata group: no election slows the test.
    Follower,
    /// The queue's leader: its group elects another first, which then does the repair.
    QueueLeader,
}

/// Kills (`kill -9`) a replica of the queue, deletes its data directory (a lost disk), and
/// removes it from the cluster with `sluice cluster remove-node`, asked of another replica.
/// The victim never leads the metadata group (which would have to elect a leader before it
/// could answer the removal). Returns it.
/// Four nodes, the queue declared with three replicas and published to: which nodes hold
/// it, and the one that does not.
struct SpareNode {
    cluster: ClusterProcess,
    placed: BTreeSet<NodeId>,
    spare: NodeId,
}

async fn a_spare_node_and_a_queue_on_the_others(dir: &std::path::Path) -> SpareNode {
    let mut cluster = ClusterProcess::start(dir, 3, &[]).await;
    assert_eq!(cluster.add_node().await, 4);
    let placed = declare_and_publish(&mut cluster).await;
    let spare = (1..=4).find(|n| !placed.contains(n)).unwrap();
    SpareNode {
        cluster,
        placed,
        spare,
    }
}

async fn kill_and_remove_a_replica(
    cluster: &mut ClusterProcess,
    placed: &BTreeSet<NodeId>,
    which: Victim,
) -> NodeId {
    let queue_leader = await_replicas_caught_up(cluster, placed).await;
    let mut meta_leader = cluster_status(cluster, queue_leader).await["metadata_leader"]
        .as_u64()
        .expect("a metadata leader");
    let victim = match which {
        Victim::Follower => *placed
            .iter()
            .find(|&&n| n != queue_leader && n != meta_leader)
            .expect("three replicas, at most two leaders"),
        Victim::QueueLeader => queue_leader,
    };
    if meta_leader == victim {
        let other = *placed.iter().find(|&&n| n != victim).unwrap();
        let moved = cluster
            .cli(other, &["transfer-leadership", "--to", &other.to_string()])
            .await;
        assert_eq!(moved["leader"], other, "{moved}");
        meta_leader = other;
    }
    eprintln!("replicas {placed:?}, queue leader {queue_leader}, metadata leader {meta_leader}: killing node {victim}");
    cluster.kill9(victim);
    std::fs::remove_dir_all(cluster.node(victim).data_dir()).unwrap();
    let asked = *placed.iter().find(|&&n| n != victim).unwrap();
    let answer = cluster
        .cli(asked, &["remove-node", &victim.to_string()])
        .await;
    assert_eq!(answer["removed"], true, "{answer}");
    victim
}

/// The group of the queue as `sluice cluster status` on node `id` shows it: its replicas.
async fn replicas_in_cli_status(cluster: &ClusterProcess, id: NodeId) -> BTreeSet<NodeId> {
    let status = cluster.cli(id, &["status"]).await;
    let group = status["groups"]
        .as_array()
        .expect("groups")
        .iter()
        .find(|g| g["queue"] == QUEUE)
        .unwrap_or_else(|| panic!("node {id} hosts the queue's group: {status}"))
        .clone();
    group["replicas"]
        .as_array()
        .expect("replicas")
        .iter()
        .map(|r| r["node"].as_u64().unwrap())
        .collect()
}

/// Kills (`kill -9`) one of the original replicas in `live` (the queue's leader if it is
/// one), so only `rebuilt` and one original replica are left, still a majority of three;
/// then consumes the whole queue from `rebuilt`, made leader (by a transfer if need be): it
/// delivers every confirmed message from its own copy.
async fn kill_an_original_and_consume_all_from(
    cluster: &mut ClusterProcess,
    live: &BTreeSet<NodeId>,
    leader: NodeId,
    rebuilt: NodeId,
) {
    let originals: Vec<NodeId> = live.iter().copied().filter(|&n| n != rebuilt).collect();
    let second = if originals.contains(&leader) {
        leader
    } else {
        originals[0]
    };
    eprintln!("killing node {second}");
    cluster.kill9(second);
    let now = await_leader_known_by(cluster, rebuilt, second).await;
    eprintln!("node {rebuilt} sees leader {now}");
    if now != rebuilt {
        let to = rebuilt.to_string();
        let moved = cluster
            .cli(
                rebuilt,
                &["transfer-leadership", "--queue", QUEUE, "--to", &to],
            )
            .await;
        assert_eq!(moved["leader"], rebuilt, "{moved}");
    }
    let client = connect(&cluster.node(rebuilt).url()).await;
    let consume = async {
        loop {
            match client
                .consume(QUEUE, ConsumeOptions::new().prefetch(50))
                .await
            {
                Ok(consumer) => return consumer,
                // Its leadership is announced a moment after it won: ask again.
                Err(Error::Server {
                    code: ErrorCode::NotLeader,
                    ..
                }) => tokio::time::sleep(POLL).await,
                Err(e) => panic!("consume on node {rebuilt}: {e}"),
            }
        }
    };
    let mut consumer = within("a consumer on the rebuilt replica", consume).await;
    let mut seen = BTreeSet::new();
    while seen.len() < MESSAGES as usize {
        let m = within("delivery", consumer.next())
            .await
            .expect("the consumer goes on")
            .expect("a delivery");
        seen.insert(String::from_utf8(m.body.to_vec()).unwrap());
        within("ack", m.ack()).await.unwrap();
    }
    assert_eq!(seen, (0..MESSAGES).map(body).collect::<BTreeSet<_>>());
}

/// A 3-node cluster plus a spare node 4, a queue on three of them with confirmed messages;
/// `which` replica dies for good and is removed: the cluster rebuilds it on the spare node,
/// which then serves every confirmed message with only one original replica left.
async fn replace_a_dead_replica_on_a_spare_node(which: Victim) {
    let dir = tempfile::tempdir().unwrap();
    let SpareNode {
        mut cluster,
        placed,
        spare,
    } = a_spare_node_and_a_queue_on_the_others(dir.path()).await;

    let victim = kill_and_remove_a_replica(&mut cluster, &placed, which).await;
    // The cluster rebuilds the replica on the spare node: the queue's leader shows the three
    // live nodes as replicas, all caught up, and so does `sluice cluster status` there.
    let live: BTreeSet<NodeId> = placed
        .iter()
        .copied()
        .filter(|&n| n != victim)
        .chain([spare])
        .collect();
    let leader = await_replicas_caught_up(&mut cluster, &live).await;
    eprintln!("replicas {live:?} caught up, queue leader {leader}");
    assert_eq!(replicas_in_cli_status(&cluster, spare).await, live);

    kill_an_original_and_consume_all_from(&mut cluster, &live, leader, spare).await;
    cluster.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_replica_is_rebuilt_on_a_spare_node_which_then_serves_every_confirmed_message() {
    replace_a_dead_replica_on_a_spare_node(Victim::Follower).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_queue_leader_is_rebuilt_on_a_spare_node_by_the_leader_its_group_elected_next() {
    replace_a_dead_replica_on_a_spare_node(Victim::QueueLeader).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_no_spare_node_the_dead_replica_is_dropped_and_a_node_joining_later_under_a_new_id_fills_the_gap(
) {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = ClusterProcess::start(dir.path(), 3, &[]).await;
    let placed = declare_and_publish(&mut cluster).await;
    let victim = kill_and_remove_a_replica(&mut cluster, &placed, Victim::Follower).await;

    // No member is spare: the group goes on with the two survivors (a majority of them
    // commits), and the catalog remembers that a third is wanted.
    let survivors: BTreeSet<NodeId> = placed.iter().copied().filter(|&n| n != victim).collect();
    await_replicas_caught_up(&mut cluster, &survivors).await;

    // The lost machine comes back with an empty disk under a new id: a new member, which
    // takes the missing replica. The old id stays removed.
    let newcomer = cluster.add_node().await;
    assert_eq!(newcomer, 4);
    let live: BTreeSet<NodeId> = survivors.iter().copied().chain([newcomer]).collect();
    let leader = await_replicas_caught_up(&mut cluster, &live).await;
    eprintln!("replicas {live:?} caught up, queue leader {leader}");
    let members: BTreeSet<NodeId> = cluster_status(&cluster, newcomer).await["members"]
        .as_array()
        .expect("members")
        .iter()
        .map(|m| m["id"].as_u64().unwrap())
        .collect();
    assert_eq!(members, live, "node {victim} stays removed");

    kill_an_original_and_consume_all_from(&mut cluster, &live, leader, newcomer).await;
    cluster.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_removed_while_it_runs_hands_its_replica_to_a_spare_node_and_the_queue_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let SpareNode {
        mut cluster,
        placed,
        spare,
    } = a_spare_node_and_a_queue_on_the_others(dir.path()).await;
    let queue_leader = await_replicas_caught_up(&mut cluster, &placed).await;
    let meta_leader = cluster_status(&cluster, queue_leader).await["metadata_leader"]
        .as_u64()
        .expect("a metadata leader");
    let removed = *placed
        .iter()
        .find(|&&n| n != queue_leader && n != meta_leader)
        .expect("three replicas, at most two leaders");

    // Decommissioned, not dead: it still runs while the cluster moves its replica.
    let answer = cluster
        .cli(queue_leader, &["remove-node", &removed.to_string()])
        .await;
    assert_eq!(answer["removed"], true, "{answer}");
    let live: BTreeSet<NodeId> = placed
        .iter()
        .copied()
        .filter(|&n| n != removed)
        .chain([spare])
        .collect();
    let leader = await_replicas_caught_up(&mut cluster, &live).await;
    assert!(cluster.running().contains(&removed));

    // The group serves on without the removed node: a consumer on its leader gets every
    // message (the removed node, no longer a member, is not told; the operator stops it).
    let client = connect(&cluster.node(leader).url()).await;
    let mut consumer = within(
        "consume",
        client.consume(QUEUE, ConsumeOptions::new().prefetch(50)),
    )
    .await
    .unwrap_or_else(|e| panic!("consume on node {leader}: {e}"));
    let mut seen = BTreeSet::new();
    while seen.len() < MESSAGES as usize {
        let m = within("delivery", consumer.next())
            .await
            .expect("the consumer goes on")
            .expect("a delivery");
        seen.insert(String::from_utf8(m.body.to_vec()).unwrap());
        within("ack", m.ack_confirmed()).await.unwrap();
    }
    assert_eq!(seen.len(), MESSAGES as usize);
    assert_eq!(
        await_replicas_caught_up(&mut cluster, &live).await,
        leader,
        "the group keeps its leader and its new replicas"
    );
    drop(consumer);
    drop(client);
    cluster.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_queue_leader_that_is_removed_hands_its_leadership_over_and_is_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let SpareNode {
        mut cluster,
        placed,
        spare,
    } = a_spare_node_and_a_queue_on_the_others(dir.path()).await;
    let removed = await_replicas_caught_up(&mut cluster, &placed).await;
    let asked = *placed.iter().find(|&&n| n != removed).unwrap();

    // It still runs, and leads the queue: it hands the leadership over before it goes, so
    // the group's next leader can replace it (it would hear of no new placement itself).
    // Publishes go on meanwhile: a leader that kept appending would keep its followers from
    // electing another.
    let load = Load::start(&cluster.node(asked).url()).await;
    let answer = cluster
        .cli(asked, &["remove-node", &removed.to_string()])
        .await;
    assert_eq!(answer["removed"], true, "{answer}");
    let loaded = load.stop().await;
    assert!(
        !loaded.is_empty(),
        "nothing was confirmed during the removal"
    );
    let live: BTreeSet<NodeId> = placed
        .iter()
        .copied()
        .filter(|&n| n != removed)
        .chain([spare])
        .collect();
    let leader = await_replicas_caught_up(&mut cluster, &live).await;
    assert_ne!(leader, removed);
    assert!(cluster.running().contains(&removed), "removed, not killed");

    let client = connect(&cluster.node(leader).url()).await;
    let mut consumer = within(
        "consume",
        client.consume(QUEUE, ConsumeOptions::new().prefetch(50)),
    )
    .await
    .unwrap_or_else(|e| panic!("consume on node {leader}: {e}"));
    // Every message confirmed before and during the removal is there.
    let mut wanted: BTreeSet<String> = (0..MESSAGES).map(body).collect();
    wanted.extend(loaded);
    let mut seen = BTreeSet::new();
    while !wanted.is_subset(&seen) {
        let m = within("delivery", consumer.next())
            .await
            .expect("the consumer goes on")
            .expect("a delivery");
        seen.insert(String::from_utf8(m.body.to_vec()).unwrap());
        within("ack", m.ack_confirmed()).await.unwrap();
    }
    drop(consumer);
    drop(client);
    cluster.stop();
}

/// Confirmed publishes to the queue, one after the other, through a client that follows
/// the queue's leader, until stopped; an unconfirmed one (during the hand-over) is tried
/// again under a new body.
struct Load {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<BTreeSet<String>>,
}

impl Load {
    async fn start(url: &str) -> Load {
        let client = within(
            "connect",
            Client::builder().reconnect_timeout(WAIT).connect(url),
        )
        .await
        .unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopping = std::sync::Arc::clone(&stop);
        let task = tokio::spawn(async move {
            let mut confirmed = BTreeSet::new();
            let mut i = 0u64;
            while !stopping.load(std::sync::atomic::Ordering::Relaxed) {
                let id = format!("load-{i}");
                i += 1;
                if client
                    .publish("", QUEUE, id.clone(), &PublishOptions::new())
                    .await
                    .is_ok()
                {
                    confirmed.insert(id);
                }
            }
            confirmed
        });
        Load { stop, task }
    }

    /// Stops publishing; the bodies of the confirmed messages.
    async fn stop(self) -> BTreeSet<String> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        within("the load stops", self.task).await.unwrap()
    }
}
