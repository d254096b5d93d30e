//! A 3-node cluster of real `sluice serve` processes: forming (node 1 bootstraps, the others
//! join it), what `sluice cluster status` and `GET /api/cluster` show on every node, the
//! metadata leader's kill -9 and the election that follows, the killed node's return,
//! `sluice cluster transfer-leadership` and `sluice cluster remove-node`.

use std::time::Duration;

use serde_json::Value;
use sluice_tests::broker::{BrokerProcess, WAIT};
use sluice_tests::cluster::{ClusterProcess, NodeId};

const POLL: Duration = Duration::from_millis(100);

/// Node `id`'s `GET /api/cluster`.
async fn api_status(cluster: &ClusterProcess, id: NodeId) -> Value {
    let response = cluster.node(id).http().get("/api/cluster").await;
    assert_eq!(
        response.status, 200,
        "GET /api/cluster on node {id}: {}",
        response.body
    );
    serde_json::from_str(&response.body).expect("JSON")
}

fn voters(status: &Value) -> Vec<u64> {
    let mut ids: Vec<u64> = status["members"]
        .as_array()
        .expect("members")
        .iter()
        .filter(|m| m["voter"] == Value::Bool(true))
        .map(|m| m["id"].as_u64().expect("member id"))
        .collect();
    ids.sort_unstable();
    ids
}

