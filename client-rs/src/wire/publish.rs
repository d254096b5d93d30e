//! Publishing (protocol.md §8): batched `Publish`, cumulative `Confirm`, and
//! `PublishRejected` for the messages the broker refuses.

use bytes::{Bytes, BytesMut};

use super::error::{ErrorCode, WireError};
use super::frame::{Payload, PublishSeq};
use super::meta::MessageMeta;
use super::primitives::{self as p, Reader};

/// One message in a `Publish` frame: an encoded meta block and a body.
///
/// ```text
/// meta_len u32, meta, body_len u32, body
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PublishMessage {
    /// The encoded meta block (see [`MessageMeta`], [`MetaView`](super::MetaView)).
    pub meta: Bytes,
    /// The body, opaque to the broker.
    pub body: Bytes,
}

impl PublishMessage {
    /// A message from a meta block and a body.
    pub fn new(meta: &MessageMeta, body: impl Into<Bytes>) -> Result<Self, WireError> {
        Ok(PublishMessage {
            meta: meta.to_bytes()?,
            body: body.into(),
        })
    }

    /// The message's size as limited by `max_message_len`: meta plus body.
    pub fn size(&self) -> usize {
        self.meta.len() + self.body.len()
    }

    /// Bytes the message takes in a `Publish` frame.
    pub fn encoded_len(&self) -> usize {
        p::blob_len(&self.meta) + p::blob_len(&self.body)
    }
}

impl Payload for PublishMessage {
    fn encode(&self, buf: &mut BytesMut) -> Result<(), WireError> {
        p::put_blob(buf, "meta", &self.meta)?;
        p::put_blob(buf, "body", &self.body)
    }

    fn decode(r: &mut Reader<'_>) -> Result<Self, WireError> {
        Ok(PublishMessage {
            meta: r.blob()?,
            body: r.blob()?,
        })
    }
}

/// A batch of messages. Each takes the next publish sequence number, in order.
///
/// ```text
/// count u32, count × message
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Publish {
    /// The messages, in publish order.
    pub messages: Vec<PublishMessage>,
}

impl Publish {
    /// Bytes of the payload, for filling frames up to the negotiated maximum
    /// (the frame adds [`FRAME_HEADER_LEN`](super::FRAME_HEADER_LEN) - 4 to the length prefix).
    pub fn encoded_len(&self) -> usize {
        4 + self
            .messages
            .iter()
            .map(PublishMessage::encoded_len)
            .sum::<usize>()
    }
}

impl Payload for Publish {
    fn encode(&self, buf: &mut BytesMut) -> Result<(), WireError> {
        put_count(buf, "publish batch", self.messages.len())?;
        self.messages.iter().try_for_each(|m| m.encode(buf))
    }

    fn decode(r: &mut Reader<'_>) -> Result<Self, WireError> {
        let count = r.u32()? as usize;
        let count = r.count(count, 8)?;
        let messages = (0..count)
            .map(|_| PublishMessage::decode(r))
            .collect::<Result<_, _>>()?;
        Ok(Publish { messages })
    }
}

/// Appends a u32 item count.
pub(crate) fn put_count(buf: &mut BytesMut, what: &'static str, n: usize) -> Result<(), WireError> {
    let n = p::checked_len(what, n, u32::MAX as usize)?;
    p::put_u32(buf, n as u32);
    Ok(())
}

/// Every message with a sequence number up to and including `up_to` is settled: accepted
/// (durably, if persistent) or refused by a `PublishRejected` sent earlier.
///
/// ```text
/// up_to u64
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Confirm {
    /// The highest settled sequence number.
    pub up_to: PublishSeq,
}

impl Payload for Confirm {
    fn encode(&self, buf: &mut BytesMut) -> Result<(), WireError> {
        p::put_u64(buf, self.up_to.0);
        Ok(())
    }

    fn decode(r: &mut Reader<'_>) -> Result<Self, WireError> {
        Ok(Confirm {
            up_to: PublishSeq(r.u64()?),
        })
    }
}

/// One refused message.
///
/// ```text
/// seq u64, code u16, message str
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// The refused message's publish sequence number.
    pub seq: PublishSeq,
    /// Why: `UNROUTABLE`, `STORAGE_FULL`, `MESSAGE_TOO_LARGE`, `QUEUE_FULL`, `NOT_FOUND`…
    pub code: ErrorCode,
    /// Human-readable detail.
    pub message: String,
}

impl Payload for Rejection {
    fn encode(&self, buf: &mut BytesMut) -> Result<(), WireError> {
        p::put_u64(buf, self.seq.0);
        p::put_u16(buf, self.code.as_u16());
        p::put_str(buf, "rejection message", &self.message)
    }

