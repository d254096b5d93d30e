//! Listings larger than a frame, and clients that ask for absurd pages: every request gets an
//! answer (protocol.md §15). Listing clients agree the smallest frame (64 KiB), so a few
//! hundred long names are more than one frame holds.

use std::collections::BTreeSet;

use bytes::{Bytes, BytesMut};
use futures_util::future::try_join_all;
use sluice_client::wire::{
    ErrorCode, Frame, FrameDecoder, HeaderValue, Hello, ListBindings, ListConsumers, ListExchanges,
    ListQueues, QueueSummary, Reply, Request, RequestId, HANDSHAKE_MAX_FRAME_LEN,
    MIN_MAX_FRAME_LEN,
};
use sluice_client::{
    Client, ConsumeOptions, Consumer, ExchangeKind, ExchangeOptions, PublishOptions, QueueOptions,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::{within, Broker, PROMPT};

/// Items of each kind that one 64 KiB frame cannot hold: a queue takes 302 bytes of a page
/// (217 fit), a consumer 530, a binding 773.
const MORE_THAN_A_FRAME: usize = 240;
/// Items of each kind for tests that page by a small limit.
const A_FEW: usize = 40;
/// Small log segments: every queue has one, and the tests declare hundreds.
const FLAGS: &[&str] = &["--segment-bytes", "65536"];

/// A 255-byte name (the longest allowed) that sorts by `i`.
fn long_name(prefix: char, i: usize) -> String {
    let head = format!("{prefix}{i:04}-");
    let name = head.clone() + &"n".repeat(255 - head.len());
    assert_eq!(name.len(), 255);
    name
}

/// A client that asks the server for frames of at most 64 KiB.
async fn small_frame_client(broker: &Broker) -> Client {
    let url = broker.process.url();
    let connect = Client::builder()
        .max_frame_len(MIN_MAX_FRAME_LEN)
        .connect(&url);
    let client = within("connect", connect).await.expect("connect");
    assert_eq!(client.server_info().max_frame_len, MIN_MAX_FRAME_LEN);
    client
}

/// A connection that speaks frames by hand, to send listing requests a library would not.
struct RawConnection {
    sock: TcpStream,
    buf: BytesMut,
    decoder: FrameDecoder,
    next_id: u32,
}

/// One answer, with the length of its frame (the length prefix).
struct Answer {
    frame_len: usize,
    body: Reply,
}

impl RawConnection {
    /// Connects and agrees frames of 64 KiB.
    async fn connect(broker: &Broker) -> RawConnection {
        let sock = within("raw connect", TcpStream::connect(broker.addr()))
            .await
            .expect("raw connect");
        let mut raw = RawConnection {
            sock,
            buf: BytesMut::new(),
            decoder: FrameDecoder::new(HANDSHAKE_MAX_FRAME_LEN),
            next_id: 1,
        };
        let hello = Hello {
            min_version: sluice_client::wire::PROTOCOL_VERSION,
            max_version: sluice_client::wire::PROTOCOL_VERSION,
            username: "guest".into(),
            password: "guest".into(),
            heartbeat_ms: 0,
            max_frame_len: MIN_MAX_FRAME_LEN,
            client_properties: Vec::new(),
        };
        let Reply::Welcome(welcome) = raw.call(hello).await.body else {
            panic!("no Welcome");
        };
        assert_eq!(welcome.max_frame_len, MIN_MAX_FRAME_LEN);
        raw.decoder.set_max_frame_len(welcome.max_frame_len);
        raw
    }

    /// Sends `request` and returns the answer naming it.
    async fn call(&mut self, request: impl Into<Request>) -> Answer {
        let id = RequestId(self.next_id);
        self.next_id += 1;
        let mut out = BytesMut::new();
        Frame::<Request>::new(id, request)
            .encode(&mut out, MIN_MAX_FRAME_LEN)
            .expect("encode request");
        self.send_bytes(&out).await;
        self.answer(id).await
    }

    async fn send_bytes(&mut self, bytes: &[u8]) {
        within("send", self.sock.write_all(bytes))
            .await
            .expect("send");
    }

    /// Reads the answer to request `id` (within [`PROMPT`]: a hang is the failure).
    async fn answer(&mut self, id: RequestId) -> Answer {
        let read = async {
            loop {
                if let Some(raw) = self.decoder.decode_raw(&mut self.buf).expect("framing") {
                    let frame_len = 8 + raw.payload.len();
                    let frame = raw.decode::<Reply>().expect("a decodable reply");
                    assert_eq!(frame.request_id, id, "{:?}", frame.body);
                    return Answer {
                        frame_len,
                        body: frame.body,
                    };
                }
                let n = self.sock.read_buf(&mut self.buf).await.expect("read");
                assert!(n > 0, "the server closed the connection");
            }
        };
        tokio::time::timeout(PROMPT, read)
            .await
            .unwrap_or_else(|_| panic!("request {id} was not answered"))
    }
}

/// What [`Topology::declare`] made; dropping it cancels the consumers.
struct Topology {
    /// The exchange every queue is bound to.
    exchange: String,
    /// The queues, in listing order.
    queues: Vec<String>,
    /// One binding key per queue.
    keys: Vec<String>,
    /// One consumer tag per queue.
    tags: Vec<String>,
    _consumers: Vec<Consumer>,
}

impl Topology {
    /// Declares `n` queues, each bound to one exchange with its own routing key and consumed
    /// by one consumer with its own tag: every name, key and tag 255 bytes long.
    async fn declare(client: &Client, n: usize) -> Topology {
        let exchange = long_name('x', 0);
        let queues: Vec<String> = (0..n).map(|i| long_name('q', i)).collect();
        let keys: Vec<String> = (0..n).map(|i| long_name('k', i)).collect();
        let tags: Vec<String> = (0..n).map(|i| long_name('t', i)).collect();
        let direct = ExchangeOptions::new();
        within(
            "declare exchange",
            client.declare_exchange(&exchange, ExchangeKind::Direct, direct),
        )
        .await
        .expect("declare exchange");
        let declares = queues
            .iter()
            .map(|q| client.declare_queue(q, QueueOptions::new()));
        within("declare queues", try_join_all(declares))
            .await
            .expect("declare queues");
        let binds = queues
            .iter()
            .zip(&keys)
            .map(|(q, k)| client.bind(q, &exchange, k, Vec::new()));
        within("bind queues", try_join_all(binds))
            .await
            .expect("bind queues");
        let consumes = queues
            .iter()
            .zip(&tags)
            .map(|(q, t)| client.consume(q, ConsumeOptions::new().consumer_tag(t.clone())));
        let consumers = within("consume", try_join_all(consumes))
            .await
            .expect("consume");
        Topology {
            exchange,
            queues,
            keys,
            tags,
            _consumers: consumers,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listings_larger_than_a_frame_arrive_whole_in_pages_that_fit_it() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path(), FLAGS);
    let client = small_frame_client(&broker).await;
    let made = Topology::declare(&client, MORE_THAN_A_FRAME).await;

    // One page cannot hold them: the answer says more follow, and fits the frame.
    let first = within("first page", client.list_queues_page(ListQueues::default()))
        .await
        .unwrap();
    assert!(first.more, "{} queues in one page", first.queues.len());
    assert!(!first.queues.is_empty() && first.queues.len() < MORE_THAN_A_FRAME);
    let bytes: usize = first.queues.iter().map(QueueSummary::encoded_len).sum();
    assert!(8 + 4 + bytes <= MIN_MAX_FRAME_LEN as usize);

    // The client reads every page: each item once, in order.
    let queues = within("list queues", client.list_queues()).await.unwrap();
    let listed: Vec<&str> = queues.iter().map(|q| q.name.as_str()).collect();
    assert_eq!(listed, made.queues, "every queue once, by name");
    let bindings = within("list bindings", client.list_bindings())
        .await
        .unwrap();
    let listed: Vec<(&str, &str, &str)> = bindings
        .iter()
        .map(|b| {
            (
                b.exchange.as_str(),
                b.queue.as_str(),
                b.routing_key.as_str(),
            )
        })
        .collect();
    let expected: Vec<(&str, &str, &str)> = made
        .queues
        .iter()
        .zip(&made.keys)
        .map(|(q, k)| (made.exchange.as_str(), q.as_str(), k.as_str()))
        .collect();
    assert_eq!(listed, expected, "every binding once, in order");
    let consumers = within("list consumers", client.list_consumers())
        .await
        .unwrap();
    let listed: Vec<(&str, &str)> = consumers
        .iter()
        .map(|c| (c.queue.as_str(), c.consumer_tag.as_str()))
        .collect();
    let expected: Vec<(&str, &str)> = made
        .queues
        .iter()
        .zip(&made.tags)
        .map(|(q, t)| (q.as_str(), t.as_str()))
        .collect();
    assert_eq!(listed, expected, "every consumer once, in order");
    let exchanges = within("list exchanges", client.list_exchanges())
        .await
        .unwrap();
    assert_eq!(exchanges.first().map(|x| x.name.as_str()), Some(""));
    assert!(exchanges.iter().any(|x| x.name == made.exchange));

    // Asking for everything at once gets a page that fits the frame, and says more follow.
    let mut raw = RawConnection::connect(&broker).await;
    let request = ListQueues {
        after: None,
        limit: u32::MAX,
    };
    let answer = raw.call(request).await;
    assert!(
        matches!(answer.body, Reply::ListQueuesOk(ref p) if p.more),
        "{:?}",
        answer.body
    );
    assert!(answer.frame_len <= MIN_MAX_FRAME_LEN as usize);
    let request = ListBindings {
        after: None,
        limit: u32::MAX,
    };
    let answer = raw.call(request).await;
    assert!(
        matches!(answer.body, Reply::ListBindingsOk(ref p) if p.more),
        "{:?}",
        answer.body
    );
    assert!(answer.frame_len <= MIN_MAX_FRAME_LEN as usize);

    // So does a request with the empty payload of the first protocol draft.
    raw.send_bytes(&[8, 0, 0, 0, 0x07, 0x06, 0, 0, 99, 0, 0, 0])
        .await;
    let answer = raw.answer(RequestId(99)).await;
    assert!(
        matches!(answer.body, Reply::ListConsumersOk(ref p) if p.more),
        "{:?}",
        answer.body
    );
    assert!(answer.frame_len <= MIN_MAX_FRAME_LEN as usize);
    drop(made);
    // Pages are built one at a time: listing far more than a frame holds stays small.
    broker.assert_peak_rss_below(128 << 20, "after the listings");
    broker.process.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_raw_request_with_a_small_limit_gets_pages_that_say_whether_more_follow() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path(), FLAGS);
    let client = broker.client().await;
    let made = Topology::declare(&client, A_FEW).await;
    let mut raw = RawConnection::connect(&broker).await;

    // Queues, seven at a time.
    let mut after = None;
    let mut listed = Vec::new();
    let mut pages = 0;
    loop {
        let request = ListQueues { after, limit: 7 };
        let Reply::ListQueuesOk(page) = raw.call(request).await.body else {
            panic!("not a page of queues");
        };
        pages += 1;
        assert!(page.queues.len() <= 7);
        listed.extend(page.queues.into_iter().map(|q| q.name));
        if !page.more {
            break;
        }
        after = listed.last().cloned();
    }
    assert_eq!(listed, made.queues);
    assert_eq!(pages, A_FEW.div_ceil(7));

    // Bindings and consumers, in pages of 6, continuing after the last item seen.
    let mut cursor = None;
    let mut bindings = Vec::new();
    loop {
        let request = ListBindings {
            after: cursor.take(),
            limit: 6,
        };
        let Reply::ListBindingsOk(page) = raw.call(request).await.body else {
            panic!("not a page of bindings");
        };
        assert!(page.bindings.len() <= 6);
        bindings.extend(page.bindings);
        if !page.more {
            break;
        }
        cursor = bindings.last().cloned();
    }
    let keys: Vec<&str> = bindings.iter().map(|b| b.routing_key.as_str()).collect();
    assert_eq!(keys, made.keys);
    let mut cursor = None;
    let mut consumers = Vec::new();
    loop {
        let request = ListConsumers {
            after: cursor.take(),
            limit: 6,
            circuit: false,
        };
        let Reply::ListConsumersOk(page) = raw.call(request).await.body else {
            panic!("not a page of consumers");
        };
        assert!(page.consumers.len() <= 6);
        consumers.extend(page.consumers);
        if !page.more {
            break;
        }
        cursor = consumers.last().map(|c| c.key());
    }
    let tags: Vec<&str> = consumers.iter().map(|c| c.consumer_tag.as_str()).collect();
    assert_eq!(tags, made.tags);

    // Exchanges one at a time: the default exchange ("") comes first, and continuing after
    // it is not starting over.
    let mut after = None;
    let mut exchanges = Vec::new();
    loop {
        let request = ListExchanges { after, limit: 1 };
        let Reply::ListExchangesOk(page) = raw.call(request).await.body else {
            panic!("not a page of exchanges");
        };
        assert_eq!(page.exchanges.len(), 1);
        exchanges.push(page.exchanges[0].name.clone());
        if !page.more {
            break;
        }
        after = exchanges.last().cloned();
    }
    assert_eq!(exchanges[0], "");
    let unique: BTreeSet<&String> = exchanges.iter().collect();
    assert_eq!(unique.len(), exchanges.len(), "{exchanges:?}");
    assert!(exchanges.contains(&made.exchange));
    drop(made);
    broker.process.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absurd_listing_requests_are_still_answered() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path(), FLAGS);
    let client = broker.client().await;
    let made = Topology::declare(&client, A_FEW).await;
    let mut raw = RawConnection::connect(&broker).await;

    // The largest limit there is.
    let request = ListConsumers {
        after: None,
        limit: u32::MAX,
        circuit: false,
    };
    let Reply::ListConsumersOk(page) = raw.call(request).await.body else {
        panic!("not a page of consumers");
    };
    assert_eq!(page.consumers.len(), A_FEW);
    assert!(!page.more);

    // A cursor past every item: an empty last page.
    let request = ListQueues {
        after: Some("\u{10ffff}".repeat(60)),
        limit: 0,
    };
    let Reply::ListQueuesOk(page) = raw.call(request).await.body else {
        panic!("not a page of queues");
    };
    assert!(page.queues.is_empty() && !page.more);

    // A cursor naming nothing that exists: the page starts where it would sort.
    let request = ListQueues {
        after: Some(made.queues[14].clone() + "z"),
        limit: 1,
    };
    let Reply::ListQueuesOk(page) = raw.call(request).await.body else {
        panic!("not a page of queues");
    };
    assert_eq!(page.queues[0].name, made.queues[15]);
    assert!(page.more);

    // Malformed listing requests (a spelled-out default, a truncated cursor, an undefined
    // flag) get MALFORMED_REQUEST, and the connection goes on.
    for (id, payload) in [
        (200u32, &[0u8, 0, 0, 0, 0][..]),
        (201, &[1, 0, 0, 0, 1, 9, 0, b'q']),
        (202, &[1, 0, 0, 0, 2]),
    ] {
        let mut frame = BytesMut::new();
        frame.extend_from_slice(&(8 + payload.len() as u32).to_le_bytes());
        frame.extend_from_slice(&[0x05, 0x06, 0, 0]);
        frame.extend_from_slice(&id.to_le_bytes());
        frame.extend_from_slice(payload);
        raw.send_bytes(&frame).await;
        let answer = raw.answer(RequestId(id)).await;
        let Reply::Error(error) = answer.body else {
            panic!("not an error: {:?}", answer.body);
        };
        assert_eq!(error.code, ErrorCode::MalformedRequest, "{}", error.message);
    }
    let Reply::ListExchangesOk(_) = raw.call(ListExchanges::default()).await.body else {
        panic!("the connection stopped answering");
    };
    drop(made);
    broker.process.stop();
}

