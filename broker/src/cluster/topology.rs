//! The cluster-wide topology the metadata group keeps beside the queue catalog: the exchanges
//! users declared and the bindings to replicated queues. Every node makes its routing table
//! agree with these records (the broker's side, `broker::cluster_topology`), so a message
//! published on any node is routed alike.
//!
//! Names are the broker's internal ones (vhost-qualified); kinds and binding arguments are
//! kept as the broker encodes them, so this layer knows nothing of routing.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

/// An exchange, as the metadata group records it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ExchangeRecord {
    /// Internal (vhost-qualified) name.
    pub name: String,
    /// `direct`, `fanout`, `topic`, `headers`, `weighted` or `consistent-hash`.
    pub kind: String,
    pub durable: bool,
    /// Internal name of the alternate exchange, if any.
    pub alternate_exchange: Option<String>,
    /// The header a consistent-hash exchange hashes, if not the routing key.
    pub hash_header: Option<String>,
}

/// A binding from an exchange to a replicated queue.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct BindingRecord {
    /// Internal name of the exchange.
    pub exchange: String,
    /// Internal name of the queue.
    pub queue: String,
    pub routing_key: String,
    /// The binding's arguments, wire-encoded and in a canonical order (the broker's), so
    /// that equal bindings have equal records.
    pub arguments: Vec<u8>,
}

/// What the metadata group holds of the topology.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopologyRecords {
    /// By internal name.
    pub exchanges: BTreeMap<String, ExchangeRecord>,
    pub bindings: BTreeSet<BindingRecord>,
}

/// The answer to a topology command.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TopologyOutcome {
    /// Recorded (or already there, the same).
    Done,
    /// An exchange of that name exists with other properties: the existing one.
    Conflict(ExchangeRecord),
    /// No exchange of that name (a delete or a binding of an unknown exchange).
    NoExchange,
    /// `DeleteExchange` with `if_unused` of an exchange that still has bindings.
    InUse,
}

/// A topology command applied: its answer, and whether the records changed.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Applied {
    pub(crate) outcome: TopologyOutcome,
    pub(crate) changed: bool,
}

impl Applied {
    fn done(changed: bool) -> Applied {
        Applied {
            outcome: TopologyOutcome::Done,
            changed,
        }
    }

    fn refused(outcome: TopologyOutcome) -> Applied {
        Applied {
            outcome,
            changed: false,
        }
    }
}

impl TopologyRecords {
    /// Records an exchange; its name taken by an exchange with other properties is a
    /// conflict.
    pub(crate) fn declare(&mut self, record: ExchangeRecord) -> Applied {
        match self.exchanges.get(&record.name) {
            Some(existing) if *existing != record => {
                Applied::refused(TopologyOutcome::Conflict(existing.clone()))
            }
            Some(_) => Applied::done(false),
            None => {
                self.exchanges.insert(record.name.clone(), record);
                Applied::done(true)
            }
        }
    }

    pub(crate) fn delete(&mut self, name: &str, if_unused: bool) -> Applied {
        if !self.exchanges.contains_key(name) {
            return Applied::refused(TopologyOutcome::NoExchange);
        }
        if if_unused && self.bindings.iter().any(|b| b.exchange == name) {
            return Applied::refused(TopologyOutcome::InUse);
        }
        self.exchanges.remove(name);
        self.bindings.retain(|b| b.exchange != name);
        Applied::done(true)
    }

    /// Binds; a binding from an exchange the records do not hold (a built-in one, or one
    /// declared before the node was clustered) is recorded all the same: every node has the
    /// built-ins.
    pub(crate) fn bind(&mut self, record: BindingRecord) -> Applied {
        Applied::done(self.bindings.insert(record))
    }

    pub(crate) fn unbind(&mut self, record: &BindingRecord) -> Applied {
        Applied::done(self.bindings.remove(record))
    }

    /// Binds as the queue's only binding to the exchange: any other is replaced.
    pub(crate) fn bind_sole(&mut self, record: BindingRecord) -> Applied {
        let before = self.bindings.len();
        self.bindings
            .retain(|b| b == &record || b.exchange != record.exchange || b.queue != record.queue);
        let removed = self.bindings.len() != before;
        let added = self.bindings.insert(record);
        Applied::done(removed || added)
    }

    /// Removes every binding of `queue` to `exchange`.
    pub(crate) fn unbind_queue(&mut self, exchange: &str, queue: &str) -> Applied {
        let before = self.bindings.len();
        self.bindings
            .retain(|b| b.exchange != exchange || b.queue != queue);
        Applied::done(self.bindings.len() != before)
    }

    /// Forgets the bindings of a deleted queue; whether it had any.
    pub(crate) fn queue_deleted(&mut self, queue: &str) -> bool {
        let before = self.bindings.len();
        self.bindings.retain(|b| b.queue != queue);
        self.bindings.len() != before
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exchange(name: &str, kind: &str) -> ExchangeRecord {
        ExchangeRecord {
            name: name.into(),
            kind: kind.into(),
            durable: true,
            alternate_exchange: None,
            hash_header: None,
        }
    }

    fn binding(exchange: &str, queue: &str) -> BindingRecord {
        BindingRecord {
            exchange: exchange.into(),
            queue: queue.into(),
            routing_key: "k".into(),
            arguments: vec![],
        }
    }

    #[test]
    fn a_redeclare_with_other_properties_answers_with_the_existing_exchange() {
        let mut t = TopologyRecords::default();
        assert_eq!(
            t.declare(exchange("x", "direct")).outcome,
            TopologyOutcome::Done
        );
        assert_eq!(
            t.declare(exchange("x", "direct")).outcome,
            TopologyOutcome::Done
        );
        assert_eq!(
            t.declare(exchange("x", "fanout")).outcome,
            TopologyOutcome::Conflict(exchange("x", "direct"))
        );
    }

    #[test]
    fn deleting_an_exchange_drops_its_bindings_unless_asked_if_unused() {
        let mut t = TopologyRecords::default();
        t.declare(exchange("x", "direct"));
        t.bind(binding("x", "q"));
        t.bind(binding("amq.direct", "q"));
        assert_eq!(t.delete("x", true).outcome, TopologyOutcome::InUse);
        assert_eq!(t.delete("x", false).outcome, TopologyOutcome::Done);
        assert_eq!(t.delete("x", false).outcome, TopologyOutcome::NoExchange);
        assert_eq!(
            t.bindings.iter().collect::<Vec<_>>(),
            vec![&binding("amq.direct", "q")]
        );
        t.queue_deleted("q");
        assert!(t.bindings.is_empty());
    }

    #[test]
    fn a_sole_binding_replaces_the_queues_other_one_and_unbind_queue_takes_any() {
        let mut t = TopologyRecords::default();
        let weight = |w: u8| BindingRecord {
            arguments: vec![w],
            ..binding("canary", "v2")
        };
        assert!(t.bind_sole(weight(5)).changed);
        assert!(t.bind(binding("canary", "v1")).changed);
        assert!(!t.bind_sole(weight(5)).changed);
        assert!(t.bind_sole(weight(50)).changed);
        let v2: Vec<_> = t.bindings.iter().filter(|b| b.queue == "v2").collect();
        assert_eq!(v2, [&weight(50)]);
        assert!(t.unbind_queue("canary", "v2").changed);
        assert!(!t.unbind_queue("canary", "v2").changed);
        assert_eq!(t.bindings.len(), 1, "v1 keeps its binding");
    }
}
