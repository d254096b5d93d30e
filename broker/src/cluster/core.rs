//! The state behind a [`Cluster`](super::Cluster) handle: hosted groups, the metadata
//! machine, the transport, and the answers to peers' requests.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock, RwLock, Weak};
use std::time::Duration;

use futures_util::future::BoxFuture;
use openraft::error::{ClientWriteError, RaftError};
use openraft::ChangeMembers;

use super::codec::{decode, encode};
use super::group::{HostedGroup, LocalWriteError};
use super::log_store::LogStore;
use super::meta::{MetaCommand, MetaMachine, MetaResponse};
use super::network::GroupNetwork;
use super::rpc::{Failure, Reply, Request};
use super::state_machine::{GroupMachine, StateMachine};
use super::transport::{Handler, Transport};
use super::types::{ClusterError, GroupId, NodeId, NodeInfo, ProposeError, Raft};
use crate::storage::{Durability, RaftLog};

/// How long adding a node may take: the new node must catch up as a learner first.
const ADMIT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a request forwarded to the metadata leader may take.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(40);
/// How long a node being removed may take to hand its groups over (each transfer is bounded
/// by the transfer timeout; they run at once).
const STEP_DOWN_TIMEOUT: Duration = Duration::from_secs(25);
/// How long a node that handed its groups over (being removed) starts no election in them.
const STEPPED_DOWN_HOLD: Duration = Duration::from_secs(600);

pub(crate) struct Core {
    pub(crate) node_id: NodeId,
    pub(crate) local: NodeInfo,
    /// `<data>/cluster`.
    pub(crate) dir: PathBuf,
    durability: Durability,
    transport: OnceLock<Transport>,
    groups: RwLock<HashMap<GroupId, Arc<HostedGroup>>>,
    pub(crate) meta: Arc<MetaMachine>,
    raft_config: Arc<openraft::Config>,
    stopping: AtomicBool,
    /// One membership change at a time: openraft refuses overlapping ones anyway.
    admitting: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for Core {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Core")
            .field("node_id", &self.node_id)
            .finish_non_exhaustive()
    }
}

fn raft_err(e: impl std::fmt::Display) -> ClusterError {
    ClusterError::Raft(e.to_string())
}

/// A membership change refused because this node is not (or no longer) the leader.
fn write_err(e: RaftError<NodeId, ClientWriteError<NodeId, NodeInfo>>) -> ClusterError {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(_)) => {
            ClusterError::Propose(ProposeError::NoLeader)
        }
        e => raft_err(e),
    }
}

impl Core {
    pub(crate) fn new(
        node_id: NodeId,
        local: NodeInfo,
        dir: PathBuf,
        durability: Durability,
        meta: Arc<MetaMachine>,
        raft_config: Arc<openraft::Config>,
    ) -> Core {
        Core {
            node_id,
            local,
            dir,
            durability,
            transport: OnceLock::new(),
            groups: RwLock::new(HashMap::new()),
            meta,
            raft_config,
            stopping: AtomicBool::new(false),
            admitting: tokio::sync::Mutex::new(()),
        }
    }

    pub(crate) fn set_transport(&self, transport: Transport) {
        let _ = self.transport.set(transport);
    }

    pub(crate) fn transport(&self) -> &Transport {
        self.transport
            .get()
            .expect("the transport starts with the cluster")
    }

