//! The real client and connection task against a peer scripted by each test over an
//! in-memory pipe, speaking real protocol bytes through the wire codec. Time is paused, so
//! heartbeat and timeout tests run instantly, and every wait is bounded.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

use crate::error::{CloseReason, Error};
use crate::wire::*;
use crate::{
    Client, ClientBuilder, ConsumeOptions, Consumer, OutgoingMessage, PublishOptions, QueueOptions,
};

const MAX_FRAME: u32 = 128 * 1024;
const WAIT: Duration = Duration::from_secs(60);

/// The server end of the pipe: reads requests and writes replies with the codec.
struct Peer {
    io: DuplexStream,
    rbuf: BytesMut,
    decoder: FrameDecoder,
}

impl Peer {
    fn new(io: DuplexStream) -> Self {
        Peer {
            io,
            rbuf: BytesMut::new(),
            decoder: FrameDecoder::new(HANDSHAKE_MAX_FRAME_LEN),
        }
    }

    /// The next frame from the client.
    async fn recv(&mut self) -> Frame<Request> {
        tokio::time::timeout(WAIT, async {
            loop {
                if let Some(frame) = self.decoder.decode::<Request>(&mut self.rbuf).unwrap() {
                    return frame;
                }
                let n = self.io.read_buf(&mut self.rbuf).await.unwrap();
                assert!(n > 0, "client closed the pipe");
            }
        })
        .await
        .expect("no frame from the client")
    }

    /// The next frame's body, checking the request id is a fresh nonzero one.
    async fn recv_request(&mut self) -> (RequestId, Request) {
        let frame = self.recv().await;
        (frame.request_id, frame.body)
    }

    /// Asserts the client closes the pipe without sending anything more.
    async fn expect_eof(&mut self) {
        let n = tokio::time::timeout(WAIT, self.io.read_buf(&mut self.rbuf))
            .await
            .expect("client did not close")
            .unwrap();
        assert_eq!(n, 0, "unexpected bytes: {:02x?}", &self.rbuf[..]);
    }

    async fn send(&mut self, id: RequestId, body: impl Into<Reply>) {
        let mut buf = BytesMut::new();
        Frame::<Reply>::new(id, body)
            .encode(&mut buf, MAX_FRAME)
            .unwrap();
        self.io.write_all(&buf).await.unwrap();
    }

    async fn send_unsolicited(&mut self, body: impl Into<Reply>) {
        self.send(RequestId::NONE, body).await;
    }
}

fn welcome(heartbeat_ms: u32) -> Welcome {
    Welcome {
        version: crate::wire::PROTOCOL_VERSION,
        heartbeat_ms,
        max_frame_len: MAX_FRAME,
        max_message_len: MAX_FRAME - 1024,
        connection_id: 7,
        server_properties: vec![("product".into(), "fake".into())],
    }
}

async fn connect_with(builder: ClientBuilder, welcome: Welcome) -> (Client, Peer, Hello) {
    let (client_io, server_io) = tokio::io::duplex(1 << 20);
    let mut peer = Peer::new(server_io);
    let connecting = tokio::spawn(builder.connect_stream(client_io));
    let frame = peer.recv().await;
    let Request::Hello(hello) = frame.body else {
        panic!("expected Hello, got {:?}", frame.body);
    };
    peer.send(frame.request_id, welcome).await;
    let client = connecting.await.unwrap().expect("connected");
    peer.decoder.set_max_frame_len(MAX_FRAME);
    (client, peer, hello)
}

async fn connect() -> (Client, Peer) {
    let (client, peer, _) = connect_with(ClientBuilder::new(), welcome(0)).await;
    (client, peer)
}

fn delivery(tag: u64, routing_key: &str, body: &'static [u8]) -> Delivery {
    let mut meta = MessageMeta::new("", routing_key);
    meta.properties.persistent = true;
    meta.properties.headers = vec![("attempt".into(), HeaderValue::Int(1))];
    Delivery {
        delivery_tag: DeliveryTag(tag),
        redelivered: false,
        delivery_count: 1,
        message_seq: 100 + tag,
        enqueued_at_ms: 1_733_400_000_000 + tag,
        meta: meta.to_bytes().unwrap(),
        body: Bytes::from_static(body),
    }
}

/// Starts a consumer with id 5, answering its `Consume`.
async fn start_consumer(client: &Client, peer: &mut Peer) -> Consumer {
    let consuming = {
        let client = client.clone();
        tokio::spawn(async move {
            client
                .consume("tasks", ConsumeOptions::new().prefetch(10))
                .await
        })
    };
    let (id, request) = peer.recv_request().await;
    let Request::Consume(consume) = request else {
        panic!("expected Consume, got {request:?}");
    };
    assert_eq!((consume.queue.as_str(), consume.prefetch), ("tasks", 10));
    peer.send(
        id,
        ConsumeOk {
            consumer_id: ConsumerId(5),
            consumer_tag: "c1".into(),
        },
    )
    .await;
    consuming.await.unwrap().unwrap()
}

