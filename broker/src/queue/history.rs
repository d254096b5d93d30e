//! A queue's memory of what happened to its recent messages: "why is this message stuck"
//! (`sluice trace MESSAGE-ID`, protocol.md §21).
//!
//! Only messages with a `message_id` are followed (that is what an operator looks them up
//! by). The record is in memory, per queue, and bounded twice: at most
//! [`HistorySettings::max_messages`] messages (the oldest records go first, live or not), and
//! a record of a message that left the queue is kept for [`HistorySettings::window`] after it
//! left. A message's record keeps its first event and its last
//! [`MAX_HISTORY_EVENTS`]` - 1`; the ones dropped between are counted. Records do not survive
//! a restart.
//!
//! The cost on the hot path: one `message_id` peek per stored message when the history is on,
//! and one hash lookup per delivery and settlement while any message is followed.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use sluice_client::wire::{
    HistoryEvent, HistoryEventKind, MessageHistory, MessageState, MetaView, TraceParent,
    MAX_HISTORY_EVENTS,
};

/// Most bytes (roughly: strings and event records) one queue's history holds; past it the
/// oldest records go, whatever the window and the count allow. It bounds what clients can
/// make the broker keep: 10,000 messages nacked 64 times each with 1 KiB reasons would
/// otherwise hold 650 MB.
pub const MAX_HISTORY_BYTES: usize = 16 << 20;

/// Bytes an event costs besides its strings.
const EVENT_COST: usize = 64;
/// Bytes a record costs besides its events and id.
const RECORD_COST: usize = 160;

/// How much history a queue keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistorySettings {
    /// How long a message's record is kept after the message left the queue; zero = no
    /// history at all.
    pub window: Duration,
    /// Most messages a queue keeps records of.
    pub max_messages: usize,
}

impl HistorySettings {
    /// The defaults: ten minutes, 10,000 messages a queue.
    pub const DEFAULT: HistorySettings = HistorySettings {
        window: Duration::from_secs(600),
        max_messages: 10_000,
    };

    /// Whether any history is kept.
    pub fn is_on(&self) -> bool {
        !self.window.is_zero() && self.max_messages > 0
    }
}

impl Default for HistorySettings {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// One message's record.
#[derive(Debug)]
struct Record {
    message_id: Box<str>,
    trace_parent: Option<TraceParent>,
    events: VecDeque<HistoryEvent>,
    events_dropped: u32,
    /// When the message left the queue (Unix ms); `None` while it is in it.
    left_at_ms: Option<u64>,
    /// When it is due, while it waits for its time (Unix ms).
    due_ms: Option<u64>,
    /// What it costs in [`History::bytes`].
    cost: usize,
}

/// The records of one queue's messages, by sequence number.
#[derive(Debug)]
pub(super) struct History {
    settings: HistorySettings,
    records: HashMap<u64, Record>,
    /// Sequence numbers in the order their records were made, oldest first (some may have
    /// been removed from `records` already).
    order: VecDeque<u64>,
    /// What the records cost, bounded by [`MAX_HISTORY_BYTES`].
    bytes: usize,
}

/// What an event costs in [`History::bytes`].
fn event_cost(kind: &HistoryEventKind) -> usize {
    use HistoryEventKind as K;
    let strings = match kind {
        K::Stored {
            exchange,
            routing_key,
        } => exchange.len() + routing_key.len(),
        K::Delivered { consumer_tag, .. } => consumer_tag.len(),
        K::Nacked { reason, .. } | K::Rejected { reason } => reason.as_ref().map_or(0, String::len),
        K::DeadLettered { reason, exchange } => {
            reason.len() + exchange.as_ref().map_or(0, String::len)
        }
        K::Moved { to_queue } => to_queue.len(),
        _ => 0,
    };
    EVENT_COST + strings
}

impl History {
    pub(super) fn new(settings: HistorySettings) -> Self {
        History {
            settings,
            records: HashMap::new(),
            order: VecDeque::new(),
            bytes: 0,
        }
    }

    /// Removes message `seq`'s record.
    fn remove(&mut self, seq: u64) {
        if let Some(r) = self.records.remove(&seq) {
            self.bytes -= r.cost;
        }
    }

    /// Drops the oldest records until the history is within its count and byte bounds
    /// (`room` more records wanted).
    fn make_room(&mut self, room: usize) {
        while self.order.len() + room > self.settings.max_messages || self.bytes > MAX_HISTORY_BYTES
        {
            let Some(old) = self.order.pop_front() else {
                break;
            };
            self.remove(old);
        }
    }

