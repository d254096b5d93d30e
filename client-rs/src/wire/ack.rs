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
const REASON: u8 = 1 << 3;

/// Longest reason a worker may give with a `Nack` or `Reject`, in bytes.
pub const MAX_SETTLE_REASON_LEN: usize = 1024;

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
/// delivery_tag u64, flags u8 (0 multiple, 1 requeue, 2 delay, 3 reason),
/// [delay_ms u64 if flag 2], [reason str if flag 3]
/// ```
/// Flag 2 is only valid with flag 1. A reason is 1 to [`MAX_SETTLE_REASON_LEN`] bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
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
    /// Why the worker gave up, as it wants operators to read it in the message's history
    /// (`sluice trace`). `None` = no reason.
    pub reason: Option<String>,
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
        if self.reason.is_some() {
            flags |= REASON;
        }
        p::put_u8(buf, flags);
        if let Some(d) = self.delay_ms {
            p::put_u64(buf, d);
        }
        if let Some(reason) = &self.reason {
            put_reason(buf, reason)?;
        }
        Ok(())
    }

    fn decode(r: &mut Reader<'_>) -> Result<Self, WireError> {
        let delivery_tag = DeliveryTag(r.u64()?);
        let flags = r.flags_u8("nack flags", MULTIPLE | REQUEUE | DELAY | REASON)?;
        if flags & (REQUEUE | DELAY) == DELAY {
            return Err(WireError::InvalidValue {
                what: "nack flags (a delay without requeue)",
                value: u64::from(flags),
            });
        }
        let delay_ms = (flags & DELAY != 0).then(|| r.u64()).transpose()?;
        let reason = (flags & REASON != 0).then(|| read_reason(r)).transpose()?;
        Ok(Nack {
            delivery_tag,
            multiple: flags & MULTIPLE != 0,
            requeue: flags & REQUEUE != 0,
            delay_ms,
            reason,
        })
    }
}

fn put_reason(buf: &mut BytesMut, reason: &str) -> Result<(), WireError> {
    if reason.is_empty() {
        return Err(WireError::InvalidValue {
            what: "settle reason length (empty: leave the reason out)",
            value: 0,
        });
    }
    p::checked_len("settle reason", reason.len(), MAX_SETTLE_REASON_LEN)?;
    p::put_str(buf, "settle reason", reason)
}

fn read_reason(r: &mut Reader<'_>) -> Result<String, WireError> {
    let reason = r.string()?;
    if reason.is_empty() || reason.len() > MAX_SETTLE_REASON_LEN {
        return Err(WireError::InvalidValue {
            what: "settle reason length",
            value: reason.len() as u64,
        });
    }
    Ok(reason)
}

/// The message is bad: dead-letter it (or drop it when its queue has no dead-letter exchange).
///
/// ```text
/// delivery_tag u64, [reason str]
/// ```
/// The reason is present when the payload goes on past the tag (1 to
/// [`MAX_SETTLE_REASON_LEN`] bytes), so a `Reject` without one keeps its version-1 bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reject {
    /// The delivery.
    pub delivery_tag: DeliveryTag,
    /// Why the worker refused the message, for its history (`sluice trace`).
    pub reason: Option<String>,
}

impl Payload for Reject {
    fn encode(&self, buf: &mut BytesMut) -> Result<(), WireError> {
        p::put_u64(buf, self.delivery_tag.0);
        if let Some(reason) = &self.reason {
            put_reason(buf, reason)?;
        }
        Ok(())
    }

    fn decode(r: &mut Reader<'_>) -> Result<Self, WireError> {
        let delivery_tag = DeliveryTag(r.u64()?);
        let reason = (r.remaining() > 0).then(|| read_reason(r)).transpose()?;
        Ok(Reject {
            delivery_tag,
            reason,
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
    use bytes::Bytes;

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
                reason: None,
            },
            &hex("07 00 00 00 00 00 00 00 02"),
        );
    }

    #[test]
    fn nack_with_a_delay_and_a_reason() {
        check_payload(
            &Nack {
                delivery_tag: DeliveryTag(7),
                multiple: false,
                requeue: true,
                delay_ms: Some(1),
                reason: Some("db down".into()),
            },
            &hex("07 00 00 00 00 00 00 00 0e  01 00 00 00 00 00 00 00  07 00 64 62 20 64 6f 77 6e"),
        );
        // an empty reason is written by leaving it out
        let empty = hex("07 00 00 00 00 00 00 00 08  00 00");
        assert!(Nack::decode_exact(&Bytes::from(empty)).is_err());
        let long = Nack {
            delivery_tag: DeliveryTag(1),
            multiple: false,
            requeue: false,
            delay_ms: None,
            reason: Some("x".repeat(MAX_SETTLE_REASON_LEN + 1)),
        };
        assert!(long.encode(&mut BytesMut::new()).is_err());
    }

    #[test]
    fn nack_with_a_delay() {
        check_payload(
            &Nack {
                delivery_tag: DeliveryTag(7),
                multiple: true,
                requeue: true,
                delay_ms: Some(1500),
                reason: None,
            },
            &hex("07 00 00 00 00 00 00 00 07  dc 05 00 00 00 00 00 00"),
        );
        // a delay without requeue means nothing: refused
        let bad = hex("07 00 00 00 00 00 00 00 04  dc 05 00 00 00 00 00 00");
        assert!(Nack::decode(&mut Reader::new(&bad)).is_err());
        // flag 4 is undefined
        assert!(Nack::decode(&mut Reader::new(&hex("07 00 00 00 00 00 00 00 10"))).is_err());
    }

    #[test]
    fn reject_and_extend() {
        check_payload(
            &Reject {
                delivery_tag: DeliveryTag(9),
                reason: None,
            },
            &hex("09 00 00 00 00 00 00 00"),
        );
        // A reason follows the tag when the payload goes on; the tag alone is a Reject
        // without one, so only the prefixes that cut the reason are checked.
        let with_reason = Reject {
            delivery_tag: DeliveryTag(9),
            reason: Some("bad json".into()),
        };
        let bytes = hex("09 00 00 00 00 00 00 00  08 00 62 61 64 20 6a 73 6f 6e");
        let mut buf = BytesMut::new();
        with_reason.encode(&mut buf).unwrap();
        assert_eq!(&buf[..], &bytes[..]);
        assert_eq!(
            Reject::decode_exact(&Bytes::from(bytes.clone())).unwrap(),
            with_reason
        );
        for i in 9..bytes.len() {
            assert!(Reject::decode_exact(&Bytes::copy_from_slice(&bytes[..i])).is_err());
        }
        assert!(Reject::decode_exact(&Bytes::from(hex("09 00 00 00 00 00 00 00 00 00"))).is_err());
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