async fn deliver(peer: &mut Peer, consumer: u32, deliveries: Vec<Delivery>) {
    peer.send_unsolicited(Deliver {
        consumer_id: ConsumerId(consumer),
        deliveries,
    })
    .await;
}

async fn next(consumer: &mut Consumer) -> Option<crate::Result<crate::Message>> {
    tokio::time::timeout(WAIT, consumer.next())
        .await
        .expect("stream stalled")
}

// ---- handshake ----------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn handshake_sends_credentials_and_proposals() {
    let builder = ClientBuilder::new()
        .credentials("app", "s3cret")
        .name("billing")
        .heartbeat(Duration::from_secs(10))
        .max_frame_len(100_000);
    let (client, _peer, hello) = connect_with(builder, welcome(10_000)).await;
    assert_eq!(&hello.username, "app");
    assert_eq!(&hello.password, "s3cret");
    assert_eq!((hello.min_version, hello.max_version), (2, 2));
    assert_eq!((hello.heartbeat_ms, hello.max_frame_len), (10_000, 100_000));
    let property = |key: &str| {
        hello
            .client_properties
            .iter()
            .find_map(|(k, v)| (k == key).then(|| v.clone()))
    };
    assert_eq!(property("connection_name"), Some("billing".into()));
    assert_eq!(property("product"), Some("sluice-client-rs".into()));
    let info = client.server_info();
    assert_eq!(info.connection_id, 7);
    assert_eq!(info.heartbeat, Some(Duration::from_secs(10)));
    assert_eq!(info.max_message_len, (MAX_FRAME - 1024) as usize);
    assert!(!client.is_closed());
}

#[tokio::test(start_paused = true)]
async fn refused_credentials_are_a_typed_error() {
    let (client_io, server_io) = tokio::io::duplex(1 << 16);
    let mut peer = Peer::new(server_io);
    let connecting = tokio::spawn(ClientBuilder::new().connect_stream(client_io));
    let hello = peer.recv().await;
    peer.send(
        RequestId::NONE,
        Close {
            code: Some(ErrorCode::AccessRefused),
            reason: "bad credentials".into(),
        },
    )
    .await;
    let err = connecting.await.unwrap().unwrap_err();
    assert!(err.is_access_refused(), "{err}");
    assert!(!err.is_transient());
    assert_eq!(peer.recv().await.body, Request::CloseOk);
    assert_eq!(hello.request_id, RequestId(1));
}

#[tokio::test(start_paused = true)]
async fn a_silent_server_times_the_handshake_out() {
    let (client_io, _server_io) = tokio::io::duplex(1 << 16);
    let err = ClientBuilder::new()
        .connect_timeout(Duration::from_secs(3))
        .connect_stream(client_io)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::Timeout {
                operation: "connect",
                ..
            }
        ),
        "{err}"
    );
}

// ---- requests -----------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn replies_are_matched_by_request_id_in_any_order() {
    let (client, mut peer) = connect().await;
    let declare = tokio::spawn({
        let client = client.clone();
        async move { client.declare_queue("a", QueueOptions::new()).await }
    });
    let (declare_id, request) = peer.recv_request().await;
    assert!(matches!(request, Request::DeclareQueue(ref d) if d.name == "a" && d.durable));
    let purge = tokio::spawn({
        let client = client.clone();
        async move { client.purge_queue("b").await }
    });
    let (purge_id, request) = peer.recv_request().await;
    assert_eq!(
        request,
        Request::PurgeQueue(PurgeQueue { name: "b".into() })
    );
    let missing = tokio::spawn({
        let client = client.clone();
        async move { client.inspect_queue("c").await }
    });
    let (missing_id, _) = peer.recv_request().await;
    assert!(declare_id != purge_id && purge_id != missing_id && declare_id.0 > 1);

    // Answer in reverse order.
    peer.send(
        missing_id,
        ErrorReply {
            code: ErrorCode::NotFound,
            message: "no queue 'c'".into(),
        },
    )
    .await;
    peer.send(purge_id, PurgeQueueOk { messages: 3 }).await;
    peer.send(
        declare_id,
        DeclareQueueOk {
            name: "a".into(),
            ready: 1,
            consumers: 2,
        },
    )
    .await;
    let err = missing.await.unwrap().unwrap_err();
    assert!(err.is_not_found(), "{err}");
    assert_eq!(purge.await.unwrap().unwrap(), 3);
    let ok = declare.await.unwrap().unwrap();
    assert_eq!((ok.name.as_str(), ok.ready, ok.consumers), ("a", 1, 2));
}

