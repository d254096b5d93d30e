//! `etcd-route-bench`: a SPIKE, not a product. It exists only to put a replicated-W1 figure
//! for the route docs/cluster.md ("Why openraft and not etcd") turned down next to openraft's:
//! etcd elects the leader, our own code ships the queue log to the followers (the shape
//! LavinMQ has). The broker uses none of it.
//!
//! - `w1` starts a 3-member etcd on loopback as `benches/etcd-spike.sh` does, then 3 `node`
//!   processes of this binary (own data directory and ports each), runs the load against the
//!   leader, and stops every process it started (by pid) before removing its temp dir.
//! - Control path, etcd's v3 JSON gateway: each node grants a lease (TTL 2 s) it keeps alive
//!   and campaigns with a txn "put the leader key on my lease if its create_revision is 0".
//!   A loser learns the leader from that txn and takes replication only from it; a leader
//!   whose lease is lost stops.
//! - Data path, ours: the leader appends publishes to Sluice's queue log (`sluice_broker::
//!   storage`, group commit with fdatasync) and ships each appended batch (messages and the
//!   consumer's acks, as Sluice replicates its settles) over TCP to both followers, which
//!   append it to their own log, fsync and answer their durable seq. A publish is confirmed,
//!   and delivered, once durable on the leader and on at least one follower (2 of 3).
//! - Load, as `cluster-bench w1`: 1 publisher (confirm window 1000), 1 consumer (prefetch 1000,
//!   acking each message), 128 B bodies, 3 s warm-up, then `--duration` seconds measured.
//!
//! NOT done (the hand-written consensus the LavinMQ shape needs and the issue rules out): no
//! truncation of a deposed leader's unconfirmed tail, no catch-up of a lagging or restarted
//! follower (a gap is an error), no failover of the data path (followers never take over),
//! no flow control towards a slow follower; one queue, one publisher.
//!
//! ```text
//! CARGO_TARGET_DIR=/work/target-etcd cargo build --release -p sluice-benches --bin etcd-route-bench
//! /work/target-etcd/release/etcd-route-bench w1 --duration 20 [--nodes 1]
//! ```

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, ensure, Context, Result};
use base64::{engine::general_purpose::STANDARD as B64, Engine as _};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use clap::Parser;
use serde_json::{json, Value};
use sluice_benches::storage::new_histogram;
use sluice_broker::storage::{Durability, Epoch, QueueLog, Store, StoreConfig};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};

/// The election key of the one queue.
const LEADER_KEY: &str = "sluice-spike/w1/leader";
/// The shortest lease TTL etcd accepts with a 1 s election timeout (benches/etcd-spike.sh).
const LEASE_TTL: Duration = Duration::from_secs(2);
/// etcd's client ports, as benches/etcd-spike.sh has them.
const ETCD: [&str; 3] = ["127.0.0.1:23791", "127.0.0.1:23792", "127.0.0.1:23793"];
/// The etcd member this process asks first (each node its own).
static ETCD_FIRST: AtomicUsize = AtomicUsize::new(0);
const WARMUP: Duration = Duration::from_secs(3);

#[derive(Debug, Parser)]
#[command(
    name = "etcd-route-bench",
    about = "Spike: replicated W1, etcd leases + our log shipping"
)]
enum Mode {
    /// Start etcd and the nodes on loopback, run W1 against the leader, stop everything.
    W1(Load),
    /// One node (started by `w1`).
    Node(NodeArgs),
}

#[derive(Debug, clap::Args)]
struct Load {
    /// Seconds measured (after a 3 s warm-up).
    #[arg(long, default_value_t = 20)]
    duration: u64,
    #[arg(long, default_value_t = 128)]
    size: usize,
    /// Publishes sent and not yet confirmed, at most.
    #[arg(long, default_value_t = 1000)]
    window: u64,
    /// Deliveries not yet acked, at most.
    #[arg(long, default_value_t = 1000)]
    prefetch: u32,
    /// 3, or 1 for the same path without replication (confirm = durable on the leader).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=3))]
    nodes: u32,
}

