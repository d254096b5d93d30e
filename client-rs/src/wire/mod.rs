//! The Sluice wire protocol as plain data and a sans-I/O codec (no sockets here).
//!
//! `protocol.md` at the repository root is the normative description; the section numbers in
//! the module docs point into it. The broker and the client share these types, so there is
//! exactly one definition of every frame.
//!
//! # Layout
//! - [`primitives`]: field encodings (little-endian integers, `str`, `blob`) and [`Reader`].
//! - `header`: [`HeaderValue`] and header tables.
//! - `frame`: the frame header, [`Opcode`], ids, [`FrameDecoder`] and [`Frame::encode`].
//! - `messages`: the [`Request`] and [`Reply`] enums, one variant per opcode.
//! - one module per group of messages: `connection` (handshake, close, errors, flow control),
//!   `queue`, `exchange`, `publish` (+ `meta`, the stored meta block), `consume`, `ack`,
//!   `admin` (listings for operators), `connections` (operators' connections and consumers),
//!   `browse` (reading ready messages in place), `moves` (moving ready messages between queues), `chaos` (chaos injection per queue).
//! - `error`: [`WireError`], [`DecodeError`] and the stable [`ErrorCode`] table.
//!
//! # Use
//! ```
//! use bytes::BytesMut;
//! use sluice_client::wire::*;
//!
//! // Client side: encode a request.
//! let mut out = BytesMut::new();
//! let ack = Ack { delivery_tag: DeliveryTag(1), multiple: false };
//! Frame::<Request>::new(RequestId(5), ack).encode(&mut out, DEFAULT_MAX_FRAME_LEN)?;
//!
//! // Server side: decode everything buffered, then handle it.
//! let decoder = FrameDecoder::new(DEFAULT_MAX_FRAME_LEN);
//! while let Some(frame) = decoder.decode::<Request>(&mut out).expect("valid frame") {
//!     assert_eq!(frame.request_id, RequestId(5));
//!     assert!(matches!(frame.body, Request::Ack(_)));
//! }
//! # Ok::<(), WireError>(())
//! ```

mod ack;
mod admin;
mod browse;
mod chaos;
mod circuit;
mod cluster;
mod connection;
mod connections;
mod consume;
mod error;
mod exchange;
mod frame;
mod get_many;
mod header;
mod history;
mod messages;
mod meta;
mod moves;
pub mod primitives;
#[cfg(test)]
mod proptests;
mod publish;
mod queue;
mod scheduled;
#[cfg(test)]
mod testing;
#[cfg(test)]
mod tests;
mod trace;

