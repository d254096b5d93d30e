//! The cluster: Raft groups (openraft) over Sluice's own raft log, one TCP transport per
//! node, the metadata group (members, replicated-queue catalog), and the operations
//! operators and the broker use. This module is the cluster's one door.
//!
//! # Layout
//! ```text
//! <data>/cluster/groups/<group id:016x>/log/        the group's raft log (storage::RaftLog)
//! <data>/cluster/groups/<group id:016x>/snapshot    its latest snapshot (meta + machine bytes)
//! ```
//! - [`types`]: ids, addresses, openraft's type config, errors.
//! - `codec`: the one bincode configuration, frames (`u32` length + body).
//! - `rpc` / `transport`: what nodes say to each other, and the connections that carry it.
//! - `network`: openraft's RPCs over the transport, per group.
//! - `log_store` / `state_machine`: openraft's storage over `RaftLog` and a [`GroupMachine`].
//! - `group`: a hosted group, proposals (forwarded to the leader), the leadership watch.
//! - `meta`: the metadata machine, [`placement`].
//! - `repair`: replica repair: the metadata leader re-places a removed member's replicas,
//!   each queue group's leader makes its voters the catalog's replicas.
//! - `core`: the shared state and the answers to peers.
//! - [`admin`]: the operators' wire requests (protocol.md §20).

pub mod admin;
mod codec;
mod core;
mod group;
mod log_store;
mod membership;
mod meta;
mod network;
mod repair;
mod rpc;
mod state_machine;
mod topology;
mod transport;
mod types;

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

pub use codec::{decode, encode, DecodeError, MAX_COMMAND_BYTES};
pub use group::{GroupClient, GroupHandle, GroupStatus, ReplicaStatus};
pub use meta::{placement, MetaCommand, MetaEvent, MetaResponse, QueueRecord};
pub use repair::replace_replicas;
pub use state_machine::{Committed, GroupMachine};
pub use topology::{BindingRecord, ExchangeRecord, TopologyOutcome, TopologyRecords};
pub use types::{
    ClusterError, Command, GroupId, Leadership, NodeId, NodeInfo, ProposeError, Response,
    TypeConfig,
};

/// What a group's machine answers when it cannot follow its log (the group stops here).
pub use state_machine::MachineError;

use self::core::{Core, Dispatcher};
use crate::storage::Durability;
use meta::MetaMachine;
use rpc::{Failure, Reply, Request};
use transport::Transport;

/// Raft timing: a follower that heard nothing from its leader for a random time between half
/// the election timeout and all of it campaigns; openraft 0.9 makes it wait the leader's lease
/// (the whole timeout) first, so a dead leader is replaced after 1.5 to 2 timeouts plus the
/// vote. Heartbeats go every tenth of the timeout, so a few lost ones start nothing, but not
/// more often than every `HEARTBEAT_FLOOR`: every group's leader sends them to each follower,
/// so their cost grows with the number of queues (about 2 × replicas RPCs per queue per
/// heartbeat across the cluster), and at most a third of the shortest election window.
const HEARTBEATS_PER_TIMEOUT: u64 = 10;
const HEARTBEAT_FLOOR_MS: u64 = 150;

/// Pause between attempts to join (or re-announce to) the cluster, doubling up to the max.
const JOIN_RETRY_MIN: Duration = Duration::from_millis(200);
const JOIN_RETRY_MAX: Duration = Duration::from_secs(5);
/// How long a leadership transfer may take before it is reported as failed.
const TRANSFER_TIMEOUT: Duration = Duration::from_secs(10);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(40);

/// How this node takes part in the cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterConfig {
    pub node_id: NodeId,
    /// The cluster listener (`--cluster-listen`); port 0 picks a free one.
    pub listen: SocketAddr,
    /// The address peers dial (`--cluster-advertise`); default: the bound listener address.
    pub advertise: Option<String>,
    /// Members to ask to join through (`--join`); empty: bootstrap a new cluster when the
    /// data directory holds none.
    pub join: Vec<String>,
    /// A snapshot is taken every this many applied log entries (per group).
    pub snapshot_every: u64,
    /// The election timeout's maximum (`--cluster-election-timeout-ms`).
    pub election_timeout: Duration,
}

