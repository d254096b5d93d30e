//! Browsing a queue end to end: the wire protocol's `BrowseQueue`, `GET
//! /api/queues/NAME/messages` and `sluice browse` against a real broker process. A browse shows
//! ready messages without touching them: counters, delivery counts and what a consumer then
//! gets are exactly as if nobody had looked.

use std::process::Stdio;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use futures_util::StreamExt;
use serde_json::Value;
use sluice_client::{Client, ConsumeOptions, HeaderValue, PublishOptions, QueueOptions};
use sluice_tests::broker::{sluice_command, wait_bounded, BrokerProcess, WAIT};
use sluice_tests::http::{HttpClient, HttpResponse};

/// A broker with its HTTP API, and a client of both doors.
struct Broker {
    process: BrokerProcess,
    http: HttpClient,
    _dir: tempfile::TempDir,
}

impl Broker {
    fn start() -> Broker {
        let dir = tempfile::tempdir().expect("temporary directory");
        let process = BrokerProcess::start(&dir.path().join("data"), &[]);
        let http = HttpClient::new(process.http_addr().expect("HTTP on"), "guest", "guest");
        Broker {
            process,
            http,
            _dir: dir,
        }
    }

    async fn client(&self) -> Client {
        within("connect", Client::connect(&self.process.url()))
            .await
            .expect("connect")
    }

    fn stop(self) {
        self.process.stop();
    }
}

use sluice_tests::broker::within;

