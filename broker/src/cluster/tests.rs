//! Three in-process clusters over real TCP (distinct 127.0.0.x addresses) and real files.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::BoxFuture;
use tokio::sync::watch;

use super::*;
use crate::storage::{Store, StoreConfig};

const FORM: Duration = Duration::from_secs(60);
const SETTLE: Duration = Duration::from_secs(30);

/// A group machine that records every value it applies, in order.
#[derive(Debug)]
struct Counter {
    values: Mutex<Vec<u64>>,
    applied: watch::Sender<usize>,
    installs: Mutex<usize>,
    /// A value this replica cannot store (its disk, say): applying it fails.
    fails_on: Mutex<Option<u64>>,
}

impl Counter {
    fn new() -> Arc<Counter> {
        Arc::new(Counter {
            values: Mutex::new(Vec::new()),
            applied: watch::channel(0).0,
            installs: Mutex::new(0),
            fails_on: Mutex::new(None),
        })
    }

    fn values(&self) -> Vec<u64> {
        self.values.lock().unwrap().clone()
    }

    async fn wait_for_count(&self, n: usize) {
        let mut rx = self.applied.subscribe();
        tokio::time::timeout(SETTLE, rx.wait_for(|c| *c >= n))
            .await
            .unwrap_or_else(|_| panic!("{} of {n} values applied in time", self.values().len()))
            .unwrap();
    }
}

impl GroupMachine for Counter {
    fn apply(
        &self,
        batch: Vec<Committed>,
    ) -> BoxFuture<'static, Result<Vec<Vec<u8>>, MachineError>> {
        let mut values = self.values.lock().unwrap();
        let mut answers = Vec::new();
        for c in batch {
            let value = decode::<u64>("counter command", &c.command).unwrap();
            if Some(value) == *self.fails_on.lock().unwrap() {
                return Box::pin(async move {
                    Err(MachineError::Storage {
                        machine: "counter".into(),
                        cause: format!("cannot store {value}"),
                    })
                });
            }
            values.push(value);
            answers.push(encode(&(values.len() as u64)));
        }
        self.applied.send_replace(values.len());
        Box::pin(async move { Ok(answers) })
    }

    fn snapshot(&self) -> BoxFuture<'static, Result<Vec<u8>, MachineError>> {
        let bytes = encode(&*self.values.lock().unwrap());
        Box::pin(async move { Ok(bytes) })
    }

    fn install(&self, data: Vec<u8>) -> BoxFuture<'static, Result<(), MachineError>> {
        let values: Vec<u64> = decode("counter snapshot", &data).unwrap();
        let n = values.len();
        *self.values.lock().unwrap() = values;
        *self.installs.lock().unwrap() += 1;
        self.applied.send_replace(n);
        Box::pin(async { Ok(()) })
    }
}

/// One node: its store (the sync thread), its cluster.
struct Node {
    cluster: Cluster,
    store: Store,
}

async fn start_node(
    id: NodeId,
    dir: &Path,
    listen: SocketAddr,
    join: Vec<String>,
    snapshot_every: u64,
) -> Node {
    let store = Store::open(dir, StoreConfig::default()).unwrap();
    let mut config = ClusterConfig::new(id, listen);
    config.join = join;
    config.snapshot_every = snapshot_every;
    let local = NodeInfo {
        cluster_addr: String::new(),
        client_addr: format!("client-of-{id}:5680"),
        http_addr: None,
    };
    let cluster = Cluster::start(config, dir, local, store.durability().clone())
        .await
        .unwrap();
    Node { cluster, store }
}

impl Node {
    async fn stop(self) {
        self.cluster.shutdown().await;
        drop(self.store);
    }
}

