//! [`Client`], the cheap cloneable handle to a connection, and [`ClientBuilder`].
//!
//! Publishing lives in [`publish`](crate::publish) and consuming in
//! [`consumer`](crate::consumer), operators' listings in `listing`; this file has connecting,
//! queue and exchange management, settling by delivery tag, and closing.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, oneshot};

use crate::connection::{
    self, Command, Dialer, HandshakeParams, Link, Redial, ServerInfo, Settings, Shared,
};
use crate::error::{CloseReason, Error, Result};
use crate::options::{
    millis, millis_at_least_1, DeleteExchangeOptions, DeleteQueueOptions, ExchangeOptions,
    QueueOptions,
};
use crate::tls::TlsFiles;
use crate::url::{
    ConnectUrl, HostPort, DEFAULT_CONNECT_TIMEOUT_MS, DEFAULT_PASSWORD, DEFAULT_USERNAME,
};
use crate::wire::{
    Ack, Bind, DeclareQueueOk, DeliveryTag, ErrorCode, ExchangeKind, Extend, FrameBody, Headers,
    InspectQueue, InspectQueueOk, Nack, PurgeQueue, Reject, Reply, Request, Unbind,
};

/// Default prefetch window of consumers (see [`ClientBuilder::prefetch`]).
pub const DEFAULT_PREFETCH: u32 = 1000;
/// Default publisher window (see [`ClientBuilder::confirm_window`]).
pub const DEFAULT_CONFIRM_WINDOW: u32 = 1024;
/// Default time to wait for the answer to a request (see [`ClientBuilder::request_timeout`]).
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Default time a lost connection is dialed again for (see
/// [`ClientBuilder::reconnect_timeout`]).
pub const DEFAULT_RECONNECT_TIMEOUT: Duration = Duration::from_secs(60);

/// A connection to a Sluice broker.
///
/// `Client` is a cheap handle (two reference counts) to a background task that owns the
/// socket: clone it freely and use it from many tasks at once. Every call is pipelined; the
/// task matches answers to requests. The connection closes gracefully when [`close`](Self::close)
/// is called or when the last handle (clients, consumers, messages) is dropped.
///
/// ```no_run
/// # async fn example() -> sluice_client::Result<()> {
/// use sluice_client::{Client, PublishOptions, QueueOptions};
///
/// let client = Client::connect("sluice://localhost").await?;
/// client.declare_queue("tasks", QueueOptions::new()).await?;
/// client.publish("", "tasks", "job-1", &PublishOptions::new()).await?;
/// client.close().await?;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct Client {
    pub(crate) commands: mpsc::UnboundedSender<Command>,
    pub(crate) shared: Arc<Shared>,
    /// The connections to other nodes (replicated queues' leaders), shared by every handle
    /// of the client.
    pub(crate) router: Arc<Router>,
}

/// A connection to another node, made to follow a replicated queue's leader; held weakly, so
/// it closes once no consumer or message uses it.
struct WeakLink {
    commands: mpsc::WeakUnboundedSender<Command>,
    shared: Weak<Shared>,
}

/// How a client reaches the leaders of replicated queues (`NOT_LEADER`, `LEADER_MOVED`,
/// protocol.md §11): with the same credentials, vhost and TLS settings as the URL's hosts.
pub(crate) struct Router {
    /// `None` for a client over a stream of the caller's (`connect_stream`): it cannot dial.
    dialer: Option<Dialer>,
    settings: Settings,
    /// The connection to the URL's hosts (set once it is made).
    primary: std::sync::OnceLock<Weak<Shared>>,
    links: Mutex<HashMap<HostPort, WeakLink>>,
    /// One dial at a time, so that two requests sent to the same leader share a connection.
    dialing: tokio::sync::Mutex<()>,
}

impl Router {
    fn new(dialer: Option<Dialer>, settings: Settings) -> Arc<Router> {
        Arc::new(Router {
            dialer,
            settings,
            primary: std::sync::OnceLock::new(),
            links: Mutex::new(HashMap::new()),
            dialing: tokio::sync::Mutex::new(()),
        })
    }