#[tokio::test(start_paused = true)]
async fn exchanges_and_bindings_round_trip() {
    let (client, mut peer) = connect().await;
    let task = tokio::spawn({
        let client = client.clone();
        async move {
            client
                .declare_exchange("logs", ExchangeKind::Topic, crate::ExchangeOptions::new())
                .await?;
            client
                .bind("q", "logs", "*.error", vec![("x".into(), 1i64.into())])
                .await
        }
    });
    let (id, request) = peer.recv_request().await;
    assert!(matches!(request, Request::DeclareExchange(ref d) if d.kind == ExchangeKind::Topic));
    peer.send(id, Reply::DeclareExchangeOk).await;
    let (id, request) = peer.recv_request().await;
    let Request::Bind(bind) = request else {
        panic!("{request:?}")
    };
    assert_eq!(bind.routing_key, "*.error");
    peer.send(id, Reply::BindOk).await;
    task.await.unwrap().unwrap();
}

#[tokio::test(start_paused = true)]
async fn listings_ask_for_the_first_page_and_return_the_lists() {
    let (client, mut peer) = connect().await;
    let task = tokio::spawn({
        let client = client.clone();
        async move {
            let queues = client.list_queues().await?;
            let exchanges = client.list_exchanges().await?;
            let bindings = client.list_bindings().await?;
            let consumers = client.list_consumers().await?;
            crate::Result::<_>::Ok((queues, exchanges, bindings, consumers))
        }
    });
    let queue = QueueSummary {
        name: "q".into(),
        durable: true,
        exclusive: false,
        auto_delete: false,
        ready: 3,
        unacked: 1,
        consumers: 1,
        bytes: 120,
        publish_rate: 5,
        ack_rate: 4,
        oldest_ready_age_ms: 900,
    };
    let exchange = ExchangeSummary {
        name: "logs".into(),
        kind: ExchangeKind::Topic,
        durable: true,
        auto_delete: false,
        alternate_exchange: None,
        hash_header: None,
    };
    let binding = BindingSummary {
        exchange: "logs".into(),
        queue: "q".into(),
        routing_key: "*.error".into(),
        arguments: Vec::new(),
    };
    let consumer = ConsumerSummary {
        queue: "q".into(),
        consumer_tag: "w".into(),
        connection_id: 7,
        prefetch: 10,
        unacked: 1,
        active: true,
        priority: 0,
        circuit: Some(crate::wire::CircuitSummary::default()),
    };
    let (id, request) = peer.recv_request().await;
    assert_eq!(request, Request::ListQueues(ListQueues::default()));
    let queues = vec![queue.clone()];
    peer.send(
        id,
        ListQueuesOk {
            queues,
            more: false,
        },
    )
    .await;
    let (id, request) = peer.recv_request().await;
    assert_eq!(request, Request::ListExchanges(ListExchanges::default()));
    let exchanges = vec![exchange.clone()];
    peer.send(
        id,
        ListExchangesOk {
            exchanges,
            more: false,
        },
    )
    .await;
    let (id, request) = peer.recv_request().await;
    assert_eq!(request, Request::ListBindings(ListBindings::default()));
    let bindings = vec![binding.clone()];
    peer.send(
        id,
        ListBindingsOk {
            bindings,
            more: false,
        },
    )
    .await;
    let (id, request) = peer.recv_request().await;
    // With circuits (circuit breaking).
    let with_circuits = ListConsumers {
        circuit: true,
        ..ListConsumers::default()
    };
    assert_eq!(request, Request::ListConsumers(with_circuits));
    let consumers = vec![consumer.clone()];
    peer.send(
        id,
        ListConsumersOk {
            consumers,
            more: false,
            circuit: true,
        },
    )
    .await;
    let listed = task.await.unwrap().unwrap();
    assert_eq!(
        listed,
        (vec![queue], vec![exchange], vec![binding], vec![consumer])
    );

    // A wrong kind of answer is a protocol error, not a panic or a hang.
    let task = tokio::spawn({
        let client = client.clone();
        async move { client.list_queues().await }
    });
    let (id, _) = peer.recv_request().await;
    peer.send(id, Reply::BindOk).await;
    let err = task.await.unwrap().unwrap_err();
    assert!(matches!(err, Error::Protocol(_)), "{err}");
}