#[derive(Debug, clap::Args)]
struct NodeArgs {
    id: u32,
    dir: PathBuf,
    /// Where the leader takes the publisher and the consumer.
    client: SocketAddr,
    /// Where a follower takes the leader's replication connection.
    repl: SocketAddr,
    /// The other nodes' replication addresses.
    peers: Vec<SocketAddr>,
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> Result<()> {
    match Mode::parse() {
        Mode::W1(load) => w1(&load).await,
        Mode::Node(args) => node(args).await,
    }
}

// ---- etcd's v3 JSON gateway: keys and values base64.

/// POSTs `body` to `path` on the members in turn (this process's own first) until one answers
/// 200; its (first) JSON object.
async fn etcd(path: &str, body: &Value) -> Result<Value> {
    let first = ETCD_FIRST.load(Ordering::Relaxed);
    let mut last = anyhow!("no etcd member");
    for i in 0..ETCD.len() {
        let addr = ETCD[(first + i) % ETCD.len()];
        match tokio::time::timeout(Duration::from_secs(2), http_post(addr, path, body)).await {
            Ok(Ok(v)) => return Ok(v),
            Ok(Err(e)) => last = e,
            Err(_) => last = anyhow!("{addr}{path}: no answer within 2 s"),
        }
    }
    Err(last)
}

/// One HTTP/1.0 POST: the answer ends with the connection (never chunked, so a streamed
/// answer such as a lease keep-alive needs no decoding of its own).
async fn http_post(addr: &str, path: &str, body: &Value) -> Result<Value> {
    let body = body.to_string();
    let mut stream = TcpStream::connect(addr).await?;
    let request = format!(
        "POST {path} HTTP/1.0\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await?;
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .context("no end of header")?;
    let (head, payload) = (String::from_utf8_lossy(&raw[..end]), &raw[end + 4..]);
    let status = head.split(' ').nth(1).unwrap_or("?");
    let text = || String::from_utf8_lossy(payload);
    ensure!(status == "200", "{addr}{path}: HTTP {status}: {}", text());
    // A streamed answer is a run of JSON objects: the first is ours.
    let mut objects = serde_json::Deserializer::from_slice(payload).into_iter::<Value>();
    Ok(objects
        .next()
        .with_context(|| format!("{addr}{path}: empty answer"))??)
}

/// Grants a lease, keeps it alive, and tries once to create the leader key on it. Returns the
/// key's value (`"<id> <client addr>"`), whether it is ours, and a flag that turns true once
/// our lease is gone.
async fn campaign(me: &str) -> Result<(String, bool, watch::Receiver<bool>)> {
    let grant = etcd("/v3/lease/grant", &json!({ "TTL": LEASE_TTL.as_secs() })).await?;
    let lease = grant["ID"].as_str().context("no lease id")?.to_owned();
    let (lost_tx, lost) = watch::channel(false);
    let id = lease.clone();
    tokio::spawn(async move {
        // Renewed every quarter TTL; lost when etcd says so (no TTL left) or no renewal
        // worked for a whole TTL.
        let mut renewed = Instant::now();
        loop {
            tokio::time::sleep(LEASE_TTL / 4).await;
            match etcd("/v3/lease/keepalive", &json!({ "ID": id })).await {
                Ok(v) if v["result"]["TTL"].as_str().is_some_and(|t| t != "0") => {
                    renewed = Instant::now();
                }
                Ok(v) => break eprintln!("lease {id} expired: {v}"),
                Err(e) if renewed.elapsed() >= LEASE_TTL => break eprintln!("lease {id}: {e:#}"),
                Err(_) => {}
            }
        }
        lost_tx.send_replace(true);
    });
    let key = B64.encode(LEADER_KEY);
    let txn = json!({
        "compare": [{ "target": "CREATE", "result": "EQUAL", "key": key, "create_revision": "0" }],
        "success": [{ "request_put": { "key": key, "value": B64.encode(me), "lease": lease } }],
        "failure": [{ "request_range": { "key": key } }],
    });
    let answer = etcd("/v3/kv/txn", &txn).await?;
    if answer["succeeded"].as_bool() == Some(true) {
        return Ok((me.to_owned(), true, lost));
    }
    let value = &answer["responses"][0]["response_range"]["kvs"][0]["value"];
    let value = B64.decode(value.as_str().context("no leader in the txn's answer")?)?;
    Ok((String::from_utf8(value)?, false, lost))
}

fn parse_leader(value: &str) -> Result<(u32, String)> {
    let (id, addr) = value.split_once(' ').context("a leader value")?;
    Ok((id.parse()?, addr.to_owned()))
}

// ---- Framing: every message on every connection is a u32 length (LE) and a payload.

fn put_frame(buf: &mut BytesMut, parts: &[&[u8]]) {
    buf.put_u32_le(parts.iter().map(|p| p.len()).sum::<usize>() as u32);
    parts.iter().for_each(|p| buf.put_slice(p));
}

fn u64_frame(v: u64) -> Bytes {
    let mut buf = BytesMut::with_capacity(12);
    put_frame(&mut buf, &[&v.to_le_bytes()]);
    buf.freeze()
}

/// Reads what the socket has into `buf`; false at end of stream.
async fn read_more(rd: &mut (impl AsyncRead + Unpin), buf: &mut BytesMut) -> Result<bool> {
    if buf.capacity() - buf.len() < 64 << 10 {
        buf.reserve(1 << 20);
    }
    Ok(rd.read_buf(buf).await? > 0)
}

/// The next complete frame's payload in `buf`, if any.
fn take_frame(buf: &mut BytesMut) -> Option<Bytes> {
    let len = u32::from_le_bytes(buf.get(..4)?.try_into().ok()?) as usize;
    if buf.len() < 4 + len {
        return None;
    }
    buf.advance(4);
    Some(buf.split_to(len).freeze())
}

/// A task that writes whatever is sent to it, as many frames per write as are waiting.
fn spawn_writer(mut wr: OwnedWriteHalf) -> mpsc::UnboundedSender<Bytes> {
    let (tx, mut rx) = mpsc::unbounded_channel::<Bytes>();
    tokio::spawn(async move {
        let mut out = Vec::with_capacity(1 << 20);
        while let Some(first) = rx.recv().await {
            out.clear();
            out.extend_from_slice(&first);
            while let Ok(more) = rx.try_recv() {
                out.extend_from_slice(&more);
            }
            if wr.write_all(&out).await.is_err() {
                return;
            }
        }
    });
    tx
}

/// A task that calls `durable(seq)` once each `(epoch, seq)` sent to it is durable, in order;
/// it stops when `durable` returns false.
fn spawn_durable_watch(
    durability: Durability,
    durable: impl Fn(u64) -> bool + Send + 'static,
) -> mpsc::UnboundedSender<(Epoch, u64)> {
    let (tx, mut rx) = mpsc::unbounded_channel::<(Epoch, u64)>();
    tokio::spawn(async move {
        while let Some((epoch, seq)) = rx.recv().await {
            durability.wait(epoch).await;
            if !durable(seq) {
                return;
            }
        }
    });
    tx
}

/// Connects, retrying for up to 20 s (the peer may still be starting).
async fn connect(addr: &str) -> Result<TcpStream> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match TcpStream::connect(addr).await {
            Ok(s) => return s.set_nodelay(true).map(|()| s).map_err(Into::into),
            Err(e) if Instant::now() >= deadline => return Err(e).context(addr.to_owned()),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

// ---- A node: campaign, then lead or follow.

async fn node(args: NodeArgs) -> Result<()> {
    let NodeArgs {
        id,
        dir,
        client,
        repl,
        peers,
    } = args;
    ETCD_FIRST.store(id as usize % ETCD.len(), Ordering::Relaxed);
    let store = Store::open(&dir, StoreConfig::default())?;
    let log = store.create_queue()?;
    // Bound before campaigning, so the winner's dial finds every follower listening.
    let repl_listener = TcpListener::bind(repl).await?;
    let (leader, won, lost) = campaign(&format!("{id} {client}")).await?;
    let (leader, _) = parse_leader(&leader)?;
    eprintln!("node {id}: node {leader} leads (from etcd)");
    if won {
        lead(id, log, client, &peers, lost).await
    } else {
        follow(log, repl_listener, leader).await
    }
}

/// Appends each replicated batch (first seq, timestamp in ms, message count, each body as a
/// u32 length and bytes, then the acked seqs) and answers its last seq once durable.
async fn follow(mut log: QueueLog, listener: TcpListener, leader: u32) -> Result<()> {
    let (stream, _) = listener.accept().await?;
    stream.set_nodelay(true)?;
    let (mut rd, wr) = stream.into_split();
    let from = rd.read_u32_le().await?;
    ensure!(
        from == leader,
        "node {from} replicates, etcd says node {leader} leads"
    );
    let out = spawn_writer(wr);
    let durable = spawn_durable_watch(log.durability().clone(), move |seq| {
        out.send(u64_frame(seq)).is_ok()
    });
    let mut buf = BytesMut::new();
    while read_more(&mut rd, &mut buf).await? {
        while let Some(mut batch) = take_frame(&mut buf) {
            let (first, ts, count) = (batch.get_u64_le(), batch.get_u64_le(), batch.get_u32_le());
            // A gap would need catch-up, which this spike does not have.
            ensure!(
                first == log.next_seq(),
                "batch at {first}, log at {}",
                log.next_seq()
            );
            let mut epoch = 0;
            for _ in 0..count {
                let len = batch.get_u32_le() as usize;
                epoch = epoch.max(log.append(&[], &batch.split_to(len), ts)?.epoch);
            }
            while batch.has_remaining() {
                log.ack(batch.get_u64_le())?;
            }
            epoch = epoch.max(log.flush()?);
            durable.send((epoch, log.next_seq() - 1))?;
        }
    }
    Ok(())
}

/// What the leader's core task hears about.
#[derive(Debug)]
enum Event {
    Publisher(mpsc::UnboundedSender<Bytes>),
    Consumer(mpsc::UnboundedSender<Bytes>, u32),
    Published(Vec<Bytes>),
    Acked(Vec<u64>),
    /// Every seq up to this one is durable here.
    LocalDurable(u64),
    /// Every seq up to this one is durable on follower `.0`.
    FollowerDurable(usize, u64),
}

async fn lead(
    id: u32,
    mut log: QueueLog,
    client: SocketAddr,
    peers: &[SocketAddr],
    mut lost: watch::Receiver<bool>,
) -> Result<()> {
    let (tx, mut rx) = mpsc::unbounded_channel::<Event>();
    let mut followers = Vec::new();
    for (i, peer) in peers.iter().enumerate() {
        let (mut rd, mut wr) = connect(&peer.to_string()).await?.into_split();
        wr.write_u32_le(id).await?;
        followers.push(spawn_writer(wr));
        let tx = tx.clone();
        tokio::spawn(async move {
            let mut buf = BytesMut::new();
            while let Ok(true) = read_more(&mut rd, &mut buf).await {
                let mut last = None;
                while let Some(mut f) = take_frame(&mut buf) {
                    last = Some(f.get_u64_le());
                }
                if last.is_some_and(|seq| tx.send(Event::FollowerDurable(i, seq)).is_err()) {
                    return;
                }
            }
        });
    }
    // Clients are taken once every follower is connected.
    let listener = TcpListener::bind(client).await?;
    let accept_tx = tx.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let tx = accept_tx.clone();
            tokio::spawn(async move {
                if let Err(e) = serve_client(stream, tx).await {
                    eprintln!("client: {e:#}");
                }
            });
        }
    });
    let local_tx = tx.clone();
    let durable = spawn_durable_watch(log.durability().clone(), move |seq| {
        local_tx.send(Event::LocalDurable(seq)).is_ok()
    });
    drop(tx);

