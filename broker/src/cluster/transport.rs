//! The cluster transport: one TCP listener per node, length-prefixed bincode frames, requests
//! of every group multiplexed by request id over one connection per peer, redialled with
//! backoff when it breaks. Outgoing connections bind to the cluster listener's IP, so a peer
//! (or a fault-injecting proxy) can tell nodes apart by source address.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use tokio::io::{AsyncWriteExt, BufReader, BufWriter};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{mpsc, oneshot, watch, Semaphore};

use super::codec::{read_frame, write_frame};
use super::rpc::{Frame, Reply, Request};
use super::types::{GroupId, NodeId};

/// Frames waiting to be written on one connection; a full queue makes senders wait.
const OUTBOX_FRAMES: usize = 256;
/// Requests one connection may have running on this side at once; past it the reader stops
/// reading, which pushes back on the peer through TCP.
const INBOUND_CONCURRENCY: usize = 64;
/// Requests one connection may have awaiting replies; past it callers are refused.
const MAX_PENDING: usize = 4096;
const DIAL_TIMEOUT: Duration = Duration::from_secs(1);
const BACKOFF_MIN: Duration = Duration::from_millis(50);
/// Dials to a peer that refuses or is unreachable back off up to this: short beside the
/// election timeout, so a restarted node is heard from (and hears its leader) within it.
const BACKOFF_MAX: Duration = Duration::from_millis(500);
/// A connection silent this long while a request to it timed out is presumed dead (a
/// blackholed peer never closes it) and dropped, so the next request redials.
const SILENCE_LIMIT: Duration = Duration::from_secs(3);

/// Answers the requests peers send.
pub(crate) trait Handler: Send + Sync + 'static {
    fn handle(
        &self,
        from: Option<NodeId>,
        group: GroupId,
        request: Request,
    ) -> BoxFuture<'static, Reply>;
}

/// Why a request got no reply.
#[derive(Clone, Debug, thiserror::Error)]
pub(crate) enum TransportError {
    #[error("cannot connect to {addr}: {reason}")]
    Connect { addr: String, reason: String },
    #[error("not redialling {addr} for another {wait_ms} ms after failures")]
    BackingOff { addr: String, wait_ms: u64 },
    #[error("connection to {0} closed")]
    Closed(String),
    #[error("no reply from {0} in time")]
    Timeout(String),
    #[error("too many requests in flight to {0}")]
    Overloaded(String),
    #[error("the transport is shut down")]
    Shutdown,
}

impl TransportError {
    /// The peer cannot be reached at all (as opposed to a slow reply).
    pub(crate) fn is_unreachable(&self) -> bool {
        matches!(
            self,
            TransportError::Connect { .. }
                | TransportError::BackingOff { .. }
                | TransportError::Closed(_)
        )
    }
}

/// Handle to the node's transport; cheap to clone.
#[derive(Clone)]
pub(crate) struct Transport {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transport")
            .field("local", &self.inner.local)
            .field("listen", &self.inner.listen)
            .finish()
    }
}

struct Inner {
    local: NodeId,
    listen: SocketAddr,
    handler: Arc<dyn Handler>,
    peers: Mutex<HashMap<NodeId, Arc<PeerLink>>>,
    next_request: AtomicU64,
    shutdown: watch::Sender<bool>,
}

/// This node's way to one peer: its live connection, if any, and the dial backoff.
struct PeerLink {
    state: tokio::sync::Mutex<LinkState>,
    /// Set by an accepted connection from the peer when we have none of our own.
    accepted: Mutex<Option<Arc<Conn>>>,
}

#[derive(Default)]
struct LinkState {
    conn: Option<Arc<Conn>>,
    failures: u32,
    retry_at: Option<Instant>,
}

/// One live connection: frames to write, and callers awaiting replies.
struct Conn {
    peer: String,
    outbox: mpsc::Sender<Frame>,
    pending: Mutex<HashMap<u64, oneshot::Sender<Reply>>>,
    closed: AtomicBool,
    /// Tells the reader and writer to stop.
    closing: watch::Sender<bool>,
    last_heard: Mutex<Instant>,
}

