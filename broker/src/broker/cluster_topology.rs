//! Exchanges and bindings in a cluster. The metadata group keeps the exchanges users declare
//! and the bindings to replicated queues (`cluster::topology`); every node makes its routing
//! table agree with them ([`Broker::sync_cluster_topology`], on each change the group applies
//! and at start), so a message published on any node is routed alike. A declare, delete, bind
//! or unbind on any node is proposed to the group, and answered once this node routes by it.
//!
//! What the group keeps is not in `definitions.bin` (the group is its durable record): a
//! restarted node takes it from the group, and one that missed a deletion does not bring the
//! exchange back. Bindings to queues of one node (not replicated) stay that node's own.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use sluice_client::wire::{self, Headers, Reader};

use super::replicated::{propose_error, wait};
use super::Broker;
use crate::cluster::{
    BindingRecord, Cluster, ExchangeRecord, MetaCommand, MetaResponse, TopologyOutcome,
    TopologyRecords,
};
use crate::definitions::ChangeKind;
use crate::error::RequestError;
use crate::routing::{namespace, Binding, Exchange};

/// How long a change waits for this node's metadata replica to apply it (it was committed:
/// past this, the answer is given and the node catches up on its own).
const APPLIED_WAIT: Duration = Duration::from_secs(10);
/// How often a node waiting to be caught up after its start looks again.
const READY_POLL: Duration = Duration::from_millis(200);

/// What of the routing table came from the metadata group, as last applied here.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct ManagedTopology {
    /// Internal names of the exchanges.
    pub(crate) exchanges: BTreeSet<String>,
    pub(crate) bindings: BTreeSet<BindingRecord>,
}

impl ManagedTopology {
    pub(crate) fn holds_exchange(&self, name: &str) -> bool {
        self.exchanges.contains(name)
    }

    pub(crate) fn holds_binding(&self, binding: &Binding) -> bool {
        self.bindings.contains(&binding_record(binding))
    }
}

fn exchange_record(x: &Exchange) -> ExchangeRecord {
    ExchangeRecord {
        name: x.name.clone(),
        kind: x.kind.as_str().to_owned(),
        durable: x.durable,
        alternate_exchange: x.alternate_exchange.clone(),
        hash_header: x.hash_header.clone(),
    }
}

/// Whether the records' exchange `name` binds a queue once (weighted, consistent-hash).
pub(super) fn binds_once(records: &TopologyRecords, name: &str) -> bool {
    records
        .exchanges
        .get(name)
        .and_then(exchange_of)
        .is_some_and(|x| x.kind.picks_one())
}

/// `None` for a kind this version does not know (a newer node's): not routed here.
fn exchange_of(r: &ExchangeRecord) -> Option<Exchange> {
    Some(Exchange {
        name: r.name.clone(),
        kind: r.kind.parse().ok()?,
        durable: r.durable,
        auto_delete: false,
        alternate_exchange: r.alternate_exchange.clone(),
        hash_header: r.hash_header.clone(),
    })
}

/// A binding's record, its arguments in name order: bindings that differ only in the order
/// of their arguments are the same binding, and have the same record.
fn binding_record(b: &Binding) -> BindingRecord {
    let mut arguments = b.arguments.clone();
    arguments.sort_by(|x, y| x.0.cmp(&y.0));
    let mut buf = BytesMut::new();
    // Arguments that were validated encode.
    let _ = wire::put_headers(&mut buf, &arguments);
    BindingRecord {
        exchange: b.exchange.clone(),
        queue: b.queue.clone(),
        routing_key: b.routing_key.clone(),
        arguments: buf.to_vec(),
    }
}

fn binding_of(r: &BindingRecord) -> Option<Binding> {
    let arguments: Headers = wire::read_headers(&mut Reader::new(&r.arguments)).ok()?;
    Some(Binding {
        queue: r.queue.clone(),
        exchange: r.exchange.clone(),
        routing_key: r.routing_key.clone(),
        arguments,
    })
}

