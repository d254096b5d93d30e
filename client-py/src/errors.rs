//! The one place where the Rust client's errors become Python exceptions.
//!
//! The classes live in Python (`sluice/exceptions.py`, so that they can mix in `ValueError`
//! and carry a `code` attribute); each is imported lazily the first time it is raised. A
//! protocol error code picks the class; errors without one map by kind.

use pyo3::exceptions::PyBaseException;
use pyo3::import_exception;
use pyo3::prelude::*;
use sluice_client::{CloseReason, Error, ErrorCode, PublishSeq};

import_exception!(sluice.exceptions, SluiceError);
import_exception!(sluice.exceptions, InvalidUrl);
import_exception!(sluice.exceptions, ConnectionError);
import_exception!(sluice.exceptions, ConnectionClosed);
import_exception!(sluice.exceptions, MalformedFrame);
import_exception!(sluice.exceptions, FrameTooLarge);
import_exception!(sluice.exceptions, UnsupportedVersion);
import_exception!(sluice.exceptions, HeartbeatTimeout);
import_exception!(sluice.exceptions, UnexpectedFrame);
import_exception!(sluice.exceptions, ConnectionForced);
import_exception!(sluice.exceptions, SlowConsumer);
import_exception!(sluice.exceptions, ConnectionLimit);
import_exception!(sluice.exceptions, AccessRefused);
import_exception!(sluice.exceptions, TlsError);
import_exception!(sluice.exceptions, TimeoutError);
import_exception!(sluice.exceptions, ProtocolError);
import_exception!(sluice.exceptions, ChannelError);
import_exception!(sluice.exceptions, MalformedRequest);
import_exception!(sluice.exceptions, UnknownOpcode);
import_exception!(sluice.exceptions, NotFound);
import_exception!(sluice.exceptions, PreconditionFailed);
import_exception!(sluice.exceptions, ResourceLocked);
import_exception!(sluice.exceptions, NotAllowed);
import_exception!(sluice.exceptions, UnknownDeliveryTag);
import_exception!(sluice.exceptions, InvalidArgument);
import_exception!(sluice.exceptions, LimitExceeded);
import_exception!(sluice.exceptions, NotLeader);
import_exception!(sluice.exceptions, LeaderMoved);
import_exception!(sluice.exceptions, DeliveryLostError);
import_exception!(sluice.exceptions, PermissionDenied);
import_exception!(sluice.exceptions, PublishRejected);
import_exception!(sluice.exceptions, MessageTooLarge);
import_exception!(sluice.exceptions, ConsumerCancelled);
import_exception!(sluice.exceptions, QueueDeleted);
import_exception!(sluice.exceptions, CancelledByOperator);
import_exception!(sluice.exceptions, ServerError);
import_exception!(sluice.exceptions, InternalError);
import_exception!(sluice.exceptions, ResourceExhausted);
import_exception!(sluice.exceptions, AlreadySettled);
// A refused publish is both a `PublishRejected` and its code's class (exceptions.py makes
// these classes once, at import).
import_exception!(sluice.exceptions, PublishRejectedMalformedRequest);
import_exception!(sluice.exceptions, PublishRejectedUnknownOpcode);
import_exception!(sluice.exceptions, PublishRejectedNotFound);
import_exception!(sluice.exceptions, PublishRejectedPreconditionFailed);
import_exception!(sluice.exceptions, PublishRejectedResourceLocked);
import_exception!(sluice.exceptions, PublishRejectedNotAllowed);
import_exception!(sluice.exceptions, PublishRejectedUnknownDeliveryTag);
import_exception!(sluice.exceptions, PublishRejectedInvalidArgument);
import_exception!(sluice.exceptions, PublishRejectedLimitExceeded);
import_exception!(sluice.exceptions, PublishRejectedNotLeader);
import_exception!(sluice.exceptions, PublishRejectedPermissionDenied);
import_exception!(sluice.exceptions, PublishRejectedInternalError);
import_exception!(sluice.exceptions, PublishRejectedResourceExhausted);
import_exception!(sluice.exceptions, Unroutable);
import_exception!(sluice.exceptions, StorageFull);
import_exception!(sluice.exceptions, QueueFull);
import_exception!(sluice.exceptions, MemoryLimit);

