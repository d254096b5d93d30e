//! The HTTP admin API (docs/http-api.md): JSON over HTTP/1.1 for operators, scripts and
//! orchestrators, served beside the wire protocol on its own port.
//!
//! # Layout
//! - [`serve`] is the one door: it runs the router on a bound listener until shutdown.
//! - `listener.rs`: at most [`MAX_HTTP_CONNECTIONS`] connections at once, idle ones closed;
//!   the TLS handshake of HTTPS.
//! - `auth.rs`: HTTP basic auth against the broker's users (`/api/...` only), the tags that
//!   open the API, and the authenticated user in each request's extensions.
//! - `access.rs`: the vhost a request works in (`?vhost=`) and the user's permissions there.
//! - `error.rs`: [`RequestError`](crate::error::RequestError) codes as HTTP statuses, and the
//!   JSON body extractor whose failures are answered in the same shape.
//! - one file per resource: `overview.rs`, `queues.rs`, `exchanges.rs`, `bindings.rs`,
//!   `consumers.rs`, `connections.rs` (list, close, cancel a consumer), `limits.rs` (every
//!   configured limit and its current use), `publish.rs` (publish
//!   and get for debugging), `messages.rs` (browsing a queue), `moves.rs` (moving messages
//!   between queues), `definitions.rs` (export and import the topology), `users.rs`,
//!   `vhosts.rs` and `permissions.rs` (the users file; `/api/whoami`), `health.rs` for
//!   `/healthz` and `/readyz`, and `metrics.rs` for the Prometheus scrape `/metrics` (rendered
//!   by [`crate::metrics`]).
//! - `history.rs`: a sampler task keeps the last minutes of the broker's and each queue's
//!   counters, for the dashboard's charts.
//! - `dashboard.rs`: the web dashboard at `/`, static files from `dashboard/` embedded in the
//!   binary (docs/dashboard.md).
//!
//! Handlers call the same broker functions as the wire protocol's sessions, so a request means
//! the same thing whichever door it came through; the JSON mirrors the CLI's `--json`.

mod access;
mod auth;
mod bindings;
mod chaos;
mod cluster;
mod connections;
mod consumers;
mod dashboard;
mod definitions;
mod error;
mod exchanges;
mod health;
mod history;
mod limits;
mod listener;
mod messages;
mod metrics;
mod moves;
mod overview;
mod permissions;
mod publish;
mod queues;
mod scheduled;
mod trace;
mod users;
mod vhosts;

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use axum::routing::{get, post, put};
use axum::Router;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::broker::Broker;
use crate::connection::limits::Admission;
use crate::connection::ConnectionRegistry;
use crate::metrics::Exporter;
use crate::tls::ServerTls;
use history::History;
pub use listener::MAX_HTTP_CONNECTIONS;

/// What the handlers share: the broker and what the server knows about itself.
#[derive(Debug, Clone)]
pub struct Api {
    broker: Arc<Broker>,
    connections: Arc<ConnectionRegistry>,
    admission: Arc<Admission>,
    started: Instant,
    stopping: watch::Receiver<bool>,
    exporter: Arc<Exporter>,
    history: Arc<History>,
}

impl Api {
    /// The API of `broker`, served by a server that lists its connections in `connections`,
    /// counts what it admits in `admission`, started at `started` and says it is stopping
    /// through `stopping`.
    pub(crate) fn new(
        broker: Arc<Broker>,
        connections: Arc<ConnectionRegistry>,
        admission: Arc<Admission>,
        started: Instant,
        stopping: watch::Receiver<bool>,
    ) -> Self {
        let exporter = Arc::new(Exporter::new(Arc::clone(&broker), Arc::clone(&connections)));
        Self {
            broker,
            connections,
            admission,
            started,
            stopping,
            exporter,
            history: Arc::default(),
        }
    }
}

