//! Codec errors ([`WireError`], [`DecodeError`]) and the protocol's stable error codes
//! ([`ErrorCode`], protocol.md §11).

use thiserror::Error;

use super::frame::{Opcode, RequestId};

/// Why a payload, a field or a frame could not be encoded or decoded.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum WireError {
    /// The payload ended before a field did.
    #[error("unexpected end of payload at offset {offset}: need {need} bytes, have {have}")]
    UnexpectedEof {
        /// Offset of the field within the payload.
        offset: usize,
        /// Bytes the field needs.
        need: usize,
        /// Bytes left.
        have: usize,
    },
    /// Bytes were left over after the last field.
    #[error("{count} trailing bytes after the last field")]
    TrailingBytes {
        /// How many bytes were left.
        count: usize,
    },
    /// A string field is not valid UTF-8.
    #[error("string at offset {offset} is not valid UTF-8")]
    InvalidUtf8 {
        /// Offset of the string's bytes within the payload.
        offset: usize,
    },
    /// A boolean byte is neither 0 nor 1.
    #[error("boolean at offset {offset} is {value}, not 0 or 1")]
    InvalidBool {
        /// Offset of the byte.
        offset: usize,
        /// The byte found.
        value: u8,
    },
    /// An enumerated field holds a value the protocol does not define.
    #[error("invalid {what}: {value}")]
    InvalidValue {
        /// The field.
        what: &'static str,
        /// The value found.
        value: u64,
    },
    /// A flags or presence field has bits set that version 1 does not define.
    #[error("reserved bits set in {what}: {bits:#x}")]
    ReservedBits {
        /// The field.
        what: &'static str,
        /// The undefined bits that were set.
        bits: u64,
    },
    /// A header key appears twice in one header table.
    #[error("duplicate header key {key:?}")]
    DuplicateHeader {
        /// The repeated key.
        key: String,
    },
    /// The Hello payload does not start with [`MAGIC`](super::MAGIC).
    #[error("bad magic: this peer does not speak the Sluice protocol")]
    BadMagic,
    /// The opcode is not defined, or not valid in this direction.
    #[error("unknown opcode {opcode:#06x}")]
    UnknownOpcode {
        /// The opcode found.
        opcode: u16,
    },
    /// A value is too long for its length prefix (encoding only).
    #[error("{what} is {len} bytes or items long, the limit is {max}")]
    TooLong {
        /// The field.
        what: &'static str,
        /// Its length.
        len: usize,
        /// The largest length the wire can carry.
        max: usize,
    },
    /// An encoded frame would exceed the negotiated maximum (encoding only).
    #[error("frame of {len} bytes exceeds the negotiated maximum of {max}")]
    FrameTooLarge {
        /// The frame's length field.
        len: usize,
        /// The negotiated maximum.
        max: u32,
    },
}

impl WireError {
    /// The error code a server reports when a request fails to decode with this error.
    pub fn error_code(&self) -> ErrorCode {
        match self {
            WireError::UnknownOpcode { .. } => ErrorCode::UnknownOpcode,
            WireError::FrameTooLarge { .. } => ErrorCode::FrameTooLarge,
            WireError::BadMagic => ErrorCode::MalformedFrame,
            _ => ErrorCode::MalformedRequest,
        }
    }
}

