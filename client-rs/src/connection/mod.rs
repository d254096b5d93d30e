//! The connection: the handshake, then one background task that owns the socket.
//!
//! [`Client`](crate::Client) handles talk to the task through an unbounded channel of
//! [`Command`]s. The task assigns request ids, encodes frames into one write buffer (packing
//! consecutive publishes into shared `Publish` frames), writes the buffer in as few system
//! calls as it can, decodes every frame the server sent, and routes each one: replies to the
//! request's oneshot, confirms and rejections to the publish tracker, deliveries to their
//! consumer's channel. When the connection ends, every waiter gets the reason.
//!
//! Memory is bounded by the protocol's windows rather than by the channel: a request waits for
//! its reply, a publisher for its confirm window, and a consumer's prefetch bounds what the
//! server sends.
//!
//! With reconnection on, a lost connection (EOF, reset, heartbeat timeout, `Close` with
//! `CONNECTION_FORCED`) does not end the task: it dials the URL's hosts again (the next one
//! first, backing off with jitter, within `reconnect_timeout`), holding the commands that
//! arrive meanwhile, then writes every unconfirmed publish again and carries on. Each loss
//! starts a new *generation*: deliveries of an earlier one cannot be settled any more
//! (`DeliveryLost`), and consumers hear `Lost` and consume again (see `consumer`).

mod dial;
mod outbuf;
mod publishes;
mod task;
#[cfg(test)]
mod tests;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};

use crate::error::{CloseReason, Error, Result};
use crate::wire::{
    Consume, ConsumeOk, ConsumerId, Delivery, DeliveryTag, Frame, FrameDecoder, Headers, Hello,
    PublishMessage, Reply, Request, RequestId, Welcome, FRAME_OVERHEAD_RESERVE,
    HANDSHAKE_MAX_FRAME_LEN, MIN_MAX_FRAME_LEN, PROTOCOL_VERSION,
};

pub(crate) use dial::{Dialer, Link};
pub(crate) use publishes::PublishSink;

/// What the server agreed to in the handshake (`Welcome`, protocol.md §5.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerInfo {
    /// The server's number for this connection (logs, admin API).
    pub connection_id: u64,
    /// The protocol version spoken.
    pub version: u16,
    /// Agreed heartbeat interval; `None` when heartbeats are off.
    pub heartbeat: Option<Duration>,
    /// Largest frame either side may send.
    pub max_frame_len: u32,
    /// Largest message (meta block plus body) the server accepts.
    pub max_message_len: usize,
    /// The server's `product`, `version`, ...
    pub properties: Headers,
}

impl ServerInfo {
    fn from_welcome(welcome: Welcome) -> Self {
        // A message of the maximum size must fit one frame; do not trust a server that says
        // otherwise (protocol.md §5.2 step 5).
        let max_message_len = welcome
            .max_message_len
            .min(welcome.max_frame_len.saturating_sub(FRAME_OVERHEAD_RESERVE));
        ServerInfo {
            connection_id: welcome.connection_id,
            version: welcome.version,
            heartbeat: (welcome.heartbeat_ms > 0)
                .then(|| Duration::from_millis(u64::from(welcome.heartbeat_ms))),
            max_frame_len: welcome.max_frame_len,
            max_message_len: max_message_len as usize,
            properties: welcome.server_properties,
        }
    }
}

/// Client-side settings that apply after the handshake.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub(crate) request_timeout: Duration,
    pub(crate) prefetch: u32,
    pub(crate) confirm_window: u32,
    /// How long to try to reconnect after a lost connection; zero: never.
    pub(crate) reconnect_timeout: Duration,
    /// Put a fresh `message_id` on every published message that has none, so that a queue
    /// with a dedup window keeps a resent message single.
    pub(crate) resend_ids: bool,
}

impl Settings {
    /// Whether the connection reconnects (and so keeps published messages until confirmed).
    pub(crate) fn reconnects(&self) -> bool {
        !self.reconnect_timeout.is_zero()
    }
}

/// State shared by the task and every handle.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) info: ServerInfo,
    pub(crate) settings: Settings,
    blocked: AtomicBool,
    /// Counts lost connections: a delivery is settled only on the generation it came from.
    generation: AtomicU64,
    /// Set once, by the task, just before it stops reading commands.
    closed: OnceLock<CloseReason>,
}

impl Shared {
    pub(crate) fn new(info: ServerInfo, settings: Settings) -> Self {
        Shared {
            info,
            settings,
            blocked: AtomicBool::new(false),
            generation: AtomicU64::new(0),
            closed: OnceLock::new(),
        }
    }