impl Conn {
    fn is_live(&self) -> bool {
        !self.closed.load(Ordering::Acquire) && !self.outbox.is_closed()
    }

    fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.closing.send_replace(true);
        // Dropping the senders wakes every caller with `Closed`.
        lock(&self.pending).clear();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Transport {
    /// Serves `listener` and returns the handle requests are sent through.
    pub(crate) fn start(
        local: NodeId,
        listener: TcpListener,
        handler: Arc<dyn Handler>,
    ) -> std::io::Result<Transport> {
        let listen = listener.local_addr()?;
        let (shutdown, _) = watch::channel(false);
        let inner = Arc::new(Inner {
            local,
            listen,
            handler,
            peers: Mutex::new(HashMap::new()),
            next_request: AtomicU64::new(1),
            shutdown,
        });
        tokio::spawn(accept_loop(Arc::clone(&inner), listener));
        Ok(Transport { inner })
    }

    pub(crate) fn listen_addr(&self) -> SocketAddr {
        self.inner.listen
    }

    /// Stops accepting and closes every connection.
    pub(crate) fn shutdown(&self) {
        self.inner.shutdown.send_replace(true);
        let links: Vec<_> = lock(&self.inner.peers).drain().map(|(_, l)| l).collect();
        for link in links {
            if let Some(c) = lock(&link.accepted).take() {
                c.close();
            }
            if let Ok(mut st) = link.state.try_lock() {
                if let Some(c) = st.conn.take() {
                    c.close();
                }
            }
        }
    }

    fn is_shut_down(&self) -> bool {
        *self.inner.shutdown.borrow()
    }

    /// Sends `request` for `group` to node `peer` (dialled at `addr` when not connected) and
    /// waits up to `timeout` for its reply.
    pub(crate) async fn call(
        &self,
        peer: NodeId,
        addr: &str,
        group: GroupId,
        request: Request,
        timeout: Duration,
    ) -> Result<Reply, TransportError> {
        if self.is_shut_down() {
            return Err(TransportError::Shutdown);
        }
        let conn = self.connection(peer, addr).await?;
        let result = self.call_on(&conn, group, request, timeout).await;
        if let Err(TransportError::Timeout(_)) = &result {
            if lock(&conn.last_heard).elapsed() > SILENCE_LIMIT {
                conn.close();
            }
        }
        result
    }

    /// A one-off call to an address whose node id is unknown (joining, `add-node ADDR`).
    pub(crate) async fn call_addr(
        &self,
        addr: &str,
        group: GroupId,
        request: Request,
        timeout: Duration,
    ) -> Result<Reply, TransportError> {
        if self.is_shut_down() {
            return Err(TransportError::Shutdown);
        }
        let stream = dial(self.inner.listen.ip(), addr).await?;
        let conn = spawn_conn(Arc::clone(&self.inner), stream, addr.to_owned(), Some(None)).await?;
        let result = self.call_on(&conn, group, request, timeout).await;
        conn.close();
        result
    }

    async fn call_on(
        &self,
        conn: &Arc<Conn>,
        group: GroupId,
        body: Request,
        timeout: Duration,
    ) -> Result<Reply, TransportError> {
        let id = self.inner.next_request.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        {
            let mut pending = lock(&conn.pending);
            if pending.len() >= MAX_PENDING {
                return Err(TransportError::Overloaded(conn.peer.clone()));
            }
            pending.insert(id, tx);
        }
        let deadline = tokio::time::Instant::now() + timeout;
        let sent = tokio::time::timeout_at(
            deadline,
            conn.outbox.send(Frame::Request { id, group, body }),
        )
        .await;
        match sent {
            Ok(Ok(())) => {}
            Ok(Err(_)) => {
                lock(&conn.pending).remove(&id);
                return Err(TransportError::Closed(conn.peer.clone()));
            }
            Err(_) => {
                lock(&conn.pending).remove(&id);
                return Err(TransportError::Timeout(conn.peer.clone()));
            }
        }
        match tokio::time::timeout_at(deadline, rx).await {
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(_)) => Err(TransportError::Closed(conn.peer.clone())),
            Err(_) => {
                lock(&conn.pending).remove(&id);
                Err(TransportError::Timeout(conn.peer.clone()))
            }
        }
    }

