//! One client connection: the handshake, then three tasks.
//!
//! A client of the TLS port first completes the TLS handshake ([`crate::tls`]); everything
//! after it is generic over the socket's two halves, so plain connections keep tokio's
//! lock-free owned halves of the `TcpStream`.
//!
//! - the **reader** reads the socket into a buffer and decodes every complete frame it holds
//!   before it hands them on as one batch (the frame length is checked before any buffer is
//!   reserved, in [`FrameDecoder`]);
//! - the **session** (`session.rs`) owns the connection's state and turns requests and queue
//!   events into replies;
//! - the **writer** writes what the session encoded, coalescing what has queued up.
//!
//! Every byte on its way to the socket is counted in the connection's [`Outbox`], from the
//! queue or session that produced it to the writer that wrote it: a peer that stops reading
//! holds at most about [`Outbox::HIGH_WATER`] bytes of the broker's memory (`output.rs`).
//!
//! Once its handshake succeeded a connection is listed in the server's [`ConnectionRegistry`]
//! until it ends; the three tasks count what they move in its entry, and operators reach its
//! session through it ([`Control`]: close the connection, cancel a consumer).

mod access;
pub(crate) mod limits;
mod output;
pub(crate) mod registry;
mod session;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use sluice_client::wire::{
    Close, DecodeError, ErrorCode, Frame, FrameDecoder, HeaderValue, Hello, Opcode, Reply, Request,
    RequestId, Welcome, FRAME_OVERHEAD_RESERVE, HANDSHAKE_MAX_FRAME_LEN, MIN_MAX_FRAME_LEN,
    PROTOCOL_VERSION,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit};
use tokio::time::Instant as Deadline;
use tokio_rustls::TlsAcceptor;

use crate::auth::{LoginRefused, Principal, VhostName};
use crate::broker::Broker;
use crate::queue::Outbox;
use output::{Output, WRITER_CHUNKS};
pub(crate) use registry::{
    ClientIdentity, ConnectionEntry, ConnectionRegistry, ConnectionStats, Control,
};

/// Oldest protocol version this server speaks.
const MIN_VERSION: u16 = 2;
/// Frame batches the reader may run ahead of the session (backpressure to the client).
const READ_AHEAD: usize = 8;
/// Most frames in one batch: a read buffer full of tiny requests (it may have grown to a
/// whole large frame) is handed on in pieces, so decoded requests waiting for the session
/// stay bounded.
const MAX_BATCH_FRAMES: usize = 1024;
/// Time the peer has to answer our `Close`.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// What the reader hands the session.
enum ReadEvent {
    /// Frames decoded from one read, in order; a decode error is in place of its frame.
    Frames(Vec<Result<Frame<Request>, DecodeError>>),
    /// The peer closed the socket (or it failed).
    Closed,
}

/// Agreed in the handshake.
#[derive(Debug, Clone, Copy)]
struct Agreed {
    heartbeat: Option<Duration>,
    max_frame_len: u32,
    max_message_len: u32,
}

/// Who is on the other end, from the socket and the `Hello`: what the connection's log lines
/// name.
#[derive(Debug, Clone)]
struct ClientInfo {
    /// The user it logged in as.
    user: String,
    /// `product version` from its client properties, `unknown` if it sent neither.
    client: String,
    /// The `connection_name` it gave, or empty.
    connection_name: String,
    /// The same, as the connection registry keeps it.
    identity: ClientIdentity,
}

/// A client property that was given and is not empty.
fn given(v: &Option<String>) -> Option<&str> {
    v.as_deref().filter(|s| !s.is_empty())
}

impl ClientInfo {
    fn from_hello(hello: &Hello) -> Self {
        let identity = ClientIdentity::from_hello(hello);
        let client = match (given(&identity.product), given(&identity.version)) {
            (None, None) => "unknown".to_owned(),
            (Some(product), None) => product.to_owned(),
            (None, Some(version)) => format!("unknown {version}"),
            (Some(product), Some(version)) => format!("{product} {version}"),
        };
        Self {
            user: hello.username.clone(),
            client,
            connection_name: identity.connection_name.clone().unwrap_or_default(),
            identity,
        }
    }
}

