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

mod outbuf;
mod publishes;
mod task;
#[cfg(test)]
mod tests;

use std::sync::atomic::{AtomicBool, Ordering};
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
}

/// State shared by the task and every handle.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) info: ServerInfo,
    pub(crate) settings: Settings,
    blocked: AtomicBool,
    /// Set once, by the task, just before it stops reading commands.
    closed: OnceLock<CloseReason>,
}

impl Shared {
    pub(crate) fn new(info: ServerInfo, settings: Settings) -> Self {
        Shared {
            info,
            settings,
            blocked: AtomicBool::new(false),
            closed: OnceLock::new(),
        }
    }

    pub(crate) fn is_blocked(&self) -> bool {
        self.blocked.load(Ordering::Relaxed)
    }

    fn set_blocked(&self, blocked: bool) {
        self.blocked.store(blocked, Ordering::Relaxed);
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
    /// One `Deliver` frame's deliveries, in tag order (their meta blocks are validated).
    Deliveries(Vec<Delivery>),
    /// The consumer was stopped by the server, or the connection failed: the stream ends.
    Ended(Error),
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
    /// A failure is only logged.
    Send(Request),
    /// A settle request (`Ack`, `Nack`, `Reject`, `Extend`) of a delivery from `queue`, whose
    /// outcome goes to `reply`: its `Error`, or `Ok` once the answer to an `InspectQueue` of
    /// the same queue, sent right after it, proves that it succeeded (protocol.md §10).
    Settle {
        request: Request,
        queue: Arc<str>,
        reply: oneshot::Sender<Result<()>>,
    },
    /// Messages to publish; their outcome goes to `sink`.
    Publish { batch: Batch, sink: PublishSink },
    /// Starts a consumer whose deliveries go to `events`.
    Consume {
        request: Consume,
        events: mpsc::UnboundedSender<ConsumerEvent>,
        reply: oneshot::Sender<Result<ConsumeOk>>,
    },
    /// Stops a consumer; its stream ends after `CancelOk`.
    Cancel {
        consumer: ConsumerId,
        reply: oneshot::Sender<Result<()>>,
    },
    /// A consumer's stream was dropped: requeue the deliveries it still held and cancel it.
    Release {
        consumer: ConsumerId,
        requeue: Vec<DeliveryTag>,
    },
    /// Closes the connection gracefully.
    Close { reply: oneshot::Sender<Result<()>> },
}

/// Parameters of the handshake.
#[derive(Debug, Clone)]
pub(crate) struct HandshakeParams {
    pub(crate) username: String,
    pub(crate) password: String,
    pub(crate) heartbeat_ms: u32,
    pub(crate) max_frame_len: u32,
    pub(crate) connection_name: Option<String>,
    /// Sent as the `vhost` client property; none means the server's default, `/`.
    pub(crate) vhost: Option<String>,
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

/// Starts the connection task over the two halves of a connected, handshaken stream.
pub(crate) fn spawn<R, W>(
    reader: R,
    writer: W,
    leftover: BytesMut,
    welcome: Welcome,
    settings: Settings,
) -> (mpsc::UnboundedSender<Command>, Arc<Shared>)
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let shared = Arc::new(Shared::new(ServerInfo::from_welcome(welcome), settings));
    let (tx, rx) = mpsc::unbounded_channel();
    let task = task::Task::new(reader, writer, leftover, rx, shared.clone());
    tokio::spawn(task.run());
    (tx, shared)
}
