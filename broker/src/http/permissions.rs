//! `/api/permissions` (administrators only): every user's permissions per vhost, and one
//! user's in one vhost shown, set or cleared (`/api/permissions/VHOST/USER`, the vhost
//! percent-encoded: `%2F` for `/`).

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use sluice_client::wire::ErrorCode;

use super::auth::Administrator;
use super::error::{ApiError, JsonBody};
use super::users::blocking;
use super::vhosts::vhost_name;
use super::Api;
use crate::auth::PermissionSpec;
use crate::cli::users::permissions_json;
use crate::error::RequestError;

/// `GET /api/permissions`.
pub async fn list(_: Administrator, State(api): State<Api>) -> Response {
    Json(permissions_json(&api.broker.access.snapshot())).into_response()
}

/// `GET /api/permissions/VHOST/USER`.
pub async fn show(
    _: Administrator,
    State(api): State<Api>,
    Path((vhost, user)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    permissions_json(&api.broker.access.snapshot())
        .into_iter()
        .find(|p| p.vhost == vhost && p.user == user)
        .map(|p| Json(p).into_response())
        .ok_or_else(|| {
            RequestError::new(
                ErrorCode::NotFound,
                format!("user '{user}' has no permissions in vhost '{vhost}'"),
            )
            .into()
        })
}

/// `PUT /api/permissions/VHOST/USER` with `{"configure": RE, "write": RE, "read": RE}`.
pub async fn put(
    Administrator(by): Administrator,
    State(api): State<Api>,
    Path((vhost, user)): Path<(String, String)>,
    JsonBody(spec): JsonBody<PermissionSpec>,
) -> Result<Response, ApiError> {
    let vhost = vhost_name(&vhost)?;
    let access = std::sync::Arc::clone(&api.broker.access);
    let (who, name) = (user.clone(), vhost.to_string());
    blocking(move || access.change(|a| a.set_permissions(&user, &vhost, spec))).await?;
    tracing::info!(
        user = who,
        vhost = name,
        by = by.name,
        "permissions set through the HTTP API"
    );
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `DELETE /api/permissions/VHOST/USER`.
pub async fn delete(
    Administrator(by): Administrator,
    State(api): State<Api>,
    Path((vhost, user)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let vhost = vhost_name(&vhost)?;
    let access = std::sync::Arc::clone(&api.broker.access);
    let (who, name) = (user.clone(), vhost.to_string());
    blocking(move || access.change(|a| a.clear_permissions(&user, &vhost))).await?;
    tracing::info!(
        user = who,
        vhost = name,
        by = by.name,
        "permissions cleared through the HTTP API"
    );
    Ok(StatusCode::NO_CONTENT.into_response())
}
