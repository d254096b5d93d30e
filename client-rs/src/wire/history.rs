//! A message's history (protocol.md §21): "why is this message stuck". Each queue keeps, for
//! a bounded window, what happened to its recent messages that carry a `message_id`: where
//! they came from, each delivery with its consumer, connection and lease, nacks and rejects
//! with the reason the worker gave, lease expiries, and how they left.
//!
//! ```text
//! TraceMessage:   message_id str
//! TraceMessageOk: flags u8 (0 truncated), count u16, count × history
//! history:        queue str, message_seq u64, message_id str, state u8, deadline_ms u64,
//!                 present u8 (0 trace_parent), [trace_parent 25 bytes],
//!                 events_dropped u32, count u16, count × event
//! event:          at_ms u64, kind u8, then the kind's fields (below)
//! ```

use bytes::BytesMut;

use super::error::WireError;
use super::frame::Payload;
use super::primitives::{self as p, Reader};
use super::trace::TraceParent;

/// Most messages one `TraceMessageOk` holds (one per queue the id was found in).
pub const MAX_TRACED_MESSAGES: usize = 100;
/// Most events one message's history keeps; older ones are dropped and counted.
pub const MAX_HISTORY_EVENTS: usize = 64;

const TRUNCATED: u8 = 1 << 0;
const HAS_TRACE_PARENT: u8 = 1 << 0;

/// `TraceMessage` (0x0619): asks every queue of the vhost for the history of the messages
/// whose `message_id` is this.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TraceMessage {
    /// The application's message id (meta property 2).
    pub message_id: String,
}

impl Payload for TraceMessage {
    fn encode(&self, buf: &mut BytesMut) -> Result<(), WireError> {
        p::put_str(buf, "message id", &self.message_id)
    }

    fn decode(r: &mut Reader<'_>) -> Result<Self, WireError> {
        Ok(TraceMessage {
            message_id: r.string()?,
        })
    }
}

/// `TraceMessageOk` (0x061A): the histories found, oldest first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TraceMessageOk {
    /// More than [`MAX_TRACED_MESSAGES`] were found; these are the first.
    pub truncated: bool,
    /// One per queue that holds (or held, within its window) a message with the id.
    pub messages: Vec<MessageHistory>,
}

impl Payload for TraceMessageOk {
    fn encode(&self, buf: &mut BytesMut) -> Result<(), WireError> {
        p::put_u8(buf, if self.truncated { TRUNCATED } else { 0 });
        put_count16(buf, "traced messages", self.messages.len())?;
        self.messages.iter().try_for_each(|m| m.encode(buf))
    }

    fn decode(r: &mut Reader<'_>) -> Result<Self, WireError> {
        let flags = r.flags_u8("trace flags", TRUNCATED)?;
        let count = r.u16()? as usize;
        let count = r.count(count, MIN_HISTORY_LEN)?;
        let messages = (0..count)
            .map(|_| MessageHistory::decode(r))
            .collect::<Result<_, _>>()?;
        Ok(TraceMessageOk {
            truncated: flags & TRUNCATED != 0,
            messages,
        })
    }
}

/// Smallest encoded history: empty strings, no trace parent, no events.
const MIN_HISTORY_LEN: usize = 2 + 8 + 2 + 1 + 8 + 1 + 4 + 2;

/// Where a message is now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum MessageState {
    /// Waiting for a consumer.
    Ready = 0,
    /// Delivered and not settled; `deadline_ms` is when its lease runs out.
    Delivered = 1,
    /// Waiting for its time (a delay, or a requeue with a delay); `deadline_ms` is when it
    /// becomes ready.
    Scheduled = 2,
    /// Taken by a move to another queue, not settled yet.
    Moving = 3,
    /// No longer in the queue: acked, dead-lettered, dropped, purged or moved (the last
    /// event says which).
    Gone = 4,
}