/// What a handshake that ended in `Welcome` agreed and learned.
struct Handshaken<T> {
    agreed: Agreed,
    who: ClientInfo,
    /// The user, logged into its vhost.
    principal: Principal,
    /// What the server's admission gave (the connection's registration).
    admitted: T,
}

/// Why the handshake did not end in `Welcome`.
#[derive(Debug)]
struct HandshakeRefused {
    /// The code sent in `Close`, if one was sent.
    code: Option<ErrorCode>,
    /// What happened, for the log.
    reason: String,
    /// The client, if its `Hello` was read.
    client: Option<ClientInfo>,
    /// Already logged elsewhere: wrong passwords are summarised per source address by the
    /// login throttle, so a guessing client does not write a line per guess.
    logged: bool,
}

impl HandshakeRefused {
    fn without_close(reason: impl Into<String>) -> Self {
        Self {
            code: None,
            reason: reason.into(),
            client: None,
            logged: false,
        }
    }
}

/// The vhost a `Hello` asks for: its `vhost` client property (a string), `/` without one.
fn requested_vhost(hello: &Hello) -> Result<VhostName, String> {
    match hello.client_properties.iter().find(|(k, _)| k == "vhost") {
        None => Ok(VhostName::default_vhost()),
        Some((_, HeaderValue::Str(name))) => VhostName::new(name).map_err(|e| e.to_string()),
        Some(_) => Err("the client property vhost must be a string".into()),
    }
}

/// Why a connection ended, for its log line.
#[derive(Debug, Clone)]
pub(super) enum CloseReason {
    /// The client sent `Close`.
    Client {
        /// Its code, if it gave one (an error on its side).
        code: Option<ErrorCode>,
        /// Its words.
        reason: String,
    },
    /// The server sent `Close`.
    Server {
        /// The code sent.
        code: ErrorCode,
        /// The words sent.
        reason: String,
    },
    /// The socket closed or failed without a `Close` exchanged.
    SocketClosed,
}

impl std::fmt::Display for CloseReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CloseReason::Client { code: None, reason } if reason.is_empty() => {
                f.write_str("closed by the client")
            }
            CloseReason::Client { code, reason } => {
                f.write_str("closed by the client")?;
                if let Some(code) = code {
                    write!(f, " with {}", code.name())?;
                }
                if !reason.is_empty() {
                    write!(f, " (\"{reason}\")")?;
                }
                Ok(())
            }
            CloseReason::Server { code, reason } => {
                write!(f, "closed by the server with {}: {reason}", code.name())
            }
            CloseReason::SocketClosed => f.write_str("the socket closed without a Close"),
        }
    }
}

/// The socket of one accepted client and what it needs to be served.
pub(crate) struct Accepted {
    /// The socket.
    pub(crate) stream: TcpStream,
    /// The TLS config in force when it was accepted, if it came to the TLS port.
    pub(crate) tls: Option<TlsAcceptor>,
    /// Turns true when the server shuts down.
    pub(crate) shutdown: watch::Receiver<bool>,
    /// Where open connections are listed.
    pub(crate) registry: Arc<ConnectionRegistry>,
    /// The socket's place among those in their handshake, given back once it ended.
    pub(crate) handshaking: OwnedSemaphorePermit,
}

/// What a connection keeps from its acceptance once its socket is ready.
struct Admission {
    shutdown: watch::Receiver<bool>,
    registry: Arc<ConnectionRegistry>,
    handshaking: OwnedSemaphorePermit,
}

/// Where a connection came from, for its log lines.
struct Peer {
    conn_id: u64,
    addr: Option<std::net::SocketAddr>,
    /// The address as text, `unknown` if the socket could not tell.
    name: String,
}