    pub(crate) fn is_blocked(&self) -> bool {
        self.blocked.load(Ordering::Relaxed)
    }

    fn set_blocked(&self, blocked: bool) {
        self.blocked.store(blocked, Ordering::Relaxed);
    }

    /// The current connection's generation (see the module documentation).
    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    fn next_generation(&self) -> u64 {
        self.generation.fetch_add(1, Ordering::AcqRel) + 1
    }

    pub(crate) fn close_reason(&self) -> Option<&CloseReason> {
        self.closed.get()
    }

    /// The error for an operation attempted after the connection ended.
    pub(crate) fn closed_error(&self) -> Error {
        Error::ConnectionClosed(self.closed.get().cloned().unwrap_or(CloseReason::Aborted))
    }
}

/// Messages for one publish command.
#[derive(Debug)]
pub(crate) enum Batch {
    One(PublishMessage),
    Many(Vec<PublishMessage>),
}

impl Batch {
    pub(crate) fn as_slice(&self) -> &[PublishMessage] {
        match self {
            Batch::One(m) => std::slice::from_ref(m),
            Batch::Many(v) => v,
        }
    }
}

/// What a consumer's stream receives.
#[derive(Debug)]
pub(crate) enum ConsumerEvent {
    /// One `Deliver` frame's deliveries, in tag order (their meta blocks are validated), on
    /// connection generation `generation`.
    Deliveries {
        generation: u64,
        deliveries: Vec<Delivery>,
    },
    /// The consumer's circuit changed state (circuit breaking).
    Circuit(crate::wire::ConsumerCircuit),
    /// The connection was lost and the task is reconnecting: consume again.
    Lost,
    /// The consumer was stopped by the server, or the connection failed: the stream ends
    /// (unless it can consume again elsewhere: `LEADER_MOVED`).
    Ended(Error),
}

/// The answer to a `Consume` command: the server's, and the generation it came on.
#[derive(Debug)]
pub(crate) struct Subscribed {
    pub(crate) ok: ConsumeOk,
    pub(crate) generation: u64,
}

/// A request from a handle to the connection task.
#[derive(Debug)]
pub(crate) enum Command {
    /// A request the server answers (or fails with `Error`).
    Call {
        request: Request,
        reply: oneshot::Sender<Result<Reply>>,
    },
    /// A request not answered on success: `Ack`, `Nack`, `Reject`, `Extend`, `SetPrefetch`.
    /// A failure is only logged. With a generation, it is dropped unless the connection is
    /// still that one (a delivery tag or consumer id means nothing on another).
    Send {
        request: Request,
        generation: Option<u64>,
    },
    /// A settle request (`Ack`, `Nack`, `Reject`, `Extend`) of a delivery from `queue`, whose
    /// outcome goes to `reply`: its `Error`, or `Ok` once the answer to an `InspectQueue` of
    /// the same queue, sent right after it, proves that it succeeded (protocol.md §10).
    Settle {
        request: Request,
        queue: Arc<str>,
        /// The delivery's generation: on another one the settle fails with `DeliveryLost`.
        generation: u64,
        reply: oneshot::Sender<Result<()>>,
    },
    /// Messages to publish; their outcome goes to `sink`.
    Publish { batch: Batch, sink: PublishSink },
    /// Starts a consumer whose deliveries go to `events`.
    Consume {
        request: Consume,
        events: mpsc::UnboundedSender<ConsumerEvent>,
        reply: oneshot::Sender<Result<Subscribed>>,
    },
    /// Stops a consumer of generation `generation`; its stream ends after `CancelOk`.
    Cancel {
        consumer: ConsumerId,
        generation: u64,
        reply: oneshot::Sender<Result<()>>,
    },
    /// A consumer's stream was dropped: requeue the deliveries it still held and cancel it
    /// (if they and it are of generation `generation`).
    Release {
        consumer: ConsumerId,
        generation: u64,
        requeue: Vec<DeliveryTag>,
    },
    /// Closes the connection gracefully.
    Close { reply: oneshot::Sender<Result<()>> },
}

/// Parameters of the handshake.
#[derive(Clone)]
pub(crate) struct HandshakeParams {
    pub(crate) username: String,
    pub(crate) password: String,
    pub(crate) heartbeat_ms: u32,
    pub(crate) max_frame_len: u32,
    pub(crate) connection_name: Option<String>,
    /// Sent as the `vhost` client property; none means the server's default, `/`.
    pub(crate) vhost: Option<String>,
}

