//! A fault-injecting TCP proxy for loopback tests: it listens on an address of 127.0.0.0/8,
//! forwards every connection to one target, and on command refuses new connections,
//! blackholes traffic (connections stay open, nothing passes in either direction), or cuts
//! existing connections — for every source, or for one source IP only.
//!
//! # A partition between cluster nodes
//! Cluster nodes bind their outgoing cluster connections to their own cluster IP
//! (127.0.0.(10+i), see [`crate::cluster`]), so a proxy in front of a node knows which peer
//! each connection comes from. Put one proxy in front of every node and make the nodes
//! advertise it:
//!
//! ```text
//!   node 2 (127.0.0.12) ──▶ proxy 1 (127.0.0.21:P1) ──▶ node 1 (127.0.0.11:C1)
//!   node 3 (127.0.0.13) ──▶ proxy 1
//!   node 1, node 3 ──▶ proxy 2 (127.0.0.22:P2) ──▶ node 2 ...
//! ```
//!
//! `ClusterProcess::start_proxied` does exactly this: it starts proxy `i` on
//! `127.0.0.(20+i):0` with no target, starts node `i` with `--cluster-advertise` set to the
//! proxy's address, then points the proxy at the node's announced cluster address. Every
//! cluster connection to node `i` then goes through proxy `i`, whoever opened it, and the
//! nodes join through the proxies too. To cut node 3 off from the others (both ways, as
//! one connection per peer pair may carry both directions):
//!
//! ```text
//! use sluice_tests::proxy::Fault;
//! proxy(3).set_fault_from(ip(1), Fault::Blackhole); // what nodes 1 and 2 send to node 3
//! proxy(3).set_fault_from(ip(2), Fault::Blackhole);
//! proxy(1).set_fault_from(ip(3), Fault::Blackhole); // what node 3 sends to nodes 1 and 2
//! proxy(2).set_fault_from(ip(3), Fault::Blackhole);
//! ```
//!
//! (`ClusterProcess::isolate(3)` and `heal()` do that.) A blackhole holds connections open
//! with nothing passing, as a lost network does: timeouts, not resets, tell the nodes. Use
//! [`Proxy::drop_from`] instead for a peer that is refused outright, or [`Proxy::cut`] to close
//! every connection (both sides see the end) and make the nodes reconnect.
//!
//! The proxy lives on the tokio runtime it was started on; dropping it closes its listener
//! and every connection through it.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// What the proxy does with a connection's traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Fault {
    /// Forwards both ways.
    #[default]
    Pass,
    /// Closes new connections as soon as they are accepted; existing ones keep passing.
    Refuse,
    /// New and existing connections stay open but nothing passes in either direction (the
    /// proxy does not even connect to the target for a new one) until the fault is lifted.
    Blackhole,
}

/// Longest wait for the target to accept a forwarded connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Bytes read from one side before they are written to the other.
const CHUNK: usize = 16 * 1024;

/// Everything a connection's tasks need to know, published on a watch channel so that a
/// change reaches every connection at once.
#[derive(Debug, Default, Clone)]
struct State {
    target: Option<SocketAddr>,
    /// For sources without a rule of their own.
    default: Fault,
    by_source: HashMap<IpAddr, Fault>,
    /// Cuts so far: of every connection, and of one source's; a connection opened before a
    /// cut (its [`CutMark`] is lower) ends.
    cuts: u64,
    cuts_by_source: HashMap<IpAddr, u64>,
    /// The proxy was dropped.
    closed: bool,
}

impl State {
    fn fault_for(&self, source: IpAddr) -> Fault {
        self.by_source.get(&source).copied().unwrap_or(self.default)
    }

    fn mark(&self, source: IpAddr) -> CutMark {
        CutMark {
            source,
            all: self.cuts,
            own: self.cuts_by_source.get(&source).copied().unwrap_or(0),
        }
    }

    /// Whether a connection with `mark` must end now.
    fn ends(&self, mark: &CutMark) -> bool {
        self.closed || self.mark(mark.source) != *mark
    }
}

/// The cut counters when a connection was accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct CutMark {
    source: IpAddr,
    all: u64,
    own: u64,
}

/// A running proxy.
#[derive(Debug)]
pub struct Proxy {
    addr: SocketAddr,
    state: Arc<watch::Sender<State>>,
    live: Arc<AtomicUsize>,
    accepted: Arc<AtomicUsize>,
    accept: JoinHandle<()>,
}

