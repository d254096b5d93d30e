//! Settling deliveries (protocol.md §10): `Ack`, `Nack`, `Reject` and the lease heartbeat
//! `Extend`. None of them is answered on success; a failure gets an `Error` frame naming the
//! request (e.g. `UNKNOWN_DELIVERY_TAG`).

use bytes::BytesMut;

use super::error::WireError;
use super::frame::{DeliveryTag, Payload};
use super::primitives::{self as p, Reader};

const MULTIPLE: u8 = 1 << 0;
const REQUEUE: u8 = 1 << 1;

/// The message was processed: delete it.
///
/// ```text
/// delivery_tag u64, flags u8 (0 multiple)
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ack {
    /// The delivery.
    pub delivery_tag: DeliveryTag,
    /// Also every unsettled delivery with a smaller tag (tag 0 with `multiple`: all of them).
    pub multiple: bool,
}

impl Payload for Ack {
    fn encode(&self, buf: &mut BytesMut) -> Result<(), WireError> {
        p::put_u64(buf, self.delivery_tag.0);
        p::put_u8(buf, if self.multiple { MULTIPLE } else { 0 });
        Ok(())
    }

    fn decode(r: &mut Reader<'_>) -> Result<Self, WireError> {
        let delivery_tag = DeliveryTag(r.u64()?);
        let flags = r.flags_u8("ack flags", MULTIPLE)?;
        Ok(Ack {
            delivery_tag,
            multiple: flags & MULTIPLE != 0,
        })
    }
}

/// The message was not processed: requeue it, or dead-letter it.
///
/// ```text
/// delivery_tag u64, flags u8 (0 multiple, 1 requeue)
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Nack {
    /// The delivery.
    pub delivery_tag: DeliveryTag,
    /// Also every unsettled delivery with a smaller tag (tag 0 with `multiple`: all of them).
    pub multiple: bool,
    /// Return to the queue (delivery count +1) rather than dead-letter.
    pub requeue: bool,
}

impl Payload for Nack {
    fn encode(&self, buf: &mut BytesMut) -> Result<(), WireError> {
        p::put_u64(buf, self.delivery_tag.0);
        let mut flags = 0;
        if self.multiple {
            flags |= MULTIPLE;
        }
        if self.requeue {
            flags |= REQUEUE;
        }
        p::put_u8(buf, flags);
        Ok(())
    }

    fn decode(r: &mut Reader<'_>) -> Result<Self, WireError> {
        let delivery_tag = DeliveryTag(r.u64()?);
        let flags = r.flags_u8("nack flags", MULTIPLE | REQUEUE)?;
        Ok(Nack {
            delivery_tag,
            multiple: flags & MULTIPLE != 0,
            requeue: flags & REQUEUE != 0,
        })
    }
}

/// The message is bad: dead-letter it (or drop it when its queue has no dead-letter exchange).
///
/// ```text
/// delivery_tag u64
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reject {
    /// The delivery.
    pub delivery_tag: DeliveryTag,
}

impl Payload for Reject {
    fn encode(&self, buf: &mut BytesMut) -> Result<(), WireError> {
        p::put_u64(buf, self.delivery_tag.0);
        Ok(())
    }

    fn decode(r: &mut Reader<'_>) -> Result<Self, WireError> {
        Ok(Reject {
            delivery_tag: DeliveryTag(r.u64()?),
        })
    }
}

/// Still working on it: move the delivery's ack deadline to `extend_ms` from now.
///
/// ```text
/// delivery_tag u64, extend_ms u64
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extend {
    /// The delivery.
    pub delivery_tag: DeliveryTag,
    /// New deadline, in milliseconds from when the server reads the request.
    pub extend_ms: u64,
}

impl Payload for Extend {
    fn encode(&self, buf: &mut BytesMut) -> Result<(), WireError> {
        p::put_u64(buf, self.delivery_tag.0);
        p::put_u64(buf, self.extend_ms);
        Ok(())
    }

    fn decode(r: &mut Reader<'_>) -> Result<Self, WireError> {
        Ok(Extend {
            delivery_tag: DeliveryTag(r.u64()?),
            extend_ms: r.u64()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::testing::{check_payload, hex};

    #[test]
    fn ack() {
        check_payload(
            &Ack {
                delivery_tag: DeliveryTag(2),
                multiple: true,
            },
            &hex("02 00 00 00 00 00 00 00 01"),
        );
        assert!(Ack::decode(&mut Reader::new(&hex("02 00 00 00 00 00 00 00 02"))).is_err());
    }

    #[test]
    fn nack() {
        check_payload(
            &Nack {
                delivery_tag: DeliveryTag(7),
                multiple: false,
                requeue: true,
            },
            &hex("07 00 00 00 00 00 00 00 02"),
        );
    }

    #[test]
    fn reject_and_extend() {
        check_payload(
            &Reject {
                delivery_tag: DeliveryTag(9),
            },
            &hex("09 00 00 00 00 00 00 00"),
        );
        check_payload(
            &Extend {
                delivery_tag: DeliveryTag(9),
                extend_ms: 60_000,
            },
            &hex("09 00 00 00 00 00 00 00 60 ea 00 00 00 00 00 00"),
        );
    }
}