    /// A live connection to `host`, if one is open.
    fn live(&self, host: &HostPort, router: &Arc<Router>) -> Option<Client> {
        let links = self.links.lock().unwrap_or_else(PoisonError::into_inner);
        let link = links.get(host)?;
        let client = Client {
            commands: link.commands.upgrade()?,
            shared: link.shared.upgrade()?,
            router: router.clone(),
        };
        (!client.is_closed()).then_some(client)
    }

    /// Every live connection to another node.
    fn all_live(&self, router: &Arc<Router>) -> Vec<Client> {
        let hosts: Vec<HostPort> = self
            .links
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .keys()
            .cloned()
            .collect();
        hosts.iter().filter_map(|h| self.live(h, router)).collect()
    }
}

/// Tries after a `NOT_LEADER` naming no leader (an election is going on) wait this long
/// first, doubling up to [`LEADER_RETRY_MAX`], within the reconnect timeout.
const LEADER_RETRY_FIRST: Duration = Duration::from_millis(100);
const LEADER_RETRY_MAX: Duration = Duration::from_secs(1);

/// What to do about a request's failure with respect to replicated queues' leaders.
pub(crate) enum Follow {
    /// Send the request again to this client (the leader, or the same node after a pause).
    Retry(Client),
    /// The failure stands.
    Fail(Error),
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("connection_id", &self.shared.info.connection_id)
            .field("closed", &self.shared.close_reason())
            .finish_non_exhaustive()
    }
}

/// Returns the body of a reply of the expected kind, or a protocol error.
macro_rules! expect_reply {
    ($reply:expr, $variant:ident) => {
        match $reply {
            Reply::$variant(body) => Ok(body),
            other => Err(unexpected_reply(other)),
        }
    };
    ($reply:expr, $variant:ident, empty) => {
        match $reply {
            Reply::$variant => Ok(()),
            other => Err(unexpected_reply(other)),
        }
    };
}

pub(crate) fn unexpected_reply(reply: Reply) -> Error {
    Error::Protocol(format!("unexpected reply {:?}", reply.opcode()))
}

impl Client {
    /// Connects with default settings. See [`ConnectUrl`] for the URL form; every part has a
    /// default (`sluice://` is `guest:guest@127.0.0.1:5680`).
    pub async fn connect(url: &str) -> Result<Client> {
        ClientBuilder::new().connect(url).await
    }

    /// A builder for connection settings.
    pub fn builder() -> ClientBuilder {
        ClientBuilder::new()
    }

    /// What the server agreed to in the handshake (of the first connection: after a
    /// reconnection, the settings agreed with the new server apply, but this stays).
    pub fn server_info(&self) -> &ServerInfo {
        &self.shared.info
    }

    /// True while the server refuses publishes (`Blocked`, e.g. low disk space). Publishes
    /// made meanwhile wait, and go out when the server sends `Unblocked`.
    pub fn is_blocked(&self) -> bool {
        self.shared.is_blocked()
    }

    /// True once the connection has ended.
    pub fn is_closed(&self) -> bool {
        self.shared.close_reason().is_some() || self.commands.is_closed()
    }

    /// Why the connection ended, once it has.
    pub fn close_reason(&self) -> Option<CloseReason> {
        self.shared.close_reason().cloned()
    }

    pub(crate) fn send(&self, command: Command) -> Result<()> {
        self.commands
            .send(command)
            .map_err(|_| self.shared.closed_error())
    }

    /// Waits for an answer from the task, within the request timeout.
    pub(crate) async fn wait<T>(&self, rx: oneshot::Receiver<Result<T>>) -> Result<T> {
        let after = self.shared.settings.request_timeout;
        match tokio::time::timeout(after, rx).await {
            Err(_) => Err(Error::Timeout {
                operation: "request",
                after,
            }),
            Ok(Err(_)) => Err(self.shared.closed_error()),
            Ok(Ok(result)) => result,
        }
    }