impl ClusterConfig {
    pub const DEFAULT_SNAPSHOT_EVERY: u64 = 10_000;

    pub fn new(node_id: NodeId, listen: SocketAddr) -> ClusterConfig {
        ClusterConfig {
            node_id,
            listen,
            advertise: None,
            join: Vec::new(),
            snapshot_every: Self::DEFAULT_SNAPSHOT_EVERY,
            election_timeout: Duration::from_millis(1000),
        }
    }

    fn raft_config(&self) -> Result<openraft::Config, ClusterError> {
        let election_max = (self.election_timeout.as_millis() as u64).max(2);
        openraft::Config {
            cluster_name: "sluice".into(),
            heartbeat_interval: (election_max / HEARTBEATS_PER_TIMEOUT)
                .max(HEARTBEAT_FLOOR_MS)
                .min(election_max / 6)
                .max(1),
            election_timeout_min: election_max / 2,
            election_timeout_max: election_max,
            install_snapshot_timeout: 10_000,
            max_payload_entries: 64,
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(self.snapshot_every.max(1)),
            snapshot_max_chunk_size: 1 << 20,
            // Keep a little log behind a snapshot so a briefly lagging follower catches up
            // from the log rather than by a whole snapshot.
            max_in_snapshot_log_to_keep: (self.snapshot_every / 2).min(1000),
            purge_batch_size: 64,
            ..Default::default()
        }
        .validate()
        .map_err(|e| ClusterError::Config(e.to_string()))
    }
}

/// A member of the cluster, as this node knows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct MemberStatus {
    pub id: NodeId,
    /// Votes in the metadata group (a node being added is a learner first).
    pub voter: bool,
    pub cluster_addr: String,
    pub client_addr: String,
    pub http_addr: Option<String>,
}

/// The cluster as this node sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ClusterStatus {
    pub node_id: NodeId,
    /// This node votes in the metadata group.
    pub member: bool,
    pub metadata_leader: Option<NodeId>,
    pub metadata_term: u64,
    pub members: Vec<MemberStatus>,
    /// Every group hosted on this node, the metadata group first.
    pub groups: Vec<GroupStatus>,
}

/// This node's part in the cluster; cheap to clone.
#[derive(Clone)]
pub struct Cluster {
    inner: Arc<Inner>,
}

struct Inner {
    core: Arc<Core>,
    meta_events: Mutex<Option<mpsc::UnboundedReceiver<MetaEvent>>>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    /// Set once the metadata replica applied its whole log after the start (see `is_ready`).
    caught_up: AtomicBool,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("node_id", &self.inner.core.node_id)
            .finish()
    }
}