/// Serves one client until it leaves or the server shuts down. A TLS client's TLS handshake
/// counts in the handshake timeout, like the protocol's own.
pub(crate) async fn serve(broker: Arc<Broker>, accepted: Accepted) {
    let Accepted {
        stream,
        tls,
        shutdown,
        registry,
        handshaking,
    } = accepted;
    let admission = Admission {
        shutdown,
        registry,
        handshaking,
    };
    let _ = stream.set_nodelay(true);
    let addr = stream.peer_addr().ok();
    let peer = Peer {
        conn_id: broker.next_conn_id(),
        addr,
        name: addr.map_or_else(|| "unknown".to_owned(), |addr| addr.to_string()),
    };
    let deadline = Deadline::now() + broker.config.handshake_timeout;
    let Some(tls) = tls else {
        // Owned halves, without the lock tokio::io::split takes on every poll.
        let (rd, wr) = stream.into_split();
        return serve_halves(broker, rd, wr, peer, deadline, admission).await;
    };
    match tokio::time::timeout_at(deadline, tls.accept(stream)).await {
        Ok(Ok(stream)) => {
            let (rd, wr) = tokio::io::split(stream);
            serve_halves(broker, rd, wr, peer, deadline, admission).await;
        }
        Ok(Err(e)) => tracing::info!(conn = peer.conn_id, peer = peer.name, error = %e,
            "TLS handshake failed"),
        Err(_) => tracing::info!(
            conn = peer.conn_id,
            peer = peer.name,
            "handshake timed out (in TLS)"
        ),
    }
}

/// Serves a client over its socket's halves (plain or TLS) once any TLS handshake is done:
/// the protocol's handshake by `deadline`, then the reader, session and writer.
async fn serve_halves<R, W>(
    broker: Arc<Broker>,
    mut rd: R,
    mut wr: W,
    peer: Peer,
    deadline: Deadline,
    admission: Admission,
) where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let Peer {
        conn_id,
        addr: peer_addr,
        name: peer,
    } = peer;
    let Admission {
        shutdown,
        registry,
        handshaking,
    } = admission;
    let mut buf = BytesMut::with_capacity(16 * 1024);
    let timeout = broker.config.handshake_timeout;
    // A peer whose address is unknown is not on loopback.
    let peer_ip = peer_addr.map_or(std::net::IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED), |a| {
        a.ip()
    });
    let (control_tx, control_rx) = mpsc::channel(registry::CONTROL_CAPACITY);
    // Listed (and counted for its user) once its credentials are good, before `Welcome`: a
    // user at its connection limit gets `Close` instead.
    let admit = |who: &ClientInfo, vhost: &VhostName| {
        registry
            .register(
                conn_id,
                peer_addr,
                who.user.clone(),
                vhost.to_string(),
                who.identity.clone(),
                control_tx,
            )
            .map_err(|refused| {
                log_user_limit(&refused);
                refused.to_string()
            })
    };
    let handshake = tokio::time::timeout_at(
        deadline,
        handshake(&broker, conn_id, peer_ip, &mut rd, &mut wr, &mut buf, admit),
    )
    .await;
    drop(handshaking);
    let Handshaken {
        agreed,
        who,
        principal,
        admitted: registration,
    } = match handshake {
        Ok(Ok(done)) => done,
        Ok(Err(refused)) => {
            log_refusal(conn_id, &peer, &refused);
            return;
        }
        Err(_) => {
            log_handshake_timeout(conn_id, &peer, timeout);
            return;
        }
    };
    tracing::info!(
        conn = conn_id,
        peer,
        user = who.user,
        vhost = %principal.vhost,
        client = who.client,
        connection_name = who.connection_name,
        "connection opened"
    );
    let entry = registration.entry();

    let last_recv = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let (frames_tx, frames_rx) = mpsc::channel(READ_AHEAD);
    let reader = tokio::spawn(read_frames(
        rd,
        buf,
        FrameDecoder::new(agreed.max_frame_len),
        frames_tx,
        Arc::clone(&last_recv),
        started,
        Arc::clone(entry),
    ));
    let outbox = Arc::new(Outbox::default());
    let (out_tx, out_rx) = mpsc::channel(WRITER_CHUNKS);
    let mut writer = tokio::spawn(write_frames(
        wr,
        out_rx,
        Arc::clone(&outbox),
        Arc::clone(entry),
    ));
    let output = Output::new(
        out_tx,
        outbox,
        agreed.max_frame_len,
        broker.config.slow_consumer_timeout,
    );

    let limits = broker.vhost_limits(principal.vhost.as_str());
    let reason = session::Session::new(
        Arc::clone(&broker),
        limits,
        Arc::clone(entry),
        Arc::clone(&registry),
        peer.clone(),
        agreed,
        principal,
        output,
        last_recv,
        started,
    )
    .run(frames_rx, control_rx, shutdown)
    .await;

    reader.abort();
    // The session dropped its sender: the writer flushes what is queued (a final Close) and
    // ends. A peer that stopped reading does not get to keep the socket and what is queued.
    if tokio::time::timeout(CLOSE_TIMEOUT, &mut writer)
        .await
        .is_err()
    {
        writer.abort();
    }
    drop(registration);
    tracing::info!(
        conn = conn_id,
        peer,
        user = who.user,
        client = who.client,
        connection_name = who.connection_name,
        duration_ms = started.elapsed().as_millis() as u64,
        reason = reason.to_string().as_str(),
        "connection closed"
    );
}

