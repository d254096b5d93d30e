//! Clients that use up the broker's file descriptors: a flood of sockets that never say Hello,
//! and a client declaring queues until no file can be opened. The broker runs under a lowered
//! `RLIMIT_NOFILE` (soft = hard, so it cannot raise it). It must refuse what does not fit with
//! typed errors, keep serving, never abort, serve again by itself once descriptors are freed,
//! and lose nothing it confirmed.

use std::collections::BTreeMap;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::time::Duration;

use bytes::BytesMut;
use futures_util::StreamExt;
use rustix::process::{Resource, Rlimit};
use sluice_broker::limits::default_max_connections;
use sluice_client::wire::{ErrorCode, FrameDecoder, Reply, HANDSHAKE_MAX_FRAME_LEN};
use sluice_client::{
    Client, ConsumeOptions, DeleteQueueOptions, OutgoingMessage, PublishOptions, QueueOptions,
};
use sluice_tests::broker::BrokerProcess;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use crate::{within, Broker};

/// The broker's descriptor limit, soft and hard.
const LIMIT: u64 = 256;
/// Silent sockets opened at once: more than the broker has descriptors.
const FLOOD: usize = 300;
/// Queues a client tries to declare, each with one message: far more than fit.
const QUEUES: usize = 400;

/// Starts a broker that cannot have more than [`LIMIT`] descriptors, with a handshake timeout
/// longer than the test, so sockets in their handshake are held until the test lets them go.
fn start_limited(dir: &Path) -> Broker {
    let process = BrokerProcess::start_with(dir, &["--handshake-timeout-ms", "600000"], |cmd| {
        let limit = Rlimit {
            current: Some(LIMIT),
            maximum: Some(LIMIT),
        };
        // SAFETY: the closure runs in the child between fork and exec, where only
        // async-signal-safe work is allowed: it makes one system call and allocates nothing.
        unsafe {
            cmd.pre_exec(move || {
                rustix::process::setrlimit(Resource::Nofile, limit).map_err(Into::into)
            });
        }
    });
    Broker { process }
}

/// The `Max open files` line of `/proc/PID/limits`: soft and hard.
fn open_files_limit(pid: u32) -> (u64, u64) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("a Max open files line");
    let numbers: Vec<u64> = line
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    (numbers[0], numbers[1])
}

/// What a silent socket received: the code of the `Close` the broker sent before closing it,
/// `None` if it was closed without one.
async fn refusal_code(mut stream: TcpStream) -> Option<ErrorCode> {
    let mut buf = BytesMut::new();
    while matches!(stream.read_buf(&mut buf).await, Ok(n) if n > 0) {}
    let frame = FrameDecoder::new(HANDSHAKE_MAX_FRAME_LEN)
        .decode::<Reply>(&mut buf)
        .ok()??;
    match frame.body {
        Reply::Close(close) => close.code,
        _ => None,
    }
}

/// Publishes `bodies` to `queue` through the default exchange; panics unless all are confirmed.
async fn publish_confirmed(client: &Client, queue: &str, bodies: &[String]) {
    let batch = bodies
        .iter()
        .map(|b| OutgoingMessage::new("", queue, b.clone()));
    let outcomes = within("confirms", client.publish_batch(batch)).await;
    for outcome in outcomes {
        outcome.expect("confirmed");
    }
}

