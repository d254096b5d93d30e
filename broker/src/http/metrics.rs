//! `GET /metrics`: the Prometheus scrape, without auth (as `/healthz`): what Prometheus
//! expects by default. It shows queue names and counts, never message contents; the port is
//! on loopback unless the operator opens it.

use std::sync::Arc;

use axum::extract::State;
use axum::http::header::{ACCEPT, CONTENT_TYPE};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};

use super::error::ApiError;
use super::Api;
use crate::error::RequestError;
use crate::metrics::Format;

/// `GET /metrics`: OpenMetrics text, or the Prometheus text format 0.0.4 when the `Accept`
/// header asks for `text/plain` only. Rendered on a blocking thread: a scrape of many queues
/// takes a while and must not hold an async worker that queues and sessions run on.
pub async fn scrape(State(api): State<Api>, headers: HeaderMap) -> Response {
    let format = Format::from_accept(headers.get(ACCEPT).and_then(|v| v.to_str().ok()));
    let exporter = Arc::clone(&api.exporter);
    match tokio::task::spawn_blocking(move || exporter.render(format)).await {
        Ok(body) => ([(CONTENT_TYPE, format.content_type())], body).into_response(),
        Err(e) => ApiError(RequestError::internal(format!(
            "rendering the metrics failed: {e}"
        )))
        .into_response(),
    }
}