impl MessageState {
    /// The name the CLI and the HTTP API show.
    pub fn as_str(self) -> &'static str {
        match self {
            MessageState::Ready => "ready",
            MessageState::Delivered => "delivered",
            MessageState::Scheduled => "scheduled",
            MessageState::Moving => "moving",
            MessageState::Gone => "gone",
        }
    }

    fn from_u8(v: u8) -> Result<Self, WireError> {
        Ok(match v {
            0 => MessageState::Ready,
            1 => MessageState::Delivered,
            2 => MessageState::Scheduled,
            3 => MessageState::Moving,
            4 => MessageState::Gone,
            _ => {
                return Err(WireError::InvalidValue {
                    what: "message state",
                    value: u64::from(v),
                })
            }
        })
    }
}

/// One queue's record of one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageHistory {
    /// The queue, in the client's names.
    pub queue: String,
    /// The message's sequence number in that queue.
    pub message_seq: u64,
    /// Its `message_id`.
    pub message_id: String,
    /// Where it is now.
    pub state: MessageState,
    /// Lease deadline (delivered) or due time (scheduled), Unix ms; 0 otherwise.
    pub deadline_ms: u64,
    /// The trace it belongs to, when it carries a `traceparent`.
    pub trace_parent: Option<TraceParent>,
    /// Events dropped because the history was full (the oldest after the first).
    pub events_dropped: u32,
    /// What happened, oldest first.
    pub events: Vec<HistoryEvent>,
}

impl MessageHistory {
    fn encode(&self, buf: &mut BytesMut) -> Result<(), WireError> {
        p::put_str(buf, "queue name", &self.queue)?;
        p::put_u64(buf, self.message_seq);
        p::put_str(buf, "message id", &self.message_id)?;
        p::put_u8(buf, self.state as u8);
        p::put_u64(buf, self.deadline_ms);
        match &self.trace_parent {
            Some(tp) => {
                p::put_u8(buf, HAS_TRACE_PARENT);
                tp.encode(buf);
            }
            None => p::put_u8(buf, 0),
        }
        p::put_u32(buf, self.events_dropped);
        put_count16(buf, "history events", self.events.len())?;
        self.events.iter().try_for_each(|e| e.encode(buf))
    }

    fn decode(r: &mut Reader<'_>) -> Result<Self, WireError> {
        let queue = r.string()?;
        let message_seq = r.u64()?;
        let message_id = r.string()?;
        let state = MessageState::from_u8(r.u8()?)?;
        let deadline_ms = r.u64()?;
        let present = r.flags_u8("history fields", HAS_TRACE_PARENT)?;
        let trace_parent = (present & HAS_TRACE_PARENT != 0)
            .then(|| TraceParent::decode(r))
            .transpose()?;
        let events_dropped = r.u32()?;
        let count = r.u16()? as usize;
        let count = r.count(count, 9)?;
        let events = (0..count)
            .map(|_| HistoryEvent::decode(r))
            .collect::<Result<_, _>>()?;
        Ok(MessageHistory {
            queue,
            message_seq,
            message_id,
            state,
            deadline_ms,
            trace_parent,
            events_dropped,
            events,
        })
    }
}

/// One thing that happened to a message, and when (Unix ms).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryEvent {
    /// When, in milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// What.
    pub kind: HistoryEventKind,
}

/// Why a delivery came back to the queue without being settled by its consumer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ReturnCause {
    /// The consumer gave it back unprocessed (`Extend` to 0).
    Released = 0,
    /// Its connection closed.
    ConnectionClosed = 1,
    /// Its consumer was cancelled by the client or an operator.
    ConsumerCancelled = 2,
}

impl ReturnCause {
    /// The name the CLI and the HTTP API show.
    pub fn as_str(self) -> &'static str {
        match self {
            ReturnCause::Released => "released",
            ReturnCause::ConnectionClosed => "connection-closed",
            ReturnCause::ConsumerCancelled => "consumer-cancelled",
        }
    }
}

