//! Exchanges and bindings (protocol.md §7): declare, delete, bind and unbind.

use bytes::BytesMut;

use super::error::WireError;
use super::frame::Payload;
use super::header::{put_headers, read_headers, Headers};
use super::primitives::{self as p, Reader};

/// How an exchange matches a message's routing key or headers against its bindings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum ExchangeKind {
    /// Routing key equals binding key.
    Direct = 0,
    /// Every bound queue.
    Fanout = 1,
    /// Dot-separated words; `*` matches one word, `#` zero or more.
    Topic = 2,
    /// Message headers against binding arguments, under `x-match` (`all` by default).
    Headers = 3,
    /// Exactly one bound queue per message, chosen in proportion to the bindings' `x-weight`.
    Weighted = 4,
    /// Exactly one bound queue per message, chosen by a hash of the routing key (or of the
    /// exchange's hash header) on a ring where each binding holds points by its `x-weight`.
    ConsistentHash = 5,
}

impl ExchangeKind {
    pub(crate) fn from_u8(v: u8) -> Result<Self, WireError> {
        match v {
            0 => Ok(ExchangeKind::Direct),
            1 => Ok(ExchangeKind::Fanout),
            2 => Ok(ExchangeKind::Topic),
            3 => Ok(ExchangeKind::Headers),
            4 => Ok(ExchangeKind::Weighted),
            5 => Ok(ExchangeKind::ConsistentHash),
            other => Err(WireError::InvalidValue {
                what: "exchange kind",
                value: u64::from(other),
            }),
        }
    }
}

const DURABLE: u8 = 1 << 0;
const AUTO_DELETE: u8 = 1 << 1;
const PASSIVE: u8 = 1 << 2;
const HAS_ALTERNATE: u8 = 1 << 3;
const HAS_HASH_HEADER: u8 = 1 << 4;
const IF_UNUSED: u8 = 1 << 0;

/// Creates an exchange, or checks that an existing one matches.
///
/// ```text
/// name str, kind u8, flags u8 (0 durable, 1 auto_delete, 2 passive,
/// 3 alternate_exchange present, 4 hash_header present), [alternate_exchange str],
/// [hash_header str]
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeclareExchange {
    /// Exchange name (not empty: that is the default exchange).
    pub name: String,
    /// Matching rule.
    pub kind: ExchangeKind,
    /// Survives a broker restart, with its bindings to durable queues.
    pub durable: bool,
    /// Deleted when its last binding is removed.
    pub auto_delete: bool,
    /// Only check that the exchange exists; never create it.
    pub passive: bool,
    /// Where messages that match no binding go.
    pub alternate_exchange: Option<String>,
    /// Consistent-hash exchanges only: hash this message header instead of the routing key.
    pub hash_header: Option<String>,
}

impl Payload for DeclareExchange {
    fn encode(&self, buf: &mut BytesMut) -> Result<(), WireError> {
        p::put_str(buf, "exchange name", &self.name)?;
        p::put_u8(buf, self.kind as u8);
        let mut flags = 0;
        for (set, bit) in [
            (self.durable, DURABLE),
            (self.auto_delete, AUTO_DELETE),
            (self.passive, PASSIVE),
            (self.alternate_exchange.is_some(), HAS_ALTERNATE),
            (self.hash_header.is_some(), HAS_HASH_HEADER),
        ] {
            if set {
                flags |= bit;
            }
        }
        p::put_u8(buf, flags);
        if let Some(alternate) = &self.alternate_exchange {
            p::put_str(buf, "alternate exchange", alternate)?;
        }
        if let Some(header) = &self.hash_header {
            p::put_str(buf, "hash header", header)?;
        }
        Ok(())
    }

    fn decode(r: &mut Reader<'_>) -> Result<Self, WireError> {
        let name = r.string()?;
        let kind = ExchangeKind::from_u8(r.u8()?)?;
        let flags = r.flags_u8(
            "declare exchange flags",
            DURABLE | AUTO_DELETE | PASSIVE | HAS_ALTERNATE | HAS_HASH_HEADER,
        )?;
        Ok(DeclareExchange {
            name,
            kind,
            durable: flags & DURABLE != 0,
            auto_delete: flags & AUTO_DELETE != 0,
            passive: flags & PASSIVE != 0,
            alternate_exchange: (flags & HAS_ALTERNATE != 0)
                .then(|| r.string())
                .transpose()?,
            hash_header: (flags & HAS_HASH_HEADER != 0)
                .then(|| r.string())
                .transpose()?,
        })
    }
}

/// Deletes an exchange and its bindings.
///
/// ```text
/// name str, flags u8 (0 if_unused)
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeleteExchange {
    /// Exchange name.
    pub name: String,
    /// Fail with `PRECONDITION_FAILED` if the exchange has bindings.
    pub if_unused: bool,
}

