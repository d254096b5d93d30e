//! Framing (protocol.md §3): the frame header, the opcode table, and the sans-I/O
//! [`FrameDecoder`] that cuts frames out of a receive buffer.
//!
//! ```text
//! offset  size  field
//! 0       4     length      u32: bytes after this field (8 + payload length)
//! 4       2     opcode      u16
//! 6       2     flags       u16: 0 in version 1
//! 8       4     request_id  u32
//! 12      n     payload
//! ```

use bytes::{Buf, Bytes, BytesMut};

use super::error::{DecodeError, WireError};
use super::primitives::{self as p, Reader};

/// Bytes in a frame header, the length prefix included.
pub const FRAME_HEADER_LEN: usize = 12;
/// Smallest valid value of the length prefix (a frame with an empty payload).
pub const MIN_FRAME_LEN: u32 = (FRAME_HEADER_LEN - 4) as u32;

/// Names a request; its reply names it back. Server-initiated frames carry [`RequestId::NONE`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct RequestId(pub u32);

impl RequestId {
    /// The id of frames that answer no request (deliveries, confirms, notices, heartbeats).
    pub const NONE: RequestId = RequestId(0);
}

/// Names a delivery on one connection; increases from 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct DeliveryTag(pub u64);

/// Names a consumer on one connection; assigned by the server in `ConsumeOk`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct ConsumerId(pub u32);

/// The implicit number of a published message: 1 for the connection's first, then +1 each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct PublishSeq(pub u64);

macro_rules! display_inner {
    ($($name:ident),*) => {$(
        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                self.0.fmt(f)
            }
        }
    )*};
}

display_inner!(RequestId, DeliveryTag, ConsumerId, PublishSeq);

/// Who sends a frame with a given opcode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Only the client sends it.
    ToServer,
    /// Only the server sends it.
    ToClient,
    /// Either side sends it.
    Both,
}

