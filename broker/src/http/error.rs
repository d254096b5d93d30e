//! Errors as HTTP answers: the wire error code picks the status, and the body is always
//! `{"error": "CODE_NAME", "message": "..."}`, so scripts handle one shape.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::de::DeserializeOwned;
use sluice_client::wire::ErrorCode;

use crate::error::RequestError;

/// A failed API request.
#[derive(Debug)]
pub struct ApiError(pub RequestError);

impl From<RequestError> for ApiError {
    fn from(e: RequestError) -> Self {
        ApiError(e)
    }
}

/// The HTTP status for a wire error code.
pub fn status_of(code: ErrorCode) -> StatusCode {
    match code {
        ErrorCode::NotFound => StatusCode::NOT_FOUND,
        ErrorCode::PreconditionFailed => StatusCode::CONFLICT,
        ErrorCode::ResourceLocked => StatusCode::LOCKED,
        ErrorCode::InvalidArgument | ErrorCode::MalformedRequest => StatusCode::BAD_REQUEST,
        // A logged-in user without the permission; a failed login is 401 (`auth.rs`).
        ErrorCode::AccessRefused | ErrorCode::NotAllowed => StatusCode::FORBIDDEN,
        ErrorCode::StorageFull => StatusCode::INSUFFICIENT_STORAGE,
        ErrorCode::ResourceExhausted | ErrorCode::MemoryLimit => StatusCode::SERVICE_UNAVAILABLE,
        // Refusals of a debugging publish (`POST /api/exchanges/NAME/publish`).
        ErrorCode::MessageTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        ErrorCode::Unroutable => StatusCode::UNPROCESSABLE_ENTITY,
        ErrorCode::QueueFull | ErrorCode::LimitExceeded => StatusCode::TOO_MANY_REQUESTS,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// The JSON error body.
#[derive(serde::Serialize)]
struct ErrorBody<'a> {
    error: &'static str,
    message: &'a str,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: self.0.code.name(),
            message: &self.0.message,
        };
        (status_of(self.0.code), Json(body)).into_response()
    }
}

/// Answers paths the API does not have.
pub async fn no_route() -> ApiError {
    ApiError(RequestError::new(ErrorCode::NotFound, "no such endpoint"))
}

/// A JSON request body. Unlike `axum::Json` it ignores the `Content-Type` (so `curl -d` works)
/// and answers a body that does not parse with the API's own error shape; an empty body reads
/// as `{}`, so a declare with every default needs none.
#[derive(Debug)]
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(|e| ApiError(RequestError::invalid(e.body_text())))?;
        let text: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) {
            b"{}"
        } else {
            &bytes
        };
        serde_json::from_slice(text)
            .map(JsonBody)
            .map_err(|e| ApiError(RequestError::invalid(format!("bad JSON body: {e}"))))
    }
}

/// Query parameters, whose failures are answered in the API's error shape.
#[derive(Debug)]
pub struct QueryParams<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> axum::extract::FromRequestParts<S> for QueryParams<T> {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| QueryParams(q.0))
            .map_err(|e| ApiError(RequestError::invalid(e.body_text())))
    }
}

/// A query flag: present bare or as `true`/`1` is true, `false`/`0` or absent is false.
pub fn flag(name: &str, value: Option<&str>) -> Result<bool, ApiError> {
    match value {
        None | Some("false" | "0") => Ok(false),
        Some("" | "true" | "1") => Ok(true),
        Some(other) => Err(RequestError::invalid(format!(
            "query parameter {name}: expected true or false, got '{other}'"
        ))
        .into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_codes_map_to_the_statuses_clients_expect() {
        let cases = [
            (ErrorCode::NotFound, 404),
            (ErrorCode::PreconditionFailed, 409),
            (ErrorCode::ResourceLocked, 423),
            (ErrorCode::InvalidArgument, 400),
            (ErrorCode::AccessRefused, 403),
            (ErrorCode::NotAllowed, 403),
            (ErrorCode::StorageFull, 507),
            (ErrorCode::ResourceExhausted, 503),
            (ErrorCode::MemoryLimit, 503),
            (ErrorCode::MessageTooLarge, 413),
            (ErrorCode::Unroutable, 422),
            (ErrorCode::QueueFull, 429),
            (ErrorCode::InternalError, 500),
            (ErrorCode::Unknown(999), 500),
        ];
        for (code, status) in cases {
            assert_eq!(status_of(code).as_u16(), status, "{code:?}");
        }
    }

    #[test]
    fn query_flags_are_bare_or_boolean() {
        assert!(!flag("f", None).unwrap());
        assert!(flag("f", Some("")).unwrap());
        assert!(flag("f", Some("true")).unwrap());
        assert!(!flag("f", Some("false")).unwrap());
        assert!(flag("f", Some("yes")).is_err());
    }
}
