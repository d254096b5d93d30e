//! The one place where broker failures become wire error codes (protocol.md §11).

use sluice_client::wire::ErrorCode;

use crate::routing::RoutingError;
use crate::storage::StorageError;

/// A request that cannot be carried out: answered with an `Error` frame (or a rejection) and
/// the connection stays up.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct RequestError {
    /// The stable wire code.
    pub code: ErrorCode,
    /// Human-readable detail, e.g. "no queue 'tasks'".
    pub message: String,
}

impl RequestError {
    /// An error with `code` and `message`.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    /// `NOT_FOUND` for the queue `name`.
    pub fn no_queue(name: &str) -> Self {
        Self::new(ErrorCode::NotFound, format!("no queue '{name}'"))
    }

    /// `RESOURCE_LOCKED` for an exclusive queue of another connection.
    pub fn locked(name: &str) -> Self {
        Self::new(
            ErrorCode::ResourceLocked,
            format!("queue '{name}' is exclusive to another connection"),
        )
    }

    /// `PRECONDITION_FAILED` with `message`.
    pub fn precondition(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::PreconditionFailed, message)
    }

    /// `INVALID_ARGUMENT` with `message`.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidArgument, message)
    }

    /// `INTERNAL_ERROR` with `message`.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::InternalError, message)
    }
}

impl From<crate::auth::AccessRefused> for RequestError {
    fn from(e: crate::auth::AccessRefused) -> Self {
        Self::new(ErrorCode::AccessRefused, e.to_string())
    }
}

impl From<RoutingError> for RequestError {
    fn from(e: RoutingError) -> Self {
        let code = match &e {
            RoutingError::ExchangeNotFound(_) | RoutingError::QueueNotFound(_) => {
                ErrorCode::NotFound
            }
            RoutingError::ExchangeMismatch { .. } | RoutingError::ExchangeInUse(_) => {
                ErrorCode::PreconditionFailed
            }
            RoutingError::DefaultExchangeAccess | RoutingError::ReservedExchange(_) => {
                ErrorCode::NotAllowed
            }
            RoutingError::InvalidKind(_)
            | RoutingError::InvalidExchange { .. }
            | RoutingError::InvalidBinding { .. }
            | RoutingError::InvalidName(_) => ErrorCode::InvalidArgument,
        };
        Self::new(code, e.to_string())
    }
}

impl From<StorageError> for RequestError {
    fn from(e: StorageError) -> Self {
        let code = match &e {
            StorageError::StorageFull { .. } => ErrorCode::StorageFull,
            StorageError::RecordTooLarge { .. } => ErrorCode::MessageTooLarge,
            StorageError::ResourceExhausted { .. } => ErrorCode::ResourceExhausted,
            _ => ErrorCode::InternalError,
        };
        Self::new(code, e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os_error(errno: rustix::io::Errno) -> std::io::Error {
        std::io::Error::from_raw_os_error(errno.raw_os_error())
    }

    #[test]
    fn running_out_of_descriptors_is_resource_exhausted_on_the_wire() {
        use rustix::io::Errno;
        for errno in [Errno::MFILE, Errno::NFILE, Errno::NOMEM] {
            let storage = StorageError::io("/data/queues/1", os_error(errno));
            let request = RequestError::from(storage);
            assert_eq!(request.code, ErrorCode::ResourceExhausted, "{errno:?}");
        }
        let other = StorageError::io("/data/queues/1", os_error(Errno::IO));
        assert_eq!(RequestError::from(other).code, ErrorCode::InternalError);
    }
}
