//! Settling deliveries (protocol.md §10): `Ack`, `Nack`, `Reject` and the lease heartbeat
//! `Extend`. None of them is answered on success; a failure gets an `Error` frame naming the
//! request (e.g. `UNKNOWN_DELIVERY_TAG`).

use bytes::BytesMut;

use super::error::WireError;
use super::frame::{DeliveryTag, Payload};
use super::primitives::{self as p, Reader};

const MULTIPLE: u8 = 1 << 0;
const REQUEUE: u8 = 1 << 1;
const DELAY: u8 = 1 << 2;

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

/// The message was not processed: requeue it (now, or after a delay), or dead-letter it.
///
/// ```text
/// delivery_tag u64, flags u8 (0 multiple, 1 requeue, 2 delay), [delay_ms u64 if flag 2]
/// ```
/// Flag 2 is only valid with flag 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Nack {
    /// The delivery.
    pub delivery_tag: DeliveryTag,
    /// Also every unsettled delivery with a smaller tag (tag 0 with `multiple`: all of them).
    pub multiple: bool,
    /// Return to the queue (delivery count +1) rather than dead-letter.
    pub requeue: bool,
    /// With `requeue`: ready again only after this many milliseconds (replaces the queue's
    /// `retry_backoff` for this requeue).
    pub delay_ms: Option<u64>,
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
        if self.delay_ms.is_some() {
            flags |= DELAY;
        }
        p::put_u8(buf, flags);
        if let Some(d) = self.delay_ms {
            p::put_u64(buf, d);
        }
        Ok(())
    }

    fn decode(r: &mut Reader<'_>) -> Result<Self, WireError> {
        let delivery_tag = DeliveryTag(r.u64()?);
        let flags = r.flags_u8("nack flags", MULTIPLE | REQUEUE | DELAY)?;
        if flags & (REQUEUE | DELAY) == DELAY {
            return Err(WireError::InvalidValue {
                what: "nack flags (a delay without requeue)",
                value: u64::from(flags),
            });
        }
        let delay_ms = (flags & DELAY != 0).then(|| r.u64()).transpose()?;
        Ok(Nack {
            delivery_tag,
            multiple: flags & MULTIPLE != 0,
            requeue: flags & REQUEUE != 0,
            delay_ms,
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

/// Still working on it: move the delivery's ack deadline to `extend_ms` from now. An
/// `extend_ms` of 0 releases the delivery now: the message is ready again at once, and this
/// delivery does not count against `delivery_limit` (protocol.md §10.4).
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
                delay_ms: None,
            },
            &hex("07 00 00 00 00 00 00 00 02"),
        );
    }

    #[test]
    fn nack_with_a_delay() {
        check_payload(
            &Nack {
                delivery_tag: DeliveryTag(7),
                multiple: true,
                requeue: true,
                delay_ms: Some(1500),
            },
            &hex("07 00 00 00 00 00 00 00 07  dc 05 00 00 00 00 00 00"),
        );
        // a delay without requeue means nothing: refused
        let bad = hex("07 00 00 00 00 00 00 00 04  dc 05 00 00 00 00 00 00");
        assert!(Nack::decode(&mut Reader::new(&bad)).is_err());
        // flag 3 is undefined
        assert!(Nack::decode(&mut Reader::new(&hex("07 00 00 00 00 00 00 00 08"))).is_err());
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
        check_payload(
            &Extend {
                delivery_tag: DeliveryTag(9),
                extend_ms: 0,
            },
            &hex("09 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00"),
        );
    }
}
