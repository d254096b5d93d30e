//! Bad input over raw sockets: each gets a typed error, and the broker keeps serving others.

use bytes::BytesMut;
use sluice_client::wire::{
    Close, ErrorCode, Frame, FrameDecoder, Hello, Reply, Request, RequestId, DEFAULT_MAX_FRAME_LEN,
};
use sluice_client::{Client, PublishOptions, QueueOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::harness::{within, Broker};

fn hello(user: &str, password: &str, min_version: u16, max_version: u16) -> Request {
    Request::Hello(Hello {
        min_version,
        max_version,
        username: user.into(),
        password: password.into(),
        heartbeat_ms: 0,
        max_frame_len: 0,
        client_properties: vec![],
    })
}

fn encode(request_id: u32, body: Request) -> Vec<u8> {
    let mut out = BytesMut::new();
    Frame::<Request>::new(RequestId(request_id), body)
        .encode(&mut out, DEFAULT_MAX_FRAME_LEN)
        .unwrap();
    out.to_vec()
}

/// Reads frames until one arrives (or the socket closes: `None`).
async fn read_reply(sock: &mut TcpStream, buf: &mut BytesMut) -> Option<Frame<Reply>> {
    let decoder = FrameDecoder::new(DEFAULT_MAX_FRAME_LEN);
    within("a reply", async {
        loop {
            if let Some(f) = decoder
                .decode::<Reply>(buf)
                .expect("the server sends valid frames")
            {
                return Some(f);
            }
            if sock.read_buf(buf).await.unwrap_or(0) == 0 {
                return None;
            }
        }
    })
    .await
}

/// Reads until the server closes the socket; returns the `Close` it sent on the way.
async fn expect_close(sock: &mut TcpStream, buf: &mut BytesMut) -> Close {
    let mut close = None;
    while let Some(f) = read_reply(sock, buf).await {
        if let Reply::Close(c) = f.body {
            close = Some(c);
        }
    }
    close.expect("a Close frame before the socket closed")
}

async fn connect(broker: &Broker) -> (TcpStream, BytesMut) {
    (
        TcpStream::connect(&broker.addr).await.unwrap(),
        BytesMut::new(),
    )
}

async fn handshaken(broker: &Broker) -> (TcpStream, BytesMut) {
    let (mut sock, mut buf) = connect(broker).await;
    sock.write_all(&encode(1, hello("guest", "guest", 2, 2)))
        .await
        .unwrap();
    let f = read_reply(&mut sock, &mut buf).await.unwrap();
    assert!(matches!(f.body, Reply::Welcome(_)), "{f:?}");
    (sock, buf)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_typed_errors_and_others_keep_being_served() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start_with(dir.path(), &["--max-message-bytes", "65536"]);
    // A well-behaved client, active throughout.
    let good = broker.client().await;
    good.declare_queue("steady", QueueOptions::new())
        .await
        .unwrap();

    // Garbage before the handshake: the length prefix is way above the handshake limit.
    let (mut sock, mut buf) = connect(&broker).await;
    sock.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let close = expect_close(&mut sock, &mut buf).await;
    assert_eq!(close.code, Some(ErrorCode::FrameTooLarge));

    // A first frame that is not Hello.
    let (mut sock, mut buf) = connect(&broker).await;
    sock.write_all(&encode(1, Request::Heartbeat))
        .await
        .unwrap();
    assert_eq!(
        expect_close(&mut sock, &mut buf).await.code,
        Some(ErrorCode::UnexpectedFrame)
    );

    // A Hello with the wrong magic.
    let (mut sock, mut buf) = connect(&broker).await;
    let mut frame = encode(1, hello("guest", "guest", 2, 2));
    frame[12] = b'X';
    sock.write_all(&frame).await.unwrap();
    assert_eq!(
        expect_close(&mut sock, &mut buf).await.code,
        Some(ErrorCode::MalformedFrame)
    );

    // No common version.
    let (mut sock, mut buf) = connect(&broker).await;
    sock.write_all(&encode(1, hello("guest", "guest", 7, 9)))
        .await
        .unwrap();
    let close = expect_close(&mut sock, &mut buf).await;
    assert_eq!(close.code, Some(ErrorCode::UnsupportedVersion));
    assert!(close.reason.contains("2..2"), "{}", close.reason);

    // A client of version 1, whose deliveries lack `enqueued_at_ms`, is told so rather than
    // sent frames it would misread.
    let (mut sock, mut buf) = connect(&broker).await;
    sock.write_all(&encode(1, hello("guest", "guest", 1, 1)))
        .await
        .unwrap();
    let close = expect_close(&mut sock, &mut buf).await;
    assert_eq!(close.code, Some(ErrorCode::UnsupportedVersion));

    // Wrong credentials, through the real client too.
    let (mut sock, mut buf) = connect(&broker).await;
    sock.write_all(&encode(1, hello("guest", "wrong", 2, 2)))
        .await
        .unwrap();
    assert_eq!(
        expect_close(&mut sock, &mut buf).await.code,
        Some(ErrorCode::AccessRefused)
    );
    let url = format!("sluice://guest:nope@{}", broker.addr);
    let err = within("refused connect", Client::connect(&url))
        .await
        .unwrap_err();
    assert!(err.is_access_refused(), "{err:?}");

    // After the handshake: an unknown opcode is a request error, the connection stays.
    let (mut sock, mut buf) = handshaken(&broker).await;
    let mut unknown = encode(9, Request::Heartbeat);
    unknown[4..6].copy_from_slice(&0x7777u16.to_le_bytes());
    sock.write_all(&unknown).await.unwrap();
    let f = read_reply(&mut sock, &mut buf).await.unwrap();
    assert_eq!(f.request_id, RequestId(9));
    assert!(
        matches!(&f.body, Reply::Error(e) if e.code == ErrorCode::UnknownOpcode),
        "{f:?}"
    );
    // A malformed payload inside a good frame: MALFORMED_REQUEST, still connected.
    let mut bad = encode(
        10,
        Request::InspectQueue(sluice_client::wire::InspectQueue {
            name: "steady".into(),
        }),
    );
    bad[12] = 0xff; // the name's length now runs past the frame
    sock.write_all(&bad).await.unwrap();
    let f = read_reply(&mut sock, &mut buf).await.unwrap();
    assert!(
        matches!(&f.body, Reply::Error(e) if e.code == ErrorCode::MalformedRequest),
        "{f:?}"
    );
    // An unknown queue: NOT_FOUND.
    sock.write_all(&encode(
        11,
        Request::InspectQueue(sluice_client::wire::InspectQueue {
            name: "ghost".into(),
        }),
    ))
    .await
    .unwrap();
    let f = read_reply(&mut sock, &mut buf).await.unwrap();
    assert!(
        matches!(&f.body, Reply::Error(e) if e.code == ErrorCode::NotFound),
        "{f:?}"
    );
    // A message above max_message_len in a well-framed Publish: refused, typed, then confirmed.
    let meta = sluice_client::wire::MessageMeta::new("", "steady");
    let big = sluice_client::wire::PublishMessage::new(&meta, vec![7u8; 65536]).unwrap();
    let publish = sluice_client::wire::Publish {
        messages: vec![big],
    };
    sock.write_all(&encode(12, Request::Publish(publish)))
        .await
        .unwrap();
    let f = read_reply(&mut sock, &mut buf).await.unwrap();
    match &f.body {
        Reply::PublishRejected(r) => {
            assert_eq!(r.rejections.len(), 1);
            assert_eq!(r.rejections[0].code, ErrorCode::MessageTooLarge);
        }
        other => panic!("expected PublishRejected, got {other:?}"),
    }
    let f = read_reply(&mut sock, &mut buf).await.unwrap();
    assert!(
        matches!(&f.body, Reply::Confirm(c) if c.up_to.0 == 1),
        "{f:?}"
    );
    // An oversized frame: its length prefix alone closes the connection.
    sock.write_all(&(65536u32 + 1024 + 1).to_le_bytes())
        .await
        .unwrap();
    assert_eq!(
        expect_close(&mut sock, &mut buf).await.code,
        Some(ErrorCode::FrameTooLarge)
    );

    // The client refuses an oversized message before sending it.
    let max = good.server_info().max_message_len as usize;
    assert_eq!(max, 65536);
    let err = good
        .publish("", "steady", vec![0u8; max + 1], &PublishOptions::new())
        .await
        .unwrap_err();
    assert!(
        matches!(err, sluice_client::Error::MessageTooLarge { .. }),
        "{err:?}"
    );

    // The good client was served all along.
    good.publish("", "steady", "still here", &PublishOptions::new())
        .await
        .unwrap();
    let m = good.get("steady").await.unwrap().expect("message");
    assert_eq!(&m.body[..], b"still here");
    let err = good.purge_queue("ghost").await.unwrap_err();
    assert!(err.is_not_found());
    broker.stop();
}
