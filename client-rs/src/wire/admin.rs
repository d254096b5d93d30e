//! Listings for operators and the CLI (protocol.md §15): queues, exchanges, bindings and
//! consumers. Each request has an empty payload; each answer is a counted list.

use bytes::BytesMut;

use super::error::WireError;
use super::exchange::ExchangeKind;
use super::frame::Payload;
use super::header::{put_headers, read_headers, Headers};
use super::primitives::{self as p, Reader};
use super::publish::put_count;

const DURABLE: u8 = 1;
const EXCLUSIVE: u8 = 2;
const AUTO_DELETE: u8 = 4;

/// One queue in `ListQueuesOk`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueSummary {
    /// Its name.
    pub name: String,
    /// Survives restarts.
    pub durable: bool,
    /// Belongs to one connection.
    pub exclusive: bool,
    /// Deleted when its last consumer goes.
    pub auto_delete: bool,
    /// Messages ready for delivery.
    pub ready: u64,
    /// Messages delivered and not yet settled.
    pub unacked: u64,
    /// Active consumers.
    pub consumers: u32,
    /// Bytes of ready and unacked messages.
    pub bytes: u64,
    /// Messages published into the queue per second, over the last few seconds.
    pub publish_rate: u64,
    /// Messages acknowledged per second, over the last few seconds.
    pub ack_rate: u64,
}

/// `ListQueuesOk` (0x0602): every queue the connection may see, sorted by name.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ListQueuesOk {
    /// The queues.
    pub queues: Vec<QueueSummary>,
}

impl Payload for ListQueuesOk {
    fn encode(&self, buf: &mut BytesMut) -> Result<(), WireError> {
        put_count(buf, "queues", self.queues.len())?;
        for q in &self.queues {
            p::put_str(buf, "queue name", &q.name)?;
            let flags = (u8::from(q.durable) * DURABLE)
                | (u8::from(q.exclusive) * EXCLUSIVE)
                | (u8::from(q.auto_delete) * AUTO_DELETE);
            p::put_u8(buf, flags);
            p::put_u64(buf, q.ready);
            p::put_u64(buf, q.unacked);
            p::put_u32(buf, q.consumers);
            p::put_u64(buf, q.bytes);
            p::put_u64(buf, q.publish_rate);
            p::put_u64(buf, q.ack_rate);
        }
        Ok(())
    }

    fn decode(r: &mut Reader<'_>) -> Result<Self, WireError> {
        let count = r.u32()? as usize;
        let count = r.count(count, 2 + 1 + 8 + 8 + 4 + 8 + 8 + 8)?;
        let queues = (0..count)
            .map(|_| {
                let name = r.string()?;
                let flags = r.flags_u8("queue flags", DURABLE | EXCLUSIVE | AUTO_DELETE)?;
                Ok(QueueSummary {
                    name,
                    durable: flags & DURABLE != 0,
                    exclusive: flags & EXCLUSIVE != 0,
                    auto_delete: flags & AUTO_DELETE != 0,
                    ready: r.u64()?,
                    unacked: r.u64()?,
                    consumers: r.u32()?,
                    bytes: r.u64()?,
                    publish_rate: r.u64()?,
                    ack_rate: r.u64()?,
                })
            })
            .collect::<Result<_, WireError>>()?;
        Ok(ListQueuesOk { queues })
    }
}

/// One exchange in `ListExchangesOk`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExchangeSummary {
    /// Its name (`""` is the default exchange).
    pub name: String,
    /// How it routes.
    pub kind: ExchangeKind,
    /// Survives restarts.
    pub durable: bool,
    /// Deleted when its last binding goes.
    pub auto_delete: bool,
    /// Where unroutable messages go.
    pub alternate_exchange: Option<String>,
}

/// `ListExchangesOk` (0x0604): every exchange, sorted by name.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ListExchangesOk {
    /// The exchanges.
    pub exchanges: Vec<ExchangeSummary>,
}

const HAS_ALTERNATE: u8 = 4;

impl Payload for ListExchangesOk {
    fn encode(&self, buf: &mut BytesMut) -> Result<(), WireError> {
        put_count(buf, "exchanges", self.exchanges.len())?;
        for x in &self.exchanges {
            p::put_str(buf, "exchange name", &x.name)?;
            p::put_u8(buf, x.kind as u8);
            let flags = (u8::from(x.durable) * DURABLE)
                | (u8::from(x.auto_delete) * 2)
                | (u8::from(x.alternate_exchange.is_some()) * HAS_ALTERNATE);
            p::put_u8(buf, flags);
            if let Some(a) = &x.alternate_exchange {
                p::put_str(buf, "alternate exchange", a)?;
            }
        }
        Ok(())
    }

    fn decode(r: &mut Reader<'_>) -> Result<Self, WireError> {
        let count = r.u32()? as usize;
        let count = r.count(count, 2 + 1 + 1)?;
        let exchanges = (0..count)
            .map(|_| {
                let name = r.string()?;
                let kind = ExchangeKind::from_u8(r.u8()?)?;
                let flags = r.flags_u8("exchange flags", DURABLE | 2 | HAS_ALTERNATE)?;
                let alternate_exchange = if flags & HAS_ALTERNATE != 0 {
                    Some(r.string()?)
                } else {
                    None
                };
                Ok(ExchangeSummary {
                    name,
                    kind,
                    durable: flags & DURABLE != 0,
                    auto_delete: flags & 2 != 0,
                    alternate_exchange,
                })
            })
            .collect::<Result<_, WireError>>()?;
        Ok(ListExchangesOk { exchanges })
    }
}