    /// Sends a request and waits for its answer.
    pub(crate) async fn call(&self, request: impl Into<Request>) -> Result<Reply> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::Call {
            request: request.into(),
            reply,
        })?;
        self.wait(rx).await
    }

    /// Sends a request that is not answered on success.
    pub(crate) fn send_request(&self, request: impl Into<Request>) -> Result<()> {
        self.send(Command::Send {
            request: request.into(),
            generation: None,
        })
    }

    /// Sends a request that names a delivery or consumer of connection generation
    /// `generation`: it is dropped if that connection was lost meanwhile.
    pub(crate) fn send_on(&self, generation: u64, request: impl Into<Request>) -> Result<()> {
        self.send(Command::Send {
            request: request.into(),
            generation: Some(generation),
        })
    }

    // ---- queues -----------------------------------------------------------------------

    /// Declares a queue: creates it, or checks that an existing one has the same settings
    /// (`PRECONDITION_FAILED` otherwise). An empty name asks the server to generate one; the
    /// answer carries it.
    pub async fn declare_queue(&self, name: &str, options: QueueOptions) -> Result<DeclareQueueOk> {
        let reply = self.call(options.into_request(name)).await?;
        expect_reply!(reply, DeclareQueueOk)
    }

    /// Deletes a queue with its messages; returns how many messages were deleted. Deleting a
    /// queue that does not exist succeeds with 0.
    pub async fn delete_queue(&self, name: &str, options: DeleteQueueOptions) -> Result<u64> {
        let reply = self.call(options.into_request(name)).await?;
        expect_reply!(reply, DeleteQueueOk).map(|ok| ok.messages)
    }

    /// Removes a queue's ready messages (delivered, unsettled ones stay); returns how many.
    pub async fn purge_queue(&self, name: &str) -> Result<u64> {
        let reply = self
            .call(PurgeQueue {
                name: name.to_owned(),
            })
            .await?;
        expect_reply!(reply, PurgeQueueOk).map(|ok| ok.messages)
    }

    /// Reads a queue's settings and counters.
    pub async fn inspect_queue(&self, name: &str) -> Result<InspectQueueOk> {
        let reply = self
            .call(InspectQueue {
                name: name.to_owned(),
            })
            .await?;
        expect_reply!(reply, InspectQueueOk)
    }

    // ---- exchanges and bindings -------------------------------------------------------

    /// Declares an exchange: creates it, or checks that an existing one matches.
    pub async fn declare_exchange(
        &self,
        name: &str,
        kind: ExchangeKind,
        options: ExchangeOptions,
    ) -> Result<()> {
        let reply = self.call(options.into_request(name, kind)).await?;
        expect_reply!(reply, DeclareExchangeOk, empty)
    }

    /// Deletes an exchange and its bindings. Deleting one that does not exist succeeds.
    pub async fn delete_exchange(&self, name: &str, options: DeleteExchangeOptions) -> Result<()> {
        let reply = self.call(options.into_request(name)).await?;
        expect_reply!(reply, DeleteExchangeOk, empty)
    }

    /// Binds `queue` to `exchange`. `routing_key` is the binding key (direct, topic);
    /// `arguments` are what a headers exchange matches (with `x-match`). Binding twice is a
    /// no-op.
    pub async fn bind(
        &self,
        queue: &str,
        exchange: &str,
        routing_key: &str,
        arguments: Headers,
    ) -> Result<()> {
        let reply = self
            .call(Bind {
                queue: queue.to_owned(),
                exchange: exchange.to_owned(),
                routing_key: routing_key.to_owned(),
                arguments,
            })
            .await?;
        expect_reply!(reply, BindOk, empty)
    }

    /// Removes a binding (same identity as in [`bind`](Self::bind)). Removing one that does
    /// not exist succeeds.
    pub async fn unbind(
        &self,
        queue: &str,
        exchange: &str,
        routing_key: &str,
        arguments: Headers,
    ) -> Result<()> {
        let reply = self
            .call(Unbind {
                queue: queue.to_owned(),
                exchange: exchange.to_owned(),
                routing_key: routing_key.to_owned(),
                arguments,
            })
            .await?;
        expect_reply!(reply, UnbindOk, empty)
    }

    // ---- settling by delivery tag -----------------------------------------------------
    //
    // Not answered on success; a failure (e.g. UNKNOWN_DELIVERY_TAG after a lease expired)
    // is logged. `Ok` means the request was queued for sending.

    /// Acks one delivery. Usually called as [`Message::ack`](crate::Message::ack).
    pub async fn ack(&self, delivery_tag: DeliveryTag) -> Result<()> {
        self.send_request(Ack {
            delivery_tag,
            multiple: false,
        })
    }

    /// Acks every outstanding delivery of this connection with a tag up to `up_to`, whatever
    /// consumer (or `get`) it came from. `DeliveryTag(0)` acks all of them.
    pub async fn ack_multiple(&self, up_to: DeliveryTag) -> Result<()> {
        self.send_request(Ack {
            delivery_tag: up_to,
            multiple: true,
        })
    }

    /// Nacks one delivery: back to its queue if `requeue`, else dead-lettered (or dropped).
    pub async fn nack(&self, delivery_tag: DeliveryTag, requeue: bool) -> Result<()> {
        self.send_request(Nack {
            delivery_tag,
            multiple: false,
            requeue,
            delay_ms: None,
            reason: None,
        })
    }

    /// Nacks one delivery and requeues it to be ready only after `delay`.
    pub async fn nack_with_delay(&self, delivery_tag: DeliveryTag, delay: Duration) -> Result<()> {
        self.send_request(Nack {
            delivery_tag,
            multiple: false,
            requeue: true,
            delay_ms: Some(millis(delay)),
            reason: None,
        })
    }

    /// Nacks every outstanding delivery of this connection with a tag up to `up_to`.
    pub async fn nack_multiple(&self, up_to: DeliveryTag, requeue: bool) -> Result<()> {
        self.send_request(Nack {
            delivery_tag: up_to,
            multiple: true,
            requeue,
            delay_ms: None,
            reason: None,
        })
    }

    /// Rejects one delivery: dead-lettered, or dropped if its queue has no dead-letter
    /// exchange.
    pub async fn reject(&self, delivery_tag: DeliveryTag) -> Result<()> {
        self.send_request(Reject {
            delivery_tag,
            reason: None,
        })
    }

    /// Moves a delivery's ack deadline to `by` from when the server reads the request;
    /// `Duration::ZERO` releases the delivery now (protocol.md §10.4).
    pub async fn extend(&self, delivery_tag: DeliveryTag, by: Duration) -> Result<()> {
        let extend_ms = if by.is_zero() {
            0
        } else {
            millis_at_least_1(by)
        };
        self.send_request(Extend {
            delivery_tag,
            extend_ms,
        })
    }

    // ---- closing ----------------------------------------------------------------------

    /// Closes the connection gracefully: `Close` is a barrier, so every message published
    /// before it is settled (its confirm or rejection delivered) before this returns.
    /// Consumers' streams end; their unsettled deliveries return to their queues. The
    /// connections the client opened to other nodes (replicated queues' leaders) close too.
    ///
    /// Idempotent: closing a closed connection returns `Ok`. Fails with
    /// [`Error::Timeout`] if the server does not answer within 5 seconds.
    pub async fn close(&self) -> Result<()> {
        for link in self.router.all_live(&self.router) {
            if !Arc::ptr_eq(&link.shared, &self.shared) {
                let _ = link.close_one().await;
            }
        }
        self.close_one().await
    }

    async fn close_one(&self) -> Result<()> {
        let (reply, rx) = oneshot::channel();
        if self.send(Command::Close { reply }).is_err() {
            return Ok(());
        }
        rx.await.unwrap_or(Ok(()))
    }

    /// The generation of the current connection (see `connection`).
    pub(crate) fn generation(&self) -> u64 {
        self.shared.generation()
    }

    /// How long the client tries to reconnect (zero: it does not).
    pub(crate) fn router_settings_reconnect(&self) -> Duration {
        self.router.settings.reconnect_timeout
    }

    /// Whether the connection to the URL's hosts has ended (or every handle to it is gone).
    pub(crate) fn home_is_closed(&self) -> bool {
        match self.router.primary.get().and_then(Weak::upgrade) {
            Some(shared) => shared.close_reason().is_some(),
            None => true,
        }
    }

    /// Decides what a request that failed with `error` does next, on its `attempt`th try:
    /// `NOT_LEADER` naming a leader goes there (a connection to it is opened, or reused);
    /// naming none, it waits and tries this node again (within the reconnect timeout); a
    /// connection lost while this client reconnects is tried again on the new one.
    pub(crate) async fn follow(&self, error: Error, attempt: u32) -> Follow {
        let settings = &self.router.settings;
        let patience = settings.reconnect_timeout;
        let pause = LEADER_RETRY_FIRST
            .saturating_mul(1 << attempt.min(10))
            .min(LEADER_RETRY_MAX);
        if patience.is_zero() || pause.saturating_mul(attempt) > patience {
            return Follow::Fail(error);
        }
        match &error {
            Error::Server {
                code: ErrorCode::NotLeader,
                message,
            } if message.is_empty() => {
                tokio::time::sleep(pause).await;
                Follow::Retry(self.clone())
            }
            Error::Server {
                code: ErrorCode::NotLeader,
                message,
            } => match HostPort::parse(message) {
                Ok(host) => match self.leader(host).await {
                    Ok(client) => Follow::Retry(client),
                    Err(_) => {
                        tokio::time::sleep(pause).await;
                        Follow::Retry(self.clone())
                    }
                },
                Err(_) => Follow::Fail(error),
            },
            // Lost while the task reconnects: the request can go again on the new connection.
            Error::ConnectionClosed(reason)
                if !self.is_closed() && !matches!(reason, CloseReason::Normal) =>
            {
                Follow::Retry(self.clone())
            }
            _ => Follow::Fail(error),
        }
    }

    /// A connection to the node at `host` (a replicated queue's leader): an open one, or a
    /// new one with the same credentials, vhost and TLS settings. It does not reconnect:
    /// when it is lost, its consumers consume again through this client.
    pub(crate) async fn leader(&self, host: HostPort) -> Result<Client> {
        let router = &self.router;
        if let Some(client) = router.live(&host, router) {
            return Ok(client);
        }
        let _dialing = router.dialing.lock().await;
        if let Some(client) = router.live(&host, router) {
            return Ok(client);
        }
        let Some(dialer) = &router.dialer else {
            return Err(Error::Server {
                code: ErrorCode::NotLeader,
                message: host.to_string(),
            });
        };
        let link = dialer.for_host(host.clone()).dial(&host, None).await?;
        let mut settings = router.settings.clone();
        settings.reconnect_timeout = Duration::ZERO;
        let (commands, shared) = connection::spawn(link, settings, None);
        router
            .links
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(
                host,
                WeakLink {
                    commands: commands.downgrade(),
                    shared: Arc::downgrade(&shared),
                },
            );
        Ok(Client {
            commands,
            shared,
            router: router.clone(),
        })
    }
}

