//! Replicated queues on the broker's side (see `queue::replicated`): declared and deleted
//! through the cluster's metadata group, created on every node from its catalog (so a publish
//! on any node routes to them), their raft groups hosted on their replicas.
//!
//! A replicated queue is in the registry like a local one, but never in `definitions.bin`:
//! the catalog is its durable record, and its local log is rebuilt from its group at start.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures_util::future::BoxFuture;
use sluice_client::wire::{DeclareQueue, DeclareQueueOk, ErrorCode, Payload, QueueArguments};

use super::{check_same_queue, declare_ok, Broker};
use crate::cluster::{
    Cluster, GroupClient, GroupHandle, GroupId, GroupMachine, MachineError, MetaCommand, MetaEvent,
    MetaResponse, ProposeError, QueueRecord,
};
use crate::definitions::ChangeKind;
use crate::error::RequestError;
use crate::queue::replicated::{LeaderView, ProposeFailure, Proposer, QueueMachine};
use crate::queue::{self, QueueCmd, QueueHandle, QueueMeta, QueueStats};
use crate::routing::namespace;

/// How long a publish waits for its group to elect a leader before it is refused.
const ELECTION_WAIT: Duration = Duration::from_secs(10);
/// Pause between two proposals to a group without a leader.
const ELECTION_POLL: Duration = Duration::from_millis(100);

/// The groups of replicated queues hosted on this node, by queue uid.
#[derive(Debug, Default)]
pub(crate) struct HostedGroups {
    groups: Mutex<HashMap<u64, GroupHandle>>,
    /// Held while a replicated queue is created here: a declare and the metadata event of
    /// the same queue must not both build it (each would recreate the other's log).
    creating: tokio::sync::Mutex<()>,
}

impl HostedGroups {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, GroupHandle>> {
        self.groups.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Whether queue arguments ask for a replicated queue.
pub(crate) fn is_replicated(a: &QueueArguments) -> bool {
    a.replicas.is_some_and(|n| n > 1)
}

/// `PRECONDITION_FAILED` naming what a replicated queue does not support yet: never
/// silently ignored.
pub(crate) fn check_replicated(req: &DeclareQueue) -> Result<(), RequestError> {
    let a = &req.arguments;
    let unsupported = [
        ("message_ttl_ms", a.message_ttl_ms.is_some()),
        ("dead_letter_exchange", a.dead_letter_exchange.is_some()),
        (
            "dead_letter_routing_key",
            a.dead_letter_routing_key.is_some(),
        ),
        ("max_priority", a.max_priority.is_some()),
        ("single_active_consumer", a.single_active_consumer.is_some()),
        ("max_length", a.max_length.is_some()),
        ("max_length_bytes", a.max_length_bytes.is_some()),
        ("overflow", a.overflow.is_some()),
        ("delivery_limit", a.delivery_limit.is_some()),
        ("retry_backoff", a.retry_backoff.is_some()),
        ("expires_ms", a.expires_ms.is_some()),
        ("exclusive", req.exclusive),
        ("auto_delete", req.auto_delete),
        ("durable=false", !req.durable),
    ];
    match unsupported.into_iter().find(|(_, set)| *set) {
        Some((what, _)) => Err(RequestError::precondition(format!(
            "replicated queues (replicas > 1) do not support {what} yet"
        ))),
        None => Ok(()),
    }
}

fn encode_arguments(a: &QueueArguments) -> Vec<u8> {
    let mut buf = BytesMut::new();
    // Validated before: they encode.
    let _ = a.encode(&mut buf);
    buf.to_vec()
}

fn decode_arguments(bytes: &[u8]) -> Result<QueueArguments, RequestError> {
    QueueArguments::decode_exact(&Bytes::copy_from_slice(bytes))
        .map_err(|e| RequestError::internal(format!("a catalogued queue's arguments: {e}")))
}

pub(super) fn propose_error(e: ProposeError) -> RequestError {
    match e {
        ProposeError::NoLeader => RequestError::new(
            ErrorCode::NotLeader,
            "", // The metadata group elects a leader: retry shortly.
        ),
        other => RequestError::internal(format!("the cluster's metadata: {other}")),
    }
}

/// Waits for a future from synchronous broker code (which runs in `block_in_place`).
pub(super) fn wait<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Handle::current().block_on(f)
}

impl Broker {
    /// Creates every replicated queue of the cluster's catalog here, and keeps them in step
    /// with the metadata group's events (from `attach_cluster`).
    pub(super) async fn start_replicated_queues(self: &Arc<Self>) {
        let Some(cluster) = self.cluster().cloned() else {
            return;
        };
        let events = cluster.take_meta_events();
        for record in cluster.catalog() {
            self.ensure_replicated(record).await;
        }
        self.sync_cluster_topology();
        self.sync_topology_once_caught_up(&cluster);
        let Some(mut events) = events else {
            tracing::error!("the cluster's metadata events were taken by someone else");
            return;
        };
        let broker = Arc::downgrade(self);
        tokio::spawn(async move {
            while let Some(event) = events.recv().await {
                let Some(broker) = broker.upgrade() else {
                    return;
                };
                broker.on_meta_event(event).await;
            }
        });
    }

