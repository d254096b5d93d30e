//! A client that sends huge header tables to a headers exchange. Each message (or binding)
//! over the limits of protocol.md §14 is refused alone with `INVALID_ARGUMENT`; one at the
//! limits routes as the `x-match` rules say, without stalling anybody: a well-behaved client
//! on another queue keeps getting prompt round trips, and the broker's memory stays bounded.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use sluice_broker::routing::{MAX_HEADERS_LEN, MAX_HEADER_ENTRIES};
use sluice_client::{
    Client, ConsumeOptions, Error, ErrorCode, ExchangeKind, ExchangeOptions, HeaderValue, Headers,
    OutgoingMessage, PublishOptions, QueueOptions,
};

use crate::{within, Broker, PROMPT};

const EXCHANGE: &str = "hostile-headers";
/// Hostile connections publishing at once: more than the broker's two worker threads, so
/// that a broker routing each message for seconds (as before the limits and the merge) had
/// every worker busy and stalled everybody.
const HOSTILE_CLIENTS: usize = 4;
/// Rounds of hostile publishes per client; each sends the three over-limit messages and
/// [`AT_LIMIT_PER_ROUND`] messages with exactly [`MAX_HEADER_ENTRIES`] headers.
const HOSTILE_ROUNDS: usize = 3;
const AT_LIMIT_PER_ROUND: usize = 8;
/// The most entries a header table can carry on the wire (its count is a u16).
const WIRE_MAX_ENTRIES: usize = u16::MAX as usize;
/// Round trips the well-behaved client makes at least, hostile publishing or not.
const MIN_ROUND_TRIPS: usize = 20;
/// Peak RSS bound. The test sends about 10 MB in all (12 rounds of 0.8 MB, mostly the
/// 65,535-entry tables) and leaves 2 MB of messages in queues; a debug broker peaks near
/// 16 MiB on this test. Were a refused table decoded, it would cost about 5 MiB of small
/// allocations per message in flight. 128 MiB is eight times the peak seen, room for
/// allocator arenas on a busy machine, while still catching a broker that keeps refused
/// messages or multiplies them.
const PEAK_RSS_BOUND: u64 = 128 << 20;

/// `count` headers `k00000`, `k00001`, …, each `true` or `false`: 10 bytes an entry.
fn numbered(count: usize, value: bool) -> Headers {
    (0..count)
        .map(|i| (format!("k{i:05}"), HeaderValue::Bool(value)))
        .collect()
}

/// Reverse key order: the worst case for a matcher that scans the headers once per argument,
/// and one the broker's sort must undo.
fn reversed(mut headers: Headers) -> Headers {
    headers.reverse();
    headers
}

fn with_headers(headers: Headers) -> PublishOptions {
    let mut options = PublishOptions::new().transient();
    // Set as a whole: `PublishOptions::header` looks each key up, quadratic for 65,535.
    options.properties.headers = headers;
    options
}

fn binding(mode: &str, args: Headers) -> Headers {
    let mut all = vec![("x-match".to_owned(), HeaderValue::from(mode))];
    all.extend(args);
    all
}

/// The hostile messages of one round: the first three over the limits, then the rest at
/// them; keys in reverse order.
fn hostile_round() -> Vec<OutgoingMessage> {
    let message = |body: &str, headers| {
        OutgoingMessage::new(EXCHANGE, "", body.to_owned()).with_options(with_headers(headers))
    };
    let at_limit = reversed(numbered(MAX_HEADER_ENTRIES, true));
    let over_len = vec![(
        "k".to_owned(),
        HeaderValue::Bytes(Bytes::from(vec![7u8; MAX_HEADERS_LEN])),
    )];
    let mut round = vec![
        message("wire-max", reversed(numbered(WIRE_MAX_ENTRIES, true))),
        message("one-too-many", numbered(MAX_HEADER_ENTRIES + 1, true)),
        message("too-long", over_len),
    ];
    round.extend((0..AT_LIMIT_PER_ROUND).map(|_| message("at-limit", at_limit.clone())));
    round
}