impl Cluster {
    /// Starts the node's cluster part: the listener, the metadata group, and then either a new
    /// one-node cluster (empty data, no `join`), a join through `config.join`, or (data from
    /// an earlier run) a refresh of this node's addresses with the leader. `local`'s
    /// `cluster_addr` is replaced by the advertised address.
    pub async fn start(
        config: ClusterConfig,
        data_dir: &Path,
        mut local: NodeInfo,
        durability: Durability,
    ) -> Result<Cluster, ClusterError> {
        let dir = data_dir.join("cluster");
        let groups = dir.join("groups");
        std::fs::create_dir_all(&groups)
            .map_err(|e| ClusterError::io(format!("creating {}", groups.display()), e))?;
        core::check_owner(&dir, config.node_id)?;
        let listener = TcpListener::bind(config.listen).await.map_err(|e| {
            ClusterError::io(format!("binding the cluster listener {}", config.listen), e)
        })?;
        let bound = listener
            .local_addr()
            .map_err(|e| ClusterError::io("reading the cluster listener's address", e))?;
        local.cluster_addr = config
            .advertise
            .clone()
            .unwrap_or_else(|| bound.to_string());
        let raft_config = Arc::new(config.raft_config()?);
        let (meta, events) = MetaMachine::new();
        let core = Arc::new(Core::new(
            config.node_id,
            local.clone(),
            dir,
            durability,
            Arc::clone(&meta),
            raft_config,
        ));
        let dispatcher = Arc::new(Dispatcher {
            core: Arc::downgrade(&core),
        });
        let transport = Transport::start(config.node_id, listener, dispatcher)
            .map_err(|e| ClusterError::io("starting the cluster transport", e))?;
        core.set_transport(transport);
        let meta_group = core.open_group(GroupId::META, meta).await?;
        let initialised = meta_group
            .raft
            .is_initialized()
            .await
            .map_err(|e| ClusterError::Raft(e.to_string()))?;
        // A node with a new data directory that joins answers no Raft request before the
        // cluster said it may join under its id (see `announce`); any other may at once.
        if initialised || config.join.is_empty() {
            core.admit_here();
        }
        if !initialised && config.join.is_empty() {
            tracing::info!(node = config.node_id, "bootstrapping a new cluster");
            meta_group
                .raft
                .initialize(BTreeMap::from([(config.node_id, local)]))
                .await
                .map_err(|e| ClusterError::Raft(e.to_string()))?;
        }
        let announce = tokio::spawn(announce(Arc::clone(&core), config.join.clone()));
        let placement = tokio::spawn(repair::placement_task(Arc::downgrade(&core)));
        Ok(Cluster {
            inner: Arc::new(Inner {
                core,
                meta_events: Mutex::new(Some(events)),
                tasks: Mutex::new(vec![announce, placement]),
                caught_up: AtomicBool::new(false),
            }),
        })
    }

    pub fn node_id(&self) -> NodeId {
        self.inner.core.node_id
    }

    /// The cluster listener's bound address.
    pub fn listen_addr(&self) -> SocketAddr {
        self.inner.core.transport().listen_addr()
    }

    /// This node's addresses, as advertised to the others.
    pub fn local(&self) -> &NodeInfo {
        &self.inner.core.local
    }

    pub fn status(&self) -> ClusterStatus {
        let core = &self.inner.core;
        let membership = core.meta_membership().unwrap_or_default();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        let mut ids: BTreeSet<NodeId> = membership.nodes().map(|(id, _)| *id).collect();
        ids.extend(core.meta.members().keys());
        let members = ids
            .into_iter()
            .filter_map(|id| {
                let info = core.node_info(id)?;
                Some(MemberStatus {
                    id,
                    voter: voters.contains(&id),
                    cluster_addr: info.cluster_addr,
                    client_addr: info.client_addr,
                    http_addr: info.http_addr,
                })
            })
            .collect();
        let leadership = self.meta_leadership();
        let leadership = *leadership.borrow();
        ClusterStatus {
            node_id: core.node_id,
            member: voters.contains(&core.node_id),
            metadata_leader: leadership.leader,
            metadata_term: leadership.term,
            members,
            groups: core.hosted_all().iter().map(|g| g.status()).collect(),
        }
    }

    /// A member that knows the metadata leader, and (once, after its start) applied every
    /// metadata entry its log held: what `/readyz` waits for. Until then a restarted node
    /// would answer with the catalog and exchanges of before its stop.
    pub fn is_ready(&self) -> bool {
        let core = &self.inner.core;
        let member = core
            .meta_membership()
            .is_some_and(|m| m.voter_ids().any(|v| v == core.node_id));
        if !member || self.meta_leadership().borrow().leader.is_none() {
            return false;
        }
        if self.inner.caught_up.load(Ordering::Acquire) {
            return true;
        }
        let caught_up = core.hosted(GroupId::META).is_some_and(|meta| {
            let m = meta.raft.metrics();
            let m = m.borrow();
            m.last_applied.map(|l| l.index) >= m.last_log_index
        });
        if caught_up {
            self.inner.caught_up.store(true, Ordering::Release);
        }
        caught_up
    }

