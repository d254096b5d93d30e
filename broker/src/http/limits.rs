//! `GET /api/limits`: every configured limit, and its current use where that is cheap to read.

use std::sync::atomic::Ordering;

use axum::extract::State;
use axum::Json;

use super::auth::Monitoring;
use super::Api;
use crate::connection::limits::AdmissionLimit;

/// One limit: its value (`null` = no limit) and its use now. For a limit per user, connection
/// or exchange, `current` is the highest use among them; `null` where the use is not counted.
#[derive(Debug, serde::Serialize)]
pub struct Limit {
    limit: Option<u64>,
    current: Option<u64>,
}

fn limit(limit: impl TryInto<u64>, current: Option<usize>) -> Limit {
    Limit {
        limit: limit.try_into().ok(),
        current: current.map(|c| c as u64),
    }
}

fn unlimited_or(value: Option<usize>, current: Option<usize>) -> Limit {
    Limit {
        limit: value.map(|v| v as u64),
        current: current.map(|c| c as u64),
    }
}

/// The JSON of `GET /api/limits`, one field per setting (named as in the TOML file).
#[derive(Debug, serde::Serialize)]
pub struct Limits {
    max_connections: Limit,
    max_handshaking: Limit,
    handshake_timeout_ms: Limit,
    max_connections_per_user: Limit,
    max_consumers_per_connection: Limit,
    max_unsettled_publish_bytes: Limit,
    max_prefetch: Limit,
    max_bindings_per_exchange: Limit,
    max_header_entries: Limit,
    max_header_bytes: Limit,
    max_message_bytes: Limit,
}

/// `GET /api/limits`.
pub async fn show(_: Monitoring, State(api): State<Api>) -> Json<Limits> {
    let config = &api.broker.config;
    let l = &config.limits;
    let admission = &api.admission;
    let most_consumers = api
        .connections
        .snapshot_after(None)
        .iter()
        .map(|c| c.stats.consumers.load(Ordering::Relaxed) as usize)
        .max()
        .unwrap_or(0);
    let most_bindings = api.broker.read().routing.most_bindings();
    Json(Limits {
        max_connections: limit(
            admission.max(AdmissionLimit::Connections),
            Some(admission.connections()),
        ),
        max_handshaking: limit(
            admission.max(AdmissionLimit::Handshaking),
            Some(admission.handshaking()),
        ),
        handshake_timeout_ms: limit(config.handshake_timeout.as_millis(), None),
        max_connections_per_user: unlimited_or(
            l.max_connections_per_user,
            Some(api.connections.most_connections_of_a_user()),
        ),
        max_consumers_per_connection: limit(l.max_consumers_per_connection, Some(most_consumers)),
        max_unsettled_publish_bytes: limit(l.max_unsettled_publish_bytes, None),
        max_prefetch: limit(l.max_prefetch, None),
        max_bindings_per_exchange: limit(l.max_bindings_per_exchange, Some(most_bindings)),
        max_header_entries: limit(l.headers.max_entries, None),
        max_header_bytes: limit(l.headers.max_bytes, None),
        max_message_bytes: limit(config.max_message_len, None),
    })
}
