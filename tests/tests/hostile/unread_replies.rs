//! A client that pipelines small requests as fast as it can and never reads the replies.
//!
//! Each `ListQueues` costs a few bytes to send and kilobytes to answer; unbounded, the answers
//! grew the broker by gigabytes a second. Bounded, the session stops reading the client's
//! requests once its outbox is full, so the client is slowed down by its own socket, the
//! broker's heap stays flat, and everyone else is answered as promptly as before.

use std::time::{Duration, Instant};

use bytes::BytesMut;
use sluice_client::wire::ListQueues;
use sluice_client::QueueOptions;
use tokio::io::AsyncWriteExt;

use crate::slow_consumer::{encode, raw_connect, HeapWatch};
use crate::{within, Broker, PROMPT};

/// How long the hostile client writes.
const HAMMER: Duration = Duration::from_secs(5);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_its_replies_is_held_back_and_others_stay_prompt() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path(), &[]);
    let heap = HeapWatch::start(broker.process.pid());
    let client = broker.client().await;
    // Fifty queues make every listing a few kilobytes.
    for i in 0..50 {
        client
            .declare_queue(&format!("queue-{i:02}"), QueueOptions::new())
            .await
            .unwrap();
    }
    let (mut sock, _buf, _) = raw_connect(&broker).await;
    let mut requests = BytesMut::new();
    for i in 0..4096 {
        requests.extend_from_slice(&encode(10 + i, ListQueues::default()));
    }
    let hammer = tokio::spawn(async move {
        let _ = tokio::time::timeout(HAMMER, async {
            while sock.write_all(&requests).await.is_ok() {}
        })
        .await;
        sock
    });

    let mut worst = Duration::ZERO;
    let mut round_trips = 0;
    while !hammer.is_finished() {
        let started = Instant::now();
        let queues = within("a listing", client.list_queues()).await.unwrap();
        assert_eq!(queues.len(), 50);
        worst = worst.max(started.elapsed());
        round_trips += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let sock = hammer.await.unwrap();
    assert!(round_trips > 0);
    assert!(
        worst < PROMPT,
        "a well-behaved client waited {worst:?} for a listing"
    );
    // Held back: one outbox (8 MiB) and a few read buffers of requests, not what the
    // client asked for.
    let peak = heap.peak();
    assert!(
        peak < 64 << 20,
        "peak heap {} MiB next to a client that does not read",
        peak >> 20
    );

    // When it goes, the broker lets go of it and keeps serving.
    drop(sock);
    within("the broker to serve on", client.list_queues())
        .await
        .unwrap();
    broker.process.stop();
}
