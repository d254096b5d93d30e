//! A replicated queue's state machine under real openraft groups: three in-process clusters
//! over TCP on 127.0.0.4x, real files, snapshots every few entries, so the leader purges its
//! log and a replica that comes back empty is rebuilt from a snapshot.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Weak};
use std::time::Duration;

use sluice_client::wire::QueueArguments;

use super::{OpMessage, QueueMachine, QueueOp, QueueSnapshot};
use crate::cluster::{
    Cluster, ClusterConfig, GroupHandle, GroupId, GroupMachine, NodeId, NodeInfo,
};
use crate::queue::{spawn_replicated, QueueCmd, QueueHandle, QueueMeta, QueueStats};
use crate::storage::{Store, StoreConfig};

const WAIT: Duration = Duration::from_secs(60);
const UID: u64 = 0x5e1f;

struct Node {
    cluster: Cluster,
    store: Store,
}

async fn start_node(id: NodeId, dir: &Path, ip: &str, join: Vec<String>) -> Node {
    let store = Store::open(dir, StoreConfig::default()).unwrap();
    let listen: SocketAddr = format!("{ip}:0").parse().unwrap();
    let mut config = ClusterConfig::new(id, listen);
    config.join = join;
    config.snapshot_every = 20;
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

async fn wait_for_members(node: &Cluster, n: usize) {
    let formed = async {
        loop {
            let st = node.status();
            if st.member
                && st.metadata_leader.is_some()
                && st.members.iter().filter(|m| m.voter).count() == n
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::time::timeout(WAIT, formed)
        .await
        .unwrap_or_else(|_| panic!("node {} saw {:?}", node.node_id(), node.status()));
}

/// The replicated queue's task on `node`, on a fresh view log, and its group hosted there.
async fn host_queue(node: &Node, initialise: bool) -> (QueueHandle, GroupHandle) {
    let meta = QueueMeta {
        name: "ledger".into(),
        uid: UID,
        durable: true,
        exclusive_owner: None,
        auto_delete: false,
        arguments: QueueArguments {
            replicas: Some(3),
            ..QueueArguments::default()
        },
        stats: QueueStats::default(),
    };
    let log = node.store.recreate_queue(UID).unwrap();
    let queue = spawn_replicated(Arc::new(meta), log, Weak::new());
    let machine: Arc<dyn GroupMachine> = Arc::new(QueueMachine::new(queue.clone()));
    let group = node
        .cluster
        .host_group(GroupId(UID), vec![1, 2, 3], machine, initialise)
        .await
        .unwrap();
    (queue, group)
}

async fn state(queue: &QueueHandle) -> QueueSnapshot {
    let data = tokio::time::timeout(WAIT, QueueMachine::new(queue.clone()).snapshot())
        .await
        .unwrap()
        .unwrap();
    QueueSnapshot::decode(&data).unwrap()
}

fn publish(i: u64) -> Vec<u8> {
    QueueOp::Publish {
        ts_ms: 1_000 + i,
        dedup: false,
        messages: vec![OpMessage {
            meta: Vec::new(),
            body: format!("m-{i}").into_bytes(),
        }],
    }
    .encode()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_back_with_nothing_is_rebuilt_from_a_snapshot_to_the_same_queue() {
    let dirs = [(); 3].map(|()| tempfile::tempdir().unwrap());
    let first = start_node(1, dirs[0].path(), "127.0.0.41", vec![]).await;
    wait_for_members(&first.cluster, 1).await;
    let seed = first.cluster.listen_addr().to_string();
    let second = start_node(2, dirs[1].path(), "127.0.0.42", vec![seed.clone()]).await;
    let third = start_node(3, dirs[2].path(), "127.0.0.43", vec![seed]).await;
    let nodes = [first, second, third];
    for n in &nodes {
        wait_for_members(&n.cluster, 3).await;
    }
    let mut hosted = Vec::new();
    for (i, node) in nodes.iter().enumerate().rev() {
        hosted.push(host_queue(node, i == 0).await);
    }
    hosted.reverse();

    // Node 3 loses its replica (stopped, files gone) while the others go on.
    let (queue3, _) = hosted.pop().unwrap();
    nodes[2].cluster.drop_group(GroupId(UID)).await.unwrap();
    queue3.send(QueueCmd::Shutdown {
        done: tokio::sync::oneshot::channel().0,
    });
    let proposer = hosted[1].1.clone();
    for i in 0..100 {
        tokio::time::timeout(WAIT, proposer.propose(publish(i)))
            .await
            .unwrap()
            .unwrap();
    }
    // Every even message acked: the snapshots hold the odd ones only.
    let acks = (1..=100).filter(|s| s % 2 == 1).collect();
    tokio::time::timeout(WAIT, proposer.propose(QueueOp::Settle { acks }.encode()))
        .await
        .unwrap()
        .unwrap();
    let expected = state(&hosted[0].0).await;
    assert_eq!(expected.messages.len(), 50);
    assert_eq!(expected.next_seq, 101);
    // A follower applies once it hears of the commit (after the leader answered).
    let follower = async {
        while state(&hosted[1].0).await != expected {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::time::timeout(WAIT, follower)
        .await
        .expect("the follower applied the same ops");
    // openraft builds its snapshots in the background: wait until the leader has one.
    let snapshotted = async {
        while hosted[0].1.status().snapshot_index.is_none() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    if tokio::time::timeout(WAIT, snapshotted).await.is_err() {
        panic!("no snapshot was taken: {:?}", hosted[0].1.status());
    }

    // Back with nothing: the leader's log no longer starts at 1, so a snapshot rebuilds it.
    let (queue3, group3) = host_queue(&nodes[2], false).await;
    let rebuilt = async {
        loop {
            if state(&queue3).await == expected {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::time::timeout(WAIT, rebuilt)
        .await
        .expect("node 3 rebuilt in time");
    let status = group3.status();
    assert!(
        status.snapshot_index.is_some(),
        "node 3 was rebuilt from a snapshot: {status:?}"
    );
    // And it applies what comes next like the others.
    tokio::time::timeout(WAIT, proposer.propose(publish(100)))
        .await
        .unwrap()
        .unwrap();
    let next = state(&hosted[0].0).await;
    assert_eq!(next.messages.last().unwrap().seq, 101);
    let caught_up = async {
        while state(&queue3).await != next {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::time::timeout(WAIT, caught_up).await.unwrap();
    for n in nodes {
        n.cluster.shutdown().await;
    }
}