    /// The group of replicated queue `uid` when hosted here (for its status).
    pub fn hosted_group(&self, uid: u64) -> Option<GroupHandle> {
        self.replicated.lock().get(&uid).cloned()
    }

    async fn on_meta_event(self: &Arc<Self>, event: MetaEvent) {
        match event {
            MetaEvent::QueueDeclared(record) => {
                self.ensure_replicated(record).await;
            }
            MetaEvent::QueueDeleted(record) => self.remove_replicated(&record).await,
            MetaEvent::ReplicasChanged { record, .. } => self.replicas_changed(record).await,
            MetaEvent::NodesChanged => {}
            MetaEvent::TopologyChanged => self.sync_cluster_topology(),
        }
    }

    /// Declares a replicated queue (from `declare_queue`, in `block_in_place`): the uid and
    /// the placement are chosen here, the metadata group records it (or answers with the
    /// queue it has), and the queue exists on this node before the answer.
    pub(super) fn declare_replicated(
        self: &Arc<Self>,
        req: DeclareQueue,
    ) -> Result<DeclareQueueOk, RequestError> {
        let Some(cluster) = self.cluster() else {
            return Err(RequestError::precondition(
                "replicated queues need a cluster: this broker runs as a single node",
            ));
        };
        check_replicated(&req)?;
        if let Some(q) = self.read().queues.get(req.name.as_str()) {
            check_same_queue(&q.meta, &req)?;
            return Ok(declare_ok(q));
        }
        let wanted = usize::from(req.arguments.replicas.unwrap_or(1));
        let replicas =
            crate::cluster::placement(&cluster.members(), &cluster.leaders_per_node(), wanted)
                .map_err(|e| RequestError::precondition(e.to_string()))?;
        let record = QueueRecord {
            vhost: namespace::split(&req.name).vhost.to_owned(),
            name: req.name.clone(),
            uid: self.fresh_uid()?,
            durable: true,
            arguments: encode_arguments(&req.arguments),
            replicas,
        };
        let answer =
            wait(cluster.propose_meta(MetaCommand::DeclareQueue(record))).map_err(propose_error)?;
        let record = match answer {
            MetaResponse::Queue(record) => record,
            other => {
                return Err(RequestError::internal(format!(
                    "the cluster's metadata answered {other:?} to a declare"
                )))
            }
        };
        let handle = wait(self.ensure_replicated(record)).ok_or_else(|| {
            RequestError::internal(format!("queue '{}' could not be created here", req.name))
        })?;
        check_same_queue(&handle.meta, &req)?;
        Ok(declare_ok(&handle))
    }

    /// A uid no queue of this node uses (the cluster's are random too: a clash is unlikely,
    /// and the metadata group answers a same-named declare with the first record anyway).
    fn fresh_uid(&self) -> Result<u64, RequestError> {
        loop {
            let uid = fastrand::u64(1..);
            if !self
                .store
                .queue_dir_exists(uid)
                .map_err(RequestError::from)?
            {
                return Ok(uid);
            }
        }
    }

    /// Starts the task of replicated queue `record` on an empty local log and registers it.
    fn create_replicated(self: &Arc<Self>, record: &QueueRecord) -> NewTask {
        let arguments = match decode_arguments(&record.arguments) {
            Ok(a) => a,
            Err(e) => {
                tracing::error!(queue = %record.name, error = %e.message, "replicated queue skipped");
                return NewTask::Raced(None);
            }
        };
        let log = match self.store.recreate_queue(record.uid) {
            Ok(log) => log,
            Err(e) => {
                tracing::error!(queue = %record.name, error = %e, "replicated queue skipped: no local log");
                return NewTask::Raced(None);
            }
        };
        let meta = Arc::new(QueueMeta {
            name: Arc::from(record.name.as_str()),
            uid: record.uid,
            durable: true,
            exclusive_owner: None,
            auto_delete: false,
            arguments,
            stats: QueueStats::default(),
        });
        let handle = queue::spawn_replicated(Arc::clone(&meta), log, Arc::downgrade(self));
        match self.register_replicated(&handle) {
            Ok(true) => {}
            Ok(false) => {
                // Created meanwhile by the other path (declare or event): that one stands.
                let (done, _) = tokio::sync::oneshot::channel();
                handle.send(QueueCmd::Shutdown { done });
                return NewTask::Raced(self.read().queues.get(&meta.name).cloned());
            }
            Err(e) => {
                tracing::error!(queue = %record.name, error = %e.message, "replicated queue not registered");
                return NewTask::Raced(None);
            }
        }
        NewTask::Created(handle)
    }

