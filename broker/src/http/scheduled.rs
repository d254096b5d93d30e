//! `/api/queues/NAME/scheduled`: a queue's scheduled messages (delayed, or requeued with a
//! delay), soonest first, as `sluice scheduled list --json`; and the cancel of one.

use axum::extract::{Path, State};
use axum::http::HeaderValue;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;
use sluice_client::wire::{Reply, MAX_SCHEDULED_LIMIT};

use super::access::Scope;
use super::error::{ApiError, QueryParams};
use super::messages::{page_limit, MORE_HEADER};
use super::queues::{ask_queue, unexpected};
use super::Api;
use crate::auth::{Permission, ResourceKind};
use crate::cli::messages::HTTP_PAYLOAD_LIMIT;
use crate::cli::scheduled::scheduled_json;
use crate::queue::{QueueCmd, ScheduledPage};

/// Messages shown when the request names no `limit`.
/// Bytes of payloads (each counted up to [`HTTP_PAYLOAD_LIMIT`]) and meta blocks one answer
/// holds at most.
const MAX_ANSWER_BYTES: usize = 4 << 20;

/// The query of `GET /api/queues/NAME/scheduled`: `?limit=N&after_due_ms=T&after_seq=S`.
#[derive(Debug, serde::Deserialize)]
pub struct ScheduledQuery {
    limit: Option<u32>,
    after_due_ms: Option<u64>,
    after_seq: Option<u64>,
}

/// `GET /api/queues/NAME/scheduled`: up to `limit` (default 100, at most 1000) scheduled
/// messages after the cursor (`after_due_ms`, `after_seq`: the last one shown), soonest first.
/// The `x-sluice-more` header says whether more follow.
pub async fn list(
    State(api): State<Api>,
    scope: Scope,
    Path(name): Path<String>,
    QueryParams(query): QueryParams<ScheduledQuery>,
) -> Result<Response, ApiError> {
    let limit = page_limit(query.limit, MAX_SCHEDULED_LIMIT)?;
    let after = match (query.after_due_ms, query.after_seq) {
        (None, None) => None,
        (due, seq) => Some((due.unwrap_or(0), seq.unwrap_or(0))),
    };
    let page = ScheduledPage {
        limit: limit as usize,
        after,
        max_bytes: MAX_ANSWER_BYTES,
        body_budget: HTTP_PAYLOAD_LIMIT,
    };
    let name = scope.grant(Permission::Read, ResourceKind::Queue, &name)?;
    let reply = ask_queue(&api, &name, |conn, request_id| QueueCmd::ListScheduled {
        conn,
        request_id,
        page,
    })
    .await
    .map_err(|e| scope.localize(e))?;
    let Reply::ListScheduledOk(ok) = reply else {
        return Err(unexpected(&reply));
    };
    let now = crate::queue::unix_now_ms();
    let json: Vec<serde_json::Value> = ok
        .messages
        .iter()
        .map(|m| scheduled_json(m, now, HTTP_PAYLOAD_LIMIT))
        .collect();
    let mut response = Json(json).into_response();
    response.headers_mut().insert(
        MORE_HEADER,
        HeaderValue::from_static(if ok.more { "true" } else { "false" }),
    );
    Ok(response)
}

/// `DELETE /api/queues/NAME/scheduled/SEQ`: deletes scheduled message SEQ before its time;
/// 404 when it is not scheduled in the queue.
pub async fn cancel(
    State(api): State<Api>,
    scope: Scope,
    Path((name, seq)): Path<(String, u64)>,
) -> Result<Response, ApiError> {
    let internal = scope.grant(Permission::Read, ResourceKind::Queue, &name)?;
    let reply = ask_queue(&api, &internal, |conn, request_id| {
        QueueCmd::CancelScheduled {
            conn,
            request_id,
            seq,
        }
    })
    .await
    .map_err(|e| scope.localize(e))?;
    match reply {
        Reply::CancelScheduledOk => Ok(Json(
            json!({ "queue": name, "message_seq": seq, "cancelled": true }),
        )
        .into_response()),
        other => Err(unexpected(&other)),
    }
}