/// A reply that cannot fit this connection's frames is answered with an error naming the
/// request instead of being dropped: here a binding with the largest arguments allowed
/// (64 KiB) and 255-byte names, made over a connection with large frames and listed over one
/// with 64 KiB frames; and a 100 KiB message pulled with `Get` over such a connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_too_large_for_the_connection_is_answered_with_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path(), FLAGS);
    let big = broker.client().await;
    let (queue, exchange) = (long_name('q', 0), long_name('x', 0));
    big.declare_queue(&queue, QueueOptions::new())
        .await
        .unwrap();
    big.declare_exchange(&exchange, ExchangeKind::Headers, ExchangeOptions::new())
        .await
        .unwrap();
    // 2 (count) + 2 + 4 (key "blob") + 1 (type) + 4 (length) + the bytes = 65 536, the limit.
    let blob = HeaderValue::Bytes(Bytes::from(vec![7u8; 65_536 - 13]));
    let arguments = vec![("blob".to_owned(), blob)];
    big.bind(&queue, &exchange, &long_name('k', 0), arguments)
        .await
        .expect("a binding within the argument limits");
    big.publish("", &queue, vec![1u8; 100 << 10], &PublishOptions::new())
        .await
        .unwrap();

    let small = small_frame_client(&broker).await;
    let err = within("list bindings", small.list_bindings())
        .await
        .expect_err("the binding cannot be sent");
    assert_eq!(err.code(), Some(ErrorCode::InternalError), "{err}");
    let err = within("get", small.get(&queue))
        .await
        .expect_err("the message cannot be sent");
    assert_eq!(err.code(), Some(ErrorCode::InternalError), "{err}");
    // The connection goes on, and the listings that fit are answered.
    let queues = within("list queues", small.list_queues()).await.unwrap();
    assert_eq!(queues.len(), 1);
    assert_eq!(big.list_bindings().await.unwrap().len(), 1);
    broker.process.stop();
}
