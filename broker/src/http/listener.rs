//! The API's listener, bounded: at most [`MAX_HTTP_CONNECTIONS`] connections at once, each
//! closed once idle for the handshake timeout.
//!
//! HTTP connections hold descriptors like client connections do, and those are budgeted
//! ([`crate::limits`]): without a bound, a flood of sockets on the API's port could take the
//! descriptors the queues' files need. Past the bound, new sockets wait in the kernel's
//! backlog until a connection ends. The idle timeout keeps a few silent sockets from holding
//! every slot (and the API) forever; it does not run while a request of the connection is
//! being answered ([`track_requests`]), however long the broker takes.
//!
//! With TLS the API serves HTTPS: the TLS handshakes run in tasks of their own, each bounded
//! by the same timeout and holding a slot, so a client that stalls its handshake delays no
//! one else's.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::connect_info::{ConnectInfo, Connected};
use axum::extract::Request;
use axum::middleware::Next;
use axum::response::Response;
use axum::serve::IncomingStream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio::time::{Instant, Sleep};

use crate::tls::{MaybeTlsStream, ServerTls};

/// Most HTTP connections served at once; counted in [`crate::limits::FIXED_RESERVE`].
pub const MAX_HTTP_CONNECTIONS: usize = 16;

/// A listener that hands out at most [`MAX_HTTP_CONNECTIONS`] connections at once.
#[derive(Debug)]
pub struct BoundedListener {
    inner: TcpListener,
    slots: Arc<Semaphore>,
    idle_timeout: Duration,
    tls: Option<Arc<ServerTls>>,
    /// TLS handshakes under way; each yields a connection, or nothing if it failed.
    handshakes: JoinSet<Option<(BoundedStream, SocketAddr)>>,
}

impl BoundedListener {
    /// Bounds `inner`; its connections are closed after `idle_timeout` without traffic.
    /// With `tls`, each connection first completes a TLS handshake within `idle_timeout`.
    pub fn new(inner: TcpListener, idle_timeout: Duration, tls: Option<Arc<ServerTls>>) -> Self {
        Self {
            inner,
            slots: Arc::new(Semaphore::new(MAX_HTTP_CONNECTIONS)),
            idle_timeout,
            tls,
            handshakes: JoinSet::new(),
        }
    }
}

/// A slot, then a socket. Dropping it half-way loses nothing: the slot goes back, and
/// accepting is cancel-safe.
async fn next_socket(
    slots: &Arc<Semaphore>,
    listener: &mut TcpListener,
) -> (OwnedSemaphorePermit, TcpStream, SocketAddr) {
    let slot = Arc::clone(slots)
        .acquire_owned()
        .await
        .expect("the slots are never closed");
    // Backs off on accept errors (out of descriptors) by itself.
    let (stream, addr) = axum::serve::Listener::accept(listener).await;
    let _ = stream.set_nodelay(true);
    (slot, stream, addr)
}

/// Runs the TLS handshake of an HTTPS connection, bounded by `timeout`; `None` if it failed.
async fn tls_handshake(
    acceptor: tokio_rustls::TlsAcceptor,
    stream: TcpStream,
    addr: SocketAddr,
    timeout: Duration,
) -> Option<MaybeTlsStream> {
    match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
        Ok(Ok(stream)) => Some(MaybeTlsStream::Tls(Box::new(stream))),
        Ok(Err(e)) => {
            tracing::debug!(peer = %addr, error = %e, "HTTPS: TLS handshake failed");
            None
        }
        Err(_) => None,
    }
}

impl axum::serve::Listener for BoundedListener {
    type Io = BoundedStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        let idle_timeout = self.idle_timeout;
        let Some(tls) = &self.tls else {
            let (slot, stream, addr) = next_socket(&self.slots, &mut self.inner).await;
            let stream = BoundedStream::new(MaybeTlsStream::Plain(stream), slot, idle_timeout);
            return (stream, addr);
        };
        loop {
            tokio::select! {
                (slot, stream, addr) = next_socket(&self.slots, &mut self.inner) => {
                    let acceptor = tls.acceptor();
                    self.handshakes.spawn(async move {
                        let stream = tls_handshake(acceptor, stream, addr, idle_timeout).await?;
                        Some((BoundedStream::new(stream, slot, idle_timeout), addr))
                    });
                }
                Some(done) = self.handshakes.join_next(), if !self.handshakes.is_empty() => {
                    if let Ok(Some(connection)) = done {
                        return connection;
                    }
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

/// A connection holding one of the listener's slots until it is dropped; reading fails with
/// `TimedOut` once nothing was read or written for the idle timeout while no request of it
/// was being answered.
#[derive(Debug)]
pub struct BoundedStream {
    inner: MaybeTlsStream,
    idle: Pin<Box<Sleep>>,
    idle_timeout: Duration,
    answering: Activity,
    _slot: OwnedSemaphorePermit,
}

/// The number of requests of one connection being answered now.
#[derive(Debug, Clone, Default)]
pub struct Activity(Arc<AtomicUsize>);

/// What the router knows of a connection (its `ConnectInfo`): its activity, and the peer's
/// address (logins are throttled and `loopback_users` checked by it).
#[derive(Debug, Clone)]
pub struct Peer {
    activity: Activity,
    /// The client's address.
    pub addr: SocketAddr,
}

impl Connected<IncomingStream<'_, BoundedListener>> for Peer {
    fn connect_info(stream: IncomingStream<'_, BoundedListener>) -> Self {
        Peer {
            activity: stream.io().answering.clone(),
            addr: *stream.remote_addr(),
        }
    }
}

/// Middleware: counts the request as being answered on its connection while it runs (and if
/// it is dropped half-way, no longer).
pub async fn track_requests(
    ConnectInfo(Peer { activity, .. }): ConnectInfo<Peer>,
    request: Request,
    next: Next,
) -> Response {
    struct Answering(Activity);
    impl Drop for Answering {
        fn drop(&mut self) {
            (self.0).0.fetch_sub(1, Ordering::Relaxed);
        }
    }
    activity.0.fetch_add(1, Ordering::Relaxed);
    let _answering = Answering(activity);
    next.run(request).await
}

impl BoundedStream {
    fn new(inner: MaybeTlsStream, slot: OwnedSemaphorePermit, idle_timeout: Duration) -> Self {
        Self {
            inner,
            idle: Box::pin(tokio::time::sleep(idle_timeout)),
            idle_timeout,
            answering: Activity::default(),
            _slot: slot,
        }
    }

    fn active(&mut self) {
        let deadline = Instant::now() + self.idle_timeout;
        self.idle.as_mut().reset(deadline);
    }
}

impl AsyncRead for BoundedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(result) => {
                self.active();
                Poll::Ready(result)
            }
            // hyper reads while a request is answered, to notice the peer leaving: that time
            // is not idle.
            Poll::Pending if self.answering.0.load(Ordering::Relaxed) > 0 => {
                self.active();
                Poll::Pending
            }
            Poll::Pending => match self.idle.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "idle HTTP connection",
                ))),
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

impl AsyncWrite for BoundedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write(cx, buf);
        if result.is_ready() {
            self.active();
        }
        result
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if result.is_ready() {
            self.active();
        }
        result
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}
