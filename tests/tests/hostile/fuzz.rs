//! A mutation fuzzer over valid frames, for a bounded time: each round opens a connection,
//! says a valid (or mutated) `Hello`, then sends a burst of valid and mutated requests and
//! reads whatever comes back. Meanwhile a well-behaved client keeps publishing and consuming.
//! The broker must stay up, keep answering that client promptly, stay small, and lose none of
//! its confirmed messages. The seed is fixed (override with `SLUICE_FUZZ_SEED`), so a failure
//! reproduces.

use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use sluice_client::wire::{
    Ack, Bind, Consume, DeclareExchange, DeclareQueue, DeleteQueue, DeliveryTag, Frame, Get, Hello,
    ListBindings, ListQueues, MessageMeta, Nack, Publish, PublishMessage, PurgeQueue, Request,
    RequestId, PROTOCOL_VERSION,
};
use sluice_client::{ConsumeOptions, HeaderValue, PublishOptions, QueueOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::{within, Broker, PROMPT};

/// Rounds of the fuzzer, and the time they may take at most.
const ROUNDS: usize = 400;
const FUZZ_TIME: Duration = Duration::from_secs(20);
/// Requests per round.
const BURST: usize = 24;
/// How long a round waits for more reply bytes before it hangs up.
const QUIET: Duration = Duration::from_millis(50);
/// The broker's peak memory with the fuzzer at it: the fuzzer's traffic is a few MiB.
const MAX_PEAK_RSS: u64 = 256 << 20;

fn hello() -> Hello {
    Hello {
        min_version: sluice_client::wire::PROTOCOL_VERSION,
        max_version: PROTOCOL_VERSION,
        username: "guest".into(),
        password: "guest".into(),
        heartbeat_ms: 0,
        max_frame_len: 0,
        client_properties: Vec::new(),
    }
}

fn encode(id: u32, body: impl Into<Request>) -> Vec<u8> {
    let mut buf = BytesMut::new();
    Frame::<Request>::new(RequestId(id), body)
        .encode(&mut buf, 1 << 20)
        .expect("a valid frame encodes");
    buf.to_vec()
}

/// Valid requests of every kind the fuzzer mutates, on its own queues and exchanges.
fn corpus() -> Vec<Vec<u8>> {
    let meta = |exchange: &str, key: &str| MessageMeta {
        exchange: exchange.into(),
        routing_key: key.into(),
        mandatory: true,
        properties: Default::default(),
    };
    let mut headers_meta = meta("fz-headers", "");
    headers_meta.properties.headers = vec![
        ("a".into(), HeaderValue::Str("1".into())),
        ("b".into(), HeaderValue::Int(2)),
    ];
    let publish = Publish {
        messages: vec![
            PublishMessage::new(&meta("", "fz-q"), Bytes::from_static(b"fuzz")).unwrap(),
            PublishMessage::new(&headers_meta, Bytes::from_static(b"hdr")).unwrap(),
        ],
    };
    vec![
        encode(
            1,
            DeclareQueue {
                name: "fz-q".into(),
                durable: true,
                ..Default::default()
            },
        ),
        encode(
            2,
            DeclareExchange {
                name: "fz-headers".into(),
                kind: sluice_client::ExchangeKind::Headers,
                durable: true,
                auto_delete: false,
                passive: false,
                alternate_exchange: None,
                hash_header: None,
            },
        ),
        encode(
            3,
            Bind {
                queue: "fz-q".into(),
                exchange: "fz-headers".into(),
                routing_key: String::new(),
                arguments: vec![("x-match".into(), HeaderValue::Str("any".into()))],
            },
        ),
        encode(4, publish),
        encode(
            5,
            Consume {
                queue: "fz-q".into(),
                consumer_tag: String::new(),
                prefetch: 10,
                exclusive: false,
                ack_timeout_ms: None,
                priority: None,
                circuit_breaker: None,
            },
        ),
        encode(
            6,
            Get {
                queue: "fz-q".into(),
            },
        ),
        encode(
            7,
            Ack {
                delivery_tag: DeliveryTag(1),
                multiple: true,
            },
        ),
        encode(
            8,
            Nack {
                delivery_tag: DeliveryTag(2),
                multiple: false,
                requeue: true,
                delay_ms: None,
                reason: None,
            },
        ),
        encode(
            9,
            PurgeQueue {
                name: "fz-q".into(),
            },
        ),
        encode(
            10,
            DeleteQueue {
                name: "fz-gone".into(),
                ..Default::default()
            },
        ),
        encode(
            11,
            ListQueues {
                after: Some("fz".into()),
                limit: 5,
            },
        ),
        encode(12, ListBindings::default()),
        encode(13, Request::Heartbeat),
    ]
}

/// One random change to a valid frame, the kinds a broken or hostile client makes.
fn mutate(rng: &mut fastrand::Rng, frame: &[u8]) -> Vec<u8> {
    let mut f = frame.to_vec();
    match rng.u8(0..7) {
        0 => {
            let i = rng.usize(0..f.len());
            f[i] ^= 1 << rng.u8(0..8);
        }
        1 => {
            let i = rng.usize(0..f.len());
            f[i] = rng.u8(..);
        }
        2 => {
            // A length prefix that lies, in either direction.
            let len = u32::from_le_bytes(f[..4].try_into().unwrap());
            let lie = match rng.u8(0..3) {
                0 => rng.u32(..),
                1 => len.saturating_sub(rng.u32(1..16)),
                _ => len.saturating_add(rng.u32(1..16)),
            };
            f[..4].copy_from_slice(&lie.to_le_bytes());
        }
        3 => f.truncate(rng.usize(0..f.len())),
        4 => {
            // Another opcode on the same payload.
            f[4..6].copy_from_slice(&rng.u16(..).to_le_bytes());
        }
        5 => {
            let at = rng.usize(8..f.len().max(9)).min(f.len());
            let junk: Vec<u8> = (0..rng.usize(1..64)).map(|_| rng.u8(..)).collect();
            f.splice(at..at, junk);
        }
        _ => {
            // A count field (somewhere past the header) set high: allocations must be bounded
            // by the bytes that are there, not by what a count claims.
            if f.len() > 16 {
                let at = rng.usize(12..f.len() - 3);
                f[at..at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
            }
        }
    }
    f
}

/// Reads until the broker closes the connection or stays quiet for [`QUIET`].
async fn read_until_quiet(stream: &mut TcpStream) {
    let mut buf = vec![0u8; 64 << 10];
    while let Ok(Ok(n)) = tokio::time::timeout(QUIET, stream.read(&mut buf)).await {
        if n == 0 {
            return;
        }
    }
}

/// One connection's worth of fuzzing.
async fn round(addr: &str, rng: &mut fastrand::Rng, corpus: &[Vec<u8>]) {
    let Ok(mut stream) = TcpStream::connect(addr).await else {
        panic!("the broker stopped accepting connections");
    };
    let hello = encode(0, hello());
    let hello = if rng.u8(0..8) == 0 {
        mutate(rng, &hello)
    } else {
        hello
    };
    let mut out = hello;
    for _ in 0..BURST {
        let frame = &corpus[rng.usize(0..corpus.len())];
        if rng.u8(0..3) == 0 {
            out.extend_from_slice(frame);
        } else {
            out.extend(mutate(rng, frame));
        }
    }
    // The broker may close on a framing error before it has read everything.
    let _ = stream.write_all(&out).await;
    read_until_quiet(&mut stream).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutated_frames_get_errors_and_never_hurt_a_well_behaved_client() {
    let seed = std::env::var("SLUICE_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_f00d_u64);
    let dir = tempfile::tempdir().unwrap();
    let mut broker = Broker::start(dir.path(), &[]);
    let client = broker.client().await;
    client
        .declare_queue("steady", QueueOptions::new())
        .await
        .unwrap();
    let mut consumer = client
        .consume("steady", ConsumeOptions::new().prefetch(1))
        .await
        .unwrap();
    let corpus = corpus();
    let mut rng = fastrand::Rng::with_seed(seed);
    let started = Instant::now();
    let mut rounds = 0;
    let mut slowest = Duration::ZERO;
    while rounds < ROUNDS && started.elapsed() < FUZZ_TIME {
        round(broker.addr(), &mut rng, &corpus).await;
        rounds += 1;
        if rounds % 10 == 0 {
            // A full round trip of the well-behaved client, promptly, every few rounds.
            let t = Instant::now();
            let body = Bytes::from(format!("steady-{rounds}"));
            let options = PublishOptions::new();
            let trip = async {
                client.publish("", "steady", body.clone(), &options).await?;
                let m = futures_util::StreamExt::next(&mut consumer)
                    .await
                    .expect("the consumer goes on")?;
                assert_eq!(m.body, body, "seed {seed:#x}");
                m.ack().await
            };
            tokio::time::timeout(PROMPT, trip)
                .await
                .unwrap_or_else(|_| panic!("a round trip took over {PROMPT:?} (seed {seed:#x})"))
                .unwrap();
            slowest = slowest.max(t.elapsed());
        }
        assert!(
            broker.process.is_running(),
            "the broker died (seed {seed:#x})"
        );
    }
    assert!(rounds >= 50, "only {rounds} rounds ran in {FUZZ_TIME:?}");
    let peak = broker.process.peak_rss_bytes();
    assert!(
        peak < MAX_PEAK_RSS,
        "peak RSS {} MiB after {rounds} rounds (seed {seed:#x})",
        peak >> 20
    );
    eprintln!(
        "{rounds} rounds, slowest round trip {slowest:?}, peak RSS {} MiB",
        peak >> 20
    );
    let info = within("inspect", client.inspect_queue("steady"))
        .await
        .unwrap();
    assert_eq!(info.ready, 0, "every steady message was delivered once");
}