#[tokio::test(start_paused = true)]
async fn listings_fetch_every_page_after_the_last_item_of_the_previous_one() {
    let (client, mut peer) = connect().await;
    let task = tokio::spawn({
        let client = client.clone();
        async move { client.list_exchanges().await }
    });
    let exchange = |name: &str| ExchangeSummary {
        name: name.into(),
        kind: ExchangeKind::Direct,
        durable: true,
        auto_delete: false,
        alternate_exchange: None,
        hash_header: None,
    };
    // The default exchange's name is empty: the second request continues after it, not
    // from the start.
    let (id, request) = peer.recv_request().await;
    assert_eq!(request, Request::ListExchanges(ListExchanges::default()));
    let exchanges = vec![exchange("")];
    peer.send(
        id,
        ListExchangesOk {
            exchanges,
            more: true,
        },
    )
    .await;
    let (id, request) = peer.recv_request().await;
    let after = Some(String::new());
    assert_eq!(
        request,
        Request::ListExchanges(ListExchanges { after, limit: 0 })
    );
    let exchanges = vec![exchange("a"), exchange("b")];
    peer.send(
        id,
        ListExchangesOk {
            exchanges,
            more: true,
        },
    )
    .await;
    let (id, request) = peer.recv_request().await;
    let after = Some("b".to_owned());
    assert_eq!(
        request,
        Request::ListExchanges(ListExchanges { after, limit: 0 })
    );
    let exchanges = vec![exchange("c")];
    peer.send(
        id,
        ListExchangesOk {
            exchanges,
            more: false,
        },
    )
    .await;
    let names: Vec<String> = task
        .await
        .unwrap()
        .unwrap()
        .into_iter()
        .map(|x| x.name)
        .collect();
    assert_eq!(names, ["", "a", "b", "c"]);

    // A page that does not move past the cursor would have the client ask forever.
    let task = tokio::spawn({
        let client = client.clone();
        async move { client.list_queues().await }
    });
    let queue = QueueSummary {
        name: "q".into(),
        durable: false,
        exclusive: false,
        auto_delete: false,
        ready: 0,
        unacked: 0,
        consumers: 0,
        bytes: 0,
        publish_rate: 0,
        ack_rate: 0,
        oldest_ready_age_ms: 0,
    };
    let (id, _) = peer.recv_request().await;
    let queues = vec![queue.clone()];
    peer.send(id, ListQueuesOk { queues, more: true }).await;
    let (id, request) = peer.recv_request().await;
    let after = Some("q".to_owned());
    assert_eq!(request, Request::ListQueues(ListQueues { after, limit: 0 }));
    peer.send(
        id,
        ListQueuesOk {
            queues: vec![queue],
            more: true,
        },
    )
    .await;
    let err = task.await.unwrap().unwrap_err();
    assert!(matches!(err, Error::Protocol(_)), "{err}");
}

#[tokio::test(start_paused = true)]
async fn unanswered_requests_time_out() {
    let (client, mut peer, _) = connect_with(
        ClientBuilder::new().request_timeout(Duration::from_secs(2)),
        welcome(0),
    )
    .await;
    let err = client.purge_queue("q").await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::Timeout {
                operation: "request",
                ..
            }
        ),
        "{err}"
    );
    // A late answer is ignored and the connection still works.
    let (id, _) = peer.recv_request().await;
    peer.send(id, PurgeQueueOk { messages: 1 }).await;
    let purge = tokio::spawn({
        let client = client.clone();
        async move { client.purge_queue("q").await }
    });
    let (id, _) = peer.recv_request().await;
    peer.send(id, PurgeQueueOk { messages: 2 }).await;
    assert_eq!(purge.await.unwrap().unwrap(), 2);
}

// ---- publishing ---------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn publish_batch_resolves_each_message_from_rejections_and_confirms() {
    let (client, mut peer) = connect().await;
    let batch = tokio::spawn({
        let client = client.clone();
        async move {
            let messages = vec![
                OutgoingMessage::new("", "tasks", "one"),
                OutgoingMessage::new("orders", "eu", "two")
                    .with_options(PublishOptions::new().mandatory()),
                OutgoingMessage::new("", "tasks", vec![0u8; MAX_FRAME as usize]),
                OutgoingMessage::new("", "tasks", "three"),
            ];
            client.publish_batch(messages).await
        }
    });
    let (_, request) = peer.recv_request().await;
    let Request::Publish(publish) = request else {
        panic!("{request:?}")
    };
    assert_eq!(
        publish.messages.len(),
        3,
        "the oversized message was not sent"
    );
    let meta = MetaView::parse(&publish.messages[1].meta).unwrap();
    assert!(meta.mandatory && meta.persistent);
    assert_eq!((meta.exchange, meta.routing_key), ("orders", "eu"));
    assert_eq!(&publish.messages[2].body[..], b"three");

    peer.send_unsolicited(Confirm {
        up_to: PublishSeq(1),
    })
    .await;
    peer.send_unsolicited(PublishRejected {
        rejections: vec![Rejection {
            seq: PublishSeq(2),
            code: ErrorCode::Unroutable,
            message: "no route".into(),
        }],
    })
    .await;
    peer.send_unsolicited(Confirm {
        up_to: PublishSeq(3),
    })
    .await;
    let results = batch.await.unwrap();
    assert!(results[0].is_ok());
    assert!(results[1].as_ref().unwrap_err().is_unroutable());
    assert!(matches!(results[2], Err(Error::MessageTooLarge { .. })));
    assert!(results[3].is_ok());
}

