//! `GET /api/cluster`: the cluster as this node sees it: members, the metadata leader, and
//! every Raft group hosted here with its leader, replicas and their lag.

use axum::extract::State;
use axum::Json;
use serde_json::{json, Value};

use super::auth::Monitoring;
use super::Api;
use crate::routing::namespace;

/// `GET /api/cluster`: `{"enabled": false}` on a single node; otherwise the status (see
/// docs/http-api.md), each group named by its queue (`vhost`, `queue`) when it is one.
pub async fn show(_: Monitoring, State(api): State<Api>) -> Json<Value> {
    let Some(cluster) = api.broker.cluster() else {
        return Json(json!({ "enabled": false }));
    };
    let catalog = cluster.catalog();
    let mut body = serde_json::to_value(cluster.status()).unwrap_or_else(|_| json!({}));
    if let Some(groups) = body.get_mut("groups").and_then(Value::as_array_mut) {
        for group in groups {
            let id = group.get("id").and_then(Value::as_u64);
            let record = catalog.iter().find(|r| Some(r.uid) == id);
            if let Value::Object(g) = group {
                g.insert("vhost".into(), json!(record.map(|r| &r.vhost)));
                g.insert(
                    "queue".into(),
                    json!(record.map(|r| namespace::split(&r.name).local.to_owned())),
                );
            }
        }
    }
    if let Value::Object(map) = &mut body {
        map.insert("enabled".into(), json!(true));
        map.insert("ready".into(), json!(cluster.is_ready()));
    }
    Json(body)
}