/// Waits until `node` sees `n` voting members and a metadata leader.
async fn wait_for_members(node: &Cluster, n: usize) {
    let waited = tokio::time::timeout(FORM, async {
        let mut leadership = node.meta_leadership();
        loop {
            let st = node.status();
            if st.member
                && st.metadata_leader.is_some()
                && st.members.iter().filter(|m| m.voter).count() == n
            {
                return;
            }
            // Membership changes arrive with metadata entries, which move the leadership
            // watch's term rarely; poll the status on a short tick as well.
            let _ = tokio::time::timeout(Duration::from_millis(100), leadership.changed()).await;
        }
    })
    .await;
    assert!(
        waited.is_ok(),
        "node {} saw {:?}",
        node.node_id(),
        node.status()
    );
}

async fn wait_for_leader(handle: &GroupHandle, not: Option<NodeId>) -> NodeId {
    let mut rx = handle.leadership();
    let l = tokio::time::timeout(
        SETTLE,
        rx.wait_for(|l| l.leader.is_some() && l.leader != not),
    )
    .await
    .expect("a leader in time")
    .unwrap()
    .leader;
    l.unwrap()
}

fn addr(ip: &str) -> SocketAddr {
    format!("{ip}:0").parse().unwrap()
}

/// Forms a three-node cluster on `ips`: the first bootstraps, the others join it.
async fn form(dirs: &[tempfile::TempDir; 3], ips: [&str; 3], snapshot_every: u64) -> Vec<Node> {
    let first = start_node(1, dirs[0].path(), addr(ips[0]), vec![], snapshot_every).await;
    wait_for_members(&first.cluster, 1).await;
    let seed = first.cluster.listen_addr().to_string();
    let second = start_node(
        2,
        dirs[1].path(),
        addr(ips[1]),
        vec![seed.clone()],
        snapshot_every,
    )
    .await;
    let third = start_node(3, dirs[2].path(), addr(ips[2]), vec![seed], snapshot_every).await;
    let nodes = vec![first, second, third];
    for n in &nodes {
        wait_for_members(&n.cluster, 3).await;
    }
    nodes
}

async fn host_counter(clusters: &[Cluster], id: GroupId) -> Vec<(GroupHandle, Arc<Counter>)> {
    let mut hosted = Vec::new();
    // Followers first, then the initialiser: like replicas reacting to a declared queue.
    for (i, c) in clusters.iter().enumerate().rev() {
        let counter = Counter::new();
        let handle = c
            .host_group(id, vec![1, 2, 3], counter.clone(), i == 0)
            .await
            .unwrap();
        hosted.push((handle, counter));
    }
    hosted.reverse();
    hosted
}