macro_rules! opcodes {
    ($( $(#[doc = $doc:literal])* $name:ident = $num:literal, $dir:ident; )*) => {
        /// A frame type (protocol.md §4). Numbers are stable and never reused.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[repr(u16)]
        pub enum Opcode {
            $( $(#[doc = $doc])* $name = $num, )*
        }

        impl Opcode {
            /// Every opcode, in table order.
            pub const ALL: &'static [Opcode] = &[$(Opcode::$name),*];

            /// The opcode with this number, if any.
            pub const fn from_u16(n: u16) -> Option<Opcode> {
                match n {
                    $( $num => Some(Opcode::$name), )*
                    _ => None,
                }
            }

            /// Who sends frames with this opcode.
            pub const fn direction(self) -> Direction {
                match self {
                    $( Opcode::$name => Direction::$dir, )*
                }
            }
        }
    };
}

opcodes! {
    // 0x00xx: connection
    /// Client opens the handshake.
    Hello = 0x0001, ToServer;
    /// Server accepts the handshake.
    Welcome = 0x0002, ToClient;
    /// Keep-alive, either way.
    Heartbeat = 0x0003, Both;
    /// Starts closing the connection, either way.
    Close = 0x0004, Both;
    /// Answers `Close`.
    CloseOk = 0x0005, Both;
    /// A request failed.
    Error = 0x0006, ToClient;
    /// Publishing is refused until `Unblocked`.
    Blocked = 0x0007, ToClient;
    /// Publishing is accepted again.
    Unblocked = 0x0008, ToClient;
    // 0x01xx: queues
    /// Declare (create or check) a queue.
    DeclareQueue = 0x0101, ToServer;
    /// Answers `DeclareQueue`.
    DeclareQueueOk = 0x0102, ToClient;
    /// Delete a queue.
    DeleteQueue = 0x0103, ToServer;
    /// Answers `DeleteQueue`.
    DeleteQueueOk = 0x0104, ToClient;
    /// Drop a queue's ready messages.
    PurgeQueue = 0x0105, ToServer;
    /// Answers `PurgeQueue`.
    PurgeQueueOk = 0x0106, ToClient;
    /// Read a queue's settings and counters.
    InspectQueue = 0x0107, ToServer;
    /// Answers `InspectQueue`.
    InspectQueueOk = 0x0108, ToClient;
    // 0x02xx: exchanges and bindings
    /// Declare (create or check) an exchange.
    DeclareExchange = 0x0201, ToServer;
    /// Answers `DeclareExchange`.
    DeclareExchangeOk = 0x0202, ToClient;
    /// Delete an exchange.
    DeleteExchange = 0x0203, ToServer;
    /// Answers `DeleteExchange`.
    DeleteExchangeOk = 0x0204, ToClient;
    /// Bind a queue to an exchange.
    Bind = 0x0205, ToServer;
    /// Answers `Bind`.
    BindOk = 0x0206, ToClient;
    /// Remove a binding.
    Unbind = 0x0207, ToServer;
    /// Answers `Unbind`.
    UnbindOk = 0x0208, ToClient;
    // 0x03xx: publishing
    /// A batch of messages to publish.
    Publish = 0x0301, ToServer;
    /// Every message up to a sequence number is settled.
    Confirm = 0x0302, ToClient;
    /// Some published messages were refused.
    PublishRejected = 0x0303, ToClient;
    /// Some published messages were confirmed as duplicates, not stored again.
    PublishDuplicates = 0x0304, ToClient;
    // 0x04xx: consuming
    /// Start a consumer.
    Consume = 0x0401, ToServer;
    /// Answers `Consume`.
    ConsumeOk = 0x0402, ToClient;
    /// Stop a consumer.
    Cancel = 0x0403, ToServer;
    /// Answers `Cancel`.
    CancelOk = 0x0404, ToClient;
    /// The server stopped a consumer.
    ConsumerCancelled = 0x0405, ToClient;
    /// A batch of deliveries to one consumer.
    Deliver = 0x0406, ToClient;
    /// Change a consumer's prefetch window.
    SetPrefetch = 0x0407, ToServer;
    /// Pull one message.
    Get = 0x0408, ToServer;
    /// Answers `Get`.
    GetOk = 0x0409, ToClient;
    /// Pull up to N messages, waiting for the first.
    GetMany = 0x040A, ToServer;
    /// Answers `GetMany`.
    GetManyOk = 0x040B, ToClient;
    /// A consumer's circuit changed state (circuit breaking).
    ConsumerCircuit = 0x040C, ToClient;
    // 0x05xx: settling deliveries
    /// Acknowledge (delete) deliveries.
    Ack = 0x0501, ToServer;
    /// Negatively acknowledge deliveries (requeue or dead-letter).
    Nack = 0x0502, ToServer;
    /// Reject one delivery (dead-letter).
    Reject = 0x0503, ToServer;
    /// Push back a delivery's ack deadline.
    Extend = 0x0504, ToServer;
    // 0x06xx: listings for operators
    /// List every queue.
    ListQueues = 0x0601, ToServer;
    /// The queues.
    ListQueuesOk = 0x0602, ToClient;
    /// List every exchange.
    ListExchanges = 0x0603, ToServer;
    /// The exchanges.
    ListExchangesOk = 0x0604, ToClient;
    /// List every binding.
    ListBindings = 0x0605, ToServer;
    /// The bindings.
    ListBindingsOk = 0x0606, ToClient;
    /// List every consumer.
    ListConsumers = 0x0607, ToServer;
    /// The consumers.
    ListConsumersOk = 0x0608, ToClient;
    /// List every client connection.
    ListConnections = 0x0609, ToServer;
    /// The connections.
    ListConnectionsOk = 0x060A, ToClient;
    /// Close another connection (operators).
    CloseConnection = 0x060B, ToServer;
    /// Answers `CloseConnection`.
    CloseConnectionOk = 0x060C, ToClient;
    /// Cancel another connection's consumer (operators).
    CancelConsumer = 0x060D, ToServer;
    /// Answers `CancelConsumer`.
    CancelConsumerOk = 0x060E, ToClient;
    /// Read a queue's first ready messages without taking them.
    BrowseQueue = 0x060F, ToServer;
    /// The messages.
    BrowseQueueOk = 0x0610, ToClient;
    /// Start moving ready messages to another queue.
    MoveMessages = 0x0611, ToServer;
    /// The move started.
    MoveMessagesOk = 0x0612, ToClient;
    /// Ask how a move is doing.
    MoveStatus = 0x0613, ToServer;
    /// A move's state and progress.
    MoveStatusOk = 0x0614, ToClient;
    /// Read a queue's scheduled messages, soonest first.
    ListScheduled = 0x0615, ToServer;
    /// The scheduled messages.
    ListScheduledOk = 0x0616, ToClient;
    /// Delete a scheduled message before its time.
    CancelScheduled = 0x0617, ToServer;
    /// Answers `CancelScheduled`.
    CancelScheduledOk = 0x0618, ToClient;
    /// Ask for the history of the messages with a `message_id` ("why is it stuck").
    TraceMessage = 0x0619, ToServer;
    /// The histories.
    TraceMessageOk = 0x061A, ToClient;
    /// Start (or replace) a queue's chaos injection (administrators).
    SetChaos = 0x0620, ToServer;
    /// Answers `SetChaos`.
    SetChaosOk = 0x0621, ToClient;
    /// End a queue's chaos injection now (administrators).
    ClearChaos = 0x0622, ToServer;
    /// Answers `ClearChaos`.
    ClearChaosOk = 0x0623, ToClient;
    /// List the queues with chaos injections.
    ListChaos = 0x0624, ToServer;
    /// The queues with chaos injections.
    ListChaosOk = 0x0625, ToClient;
    // 0x07xx: cluster administration
    /// Ask for the cluster's state as the node sees it.
    ClusterStatus = 0x0701, ToServer;
    /// The cluster's state.
    ClusterStatusOk = 0x0702, ToClient;
    /// Add a node to the cluster.
    AddNode = 0x0703, ToServer;
    /// Answers `AddNode`.
    AddNodeOk = 0x0704, ToClient;
    /// Remove a node from the cluster.
    RemoveNode = 0x0705, ToServer;
    /// Answers `RemoveNode`.
    RemoveNodeOk = 0x0706, ToClient;
    /// Move a group's leadership to a node.
    TransferLeadership = 0x0707, ToServer;
    /// Answers `TransferLeadership`.
    TransferLeadershipOk = 0x0708, ToClient;
}

/// One direction's set of frame bodies: [`Request`](super::Request) or [`Reply`](super::Reply).
pub trait FrameBody: Sized {
    /// The frame's opcode.
    fn opcode(&self) -> Opcode;
    /// Appends the payload (everything after the frame header).
    fn encode_payload(&self, buf: &mut BytesMut) -> Result<(), WireError>;
    /// Decodes a payload; opcodes of the other direction are [`WireError::UnknownOpcode`].
    fn decode_payload(opcode: u16, payload: &Bytes) -> Result<Self, WireError>;
}

/// One message's payload encoding.
pub trait Payload: Sized {
    /// Appends the encoded message.
    fn encode(&self, buf: &mut BytesMut) -> Result<(), WireError>;
    /// Reads the message from the reader's position.
    fn decode(r: &mut Reader<'_>) -> Result<Self, WireError>;

    /// Decodes a whole payload; bytes left over are an error. Blobs share `payload`'s storage.
    fn decode_exact(payload: &Bytes) -> Result<Self, WireError> {
        let mut r = Reader::from_bytes(payload);
        let value = Self::decode(&mut r)?;
        r.finish()?;
        Ok(value)
    }
}

/// A decoded frame: a request id and a body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame<B> {
    /// The request this frame is or answers ([`RequestId::NONE`] for unsolicited frames).
    pub request_id: RequestId,
    /// The frame's content.
    pub body: B,
}

impl<B: FrameBody> Frame<B> {
    /// A frame with the given id and body.
    pub fn new(request_id: RequestId, body: impl Into<B>) -> Self {
        Frame {
            request_id,
            body: body.into(),
        }
    }

    /// Appends the whole frame. Fails, leaving `buf` as it was, if a field is too long or the
    /// frame would exceed `max_frame_len` (the peer would close the connection).
    pub fn encode(&self, buf: &mut BytesMut, max_frame_len: u32) -> Result<(), WireError> {
        let start = buf.len();
        let result = self.encode_unchecked(buf, max_frame_len);
        if result.is_err() {
            buf.truncate(start);
        }
        result
    }

    fn encode_unchecked(&self, buf: &mut BytesMut, max_frame_len: u32) -> Result<(), WireError> {
        let start = buf.len();
        put_frame_header(buf, self.body.opcode(), self.request_id, 0)?;
        self.body.encode_payload(buf)?;
        let len = buf.len() - start - 4;
        if len > max_frame_len as usize {
            return Err(WireError::FrameTooLarge {
                len,
                max: max_frame_len,
            });
        }
        // len <= max_frame_len, a u32.
        buf[start..start + 4].copy_from_slice(&(len as u32).to_le_bytes());
        Ok(())
    }
}

/// Appends a frame header for a payload of `payload_len` bytes that the caller writes next
/// (for example as separate slices of a vectored write).
pub fn put_frame_header(
    buf: &mut BytesMut,
    opcode: Opcode,
    request_id: RequestId,
    payload_len: usize,
) -> Result<(), WireError> {
    let max = u32::MAX as usize - MIN_FRAME_LEN as usize;
    let payload_len = p::checked_len("frame payload", payload_len, max)?;
    p::put_u32(buf, MIN_FRAME_LEN + payload_len as u32);
    p::put_u16(buf, opcode as u16);
    p::put_u16(buf, 0);
    p::put_u32(buf, request_id.0);
    Ok(())
}

/// A frame cut from the stream but not yet decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawFrame {
    /// The opcode, possibly unknown.
    pub opcode: u16,
    /// The flags field.
    pub flags: u16,
    /// The request id.
    pub request_id: RequestId,
    /// The payload, split from the receive buffer without copying.
    pub payload: Bytes,
}

impl RawFrame {
    /// Decodes the body. Errors name the frame's opcode and request id.
    pub fn decode<B: FrameBody>(self) -> Result<Frame<B>, DecodeError> {
        let bad = |source| DecodeError::BadFrame {
            opcode: self.opcode,
            request_id: self.request_id,
            source,
        };
        if self.flags != 0 {
            return Err(bad(WireError::ReservedBits {
                what: "frame flags",
                bits: u64::from(self.flags),
            }));
        }
        let body = B::decode_payload(self.opcode, &self.payload).map_err(bad)?;
        Ok(Frame {
            request_id: self.request_id,
            body,
        })
    }
}

/// Cuts frames out of a receive buffer (sans-I/O: the caller reads the socket).
///
/// ```
/// use bytes::BytesMut;
/// use sluice_client::wire::{FrameDecoder, Request, HANDSHAKE_MAX_FRAME_LEN};
///
/// let decoder = FrameDecoder::new(HANDSHAKE_MAX_FRAME_LEN);
/// let mut buf = BytesMut::from(&[0x08, 0, 0, 0, 0x03, 0x00][..]); // half a Heartbeat
/// assert!(decoder.decode::<Request>(&mut buf).unwrap().is_none());
/// buf.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
/// let frame = decoder.decode::<Request>(&mut buf).unwrap().unwrap();
/// assert_eq!(frame.body, Request::Heartbeat);
/// assert!(buf.is_empty());
/// ```
#[derive(Debug, Clone)]
pub struct FrameDecoder {
    max_frame_len: u32,
}

impl FrameDecoder {
    /// A decoder refusing length prefixes above `max_frame_len`. Use
    /// [`HANDSHAKE_MAX_FRAME_LEN`](super::HANDSHAKE_MAX_FRAME_LEN) until the handshake is done.
    pub fn new(max_frame_len: u32) -> Self {
        FrameDecoder { max_frame_len }
    }

    /// The largest accepted length prefix.
    pub fn max_frame_len(&self) -> u32 {
        self.max_frame_len
    }

    /// Switches to the limit agreed in the handshake.
    pub fn set_max_frame_len(&mut self, max_frame_len: u32) {
        self.max_frame_len = max_frame_len;
    }

    /// Cuts the next frame out of `buf` without decoding its payload.
    ///
    /// Returns `Ok(None)` when `buf` holds no complete frame yet, leaving it untouched except
    /// that capacity for the rest of the frame is reserved once its length has been checked.
    /// A length above the maximum or below the header size is an error before anything is
    /// reserved; after such an error the stream cannot be resynchronised.
    pub fn decode_raw(&self, buf: &mut BytesMut) -> Result<Option<RawFrame>, DecodeError> {
        let Some(prefix) = buf.first_chunk::<4>() else {
            return Ok(None);
        };
        let len = u32::from_le_bytes(*prefix);
        if len > self.max_frame_len {
            return Err(DecodeError::FrameTooLarge {
                len,
                max: self.max_frame_len,
            });
        }
        if len < MIN_FRAME_LEN {
            return Err(DecodeError::FrameTooShort {
                len,
                min: MIN_FRAME_LEN,
            });
        }
        let Some(total) = usize::try_from(len).ok().and_then(|len| len.checked_add(4)) else {
            // Only reachable where usize is 32 bits.
            return Err(DecodeError::FrameTooLarge {
                len,
                max: self.max_frame_len,
            });
        };
        if buf.len() < total {
            buf.reserve(total - buf.len());
            return Ok(None);
        }
        let mut frame = buf.split_to(total);
        frame.advance(4);
        let opcode = frame.get_u16_le();
        let flags = frame.get_u16_le();
        let request_id = RequestId(frame.get_u32_le());
        Ok(Some(RawFrame {
            opcode,
            flags,
            request_id,
            payload: frame.freeze(),
        }))
    }

    /// Cuts and decodes the next frame. On a [`DecodeError::BadFrame`] the frame has been
    /// consumed and decoding can continue (unless [`DecodeError::is_fatal`]).
    pub fn decode<B: FrameBody>(
        &self,
        buf: &mut BytesMut,
    ) -> Result<Option<Frame<B>>, DecodeError> {
        match self.decode_raw(buf)? {
            Some(raw) => raw.decode().map(Some),
            None => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{Reply, Request, HANDSHAKE_MAX_FRAME_LEN};

    #[test]
    fn opcodes_are_unique_and_round_trip() {
        let mut seen = std::collections::HashSet::new();
        for &op in Opcode::ALL {
            assert!(seen.insert(op as u16), "{op:?} reused");
            assert_eq!(Opcode::from_u16(op as u16), Some(op));
        }
        assert_eq!(Opcode::from_u16(0), None);
        assert_eq!(Opcode::from_u16(0xffff), None);
    }

    #[test]
    fn incomplete_frames_wait_for_more() {
        let mut full = BytesMut::new();
        Frame::<Request>::new(RequestId(7), Request::Heartbeat)
            .encode(&mut full, HANDSHAKE_MAX_FRAME_LEN)
            .unwrap();
        let decoder = FrameDecoder::new(HANDSHAKE_MAX_FRAME_LEN);
        for i in 0..full.len() {
            let mut buf = BytesMut::from(&full[..i]);
            assert_eq!(decoder.decode::<Request>(&mut buf), Ok(None), "prefix {i}");
            assert_eq!(&buf[..], &full[..i], "prefix {i} consumed bytes");
        }
        let mut buf = full.clone();
        let frame = decoder.decode::<Request>(&mut buf).unwrap().unwrap();
        assert_eq!(frame, Frame::new(RequestId(7), Request::Heartbeat));
        assert!(buf.is_empty());
    }

    #[test]
    fn oversized_length_is_rejected_before_reserving() {
        let decoder = FrameDecoder::new(1024);
        let mut buf = BytesMut::with_capacity(16);
        buf.extend_from_slice(&u32::MAX.to_le_bytes());
        let capacity = buf.capacity();
        assert_eq!(
            decoder.decode::<Request>(&mut buf),
            Err(DecodeError::FrameTooLarge {
                len: u32::MAX,
                max: 1024
            })
        );
        assert_eq!(buf.capacity(), capacity);
        let mut buf = BytesMut::from(&1025u32.to_le_bytes()[..]);
        let err = decoder.decode::<Request>(&mut buf).unwrap_err();
        assert!(err.is_fatal());
        assert_eq!(err.error_code(), crate::wire::ErrorCode::FrameTooLarge);
    }

    #[test]
    fn short_length_is_fatal() {
        let decoder = FrameDecoder::new(1024);
        let mut buf = BytesMut::from(&[7, 0, 0, 0][..]);
        let err = decoder.decode::<Request>(&mut buf).unwrap_err();
        assert_eq!(err, DecodeError::FrameTooShort { len: 7, min: 8 });
        assert!(err.is_fatal());
    }

    #[test]
    fn bad_request_in_good_frame_is_consumed_and_not_fatal() {
        let decoder = FrameDecoder::new(1024);
        // Unknown opcode 0x7777, then a Welcome opcode sent the wrong way, then bad flags,
        // then a heartbeat.
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&[8, 0, 0, 0, 0x77, 0x77, 0, 0, 9, 0, 0, 0]);
        buf.extend_from_slice(&[8, 0, 0, 0, 0x02, 0x00, 0, 0, 10, 0, 0, 0]);
        buf.extend_from_slice(&[8, 0, 0, 0, 0x03, 0x00, 1, 0, 11, 0, 0, 0]);
        buf.extend_from_slice(&[8, 0, 0, 0, 0x03, 0x00, 0, 0, 0, 0, 0, 0]);
        for (id, code) in [
            (9, crate::wire::ErrorCode::UnknownOpcode),
            (10, crate::wire::ErrorCode::UnknownOpcode),
            (11, crate::wire::ErrorCode::MalformedRequest),
        ] {
            let err = decoder.decode::<Request>(&mut buf).unwrap_err();
            assert!(!err.is_fatal(), "{err}");
            assert_eq!(err.request_id(), Some(RequestId(id)));
            assert_eq!(err.error_code(), code);
        }
        let frame = decoder.decode::<Request>(&mut buf).unwrap().unwrap();
        assert_eq!(frame.body, Request::Heartbeat);
        assert!(buf.is_empty());
    }

    #[test]
    fn encoding_respects_the_maximum() {
        let mut buf = BytesMut::from(&b"keep"[..]);
        let body = Reply::Error(crate::wire::ErrorReply {
            code: crate::wire::ErrorCode::NotFound,
            message: "x".repeat(100),
        });
        let err = Frame::<Reply>::new(RequestId(1), body.clone())
            .encode(&mut buf, 64)
            .unwrap_err();
        assert!(matches!(err, WireError::FrameTooLarge { max: 64, .. }));
        assert_eq!(&buf[..], b"keep");
        Frame::<Reply>::new(RequestId(1), body)
            .encode(&mut buf, 1024)
            .unwrap();
        assert_eq!(buf.len(), 4 + FRAME_HEADER_LEN + 2 + 2 + 100);
    }
}
