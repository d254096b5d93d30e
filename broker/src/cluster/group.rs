//! A group hosted on this node (one openraft instance over the shared transport), the
//! handles other code proposes through, and the leadership watch.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{ClientWriteError, RaftError};
use serde::Serialize;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::core::Core;
use super::rpc::{Failure, Reply, Request};
use super::types::{Command, GroupId, Leadership, NodeId, NodeInfo, ProposeError, Raft};

/// How long a proposal may take, leader elections and forwarding included.
const PROPOSE_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause before retrying a proposal that found no leader.
const PROPOSE_RETRY: Duration = Duration::from_millis(100);

/// One openraft instance and what watches it.
pub(crate) struct HostedGroup {
    pub(crate) id: GroupId,
    pub(crate) raft: Raft,
    pub(crate) dir: PathBuf,
    leadership: watch::Receiver<Leadership>,
    watcher: JoinHandle<()>,
    /// Tasks that live as long as the group (its replica repair), aborted when it stops.
    tasks: std::sync::Mutex<Vec<JoinHandle<()>>>,
    /// Set while this leader hands the group over: it proposes nothing (its appends would
    /// renew the followers' leader leases and keep its successor from being elected).
    handing_over: AtomicBool,
    /// Bumped by each hold of elections: a hold's timer lets elections again only if no
    /// later hold replaced it.
    election_hold: Arc<AtomicU64>,
    /// Set once this node handed the group over for its removal: it starts no election in
    /// the group again (until it restarts), whatever later holds and releases say.
    stepped_down: AtomicBool,
}

impl std::fmt::Debug for HostedGroup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostedGroup")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl HostedGroup {
    pub(crate) fn new(id: GroupId, raft: Raft, dir: PathBuf, local: NodeId) -> HostedGroup {
        let (tx, rx) = watch::channel(Leadership::default());
        let watcher = tokio::spawn(watch_leadership(id, raft.clone(), tx, local));
        HostedGroup {
            id,
            raft,
            dir,
            leadership: rx,
            watcher,
            tasks: std::sync::Mutex::new(Vec::new()),
            handing_over: AtomicBool::new(false),
            election_hold: Arc::new(AtomicU64::new(0)),
            stepped_down: AtomicBool::new(false),
        }
    }

    /// Stops this replica from starting elections for `ms` milliseconds (0: lets it again
    /// now). The pause ends by itself, so a transfer whose leader dies midway leaves no node
    /// unable to campaign for long; a later hold replaces an earlier one.
    pub(crate) fn hold_elections(&self, ms: u64) {
        let generation = self.election_hold.fetch_add(1, Ordering::AcqRel) + 1;
        if self.stepped_down.load(Ordering::Acquire) {
            self.raft.runtime_config().elect(false);
            return;
        }
        if ms == 0 {
            self.raft.runtime_config().elect(true);
            return;
        }
        self.raft.runtime_config().elect(false);
        let raft = self.raft.clone();
        let hold = Arc::clone(&self.election_hold);
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            // A later hold, or a step-down (which bumps the generation too), replaced it.
            if hold.load(Ordering::Acquire) == generation {
                raft.runtime_config().elect(true);
            }
        });
    }

    /// This node handed the group over because it is being removed: it starts no election
    /// in it again, so it cannot win back a group that is replacing it.
    pub(crate) fn step_down_for_good(&self) {
        self.stepped_down.store(true, Ordering::Release);
        self.hold_elections(0);
    }

    /// Whether this leader is handing the group over (see [`Self::begin_hand_over`]).
    pub(crate) fn is_handing_over(&self) -> bool {
        self.handing_over.load(Ordering::Acquire)
    }

    /// Stops proposing here until the returned guard is dropped, and stops heartbeats; the
    /// guard restores both however the hand-over ends (cancelled included).
    pub(crate) fn begin_hand_over(&self) -> HandOver<'_> {
        self.handing_over.store(true, Ordering::Release);
        HandOver { group: self }
    }

    /// Ties `task` to the group: it is aborted when the group stops.
    pub(crate) fn keep_task(&self, task: JoinHandle<()>) {
        self.tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(task);
    }

    pub(crate) fn leadership(&self) -> watch::Receiver<Leadership> {
        self.leadership.clone()
    }

    /// False once openraft stopped the group here: shut down, or a storage error of its log
    /// or state machine (then for good: the other replicas serve it).
    pub(crate) fn is_running(&self) -> bool {
        is_running(&self.raft.metrics().borrow())
    }

    pub(crate) async fn stop(&self) {
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!(group = %self.id, error = %e, "raft did not stop cleanly");
        }
        self.watcher.abort();
        for task in self
            .tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
        {
            task.abort();
        }
    }

    /// The leader this node knows of, with its addresses.
    pub(crate) fn leader(&self) -> Option<(NodeId, NodeInfo)> {
        let m = self.raft.metrics();
        let m = m.borrow();
        let id = m.current_leader?;
        let info = m.membership_config.membership().get_node(&id).cloned()?;
        Some((id, info))
    }

    pub(crate) fn status(&self) -> GroupStatus {
        let m = self.raft.metrics();
        let m = m.borrow();
        let membership = m.membership_config.membership();
        let last = m.last_log_index.unwrap_or(0);
        let replicas = membership
            .voter_ids()
            .chain(membership.learner_ids())
            .map(|node| {
                let matched = match &m.replication {
                    Some(rep) => rep.get(&node).map(|l| l.map(|l| l.index).unwrap_or(0)),
                    None if node == m.id => m.last_log_index,
                    None => None,
                };
                ReplicaStatus {
                    node,
                    voter: membership.voter_ids().any(|v| v == node),
                    matched,
                    lag: matched.map(|i| last.saturating_sub(i)),
                }
            })
            .collect();
        GroupStatus {
            id: self.id.0,
            // A stopped group's last metrics still name its last leader.
            leader: m.current_leader.filter(|_| is_running(&m)),
            term: m.current_term,
            last_log_index: m.last_log_index,
            last_applied: m.last_applied.map(|l| l.index),
            snapshot_index: m.snapshot.map(|l| l.index),
            replicas,
        }
    }

    /// Proposes here; `Err(Some(leader))` / `Err(None)` when this node is not the leader.
    pub(crate) async fn write_local(&self, command: Vec<u8>) -> Result<Vec<u8>, LocalWriteError> {
        if self.is_handing_over() {
            return Err(LocalWriteError::NotLeader(None));
        }
        match self.raft.client_write(Command(command)).await {
            Ok(resp) => Ok(resp.data.0),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                Err(LocalWriteError::NotLeader(f.leader_id.zip(f.leader_node)))
            }
            Err(RaftError::APIError(e)) => {
                Err(LocalWriteError::Failed(ProposeError::Fatal(e.to_string())))
            }
            Err(RaftError::Fatal(e)) => Err(LocalWriteError::Failed(match e {
                openraft::error::Fatal::Stopped => ProposeError::Shutdown,
                e => ProposeError::Fatal(e.to_string()),
            })),
        }
    }
}