fn temp_dirs() -> [tempfile::TempDir; 3] {
    [
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proposals_from_the_leader_and_a_follower_apply_in_the_same_order_on_every_node() {
    let dirs = temp_dirs();
    let nodes = form(&dirs, ["127.0.0.21", "127.0.0.22", "127.0.0.23"], 1000).await;
    // Every node agrees on the members and their client addresses.
    for n in &nodes {
        for id in 1..=3 {
            assert_eq!(
                n.cluster.node(id).unwrap().client_addr,
                format!("client-of-{id}:5680")
            );
        }
    }
    let clusters: Vec<Cluster> = nodes.iter().map(|n| n.cluster.clone()).collect();
    let hosted = host_counter(&clusters, GroupId(7)).await;
    let leader = wait_for_leader(&hosted[0].0, None).await;
    assert_eq!(
        leader, 1,
        "the initialising replica becomes the first leader"
    );
    for v in 1..=5u64 {
        hosted[0].0.propose(encode(&v)).await.unwrap();
    }
    // A follower's proposals are forwarded to the leader.
    for v in 6..=10u64 {
        let answer = hosted[2].0.propose(encode(&v)).await.unwrap();
        assert_eq!(
            decode::<u64>("answer", &answer).unwrap(),
            v,
            "the leader's machine answers"
        );
    }
    // A node that does not host the group proposes through a client.
    let answer = nodes[1]
        .cluster
        .group(GroupId(7))
        .propose(encode(&11u64))
        .await
        .unwrap();
    assert_eq!(decode::<u64>("answer", &answer).unwrap(), 11);
    let expected: Vec<u64> = (1..=11).collect();
    for (_, counter) in &hosted {
        counter.wait_for_count(11).await;
        assert_eq!(counter.values(), expected);
    }
    // The metadata catalog: declared through a follower, seen everywhere, idempotent.
    let record = QueueRecord {
        vhost: "/".into(),
        name: "orders".into(),
        uid: 7,
        durable: true,
        arguments: vec![1, 2],
        replicas: vec![1, 2, 3],
    };
    let declared = nodes[2]
        .cluster
        .propose_meta(MetaCommand::DeclareQueue(record.clone()))
        .await
        .unwrap();
    assert_eq!(declared, MetaResponse::Queue(record.clone()));
    let again = nodes[1]
        .cluster
        .propose_meta(MetaCommand::DeclareQueue(QueueRecord {
            uid: 99,
            ..record.clone()
        }))
        .await
        .unwrap();
    assert_eq!(
        again,
        MetaResponse::Queue(record.clone()),
        "the first record wins"
    );
    let mut events = nodes[0].cluster.take_meta_events().unwrap();
    let seen = tokio::time::timeout(SETTLE, async {
        loop {
            if let Some(MetaEvent::QueueDeclared(r)) = events.recv().await {
                return r;
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(seen, record);
    for n in &nodes {
        tokio::time::timeout(SETTLE, async {
            while n.cluster.catalog() != vec![record.clone()] {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .expect("the catalog reaches every node");
    }
    for n in nodes {
        n.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_leader_takes_over_and_a_restarted_node_recovers_from_snapshot_and_log() {
    let dirs = temp_dirs();
    let ips = ["127.0.0.31", "127.0.0.32", "127.0.0.33"];
    // Snapshots every 4 entries, so a restart finds one and a log after it.
    let mut nodes: Vec<Option<Node>> = form(&dirs, ips, 4).await.into_iter().map(Some).collect();
    let clusters: Vec<Cluster> = nodes.iter().flatten().map(|n| n.cluster.clone()).collect();
    let hosted = host_counter(&clusters, GroupId(9)).await;
    let leader = wait_for_leader(&hosted[0].0, None).await;
    for v in 1..=10u64 {
        hosted[1].0.propose(encode(&v)).await.unwrap();
    }
    for (_, c) in &hosted {
        c.wait_for_count(10).await;
    }

    let down = (leader - 1) as usize;
    let old = nodes[down].take().unwrap();
    let old_addr = old.cluster.listen_addr();
    old.stop().await;
    let survivor = (down + 1) % 3;
    let other = (down + 2) % 3;
    let new_leader = wait_for_leader(&hosted[survivor].0, Some(leader)).await;
    assert_ne!(new_leader, leader);
    for v in 11..=20u64 {
        hosted[survivor].0.propose(encode(&v)).await.unwrap();
    }
    hosted[survivor].1.wait_for_count(20).await;
    hosted[other].1.wait_for_count(20).await;

    // The stopped node comes back on its address with an empty machine: the snapshot and
    // the log after it rebuild the state, and the leader sends what it missed.
    let snapshot = dirs[down]
        .path()
        .join("cluster/groups/0000000000000009/snapshot");
    assert!(snapshot.exists(), "a snapshot was taken before the stop");
    let restarted = start_node(leader, dirs[down].path(), old_addr, vec![], 4).await;
    let counter = Counter::new();
    let handle = restarted
        .cluster
        .host_group(GroupId(9), vec![1, 2, 3], counter.clone(), false)
        .await
        .unwrap();
    counter.wait_for_count(20).await;
    assert_eq!(counter.values(), (1..=20).collect::<Vec<u64>>());
    assert!(
        *counter.installs.lock().unwrap() >= 1,
        "restored from a snapshot"
    );
    wait_for_members(&restarted.cluster, 3).await;
    restarted
        .cluster
        .transfer_leadership(GroupId::META, leader)
        .await
        .unwrap();
    handle.propose(encode(&21u64)).await.unwrap();
    counter.wait_for_count(21).await;
    hosted[survivor].1.wait_for_count(21).await;
    assert_eq!(hosted[survivor].1.values(), counter.values());

    restarted.stop().await;
    for n in nodes.into_iter().flatten() {
        n.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_whose_machine_fails_stops_the_group_there_and_the_others_go_on() {
    let dirs = temp_dirs();
    let nodes = form(&dirs, ["127.0.0.81", "127.0.0.82", "127.0.0.83"], 1000).await;
    let clusters: Vec<Cluster> = nodes.iter().map(|n| n.cluster.clone()).collect();
    // The group's replicas, as the catalog records them (proposals from a node whose group
    // stopped go to them).
    let record = QueueRecord {
        vhost: "/".into(),
        name: "counted".into(),
        uid: 11,
        durable: true,
        arguments: vec![],
        replicas: vec![1, 2, 3],
    };
    clusters[0]
        .propose_meta(MetaCommand::DeclareQueue(record.clone()))
        .await
        .unwrap();
    tokio::time::timeout(SETTLE, async {
        while clusters[0].catalog() != vec![record.clone()] {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the catalog reaches node 1");
    let hosted = host_counter(&clusters, GroupId(11)).await;
    assert_eq!(wait_for_leader(&hosted[0].0, None).await, 1);
    hosted[0].0.propose(encode(&1u64)).await.unwrap();
    for (_, counter) in &hosted {
        counter.wait_for_count(1).await;
    }

    // The leader cannot store the next value: its group stops there (its answer is lost).
    let mut leadership = hosted[0].0.leadership();
    *hosted[0].1.fails_on.lock().unwrap() = Some(2);
    let _ = hosted[1].0.propose(encode(&2u64)).await;
    tokio::time::timeout(SETTLE, async {
        while leadership.changed().await.is_ok() {}
    })
    .await
    .expect("the failed group's leadership watch closes");
    let last = *leadership.borrow();
    assert_eq!(
        (last.leader, last.is_self),
        (None, false),
        "no leader is announced where the group stopped"
    );
    assert!(!hosted[0].0.group.is_running());
    assert_eq!(
        hosted[0].1.values(),
        vec![1],
        "nothing applied past the failure"
    );

    // The others elect a leader and go on, with the value the failed replica could not
    // store; a proposal on the failed node goes to them.
    wait_for_leader(&hosted[1].0, Some(1)).await;
    hosted[0].0.propose(encode(&3u64)).await.unwrap();
    for (_, counter) in &hosted[1..] {
        counter.wait_for_count(3).await;
        assert_eq!(counter.values(), vec![1, 2, 3]);
    }
    assert_eq!(hosted[0].1.values(), vec![1]);
    for n in nodes {
        n.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leadership_moves_to_the_node_asked_for_and_proposals_go_on() {
    let dirs = temp_dirs();
    let nodes = form(&dirs, ["127.0.0.41", "127.0.0.42", "127.0.0.43"], 1000).await;
    let clusters: Vec<Cluster> = nodes.iter().map(|n| n.cluster.clone()).collect();
    let hosted = host_counter(&clusters, GroupId(5)).await;
    assert_eq!(wait_for_leader(&hosted[0].0, None).await, 1);
    hosted[0].0.propose(encode(&1u64)).await.unwrap();
    hosted[2].1.wait_for_count(1).await;
    // Asked on a follower: forwarded to the leader, which hands over to node 3.
    clusters[1]
        .transfer_leadership(GroupId(5), 3)
        .await
        .unwrap();
    for (handle, _) in &hosted {
        let mut rx = handle.leadership();
        tokio::time::timeout(SETTLE, rx.wait_for(|l| l.leader == Some(3)))
            .await
            .expect("every replica follows node 3")
            .unwrap();
    }
    hosted[1].0.propose(encode(&2u64)).await.unwrap();
    for (_, counter) in &hosted {
        counter.wait_for_count(2).await;
        assert_eq!(counter.values(), vec![1, 2]);
    }
    // The metadata group too.
    let meta_leader = clusters[0].status().metadata_leader.unwrap();
    let target = if meta_leader == 2 { 3 } else { 2 };
    clusters[0]
        .transfer_leadership(GroupId::META, target)
        .await
        .unwrap();
    for n in &nodes {
        let mut rx = n.cluster.meta_leadership();
        tokio::time::timeout(SETTLE, rx.wait_for(|l| l.leader == Some(target)))
            .await
            .expect("the metadata group follows the new leader")
            .unwrap();
    }
    for n in nodes {
        n.stop().await;
    }
}

/// Waits until `handle` (the group's leader) shows exactly `replicas` as voters, each with
/// lag 0.
async fn wait_for_replicas(handle: &GroupHandle, replicas: &[NodeId]) {
    let caught_up = tokio::time::timeout(SETTLE, async {
        loop {
            let st = handle.status();
            let voters: Vec<NodeId> = st
                .replicas
                .iter()
                .filter(|r| r.voter)
                .map(|r| r.node)
                .collect();
            if voters == replicas
                && st.replicas.len() == replicas.len()
                && st.replicas.iter().all(|r| r.lag == Some(0))
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(caught_up.is_ok(), "replicas {:?}", handle.status());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_replica_is_rebuilt_on_a_new_member_from_the_leaders_snapshot() {
    let dirs = temp_dirs();
    // Snapshots every 4 entries: the leader's log is purged long before the new member comes.
    let nodes = form(&dirs, ["127.0.0.51", "127.0.0.52", "127.0.0.53"], 4).await;
    let clusters: Vec<Cluster> = nodes.iter().map(|n| n.cluster.clone()).collect();
    let record = QueueRecord {
        vhost: "/".into(),
        name: "rebuilt".into(),
        uid: 9,
        durable: true,
        arguments: vec![],
        replicas: vec![1, 2, 3],
    };
    clusters[0]
        .propose_meta(MetaCommand::DeclareQueue(record))
        .await
        .unwrap();
    let hosted = host_counter(&clusters, GroupId(9)).await;
    wait_for_leader(&hosted[0].0, None).await;
    // Over `purge_batch_size` (64) entries behind a snapshot, so the log is purged.
    for v in 1..=150u64 {
        hosted[0].0.propose(encode(&v)).await.unwrap();
    }

    // A fourth member; then node 3 stops for good and is removed.
    let dir4 = tempfile::tempdir().unwrap();
    let seed = clusters[0].listen_addr().to_string();
    let fourth = start_node(4, dir4.path(), addr("127.0.0.54"), vec![seed], 4).await;
    wait_for_members(&fourth.cluster, 4).await;
    let mut nodes = nodes;
    nodes.pop().unwrap().stop().await;
    clusters[0].remove_node(3).await.unwrap();

    // The metadata leader re-places the queue on node 4 (appended: never its initialiser);
    // node 4 hosts the group empty, as the broker does on the event.
    let replaced = tokio::time::timeout(SETTLE, async {
        loop {
            if let Some(r) = fourth.cluster.catalog().into_iter().find(|r| r.uid == 9) {
                if r.replicas == [1, 2, 4] {
                    return r;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the queue re-placed on node 4");
    let counter = Counter::new();
    fourth
        .cluster
        .host_group(GroupId(9), replaced.replicas, counter.clone(), false)
        .await
        .unwrap();

    // Node 1 leads the group (it initialised it): it adds node 4 and drops node 3.
    let leader = wait_for_leader(&hosted[0].0, None).await;
    let on_leader = &hosted[usize::try_from(leader).unwrap() - 1].0;
    wait_for_replicas(on_leader, &[1, 2, 4]).await;
    counter.wait_for_count(150).await;
    assert_eq!(counter.values(), (1..=150).collect::<Vec<u64>>());
    assert!(
        *counter.installs.lock().unwrap() >= 1,
        "the new replica was rebuilt from a snapshot"
    );
    // Node 4 counts: with node 2 stopped too, nodes 1 and 4 still commit.
    nodes.pop().unwrap().stop().await;
    hosted[0].0.propose(encode(&151u64)).await.unwrap();
    counter.wait_for_count(151).await;
    for n in nodes {
        n.stop().await;
    }
    fourth.stop().await;
}