pub use ack::{Ack, Extend, Nack, Reject, MAX_SETTLE_REASON_LEN};
pub use admin::{
    cmp_headers, BindingSummary, CircuitSummary, ConsumerKey, ConsumerSummary, ExchangeSummary,
    ListBindings, ListBindingsOk, ListConsumers, ListConsumersOk, ListExchanges, ListExchangesOk,
    ListQueues, ListQueuesOk, QueueSummary, MAX_PAGE_ITEMS, PAGE_FIXED_LEN,
};
pub use browse::{
    BrowseQueue, BrowseQueueOk, BrowsedMessage, BROWSE_FIXED_LEN, MAX_BROWSE_LIMIT, MIN_BROWSED_LEN,
};
pub use chaos::{
    ChaosDelay, ChaosEntry, ChaosPlan, ChaosRate, ChaosStats, ClearChaos, ClearChaosOk, DelayChaos,
    DropChaos, FailPublishChaos, ListChaosOk, SetChaos, SetChaosOk, ShortLeaseChaos,
    MAX_CHAOS_ENTRIES,
};
pub use circuit::{
    CircuitBreaker, CircuitState, ConsumerCircuit, CIRCUIT_BREAKER_LEN, MAX_CIRCUIT_MS,
    MAX_FAILURE_THRESHOLD, MAX_SUCCESS_THRESHOLD,
};
pub use cluster::{
    AddNode, ClusterGroup, ClusterMember, ClusterStatusOk, GroupReplica, RemoveNode,
    TransferLeadership, MAX_CLUSTER_ITEMS, MAX_GROUP_REPLICAS,
};
pub use connection::{Blocked, Close, ErrorReply, Hello, Welcome};
pub use connections::{
    CancelConsumer, CloseConnection, ConnectionSummary, ListConnections, ListConnectionsOk,
};
pub use consume::{
    Cancel, CancelOk, Consume, ConsumeOk, ConsumerCancelled, Deliver, Delivery, Get, GetOk,
    SetPrefetch,
};
pub use error::{DecodeError, ErrorCode, WireError};
pub use exchange::{Bind, DeclareExchange, DeleteExchange, ExchangeKind, Unbind};
pub use frame::{
    put_frame_header, ConsumerId, DeliveryTag, Direction, Frame, FrameBody, FrameDecoder, Opcode,
    Payload, PublishSeq, RawFrame, RequestId, FRAME_HEADER_LEN, MIN_FRAME_LEN,
};
pub use get_many::{
    GetMany, GetManyOk, GET_MANY_OK_FIXED_LEN, MAX_GET_MANY, MAX_GET_MANY_WAIT_MS,
    MAX_WAITING_GET_MANY,
};
pub use header::{
    headers_len, put_headers, read_headers, Decimal, DecimalParseError, HeaderValue, Headers,
    MAX_HEADER_DEPTH,
};
pub use history::{
    HistoryEvent, HistoryEventKind, MessageHistory, MessageState, ReturnCause, TraceMessage,
    TraceMessageOk, MAX_HISTORY_EVENTS, MAX_TRACED_MESSAGES,
};
pub use messages::{Reply, Request};
pub use meta::{meta_len, put_meta, DeliveryDelay, MessageMeta, MetaView, Properties};
pub use moves::{MoveId, MoveMessages, MoveMessagesOk, MoveState, MoveStatus, MoveStatusOk};
pub use primitives::Reader;
pub use publish::{
    Confirm, Publish, PublishDuplicates, PublishMessage, PublishRejected, Rejection,
};
pub use queue::{
    DeclareQueue, DeclareQueueOk, DeleteQueue, DeleteQueueOk, InspectQueue, InspectQueueOk,
    Overflow, PurgeQueue, PurgeQueueOk, QueueArguments, RetryBackoff, MAX_PRIORITY, MAX_REPLICAS,
};
pub use scheduled::{
    CancelScheduled, ListScheduled, ListScheduledOk, ScheduledMessage, MAX_SCHEDULED_LIMIT,
    MIN_SCHEDULED_LEN, SCHEDULED_FIXED_LEN,
};
pub use trace::{InvalidTraceParent, TraceParent, TRACE_PARENT_LEN};

/// The protocol version this codec speaks.
pub const PROTOCOL_VERSION: u16 = 2;
/// First bytes of every `Hello` payload.
pub const MAGIC: &[u8; 6] = b"SLUICE";
/// Default TCP port (`sluice://`).
pub const DEFAULT_PORT: u16 = 5680;
/// Default TLS port (`sluices://`).
pub const DEFAULT_TLS_PORT: u16 = 5681;
/// Maximum frame length (length prefix value) until the handshake has set one.
pub const HANDSHAKE_MAX_FRAME_LEN: u32 = 64 * 1024;
/// Smallest maximum frame length a server may agree to.
pub const MIN_MAX_FRAME_LEN: u32 = 64 * 1024;
/// Default maximum message length (meta plus body).
pub const DEFAULT_MAX_MESSAGE_LEN: u32 = 16 * 1024 * 1024;
/// Bytes a frame needs beyond one message: the agreed maximum message length is at most the
/// agreed maximum frame length minus this, so one message of any allowed size fits a frame.
pub const FRAME_OVERHEAD_RESERVE: u32 = 1024;
/// Default maximum frame length: one maximum-size message plus room to spare.
pub const DEFAULT_MAX_FRAME_LEN: u32 = DEFAULT_MAX_MESSAGE_LEN + 1024 * 1024;
/// Default heartbeat interval.
pub const DEFAULT_HEARTBEAT_MS: u32 = 30_000;
/// Longest queue or exchange name, consumer tag or routing key, in bytes.
pub const MAX_NAME_LEN: usize = 255;