    /// Who leads the metadata group.
    pub fn meta_leadership(&self) -> watch::Receiver<Leadership> {
        self.inner
            .core
            .hosted(GroupId::META)
            .map(|g| g.leadership())
            .unwrap_or_else(|| watch::channel(Leadership::default()).1)
    }

    pub fn node(&self, id: NodeId) -> Option<NodeInfo> {
        self.inner.core.node_info(id)
    }

    /// The voting members of the cluster.
    pub fn members(&self) -> Vec<NodeId> {
        self.inner
            .core
            .meta_membership()
            .map(|m| m.voter_ids().collect())
            .unwrap_or_default()
    }

    /// Queue leaderships per member, for [`placement`]: each catalogued queue counts for
    /// its current leader where this node hosts it, else for its first replica.
    pub fn leaders_per_node(&self) -> HashMap<NodeId, usize> {
        let core = &self.inner.core;
        let mut counts = HashMap::new();
        for record in core.meta.catalog() {
            let leader = core
                .hosted(GroupId(record.uid))
                .and_then(|g| g.leadership().borrow().leader)
                .or_else(|| record.replicas.first().copied());
            if let Some(l) = leader {
                *counts.entry(l).or_insert(0) += 1;
            }
        }
        counts
    }

    /// Hosts group `id` on this node. `initialise`: this node creates it with `members`
    /// (the first replica does; the others wait to be contacted by its leader).
    pub async fn host_group(
        &self,
        id: GroupId,
        members: Vec<NodeId>,
        machine: Arc<dyn GroupMachine>,
        initialise: bool,
    ) -> Result<GroupHandle, ClusterError> {
        let core = &self.inner.core;
        if id == GroupId::META {
            return Err(ClusterError::AlreadyHosted(id));
        }
        let nodes = members
            .iter()
            .map(|n| {
                core.node_info(*n)
                    .map(|i| (*n, i))
                    .ok_or(ClusterError::UnknownNode(*n))
            })
            .collect::<Result<BTreeMap<_, _>, _>>()?;
        let group = core.open_group(id, machine).await?;
        if initialise {
            let started = async {
                if !group
                    .raft
                    .is_initialized()
                    .await
                    .map_err(|e| ClusterError::Raft(e.to_string()))?
                {
                    group
                        .raft
                        .initialize(nodes)
                        .await
                        .map_err(|e| ClusterError::Raft(e.to_string()))?;
                }
                Ok::<_, ClusterError>(())
            };
            if let Err(e) = started.await {
                core.unhost(id);
                group.stop().await;
                return Err(e);
            }
        }
        Ok(GroupHandle {
            core: Arc::clone(core),
            group,
        })
    }

    /// The handle of a group hosted here.
    pub fn hosted_group(&self, id: GroupId) -> Option<GroupHandle> {
        let group = self.inner.core.hosted(id)?;
        Some(GroupHandle {
            core: Arc::clone(&self.inner.core),
            group,
        })
    }

    /// Stops group `id` on this node and deletes its directory.
    pub async fn drop_group(&self, id: GroupId) -> Result<(), ClusterError> {
        if id == GroupId::META {
            return Err(ClusterError::Refused(
                "the metadata group cannot be dropped".into(),
            ));
        }
        let core = &self.inner.core;
        let group = core.unhost(id).ok_or(ClusterError::NotHosted(id))?;
        group.stop().await;
        let dir = group.dir.clone();
        tokio::task::spawn_blocking(move || std::fs::remove_dir_all(&dir))
            .await
            .map_err(|e| ClusterError::Storage(e.to_string()))?
            .map_err(|e| ClusterError::io(format!("removing the directory of {id}"), e))
    }

    /// A client for any group, hosted here or not: proposals go to its leader over the
    /// cluster transport.
    pub fn group(&self, id: GroupId) -> GroupClient {
        GroupClient {
            core: Arc::clone(&self.inner.core),
            id,
        }
    }

    pub async fn propose_meta(&self, cmd: MetaCommand) -> Result<MetaResponse, ProposeError> {
        self.inner.core.propose_meta(&cmd).await
    }