    fn link(&self, peer: NodeId) -> Arc<PeerLink> {
        let mut peers = lock(&self.inner.peers);
        Arc::clone(peers.entry(peer).or_insert_with(|| {
            Arc::new(PeerLink {
                state: tokio::sync::Mutex::new(LinkState::default()),
                accepted: Mutex::new(None),
            })
        }))
    }

    /// The live connection to `peer`: ours, else one the peer opened to us, else a new dial
    /// (unless the last dials failed and the backoff has not passed).
    async fn connection(&self, peer: NodeId, addr: &str) -> Result<Arc<Conn>, TransportError> {
        let link = self.link(peer);
        let mut st = link.state.lock().await;
        if let Some(c) = st.conn.as_ref().filter(|c| c.is_live()) {
            return Ok(Arc::clone(c));
        }
        if let Some(c) = lock(&link.accepted).as_ref().filter(|c| c.is_live()) {
            return Ok(Arc::clone(c));
        }
        if let Some(at) = st.retry_at {
            let now = Instant::now();
            if at > now {
                return Err(TransportError::BackingOff {
                    addr: addr.to_owned(),
                    wait_ms: (at - now).as_millis() as u64,
                });
            }
        }
        let dialled = match dial(self.inner.listen.ip(), addr).await {
            Ok(stream) => {
                spawn_conn(
                    Arc::clone(&self.inner),
                    stream,
                    addr.to_owned(),
                    Some(Some(self.inner.local)),
                )
                .await
            }
            Err(e) => Err(e),
        };
        match dialled {
            Ok(conn) => {
                st.failures = 0;
                st.retry_at = None;
                st.conn = Some(Arc::clone(&conn));
                Ok(conn)
            }
            Err(e) => {
                st.failures = st.failures.saturating_add(1);
                let delay = BACKOFF_MIN
                    .saturating_mul(1 << st.failures.min(6))
                    .min(BACKOFF_MAX);
                st.retry_at = Some(Instant::now() + delay);
                Err(e)
            }
        }
    }
}

