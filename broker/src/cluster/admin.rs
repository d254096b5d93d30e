//! The cluster's operator requests (protocol.md §20: `ClusterStatus`, `AddNode`,
//! `RemoveNode`, `TransferLeadership`) as wire replies and typed errors; the session checks
//! the administrator tag first.

use std::time::Duration;

use sluice_client::wire::{
    AddNode, ClusterGroup, ClusterMember, ClusterStatusOk, ErrorCode, GroupReplica, RemoveNode,
    TransferLeadership,
};

use super::{Cluster, ClusterError, GroupId, NodeInfo, ProposeError};
use crate::error::RequestError;
use crate::routing::namespace;

/// How long a membership change or a transfer may take before the operator is answered.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(60);

/// The error for a cluster request on a node that is not in a cluster.
pub fn no_cluster() -> RequestError {
    RequestError::precondition("this node is not part of a cluster (started without --node-id)")
}

fn request_error(e: ClusterError) -> RequestError {
    match e {
        ClusterError::UnknownNode(_) | ClusterError::NotHosted(_) => {
            RequestError::new(ErrorCode::NotFound, e.to_string())
        }
        ClusterError::Propose(ProposeError::NoLeader | ProposeError::Unreachable(_))
        | ClusterError::Refused(_)
        | ClusterError::Remote(_)
        | ClusterError::Timeout(_)
        | ClusterError::NotEnoughNodes { .. }
        | ClusterError::AlreadyHosted(_) => RequestError::precondition(e.to_string()),
        ClusterError::Config(_) => RequestError::invalid(e.to_string()),
        _ => RequestError::internal(e.to_string()),
    }
}

/// The name a group is shown under: its queue's (local to the default vhost, else
/// `vhost/name`), empty for the metadata group or a group the catalog does not name.
fn group_name(cluster: &Cluster, id: u64) -> String {
    cluster
        .catalog()
        .into_iter()
        .find(|r| r.uid == id)
        .map(|r| {
            let local = namespace::split(&r.name).local.to_owned();
            if r.vhost == "/" {
                local
            } else {
                format!("{}/{local}", r.vhost)
            }
        })
        .unwrap_or_default()
}

/// `ClusterStatusOk` for this node's view.
pub fn status(cluster: &Cluster) -> ClusterStatusOk {
    let st = cluster.status();
    ClusterStatusOk {
        node_id: st.node_id,
        member: st.member,
        metadata_leader: st.metadata_leader,
        metadata_term: st.metadata_term,
        members: st
            .members
            .into_iter()
            .map(|m| ClusterMember {
                id: m.id,
                voter: m.voter,
                cluster_addr: m.cluster_addr,
                client_addr: m.client_addr,
                http_addr: m.http_addr,
            })
            .collect(),
        groups: st
            .groups
            .into_iter()
            .map(|g| ClusterGroup {
                group_id: g.id,
                name: group_name(cluster, g.id),
                leader: g.leader,
                term: g.term,
                last_index: g.last_log_index.unwrap_or(0),
                replicas: g
                    .replicas
                    .into_iter()
                    .map(|r| GroupReplica {
                        node: r.node,
                        voter: r.voter,
                        lag: r.lag,
                    })
                    .collect(),
            })
            .collect(),
    }
}

async fn bounded<T>(
    what: &str,
    f: impl std::future::Future<Output = Result<T, ClusterError>>,
) -> Result<T, RequestError> {
    match tokio::time::timeout(ADMIN_TIMEOUT, f).await {
        Ok(r) => r.map_err(request_error),
        Err(_) => Err(RequestError::precondition(format!(
            "{what} did not finish within {ADMIN_TIMEOUT:?}"
        ))),
    }
}

pub async fn add_node(cluster: Cluster, req: AddNode) -> Result<(), RequestError> {
    if req.node_id == 0 {
        return Err(RequestError::invalid("node ids start at 1"));
    }
    let info = NodeInfo {
        cluster_addr: req.cluster_addr,
        client_addr: String::new(),
        http_addr: None,
    };
    bounded("adding the node", cluster.add_node(req.node_id, info)).await
}

pub async fn remove_node(cluster: Cluster, req: RemoveNode) -> Result<(), RequestError> {
    bounded("removing the node", cluster.remove_node(req.node_id)).await
}

/// Moves the leadership of the metadata group (empty `queue`) or of replicated queue
/// `queue` (named as the session names it: `internal` is its namespaced name).
pub async fn transfer_leadership(
    cluster: Cluster,
    req: TransferLeadership,
    internal: Option<String>,
) -> Result<(), RequestError> {
    let group = match internal {
        None => GroupId::META,
        Some(name) => {
            let record = cluster
                .catalog()
                .into_iter()
                .find(|r| r.name == name)
                .ok_or_else(|| {
                    RequestError::new(
                        ErrorCode::NotFound,
                        format!("no replicated queue '{}'", req.queue),
                    )
                })?;
            GroupId(record.uid)
        }
    };
    bounded(
        "the leadership transfer",
        cluster.transfer_leadership(group, req.to),
    )
    .await
}
