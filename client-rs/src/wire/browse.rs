//! Browsing a queue (protocol.md §17): reading its first ready messages without taking them.
//!
//! ```text
//! BrowseQueue:   queue str, limit u32, after_seq u64
//! BrowseQueueOk: count u32 (bits 0-30: entries, bit 31: more ready messages follow),
//!                count × { message_seq u64, delivery_count u32, flags u8 (0 redelivered),
//!                          enqueued_at_ms u64, meta_len u32, meta, body_len u32, body }
//! ```

use bytes::{Bytes, BytesMut};

use super::admin::{put_page_count, read_page_count};
use super::error::WireError;
use super::frame::Payload;
use super::primitives::{self as p, Reader};

/// Most messages one `BrowseQueueOk` holds, whatever the request's `limit`.
pub const MAX_BROWSE_LIMIT: u32 = 1000;

const REDELIVERED: u8 = 1 << 0;

/// Smallest encoded entry: fixed fields plus two empty blobs.
pub const MIN_BROWSED_LEN: usize = 8 + 4 + 1 + 8 + 4 + 4;
/// Bytes of a `BrowseQueueOk` payload besides its entries (the count).
pub const BROWSE_FIXED_LEN: usize = 4;

/// `BrowseQueue` (0x060F): asks for the first ready messages of a queue after a sequence
/// number, leaving them where they are.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BrowseQueue {
    /// The queue.
    pub queue: String,
    /// Most messages wanted; 0 or more than [`MAX_BROWSE_LIMIT`] = that many. The server
    /// sends fewer when they would not fit in one frame.
    pub limit: u32,
    /// Only messages with a greater sequence number (the last `message_seq` of the previous
    /// page); 0 = from the head of the queue.
    pub after_seq: u64,
}

impl Payload for BrowseQueue {
    fn encode(&self, buf: &mut BytesMut) -> Result<(), WireError> {
        p::put_str(buf, "queue name", &self.queue)?;
        p::put_u32(buf, self.limit);
        p::put_u64(buf, self.after_seq);
        Ok(())
    }

    fn decode(r: &mut Reader<'_>) -> Result<Self, WireError> {
        Ok(BrowseQueue {
            queue: r.string()?,
            limit: r.u32()?,
            after_seq: r.u64()?,
        })
    }
}

/// One ready message as a browse shows it: nothing about it changed by being shown.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BrowsedMessage {
    /// Its sequence number in the queue (the cursor of the next page).
    pub message_seq: u64,
    /// Deliveries so far (0 = never delivered).
    pub delivery_count: u32,
    /// It may have been delivered before (its next delivery will say `redelivered`).
    pub redelivered: bool,
    /// When the queue stored it, milliseconds since the Unix epoch.
    pub enqueued_at_ms: u64,
    /// The meta block exactly as published.
    pub meta: Bytes,
    /// The body.
    pub body: Bytes,
}

impl BrowsedMessage {
    /// Bytes the entry takes in a `BrowseQueueOk` payload.
    pub fn encoded_len(&self) -> usize {
        MIN_BROWSED_LEN + self.meta.len() + self.body.len()
    }
}

impl Payload for BrowsedMessage {
    fn encode(&self, buf: &mut BytesMut) -> Result<(), WireError> {
        p::put_u64(buf, self.message_seq);
        p::put_u32(buf, self.delivery_count);
        p::put_u8(buf, if self.redelivered { REDELIVERED } else { 0 });
        p::put_u64(buf, self.enqueued_at_ms);
        p::put_blob(buf, "meta", &self.meta)?;
        p::put_blob(buf, "body", &self.body)
    }

    fn decode(r: &mut Reader<'_>) -> Result<Self, WireError> {
        let message_seq = r.u64()?;
        let delivery_count = r.u32()?;
        let flags = r.flags_u8("browsed message flags", REDELIVERED)?;
        Ok(BrowsedMessage {
            message_seq,
            delivery_count,
            redelivered: flags & REDELIVERED != 0,
            enqueued_at_ms: r.u64()?,
            meta: r.blob()?,
            body: r.blob()?,
        })
    }
}

/// `BrowseQueueOk` (0x0610): ready messages in sequence order, and whether more follow.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BrowseQueueOk {
    /// The messages.
    pub messages: Vec<BrowsedMessage>,
    /// More ready messages follow the last one (ask again with its `message_seq`).
    pub more: bool,
}

impl Payload for BrowseQueueOk {
    fn encode(&self, buf: &mut BytesMut) -> Result<(), WireError> {
        put_page_count(buf, "browsed messages", self.messages.len(), self.more)?;
        self.messages.iter().try_for_each(|m| m.encode(buf))
    }

    fn decode(r: &mut Reader<'_>) -> Result<Self, WireError> {
        // Paged like the listings (§15.2): bit 31 says more follow; never an empty page that
        // says so.
        let (count, more) = read_page_count(r, MIN_BROWSED_LEN)?;
        let messages = (0..count)
            .map(|_| BrowsedMessage::decode(r))
            .collect::<Result<_, _>>()?;
        Ok(BrowseQueueOk { messages, more })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::testing::{check_payload, hex};

    #[test]
    fn browse_queue() {
        check_payload(
            &BrowseQueue {
                queue: "q".into(),
                limit: 10,
                after_seq: 0x0102,
            },
            &hex("01 00 71  0a 00 00 00  02 01 00 00 00 00 00 00"),
        );
    }

    #[test]
    fn browse_queue_ok_with_more_to_follow() {
        check_payload(
            &BrowseQueueOk {
                messages: vec![
                    BrowsedMessage {
                        message_seq: 7,
                        delivery_count: 0,
                        redelivered: false,
                        enqueued_at_ms: 1000,
                        meta: Bytes::from_static(&[0xaa]),
                        body: Bytes::from_static(b"hi"),
                    },
                    BrowsedMessage {
                        message_seq: 9,
                        delivery_count: 2,
                        redelivered: true,
                        enqueued_at_ms: 1001,
                        meta: Bytes::new(),
                        body: Bytes::new(),
                    },
                ],
                more: true,
            },
            &hex("02 00 00 80
                  07 00 00 00 00 00 00 00  00 00 00 00  00  e8 03 00 00 00 00 00 00
                  01 00 00 00 aa  02 00 00 00 68 69
                  09 00 00 00 00 00 00 00  02 00 00 00  01  e9 03 00 00 00 00 00 00
                  00 00 00 00  00 00 00 00"),
        );
        check_payload(&BrowseQueueOk::default(), &hex("00 00 00 00"));
    }

    #[test]
    fn browse_queue_ok_refuses_an_empty_page_with_more_and_unknown_flags() {
        assert!(BrowseQueueOk::decode_exact(&Bytes::from(hex("00 00 00 80"))).is_err());
        let bad_flags = hex("01 00 00 00  01 00 00 00 00 00 00 00  00 00 00 00  02
                             00 00 00 00 00 00 00 00  00 00 00 00  00 00 00 00");
        assert!(BrowseQueueOk::decode_exact(&Bytes::from(bad_flags)).is_err());
    }
}
