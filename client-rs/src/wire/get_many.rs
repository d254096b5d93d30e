//! Batch `Get` with a long-poll wait (protocol.md §9.7): `GetMany` → `GetManyOk`.

use bytes::BytesMut;

use super::consume::Delivery;
use super::error::WireError;
use super::frame::Payload;
use super::primitives::{self as p, Reader};
use super::publish::put_count;

/// Most messages one `GetMany` asks for.
pub const MAX_GET_MANY: u32 = 1000;
/// Longest wait of one `GetMany`, in milliseconds (SQS's `WaitTimeSeconds` maximum).
pub const MAX_GET_MANY_WAIT_MS: u64 = 20_000;
/// Most `GetMany` requests one connection may have unanswered at once.
pub const MAX_WAITING_GET_MANY: usize = 16;
/// Bytes of a `GetManyOk` payload besides its deliveries.
pub const GET_MANY_OK_FIXED_LEN: usize = 8 + 4;

/// Takes up to `max` ready messages from a queue, waiting up to `wait_ms` for the first one
/// (each must be settled like a consumer's delivery).
///
/// ```text
/// queue str, max u32 (1..=1000), wait_ms u64 (0..=20000)
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GetMany {
    /// Queue to take from.
    pub queue: String,
    /// Most messages to take, 1..=[`MAX_GET_MANY`].
    pub max: u32,
    /// How long to wait for a first message; 0 = answer at once. At most
    /// [`MAX_GET_MANY_WAIT_MS`].
    pub wait_ms: u64,
}

impl Payload for GetMany {
    fn encode(&self, buf: &mut BytesMut) -> Result<(), WireError> {
        p::put_str(buf, "queue name", &self.queue)?;
        p::put_u32(buf, self.max);
        p::put_u64(buf, self.wait_ms);
        Ok(())
    }

    fn decode(r: &mut Reader<'_>) -> Result<Self, WireError> {
        Ok(GetMany {
            queue: r.string()?,
            max: r.u32()?,
            wait_ms: r.u64()?,
        })
    }
}

/// Answers `GetMany`.
///
/// ```text
/// ready u64, count u32, count × delivery (as in Deliver)
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GetManyOk {
    /// Messages still ready in the queue after these were taken.
    pub ready: u64,
    /// The messages, in delivery-tag order; empty when none came within the wait.
    pub deliveries: Vec<Delivery>,
}

impl Payload for GetManyOk {
    fn encode(&self, buf: &mut BytesMut) -> Result<(), WireError> {
        p::put_u64(buf, self.ready);
        put_count(buf, "deliveries", self.deliveries.len())?;
        self.deliveries.iter().try_for_each(|d| d.encode(buf))
    }

    fn decode(r: &mut Reader<'_>) -> Result<Self, WireError> {
        let ready = r.u64()?;
        let count = r.u32()? as usize;
        let count = r.count(count, Delivery::default().encoded_len())?;
        let deliveries = (0..count)
            .map(|_| Delivery::decode(r))
            .collect::<Result<_, _>>()?;
        Ok(GetManyOk { ready, deliveries })
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::wire::testing::{check_payload, hex};
    use crate::wire::DeliveryTag;

    #[test]
    fn get_many_bytes() {
        check_payload(
            &GetMany {
                queue: "q".into(),
                max: 10,
                wait_ms: 5000,
            },
            &hex("01 00 71  0a 00 00 00  88 13 00 00 00 00 00 00"),
        );
    }

    #[test]
    fn get_many_ok_bytes_empty_and_with_deliveries() {
        check_payload(
            &GetManyOk {
                ready: 0,
                deliveries: vec![],
            },
            &hex("00 00 00 00 00 00 00 00  00 00 00 00"),
        );
        let delivery = |tag: u64, body: &'static [u8]| Delivery {
            delivery_tag: DeliveryTag(tag),
            redelivered: false,
            delivery_count: 1,
            message_seq: 40 + tag,
            enqueued_at_ms: 1_700_000_000_000 + tag,
            meta: Bytes::from(hex("00 00 00 05 00 74 61 73 6b 73 00 00")),
            body: Bytes::from_static(body),
        };
        check_payload(
            &GetManyOk {
                ready: 3,
                deliveries: vec![delivery(1, b"x"), delivery(2, b"")],
            },
            &hex("03 00 00 00 00 00 00 00  02 00 00 00
                 01 00 00 00 00 00 00 00  00  01 00 00 00  29 00 00 00 00 00 00 00
                 01 68 e5 cf 8b 01 00 00
                 0c 00 00 00 00 00 00 05 00 74 61 73 6b 73 00 00  01 00 00 00 78
                 02 00 00 00 00 00 00 00  00  01 00 00 00  2a 00 00 00 00 00 00 00
                 02 68 e5 cf 8b 01 00 00
                 0c 00 00 00 00 00 00 05 00 74 61 73 6b 73 00 00  00 00 00 00"),
        );
    }

    #[test]
    fn a_count_larger_than_the_payload_is_refused_before_allocating() {
        let bytes = Bytes::from(hex("00 00 00 00 00 00 00 00  ff ff ff ff"));
        assert!(GetManyOk::decode_exact(&bytes).is_err());
    }
}
