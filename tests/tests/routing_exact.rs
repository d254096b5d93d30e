//! Routing exactly as RabbitMQ, against the real broker: the shared case tables of
//! tests/data/routing_exact (topic patterns and headers bindings, also run as unit tests of
//! the matchers) routed end to end, a pattern of 50 `#` groups against a 200-word key, and
//! every AMQP header value type carried through storage and a `kill -9`, and tables nested
//! deeper than the limit refused by the client and by the server.

use std::collections::{BTreeMap, HashSet};

use bytes::BytesMut;
use serde_json::Value;
use sluice_broker::topology::header_value_from_json;
use sluice_client::wire::{
    Bind, ErrorCode, Frame, FrameDecoder, Hello, MessageMeta, Publish, PublishMessage, PublishSeq,
    Reply, Request, RequestId, HANDSHAKE_MAX_FRAME_LEN, MAX_HEADER_DEPTH, PROTOCOL_VERSION,
};
use sluice_client::{
    Client, Decimal, ExchangeKind, ExchangeOptions, HeaderValue, Headers, OutgoingMessage,
    PublishOptions, QueueOptions,
};
use sluice_tests::broker::{within, BrokerProcess};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn case_table(json: &str) -> Vec<Value> {
    let doc: Value = serde_json::from_str(json).expect("case table is JSON");
    doc["cases"].as_array().expect("cases").clone()
}

fn headers_of(json: &Value) -> Headers {
    json.as_object()
        .expect("a table")
        .iter()
        .map(|(k, v)| {
            (
                k.clone(),
                header_value_from_json(k, v).expect("a header value"),
            )
        })
        .collect()
}

async fn connect(broker: &BrokerProcess) -> Client {
    within("connect", Client::connect(&broker.url()))
        .await
        .expect("connect")
}

async fn declare(client: &Client, exchange: &str, kind: ExchangeKind) {
    within(
        "declare exchange",
        client.declare_exchange(exchange, kind, ExchangeOptions::new().durable(false)),
    )
    .await
    .expect("declare exchange");
}

/// Declares `queue` and binds it to `exchange`.
async fn bound_queue(client: &Client, queue: &str, exchange: &str, key: &str, args: Headers) {
    within(
        "declare queue",
        client.declare_queue(queue, QueueOptions::new().durable(false)),
    )
    .await
    .expect("declare queue");
    within("bind", client.bind(queue, exchange, key, args))
        .await
        .unwrap_or_else(|e| panic!("bind {queue} to {exchange} with {key:?}: {e}"));
}

/// Publishes the batch and checks that every message was accepted.
async fn publish_all(client: &Client, messages: Vec<OutgoingMessage>) {
    let outcomes = within("publish", client.publish_batch(messages)).await;
    for outcome in outcomes {
        outcome.expect("published");
    }
}

/// The bodies of the ready messages of `queue`, read in one browse.
async fn bodies(client: &Client, queue: &str) -> HashSet<String> {
    let page = within("browse", client.browse(queue, 0, 0))
        .await
        .expect("browse");
    assert!(!page.more, "{queue} holds more than one page");
    page.messages
        .iter()
        .map(|m| String::from_utf8(m.body.to_vec()).expect("UTF-8 body"))
        .collect()
}

/// Every distinct pattern gets a queue and every distinct key one message, published in one
/// batch; then each queue holds exactly the keys its pattern matches.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_topic_case_of_the_shared_table_routes_as_in_rabbitmq() {
    let cases = case_table(include_str!("../data/routing_exact/topic_cases.json"));
    assert!(cases.len() >= 200);
    let text = |c: &Value, k: &str| c[k].as_str().expect("string").to_owned();
    let mut patterns = BTreeMap::new();
    let mut keys = BTreeMap::new();
    for case in &cases {
        let n = patterns.len();
        patterns.entry(text(case, "pattern")).or_insert(n);
        let n = keys.len();
        keys.entry(text(case, "key")).or_insert(n);
    }
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(dir.path(), &[]);
    let client = connect(&broker).await;
    declare(&client, "cases", ExchangeKind::Topic).await;
    for (pattern, i) in &patterns {
        bound_queue(&client, &format!("p{i}"), "cases", pattern, vec![]).await;
    }
    let messages = keys
        .iter()
        .map(|(key, j)| OutgoingMessage::new("cases", key.as_str(), format!("k{j}")))
        .collect();
    publish_all(&client, messages).await;
    let mut received = BTreeMap::new();
    for i in patterns.values() {
        received.insert(*i, bodies(&client, &format!("p{i}")).await);
    }
    for case in &cases {
        let (pattern, key) = (text(case, "pattern"), text(case, "key"));
        let got = received[&patterns[&pattern]].contains(&format!("k{}", keys[&key]));
        assert_eq!(
            got,
            case["matches"].as_bool().unwrap(),
            "pattern {pattern:?}, key {key:?}: {}",
            case["why"]
        );
    }
    broker.stop();
}