/// The arguments of every exception: its message and its code.
type Args = (String, Option<u16>);

/// Converts a client error into the matching `sluice.exceptions` class. The exception is
/// built lazily: this needs no GIL, so futures on the runtime can call it.
pub(crate) fn to_py(error: Error) -> PyErr {
    let code = error.code();
    let args = (error.to_string(), code.map(ErrorCode::as_u16));
    match &error {
        Error::InvalidUrl(_) => InvalidUrl::new_err(args),
        Error::Io(_) => ConnectionError::new_err(args),
        Error::Tls(_) => TlsError::new_err(args),
        Error::ConnectionClosed(_) => closed_with(code, args),
        Error::Server { code, .. } => request_failed(*code, args),
        Error::PublishRejected { code, .. } => publish_rejected(*code, args),
        Error::ConsumerCancelled { code, .. } => match code {
            ErrorCode::QueueDeleted => QueueDeleted::new_err(args),
            ErrorCode::ConsumerCancelled => CancelledByOperator::new_err(args),
            ErrorCode::LeaderMoved => LeaderMoved::new_err(args),
            _ => ConsumerCancelled::new_err(args),
        },
        Error::Timeout { .. } => TimeoutError::new_err(args),
        Error::MessageTooLarge { .. } => MessageTooLarge::new_err(args),
        Error::InvalidArgument(_) => InvalidArgument::new_err(args),
        Error::Protocol(_) => ProtocolError::new_err(args),
        Error::AlreadySettled => AlreadySettled::new_err(args),
        Error::DeliveryLost => DeliveryLostError::new_err(args),
        _ => SluiceError::new_err(args),
    }
}

/// The connection ended: the class of the `Close` code, if the server sent one.
fn closed_with(code: Option<ErrorCode>, args: Args) -> PyErr {
    match code {
        Some(ErrorCode::MalformedFrame) => MalformedFrame::new_err(args),
        Some(ErrorCode::FrameTooLarge) => FrameTooLarge::new_err(args),
        Some(ErrorCode::UnsupportedVersion) => UnsupportedVersion::new_err(args),
        Some(ErrorCode::AccessRefused) => AccessRefused::new_err(args),
        Some(ErrorCode::HeartbeatTimeout) => HeartbeatTimeout::new_err(args),
        Some(ErrorCode::UnexpectedFrame) => UnexpectedFrame::new_err(args),
        Some(ErrorCode::ConnectionForced) => ConnectionForced::new_err(args),
        Some(ErrorCode::SlowConsumer) => SlowConsumer::new_err(args),
        Some(ErrorCode::ConnectionLimit) => ConnectionLimit::new_err(args),
        _ => ConnectionClosed::new_err(args),
    }
}

/// An `Error` reply: the request failed, the connection stays up.
fn request_failed(code: ErrorCode, args: Args) -> PyErr {
    match code {
        ErrorCode::MalformedRequest => MalformedRequest::new_err(args),
        ErrorCode::UnknownOpcode => UnknownOpcode::new_err(args),
        ErrorCode::NotFound => NotFound::new_err(args),
        ErrorCode::PreconditionFailed => PreconditionFailed::new_err(args),
        ErrorCode::ResourceLocked => ResourceLocked::new_err(args),
        ErrorCode::NotAllowed => NotAllowed::new_err(args),
        ErrorCode::UnknownDeliveryTag => UnknownDeliveryTag::new_err(args),
        ErrorCode::InvalidArgument => InvalidArgument::new_err(args),
        ErrorCode::LimitExceeded => LimitExceeded::new_err(args),
        ErrorCode::NotLeader => NotLeader::new_err(args),
        // A missing permission: the request failed, the connection stays up.
        ErrorCode::AccessRefused => PermissionDenied::new_err(args),
        ErrorCode::InternalError => InternalError::new_err(args),
        ErrorCode::ResourceExhausted => ResourceExhausted::new_err(args),
        code if code.as_u16() / 100 == 5 => ServerError::new_err(args),
        _ => ChannelError::new_err(args),
    }
}

