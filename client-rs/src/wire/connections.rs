//! Connections for operators (protocol.md §16): list the live connections, close one, cancel
//! one of its consumers.
//!
//! ```text
//! ListConnections     page request (§15.1), cursor = connection_id u64
//! ListConnectionsOk   page (§15.2) of connections, by id
//! CloseConnection     connection_id u64, reason str        -> CloseConnectionOk (empty)
//! CancelConsumer      connection_id u64, consumer_tag str  -> CancelConsumerOk (empty)
//! ```

use bytes::BytesMut;

use super::admin::{put_page_count, put_page_request, read_page_count, read_page_request, Cursor};
use super::error::WireError;
use super::frame::Payload;
use super::primitives::{self as p, Reader};

/// Connections are listed by id.
impl Cursor for u64 {
    fn put(&self, buf: &mut BytesMut) -> Result<(), WireError> {
        p::put_u64(buf, *self);
        Ok(())
    }

    fn read(r: &mut Reader<'_>) -> Result<Self, WireError> {
        r.u64()
    }
}

/// `ListConnections` (0x0609): asks for a page of connections, by id.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ListConnections {
    /// The id of the last connection of the previous page; `None` = from the first.
    pub after: Option<u64>,
    /// Most connections wanted; 0 = as many as fit in one frame. The server may send fewer.
    pub limit: u32,
}

impl Payload for ListConnections {
    fn encode(&self, buf: &mut BytesMut) -> Result<(), WireError> {
        put_page_request(buf, self.limit, self.after.as_ref())
    }

    fn decode(r: &mut Reader<'_>) -> Result<Self, WireError> {
        let (limit, after) = read_page_request(r)?;
        Ok(ListConnections { after, limit })
    }
}

const HAS_PEER: u8 = 1;
const HAS_PRODUCT: u8 = 2;
const HAS_VERSION: u8 = 4;
const HAS_NAME: u8 = 8;

/// One connection in `ListConnectionsOk`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ConnectionSummary {
    /// Its number (`Welcome.connection_id`).
    pub connection_id: u64,
    /// The user it logged in as.
    pub user: String,
    /// The client's address, `ip:port`, when the server knows it.
    pub peer: Option<String>,
    /// The client library (the `product` client property), when it gave one as text.
    pub client_product: Option<String>,
    /// Its version (`version`).
    pub client_version: Option<String>,
    /// The name the application gave the connection (`connection_name`).
    pub connection_name: Option<String>,
    /// When its handshake completed, in milliseconds since the Unix epoch.
    pub connected_at_ms: u64,
    /// Bytes read from its socket since the handshake.
    pub bytes_in: u64,
    /// Bytes written to its socket since the handshake.
    pub bytes_out: u64,
    /// Frames received.
    pub frames_in: u64,
    /// Frames sent.
    pub frames_out: u64,
    /// Messages it published that are not yet confirmed or rejected.
    pub unsettled_publishes: u64,
    /// Its consumers.
    pub consumers: u32,
}

/// Encoded size of a connection summary with an empty user and no optional field.
const CONNECTION_MIN_LEN: usize = 8 + 1 + 2 + 8 * 6 + 4;

impl ConnectionSummary {
    /// Bytes it takes in a `ListConnectionsOk` payload.
    pub fn encoded_len(&self) -> usize {
        let optional = |s: &Option<String>| s.as_deref().map_or(0, p::str_len);
        CONNECTION_MIN_LEN
            + self.user.len()
            + optional(&self.peer)
            + optional(&self.client_product)
            + optional(&self.client_version)
            + optional(&self.connection_name)
    }

