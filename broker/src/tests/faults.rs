//! Fault injection on every storage and topology write path: `ENOSPC`, `EIO` and `EMFILE` at
//! each [`Point`], with a real server on a real socket and real files, the real client on the
//! other side. While the fault is armed every request gets an answer (done, or a typed error);
//! after it is disarmed the broker serves again; after a restart nothing confirmed is lost,
//! nothing refused is there, and everything answered as done is.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use rustix::io::Errno;
use sluice_client::{Client, DeleteQueueOptions, ErrorCode, PublishOptions, QueueOptions};
use tokio::sync::oneshot;

use crate::broker::Broker;
use crate::config::{HttpListen, ServerConfig};
use crate::server::Server;
use crate::storage::fault::{self, Point, ALL_POINTS};

/// Any single wait; generous for a debug build on a busy machine.
const WAIT: Duration = Duration::from_secs(60);

async fn within<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(WAIT, f)
        .await
        .unwrap_or_else(|_| panic!("timed out: {what}"))
}

/// A broker serving on a free port, in this process.
struct Node {
    client: Client,
    stop: oneshot::Sender<()>,
    done: tokio::task::JoinHandle<()>,
}

impl Node {
    /// Opens `data`; `Err` carries why the broker could not start.
    async fn start(data: &Path) -> Result<Node, String> {
        let config = ServerConfig {
            data_dir: data.to_path_buf(),
            listen: Some("127.0.0.1:0".parse().unwrap()),
            // Parallel tests would collide on the default port; these need no HTTP API.
            http_listen: HttpListen::Off,
            segment_bytes: 64 << 10,
            min_free_disk_bytes: 0,
            ..ServerConfig::default()
        };
        let broker = Broker::open(config).map_err(|e| e.to_string())?;
        let server = Server::bind(Arc::clone(&broker)).await.unwrap();
        let url = format!(
            "sluice://guest:guest@{}",
            server.local_addr().unwrap().expect("the plain port is on")
        );
        drop(broker);
        let (stop, stopped) = oneshot::channel::<()>();
        let done = tokio::spawn(server.run(async {
            let _ = stopped.await;
        }));
        let client = within("connect", Client::connect(&url)).await.unwrap();
        Ok(Node { client, stop, done })
    }

    /// A graceful stop: the data directory is free once this returns.
    async fn stop(self) {
        drop(self.client);
        let _ = self.stop.send(());
        within("the server stops", self.done).await.unwrap();
    }
}

fn body(id: u64) -> Bytes {
    Bytes::from(format!("{id}:{}", "m".repeat(1500)))
}

fn id_of(body: &[u8]) -> u64 {
    let text = std::str::from_utf8(body).unwrap();
    text.split(':').next().unwrap().parse().unwrap()
}

/// Publishes `ids` to `queue` one by one; the confirmed ones, and every refusal's code.
async fn publish(client: &Client, queue: &str, ids: std::ops::Range<u64>) -> Published {
    let mut out = Published::default();
    let options = PublishOptions::new();
    for id in ids {
        match within("publish", client.publish("", queue, body(id), &options)).await {
            Ok(_) => {
                out.confirmed.insert(id);
            }
            Err(e) => out.refusals.push(e.code().expect("a typed refusal")),
        }
    }
    out
}

#[derive(Debug, Default)]
struct Published {
    confirmed: BTreeSet<u64>,
    refusals: Vec<ErrorCode>,
}

async fn drain(client: &Client, queue: &str) -> BTreeSet<u64> {
    let mut ids = BTreeSet::new();
    while let Some(m) = within("get", client.get(queue)).await.unwrap() {
        ids.insert(id_of(&m.body));
        m.ack().await.unwrap();
    }
    ids
}

/// The code a request that met `errno` must fail with.
fn assert_typed(errno: Errno, code: ErrorCode, what: &str) {
    if errno == Errno::NOSPC {
        assert_eq!(code, ErrorCode::StorageFull, "{what}");
    } else if errno == Errno::MFILE {
        assert_eq!(code, ErrorCode::ResourceExhausted, "{what}");
    } else {
        assert!(
            code == ErrorCode::InternalError || code.as_u16() / 100 == 3,
            "{what}: {code:?} is not a server-side error"
        );
    }
}

fn code_of<T>(result: &sluice_client::Result<T>) -> Option<ErrorCode> {
    result
        .as_ref()
        .err()
        .map(|e| e.code().expect("a typed error"))
}

/// What the faulty phase answered.
struct Answers {
    bound: bool,
    deleted: bool,
    kept: BTreeSet<u64>,
    fresh: BTreeSet<u64>,
}