/// A refused publish: `PublishRejected` and the class of its code at once.
fn publish_rejected(code: ErrorCode, args: Args) -> PyErr {
    match code {
        ErrorCode::MalformedRequest => PublishRejectedMalformedRequest::new_err(args),
        ErrorCode::UnknownOpcode => PublishRejectedUnknownOpcode::new_err(args),
        ErrorCode::NotFound => PublishRejectedNotFound::new_err(args),
        ErrorCode::PreconditionFailed => PublishRejectedPreconditionFailed::new_err(args),
        ErrorCode::ResourceLocked => PublishRejectedResourceLocked::new_err(args),
        ErrorCode::NotAllowed => PublishRejectedNotAllowed::new_err(args),
        ErrorCode::UnknownDeliveryTag => PublishRejectedUnknownDeliveryTag::new_err(args),
        ErrorCode::InvalidArgument => PublishRejectedInvalidArgument::new_err(args),
        ErrorCode::LimitExceeded => PublishRejectedLimitExceeded::new_err(args),
        ErrorCode::NotLeader => PublishRejectedNotLeader::new_err(args),
        ErrorCode::AccessRefused => PublishRejectedPermissionDenied::new_err(args),
        ErrorCode::MessageTooLarge => MessageTooLarge::new_err(args),
        ErrorCode::StorageFull => StorageFull::new_err(args),
        ErrorCode::Unroutable => Unroutable::new_err(args),
        ErrorCode::QueueFull => QueueFull::new_err(args),
        ErrorCode::MemoryLimit => MemoryLimit::new_err(args),
        ErrorCode::InternalError => PublishRejectedInternalError::new_err(args),
        ErrorCode::ResourceExhausted => PublishRejectedResourceExhausted::new_err(args),
        _ => PublishRejected::new_err(args),
    }
}

/// Every protocol error code the Rust client knows, as `(number, name)`: exported as
/// `sluice._sluice.ERROR_CODES` so a test can check `sluice.exceptions` against it.
pub(crate) fn error_codes() -> Vec<(u16, &'static str)> {
    ErrorCode::ALL
        .iter()
        .map(|code| (code.as_u16(), code.name()))
        .collect()
}

/// The exception this module raises for `code` arriving as `kind` (`"close"`, `"error"`,
/// `"rejected"` or `"cancelled"`): lets a test check the mapping above for every code.
#[pyfunction]
pub(crate) fn _exception_for(
    py: Python<'_>,
    kind: &str,
    code: u16,
    message: String,
) -> PyResult<Py<PyBaseException>> {
    let code = ErrorCode::from_u16(code);
    let error = match kind {
        "close" => Error::ConnectionClosed(CloseReason::Server {
            code: Some(code),
            reason: message,
        }),
        "error" => Error::Server { code, message },
        "rejected" => Error::PublishRejected {
            seq: PublishSeq(1),
            code,
            message,
        },
        "cancelled" => Error::ConsumerCancelled {
            code,
            reason: message,
        },
        other => {
            return Err(pyo3::exceptions::PyValueError::new_err(format!(
                "unknown kind {other:?}"
            )))
        }
    };
    Ok(to_py(error).into_value(py))
}

/// The error for using a connection this process closed.
pub(crate) fn closed() -> PyErr {
    to_py(Error::ConnectionClosed(CloseReason::Normal))
}

/// Adds `.map_err(to_py)` as a method.
pub(crate) trait IntoPyResult<T> {
    /// Converts the error into its Python exception.
    fn py(self) -> PyResult<T>;
}

impl<T> IntoPyResult<T> for Result<T, Error> {
    fn py(self) -> PyResult<T> {
        self.map_err(to_py)
    }
}