/// A socket that did not finish its handshake in time: one line each, rate-limited, since a
/// flood of silent sockets would otherwise flood the log.
fn log_handshake_timeout(conn_id: u64, peer: &str, timeout: Duration) {
    static LOG: crate::limits::LogGate = crate::limits::LogGate::new();
    if let Some(also_timed_out_since_last_line) = LOG.open() {
        tracing::info!(
            conn = conn_id,
            peer,
            handshake_timeout_ms = timeout.as_millis() as u64,
            also_timed_out_since_last_line,
            "handshake timed out; socket closed"
        );
    }
}

/// A user at `max_connections_per_user`, rate-limited: its client may retry in a loop.
fn log_user_limit(refused: &registry::UserLimitReached) {
    static LOG: crate::limits::LogGate = crate::limits::LogGate::new();
    if let Some(also_refused_since_last_line) = LOG.open() {
        tracing::warn!(
            user = refused.user,
            max_connections_per_user = refused.max,
            also_refused_since_last_line,
            "connection refused: the user is at its connection limit"
        );
    }
}

/// One line per refused handshake, unless already logged; a refused login is a warning,
/// since it may be someone guessing.
fn log_refusal(conn_id: u64, peer: &str, refused: &HandshakeRefused) {
    // A user at its connection limit is logged once a second by `log_user_limit`, and wrong
    // passwords are summarised per source address by the login throttle: a client retrying
    // in a loop must not write a line per attempt.
    if refused.logged || refused.code == Some(ErrorCode::ConnectionLimit) {
        return;
    }
    let user = refused.client.as_ref().map_or("", |c| c.user.as_str());
    let client = refused.client.as_ref().map_or("", |c| c.client.as_str());
    let code = refused.code.map_or("", |c| c.name());
    let reason = refused.reason.as_str();
    if refused.code == Some(ErrorCode::AccessRefused) {
        // A bad vhost needs no password: a client could repeat it as often as it likes.
        static LOG: crate::limits::LogGate = crate::limits::LogGate::new();
        if let Some(also_refused_since_last_line) = LOG.open() {
            tracing::warn!(
                conn = conn_id,
                peer,
                user,
                client,
                reason,
                also_refused_since_last_line,
                "login refused"
            );
        }
    } else {
        tracing::info!(
            conn = conn_id,
            peer,
            user,
            client,
            code,
            reason,
            "handshake refused"
        );
    }
}

