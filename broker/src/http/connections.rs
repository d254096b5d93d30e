//! `/api/connections`: list client connections, close one, cancel one of its consumers.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use sluice_client::wire::{ErrorCode, ListConnections};

use super::access::Visible;
use super::error::{ApiError, JsonBody};
use super::Api;
use crate::admin;
use crate::auth::Tag;
use crate::cli::format::ConnectionJson;
use crate::error::RequestError;

/// `GET /api/connections`: every client connection past its handshake, by number, as
/// `sluice connections --json` prints them.
pub async fn list(State(api): State<Api>, visible: Visible) -> Response {
    // Administrators and monitors see every connection, others their own user's.
    let user = visible.user();
    let only_user = (!user.has_tag(Tag::Monitoring)).then_some(user.name.as_str());
    // In-process there is no frame to fit: one page holds everything.
    let all = admin::list_connections(
        &api.connections,
        only_user,
        &ListConnections::default(),
        u32::MAX,
    );
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

/// `DELETE /api/connections/ID` (one of the user's own, or any for administrators): closes
/// the connection; its client gets `Close` with `CONNECTION_FORCED` and the reason, its
/// unsettled deliveries return to their queues.
pub async fn close(
    State(api): State<Api>,
    visible: Visible,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<CloseBody>,
) -> Result<Response, ApiError> {
    let id = connection_id(&id)?;
    check_operator(&api, &visible, id, "close another user's connection")?;
    api.connections.close(id, &body.reason).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `DELETE /api/connections/ID/consumers/TAG` (one of the user's own connections, or any for
/// administrators): cancels the consumer; its client gets `ConsumerCancelled` with
/// `CONSUMER_CANCELLED`, its unsettled deliveries return.
pub async fn cancel_consumer(
    State(api): State<Api>,
    visible: Visible,
    Path((id, tag)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let id = connection_id(&id)?;
    check_operator(&api, &visible, id, "cancel another user's consumer")?;
    api.connections.cancel_consumer(id, &tag).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `Ok` when the user may act on connection `id`: one of its own, or any for an
/// administrator.
fn check_operator(api: &Api, visible: &Visible, id: u64, what: &str) -> Result<(), ApiError> {
    let user = visible.user();
    let own = api.connections.user_of(id).is_ok_and(|u| u == user.name);
    if own || user.has_tag(Tag::Administrator) {
        return Ok(());
    }
    let message = format!(
        "user '{}' lacks the tag administrator needed to {what}",
        user.name
    );
    tracing::warn!(user = user.name, "HTTP access refused: {message}");
    // A missing tag is NOT_ALLOWED, as everywhere on the API (`auth.rs`).
    Err(RequestError::new(ErrorCode::NotAllowed, message).into())
}

/// A connection id from a path; anything else names no connection.
fn connection_id(raw: &str) -> Result<u64, ApiError> {
    raw.parse().map_err(|_| {
        RequestError::new(ErrorCode::NotFound, format!("no connection '{raw}'")).into()
    })
}