/// Declares the exchange and four queues whose bindings use up to the argument limit. A
/// message with headers `k00000..k01023 = true` goes to `every-key` and `last-key` only.
async fn declare_topology(client: &Client) {
    within(
        "declare exchange",
        client.declare_exchange(EXCHANGE, ExchangeKind::Headers, ExchangeOptions::new()),
    )
    .await
    .unwrap();
    // One entry of the limit is x-match itself.
    let bindings = [
        (
            "every-key",
            binding("all", numbered(MAX_HEADER_ENTRIES - 1, true)),
        ),
        (
            "any-false",
            binding("any", numbered(MAX_HEADER_ENTRIES - 1, false)),
        ),
        (
            "last-key",
            binding(
                "all",
                vec![(format!("k{:05}", MAX_HEADER_ENTRIES - 1), true.into())],
            ),
        ),
        (
            "absent-key",
            binding("all", vec![("zzz".to_owned(), true.into())]),
        ),
    ];
    for (queue, args) in bindings {
        within(
            "declare queue",
            client.declare_queue(queue, QueueOptions::new()),
        )
        .await
        .unwrap();
        within("bind", client.bind(queue, EXCHANGE, "", args))
            .await
            .unwrap();
    }
}

fn assert_invalid_argument<T: std::fmt::Debug>(outcome: &Result<T, Error>, what: &str) {
    match outcome {
        Err(Error::PublishRejected { code, .. }) => {
            assert_eq!(*code, ErrorCode::InvalidArgument, "{what}: {outcome:?}")
        }
        other => panic!("{what}: expected an INVALID_ARGUMENT rejection, got {other:?}"),
    }
}

/// Publishes the hostile rounds, checking each message's outcome.
async fn publish_hostile(client: Client) {
    for round in 0..HOSTILE_ROUNDS {
        let outcomes = client.publish_batch(hostile_round()).await;
        assert_invalid_argument(&outcomes[0], "65,535 headers");
        assert_invalid_argument(&outcomes[1], "one header over the count limit");
        assert_invalid_argument(&outcomes[2], "a header table over the length limit");
        for (i, outcome) in outcomes[3..].iter().enumerate() {
            assert!(
                outcome.is_ok(),
                "round {round}, at-limit message {i}: {outcome:?}"
            );
        }
    }
}

