//! `GET /api/overview`: the broker at a glance.

use std::sync::atomic::Ordering;

use axum::extract::State;
use axum::Json;

use super::auth::Monitoring;
use super::Api;
use crate::metrics::MessageStats;

/// The overview's JSON.
#[derive(Debug, serde::Serialize)]
pub struct Overview {
    version: &'static str,
    uptime_seconds: u64,
    queues: usize,
    connections: usize,
    consumers: u64,
    ready: u64,
    unacked: u64,
    publish_rate: u64,
    ack_rate: u64,
    blocked: bool,
    blocked_reason: Option<String>,
    disk_free_bytes: Option<u64>,
    min_free_disk_bytes: u64,
    message_stats: MessageStats,
}

/// `GET /api/overview`: counts and totals over every queue, read from their live counters.
pub async fn show(_: Monitoring, State(api): State<Api>) -> Json<Overview> {
    let broker = &api.broker;
    let queues = broker.queues();
    let sum = |f: &dyn Fn(&crate::queue::QueueStats) -> u64| -> u64 {
        queues.iter().map(|q| f(&q.meta.stats)).sum()
    };
    let blocked_reason = broker.flow_control().blocking().map(|b| b.reason);
    Json(Overview {
        version: env!("CARGO_PKG_VERSION"),
        uptime_seconds: api.started.elapsed().as_secs(),
        queues: queues.len(),
        connections: api.connections.len(),
        consumers: sum(&|s| u64::from(s.consumers.load(Ordering::Relaxed))),
        ready: sum(&|s| s.ready.load(Ordering::Relaxed)),
        unacked: sum(&|s| s.unacked.load(Ordering::Relaxed)),
        publish_rate: sum(&|s| s.publish_rate.load(Ordering::Relaxed)),
        ack_rate: sum(&|s| s.ack_rate.load(Ordering::Relaxed)),
        blocked: blocked_reason.is_some(),
        blocked_reason,
        // `null` when the file system cannot say (the broker logs that itself).
        disk_free_bytes: rustix::fs::statvfs(&broker.config.data_dir)
            .ok()
            .map(|st| st.f_bavail.saturating_mul(st.f_frsize)),
        min_free_disk_bytes: broker.config.min_free_disk_bytes,
        // Since the broker started, deleted queues included.
        message_stats: broker
            .metrics()
            .totals(queues.iter().map(|q| &q.meta.stats)),
    })
}
