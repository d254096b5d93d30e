//! A consumer that asks for everything and then stops reading its socket.
//!
//! Without a bound, every delivery to it would stay in the broker's heap (1 GiB published
//! gave 1.1 GiB resident). With one, the queue stops handing it messages once about 8 MiB
//! (the outbox's high watermark) wait for its socket, the other consumers get the rest, and
//! after the slow-consumer timeout it is disconnected and what it held goes back to the queue.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use sluice_client::wire::{
    Consume, ErrorCode, Frame, FrameDecoder, Hello, Reply, Request, RequestId,
    DEFAULT_MAX_FRAME_LEN,
};
use sluice_client::{Client, ConsumeOptions, PublishOptions, QueueOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::{within, Broker};

/// Body size of the test messages.
const BODY: usize = 64 << 10;
/// The broker's outbox high watermark (`Outbox::HIGH_WATER`).
const OUTBOX_HIGH_WATER: u64 = 8 << 20;

/// Bytes the kernel may buffer on a loopback connection whose reader stopped: the largest
/// send buffer plus the largest receive buffer (autotuning stays within both).
fn kernel_socket_bytes() -> u64 {
    let max_of = |path: &str| -> u64 {
        std::fs::read_to_string(path)
            .ok()
            .and_then(|s| s.split_whitespace().nth(2)?.parse().ok())
            .unwrap_or(16 << 20)
    };
    max_of("/proc/sys/net/ipv4/tcp_wmem") + max_of("/proc/sys/net/ipv4/tcp_rmem")
}

/// Most messages a stalled connection may hold: what its socket buffers absorbed, its
/// outbox, and the one message that crossed the outbox's limit.
fn max_held() -> u64 {
    (OUTBOX_HIGH_WATER + kernel_socket_bytes()) / BODY as u64 + 2
}

/// A raw connection that speaks just enough of the protocol to consume, then never reads.
#[derive(Debug)]
pub struct StalledConsumer {
    /// The socket; nothing is read from it after `ConsumeOk`.
    pub sock: TcpStream,
    /// Bytes read past the `ConsumeOk`.
    pub buf: BytesMut,
    /// The server's number for the connection.
    pub connection_id: u64,
}

/// Encodes one request frame.
pub fn encode(request_id: u32, request: impl Into<Request>) -> BytesMut {
    let mut out = BytesMut::new();
    Frame::<Request>::new(RequestId(request_id), request)
        .encode(&mut out, DEFAULT_MAX_FRAME_LEN)
        .expect("encode a request");
    out
}

/// Connects and completes the handshake with a long heartbeat (the peer stays silent).
pub async fn raw_connect(broker: &Broker) -> (TcpStream, BytesMut, u64) {
    raw_connect_with_heartbeat(broker, 600_000).await
}

/// Connects and completes the handshake, proposing this heartbeat interval.
pub async fn raw_connect_with_heartbeat(
    broker: &Broker,
    heartbeat_ms: u32,
) -> (TcpStream, BytesMut, u64) {
    let mut sock = within("connect", TcpStream::connect(broker.addr()))
        .await
        .expect("connect");
    let hello = Hello {
        min_version: sluice_client::wire::PROTOCOL_VERSION,
        max_version: sluice_client::wire::PROTOCOL_VERSION,
        username: "guest".into(),
        password: "guest".into(),
        heartbeat_ms,
        max_frame_len: 0,
        client_properties: vec![],
    };
    sock.write_all(&encode(1, hello)).await.unwrap();
    let mut buf = BytesMut::new();
    let welcome = read_frame(&mut sock, &mut buf).await.expect("Welcome");
    let Reply::Welcome(w) = welcome.body else {
        panic!("expected Welcome, got {welcome:?}");
    };
    (sock, buf, w.connection_id)
}

/// Reads the next frame; `None` at the end of the stream.
pub async fn read_frame(sock: &mut TcpStream, buf: &mut BytesMut) -> Option<Frame<Reply>> {
    let decoder = FrameDecoder::new(DEFAULT_MAX_FRAME_LEN);
    within("a frame", async {
        loop {
            if let Some(f) = decoder.decode::<Reply>(buf).expect("a valid frame") {
                return Some(f);
            }
            match sock.read_buf(buf).await {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            }
        }
    })
    .await
}

impl StalledConsumer {
    /// Consumes `queue` with no prefetch limit and stops reading once `ConsumeOk` arrived.
    pub async fn start(broker: &Broker, queue: &str) -> StalledConsumer {
        let (mut sock, mut buf, connection_id) = raw_connect(broker).await;
        let consume = Consume {
            queue: queue.into(),
            consumer_tag: "stalled".into(),
            prefetch: 0,
            exclusive: false,
            ack_timeout_ms: None,
            priority: None,
            circuit_breaker: None,
        };
        sock.write_all(&encode(2, consume)).await.unwrap();
        loop {
            let f = read_frame(&mut sock, &mut buf).await.expect("ConsumeOk");
            match f.body {
                Reply::ConsumeOk(_) => break,
                Reply::Blocked(_) | Reply::Unblocked | Reply::Heartbeat => {}
                other => panic!("expected ConsumeOk, got {other:?}"),
            }
        }
        StalledConsumer {
            sock,
            buf,
            connection_id,
        }
    }
}

/// What the well-behaved consumer has received and acked: message numbers.
#[derive(Default)]
struct Received {
    ids: Mutex<HashSet<u64>>,
    acked: AtomicU64,
}

impl Received {
    fn distinct(&self) -> usize {
        self.ids.lock().unwrap().len()
    }
}

/// A consumer on its own connection that acks everything, recording the message numbers.
async fn consume_and_ack(client: Client, queue: &str) -> Arc<Received> {
    let received = Arc::new(Received::default());
    let mut consumer = client
        .consume(queue, ConsumeOptions::new().prefetch(64))
        .await
        .expect("consume");
    let r = Arc::clone(&received);
    tokio::spawn(async move {
        while let Some(Ok(msg)) = consumer.next().await {
            let id = u64::from_le_bytes(msg.body[..8].try_into().unwrap());
            msg.ack().await.expect("ack");
            r.ids.lock().unwrap().insert(id);
            r.acked.fetch_add(1, Ordering::Relaxed);
        }
    });
    received
}

/// Publishes `count` numbered messages of [`BODY`] bytes and waits for every confirm.
async fn publish_numbered(client: &Client, queue: &str, count: u64) {
    let publisher = client.publisher_with_window(64);
    let options = PublishOptions::new();
    let mut confirms = Vec::new();
    for id in 0..count {
        let mut body = vec![0u8; BODY];
        body[..8].copy_from_slice(&id.to_le_bytes());
        let confirm = publisher
            .publish("", queue, Bytes::from(body), &options)
            .await
            .expect("publish");
        confirms.push(confirm);
    }
    for confirm in confirms {
        within("confirm", confirm).await.expect("confirmed");
    }
}

/// The broker's resident anonymous memory (its heap), in bytes. File pages of the mapped
/// queue logs are page cache and left out: they follow the backlog, which is on disk.
pub fn rss_anon_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("RssAnon:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .expect("RssAnon in /proc status");
    kib * 1024
}

/// Samples the broker's heap every 20 ms until dropped; keeps the highest value.
#[derive(Debug)]
pub struct HeapWatch {
    peak: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl HeapWatch {
    /// Starts sampling process `pid`.
    pub fn start(pid: u32) -> HeapWatch {
        let peak = Arc::new(AtomicU64::new(0));
        let p = Arc::clone(&peak);
        let task = tokio::spawn(async move {
            loop {
                p.fetch_max(rss_anon_bytes(pid), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
        HeapWatch { peak, task }
    }

    /// The highest heap seen so far.
    pub fn peak(&self) -> u64 {
        self.peak.load(Ordering::Relaxed)
    }
}

impl Drop for HeapWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Waits until the stalled connection's consumer holds `held` deliveries and the queue has
/// nothing ready: every other message went to the well-behaved consumer.
async fn wait_for_settled_split(client: &Client, queue: &str, stalled_conn: u64) -> u64 {
    within("the queue to split its messages", async {
        loop {
            let q = client.inspect_queue(queue).await.unwrap();
            let consumers = client.list_consumers().await.unwrap();
            let held: u64 = consumers
                .iter()
                .filter(|c| c.connection_id == stalled_conn)
                .map(|c| u64::from(c.unacked))
                .sum();
            let others: u64 = consumers
                .iter()
                .filter(|c| c.connection_id != stalled_conn)
                .map(|c| u64::from(c.unacked))
                .sum();
            if q.ready == 0 && others == 0 && q.unacked == held {
                return held;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_that_stops_reading_holds_a_bounded_share_and_the_others_get_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    // The slow-consumer rule is out of the way here: this is about memory and sharing.
    let broker = Broker::start(dir.path(), &["--slow-consumer-timeout-ms", "600000"]);
    let heap = HeapWatch::start(broker.process.pid());
    let admin = broker.client().await;
    admin
        .declare_queue("jobs", QueueOptions::new())
        .await
        .unwrap();
    let stalled = StalledConsumer::start(&broker, "jobs").await;
    let received = consume_and_ack(broker.client().await, "jobs").await;

    // 256 MiB through a queue whose other consumer never reads.
    const COUNT: u64 = 4096;
    let publisher = broker.client().await;
    publish_numbered(&publisher, "jobs", COUNT).await;

    let held = wait_for_settled_split(&admin, "jobs", stalled.connection_id).await;
    let max_held = max_held();
    assert!(
        (1..=max_held).contains(&held),
        "the stalled consumer holds {held} messages of {BODY} bytes; at most {max_held} fit its outbox and socket"
    );
    within("the others to be acked", async {
        while received.distinct() as u64 != COUNT - held {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    // Published: 256 MiB. Held at once: the publisher's window (4 MiB), two outboxes (8 MiB
    // each), read buffers and the runtime: well under half of what went through.
    let peak = heap.peak();
    assert!(
        peak < 128 << 20,
        "peak heap {} MiB while 256 MiB went through",
        peak >> 20
    );

    // It leaves: what it held comes back, so every confirmed message is delivered.
    drop(stalled);
    within("every message delivered", async {
        while (received.distinct() as u64) < COUNT {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    // The last acks are on their way: the queue ends empty.
    within("the queue to be empty", async {
        loop {
            let q = admin.inspect_queue("jobs").await.unwrap();
            if (q.ready, q.unacked) == (0, 0) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    broker.process.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_whose_socket_stays_full_is_disconnected_and_its_messages_return() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path(), &["--slow-consumer-timeout-ms", "1500"]);
    let admin = broker.client().await;
    admin
        .declare_queue("jobs", QueueOptions::new())
        .await
        .unwrap();
    let mut stalled = StalledConsumer::start(&broker, "jobs").await;
    // Fill its socket and outbox before anyone else consumes: it takes as much as it may.
    let count = max_held() + 64;
    let publisher = broker.client().await;
    publish_numbered(&publisher, "jobs", count).await;

    // Past the timeout the broker gives up on it: its consumer is gone.
    within("the stalled consumer to be disconnected", async {
        loop {
            let consumers = admin.list_consumers().await.unwrap();
            if !consumers
                .iter()
                .any(|c| c.connection_id == stalled.connection_id)
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    // The broker says why (its stderr reaches us through a pipe, so it may lag a little).
    let mut log = String::new();
    within("a slow-consumer line in the log", async {
        while !log.contains("slow consumer") {
            log.push_str(&broker.process.log());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;

    // What it held is back in the queue: a new consumer gets every message.
    let received = consume_and_ack(broker.client().await, "jobs").await;
    within("every message delivered", async {
        while (received.distinct() as u64) < count {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;

    // Its socket ends; if the Close made it out behind the deliveries, it names the reason.
    let mut last = None;
    while let Some(f) = read_frame(&mut stalled.sock, &mut stalled.buf).await {
        last = Some(f.body);
    }
    if let Some(Reply::Close(c)) = &last {
        assert_eq!(c.code, Some(ErrorCode::SlowConsumer), "{c:?}");
    }
    broker.process.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_held_back_by_its_full_socket_is_not_closed_for_its_silence() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path(), &["--slow-consumer-timeout-ms", "600000"]);
    let admin = broker.client().await;
    admin
        .declare_queue("jobs", QueueOptions::new())
        .await
        .unwrap();
    // A one-second heartbeat: the server gives up after about two seconds of silence.
    let (mut sock, mut buf, connection_id) = raw_connect_with_heartbeat(&broker, 1_000).await;
    let consume = Consume {
        queue: "jobs".into(),
        consumer_tag: "stalled".into(),
        prefetch: 0,
        exclusive: false,
        ack_timeout_ms: None,
        priority: None,
        circuit_breaker: None,
    };
    sock.write_all(&encode(2, consume)).await.unwrap();
    loop {
        match read_frame(&mut sock, &mut buf)
            .await
            .expect("ConsumeOk")
            .body
        {
            Reply::ConsumeOk(_) => break,
            Reply::Heartbeat => {}
            other => panic!("expected ConsumeOk, got {other:?}"),
        }
    }
    let publisher = broker.client().await;
    publish_numbered(&publisher, "jobs", max_held() + 64).await;
    // Its socket is full: the queue keeps the rest back.
    within("the queue to stop delivering to it", async {
        while admin.inspect_queue("jobs").await.unwrap().ready == 0 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;

    // It keeps sending heartbeats, which the server does not read while it holds the
    // connection back: that is the server's doing, not the peer's silence.
    for _ in 0..20 {
        sock.write_all(&encode(0, Request::Heartbeat))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let consumers = admin.list_consumers().await.unwrap();
    assert!(
        consumers.iter().any(|c| c.connection_id == connection_id),
        "closed while held back: {}",
        broker.process.log()
    );
    broker.process.stop();
}
