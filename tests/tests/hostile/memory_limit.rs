//! The broker-wide memory watermark: above it, publishers are blocked with a reason that
//! names memory, and everything else keeps working.

use sluice_client::wire::{ErrorCode, MessageMeta, Publish, PublishMessage, Reply};
use sluice_client::QueueOptions;
use tokio::io::AsyncWriteExt;

use crate::slow_consumer::{encode, raw_connect, read_frame};
use crate::Broker;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn above_the_memory_limit_publishers_are_blocked_with_a_reason_naming_memory() {
    let dir = tempfile::tempdir().unwrap();
    // Any broker uses more than one byte: publishing is blocked from the start.
    let broker = Broker::start(dir.path(), &["--max-memory-bytes", "1"]);
    let (mut sock, mut buf, _) = raw_connect(&broker).await;
    let blocked = read_frame(&mut sock, &mut buf).await.expect("Blocked");
    match &blocked.body {
        Reply::Blocked(b) => {
            assert_eq!(b.code, ErrorCode::MemoryLimit);
            assert!(b.reason.contains("memory"), "{}", b.reason);
        }
        other => panic!("expected Blocked, got {other:?}"),
    }

    // A publish that comes anyway is refused with the same code, and settled.
    let meta = MessageMeta::new("", "anything");
    let message = PublishMessage::new(&meta, &b"x"[..]).unwrap();
    let publish = Publish {
        messages: vec![message],
    };
    sock.write_all(&encode(2, publish)).await.unwrap();
    let rejected = read_frame(&mut sock, &mut buf)
        .await
        .expect("PublishRejected");
    match &rejected.body {
        Reply::PublishRejected(r) => {
            assert_eq!(r.rejections[0].code, ErrorCode::MemoryLimit);
            assert!(r.rejections[0].message.contains("memory"), "{r:?}");
        }
        other => panic!("expected PublishRejected, got {other:?}"),
    }
    let confirm = read_frame(&mut sock, &mut buf).await.expect("Confirm");
    assert!(
        matches!(&confirm.body, Reply::Confirm(c) if c.up_to.0 == 1),
        "{confirm:?}"
    );

    // Everything else keeps working, and a client knows it is blocked.
    let client = broker.client().await;
    client
        .declare_queue("q", QueueOptions::new())
        .await
        .unwrap();
    assert!(client.is_blocked());
    broker.process.stop();
}