/// Each case gets a queue bound with its arguments and a message with its headers, all
/// published in one batch; then each queue holds its own case's message exactly when the
/// table says it matches.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_headers_case_of_the_shared_table_routes_as_in_rabbitmq() {
    let cases = case_table(include_str!("../data/routing_exact/header_cases.json"));
    assert!(cases.len() >= 100);
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(dir.path(), &[]);
    let client = connect(&broker).await;
    declare(&client, "cases", ExchangeKind::Headers).await;
    let mut messages = Vec::new();
    for (i, case) in cases.iter().enumerate() {
        let queue = format!("h{i}");
        bound_queue(&client, &queue, "cases", "", headers_of(&case["arguments"])).await;
        let options = headers_of(&case["headers"])
            .into_iter()
            .fold(PublishOptions::new(), |o, (k, v)| o.header(k, v));
        messages.push(OutgoingMessage::new("cases", "", format!("m{i}")).with_options(options));
    }
    publish_all(&client, messages).await;
    for (i, case) in cases.iter().enumerate() {
        let got = bodies(&client, &format!("h{i}"))
            .await
            .contains(&format!("m{i}"));
        assert_eq!(got, case["matches"].as_bool().unwrap(), "case {i}: {case}");
    }
    broker.stop();
}

/// 50 `#` groups, separated by empty words and followed by a word the key lacks: a walk
/// that tried every split of the key among the groups would never answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_hash_groups_against_a_200_word_key_answer() {
    let mut pattern = vec!["#"; 50].join("..");
    pattern.push_str(".z");
    let key = ".".repeat(199); // 200 empty words
    let matching = format!("{}.z", ".".repeat(198)); // 199 empty words, then z
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(dir.path(), &[]);
    let client = connect(&broker).await;
    declare(&client, "deep", ExchangeKind::Topic).await;
    bound_queue(&client, "q", "deep", &pattern, vec![]).await;
    let mandatory = PublishOptions::new().mandatory();
    let refused = within("publish", client.publish("deep", &key, "no", &mandatory)).await;
    assert!(refused.expect_err("no z: unroutable").is_unroutable());
    within(
        "publish",
        client.publish("deep", &matching, "yes", &mandatory),
    )
    .await
    .expect("routed");
    assert_eq!(
        bodies(&client, "q").await,
        HashSet::from(["yes".to_owned()])
    );
    broker.stop();
}

