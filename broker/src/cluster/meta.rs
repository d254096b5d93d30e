//! The metadata group's machine (group 0): the members and their addresses, the catalog
//! of replicated queues, and the cluster-wide exchanges and bindings (`topology`). Every member applies the same commands in the same order, so every
//! node answers `catalog()` and `node()` alike (up to replication lag).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};

use super::codec::{decode, encode};
use super::state_machine::{Committed, GroupMachine, MachineError};
use super::topology::{Applied, BindingRecord, ExchangeRecord, TopologyOutcome, TopologyRecords};
use super::types::{ClusterError, NodeId, NodeInfo};

/// A replicated queue, as the metadata group records it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueRecord {
    pub vhost: String,
    pub name: String,
    /// The queue's uid, also its raft group id.
    pub uid: u64,
    pub durable: bool,
    /// Wire-encoded `QueueArguments`.
    pub arguments: Vec<u8>,
    /// The nodes holding a replica: the desired placement, which the group's leader makes
    /// its voters. The first one initialised the group; replacements are appended, so a node
    /// added later is never first (it must never initialise the group anew).
    pub replicas: Vec<NodeId>,
}

/// A change to the metadata.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MetaCommand {
    /// Records (or updates the addresses of) a member.
    AddNode(NodeId, NodeInfo),
    RemoveNode(NodeId),
    /// Idempotent: a record with the same vhost and name answers with the existing record.
    DeclareQueue(QueueRecord),
    DeleteQueue {
        vhost: String,
        name: String,
    },
    /// Re-places queue `uid` (the metadata leader, after a member left or joined): its
    /// replicas become `replicas` if they still are `expected`, so a decision taken on an
    /// older catalog never overwrites a newer one.
    SetReplicas {
        uid: u64,
        expected: Vec<NodeId>,
        replicas: Vec<NodeId>,
    },
    /// Cluster-wide topology (see `topology`): answered with `Topology(outcome)`.
    DeclareExchange(ExchangeRecord),
    DeleteExchange {
        name: String,
        if_unused: bool,
    },
    Bind(BindingRecord),
    Unbind(BindingRecord),
    /// Binds, replacing the queue's other bindings to the exchange (a weighted or
    /// consistent-hash exchange binds a queue once; this changes its weight).
    BindSole(BindingRecord),
    /// Removes every binding of `queue` to `exchange`, whatever its arguments.
    UnbindQueue {
        exchange: String,
        queue: String,
    },
}

/// The metadata machine's answer to a [`MetaCommand`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MetaResponse {
    Done,
    /// The queue's record after a `DeclareQueue`: the new one, or the one that existed.
    Queue(QueueRecord),
    /// The record a `DeleteQueue` removed.
    Deleted(QueueRecord),
    /// `DeleteQueue` of a queue the catalog does not hold.
    NoSuchQueue,
    /// A command this machine could not decode (written by a newer version).
    Invalid(String),
    /// `SetReplicas` whose `expected` replicas were not the queue's any more: its record now.
    Stale(QueueRecord),
    /// `AddNode` of a node removed earlier: it may not come back under that id.
    Removed(NodeId),
    /// The answer to a topology command.
    Topology(TopologyOutcome),
}

/// What the metadata machine applied, in order, for the broker to act on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MetaEvent {
    QueueDeclared(QueueRecord),
    QueueDeleted(QueueRecord),
    /// A queue's replicas changed (`record` is the new one): a node newly listed hosts the
    /// group (empty; its leader sends it the data), a node no longer listed drops it.
    ReplicasChanged {
        record: QueueRecord,
        previous: Vec<NodeId>,
    },
    NodesChanged,
    /// The cluster-wide exchanges or bindings changed: read them again (`topology()`).
    TopologyChanged,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct MetaState {
    members: BTreeMap<NodeId, NodeInfo>,
    /// By (vhost, name).
    queues: BTreeMap<(String, String), QueueRecord>,
    /// How many replicas each queue (by uid) was declared with: its record's `replicas` is
    /// shorter while the cluster has too few members to replace a removed one, and a node
    /// that joins fills it up.
    wanted: BTreeMap<u64, usize>,
    /// Ids removed from the cluster: never members again (a removed node that comes back,
    /// its data from before the removal, would vote in groups that replaced it). A machine
    /// whose node was removed joins again under a new id, with an empty data directory.
    removed: BTreeSet<NodeId>,
    /// Exchanges and the bindings to replicated queues.
    topology: TopologyRecords,
}