impl Proxy {
    /// Listens on `listen` (`127.0.0.x:0` for a free port) and forwards to `target`; with no
    /// target yet (see [`set_target`](Self::set_target)) new connections are closed.
    pub async fn start(listen: &str, target: Option<SocketAddr>) -> io::Result<Proxy> {
        let listener = TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(watch::Sender::new(State {
            target,
            ..State::default()
        }));
        let live = Arc::new(AtomicUsize::new(0));
        let accepted = Arc::new(AtomicUsize::new(0));
        let accept = tokio::spawn(accept_loop(
            listener,
            Arc::clone(&state),
            Arc::clone(&live),
            Arc::clone(&accepted),
        ));
        Ok(Proxy {
            addr,
            state,
            live,
            accepted,
            accept,
        })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Where new connections are forwarded from now on.
    pub fn set_target(&self, target: SocketAddr) {
        self.state.send_modify(|s| s.target = Some(target));
    }

    /// The fault for every source without a rule of its own.
    pub fn set_fault(&self, fault: Fault) {
        self.state.send_modify(|s| s.default = fault);
    }

    /// The fault for connections from `source` only.
    pub fn set_fault_from(&self, source: IpAddr, fault: Fault) {
        self.state.send_modify(|s| {
            s.by_source.insert(source, fault);
        });
    }

    /// Lifts every fault: all traffic passes again (connections cut stay closed).
    pub fn heal(&self) {
        self.state.send_modify(|s| {
            s.default = Fault::Pass;
            s.by_source.clear();
        });
    }

    /// Closes every existing connection, both sides.
    pub fn cut(&self) {
        self.state.send_modify(|s| s.cuts += 1);
    }

    /// Closes the existing connections from `source`, both sides.
    pub fn cut_from(&self, source: IpAddr) {
        self.state
            .send_modify(|s| *s.cuts_by_source.entry(source).or_default() += 1);
    }

    /// Drops `source` altogether: its connections are cut and new ones refused.
    pub fn drop_from(&self, source: IpAddr) {
        self.state.send_modify(|s| {
            s.by_source.insert(source, Fault::Refuse);
            *s.cuts_by_source.entry(source).or_default() += 1;
        });
    }

    /// Connections open through it now.
    pub fn connections(&self) -> usize {
        self.live.load(Ordering::SeqCst)
    }

    /// Connections it accepted so far (refused ones included).
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.state.send_modify(|s| s.closed = true);
    }
}

async fn accept_loop(
    listener: TcpListener,
    state: Arc<watch::Sender<State>>,
    live: Arc<AtomicUsize>,
    accepted: Arc<AtomicUsize>,
) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(_) => {
                // Out of descriptors, or a connection reset before it was accepted: back
                // off instead of spinning.
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        accepted.fetch_add(1, Ordering::SeqCst);
        let (refused, mark) = {
            let s = state.borrow();
            let refused = s.closed || s.fault_for(peer.ip()) == Fault::Refuse;
            (refused, s.mark(peer.ip()))
        };
        if refused {
            drop(stream);
            continue;
        }
        let guard = LiveGuard::new(&live);
        tokio::spawn(forward(stream, mark, state.subscribe(), guard));
    }
}

/// Counts a connection while either of its directions runs.
#[derive(Debug)]
struct LiveGuard(Arc<AtomicUsize>);

impl LiveGuard {
    fn new(live: &Arc<AtomicUsize>) -> Arc<LiveGuard> {
        live.fetch_add(1, Ordering::SeqCst);
        Arc::new(LiveGuard(Arc::clone(live)))
    }
}

impl Drop for LiveGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// One accepted connection: waits while it is blackholed, connects to the target, then
/// pumps both directions until both end or the connection is cut.
async fn forward(
    client: TcpStream,
    mark: CutMark,
    mut state: watch::Receiver<State>,
    guard: Arc<LiveGuard>,
) {
    if !wait_passing(&mut state, &mark).await {
        return;
    }
    let Some(target) = state.borrow().target else {
        return;
    };
    let server = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(target)).await {
        Ok(Ok(server)) => server,
        _ => return,
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    let upstream = tokio::spawn(pump(
        client_read,
        server_write,
        mark,
        state.clone(),
        Arc::clone(&guard),
    ));
    pump(server_read, client_write, mark, state, guard).await;
    let _ = upstream.await;
}

/// Waits until traffic of the connection with `mark` may pass; `false` if it is cut (or
/// the proxy closed) meanwhile.
async fn wait_passing(state: &mut watch::Receiver<State>, mark: &CutMark) -> bool {
    loop {
        {
            let s = state.borrow_and_update();
            if s.ends(mark) {
                return false;
            }
            if s.fault_for(mark.source) != Fault::Blackhole {
                return true;
            }
        }
        if state.changed().await.is_err() {
            return false;
        }
    }
}