    /// Starts the record of message `seq` if its meta block has a `message_id`.
    pub(super) fn stored(&mut self, seq: u64, meta: &[u8], at_ms: u64) {
        if !self.settings.is_on() {
            return;
        }
        let Some(message_id) = MetaView::peek_message_id(meta) else {
            return;
        };
        let Ok(view) = MetaView::parse(meta) else {
            return;
        };
        self.make_room(1);
        let first = HistoryEvent {
            at_ms,
            kind: HistoryEventKind::Stored {
                exchange: view.exchange.to_owned(),
                routing_key: view.routing_key.to_owned(),
            },
        };
        let cost = RECORD_COST + message_id.len() + event_cost(&first.kind);
        let record = Record {
            message_id: message_id.into(),
            trace_parent: view.trace_parent,
            events: VecDeque::from([first]),
            events_dropped: 0,
            left_at_ms: None,
            due_ms: None,
            cost,
        };
        self.bytes += cost;
        if let Some(old) = self.records.insert(seq, record) {
            self.bytes -= old.cost;
        } else {
            self.order.push_back(seq);
        }
    }

    /// Whether any message is followed (a cheap test before building an event).
    pub(super) fn follows_any(&self) -> bool {
        !self.records.is_empty()
    }

    /// Whether message `seq` is followed.
    pub(super) fn follows(&self, seq: u64) -> bool {
        self.records.contains_key(&seq)
    }

    /// Adds an event to message `seq`'s record, if it has one.
    pub(super) fn record(&mut self, seq: u64, at_ms: u64, kind: HistoryEventKind) {
        let Some(r) = self.records.get_mut(&seq) else {
            return;
        };
        let mut cost = event_cost(&kind) as isize;
        if r.events.len() >= MAX_HISTORY_EVENTS {
            // The first event (where it came from) stays; the oldest after it goes.
            if let Some(gone) = r.events.remove(1) {
                cost -= event_cost(&gone.kind) as isize;
            }
            r.events_dropped += 1;
        }
        r.events.push_back(HistoryEvent { at_ms, kind });
        r.cost = r.cost.saturating_add_signed(cost);
        self.bytes = self.bytes.saturating_add_signed(cost);
        if self.bytes > MAX_HISTORY_BYTES {
            self.make_room(0);
        }
    }

    /// Adds the last event of message `seq`: it left the queue.
    pub(super) fn left(&mut self, seq: u64, at_ms: u64, kind: HistoryEventKind) {
        self.record(seq, at_ms, kind);
        if let Some(r) = self.records.get_mut(&seq) {
            r.left_at_ms = Some(at_ms);
        }
    }

    /// Notes that message `seq` waits until `due_ms` (a delay, or a requeue with a delay).
    pub(super) fn scheduled(&mut self, seq: u64, due_ms: u64) {
        if let Some(r) = self.records.get_mut(&seq) {
            r.due_ms = Some(due_ms);
        }
    }

    /// Notes that message `seq` left the queue, if no event said so already (a move, a
    /// purge of scheduled messages, a queue that drops a transient message).
    pub(super) fn gone(&mut self, seq: u64, at_ms: u64) {
        if let Some(r) = self.records.get_mut(&seq) {
            r.left_at_ms.get_or_insert(at_ms);
        }
    }

    /// Forgets the records of messages that left the queue more than the window ago. Runs
    /// with the queue's maintenance; records are dropped from the oldest, so a message still
    /// in the queue holds back only the records after it until the count bound drops it.
    pub(super) fn prune(&mut self, now_ms: u64) {
        let window_ms = self.settings.window.as_millis() as u64;
        while let Some(&seq) = self.order.front() {
            match self.records.get(&seq) {
                None => {}
                Some(r)
                    if r.left_at_ms
                        .is_some_and(|t| t.saturating_add(window_ms) <= now_ms) =>
                {
                    self.remove(seq);
                }
                Some(_) => break,
            }
            self.order.pop_front();
        }
        // Records removed out of order leave their seqs behind: keep the index in proportion.
        if self.order.len() > 2 * self.records.len() + 1024 {
            let records = &self.records;
            self.order.retain(|seq| records.contains_key(seq));
        }
    }

    /// The records of the messages whose id is `message_id`, oldest first, with where each
    /// is now as `state_of` tells for those still in the queue.
    pub(super) fn find(
        &self,
        queue: &str,
        message_id: &str,
        state_of: impl Fn(u64, Option<u64>) -> (MessageState, u64),
    ) -> Vec<MessageHistory> {
        let mut found: Vec<(u64, &Record)> = self
            .records
            .iter()
            .filter(|(_, r)| &*r.message_id == message_id)
            .map(|(&seq, r)| (seq, r))
            .collect();
        found.sort_unstable_by_key(|&(seq, _)| seq);
        found
            .into_iter()
            .map(|(seq, r)| {
                let (state, deadline_ms) = match r.left_at_ms {
                    Some(_) => (MessageState::Gone, 0),
                    None => state_of(seq, r.due_ms),
                };
                MessageHistory {
                    queue: queue.to_owned(),
                    message_seq: seq,
                    message_id: r.message_id.to_string(),
                    state,
                    deadline_ms,
                    trace_parent: r.trace_parent,
                    events_dropped: r.events_dropped,
                    events: r.events.iter().cloned().collect(),
                }
            })
            .collect()
    }