/// The metadata snapshot as the first cluster release wrote it (members and catalog only):
/// still read, so that a node upgraded from it starts.
#[derive(Deserialize)]
struct MetaStateV1 {
    members: BTreeMap<NodeId, NodeInfo>,
    queues: BTreeMap<(String, String), QueueRecord>,
}

impl From<MetaStateV1> for MetaState {
    fn from(old: MetaStateV1) -> MetaState {
        let wanted = old
            .queues
            .values()
            .map(|q| (q.uid, q.replicas.len()))
            .collect();
        MetaState {
            members: old.members,
            queues: old.queues,
            wanted,
            removed: BTreeSet::new(),
            topology: TopologyRecords::default(),
        }
    }
}

/// Decodes a metadata snapshot of this release or of the first one.
fn decode_state(data: &[u8]) -> Result<MetaState, super::codec::DecodeError> {
    decode::<MetaState>("metadata snapshot", data).or_else(|new_error| {
        decode::<MetaStateV1>("metadata snapshot", data)
            .map(MetaState::from)
            .map_err(|_| new_error)
    })
}

/// The metadata group's [`GroupMachine`].
#[derive(Debug)]
pub(crate) struct MetaMachine {
    state: Mutex<MetaState>,
    events: mpsc::UnboundedSender<MetaEvent>,
    /// Bumped whenever the members or the catalog change: what the cluster's own repair
    /// tasks watch (the events are the broker's).
    changes: watch::Sender<u64>,
    /// Bumped whenever the exchanges or bindings change: what a node waits on to route by
    /// a topology change it made (repair reads no topology, and is not woken by it).
    topology_changes: watch::Sender<u64>,
}

impl MetaMachine {
    pub(crate) fn new() -> (Arc<MetaMachine>, mpsc::UnboundedReceiver<MetaEvent>) {
        let (events, rx) = mpsc::unbounded_channel();
        let machine = Arc::new(MetaMachine {
            state: Mutex::new(MetaState::default()),
            events,
            changes: watch::channel(0).0,
            topology_changes: watch::channel(0).0,
        });
        (machine, rx)
    }