impl Broker {
    /// Declares `exchange` cluster-wide (from `declare_exchange`, checked there).
    pub(super) fn declare_exchange_in_cluster(
        &self,
        cluster: &Cluster,
        exchange: &Exchange,
    ) -> Result<(), RequestError> {
        if exchange.auto_delete {
            return Err(RequestError::precondition(
                "auto-delete exchanges are not supported in a cluster yet (each node has its \
                 own bindings to its local queues, so 'unused' differs from node to node)",
            ));
        }
        let record = exchange_record(exchange);
        match self.propose_topology(cluster, MetaCommand::DeclareExchange(record.clone()))? {
            TopologyOutcome::Done => {}
            TopologyOutcome::Conflict(existing) => {
                return Err(RequestError::precondition(format!(
                    "exchange '{}' exists with other properties (kind {}, durable {}, \
                     alternate exchange {:?}, hash header {:?})",
                    namespace::split(&existing.name).local,
                    existing.kind,
                    existing.durable,
                    existing.alternate_exchange,
                    existing.hash_header
                )))
            }
            other => return Err(unexpected(&other)),
        }
        self.await_applied(cluster, |t| t.exchanges.get(&record.name) == Some(&record));
        Ok(())
    }

    /// Deletes a cluster-wide exchange (checked against this node's table before).
    pub(super) fn delete_exchange_in_cluster(
        &self,
        cluster: &Cluster,
        name: &str,
        if_unused: bool,
    ) -> Result<(), RequestError> {
        let command = MetaCommand::DeleteExchange {
            name: name.to_owned(),
            if_unused,
        };
        match self.propose_topology(cluster, command)? {
            TopologyOutcome::Done | TopologyOutcome::NoExchange => {}
            TopologyOutcome::InUse => {
                return Err(RequestError::precondition(format!(
                    "exchange '{}' is in use",
                    namespace::split(name).local
                )))
            }
            other => return Err(unexpected(&other)),
        }
        self.await_applied(cluster, |t| !t.exchanges.contains_key(name));
        Ok(())
    }

    /// Binds (`bind`) or unbinds a replicated queue cluster-wide. `sole`: the exchange binds
    /// a queue once (weighted, consistent-hash), so a bind replaces the queue's binding and
    /// an unbind without arguments removes whichever it has.
    pub(super) fn bind_in_cluster(
        &self,
        cluster: &Cluster,
        binding: &Binding,
        bind: bool,
        sole: bool,
    ) -> Result<(), RequestError> {
        let record = binding_record(binding);
        let any_of_queue = sole && !bind && binding.arguments.is_empty();
        let command = match (bind, sole) {
            (true, true) => MetaCommand::BindSole(record.clone()),
            (true, false) => MetaCommand::Bind(record.clone()),
            (false, _) if any_of_queue => MetaCommand::UnbindQueue {
                exchange: record.exchange.clone(),
                queue: record.queue.clone(),
            },
            (false, _) => MetaCommand::Unbind(record.clone()),
        };
        match self.propose_topology(cluster, command)? {
            TopologyOutcome::Done => {}
            other => return Err(unexpected(&other)),
        }
        self.await_applied(cluster, |t| {
            if any_of_queue {
                !t.bindings
                    .iter()
                    .any(|b| b.exchange == record.exchange && b.queue == record.queue)
            } else {
                t.bindings.contains(&record) == bind
            }
        });
        Ok(())
    }

    fn propose_topology(
        &self,
        cluster: &Cluster,
        command: MetaCommand,
    ) -> Result<TopologyOutcome, RequestError> {
        match wait(cluster.propose_meta(command)).map_err(propose_error)? {
            MetaResponse::Topology(outcome) => Ok(outcome),
            other => Err(unexpected(&other)),
        }
    }

    /// Waits (bounded) until this node's metadata replica satisfies `applied`, then routes
    /// by it.
    fn await_applied(&self, cluster: &Cluster, applied: impl Fn(&TopologyRecords) -> bool) {
        let mut changes = cluster.topology_changes();
        let caught_up = wait(tokio::time::timeout(APPLIED_WAIT, async {
            while !applied(&cluster.topology()) {
                if changes.changed().await.is_err() {
                    return;
                }
            }
        }));
        if caught_up.is_err() {
            tracing::warn!("this node's metadata replica is slow to apply a topology change");
        }
        self.sync_cluster_topology();
    }