    /// Messages followed now.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.records.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_client::wire::MessageMeta;

    fn meta(id: Option<&str>) -> Vec<u8> {
        let mut m = MessageMeta::new("ex", "rk");
        m.properties.message_id = id.map(str::to_owned);
        m.to_bytes().unwrap().to_vec()
    }

    fn settings(window_ms: u64, max_messages: usize) -> HistorySettings {
        HistorySettings {
            window: Duration::from_millis(window_ms),
            max_messages,
        }
    }

    fn ready(_: u64, _: Option<u64>) -> (MessageState, u64) {
        (MessageState::Ready, 0)
    }

    #[test]
    fn only_messages_with_an_id_are_followed() {
        let mut h = History::new(HistorySettings::DEFAULT);
        h.stored(1, &meta(None), 10);
        h.stored(2, &meta(Some("a")), 10);
        assert!(!h.follows(1) && h.follows(2));
        h.record(1, 11, HistoryEventKind::Acked { connection_id: 1 });
        let found = h.find("q", "a", ready);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].message_seq, 2);
        assert_eq!(found[0].state, MessageState::Ready);
        assert!(matches!(
            &found[0].events[0].kind,
            HistoryEventKind::Stored { exchange, routing_key } if exchange == "ex" && routing_key == "rk"
        ));
        let mut off = History::new(settings(0, 10));
        off.stored(1, &meta(Some("a")), 10);
        assert!(!off.follows_any());
    }

    #[test]
    fn a_record_is_kept_for_the_window_after_the_message_left() {
        let mut h = History::new(settings(1000, 10));
        h.stored(1, &meta(Some("a")), 0);
        h.stored(2, &meta(Some("b")), 0);
        h.left(1, 100, HistoryEventKind::Acked { connection_id: 1 });
        h.prune(1099);
        assert_eq!(h.find("q", "a", ready)[0].state, MessageState::Gone);
        h.prune(1100);
        assert!(h.find("q", "a", ready).is_empty());
        // b never left: kept whatever the time
        h.prune(1_000_000);
        assert_eq!(h.len(), 1);
    }

    #[test]
    fn the_oldest_records_go_when_the_queue_follows_too_many() {
        let mut h = History::new(settings(1000, 3));
        for seq in 1..=5 {
            h.stored(seq, &meta(Some("same")), seq);
        }
        let seqs: Vec<u64> = h
            .find("q", "same", ready)
            .iter()
            .map(|m| m.message_seq)
            .collect();
        assert_eq!(seqs, [3, 4, 5]);
    }

    #[test]
    fn the_oldest_records_go_when_the_history_holds_too_many_bytes() {
        let mut h = History::new(settings(1000, 1_000_000));
        let reason = "r".repeat(1024);
        for seq in 0..2_000 {
            h.stored(seq, &meta(Some("m")), 0);
            for _ in 0..20 {
                let kind = HistoryEventKind::Rejected {
                    reason: Some(reason.clone()),
                };
                h.record(seq, 1, kind);
            }
        }
        assert!(h.bytes <= MAX_HISTORY_BYTES, "{} bytes", h.bytes);
        assert!(h.len() < 2_000 && h.len() > 500, "{} records", h.len());
        let kept: usize = h.records.values().map(|r| r.cost).sum();
        assert_eq!(kept, h.bytes, "the running total is the records' cost");
        assert!(h.follows(1_999) && !h.follows(0), "the oldest went first");
    }

    #[test]
    fn a_long_history_keeps_its_first_event_and_counts_what_it_dropped() {
        let mut h = History::new(HistorySettings::DEFAULT);
        h.stored(1, &meta(Some("a")), 0);
        for i in 0..100 {
            h.record(1, i, HistoryEventKind::LeaseExpired { connection_id: i });
        }
        let m = &h.find("q", "a", ready)[0];
        assert_eq!(m.events.len(), MAX_HISTORY_EVENTS);
        assert_eq!(m.events_dropped, 100 + 1 - MAX_HISTORY_EVENTS as u32);
        assert_eq!(m.events[0].kind.name(), "stored");
        assert!(matches!(
            m.events.last().unwrap().kind,
            HistoryEventKind::LeaseExpired { connection_id: 99 }
        ));
    }
}
