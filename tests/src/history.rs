//! The history of a cluster test as its clients saw it — per message id: published,
//! confirmed or refused, delivered (each time, by which node, with the redelivered flag),
//! acked (and whether that ack was confirmed) — and a model check of it against what
//! at-least-once delivery promises.
//!
//! [`ledger`](crate::ledger) checks one queue log on disk by seq after a writer was killed;
//! this checks what clients observed of a replicated queue by message id, across nodes and
//! failovers, with no access to any node's files. The rules are the same two, seen from the
//! client: a confirmed message is never lost, and an ack that was confirmed stays (the
//! message never comes back).
//!
//! Events are ordered by when they were recorded ([`History`] is one shared, locked log), so
//! record a delivery as soon as the client hands it over and an ack confirmation as soon as
//! it returns. A delivery recorded after the confirmation of an ack of the same message is a
//! violation; one recorded while the ack was unconfirmed, or lost with its connection, is
//! what at-least-once allows.
//!
//! ```
//! use sluice_tests::history::{AckOutcome, History, Violation};
//! let history = History::new();
//! history.published("m1");
//! history.confirmed("m1");
//! history.delivered("m1", 2, false);
//! history.acked("m1", 2, AckOutcome::Confirmed);
//! assert!(history.check().is_empty());
//!
//! history.published("m2");
//! history.confirmed("m2");
//! assert_eq!(history.check(), vec![Violation::Lost { id: "m2".into() }]);
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::cluster::NodeId;

/// A message's id, as the test put it on the message.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MessageId(pub String);

impl From<&str> for MessageId {
    fn from(id: &str) -> Self {
        MessageId(id.to_owned())
    }
}

impl From<String> for MessageId {
    fn from(id: String) -> Self {
        MessageId(id)
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Where an event is in the history: events are numbered in the order they were recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Position(pub u64);

/// What became of an ack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckOutcome {
    /// The broker confirmed it (`ack_confirmed` returned): settled for good.
    Confirmed,
    /// Sent, with no confirmation asked for or received.
    Unconfirmed,
    /// Never took effect: the connection or the node was lost meanwhile (`DeliveryLost`).
    Lost,
}

/// One delivery of a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivery {
    pub at: Position,
    pub node: NodeId,
    pub redelivered: bool,
}

/// One ack of a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ack {
    pub at: Position,
    pub node: NodeId,
    pub outcome: AckOutcome,
}

/// What the broker answered a publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PublishOutcome {
    Confirmed(Position),
    /// Refused or failed (the error's text): the message may or may not be in the queue.
    Refused(Position, String),
}

/// Everything recorded about one message.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MessageRecord {
    pub published: Option<Position>,
    pub outcome: Option<PublishOutcome>,
    pub deliveries: Vec<Delivery>,
    pub acks: Vec<Ack>,
}

impl MessageRecord {
    fn confirmed(&self) -> bool {
        matches!(self.outcome, Some(PublishOutcome::Confirmed(_)))
    }

    /// The first ack the broker confirmed.
    fn settled(&self) -> Option<&Ack> {
        self.acks
            .iter()
            .find(|a| a.outcome == AckOutcome::Confirmed)
    }
}

/// A broken promise found in a history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Violation {
    /// Confirmed, and never delivered.
    Lost { id: MessageId },
    /// Delivered again after an ack of it was confirmed: more than at-least-once allows.
    DeliveredAfterAck {
        id: MessageId,
        ack: Ack,
        delivery: Delivery,
    },
    /// Delivered, and never published by the test.
    NeverPublished { id: MessageId, delivery: Delivery },
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Violation::Lost { id } => write!(f, "{id}: confirmed, never delivered"),
            Violation::DeliveredAfterAck { id, ack, delivery } => write!(
                f,
                "{id}: delivered by node {} at #{} after its ack was confirmed by node {} at #{}",
                delivery.node, delivery.at.0, ack.node, ack.at.0
            ),
            Violation::NeverPublished { id, delivery } => write!(
                f,
                "{id}: delivered by node {} at #{}, never published",
                delivery.node, delivery.at.0
            ),
        }
    }
}

/// Counts of a history, for a test's report and its sanity checks (a run that confirmed
/// nothing proves nothing).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Summary {
    pub published: u64,
    pub confirmed: u64,
    pub refused: u64,
    /// Messages delivered at least once.
    pub delivered: u64,
    /// Deliveries beyond each message's first.
    pub duplicates: u64,
    /// Of those, deliveries without the redelivered flag.
    pub unflagged_duplicates: u64,
    /// Messages with a confirmed ack.
    pub acked: u64,
    /// Nodes killed during the run.
    pub kills: u64,
}

#[derive(Debug, Default)]
struct Log {
    next: u64,
    messages: BTreeMap<MessageId, MessageRecord>,
    kills: Vec<(Position, NodeId)>,
}