    fn state(&self) -> MutexGuard<'_, MetaState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn catalog(&self) -> Vec<QueueRecord> {
        self.state().queues.values().cloned().collect()
    }

    /// How many replicas queue `uid` was declared with.
    pub(crate) fn wanted(&self, uid: u64) -> Option<usize> {
        self.state().wanted.get(&uid).copied()
    }

    pub(crate) fn topology(&self) -> TopologyRecords {
        self.state().topology.clone()
    }

    pub(crate) fn queue_by_uid(&self, uid: u64) -> Option<QueueRecord> {
        self.state().queues.values().find(|q| q.uid == uid).cloned()
    }

    pub(crate) fn node(&self, id: NodeId) -> Option<NodeInfo> {
        self.state().members.get(&id).cloned()
    }

    pub(crate) fn members(&self) -> BTreeMap<NodeId, NodeInfo> {
        self.state().members.clone()
    }

    /// Whether node `id` was removed from the cluster (it may not join again).
    pub(crate) fn was_removed(&self, id: NodeId) -> bool {
        self.state().removed.contains(&id)
    }

    /// Wakes whoever watches the members and the catalog.
    pub(crate) fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// Wakes whoever waits for the exchanges and bindings.
    pub(crate) fn subscribe_topology(&self) -> watch::Receiver<u64> {
        self.topology_changes.subscribe()
    }

    /// Tells the broker that the topology changed.
    fn emit_topology(&self) {
        let _ = self.events.send(MetaEvent::TopologyChanged);
        self.topology_changes
            .send_modify(|v| *v = v.wrapping_add(1));
    }

    fn emit(&self, event: MetaEvent) {
        // The receiver may not be taken (a node without replicated queues); nothing to do.
        let _ = self.events.send(event);
        self.changes.send_modify(|v| *v = v.wrapping_add(1));
    }

    fn apply_one(&self, command: MetaCommand) -> MetaResponse {
        let mut st = self.state();
        match command {
            MetaCommand::AddNode(id, _) if st.removed.contains(&id) => MetaResponse::Removed(id),
            MetaCommand::AddNode(id, info) => {
                if st.members.get(&id) != Some(&info) {
                    st.members.insert(id, info);
                    drop(st);
                    self.emit(MetaEvent::NodesChanged);
                }
                MetaResponse::Done
            }
            MetaCommand::RemoveNode(id) => {
                st.removed.insert(id);
                if st.members.remove(&id).is_some() {
                    drop(st);
                    self.emit(MetaEvent::NodesChanged);
                }
                MetaResponse::Done
            }
            MetaCommand::DeclareQueue(record) => {
                let key = (record.vhost.clone(), record.name.clone());
                if let Some(existing) = st.queues.get(&key) {
                    return MetaResponse::Queue(existing.clone());
                }
                st.queues.insert(key, record.clone());
                st.wanted.insert(record.uid, record.replicas.len());
                drop(st);
                self.emit(MetaEvent::QueueDeclared(record.clone()));
                MetaResponse::Queue(record)
            }
            MetaCommand::DeleteQueue { vhost, name } => match st.queues.remove(&(vhost, name)) {
                Some(record) => {
                    st.wanted.remove(&record.uid);
                    let unbound = st.topology.queue_deleted(&record.name);
                    drop(st);
                    self.emit(MetaEvent::QueueDeleted(record.clone()));
                    if unbound {
                        self.emit_topology();
                    }
                    MetaResponse::Deleted(record)
                }
                None => MetaResponse::NoSuchQueue,
            },
            MetaCommand::SetReplicas {
                uid,
                expected,
                replicas,
            } => {
                let Some(record) = st.queues.values_mut().find(|q| q.uid == uid) else {
                    return MetaResponse::NoSuchQueue;
                };
                if record.replicas != expected {
                    return MetaResponse::Stale(record.clone());
                }
                let previous = std::mem::replace(&mut record.replicas, replicas);
                let record = record.clone();
                drop(st);
                if record.replicas != previous {
                    self.emit(MetaEvent::ReplicasChanged {
                        record: record.clone(),
                        previous,
                    });
                }
                MetaResponse::Queue(record)
            }
            MetaCommand::DeclareExchange(record) => self.change_topology(st, |t| t.declare(record)),
            MetaCommand::DeleteExchange { name, if_unused } => {
                self.change_topology(st, |t| t.delete(&name, if_unused))
            }
            MetaCommand::Bind(record) => self.change_topology(st, |t| t.bind(record)),
            MetaCommand::Unbind(record) => self.change_topology(st, |t| t.unbind(&record)),
            MetaCommand::BindSole(record) => self.change_topology(st, |t| t.bind_sole(record)),
            MetaCommand::UnbindQueue { exchange, queue } => {
                self.change_topology(st, |t| t.unbind_queue(&exchange, &queue))
            }
        }
    }

    /// Applies a topology command, telling the broker when it changed something.
    fn change_topology(
        &self,
        mut st: MutexGuard<'_, MetaState>,
        change: impl FnOnce(&mut TopologyRecords) -> Applied,
    ) -> MetaResponse {
        let applied = change(&mut st.topology);
        drop(st);
        if applied.changed {
            self.emit_topology();
        }
        MetaResponse::Topology(applied.outcome)
    }

    /// Replaces the state with a snapshot's, telling the broker what changed as events.
    /// A queue whose record only changed its replicas is the same queue re-placed, never
    /// deleted and declared again (that would wipe the replica this node holds).
    fn replace(&self, new: MetaState) {
        let old = std::mem::replace(&mut *self.state(), new.clone());
        let replaced = |key: &(String, String)| {
            matches!((old.queues.get(key), new.queues.get(key)),
                (Some(o), Some(n)) if o != n && o.uid == n.uid)
        };
        for (key, record) in &old.queues {
            if new.queues.get(key) != Some(record) && !replaced(key) {
                self.emit(MetaEvent::QueueDeleted(record.clone()));
            }
        }
        for (key, record) in &new.queues {
            if old.queues.get(key) == Some(record) {
                continue;
            }
            match old.queues.get(key) {
                Some(previous) if replaced(key) => self.emit(MetaEvent::ReplicasChanged {
                    record: record.clone(),
                    previous: previous.replicas.clone(),
                }),
                _ => self.emit(MetaEvent::QueueDeclared(record.clone())),
            }
        }
        if old.members != new.members {
            self.emit(MetaEvent::NodesChanged);
        }
        if old.topology != new.topology {
            self.emit_topology();
        }
    }
}

