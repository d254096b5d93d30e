//! `/api/vhosts`: list and show vhosts with their limits (administrators and monitoring users
//! see every vhost, others those they have permissions in); create, change and delete them
//! (administrators only). Names in paths are percent-encoded: `/api/vhosts/%2F` is `/`.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use sluice_client::wire::ErrorCode;

use super::auth::{Administrator, ApiUser};
use super::error::{ApiError, JsonBody};
use super::users::blocking;
use super::Api;
use crate::auth::{AuthenticatedUser, Tag, VhostLimits, VhostName};
use crate::cli::users::{vhosts_json, VhostJson};
use crate::error::RequestError;
use crate::queue::QueueCmd;
use crate::routing::namespace::{self, Namespace};

/// Whether `user` may see `vhost` in listings.
fn visible(user: &AuthenticatedUser, vhost: &str) -> bool {
    user.has_tag(Tag::Monitoring)
        || VhostName::new(vhost).is_ok_and(|v| user.permissions_in(&v).is_some())
}

/// `GET /api/vhosts`.
pub async fn list(ApiUser(user): ApiUser, State(api): State<Api>) -> Response {
    let all = vhosts_json(&api.broker.access.snapshot());
    let shown: Vec<VhostJson> = all
        .into_iter()
        .filter(|v| visible(&user, &v.name))
        .collect();
    Json(shown).into_response()
}

/// `GET /api/vhosts/NAME`.
pub async fn show(
    ApiUser(user): ApiUser,
    State(api): State<Api>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let found = vhosts_json(&api.broker.access.snapshot())
        .into_iter()
        .find(|v| v.name == name && visible(&user, &v.name));
    found
        .map(|v| Json(v).into_response())
        .ok_or_else(|| RequestError::new(ErrorCode::NotFound, format!("no vhost '{name}'")).into())
}

/// The body of `PUT /api/vhosts/NAME`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PutVhost {
    #[serde(default)]
    limits: VhostLimits,
}

/// `PUT /api/vhosts/NAME`: creates the vhost (201) or replaces its limits (204).
pub async fn put(
    Administrator(by): Administrator,
    State(api): State<Api>,
    Path(name): Path<String>,
    JsonBody(body): JsonBody<PutVhost>,
) -> Result<Response, ApiError> {
    let vhost = vhost_name(&name)?;
    let access = std::sync::Arc::clone(&api.broker.access);
    let created = blocking(move || access.change(|a| Ok(a.put_vhost(&vhost, body.limits)))).await?;
    tracing::info!(
        vhost = name,
        by = by.name,
        created,
        "vhost changed through the HTTP API"
    );
    Ok(if created {
        StatusCode::CREATED
    } else {
        StatusCode::NO_CONTENT
    }
    .into_response())
}

/// `DELETE /api/vhosts/NAME`: deletes the vhost and every permission on it, then, as
/// RabbitMQ does, closes the connections working in it and deletes its queues (with their
/// messages) and exchanges, so nothing of it is left behind in the data directory.
pub async fn delete(
    Administrator(by): Administrator,
    State(api): State<Api>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let vhost = vhost_name(&name)?;
    let access = std::sync::Arc::clone(&api.broker.access);
    let deleted = vhost.clone();
    blocking(move || access.change(|a| a.delete_vhost(&deleted))).await?;
    let reason = format!("vhost '{name}' was deleted");
    let connections = api.connections.close_vhost(vhost.as_str(), &reason).await;
    let removed = delete_contents(&api, &Namespace::of_vhost(vhost.as_str())).await;
    tracing::info!(
        vhost = name,
        by = by.name,
        connections_closed = connections,
        queues_deleted = removed.queues,
        exchanges_deleted = removed.exchanges,
        "vhost deleted through the HTTP API"
    );
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// What deleting a vhost's contents removed.
#[derive(Debug, Default)]
struct Removed {
    queues: usize,
    exchanges: usize,
}

/// How long one queue of a deleted vhost may take to delete itself.
const QUEUE_DELETE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Deletes every queue and declared exchange of `namespace` (not the default and `amq.*`
/// exchanges every vhost has). A queue that does not answer is logged and left.
async fn delete_contents(api: &Api, namespace: &Namespace) -> Removed {
    let registry = api.broker.read();
    let queues: Vec<_> = registry
        .queues
        .iter()
        .filter(|(name, _)| namespace.contains(name))
        .map(|(_, handle)| handle.clone())
        .collect();
    let exchanges: Vec<String> = registry
        .routing
        .exchanges()
        .iter()
        .filter(|x| {
            namespace
                .local(&x.name)
                .is_some_and(|local| !local.is_empty() && !local.starts_with("amq."))
        })
        .map(|x| x.name.clone())
        .collect();
    drop(registry);
    let mut removed = Removed::default();
    for queue in queues {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let sent = queue.send(QueueCmd::Delete {
            if_unused: false,
            if_empty: false,
            reply,
        });
        match tokio::time::timeout(QUEUE_DELETE_TIMEOUT, answer).await {
            Ok(Ok(Ok(_))) if sent => removed.queues += 1,
            // Deleted by someone else meanwhile.
            Ok(Err(_)) => {}
            _ => tracing::warn!(queue = %namespace::split(&queue.meta.name),
                "could not delete a queue of a deleted vhost"),
        }
    }
    for exchange in exchanges {
        // In a cluster the deletion waits for the metadata group.
        match tokio::task::block_in_place(|| api.broker.delete_exchange(&exchange, false)) {
            Ok(()) => removed.exchanges += 1,
            Err(e) if e.code == ErrorCode::NotFound => {}
            Err(e) => tracing::warn!(exchange = %namespace::split(&exchange), error = %e,
                "could not delete an exchange of a deleted vhost"),
        }
    }
    removed
}

/// A vhost name from a path; an invalid one is a bad request.
pub(super) fn vhost_name(raw: &str) -> Result<VhostName, ApiError> {
    VhostName::new(raw).map_err(|e| RequestError::invalid(e.to_string()).into())
}