/// Serves the API on `listener` (HTTPS with `tls`) until `shutdown` resolves, then lets
/// requests in progress finish (the caller bounds how long it waits). Connections idle for
/// the broker's handshake timeout are closed, as are TLS handshakes that take longer. The
/// history's sampler runs as long as the server.
pub async fn serve(
    api: Api,
    listener: TcpListener,
    tls: Option<Arc<ServerTls>>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let sampler = AbortOnDrop(tokio::spawn(history::sample(api.clone())));
    let listener =
        listener::BoundedListener::new(listener, api.broker.config.handshake_timeout, tls);
    let app = router(api)
        .layer(axum::middleware::from_fn(listener::track_requests))
        .into_make_service_with_connect_info::<listener::Peer>();
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await;
    drop(sampler);
    served
}

/// Stops a task when dropped, so it cannot outlive the server that owns it.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Every route: the health probes, the metrics and the dashboard's files without auth, the
/// API behind basic auth.
fn router(api: Api) -> Router {
    let protected = Router::new()
        .route("/api/overview", get(overview::show))
        .route("/api/overview/history", get(history::broker))
        .route("/api/limits", get(limits::show))
        .route("/api/cluster", get(cluster::show))
        .route("/api/queues", get(queues::list))
        .route(
            "/api/queues/{name}",
            get(queues::show)
                .put(queues::declare)
                .delete(queues::delete),
        )
        .route(
            "/api/queues/{name}/contents",
            axum::routing::delete(queues::purge),
        )
        .route("/api/queues/{name}/history", get(history::queue))
        .route("/api/queues/{name}/get", post(publish::get))
        .route("/api/exchanges/{name}/publish", post(publish::publish))
        .route("/api/queues/{name}/messages", get(messages::browse))
        .route("/api/queues/{name}/scheduled", get(scheduled::list))
        .route(
            "/api/queues/{name}/scheduled/{seq}",
            axum::routing::delete(scheduled::cancel),
        )
        .route("/api/queues/{name}/move", post(moves::start))
        .route("/api/moves", get(moves::list))
        .route("/api/trace/{message_id}", get(trace::show))
        .route("/api/moves/{id}", get(moves::show))
        .route(
            "/api/queues/{name}/chaos",
            axum::routing::put(chaos::set).delete(chaos::clear),
        )
        .route("/api/chaos", get(chaos::list))
        .route("/api/exchanges", get(exchanges::list))
        .route(
            "/api/exchanges/{name}",
            put(exchanges::declare).delete(exchanges::delete),
        )
        .route(
            "/api/bindings",
            get(bindings::list)
                .post(bindings::bind)
                .delete(bindings::unbind),
        )
        .route("/api/consumers", get(consumers::list))
        .route(
            "/api/definitions",
            get(definitions::export).post(definitions::import),
        )
        .route("/api/connections", get(connections::list))
        .route(
            "/api/connections/{id}",
            axum::routing::delete(connections::close),
        )
        .route(
            "/api/connections/{id}/consumers/{tag}",
            axum::routing::delete(connections::cancel_consumer),
        )
        .route("/api/whoami", get(users::whoami))
        .route("/api/users", get(users::list))
        .route(
            "/api/users/{name}",
            get(users::show).put(users::put).delete(users::delete),
        )
        .route("/api/vhosts", get(vhosts::list))
        .route(
            "/api/vhosts/{name}",
            get(vhosts::show).put(vhosts::put).delete(vhosts::delete),
        )
        .route("/api/permissions", get(permissions::list))
        .route(
            "/api/permissions/{vhost}/{user}",
            get(permissions::show)
                .put(permissions::put)
                .delete(permissions::delete),
        )
        .route_layer(axum::middleware::from_fn_with_state(
            api.clone(),
            auth::require_user,
        ));
    Router::new()
        .route("/healthz", get(health::alive))
        .route("/readyz", get(health::ready))
        .route("/metrics", get(metrics::scrape))
        .merge(dashboard::routes())
        .merge(protected)
        .fallback(error::no_route)
        .with_state(api)
}