/// Connection settings. Parameters in the URL win over the builder's, which win over the
/// defaults.
///
/// ```no_run
/// # async fn example() -> sluice_client::Result<()> {
/// use std::time::Duration;
/// use sluice_client::Client;
///
/// let client = Client::builder()
///     .name("billing-worker")
///     .heartbeat(Duration::from_secs(10))
///     .prefetch(200)
///     .connect("sluice://app:secret@mq.internal")
///     .await?;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct ClientBuilder {
    username: Option<String>,
    password: Option<String>,
    name: Option<String>,
    vhost: Option<String>,
    heartbeat: Option<Duration>,
    max_frame_len: Option<u32>,
    connect_timeout: Option<Duration>,
    request_timeout: Duration,
    prefetch: u32,
    confirm_window: u32,
    reconnect_timeout: Duration,
    resend_ids: bool,
    tls: TlsFiles,
}

impl fmt::Debug for ClientBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientBuilder")
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("name", &self.name)
            .field("vhost", &self.vhost)
            .field("heartbeat", &self.heartbeat)
            .field("max_frame_len", &self.max_frame_len)
            .field("connect_timeout", &self.connect_timeout)
            .field("request_timeout", &self.request_timeout)
            .field("prefetch", &self.prefetch)
            .field("confirm_window", &self.confirm_window)
            .field("reconnect_timeout", &self.reconnect_timeout)
            .field("resend", &self.resend_ids)
            .field("tls", &self.tls)
            .finish()
    }
}