/// What happened (the `kind` byte and the fields after it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HistoryEventKind {
    /// 0: the queue stored it. `exchange str, routing_key str` (as published).
    Stored {
        /// The exchange it was published to (empty: the default exchange).
        exchange: String,
        /// Its routing key.
        routing_key: String,
    },
    /// 1: delivered. `consumer_tag str (empty: a Get), connection_id u64, delivery_tag u64,
    /// delivery_count u32, lease_deadline_ms u64`.
    Delivered {
        /// The consumer's tag; empty for a `Get`.
        consumer_tag: String,
        /// The connection it went to (as `ListConnections` numbers them).
        connection_id: u64,
        /// Its delivery tag on that connection.
        delivery_tag: u64,
        /// Deliveries of the message, this one included.
        delivery_count: u32,
        /// When its lease runs out, Unix ms.
        lease_deadline_ms: u64,
    },
    /// 2: acked; the message is deleted. `connection_id u64`.
    Acked {
        /// The connection that acked it.
        connection_id: u64,
    },
    /// 3: nacked with requeue. `delay_ms u64 (0: none), reason str (empty: none)`.
    Nacked {
        /// Ready again only after this long (0: at once, or after the queue's backoff).
        delay_ms: u64,
        /// The reason the worker gave.
        reason: Option<String>,
    },
    /// 4: rejected (or nacked without requeue). `reason str (empty: none)`.
    Rejected {
        /// The reason the worker gave.
        reason: Option<String>,
    },
    /// 5: its lease ran out before it was settled; it is ready again (or dead-lettered past
    /// the delivery limit). `connection_id u64`.
    LeaseExpired {
        /// The connection that held it.
        connection_id: u64,
    },
    /// 6: its lease was moved. `lease_deadline_ms u64`.
    LeaseExtended {
        /// The new deadline, Unix ms.
        lease_deadline_ms: u64,
    },
    /// 7: back in the queue without a settlement. `cause u8`.
    Returned {
        /// Why.
        cause: ReturnCause,
    },
    /// 8: dead-lettered, or dropped when there is nowhere to send it. `reason str
    /// (rejected, expired, maxlen, delivery-limit), routed u8 (1: to an exchange, 0:
    /// dropped), [exchange str if routed]`.
    DeadLettered {
        /// Why it died (the `x-death-reason`).
        reason: String,
        /// The dead-letter exchange, in the client's names (empty: the default exchange);
        /// `None` when it was dropped.
        exchange: Option<String>,
    },
    /// 9: removed by a purge. (no fields)
    Purged,
    /// 10: moved to another queue. `queue str`.
    Moved {
        /// The destination queue.
        to_queue: String,
    },
}

impl HistoryEventKind {
    /// The event's name, as the CLI and the HTTP API show it.
    pub fn name(&self) -> &'static str {
        match self {
            HistoryEventKind::Stored { .. } => "stored",
            HistoryEventKind::Delivered { .. } => "delivered",
            HistoryEventKind::Acked { .. } => "acked",
            HistoryEventKind::Nacked { .. } => "nacked",
            HistoryEventKind::Rejected { .. } => "rejected",
            HistoryEventKind::LeaseExpired { .. } => "lease-expired",
            HistoryEventKind::LeaseExtended { .. } => "lease-extended",
            HistoryEventKind::Returned { .. } => "returned",
            HistoryEventKind::DeadLettered { .. } => "dead-lettered",
            HistoryEventKind::Purged => "purged",
            HistoryEventKind::Moved { .. } => "moved",
        }
    }
}

