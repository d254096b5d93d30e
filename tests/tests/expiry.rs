//! Expiry is eager and the numbers are true: a message past its TTL leaves the ready count and
//! is dead-lettered at its deadline with no consumer and no `Get`; a queue unused past its
//! `expires_ms` is deleted on time; every delivery carries the time its queue stored the
//! message; every queue reports the age of its oldest ready message.
//!
//! Timing is measured two ways: by polling `InspectQueue` from outside (a bounded, generous
//! limit: the machine may be busy), and by the broker's own stamps, which polling cannot blur
//! (`x-death-time-ms` is the deadline exactly; the dead-letter copy's `enqueued_at_ms` is when
//! the expiry actually happened).

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde_json::Value;
use sluice_client::{
    Client, ExchangeKind, ExchangeOptions, HeaderValue, Message, PublishOptions, QueueOptions,
};
use sluice_tests::broker::{BrokerProcess, WAIT};
use sluice_tests::http::HttpClient;

/// How often a test looks at a queue while it waits for something to happen.
const POLL: Duration = Duration::from_millis(10);
/// Latest the broker may dead-letter a message after its deadline, by its own clock (the
/// issue asks for 100 ms; the timer is exact, this leaves room for a busy machine's scheduler).
const BROKER_LATENESS_MS: u64 = 100;
/// Latest a test may *observe* an expiry after the deadline: the broker's lateness plus
/// polling over a busy debug build. Far below anything a lazy or a slow periodic scan gives.
const OBSERVED_LATENESS: Duration = Duration::from_millis(1_000);

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_millis() as u64
}

use sluice_tests::broker::within;

async fn connect(process: &BrokerProcess) -> Client {
    within("connect", Client::connect(&process.url()))
        .await
        .expect("connect")
}

/// Declares a fanout dead-letter exchange `dlx` with queue `dead` bound to it.
async fn dead_letter_queue(client: &Client) {
    client
        .declare_exchange("dlx", ExchangeKind::Fanout, ExchangeOptions::new())
        .await
        .unwrap();
    client
        .declare_queue("dead", QueueOptions::new())
        .await
        .unwrap();
    client.bind("dead", "dlx", "", vec![]).await.unwrap();
}

/// Polls `queue` until its ready count is `ready`; returns when that was first seen.
async fn wait_for_ready(client: &Client, queue: &str, ready: u64) -> Instant {
    let what = format!("queue '{queue}' to hold {ready} ready messages");
    within(&what, async {
        loop {
            if client.inspect_queue(queue).await.unwrap().ready == ready {
                return Instant::now();
            }
            tokio::time::sleep(POLL).await;
        }
    })
    .await
}

/// Takes every message of `queue` with `Get` (acked), in order.
async fn take_all(client: &Client, queue: &str) -> Vec<Message> {
    let mut taken = Vec::new();
    while let Some(m) = within("get", client.get(queue)).await.unwrap() {
        m.ack().await.unwrap();
        taken.push(m);
    }
    taken
}

fn int_header(m: &Message, key: &str) -> i64 {
    match m.header(key) {
        Some(HeaderValue::Int(n)) => n,
        other => panic!("header {key}: {other:?}"),
    }
}

fn str_header(m: &Message, key: &str) -> String {
    match m.header(key) {
        Some(HeaderValue::Str(s)) => s,
        other => panic!("header {key}: {other:?}"),
    }
}