/// A hand-over under way (see [`HostedGroup::begin_hand_over`]); ends it when dropped.
pub(crate) struct HandOver<'a> {
    group: &'a HostedGroup,
}

impl Drop for HandOver<'_> {
    fn drop(&mut self) {
        self.group.raft.runtime_config().heartbeat(true);
        self.group.hold_elections(0);
        self.group.handing_over.store(false, Ordering::Release);
    }
}

pub(crate) enum LocalWriteError {
    NotLeader(Option<(NodeId, NodeInfo)>),
    Failed(ProposeError),
}

/// Publishes who leads the group. This node is announced as leader only once it is ready to
/// act as one: a quorum confirmed its leadership and its machine applied every entry its log
/// held when it won (by Leader Completeness, every entry anyone may have committed). Until
/// then no leader is announced. This holds for every term it wins, even one after its own:
/// the metrics watch merges updates, so "led term 5, another led term 6, leads term 7" can
/// look like one reign, while term 6's commits are not applied here yet. Without this wait a leader restored at start (openraft brings
/// a node that led straight back as leader) delivered from a queue it had not rebuilt yet:
/// messages went out again without their redelivered flag, and a committed ack not yet
/// applied could bring its message back.
///
/// A group openraft stopped here (see [`HostedGroup::is_running`]) has no leader here any
/// more: its last metrics still name the leader of its last term (maybe this node), so the
/// watch announces none and closes, which tells the queue to send its clients elsewhere.
async fn watch_leadership(id: GroupId, raft: Raft, tx: watch::Sender<Leadership>, local: NodeId) {
    let mut metrics = raft.metrics();
    // The term in which this node was last announced as leader.
    let mut announced: Option<u64> = None;
    loop {
        let (leader, term, last_index, running) = {
            let m = metrics.borrow_and_update();
            (
                m.current_leader,
                m.current_term,
                m.last_log_index,
                is_running(&m),
            )
        };
        if !running {
            let none = Leadership {
                leader: None,
                term,
                is_self: false,
            };
            announce(&tx, none);
            return;
        }
        let leads_here = leader == Some(local);
        if leads_here && announced != Some(term) {
            let none = Leadership {
                leader: None,
                term,
                is_self: false,
            };
            announce(&tx, none);
            let elected = std::time::Instant::now();
            if leader_ready(&raft, last_index).await {
                tracing::info!(group = %id, term, ready_after = ?elected.elapsed(), "leading");
                announced = Some(term);
            } else {
                // Lost the leadership or no quorum: look again once something changes.
                let _ = tokio::time::timeout(LEADER_RETRY, metrics.changed()).await;
            }
            continue;
        }
        if !leads_here {
            announced = None;
        }
        let now = Leadership {
            leader,
            term,
            is_self: leads_here,
        };
        announce(&tx, now);
        if metrics.changed().await.is_err() {
            return;
        }
    }
}

