//! The client's [`Error`] type, and the one place where the protocol's error codes
//! (protocol.md §11) become typed errors.

use std::fmt;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use thiserror::Error;

use crate::tls::TlsError;
use crate::url::UrlError;
use crate::wire::{
    Close, ConsumerCancelled, DecodeError, ErrorCode, ErrorReply, PublishSeq, Rejection, WireError,
};

/// Result alias for the client's operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything a client operation can fail with.
///
/// Cheap to clone (an I/O error is shared), so the one reason a connection died can be handed
/// to every request, publish and consumer it was carrying.
#[derive(Debug, Clone, Error)]
#[non_exhaustive]
pub enum Error {
    /// The connection URL does not parse.
    #[error("invalid URL: {0}")]
    InvalidUrl(#[from] UrlError),
    /// TLS (`sluices://`) could not be set up, or its handshake failed: an untrusted server
    /// certificate, a client certificate the server refused, an unreadable CA file...
    #[error("TLS: {0}")]
    Tls(#[from] TlsError),
    /// Connecting failed (DNS, TCP connect, or the socket broke during the handshake).
    #[error("I/O error: {0}")]
    Io(#[source] Arc<io::Error>),
    /// The connection is closed, or closed while the operation was pending. The reason tells
    /// who closed it and why.
    #[error("connection closed: {0}")]
    ConnectionClosed(CloseReason),
    /// The server answered the request with an `Error` frame (2xx and 5xx codes). The request
    /// had no effect and the connection is still usable.
    #[error("server error {code}: {message}")]
    Server {
        /// What went wrong, e.g. [`ErrorCode::NotFound`].
        code: ErrorCode,
        /// The server's detail, e.g. `no queue 'tasks'`.
        message: String,
    },
    /// The server refused a published message (`PublishRejected`). It was not stored, except
    /// possibly in other queues for [`ErrorCode::QueueFull`] (protocol.md §8.4). The code may
    /// be of any group: `NOT_FOUND` for a missing exchange, `ACCESS_REFUSED` for a missing
    /// permission, `QUEUE_FULL`...; match on it, or use [`Error::code`] and the `is_*`
    /// methods, which look at it whatever frame carried it.
    #[error("message {seq} refused: {code}: {message}")]
    PublishRejected {
        /// The message's publish sequence number on its connection.
        seq: PublishSeq,
        /// Why: [`ErrorCode::Unroutable`], [`ErrorCode::StorageFull`], ...
        code: ErrorCode,
        /// The server's detail.
        message: String,
    },
    /// The server stopped a consumer (`ConsumerCancelled`): its queue was deleted, or an
    /// operator cancelled it. The consumer's stream ends after this error.
    #[error("consumer cancelled by the server: {code}: {reason}")]
    ConsumerCancelled {
        /// Why, e.g. [`ErrorCode::QueueDeleted`].
        code: ErrorCode,
        /// The server's detail.
        reason: String,
    },
    /// No answer within the configured time. For a request the outcome is unknown.
    #[error("{operation} timed out after {after:?}")]
    Timeout {
        /// What timed out: `connect`, `request`, `close`.
        operation: &'static str,
        /// The limit that passed.
        after: Duration,
    },
    /// A message (meta block plus body) is larger than the server accepts; it was not sent.
    #[error("message of {size} bytes exceeds the server's maximum of {max} bytes")]
    MessageTooLarge {
        /// The message's size.
        size: usize,
        /// The connection's `max_message_len`.
        max: usize,
    },
    /// An argument cannot be encoded (a string over 65 535 bytes, a repeated header key...);
    /// nothing was sent.
    #[error("invalid argument: {0}")]
    InvalidArgument(#[from] WireError),
    /// The server broke the protocol during the handshake (an unexpected or undecodable
    /// frame, an unsupported version).
    #[error("protocol violation: {0}")]
    Protocol(String),
    /// The delivery was already acked, nacked or rejected through this [`Message`](crate::Message).
    #[error("delivery already settled")]
    AlreadySettled,
    /// The delivery came on a connection that has since been lost (the client reconnected,
    /// or moved to another node): it cannot be settled any more, and its queue will deliver
    /// the message again.
    #[error("delivery lost with its connection: the message will be delivered again")]
    DeliveryLost,
}

/// Why a connection ended.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum CloseReason {
    /// The client closed it ([`Client::close`](crate::Client::close), or every handle was
    /// dropped).
    Normal,
    /// The server sent `Close`: shutdown (`CONNECTION_FORCED`), refused credentials
    /// (`ACCESS_REFUSED`), a protocol error on our side...
    Server {
        /// The code; `None` for a normal close.
        code: Option<ErrorCode>,
        /// The server's reason.
        reason: String,
    },
    /// The socket failed or the server went away without `Close` (EOF).
    Io(Arc<io::Error>),
    /// Nothing was heard from the server for too long (protocol.md §5.3).
    HeartbeatTimeout,
    /// The server sent something the client cannot accept; the client closed the connection.
    Protocol(String),
    /// The connection's background task ended without recording why (a bug or a panic).
    Aborted,
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CloseReason::Normal => f.write_str("closed by the client"),
            CloseReason::Server { code: None, reason } => {
                write!(f, "closed by the server: {reason}")
            }
            CloseReason::Server {
                code: Some(code),
                reason,
            } => write!(f, "closed by the server with {code}: {reason}"),
            CloseReason::Io(e) => write!(f, "I/O error: {e}"),
            CloseReason::HeartbeatTimeout => f.write_str("heartbeat timeout"),
            CloseReason::Protocol(what) => write!(f, "protocol violation by the server: {what}"),
            CloseReason::Aborted => f.write_str("connection task ended"),
        }
    }
}

/// What kind of failure an [`ErrorCode`] reports, from its hundreds digit (protocol.md §13):
/// how a client treats a code, even one it does not know.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorGroup {
    /// 1xx: the connection is closing.
    Connection,
    /// 2xx: the request failed and had no effect.
    Request,
    /// 3xx: one published message was refused.
    Publish,
    /// 4xx: a consumer was stopped.
    Consumer,
    /// 5xx: a server fault; the operation may be retried.
    Server,
    /// Any other number.
    Unknown,
}