    pub(crate) fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }

    pub(crate) fn begin_stop(&self) {
        self.stopping.store(true, Ordering::Release);
    }

    pub(crate) fn hosted(&self, id: GroupId) -> Option<Arc<HostedGroup>> {
        self.groups
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&id)
            .cloned()
    }

    pub(crate) fn hosted_all(&self) -> Vec<Arc<HostedGroup>> {
        let mut all: Vec<_> = self
            .groups
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect();
        all.sort_by_key(|g| g.id);
        all
    }

    pub(crate) fn unhost(&self, id: GroupId) -> Option<Arc<HostedGroup>> {
        self.groups
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id)
    }

    pub(crate) fn group_dir(&self, id: GroupId) -> PathBuf {
        self.dir.join("groups").join(id.dir_name())
    }

    /// The metadata group's membership: voters and every node's addresses.
    pub(crate) fn meta_membership(&self) -> Option<openraft::Membership<NodeId, NodeInfo>> {
        let meta = self.hosted(GroupId::META)?;
        let m = meta.raft.metrics();
        let m = m.borrow();
        Some(m.membership_config.membership().clone())
    }

    /// A node's addresses: from the metadata machine (refreshed at each restart of the node),
    /// else from the metadata group's membership.
    pub(crate) fn node_info(&self, id: NodeId) -> Option<NodeInfo> {
        if id == self.node_id {
            return Some(self.local.clone());
        }
        self.meta
            .node(id)
            .or_else(|| self.meta_membership()?.get_node(&id).cloned())
    }

    /// The nodes that hold group `id`, with their addresses, as the metadata knows them.
    pub(crate) fn replicas_of(&self, id: GroupId) -> Vec<(NodeId, NodeInfo)> {
        let nodes: Vec<NodeId> = if id == GroupId::META {
            let mut ids: BTreeSet<NodeId> = self.meta.members().keys().copied().collect();
            if let Some(m) = self.meta_membership() {
                ids.extend(m.nodes().map(|(id, _)| *id));
            }
            ids.into_iter().collect()
        } else {
            self.meta
                .queue_by_uid(id.0)
                .map(|q| q.replicas)
                .unwrap_or_default()
        };
        nodes
            .into_iter()
            .filter_map(|n| Some((n, self.node_info(n)?)))
            .collect()
    }

    /// Starts the openraft instance of group `id` over its directory and registers it.
    pub(crate) async fn open_group(
        self: &Arc<Self>,
        id: GroupId,
        machine: Arc<dyn GroupMachine>,
    ) -> Result<Arc<HostedGroup>, ClusterError> {
        if self.hosted(id).is_some() {
            return Err(ClusterError::AlreadyHosted(id));
        }
        let dir = self.group_dir(id);
        let log_dir = dir.join("log");
        std::fs::create_dir_all(&log_dir)
            .map_err(|e| ClusterError::io(format!("creating {}", log_dir.display()), e))?;
        let durability = self.durability.clone();
        let log = tokio::task::spawn_blocking(move || RaftLog::open(&log_dir, &durability))
            .await
            .map_err(|e| ClusterError::Storage(e.to_string()))?
            .map_err(|e| ClusterError::Storage(e.to_string()))?;
        let sm = StateMachine::open(id, &dir, machine)
            .await
            .map_err(|e| ClusterError::io(format!("opening the snapshot of {id}"), e))?;
        let network = GroupNetwork {
            transport: self.transport().clone(),
            group: id,
        };
        let raft = Raft::new(
            self.node_id,
            Arc::clone(&self.raft_config),
            network,
            LogStore::new(log),
            sm,
        )
        .await
        .map_err(raft_err)?;
        let group = Arc::new(HostedGroup::new(id, raft, dir, self.node_id));
        let raced = {
            let mut groups = self.groups.write().unwrap_or_else(|e| e.into_inner());
            let raced = groups.contains_key(&id);
            if !raced {
                groups.insert(id, Arc::clone(&group));
            }
            raced
        };
        if raced {
            group.stop().await;
            return Err(ClusterError::AlreadyHosted(id));
        }
        if id != GroupId::META {
            group.keep_task(tokio::spawn(super::repair::membership_task(
                Arc::downgrade(self),
                Arc::downgrade(&group),
            )));
        }
        Ok(group)
    }

    /// Proposes a metadata command on this node's metadata group (forwarded to its leader).
    pub(crate) async fn propose_meta(
        self: &Arc<Self>,
        cmd: &MetaCommand,
    ) -> Result<MetaResponse, ProposeError> {
        let bytes = super::group::propose(self, GroupId::META, encode(cmd)).await?;
        decode("metadata response", &bytes).map_err(|e| ProposeError::Fatal(e.to_string()))
    }

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
                let _ = meta
                    .raft
                    .change_membership(ChangeMembers::RemoveVoters(BTreeSet::from([node])), false)
                    .await;
                return Err(ClusterError::Refused(format!(
                    "node {node} was removed from the cluster and may not join again under that id"
                )));
            }
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
                // Not to win it back while its new leader replaces this node (that takes as
                // long as a new replica's catch-up).
                Ok(()) => g.hold_elections(STEPPED_DOWN_HOLD.as_millis() as u64),
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

    async fn handle(
        self: Arc<Self>,
        from: Option<NodeId>,
        group: GroupId,
        request: Request,
    ) -> Reply {
        if self.is_stopping() {
            return Reply::Failed(Failure::ShuttingDown);
        }
        if let Request::Info = request {
            return Reply::Info {
                node: self.node_id,
                info: self.local.clone(),
            };
        }
        if matches!(request, Request::StepDown) {
            self.step_down_everywhere().await;
            return Reply::Done;
        }
        if matches!(request, Request::Join { .. } | Request::Leave { .. }) {
            if group != GroupId::META {
                return Reply::Failed(Failure::Other(
                    "membership requests go to the metadata group".into(),
                ));
            }
            return match self.on_meta_leader(request).await {
                Ok(()) => Reply::Done,
                Err(ClusterError::Propose(ProposeError::NoLeader)) => {
                    Reply::Failed(Failure::NotLeader(None))
                }
                Err(ClusterError::Refused(reason)) => Reply::Failed(Failure::Refused(reason)),
                Err(e) => Reply::Failed(Failure::Other(e.to_string())),
            };
        }
        let Some(hosted) = self.hosted(group) else {
            tracing::trace!(?from, %group, "request for a group not hosted here");
            return Reply::Failed(Failure::NotHosted);
        };
        let fatal = |e: String| Reply::Failed(Failure::Other(e));
        match request {
            Request::AppendEntries(r) => match hosted.raft.append_entries(r).await {
                Ok(resp) => Reply::AppendEntries(resp),
                Err(e) => fatal(e.to_string()),
            },
            Request::Vote(r) => match hosted.raft.vote(r).await {
                Ok(resp) => Reply::Vote(resp),
                Err(e) => fatal(e.to_string()),
            },
            Request::InstallSnapshot(r) => match hosted.raft.install_snapshot(r).await {
                Ok(resp) => Reply::InstallSnapshot(resp),
                Err(e) => fatal(e.to_string()),
            },
            // Stopped here for good (a storage error): the caller tries another replica.
            Request::Propose(_) if !hosted.is_running() => Reply::Failed(Failure::NotHosted),
            Request::Propose(cmd) => match hosted.write_local(cmd).await {
                Ok(r) => Reply::Proposed(r),
                Err(LocalWriteError::NotLeader(l)) => Reply::Failed(Failure::NotLeader(l)),
                Err(LocalWriteError::Failed(ProposeError::Shutdown)) => {
                    Reply::Failed(Failure::ShuttingDown)
                }
                Err(LocalWriteError::Failed(e)) => fatal(e.to_string()),
            },
            Request::Elect => match hosted.raft.trigger().elect().await {
                Ok(()) => Reply::Done,
                Err(e) => fatal(e.to_string()),
            },
            Request::TransferLeadership { to } => {
                match super::transfer_from_here(&self, &hosted, to).await {
                    Ok(()) => Reply::Done,
                    Err(e) => fatal(e.to_string()),
                }
            }
            Request::HoldElections { ms } => {
                hosted.hold_elections(ms);
                Reply::Done
            }
            Request::Info | Request::Join { .. } | Request::Leave { .. } | Request::StepDown => {
                unreachable!("answered above")
            }
        }
    }
}

/// Answers peers' requests on behalf of the core (weakly held: a stopped cluster answers
/// nothing).
pub(crate) struct Dispatcher {
    pub(crate) core: Weak<Core>,
}

impl Handler for Dispatcher {
    fn handle(
        &self,
        from: Option<NodeId>,
        group: GroupId,
        request: Request,
    ) -> BoxFuture<'static, Reply> {
        match self.core.upgrade() {
            Some(core) => Box::pin(core.handle(from, group, request)),
            None => Box::pin(async { Reply::Failed(Failure::ShuttingDown) }),
        }
    }
}
