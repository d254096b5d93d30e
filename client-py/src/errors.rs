//! The one place where the Rust client's errors become Python exceptions.
//!
//! The classes live in Python (`sluice/exceptions.py`, so that they can mix in `ValueError`
//! and carry a `code` attribute); each is imported lazily the first time it is raised. A
//! protocol error code picks the class; errors without one map by kind.

use pyo3::import_exception;
use pyo3::prelude::*;
use sluice_client::{CloseReason, Error, ErrorCode};

import_exception!(sluice.exceptions, SluiceError);
import_exception!(sluice.exceptions, InvalidUrl);
import_exception!(sluice.exceptions, ConnectionError);
import_exception!(sluice.exceptions, ConnectionClosed);
import_exception!(sluice.exceptions, AccessRefused);
import_exception!(sluice.exceptions, TlsError);
import_exception!(sluice.exceptions, TimeoutError);
import_exception!(sluice.exceptions, ProtocolError);
import_exception!(sluice.exceptions, ChannelError);
import_exception!(sluice.exceptions, NotFound);
import_exception!(sluice.exceptions, PreconditionFailed);
import_exception!(sluice.exceptions, ResourceLocked);
import_exception!(sluice.exceptions, NotAllowed);
import_exception!(sluice.exceptions, UnknownDeliveryTag);
import_exception!(sluice.exceptions, InvalidArgument);
import_exception!(sluice.exceptions, LimitExceeded);
import_exception!(sluice.exceptions, PermissionDenied);
import_exception!(sluice.exceptions, PublishRejected);
import_exception!(sluice.exceptions, Unroutable);
import_exception!(sluice.exceptions, ResourceLimit);
import_exception!(sluice.exceptions, MessageTooLarge);
import_exception!(sluice.exceptions, StorageFull);
import_exception!(sluice.exceptions, QueueFull);
import_exception!(sluice.exceptions, ConsumerCancelled);
import_exception!(sluice.exceptions, ServerError);
import_exception!(sluice.exceptions, AlreadySettled);

/// Converts a client error into the matching `sluice.exceptions` class. The exception is
/// built lazily: this needs no GIL, so futures on the runtime can call it.
pub(crate) fn to_py(error: Error) -> PyErr {
    let code = error.code();
    let args = (error.to_string(), code.map(ErrorCode::as_u16));
    match &error {
        Error::InvalidUrl(_) => InvalidUrl::new_err(args),
        Error::Io(_) => ConnectionError::new_err(args),
        Error::Tls(_) => TlsError::new_err(args),
        Error::ConnectionClosed(_) => match code {
            Some(ErrorCode::AccessRefused) => AccessRefused::new_err(args),
            _ => ConnectionClosed::new_err(args),
        },
        Error::Server { code, .. } => match code {
            ErrorCode::NotFound => NotFound::new_err(args),
            ErrorCode::PreconditionFailed => PreconditionFailed::new_err(args),
            ErrorCode::ResourceLocked => ResourceLocked::new_err(args),
            ErrorCode::NotAllowed => NotAllowed::new_err(args),
            ErrorCode::UnknownDeliveryTag => UnknownDeliveryTag::new_err(args),
            ErrorCode::InvalidArgument => InvalidArgument::new_err(args),
            ErrorCode::LimitExceeded => LimitExceeded::new_err(args),
            // A missing permission: the request failed, the connection stays up.
            ErrorCode::AccessRefused => PermissionDenied::new_err(args),
            code if code.as_u16() / 100 == 5 => ServerError::new_err(args),
            _ => ChannelError::new_err(args),
        },
        Error::PublishRejected { code, .. } => match code {
            ErrorCode::Unroutable => Unroutable::new_err(args),
            ErrorCode::MessageTooLarge => MessageTooLarge::new_err(args),
            ErrorCode::StorageFull => StorageFull::new_err(args),
            ErrorCode::QueueFull => QueueFull::new_err(args),
            ErrorCode::MemoryLimit => ResourceLimit::new_err(args),
            _ => PublishRejected::new_err(args),
        },
        Error::ConsumerCancelled { .. } => ConsumerCancelled::new_err(args),
        Error::Timeout { .. } => TimeoutError::new_err(args),
        Error::MessageTooLarge { .. } => MessageTooLarge::new_err(args),
        Error::InvalidArgument(_) => InvalidArgument::new_err(args),
        Error::Protocol(_) => ProtocolError::new_err(args),
        Error::AlreadySettled => AlreadySettled::new_err(args),
        _ => SluiceError::new_err(args),
    }
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