    /// Creates replicated queue `record` on this node unless it exists: its task, in the
    /// registry, and its group when this node is a replica (also when the queue exists here
    /// and this node just became one of its replicas: re-placed here after a member left).
    /// Answers its handle (`None` when its name is taken by a local queue, or its log cannot
    /// be created).
    async fn ensure_replicated(self: &Arc<Self>, record: QueueRecord) -> Option<QueueHandle> {
        let cluster = self.cluster()?.clone();
        let _creating = self.replicated.creating.lock().await;
        let existing = self.read().queues.get(record.name.as_str()).cloned();
        let handle = match existing {
            Some(q) if q.meta.uid != record.uid => {
                tracing::error!(queue = %record.name, "a replicated queue's name is taken by a queue of this node: not created here");
                return None;
            }
            Some(q)
                if self.hosted_group(record.uid).is_some()
                    || !record.replicas.contains(&cluster.node_id()) =>
            {
                return Some(q);
            }
            // Re-placed here: its group is hosted below, empty (the group's leader adds this
            // node as a learner and sends it the data).
            Some(q) => q,
            None => match self.create_replicated(&record) {
                NewTask::Created(handle) => handle,
                NewTask::Raced(other) => return other,
            },
        };
        let me = cluster.node_id();
        if record.replicas.contains(&me) {
            let machine: Arc<dyn GroupMachine> = Arc::new(QueueMachine::new(handle.clone()));
            // The first replica creates the group; replacements are appended to the list
            // (`cluster::replace_replicas`): a node re-placed here never initialises it anew.
            let initialise = record.replicas.first() == Some(&me);
            match cluster
                .host_group(
                    GroupId(record.uid),
                    record.replicas.clone(),
                    machine,
                    initialise,
                )
                .await
            {
                Ok(group) => {
                    handle.send(QueueCmd::Attach {
                        proposer: Arc::new(GroupProposer::Hosted(group.clone())),
                    });
                    watch_leadership(cluster.clone(), &group, handle.clone());
                    self.replicated.lock().insert(record.uid, group);
                }
                Err(e) => {
                    // Its stored state did not load, say: its other replicas serve it.
                    tracing::error!(queue = %record.name, error = %e, "could not host the replicated queue's group: serving it as a non-replica");
                    serve_elsewhere(&cluster, &record, &handle);
                }
            }
        } else {
            // Not a replica: publishes are forwarded to the group's leader; consumers are
            // sent to a replica (which names the leader if it is not it).
            handle.send(QueueCmd::Attach {
                proposer: Arc::new(GroupProposer::Remote(cluster.group(GroupId(record.uid)))),
            });
            let replica = record.replicas.iter().find_map(|&n| cluster.node(n));
            handle.send(QueueCmd::Leadership(LeaderView {
                is_self: false,
                client_addr: replica.map(|n| n.client_addr).unwrap_or_default(),
            }));
        }
        Some(handle)
    }

    /// Acts on a re-placement of replicated queue `record` (a member left or joined): a node
    /// newly listed hosts the group; a node no longer listed drops the group once the group
    /// no longer counts on it, and keeps the queue as a non-replica; any other node points
    /// its clients at a replica that is still there.
    async fn replicas_changed(self: &Arc<Self>, record: QueueRecord) {
        let Some(cluster) = self.cluster().cloned() else {
            return;
        };
        let listed = record.replicas.contains(&cluster.node_id());
        let hosted = self.hosted_group(record.uid).is_some();
        if !listed && hosted {
            if !cluster.may_drop_group(&record) {
                tracing::info!(queue = %record.name, "re-placed away from this node: its group's leader removes it first");
                return;
            }
            tracing::info!(queue = %record.name, "no longer a replica of the queue: dropping its group");
            // Then a fresh non-replica task: the old one holds the replica's state.
            self.remove_replicated(&record).await;
        }
        if listed && !hosted {
            tracing::info!(queue = %record.name, "this node became a replica of the queue");
        }
        let handle = self.ensure_replicated(record.clone()).await;
        if let (Some(handle), false) = (handle, listed) {
            // Not a replica: its clients go to one of the replicas.
            handle.send(QueueCmd::Leadership(elsewhere(&cluster, &record.replicas)));
        }
    }

