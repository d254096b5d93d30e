//! Queue kinds and request semantics: exclusive and auto-delete queues, idempotent declares,
//! conditional deletes, multiple acks, flow control and heartbeats.

use std::time::Duration;

use bytes::BytesMut;
use futures_util::StreamExt;
use sluice_client::wire::{
    ErrorCode, Frame, FrameDecoder, Hello, MessageMeta, Publish, PublishMessage, Reply, Request,
    RequestId, DEFAULT_MAX_FRAME_LEN,
};
use sluice_client::{
    ConsumeOptions, DeleteQueueOptions, ExchangeKind, ExchangeOptions, PublishOptions, QueueOptions,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::harness::{within, Broker};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exclusive_queues_belong_to_their_connection_and_go_with_it() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path());
    let owner = broker.client().await;
    let other = broker.client().await;
    owner
        .declare_queue("mine", QueueOptions::new().exclusive(true))
        .await
        .unwrap();
    owner
        .publish("", "mine", "x", &PublishOptions::new())
        .await
        .unwrap();
    let err = other.inspect_queue("mine").await.unwrap_err();
    assert!(err.is_resource_locked(), "{err:?}");
    let err = other
        .consume("mine", ConsumeOptions::new())
        .await
        .unwrap_err();
    assert!(err.is_resource_locked(), "{err:?}");
    owner.close().await.unwrap();
    // Gone with its connection: a new declare by the other connection creates it afresh.
    within("exclusive queue deleted", async {
        loop {
            match other.inspect_queue("mine").await {
                Err(e) if e.is_not_found() => break,
                _ => tokio::task::yield_now().await,
            }
        }
    })
    .await;
    broker.stop();
}