impl ErrorGroup {
    /// The group of a code.
    pub const fn of(code: ErrorCode) -> ErrorGroup {
        match code.as_u16() {
            100..=199 => ErrorGroup::Connection,
            200..=299 => ErrorGroup::Request,
            300..=399 => ErrorGroup::Publish,
            400..=499 => ErrorGroup::Consumer,
            500..=599 => ErrorGroup::Server,
            _ => ErrorGroup::Unknown,
        }
    }
}

// The mapping from wire frames to typed errors: every code the server sends goes through one
// of these four conversions.

impl From<ErrorReply> for Error {
    fn from(reply: ErrorReply) -> Self {
        Error::Server {
            code: reply.code,
            message: reply.message,
        }
    }
}

impl From<Rejection> for Error {
    fn from(r: Rejection) -> Self {
        Error::PublishRejected {
            seq: r.seq,
            code: r.code,
            message: r.message,
        }
    }
}

impl From<ConsumerCancelled> for Error {
    fn from(c: ConsumerCancelled) -> Self {
        Error::ConsumerCancelled {
            code: c.code,
            reason: c.reason,
        }
    }
}

impl From<Close> for CloseReason {
    fn from(c: Close) -> Self {
        CloseReason::Server {
            code: c.code,
            reason: c.reason,
        }
    }
}

impl From<CloseReason> for Error {
    fn from(reason: CloseReason) -> Self {
        Error::ConnectionClosed(reason)
    }
}

impl From<io::Error> for Error {
    fn from(e: io::Error) -> Self {
        Error::Io(Arc::new(e))
    }
}