impl HistoryEvent {
    fn encode(&self, buf: &mut BytesMut) -> Result<(), WireError> {
        use HistoryEventKind as K;
        p::put_u64(buf, self.at_ms);
        match &self.kind {
            K::Stored {
                exchange,
                routing_key,
            } => {
                p::put_u8(buf, 0);
                p::put_str(buf, "exchange name", exchange)?;
                p::put_str(buf, "routing key", routing_key)?;
            }
            K::Delivered {
                consumer_tag,
                connection_id,
                delivery_tag,
                delivery_count,
                lease_deadline_ms,
            } => {
                p::put_u8(buf, 1);
                p::put_str(buf, "consumer tag", consumer_tag)?;
                p::put_u64(buf, *connection_id);
                p::put_u64(buf, *delivery_tag);
                p::put_u32(buf, *delivery_count);
                p::put_u64(buf, *lease_deadline_ms);
            }
            K::Acked { connection_id } => {
                p::put_u8(buf, 2);
                p::put_u64(buf, *connection_id);
            }
            K::Nacked { delay_ms, reason } => {
                p::put_u8(buf, 3);
                p::put_u64(buf, *delay_ms);
                put_reason(buf, reason)?;
            }
            K::Rejected { reason } => {
                p::put_u8(buf, 4);
                put_reason(buf, reason)?;
            }
            K::LeaseExpired { connection_id } => {
                p::put_u8(buf, 5);
                p::put_u64(buf, *connection_id);
            }
            K::LeaseExtended { lease_deadline_ms } => {
                p::put_u8(buf, 6);
                p::put_u64(buf, *lease_deadline_ms);
            }
            K::Returned { cause } => {
                p::put_u8(buf, 7);
                p::put_u8(buf, *cause as u8);
            }
            K::DeadLettered { reason, exchange } => {
                p::put_u8(buf, 8);
                p::put_str(buf, "death reason", reason)?;
                match exchange {
                    Some(x) => {
                        p::put_u8(buf, 1);
                        p::put_str(buf, "exchange name", x)?;
                    }
                    None => p::put_u8(buf, 0),
                }
            }
            K::Purged => p::put_u8(buf, 9),
            K::Moved { to_queue } => {
                p::put_u8(buf, 10);
                p::put_str(buf, "queue name", to_queue)?;
            }
        }
        Ok(())
    }

    fn decode(r: &mut Reader<'_>) -> Result<Self, WireError> {
        use HistoryEventKind as K;
        let at_ms = r.u64()?;
        let kind = match r.u8()? {
            0 => K::Stored {
                exchange: r.string()?,
                routing_key: r.string()?,
            },
            1 => K::Delivered {
                consumer_tag: r.string()?,
                connection_id: r.u64()?,
                delivery_tag: r.u64()?,
                delivery_count: r.u32()?,
                lease_deadline_ms: r.u64()?,
            },
            2 => K::Acked {
                connection_id: r.u64()?,
            },
            3 => K::Nacked {
                delay_ms: r.u64()?,
                reason: read_reason(r)?,
            },
            4 => K::Rejected {
                reason: read_reason(r)?,
            },
            5 => K::LeaseExpired {
                connection_id: r.u64()?,
            },
            6 => K::LeaseExtended {
                lease_deadline_ms: r.u64()?,
            },
            7 => K::Returned {
                cause: match r.u8()? {
                    0 => ReturnCause::Released,
                    1 => ReturnCause::ConnectionClosed,
                    2 => ReturnCause::ConsumerCancelled,
                    v => {
                        return Err(WireError::InvalidValue {
                            what: "return cause",
                            value: u64::from(v),
                        })
                    }
                },
            },
            8 => K::DeadLettered {
                reason: r.string()?,
                exchange: match r.u8()? {
                    0 => None,
                    1 => Some(r.string()?),
                    v => {
                        return Err(WireError::InvalidValue {
                            what: "dead-lettered routed flag",
                            value: u64::from(v),
                        })
                    }
                },
            },
            9 => K::Purged,
            10 => K::Moved {
                to_queue: r.string()?,
            },
            v => {
                return Err(WireError::InvalidValue {
                    what: "history event kind",
                    value: u64::from(v),
                })
            }
        };
        Ok(HistoryEvent { at_ms, kind })
    }
}