fn json_of(r: &HttpResponse, status: u16) -> Value {
    assert_eq!(r.status, status, "{r:?}");
    serde_json::from_str(&r.body).unwrap_or_else(|e| panic!("{e}: {r:?}"))
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// Publishes `bodies` to queue `q` (declared durable) and waits for every confirm.
async fn fill(client: &Client, q: &str, bodies: impl IntoIterator<Item = Vec<u8>>) {
    client.declare_queue(q, QueueOptions::new()).await.unwrap();
    let batch = bodies
        .into_iter()
        .map(|b| sluice_client::OutgoingMessage::new("", q, b));
    for outcome in within("publish", client.publish_batch(batch)).await {
        outcome.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browsing_leaves_counters_and_delivery_counts_untouched_and_consumers_get_first_deliveries()
{
    let broker = Broker::start();
    let client = broker.client().await;
    client
        .declare_queue("q", QueueOptions::new())
        .await
        .unwrap();
    let before = now_ms();
    for i in 0..5 {
        let options = PublishOptions::new()
            .message_id(format!("id-{i}"))
            .content_type("text/plain")
            .header("n", HeaderValue::Int(i));
        client
            .publish("", "q", format!("body {i}"), &options)
            .await
            .unwrap();
    }
    let after = now_ms();

    for _ in 0..2 {
        let page = client.browse("q", 10, 0).await.unwrap();
        assert!(!page.more);
        assert_eq!(page.messages.len(), 5);
        for (i, m) in page.messages.iter().enumerate() {
            assert_eq!(m.body, format!("body {i}").as_bytes());
            assert_eq!((m.delivery_count, m.redelivered), (0, false));
            assert!((before..=after).contains(&m.enqueued_at_ms), "{m:?}");
        }
        let http = json_of(&broker.http.get("/api/queues/q/messages").await, 200);
        let http = http.as_array().unwrap();
        assert_eq!(http.len(), 5);
        let first = &http[0];
        assert_eq!(first["payload"], "body 0");
        assert_eq!(first["payload_encoding"], "string");
        assert_eq!(first["payload_bytes"], 6);
        assert_eq!(first["truncated"], false);
        assert_eq!(first["delivery_count"], 0);
        assert_eq!(first["redelivered"], false);
        assert_eq!(first["routing_key"], "q");
        assert_eq!(first["exchange"], "");
        assert_eq!(first["properties"]["message_id"], "id-0");
        assert_eq!(first["properties"]["content_type"], "text/plain");
        assert_eq!(first["properties"]["persistent"], true);
        assert_eq!(first["headers"]["n"], 0);
        assert_eq!(first["seq"], page.messages[0].message_seq);
        assert!(first["age_ms"].as_u64().is_some());
        assert_eq!(first["enqueued_at_ms"], page.messages[0].enqueued_at_ms);
        let q = client.inspect_queue("q").await.unwrap();
        assert_eq!((q.ready, q.unacked), (5, 0));
    }
    // `sluice browse --json` shows the same.
    let cli = run_cli(&broker, &["browse", "q", "--count", "3", "--json"]);
    let cli: Value = serde_json::from_str(&cli).unwrap();
    assert_eq!(cli.as_array().unwrap().len(), 3);
    assert_eq!(cli[2]["payload"], "body 2");

    let mut consumer = client
        .consume("q", ConsumeOptions::new().prefetch(10))
        .await
        .unwrap();
    for i in 0..5 {
        let m = within("delivery", consumer.next()).await.unwrap().unwrap();
        assert_eq!(m.body, format!("body {i}").as_bytes());
        assert_eq!((m.delivery_count, m.redelivered), (1, false), "{i}");
        m.ack().await.unwrap();
    }
    client.close().await.unwrap();
    broker.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browsing_pages_through_the_queue_in_sequence_order_returned_messages_included() {
    let broker = Broker::start();
    let client = broker.client().await;
    fill(&client, "q", (0..25).map(|i| format!("m{i}").into_bytes())).await;
    // The first message is delivered once and returned: it is shown first, counted once.
    let taken = client.get("q").await.unwrap().expect("a message");
    taken.nack(true).await.unwrap();

    let mut seen = Vec::new();
    let mut after = 0;
    let mut pages = 0;
    loop {
        let page = client.browse("q", 10, after).await.unwrap();
        pages += 1;
        after = page.messages.last().map_or(after, |m| m.message_seq);
        seen.extend(page.messages);
        if !page.more {
            break;
        }
    }
    assert_eq!(pages, 3);
    let bodies: Vec<String> = seen
        .iter()
        .map(|m| String::from_utf8(m.body.to_vec()).unwrap())
        .collect();
    assert_eq!(bodies, (0..25).map(|i| format!("m{i}")).collect::<Vec<_>>());
    assert!(seen.windows(2).all(|w| w[0].message_seq < w[1].message_seq));
    assert_eq!((seen[0].delivery_count, seen[0].redelivered), (1, true));
    assert_eq!((seen[1].delivery_count, seen[1].redelivered), (0, false));

    // The same pages over HTTP, with the header that says whether more follow.
    let r = broker.http.get("/api/queues/q/messages?limit=10").await;
    assert_eq!(r.header("x-sluice-more"), Some("true"));
    let first = json_of(&r, 200);
    assert_eq!(first.as_array().unwrap().len(), 10);
    let last_seq = first[9]["seq"].as_u64().unwrap();
    let r = broker
        .http
        .get(&format!(
            "/api/queues/q/messages?limit=100&after={last_seq}"
        ))
        .await;
    assert_eq!(r.header("x-sluice-more"), Some("false"));
    let rest = json_of(&r, 200);
    assert_eq!(rest.as_array().unwrap().len(), 15);
    assert_eq!(rest[0]["payload"], "m10");
    client.close().await.unwrap();
    broker.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_payloads_come_as_base64_over_http_and_long_ones_are_cut_at_64_kib() {
    let broker = Broker::start();
    let client = broker.client().await;
    let binary = vec![0xff, 0x00, 0xfe, 0x80];
    let long = "x".repeat(100 * 1024).into_bytes();
    fill(&client, "q", [binary.clone(), long]).await;
    let page = json_of(&broker.http.get("/api/queues/q/messages").await, 200);
    assert_eq!(page[0]["payload_encoding"], "base64");
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(page[0]["payload"].as_str().unwrap())
        .unwrap();
    assert_eq!(decoded, binary);
    assert_eq!(page[0]["truncated"], false);
    assert_eq!(page[1]["payload_encoding"], "string");
    assert_eq!(page[1]["payload_bytes"], 100 * 1024);
    assert_eq!(page[1]["truncated"], true);
    assert_eq!(page[1]["payload"].as_str().unwrap().len(), 64 * 1024);
    client.close().await.unwrap();
    broker.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browse_answer_fits_the_connection_frame_and_says_more_follow() {
    let broker = Broker::start();
    let client = broker.client().await;
    fill(&client, "q", (0..10u8).map(|i| vec![i; 20 * 1024])).await;
    // The smallest frame there is: three 20 KiB bodies do not fit.
    let small = within(
        "connect",
        Client::builder()
            .max_frame_len(64 * 1024)
            .connect(&broker.process.url()),
    )
    .await
    .unwrap();
    let mut after = 0;
    let mut seen = 0;
    loop {
        let page = small.browse("q", 0, after).await.unwrap();
        assert!(
            (1..=3).contains(&page.messages.len()),
            "{}",
            page.messages.len()
        );
        for m in &page.messages {
            assert_eq!(m.body.as_ref(), vec![seen as u8; 20 * 1024]);
            seen += 1;
        }
        after = page.messages.last().unwrap().message_seq;
        if !page.more {
            break;
        }
    }
    assert_eq!(seen, 10);
    small.close().await.unwrap();
    client.close().await.unwrap();
    broker.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browsing_a_missing_queue_is_not_found_bad_limits_are_refused_and_credentials_required() {
    let broker = Broker::start();
    let client = broker.client().await;
    let err = client.browse("nope", 10, 0).await.unwrap_err();
    assert_eq!(err.code(), Some(sluice_client::ErrorCode::NotFound));
    let r = broker.http.get("/api/queues/nope/messages").await;
    assert_eq!(json_of(&r, 404)["error"], "NOT_FOUND");
    client
        .declare_queue("q", QueueOptions::new())
        .await
        .unwrap();
    for bad in ["limit=0", "limit=1001", "limit=x", "after=-1"] {
        let r = broker
            .http
            .get(&format!("/api/queues/q/messages?{bad}"))
            .await;
        assert_eq!(json_of(&r, 400)["error"], "INVALID_ARGUMENT", "{bad}");
    }
    assert_eq!(
        json_of(&broker.http.get("/api/queues/q/messages").await, 200),
        serde_json::json!([])
    );
    let anonymous = HttpClient::anonymous(broker.process.http_addr().unwrap());
    let r = anonymous.get("/api/queues/q/messages").await;
    assert_eq!(json_of(&r, 401)["error"], "ACCESS_REFUSED");
    // The connection serves on after its errors.
    assert!(client.browse("q", 1, 0).await.unwrap().messages.is_empty());
    client.close().await.unwrap();
    broker.stop();
}

/// Runs `sluice ARGS --url <broker>`, which must succeed; its stdout.
fn run_cli(broker: &Broker, args: &[&str]) -> String {
    let url = broker.process.cli_url();
    let mut child = sluice_command()
        .args(args)
        .args(["--url", &url])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start sluice");
    let mut stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut out = String::new();
        std::io::Read::read_to_string(&mut stdout, &mut out).unwrap();
        out
    });
    let status = wait_bounded(child, WAIT + Duration::from_secs(1)).expect("sluice exits");
    let out = reader.join().unwrap();
    assert!(status.success(), "sluice {args:?}: {status}\n{out}");
    out
}
