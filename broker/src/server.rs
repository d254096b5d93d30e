//! The TCP listener, the connection limit and graceful shutdown.
//!
//! Connections are bounded by a semaphore (as in mini-redis): a permit is taken at accept and
//! held until the connection ends, so connections still in their handshake count. Past the
//! limit a socket is accepted and refused at once with `Close(CONNECTION_LIMIT)`, which keeps
//! the backlog draining and tells a client why. Descriptors beyond the limit stay free for the
//! queues' files ([`crate::limits`]).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;

use crate::broker::Broker;
use crate::connection::{self, ConnectionRegistry, Refusal};
use crate::flow;
use crate::http::{self, Api};
use crate::limits;

/// Time connections get to finish after a shutdown signal.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// Refused connections kept open at once while their peers read the `Close`; past this they
/// are closed as soon as the `Close` is written. Counted in [`limits::FIXED_RESERVE`].
const MAX_LINGERING: usize = 32;
/// Shortest and longest pause after a failed accept.
const ACCEPT_BACKOFF: (Duration, Duration) = (Duration::from_millis(1), Duration::from_secs(1));
/// At most one log line per this interval about refused connections.
const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(1);

/// A bound, running server.
#[derive(Debug)]
pub struct Server {
    broker: Arc<Broker>,
    listener: TcpListener,
    /// The HTTP admin API's listener, unless it is off.
    http: Option<TcpListener>,
    max_connections: usize,
    /// SIGHUP, installed at bind time: a signal sent as soon as the broker says it is ready
    /// must reload the users file, not end the process (SIGHUP's default).
    hangup: Signal,
}

/// A listener could not be bound (the port is taken, the address is not local...).
#[derive(Debug, thiserror::Error)]
// The cause is the source: `{e:#}` (anyhow) prints it after the message.
#[error("cannot listen for {purpose} on {addr}")]
pub struct BindError {
    /// What the listener is for.
    pub purpose: &'static str,
    /// The address asked for.
    pub addr: SocketAddr,
    /// Why not.
    pub source: std::io::Error,
}

async fn bind_listener(purpose: &'static str, addr: SocketAddr) -> Result<TcpListener, BindError> {
    TcpListener::bind(addr).await.map_err(|source| BindError {
        purpose,
        addr,
        source,
    })
}

impl Server {
    /// Binds the client listener and the HTTP admin API's (unless it is off). The connection
    /// limit is the configured one, or derived from the descriptor limit in force now.
    pub async fn bind(broker: Arc<Broker>) -> Result<Self, BindError> {
        let listener = bind_listener("clients", broker.config.listen).await?;
        let http = match broker.config.http_listen.addr() {
            Some(addr) => Some(bind_listener("the HTTP admin API", addr).await?),
            None => None,
        };
        let max_connections = broker
            .config
            .max_connections
            .unwrap_or_else(|| limits::default_max_connections(limits::descriptor_limit()))
            // More would make the semaphore panic; no process has that many descriptors.
            .min(Semaphore::MAX_PERMITS);
        tracing::info!(max_connections, "connection limit");
        // Fails only outside a runtime with its signal driver, which `bind` never runs in.
        let hangup = signal(SignalKind::hangup()).expect("the runtime's signal driver is enabled");
        Ok(Self {
            broker,
            listener,
            http,
            max_connections,
            hangup,
        })
    }

    /// The address clients connect to.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The address of the HTTP admin API, unless it is off.
    pub fn http_addr(&self) -> std::io::Result<Option<SocketAddr>> {
        self.http.as_ref().map(TcpListener::local_addr).transpose()
    }

    /// The most connections served at once.
    pub fn max_connections(&self) -> usize {
        self.max_connections
    }

