//! `/api/queues/NAME/messages`: a queue's first ready messages, shown without taking them
//! (as `sluice browse --json`; nothing about them changes).

use axum::extract::{Path, State};
use axum::http::HeaderValue;
use axum::response::{IntoResponse, Response};
use axum::Json;
use sluice_client::wire::{MessageMeta, Reply, MAX_BROWSE_LIMIT};

use super::access::Scope;
use super::error::{ApiError, QueryParams};
use super::queues::{ask_queue, unexpected};
use super::Api;
use crate::auth::{Permission, ResourceKind};
use crate::cli::messages::{BrowsedJson, HTTP_PAYLOAD_LIMIT};
use crate::error::RequestError;
use crate::queue::{BrowsePage, QueueCmd};

/// Messages shown when the request names no `limit`.
const DEFAULT_LIMIT: u32 = 100;
/// Bytes of payloads (each counted up to [`HTTP_PAYLOAD_LIMIT`]) and meta blocks one answer
/// holds at most (its JSON is larger: base64, escapes); a page cut short by it says so in
/// [`MORE_HEADER`].
const MAX_ANSWER_BYTES: usize = 4 << 20;
/// Response header: `true` when ready messages follow the last one shown (ask again with
/// `after` = its `seq`), else `false`.
pub const MORE_HEADER: &str = "x-sluice-more";

/// The `limit` query parameter of a paged listing: `DEFAULT_LIMIT` when absent, else 1 to
/// `max`.
pub(super) fn page_limit(limit: Option<u32>, max: u32) -> Result<u32, RequestError> {
    let limit = limit.unwrap_or(DEFAULT_LIMIT);
    if limit == 0 || limit > max {
        return Err(RequestError::invalid(format!(
            "query parameter limit: expected 1 to {max}, got {limit}"
        )));
    }
    Ok(limit)
}

/// The query of `GET /api/queues/NAME/messages`: `?limit=N&after=SEQ`.
#[derive(Debug, serde::Deserialize)]
pub struct BrowseQuery {
    limit: Option<u32>,
    after: Option<u64>,
}

/// `GET /api/queues/NAME/messages`: up to `limit` (default 100, at most 1000) ready messages
/// whose sequence number is above `after` (default 0: from the head), in sequence order.
pub async fn browse(
    State(api): State<Api>,
    scope: Scope,
    Path(name): Path<String>,
    QueryParams(query): QueryParams<BrowseQuery>,
) -> Result<Response, ApiError> {
    let limit = page_limit(query.limit, MAX_BROWSE_LIMIT)?;
    let page = BrowsePage {
        limit: limit as usize,
        after_seq: query.after.unwrap_or(0),
        max_bytes: MAX_ANSWER_BYTES,
        body_budget: HTTP_PAYLOAD_LIMIT,
    };
    let name = scope.grant(Permission::Read, ResourceKind::Queue, &name)?;
    let reply = ask_queue(&api, &name, |conn, request_id| QueueCmd::Browse {
        conn,
        request_id,
        page,
    })
    .await
    .map_err(|e| scope.localize(e))?;
    let Reply::BrowseQueueOk(ok) = reply else {
        return Err(unexpected(&reply));
    };
    let now = crate::queue::unix_now_ms();
    let metas: Vec<Option<MessageMeta>> = ok
        .messages
        .iter()
        .map(|m| MessageMeta::from_slice(&m.meta).ok())
        .collect();
    let json: Vec<BrowsedJson<'_>> = ok
        .messages
        .iter()
        .zip(&metas)
        .map(|(m, meta)| BrowsedJson::new(m, meta.as_ref(), now, HTTP_PAYLOAD_LIMIT))
        .collect();
    let mut response = Json(json).into_response();
    response.headers_mut().insert(
        MORE_HEADER,
        HeaderValue::from_static(if ok.more { "true" } else { "false" }),
    );
    Ok(response)
}