impl Log {
    fn position(&mut self) -> Position {
        self.next += 1;
        Position(self.next)
    }

    fn record(&mut self, id: MessageId) -> (Position, &mut MessageRecord) {
        let at = self.position();
        (at, self.messages.entry(id).or_default())
    }
}

/// A shared, append-only history; clones record into the same one.
#[derive(Debug, Clone, Default)]
pub struct History {
    log: Arc<Mutex<Log>>,
}

impl History {
    /// An empty history.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Log> {
        self.log.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The test is about to publish `id` (record before sending: a delivery may race the
    /// confirmation).
    pub fn published(&self, id: impl Into<MessageId>) {
        let mut log = self.lock();
        let (at, record) = log.record(id.into());
        record.published.get_or_insert(at);
    }

    /// The broker confirmed the publish of `id`.
    pub fn confirmed(&self, id: impl Into<MessageId>) {
        let mut log = self.lock();
        let (at, record) = log.record(id.into());
        record.outcome = Some(PublishOutcome::Confirmed(at));
    }

    /// The publish of `id` failed with `error` (refused, or its connection lost before the
    /// confirm). A later resend that is confirmed overrides this.
    pub fn refused(&self, id: impl Into<MessageId>, error: impl fmt::Display) {
        let mut log = self.lock();
        let (at, record) = log.record(id.into());
        if !record.confirmed() {
            record.outcome = Some(PublishOutcome::Refused(at, error.to_string()));
        }
    }

    /// Node `node` delivered `id` (`redelivered`: the delivery's flag).
    pub fn delivered(&self, id: impl Into<MessageId>, node: NodeId, redelivered: bool) {
        let mut log = self.lock();
        let (at, record) = log.record(id.into());
        record.deliveries.push(Delivery {
            at,
            node,
            redelivered,
        });
    }

    /// The test acked `id` on node `node`, with `outcome`.
    pub fn acked(&self, id: impl Into<MessageId>, node: NodeId, outcome: AckOutcome) {
        let mut log = self.lock();
        let (at, record) = log.record(id.into());
        record.acks.push(Ack { at, node, outcome });
    }

    /// The test killed node `node` (for the summary, and to read a failing history).
    pub fn killed(&self, node: NodeId) {
        let mut log = self.lock();
        let at = log.position();
        log.kills.push((at, node));
    }

    /// What was recorded about `id`.
    pub fn record(&self, id: impl Into<MessageId>) -> Option<MessageRecord> {
        self.lock().messages.get(&id.into()).cloned()
    }

    /// Every broken promise, in message id order (at most one of each kind per message).
    pub fn check(&self) -> Vec<Violation> {
        let log = self.lock();
        let mut violations = Vec::new();
        for (id, record) in &log.messages {
            if let (None, Some(&delivery)) = (record.published, record.deliveries.first()) {
                violations.push(Violation::NeverPublished {
                    id: id.clone(),
                    delivery,
                });
            }
            if record.confirmed() && record.deliveries.is_empty() {
                violations.push(Violation::Lost { id: id.clone() });
            }
            if let Some(&ack) = record.settled() {
                if let Some(&delivery) = record.deliveries.iter().find(|d| d.at > ack.at) {
                    violations.push(Violation::DeliveredAfterAck {
                        id: id.clone(),
                        ack,
                        delivery,
                    });
                }
            }
        }
        violations
    }

    /// The counts of the history.
    pub fn summary(&self) -> Summary {
        let log = self.lock();
        let mut s = Summary {
            kills: log.kills.len() as u64,
            ..Summary::default()
        };
        for record in log.messages.values() {
            s.published += u64::from(record.published.is_some());
            match record.outcome {
                Some(PublishOutcome::Confirmed(_)) => s.confirmed += 1,
                Some(PublishOutcome::Refused(..)) => s.refused += 1,
                None => {}
            }
            s.delivered += u64::from(!record.deliveries.is_empty());
            let again = record.deliveries.iter().skip(1);
            s.duplicates += again.clone().count() as u64;
            s.unflagged_duplicates += again.filter(|d| !d.redelivered).count() as u64;
            s.acked += u64::from(record.settled().is_some());
        }
        s
    }

    /// Panics with the violations (the first 20) and the summary unless the history is clean.
    pub fn assert_clean(&self) {
        let violations = self.check();
        if violations.is_empty() {
            return;
        }
        let shown: Vec<String> = violations.iter().take(20).map(|v| v.to_string()).collect();
        panic!(
            "{} violation(s) of at-least-once delivery ({:?}):\n{}",
            violations.len(),
            self.summary(),
            shown.join("\n")
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn confirmed(h: &History, id: &str) {
        h.published(id);
        h.confirmed(id);
    }

    #[test]
    fn a_history_where_every_confirmed_message_is_delivered_and_acked_once_is_clean() {
        let h = History::new();
        for i in 0..100 {
            let id = format!("m{i}");
            confirmed(&h, &id);
            h.delivered(id.as_str(), 1 + i % 3, false);
            h.acked(id.as_str(), 1 + i % 3, AckOutcome::Confirmed);
        }
        assert_eq!(h.check(), vec![]);
        let s = h.summary();
        assert_eq!(
            (s.published, s.confirmed, s.delivered, s.acked),
            (100, 100, 100, 100)
        );
        assert_eq!(s.duplicates, 0);
    }

    #[test]
    fn a_confirmed_message_never_delivered_is_lost() {
        let h = History::new();
        confirmed(&h, "kept");
        h.delivered("kept", 1, false);
        confirmed(&h, "gone");
        assert_eq!(h.check(), vec![Violation::Lost { id: "gone".into() }]);
        assert!(std::panic::catch_unwind(|| h.assert_clean()).is_err());
    }

    #[test]
    fn an_unconfirmed_or_refused_message_may_be_missing_or_delivered() {
        let h = History::new();
        h.published("never-answered");
        h.published("refused");
        h.refused("refused", "connection lost");
        h.published("refused-but-stored");
        h.refused("refused-but-stored", "connection lost");
        h.delivered("refused-but-stored", 2, false);
        assert_eq!(h.check(), vec![]);
        assert_eq!(h.summary().refused, 2);
    }

    #[test]
    fn a_resend_confirmed_after_a_failure_counts_as_confirmed() {
        let h = History::new();
        h.published("m");
        h.refused("m", "node killed");
        h.confirmed("m");
        h.refused("m", "a late error of the first attempt");
        assert_eq!(h.summary().confirmed, 1);
        assert_eq!(h.check(), vec![Violation::Lost { id: "m".into() }]);
    }

    #[test]
    fn redelivery_before_the_ack_is_confirmed_is_at_least_once() {
        let h = History::new();
        confirmed(&h, "m");
        h.delivered("m", 1, false);
        h.killed(1);
        // The ack went to a dead node; the new leader delivers again.
        h.acked("m", 1, AckOutcome::Lost);
        h.delivered("m", 2, true);
        h.acked("m", 2, AckOutcome::Unconfirmed);
        h.delivered("m", 3, true);
        h.acked("m", 3, AckOutcome::Confirmed);
        assert_eq!(h.check(), vec![]);
        let s = h.summary();
        assert_eq!((s.duplicates, s.unflagged_duplicates, s.kills), (2, 0, 1));
    }

    #[test]
    fn a_delivery_after_a_confirmed_ack_is_a_violation() {
        let h = History::new();
        confirmed(&h, "m");
        h.delivered("m", 1, false);
        h.acked("m", 1, AckOutcome::Confirmed);
        h.killed(1);
        h.delivered("m", 2, false);
        let violations = h.check();
        assert_eq!(violations.len(), 1);
        let Violation::DeliveredAfterAck { id, ack, delivery } = &violations[0] else {
            panic!("{violations:?}")
        };
        assert_eq!(id, &MessageId::from("m"));
        assert_eq!((ack.node, delivery.node), (1, 2));
        assert!(delivery.at > ack.at);
        assert!(violations[0]
            .to_string()
            .contains("after its ack was confirmed"));
        assert_eq!(h.summary().unflagged_duplicates, 1);
    }

    #[test]
    fn a_delivery_of_a_message_never_published_is_a_violation() {
        let h = History::new();
        h.delivered("stranger", 3, false);
        assert!(matches!(
            h.check().as_slice(),
            [Violation::NeverPublished { id, delivery }] if id.0 == "stranger" && delivery.node == 3
        ));
    }

    #[test]
    fn violations_come_in_message_id_order_and_records_are_kept_per_id() {
        let h = History::new();
        confirmed(&h, "b");
        confirmed(&h, "a");
        h.delivered("c", 1, false);
        let kinds: Vec<String> = h.check().iter().map(|v| v.to_string()).collect();
        assert_eq!(
            kinds,
            vec![
                "a: confirmed, never delivered",
                "b: confirmed, never delivered",
                "c: delivered by node 1 at #5, never published"
            ]
        );
        let record = h.record("a").unwrap();
        assert_eq!(record.published, Some(Position(3)));
        assert_eq!(record.outcome, Some(PublishOutcome::Confirmed(Position(4))));
    }

    #[test]
    fn clones_record_into_one_history_from_many_threads() {
        let h = History::new();
        std::thread::scope(|scope| {
            for t in 0..4 {
                let h = h.clone();
                scope.spawn(move || {
                    for i in 0..250 {
                        let id = format!("t{t}-{i}");
                        h.published(id.as_str());
                        h.confirmed(id.as_str());
                        h.delivered(id.as_str(), t, false);
                    }
                });
            }
        });
        assert_eq!(h.summary().delivered, 1000);
        assert_eq!(h.check(), vec![]);
    }
}