    /// Serves until `shutdown` resolves, then closes every connection, lets every queue write
    /// what is pending, and returns once the data is synced.
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()>) {
        let (stop_tx, stop_rx) = watch::channel(false);
        self.broker.check_disk();
        let disk = tokio::spawn(Arc::clone(&self.broker).watch_disk());
        let memory = self.broker.config.max_memory_bytes.map(|limit| {
            let flow = Arc::clone(self.broker.flow_control());
            flow::check_memory(&flow, limit);
            tokio::spawn(flow::watch_memory(flow, limit))
        });
        let permits = Arc::new(Semaphore::new(self.max_connections));
        let lingering = Arc::new(Semaphore::new(MAX_LINGERING));
        let refusal = Refusal::connection_limit(self.max_connections);
        let mut refusals = RefusalLog::default();
        let mut backoff = AcceptBackoff::default();
        let mut connections = JoinSet::new();
        let registry = Arc::new(ConnectionRegistry::default());
        let reloads = tokio::spawn(reload_users_on_sighup(
            Arc::clone(&self.broker),
            Arc::clone(&registry),
            self.hangup,
        ));
        let mut http = self.http.map(|listener| {
            let api = Api::new(
                Arc::clone(&self.broker),
                Arc::clone(&registry),
                Instant::now(),
                stop_rx.clone(),
            );
            tokio::spawn(serve_http(api, listener, stop_rx.clone()))
        });
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                accepted = self.listener.accept() => match accepted {
                    Ok((stream, peer)) => {
                        backoff.succeeded();
                        let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
                            let sent = refusal.send_now(&stream);
                            refusals.refused(Instant::now(), peer, sent, self.max_connections);
                            if let Ok(slot) = Arc::clone(&lingering).try_acquire_owned() {
                                tokio::spawn(async move {
                                    connection::linger(stream).await;
                                    drop(slot);
                                });
                            }
                            continue;
                        };
                        let serve = connection::serve(
                            Arc::clone(&self.broker),
                            stream,
                            stop_rx.clone(),
                            Arc::clone(&registry),
                        );
                        connections.spawn(async move {
                            serve.await;
                            drop(permit);
                        });
                    }
                    Err(e) => {
                        // Out of file descriptors and the like: keep serving the others, and
                        // give the pressure time to ease instead of spinning on the error.
                        let pause = backoff.failed();
                        tracing::warn!(error = %e, cause = accept_failure_cause(&e),
                            pause_ms = pause.as_millis() as u64, "accept failed; pausing");
                        tokio::time::sleep(pause).await;
                    }
                },
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
                () = &mut shutdown => break,
            }
        }
        tracing::info!("shutting down: closing connections");
        disk.abort();
        reloads.abort();
        if let Some(memory) = memory {
            memory.abort();
        }
        drop(self.listener);
        let _ = stop_tx.send(true);
        let drained = tokio::time::timeout(DRAIN_TIMEOUT, async {
            while connections.join_next().await.is_some() {}
            if let Some(api) = http.as_mut() {
                let _ = api.await;
            }
        })
        .await;
        if drained.is_err() {
            connections.abort_all();
            if let Some(api) = &http {
                api.abort();
            }
        }
        // Every queue closes whatever happened to the connections. The clean-stop marker says
        // that every queue's delivered watermark is exact, which aborted connections do not
        // change: the queues recorded what they handed out, and write it as they close.
        let queues_closed = self.broker.shutdown_queues().await;
        if queues_closed {
            match self.broker.store().mark_clean_stop() {
                Ok(()) => tracing::info!("queues closed; clean stop recorded"),
                Err(e) => {
                    tracing::warn!(error = %e, "could not record the clean stop; the next start assumes a crash")
                }
            }
        } else {
            tracing::warn!("not every queue closed; the next start assumes a crash");
        }
    }
}

/// Serves the HTTP admin API until `stop` turns true, then lets requests in progress finish.
async fn serve_http(api: Api, listener: TcpListener, mut stop: watch::Receiver<bool>) {
    let stopped = async move {
        // An error means the sender is gone: the server is stopping either way.
        let _ = stop.wait_for(|stopping| *stopping).await;
    };
    if let Err(e) = http::serve(api, listener, stopped).await {
        tracing::error!(error = %e, "the HTTP admin API stopped");
    }
}

