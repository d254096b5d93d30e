//! The TCP listener, the connection limit and graceful shutdown.
//!
//! Connections are bounded by a semaphore (as in mini-redis): a permit is taken at accept and
//! held until the connection ends, so connections still in their handshake count. A second
//! one bounds the sockets still in their handshake (`max_handshaking`), so silent sockets
//! cannot take every connection. Past either limit a socket is accepted and refused at once
//! with `Close(CONNECTION_LIMIT)`, which keeps the backlog draining and tells a client why.
//! Descriptors beyond the limit stay free for the queues' files ([`crate::limits`]).
//!
//! With TLS configured a second listener takes TLS clients; they share both limits. A TLS
//! client past a limit is closed without a `Close` (it could only be sent after a TLS
//! handshake the server has no room for). SIGHUP reloads the certificate ([`crate::tls`]).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream};
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;

use crate::broker::Broker;
use crate::connection::limits::{Admission, AdmissionLimit};
use crate::connection::{self, Accepted, ConnectionRegistry, Refusal};
use crate::flow;
use crate::http::{self, Api};
use crate::limits;
use crate::tls::{self, ServerTls, TlsError};

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
    /// The plain port's listener, unless it is off.
    listener: Option<TcpListener>,
    /// The TLS port, unless TLS is off.
    tls: Option<TlsPort>,
    /// The HTTP admin API's listener, unless it is off.
    http: Option<TcpListener>,
    max_connections: usize,
    /// SIGHUP, installed at bind time: a signal sent as soon as the broker says it is ready
    /// must reload the users file, not end the process (SIGHUP's default).
    hangup: Signal,
}

/// The TLS port: its listener, the certificate (shared with the HTTP API), and the SIGHUP
/// stream that reloads it, installed at bind so a SIGHUP after the start is never fatal.
#[derive(Debug)]
struct TlsPort {
    listener: TcpListener,
    config: Arc<ServerTls>,
    hangups: Signal,
}