    fn decode(r: &mut Reader<'_>) -> Result<Self, WireError> {
        Ok(Rejection {
            seq: PublishSeq(r.u64()?),
            code: ErrorCode::from_u16(r.u16()?),
            message: r.string()?,
        })
    }
}

/// Messages the broker refused, sent before the `Confirm` that covers them.
///
/// ```text
/// count u32, count × rejection
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PublishRejected {
    /// The refused messages, in sequence order.
    pub rejections: Vec<Rejection>,
}

impl Payload for PublishRejected {
    fn encode(&self, buf: &mut BytesMut) -> Result<(), WireError> {
        put_count(buf, "rejections", self.rejections.len())?;
        self.rejections.iter().try_for_each(|m| m.encode(buf))
    }

    fn decode(r: &mut Reader<'_>) -> Result<Self, WireError> {
        let count = r.u32()? as usize;
        let count = r.count(count, 8 + 2 + 2)?;
        let rejections = (0..count)
            .map(|_| Rejection::decode(r))
            .collect::<Result<_, _>>()?;
        Ok(PublishRejected { rejections })
    }
}

/// Messages the broker confirmed without storing them in some queue they were routed to,
/// because that queue had accepted a message with the same `message_id` within its dedup
/// window; sent before the `Confirm` that covers them.
///
/// ```text
/// count u32, count × seq u64
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PublishDuplicates {
    /// Their publish sequence numbers, in order.
    pub seqs: Vec<PublishSeq>,
}

impl Payload for PublishDuplicates {
    fn encode(&self, buf: &mut BytesMut) -> Result<(), WireError> {
        put_count(buf, "duplicates", self.seqs.len())?;
        for seq in &self.seqs {
            p::put_u64(buf, seq.0);
        }
        Ok(())
    }

    fn decode(r: &mut Reader<'_>) -> Result<Self, WireError> {
        let count = r.u32()? as usize;
        let count = r.count(count, 8)?;
        let seqs = (0..count)
            .map(|_| r.u64().map(PublishSeq))
            .collect::<Result<_, _>>()?;
        Ok(PublishDuplicates { seqs })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::testing::{check_payload, hex};

    #[test]
    fn publish_batch() {
        let meta = MessageMeta::new("", "tasks");
        let publish = Publish {
            messages: vec![
                PublishMessage::new(&meta, Bytes::from_static(b"hi")).unwrap(),
                PublishMessage::new(&meta, Bytes::new()).unwrap(),
            ],
        };
        let bytes = hex("02 00 00 00
             0c 00 00 00  00 00 00 05 00 74 61 73 6b 73 00 00  02 00 00 00 68 69
             0c 00 00 00  00 00 00 05 00 74 61 73 6b 73 00 00  00 00 00 00");
        check_payload(&publish, &bytes);
        assert_eq!(publish.encoded_len(), bytes.len());
    }

    #[test]
    fn publish_bodies_are_zero_copy() {
        let bytes = Bytes::from(hex("01 00 00 00  01 00 00 00 aa  03 00 00 00 62 6f 64"));
        let publish = Publish::decode_exact(&bytes).unwrap();
        let body = &publish.messages[0].body;
        assert_eq!(&body[..], b"bod");
        assert_eq!(body.as_ptr(), bytes[bytes.len() - 3..].as_ptr());
    }

    #[test]
    fn forged_count_does_not_allocate() {
        let bytes = Bytes::from(hex("ff ff ff ff 00 00 00 00 00 00 00 00"));
        assert!(matches!(
            Publish::decode_exact(&bytes),
            Err(WireError::UnexpectedEof { .. })
        ));
    }

    #[test]
    fn confirm() {
        check_payload(
            &Confirm {
                up_to: PublishSeq(2),
            },
            &hex("02 00 00 00 00 00 00 00"),
        );
    }

    #[test]
    fn publish_duplicates() {
        check_payload(
            &PublishDuplicates {
                seqs: vec![PublishSeq(2), PublishSeq(5)],
            },
            &hex("02 00 00 00  02 00 00 00 00 00 00 00  05 00 00 00 00 00 00 00"),
        );
        check_payload(&PublishDuplicates::default(), &hex("00 00 00 00"));
    }

    #[test]
    fn publish_rejected() {
        check_payload(
            &PublishRejected {
                rejections: vec![
                    Rejection {
                        seq: PublishSeq(1),
                        code: ErrorCode::Unroutable,
                        message: "no route".into(),
                    },
                    Rejection {
                        seq: PublishSeq(3),
                        code: ErrorCode::StorageFull,
                        message: String::new(),
                    },
                ],
            },
            &hex("02 00 00 00
                 01 00 00 00 00 00 00 00  2e 01  08 00 6e 6f 20 72 6f 75 74 65
                 03 00 00 00 00 00 00 00  2d 01  00 00"),
        );
    }
}
