//! Cluster administration (protocol.md §20): the cluster as the connected node sees it,
//! adding and removing nodes, moving a group's leadership. Administrators only; a node that
//! is not in a cluster answers `PRECONDITION_FAILED`.

use crate::client::{unexpected_reply, Client};
use crate::error::Result;
use crate::wire::{AddNode, ClusterStatusOk, RemoveNode, Reply, Request, TransferLeadership};

impl Client {
    /// The members, the metadata leader and the groups hosted on the connected node.
    pub async fn cluster_status(&self) -> Result<ClusterStatusOk> {
        match self.call(Request::ClusterStatus).await? {
            Reply::ClusterStatusOk(s) => Ok(s),
            other => Err(unexpected_reply(other)),
        }
    }

    /// Adds node `node_id`, running with its cluster listener at `cluster_addr`, as a member.
    /// Adding a member again changes nothing.
    pub async fn add_node(&self, node_id: u64, cluster_addr: &str) -> Result<()> {
        let request = AddNode {
            node_id,
            cluster_addr: cluster_addr.to_owned(),
        };
        match self.call(request).await? {
            Reply::AddNodeOk => Ok(()),
            other => Err(unexpected_reply(other)),
        }
    }

    /// Removes node `node_id` from the cluster.
    pub async fn remove_node(&self, node_id: u64) -> Result<()> {
        match self.call(RemoveNode { node_id }).await? {
            Reply::RemoveNodeOk => Ok(()),
            other => Err(unexpected_reply(other)),
        }
    }

    /// Moves the leadership of replicated queue `queue` (`None`: the metadata group) to node
    /// `to`; answered once `to` leads.
    pub async fn transfer_leadership(&self, queue: Option<&str>, to: u64) -> Result<()> {
        let request = TransferLeadership {
            queue: queue.unwrap_or_default().to_owned(),
            to,
        };
        match self.call(request).await? {
            Reply::TransferLeadershipOk => Ok(()),
            other => Err(unexpected_reply(other)),
        }
    }
}