#[tokio::test(start_paused = true)]
async fn sequence_numbers_continue_across_calls() {
    let (client, mut peer) = connect().await;
    let first = tokio::spawn({
        let client = client.clone();
        async move { client.publish("", "q", "a", &PublishOptions::new()).await }
    });
    assert!(matches!(peer.recv_request().await.1, Request::Publish(_)));
    let second = tokio::spawn({
        let client = client.clone();
        async move { client.publish("", "q", "b", &PublishOptions::new()).await }
    });
    assert!(matches!(peer.recv_request().await.1, Request::Publish(_)));
    // Message 2 is refused; one confirm settles both.
    peer.send_unsolicited(PublishRejected {
        rejections: vec![Rejection {
            seq: PublishSeq(2),
            code: ErrorCode::QueueFull,
            message: "full".into(),
        }],
    })
    .await;
    peer.send_unsolicited(Confirm {
        up_to: PublishSeq(2),
    })
    .await;
    first.await.unwrap().unwrap();
    let err = second.await.unwrap().unwrap_err();
    assert!(matches!(
        err,
        Error::PublishRejected {
            seq: PublishSeq(2),
            code: ErrorCode::QueueFull,
            ..
        }
    ));
}

#[tokio::test(start_paused = true)]
async fn a_publisher_waits_only_when_its_window_is_full() {
    let (client, mut peer) = connect().await;
    let publisher = client.publisher_with_window(2);
    let options = PublishOptions::new();
    let c1 = publisher.publish("", "q", "1", &options).await.unwrap();
    let c2 = publisher.publish("", "q", "2", &options).await.unwrap();
    assert_eq!(publisher.in_flight(), 2);
    let third = tokio::spawn({
        let publisher = publisher.clone();
        async move {
            let confirm = publisher
                .publish("", "q", "3", &PublishOptions::new())
                .await?;
            confirm.await
        }
    });
    let mut received = 0;
    while received < 2 {
        let (_, request) = peer.recv_request().await;
        let Request::Publish(p) = request else {
            panic!("{request:?}")
        };
        received += p.messages.len();
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!third.is_finished(), "the window is full");
    peer.send_unsolicited(Confirm {
        up_to: PublishSeq(1),
    })
    .await;
    c1.await.unwrap();
    let (_, request) = peer.recv_request().await;
    assert!(matches!(request, Request::Publish(ref p) if &p.messages[0].body[..] == b"3"));
    peer.send_unsolicited(Confirm {
        up_to: PublishSeq(3),
    })
    .await;
    c2.await.unwrap();
    third.await.unwrap().unwrap();
    publisher.flush().await;
    assert_eq!(publisher.in_flight(), 0);
}