    /// Puts a new replicated queue's task in the registry; false when its name is taken.
    fn register_replicated(&self, handle: &QueueHandle) -> Result<bool, RequestError> {
        let mut change = self.begin_change();
        let name = &handle.meta.name;
        if change.next.queues.contains_key(name) {
            return Ok(false);
        }
        change.next.routing.add_queue(name);
        change.next.queues.insert(Arc::clone(name), handle.clone());
        self.commit(change, ChangeKind::Grows)?;
        Ok(true)
    }

    /// Takes a replicated queue the metadata group deleted out of the registry; its handle
    /// if it was there.
    fn unregister_replicated(&self, record: &QueueRecord) -> Option<QueueHandle> {
        let mut change = self.begin_change();
        let current = change
            .next
            .queues
            .get(record.name.as_str())
            .filter(|q| q.meta.uid == record.uid)
            .cloned()?;
        change.next.queues.remove(record.name.as_str());
        for exchange in change.next.routing.remove_queue(&record.name) {
            let _ = change.next.routing.delete_exchange(&exchange, false);
        }
        if let Err(e) = self.commit(change, ChangeKind::Shrinks) {
            tracing::error!(queue = %record.name, error = %e.message, "replicated queue not removed");
            return None;
        }
        Some(current)
    }

    /// Removes a replicated queue the metadata group deleted: out of the registry first (so
    /// its task's deletion proposes nothing more), then its group (which must not apply to
    /// a task that ended: that is a failure of the group here), then its task and local log.
    async fn remove_replicated(self: &Arc<Self>, record: &QueueRecord) {
        let handle = self.unregister_replicated(record);
        let group = self.replicated.lock().remove(&record.uid);
        if group.is_some() {
            if let Some(cluster) = self.cluster() {
                if let Err(e) = cluster.drop_group(GroupId(record.uid)).await {
                    tracing::warn!(queue = %record.name, error = %e, "could not drop the replicated queue's group");
                }
            }
        }
        if let Some(q) = handle {
            let (reply, answer) = tokio::sync::oneshot::channel();
            if q.send(QueueCmd::Delete {
                if_unused: false,
                if_empty: false,
                reply,
            }) {
                let _ = answer.await;
            }
        }
    }

    /// Records the deletion of replicated queue `meta` in the metadata group (its task
    /// deletes it: a client asked). Every node then removes it.
    pub(super) fn delete_replicated(&self, meta: &QueueMeta) -> Result<(), RequestError> {
        let Some(cluster) = self.cluster() else {
            return Ok(());
        };
        let cmd = MetaCommand::DeleteQueue {
            vhost: namespace::split(&meta.name).vhost.to_owned(),
            name: meta.name.to_string(),
        };
        wait(cluster.propose_meta(cmd)).map_err(propose_error)?;
        Ok(())
    }
}

/// Where a replicated queue's replicas are, as the HTTP API shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ReplicationStatus {
    /// The node leading its group, when known here (a node that is not a replica does not
    /// follow the group).
    pub leader: Option<u64>,
    /// Its replicas, the leader's view of their lag when this node leads.
    pub replicas: Vec<ReplicaLag>,
}

/// One replica of a replicated queue.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ReplicaLag {
    /// The node.
    pub node: u64,
    /// Log entries it is behind the leader (`None`: unknown on this node).
    pub lag: Option<u64>,
}

impl Broker {
    /// Where replicated queue `meta`'s replicas are; `None` for a local queue.
    pub fn replication_status(&self, meta: &QueueMeta) -> Option<ReplicationStatus> {
        if !is_replicated(&meta.arguments) {
            return None;
        }
        if let Some(group) = self.hosted_group(meta.uid) {
            let s = group.status();
            return Some(ReplicationStatus {
                leader: s.leader,
                replicas: s
                    .replicas
                    .iter()
                    .map(|r| ReplicaLag {
                        node: r.node,
                        lag: r.lag,
                    })
                    .collect(),
            });
        }
        let record = self
            .cluster()?
            .catalog()
            .into_iter()
            .find(|r| r.uid == meta.uid)?;
        Some(ReplicationStatus {
            leader: None,
            replicas: record
                .replicas
                .iter()
                .map(|&node| ReplicaLag { node, lag: None })
                .collect(),
        })
    }
}