fn is_running(m: &openraft::RaftMetrics<NodeId, NodeInfo>) -> bool {
    m.running_state.is_ok() && m.state != openraft::ServerState::Shutdown
}

/// Longest wait for a new leader to prove itself and catch up, before looking again.
const LEADER_READY_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause before trying again when a leader could not prove itself.
const LEADER_RETRY: Duration = Duration::from_millis(200);

/// True once a quorum confirmed this node's leadership and its machine applied
/// `last_index` (the last log index when it won).
async fn leader_ready(raft: &Raft, last_index: Option<u64>) -> bool {
    let ready = async {
        raft.ensure_linearizable().await.ok()?;
        if let Some(index) = last_index {
            raft.wait(Some(LEADER_READY_TIMEOUT))
                .applied_index_at_least(Some(index), "leader ready")
                .await
                .ok()?;
        }
        Some(())
    };
    matches!(
        tokio::time::timeout(LEADER_READY_TIMEOUT, ready).await,
        Ok(Some(()))
    )
}

fn announce(tx: &watch::Sender<Leadership>, now: Leadership) {
    tx.send_if_modified(|l| {
        let changed = *l != now;
        *l = now;
        changed
    });
}

/// A group's state as this node sees it (followers know little of the others' progress).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct GroupStatus {
    pub id: u64,
    pub leader: Option<NodeId>,
    pub term: u64,
    pub last_log_index: Option<u64>,
    pub last_applied: Option<u64>,
    pub snapshot_index: Option<u64>,
    pub replicas: Vec<ReplicaStatus>,
}

/// One replica of a group: how far it matched the leader's log, when this node leads.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ReplicaStatus {
    pub node: NodeId,
    pub voter: bool,
    /// Highest log index known to be on that replica (`None`: unknown here).
    pub matched: Option<u64>,
    /// Entries it is behind the leader's last.
    pub lag: Option<u64>,
}

/// A group hosted on this node.
#[derive(Clone)]
pub struct GroupHandle {
    pub(crate) core: Arc<Core>,
    pub(crate) group: Arc<HostedGroup>,
}

impl std::fmt::Debug for GroupHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupHandle")
            .field("id", &self.group.id)
            .finish()
    }
}

impl GroupHandle {
    pub fn id(&self) -> GroupId {
        self.group.id
    }

    /// Proposes `command`; forwarded to the leader when this node is not the leader. Answers
    /// the machine's response once the command is committed and applied on the leader.
    pub async fn propose(&self, command: Vec<u8>) -> Result<Vec<u8>, ProposeError> {
        propose(&self.core, self.group.id, command).await
    }

    pub fn leadership(&self) -> watch::Receiver<Leadership> {
        self.group.leadership()
    }

    pub fn status(&self) -> GroupStatus {
        self.group.status()
    }
}

/// Any group, hosted here or not: proposals go to its leader over the cluster transport.
#[derive(Clone)]
pub struct GroupClient {
    pub(crate) core: Arc<Core>,
    pub(crate) id: GroupId,
}

impl std::fmt::Debug for GroupClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupClient").field("id", &self.id).finish()
    }
}

impl GroupClient {
    pub fn id(&self) -> GroupId {
        self.id
    }

    pub async fn propose(&self, command: Vec<u8>) -> Result<Vec<u8>, ProposeError> {
        propose(&self.core, self.id, command).await
    }

    /// The leader as known here: from the group if hosted, else `None` until asked.
    pub fn leader(&self) -> Option<NodeId> {
        self.core
            .hosted(self.id)
            .and_then(|g| g.leadership().borrow().leader)
    }
}