/// Why [`FrameDecoder`](super::FrameDecoder) could not produce a frame.
///
/// [`is_fatal`](Self::is_fatal) errors break the framing: send `Close` and drop the connection.
/// The others concern one well-framed frame, which the decoder has already consumed: reply
/// with an `Error` frame naming [`request_id`](Self::request_id) and keep reading.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DecodeError {
    /// The length prefix exceeds the negotiated maximum (checked before any buffer is reserved).
    #[error("frame length {len} exceeds the maximum {max}")]
    FrameTooLarge {
        /// The length prefix.
        len: u32,
        /// The negotiated maximum.
        max: u32,
    },
    /// The length prefix is smaller than the rest of the frame header.
    #[error("frame length {len} is shorter than the {min}-byte frame header")]
    FrameTooShort {
        /// The length prefix.
        len: u32,
        /// The smallest valid length.
        min: u32,
    },
    /// A complete frame whose header or payload is invalid.
    #[error("bad frame (opcode {opcode:#06x}, request {request_id}): {source}")]
    BadFrame {
        /// The frame's opcode.
        opcode: u16,
        /// The frame's request id.
        request_id: RequestId,
        /// What is wrong with it.
        #[source]
        source: WireError,
    },
}

impl DecodeError {
    /// True when the connection must be closed: the framing is lost, or a `Publish` or
    /// `Hello` frame is malformed (publish sequence numbers or the handshake cannot go on).
    pub fn is_fatal(&self) -> bool {
        match self {
            DecodeError::FrameTooLarge { .. } | DecodeError::FrameTooShort { .. } => true,
            DecodeError::BadFrame { opcode, .. } => {
                *opcode == Opcode::Publish as u16 || *opcode == Opcode::Hello as u16
            }
        }
    }

    /// The request id of the offending frame, when the framing held.
    pub fn request_id(&self) -> Option<RequestId> {
        match self {
            DecodeError::BadFrame { request_id, .. } => Some(*request_id),
            _ => None,
        }
    }

    /// The error code to report to the peer (in `Error` or `Close`).
    pub fn error_code(&self) -> ErrorCode {
        match self {
            DecodeError::FrameTooLarge { .. } => ErrorCode::FrameTooLarge,
            DecodeError::FrameTooShort { .. } => ErrorCode::MalformedFrame,
            DecodeError::BadFrame { source, .. } => {
                if self.is_fatal() {
                    ErrorCode::MalformedFrame
                } else {
                    source.error_code()
                }
            }
        }
    }
}

