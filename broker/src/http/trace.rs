//! `GET /api/trace/{message_id}`: "why is this message stuck", as `sluice trace --json`
//! (docs/http-api.md): the history of the messages with that id in every queue of the vhost
//! the user may read.

use axum::extract::{Path, State};
use axum::Json;
use serde_json::{json, Value};

use super::access::Scope;
use super::error::ApiError;
use super::Api;
use crate::auth::{Permission, ResourceKind};
use crate::cli::trace::history_json;
use crate::message_trace;

/// `GET /api/trace/{message_id}?vhost=V`: `{"messages": [...], "truncated": bool}`, oldest
/// first; an empty list when no queue remembers the id.
pub async fn show(
    State(api): State<Api>,
    scope: Scope,
    Path(message_id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let queues = message_trace::readable_queues(&api.broker, Some(scope.namespace()), |name| {
        scope.allows(Permission::Read, ResourceKind::Queue, name)
    });
    let answer = message_trace::trace_message(queues, &message_id, u32::MAX).await;
    let messages: Vec<Value> = answer.messages.iter().map(history_json).collect();
    Ok(Json(
        json!({ "messages": messages, "truncated": answer.truncated }),
    ))
}
