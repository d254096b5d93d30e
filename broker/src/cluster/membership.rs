//! Membership, run by the metadata group's leader: admitting a node (and first, for a node
//! with a new data directory, whether it may join under its id), removing one (after asking
//! it to hand the queue groups it leads over), and forwarding these requests to the leader.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use openraft::ChangeMembers;

use super::core::{write_err, Core};
use super::group::HostedGroup;
use super::meta::{MetaCommand, MetaResponse};
use super::rpc::{Failure, Reply, Request};
use super::types::{ClusterError, GroupId, NodeId, NodeInfo, ProposeError};

/// How long adding a node may take: the new node must catch up as a learner first.
const ADMIT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a request forwarded to the metadata leader may take.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(40);
/// How long a node being removed may take to hand its groups over (each transfer is bounded
/// by the transfer timeout; they run at once).
const STEP_DOWN_TIMEOUT: Duration = Duration::from_secs(30);

impl Core {
    /// Makes `node` a voting member of the metadata group with addresses `info` (this node
    /// must lead it). Joining twice changes nothing; new addresses replace old ones.
    pub(crate) async fn admit(
        self: &Arc<Self>,
        node: NodeId,
        info: NodeInfo,
    ) -> Result<(), ClusterError> {
        let _one_at_a_time = self.admitting.lock().await;
        if self.meta.was_removed(node) {
            // Its data predates the removal: as a voter again it could bring back groups
            // that replaced it. The machine joins again as a new node.
            return Err(ClusterError::Refused(format!(
                "node {node} was removed from the cluster and may not join again under that id; \
                 wipe its data directory and start it with a new --node-id"
            )));
        }
        let (meta, membership) = self.meta_group()?;
        let known = membership.get_node(&node).cloned();
        let voter = membership.voter_ids().any(|v| v == node);
        match known {
            None => {
                tokio::time::timeout(
                    ADMIT_TIMEOUT,
                    meta.raft.add_learner(node, info.clone(), true),
                )
                .await
                .map_err(|_| ClusterError::Timeout(format!("node {node} did not catch up")))?
                .map_err(write_err)?;
            }
            Some(old) if old != info => {
                let nodes = BTreeMap::from([(node, info.clone())]);
                meta.raft
                    .change_membership(ChangeMembers::SetNodes(nodes), true)
                    .await
                    .map_err(write_err)?;
            }
            Some(_) => {}
        }
        if !voter {
            meta.raft
                .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([node])), true)
                .await
                .map_err(write_err)?;
        }
        if self.meta.node(node).as_ref() != Some(&info) {
            let answer = self.propose_meta(&MetaCommand::AddNode(node, info)).await?;
            if answer == MetaResponse::Removed(node) {
                // Removed while it was being added (the check above read this replica,
                // which may lag): out again.
                let node_only = BTreeSet::from([node]);
                let _ = meta
                    .raft
                    .change_membership(ChangeMembers::RemoveVoters(node_only.clone()), false)
                    .await;
                let _ = meta
                    .raft
                    .change_membership(ChangeMembers::RemoveNodes(node_only), false)
                    .await;
                return Err(ClusterError::Refused(format!(
                    "node {node} was removed from the cluster and may not join again under that id"
                )));
            }
        }
        Ok(())
    }

    /// Whether `node`, with a new data directory, may join under its id (this node must
    /// lead the metadata group, whose membership is the authority). A learner that never
    /// became a voter (its first join was cut short) may: it never voted.
    fn may_join(&self, node: NodeId) -> Result<(), ClusterError> {
        let (_, membership) = self.meta_group()?;
        if self.meta.was_removed(node) {
            return Err(ClusterError::Refused(format!(
                "node {node} was removed from the cluster and may not join again under that id; \
                 start this machine with a new --node-id"
            )));
        }
        if membership.voter_ids().any(|v| v == node) || self.meta.node(node).is_some() {
            return Err(ClusterError::Refused(format!(
                "node {node} is a member of the cluster and this node's data directory is new \
                 (a lost or wiped disk?): it cannot take the member's place under its id, \
                 having forgotten the member's votes. Remove the member (`sluice cluster \
                 remove-node {node}`) and start this machine with a new --node-id: the \
                 cluster rebuilds its replicas there"
            )));
        }
        Ok(())
    }

    /// The metadata group hosted here and its current membership (admit and expel need both).
    fn meta_group(
        &self,
    ) -> Result<(Arc<HostedGroup>, openraft::Membership<NodeId, NodeInfo>), ClusterError> {
        let missing = || ClusterError::NotHosted(GroupId::META);
        let meta = self.hosted(GroupId::META).ok_or_else(missing)?;
        let membership = self.meta_membership().ok_or_else(missing)?;
        Ok((meta, membership))
    }

    /// Removes `node` from the metadata group and the member list (this node must lead it).
    pub(crate) async fn expel(self: &Arc<Self>, node: NodeId) -> Result<(), ClusterError> {
        let _one_at_a_time = self.admitting.lock().await;
        let (_, membership) = self.meta_group()?;
        if membership.get_node(&node).is_none() && self.meta.node(node).is_none() {
            return Err(ClusterError::UnknownNode(node));
        }
        // Recorded first: from here the id may not join again, whatever happens next (a
        // failed membership change is retried by asking again).
        self.propose_meta(&MetaCommand::RemoveNode(node)).await?;
        self.ask_to_step_down(node).await;
        let (meta, membership) = self.meta_group()?;
        if membership.voter_ids().any(|v| v == node) {
            meta.raft
                .change_membership(ChangeMembers::RemoveVoters(BTreeSet::from([node])), false)
                .await
                .map_err(write_err)?;
        } else if membership.get_node(&node).is_some() {
            meta.raft
                .change_membership(ChangeMembers::RemoveNodes(BTreeSet::from([node])), false)
                .await
                .map_err(write_err)?;
        }
        Ok(())
    }

    /// Asks `node`, about to be removed, to hand over the queue groups it leads, so that the
    /// groups' new leaders can replace it (it would not: once removed it hears of no new
    /// placement). Best effort: a dead node leads nothing, and the answer waits for nothing.
    async fn ask_to_step_down(self: &Arc<Self>, node: NodeId) {
        if node == self.node_id {
            self.step_down_everywhere().await;
            return;
        }
        let Some(info) = self.node_info(node) else {
            return;
        };
        let asked = self
            .transport()
            .call(
                node,
                &info.cluster_addr,
                GroupId::META,
                Request::StepDown,
                STEP_DOWN_TIMEOUT,
            )
            .await;
        if let Err(e) = asked {
            tracing::debug!(node, error = %e, "node to remove did not hand its groups over");
        }
    }

    /// Hands the leadership of every queue group led here to another voter of it, all at
    /// once; failures are logged (the group then waits for this node to stop).
    pub(crate) async fn step_down_everywhere(self: &Arc<Self>) {
        let led: Vec<(Arc<HostedGroup>, NodeId)> = self
            .hosted_all()
            .into_iter()
            .filter(|g| g.id != GroupId::META)
            .filter(|g| g.leader().is_some_and(|(l, _)| l == self.node_id))
            .filter_map(|g| {
                let to = self.best_successor(&g)?;
                Some((g, to))
            })
            .collect();
        let transfers = led.iter().map(|(g, to)| async move {
            match super::transfer_from_here(self, g, *to).await {
                // Never to win it back while its new leader replaces this node (that takes
                // as long as a new replica's catch-up).
                Ok(()) => g.step_down_for_good(),
                Err(e) => {
                    tracing::warn!(group = %g.id, to, error = %e, "could not hand the group over")
                }
            }
        });
        futures_util::future::join_all(transfers).await;
    }

    /// The voter of `group` (led here) that has replicated the most of its log: the one a
    /// transfer reaches soonest. `None` when no other voter replicates (all down).
    fn best_successor(&self, group: &HostedGroup) -> Option<NodeId> {
        let m = group.raft.metrics();
        let m = m.borrow();
        let replication = m.replication.as_ref()?;
        m.membership_config
            .membership()
            .voter_ids()
            .filter(|v| *v != self.node_id && self.node_info(*v).is_some())
            .filter_map(|v| Some((v, replication.get(&v)?.as_ref()?.index)))
            .max_by_key(|(_, matched)| *matched)
            .map(|(v, _)| v)
    }

    /// Runs `request` (a `Join` or `Leave`) on the metadata leader: here if this node leads,
    /// else forwarded to the leader.
    pub(crate) async fn on_meta_leader(
        self: &Arc<Self>,
        request: Request,
    ) -> Result<(), ClusterError> {
        let meta = self
            .hosted(GroupId::META)
            .ok_or(ClusterError::NotHosted(GroupId::META))?;
        match meta.leader() {
            Some((leader, _)) if leader == self.node_id => match request {
                Request::Join { node, info } => self.admit(node, info).await,
                Request::Leave { node } => self.expel(node).await,
                Request::MayJoin { node } => self.may_join(node),
                _ => Err(ClusterError::Refused("not a membership request".into())),
            },
            Some((leader, info)) => {
                let reply = self
                    .transport()
                    .call(
                        leader,
                        &info.cluster_addr,
                        GroupId::META,
                        request,
                        FORWARD_TIMEOUT,
                    )
                    .await
                    .map_err(|e| ClusterError::Propose(ProposeError::Unreachable(e.to_string())))?;
                match reply {
                    Reply::Done => Ok(()),
                    Reply::Failed(Failure::NotLeader(_)) => {
                        Err(ClusterError::Propose(ProposeError::NoLeader))
                    }
                    Reply::Failed(Failure::Refused(reason)) => Err(ClusterError::Refused(reason)),
                    Reply::Failed(Failure::Other(reason)) => Err(ClusterError::Remote(reason)),
                    // The leader stopping, or not hosting the group yet: worth another try.
                    Reply::Failed(f) => Err(ClusterError::Propose(ProposeError::Unreachable(
                        f.to_string(),
                    ))),
                    other => Err(ClusterError::Refused(format!("unexpected reply {other:?}"))),
                }
            }
            None => Err(ClusterError::Propose(ProposeError::NoLeader)),
        }
    }
}
