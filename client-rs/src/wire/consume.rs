//! Consuming (protocol.md §9): consumers, batched deliveries, prefetch (credit) and `Get`.

use bytes::{Bytes, BytesMut};

use super::circuit::CircuitBreaker;
use super::error::{ErrorCode, WireError};
use super::frame::{ConsumerId, DeliveryTag, Payload};
use super::primitives::{self as p, Reader};
use super::publish::put_count;

const EXCLUSIVE: u8 = 1 << 0;
const HAS_ACK_TIMEOUT: u8 = 1 << 1;
const HAS_PRIORITY: u8 = 1 << 2;
const HAS_CIRCUIT_BREAKER: u8 = 1 << 3;

/// Starts a consumer on a queue.
///
/// ```text
/// queue str, consumer_tag str, prefetch u32,
/// flags u8 (0 exclusive, 1 ack_timeout present, 2 priority present,
/// 3 circuit_breaker present), [ack_timeout_ms u64], [priority i32],
/// [circuit_breaker: failure_threshold u32, window_ms u64, cool_down_ms u64,
/// success_threshold u32]
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Consume {
    /// Queue to consume from.
    pub queue: String,
    /// Name shown in the admin API; empty = let the server generate one.
    pub consumer_tag: String,
    /// Most unsettled deliveries this consumer holds at once; 0 = no limit.
    pub prefetch: u32,
    /// Be the queue's only consumer (`RESOURCE_LOCKED` if it has others).
    pub exclusive: bool,
    /// Ack deadline for this consumer's deliveries (overrides the queue's).
    pub ack_timeout_ms: Option<u64>,
    /// Consumer priority (RabbitMQ's `x-priority`); absent = 0. Higher ones with credit get
    /// messages first.
    pub priority: Option<i32>,
    /// Circuit breaking for this consumer, overriding the queue's (protocol.md §9.8);
    /// `None` = the queue's, if it has one.
    pub circuit_breaker: Option<CircuitBreaker>,
}

impl Payload for Consume {
    fn encode(&self, buf: &mut BytesMut) -> Result<(), WireError> {
        p::put_str(buf, "queue name", &self.queue)?;
        p::put_str(buf, "consumer tag", &self.consumer_tag)?;
        p::put_u32(buf, self.prefetch);
        let mut flags = 0;
        if self.exclusive {
            flags |= EXCLUSIVE;
        }
        if self.ack_timeout_ms.is_some() {
            flags |= HAS_ACK_TIMEOUT;
        }
        if self.priority.is_some() {
            flags |= HAS_PRIORITY;
        }
        if self.circuit_breaker.is_some() {
            flags |= HAS_CIRCUIT_BREAKER;
        }
        p::put_u8(buf, flags);
        if let Some(ms) = self.ack_timeout_ms {
            p::put_u64(buf, ms);
        }
        if let Some(priority) = self.priority {
            p::put_i32(buf, priority);
        }
        if let Some(c) = &self.circuit_breaker {
            c.put(buf);
        }
        Ok(())
    }

    fn decode(r: &mut Reader<'_>) -> Result<Self, WireError> {
        let queue = r.string()?;
        let consumer_tag = r.string()?;
        let prefetch = r.u32()?;
        let flags = r.flags_u8(
            "consume flags",
            EXCLUSIVE | HAS_ACK_TIMEOUT | HAS_PRIORITY | HAS_CIRCUIT_BREAKER,
        )?;
        Ok(Consume {
            queue,
            consumer_tag,
            prefetch,
            exclusive: flags & EXCLUSIVE != 0,
            ack_timeout_ms: (flags & HAS_ACK_TIMEOUT != 0)
                .then(|| r.u64())
                .transpose()?,
            priority: (flags & HAS_PRIORITY != 0).then(|| r.i32()).transpose()?,
            circuit_breaker: (flags & HAS_CIRCUIT_BREAKER != 0)
                .then(|| CircuitBreaker::read(r))
                .transpose()?,
        })
    }
}

/// Answers `Consume`.
///
/// ```text
/// consumer_id u32, consumer_tag str
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumeOk {
    /// The consumer's number on this connection, used by `Deliver`, `Cancel`, `SetPrefetch`.
    pub consumer_id: ConsumerId,
    /// The consumer's tag (the generated one if the request's was empty).
    pub consumer_tag: String,
}

impl Payload for ConsumeOk {
    fn encode(&self, buf: &mut BytesMut) -> Result<(), WireError> {
        p::put_u32(buf, self.consumer_id.0);
        p::put_str(buf, "consumer tag", &self.consumer_tag)
    }