impl Default for ClientBuilder {
    fn default() -> Self {
        ClientBuilder {
            username: None,
            password: None,
            name: None,
            vhost: None,
            heartbeat: None,
            max_frame_len: None,
            connect_timeout: None,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            prefetch: DEFAULT_PREFETCH,
            confirm_window: DEFAULT_CONFIRM_WINDOW,
            reconnect_timeout: DEFAULT_RECONNECT_TIMEOUT,
            resend_ids: false,
            tls: TlsFiles::default(),
        }
    }
}

impl ClientBuilder {
    /// Default settings.
    pub fn new() -> Self {
        Self::default()
    }

    /// Credentials, used when the URL has no user info (default `guest` / `guest`).
    pub fn credentials(mut self, username: impl Into<String>, password: impl Into<String>) -> Self {
        self.username = Some(username.into());
        self.password = Some(password.into());
        self
    }

    /// Connection name shown by the server's admin API (URL parameter `name`).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// The vhost to work in, used when the URL's path names none (default `/`).
    pub fn vhost(mut self, vhost: impl Into<String>) -> Self {
        self.vhost = Some(vhost.into());
        self
    }

    /// Heartbeat interval to propose (URL `heartbeat_ms`); the server clamps it to its range.
    /// Without it the server chooses (30 s by default).
    pub fn heartbeat(mut self, interval: Duration) -> Self {
        self.heartbeat = Some(interval);
        self
    }