/// Runs every kind of write while `point` fails with `errno`; returns what was answered and
/// how often the fault fired.
async fn faulty_phase(node: &Node, data: &Path, point: Point, errno: Errno) -> (Answers, u64) {
    let c = &node.client;
    let armed = fault::arm(point, data, errno.raw_os_error());
    let what = format!("{point:?} {errno:?}");
    let declare = c.declare_queue("fresh", QueueOptions::new()).await;
    let bind = c.bind("kept", "amq.direct", "k", Vec::new()).await;
    let published = publish(c, "kept", 100..160).await;
    for code in &published.refusals {
        assert_typed(errno, *code, &format!("publish under {what}"));
    }
    let delete = c
        .delete_queue("victim", DeleteQueueOptions::default())
        .await;
    // Acking a whole queue makes its sealed segments removable; the removal follows the next
    // group commit, so wait for it when that is the point under test.
    drain(c, "drained").await;
    if point == Point::Remove {
        within("a drained segment's removal", async {
            while armed.hits() == 0 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
    }
    for (name, code) in [
        ("declare", code_of(&declare)),
        ("bind", code_of(&bind)),
        ("delete", code_of(&delete)),
    ] {
        if let Some(code) = code {
            assert_typed(errno, code, &format!("{name} under {what}"));
        }
    }
    let hits = armed.hits();
    drop(armed);
    // Disarmed: the broker serves again, the refused declare included.
    let fresh = {
        c.declare_queue("fresh", QueueOptions::new()).await.unwrap();
        publish(c, "fresh", 0..5).await
    };
    assert!(
        fresh.refusals.is_empty(),
        "after {what}: {:?}",
        fresh.refusals
    );
    let after = publish(c, "kept", 160..170).await;
    assert!(
        after.refusals.is_empty(),
        "after {what}: {:?}",
        after.refusals
    );
    let mut kept = published.confirmed;
    kept.extend(after.confirmed);
    let answers = Answers {
        bound: bind.is_ok(),
        deleted: delete.is_ok(),
        kept,
        fresh: fresh.confirmed,
    };
    (answers, hits)
}

/// One point, one errno: set up, fail, restart, check.
async fn one_case(point: Point, errno: Errno) -> u64 {
    let dir = tempfile::tempdir().unwrap();
    let data: PathBuf = dir.path().join("data");
    let node = Node::start(&data).await.unwrap();
    for q in ["kept", "victim", "drained"] {
        node.client
            .declare_queue(q, QueueOptions::new())
            .await
            .unwrap();
    }
    let mut kept = publish(&node.client, "kept", 0..100).await.confirmed;
    let drained = publish(&node.client, "drained", 0..100).await.confirmed;
    let victim = publish(&node.client, "victim", 0..5).await.confirmed;
    assert_eq!((kept.len(), victim.len()), (100, 5));
    let (answers, hits) = faulty_phase(&node, &data, point, errno).await;
    kept.extend(&answers.kept);
    node.stop().await;

    let node = Node::start(&data).await.unwrap();
    let c = &node.client;
    let what = format!("{point:?} {errno:?}");
    assert_eq!(drain(c, "kept").await, kept, "kept after {what}");
    assert_eq!(drain(c, "fresh").await, answers.fresh, "fresh after {what}");
    let victim_now = c.declare_queue("victim", QueueOptions::passive()).await;
    if answers.deleted {
        assert_eq!(code_of(&victim_now), Some(ErrorCode::NotFound), "{what}");
    } else {
        assert_eq!(drain(c, "victim").await, victim, "victim after {what}");
    }
    // Acks are lazy: some may come back after a fault (at-least-once), never anything else.
    assert!(drain(c, "drained").await.is_subset(&drained), "{what}");
    let bindings = c.list_bindings().await.unwrap();
    let bound = bindings.iter().any(|b| b.routing_key == "k");
    assert_eq!(bound, answers.bound, "binding after {what}");
    node.stop().await;
    hits
}

/// Every point, every errno. A point the workload never reaches would make the test prove
/// nothing about it, so each must fire at least once for some errno (opening files for writing
/// happens at recovery, tested below).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_write_path_fails_cleanly_and_loses_nothing() {
    for point in ALL_POINTS {
        if point == Point::OpenFile {
            continue;
        }
        let mut fired = 0;
        for errno in [Errno::NOSPC, Errno::IO, Errno::MFILE] {
            fired += one_case(point, errno).await;
        }
        assert!(fired > 0, "the workload never reached {point:?}");
    }
}

/// A fault while recovering is an error at start, never a silent loss: once it is gone, the
/// broker starts with every confirmed message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fault_during_recovery_stops_the_start_and_loses_nothing() {
    for errno in [Errno::NOSPC, Errno::IO, Errno::MFILE] {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let node = Node::start(&data).await.unwrap();
        node.client
            .declare_queue("kept", QueueOptions::new())
            .await
            .unwrap();
        let kept = publish(&node.client, "kept", 0..100).await.confirmed;
        node.stop().await;
        {
            let armed = fault::arm(Point::OpenFile, &data, errno.raw_os_error());
            let refused = Node::start(&data).await;
            assert!(refused.is_err(), "started despite {errno:?} on open");
            assert!(armed.hits() > 0);
        }
        let node = Node::start(&data).await.unwrap();
        assert_eq!(drain(&node.client, "kept").await, kept, "after {errno:?}");
        node.stop().await;
    }
}