/// Waits (bounded) until every node of `nodes` shows exactly `members` as voting members and
/// the same metadata leader, other than `not`; returns that leader.
async fn await_agreement(
    cluster: &ClusterProcess,
    nodes: &[NodeId],
    members: &[u64],
    not: Option<u64>,
) -> u64 {
    let agreed = async {
        loop {
            let mut leaders = Vec::new();
            for &id in nodes {
                let status = api_status(cluster, id).await;
                if voters(&status) == members {
                    leaders.push(status["metadata_leader"].as_u64());
                } else {
                    leaders.push(None);
                }
            }
            if let Some(Some(leader)) = leaders.first().copied() {
                if Some(leader) != not && leaders.iter().all(|l| *l == Some(leader)) {
                    return leader;
                }
            }
            tokio::time::sleep(POLL).await;
        }
    };
    match tokio::time::timeout(WAIT, agreed).await {
        Ok(leader) => leader,
        Err(_) => {
            let mut seen = Vec::new();
            for &id in nodes {
                seen.push(format!("node {id}: {}", api_status(cluster, id).await));
            }
            for &id in nodes {
                eprintln!("=== log of node {id}\n{}", cluster.node(id).log());
            }
            panic!(
                "nodes {nodes:?} did not agree on members {members:?} and a leader (not {not:?}) within {WAIT:?}:\n{}",
                seen.join("\n")
            )
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_form_elect_a_new_leader_after_a_kill_take_the_node_back_move_the_leadership_and_remove_one(
) {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = ClusterProcess::start(dir.path(), 3, &[]).await;
    let all = [1, 2, 3];
    let leader = await_agreement(&cluster, &all, &all, None).await;

    // The CLI tells the same on every node: three voters, the same leader, and the metadata
    // group hosted everywhere.
    for id in all {
        let status = cluster.cli(id, &["status"]).await;
        assert_eq!(status["node_id"], id);
        assert_eq!(status["member"], true);
        assert_eq!(voters(&status), all);
        assert_eq!(status["metadata_leader"], leader);
        assert_eq!(status["groups"][0]["id"], 0, "the metadata group: {status}");
        let api = api_status(&cluster, id).await;
        assert_eq!(api["enabled"], true);
        assert_eq!(api["ready"], true);
        let me = api["members"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["id"] == id)
            .cloned()
            .unwrap();
        assert_eq!(
            me["client_addr"],
            cluster.node(id).addr(),
            "each node advertises its client address"
        );
    }

    // kill -9 of the metadata leader: the other two elect one of themselves.
    cluster.kill9(leader);
    let survivors: Vec<NodeId> = all.iter().copied().filter(|&n| n != leader).collect();
    let new_leader = await_agreement(&cluster, &survivors, &all, Some(leader)).await;
    assert!(survivors.contains(&new_leader));

    // The killed node comes back with its data: a member again, following the new leader.
    cluster.restart(leader).await;
    let after = await_agreement(&cluster, &all, &all, None).await;
    let back = api_status(&cluster, leader).await;
    assert_eq!(back["member"], true);
    assert_eq!(back["metadata_leader"], after);

    // transfer-leadership of the metadata group, asked on a follower.
    let target = *all.iter().find(|&&n| n != after).unwrap();
    let asked = *all.iter().find(|&&n| n != after && n != target).unwrap();
    let moved = cluster
        .cli(asked, &["transfer-leadership", "--to", &target.to_string()])
        .await;
    assert_eq!(moved["leader"], target);
    let after = await_agreement(&cluster, &all, &all, None).await;
    assert_eq!(after, target, "every node follows the node asked for");

    // remove-node through any node: the others drop it from their members.
    let removed = *survivors
        .iter()
        .find(|&&n| n != after)
        .unwrap_or(&survivors[0]);
    let asked = *all.iter().find(|&&n| n != removed).unwrap();
    let answer = cluster
        .cli(asked, &["remove-node", &removed.to_string()])
        .await;
    assert_eq!(answer["removed"], true);
    let remaining: Vec<NodeId> = all.iter().copied().filter(|&n| n != removed).collect();
    await_agreement(&cluster, &remaining, &remaining, None).await;

    // The removed node, back with its old data, is refused under its old id.
    cluster.stop_node(removed);
    cluster.start_again(removed).await;
    cluster
        .await_log(
            removed,
            "was removed from the cluster and may not join again",
        )
        .await;
    await_agreement(&cluster, &remaining, &remaining, None).await;
    cluster.stop();
}

#[tokio::test]
async fn a_node_without_cluster_flags_runs_no_cluster() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(dir.path(), &["--http-listen", "127.0.0.1:0"]);
    assert_eq!(
        broker.cluster_addr(),
        None,
        "no 'cluster listening on' line"
    );
    let http = sluice_tests::http::HttpClient::new(broker.http_addr().unwrap(), "guest", "guest");
    let response = http.get("/api/cluster").await;
    assert_eq!(response.status, 200);
    assert_eq!(
        serde_json::from_str::<Value>(&response.body).unwrap(),
        serde_json::json!({ "enabled": false })
    );
    let readyz = http.get("/readyz").await;
    assert_eq!(readyz.status, 200);
    assert!(
        !dir.path().join("cluster").exists(),
        "nothing of the cluster on disk"
    );
    broker.stop();
}

#[tokio::test]
async fn a_node_that_cannot_reach_its_cluster_is_not_ready() {
    let dir = tempfile::tempdir().unwrap();
    // Nothing listens at the join address: the node keeps asking, and is no member.
    let nowhere = std::net::TcpListener::bind("127.0.0.17:0").unwrap();
    let join = nowhere.local_addr().unwrap().to_string();
    drop(nowhere);
    let broker = BrokerProcess::start(
        dir.path(),
        &[
            "--http-listen",
            "127.0.0.1:0",
            "--node-id",
            "7",
            "--cluster-listen",
            "127.0.0.18:0",
            "--join",
            &join,
        ],
    );
    let cluster_addr = broker
        .cluster_addr()
        .expect("'cluster listening on' line")
        .to_owned();
    assert!(cluster_addr.starts_with("127.0.0.18:"), "{cluster_addr}");
    let http = sluice_tests::http::HttpClient::new(broker.http_addr().unwrap(), "guest", "guest");
    let readyz = http.get("/readyz").await;
    assert_eq!(readyz.status, 503, "{}", readyz.body);
    assert!(readyz.body.contains("cluster member"), "{}", readyz.body);
    let status: Value = serde_json::from_str(&http.get("/api/cluster").await.body).unwrap();
    assert_eq!(
        (
            status["enabled"].clone(),
            status["member"].clone(),
            status["ready"].clone()
        ),
        (Value::Bool(true), Value::Bool(false), Value::Bool(false))
    );
    broker.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_disk_was_wiped_is_refused_under_its_id_and_its_machine_rejoins_under_a_new_one(
) {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = ClusterProcess::start(dir.path(), 3, &[]).await;
    let all = [1, 2, 3];
    let leader = await_agreement(&cluster, &all, &all, None).await;
    let wiped = if leader == 3 { 2 } else { 3 };
    cluster.wipe_and_start_again(wiped).await;
    // It forgot the member's votes: under that id it could vote twice in a term. It is told
    // so, answers no Raft request, and is not ready; the others go on.
    cluster
        .await_log(
            wiped,
            "is a member of the cluster and this node's data directory is new",
        )
        .await;
    let readyz = cluster.node(wiped).http().get("/readyz").await;
    assert_eq!(readyz.status, 503, "{}", readyz.body);
    let others: Vec<NodeId> = all.iter().copied().filter(|&n| n != wiped).collect();
    await_agreement(&cluster, &others, &all, None).await;

    // The operator removes the lost member; the machine starts again under a new id, joins,
    // and its metadata log reaches the leader's: the same members and catalog again.
    let answer = cluster
        .cli(leader, &["remove-node", &wiped.to_string()])
        .await;
    assert_eq!(answer["removed"], true, "{answer}");
    cluster.stop_node(wiped);
    let new = cluster.add_node().await;
    let members: Vec<NodeId> = others.iter().copied().chain([new]).collect();
    await_agreement(&cluster, &members, &members, None).await;
    let caught_up = async {
        loop {
            let theirs = api_status(&cluster, new).await;
            let leaders = api_status(&cluster, leader).await;
            let applied = |s: &Value| s["groups"][0]["last_applied"].as_u64();
            if applied(&theirs).is_some() && applied(&theirs) == applied(&leaders) {
                return;
            }
            tokio::time::sleep(POLL).await;
        }
    };
    tokio::time::timeout(WAIT, caught_up)
        .await
        .expect("the new node applies the metadata log up to the leader's");
    cluster.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_directory_starts_only_under_the_node_id_it_belongs_to() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = ClusterProcess::start(dir.path(), 1, &[]).await;
    let data = cluster.node(1).data_dir().to_owned();
    cluster.stop_node(1);
    // Its votes and log are node 1's: started as node 9 it would vote as node 1 did not.
    let child = sluice_tests::broker::sluice_command()
        .args(["serve", "--data-dir"])
        .arg(&data)
        .args([
            "--node-id",
            "9",
            "--listen",
            "127.0.0.1:0",
            "--cluster-listen",
            "127.0.0.1:0",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start sluice");
    let output = tokio::task::spawn_blocking(move || sluice_tests::broker::wait_output(child))
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "started as node 9: {stderr}");
    assert!(
        stderr.contains("belongs to node 1: start it with --node-id 1"),
        "{stderr}"
    );
    cluster.stop();
}
