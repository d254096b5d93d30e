//! `GET /api/cluster`: the cluster as this node sees it: members, the metadata leader, and
//! every Raft group hosted here with its leader, replicas and their lag.

use axum::extract::State;
use axum::Json;
use serde_json::{json, Value};

use super::auth::Monitoring;
use super::Api;

/// `GET /api/cluster`: `{"enabled": false}` on a single node; otherwise
/// `{"enabled": true, "ready", ...ClusterStatus}` (see docs/http-api.md).
pub async fn show(_: Monitoring, State(api): State<Api>) -> Json<Value> {
    let Some(cluster) = api.broker.cluster() else {
        return Json(json!({ "enabled": false }));
    };
    let mut body = serde_json::to_value(cluster.status()).unwrap_or_else(|_| json!({}));
    if let Value::Object(map) = &mut body {
        map.insert("enabled".into(), json!(true));
        map.insert("ready".into(), json!(cluster.is_ready()));
    }
    Json(body)
}