#[tokio::test(start_paused = true)]
async fn publishes_wait_while_the_server_is_blocked() {
    let (client, mut peer) = connect().await;
    peer.send_unsolicited(Blocked {
        code: ErrorCode::StorageFull,
        reason: "disk".into(),
    })
    .await;
    while !client.is_blocked() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let publish = tokio::spawn({
        let client = client.clone();
        async move {
            client
                .publish("", "q", "held", &PublishOptions::new())
                .await
        }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let purge = tokio::spawn({
        let client = client.clone();
        async move { client.purge_queue("q").await }
    });
    // Requests still flow; the publish does not.
    let (id, request) = peer.recv_request().await;
    assert!(matches!(request, Request::PurgeQueue(_)), "{request:?}");
    peer.send(id, PurgeQueueOk { messages: 0 }).await;
    purge.await.unwrap().unwrap();
    peer.send_unsolicited(Reply::Unblocked).await;
    let (_, request) = peer.recv_request().await;
    assert!(matches!(request, Request::Publish(_)), "{request:?}");
    peer.send_unsolicited(Confirm {
        up_to: PublishSeq(1),
    })
    .await;
    publish.await.unwrap().unwrap();
    assert!(!client.is_blocked());
}

#[tokio::test(start_paused = true)]
async fn a_confirm_for_unsent_messages_is_a_protocol_violation() {
    let (client, mut peer) = connect().await;
    peer.send_unsolicited(Confirm {
        up_to: PublishSeq(5),
    })
    .await;
    let (_, request) = peer.recv_request().await;
    assert!(
        matches!(
            request,
            Request::Close(Close {
                code: Some(ErrorCode::UnexpectedFrame),
                ..
            })
        ),
        "{request:?}"
    );
    peer.expect_eof().await;
    let err = client.purge_queue("q").await.unwrap_err();
    assert!(
        matches!(err, Error::ConnectionClosed(CloseReason::Protocol(_))),
        "{err}"
    );
}

// ---- consuming ----------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn deliveries_reach_their_consumer_and_settle() {
    let (client, mut peer) = connect().await;
    let mut consumer = start_consumer(&client, &mut peer).await;
    assert_eq!((consumer.tag(), consumer.id()), ("c1", ConsumerId(5)));
    let mut redelivered = delivery(3, "tasks", b"job-3");
    redelivered.redelivered = true;
    redelivered.delivery_count = 2;
    deliver(
        &mut peer,
        5,
        vec![
            delivery(1, "tasks", b"job-1"),
            delivery(2, "tasks", b"job-2"),
        ],
    )
    .await;
    deliver(&mut peer, 5, vec![redelivered]).await;

    let m1 = next(&mut consumer).await.unwrap().unwrap();
    assert_eq!(&m1.body[..], b"job-1");
    assert_eq!((m1.exchange(), m1.routing_key()), ("", "tasks"));
    assert_eq!(m1.header("attempt"), Some(HeaderValue::Int(1)));
    assert!(m1.properties().persistent);
    assert_eq!((m1.delivery_tag, m1.message_seq), (DeliveryTag(1), 101));
    assert_eq!(m1.enqueued_at_ms, 1_733_400_000_001);
    let since_epoch = m1.enqueued_at().duration_since(std::time::UNIX_EPOCH);
    assert_eq!(
        since_epoch.unwrap(),
        Duration::from_millis(1_733_400_000_001)
    );
    m1.ack().await.unwrap();
    assert!(matches!(m1.ack().await, Err(Error::AlreadySettled)));
    let m2 = next(&mut consumer).await.unwrap().unwrap();
    m2.extend(Duration::from_secs(90)).await.unwrap();
    m2.nack(true).await.unwrap();
    let m3 = next(&mut consumer).await.unwrap().unwrap();
    assert!(m3.redelivered && m3.delivery_count == 2);
    m3.reject().await.unwrap();
    client.ack_multiple(DeliveryTag(0)).await.unwrap();

    let expected = [
        Request::Ack(Ack {
            delivery_tag: DeliveryTag(1),
            multiple: false,
        }),
        Request::Extend(Extend {
            delivery_tag: DeliveryTag(2),
            extend_ms: 90_000,
        }),
        Request::Nack(Nack {
            delivery_tag: DeliveryTag(2),
            multiple: false,
            requeue: true,
            delay_ms: None,
            reason: None,
        }),
        Request::Reject(Reject {
            delivery_tag: DeliveryTag(3),
            reason: None,
        }),
        Request::Ack(Ack {
            delivery_tag: DeliveryTag(0),
            multiple: true,
        }),
    ];
    for want in expected {
        assert_eq!(peer.recv_request().await.1, want);
    }
}

#[tokio::test(start_paused = true)]
async fn a_confirmed_settle_fails_with_its_error_or_succeeds_at_its_barriers_answer() {
    let (client, mut peer) = connect().await;
    let mut consumer = start_consumer(&client, &mut peer).await;
    deliver(
        &mut peer,
        5,
        vec![delivery(1, "tasks", b"a"), delivery(2, "tasks", b"b")],
    )
    .await;
    let m1 = next(&mut consumer).await.unwrap().unwrap();
    let m2 = next(&mut consumer).await.unwrap().unwrap();
    assert_eq!(m1.queue(), "tasks");
    let acking = tokio::spawn(async move {
        let first = m1.ack_confirmed().await;
        (first, m1)
    });
    // The ack, then its barrier: an InspectQueue of the delivery's queue.
    let (ack_id, ack) = peer.recv_request().await;
    assert_eq!(
        ack,
        Request::Ack(Ack {
            delivery_tag: DeliveryTag(1),
            multiple: false,
        })
    );
    let (barrier_id, barrier) = peer.recv_request().await;
    assert_eq!(
        barrier,
        Request::InspectQueue(InspectQueue {
            name: "tasks".into()
        })
    );
    peer.send(
        ack_id,
        ErrorReply {
            code: ErrorCode::UnknownDeliveryTag,
            message: "delivery tag 1 is not outstanding on this connection".into(),
        },
    )
    .await;
    peer.send(
        barrier_id,
        ErrorReply {
            code: ErrorCode::NotFound,
            message: "no queue 'tasks'".into(),
        },
    )
    .await;
    let (outcome, m1) = acking.await.unwrap();
    assert!(outcome.unwrap_err().is_unknown_delivery_tag());
    assert!(m1.is_settled());

    // No error before the barrier's answer (an error one: the queue was deleted) is success.
    let extending = tokio::spawn(async move { m2.extend_confirmed(Duration::from_secs(5)).await });
    let (_, extend) = peer.recv_request().await;
    assert!(matches!(extend, Request::Extend(_)), "{extend:?}");
    let (barrier_id, _) = peer.recv_request().await;
    peer.send(
        barrier_id,
        ErrorReply {
            code: ErrorCode::NotFound,
            message: "no queue 'tasks'".into(),
        },
    )
    .await;
    extending.await.unwrap().unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_failed_ack_is_logged_and_the_connection_goes_on() {
    let (client, mut peer) = connect().await;
    client.ack(DeliveryTag(99)).await.unwrap();
    let (id, _) = peer.recv_request().await;
    peer.send(
        id,
        ErrorReply {
            code: ErrorCode::UnknownDeliveryTag,
            message: "unknown delivery tag 99".into(),
        },
    )
    .await;
    let purge = tokio::spawn({
        let client = client.clone();
        async move { client.purge_queue("q").await }
    });
    let (id, _) = peer.recv_request().await;
    peer.send(id, PurgeQueueOk { messages: 0 }).await;
    purge.await.unwrap().unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_server_cancellation_ends_the_stream_with_its_reason() {
    let (client, mut peer) = connect().await;
    let mut consumer = start_consumer(&client, &mut peer).await;
    deliver(&mut peer, 5, vec![delivery(1, "tasks", b"x")]).await;
    peer.send_unsolicited(ConsumerCancelled {
        consumer_id: ConsumerId(5),
        code: ErrorCode::QueueDeleted,
        reason: "queue 'tasks' deleted".into(),
    })
    .await;
    assert!(next(&mut consumer).await.unwrap().is_ok());
    let err = next(&mut consumer).await.unwrap().unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::QueueDeleted));
    assert!(next(&mut consumer).await.is_none());
}

#[tokio::test(start_paused = true)]
async fn dropping_a_consumer_requeues_what_it_held_and_cancels_it() {
    let (client, mut peer) = connect().await;
    let mut consumer = start_consumer(&client, &mut peer).await;
    deliver(
        &mut peer,
        5,
        vec![delivery(1, "t", b"1"), delivery(2, "t", b"2")],
    )
    .await;
    deliver(&mut peer, 5, vec![delivery(3, "t", b"3")]).await;
    let first = next(&mut consumer).await.unwrap().unwrap();
    // Let the second batch reach the consumer's channel.
    tokio::time::sleep(Duration::from_millis(50)).await;
    drop(consumer);
    let nack = |tag| {
        Request::Nack(Nack {
            delivery_tag: DeliveryTag(tag),
            multiple: false,
            requeue: true,
            delay_ms: None,
            reason: None,
        })
    };
    assert_eq!(peer.recv_request().await.1, nack(2));
    assert_eq!(peer.recv_request().await.1, nack(3));
    let (cancel_id, request) = peer.recv_request().await;
    assert_eq!(
        request,
        Request::Cancel(Cancel {
            consumer_id: ConsumerId(5)
        })
    );
    // A delivery that crossed the Cancel is requeued too.
    deliver(&mut peer, 5, vec![delivery(4, "t", b"4")]).await;
    assert_eq!(peer.recv_request().await.1, nack(4));
    peer.send(
        cancel_id,
        CancelOk {
            consumer_id: ConsumerId(5),
        },
    )
    .await;
    // The message taken before the drop is still the caller's to settle.
    first.ack().await.unwrap();
    assert!(matches!(peer.recv_request().await.1, Request::Ack(_)));
}

#[tokio::test(start_paused = true)]
async fn cancel_drains_what_was_received_then_ends() {
    let (client, mut peer) = connect().await;
    let mut consumer = start_consumer(&client, &mut peer).await;
    let cancelling = tokio::spawn(async move {
        consumer.cancel().await.unwrap();
        consumer
    });
    let (id, request) = peer.recv_request().await;
    assert!(matches!(request, Request::Cancel(_)));
    deliver(&mut peer, 5, vec![delivery(1, "t", b"late")]).await;
    peer.send(
        id,
        CancelOk {
            consumer_id: ConsumerId(5),
        },
    )
    .await;
    let mut consumer = cancelling.await.unwrap();
    let late = next(&mut consumer).await.unwrap().unwrap();
    assert_eq!(&late.body[..], b"late");
    assert!(next(&mut consumer).await.is_none());
}

#[tokio::test(start_paused = true)]
async fn get_returns_a_settleable_message_or_none() {
    let (client, mut peer) = connect().await;
    let getting = tokio::spawn({
        let client = client.clone();
        async move { (client.get("q").await, client.get("q").await) }
    });
    let (id, request) = peer.recv_request().await;
    assert_eq!(request, Request::Get(Get { queue: "q".into() }));
    peer.send(
        id,
        GetOk {
            ready: 0,
            delivery: Some(delivery(9, "q", b"pulled")),
        },
    )
    .await;
    let (id, _) = peer.recv_request().await;
    peer.send(
        id,
        GetOk {
            ready: 0,
            delivery: None,
        },
    )
    .await;
    let (first, second) = getting.await.unwrap();
    let message = first.unwrap().unwrap();
    assert_eq!(&message.body[..], b"pulled");
    assert!(second.unwrap().is_none());
    message.ack().await.unwrap();
    assert_eq!(
        peer.recv_request().await.1,
        Request::Ack(Ack {
            delivery_tag: DeliveryTag(9),
            multiple: false
        })
    );
}

#[tokio::test(start_paused = true)]
async fn a_bad_meta_block_closes_the_connection() {
    let (client, mut peer) = connect().await;
    let mut consumer = start_consumer(&client, &mut peer).await;
    let mut bad = delivery(1, "t", b"x");
    bad.meta = Bytes::from_static(&[0xff]);
    deliver(&mut peer, 5, vec![bad]).await;
    let (_, request) = peer.recv_request().await;
    assert!(matches!(
        request,
        Request::Close(Close {
            code: Some(ErrorCode::MalformedFrame),
            ..
        })
    ));
    let err = next(&mut consumer).await.unwrap().unwrap_err();
    assert!(
        matches!(err, Error::ConnectionClosed(CloseReason::Protocol(_))),
        "{err}"
    );
}

// ---- closing ------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn close_is_a_barrier_that_settles_earlier_publishes() {
    let (client, mut peer) = connect().await;
    let publish = tokio::spawn({
        let client = client.clone();
        async move {
            client
                .publish("", "q", "last", &PublishOptions::new())
                .await
        }
    });
    assert!(matches!(peer.recv_request().await.1, Request::Publish(_)));
    let closing = tokio::spawn({
        let client = client.clone();
        async move { client.close().await }
    });
    let (close_id, request) = peer.recv_request().await;
    assert!(matches!(request, Request::Close(Close { code: None, .. })));
    peer.send_unsolicited(Confirm {
        up_to: PublishSeq(1),
    })
    .await;
    peer.send(close_id, Reply::CloseOk).await;
    closing.await.unwrap().unwrap();
    publish.await.unwrap().unwrap();
    peer.expect_eof().await;
    assert!(client.is_closed());
    assert!(matches!(client.close_reason(), Some(CloseReason::Normal)));
    client.close().await.unwrap(); // idempotent
    let err = client.purge_queue("q").await.unwrap_err();
    assert!(matches!(err, Error::ConnectionClosed(CloseReason::Normal)));
}

