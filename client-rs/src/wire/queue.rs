//! Queue management (protocol.md §6): declare, delete, purge and inspect.

use bytes::BytesMut;

use super::error::WireError;
use super::frame::Payload;
use super::primitives::{self as p, Reader};

/// What a queue at its length limit does with a new message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Overflow {
    /// Drop (or dead-letter) the oldest ready message to make room.
    DropHead = 0,
    /// Refuse the new message: the publisher gets `QUEUE_FULL`.
    RejectPublish = 1,
    /// Refuse the new message (`QUEUE_FULL`) and dead-letter it (reason `maxlen`).
    RejectPublishDlx = 2,
}

impl Overflow {
    fn from_u8(v: u8) -> Result<Self, WireError> {
        match v {
            0 => Ok(Overflow::DropHead),
            1 => Ok(Overflow::RejectPublish),
            2 => Ok(Overflow::RejectPublishDlx),
            other => Err(WireError::InvalidValue {
                what: "overflow",
                value: u64::from(other),
            }),
        }
    }
}

/// Optional queue settings. `None` = the server's default (usually: no limit).
///
/// ```text
/// present u16 (bit i set = field i follows), then the present fields in bit order:
/// 0 max_length u64, 1 max_length_bytes u64, 2 overflow u8, 3 message_ttl_ms u64,
/// 4 dead_letter_exchange str, 5 dead_letter_routing_key str, 6 ack_timeout_ms u64,
/// 7 delivery_limit u32, 8 expires_ms u64, 9 max_message_bytes u32, 10 max_priority u8,
/// 11 single_active_consumer u8, 12 dedup_window_ms u64, 13 dedup_window_count u32,
/// 14 retry_backoff, 15 replicas u8
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueueArguments {
    /// Most ready messages the queue holds.
    pub max_length: Option<u64>,
    /// Most bytes (meta plus body) of ready messages the queue holds.
    pub max_length_bytes: Option<u64>,
    /// What happens at a length limit (default [`Overflow::DropHead`]).
    pub overflow: Option<Overflow>,
    /// Messages older than this are dead-lettered (or dropped).
    pub message_ttl_ms: Option<u64>,
    /// Exchange that receives dead-lettered messages.
    pub dead_letter_exchange: Option<String>,
    /// Routing key for dead-lettered messages (default: the message's own).
    pub dead_letter_routing_key: Option<String>,
    /// Ack deadline for deliveries from this queue (default 30 minutes).
    pub ack_timeout_ms: Option<u64>,
    /// Deliveries after which a message is dead-lettered instead of redelivered.
    pub delivery_limit: Option<u32>,
    /// The queue is deleted after being unused (no consumers, no `Get`) this long.
    pub expires_ms: Option<u64>,
    /// Largest message (meta plus body) the queue takes; a larger one routed to it is refused
    /// with `MESSAGE_TOO_LARGE`. At most the server's own limit applies anyway.
    pub max_message_bytes: Option<u32>,
    /// Priority levels above 0 (1 to [`MAX_PRIORITY`]): messages of higher priority are
    /// delivered first, FIFO within a priority. `None` = one level, as without priorities.
    pub max_priority: Option<u8>,
    /// Every requeue of a message (nack with requeue, lease expiry, consumer loss) waits
    /// this backoff before the message is ready again.
    pub retry_backoff: Option<RetryBackoff>,
    /// Publish dedup: a message whose `message_id` the queue accepted less than this long
    /// ago is confirmed but not stored again (at least 1).
    pub dedup_window_ms: Option<u64>,
    /// Publish dedup: a message whose `message_id` is among the last this many the queue
    /// accepted is confirmed but not stored again (at least 1).
    pub dedup_window_count: Option<u32>,
    /// `Some(1)`: one consumer receives, the others wait as standbys (RabbitMQ's
    /// `x-single-active-consumer`). Any other value is refused with `INVALID_ARGUMENT`; it is
    /// kept as sent so the server can say so.
    pub single_active_consumer: Option<u8>,
    /// How many nodes of a cluster hold the queue (1 to [`MAX_REPLICAS`]): a publish is
    /// confirmed once a majority of them has it durable. `None` or 1 = one node.
    pub replicas: Option<u8>,
}