impl GroupMachine for MetaMachine {
    fn apply(
        &self,
        batch: Vec<Committed>,
    ) -> BoxFuture<'static, Result<Vec<Vec<u8>>, MachineError>> {
        // A command this node cannot decode (a newer version's) is one it cannot apply: going
        // on without it would leave this node's catalog behind the others' for good. (So
        // `MetaResponse::Invalid` is no longer answered; it stays for its encoding.)
        let answers = batch
            .into_iter()
            .map(|c| {
                let command = decode::<MetaCommand>("metadata command", &c.command)
                    .map_err(|e| undecodable("a metadata command", e))?;
                Ok(encode(&self.apply_one(command)))
            })
            .collect();
        Box::pin(async move { answers })
    }

    fn snapshot(&self) -> BoxFuture<'static, Result<Vec<u8>, MachineError>> {
        let bytes = encode(&*self.state());
        Box::pin(async move { Ok(bytes) })
    }

    fn install(&self, data: Vec<u8>) -> BoxFuture<'static, Result<(), MachineError>> {
        // A snapshot that passed its checksum yet does not decode is a bug or a newer
        // format: the group stops here rather than run with an empty catalog.
        let installed = decode_state(&data)
            .map(|state| self.replace(state))
            .map_err(|e| undecodable("a metadata snapshot", e));
        Box::pin(async move { installed })
    }
}

fn undecodable(what: &'static str, e: super::codec::DecodeError) -> MachineError {
    MachineError::Undecodable {
        machine: "the cluster's metadata".into(),
        what,
        cause: e.to_string(),
    }
}