    /// Events the metadata machine applied, in order (taken once, by the broker).
    pub fn take_meta_events(&self) -> Option<mpsc::UnboundedReceiver<MetaEvent>> {
        self.inner
            .meta_events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
    }

    /// Whether this node may drop the group of `record` (re-placed without this node): the
    /// group no longer lists it, or this node left the cluster.
    pub fn may_drop_group(&self, record: &QueueRecord) -> bool {
        repair::may_drop(&self.inner.core, record)
    }

    /// Replicated queues known to the metadata group.
    pub fn catalog(&self) -> Vec<QueueRecord> {
        self.inner.core.meta.catalog()
    }

    /// The cluster-wide exchanges and bindings, as this node's metadata replica has them.
    pub fn topology(&self) -> TopologyRecords {
        self.inner.core.meta.topology()
    }

    /// Changes whenever this node's metadata replica changed the exchanges or bindings.
    pub fn topology_changes(&self) -> watch::Receiver<u64> {
        self.inner.core.meta.subscribe_topology()
    }

    /// Adds node `id` as a member. `info.cluster_addr` must reach it; when the other
    /// addresses are empty they are asked of the node itself.
    pub async fn add_node(&self, id: NodeId, mut info: NodeInfo) -> Result<(), ClusterError> {
        let core = &self.inner.core;
        if info.client_addr.is_empty() {
            let reply = core
                .transport()
                .call_addr(
                    &info.cluster_addr,
                    GroupId::META,
                    Request::Info,
                    REQUEST_TIMEOUT,
                )
                .await
                .map_err(|e| ClusterError::Propose(ProposeError::Unreachable(e.to_string())))?;
            match reply {
                Reply::Info { node, info: theirs } if node == id => {
                    info = NodeInfo {
                        cluster_addr: info.cluster_addr,
                        ..theirs
                    }
                }
                Reply::Info { node, .. } => {
                    return Err(ClusterError::Refused(format!(
                        "{} is node {node}, not node {id}",
                        info.cluster_addr
                    )))
                }
                other => return Err(ClusterError::Refused(format!("unexpected reply {other:?}"))),
            }
        }
        core.on_meta_leader(Request::Join { node: id, info }).await
    }

    pub async fn remove_node(&self, id: NodeId) -> Result<(), ClusterError> {
        self.inner
            .core
            .on_meta_leader(Request::Leave { node: id })
            .await
    }

    /// Moves the leadership of `group` to node `to` (a voter of it). openraft 0.9 has no
    /// transfer of its own: the leader pauses its heartbeats and asks `to` to campaign at once,
    /// which wins because its log is up to date; the outcome is checked, not assumed.
    pub async fn transfer_leadership(
        &self,
        group: GroupId,
        to: NodeId,
    ) -> Result<(), ClusterError> {
        let core = &self.inner.core;
        let hosted = core.hosted(group).ok_or(ClusterError::NotHosted(group))?;
        // Right after an election a follower may not know the leader yet: give it a moment.
        let mut leadership = hosted.leadership();
        let leader = tokio::time::timeout(
            TRANSFER_TIMEOUT,
            leadership.wait_for(|l| l.leader.is_some()),
        )
        .await
        .ok()
        .and_then(|l| l.ok().and_then(|l| l.leader));
        match leader {
            Some(l) if l == to => Ok(()),
            Some(l) if l == core.node_id => transfer_from_here(core, &hosted, to).await,
            Some(l) => {
                let info = core.node_info(l).ok_or(ClusterError::UnknownNode(l))?;
                let reply = core
                    .transport()
                    .call(
                        l,
                        &info.cluster_addr,
                        group,
                        Request::TransferLeadership { to },
                        TRANSFER_TIMEOUT * 3,
                    )
                    .await
                    .map_err(|e| ClusterError::Propose(ProposeError::Unreachable(e.to_string())))?;
                match reply {
                    Reply::Done => Ok(()),
                    Reply::Failed(f) => Err(ClusterError::Refused(f.to_string())),
                    other => Err(ClusterError::Refused(format!("unexpected reply {other:?}"))),
                }
            }
            None => Err(ClusterError::Propose(ProposeError::NoLeader)),
        }
    }