impl std::fmt::Debug for HandshakeParams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HandshakeParams")
            .field("username", &self.username)
            .field("heartbeat_ms", &self.heartbeat_ms)
            .field("max_frame_len", &self.max_frame_len)
            .field("connection_name", &self.connection_name)
            .field("vhost", &self.vhost)
            .finish_non_exhaustive()
    }
}

impl HandshakeParams {
    fn hello(&self) -> Hello {
        let mut client_properties: Headers = vec![
            ("product".into(), "sluice-client-rs".into()),
            ("version".into(), env!("CARGO_PKG_VERSION").into()),
            ("platform".into(), "rust".into()),
        ];
        if let Some(name) = &self.connection_name {
            client_properties.push(("connection_name".into(), name.as_str().into()));
        }
        if let Some(vhost) = &self.vhost {
            client_properties.push(("vhost".into(), vhost.as_str().into()));
        }
        Hello {
            min_version: PROTOCOL_VERSION,
            max_version: PROTOCOL_VERSION,
            username: self.username.clone(),
            password: self.password.clone(),
            heartbeat_ms: self.heartbeat_ms,
            max_frame_len: self.max_frame_len,
            client_properties,
        }
    }
}

/// Sends `Hello` and waits for `Welcome` (protocol.md §5.2). Returns the agreed parameters and
/// whatever was read past the `Welcome` frame.
pub(crate) async fn handshake<S>(
    io: &mut S,
    params: &HandshakeParams,
) -> Result<(Welcome, BytesMut)>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    const HELLO_ID: RequestId = RequestId(1);
    let mut out = BytesMut::new();
    Frame::<Request>::new(HELLO_ID, params.hello()).encode(&mut out, HANDSHAKE_MAX_FRAME_LEN)?;
    io.write_all(&out).await?;
    io.flush().await?;

    let decoder = FrameDecoder::new(HANDSHAKE_MAX_FRAME_LEN);
    let mut rbuf = BytesMut::with_capacity(4096);
    loop {
        if let Some(frame) = decoder.decode::<Reply>(&mut rbuf)? {
            return match frame.body {
                Reply::Welcome(welcome) if frame.request_id == HELLO_ID => {
                    if welcome.version != PROTOCOL_VERSION {
                        return Err(Error::Protocol(format!(
                            "server chose protocol version {}, this client speaks {}",
                            welcome.version, PROTOCOL_VERSION
                        )));
                    }
                    if welcome.max_frame_len < MIN_MAX_FRAME_LEN {
                        return Err(Error::Protocol(format!(
                            "server agreed to a maximum frame length of {}, below {}",
                            welcome.max_frame_len, MIN_MAX_FRAME_LEN
                        )));
                    }
                    Ok((welcome, rbuf))
                }
                Reply::Close(close) => {
                    // Answer politely; the server is closing the socket anyway.
                    let mut ok = BytesMut::new();
                    Frame::<Request>::new(frame.request_id, Request::CloseOk)
                        .encode(&mut ok, HANDSHAKE_MAX_FRAME_LEN)?;
                    let _ = io.write_all(&ok).await;
                    Err(Error::ConnectionClosed(close.into()))
                }
                other => Err(Error::Protocol(format!(
                    "expected Welcome, got {:?} (request {})",
                    crate::wire::FrameBody::opcode(&other),
                    frame.request_id
                ))),
            };
        }
        if io.read_buf(&mut rbuf).await? == 0 {
            return Err(Error::ConnectionClosed(CloseReason::Io(Arc::new(
                std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "server closed the connection during the handshake",
                ),
            ))));
        }
    }
}

/// Where a connection that reconnects dials, and which of its hosts it is on.
#[derive(Debug)]
pub(crate) struct Redial {
    pub(crate) dialer: Dialer,
    /// Index in `dialer.hosts` of the host of the current connection.
    pub(crate) current: usize,
}

/// Starts the connection task over a connected, handshaken stream. With `redial` (and a
/// non-zero `reconnect_timeout`) it reconnects when the connection is lost.
pub(crate) fn spawn(
    link: Link,
    settings: Settings,
    redial: Option<Redial>,
) -> (mpsc::UnboundedSender<Command>, Arc<Shared>) {
    let redial = redial.filter(|_| settings.reconnects());
    let shared = Arc::new(Shared::new(
        ServerInfo::from_welcome(link.welcome.clone()),
        settings,
    ));
    let (tx, rx) = mpsc::unbounded_channel();
    let task = task::Task::new(link, rx, shared.clone(), redial);
    tokio::spawn(task.run());
    (tx, shared)
}