    fn optional_fields(&self) -> [(u8, &'static str, Option<&str>); 4] {
        [
            (HAS_PEER, "peer", self.peer.as_deref()),
            (
                HAS_PRODUCT,
                "client product",
                self.client_product.as_deref(),
            ),
            (
                HAS_VERSION,
                "client version",
                self.client_version.as_deref(),
            ),
            (HAS_NAME, "connection name", self.connection_name.as_deref()),
        ]
    }

    fn put(&self, buf: &mut BytesMut) -> Result<(), WireError> {
        p::put_u64(buf, self.connection_id);
        let fields = self.optional_fields();
        let flags = fields
            .iter()
            .filter(|(_, _, v)| v.is_some())
            .fold(0, |acc, (bit, _, _)| acc | bit);
        p::put_u8(buf, flags);
        p::put_str(buf, "user", &self.user)?;
        for (_, what, value) in fields {
            if let Some(v) = value {
                p::put_str(buf, what, v)?;
            }
        }
        for n in [
            self.connected_at_ms,
            self.bytes_in,
            self.bytes_out,
            self.frames_in,
            self.frames_out,
            self.unsettled_publishes,
        ] {
            p::put_u64(buf, n);
        }
        p::put_u32(buf, self.consumers);
        Ok(())
    }

    fn read(r: &mut Reader<'_>) -> Result<Self, WireError> {
        let connection_id = r.u64()?;
        let flags = r.flags_u8(
            "connection flags",
            HAS_PEER | HAS_PRODUCT | HAS_VERSION | HAS_NAME,
        )?;
        let user = r.string()?;
        let mut optional = |bit: u8| -> Result<Option<String>, WireError> {
            (flags & bit != 0).then(|| r.string()).transpose()
        };
        let peer = optional(HAS_PEER)?;
        let client_product = optional(HAS_PRODUCT)?;
        let client_version = optional(HAS_VERSION)?;
        let connection_name = optional(HAS_NAME)?;
        Ok(ConnectionSummary {
            connection_id,
            user,
            peer,
            client_product,
            client_version,
            connection_name,
            connected_at_ms: r.u64()?,
            bytes_in: r.u64()?,
            bytes_out: r.u64()?,
            frames_in: r.u64()?,
            frames_out: r.u64()?,
            unsettled_publishes: r.u64()?,
            consumers: r.u32()?,
        })
    }
}

/// `ListConnectionsOk` (0x060A): a page of connections, by id.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ListConnectionsOk {
    /// The connections.
    pub connections: Vec<ConnectionSummary>,
    /// More connections follow: ask again with `after` = the last one's id.
    pub more: bool,
}

impl Payload for ListConnectionsOk {
    fn encode(&self, buf: &mut BytesMut) -> Result<(), WireError> {
        put_page_count(buf, "connections", self.connections.len(), self.more)?;
        self.connections.iter().try_for_each(|c| c.put(buf))
    }

    fn decode(r: &mut Reader<'_>) -> Result<Self, WireError> {
        let (count, more) = read_page_count(r, CONNECTION_MIN_LEN)?;
        let connections = (0..count)
            .map(|_| ConnectionSummary::read(r))
            .collect::<Result<_, _>>()?;
        Ok(ListConnectionsOk { connections, more })
    }
}

/// `CloseConnection` (0x060B): an operator closes a connection. Its client gets `Close` with
/// `CONNECTION_FORCED` and `reason`; its unsettled deliveries return to their queues.
///
/// ```text
/// connection_id u64, reason str
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CloseConnection {
    /// The connection (`ListConnectionsOk`, `Welcome.connection_id`).
    pub connection_id: u64,
    /// What its client is told; empty = the server's default words.
    pub reason: String,
}

impl Payload for CloseConnection {
    fn encode(&self, buf: &mut BytesMut) -> Result<(), WireError> {
        p::put_u64(buf, self.connection_id);
        p::put_str(buf, "reason", &self.reason)
    }

    fn decode(r: &mut Reader<'_>) -> Result<Self, WireError> {
        Ok(CloseConnection {
            connection_id: r.u64()?,
            reason: r.string()?,
        })
    }
}

/// `CancelConsumer` (0x060D): an operator stops a consumer of any connection. Its client gets
/// `ConsumerCancelled` with `CONSUMER_CANCELLED`; its unsettled deliveries return to the queue.
///
/// ```text
/// connection_id u64, consumer_tag str
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CancelConsumer {
    /// The consumer's connection.
    pub connection_id: u64,
    /// The consumer's tag (unique on its connection).
    pub consumer_tag: String,
}

impl Payload for CancelConsumer {
    fn encode(&self, buf: &mut BytesMut) -> Result<(), WireError> {
        p::put_u64(buf, self.connection_id);
        p::put_str(buf, "consumer tag", &self.consumer_tag)
    }