    let base = log.next_seq() - 1; // the seq before the first publish
    let (mut local, mut committed, mut delivered, mut unacked) = (base, base, base, 0);
    let mut replicated = vec![base; followers.len()];
    let mut publisher: Option<mpsc::UnboundedSender<Bytes>> = None;
    let mut consumer: Option<(mpsc::UnboundedSender<Bytes>, u32)> = None;
    let (mut bodies, mut acks) = (Vec::new(), Vec::new());
    loop {
        let mut event = tokio::select! {
            event = rx.recv() => event.context("the leader's channel closed")?,
            _ = lost.changed() => bail!("node {id}: lease lost, it may no longer lead: stopping"),
        };
        // Everything waiting (up to 256 events) makes one batch.
        for n in 1.. {
            match event {
                Event::Publisher(out) => publisher = Some(out),
                Event::Consumer(out, prefetch) => consumer = Some((out, prefetch)),
                Event::Published(b) => bodies.extend(b),
                Event::Acked(a) => {
                    unacked -= a.len() as u32;
                    acks.extend(a);
                }
                Event::LocalDurable(seq) => local = local.max(seq),
                Event::FollowerDurable(i, seq) => replicated[i] = replicated[i].max(seq),
            }
            match rx.try_recv() {
                Ok(more) if n < 256 => event = more,
                _ => break,
            }
        }
        if !bodies.is_empty() || !acks.is_empty() {
            let (first, ts) = (
                log.next_seq(),
                SystemTime::now().duration_since(UNIX_EPOCH)?,
            );
            let ts = ts.as_millis() as u64;
            let mut epoch = 0;
            for b in &bodies {
                epoch = epoch.max(log.append(&[], b, ts)?.epoch);
            }
            for &seq in &acks {
                log.ack(seq)?;
            }
            epoch = epoch.max(log.flush()?);
            durable.send((epoch, log.next_seq() - 1))?;
            let len = 20 + bodies.iter().map(|b| 4 + b.len()).sum::<usize>() + 8 * acks.len();
            let mut batch = BytesMut::with_capacity(4 + len);
            batch.put_u32_le(len as u32);
            batch.put_u64_le(first);
            batch.put_u64_le(ts);
            batch.put_u32_le(bodies.len() as u32);
            for b in bodies.drain(..) {
                batch.put_u32_le(b.len() as u32);
                batch.put_slice(&b);
            }
            acks.drain(..).for_each(|a| batch.put_u64_le(a));
            let batch = batch.freeze();
            for f in &followers {
                f.send(batch.clone())
                    .context("a follower's connection closed")?;
            }
        }
        // Durable here and on at least one follower: 2 of 3 (alone: here).
        let commit = local.min(replicated.iter().copied().max().unwrap_or(local));
        if commit > committed {
            committed = commit;
            if let Some(p) = &publisher {
                let _ = p.send(u64_frame(committed - base)); // confirmed so far
            }
        }
        if let Some((out, prefetch)) = &consumer {
            let mut buf = BytesMut::new();
            while delivered < committed && unacked < *prefetch {
                (delivered, unacked) = (delivered + 1, unacked + 1);
                put_frame(
                    &mut buf,
                    &[&delivered.to_le_bytes(), &log.read(delivered)?.body],
                );
            }
            if !buf.is_empty() {
                let _ = out.send(buf.freeze());
            }
        }
    }
}

