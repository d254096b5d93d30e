//! Scheduled messages (protocol.md §19): browsing the messages of a queue that wait for their
//! time, in due order, and cancelling one.
//!
//! ```text
//! ListScheduled:     queue str, limit u32, after_due_ms u64, after_seq u64
//! ListScheduledOk:   count u32 (bits 0-30: entries, bit 31: more follow),
//!                    count × { message_seq u64, due_at_ms u64, enqueued_at_ms u64,
//!                              delivery_count u32, meta_len u32, meta, body_len u32, body }
//! CancelScheduled:   queue str, message_seq u64
//! CancelScheduledOk: (empty)
//! ```

use bytes::{Bytes, BytesMut};

use super::admin::{put_page_count, read_page_count};
use super::error::WireError;
use super::frame::Payload;
use super::primitives::{self as p, Reader};

/// Most messages one `ListScheduledOk` holds, whatever the request's `limit`.
pub const MAX_SCHEDULED_LIMIT: u32 = 1000;
/// Smallest encoded entry: fixed fields plus two empty blobs.
pub const MIN_SCHEDULED_LEN: usize = 8 + 8 + 8 + 4 + 4 + 4;
/// Bytes of a `ListScheduledOk` payload besides its entries (the count).
pub const SCHEDULED_FIXED_LEN: usize = 4;

/// `ListScheduled` (0x0615): asks for the scheduled messages of a queue, soonest first, after
/// a cursor.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListScheduled {
    /// The queue.
    pub queue: String,
    /// Most messages wanted; 0 or more than [`MAX_SCHEDULED_LIMIT`] = that many. The server
    /// sends fewer when they would not fit in one frame.
    pub limit: u32,
    /// With `after_seq`, the cursor: only messages due after `(after_due_ms, after_seq)` (the
    /// last entry of the previous page); both 0 = from the soonest.
    pub after_due_ms: u64,
    /// See `after_due_ms`.
    pub after_seq: u64,
}

impl Payload for ListScheduled {
    fn encode(&self, buf: &mut BytesMut) -> Result<(), WireError> {
        p::put_str(buf, "queue name", &self.queue)?;
        p::put_u32(buf, self.limit);
        p::put_u64(buf, self.after_due_ms);
        p::put_u64(buf, self.after_seq);
        Ok(())
    }

    fn decode(r: &mut Reader<'_>) -> Result<Self, WireError> {
        Ok(ListScheduled {
            queue: r.string()?,
            limit: r.u32()?,
            after_due_ms: r.u64()?,
            after_seq: r.u64()?,
        })
    }
}

/// One scheduled message.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScheduledMessage {
    /// Its sequence number in the queue (what `CancelScheduled` names).
    pub message_seq: u64,
    /// When it becomes ready, milliseconds since the Unix epoch.
    pub due_at_ms: u64,
    /// When the queue stored it, milliseconds since the Unix epoch.
    pub enqueued_at_ms: u64,
    /// Deliveries so far (0 = never delivered; more for a requeue with a delay).
    pub delivery_count: u32,
    /// The meta block exactly as published.
    pub meta: Bytes,
    /// The body.
    pub body: Bytes,
}

impl ScheduledMessage {
    /// Bytes the entry takes in a `ListScheduledOk` payload.
    pub fn encoded_len(&self) -> usize {
        MIN_SCHEDULED_LEN + self.meta.len() + self.body.len()
    }
}

impl Payload for ScheduledMessage {
    fn encode(&self, buf: &mut BytesMut) -> Result<(), WireError> {
        p::put_u64(buf, self.message_seq);
        p::put_u64(buf, self.due_at_ms);
        p::put_u64(buf, self.enqueued_at_ms);
        p::put_u32(buf, self.delivery_count);
        p::put_blob(buf, "meta", &self.meta)?;
        p::put_blob(buf, "body", &self.body)
    }

    fn decode(r: &mut Reader<'_>) -> Result<Self, WireError> {
        Ok(ScheduledMessage {
            message_seq: r.u64()?,
            due_at_ms: r.u64()?,
            enqueued_at_ms: r.u64()?,
            delivery_count: r.u32()?,
            meta: r.blob()?,
            body: r.blob()?,
        })
    }
}

/// `ListScheduledOk` (0x0616): scheduled messages in due order, and whether more follow.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListScheduledOk {
    /// The messages.
    pub messages: Vec<ScheduledMessage>,
    /// More follow the last one (ask again with its due time and seq).
    pub more: bool,
}

impl Payload for ListScheduledOk {
    fn encode(&self, buf: &mut BytesMut) -> Result<(), WireError> {
        put_page_count(buf, "scheduled messages", self.messages.len(), self.more)?;
        self.messages.iter().try_for_each(|m| m.encode(buf))
    }

    fn decode(r: &mut Reader<'_>) -> Result<Self, WireError> {
        let (count, more) = read_page_count(r, MIN_SCHEDULED_LEN)?;
        let messages = (0..count)
            .map(|_| ScheduledMessage::decode(r))
            .collect::<Result<_, _>>()?;
        Ok(ListScheduledOk { messages, more })
    }
}

/// `CancelScheduled` (0x0617): deletes a scheduled message before its time; answered by
/// `CancelScheduledOk`, or `NOT_FOUND` when the message is not scheduled in the queue.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CancelScheduled {
    /// The queue.
    pub queue: String,
    /// The message (`message_seq` of a `ListScheduledOk` entry).
    pub message_seq: u64,
}

impl Payload for CancelScheduled {
    fn encode(&self, buf: &mut BytesMut) -> Result<(), WireError> {
        p::put_str(buf, "queue name", &self.queue)?;
        p::put_u64(buf, self.message_seq);
        Ok(())
    }

    fn decode(r: &mut Reader<'_>) -> Result<Self, WireError> {
        Ok(CancelScheduled {
            queue: r.string()?,
            message_seq: r.u64()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::testing::{check_payload, hex};

    #[test]
    fn list_scheduled() {
        check_payload(
            &ListScheduled {
                queue: "q".into(),
                limit: 10,
                after_due_ms: 0x0304,
                after_seq: 0x0102,
            },
            &hex("01 00 71  0a 00 00 00  04 03 00 00 00 00 00 00  02 01 00 00 00 00 00 00"),
        );
    }

    #[test]
    fn list_scheduled_ok_with_more_to_follow() {
        check_payload(
            &ListScheduledOk {
                messages: vec![ScheduledMessage {
                    message_seq: 7,
                    due_at_ms: 2000,
                    enqueued_at_ms: 1000,
                    delivery_count: 1,
                    meta: Bytes::from_static(&[0xaa]),
                    body: Bytes::from_static(b"hi"),
                }],
                more: true,
            },
            &hex("01 00 00 80
                  07 00 00 00 00 00 00 00  d0 07 00 00 00 00 00 00  e8 03 00 00 00 00 00 00
                  01 00 00 00  01 00 00 00 aa  02 00 00 00 68 69"),
        );
        check_payload(&ListScheduledOk::default(), &hex("00 00 00 00"));
        assert!(ListScheduledOk::decode_exact(&Bytes::from(hex("00 00 00 80"))).is_err());
    }

    #[test]
    fn cancel_scheduled() {
        check_payload(
            &CancelScheduled {
                queue: "q".into(),
                message_seq: 9,
            },
            &hex("01 00 71  09 00 00 00 00 00 00 00"),
        );
    }
}