/// The most replicas a queue may have.
pub const MAX_REPLICAS: u8 = 7;

/// The highest `max_priority` a queue may have.
pub const MAX_PRIORITY: u8 = 10;

/// All 16 bits of the arguments' `present` field are defined.
const ARG_BITS: u16 = 0x0fff | DEDUP_BITS | RETRY_BACKOFF | REPLICAS;
/// Bit of `single_active_consumer` in `present`.
const SINGLE_ACTIVE_BIT: u16 = 11;
const DEDUP_WINDOW_MS: u16 = 12;
const DEDUP_WINDOW_COUNT: u16 = 13;
const DEDUP_BITS: u16 = (1 << DEDUP_WINDOW_MS) | (1 << DEDUP_WINDOW_COUNT);
const RETRY_BACKOFF: u16 = 1 << 14;
const REPLICAS: u16 = 1 << 15;

/// How long a requeued message waits before it is ready again (queue argument bit 14):
/// `min(max_ms, initial_ms × (multiplier_percent / 100)^(delivery_count − 1))`.
///
/// ```text
/// initial_ms u64, multiplier_percent u32, max_ms u64
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RetryBackoff {
    /// The wait after the first delivery.
    pub initial_ms: u64,
    /// Growth per delivery, in percent: 200 doubles, 100 keeps the wait constant.
    pub multiplier_percent: u32,
    /// The longest wait.
    pub max_ms: u64,
}

impl RetryBackoff {
    /// The wait before a message delivered `delivery_count` times (at least 1) is ready again.
    pub fn delay_ms(&self, delivery_count: u32) -> u64 {
        let mut delay = self.initial_ms.min(self.max_ms);
        for _ in 1..delivery_count {
            if delay >= self.max_ms {
                break;
            }
            let next = u128::from(delay) * u128::from(self.multiplier_percent) / 100;
            delay = u64::try_from(next).unwrap_or(u64::MAX).min(self.max_ms);
        }
        delay
    }
}

impl Payload for QueueArguments {
    fn encode(&self, buf: &mut BytesMut) -> Result<(), WireError> {
        let present = [
            self.max_length.is_some(),
            self.max_length_bytes.is_some(),
            self.overflow.is_some(),
            self.message_ttl_ms.is_some(),
            self.dead_letter_exchange.is_some(),
            self.dead_letter_routing_key.is_some(),
            self.ack_timeout_ms.is_some(),
            self.delivery_limit.is_some(),
            self.expires_ms.is_some(),
            self.max_message_bytes.is_some(),
            self.max_priority.is_some(),
        ]
        .iter()
        .enumerate()
        .fold(0u16, |bits, (i, &set)| bits | (u16::from(set) << i))
            | (u16::from(self.single_active_consumer.is_some()) << SINGLE_ACTIVE_BIT)
            | (u16::from(self.dedup_window_ms.is_some()) << DEDUP_WINDOW_MS)
            | (u16::from(self.dedup_window_count.is_some()) << DEDUP_WINDOW_COUNT);
        let present = present
            | if self.retry_backoff.is_some() {
                RETRY_BACKOFF
            } else {
                0
            }
            | if self.replicas.is_some() { REPLICAS } else { 0 };
        p::put_u16(buf, present);
        if let Some(v) = self.max_length {
            p::put_u64(buf, v);
        }
        if let Some(v) = self.max_length_bytes {
            p::put_u64(buf, v);
        }
        if let Some(v) = self.overflow {
            p::put_u8(buf, v as u8);
        }
        if let Some(v) = self.message_ttl_ms {
            p::put_u64(buf, v);
        }
        if let Some(v) = &self.dead_letter_exchange {
            p::put_str(buf, "dead_letter_exchange", v)?;
        }
        if let Some(v) = &self.dead_letter_routing_key {
            p::put_str(buf, "dead_letter_routing_key", v)?;
        }
        if let Some(v) = self.ack_timeout_ms {
            p::put_u64(buf, v);
        }
        if let Some(v) = self.delivery_limit {
            p::put_u32(buf, v);
        }
        if let Some(v) = self.expires_ms {
            p::put_u64(buf, v);
        }
        if let Some(v) = self.max_message_bytes {
            p::put_u32(buf, v);
        }
        if let Some(v) = self.max_priority {
            p::put_u8(buf, v);
        }
        if let Some(v) = self.single_active_consumer {
            p::put_u8(buf, v);
        }
        if let Some(v) = self.dedup_window_ms {
            p::put_u64(buf, v);
        }
        if let Some(v) = self.dedup_window_count {
            p::put_u32(buf, v);
        }
        if let Some(b) = self.retry_backoff {
            p::put_u64(buf, b.initial_ms);
            p::put_u32(buf, b.multiplier_percent);
            p::put_u64(buf, b.max_ms);
        }
        if let Some(v) = self.replicas {
            p::put_u8(buf, v);
        }
        Ok(())
    }