/// A reason as a `str`, empty for none (an empty reason is never kept).
fn put_reason(buf: &mut BytesMut, reason: &Option<String>) -> Result<(), WireError> {
    p::put_str(buf, "settle reason", reason.as_deref().unwrap_or(""))
}

fn read_reason(r: &mut Reader<'_>) -> Result<Option<String>, WireError> {
    let s = r.string()?;
    Ok((!s.is_empty()).then_some(s))
}

fn put_count16(buf: &mut BytesMut, what: &'static str, n: usize) -> Result<(), WireError> {
    let n = p::checked_len(what, n, u16::MAX as usize)?;
    p::put_u16(buf, n as u16);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::testing::{check_payload, hex};

    #[test]
    fn trace_message_request() {
        check_payload(
            &TraceMessage {
                message_id: "m-1".into(),
            },
            &hex("03 00 6d 2d 31"),
        );
    }

    fn every_event() -> Vec<HistoryEvent> {
        use HistoryEventKind as K;
        let kinds = vec![
            K::Stored {
                exchange: "".into(),
                routing_key: "q".into(),
            },
            K::Delivered {
                consumer_tag: "w1".into(),
                connection_id: 7,
                delivery_tag: 3,
                delivery_count: 1,
                lease_deadline_ms: 30_000,
            },
            K::Nacked {
                delay_ms: 0,
                reason: Some("db down".into()),
            },
            K::LeaseExtended {
                lease_deadline_ms: 60_000,
            },
            K::LeaseExpired { connection_id: 7 },
            K::Returned {
                cause: ReturnCause::ConnectionClosed,
            },
            K::Rejected { reason: None },
            K::DeadLettered {
                reason: "rejected".into(),
                exchange: Some("dlx".into()),
            },
            K::DeadLettered {
                reason: "expired".into(),
                exchange: None,
            },
            K::Acked { connection_id: 7 },
            K::Purged,
            K::Moved {
                to_queue: "other".into(),
            },
        ];
        kinds
            .into_iter()
            .enumerate()
            .map(|(i, kind)| HistoryEvent {
                at_ms: 1000 + i as u64,
                kind,
            })
            .collect()
    }

    #[test]
    fn a_short_history_has_exact_bytes() {
        let answer = TraceMessageOk {
            truncated: false,
            messages: vec![MessageHistory {
                queue: "q".into(),
                message_seq: 5,
                message_id: "m".into(),
                state: MessageState::Ready,
                deadline_ms: 0,
                trace_parent: None,
                events_dropped: 0,
                events: vec![HistoryEvent {
                    at_ms: 1,
                    kind: HistoryEventKind::Purged,
                }],
            }],
        };
        check_payload(
            &answer,
            &hex(
                "00  01 00  01 00 71  05 00 00 00 00 00 00 00  01 00 6d  00  \
                 00 00 00 00 00 00 00 00  00  00 00 00 00  01 00  \
                 01 00 00 00 00 00 00 00  09",
            ),
        );
    }

    #[test]
    fn every_event_kind_round_trips_and_no_prefix_decodes() {
        let tp =
            TraceParent::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap();
        let answer = TraceMessageOk {
            truncated: true,
            messages: vec![MessageHistory {
                queue: "orders".into(),
                message_seq: 42,
                message_id: "m-1".into(),
                state: MessageState::Gone,
                deadline_ms: 0,
                trace_parent: Some(tp),
                events_dropped: 2,
                events: every_event(),
            }],
        };
        let mut buf = BytesMut::new();
        answer.encode(&mut buf).unwrap();
        check_payload(&answer, &buf);
        // unknown kinds and states are refused
        let mut bad = buf.to_vec();
        let state_at = 1 + 2 + 8 + 8 + 5;
        bad[state_at] = 9;
        assert!(TraceMessageOk::decode_exact(&bad.into()).is_err());
    }
}