#[tokio::test(start_paused = true)]
async fn a_server_close_fails_everything_pending_with_its_reason() {
    let (client, mut peer) = connect().await;
    let mut consumer = start_consumer(&client, &mut peer).await;
    let declare = tokio::spawn({
        let client = client.clone();
        async move { client.declare_queue("q", QueueOptions::new()).await }
    });
    let publish = tokio::spawn({
        let client = client.clone();
        async move { client.publish("", "q", "x", &PublishOptions::new()).await }
    });
    let mut seen = 0;
    while seen < 2 {
        peer.recv_request().await;
        seen += 1;
    }
    peer.send_unsolicited(Close {
        code: Some(ErrorCode::ConnectionForced),
        reason: "shutting down".into(),
    })
    .await;
    assert_eq!(peer.recv_request().await.1, Request::CloseOk);
    peer.expect_eof().await;
    for err in [
        declare.await.unwrap().unwrap_err(),
        publish.await.unwrap().unwrap_err(),
        next(&mut consumer).await.unwrap().unwrap_err(),
        client.purge_queue("q").await.unwrap_err(),
    ] {
        assert_eq!(err.code(), Some(ErrorCode::ConnectionForced), "{err}");
        assert!(err.is_connection_closed() && err.is_transient());
    }
    assert!(next(&mut consumer).await.is_none());
}