/// Chooses the nodes for a new replicated queue: the `replicas` members leading the fewest
/// queues (ties by id, so every proposer agrees), least loaded first. The first one
/// initialises the group and so becomes its first leader: leaders spread over the nodes.
pub fn placement(
    members: &[NodeId],
    leaders_per_node: &HashMap<NodeId, usize>,
    replicas: usize,
) -> Result<Vec<NodeId>, ClusterError> {
    if replicas == 0 || replicas > members.len() {
        return Err(ClusterError::NotEnoughNodes {
            wanted: replicas,
            members: members.len(),
        });
    }
    let mut ranked: Vec<NodeId> = members.to_vec();
    ranked.sort_by_key(|id| (leaders_per_node.get(id).copied().unwrap_or(0), *id));
    ranked.dedup();
    ranked.truncate(replicas);
    Ok(ranked)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(name: &str, uid: u64) -> QueueRecord {
        QueueRecord {
            vhost: "/".into(),
            name: name.into(),
            uid,
            durable: true,
            arguments: vec![],
            replicas: vec![1, 2, 3],
        }
    }

    fn apply(m: &MetaMachine, cmd: MetaCommand) -> MetaResponse {
        let out = futures_util::FutureExt::now_or_never(m.apply(vec![Committed {
            index: 1,
            command: encode(&cmd),
        }]))
        .unwrap()
        .unwrap();
        decode("response", &out[0]).unwrap()
    }

    #[test]
    fn declaring_a_queue_twice_answers_with_the_first_record() {
        let (m, mut events) = MetaMachine::new();
        let first = record("q", 7);
        assert_eq!(
            apply(&m, MetaCommand::DeclareQueue(first.clone())),
            MetaResponse::Queue(first.clone())
        );
        let second = record("q", 8);
        assert_eq!(
            apply(&m, MetaCommand::DeclareQueue(second)),
            MetaResponse::Queue(first.clone())
        );
        assert_eq!(m.catalog(), vec![first.clone()]);
        assert_eq!(events.try_recv().unwrap(), MetaEvent::QueueDeclared(first));
        assert!(
            events.try_recv().is_err(),
            "the second declare changed nothing"
        );
    }

    #[test]
    fn deleting_a_queue_returns_its_record_and_a_missing_one_says_so() {
        let (m, _events) = MetaMachine::new();
        apply(&m, MetaCommand::DeclareQueue(record("q", 7)));
        let del = MetaCommand::DeleteQueue {
            vhost: "/".into(),
            name: "q".into(),
        };
        assert_eq!(
            apply(&m, del.clone()),
            MetaResponse::Deleted(record("q", 7))
        );
        assert_eq!(apply(&m, del), MetaResponse::NoSuchQueue);
    }

    #[test]
    fn a_removed_node_may_not_be_added_again_under_its_id() {
        let (m, _) = MetaMachine::new();
        let info = NodeInfo {
            cluster_addr: "127.0.0.13:7000".into(),
            client_addr: "127.0.0.13:5680".into(),
            http_addr: None,
        };
        assert_eq!(
            apply(&m, MetaCommand::AddNode(3, info.clone())),
            MetaResponse::Done
        );
        assert_eq!(apply(&m, MetaCommand::RemoveNode(3)), MetaResponse::Done);
        assert!(m.was_removed(3));
        assert_eq!(
            apply(&m, MetaCommand::AddNode(3, info.clone())),
            MetaResponse::Removed(3)
        );
        assert!(m.node(3).is_none());
        assert_eq!(apply(&m, MetaCommand::AddNode(4, info)), MetaResponse::Done);
    }

    #[test]
    fn a_snapshot_of_the_first_release_still_installs() {
        #[derive(Serialize)]
        struct FirstRelease {
            members: BTreeMap<NodeId, NodeInfo>,
            queues: BTreeMap<(String, String), QueueRecord>,
        }
        let q = record("orders", 7);
        let old = FirstRelease {
            members: BTreeMap::new(),
            queues: BTreeMap::from([(("/".to_owned(), "orders".to_owned()), q.clone())]),
        };
        let (m, _) = MetaMachine::new();
        futures_util::FutureExt::now_or_never(m.install(encode(&old)))
            .unwrap()
            .unwrap();
        assert_eq!(m.catalog(), vec![q.clone()]);
        assert_eq!(m.state().wanted.get(&7), Some(&q.replicas.len()));
    }

    #[test]
    fn installing_a_snapshot_reports_the_differences_as_events() {
        let (a, _) = MetaMachine::new();
        apply(&a, MetaCommand::DeclareQueue(record("kept", 1)));
        apply(&a, MetaCommand::DeclareQueue(record("new", 2)));
        let snap = futures_util::FutureExt::now_or_never(a.snapshot())
            .unwrap()
            .unwrap();
        let (b, mut events) = MetaMachine::new();
        apply(&b, MetaCommand::DeclareQueue(record("kept", 1)));
        apply(&b, MetaCommand::DeclareQueue(record("gone", 3)));
        while events.try_recv().is_ok() {}
        futures_util::FutureExt::now_or_never(b.install(snap))
            .unwrap()
            .unwrap();
        let got: Vec<_> = std::iter::from_fn(|| events.try_recv().ok()).collect();
        assert_eq!(
            got,
            vec![
                MetaEvent::QueueDeleted(record("gone", 3)),
                MetaEvent::QueueDeclared(record("new", 2))
            ]
        );
        assert_eq!(b.catalog(), a.catalog());
    }

    #[test]
    fn an_undecodable_snapshot_or_command_is_an_error_and_the_catalog_stays_as_it_was() {
        let (m, mut events) = MetaMachine::new();
        apply(&m, MetaCommand::DeclareQueue(record("kept", 1)));
        while events.try_recv().is_ok() {}
        let installed = futures_util::FutureExt::now_or_never(m.install(vec![0xff; 3])).unwrap();
        assert!(
            matches!(installed, Err(MachineError::Undecodable { .. })),
            "got {installed:?}"
        );
        let applied = futures_util::FutureExt::now_or_never(m.apply(vec![Committed {
            index: 2,
            command: vec![0xff; 3],
        }]))
        .unwrap();
        assert!(
            matches!(applied, Err(MachineError::Undecodable { .. })),
            "got {applied:?}"
        );
        assert_eq!(m.catalog(), vec![record("kept", 1)]);
        assert!(events.try_recv().is_err(), "nothing changed");
    }

    #[test]
    fn placement_picks_the_least_loaded_nodes_first() {
        let leaders = HashMap::from([(1, 3), (2, 0), (3, 1), (4, 0)]);
        assert_eq!(
            placement(&[1, 2, 3, 4], &leaders, 3).unwrap(),
            vec![2, 4, 3]
        );
        assert!(matches!(
            placement(&[1, 2], &leaders, 3),
            Err(ClusterError::NotEnoughNodes {
                wanted: 3,
                members: 2
            })
        ));
    }

    #[test]
    fn re_placing_a_queue_applies_only_over_the_replicas_it_was_decided_on() {
        let (m, mut events) = MetaMachine::new();
        apply(&m, MetaCommand::DeclareQueue(record("q", 7)));
        while events.try_recv().is_ok() {}
        let set = |expected: Vec<NodeId>| MetaCommand::SetReplicas {
            uid: 7,
            expected,
            replicas: vec![1, 2, 4],
        };
        let moved = QueueRecord {
            replicas: vec![1, 2, 4],
            ..record("q", 7)
        };
        assert_eq!(
            apply(&m, set(vec![1, 2, 3])),
            MetaResponse::Queue(moved.clone())
        );
        assert_eq!(
            events.try_recv().unwrap(),
            MetaEvent::ReplicasChanged {
                record: moved.clone(),
                previous: vec![1, 2, 3]
            }
        );
        assert_eq!(
            apply(&m, set(vec![1, 2, 3])),
            MetaResponse::Stale(moved.clone()),
            "decided on the old replicas: refused"
        );
        assert!(events.try_recv().is_err());
        assert_eq!(m.wanted(7), Some(3), "the declared count is kept");
        let missing = MetaCommand::SetReplicas {
            uid: 8,
            expected: vec![],
            replicas: vec![1],
        };
        assert_eq!(apply(&m, missing), MetaResponse::NoSuchQueue);
    }

    #[test]
    fn a_snapshot_that_re_places_a_queue_reports_it_as_re_placed_not_deleted() {
        let (a, _) = MetaMachine::new();
        apply(&a, MetaCommand::DeclareQueue(record("q", 7)));
        apply(
            &a,
            MetaCommand::SetReplicas {
                uid: 7,
                expected: vec![1, 2, 3],
                replicas: vec![1, 3],
            },
        );
        let (b, mut events) = MetaMachine::new();
        apply(&b, MetaCommand::DeclareQueue(record("q", 7)));
        while events.try_recv().is_ok() {}
        b.replace(a.state().clone());
        let got: Vec<_> = std::iter::from_fn(|| events.try_recv().ok()).collect();
        assert_eq!(
            got,
            vec![MetaEvent::ReplicasChanged {
                record: a.catalog()[0].clone(),
                previous: vec![1, 2, 3]
            }]
        );
        assert_eq!(
            b.wanted(7),
            Some(3),
            "the snapshot holds the declared count"
        );
    }
}
