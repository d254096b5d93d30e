//! `/api/users` (administrators only): list, show, create or change, delete users, and
//! `/api/whoami` (any API user): who the request authenticated as.
//!
//! A password sent here is hashed (argon2id) before anything is stored, and never logged or
//! echoed; `password_hash` takes an argon2id PHC string made elsewhere.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use sluice_client::wire::ErrorCode;

use super::auth::{Administrator, ApiUser};
use super::error::{ApiError, JsonBody};
use super::Api;
use crate::auth::{parse_tags, ChangeError, PasswordHash};
use crate::cli::users::UserJson;
use crate::error::RequestError;

/// `GET /api/users`: every user with its tags (never its hash).
pub async fn list(_: Administrator, State(api): State<Api>) -> Response {
    let access = api.broker.access.snapshot();
    let users: Vec<UserJson> = access.users().values().map(UserJson::new).collect();
    Json(users).into_response()
}

/// `GET /api/users/NAME`.
pub async fn show(
    _: Administrator,
    State(api): State<Api>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let access = api.broker.access.snapshot();
    let user = access.user(&name).ok_or_else(|| no_user(&name))?;
    Ok(Json(UserJson::new(user)).into_response())
}

/// The body of `PUT /api/users/NAME`: a new user needs `password` or `password_hash`; for
/// an existing one, what is left out stays as it was.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PutUser {
    password: Option<String>,
    password_hash: Option<String>,
    tags: Option<Vec<String>>,
}

/// `PUT /api/users/NAME`: creates the user (201) or changes its password and tags (204).
pub async fn put(
    Administrator(by): Administrator,
    State(api): State<Api>,
    Path(name): Path<String>,
    JsonBody(body): JsonBody<PutUser>,
) -> Result<Response, ApiError> {
    let tags = body
        .tags
        .map(|t| parse_tags(&name, &t))
        .transpose()
        .map_err(|e| RequestError::invalid(e.to_string()))?;
    let hash = match (body.password, body.password_hash) {
        (Some(_), Some(_)) => {
            return Err(RequestError::invalid("give password or password_hash, not both").into())
        }
        (Some(password), None) => {
            if password.is_empty() {
                return Err(RequestError::invalid("the password is empty").into());
            }
            // Hashing is slow by design: off the async threads.
            let hashed = tokio::task::spawn_blocking(move || PasswordHash::new(&password)).await;
            Some(hashed.map_err(|e| RequestError::internal(format!("hashing failed: {e}")))?)
        }
        (None, Some(phc)) => {
            Some(PasswordHash::parse(&phc).map_err(|e| RequestError::invalid(e.to_string()))?)
        }
        (None, None) => None,
    };
    let access = std::sync::Arc::clone(&api.broker.access);
    let user = name.clone();
    let created = blocking(move || access.change(|a| a.put_user(&user, hash, tags))).await?;
    tracing::info!(
        user = name,
        by = by.name,
        created,
        "user changed through the HTTP API"
    );
    Ok(if created {
        StatusCode::CREATED
    } else {
        StatusCode::NO_CONTENT
    }
    .into_response())
}

/// `DELETE /api/users/NAME`: deletes the user and closes its connections.
pub async fn delete(
    Administrator(by): Administrator,
    State(api): State<Api>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let access = std::sync::Arc::clone(&api.broker.access);
    let user = name.clone();
    blocking(move || access.change(|a| a.delete_user(&user))).await?;
    let reason = format!("user '{name}' was deleted");
    let closed = api.connections.close_user(&name, &reason).await;
    tracing::info!(
        user = name,
        by = by.name,
        connections_closed = closed,
        "user deleted through the HTTP API"
    );
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `GET /api/whoami`: the user the request authenticated as, its tags and permissions.
pub async fn whoami(ApiUser(user): ApiUser) -> Response {
    let permissions: Vec<serde_json::Value> = user
        .permissions
        .iter()
        .map(|(vhost, set)| {
            serde_json::json!({
                "vhost": vhost.as_str(),
                "configure": set.spec().configure,
                "write": set.spec().write,
                "read": set.spec().read,
            })
        })
        .collect();
    let tags: Vec<&str> = user.tags.iter().map(|t| t.as_str()).collect();
    Json(serde_json::json!({
        "name": user.name,
        "tags": tags,
        "permissions": permissions,
    }))
    .into_response()
}

fn no_user(name: &str) -> ApiError {
    RequestError::new(ErrorCode::NotFound, format!("no user '{name}'")).into()
}

/// Runs a change of the users file on a blocking thread (it writes and syncs a file) and
/// answers its failure in the API's shape.
pub(super) async fn blocking<T: Send + 'static>(
    change: impl FnOnce() -> Result<T, ChangeError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(change)
        .await
        .map_err(|e| RequestError::internal(format!("the change did not run: {e}")))?
        .map_err(change_error)
}

/// A refused or failed change as an API error.
pub(super) fn change_error(e: ChangeError) -> ApiError {
    let code = match &e {
        ChangeError::Invalid(invalid) if invalid.is_not_found() => ErrorCode::NotFound,
        ChangeError::Invalid(crate::auth::InvalidAccess::Exists { .. })
        | ChangeError::ChangedOnDisk(_) => ErrorCode::PreconditionFailed,
        ChangeError::Invalid(_) => ErrorCode::InvalidArgument,
        ChangeError::File(_) => ErrorCode::InternalError,
    };
    RequestError::new(code, e.to_string()).into()
}
