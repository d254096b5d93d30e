//! A 3-node cluster of real `sluice serve` processes: forming (node 1 bootstraps, the others
//! join it), what `sluice cluster status` and `GET /api/cluster` show on every node, the
//! metadata leader's kill -9 and the election that follows, the killed node's return, and
//! `sluice cluster remove-node`.

use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use sluice_tests::broker::{sluice_command, wait_output, BrokerProcess, WAIT};
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
    tokio::time::timeout(WAIT, agreed)
        .await
        .unwrap_or_else(|_| panic!("nodes {nodes:?} did not agree on members {members:?} and a leader (not {not:?}) within {WAIT:?}"))
}

/// `sluice --json cluster ARGS` against node `id` (as guest, an administrator, from loopback).
async fn cli(cluster: &ClusterProcess, id: NodeId, args: &[&str]) -> Value {
    let url = format!("sluice://{}", cluster.node(id).addr());
    let mut all = vec![
        "--url".to_owned(),
        url,
        "--json".to_owned(),
        "cluster".to_owned(),
    ];
    all.extend(args.iter().map(|s| s.to_string()));
    let output = tokio::task::spawn_blocking(move || {
        let child = sluice_command()
            .args(&all)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start sluice");
        wait_output(child)
    })
    .await
    .unwrap();
    assert!(
        output.status.success(),
        "sluice cluster {args:?} on node {id} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("JSON on stdout")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_form_elect_a_new_leader_after_a_kill_take_the_node_back_and_remove_one() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = ClusterProcess::start(dir.path(), 3, &[]).await;
    let all = [1, 2, 3];
    let leader = await_agreement(&cluster, &all, &all, None).await;

    // The CLI tells the same on every node: three voters, the same leader, and the metadata
    // group hosted everywhere.
    for id in all {
        let status = cli(&cluster, id, &["status"]).await;
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

    // remove-node through any node: the others drop it from their members.
    let removed = *survivors
        .iter()
        .find(|&&n| n != after)
        .unwrap_or(&survivors[0]);
    let asked = *all.iter().find(|&&n| n != removed).unwrap();
    let answer = cli(&cluster, asked, &["remove-node", &removed.to_string()]).await;
    assert_eq!(answer["removed"], true);
    let remaining: Vec<NodeId> = all.iter().copied().filter(|&n| n != removed).collect();
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