    fn decode(r: &mut Reader<'_>) -> Result<Self, WireError> {
        let present = r.flags_u16("queue arguments", ARG_BITS)?;
        let has = |bit: u16| present & (1 << bit) != 0;
        Ok(QueueArguments {
            max_length: has(0).then(|| r.u64()).transpose()?,
            max_length_bytes: has(1).then(|| r.u64()).transpose()?,
            overflow: has(2)
                .then(|| r.u8().and_then(Overflow::from_u8))
                .transpose()?,
            message_ttl_ms: has(3).then(|| r.u64()).transpose()?,
            dead_letter_exchange: has(4).then(|| r.string()).transpose()?,
            dead_letter_routing_key: has(5).then(|| r.string()).transpose()?,
            ack_timeout_ms: has(6).then(|| r.u64()).transpose()?,
            delivery_limit: has(7).then(|| r.u32()).transpose()?,
            expires_ms: has(8).then(|| r.u64()).transpose()?,
            max_message_bytes: has(9).then(|| r.u32()).transpose()?,
            max_priority: has(10).then(|| r.u8()).transpose()?,
            single_active_consumer: has(SINGLE_ACTIVE_BIT).then(|| r.u8()).transpose()?,
            dedup_window_ms: has(DEDUP_WINDOW_MS).then(|| r.u64()).transpose()?,
            dedup_window_count: has(DEDUP_WINDOW_COUNT).then(|| r.u32()).transpose()?,
            retry_backoff: has(14)
                .then(|| -> Result<_, WireError> {
                    Ok(RetryBackoff {
                        initial_ms: r.u64()?,
                        multiplier_percent: r.u32()?,
                        max_ms: r.u64()?,
                    })
                })
                .transpose()?,
            replicas: has(15).then(|| r.u8()).transpose()?,
        })
    }
}

const DURABLE: u8 = 1 << 0;
const EXCLUSIVE: u8 = 1 << 1;
const AUTO_DELETE: u8 = 1 << 2;
const PASSIVE: u8 = 1 << 3;

fn bit(set: bool, bit: u8) -> u8 {
    if set {
        bit
    } else {
        0
    }
}

/// Creates a queue, or checks that an existing one matches.
///
/// ```text
/// name str, flags u8 (0 durable, 1 exclusive, 2 auto_delete, 3 passive), arguments
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeclareQueue {
    /// Queue name; empty = let the server generate one.
    pub name: String,
    /// Survives a broker restart (its persistent messages too).
    pub durable: bool,
    /// Used only by this connection and deleted when it closes.
    pub exclusive: bool,
    /// Deleted when its last consumer is cancelled.
    pub auto_delete: bool,
    /// Only check that the queue exists; never create it.
    pub passive: bool,
    /// Optional settings.
    pub arguments: QueueArguments,
}

impl Payload for DeclareQueue {
    fn encode(&self, buf: &mut BytesMut) -> Result<(), WireError> {
        p::put_str(buf, "queue name", &self.name)?;
        p::put_u8(
            buf,
            bit(self.durable, DURABLE)
                | bit(self.exclusive, EXCLUSIVE)
                | bit(self.auto_delete, AUTO_DELETE)
                | bit(self.passive, PASSIVE),
        );
        self.arguments.encode(buf)
    }