/// A new replicated queue's task, or why there is none: `Raced` when the name was taken
/// meanwhile (the queue registered by the other path, if it is that one) or the log could
/// not be created.
enum NewTask {
    Created(QueueHandle),
    Raced(Option<QueueHandle>),
}

/// Sends a hosted group's leadership to its queue task, with the leader's client address.
/// When the group stops here (its watch closes: a storage error stopped it, or it was
/// dropped), the queue sends its clients to another replica.
fn watch_leadership(cluster: Cluster, group: &GroupHandle, queue: QueueHandle) {
    let mut leadership = group.leadership();
    tokio::spawn(async move {
        loop {
            let l = *leadership.borrow_and_update();
            let client_addr = l
                .leader
                .and_then(|id| cluster.node(id))
                .map(|n| n.client_addr)
                .unwrap_or_default();
            let view = LeaderView {
                is_self: l.is_self,
                client_addr,
            };
            if !queue.send(QueueCmd::Leadership(view)) {
                return;
            }
            if leadership.changed().await.is_err() {
                let replicas = cluster
                    .catalog()
                    .into_iter()
                    .find(|r| r.uid == queue.meta.uid)
                    .map(|r| r.replicas)
                    .unwrap_or_default();
                queue.send(QueueCmd::Leadership(elsewhere(&cluster, &replicas)));
                return;
            }
        }
    });
}

/// Makes `handle` the task of a queue whose group this node does not serve although it is
/// one of its replicas: publishes go to the group's leader, clients to another replica.
fn serve_elsewhere(cluster: &Cluster, record: &QueueRecord, handle: &QueueHandle) {
    handle.send(QueueCmd::Attach {
        proposer: Arc::new(GroupProposer::Remote(cluster.group(GroupId(record.uid)))),
    });
    handle.send(QueueCmd::Leadership(elsewhere(cluster, &record.replicas)));
}

/// The view of a node that does not serve a replicated queue itself: its clients go to
/// another of its replicas (which names the leader if it is not it).
fn elsewhere(cluster: &Cluster, replicas: &[crate::cluster::NodeId]) -> LeaderView {
    let me = cluster.node_id();
    let replica = replicas
        .iter()
        .filter(|&&n| n != me)
        .find_map(|&n| cluster.node(n));
    LeaderView {
        is_self: false,
        client_addr: replica.map(|n| n.client_addr).unwrap_or_default(),
    }
}

/// A replicated queue's way to its group: hosted here, or only known.
#[derive(Debug)]
enum GroupProposer {
    Hosted(GroupHandle),
    Remote(GroupClient),
}

impl Proposer for GroupProposer {
    fn propose(&self, command: Vec<u8>) -> BoxFuture<'static, Result<Vec<u8>, ProposeFailure>> {
        let target = match self {
            GroupProposer::Hosted(g) => Target::Hosted(g.clone()),
            GroupProposer::Remote(g) => Target::Remote(g.clone()),
        };
        Box::pin(async move {
            // An election (after a leader's failure) takes a few seconds: wait for it rather
            // than refuse. Only `NoLeader` is retried: the command was surely not proposed.
            let started = Instant::now();
            loop {
                let result = match &target {
                    Target::Hosted(g) => g.propose(command.clone()).await,
                    Target::Remote(g) => g.propose(command.clone()).await,
                };
                match result {
                    Ok(answer) => return Ok(answer),
                    Err(ProposeError::NoLeader) if started.elapsed() < ELECTION_WAIT => {
                        tokio::time::sleep(ELECTION_POLL).await;
                    }
                    Err(ProposeError::NoLeader) => return Err(ProposeFailure::NoLeader),
                    Err(e) => return Err(ProposeFailure::Unavailable(e.to_string())),
                }
            }
        })
    }
}

enum Target {
    Hosted(GroupHandle),
    Remote(GroupClient),
}

impl GroupMachine for QueueMachine {
    fn apply(
        &self,
        batch: Vec<crate::cluster::Committed>,
    ) -> BoxFuture<'static, Result<Vec<Vec<u8>>, MachineError>> {
        QueueMachine::apply(self, batch.into_iter().map(|c| c.command).collect())
    }

    fn snapshot(&self) -> BoxFuture<'static, Result<Vec<u8>, MachineError>> {
        QueueMachine::snapshot(self)
    }

    fn install(&self, data: Vec<u8>) -> BoxFuture<'static, Result<(), MachineError>> {
        QueueMachine::install(self, data)
    }
}