fn every_type() -> Headers {
    vec![
        ("s".into(), "text".into()),
        ("i".into(), HeaderValue::Int(-7)),
        ("b".into(), HeaderValue::Bool(true)),
        ("raw".into(), HeaderValue::Bytes(vec![0u8, 255].into())),
        ("f".into(), HeaderValue::Float(2.5)),
        ("nz".into(), HeaderValue::Float(-0.0)),
        ("v".into(), HeaderValue::Void),
        (
            "a".into(),
            HeaderValue::Array(vec![HeaderValue::Int(1), "x".into(), HeaderValue::Void]),
        ),
        (
            "t".into(),
            HeaderValue::Table(vec![
                ("z".into(), HeaderValue::Float(1.0)),
                ("a".into(), HeaderValue::Array(vec![])),
            ]),
        ),
        ("ts".into(), HeaderValue::Timestamp(1_700_000_000)),
        (
            "d".into(),
            HeaderValue::Decimal(Decimal {
                scale: 2,
                value: 1230,
            }),
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_header_type_survives_storage_and_a_kill_9_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(dir.path(), &[]);
    let client = connect(&broker).await;
    within("declare", client.declare_queue("kept", QueueOptions::new()))
        .await
        .unwrap();
    let options = every_type()
        .into_iter()
        .fold(PublishOptions::new(), |o, (k, v)| o.header(k, v));
    within("publish", client.publish("", "kept", "m", &options))
        .await
        .unwrap();
    // A headers binding on a float argument routes an integer header of the same value.
    declare(&client, "h", ExchangeKind::Headers).await;
    let args = vec![("n".to_owned(), HeaderValue::Float(3.0))];
    bound_queue(&client, "by-number", "h", "", args).await;
    let int = PublishOptions::new().mandatory().header("n", 3i64);
    within("publish", client.publish("h", "", "three", &int))
        .await
        .expect("3 == 3.0");
    assert_eq!(
        bodies(&client, "by-number").await,
        HashSet::from(["three".to_owned()])
    );
    broker.kill9();

    let broker = BrokerProcess::start(dir.path(), &[]);
    let client = connect(&broker).await;
    let message = within("get", client.get("kept"))
        .await
        .unwrap()
        .expect("the message survived");
    assert_eq!(message.headers(), every_type());
    broker.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_nested_deeper_than_the_limit_are_refused_and_the_connection_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(dir.path(), &[]);
    let client = connect(&broker).await;
    within("declare", client.declare_queue("q", QueueOptions::new()))
        .await
        .unwrap();
    let nested = |depth: usize| {
        (1..depth).fold(HeaderValue::Array(vec![]), |v, _| {
            HeaderValue::Array(vec![v])
        })
    };
    let deepest = PublishOptions::new().header("k", nested(MAX_HEADER_DEPTH));
    within("publish", client.publish("", "q", "ok", &deepest))
        .await
        .expect("16 deep is allowed");
    let too_deep = PublishOptions::new().header("k", nested(MAX_HEADER_DEPTH + 1));
    let refused = within("publish", client.publish("", "q", "no", &too_deep)).await;
    let message = refused.expect_err("17 deep is refused").to_string();
    assert!(message.contains("nesting depth"), "{message}");
    let got = within("get", client.get("q")).await.unwrap().unwrap();
    assert_eq!(got.header("k"), Some(nested(MAX_HEADER_DEPTH)));
    assert!(within("get", client.get("q")).await.unwrap().is_none());
    broker.stop();
}

/// A connection that writes frames by hand, to send a table no library would encode.
struct RawConnection {
    sock: TcpStream,
    buf: BytesMut,
    decoder: FrameDecoder,
}

impl RawConnection {
    async fn connect(broker: &BrokerProcess) -> RawConnection {
        let sock = within("raw connect", TcpStream::connect(broker.addr()))
            .await
            .expect("raw connect");
        let mut raw = RawConnection {
            sock,
            buf: BytesMut::new(),
            decoder: FrameDecoder::new(HANDSHAKE_MAX_FRAME_LEN),
        };
        let hello = Hello {
            min_version: PROTOCOL_VERSION,
            max_version: PROTOCOL_VERSION,
            username: "guest".into(),
            password: "guest".into(),
            heartbeat_ms: 0,
            max_frame_len: 0,
            client_properties: Vec::new(),
        };
        raw.send(&Self::frame(1, hello)).await;
        let Reply::Welcome(welcome) = raw.answer(1).await else {
            panic!("no Welcome");
        };
        raw.decoder.set_max_frame_len(welcome.max_frame_len);
        raw
    }

    fn frame(id: u32, request: impl Into<Request>) -> Vec<u8> {
        let mut out = BytesMut::new();
        Frame::<Request>::new(RequestId(id), request)
            .encode(&mut out, HANDSHAKE_MAX_FRAME_LEN)
            .expect("encode");
        out.to_vec()
    }

    async fn send(&mut self, bytes: &[u8]) {
        within("send", self.sock.write_all(bytes))
            .await
            .expect("send");
    }

    async fn answer(&mut self, id: u32) -> Reply {
        within("answer", async {
            loop {
                if let Some(raw) = self.decoder.decode_raw(&mut self.buf).expect("framing") {
                    let frame = raw.decode::<Reply>().expect("a decodable reply");
                    assert_eq!(frame.request_id, RequestId(id), "{:?}", frame.body);
                    return frame.body;
                }
                let n = self.sock.read_buf(&mut self.buf).await.expect("read");
                assert!(n > 0, "the server closed the connection");
            }
        })
        .await
    }
}

/// A `Bind` whose arguments nest 17 arrays: the client library refuses to encode it, so the
/// frame is patched by hand. The server answers MALFORMED_REQUEST and serves on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bind_nested_deeper_than_the_limit_is_malformed_and_the_connection_stays() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(dir.path(), &[]);
    let client = connect(&broker).await;
    within("declare", client.declare_queue("q", QueueOptions::new()))
        .await
        .unwrap();
    let mut raw = RawConnection::connect(&broker).await;
    let deepest = (1..MAX_HEADER_DEPTH).fold(HeaderValue::Array(vec![]), |v, _| {
        HeaderValue::Array(vec![v])
    });
    let bind = |id| {
        RawConnection::frame(
            id,
            Bind {
                queue: "q".into(),
                exchange: "amq.headers".into(),
                routing_key: String::new(),
                arguments: vec![("k".into(), deepest.clone())],
            },
        )
    };
    // The innermost empty array (`07 00 00`) ends the frame: make it hold one more.
    let mut frame = bind(2);
    let at = frame.len() - 3;
    assert_eq!(&frame[at..], [7, 0, 0]);
    frame.splice(at.., [7, 1, 0, 7, 0, 0]);
    let len = u32::from_le_bytes(frame[..4].try_into().unwrap()) + 3;
    frame[..4].copy_from_slice(&len.to_le_bytes());
    raw.send(&frame).await;
    match raw.answer(2).await {
        Reply::Error(e) => assert_eq!(e.code, ErrorCode::MalformedRequest, "{}", e.message),
        other => panic!("expected MALFORMED_REQUEST, got {other:?}"),
    }
    raw.send(&bind(3)).await;
    assert!(matches!(raw.answer(3).await, Reply::BindOk));
    broker.stop();
}

/// The same in a message's headers: that message is refused with MALFORMED_REQUEST, the next
/// one is stored, and the connection stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_nested_deeper_than_the_limit_is_refused_alone() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(dir.path(), &[]);
    let client = connect(&broker).await;
    within("declare", client.declare_queue("q", QueueOptions::new()))
        .await
        .unwrap();
    let mut raw = RawConnection::connect(&broker).await;
    let deepest = (1..MAX_HEADER_DEPTH).fold(HeaderValue::Array(vec![]), |v, _| {
        HeaderValue::Array(vec![v])
    });
    let publish = |id, body: &'static str| {
        let mut meta = MessageMeta::new("", "q");
        meta.properties.headers = vec![("k".into(), deepest.clone())];
        let message = PublishMessage::new(&meta, body).expect("16 deep encodes");
        RawConnection::frame(
            id,
            Publish {
                messages: vec![message],
            },
        )
    };
    // The headers end the meta block, the innermost empty array (`07 00 00`) ends the
    // headers, and an empty body's length (`00 00 00 00`) ends the frame.
    let mut frame = publish(2, "");
    let at = frame.len() - 4 - 3;
    assert_eq!(&frame[at..], [7, 0, 0, 0, 0, 0, 0]);
    frame.splice(at..at + 3, [7, 1, 0, 7, 0, 0]);
    for length_at in [0, 16] {
        // The frame's length, then the message's meta_len (after the 12-byte frame header
        // and the 4-byte count).
        let field = &mut frame[length_at..length_at + 4];
        let len = u32::from_le_bytes(field.try_into().unwrap()) + 3;
        field.copy_from_slice(&len.to_le_bytes());
    }
    raw.send(&frame).await;
    match raw.answer(0).await {
        Reply::PublishRejected(r) => {
            assert_eq!(r.rejections.len(), 1);
            assert_eq!(r.rejections[0].seq, PublishSeq(1));
            assert_eq!(r.rejections[0].code, ErrorCode::MalformedRequest);
        }
        other => panic!("expected PublishRejected, got {other:?}"),
    }
    assert!(matches!(raw.answer(0).await, Reply::Confirm(c) if c.up_to == PublishSeq(1)));
    raw.send(&publish(3, "kept")).await;
    assert!(matches!(raw.answer(0).await, Reply::Confirm(c) if c.up_to == PublishSeq(2)));
    assert_eq!(
        bodies(&client, "q").await,
        HashSet::from(["kept".to_owned()])
    );
    broker.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_publishes_and_shows_every_header_type() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(dir.path(), &[]);
    broker.cli(&["declare-queue", "typed"]);
    broker.cli(&[
        "publish",
        "",
        "typed",
        "body",
        "--header",
        "f:float=1",
        "--header",
        "v:void=",
        "--header",
        "ts:timestamp=1700000000",
        "--header",
        "d:decimal=1.50",
        "--header",
        r#"j:json=[1, 2.5, null, {"k": "x"}]"#,
    ]);
    let printed = broker.cli(&["get", "typed", "--json"]);
    let got: Value = serde_json::from_str(&printed).unwrap();
    assert_eq!(
        got["headers"],
        serde_json::json!({
            "f": 1.0,
            "v": null,
            "ts": {"timestamp": 1_700_000_000},
            "d": {"decimal": "1.50"},
            "j": [1, 2.5, null, {"k": "x"}],
        }),
        "{got}"
    );
    // A float prints as one, so that it reads back as a float.
    assert!(
        serde_json::to_string(&got["headers"])
            .unwrap()
            .contains(r#""f":1.0"#),
        "{got}"
    );
    broker.stop();
}
