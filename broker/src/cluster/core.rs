//! The state behind a [`Cluster`](super::Cluster) handle: hosted groups, the metadata
//! machine, the transport, and the answers to peers' requests.

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock, RwLock, Weak};

use futures_util::future::BoxFuture;
use openraft::error::{ClientWriteError, RaftError};

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

/// In `<data>/cluster`: the id of the node this data belongs to, written once the node was
/// let in (a node the cluster refused leaves none, and may start again under another id).
pub(crate) const NODE_ID_FILE: &str = "node-id";

/// Refuses to start node `node` on the cluster data of another node: its votes and log are
/// that node's.
pub(crate) fn check_owner(dir: &std::path::Path, node: NodeId) -> Result<(), ClusterError> {
    let path = dir.join(NODE_ID_FILE);
    let Ok(text) = std::fs::read_to_string(&path) else {
        return Ok(());
    };
    match text.trim().parse::<NodeId>() {
        Ok(owner) if owner == node => Ok(()),
        Ok(owner) => Err(ClusterError::Config(format!(
            "{} belongs to node {owner}: start it with --node-id {owner}",
            dir.display()
        ))),
        Err(_) => Err(ClusterError::Config(format!(
            "{} does not hold a node id",
            path.display()
        ))),
    }
}

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
    pub(super) admitting: tokio::sync::Mutex<()>,
    /// Whether this node answers its groups' Raft requests. Closed while a node with a new
    /// data directory has not been told that it may join under its id: a wiped member would
    /// otherwise vote and acknowledge as the member it no longer is.
    admitted: AtomicBool,
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
pub(super) fn write_err(e: RaftError<NodeId, ClientWriteError<NodeId, NodeInfo>>) -> ClusterError {
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
            admitted: AtomicBool::new(false),
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

    /// Whether this node answers Raft requests (see `admitted`).
    pub(crate) fn is_admitted(&self) -> bool {
        self.admitted.load(Ordering::Acquire)
    }

    /// Opens the gate, and records in the data directory which node it belongs to (see
    /// [`check_owner`]). A failure to record is logged: the node serves all the same.
    pub(crate) fn admit_here(&self) {
        self.admitted.store(true, Ordering::Release);
        let path = self.dir.join(NODE_ID_FILE);
        if !path.exists() {
            if let Err(e) = std::fs::write(&path, format!("{}\n", self.node_id)) {
                tracing::warn!(path = %path.display(), error = %e, "could not record the node id");
            }
        }
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
        if matches!(
            request,
            Request::Join { .. } | Request::Leave { .. } | Request::MayJoin { .. }
        ) {
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
        let raft_rpc = matches!(
            request,
            Request::AppendEntries(_) | Request::Vote(_) | Request::InstallSnapshot(_)
        );
        if raft_rpc && !self.is_admitted() {
            // Not one of the group's replicas yet, as far as its peers should know.
            return Reply::Failed(Failure::NotHosted);
        }
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
            Request::Info
            | Request::Join { .. }
            | Request::Leave { .. }
            | Request::MayJoin { .. }
            | Request::StepDown => {
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