/// Runs the server side of §5.2; on refusal sends `Close` and returns the reason. Once the
/// credentials are good, `admit` decides whether the client gets in (what it returns comes
/// back with the result) or gets `Close(CONNECTION_LIMIT)` with its reason.
async fn handshake<R, W, T>(
    broker: &Broker,
    conn_id: u64,
    peer_ip: std::net::IpAddr,
    rd: &mut R,
    wr: &mut W,
    buf: &mut BytesMut,
    admit: impl FnOnce(&ClientInfo, &VhostName) -> Result<T, String>,
) -> Result<Handshaken<T>, HandshakeRefused>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let decoder = FrameDecoder::new(HANDSHAKE_MAX_FRAME_LEN);
    let raw = loop {
        match decoder.decode_raw(buf) {
            Ok(Some(raw)) => break raw,
            Ok(None) => {}
            Err(e) => {
                let code = e.error_code();
                return Err(refuse(wr, code, &e.to_string(), None).await);
            }
        }
        match rd.read_buf(buf).await {
            Ok(0) | Err(_) => {
                return Err(HandshakeRefused::without_close(
                    "the peer left during the handshake",
                ))
            }
            Ok(_) => {}
        }
    };
    if raw.opcode != Opcode::Hello as u16 {
        return Err(refuse(
            wr,
            ErrorCode::UnexpectedFrame,
            "the first frame must be Hello",
            None,
        )
        .await);
    }
    let request_id = raw.request_id;
    let hello: Hello = match raw.decode::<Request>() {
        Ok(Frame {
            body: Request::Hello(h),
            ..
        }) => h,
        Ok(_) => {
            return Err(refuse(
                wr,
                ErrorCode::UnexpectedFrame,
                "the first frame must be Hello",
                None,
            )
            .await)
        }
        Err(e) => {
            return Err(refuse(
                wr,
                ErrorCode::MalformedFrame,
                &format!("malformed Hello: {e}"),
                None,
            )
            .await)
        }
    };
    let who = ClientInfo::from_hello(&hello);
    let version = hello.max_version.min(PROTOCOL_VERSION);
    if version < hello.min_version.max(MIN_VERSION) {
        let reason = format!("server speaks versions {MIN_VERSION}..{PROTOCOL_VERSION}");
        return Err(refuse(wr, ErrorCode::UnsupportedVersion, &reason, Some(who)).await);
    }
    let vhost = match requested_vhost(&hello) {
        Ok(vhost) => vhost,
        // Close carries connection codes only: a vhost that cannot be named is no access.
        Err(why) => return Err(refuse(wr, ErrorCode::AccessRefused, &why, Some(who)).await),
    };
    let principal = match broker
        .access
        .login(&hello.username, &hello.password, &vhost, peer_ip)
        .await
    {
        Ok(principal) => principal,
        Err(refused) => {
            let mut refusal = refuse(
                wr,
                ErrorCode::AccessRefused,
                &refused.to_string(),
                Some(who),
            )
            .await;
            refusal.logged = matches!(
                refused,
                LoginRefused::BadCredentials | LoginRefused::Throttled { .. }
            );
            return Err(refusal);
        }
    };
    let admitted = match admit(&who, &principal.vhost) {
        Ok(admitted) => admitted,
        Err(reason) => {
            return Err(refuse(wr, ErrorCode::ConnectionLimit, &reason, Some(who)).await);
        }
    };
    let cfg = &broker.config;
    let heartbeat_ms = if cfg.heartbeat_ms == 0 {
        0
    } else if hello.heartbeat_ms == 0 {
        cfg.heartbeat_ms
    } else {
        hello
            .heartbeat_ms
            .clamp(cfg.heartbeat_range_ms.0, cfg.heartbeat_range_ms.1)
    };
    let mut max_frame_len = cfg.max_frame_len;
    if hello.max_frame_len != 0 {
        max_frame_len = max_frame_len.min(hello.max_frame_len);
    }
    max_frame_len = max_frame_len.max(MIN_MAX_FRAME_LEN);
    let max_message_len = cfg
        .max_message_len
        .min(max_frame_len - FRAME_OVERHEAD_RESERVE);
    let welcome = Welcome {
        version,
        heartbeat_ms,
        max_frame_len,
        max_message_len,
        connection_id: conn_id,
        server_properties: vec![
            ("product".into(), "sluice".into()),
            ("version".into(), env!("CARGO_PKG_VERSION").into()),
        ],
    };
    let mut out = BytesMut::new();
    Frame::<Reply>::new(request_id, welcome)
        .encode(&mut out, HANDSHAKE_MAX_FRAME_LEN)
        .map_err(|e| HandshakeRefused::without_close(format!("cannot encode Welcome: {e}")))?;
    wr.write_all(&out)
        .await
        .map_err(|e| HandshakeRefused::without_close(format!("cannot send Welcome: {e}")))?;
    let agreed = Agreed {
        heartbeat: (heartbeat_ms > 0).then(|| Duration::from_millis(heartbeat_ms.into())),
        max_frame_len,
        max_message_len,
    };
    Ok(Handshaken {
        agreed,
        who,
        principal,
        admitted,
    })
}