/// A client of the leader: `P` then publishes (frames of a body), or `C`, a u32 prefetch,
/// then acks (frames of a u64 seq). Gets confirms (frames of the count so far) or deliveries
/// (frames of a seq and a body).
async fn serve_client(stream: TcpStream, tx: mpsc::UnboundedSender<Event>) -> Result<()> {
    stream.set_nodelay(true)?;
    let (mut rd, wr) = stream.into_split();
    let publisher = rd.read_u8().await? == b'P';
    tx.send(if publisher {
        Event::Publisher(spawn_writer(wr))
    } else {
        Event::Consumer(spawn_writer(wr), rd.read_u32_le().await?)
    })?;
    let mut buf = BytesMut::new();
    while read_more(&mut rd, &mut buf).await? {
        let (mut bodies, mut acks) = (Vec::new(), Vec::new());
        while let Some(mut f) = take_frame(&mut buf) {
            if publisher {
                bodies.push(f);
            } else {
                acks.push(f.get_u64_le());
            }
        }
        if !bodies.is_empty() {
            tx.send(Event::Published(bodies))?;
        }
        if !acks.is_empty() {
            tx.send(Event::Acked(acks))?;
        }
    }
    Ok(())
}

// ---- The orchestrator: etcd, the nodes, the load.

/// Processes started by `w1`, stopped by pid when dropped (TERM, then KILL after 5 s).
#[derive(Debug, Default)]
struct Procs(Vec<Child>);

