//! Replica repair: a replicated queue keeps the number of replicas it was declared with when
//! a member leaves (or joins).
//!
//! Two halves, each run where it has the authority:
//! - **Re-placement** ([`placement_task`], on the metadata leader): the catalog's `replicas`
//!   is a queue's desired placement. A replica that is no longer a member is replaced by the
//!   least loaded member that is not a replica yet ([`replace_replicas`]), or just dropped when
//!   no member is spare (the metadata remembers how many replicas the queue was declared
//!   with, so a later join fills it). Committed as `MetaCommand::SetReplicas`; every node
//!   then hosts or drops the group (`MetaEvent::ReplicasChanged`, the broker's part).
//! - **Membership** ([`membership_task`], on each queue group's leader): the group's voters
//!   are made the catalog's replicas through openraft's joint consensus: a new replica is
//!   added as a learner and waited for until it caught up, then the voters change in one
//!   `change_membership` ([`next_voters`] keeps a majority of the old voters in every step).
//!   It runs on every change of the catalog and whenever the node gains the leadership, so a
//!   leader change mid-repair finishes the job.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Weak};
use std::time::Duration;

use openraft::ChangeMembers;
use tokio::sync::watch;

use super::core::Core;
use super::group::HostedGroup;
use super::meta::{MetaCommand, MetaResponse, QueueRecord};
use super::types::{ClusterError, GroupId, Leadership, NodeId, NodeInfo};

/// Pause before a failed repair step is tried again (no quorum yet, a learner still behind).
const RETRY: Duration = Duration::from_secs(1);
/// How long a new replica may take to catch up (a snapshot of the whole queue, then the log).
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(60);
/// How long one membership change may take to commit.
const CHANGE_TIMEOUT: Duration = Duration::from_secs(20);
/// A learner this close to the leader's last log entry has caught up: it can vote without
/// holding up commits for long.
const CAUGHT_UP_LAG: u64 = 64;

/// The new replicas of a queue whose `current` replicas are not all `members` (or are fewer
/// than `wanted`), or `None` when nothing changes. Surviving replicas keep their order and
/// replacements are appended: the first replica is never a node that joined later. A
/// replacement is the member hosting the fewest replicas (`load`), ties by id, so every
/// proposer decides alike. `None` too when no replica survives: nothing to rebuild from.
pub fn replace_replicas(
    current: &[NodeId],
    wanted: usize,
    members: &[NodeId],
    load: &HashMap<NodeId, usize>,
) -> Option<Vec<NodeId>> {
    let mut next: Vec<NodeId> = current
        .iter()
        .copied()
        .filter(|r| members.contains(r))
        .collect();
    if next.is_empty() {
        return None;
    }
    let mut spares: Vec<NodeId> = members
        .iter()
        .copied()
        .filter(|m| !next.contains(m))
        .collect();
    spares.sort_by_key(|id| (load.get(id).copied().unwrap_or(0), *id));
    spares.dedup();
    let missing = wanted.saturating_sub(next.len());
    next.extend(spares.into_iter().take(missing));
    (next != current).then_some(next)
}

/// The voters a group moves to next, from `voters` towards `wanted`: every wanted node (the
/// caller added them as caught-up learners) and none of `removable` (nodes no longer in the
/// cluster), except that the step keeps a majority of the old voters: when dropping them all
/// would not, the lowest-numbered of them stay for a later step.
pub fn next_voters(
    voters: &BTreeSet<NodeId>,
    wanted: &BTreeSet<NodeId>,
    removable: &BTreeSet<NodeId>,
) -> BTreeSet<NodeId> {
    let mut next: BTreeSet<NodeId> = voters.difference(removable).copied().collect();
    next.extend(wanted.iter().copied());
    let majority = voters.len() / 2 + 1;
    let kept = |next: &BTreeSet<NodeId>| next.intersection(voters).count();
    for stay in removable.iter().filter(|r| voters.contains(r)) {
        if kept(&next) >= majority {
            break;
        }
        next.insert(*stay);
    }
    next
}