fn bodies(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}-{i}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_out_of_descriptors_refuses_with_typed_errors_and_loses_nothing_confirmed() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = start_limited(dir.path());
    assert_eq!(open_files_limit(broker.process.pid()), (LIMIT, LIMIT));
    let cap = default_max_connections(Some(LIMIT));
    assert!(cap < FLOOD && FLOOD as u64 > LIMIT);

    // A well-behaved client first: it holds one of the `cap` connections.
    let first = broker.client().await;
    first
        .declare_queue("work", QueueOptions::new())
        .await
        .unwrap();
    let mut work = bodies("before-flood", 20);
    publish_confirmed(&first, "work", &work).await;

    // The flood: the first `cap - 1` sockets are held in their handshake, every later one is
    // refused at once with CONNECTION_LIMIT.
    let (codes_tx, mut codes) = mpsc::unbounded_channel();
    let mut flood = Vec::new();
    for _ in 0..FLOOD {
        let stream = within("flood connect", TcpStream::connect(broker.addr()))
            .await
            .expect("the kernel accepts the connection");
        let tx = codes_tx.clone();
        flood.push(tokio::spawn(async move {
            let _ = tx.send(refusal_code(stream).await);
        }));
    }
    let refused = FLOOD - (cap - 1);
    for _ in 0..refused {
        let code = within("refusals", codes.recv()).await.unwrap();
        assert_eq!(code, Some(ErrorCode::ConnectionLimit));
    }
    assert!(broker.process.is_running(), "{}", broker.process.log());

    // The connection already open keeps working next to the flood.
    let during = bodies("during-flood", 20);
    publish_confirmed(&first, "work", &during).await;
    work.extend(during);

    // A new client while the cap is full gets the typed refusal...
    let err = within("refused connect", Client::connect(&broker.process.url()))
        .await
        .expect_err("the broker is at its connection limit");
    assert_eq!(err.code(), Some(ErrorCode::ConnectionLimit), "{err}");
    assert!(err.is_transient());

    // ...and gets in once the flood lets go.
    for socket in &flood {
        socket.abort();
    }
    let second = within("connect after the flood", async {
        loop {
            match Client::connect(&broker.process.url()).await {
                Ok(client) => break client,
                Err(e) => assert_eq!(e.code(), Some(ErrorCode::ConnectionLimit), "{e}"),
            }
        }
    })
    .await;
    let after = bodies("after-flood", 10);
    publish_confirmed(&second, "work", &after).await;
    work.extend(after);
    second
        .declare_queue("echo", QueueOptions::new())
        .await
        .unwrap();
    let echo = bodies("echo", 5);
    publish_confirmed(&second, "echo", &echo).await;
    let mut consumer = second.consume("echo", ConsumeOptions::new()).await.unwrap();
    for expected in &echo {
        let message = within("delivery", consumer.next()).await.unwrap().unwrap();
        assert_eq!(message.body, expected.as_bytes());
        message.ack().await.unwrap();
    }

    // Queues until no file can be opened: every refusal is RESOURCE_EXHAUSTED, typed.
    let mut kept: BTreeMap<String, String> = BTreeMap::new();
    let mut exhausted = 0;
    for i in 0..QUEUES {
        let queue = format!("many-{i:03}");
        let body = format!("only-{i}");
        let outcome = within("declare and publish", async {
            second.declare_queue(&queue, QueueOptions::new()).await?;
            second
                .publish("", &queue, body.clone(), &PublishOptions::new())
                .await
        })
        .await;
        match outcome {
            Ok(_) => {
                kept.insert(queue, body);
            }
            Err(e) => {
                assert_eq!(e.code(), Some(ErrorCode::ResourceExhausted), "{queue}: {e}");
                exhausted += 1;
            }
        }
    }
    assert!(
        exhausted > 0,
        "{QUEUES} queues fit under {LIMIT} descriptors"
    );
    assert!(!kept.is_empty(), "not one queue could be declared");
    assert!(broker.process.is_running(), "{}", broker.process.log());
    // Connections that are open keep being served.
    let more = bodies("exhausted", 5);
    publish_confirmed(&first, "work", &more).await;
    work.extend(more);

    // Descriptors come back (a connection leaves, queues are deleted): the broker takes
    // declares again by itself. The connection's socket is released a moment after its
    // close, so a deletion may still find none free, and says so.
    first.close().await.unwrap();
    let deleted: Vec<String> = kept.keys().take(3).cloned().collect();
    for queue in &deleted {
        within("a deletion once a descriptor is free", async {
            loop {
                match second
                    .delete_queue(queue, DeleteQueueOptions::default())
                    .await
                {
                    Ok(_) => break,
                    Err(e) => {
                        assert_eq!(e.code(), Some(ErrorCode::ResourceExhausted), "{e}");
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            }
        })
        .await;
        kept.remove(queue);
    }
    second
        .declare_queue("after-exhaustion", QueueOptions::new())
        .await
        .unwrap();
    let again = bodies("after-exhaustion", 5);
    publish_confirmed(&second, "after-exhaustion", &again).await;
    let log = broker.process.log();
    assert!(!log.contains("FATAL"), "{log}");
    // Hundreds of refused sockets and failed declares cost no memory to speak of.
    broker.assert_peak_rss_below(128 << 20, "after the descriptor flood");

    drop((second, consumer));
    broker.process.stop();

    // Everything confirmed is there after a clean restart (with the usual limit).
    let broker = Broker::start(dir.path(), &[]);
    let client = broker.client().await;
    let mut consumer = client
        .consume("work", ConsumeOptions::new().prefetch(100))
        .await
        .unwrap();
    for expected in &work {
        let message = within("recovered delivery", consumer.next())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(message.body, expected.as_bytes());
        message.ack().await.unwrap();
    }
    for expected in &again {
        let message = client
            .get("after-exhaustion")
            .await
            .unwrap()
            .expect("confirmed");
        assert_eq!(message.body, expected.as_bytes());
        message.ack().await.unwrap();
    }
    for queue in &deleted {
        let gone = client.declare_queue(queue, QueueOptions::passive()).await;
        assert!(gone.unwrap_err().is_not_found(), "{queue} came back");
    }
    for (queue, body) in &kept {
        let message = client.get(queue).await.unwrap();
        let message = message.unwrap_or_else(|| panic!("{queue} lost its confirmed message"));
        assert_eq!(message.body, body.as_bytes(), "{queue}");
        message.ack().await.unwrap();
    }
    broker.process.stop();
}