impl Payload for DeleteExchange {
    fn encode(&self, buf: &mut BytesMut) -> Result<(), WireError> {
        p::put_str(buf, "exchange name", &self.name)?;
        p::put_u8(buf, if self.if_unused { IF_UNUSED } else { 0 });
        Ok(())
    }

    fn decode(r: &mut Reader<'_>) -> Result<Self, WireError> {
        let name = r.string()?;
        let flags = r.flags_u8("delete exchange flags", IF_UNUSED)?;
        Ok(DeleteExchange {
            name,
            if_unused: flags & IF_UNUSED != 0,
        })
    }
}

/// Defines a binding request: `Bind` and `Unbind` have the same fields.
macro_rules! binding_request {
    ($(#[doc = $doc:literal])* $name:ident) => {
        $(#[doc = $doc])*
        ///
        /// ```text
        /// queue str, exchange str, routing_key str, arguments headers
        /// ```
        #[derive(Debug, Clone, Default, PartialEq, Eq)]
        pub struct $name {
            /// Destination queue.
            pub queue: String,
            /// Source exchange.
            pub exchange: String,
            /// Binding key (direct, topic); ignored by fanout and headers exchanges.
            pub routing_key: String,
            /// Binding arguments; headers exchanges match on them (`x-match`: protocol.md §7).
            pub arguments: Headers,
        }

        impl Payload for $name {
            fn encode(&self, buf: &mut BytesMut) -> Result<(), WireError> {
                p::put_str(buf, "queue name", &self.queue)?;
                p::put_str(buf, "exchange name", &self.exchange)?;
                p::put_str(buf, "routing key", &self.routing_key)?;
                put_headers(buf, &self.arguments)
            }

            fn decode(r: &mut Reader<'_>) -> Result<Self, WireError> {
                Ok($name {
                    queue: r.string()?,
                    exchange: r.string()?,
                    routing_key: r.string()?,
                    arguments: read_headers(r)?,
                })
            }
        }
    };
}

binding_request! {
    /// Binds a queue to an exchange. Binding twice is a no-op.
    Bind
}

binding_request! {
    /// Removes a binding. Removing one that does not exist is a no-op.
    Unbind
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::testing::{check_payload, hex};
    use crate::wire::HeaderValue;

    #[test]
    fn declare_exchange() {
        check_payload(
            &DeclareExchange {
                name: "logs".into(),
                kind: ExchangeKind::Topic,
                durable: true,
                auto_delete: false,
                passive: false,
                alternate_exchange: None,
                hash_header: None,
            },
            &hex("04 00 6c 6f 67 73  02  01"),
        );
        check_payload(
            &DeclareExchange {
                name: "h".into(),
                kind: ExchangeKind::Headers,
                durable: false,
                auto_delete: true,
                passive: true,
                alternate_exchange: Some("ae".into()),
                hash_header: None,
            },
            &hex("01 00 68  03  0e  02 00 61 65"),
        );
        check_payload(
            &DeclareExchange {
                name: "c".into(),
                kind: ExchangeKind::ConsistentHash,
                durable: true,
                auto_delete: false,
                passive: false,
                alternate_exchange: None,
                hash_header: Some("user".into()),
            },
            &hex("01 00 63  05  11  04 00 75 73 65 72"),
        );
        assert!(DeclareExchange::decode(&mut Reader::new(&hex("00 00 06 00"))).is_err());
        assert!(DeclareExchange::decode(&mut Reader::new(&hex("00 00 00 20"))).is_err());
    }

    #[test]
    fn delete_exchange() {
        check_payload(
            &DeleteExchange {
                name: "logs".into(),
                if_unused: true,
            },
            &hex("04 00 6c 6f 67 73 01"),
        );
    }

    #[test]
    fn bind_and_unbind() {
        check_payload(
            &Unbind {
                queue: "q".into(),
                exchange: "logs".into(),
                routing_key: "*.error".into(),
                arguments: vec![],
            },
            &hex("01 00 71  04 00 6c 6f 67 73  07 00 2a 2e 65 72 72 6f 72  00 00"),
        );
        check_payload(
            &Bind {
                queue: "q".into(),
                exchange: "h".into(),
                routing_key: String::new(),
                arguments: vec![
                    ("x-match".into(), "any".into()),
                    ("level".into(), HeaderValue::Int(3)),
                ],
            },
            &hex("01 00 71  01 00 68  00 00
                 02 00  07 00 78 2d 6d 61 74 63 68 01 03 00 61 6e 79
                        05 00 6c 65 76 65 6c 02 03 00 00 00 00 00 00 00"),
        );
    }
}
