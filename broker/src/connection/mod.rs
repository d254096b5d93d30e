//! One client connection: the handshake, then three tasks.
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
//! until it ends; the three tasks count what they move in its entry.

mod output;
pub(crate) mod registry;
mod session;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use sluice_client::wire::{
    Close, DecodeError, ErrorCode, Frame, FrameDecoder, Hello, Opcode, Reply, Request, RequestId,
    Welcome, FRAME_OVERHEAD_RESERVE, HANDSHAKE_MAX_FRAME_LEN, MIN_MAX_FRAME_LEN, PROTOCOL_VERSION,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};

use crate::broker::Broker;
use crate::queue::Outbox;
use output::{Output, WRITER_CHUNKS};
pub(crate) use registry::{ClientIdentity, ConnectionEntry, ConnectionRegistry, ConnectionStats};

/// Oldest protocol version this server speaks.
const MIN_VERSION: u16 = 1;
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

/// A successful handshake: what was agreed and who the client is.
#[derive(Debug)]
struct Handshake {
    agreed: Agreed,
    user: String,
    client: ClientIdentity,
}

/// Serves one client until it leaves or the server shuts down.
pub async fn serve(
    broker: Arc<Broker>,
    stream: TcpStream,
    shutdown: watch::Receiver<bool>,
    registry: Arc<ConnectionRegistry>,
) {
    let _ = stream.set_nodelay(true);
    let conn_id = broker.next_conn_id();
    let peer = stream.peer_addr().ok();
    let (mut rd, mut wr) = stream.into_split();
    let mut buf = BytesMut::with_capacity(16 * 1024);
    let timeout = broker.config.handshake_timeout;
    let Handshake {
        agreed,
        user,
        client,
    } = match tokio::time::timeout(
        timeout,
        handshake(&broker, conn_id, &mut rd, &mut wr, &mut buf),
    )
    .await
    {
        Ok(Ok(done)) => done,
        Ok(Err(reason)) => {
            tracing::info!(conn = conn_id, ?peer, %reason, "handshake refused");
            return;
        }
        Err(_) => {
            tracing::info!(conn = conn_id, ?peer, "handshake timed out");
            return;
        }
    };
    tracing::debug!(conn = conn_id, ?peer, "connection open");
    let registration = registry.register(conn_id, peer, user, client);
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

    let session = session::Session::new(
        Arc::clone(&broker),
        Arc::clone(entry),
        agreed,
        output,
        last_recv,
        started,
    );
    session.run(frames_rx, shutdown).await;

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
    tracing::debug!(conn = conn_id, "connection closed");
}

/// Runs the server side of §5.2; on refusal sends `Close` and returns the reason.
async fn handshake(
    broker: &Broker,
    conn_id: u64,
    rd: &mut OwnedReadHalf,
    wr: &mut OwnedWriteHalf,
    buf: &mut BytesMut,
) -> Result<Handshake, String> {
    let decoder = FrameDecoder::new(HANDSHAKE_MAX_FRAME_LEN);
    let raw = loop {
        match decoder.decode_raw(buf) {
            Ok(Some(raw)) => break raw,
            Ok(None) => {}
            Err(e) => {
                let code = e.error_code();
                return Err(refuse(wr, code, &e.to_string()).await);
            }
        }
        match rd.read_buf(buf).await {
            Ok(0) | Err(_) => return Err("peer left during the handshake".into()),
            Ok(_) => {}
        }
    };
    if raw.opcode != Opcode::Hello as u16 {
        return Err(refuse(
            wr,
            ErrorCode::UnexpectedFrame,
            "the first frame must be Hello",
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
            )
            .await)
        }
        Err(e) => {
            return Err(refuse(
                wr,
                ErrorCode::MalformedFrame,
                &format!("malformed Hello: {e}"),
            )
            .await)
        }
    };
    let version = hello.max_version.min(PROTOCOL_VERSION);
    if version < hello.min_version.max(MIN_VERSION) {
        let reason = format!("server speaks versions {MIN_VERSION}..{PROTOCOL_VERSION}");
        return Err(refuse(wr, ErrorCode::UnsupportedVersion, &reason).await);
    }
    if !broker
        .config
        .is_known_user(&hello.username, &hello.password)
    {
        return Err(refuse(
            wr,
            ErrorCode::AccessRefused,
            "unknown user or wrong password",
        )
        .await);
    }
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
        .map_err(|e| e.to_string())?;
    wr.write_all(&out).await.map_err(|e| e.to_string())?;
    Ok(Handshake {
        agreed: Agreed {
            heartbeat: (heartbeat_ms > 0).then(|| Duration::from_millis(heartbeat_ms.into())),
            max_frame_len,
            max_message_len,
        },
        client: ClientIdentity::from_hello(&hello),
        user: hello.username,
    })
}

/// Sends `Close` with `code` and returns a description for the log.
async fn refuse(wr: &mut OwnedWriteHalf, code: ErrorCode, reason: &str) -> String {
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
    format!("{}: {reason}", code.name())
}

/// How long a refused connection is kept open for its peer to read the `Close` and leave.
const REFUSAL_LINGER: Duration = Duration::from_secs(1);

/// A `Close` sent instead of `Welcome` to connections the server has no room for.
#[derive(Debug, Clone)]
pub(crate) struct Refusal {
    frame: Bytes,
}

impl Refusal {
    /// `Close` with `CONNECTION_LIMIT`, naming the limit.
    pub(crate) fn connection_limit(max_connections: usize) -> Self {
        let close = Close {
            code: Some(ErrorCode::ConnectionLimit),
            reason: format!(
                "the server is at its limit of {max_connections} connections; try again later"
            ),
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

async fn read_frames(
    mut rd: OwnedReadHalf,
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
async fn write_frames(
    mut wr: OwnedWriteHalf,
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