    /// Stops every group and the transport.
    pub async fn shutdown(&self) {
        let core = &self.inner.core;
        core.begin_stop();
        for task in self
            .inner
            .tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
        {
            task.abort();
        }
        let groups = core.hosted_all();
        futures_util::future::join_all(groups.iter().map(|g| g.stop())).await;
        core.transport().shutdown();
    }
}

pub(crate) async fn transfer_from_here(
    core: &Arc<Core>,
    hosted: &Arc<group::HostedGroup>,
    to: NodeId,
) -> Result<(), ClusterError> {
    let info = core.node_info(to).ok_or(ClusterError::UnknownNode(to))?;
    let others: Vec<(NodeId, NodeInfo)> = {
        let m = hosted.raft.metrics();
        let m = m.borrow();
        let membership = m.membership_config.membership();
        if !membership.voter_ids().any(|v| v == to) {
            return Err(ClusterError::Refused(format!(
                "node {to} is not a voter of {}",
                hosted.id
            )));
        }
        membership
            .voter_ids()
            .filter(|v| *v != to && *v != core.node_id)
            .filter_map(|v| Some((v, core.node_info(v)?)))
            .collect()
    };
    // From here this leader proposes nothing (its proposals wait for the next leader): its
    // log stops growing, so `to` can match it, and no append renews the followers' leases.
    let handing_over = hosted.begin_hand_over();
    // Only a replica with the whole log can win: wait (bounded) until `to` has matched the
    // leader's last entry (a node that just restarted may still be catching up).
    let mut metrics = hosted.raft.metrics();
    let caught_up = tokio::time::timeout(
        TRANSFER_TIMEOUT,
        metrics.wait_for(|m| {
            let last = m.last_log_index;
            m.replication
                .as_ref()
                .and_then(|r| r.get(&to))
                .is_some_and(|matched| matched.map(|l| l.index) == last)
        }),
    )
    .await
    .is_ok_and(|r| r.is_ok());
    if !caught_up {
        return Err(ClusterError::Timeout(format!(
            "node {to} did not catch up with the leader's log"
        )));
    }
    // Every append renews its follower's lease on this leader, and a follower within its
    // lease votes for nobody: give the other voters (bounded: one may be down) the time to
    // catch up too, so that no append reaches them once `to` campaigns.
    let lagging: Vec<NodeId> = others.iter().map(|(n, _)| *n).collect();
    let _ = tokio::time::timeout(
        TRANSFER_TIMEOUT / 2,
        metrics.wait_for(|m| {
            let last = m.last_log_index;
            let replication = m.replication.as_ref();
            lagging.iter().all(|n| {
                replication
                    .and_then(|r| r.get(n))
                    .is_some_and(|matched| matched.map(|l| l.index) == last)
            })
        }),
    )
    .await;
    // Every voter but `to` holds its elections, and this leader stops its heartbeats: once
    // the followers' leader leases run out, `to` is the only candidate, and wins.
    let hold_ms = TRANSFER_TIMEOUT.as_millis() as u64 + 2000;
    let hold = |ms: u64| {
        let others = others.clone();
        async move {
            for (node, info) in &others {
                let _ = core
                    .transport()
                    .call(
                        *node,
                        &info.cluster_addr,
                        hosted.id,
                        Request::HoldElections { ms },
                        Duration::from_secs(1),
                    )
                    .await;
            }
        }
    };
    hold(hold_ms).await;
    hosted.hold_elections(hold_ms);
    hosted.raft.runtime_config().heartbeat(false);
    let mut leadership = hosted.leadership();
    let outcome = tokio::time::timeout(TRANSFER_TIMEOUT, async {
        loop {
            let _ = core
                .transport()
                .call(
                    to,
                    &info.cluster_addr,
                    hosted.id,
                    Request::Elect,
                    Duration::from_secs(1),
                )
                .await;
            let moved = tokio::time::timeout(
                Duration::from_millis(500),
                leadership.wait_for(|l| l.leader.is_some_and(|l| l != core.node_id)),
            )
            .await;
            if let Ok(Ok(l)) = moved {
                return l.leader;
            }
        }
    })
    .await;
    drop(handing_over);
    hold(0).await;
    match outcome {
        Ok(Some(l)) if l == to => Ok(()),
        Ok(other) => Err(ClusterError::Refused(format!(
            "leadership moved to {other:?} instead of node {to}"
        ))),
        Err(_) => Err(ClusterError::Timeout(format!(
            "node {to} did not take the leadership"
        ))),
    }
}