/// Sends `Close` with `code` and returns what the log says about it.
async fn refuse<W: AsyncWrite + Unpin>(
    wr: &mut W,
    code: ErrorCode,
    reason: &str,
    client: Option<ClientInfo>,
) -> HandshakeRefused {
    let mut out = BytesMut::new();
    let close = Close {
        code: Some(code),
        reason: reason.into(),
    };
    if Frame::<Reply>::new(RequestId(0), close)
        .encode(&mut out, HANDSHAKE_MAX_FRAME_LEN)
        .is_ok()
    {
        let _ = wr.write_all(&out).await;
        let _ = wr.shutdown().await;
    }
    HandshakeRefused {
        code: Some(code),
        reason: reason.into(),
        client,
        logged: false,
    }
}

/// How long a refused connection is kept open for its peer to read the `Close` and leave.
const REFUSAL_LINGER: Duration = Duration::from_secs(1);

/// A `Close` sent instead of `Welcome` to connections the server has no room for.
#[derive(Debug, Clone)]
pub(crate) struct Refusal {
    frame: Bytes,
}

impl Refusal {
    /// `Close` with `CONNECTION_LIMIT`, naming the limit `which` (at most `max`).
    pub(crate) fn connection_limit(which: limits::AdmissionLimit, max: usize) -> Self {
        let close = Close {
            code: Some(ErrorCode::ConnectionLimit),
            reason: limits::admission_refusal(which, max),
        };
        let mut out = BytesMut::new();
        Frame::<Reply>::new(RequestId(0), close)
            .encode(&mut out, HANDSHAKE_MAX_FRAME_LEN)
            .expect("a short Close fits the handshake frame limit");
        Self {
            frame: out.freeze(),
        }
    }

    /// Sends the `Close` without waiting: a new socket's send buffer has room for it, and the
    /// accept loop must not wait on a peer it is refusing. False if it could not be sent.
    ///
    /// A plain `write(2)` on the non-blocking socket, not `try_write`: tokio answers
    /// `WouldBlock` without trying until its reactor has seen the new socket become writable,
    /// which right after `accept` it may not have yet.
    pub(crate) fn send_now(&self, stream: &TcpStream) -> bool {
        matches!(rustix::io::write(stream, &self.frame), Ok(n) if n == self.frame.len())
    }
}

