//! Chaos injection per queue, for operators (docs/chaos.md, protocol.md §22): the one door
//! that the wire session and the HTTP API use to start, end and list injections. The queue
//! task does the work (`queue::chaos`); this module finds the queue, asks it, and reads the
//! listings from the queues' shared stats.

use std::time::Duration;

use sluice_client::wire::{ChaosEntry, ChaosPlan, ListChaosOk, MAX_CHAOS_ENTRIES};
use tokio::sync::oneshot;

use crate::broker::Broker;
use crate::error::RequestError;
use crate::queue::{ConnId, QueueCmd, QueueHandle};
use crate::routing::Namespace;

/// Starts (or replaces) the injection of queue `internal` (its internal name), as connection
/// `conn` (for exclusive queues); returns when it ends (Unix ms).
pub async fn set(
    broker: &Broker,
    conn: ConnId,
    internal: &str,
    plan: ChaosPlan,
    duration_ms: u64,
) -> Result<u64, RequestError> {
    crate::queue::chaos::validate(&plan, duration_ms)?;
    let q = broker.queue(internal, conn)?;
    let (reply, answer) = oneshot::channel();
    let duration = Duration::from_millis(duration_ms);
    let cmd = QueueCmd::SetChaos {
        plan,
        duration,
        reply,
    };
    if !q.send(cmd) {
        return Err(RequestError::no_queue(internal));
    }
    answer.await.map_err(|_| RequestError::no_queue(internal))?
}

/// Ends the injection of queue `internal` now; true when one was running.
pub async fn clear(broker: &Broker, conn: ConnId, internal: &str) -> Result<bool, RequestError> {
    let q = broker.queue(internal, conn)?;
    let (reply, answer) = oneshot::channel();
    if !q.send(QueueCmd::ClearChaos { reply }) {
        return Err(RequestError::no_queue(internal));
    }
    answer.await.map_err(|_| RequestError::no_queue(internal))
}

/// The queue `internal`'s chaos state, named `shown`; `None` when there is no such queue.
pub fn entry(broker: &Broker, internal: &str, shown: &str) -> Option<ChaosEntry> {
    let q = broker.read().queues.get(internal).cloned()?;
    Some(entry_of(&q, shown))
}

/// Queue `q`'s chaos state, named `shown`.
pub fn entry_of(q: &QueueHandle, shown: &str) -> ChaosEntry {
    let chaos = &q.meta.stats.chaos;
    let (plan, until_ms) = chaos.running().unwrap_or_default();
    ChaosEntry {
        queue: shown.to_owned(),
        until_ms,
        plan,
        stats: chaos.stats(),
    }
}

/// The queues of `scope`'s vhost (every queue without one, by internal name) that chaos
/// touched since the broker started: an injection runs or a counter is not 0.
pub fn list(broker: &Broker, scope: Option<&Namespace>) -> ListChaosOk {
    let mut entries = Vec::new();
    let mut more = false;
    for q in broker.queues() {
        let chaos = &q.meta.stats.chaos;
        if !chaos.touched() {
            continue;
        }
        let name = match scope {
            Some(ns) => match ns.local(&q.meta.name) {
                Some(local) => local,
                None => continue,
            },
            None => &q.meta.name,
        };
        if entries.len() == MAX_CHAOS_ENTRIES {
            more = true;
            break;
        }
        entries.push(entry_of(&q, name));
    }
    ListChaosOk { entries, more }
}