    /// Largest frame the client wants to receive (URL `max_frame_len`); the server never
    /// agrees to less than 64 KiB. Without it the server chooses (17 MiB by default).
    pub fn max_frame_len(mut self, max_frame_len: u32) -> Self {
        self.max_frame_len = Some(max_frame_len);
        self
    }

    /// Time allowed for the TCP connect plus the handshake (URL `connect_timeout_ms`,
    /// default 10 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = Some(timeout);
        self
    }

    /// Time to wait for the answer to a request (declare, bind, consume, get, ...; default
    /// 30 s). Publish confirms are not limited: a blocked server may hold them for long.
    /// `Duration::MAX` waits forever.
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// Default prefetch window of consumers (default 1000; 0 = no limit).
    pub fn prefetch(mut self, prefetch: u32) -> Self {
        self.prefetch = prefetch;
        self
    }

    /// Default window of a [`Publisher`](crate::Publisher): how many messages may await their
    /// confirm at once (default 1024, at least 1).
    pub fn confirm_window(mut self, messages: u32) -> Self {
        self.confirm_window = messages.max(1);
        self
    }

    /// How long to try to reconnect after the connection is lost (EOF, reset, heartbeat
    /// timeout, or the server closing it with `CONNECTION_FORCED`; default 60 s).
    /// `Duration::ZERO` turns reconnection off: the connection then ends as before, failing
    /// what it carried.
    ///
    /// While it reconnects (the URL's next host first, then round-robin, backing off with
    /// jitter) calls wait: requests go out on the new connection (those already sent fail
    /// with [`Error::ConnectionClosed`]), publishes too, and every message not confirmed yet
    /// is published again, in order; its outcome is the new connection's. Consumers consume
    /// again (same queue and options) and their streams go on. A [`Message`](crate::Message)
    /// of the lost connection cannot be settled any more ([`Error::DeliveryLost`]): it will be
    /// delivered again. If no host answers in time, everything fails as without
    /// reconnection.
    pub fn reconnect_timeout(mut self, timeout: Duration) -> Self {
        self.reconnect_timeout = timeout;
        self
    }

    /// With `true`, every published message without a `message_id` gets a fresh unique one
    /// (meta `message_id`, protocol.md §8.1), so that a queue with a dedup window
    /// ([`QueueOptions::dedup_window`](crate::QueueOptions)) stores a message published again
    /// after a reconnection once; the second copy is confirmed as
    /// [`Confirmed::Duplicate`](crate::Confirmed). Default `false`.
    pub fn resend(mut self, ids: bool) -> Self {
        self.resend_ids = ids;
        self
    }

    /// For `sluices://`: trust the CA certificates of this PEM file instead of the system's
    /// roots (URL `ca_file`).
    pub fn tls_ca_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.tls.ca_file = Some(path.into());
        self
    }

    /// For `sluices://` to servers that require mutual TLS: present this certificate chain
    /// with its private key, both PEM files (URL `cert_file` and `key_file`).
    pub fn tls_client_cert(mut self, cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        self.tls.client_cert = Some((cert.into(), key.into()));
        self
    }

    /// Parses `url` and connects.
    pub async fn connect(self, url: &str) -> Result<Client> {
        let url = ConnectUrl::parse(url)?;
        self.connect_url(&url).await
    }

    /// Connects to a parsed URL: to its first host that answers, tried in order.
    pub async fn connect_url(self, url: &ConnectUrl) -> Result<Client> {
        let dialer = Dialer {
            hosts: url.hosts().to_vec(),
            tls: url.is_tls().then(|| self.tls_files(url)),
            params: self.handshake_params(Some(url)),
            connect_timeout: self.connect_timeout_for(Some(url)),
        };
        let settings = self.settings();
        let (link, current) = dialer.dial_first().await?;
        let router = Router::new(Some(dialer.clone()), settings.clone());
        let redial = Redial { dialer, current };
        let (commands, shared) = connection::spawn(link, settings, Some(redial));
        let _ = router.primary.set(Arc::downgrade(&shared));
        Ok(Client {
            commands,
            shared,
            router,
        })
    }

    /// Runs the protocol over an already connected stream (a Unix socket, a TLS stream of
    /// your own, an in-memory pipe in tests). Uses the builder's settings; there is no URL.
    pub async fn connect_stream<S>(self, stream: S) -> Result<Client>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let params = self.handshake_params(None);
        let timeout = self.connect_timeout_for(None);
        let settings = self.settings();
        let connect = async move {
            let link = Link::over(stream, &params).await?;
            let router = Router::new(None, settings.clone());
            // The stream is the caller's: there is nothing to dial again.
            let (commands, shared) = connection::spawn(link, settings, None);
            let _ = router.primary.set(Arc::downgrade(&shared));
            Ok(Client {
                commands,
                shared,
                router,
            })
        };
        tokio::time::timeout(timeout, connect)
            .await
            .map_err(|_| Error::Timeout {
                operation: "connect",
                after: timeout,
            })?
    }

    fn handshake_params(&self, url: Option<&ConnectUrl>) -> HandshakeParams {
        let (username, password) = match url.and_then(|u| u.username().zip(u.password())) {
            Some((user, password)) => (user.to_owned(), password.to_owned()),
            None => (
                self.username
                    .clone()
                    .unwrap_or_else(|| DEFAULT_USERNAME.to_owned()),
                self.password
                    .clone()
                    .unwrap_or_else(|| DEFAULT_PASSWORD.to_owned()),
            ),
        };
        let heartbeat_ms = url.and_then(ConnectUrl::heartbeat_ms).unwrap_or_else(|| {
            self.heartbeat
                .map_or(0, |h| u32::try_from(millis(h)).unwrap_or(u32::MAX))
        });
        HandshakeParams {
            username,
            password,
            heartbeat_ms,
            max_frame_len: url
                .and_then(ConnectUrl::max_frame_len)
                .or(self.max_frame_len)
                .unwrap_or(0),
            connection_name: url
                .and_then(ConnectUrl::name)
                .map(str::to_owned)
                .or_else(|| self.name.clone()),
            vhost: url
                .and_then(ConnectUrl::vhost)
                .map(str::to_owned)
                .or_else(|| self.vhost.clone()),
        }
    }

    /// The URL's TLS files, else the builder's; a client certificate comes whole from one.
    fn tls_files(&self, url: &ConnectUrl) -> TlsFiles {
        let url_cert = url
            .cert_file()
            .zip(url.key_file())
            .map(|(cert, key)| (cert.to_owned(), key.to_owned()));
        TlsFiles {
            ca_file: url
                .ca_file()
                .map(Path::to_owned)
                .or_else(|| self.tls.ca_file.clone()),
            client_cert: url_cert.or_else(|| self.tls.client_cert.clone()),
        }
    }

    fn connect_timeout_for(&self, url: Option<&ConnectUrl>) -> Duration {
        url.and_then(ConnectUrl::connect_timeout_ms)
            .map(Duration::from_millis)
            .or(self.connect_timeout)
            .unwrap_or(Duration::from_millis(DEFAULT_CONNECT_TIMEOUT_MS))
    }

    fn settings(&self) -> Settings {
        Settings {
            request_timeout: self.request_timeout,
            prefetch: self.prefetch,
            confirm_window: self.confirm_window,
            reconnect_timeout: self.reconnect_timeout,
            resend_ids: self.resend_ids,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_parameters_win_over_builder_settings() {
        let builder = ClientBuilder::new()
            .credentials("builder", "pw")
            .name("from-builder")
            .heartbeat(Duration::from_secs(5))
            .max_frame_len(100_000)
            .connect_timeout(Duration::from_secs(1));
        let plain = ConnectUrl::parse("sluice://host").unwrap();
        let params = builder.handshake_params(Some(&plain));
        assert_eq!(
            (params.username.as_str(), params.password.as_str()),
            ("builder", "pw")
        );
        assert_eq!(params.heartbeat_ms, 5000);
        assert_eq!(params.max_frame_len, 100_000);
        assert_eq!(params.connection_name.as_deref(), Some("from-builder"));
        assert_eq!(
            builder.connect_timeout_for(Some(&plain)),
            Duration::from_secs(1)
        );

        let full = ConnectUrl::parse(
            "sluice://u:p@host?heartbeat_ms=0&max_frame_len=70000&name=url&connect_timeout_ms=7",
        )
        .unwrap();
        let params = builder.handshake_params(Some(&full));
        assert_eq!(
            (params.username.as_str(), params.password.as_str()),
            ("u", "p")
        );
        assert_eq!(params.heartbeat_ms, 0);
        assert_eq!(params.max_frame_len, 70_000);
        assert_eq!(params.connection_name.as_deref(), Some("url"));
        assert_eq!(params.vhost, None);
        let with_vhost = ConnectUrl::parse("sluice://host/%2F").unwrap();
        assert_eq!(
            builder
                .clone()
                .vhost("from-builder")
                .handshake_params(Some(&with_vhost))
                .vhost
                .as_deref(),
            Some("/")
        );
        assert_eq!(
            builder
                .clone()
                .vhost("b")
                .handshake_params(Some(&plain))
                .vhost
                .as_deref(),
            Some("b")
        );
        assert_eq!(
            builder.connect_timeout_for(Some(&full)),
            Duration::from_millis(7)
        );
    }

    #[test]
    fn tls_files_come_from_the_url_else_from_the_builder() {
        let builder = ClientBuilder::new()
            .tls_ca_file("builder-ca.pem")
            .tls_client_cert("builder.pem", "builder.key");
        let url = ConnectUrl::parse("sluices://h").unwrap();
        let files = builder.tls_files(&url);
        assert_eq!(files.ca_file, Some(PathBuf::from("builder-ca.pem")));
        assert_eq!(
            files.client_cert,
            Some((PathBuf::from("builder.pem"), PathBuf::from("builder.key")))
        );
        let url =
            ConnectUrl::parse("sluices://h?ca_file=url-ca.pem&cert_file=u.pem&key_file=u.key")
                .unwrap();
        let files = builder.tls_files(&url);
        assert_eq!(files.ca_file, Some(PathBuf::from("url-ca.pem")));
        assert_eq!(
            files.client_cert,
            Some((PathBuf::from("u.pem"), PathBuf::from("u.key")))
        );
        assert_eq!(
            ClientBuilder::new().tls_files(&ConnectUrl::parse("sluices://h").unwrap()),
            TlsFiles::default()
        );
    }

    #[test]
    fn defaults_without_url_or_builder_settings() {
        let builder = ClientBuilder::new();
        let params = builder.handshake_params(None);
        assert_eq!(
            (params.username.as_str(), params.password.as_str()),
            ("guest", "guest")
        );
        assert_eq!((params.heartbeat_ms, params.max_frame_len), (0, 0));
        assert_eq!(params.connection_name, None);
        assert_eq!(params.vhost, None);
        assert_eq!(builder.connect_timeout_for(None), Duration::from_secs(10));
        assert!(!format!("{:?}", builder.credentials("u", "hunter2")).contains("hunter2"));
    }
}