    fn decode(r: &mut Reader<'_>) -> Result<Self, WireError> {
        Ok(ConsumeOk {
            consumer_id: ConsumerId(r.u32()?),
            consumer_tag: r.string()?,
        })
    }
}

/// Defines a payload that is a single consumer id.
macro_rules! consumer_id_payload {
    ($(#[doc = $doc:literal])* $name:ident) => {
        $(#[doc = $doc])*
        ///
        /// ```text
        /// consumer_id u32
        /// ```
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub struct $name {
            /// The consumer.
            pub consumer_id: ConsumerId,
        }

        impl Payload for $name {
            fn encode(&self, buf: &mut BytesMut) -> Result<(), WireError> {
                p::put_u32(buf, self.consumer_id.0);
                Ok(())
            }

            fn decode(r: &mut Reader<'_>) -> Result<Self, WireError> {
                Ok($name {
                    consumer_id: ConsumerId(r.u32()?),
                })
            }
        }
    };
}

consumer_id_payload! {
    /// Stops a consumer. Its unsettled deliveries stay with the connection until settled.
    Cancel
}

consumer_id_payload! {
    /// Answers `Cancel`; no `Deliver` for the consumer follows it.
    CancelOk
}

/// The server stopped a consumer (its queue was deleted, an operator cancelled it).
///
/// ```text
/// consumer_id u32, code u16, reason str
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerCancelled {
    /// The consumer.
    pub consumer_id: ConsumerId,
    /// Why, e.g. [`ErrorCode::QueueDeleted`].
    pub code: ErrorCode,
    /// Human-readable detail.
    pub reason: String,
}

impl Payload for ConsumerCancelled {
    fn encode(&self, buf: &mut BytesMut) -> Result<(), WireError> {
        p::put_u32(buf, self.consumer_id.0);
        p::put_u16(buf, self.code.as_u16());
        p::put_str(buf, "reason", &self.reason)
    }

    fn decode(r: &mut Reader<'_>) -> Result<Self, WireError> {
        Ok(ConsumerCancelled {
            consumer_id: ConsumerId(r.u32()?),
            code: ErrorCode::from_u16(r.u16()?),
            reason: r.string()?,
        })
    }
}

/// Changes a consumer's prefetch window (its credit).
///
/// ```text
/// consumer_id u32, prefetch u32
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SetPrefetch {
    /// The consumer.
    pub consumer_id: ConsumerId,
    /// New window; 0 = no limit.
    pub prefetch: u32,
}

impl Payload for SetPrefetch {
    fn encode(&self, buf: &mut BytesMut) -> Result<(), WireError> {
        p::put_u32(buf, self.consumer_id.0);
        p::put_u32(buf, self.prefetch);
        Ok(())
    }

    fn decode(r: &mut Reader<'_>) -> Result<Self, WireError> {
        Ok(SetPrefetch {
            consumer_id: ConsumerId(r.u32()?),
            prefetch: r.u32()?,
        })
    }
}

const REDELIVERED: u8 = 1 << 0;

/// Smallest encoded delivery: fixed fields plus two empty blobs.
const MIN_DELIVERY_LEN: usize = 8 + 1 + 4 + 8 + 8 + 4 + 4;

/// One delivered message.
///
/// ```text
/// delivery_tag u64, flags u8 (0 redelivered), delivery_count u32, message_seq u64,
/// enqueued_at_ms u64, meta_len u32, meta, body_len u32, body
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Delivery {
    /// Names this delivery in `Ack`, `Nack`, `Reject` and `Extend`.
    pub delivery_tag: DeliveryTag,
    /// The message may have been delivered before (requeued, lease expired, broker restart).
    pub redelivered: bool,
    /// How many times the message has been delivered, this time included (1 = first).
    pub delivery_count: u32,
    /// The message's sequence number in its queue (stable across redeliveries).
    pub message_seq: u64,
    /// When the queue stored the message, Unix milliseconds (the broker's clock; stable
    /// across redeliveries).
    pub enqueued_at_ms: u64,
    /// The meta block exactly as published (decode with
    /// [`MessageMeta::from_slice`](super::MessageMeta::from_slice)).
    pub meta: Bytes,
    /// The body.
    pub body: Bytes,
}

impl Delivery {
    /// Bytes the delivery takes in a `Deliver` frame.
    pub fn encoded_len(&self) -> usize {
        MIN_DELIVERY_LEN + self.meta.len() + self.body.len()
    }
}

impl Payload for Delivery {
    fn encode(&self, buf: &mut BytesMut) -> Result<(), WireError> {
        p::put_u64(buf, self.delivery_tag.0);
        p::put_u8(buf, if self.redelivered { REDELIVERED } else { 0 });
        p::put_u32(buf, self.delivery_count);
        p::put_u64(buf, self.message_seq);
        p::put_u64(buf, self.enqueued_at_ms);
        p::put_blob(buf, "meta", &self.meta)?;
        p::put_blob(buf, "body", &self.body)
    }

    fn decode(r: &mut Reader<'_>) -> Result<Self, WireError> {
        let delivery_tag = DeliveryTag(r.u64()?);
        let flags = r.flags_u8("delivery flags", REDELIVERED)?;
        Ok(Delivery {
            delivery_tag,
            redelivered: flags & REDELIVERED != 0,
            delivery_count: r.u32()?,
            message_seq: r.u64()?,
            enqueued_at_ms: r.u64()?,
            meta: r.blob()?,
            body: r.blob()?,
        })
    }
}

/// A batch of deliveries to one consumer.
///
/// ```text
/// consumer_id u32, count u32, count × delivery
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Deliver {
    /// The consumer they are for.
    pub consumer_id: ConsumerId,
    /// The deliveries, in delivery-tag order.
    pub deliveries: Vec<Delivery>,
}

impl Payload for Deliver {
    fn encode(&self, buf: &mut BytesMut) -> Result<(), WireError> {
        p::put_u32(buf, self.consumer_id.0);
        put_count(buf, "deliveries", self.deliveries.len())?;
        self.deliveries.iter().try_for_each(|d| d.encode(buf))
    }

    fn decode(r: &mut Reader<'_>) -> Result<Self, WireError> {
        let consumer_id = ConsumerId(r.u32()?);
        let count = r.u32()? as usize;
        let count = r.count(count, MIN_DELIVERY_LEN)?;
        let deliveries = (0..count)
            .map(|_| Delivery::decode(r))
            .collect::<Result<_, _>>()?;
        Ok(Deliver {
            consumer_id,
            deliveries,
        })
    }
}

/// Pulls one message from a queue (it must be settled like a consumer's delivery).
///
/// ```text
/// queue str
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Get {
    /// Queue to take from.
    pub queue: String,
}

impl Payload for Get {
    fn encode(&self, buf: &mut BytesMut) -> Result<(), WireError> {
        p::put_str(buf, "queue name", &self.queue)
    }

    fn decode(r: &mut Reader<'_>) -> Result<Self, WireError> {
        Ok(Get { queue: r.string()? })
    }
}

/// Answers `Get`.
///
/// ```text
/// ready u64, present u8 (0 or 1), [delivery]
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GetOk {
    /// Messages still ready in the queue after this one was taken.
    pub ready: u64,
    /// The message, or `None` when the queue had nothing ready.
    pub delivery: Option<Delivery>,
}

impl Payload for GetOk {
    fn encode(&self, buf: &mut BytesMut) -> Result<(), WireError> {
        p::put_u64(buf, self.ready);
        p::put_bool(buf, self.delivery.is_some());
        match &self.delivery {
            Some(d) => d.encode(buf),
            None => Ok(()),
        }
    }

    fn decode(r: &mut Reader<'_>) -> Result<Self, WireError> {
        let ready = r.u64()?;
        let delivery = r.bool()?.then(|| Delivery::decode(r)).transpose()?;
        Ok(GetOk { ready, delivery })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::testing::{check_payload, hex};

    #[test]
    fn consume() {
        check_payload(
            &Consume {
                queue: "tasks".into(),
                consumer_tag: String::new(),
                prefetch: 100,
                exclusive: false,
                ack_timeout_ms: None,
                priority: None,
                circuit_breaker: None,
            },
            &hex("05 00 74 61 73 6b 73  00 00  64 00 00 00  00"),
        );
        check_payload(
            &Consume {
                queue: "q".into(),
                consumer_tag: "w1".into(),
                prefetch: 0,
                exclusive: true,
                ack_timeout_ms: Some(600_000),
                priority: None,
                circuit_breaker: None,
            },
            &hex("01 00 71  02 00 77 31  00 00 00 00  03  c0 27 09 00 00 00 00 00"),
        );
        // Priority follows the ack timeout; it is signed (-2 here).
        check_payload(
            &Consume {
                queue: "q".into(),
                consumer_tag: String::new(),
                prefetch: 1,
                exclusive: false,
                ack_timeout_ms: Some(1),
                priority: Some(-2),
                circuit_breaker: None,
            },
            &hex("01 00 71  00 00  01 00 00 00  06  01 00 00 00 00 00 00 00  fe ff ff ff"),
        );
        check_payload(
            &Consume {
                queue: "q".into(),
                consumer_tag: String::new(),
                prefetch: 0,
                exclusive: false,
                ack_timeout_ms: None,
                priority: Some(5),
                circuit_breaker: None,
            },
            &hex("01 00 71  00 00  00 00 00 00  04  05 00 00 00"),
        );
        // The circuit breaker follows the priority.
        check_payload(
            &Consume {
                queue: "q".into(),
                consumer_tag: String::new(),
                prefetch: 0,
                exclusive: false,
                ack_timeout_ms: None,
                priority: Some(1),
                circuit_breaker: Some(CircuitBreaker {
                    failure_threshold: 3,
                    window_ms: 1000,
                    cool_down_ms: 500,
                    success_threshold: 2,
                }),
            },
            &hex("01 00 71  00 00  00 00 00 00  0c  01 00 00 00
                 03 00 00 00  e8 03 00 00 00 00 00 00  f4 01 00 00 00 00 00 00  02 00 00 00"),
        );
        // Bit 4 is not defined.
        let bad = Bytes::from(hex("01 00 71  00 00  00 00 00 00  10"));
        assert!(Consume::decode_exact(&bad).is_err());
    }

    #[test]
    fn consume_ok_cancel_and_prefetch() {
        check_payload(
            &ConsumeOk {
                consumer_id: ConsumerId(1),
                consumer_tag: "c1".into(),
            },
            &hex("01 00 00 00 02 00 63 31"),
        );
        check_payload(
            &Cancel {
                consumer_id: ConsumerId(258),
            },
            &hex("02 01 00 00"),
        );
        check_payload(
            &CancelOk {
                consumer_id: ConsumerId(258),
            },
            &hex("02 01 00 00"),
        );
        check_payload(
            &ConsumerCancelled {
                consumer_id: ConsumerId(1),
                code: ErrorCode::QueueDeleted,
                reason: "q".into(),
            },
            &hex("01 00 00 00 90 01 01 00 71"),
        );
        check_payload(
            &SetPrefetch {
                consumer_id: ConsumerId(1),
                prefetch: 10,
            },
            &hex("01 00 00 00 0a 00 00 00"),
        );
    }

    fn sample_delivery(tag: u64, body: &'static [u8]) -> Delivery {
        Delivery {
            delivery_tag: DeliveryTag(tag),
            redelivered: tag == 2,
            delivery_count: if tag == 2 { 2 } else { 1 },
            message_seq: 40 + tag,
            enqueued_at_ms: 1_700_000_000_000 + tag,
            meta: Bytes::from(hex("00 00 00 05 00 74 61 73 6b 73 00 00")),
            body: Bytes::from_static(body),
        }
    }

    #[test]
    fn deliver_batch() {
        check_payload(
            &Deliver {
                consumer_id: ConsumerId(1),
                deliveries: vec![sample_delivery(1, b"hi"), sample_delivery(2, b"")],
            },
            &hex("01 00 00 00  02 00 00 00
                 01 00 00 00 00 00 00 00  00  01 00 00 00  29 00 00 00 00 00 00 00
                 01 68 e5 cf 8b 01 00 00
                 0c 00 00 00 00 00 00 05 00 74 61 73 6b 73 00 00  02 00 00 00 68 69
                 02 00 00 00 00 00 00 00  01  02 00 00 00  2a 00 00 00 00 00 00 00
                 02 68 e5 cf 8b 01 00 00
                 0c 00 00 00 00 00 00 05 00 74 61 73 6b 73 00 00  00 00 00 00"),
        );
        let bad_flags = Bytes::from(hex(
            "01 00 00 00 01 00 00 00 01 00 00 00 00 00 00 00 02 01 00 00 00
             00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00",
        ));
        assert!(Deliver::decode_exact(&bad_flags).is_err());
    }

    #[test]
    fn get_and_get_ok() {
        check_payload(&Get { queue: "q".into() }, &hex("01 00 71"));
        check_payload(
            &GetOk {
                ready: 0,
                delivery: None,
            },
            &hex("00 00 00 00 00 00 00 00 00"),
        );
        let delivery = sample_delivery(1, b"x");
        check_payload(
            &GetOk {
                ready: 5,
                delivery: Some(delivery),
            },
            &hex("05 00 00 00 00 00 00 00  01
                 01 00 00 00 00 00 00 00  00  01 00 00 00  29 00 00 00 00 00 00 00
                 01 68 e5 cf 8b 01 00 00
                 0c 00 00 00 00 00 00 05 00 74 61 73 6b 73 00 00  01 00 00 00 78"),
        );
    }
}