/// Checks a dead-lettered copy: reason `expired`, died exactly at `deadline_ms`, and moved by
/// the broker no later than [`BROKER_LATENESS_MS`] after it.
fn assert_expired_at(copy: &Message, deadline_ms: u64) {
    assert_eq!(str_header(copy, "x-death-reason"), "expired");
    assert_eq!(str_header(copy, "x-death-queue"), "work");
    assert_eq!(
        int_header(copy, "x-death-time-ms") as u64,
        deadline_ms,
        "the time of death is the deadline, not when someone looked"
    );
    let lateness = copy.enqueued_at_ms.saturating_sub(deadline_ms);
    assert!(
        lateness <= BROKER_LATENESS_MS,
        "dead-lettered {lateness} ms after its deadline"
    );
    assert!(
        copy.enqueued_at_ms + 2 >= deadline_ms,
        "dead-lettered early"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_past_its_ttl_leaves_ready_and_is_dead_lettered_with_no_consumer() {
    let dir = tempfile::tempdir().unwrap();
    let process = BrokerProcess::start(dir.path(), &[]);
    let client = connect(&process).await;
    dead_letter_queue(&client).await;
    client
        .declare_queue("work", QueueOptions::new().dead_letter_exchange("dlx"))
        .await
        .unwrap();
    let ttl = Duration::from_millis(300);
    let before = now_ms();
    let sent = Instant::now();
    client
        .publish(
            "",
            "work",
            Bytes::from_static(b"short-lived"),
            &PublishOptions::new().expiration(ttl),
        )
        .await
        .unwrap();
    let confirmed = now_ms();
    let first = client.inspect_queue("work").await.unwrap();
    if sent.elapsed() < ttl {
        assert_eq!(first.ready, 1, "not expired before its deadline");
    }

    let gone = wait_for_ready(&client, "work", 0).await;
    let work = client.inspect_queue("work").await.unwrap();
    assert_eq!((work.ready, work.unacked), (0, 0));
    assert!(
        gone.duration_since(sent) <= ttl + OBSERVED_LATENESS,
        "seen gone {:?} after the publish",
        gone.duration_since(sent)
    );

    let dead = take_all(&client, "dead").await;
    assert_eq!(dead.len(), 1);
    let copy = &dead[0];
    assert_eq!(&copy.body[..], b"short-lived");
    assert_eq!(
        copy.properties().expiration_ms,
        None,
        "the copy does not expire"
    );
    let stored_at = int_header(copy, "x-death-time-ms") as u64 - ttl.as_millis() as u64;
    assert!(
        (before..=confirmed).contains(&stored_at),
        "stored at {stored_at}, published in [{before}, {confirmed}]"
    );
    assert_expired_at(copy, stored_at + ttl.as_millis() as u64);
    process.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_queue_ttl_expires_a_backlog_eagerly_oldest_first() {
    let dir = tempfile::tempdir().unwrap();
    let process = BrokerProcess::start(dir.path(), &[]);
    let client = connect(&process).await;
    dead_letter_queue(&client).await;
    let ttl = Duration::from_millis(300);
    client
        .declare_queue(
            "work",
            QueueOptions::new()
                .message_ttl(ttl)
                .dead_letter_exchange("dlx"),
        )
        .await
        .unwrap();
    let publisher = client.publisher();
    let mut confirms = Vec::new();
    for i in 0..20u8 {
        let confirm = publisher
            .publish("", "work", vec![i], &PublishOptions::new())
            .await
            .unwrap();
        confirms.push(confirm);
    }
    for c in confirms {
        within("confirm", c).await.unwrap();
    }
    let sent = Instant::now();
    wait_for_ready(&client, "work", 0).await;
    assert!(sent.elapsed() <= ttl + OBSERVED_LATENESS);

    let dead = take_all(&client, "dead").await;
    let bodies: Vec<u8> = dead.iter().map(|m| m.body[0]).collect();
    assert_eq!(bodies, (0..20).collect::<Vec<u8>>(), "oldest first");
    let mut last = 0;
    for copy in &dead {
        let deadline = int_header(copy, "x-death-time-ms") as u64;
        assert!(deadline >= last, "deadlines in order");
        last = deadline;
        assert_expired_at(copy, deadline);
    }
    process.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_with_their_own_ttls_expire_in_deadline_order_around_one_that_stays() {
    let dir = tempfile::tempdir().unwrap();
    let process = BrokerProcess::start(dir.path(), &[]);
    let client = connect(&process).await;
    dead_letter_queue(&client).await;
    client
        .declare_queue("work", QueueOptions::new().dead_letter_exchange("dlx"))
        .await
        .unwrap();
    // The oldest message has no TTL: the others expire from the middle of the queue.
    client
        .publish("", "work", vec![0u8], &PublishOptions::new())
        .await
        .unwrap();
    let ttls_ms: [u64; 8] = [900, 250, 700, 400, 550, 300, 800, 200];
    let publisher = client.publisher();
    let mut confirms = Vec::new();
    for (i, ttl) in ttls_ms.iter().enumerate() {
        let options = PublishOptions::new().expiration(Duration::from_millis(*ttl));
        let body = vec![i as u8 + 1];
        confirms.push(publisher.publish("", "work", body, &options).await.unwrap());
    }
    for c in confirms {
        within("confirm", c).await.unwrap();
    }
    wait_for_ready(&client, "work", 1).await;

    let dead = take_all(&client, "dead").await;
    assert_eq!(dead.len(), ttls_ms.len());
    let mut last = 0;
    for copy in &dead {
        let ttl = ttls_ms[usize::from(copy.body[0]) - 1];
        let deadline = int_header(copy, "x-death-time-ms") as u64;
        assert!(deadline >= last, "dead-lettered in deadline order");
        last = deadline;
        // Each message's own deadline: stored time + its TTL.
        let stored_at = deadline - ttl;
        assert!(stored_at <= copy.enqueued_at_ms);
        assert_expired_at(copy, deadline);
    }
    let mut by_ttl = ttls_ms;
    by_ttl.sort_unstable();
    let order: Vec<u64> = dead
        .iter()
        .map(|m| ttls_ms[usize::from(m.body[0]) - 1])
        .collect();
    assert_eq!(order, by_ttl);

    let rest = take_all(&client, "work").await;
    assert_eq!(rest.len(), 1);
    assert_eq!(&rest[0].body[..], [0]);
    process.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_unused_past_its_expiry_is_deleted_on_time() {
    let dir = tempfile::tempdir().unwrap();
    let process = BrokerProcess::start(dir.path(), &[]);
    let client = connect(&process).await;
    let expires = Duration::from_millis(300);
    let asked = Instant::now();
    client
        .declare_queue("brief", QueueOptions::new().expires(expires))
        .await
        .unwrap();
    let declared = Instant::now();
    let gone = within("the unused queue to be deleted", async {
        loop {
            match client.inspect_queue("brief").await {
                Ok(_) => tokio::time::sleep(POLL).await,
                Err(e) if e.is_not_found() => return Instant::now(),
                Err(e) => panic!("inspect: {e}"),
            }
        }
    })
    .await;
    assert!(
        gone.duration_since(asked) >= expires,
        "deleted after {:?}",
        gone.duration_since(asked)
    );
    // Eager: within 100 ms of the deadline, plus what polling a busy machine adds.
    let late = gone.duration_since(declared).saturating_sub(expires);
    assert!(late <= OBSERVED_LATENESS, "deleted {late:?} late");
    process.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_delivery_carries_the_time_its_queue_stored_the_message() {
    let dir = tempfile::tempdir().unwrap();
    let process = BrokerProcess::start(dir.path(), &[]);
    let client = connect(&process).await;
    client
        .declare_queue("stamped", QueueOptions::new())
        .await
        .unwrap();
    let mut windows = Vec::new();
    for options in [PublishOptions::new(), PublishOptions::new().transient()] {
        let before = now_ms();
        client
            .publish("", "stamped", Bytes::from_static(b"m"), &options)
            .await
            .unwrap();
        windows.push((before, now_ms()));
    }
    // By Get, then again (requeued) by a consumer: the stamp does not change.
    let mut first = Vec::new();
    let mut taken = Vec::new();
    for (before, after) in &windows {
        let m = within("get", client.get("stamped")).await.unwrap().unwrap();
        assert!(
            (*before..=*after).contains(&m.enqueued_at_ms),
            "stamped {} for a publish in [{before}, {after}]",
            m.enqueued_at_ms
        );
        let waited = SystemTime::now().duration_since(m.enqueued_at()).unwrap();
        assert!(waited < WAIT);
        first.push(m.enqueued_at_ms);
        taken.push(m);
    }
    for m in taken {
        m.nack(true).await.unwrap();
    }
    let mut consumer = client
        .consume("stamped", sluice_client::ConsumeOptions::new())
        .await
        .unwrap();
    for stamp in first {
        let m = within("delivery", futures_util::StreamExt::next(&mut consumer))
            .await
            .unwrap()
            .unwrap();
        assert!(m.redelivered);
        assert_eq!(m.enqueued_at_ms, stamp);
        m.ack().await.unwrap();
    }
    // Cancelled and answered before the next publish, so that message stays ready for `get`.
    within("cancel", consumer.cancel()).await.unwrap();

    // The HTTP API's get shows the same stamp.
    let before = now_ms();
    client
        .publish(
            "",
            "stamped",
            Bytes::from_static(b"h"),
            &PublishOptions::new(),
        )
        .await
        .unwrap();
    let after = now_ms();
    let http = HttpClient::new(process.http_addr().unwrap(), "guest", "guest");
    let got = http.post("/api/queues/stamped/get", "{}").await;
    assert_eq!(got.status, 200, "{}", got.body);
    let got: Value = serde_json::from_str(&got.body).unwrap();
    let stamp = got[0]["enqueued_at_ms"].as_u64().unwrap();
    assert!((before..=after).contains(&stamp), "{got}");
    process.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queues_report_how_long_their_oldest_ready_message_has_waited() {
    let dir = tempfile::tempdir().unwrap();
    let process = BrokerProcess::start(dir.path(), &[]);
    let client = connect(&process).await;
    let http = HttpClient::new(process.http_addr().unwrap(), "guest", "guest");
    client
        .declare_queue("aging", QueueOptions::new())
        .await
        .unwrap();
    let empty = client.inspect_queue("aging").await.unwrap();
    assert_eq!(empty.oldest_ready_age_ms, 0, "no ready message, no age");

    let published = Instant::now();
    for body in [&b"old"[..], b"new"] {
        client
            .publish("", "aging", Bytes::from(body), &PublishOptions::new())
            .await
            .unwrap();
    }
    // The age grows with the oldest message, whichever door asks.
    let wait = Duration::from_millis(200);
    tokio::time::sleep(wait).await;
    let inspected = client.inspect_queue("aging").await.unwrap();
    let upper = published.elapsed().as_millis() as u64 + 5;
    assert!(
        (wait.as_millis() as u64..=upper).contains(&inspected.oldest_ready_age_ms),
        "age {} ms, expected at least {wait:?} and at most {upper} ms",
        inspected.oldest_ready_age_ms
    );
    let listed = client.list_queues().await.unwrap();
    let aging = listed.iter().find(|q| q.name == "aging").unwrap();
    assert!(aging.oldest_ready_age_ms >= wait.as_millis() as u64);
    for path in ["/api/queues/aging", "/api/queues"] {
        let response = http.get(path).await;
        assert_eq!(response.status, 200, "{path}: {}", response.body);
        let json: Value = serde_json::from_str(&response.body).unwrap();
        let queue = match &json {
            Value::Array(all) => all.iter().find(|q| q["name"] == "aging").unwrap(),
            one => one,
        };
        let age = queue["oldest_ready_age_ms"].as_u64().unwrap();
        assert!(age >= wait.as_millis() as u64, "{path}: {age}");
    }

    // Once the oldest is taken, the age is the next one's; with none ready it is 0 again.
    let old = client.get("aging").await.unwrap().unwrap();
    assert_eq!(&old.body[..], b"old");
    let held = client.inspect_queue("aging").await.unwrap();
    assert_eq!(held.ready, 1);
    assert!(held.oldest_ready_age_ms >= wait.as_millis() as u64);
    let new = client.get("aging").await.unwrap().unwrap();
    assert_eq!(
        client
            .inspect_queue("aging")
            .await
            .unwrap()
            .oldest_ready_age_ms,
        0
    );
    // A requeued message is ready again, with its first enqueue time.
    old.nack(true).await.unwrap();
    new.ack().await.unwrap();
    let again = client.inspect_queue("aging").await.unwrap();
    assert_eq!(again.ready, 1);
    assert!(again.oldest_ready_age_ms >= wait.as_millis() as u64);
    process.stop();
}