/// Proposes on this node's own group, bounded by `deadline`: a leader cut off from its
/// majority never commits, and its publishers must hear so instead of waiting for the
/// partition to heal. The command may still commit later (its outcome is unknown), which
/// at-least-once allows; a resend is kept single by the queue's dedup window.
async fn local_write(
    group: &HostedGroup,
    command: &[u8],
    deadline: tokio::time::Instant,
) -> Result<Vec<u8>, LocalWriteError> {
    match tokio::time::timeout_at(deadline, group.write_local(command.to_vec())).await {
        Ok(result) => result,
        Err(_) => Err(LocalWriteError::Failed(ProposeError::Unreachable(format!(
            "not committed within {} s: no majority of the group's replicas answers (the outcome is unknown)",
            PROPOSE_TIMEOUT.as_secs()
        )))),
    }
}

/// Where to send a proposal next.
enum Target {
    Local(Arc<HostedGroup>),
    Remote(NodeId, NodeInfo),
}

/// Proposes `command` to group `id`: here if this node leads it, else to the leader it
/// knows, else to each replica in turn until one names the leader. Retried only when the
/// command surely was not proposed (refused, or never sent); a reply lost after sending is
/// reported, not retried, so a command is never proposed twice by this function.
pub(crate) async fn propose(
    core: &Arc<Core>,
    id: GroupId,
    command: Vec<u8>,
) -> Result<Vec<u8>, ProposeError> {
    let deadline = tokio::time::Instant::now() + PROPOSE_TIMEOUT;
    let mut hint: Option<(NodeId, NodeInfo)> = None;
    let mut last_error = ProposeError::NoLeader;
    let mut hops = 0u32;
    loop {
        if core.is_stopping() {
            return Err(ProposeError::Shutdown);
        }
        let targets: Vec<Target> = match (hint.take(), core.hosted(id)) {
            (Some((leader, info)), _) if leader != core.node_id => {
                vec![Target::Remote(leader, info)]
            }
            // A group stopped here (a storage error) proposes through the other replicas.
            (_, Some(group)) if group.is_running() => vec![Target::Local(group)],
            (_, _) => core
                .replicas_of(id)
                .into_iter()
                .filter(|(n, _)| *n != core.node_id)
                .map(|(n, info)| Target::Remote(n, info))
                .collect(),
        };
        for target in targets {
            match target {
                Target::Local(group) => match local_write(&group, &command, deadline).await {
                    Ok(r) => return Ok(r),
                    Err(LocalWriteError::NotLeader(Some(l))) if l.0 != core.node_id => {
                        hint = Some(l);
                        last_error = ProposeError::NoLeader;
                    }
                    Err(LocalWriteError::NotLeader(_)) => last_error = ProposeError::NoLeader,
                    Err(LocalWriteError::Failed(e)) => return Err(e),
                },
                Target::Remote(node, info) => {
                    let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
                    let call = core
                        .transport()
                        .call(
                            node,
                            &info.cluster_addr,
                            id,
                            Request::Propose(command.clone()),
                            remaining,
                        )
                        .await;
                    match call {
                        Ok(Reply::Proposed(r)) => return Ok(r),
                        Ok(Reply::Failed(Failure::NotLeader(Some(l)))) => {
                            hint = Some(l);
                            break;
                        }
                        Ok(Reply::Failed(Failure::NotLeader(None))) => {
                            last_error = ProposeError::NoLeader
                        }
                        Ok(Reply::Failed(Failure::NotHosted)) => {
                            last_error = ProposeError::Unreachable(format!(
                                "{id} is not hosted on node {node}"
                            ))
                        }
                        Ok(Reply::Failed(Failure::ShuttingDown)) => {
                            last_error =
                                ProposeError::Unreachable(format!("node {node} is shutting down"))
                        }
                        Ok(Reply::Failed(Failure::Other(e))) => return Err(ProposeError::Fatal(e)),
                        Ok(other) => {
                            return Err(ProposeError::Fatal(format!("unexpected reply {other:?}")))
                        }
                        Err(e)
                            if e.is_unreachable()
                                && !matches!(e, super::transport::TransportError::Closed(_)) =>
                        {
                            last_error = ProposeError::Unreachable(e.to_string())
                        }
                        Err(e) => return Err(ProposeError::Unreachable(e.to_string())),
                    }
                }
            }
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(last_error);
        }
        // Follow a leader hint at once, but not in circles: stale hints can point back and
        // forth while an election settles.
        hops = if hint.is_some() { hops + 1 } else { 0 };
        if hint.is_none() || hops > 3 {
            tokio::time::sleep(PROPOSE_RETRY).await;
        }
    }
}