    fn decode(r: &mut Reader<'_>) -> Result<Self, WireError> {
        let name = r.string()?;
        let flags = r.flags_u8(
            "declare queue flags",
            DURABLE | EXCLUSIVE | AUTO_DELETE | PASSIVE,
        )?;
        Ok(DeclareQueue {
            name,
            durable: flags & DURABLE != 0,
            exclusive: flags & EXCLUSIVE != 0,
            auto_delete: flags & AUTO_DELETE != 0,
            passive: flags & PASSIVE != 0,
            arguments: QueueArguments::decode(r)?,
        })
    }
}

/// Answers `DeclareQueue`.
///
/// ```text
/// name str, ready u64, consumers u32
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeclareQueueOk {
    /// The queue's name (the generated one if the request's was empty).
    pub name: String,
    /// Messages ready for delivery.
    pub ready: u64,
    /// Active consumers.
    pub consumers: u32,
}

impl Payload for DeclareQueueOk {
    fn encode(&self, buf: &mut BytesMut) -> Result<(), WireError> {
        p::put_str(buf, "queue name", &self.name)?;
        p::put_u64(buf, self.ready);
        p::put_u32(buf, self.consumers);
        Ok(())
    }

    fn decode(r: &mut Reader<'_>) -> Result<Self, WireError> {
        Ok(DeclareQueueOk {
            name: r.string()?,
            ready: r.u64()?,
            consumers: r.u32()?,
        })
    }
}

const IF_UNUSED: u8 = 1 << 0;
const IF_EMPTY: u8 = 1 << 1;

/// Deletes a queue and its messages.
///
/// ```text
/// name str, flags u8 (0 if_unused, 1 if_empty)
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeleteQueue {
    /// Queue name.
    pub name: String,
    /// Fail with `PRECONDITION_FAILED` if the queue has consumers.
    pub if_unused: bool,
    /// Fail with `PRECONDITION_FAILED` if the queue holds messages.
    pub if_empty: bool,
}

impl Payload for DeleteQueue {
    fn encode(&self, buf: &mut BytesMut) -> Result<(), WireError> {
        p::put_str(buf, "queue name", &self.name)?;
        p::put_u8(
            buf,
            bit(self.if_unused, IF_UNUSED) | bit(self.if_empty, IF_EMPTY),
        );
        Ok(())
    }

    fn decode(r: &mut Reader<'_>) -> Result<Self, WireError> {
        let name = r.string()?;
        let flags = r.flags_u8("delete queue flags", IF_UNUSED | IF_EMPTY)?;
        Ok(DeleteQueue {
            name,
            if_unused: flags & IF_UNUSED != 0,
            if_empty: flags & IF_EMPTY != 0,
        })
    }
}