    /// With stored bindings waiting for their exchange, syncs once more when this node has
    /// applied the metadata it held at its start (then the missing exchanges are known to be
    /// deleted, and their bindings go).
    pub(super) fn sync_topology_once_caught_up(self: &Arc<Self>, cluster: &Cluster) {
        if self.read().pending_bindings.is_empty() {
            return;
        }
        let broker = Arc::downgrade(self);
        let cluster = cluster.clone();
        tokio::spawn(async move {
            let mut changes = cluster.topology_changes();
            while !cluster.is_ready() {
                if broker.strong_count() == 0 {
                    return;
                }
                // Readiness also follows the leader's election, which changes no metadata.
                let _ = tokio::time::timeout(READY_POLL, changes.changed()).await;
            }
            if let Some(broker) = broker.upgrade() {
                broker.sync_cluster_topology();
            }
        });
    }

    /// Makes the routing table agree with the metadata group's exchanges and bindings.
    pub(super) fn sync_cluster_topology(&self) {
        let Some(cluster) = self.cluster() else {
            return;
        };
        // Read under the change: two syncs at once must not commit an older state last.
        let mut change = self.begin_change();
        let wanted = cluster.topology();
        let reg = &mut change.next;
        let applied = Arc::clone(&reg.cluster_managed);
        for name in &applied.exchanges {
            if !wanted.exchanges.contains_key(name) {
                let _ = reg.routing.delete_exchange(name, false);
            }
        }
        let mut managed = ManagedTopology::default();
        for record in wanted.exchanges.values() {
            let Some(exchange) = exchange_of(record) else {
                tracing::warn!(exchange = %record.name, kind = %record.kind,
                    "an exchange of a kind this version does not know is not routed here");
                continue;
            };
            reg.routing
                .ensure_namespace(namespace::prefix_of(&record.name));
            if reg.routing.exchange(&record.name) != Some(&exchange) {
                // Declared again with other properties after a delete this node missed.
                let _ = reg.routing.delete_exchange(&record.name, false);
            }
            match reg.routing.declare_exchange(exchange) {
                Ok(_) => {
                    managed.exchanges.insert(record.name.clone());
                }
                Err(e) => tracing::warn!(exchange = %record.name, error = %e,
                    "a cluster-wide exchange could not be declared here"),
            }
        }
        for record in &applied.bindings {
            if !wanted.bindings.contains(record) {
                if let Some(binding) = binding_of(record) {
                    let _ = reg.routing.unbind(&binding);
                }
            }
        }
        for record in &wanted.bindings {
            // A binding from an exchange this node does not have (declared on one node
            // before it was clustered) routes nothing here.
            if let Some(binding) = binding_of(record) {
                if reg.routing.bind(binding).is_ok() {
                    managed.bindings.insert(record.clone());
                }
            }
        }
        // This node's own bindings to cluster-wide exchanges, stored before a restart: bound
        // again once the exchange is declared here. Once this node applied the metadata it
        // held at its start, an exchange still missing was deleted while it was down, and
        // its bindings go with it (as they would have, had the node been up).
        let caught_up = cluster.is_ready();
        let pending = std::mem::take(&mut reg.pending_bindings);
        for binding in pending {
            if reg.routing.exchange(&binding.exchange).is_some() {
                if let Err(e) = reg.routing.bind(binding.clone()) {
                    tracing::warn!(exchange = %binding.exchange, queue = %binding.queue,
                        error = %e, "a stored binding could not be restored");
                }
            } else if caught_up {
                tracing::info!(exchange = %binding.exchange, queue = %binding.queue,
                    "binding dropped: its exchange was deleted while this node was down");
            } else {
                reg.pending_bindings.push(binding);
            }
        }
        reg.cluster_managed = Arc::new(managed);
        if let Err(e) = self.commit(change, ChangeKind::Shrinks) {
            tracing::error!(error = %e, "could not apply the cluster's topology here");
        }
    }
}

fn unexpected(answer: &impl std::fmt::Debug) -> RequestError {
    RequestError::internal(format!(
        "the cluster's metadata answered {answer:?} to a topology change"
    ))
}