/// Publish then consume on its own queue until `stop` is set (and at least
/// [`MIN_ROUND_TRIPS`] times), each round trip within [`PROMPT`]. Returns the slowest.
async fn well_behaved_round_trips(client: Client, stop: Arc<AtomicBool>) -> Duration {
    within(
        "declare work",
        client.declare_queue("work", QueueOptions::new()),
    )
    .await
    .unwrap();
    let mut consumer = within("consume", client.consume("work", ConsumeOptions::new()))
        .await
        .unwrap();
    let options = PublishOptions::new().transient();
    let mut slowest = Duration::ZERO;
    let mut done = 0;
    while done < MIN_ROUND_TRIPS || !stop.load(Ordering::Acquire) {
        let body = format!("ping-{done}");
        let started = Instant::now();
        let round_trip = async {
            client.publish("", "work", body.clone(), &options).await?;
            let message = consumer.next().await.expect("consumer ended")?;
            message.ack().await?;
            Ok::<_, Error>(message.body)
        };
        let echoed = tokio::time::timeout(PROMPT, round_trip)
            .await
            .unwrap_or_else(|_| panic!("round trip {done} took over {PROMPT:?}"))
            .unwrap();
        assert_eq!(echoed, body.as_bytes());
        slowest = slowest.max(started.elapsed());
        done += 1;
    }
    slowest
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_header_tables_are_refused_alone_and_do_not_stall_other_clients() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = Broker::start(dir.path(), &[]);
    let admin = broker.client().await;
    declare_topology(&admin).await;
    let mut hostile = Vec::new();
    for _ in 0..HOSTILE_CLIENTS {
        hostile.push(broker.client().await);
    }
    let polite = broker.client().await;

    let stop = Arc::new(AtomicBool::new(false));
    let pinger = tokio::spawn(well_behaved_round_trips(polite, Arc::clone(&stop)));
    let publishers: Vec<_> = hostile
        .into_iter()
        .map(|client| tokio::spawn(publish_hostile(client)))
        .collect();
    for publisher in publishers {
        within("hostile publishing", publisher).await.unwrap();
    }
    stop.store(true, Ordering::Release);
    let slowest = within("well-behaved client", pinger).await.unwrap();
    assert!(slowest < PROMPT, "slowest round trip {slowest:?}");

    // The messages at the limits were routed by the x-match rules, the others not at all.
    let expected = (HOSTILE_CLIENTS * HOSTILE_ROUNDS * AT_LIMIT_PER_ROUND) as u64;
    for (queue, ready) in [
        ("every-key", expected),
        ("last-key", expected),
        ("any-false", 0),
        ("absent-key", 0),
    ] {
        let inspected = within("inspect", admin.inspect_queue(queue)).await.unwrap();
        assert_eq!(inspected.ready, ready, "queue {queue}");
    }
    let peak = broker.process.peak_rss_bytes();
    assert!(
        peak < PEAK_RSS_BOUND,
        "peak RSS {} MiB is over {} MiB",
        peak >> 20,
        PEAK_RSS_BOUND >> 20
    );
    assert!(broker.process.is_running());
    broker.process.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binding_arguments_over_the_limits_are_refused_and_the_connection_stays_up() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path(), &[]);
    let client = broker.client().await;
    within(
        "declare exchange",
        client.declare_exchange(EXCHANGE, ExchangeKind::Headers, ExchangeOptions::new()),
    )
    .await
    .unwrap();
    within(
        "declare queue",
        client.declare_queue("q", QueueOptions::new()),
    )
    .await
    .unwrap();
    let too_many = binding("all", numbered(MAX_HEADER_ENTRIES, true));
    let too_long = vec![(
        "k".to_owned(),
        HeaderValue::Bytes(Bytes::from(vec![7u8; MAX_HEADERS_LEN])),
    )];
    for (what, args) in [("too many", too_many.clone()), ("too long", too_long)] {
        match within("bind", client.bind("q", EXCHANGE, "", args)).await {
            Err(Error::Server { code, message }) => {
                assert_eq!(code, ErrorCode::InvalidArgument, "{what}: {message}");
                assert!(message.contains("exceed"), "{what}: {message}");
            }
            other => panic!("{what}: expected INVALID_ARGUMENT, got {other:?}"),
        }
    }
    // Unbinding is not limited (it must reach bindings made before the limits); this one does
    // not exist, which succeeds.
    within("unbind", client.unbind("q", EXCHANGE, "", too_many))
        .await
        .unwrap();
    // The connection is still up, and a binding at the limit is accepted and routes.
    let at_limit = binding("all", numbered(MAX_HEADER_ENTRIES - 1, true));
    within("bind at limit", client.bind("q", EXCHANGE, "", at_limit))
        .await
        .unwrap();
    let headers = numbered(MAX_HEADER_ENTRIES, true);
    within(
        "publish",
        client.publish(EXCHANGE, "", "fits", &with_headers(headers).mandatory()),
    )
    .await
    .unwrap();
    let inspected = within("inspect", client.inspect_queue("q")).await.unwrap();
    assert_eq!(inspected.ready, 1);
    let listed = within("list bindings", client.list_bindings())
        .await
        .unwrap();
    assert_eq!(listed.iter().filter(|b| b.queue == "q").count(), 1);
    broker.process.stop();
}