/// Defines a payload that is a single `messages: u64` count.
macro_rules! message_count {
    ($(#[doc = $doc:literal])* $name:ident) => {
        $(#[doc = $doc])*
        ///
        /// ```text
        /// messages u64
        /// ```
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub struct $name {
            /// Messages removed.
            pub messages: u64,
        }

        impl Payload for $name {
            fn encode(&self, buf: &mut BytesMut) -> Result<(), WireError> {
                p::put_u64(buf, self.messages);
                Ok(())
            }

            fn decode(r: &mut Reader<'_>) -> Result<Self, WireError> {
                Ok($name { messages: r.u64()? })
            }
        }
    };
}

message_count! {
    /// Answers `DeleteQueue`: ready and unacked messages deleted with the queue.
    DeleteQueueOk
}

message_count! {
    /// Answers `PurgeQueue`: ready messages removed (unacked ones are kept).
    PurgeQueueOk
}

/// Defines a request whose payload is one queue name.
macro_rules! queue_name_request {
    ($(#[doc = $doc:literal])* $name:ident) => {
        $(#[doc = $doc])*
        ///
        /// ```text
        /// name str
        /// ```
        #[derive(Debug, Clone, Default, PartialEq, Eq)]
        pub struct $name {
            /// Queue name.
            pub name: String,
        }

        impl Payload for $name {
            fn encode(&self, buf: &mut BytesMut) -> Result<(), WireError> {
                p::put_str(buf, "queue name", &self.name)
            }

            fn decode(r: &mut Reader<'_>) -> Result<Self, WireError> {
                Ok($name { name: r.string()? })
            }
        }
    };
}

queue_name_request! {
    /// Removes a queue's ready messages (unacked ones stay).
    PurgeQueue
}

queue_name_request! {
    /// Reads a queue's settings and counters.
    InspectQueue
}

/// Answers `InspectQueue`.
///
/// ```text
/// name str, flags u8 (0 durable, 1 exclusive, 2 auto_delete), ready u64, unacked u64,
/// consumers u32, bytes u64, arguments, oldest_ready_age_ms u64, scheduled u64,
/// duplicates_dropped u64
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InspectQueueOk {
    /// Queue name.
    pub name: String,
    /// As declared.
    pub durable: bool,
    /// As declared.
    pub exclusive: bool,
    /// As declared.
    pub auto_delete: bool,
    /// Messages ready for delivery.
    pub ready: u64,
    /// Messages delivered and not yet settled.
    pub unacked: u64,
    /// Active consumers.
    pub consumers: u32,
    /// Bytes (meta plus body) of ready and unacked messages.
    pub bytes: u64,
    /// As declared.
    pub arguments: QueueArguments,
    /// How long the oldest ready message has waited, in milliseconds; 0 when none is ready.
    pub oldest_ready_age_ms: u64,
    /// Messages stored but waiting for their time (a delay, or a requeue with a delay).
    pub scheduled: u64,
    /// Publishes the queue confirmed without storing them, as duplicates of a `message_id`
    /// in its dedup window, since the server started (not kept across restarts).
    pub duplicates_dropped: u64,
}

impl Payload for InspectQueueOk {
    fn encode(&self, buf: &mut BytesMut) -> Result<(), WireError> {
        p::put_str(buf, "queue name", &self.name)?;
        p::put_u8(
            buf,
            bit(self.durable, DURABLE)
                | bit(self.exclusive, EXCLUSIVE)
                | bit(self.auto_delete, AUTO_DELETE),
        );
        p::put_u64(buf, self.ready);
        p::put_u64(buf, self.unacked);
        p::put_u32(buf, self.consumers);
        p::put_u64(buf, self.bytes);
        self.arguments.encode(buf)?;
        p::put_u64(buf, self.oldest_ready_age_ms);
        p::put_u64(buf, self.scheduled);
        p::put_u64(buf, self.duplicates_dropped);
        Ok(())
    }

    fn decode(r: &mut Reader<'_>) -> Result<Self, WireError> {
        let name = r.string()?;
        let flags = r.flags_u8("queue flags", DURABLE | EXCLUSIVE | AUTO_DELETE)?;
        Ok(InspectQueueOk {
            name,
            durable: flags & DURABLE != 0,
            exclusive: flags & EXCLUSIVE != 0,
            auto_delete: flags & AUTO_DELETE != 0,
            ready: r.u64()?,
            unacked: r.u64()?,
            consumers: r.u32()?,
            bytes: r.u64()?,
            arguments: QueueArguments::decode(r)?,
            oldest_ready_age_ms: r.u64()?,
            scheduled: r.u64()?,
            duplicates_dropped: r.u64()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::testing::{check_payload, hex};

    fn full_arguments() -> QueueArguments {
        QueueArguments {
            max_length: Some(1000),
            max_length_bytes: Some(1 << 20),
            overflow: Some(Overflow::RejectPublish),
            message_ttl_ms: Some(60_000),
            dead_letter_exchange: Some("dlx".into()),
            dead_letter_routing_key: Some("dead".into()),
            ack_timeout_ms: Some(1_800_000),
            delivery_limit: Some(5),
            expires_ms: Some(3_600_000),
            max_message_bytes: Some(65_536),
            max_priority: Some(10),
            retry_backoff: None,
            single_active_consumer: Some(1),
            ..Default::default()
        }
    }

    #[test]
    fn declare_queue() {
        check_payload(
            &DeclareQueue {
                name: "tasks".into(),
                durable: true,
                arguments: QueueArguments {
                    max_length: Some(1000),
                    dead_letter_exchange: Some("dlx".into()),
                    ..Default::default()
                },
                ..Default::default()
            },
            &hex("05 00 74 61 73 6b 73  01
                 11 00  e8 03 00 00 00 00 00 00  03 00 64 6c 78"),
        );
    }

    #[test]
    fn declare_queue_with_every_argument() {
        check_payload(
            &DeclareQueue {
                name: String::new(),
                durable: false,
                exclusive: true,
                auto_delete: true,
                passive: true,
                arguments: full_arguments(),
            },
            &hex("00 00  0e  ff 0f
                 e8 03 00 00 00 00 00 00  00 00 10 00 00 00 00 00  01  60 ea 00 00 00 00 00 00
                 03 00 64 6c 78  04 00 64 65 61 64  40 77 1b 00 00 00 00 00  05 00 00 00
                 80 ee 36 00 00 00 00 00  00 00 01 00  0a  01"),
        );
    }

    #[test]
    fn undefined_bits_and_values_are_rejected() {
        // flags bit 4
        let bad_flags = hex("00 00 10 00 00");
        assert!(matches!(
            DeclareQueue::decode(&mut Reader::new(&bad_flags)),
            Err(WireError::ReservedBits { .. })
        ));
        // argument bit 15 (replicas) set, its byte missing
        let short_args = hex("00 00 00 00 80");
        assert!(DeclareQueue::decode(&mut Reader::new(&short_args)).is_err());
        // overflow 3
        let bad_overflow = hex("00 00 00 04 00 03");
        assert!(matches!(
            DeclareQueue::decode(&mut Reader::new(&bad_overflow)),
            Err(WireError::InvalidValue {
                what: "overflow",
                value: 3
            })
        ));
    }

    #[test]
    fn overflow_2_is_reject_publish_dlx() {
        check_payload(
            &DeclareQueue {
                name: "q".into(),
                arguments: QueueArguments {
                    overflow: Some(Overflow::RejectPublishDlx),
                    ..QueueArguments::default()
                },
                ..DeclareQueue::default()
            },
            &hex("01 00 71  00  04 00  02"),
        );
    }

    #[test]
    fn declare_queue_with_a_max_message_size() {
        check_payload(
            &DeclareQueue {
                name: "q".into(),
                arguments: QueueArguments {
                    max_message_bytes: Some(1024),
                    ..Default::default()
                },
                ..Default::default()
            },
            &hex("01 00 71  00  00 02  00 04 00 00"),
        );
    }

    #[test]
    fn declare_queue_with_priorities() {
        check_payload(
            &DeclareQueue {
                name: "q".into(),
                arguments: QueueArguments {
                    max_priority: Some(5),
                    ..Default::default()
                },
                ..Default::default()
            },
            &hex("01 00 71  00  00 04  05"),
        );
    }

    #[test]
    fn declare_queue_with_a_single_active_consumer() {
        // Bit 11; the value is carried as sent (the server refuses anything but 1).
        for value in [1u8, 0] {
            check_payload(
                &DeclareQueue {
                    name: "q".into(),
                    durable: true,
                    arguments: QueueArguments {
                        single_active_consumer: Some(value),
                        ..Default::default()
                    },
                    ..Default::default()
                },
                &[0x01, 0x00, 0x71, 0x01, 0x00, 0x08, value],
            );
        }
    }

    #[test]
    fn declare_queue_ok() {
        check_payload(
            &DeclareQueueOk {
                name: "tasks".into(),
                ready: 3,
                consumers: 1,
            },
            &hex("05 00 74 61 73 6b 73  03 00 00 00 00 00 00 00  01 00 00 00"),
        );
    }

    #[test]
    fn delete_queue() {
        check_payload(
            &DeleteQueue {
                name: "q".into(),
                if_unused: true,
                if_empty: true,
            },
            &hex("01 00 71 03"),
        );
        check_payload(
            &DeleteQueueOk { messages: 7 },
            &hex("07 00 00 00 00 00 00 00"),
        );
        check_payload(
            &PurgeQueueOk { messages: 7 },
            &hex("07 00 00 00 00 00 00 00"),
        );
    }

    #[test]
    fn purge_and_inspect() {
        check_payload(&PurgeQueue { name: "q".into() }, &hex("01 00 71"));
        check_payload(&InspectQueue { name: "q".into() }, &hex("01 00 71"));
        check_payload(
            &InspectQueueOk {
                name: "q".into(),
                durable: true,
                exclusive: false,
                auto_delete: true,
                ready: 1,
                unacked: 2,
                consumers: 3,
                bytes: 4,
                arguments: QueueArguments {
                    overflow: Some(Overflow::DropHead),
                    ..Default::default()
                },
                oldest_ready_age_ms: 1500,
                scheduled: 9,
                duplicates_dropped: 7,
            },
            &hex(
                "01 00 71  05  01 00 00 00 00 00 00 00  02 00 00 00 00 00 00 00  03 00 00 00
                 04 00 00 00 00 00 00 00  04 00 00  dc 05 00 00 00 00 00 00
                 09 00 00 00 00 00 00 00  07 00 00 00 00 00 00 00",
            ),
        );
    }

    #[test]
    fn declare_queue_with_a_retry_backoff() {
        check_payload(
            &DeclareQueue {
                name: "q".into(),
                arguments: QueueArguments {
                    retry_backoff: Some(RetryBackoff {
                        initial_ms: 1000,
                        multiplier_percent: 200,
                        max_ms: 60_000,
                    }),
                    ..Default::default()
                },
                ..Default::default()
            },
            &hex("01 00 71  00  00 40  e8 03 00 00 00 00 00 00  c8 00 00 00
                 60 ea 00 00 00 00 00 00"),
        );
    }

    #[test]
    fn declare_queue_with_replicas_sets_the_last_present_bit() {
        check_payload(
            &DeclareQueue {
                name: "q".into(),
                arguments: QueueArguments {
                    replicas: Some(3),
                    ..Default::default()
                },
                ..Default::default()
            },
            &hex("01 00 71  00  00 80  03"),
        );
    }

    #[test]
    fn the_backoff_grows_by_its_multiplier_up_to_its_max() {
        let b = RetryBackoff {
            initial_ms: 1000,
            multiplier_percent: 200,
            max_ms: 5000,
        };
        let delays: Vec<u64> = (1..=5).map(|n| b.delay_ms(n)).collect();
        assert_eq!(delays, [1000, 2000, 4000, 5000, 5000]);
        assert_eq!(
            b.delay_ms(0),
            1000,
            "a count of 0 is read as the first delivery"
        );
        assert_eq!(b.delay_ms(u32::MAX), 5000, "stops growing at its max");
        let flat = RetryBackoff {
            multiplier_percent: 100,
            ..b
        };
        assert_eq!(flat.delay_ms(9), 1000);
        let huge = RetryBackoff {
            initial_ms: u64::MAX / 2,
            multiplier_percent: u32::MAX,
            max_ms: u64::MAX,
        };
        assert_eq!(huge.delay_ms(3), u64::MAX, "saturates, never wraps");
    }

    #[test]
    fn declare_queue_with_a_dedup_window() {
        check_payload(
            &DeclareQueue {
                name: "q".into(),
                arguments: QueueArguments {
                    max_length: Some(1),
                    dedup_window_ms: Some(60_000),
                    dedup_window_count: Some(1000),
                    ..Default::default()
                },
                ..Default::default()
            },
            &hex("01 00 71  00  01 30  01 00 00 00 00 00 00 00
                 60 ea 00 00 00 00 00 00  e8 03 00 00"),
        );
        check_payload(
            &QueueArguments {
                dedup_window_count: Some(2),
                ..Default::default()
            },
            &hex("00 20  02 00 00 00"),
        );
    }
}