/// One binding in `ListBindingsOk`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindingSummary {
    /// Source exchange.
    pub exchange: String,
    /// Destination queue.
    pub queue: String,
    /// Binding key.
    pub routing_key: String,
    /// Binding arguments.
    pub arguments: Headers,
}

/// `ListBindingsOk` (0x0606): every explicit binding, oldest first.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ListBindingsOk {
    /// The bindings.
    pub bindings: Vec<BindingSummary>,
}

impl Payload for ListBindingsOk {
    fn encode(&self, buf: &mut BytesMut) -> Result<(), WireError> {
        put_count(buf, "bindings", self.bindings.len())?;
        for b in &self.bindings {
            p::put_str(buf, "exchange name", &b.exchange)?;
            p::put_str(buf, "queue name", &b.queue)?;
            p::put_str(buf, "routing key", &b.routing_key)?;
            put_headers(buf, &b.arguments)?;
        }
        Ok(())
    }

    fn decode(r: &mut Reader<'_>) -> Result<Self, WireError> {
        let count = r.u32()? as usize;
        let count = r.count(count, 2 + 2 + 2 + 2)?;
        let bindings = (0..count)
            .map(|_| {
                Ok(BindingSummary {
                    exchange: r.string()?,
                    queue: r.string()?,
                    routing_key: r.string()?,
                    arguments: read_headers(r)?,
                })
            })
            .collect::<Result<_, WireError>>()?;
        Ok(ListBindingsOk { bindings })
    }
}

/// One consumer in `ListConsumersOk`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerSummary {
    /// The queue it consumes from.
    pub queue: String,
    /// Its tag.
    pub consumer_tag: String,
    /// The server's number for its connection (`Welcome.connection_id`).
    pub connection_id: u64,
    /// Its window; 0 = unlimited.
    pub prefetch: u32,
    /// Deliveries it holds unsettled.
    pub unacked: u32,
}

/// `ListConsumersOk` (0x0608): every consumer, by queue.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ListConsumersOk {
    /// The consumers.
    pub consumers: Vec<ConsumerSummary>,
}

impl Payload for ListConsumersOk {
    fn encode(&self, buf: &mut BytesMut) -> Result<(), WireError> {
        put_count(buf, "consumers", self.consumers.len())?;
        for c in &self.consumers {
            p::put_str(buf, "queue name", &c.queue)?;
            p::put_str(buf, "consumer tag", &c.consumer_tag)?;
            p::put_u64(buf, c.connection_id);
            p::put_u32(buf, c.prefetch);
            p::put_u32(buf, c.unacked);
        }
        Ok(())
    }

    fn decode(r: &mut Reader<'_>) -> Result<Self, WireError> {
        let count = r.u32()? as usize;
        let count = r.count(count, 2 + 2 + 8 + 4 + 4)?;
        let consumers = (0..count)
            .map(|_| {
                Ok(ConsumerSummary {
                    queue: r.string()?,
                    consumer_tag: r.string()?,
                    connection_id: r.u64()?,
                    prefetch: r.u32()?,
                    unacked: r.u32()?,
                })
            })
            .collect::<Result<_, WireError>>()?;
        Ok(ListConsumersOk { consumers })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::testing::{check_payload, hex};
    use crate::wire::HeaderValue;

    #[test]
    fn list_queues() {
        let ok = ListQueuesOk {
            queues: vec![QueueSummary {
                name: "q".into(),
                durable: true,
                exclusive: false,
                auto_delete: false,
                ready: 2,
                unacked: 1,
                consumers: 1,
                bytes: 300,
                publish_rate: 15,
                ack_rate: 0,
            }],
        };
        let bytes = hex("01 00 00 00  01 00 71  01
             02 00 00 00 00 00 00 00  01 00 00 00 00 00 00 00  01 00 00 00
             2c 01 00 00 00 00 00 00  0f 00 00 00 00 00 00 00  00 00 00 00 00 00 00 00");
        check_payload(&ok, &bytes);
    }

    #[test]
    fn list_exchanges_bindings_consumers() {
        check_payload(
            &ListExchangesOk {
                exchanges: vec![ExchangeSummary {
                    name: "x".into(),
                    kind: ExchangeKind::Topic,
                    durable: true,
                    auto_delete: false,
                    alternate_exchange: Some("ae".into()),
                }],
            },
            &hex("01 00 00 00  01 00 78  02  05  02 00 61 65"),
        );
        check_payload(
            &ListBindingsOk {
                bindings: vec![BindingSummary {
                    exchange: "x".into(),
                    queue: "q".into(),
                    routing_key: "a.#".into(),
                    arguments: vec![("k".into(), HeaderValue::Bool(true))],
                }],
            },
            &hex("01 00 00 00  01 00 78  01 00 71  03 00 61 2e 23  01 00  01 00 6b 03 01"),
        );
        check_payload(
            &ListConsumersOk {
                consumers: vec![ConsumerSummary {
                    queue: "q".into(),
                    consumer_tag: "w".into(),
                    connection_id: 3,
                    prefetch: 10,
                    unacked: 4,
                }],
            },
            &hex("01 00 00 00  01 00 71  01 00 77  03 00 00 00 00 00 00 00  0a 00 00 00  04 00 00 00"),
        );
    }
}