/// Closes a refused connection gracefully: our side first (FIN after the `Close`), then waits,
/// bounded, for the peer to leave. Closing at once while the peer's `Hello` is unread would
/// send a reset, which can make the peer drop the `Close` before reading it.
pub(crate) async fn linger(stream: TcpStream) {
    let (mut rd, mut wr) = stream.into_split();
    let _ = tokio::time::timeout(REFUSAL_LINGER, async {
        let _ = wr.shutdown().await;
        let mut sink = [0u8; 512];
        while matches!(rd.read(&mut sink).await, Ok(n) if n > 0) {}
    })
    .await;
}

async fn read_frames<R: AsyncRead + Unpin>(
    mut rd: R,
    mut buf: BytesMut,
    decoder: FrameDecoder,
    tx: mpsc::Sender<ReadEvent>,
    last_recv: Arc<AtomicU64>,
    started: Instant,
    entry: Arc<ConnectionEntry>,
) {
    let stats = &entry.stats;
    loop {
        let mut frames = Vec::new();
        let mut fatal = false;
        while frames.len() < MAX_BATCH_FRAMES {
            match decoder.decode::<Request>(&mut buf) {
                Ok(Some(f)) => frames.push(Ok(f)),
                Ok(None) => break,
                Err(e) => {
                    fatal = e.is_fatal();
                    frames.push(Err(e));
                    if fatal {
                        break;
                    }
                }
            }
        }
        ConnectionStats::add(&stats.frames_in, frames.len() as u64);
        let full_batch = frames.len() == MAX_BATCH_FRAMES;
        if !frames.is_empty() && tx.send(ReadEvent::Frames(frames)).await.is_err() {
            return;
        }
        if fatal {
            return;
        }
        if full_batch {
            // More may be buffered: decode it before reading again.
            continue;
        }
        if buf.capacity() - buf.len() < 4096 {
            buf.reserve(64 * 1024);
        }
        match rd.read_buf(&mut buf).await {
            Ok(0) | Err(_) => {
                let _ = tx.send(ReadEvent::Closed).await;
                return;
            }
            Ok(n) => {
                ConnectionStats::add(&stats.bytes_in, n as u64);
                last_recv.store(started.elapsed().as_millis() as u64, Ordering::Relaxed);
            }
        }
    }
}

/// Writes the session's chunks in order; each leaves the outbox once written.
async fn write_frames<W: AsyncWrite + Unpin>(
    mut wr: W,
    mut rx: mpsc::Receiver<Bytes>,
    outbox: Arc<Outbox>,
    entry: Arc<ConnectionEntry>,
) {
    while let Some(chunk) = rx.recv().await {
        if wr.write_all(&chunk).await.is_err() {
            return;
        }
        ConnectionStats::add(&entry.stats.bytes_out, chunk.len() as u64);
        outbox.remove(chunk.len());
    }
    let _ = wr.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello_with(properties: Vec<(String, HeaderValue)>) -> Hello {
        Hello {
            min_version: 2,
            max_version: 2,
            username: "u".into(),
            password: "p".into(),
            heartbeat_ms: 0,
            max_frame_len: 0,
            client_properties: properties,
        }
    }

    #[test]
    fn the_vhost_comes_from_the_vhost_client_property_and_defaults_to_slash() {
        assert_eq!(
            requested_vhost(&hello_with(vec![])),
            Ok(VhostName::default_vhost())
        );
        let staging = vec![("vhost".to_owned(), HeaderValue::from("staging"))];
        assert_eq!(
            requested_vhost(&hello_with(staging)).unwrap().as_str(),
            "staging"
        );
        let number = vec![("vhost".to_owned(), HeaderValue::Int(1))];
        assert_eq!(
            requested_vhost(&hello_with(number)),
            Err("the client property vhost must be a string".to_owned())
        );
        let empty = vec![("vhost".to_owned(), HeaderValue::from(""))];
        assert!(requested_vhost(&hello_with(empty))
            .unwrap_err()
            .contains("it is empty"));
    }
}