/// Waits until `leadership`, the catalog (`changes`) or the membership of `raft` changes.
async fn next_change(
    leadership: &mut watch::Receiver<Leadership>,
    changes: &mut watch::Receiver<u64>,
    raft: &super::types::Raft,
) {
    let mut metrics = raft.metrics();
    let membership = *metrics.borrow_and_update().membership_config.log_id();
    let membership_changed = async {
        loop {
            if metrics.changed().await.is_err() {
                // The group stopped: its task is aborted with it; wait for that.
                std::future::pending::<()>().await;
            }
            if *metrics.borrow().membership_config.log_id() != membership {
                return;
            }
        }
    };
    tokio::select! {
        _ = changed(leadership) => {}
        _ = changed(changes) => {}
        _ = membership_changed => {}
    }
}

/// Returns when `rx` changes; never once its sender is gone (the group or the cluster is
/// stopping, and this task is aborted with it): a closed channel must not spin the loop.
async fn changed<T>(rx: &mut watch::Receiver<T>) {
    if rx.changed().await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// On the metadata leader: re-places every queue with a replica that is no longer a member
/// (or fewer replicas than it wanted), whenever members, catalog or leadership change.
pub(crate) async fn placement_task(core: Weak<Core>) {
    let Some((meta, mut changes)) = core
        .upgrade()
        .and_then(|c| Some((c.hosted(GroupId::META)?, c.meta.subscribe())))
    else {
        return;
    };
    let mut leadership = meta.leadership();
    loop {
        let leads = leadership.borrow_and_update().is_self;
        changes.borrow_and_update();
        if leads {
            let Some(core) = core.upgrade() else { return };
            if let Err(e) = repair_catalog(&core).await {
                tracing::warn!(error = %e, "re-placing replicas failed: retrying");
                tokio::time::sleep(RETRY).await;
                continue;
            }
        }
        next_change(&mut leadership, &mut changes, &meta.raft).await;
    }
}

/// The cluster's voting members, as the metadata group has them.
fn members(core: &Core) -> Vec<NodeId> {
    core.meta_membership()
        .map(|m| m.voter_ids().collect())
        .unwrap_or_default()
}

/// One pass of re-placement over the catalog (this node leads the metadata group).
async fn repair_catalog(core: &Arc<Core>) -> Result<(), ClusterError> {
    let members = members(core);
    if members.is_empty() {
        return Ok(());
    }
    let catalog = core.meta.catalog();
    let mut load: HashMap<NodeId, usize> = HashMap::new();
    for node in catalog.iter().flat_map(|q| q.replicas.iter()) {
        *load.entry(*node).or_insert(0) += 1;
    }
    for record in catalog {
        let wanted = core
            .meta
            .wanted(record.uid)
            .unwrap_or(record.replicas.len());
        let Some(replicas) = replace_replicas(&record.replicas, wanted, &members, &load) else {
            continue;
        };
        for n in &replicas {
            *load.entry(*n).or_insert(0) += 1;
        }
        tracing::info!(queue = %record.name, from = ?record.replicas, to = ?replicas, "re-placing the replicas of a queue");
        let cmd = MetaCommand::SetReplicas {
            uid: record.uid,
            expected: record.replicas.clone(),
            replicas,
        };
        match core.propose_meta(&cmd).await? {
            // Stale: the catalog moved on meanwhile; the change wakes the next pass.
            MetaResponse::Queue(_) | MetaResponse::Stale(_) | MetaResponse::NoSuchQueue => {}
            other => {
                return Err(ClusterError::Refused(format!(
                    "the metadata group answered {other:?} to a re-placement"
                )))
            }
        }
    }
    Ok(())
}

/// On the leader of queue group `group`: makes its voters the catalog's replicas, whenever
/// the catalog, the group's membership or its leadership changes.
pub(crate) async fn membership_task(core: Weak<Core>, group: Weak<HostedGroup>) {
    let Some((raft, mut leadership, mut changes)) = core.upgrade().and_then(|c| {
        let g = group.upgrade()?;
        Some((g.raft.clone(), g.leadership(), c.meta.subscribe()))
    }) else {
        return;
    };
    loop {
        let leads = leadership.borrow_and_update().is_self;
        changes.borrow_and_update();
        if leads {
            let (Some(core), Some(group)) = (core.upgrade(), group.upgrade()) else {
                return;
            };
            match reconcile_group(&core, &group).await {
                Ok(Step::Settled) => {}
                // Look again at once: one change may call for another.
                Ok(Step::Changed) => continue,
                Err(e) => {
                    tracing::warn!(group = %group.id, error = %e, "changing the group's replicas failed: retrying");
                    drop((core, group));
                    tokio::time::sleep(RETRY).await;
                    continue;
                }
            }
        }
        next_change(&mut leadership, &mut changes, &raft).await;
    }
}

/// What one reconciliation did.
#[derive(Debug, PartialEq, Eq)]
enum Step {
    /// The group's membership matches the catalog (or cannot be brought closer now).
    Settled,
    /// A membership change committed; look again.
    Changed,
}

/// One step towards the catalog's replicas for `group` (this node leads it).
async fn reconcile_group(core: &Arc<Core>, group: &HostedGroup) -> Result<Step, ClusterError> {
    let Some(record) = core.meta.queue_by_uid(group.id.0) else {
        return Ok(Step::Settled);
    };
    let cluster: BTreeSet<NodeId> = members(core).into_iter().collect();
    if cluster.is_empty() {
        // The metadata group is not open here yet: no member is known to be gone.
        return Ok(Step::Settled);
    }
    let membership = {
        let m = group.raft.metrics();
        let m = m.borrow();
        m.membership_config.membership().clone()
    };
    let voters: BTreeSet<NodeId> = membership
        .get_joint_config()
        .last()
        .cloned()
        .unwrap_or_default();
    let joint = membership.get_joint_config().len() > 1;
    let learners: BTreeSet<NodeId> = membership.learner_ids().collect();
    let desired: BTreeSet<NodeId> = record.replicas.iter().copied().collect();
    // Only members are added, and only non-members removed: a catalog this node has not
    // caught up with yet cannot take a live replica away.
    let to_add: Vec<(NodeId, NodeInfo)> = desired
        .difference(&voters)
        .filter(|n| cluster.contains(n))
        .filter_map(|n| Some((*n, core.node_info(*n)?)))
        .collect();
    let removable: BTreeSet<NodeId> = voters
        .iter()
        .copied()
        .filter(|v| !desired.contains(v) && !cluster.contains(v))
        .collect();
    let mut added = BTreeSet::new();
    for (node, info) in to_add {
        add_learner(group, node, info, learners.contains(&node)).await?;
        added.insert(node);
    }
    let next = next_voters(&voters, &added, &removable);
    if next != voters || joint {
        tracing::info!(group = %group.id, queue = %record.name, from = ?voters, to = ?next, "changing the group's voters");
        change(group, ChangeMembers::ReplaceAllVoters(next)).await?;
        return Ok(Step::Changed);
    }
    let stray: BTreeSet<NodeId> = learners.difference(&desired).copied().collect();
    if !stray.is_empty() {
        change(group, ChangeMembers::RemoveNodes(stray)).await?;
        return Ok(Step::Changed);
    }
    Ok(Step::Settled)
}

/// Adds `node` as a learner of `group` (unless it is one) and waits until it caught up.
async fn add_learner(
    group: &HostedGroup,
    node: NodeId,
    info: NodeInfo,
    already: bool,
) -> Result<(), ClusterError> {
    if !already {
        tracing::info!(group = %group.id, node, "adding a replica as a learner");
        tokio::time::timeout(CHANGE_TIMEOUT, group.raft.add_learner(node, info, false))
            .await
            .map_err(|_| ClusterError::Timeout(format!("adding node {node} as a learner")))?
            .map_err(|e| ClusterError::Raft(e.to_string()))?;
    }
    let mut metrics = group.raft.metrics();
    let caught_up = metrics.wait_for(|m| {
        // No replication metrics: this node no longer leads; stop waiting.
        let Some(replication) = &m.replication else {
            return true;
        };
        let last = m.last_log_index.unwrap_or(0);
        replication
            .get(&node)
            .and_then(|matched| matched.as_ref())
            .is_some_and(|l| l.index + CAUGHT_UP_LAG >= last)
    });
    let leads = tokio::time::timeout(CATCH_UP_TIMEOUT, caught_up)
        .await
        .map_err(|_| ClusterError::Timeout(format!("node {node} did not catch up")))?
        .map_err(|_| ClusterError::Refused("the group stopped".into()))?
        .replication
        .is_some();
    if !leads {
        return Err(ClusterError::Refused(format!(
            "no longer the leader of {} while node {node} caught up",
            group.id
        )));
    }
    Ok(())
}

/// One membership change through joint consensus, bounded.
async fn change(
    group: &HostedGroup,
    members: ChangeMembers<NodeId, NodeInfo>,
) -> Result<(), ClusterError> {
    tokio::time::timeout(CHANGE_TIMEOUT, group.raft.change_membership(members, false))
        .await
        .map_err(|_| ClusterError::Timeout(format!("changing the voters of {}", group.id)))?
        .map_err(|e| ClusterError::Raft(e.to_string()))?;
    Ok(())
}

/// Whether `record`'s queue group, hosted here, no longer counts on this node: the catalog
/// dropped it and either the group's membership (as this node saw it last) no longer lists
/// it, or this node is no longer a member of the cluster (its group's leader removes it).
pub(crate) fn may_drop(core: &Core, record: &QueueRecord) -> bool {
    if record.replicas.contains(&core.node_id) {
        return false;
    }
    let Some(group) = core.hosted(GroupId(record.uid)) else {
        return true;
    };
    let listed = {
        let m = group.raft.metrics();
        let m = m.borrow();
        let membership = m.membership_config.membership();
        membership.get_node(&core.node_id).is_some()
    };
    !listed || !members(core).contains(&core.node_id)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(ids: &[NodeId]) -> BTreeSet<NodeId> {
        ids.iter().copied().collect()
    }

    #[test]
    fn a_removed_replica_is_replaced_by_the_least_loaded_spare_member_appended_last() {
        let load = HashMap::from([(4, 2), (5, 1)]);
        assert_eq!(
            replace_replicas(&[3, 1, 2], 3, &[1, 2, 4, 5], &load),
            Some(vec![1, 2, 5]),
            "3 left; 5 hosts fewer replicas than 4; survivors keep their order"
        );
        let even = HashMap::new();
        assert_eq!(
            replace_replicas(&[1, 2, 3], 3, &[1, 2, 5, 4], &even),
            Some(vec![1, 2, 4]),
            "a tie goes to the lower id"
        );
    }

    #[test]
    fn with_no_spare_member_the_dead_replica_is_dropped_and_a_later_join_fills_the_gap() {
        let load = HashMap::new();
        let shrunk = replace_replicas(&[1, 2, 3], 3, &[1, 2], &load);
        assert_eq!(shrunk, Some(vec![1, 2]));
        assert_eq!(
            replace_replicas(&[1, 2], 3, &[1, 2, 4], &load),
            Some(vec![1, 2, 4]),
            "a joining node fills the wanted count"
        );
    }

    #[test]
    fn a_healthy_placement_is_left_alone_and_a_queue_without_survivors_too() {
        let load = HashMap::new();
        assert_eq!(replace_replicas(&[1, 2, 3], 3, &[1, 2, 3, 4], &load), None);
        assert_eq!(
            replace_replicas(&[5, 6], 3, &[1, 2, 3], &load),
            None,
            "no replica left to rebuild from"
        );
    }

    #[test]
    fn a_voter_step_adds_the_new_replica_and_drops_the_dead_one_in_one_change() {
        assert_eq!(
            next_voters(&set(&[1, 2, 3]), &set(&[4]), &set(&[3])),
            set(&[1, 2, 4])
        );
        assert_eq!(
            next_voters(&set(&[1, 2, 3]), &set(&[]), &set(&[3])),
            set(&[1, 2]),
            "no spare: the dead voter goes, the live majority stays"
        );
    }

    #[test]
    fn a_voter_step_never_keeps_fewer_than_a_majority_of_the_old_voters() {
        // Two of three removed at once: one of them stays until the next step.
        let first = next_voters(&set(&[1, 2, 3]), &set(&[4, 5]), &set(&[2, 3]));
        assert_eq!(first, set(&[1, 2, 4, 5]));
        let second = next_voters(&first, &set(&[]), &set(&[2]));
        assert_eq!(second, set(&[1, 4, 5]));
        assert!(second.intersection(&first).count() > first.len() / 2);
    }
}
