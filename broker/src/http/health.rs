//! Probes for orchestrators, without auth: `/healthz` says the process serves HTTP at all,
//! `/readyz` whether it should get traffic.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde_json::{json, Value};

use super::Api;

/// `GET /healthz`: the process is alive and answering.
pub async fn alive() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

/// `GET /readyz`: 200 once the broker has recovered its queues and listens for clients (the
/// API starts only then), in a cluster once this node is a member and knows the metadata
/// leader, and while publishers are not blocked (disk space, memory); 503 with the reason
/// otherwise.
pub async fn ready(State(api): State<Api>) -> (StatusCode, Json<Value>) {
    if *api.stopping.borrow() {
        return unavailable("shutting down");
    }
    if let Some(cluster) = api.broker.cluster() {
        if !cluster.is_ready() {
            return unavailable("not yet a cluster member with a known metadata leader");
        }
    }
    match api.broker.flow_control().blocking() {
        Some(blocking) => unavailable(&format!("publishing blocked: {}", blocking.reason)),
        None => (StatusCode::OK, Json(json!({ "status": "ok" }))),
    }
}

fn unavailable(reason: &str) -> (StatusCode, Json<Value>) {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        Json(json!({ "status": "unavailable", "reason": reason })),
    )
}
