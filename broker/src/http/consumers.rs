//! `GET /api/consumers`.

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use sluice_client::wire::ListConsumers;

use super::Api;
use crate::admin;
use crate::cli::format::ConsumerJson;

/// `GET /api/consumers`: every consumer, as `sluice consumers --json` prints them.
pub async fn list(State(api): State<Api>) -> Response {
    let all = admin::list_consumers(&api.broker, &ListConsumers::default(), u32::MAX);
    let json: Vec<ConsumerJson<'_>> = all.consumers.iter().map(ConsumerJson::from).collect();
    Json(json).into_response()
}