/// Joins the cluster (a fresh node with `join` addresses) or refreshes this node's
/// addresses with the metadata leader (a restart: the client port may have changed), then
/// ends. Bootstrapping nodes record themselves the same way once they lead.
async fn announce(core: Arc<Core>, join: Vec<String>) {
    if !core.is_admitted() {
        let node = core.node_id;
        if !ask_until_answered(&core, &join, || Request::MayJoin { node }).await {
            return;
        }
        core.admit_here();
    }
    let request = || Request::Join {
        node: core.node_id,
        info: core.local.clone(),
    };
    if ask_until_answered(&core, &join, request).await {
        tracing::info!(node = core.node_id, "member of the cluster");
    }
}

/// Sends `request` to the metadata leader (through `join` or the members known here) until
/// it is answered: true when done, false when refused (logged) or stopping.
async fn ask_until_answered(
    core: &Arc<Core>,
    join: &[String],
    request: impl Fn() -> Request,
) -> bool {
    let mut delay = JOIN_RETRY_MIN;
    loop {
        if core.is_stopping() {
            return false;
        }
        match announce_once(core, join, &request).await {
            Ok(()) => return true,
            // A refusal is the cluster's answer, not a failure to reach it (this id was
            // removed, say): asking again would get the same.
            Err(ClusterError::Refused(reason)) => {
                tracing::error!(node = core.node_id, %reason, "the cluster refused this node");
                return false;
            }
            Err(e) => tracing::debug!(error = %e, "joining the cluster: retrying"),
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(JOIN_RETRY_MAX);
    }
}

async fn announce_once(
    core: &Arc<Core>,
    join: &[String],
    request: &impl Fn() -> Request,
) -> Result<(), ClusterError> {
    let meta = core
        .hosted(GroupId::META)
        .ok_or(ClusterError::NotHosted(GroupId::META))?;
    if meta.leader().is_some() {
        return core.on_meta_leader(request()).await;
    }
    // No leader known here (a fresh node, or an election under way): ask any member we know
    // of, which forwards to its leader.
    let mut addrs: Vec<String> = core
        .meta_membership()
        .map(|m| {
            m.nodes()
                .filter(|(id, _)| **id != core.node_id)
                .map(|(_, n)| n.cluster_addr.clone())
                .collect()
        })
        .unwrap_or_default();
    addrs.extend(join.iter().cloned());
    let mut last = ClusterError::Propose(ProposeError::NoLeader);
    for addr in addrs {
        match core
            .transport()
            .call_addr(&addr, GroupId::META, request(), REQUEST_TIMEOUT)
            .await
        {
            Ok(Reply::Done) => return Ok(()),
            Ok(Reply::Failed(Failure::NotLeader(_))) => {
                last = ClusterError::Propose(ProposeError::NoLeader)
            }
            Ok(Reply::Failed(Failure::Refused(reason))) => {
                return Err(ClusterError::Refused(format!("{addr}: {reason}")))
            }
            // Not hosted there yet, stopping, or failing this time: another member, or a
            // later try, may do.
            Ok(other) => {
                last =
                    ClusterError::Propose(ProposeError::Unreachable(format!("{addr}: {other:?}")))
            }
            Err(e) => last = ClusterError::Propose(ProposeError::Unreachable(e.to_string())),
        }
    }
    Err(last)
}