/// Defines [`ErrorCode`] from one table, so each number is written exactly once.
macro_rules! error_codes {
    ($( $(#[doc = $doc:literal])* $name:ident = $num:literal, $wire:literal; )*) => {
        /// A stable protocol error code (protocol.md §11).
        ///
        /// The numbers are part of the protocol: a number is never reused, and a code that is
        /// retired leaves a gap. Add new codes above the highest one in their group. Numbers
        /// this version does not know decode to [`ErrorCode::Unknown`], keeping the number.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[repr(u16)]
        #[non_exhaustive]
        pub enum ErrorCode {
            $( $(#[doc = $doc])* $name = $num, )*
            /// A code this version of the codec does not know, kept as received.
            /// (The discriminant 0 is never a valid code; read the number with `u16::from`.)
            Unknown(u16) = 0,
        }

        impl ErrorCode {
            /// Every known code, in table order.
            pub const ALL: &'static [ErrorCode] = &[$(ErrorCode::$name),*];

            /// The code for a number; unknown numbers give [`ErrorCode::Unknown`].
            pub const fn from_u16(code: u16) -> ErrorCode {
                match code {
                    $( $num => ErrorCode::$name, )*
                    other => ErrorCode::Unknown(other),
                }
            }

            /// The code's number on the wire.
            pub const fn as_u16(self) -> u16 {
                match self {
                    $( ErrorCode::$name => $num, )*
                    ErrorCode::Unknown(code) => code,
                }
            }

            /// The code's name in protocol.md, e.g. `NOT_FOUND`.
            pub const fn name(self) -> &'static str {
                match self {
                    $( ErrorCode::$name => $wire, )*
                    ErrorCode::Unknown(_) => "UNKNOWN",
                }
            }
        }
    };
}

error_codes! {
    // 1xx: connection errors. The sender closes the connection (`Close` with this code).
    /// The framing is broken (length shorter than the header, bad magic, malformed `Publish`).
    MalformedFrame = 100, "MALFORMED_FRAME";
    /// A frame's length exceeds the negotiated maximum frame length.
    FrameTooLarge = 101, "FRAME_TOO_LARGE";
    /// Client and server have no protocol version in common.
    UnsupportedVersion = 102, "UNSUPPORTED_VERSION";
    /// Authentication failed (unknown user, wrong password, no access to the vhost): sent in
    /// `Close`. Also sent in `Error` or `PublishRejected` for one request that lacks a
    /// permission; then the connection stays up.
    AccessRefused = 103, "ACCESS_REFUSED";
    /// Nothing was received for two heartbeat intervals.
    HeartbeatTimeout = 104, "HEARTBEAT_TIMEOUT";
    /// A frame arrived that is not allowed in the connection's state (e.g. before `Hello`).
    UnexpectedFrame = 105, "UNEXPECTED_FRAME";
    /// The server is shutting down, or an operator closed the connection.
    ConnectionForced = 106, "CONNECTION_FORCED";
    /// The client left what it asked for unread too long (its socket stayed full).
    SlowConsumer = 107, "SLOW_CONSUMER";
    /// The server is at its connection limit; the connection was refused before its
    /// handshake. Retry later.
    ConnectionLimit = 108, "CONNECTION_LIMIT";

    // 2xx: request errors. Sent in an `Error` frame naming the request; the connection stays up.
    /// The payload of a well-framed request could not be decoded.
    MalformedRequest = 200, "MALFORMED_REQUEST";
    /// The opcode is unknown, or not a request.
    UnknownOpcode = 201, "UNKNOWN_OPCODE";
    /// The named queue, exchange or consumer does not exist.
    NotFound = 202, "NOT_FOUND";
    /// The entity exists with different settings (declare mismatch), or a condition such as
    /// `if_unused`/`if_empty` does not hold.
    PreconditionFailed = 203, "PRECONDITION_FAILED";
    /// An exclusive queue or consumer belongs to another connection.
    ResourceLocked = 204, "RESOURCE_LOCKED";
    /// The operation is not permitted (reserved names, the default exchange, duplicate tags).
    NotAllowed = 205, "NOT_ALLOWED";
    /// The delivery tag is not outstanding on this connection.
    UnknownDeliveryTag = 206, "UNKNOWN_DELIVERY_TAG";
    /// A field is well-formed but its value is out of range (name too long, zero prefetch…).
    InvalidArgument = 207, "INVALID_ARGUMENT";
    /// A configured limit would be exceeded (queues or exchanges per vhost, bindings per
    /// exchange, consumers per connection...); the message names the limit.
    LimitExceeded = 208, "LIMIT_EXCEEDED";
    /// The request needs the leader of a replicated queue and this node is not it; the
    /// message is the leader's client address (`host:port`), empty while none is known.
    NotLeader = 209, "NOT_LEADER";

    // 3xx: publish refusals, sent in `PublishRejected` for one message.
    /// The message (meta plus body) is longer than the negotiated maximum message length.
    MessageTooLarge = 300, "MESSAGE_TOO_LARGE";
    /// The broker is out of disk space (or below its free-space threshold).
    StorageFull = 301, "STORAGE_FULL";
    /// A mandatory message matched no queue.
    Unroutable = 302, "UNROUTABLE";
    /// A queue with overflow `reject-publish` is at its length limit.
    QueueFull = 303, "QUEUE_FULL";
    /// The broker uses more memory than it may: publishing is blocked until it uses less.
    MemoryLimit = 304, "MEMORY_LIMIT";

    // 4xx: why a consumer was cancelled by the server (`ConsumerCancelled`).
    /// The consumer's queue was deleted.
    QueueDeleted = 400, "QUEUE_DELETED";
    /// The consumer was cancelled by an operator.
    ConsumerCancelled = 401, "CONSUMER_CANCELLED";
    /// The replicated queue's leader moved to another node; the message is the new leader's
    /// client address (`host:port`), empty while none is known.
    LeaderMoved = 402, "LEADER_MOVED";

    // 5xx: server faults.
    /// The server failed; the request may be retried.
    InternalError = 500, "INTERNAL_ERROR";
    /// The server ran out of a resource (file descriptors, memory for a mapping); nothing was
    /// changed, and the request may succeed once the resource is released.
    ResourceExhausted = 501, "RESOURCE_EXHAUSTED";
}

impl ErrorCode {
    /// True for 1xx codes, after which the connection is closed.
    pub const fn is_connection_error(self) -> bool {
        matches!(self.as_u16(), 100..=199)
    }
}

impl From<u16> for ErrorCode {
    fn from(code: u16) -> Self {
        ErrorCode::from_u16(code)
    }
}

impl From<ErrorCode> for u16 {
    fn from(code: ErrorCode) -> Self {
        code.as_u16()
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.name(), self.as_u16())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_unique_nonzero_and_round_trip() {
        let mut seen = std::collections::HashSet::new();
        for &code in ErrorCode::ALL {
            let n = code.as_u16();
            assert_ne!(n, 0, "{code:?} uses the reserved number 0");
            assert!(seen.insert(n), "{n} is used twice");
            assert_eq!(ErrorCode::from_u16(n), code);
            assert_eq!(u16::from(code), n);
        }
    }

    #[test]
    fn unknown_numbers_are_preserved() {
        for n in [0u16, 1, 99, 199, 210, 403, 999, u16::MAX] {
            let code = ErrorCode::from(n);
            assert_eq!(code, ErrorCode::Unknown(n));
            assert_eq!(u16::from(code), n);
        }
    }

    /// Pins the numbers: changing one breaks every shipped client.
    #[test]
    fn numbers_are_stable() {
        let table: Vec<(u16, &str)> = ErrorCode::ALL
            .iter()
            .map(|c| (c.as_u16(), c.name()))
            .collect();
        assert_eq!(
            table,
            [
                (100, "MALFORMED_FRAME"),
                (101, "FRAME_TOO_LARGE"),
                (102, "UNSUPPORTED_VERSION"),
                (103, "ACCESS_REFUSED"),
                (104, "HEARTBEAT_TIMEOUT"),
                (105, "UNEXPECTED_FRAME"),
                (106, "CONNECTION_FORCED"),
                (107, "SLOW_CONSUMER"),
                (108, "CONNECTION_LIMIT"),
                (200, "MALFORMED_REQUEST"),
                (201, "UNKNOWN_OPCODE"),
                (202, "NOT_FOUND"),
                (203, "PRECONDITION_FAILED"),
                (204, "RESOURCE_LOCKED"),
                (205, "NOT_ALLOWED"),
                (206, "UNKNOWN_DELIVERY_TAG"),
                (207, "INVALID_ARGUMENT"),
                (208, "LIMIT_EXCEEDED"),
                (209, "NOT_LEADER"),
                (300, "MESSAGE_TOO_LARGE"),
                (301, "STORAGE_FULL"),
                (302, "UNROUTABLE"),
                (303, "QUEUE_FULL"),
                (304, "MEMORY_LIMIT"),
                (400, "QUEUE_DELETED"),
                (401, "CONSUMER_CANCELLED"),
                (402, "LEADER_MOVED"),
                (500, "INTERNAL_ERROR"),
                (501, "RESOURCE_EXHAUSTED"),
            ]
        );
    }

    #[test]
    fn connection_errors_are_the_1xx_group() {
        assert!(ErrorCode::FrameTooLarge.is_connection_error());
        assert!(!ErrorCode::NotFound.is_connection_error());
        assert!(!ErrorCode::Unknown(42).is_connection_error());
        assert!(ErrorCode::Unknown(150).is_connection_error());
        assert_eq!(ErrorCode::NotFound.to_string(), "NOT_FOUND (202)");
    }
}