    fn decode(r: &mut Reader<'_>) -> Result<Self, WireError> {
        Ok(CancelConsumer {
            connection_id: r.u64()?,
            consumer_tag: r.string()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::testing::{check_frame, check_page_request, check_payload, hex};
    use crate::wire::{Frame, Reply, Request, RequestId};

    fn summary() -> ConnectionSummary {
        ConnectionSummary {
            connection_id: 7,
            user: "u".into(),
            peer: Some("p".into()),
            client_product: None,
            client_version: Some("1".into()),
            connection_name: Some("n".into()),
            connected_at_ms: 2,
            bytes_in: 3,
            bytes_out: 4,
            frames_in: 5,
            frames_out: 6,
            unsettled_publishes: 1,
            consumers: 9,
        }
    }

    #[test]
    fn connections_are_paged_by_id() {
        check_page_request(&ListConnections::default(), &[]);
        check_page_request(
            &ListConnections {
                after: Some(3),
                limit: 2,
            },
            &hex("02 00 00 00  01  03 00 00 00 00 00 00 00"),
        );
    }

    #[test]
    fn a_connection_lists_its_optional_fields_after_its_user() {
        let ok = ListConnectionsOk {
            connections: vec![summary()],
            more: true,
        };
        check_payload(
            &ok,
            &hex("01 00 00 80                  # one connection, more follow
                  07 00 00 00 00 00 00 00      # connection_id 7
                  0d                           # flags: peer, version, name
                  01 00 75                     # user u
                  01 00 70                     # peer p
                  01 00 31                     # client_version 1
                  01 00 6e                     # connection_name n
                  02 00 00 00 00 00 00 00      # connected_at_ms
                  03 00 00 00 00 00 00 00      # bytes_in
                  04 00 00 00 00 00 00 00      # bytes_out
                  05 00 00 00 00 00 00 00      # frames_in
                  06 00 00 00 00 00 00 00      # frames_out
                  01 00 00 00 00 00 00 00      # unsettled_publishes
                  09 00 00 00                  # consumers"),
        );
        let c = summary();
        let mut buf = BytesMut::new();
        c.put(&mut buf).unwrap();
        assert_eq!(c.encoded_len(), buf.len());
        let bare = ConnectionSummary::default();
        let mut buf = BytesMut::new();
        bare.put(&mut buf).unwrap();
        assert_eq!(
            (bare.encoded_len(), buf.len()),
            (CONNECTION_MIN_LEN, CONNECTION_MIN_LEN)
        );
    }

    #[test]
    fn undefined_connection_flags_are_malformed() {
        let mut bytes = hex("01 00 00 00  07 00 00 00 00 00 00 00  10  00 00");
        bytes.extend_from_slice(&[0; 8 * 6 + 4]);
        assert!(ListConnectionsOk::decode_exact(&bytes::Bytes::from(bytes)).is_err());
    }

    #[test]
    fn close_connection_and_cancel_consumer_name_their_target() {
        check_payload(
            &CloseConnection {
                connection_id: 5,
                reason: "bye".into(),
            },
            &hex("05 00 00 00 00 00 00 00  03 00 62 79 65"),
        );
        check_payload(
            &CancelConsumer {
                connection_id: 5,
                consumer_tag: "w".into(),
            },
            &hex("05 00 00 00 00 00 00 00  01 00 77"),
        );
    }

    #[test]
    fn the_frames_carry_their_opcodes() {
        let close = CloseConnection {
            connection_id: 1,
            reason: String::new(),
        };
        check_frame(
            &Frame::<Request>::new(RequestId(2), close),
            &hex("12 00 00 00  0b 06  00 00  02 00 00 00  01 00 00 00 00 00 00 00  00 00"),
        );
        check_frame(
            &Frame::<Reply>::new(RequestId(2), Reply::CloseConnectionOk),
            &hex("08 00 00 00  0c 06  00 00  02 00 00 00"),
        );
        let cancel = CancelConsumer {
            connection_id: 1,
            consumer_tag: "t".into(),
        };
        check_frame(
            &Frame::<Request>::new(RequestId(3), cancel),
            &hex("13 00 00 00  0d 06  00 00  03 00 00 00  01 00 00 00 00 00 00 00  01 00 74"),
        );
        check_frame(
            &Frame::<Reply>::new(RequestId(3), Reply::CancelConsumerOk),
            &hex("08 00 00 00  0e 06  00 00  03 00 00 00"),
        );
        check_frame(
            &Frame::<Request>::new(RequestId(4), ListConnections::default()),
            &hex("08 00 00 00  09 06  00 00  04 00 00 00"),
        );
        check_frame(
            &Frame::<Reply>::new(RequestId(4), ListConnectionsOk::default()),
            &hex("0c 00 00 00  0a 06  00 00  04 00 00 00  00 00 00 00"),
        );
    }
}