/// Publishing names an exchange, not a queue: like RabbitMQ, the broker routes another
/// connection's messages into an exclusive queue, while every request that names the queue
/// is refused (protocol.md §6).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_connections_may_publish_into_an_exclusive_queue_but_not_use_it() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path());
    let owner = broker.client().await;
    let other = broker.client().await;
    owner
        .declare_queue("mine", QueueOptions::new().exclusive(true))
        .await
        .unwrap();
    owner
        .declare_exchange("fan", ExchangeKind::Fanout, ExchangeOptions::new())
        .await
        .unwrap();
    owner.bind("mine", "fan", "", Vec::new()).await.unwrap();

    let mandatory = PublishOptions::new().mandatory();
    within(
        "publish through an exchange",
        other.publish("fan", "", "via fan", &mandatory),
    )
    .await
    .expect("a publish through a bound exchange is accepted");
    within(
        "publish to the default exchange",
        other.publish("", "mine", "direct", &mandatory),
    )
    .await
    .expect("a publish to the default exchange is accepted");
    assert_eq!(owner.inspect_queue("mine").await.unwrap().ready, 2);
    for expected in ["via fan", "direct"] {
        let message = owner.get("mine").await.unwrap().expect("a message");
        assert_eq!(&message.body[..], expected.as_bytes());
        message.ack().await.unwrap();
    }

    let locked = |what: &str, result: Result<(), sluice_client::Error>| {
        let err = result.expect_err(what);
        assert!(err.is_resource_locked(), "{what}: {err:?}");
    };
    locked("get", other.get("mine").await.map(drop));
    locked("purge", other.purge_queue("mine").await.map(drop));
    locked("inspect", other.inspect_queue("mine").await.map(drop));
    let delete = other
        .delete_queue("mine", DeleteQueueOptions::default())
        .await;
    locked("delete", delete.map(drop));
    let consume = other.consume("mine", ConsumeOptions::new()).await;
    locked("consume", consume.map(drop));
    let passive = other.declare_queue("mine", QueueOptions::passive()).await;
    locked("passive declare", passive.map(drop));
    locked("bind", other.bind("mine", "fan", "k", Vec::new()).await);
    locked("unbind", other.unbind("mine", "fan", "", Vec::new()).await);
    // Refusals have no effect: the owner's queue and binding are as they were.
    owner
        .publish("fan", "", "still bound", &PublishOptions::new())
        .await
        .unwrap();
    let message = owner.get("mine").await.unwrap().expect("still bound");
    assert_eq!(&message.body[..], b"still bound");
    message.ack().await.unwrap();
    broker.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_delete_queue_goes_with_its_last_consumer() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path());
    let client = broker.client().await;
    client
        .declare_queue("temp", QueueOptions::new().auto_delete(true))
        .await
        .unwrap();
    let mut a = client.consume("temp", ConsumeOptions::new()).await.unwrap();
    let mut b = client.consume("temp", ConsumeOptions::new()).await.unwrap();
    a.cancel().await.unwrap();
    assert_eq!(client.inspect_queue("temp").await.unwrap().consumers, 1);
    b.cancel().await.unwrap();
    let err = client.inspect_queue("temp").await.unwrap_err();
    assert!(err.is_not_found(), "{err:?}");
    broker.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declare_is_idempotent_and_mismatches_are_precondition_failures() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path());
    let client = broker.client().await;
    let opts = QueueOptions::new().max_length(10);
    client.declare_queue("q", opts.clone()).await.unwrap();
    client
        .publish("", "q", "m", &PublishOptions::new())
        .await
        .unwrap();
    let again = client.declare_queue("q", opts).await.unwrap();
    assert_eq!(again.ready, 1);
    let err = client
        .declare_queue("q", QueueOptions::new())
        .await
        .unwrap_err();
    assert!(err.is_precondition_failed(), "{err:?}");
    let err = client
        .declare_queue("q", QueueOptions::new().max_length(10).durable(false))
        .await
        .unwrap_err();
    assert!(err.is_precondition_failed(), "{err:?}");
    let err = client
        .declare_queue("missing", QueueOptions::passive())
        .await
        .unwrap_err();
    assert!(err.is_not_found(), "{err:?}");
    let err = client
        .declare_queue("sluice.mine", QueueOptions::new())
        .await
        .unwrap_err();
    assert!(err.is_not_allowed(), "{err:?}");
    let generated = client
        .declare_queue("", QueueOptions::new().exclusive(true))
        .await
        .unwrap();
    assert!(
        generated.name.starts_with("sluice.gen-"),
        "{}",
        generated.name
    );
    broker.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conditional_delete_purge_and_multiple_ack() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path());
    let client = broker.client().await;
    client
        .declare_queue("q", QueueOptions::new())
        .await
        .unwrap();
    for i in 0..6 {
        client
            .publish("", "q", format!("m{i}"), &PublishOptions::new())
            .await
            .unwrap();
    }
    let err = client
        .delete_queue(
            "q",
            DeleteQueueOptions {
                if_empty: true,
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert!(err.is_precondition_failed(), "{err:?}");
    let mut consumer = client
        .consume("q", ConsumeOptions::new().prefetch(3))
        .await
        .unwrap();
    let mut got = Vec::new();
    for _ in 0..3 {
        got.push(within("delivery", consumer.next()).await.unwrap().unwrap());
    }
    let err = client
        .delete_queue(
            "q",
            DeleteQueueOptions {
                if_unused: true,
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert!(err.is_precondition_failed(), "{err:?}");
    // One multiple-ack settles all three; the credit lets three more through.
    got[2].ack_multiple().await.unwrap();
    for _ in 0..3 {
        let m = within("delivery", consumer.next()).await.unwrap().unwrap();
        m.nack(true).await.unwrap();
    }
    consumer.cancel().await.unwrap();
    // A nacked message may have gone straight back to this consumer before the cancel: the
    // stream yields what it received, then ends. Those deliveries are still ours to settle.
    while let Some(m) = within("the cancelled stream ends", consumer.next()).await {
        m.unwrap().nack(true).await.unwrap();
    }
    // Settlements are processed before a later request on the same connection (§3.5).
    let info = client.inspect_queue("q").await.unwrap();
    assert_eq!(info.unacked, 0);
    assert_eq!(info.ready, 3);
    assert_eq!(client.purge_queue("q").await.unwrap(), 3);
    assert_eq!(
        client
            .delete_queue("q", DeleteQueueOptions::default())
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        client
            .delete_queue("q", DeleteQueueOptions::default())
            .await
            .unwrap(),
        0
    );
    broker.stop();
}

async fn raw_handshake(
    broker: &Broker,
    heartbeat_ms: u32,
) -> (TcpStream, BytesMut, Vec<Frame<Reply>>) {
    let mut sock = TcpStream::connect(&broker.addr).await.unwrap();
    let mut out = BytesMut::new();
    let hello = Hello {
        min_version: sluice_client::wire::PROTOCOL_VERSION,
        max_version: sluice_client::wire::PROTOCOL_VERSION,
        username: "guest".into(),
        password: "guest".into(),
        heartbeat_ms,
        max_frame_len: 0,
        client_properties: vec![],
    };
    Frame::<Request>::new(RequestId(1), hello)
        .encode(&mut out, DEFAULT_MAX_FRAME_LEN)
        .unwrap();
    sock.write_all(&out).await.unwrap();
    let mut buf = BytesMut::new();
    let first = read_frames(&mut sock, &mut buf, 1).await;
    assert!(matches!(first[0].body, Reply::Welcome(_)));
    (sock, buf, first)
}

async fn read_frames(sock: &mut TcpStream, buf: &mut BytesMut, n: usize) -> Vec<Frame<Reply>> {
    let decoder = FrameDecoder::new(DEFAULT_MAX_FRAME_LEN);
    let mut frames = Vec::new();
    within("frames", async {
        while frames.len() < n {
            if let Some(f) = decoder.decode::<Reply>(buf).unwrap() {
                frames.push(f);
                continue;
            }
            assert!(
                sock.read_buf(buf).await.unwrap() > 0,
                "closed early: {frames:?}"
            );
        }
    })
    .await;
    frames
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishers_are_blocked_with_a_reason_when_disk_space_runs_low() {
    let dir = tempfile::tempdir().unwrap();
    // Ask for more free space than any disk has: publishing is blocked from the start.
    let broker = Broker::start_with(
        dir.path(),
        &["--min-free-disk-bytes", "18446744073709551615"],
    );
    let (mut sock, mut buf, _) = raw_handshake(&broker, 0).await;
    let blocked = read_frames(&mut sock, &mut buf, 1).await;
    match &blocked[0].body {
        Reply::Blocked(b) => {
            assert_eq!(b.code, ErrorCode::StorageFull);
            assert!(b.reason.contains("free disk space"), "{}", b.reason);
        }
        other => panic!("expected Blocked, got {other:?}"),
    }
    let meta = MessageMeta::new("", "anything");
    let msg = PublishMessage::new(&meta, &b"x"[..]).unwrap();
    let mut out = BytesMut::new();
    Frame::<Request>::new(
        RequestId(2),
        Publish {
            messages: vec![msg],
        },
    )
    .encode(&mut out, DEFAULT_MAX_FRAME_LEN)
    .unwrap();
    sock.write_all(&out).await.unwrap();
    let replies = read_frames(&mut sock, &mut buf, 2).await;
    assert!(
        matches!(&replies[0].body, Reply::PublishRejected(r) if r.rejections[0].code == ErrorCode::StorageFull),
        "{replies:?}"
    );
    assert!(
        matches!(&replies[1].body, Reply::Confirm(c) if c.up_to.0 == 1),
        "{replies:?}"
    );
    // Everything else keeps working, and the client knows it is blocked.
    let client = broker.client().await;
    client
        .declare_queue("q", QueueOptions::new())
        .await
        .unwrap();
    assert!(client.is_blocked());
    broker.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_peer_is_closed_after_two_heartbeat_intervals() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path());
    let (mut sock, mut buf, _) = raw_handshake(&broker, 1_000).await;
    // Say nothing: the server sends heartbeats, then gives up on us.
    let started = std::time::Instant::now();
    let decoder = FrameDecoder::new(DEFAULT_MAX_FRAME_LEN);
    let mut saw_heartbeat = false;
    let close = within("heartbeat timeout", async {
        loop {
            while let Some(f) = decoder.decode::<Reply>(&mut buf).unwrap() {
                match f.body {
                    Reply::Heartbeat => saw_heartbeat = true,
                    Reply::Close(c) => return c,
                    other => panic!("unexpected {other:?}"),
                }
            }
            assert!(
                sock.read_buf(&mut buf).await.unwrap() > 0,
                "closed without Close"
            );
        }
    })
    .await;
    assert_eq!(close.code, Some(ErrorCode::HeartbeatTimeout));
    assert!(saw_heartbeat);
    assert!(
        started.elapsed() >= Duration::from_millis(1_900),
        "{:?}",
        started.elapsed()
    );
    broker.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_connections_with_connection_forced() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path());
    let (mut sock, mut buf, _) = raw_handshake(&broker, 0).await;
    let stopper = std::thread::spawn(move || broker.stop());
    let frames = read_frames(&mut sock, &mut buf, 1).await;
    assert!(
        matches!(&frames[0].body, Reply::Close(c) if c.code == Some(ErrorCode::ConnectionForced)),
        "{frames:?}"
    );
    stopper.join().unwrap();
}
