//! The cluster harness against real nodes: a cluster forms (directly and through proxies),
//! nodes are killed, restarted on their former addresses or from an empty disk, and
//! a node cut off by its proxies stops being ready. What replicated queues do in a cluster is
//! tested elsewhere; this is the ground those tests stand on.

use std::time::Duration;

use serde_json::Value;
use sluice_tests::broker::WAIT;
use sluice_tests::cluster::{ClusterProcess, NodeId};

async fn cluster_status(cluster: &ClusterProcess, id: NodeId) -> Value {
    let response = cluster.node(id).http().get("/api/cluster").await;
    assert_eq!(response.status, 200, "{}", response.body);
    serde_json::from_str(&response.body).expect("JSON")
}

fn member_ids(status: &Value) -> Vec<u64> {
    let mut ids: Vec<u64> = status["members"]
        .as_array()
        .expect("members")
        .iter()
        .map(|m| m["id"].as_u64().expect("a member id"))
        .collect();
    ids.sort_unstable();
    ids
}

/// Waits (bounded) until node `id`'s `/readyz` answers `wanted`.
async fn wait_readyz(cluster: &ClusterProcess, id: NodeId, wanted: u16) {
    let http = cluster.node(id).http();
    let wait = async {
        while http.get("/readyz").await.status != wanted {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    tokio::time::timeout(WAIT, wait)
        .await
        .unwrap_or_else(|_| panic!("node {id}: /readyz never answered {wanted}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_form_one_cluster_and_a_killed_node_comes_back_on_its_former_addresses() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = ClusterProcess::start(dir.path(), 3, &[]).await;
    for id in 1..=3 {
        assert_eq!(
            member_ids(&cluster_status(&cluster, id).await),
            vec![1, 2, 3]
        );
    }
    let client_addr = cluster.node(2).addr().to_owned();
    let cluster_addr = cluster.node(2).cluster_addr().to_owned();
    assert!(cluster_addr.starts_with("127.0.0.12:"), "{cluster_addr}");

    cluster.kill9(2);
    assert_eq!(cluster.running(), vec![1, 3]);
    cluster.restart(2).await;
    assert_eq!(cluster.node(2).addr(), client_addr);
    assert_eq!(cluster.node(2).cluster_addr(), cluster_addr);
    assert_eq!(
        member_ids(&cluster_status(&cluster, 2).await),
        vec![1, 2, 3]
    );

    // Wiped, it starts again on its addresses; the cluster refuses it under its old id.
    let former = cluster.node(3).addr().to_owned();
    cluster.wipe_and_start_again(3).await;
    assert_eq!(cluster.node(3).addr(), former);
    cluster
        .await_log(3, "this node's data directory is new")
        .await;
    cluster.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_forms_through_proxies_and_a_node_they_isolate_stops_being_ready() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = ClusterProcess::start_proxied(dir.path(), 3, &[]).await;
    for id in 1..=3 {
        assert!(
            cluster.proxy(id).accepted() > 0,
            "nothing went through node {id}'s proxy"
        );
        assert_eq!(
            cluster.node(id).advertised_addr(),
            cluster.proxy(id).addr().to_string()
        );
    }
    cluster.isolate(3);
    wait_readyz(&cluster, 3, 503).await;
    // The majority keeps (or elects) a leader.
    wait_readyz(&cluster, 1, 200).await;
    wait_readyz(&cluster, 2, 200).await;
    cluster.heal();
    wait_readyz(&cluster, 3, 200).await;
    cluster.stop();
}