/// Copies one direction. A change of the state interrupts a read or a write (both
/// cancel-safe on a TCP stream) to look at it again; an end of stream is passed on as a
/// half-close.
async fn pump(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    mark: CutMark,
    mut state: watch::Receiver<State>,
    _guard: Arc<LiveGuard>,
) {
    let mut buf = vec![0u8; CHUNK];
    loop {
        if !wait_passing(&mut state, &mark).await {
            return;
        }
        let n = tokio::select! {
            read = from.read(&mut buf) => match read {
                Ok(0) | Err(_) => {
                    let _ = to.shutdown().await;
                    return;
                }
                Ok(n) => n,
            },
            changed = state.changed() => {
                if changed.is_err() {
                    return;
                }
                continue;
            }
        };
        let mut written = 0;
        while written < n {
            // Bytes already read wait here while the connection is blackholed.
            if !wait_passing(&mut state, &mark).await {
                return;
            }
            tokio::select! {
                write = to.write(&buf[written..n]) => match write {
                    Ok(0) | Err(_) => return,
                    Ok(w) => written += w,
                },
                changed = state.changed() => {
                    if changed.is_err() {
                        return;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpSocket;
    use tokio::sync::mpsc;

    /// Long enough for a forwarded byte to arrive many times over on loopback, even on a
    /// busy machine; used only to assert that nothing arrives.
    const QUIET: Duration = Duration::from_millis(300);
    const BOUND: Duration = Duration::from_secs(10);

    /// An echo server on `127.0.0.1:0`; every accepted connection is also reported.
    async fn echo_server() -> (SocketAddr, mpsc::UnboundedReceiver<SocketAddr>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((mut stream, peer)) = listener.accept().await {
                let _ = tx.send(peer);
                tokio::spawn(async move {
                    let (mut r, mut w) = stream.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        (addr, rx)
    }

    /// A server that hands each accepted connection to the test.
    async fn holding_server() -> (SocketAddr, mpsc::UnboundedReceiver<TcpStream>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let _ = tx.send(stream);
            }
        });
        (addr, rx)
    }

    /// Connects to `to` from source IP `from`.
    async fn connect_from(from: &str, to: SocketAddr) -> TcpStream {
        let socket = TcpSocket::new_v4().unwrap();
        socket.bind(format!("{from}:0").parse().unwrap()).unwrap();
        socket.connect(to).await.unwrap()
    }

    async fn round_trip(stream: &mut TcpStream, data: &[u8]) {
        stream.write_all(data).await.unwrap();
        let mut back = vec![0u8; data.len()];
        tokio::time::timeout(BOUND, stream.read_exact(&mut back))
            .await
            .expect("the echo comes back")
            .unwrap();
        assert_eq!(back, data);
    }

    async fn nothing_arrives(stream: &mut TcpStream) {
        let mut byte = [0u8; 1];
        let read = tokio::time::timeout(QUIET, stream.read(&mut byte)).await;
        assert!(read.is_err(), "something arrived: {read:?}");
    }

    async fn sees_the_end(stream: &mut TcpStream) {
        let mut buf = [0u8; 64];
        let read = tokio::time::timeout(BOUND, stream.read(&mut buf))
            .await
            .expect("the connection ends within the bound");
        assert!(matches!(read, Ok(0) | Err(_)), "still open: {read:?}");
    }

    #[tokio::test]
    async fn data_passes_both_ways_through_a_passing_proxy() {
        let (echo, _) = echo_server().await;
        let proxy = Proxy::start("127.0.0.1:0", Some(echo)).await.unwrap();
        let mut client = TcpStream::connect(proxy.addr()).await.unwrap();
        round_trip(&mut client, b"hello").await;
        let big: Vec<u8> = (0..200_000u32).map(|i| i as u8).collect();
        round_trip(&mut client, &big).await;
        assert_eq!((proxy.connections(), proxy.accepted()), (1, 1));
    }

    #[tokio::test]
    async fn a_blackhole_passes_nothing_either_way_until_it_is_lifted() {
        let (echo, mut accepted) = echo_server().await;
        let proxy = Proxy::start("127.0.0.1:0", Some(echo)).await.unwrap();
        let mut existing = TcpStream::connect(proxy.addr()).await.unwrap();
        round_trip(&mut existing, b"before").await;
        accepted.recv().await.unwrap();

        proxy.set_fault(Fault::Blackhole);
        existing.write_all(b"held").await.unwrap();
        nothing_arrives(&mut existing).await;
        // A new connection is accepted but never reaches the target.
        let mut new = TcpStream::connect(proxy.addr()).await.unwrap();
        new.write_all(b"new").await.unwrap();
        nothing_arrives(&mut new).await;
        assert!(accepted.try_recv().is_err(), "the target saw a connection");

        proxy.heal();
        let mut back = [0u8; 4];
        tokio::time::timeout(BOUND, existing.read_exact(&mut back))
            .await
            .expect("the held bytes pass once healed")
            .unwrap();
        assert_eq!(&back, b"held");
        let mut back = [0u8; 3];
        tokio::time::timeout(BOUND, new.read_exact(&mut back))
            .await
            .expect("the new connection goes through once healed")
            .unwrap();
        assert_eq!(&back, b"new");
    }

    #[tokio::test]
    async fn a_cut_closes_both_sides_of_every_connection() {
        let (server, mut accepted) = holding_server().await;
        let proxy = Proxy::start("127.0.0.1:0", Some(server)).await.unwrap();
        let mut client = TcpStream::connect(proxy.addr()).await.unwrap();
        let mut far_end = tokio::time::timeout(BOUND, accepted.recv())
            .await
            .unwrap()
            .unwrap();
        client.write_all(b"x").await.unwrap();
        let mut byte = [0u8; 1];
        far_end.read_exact(&mut byte).await.unwrap();

        proxy.cut();
        sees_the_end(&mut client).await;
        sees_the_end(&mut far_end).await;
        // The proxy itself still accepts and forwards new connections.
        let mut again = TcpStream::connect(proxy.addr()).await.unwrap();
        let mut far_again = tokio::time::timeout(BOUND, accepted.recv())
            .await
            .unwrap()
            .unwrap();
        again.write_all(b"y").await.unwrap();
        far_again.read_exact(&mut byte).await.unwrap();
        assert_eq!(&byte, b"y");
    }

    #[tokio::test]
    async fn refusing_closes_new_connections_and_keeps_existing_ones() {
        let (echo, _) = echo_server().await;
        let proxy = Proxy::start("127.0.0.1:0", Some(echo)).await.unwrap();
        let mut existing = TcpStream::connect(proxy.addr()).await.unwrap();
        round_trip(&mut existing, b"one").await;

        proxy.set_fault(Fault::Refuse);
        let mut refused = TcpStream::connect(proxy.addr()).await.unwrap();
        sees_the_end(&mut refused).await;
        round_trip(&mut existing, b"two").await;
    }

    #[tokio::test]
    async fn a_rule_for_one_source_ip_hits_only_that_ip() {
        let (echo, _) = echo_server().await;
        let proxy = Proxy::start("127.0.0.41:0", Some(echo)).await.unwrap();
        let ip: IpAddr = "127.0.0.31".parse().unwrap();
        let mut from_31 = connect_from("127.0.0.31", proxy.addr()).await;
        let mut from_32 = connect_from("127.0.0.32", proxy.addr()).await;
        round_trip(&mut from_31, b"a").await;
        round_trip(&mut from_32, b"a").await;

        proxy.set_fault_from(ip, Fault::Blackhole);
        from_31.write_all(b"b").await.unwrap();
        nothing_arrives(&mut from_31).await;
        round_trip(&mut from_32, b"b").await;

        proxy.drop_from(ip);
        sees_the_end(&mut from_31).await;
        let mut new_31 = connect_from("127.0.0.31", proxy.addr()).await;
        sees_the_end(&mut new_31).await;
        round_trip(&mut from_32, b"c").await;
        let mut new_32 = connect_from("127.0.0.32", proxy.addr()).await;
        round_trip(&mut new_32, b"d").await;

        proxy.heal();
        let mut healed_31 = connect_from("127.0.0.31", proxy.addr()).await;
        round_trip(&mut healed_31, b"e").await;
    }

    #[tokio::test]
    async fn dropping_the_proxy_closes_its_connections() {
        let (server, mut accepted) = holding_server().await;
        let proxy = Proxy::start("127.0.0.1:0", Some(server)).await.unwrap();
        let mut client = TcpStream::connect(proxy.addr()).await.unwrap();
        let mut far_end = tokio::time::timeout(BOUND, accepted.recv())
            .await
            .unwrap()
            .unwrap();
        drop(proxy);
        sees_the_end(&mut client).await;
        sees_the_end(&mut far_end).await;
    }
}