#[tokio::test(start_paused = true)]
async fn dropping_every_handle_closes_gracefully() {
    let (client, mut peer) = connect().await;
    drop(client);
    let (id, request) = peer.recv_request().await;
    assert!(matches!(request, Request::Close(Close { code: None, .. })));
    peer.send(id, Reply::CloseOk).await;
    peer.expect_eof().await;
}

#[tokio::test(start_paused = true)]
async fn losing_the_socket_fails_pending_requests() {
    let (client, peer) = connect().await;
    let purge = tokio::spawn({
        let client = client.clone();
        async move { client.purge_queue("q").await }
    });
    tokio::time::sleep(Duration::from_millis(10)).await;
    drop(peer);
    let err = purge.await.unwrap().unwrap_err();
    assert!(
        matches!(err, Error::ConnectionClosed(CloseReason::Io(_))),
        "{err}"
    );
}

// ---- heartbeats ---------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn heartbeats_are_sent_when_idle_and_silence_is_fatal() {
    let (client, mut peer, _) = connect_with(ClientBuilder::new(), welcome(1000)).await;
    let start = tokio::time::Instant::now();
    let frame = peer.recv().await;
    assert_eq!(
        (frame.request_id, frame.body),
        (RequestId::NONE, Request::Heartbeat)
    );
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_secs(1) && waited <= Duration::from_millis(1300),
        "{waited:?}"
    );
    // The server answers once, then falls silent.
    peer.send_unsolicited(Reply::Heartbeat).await;
    loop {
        let frame = peer.recv().await;
        match frame.body {
            Request::Heartbeat => continue,
            Request::Close(close) => {
                assert_eq!(close.code, Some(ErrorCode::HeartbeatTimeout));
                break;
            }
            other => panic!("{other:?}"),
        }
    }
    let silent_for = start.elapsed() - waited;
    assert!(
        silent_for >= Duration::from_secs(2) && silent_for <= Duration::from_secs(3),
        "{silent_for:?}"
    );
    peer.expect_eof().await;
    assert!(matches!(
        client.close_reason(),
        Some(CloseReason::HeartbeatTimeout)
    ));
}

#[tokio::test(start_paused = true)]
async fn a_busy_server_keeps_the_connection_alive() {
    let (client, mut peer, _) = connect_with(ClientBuilder::new(), welcome(1000)).await;
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        peer.send_unsolicited(Reply::Heartbeat).await;
    }
    assert!(!client.is_closed());
    // The client kept sending its own heartbeats meanwhile.
    assert_eq!(peer.recv().await.body, Request::Heartbeat);
}