/// The server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A port could not be bound.
    #[error(transparent)]
    Bind(#[from] BindError),
    /// The TLS files cannot be used.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// SIGHUP (reloads of the users file and the TLS certificate) cannot be listened for.
    #[error("cannot listen for SIGHUP, which reloads the users file and the TLS certificate: {0}")]
    Signal(std::io::Error),
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
    /// Loads the TLS certificate (if configured), binds the client listeners and the HTTP
    /// admin API's (those that are on). The connection limit is the configured one, or
    /// derived from the descriptor limit in force now.
    pub async fn bind(broker: Arc<Broker>) -> Result<Self, StartError> {
        let tls = match &broker.config.tls {
            Some(settings) => {
                let config = Arc::new(ServerTls::load(settings.files.clone())?);
                let listener = bind_listener("TLS clients", settings.listen).await?;
                let hangups = signal(SignalKind::hangup()).map_err(StartError::Signal)?;
                Some(TlsPort {
                    listener,
                    config,
                    hangups,
                })
            }
            None => None,
        };
        let listener = match broker.config.listen {
            Some(addr) => Some(bind_listener("clients", addr).await?),
            None => None,
        };
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
        let hangup = signal(SignalKind::hangup()).map_err(StartError::Signal)?;
        Ok(Self {
            broker,
            listener,
            tls,
            http,
            max_connections,
            hangup,
        })
    }

    /// The address plain clients connect to, unless that port is off.
    pub fn local_addr(&self) -> std::io::Result<Option<SocketAddr>> {
        self.listener
            .as_ref()
            .map(TcpListener::local_addr)
            .transpose()
    }

    /// The address TLS clients connect to, unless TLS is off.
    pub fn tls_addr(&self) -> std::io::Result<Option<SocketAddr>> {
        self.tls
            .as_ref()
            .map(|t| t.listener.local_addr())
            .transpose()
    }

    /// The address of the HTTP admin API, unless it is off.
    pub fn http_addr(&self) -> std::io::Result<Option<SocketAddr>> {
        self.http.as_ref().map(TcpListener::local_addr).transpose()
    }

    /// The broker this server serves.
    pub fn broker(&self) -> &Arc<Broker> {
        &self.broker
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
        let limits = self.broker.config.limits;
        let admission = Arc::new(Admission::new(self.max_connections, limits.max_handshaking));
        let lingering = Arc::new(Semaphore::new(MAX_LINGERING));
        let refusal = |which| Refusal::connection_limit(which, admission.max(which));
        let refusals_sent = [
            refusal(AdmissionLimit::Connections),
            refusal(AdmissionLimit::Handshaking),
        ];
        let mut refusals = RefusalLog::default();
        let mut backoff = AcceptBackoff::default();
        let mut connections = JoinSet::new();
        let registry = Arc::new(ConnectionRegistry::new(limits.max_connections_per_user));
        let (tls_listener, tls_config, reload) = match self.tls {
            Some(TlsPort {
                listener,
                config,
                hangups,
            }) => {
                let reload = tokio::spawn(tls::reload_on_hangup(Arc::clone(&config), hangups));
                (Some(listener), Some(config), Some(reload))
            }
            None => (None, None, None),
        };
        let reloads = tokio::spawn(reload_users_on_sighup(
            Arc::clone(&self.broker),
            Arc::clone(&registry),
            self.hangup,
        ));
        let mut http = self.http.map(|listener| {
            let api = Api::new(
                Arc::clone(&self.broker),
                Arc::clone(&registry),
                Arc::clone(&admission),
                Instant::now(),
                stop_rx.clone(),
            );
            tokio::spawn(serve_http(
                api,
                listener,
                tls_config.clone(),
                stop_rx.clone(),
            ))
        });
        tokio::pin!(shutdown);
        loop {
            let (accepted, tls) = tokio::select! {
                accepted = accept_on(self.listener.as_ref()) => (accepted, None),
                accepted = accept_on(tls_listener.as_ref()) =>
                    (accepted, tls_config.as_ref().map(|c| c.acceptor())),
                Some(_) = connections.join_next(), if !connections.is_empty() => continue,
                () = &mut shutdown => break,
            };
            match accepted {
                Ok((stream, peer)) => {
                    backoff.succeeded();
                    let admitted = match admission.admit() {
                        Ok(admitted) => admitted,
                        Err(which) => {
                            let max = admission.max(which);
                            if tls.is_some() {
                                // It could read a Close only after a TLS handshake: closed now.
                                refusals.refused(Instant::now(), peer, false, which, max);
                                continue;
                            }
                            let refusal = match which {
                                AdmissionLimit::Connections => &refusals_sent[0],
                                AdmissionLimit::Handshaking => &refusals_sent[1],
                            };
                            let sent = refusal.send_now(&stream);
                            refusals.refused(Instant::now(), peer, sent, which, max);
                            if let Ok(slot) = Arc::clone(&lingering).try_acquire_owned() {
                                tokio::spawn(async move {
                                    connection::linger(stream).await;
                                    drop(slot);
                                });
                            }
                            continue;
                        }
                    };
                    let serve = connection::serve(
                        Arc::clone(&self.broker),
                        Accepted {
                            stream,
                            tls,
                            shutdown: stop_rx.clone(),
                            registry: Arc::clone(&registry),
                            handshaking: admitted.handshake,
                        },
                    );
                    let permit = admitted.connection;
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
            }
        }
        tracing::info!("shutting down: closing connections");
        disk.abort();
        if let Some(reload) = reload {
            reload.abort();
        }
        reloads.abort();
        if let Some(memory) = memory {
            memory.abort();
        }
        drop(self.listener);
        drop(tls_listener);
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
        // The cluster stops before the queues: no group applies anything to a closing queue,
        // and the peers see this node leave rather than hang.
        if let Some(cluster) = self.broker.cluster() {
            cluster.shutdown().await;
        }
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

/// Accepts on `listener`, or never if there is none (that port is off).
async fn accept_on(listener: Option<&TcpListener>) -> std::io::Result<(TcpStream, SocketAddr)> {
    match listener {
        Some(listener) => listener.accept().await,
        None => std::future::pending().await,
    }
}

/// Serves the HTTP admin API (HTTPS with `tls`) until `stop` turns true, then lets requests
/// in progress finish.
async fn serve_http(
    api: Api,
    listener: TcpListener,
    tls: Option<Arc<ServerTls>>,
    mut stop: watch::Receiver<bool>,
) {
    let stopped = async move {
        // An error means the sender is gone: the server is stopping either way.
        let _ = stop.wait_for(|stopping| *stopping).await;
    };
    if let Err(e) = http::serve(api, listener, tls, stopped).await {
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
        // File read, TOML parse, regex compiles: off the runtime's threads.
        let access = Arc::clone(&broker.access);
        let reloaded =
            tokio::task::spawn_blocking(move || access.reload().map_err(|e| e.to_string()))
                .await
                .unwrap_or_else(|e| Err(e.to_string()));
        let reloaded = match reloaded {
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
    /// Notes one refusal at `now` for the limit `which` (of `limit`); returns whether it was
    /// logged.
    fn refused(
        &mut self,
        now: Instant,
        peer: SocketAddr,
        sent: bool,
        which: AdmissionLimit,
        limit: usize,
    ) -> bool {
        let due = self
            .last
            .is_none_or(|t| now.saturating_duration_since(t) >= REFUSAL_LOG_INTERVAL);
        if !due {
            self.unlogged += 1;
            return false;
        }
        let unlogged = self.unlogged;
        match which {
            AdmissionLimit::Connections => tracing::warn!(%peer, max_connections = limit,
                close_sent = sent, also_refused_since_last_line = unlogged,
                "connection refused: the server is at its connection limit (raise max_connections or the descriptor limit)"),
            AdmissionLimit::Handshaking => tracing::warn!(%peer, max_handshaking = limit,
                close_sent = sent, also_refused_since_last_line = unlogged,
                "connection refused: too many sockets are in their handshake (raise max_handshaking; many silent sockets may be an attack)"),
        }
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
        let which = AdmissionLimit::Connections;
        assert!(log.refused(t0, peer, true, which, 10));
        let quiet = (1..100)
            .filter(|i| log.refused(t0 + Duration::from_millis(*i), peer, true, which, 10))
            .count();
        assert_eq!(quiet, 0);
        assert_eq!(log.unlogged, 99);
        assert!(log.refused(t0 + Duration::from_secs(1), peer, true, which, 10));
        assert_eq!(log.unlogged, 0);
    }
}
