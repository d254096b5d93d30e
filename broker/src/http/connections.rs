//! `GET /api/connections`.

use std::sync::atomic::Ordering;
use std::time::UNIX_EPOCH;

use axum::extract::State;
use axum::Json;

use super::Api;
use crate::connection::ConnectionEntry;

/// One connection of `GET /api/connections`.
#[derive(Debug, serde::Serialize)]
pub struct ConnectionJson {
    connection_id: u64,
    peer: Option<String>,
    user: String,
    client_product: Option<String>,
    client_version: Option<String>,
    connection_name: Option<String>,
    connected_at_ms: u64,
    bytes_in: u64,
    bytes_out: u64,
    frames_in: u64,
    frames_out: u64,
    unsettled_publishes: u64,
    consumers: u64,
}

impl From<&ConnectionEntry> for ConnectionJson {
    fn from(c: &ConnectionEntry) -> Self {
        let s = &c.stats;
        ConnectionJson {
            connection_id: c.id,
            peer: c.peer.map(|p| p.to_string()),
            user: c.user.clone(),
            client_product: c.client.product.clone(),
            client_version: c.client.version.clone(),
            connection_name: c.client.connection_name.clone(),
            connected_at_ms: c
                .connected_at
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
            bytes_in: s.bytes_in.load(Ordering::Relaxed),
            bytes_out: s.bytes_out.load(Ordering::Relaxed),
            frames_in: s.frames_in.load(Ordering::Relaxed),
            frames_out: s.frames_out.load(Ordering::Relaxed),
            unsettled_publishes: s.unsettled_publishes.load(Ordering::Relaxed),
            consumers: s.consumers.load(Ordering::Relaxed),
        }
    }
}

/// `GET /api/connections`: every client connection past its handshake, by number.
pub async fn list(State(api): State<Api>) -> Json<Vec<ConnectionJson>> {
    let live = api.connections.snapshot();
    Json(live.iter().map(|c| ConnectionJson::from(&**c)).collect())
}