impl From<DecodeError> for Error {
    fn from(e: DecodeError) -> Self {
        Error::Protocol(e.to_string())
    }
}

impl Error {
    /// The protocol error code behind this error, if the server sent one (in `Error`,
    /// `PublishRejected`, `ConsumerCancelled` or `Close`).
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            Error::Server { code, .. }
            | Error::PublishRejected { code, .. }
            | Error::ConsumerCancelled { code, .. } => Some(*code),
            Error::ConnectionClosed(CloseReason::Server { code, .. }) => *code,
            _ => None,
        }
    }

    /// The group of [`code`](Self::code), if there is a code. An `Error` reply is a
    /// request's failure whatever its code: `ACCESS_REFUSED` (103) there is a missing
    /// permission (protocol.md §5.8), and the connection stays up.
    pub fn group(&self) -> Option<ErrorGroup> {
        match self {
            Error::Server { code, .. } if ErrorGroup::of(*code) == ErrorGroup::Connection => {
                Some(ErrorGroup::Request)
            }
            _ => self.code().map(ErrorGroup::of),
        }
    }

    fn has_code(&self, wanted: ErrorCode) -> bool {
        self.code() == Some(wanted)
    }

    /// `NOT_FOUND`: no such queue, exchange or consumer.
    pub fn is_not_found(&self) -> bool {
        self.has_code(ErrorCode::NotFound)
    }

    /// `PRECONDITION_FAILED`: a declare with different settings, or an unmet `if_unused` /
    /// `if_empty`.
    pub fn is_precondition_failed(&self) -> bool {
        self.has_code(ErrorCode::PreconditionFailed)
    }

    /// `RESOURCE_LOCKED`: an exclusive queue or consumer of another connection.
    pub fn is_resource_locked(&self) -> bool {
        self.has_code(ErrorCode::ResourceLocked)
    }

    /// `NOT_ALLOWED`: a reserved name, the default exchange, a duplicate consumer tag.
    pub fn is_not_allowed(&self) -> bool {
        self.has_code(ErrorCode::NotAllowed)
    }

    /// `UNKNOWN_DELIVERY_TAG`: the delivery is not outstanding (already settled, or its lease
    /// expired).
    pub fn is_unknown_delivery_tag(&self) -> bool {
        self.has_code(ErrorCode::UnknownDeliveryTag)
    }

    /// `ACCESS_REFUSED`: the server refused the credentials or the vhost (the connection is
    /// closed), or the user lacks the permission a request needs ([`Error::Server`] or
    /// [`Error::PublishRejected`]: the connection stays up).
    pub fn is_access_refused(&self) -> bool {
        self.has_code(ErrorCode::AccessRefused)
    }

    /// `UNROUTABLE`: a mandatory message matched no queue.
    pub fn is_unroutable(&self) -> bool {
        self.has_code(ErrorCode::Unroutable)
    }

    /// `QUEUE_FULL`: a `reject-publish` queue at its length limit refused the message.
    pub fn is_queue_full(&self) -> bool {
        self.has_code(ErrorCode::QueueFull)
    }

    /// `MESSAGE_TOO_LARGE` from the server, or a message this client refused to send for
    /// being larger than the server accepts ([`Error::MessageTooLarge`]).
    pub fn is_message_too_large(&self) -> bool {
        matches!(self, Error::MessageTooLarge { .. }) || self.has_code(ErrorCode::MessageTooLarge)
    }

    /// `INVALID_ARGUMENT` from the server, or an argument this client could not encode
    /// ([`Error::InvalidArgument`]).
    pub fn is_invalid_argument(&self) -> bool {
        matches!(self, Error::InvalidArgument(_)) || self.has_code(ErrorCode::InvalidArgument)
    }

    /// `LIMIT_EXCEEDED`: a configured limit would be exceeded; the message names it.
    pub fn is_limit_exceeded(&self) -> bool {
        self.has_code(ErrorCode::LimitExceeded)
    }

    /// The delivery's connection was lost: settling it is impossible, and the message will
    /// be delivered again ([`Error::DeliveryLost`]).
    pub fn is_delivery_lost(&self) -> bool {
        matches!(self, Error::DeliveryLost)
    }

    /// `NOT_LEADER`: the request needs the leader of a replicated queue, which this node is
    /// not (the message names the leader's address, or is empty while none is known).
    pub fn is_not_leader(&self) -> bool {
        self.has_code(ErrorCode::NotLeader)
    }

    /// The server refused a published message (any code).
    pub fn is_publish_rejected(&self) -> bool {
        matches!(self, Error::PublishRejected { .. })
    }

    /// The connection is gone (or never came up because the server closed it).
    pub fn is_connection_closed(&self) -> bool {
        matches!(self, Error::ConnectionClosed(_))
    }

    /// Worth retrying, possibly on a new connection: a server fault (5xx), a full disk or
    /// queue, a timeout, or a connection lost for reasons other than our own close or refused
    /// credentials.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Io(_) | Error::Timeout { .. } => true,
            Error::ConnectionClosed(reason) => match reason {
                CloseReason::Normal => false,
                CloseReason::Server { code, .. } => !matches!(
                    code,
                    Some(ErrorCode::AccessRefused | ErrorCode::UnsupportedVersion)
                ),
                _ => true,
            },
            _ => matches!(
                self.code(),
                Some(
                    ErrorCode::StorageFull
                        | ErrorCode::MemoryLimit
                        | ErrorCode::QueueFull
                        | ErrorCode::InternalError
                        | ErrorCode::ResourceExhausted
                )
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_replies_map_to_server_errors() {
        let err = Error::from(ErrorReply {
            code: ErrorCode::NotFound,
            message: "no queue 'tasks'".into(),
        });
        assert!(err.is_not_found());
        assert!(!err.is_precondition_failed());
        assert_eq!(err.code(), Some(ErrorCode::NotFound));
        assert_eq!(err.group(), Some(ErrorGroup::Request));
        assert!(!err.is_transient());
        assert_eq!(
            err.to_string(),
            "server error NOT_FOUND (202): no queue 'tasks'"
        );
    }

    #[test]
    fn a_missing_permission_is_a_request_error_not_a_closed_connection() {
        let err = Error::from(ErrorReply {
            code: ErrorCode::AccessRefused,
            message: "user 'app' lacks read permission on queue 'q' in vhost '/'".into(),
        });
        assert!(err.is_access_refused());
        assert!(!err.is_connection_closed());
        assert_eq!(err.group(), Some(ErrorGroup::Request));
        assert!(!err.is_transient());
        let limit = Error::from(ErrorReply {
            code: ErrorCode::LimitExceeded,
            message: "vhost 'v' has reached its max_queues limit of 2".into(),
        });
        assert_eq!(limit.group(), Some(ErrorGroup::Request));
    }

    #[test]
    fn rejections_map_to_publish_rejected() {
        let err = Error::from(Rejection {
            seq: PublishSeq(3),
            code: ErrorCode::Unroutable,
            message: "no route".into(),
        });
        assert!(err.is_publish_rejected() && err.is_unroutable());
        assert_eq!(err.group(), Some(ErrorGroup::Publish));
        assert_eq!(
            err.to_string(),
            "message 3 refused: UNROUTABLE (302): no route"
        );
        let full = Error::from(Rejection {
            seq: PublishSeq(4),
            code: ErrorCode::StorageFull,
            message: String::new(),
        });
        assert!(full.is_transient());
        let exhausted = Error::from(Rejection {
            seq: PublishSeq(5),
            code: ErrorCode::ResourceExhausted,
            message: String::new(),
        });
        assert!(exhausted.is_transient());
    }

    #[test]
    fn closes_map_to_connection_closed() {
        let err = Error::from(CloseReason::from(Close {
            code: Some(ErrorCode::AccessRefused),
            reason: "bad credentials".into(),
        }));
        assert!(err.is_connection_closed() && err.is_access_refused());
        assert_eq!(err.group(), Some(ErrorGroup::Connection));
        assert!(!err.is_transient());
        let forced = Error::ConnectionClosed(CloseReason::Server {
            code: Some(ErrorCode::ConnectionForced),
            reason: "shutdown".into(),
        });
        assert!(forced.is_transient());
        let at_capacity = Error::ConnectionClosed(CloseReason::Server {
            code: Some(ErrorCode::ConnectionLimit),
            reason: "at the connection limit".into(),
        });
        assert!(at_capacity.is_transient());
        assert!(!Error::ConnectionClosed(CloseReason::Normal).is_transient());
        assert!(Error::ConnectionClosed(CloseReason::HeartbeatTimeout).is_transient());
        assert_eq!(
            forced.to_string(),
            "connection closed: closed by the server with CONNECTION_FORCED (106): shutdown"
        );
    }

    /// Every code reaches the caller typed, whichever frame carries it: a `match` on
    /// `Error::PublishRejected { code: ErrorCode::NotFound, .. }` works like one on
    /// `Error::Server { code, .. }`.
    #[test]
    fn every_code_is_reachable_as_a_typed_error() {
        for &code in ErrorCode::ALL {
            let rejected = Error::from(Rejection {
                seq: PublishSeq(1),
                code,
                message: String::new(),
            });
            assert!(
                matches!(rejected, Error::PublishRejected { code: c, .. } if c == code),
                "{code}"
            );
            assert_eq!(rejected.code(), Some(code));
            let failed = Error::from(ErrorReply {
                code,
                message: String::new(),
            });
            assert!(matches!(failed, Error::Server { code: c, .. } if c == code));
            assert_eq!(failed.code(), Some(code));
        }
        let full = Error::from(Rejection {
            seq: PublishSeq(2),
            code: ErrorCode::QueueFull,
            message: "queue 'q' is full".into(),
        });
        assert!(full.is_queue_full() && full.is_publish_rejected() && !full.is_not_found());
        let too_large = Error::MessageTooLarge { size: 10, max: 5 };
        assert!(too_large.is_message_too_large());
    }

    #[test]
    fn consumer_cancellations_keep_their_code() {
        let err = Error::from(ConsumerCancelled {
            consumer_id: crate::wire::ConsumerId(1),
            code: ErrorCode::QueueDeleted,
            reason: "queue deleted".into(),
        });
        assert_eq!(err.code(), Some(ErrorCode::QueueDeleted));
        assert_eq!(err.group(), Some(ErrorGroup::Consumer));
    }

    #[test]
    fn unknown_codes_are_grouped_by_hundreds() {
        for (n, group) in [
            (150, ErrorGroup::Connection),
            (299, ErrorGroup::Request),
            (350, ErrorGroup::Publish),
            (499, ErrorGroup::Consumer),
            (599, ErrorGroup::Server),
            (600, ErrorGroup::Unknown),
            (7, ErrorGroup::Unknown),
        ] {
            assert_eq!(ErrorGroup::of(ErrorCode::from_u16(n)), group, "{n}");
        }
        let err = Error::from(ErrorReply {
            code: ErrorCode::from_u16(550),
            message: String::new(),
        });
        assert_eq!(err.group(), Some(ErrorGroup::Server));
    }

    #[test]
    fn errors_without_codes() {
        let io = Error::from(io::Error::from(io::ErrorKind::ConnectionRefused));
        assert_eq!(io.code(), None);
        assert!(io.is_transient());
        assert!(Error::from(UrlError::IncompleteClientCertificate)
            .to_string()
            .starts_with("invalid URL: cert_file and key_file"));
        let clone = io.clone();
        assert!(matches!(clone, Error::Io(_)));
    }
}
