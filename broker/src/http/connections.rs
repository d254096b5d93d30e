//! `/api/connections`: list client connections, close one, cancel one of its consumers.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use sluice_client::wire::{ErrorCode, ListConnections};

use super::auth::Administrator;
use super::error::{ApiError, JsonBody};
use super::Api;
use crate::admin;
use crate::cli::format::ConnectionJson;
use crate::error::RequestError;

/// `GET /api/connections`: every client connection past its handshake, by number, as
/// `sluice connections --json` prints them.
pub async fn list(State(api): State<Api>) -> Response {
    // In-process there is no frame to fit: one page holds everything.
    let all = admin::list_connections(&api.connections, &ListConnections::default(), u32::MAX);
    let json: Vec<ConnectionJson<'_>> = all.connections.iter().map(ConnectionJson::from).collect();
    Json(json).into_response()
}

/// The optional body of `DELETE /api/connections/ID`.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CloseBody {
    /// What the client is told (`Close` with `CONNECTION_FORCED`).
    #[serde(default)]
    reason: String,
}

/// `DELETE /api/connections/ID` (administrators only): closes the connection; its client gets `Close` with
/// `CONNECTION_FORCED` and the reason, its unsettled deliveries return to their queues.
pub async fn close(
    _: Administrator,
    State(api): State<Api>,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<CloseBody>,
) -> Result<Response, ApiError> {
    api.connections
        .close(connection_id(&id)?, &body.reason)
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `DELETE /api/connections/ID/consumers/TAG` (administrators only): cancels the consumer; its client gets
/// `ConsumerCancelled` with `CONSUMER_CANCELLED`, its unsettled deliveries return.
pub async fn cancel_consumer(
    _: Administrator,
    State(api): State<Api>,
    Path((id, tag)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    api.connections
        .cancel_consumer(connection_id(&id)?, &tag)
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// A connection id from a path; anything else names no connection.
fn connection_id(raw: &str) -> Result<u64, ApiError> {
    raw.parse().map_err(|_| {
        RequestError::new(ErrorCode::NotFound, format!("no connection '{raw}'")).into()
    })
}