impl Procs {
    fn spawn(&mut self, cmd: &mut Command, log: &Path) -> Result<()> {
        let out = std::fs::File::create(log)?;
        let cmd = cmd
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out);
        self.0
            .push(cmd.spawn().with_context(|| format!("starting {cmd:?}"))?);
        Ok(())
    }
}

impl Drop for Procs {
    fn drop(&mut self) {
        use rustix::process::{kill_process, Pid, Signal};
        for c in &self.0 {
            let _ = kill_process(Pid::from_child(c), Signal::TERM);
        }
        for c in &mut self.0 {
            let deadline = Instant::now() + Duration::from_secs(5);
            while matches!(c.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            if matches!(c.try_wait(), Ok(None)) {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

async fn w1(load: &Load) -> Result<()> {
    let nodes = load.nodes;
    let dir = tempfile::Builder::new().prefix("etcd-route-").tempdir()?;
    let mut procs = Procs::default(); // dropped (all stopped) before `dir` is removed
    let result = start_and_run(dir.path(), &mut procs, load).await;
    if result.is_err() {
        let names = ["e1", "e2", "e3", "node-1", "node-2", "node-3"];
        for name in names.iter().take(3 + nodes as usize) {
            let log = std::fs::read_to_string(dir.path().join(format!("{name}.log")));
            let log = log.unwrap_or_default();
            let tail = log.lines().skip(log.lines().count().saturating_sub(15));
            eprintln!(
                "--- {name}.log (end)\n{}",
                tail.collect::<Vec<_>>().join("\n")
            );
        }
    }
    drop(procs);
    result
}

async fn start_and_run(dir: &Path, procs: &mut Procs, load: &Load) -> Result<()> {
    let nodes = load.nodes;
    let cluster = "e1=http://127.0.0.1:23801,e2=http://127.0.0.1:23802,e3=http://127.0.0.1:23803";
    for i in 1..=3 {
        let (peer, client) = (
            format!("http://127.0.0.1:2380{i}"),
            format!("http://127.0.0.1:2379{i}"),
        );
        let mut etcd = Command::new("etcd");
        etcd.args(["--name", &format!("e{i}"), "--data-dir"])
            .arg(dir.join(format!("e{i}")));
        etcd.args([
            "--listen-peer-urls",
            &peer,
            "--initial-advertise-peer-urls",
            &peer,
        ]);
        etcd.args([
            "--listen-client-urls",
            &client,
            "--advertise-client-urls",
            &client,
        ]);
        etcd.args([
            "--initial-cluster",
            cluster,
            "--initial-cluster-state",
            "new",
        ]);
        etcd.args(["--heartbeat-interval", "100", "--election-timeout", "1000"]);
        procs.spawn(&mut etcd, &dir.join(format!("e{i}.log")))?;
    }
    // etcd is up once every member serves a (linearizable) read.
    let key = json!({ "key": B64.encode(LEADER_KEY) });
    let deadline = Instant::now() + Duration::from_secs(20);
    for addr in ETCD {
        while http_post(addr, "/v3/kv/range", &key).await.is_err() {
            ensure!(Instant::now() < deadline, "etcd {addr} not up within 20 s");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let repl = |i: u32| format!("127.0.0.1:{}", 25720 + i);
    for i in 1..=nodes {
        let mut node = Command::new(std::env::current_exe()?);
        node.args(["node", &i.to_string()])
            .arg(dir.join(format!("node-{i}")));
        node.args([format!("127.0.0.1:{}", 25710 + i), repl(i)]);
        node.args((1..=nodes).filter(|&p| p != i).map(repl));
        procs.spawn(&mut node, &dir.join(format!("node-{i}.log")))?;
    }
    // The leader, as etcd records it.
    let deadline = Instant::now() + Duration::from_secs(20);
    let value = loop {
        let answer = etcd("/v3/kv/range", &key).await?;
        if let Some(v) = answer["kvs"][0]["value"].as_str() {
            break String::from_utf8(B64.decode(v)?)?;
        }
        ensure!(Instant::now() < deadline, "no leader within 20 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let (leader, addr) = parse_leader(&value)?;
    let (confirmed, delivered, secs, latency) = run_load(&addr, load).await?;
    let Load { size, .. } = load;
    println!(
        "etcd-route W1 (1P/1C, {size} B, {nodes} node(s), confirm = durable on {}, on leader node \
         {leader}): {:.0} msg/s confirmed, {:.0} msg/s delivered over {secs:.1} s; confirm latency \
         p50 {:.1} ms, p99 {:.1} ms",
        if nodes == 1 {
            "the leader"
        } else {
            "the leader + 1 follower"
        },
        confirmed as f64 / secs,
        delivered as f64 / secs,
        latency.0,
        latency.1,
    );
    ensure!(confirmed > 0, "nothing was confirmed");
    Ok(())
}

/// Runs W1 against the leader at `addr`: messages confirmed and delivered during the measured
/// seconds, those seconds, and the confirm latency's p50 and p99 (ms) over them.
async fn run_load(addr: &str, load: &Load) -> Result<(u64, u64, f64, (f64, f64))> {
    // The consumer: acks every message, and checks they come in seq order, once each.
    let (mut rd, mut wr) = connect(addr).await?.into_split();
    wr.write_u8(b'C').await?;
    wr.write_u32_le(load.prefetch).await?;
    let delivered = Arc::new(AtomicU64::new(0));
    let counter = Arc::clone(&delivered);
    let mut consuming = tokio::spawn(async move {
        let (mut buf, mut acks, mut last) = (BytesMut::new(), BytesMut::new(), None::<u64>);
        while read_more(&mut rd, &mut buf).await? {
            acks.clear();
            while let Some(mut m) = take_frame(&mut buf) {
                let seq = m.get_u64_le();
                ensure!(
                    last.is_none_or(|l| seq == l + 1),
                    "seq {seq} after {last:?}"
                );
                last = Some(seq);
                put_frame(&mut acks, &[&seq.to_le_bytes()]);
                counter.fetch_add(1, Ordering::Relaxed);
            }
            wr.write_all(&acks).await?;
        }
        Err::<(), _>(anyhow!("the consumer's connection closed"))
    });

    // The publisher: keeps `window` messages unconfirmed; confirms are counts so far. The
    // confirms' reader stamps each confirm against its send time (sent in order).
    let (mut rd, mut wr) = connect(addr).await?.into_split();
    wr.write_u8(b'P').await?;
    let start = Instant::now();
    let (from, end) = (
        start + WARMUP,
        start + WARMUP + Duration::from_secs(load.duration),
    );
    let (sent_tx, mut sent_at) = mpsc::unbounded_channel::<(Instant, u64)>();
    let (confirmed_tx, confirmed) = watch::channel(0u64);
    let confirming = tokio::spawn(async move {
        let (mut buf, mut seen, mut hist) = (BytesMut::new(), 0u64, new_histogram());
        let mut pending = VecDeque::<(Instant, u64)>::new();
        // Until `end`: reading on could wait for ever once every confirm is in.
        while let Ok(more) = tokio::time::timeout_at(end.into(), read_more(&mut rd, &mut buf)).await
        {
            ensure!(more?, "the publisher's connection closed");
            let (mut count, now) = (seen, Instant::now());
            while let Some(mut f) = take_frame(&mut buf) {
                count = f.get_u64_le();
            }
            while let Ok(sent) = sent_at.try_recv() {
                pending.push_back(sent);
            }
            while seen < count {
                let (at, n) = pending.front_mut().context("a confirm for nothing sent")?;
                let k = (*n).min(count - seen);
                if now >= from {
                    hist.saturating_record_n((now - *at).as_nanos() as u64, k);
                }
                (*n, seen) = (*n - k, seen + k);
                if *n == 0 {
                    pending.pop_front();
                }
            }
            confirmed_tx.send_replace(count);
        }
        anyhow::Ok(hist)
    });
    let (body, window) = (vec![b'x'; load.size], load.window);
    let mut waiting = confirmed.clone();
    let publishing = tokio::spawn(async move {
        let (mut sent, mut buf) = (0u64, BytesMut::new());
        while Instant::now() < end {
            let free = window - (sent - *waiting.borrow_and_update());
            if free == 0 {
                let _ = tokio::time::timeout_at(end.into(), waiting.changed()).await;
                continue;
            }
            buf.clear();
            (0..free).for_each(|_| put_frame(&mut buf, &[&body]));
            sent_tx.send((Instant::now(), free))?;
            wr.write_all(&buf).await?;
            sent += free;
        }
        anyhow::Ok(wr) // the connection stays open until the counts are read
    });

    tokio::time::sleep_until(from.into()).await;
    let (c0, d0, t0) = (
        *confirmed.borrow(),
        delivered.load(Ordering::Relaxed),
        Instant::now(),
    );
    tokio::time::sleep_until(end.into()).await;
    let (c1, d1, t1) = (
        *confirmed.borrow(),
        delivered.load(Ordering::Relaxed),
        Instant::now(),
    );
    if consuming.is_finished() {
        (&mut consuming).await??; // it only ends with an error
    }
    consuming.abort();
    let _publisher = publishing.await??;
    let hist = confirming.await??;
    let ms = |q: f64| hist.value_at_quantile(q) as f64 / 1e6;
    Ok((
        c1 - c0,
        d1 - d0,
        (t1 - t0).as_secs_f64(),
        (ms(0.5), ms(0.99)),
    ))
}