/// Reloads the users file at every SIGHUP, logging what it holds now; a file that does not
/// load keeps the users as they were, and says why. Connections of users no longer in the
/// file are closed.
async fn reload_users_on_sighup(
    broker: Arc<Broker>,
    registry: Arc<ConnectionRegistry>,
    mut hangup: Signal,
) {
    while hangup.recv().await.is_some() {
        let path = broker.access.path().display().to_string();
        let reloaded = match broker.access.reload() {
            Ok(reloaded) => reloaded,
            Err(e) => {
                tracing::error!(path, error = %e,
                    "SIGHUP: users file not reloaded; the previous users, vhosts and permissions stay");
                continue;
            }
        };
        tracing::info!(path, users = reloaded.users, vhosts = reloaded.vhosts,
            removed_users = ?reloaded.removed_users, "SIGHUP: users file reloaded");
        for user in &reloaded.removed_users {
            let reason = format!("user '{user}' was removed from the users file");
            let closed = registry.close_user(user, &reason).await;
            if closed > 0 {
                tracing::info!(user, closed, "connections of a removed user closed");
            }
        }
    }
}

/// Names what an accept error means for an operator.
fn accept_failure_cause(e: &std::io::Error) -> &'static str {
    if crate::storage::is_out_of_resources(e) {
        "out of file descriptors or memory: raise the descriptor limit or lower max_connections"
    } else {
        "the listening socket reported an error"
    }
}

/// Exponential back-off after failed accepts, reset by a successful one.
#[derive(Debug)]
struct AcceptBackoff {
    next: Duration,
}

impl Default for AcceptBackoff {
    fn default() -> Self {
        Self {
            next: ACCEPT_BACKOFF.0,
        }
    }
}

impl AcceptBackoff {
    /// The pause after this failure; the next one will be twice as long, up to the cap.
    fn failed(&mut self) -> Duration {
        let pause = self.next;
        self.next = (pause * 2).min(ACCEPT_BACKOFF.1);
        pause
    }

    fn succeeded(&mut self) {
        self.next = ACCEPT_BACKOFF.0;
    }
}

/// Logs refused connections at most once per [`REFUSAL_LOG_INTERVAL`], counting the rest: a
/// flood of sockets must not become a flood of log lines.
#[derive(Debug, Default)]
struct RefusalLog {
    last: Option<Instant>,
    unlogged: u64,
}

impl RefusalLog {
    /// Notes one refusal at `now`; returns whether it was logged.
    fn refused(&mut self, now: Instant, peer: SocketAddr, sent: bool, limit: usize) -> bool {
        let due = self
            .last
            .is_none_or(|t| now.saturating_duration_since(t) >= REFUSAL_LOG_INTERVAL);
        if !due {
            self.unlogged += 1;
            return false;
        }
        tracing::warn!(%peer, max_connections = limit, close_sent = sent,
            also_refused_since_last_line = self.unlogged,
            "connection refused: the server is at its connection limit (raise max_connections or the descriptor limit)");
        self.last = Some(now);
        self.unlogged = 0;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_back_off_doubles_up_to_a_second_and_resets_on_success() {
        let mut b = AcceptBackoff::default();
        let pauses: Vec<u64> = (0..12).map(|_| b.failed().as_millis() as u64).collect();
        assert_eq!(pauses, [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1000, 1000]);
        b.succeeded();
        assert_eq!(b.failed(), Duration::from_millis(1));
    }

    #[test]
    fn refusals_are_logged_at_most_once_a_second() {
        let mut log = RefusalLog::default();
        let peer: SocketAddr = "127.0.0.1:4000".parse().unwrap();
        let t0 = Instant::now();
        assert!(log.refused(t0, peer, true, 10));
        let quiet = (1..100)
            .filter(|i| log.refused(t0 + Duration::from_millis(*i), peer, true, 10))
            .count();
        assert_eq!(quiet, 0);
        assert_eq!(log.unlogged, 99);
        assert!(log.refused(t0 + Duration::from_secs(1), peer, true, 10));
        assert_eq!(log.unlogged, 0);
    }
}