/// Dials `addr` from `local_ip` (the cluster listener's IP, unless it listens on all).
async fn dial(local_ip: IpAddr, addr: &str) -> Result<TcpStream, TransportError> {
    let connect_err = |reason: String| TransportError::Connect {
        addr: addr.to_owned(),
        reason,
    };
    let target: SocketAddr = match tokio::net::lookup_host(addr).await {
        Ok(mut addrs) => addrs
            .next()
            .ok_or_else(|| connect_err("no address".into()))?,
        Err(e) => return Err(connect_err(e.to_string())),
    };
    let socket = if target.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .map_err(|e| connect_err(e.to_string()))?;
    if !local_ip.is_unspecified() && local_ip.is_ipv4() == target.is_ipv4() {
        socket
            .bind(SocketAddr::new(local_ip, 0))
            .map_err(|e| connect_err(format!("binding {local_ip}: {e}")))?;
    }
    let stream = tokio::time::timeout(DIAL_TIMEOUT, socket.connect(target))
        .await
        .map_err(|_| connect_err("timed out".into()))?
        .map_err(|e| connect_err(e.to_string()))?;
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

async fn accept_loop(inner: Arc<Inner>, listener: TcpListener) {
    let mut shutdown = inner.shutdown.subscribe();
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.wait_for(|s| *s) => return,
        };
        match accepted {
            Ok((stream, from)) => {
                let _ = stream.set_nodelay(true);
                let inner = Arc::clone(&inner);
                tokio::spawn(async move {
                    if let Err(e) = spawn_conn(inner, stream, from.to_string(), None).await {
                        tracing::debug!(%from, error = %e, "cluster connection refused");
                    }
                });
            }
            Err(e) => {
                // Out of descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %e, "cluster accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Starts the reader and writer of a connection. `hello`: `Some(x)` when we dialled (we
/// send `Hello { node: x }` first), `None` when accepted (we read the peer's hello first, and
/// offer the connection to the peer's link).
async fn spawn_conn(
    inner: Arc<Inner>,
    stream: TcpStream,
    peer: String,
    hello: Option<Option<NodeId>>,
) -> Result<Arc<Conn>, TransportError> {
    let (read, write) = stream.into_split();
    let mut reader = BufReader::new(read);
    let mut writer = BufWriter::new(write);
    let from = match hello {
        Some(node) => {
            let sent = async {
                write_frame(&mut writer, &Frame::Hello { node }).await?;
                writer.flush().await
            };
            sent.await
                .map_err(|_| TransportError::Closed(peer.clone()))?;
            None
        }
        None => match tokio::time::timeout(DIAL_TIMEOUT * 5, read_frame::<_, Frame>(&mut reader))
            .await
        {
            Ok(Ok(Some(Frame::Hello { node }))) => node,
            _ => return Err(TransportError::Closed(peer)),
        },
    };
    let (outbox, rx) = mpsc::channel(OUTBOX_FRAMES);
    let conn = Arc::new(Conn {
        peer,
        outbox,
        pending: Mutex::new(HashMap::new()),
        closed: AtomicBool::new(false),
        closing: watch::channel(false).0,
        last_heard: Mutex::new(Instant::now()),
    });
    if let Some(node) = from {
        let link = Transport {
            inner: Arc::clone(&inner),
        }
        .link(node);
        *lock(&link.accepted) = Some(Arc::clone(&conn));
    }
    let stop = StopSignals {
        node: inner.shutdown.subscribe(),
        conn: conn.closing.subscribe(),
    };
    tokio::spawn(write_loop(writer, rx, Arc::clone(&conn), stop));
    tokio::spawn(read_loop(inner, reader, Arc::clone(&conn), from));
    Ok(conn)
}

async fn write_loop(
    mut writer: BufWriter<OwnedWriteHalf>,
    mut rx: mpsc::Receiver<Frame>,
    conn: Arc<Conn>,
    mut stop: StopSignals,
) {
    loop {
        let frame = tokio::select! {
            f = rx.recv() => f,
            _ = stop.stopped() => None,
        };
        let Some(frame) = frame else { break };
        if conn.closed.load(Ordering::Acquire) {
            break;
        }
        if write_frame(&mut writer, &frame).await.is_err() {
            break;
        }
        // Flush only when nothing else is queued: frames written back to back share syscalls.
        if rx.is_empty() && writer.flush().await.is_err() {
            break;
        }
    }
    conn.close();
    let _ = writer.shutdown().await;
}

async fn read_loop(
    inner: Arc<Inner>,
    mut reader: BufReader<OwnedReadHalf>,
    conn: Arc<Conn>,
    from: Option<NodeId>,
) {
    let permits = Arc::new(Semaphore::new(INBOUND_CONCURRENCY));
    let mut stop = StopSignals {
        node: inner.shutdown.subscribe(),
        conn: conn.closing.subscribe(),
    };
    loop {
        let frame = tokio::select! {
            f = read_frame::<_, Frame>(&mut reader) => f,
            _ = stop.stopped() => break,
        };
        let frame = match frame {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(e) => {
                tracing::debug!(peer = %conn.peer, error = %e, "cluster connection failed");
                break;
            }
        };
        if conn.closed.load(Ordering::Acquire) {
            break;
        }
        *lock(&conn.last_heard) = Instant::now();
        match frame {
            Frame::Reply { id, body } => {
                if let Some(tx) = lock(&conn.pending).remove(&id) {
                    let _ = tx.send(body);
                }
            }
            Frame::Request { id, group, body } => {
                let Ok(permit) = Arc::clone(&permits).acquire_owned().await else {
                    break;
                };
                let reply = inner.handler.handle(from, group, body);
                let outbox = conn.outbox.clone();
                tokio::spawn(async move {
                    let body = reply.await;
                    let _ = outbox.send(Frame::Reply { id, body }).await;
                    drop(permit);
                });
            }
            Frame::Hello { .. } => {}
        }
    }
    conn.close();
}

/// What ends a connection's tasks: the node's transport stopping, or the connection closing.
struct StopSignals {
    node: watch::Receiver<bool>,
    conn: watch::Receiver<bool>,
}

impl StopSignals {
    async fn stopped(&mut self) {
        tokio::select! {
            _ = self.node.wait_for(|s| *s) => {}
            _ = self.conn.wait_for(|s| *s) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Answers every request with `Done`.
    struct Echo;

    impl Handler for Echo {
        fn handle(&self, _: Option<NodeId>, _: GroupId, _: Request) -> BoxFuture<'static, Reply> {
            Box::pin(async { Reply::Done })
        }
    }

    async fn transport_on(ip: &str, id: NodeId) -> Transport {
        let listener = TcpListener::bind(format!("{ip}:0")).await.unwrap();
        Transport::start(id, listener, Arc::new(Echo)).unwrap()
    }

    #[tokio::test]
    async fn outgoing_connections_leave_from_the_cluster_listeners_ip() {
        let a = transport_on("127.0.0.61", 1).await;
        let peer = TcpListener::bind("127.0.0.62:0").await.unwrap();
        let addr = peer.local_addr().unwrap().to_string();
        let dial = tokio::spawn({
            let a = a.clone();
            async move {
                a.call(2, &addr, GroupId(0), Request::Info, Duration::from_secs(1))
                    .await
            }
        });
        let (_, from) = tokio::time::timeout(Duration::from_secs(10), peer.accept())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(from.ip().to_string(), "127.0.0.61");
        dial.abort();
        a.shutdown();
    }

    #[tokio::test]
    async fn requests_of_many_groups_share_one_connection_and_get_their_own_replies() {
        let a = transport_on("127.0.0.63", 1).await;
        let b = transport_on("127.0.0.64", 2).await;
        let addr = b.listen_addr().to_string();
        let calls =
            (0..50).map(|g| a.call(2, &addr, GroupId(g), Request::Info, Duration::from_secs(10)));
        for reply in futures_util::future::join_all(calls).await {
            assert!(matches!(reply, Ok(Reply::Done)));
        }
        let link = a.link(2);
        assert!(
            link.state.lock().await.conn.is_some(),
            "one dialled connection"
        );
        a.shutdown();
        b.shutdown();
    }

    #[tokio::test]
    async fn a_frame_over_the_limit_closes_the_connection_and_the_node_keeps_serving() {
        use tokio::io::AsyncReadExt;
        let b = transport_on("127.0.0.65", 2).await;
        let addr = b.listen_addr();
        let mut raw = TcpStream::connect(addr).await.unwrap();
        raw.write_all(&(super::super::codec::MAX_FRAME_BYTES + 1).to_be_bytes())
            .await
            .unwrap();
        let mut buf = [0u8; 16];
        let n = tokio::time::timeout(Duration::from_secs(10), raw.read(&mut buf))
            .await
            .expect("the connection is closed")
            .unwrap_or(0);
        assert_eq!(n, 0);
        let a = transport_on("127.0.0.66", 1).await;
        let reply = a
            .call(
                2,
                &addr.to_string(),
                GroupId(0),
                Request::Info,
                Duration::from_secs(10),
            )
            .await;
        assert!(matches!(reply, Ok(Reply::Done)));
        a.shutdown();
        b.shutdown();
    }
}
