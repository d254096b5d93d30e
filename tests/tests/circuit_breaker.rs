//! Consumer circuit breaking (docs/circuit-breaking.md, protocol.md §9.8) against the real
//! binary: a consumer that nacks everything is cut off after its threshold (notice: open),
//! receives nothing while open while the healthy consumers take every message, becomes
//! half-open after its cool-down (notice), closes again after acked trials (notice) and gets
//! its share again; lease timeouts open a circuit too; listings, the CLI, the HTTP API and
//! /metrics show the state; bad settings are INVALID_ARGUMENT; nothing is lost or doubled.
//! (The state machine's edge cases are unit-tested in broker/src/queue/breaker.rs.)

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::Value;
use sluice_client::wire::CircuitState;
use sluice_client::{
    CircuitNotice, Client, ConsumeOptions, Consumer, Error, ErrorCode, QueueOptions,
};
use sluice_tests::broker::{within, BrokerProcess};
use sluice_tests::http::HttpClient;
use tokio::sync::watch;
use tokio::task::JoinHandle;

async fn connect(process: &BrokerProcess) -> Client {
    within("connect", Client::connect(&process.url()))
        .await
        .expect("connect")
}

async fn publish(client: &Client, queue: &str, range: std::ops::Range<u32>) {
    for i in range {
        client
            .publish("", queue, format!("m{i}"), &Default::default())
            .await
            .expect("publish");
    }
}

/// Every ack, by consumer tag: the body of each message acked.
type Acked = Arc<Mutex<HashMap<String, Vec<String>>>>;

fn acked_total(acked: &Acked) -> usize {
    acked.lock().unwrap().values().map(Vec::len).sum()
}

fn acked_by(acked: &Acked, tag: &str) -> usize {
    acked.lock().unwrap().get(tag).map_or(0, Vec::len)
}

/// Waits (bounded) until `n` messages in all were acked.
async fn wait_acked(acked: &Acked, n: usize) {
    within(&format!("{n} acks"), async {
        while acked_total(acked) < n {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
}

/// A consumer that acks everything it receives.
fn healthy(mut consumer: Consumer, acked: Acked) -> JoinHandle<()> {
    tokio::spawn(async move {
        let tag = consumer.tag().to_owned();
        while let Some(Ok(m)) = consumer.next().await {
            let body = String::from_utf8_lossy(&m.body).into_owned();
            m.ack().await.expect("ack");
            acked
                .lock()
                .unwrap()
                .entry(tag.clone())
                .or_default()
                .push(body);
        }
    })
}

/// What the flaky consumer saw: deliveries by the circuit state it had noticed when each
/// arrived.
#[derive(Default)]
struct Seen {
    by_state: HashMap<CircuitState, usize>,
}

/// A consumer that nacks (with requeue) everything while `failing`, else acks.
fn flaky(
    mut consumer: Consumer,
    failing: Arc<AtomicBool>,
    acked: Acked,
    seen: Arc<Mutex<Seen>>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let tag = consumer.tag().to_owned();
        while let Some(Ok(m)) = consumer.next().await {
            let state = consumer.circuit().state;
            *seen.lock().unwrap().by_state.entry(state).or_default() += 1;
            if failing.load(Ordering::SeqCst) {
                m.nack(true).await.expect("nack");
            } else {
                let body = String::from_utf8_lossy(&m.body).into_owned();
                m.ack().await.expect("ack");
                acked
                    .lock()
                    .unwrap()
                    .entry(tag.clone())
                    .or_default()
                    .push(body);
            }
        }
    })
}

/// A consumer that takes every delivery and never settles it (its leases time out).
fn hold(mut consumer: Consumer, seen: Arc<Mutex<Seen>>) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Some(Ok(m)) = consumer.next().await {
            let state = consumer.circuit().state;
            *seen.lock().unwrap().by_state.entry(state).or_default() += 1;
            held.push(m);
        }
    })
}

async fn wait_state(rx: &mut watch::Receiver<CircuitNotice>, state: CircuitState) -> CircuitNotice {
    within(
        &format!("the circuit to be {state}"),
        rx.wait_for(|n| n.state == state),
    )
    .await
    .expect("the consumer is alive")
    .clone()
}

/// Every message of `0..n` acked exactly once.
fn assert_each_once(acked: &Acked, n: u32) {
    let mut all: Vec<String> = acked.lock().unwrap().values().flatten().cloned().collect();
    all.sort();
    let mut want: Vec<String> = (0..n).map(|i| format!("m{i}")).collect();
    want.sort();
    assert_eq!(all, want, "every message acked once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_consumer_is_cut_off_the_others_get_its_share_then_it_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let process = BrokerProcess::start(dir.path(), &[]);
    let client = connect(&process).await;
    client
        .declare_queue("work", QueueOptions::new())
        .await
        .unwrap();
    let acked = Acked::default();
    let h1 = consume(
        &client,
        "work",
        ConsumeOptions::new().consumer_tag("h1").prefetch(10),
    )
    .await;
    let h2 = consume(
        &client,
        "work",
        ConsumeOptions::new().consumer_tag("h2").prefetch(10),
    )
    .await;
    let flaky_client = connect(&process).await;
    let options = ConsumeOptions::new()
        .consumer_tag("flaky")
        .prefetch(10)
        // 3 failures within 30 s open it; 400 ms later it is half-open; 2 acks close it.
        .circuit_breaker(3, Duration::from_secs(30), Duration::from_millis(400), 2);
    let f = consume(&flaky_client, "work", options).await;
    assert_eq!(f.circuit().state, CircuitState::Closed);
    let mut changes = f.circuit_changes();
    let failing = Arc::new(AtomicBool::new(true));
    let seen = Arc::new(Mutex::new(Seen::default()));
    let tasks = [
        healthy(h1, acked.clone()),
        healthy(h2, acked.clone()),
        flaky(f, failing.clone(), acked.clone(), seen.clone()),
    ];

    // Phase 1: round-robin hands the flaky one some messages; it nacks them and is cut off.
    publish(&client, "work", 0..30).await;
    let open = wait_state(&mut changes, CircuitState::Open).await;
    assert_eq!(open.failures, 3, "{open:?}");
    assert!(open.until.is_some(), "{open:?}");
    assert!(open.reason.contains("nacks"), "{open:?}");
    // From now on it would ack: whatever it gets while half-open succeeds.
    failing.store(false, Ordering::SeqCst);
    // Phase 2, while it is open: every message goes to the healthy ones (its nacked ones
    // too, redelivered).
    publish(&client, "work", 30..60).await;
    wait_acked(&acked, 60).await;
    assert_eq!(
        seen.lock().unwrap().by_state.get(&CircuitState::Open),
        None,
        "no delivery while open"
    );
    if changes.borrow().state == CircuitState::Open {
        // (Its cool-down may have ended meanwhile on a slow machine: then it had trials.)
        assert_eq!(
            acked_by(&acked, "flaky"),
            0,
            "the healthy ones got every message"
        );
    }

    // Its cool-down ends: half-open, and with messages to try, closed again.
    let after = within(
        "the cool-down to end",
        changes.wait_for(|n| n.state != CircuitState::Open),
    )
    .await
    .expect("alive")
    .state;
    assert_ne!(after, CircuitState::Open);
    publish(&client, "work", 60..90).await;
    let closed = wait_state(&mut changes, CircuitState::Closed).await;
    assert!(closed.reason.contains("acked"), "{closed:?}");
    wait_acked(&acked, 90).await;
    assert!(
        acked_by(&acked, "flaky") >= 2,
        "its two trials were acked: {:?}",
        acked.lock().unwrap().get("flaky")
    );

    // Phase 4: closed again, it gets its share.
    let before = acked_by(&acked, "flaky");
    publish(&client, "work", 90..120).await;
    wait_acked(&acked, 120).await;
    assert!(
        acked_by(&acked, "flaky") > before,
        "the recovered consumer receives again"
    );
    assert!(acked_by(&acked, "h1") > 0 && acked_by(&acked, "h2") > 0);
    let half_open_trials = seen
        .lock()
        .unwrap()
        .by_state
        .get(&CircuitState::HalfOpen)
        .copied();
    assert!(
        half_open_trials.is_some_and(|n| n >= 2),
        "trial deliveries while half-open: {half_open_trials:?}"
    );
    assert_each_once(&acked, 120);
    let q = client.inspect_queue("work").await.unwrap();
    assert_eq!((q.ready, q.unacked), (0, 0));
    tasks.iter().for_each(JoinHandle::abort);
    process.stop();
}

async fn consume(client: &Client, queue: &str, options: ConsumeOptions) -> Consumer {
    within("consume", client.consume(queue, options))
        .await
        .expect("consume")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_timeouts_open_a_circuit_and_every_listing_shows_it() {
    let dir = tempfile::tempdir().unwrap();
    let process = BrokerProcess::start(dir.path(), &["--http-listen", "127.0.0.1:0"]);
    let client = connect(&process).await;
    client
        .declare_queue("jobs", QueueOptions::new())
        .await
        .unwrap();
    // It takes two messages and never settles them: their 200 ms leases time out.
    let stuck_client = connect(&process).await;
    let options = ConsumeOptions::new()
        .consumer_tag("stuck")
        .prefetch(2)
        .ack_timeout(Duration::from_millis(200))
        .circuit_breaker(2, Duration::from_secs(60), Duration::from_secs(120), 1);
    let stuck = consume(&stuck_client, "jobs", options).await;
    let mut changes = stuck.circuit_changes();
    let seen = Arc::new(Mutex::new(Seen::default()));
    let holder = hold(stuck, seen.clone());
    publish(&client, "jobs", 0..2).await;
    let open = wait_state(&mut changes, CircuitState::Open).await;
    assert!(open.reason.contains("lease timeouts"), "{open:?}");
    assert_eq!(open.failures, 2);

    // The healthy consumer gets the two returned messages and the new ones.
    let acked = Acked::default();
    let h = consume(
        &client,
        "jobs",
        ConsumeOptions::new().consumer_tag("ok").prefetch(5),
    )
    .await;
    let task = healthy(h, acked.clone());
    publish(&client, "jobs", 2..20).await;
    wait_acked(&acked, 20).await;
    assert_eq!(acked_by(&acked, "ok"), 20);
    assert_eq!(
        seen.lock().unwrap().by_state.get(&CircuitState::Open),
        None,
        "the open consumer received nothing"
    );

    // The Rust client's listing.
    let listed = client.list_consumers().await.unwrap();
    let circuit = |tag: &str| {
        listed
            .iter()
            .find(|c| c.consumer_tag == tag)
            .unwrap_or_else(|| panic!("{tag} in {listed:?}"))
            .circuit
    };
    let stuck_circuit = circuit("stuck").expect("a circuit");
    assert_eq!(stuck_circuit.state, CircuitState::Open);
    assert_eq!(stuck_circuit.failures, 2);
    assert!(stuck_circuit.until_ms > 0);
    assert_eq!(circuit("ok"), None, "no circuit breaking configured");
    // The CLI.
    let table = process.cli(&["consumers"]);
    assert!(table.lines().next().unwrap().contains("CIRCUIT"), "{table}");
    let line = |tag: &str| {
        table
            .lines()
            .find(|l| l.split_whitespace().nth(1) == Some(tag))
            .unwrap_or_else(|| panic!("{tag} in {table}"))
            .to_owned()
    };
    assert!(line("stuck").trim_end().ends_with("open"), "{table}");
    assert!(line("ok").trim_end().ends_with('-'), "{table}");
    // The HTTP API.
    let http = HttpClient::new(process.http_addr().unwrap(), "guest", "guest");
    let response = http.get("/api/consumers").await;
    assert_eq!(response.status, 200, "{}", response.body);
    let json: Value = serde_json::from_str(&response.body).unwrap();
    let by_tag = |tag: &str| {
        json.as_array()
            .unwrap()
            .iter()
            .find(|c| c["consumer_tag"] == tag)
            .cloned()
            .unwrap_or_else(|| panic!("{tag} in {json}"))
    };
    assert_eq!(by_tag("stuck")["circuit"]["state"], "open");
    assert_eq!(by_tag("stuck")["circuit"]["failures"], 2);
    assert!(by_tag("stuck")["circuit"]["until_ms"].as_u64().unwrap() > 0);
    assert_eq!(by_tag("ok")["circuit"], Value::Null);
    // /metrics.
    let metrics = http.get("/metrics").await.body;
    assert!(
        metrics.contains(r#"sluice_consumer_circuit_open{vhost="/",queue="jobs"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"sluice_circuit_trips_total{vhost="/",queue="jobs"} 1"#),
        "{metrics}"
    );

    // Its consumer gone, no circuit is open any more; the trip stays counted.
    holder.abort();
    let _ = holder.await;
    within("the open gauge to drop", async {
        loop {
            let metrics = http.get("/metrics").await.body;
            if metrics.contains(r#"sluice_consumer_circuit_open{vhost="/",queue="jobs"} 0"#) {
                assert!(metrics.contains(r#"sluice_circuit_trips_total{vhost="/",queue="jobs"} 1"#));
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert_each_once(&acked, 20);
    task.abort();
    process.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_without_a_circuit_breaker_is_never_cut_off() {
    let dir = tempfile::tempdir().unwrap();
    let process = BrokerProcess::start(dir.path(), &[]);
    let client = connect(&process).await;
    client
        .declare_queue("plain", QueueOptions::new())
        .await
        .unwrap();
    // One consumer with a breaker, one without; both nack everything at first.
    let mut with = consume(
        &client,
        "plain",
        ConsumeOptions::new()
            .consumer_tag("with")
            .prefetch(1)
            .circuit_breaker(2, Duration::from_secs(60), Duration::from_secs(120), 1),
    )
    .await;
    let mut without = consume(
        &client,
        "plain",
        ConsumeOptions::new().consumer_tag("without").prefetch(1),
    )
    .await;
    let mut with_changes = with.circuit_changes();
    publish(&client, "plain", 0..1).await;
    // Nack the one message back and forth until the breaker of `with` opens.
    within("the circuit of `with` to open", async {
        loop {
            tokio::select! {
                Some(Ok(m)) = with.next() => m.nack(true).await.unwrap(),
                Some(Ok(m)) = without.next() => m.nack(true).await.unwrap(),
                _ = with_changes.wait_for(|n| n.state == CircuitState::Open) => return,
            }
        }
    })
    .await;
    // From now on only `without` receives, however often it nacks.
    for _ in 0..5 {
        let m = within("a redelivery", without.next())
            .await
            .unwrap()
            .unwrap();
        m.nack(true).await.unwrap();
    }
    assert_eq!(without.circuit().state, CircuitState::Closed);
    let m = within("a redelivery", without.next())
        .await
        .unwrap()
        .unwrap();
    m.ack().await.unwrap();
    let listed = client.list_consumers().await.unwrap();
    let without_listed = listed.iter().find(|c| c.consumer_tag == "without").unwrap();
    assert_eq!(without_listed.circuit, None);
    process.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn circuit_breaker_settings_out_of_range_are_invalid_argument() {
    let dir = tempfile::tempdir().unwrap();
    let process = BrokerProcess::start(dir.path(), &[]);
    let client = connect(&process).await;
    client
        .declare_queue("q", QueueOptions::new())
        .await
        .unwrap();
    let second = Duration::from_secs(1);
    let bad = [
        (0, second, second, 1, "failure_threshold"),
        (1_000_001, second, second, 1, "failure_threshold"),
        (1, second, second, 0, "success_threshold"),
        (1, second, second, 1001, "success_threshold"),
        (1, Duration::from_secs(86_401), second, 1, "window_ms"),
        (1, second, Duration::from_secs(86_401), 1, "cool_down_ms"),
    ];
    for (failures, window, cool_down, successes, what) in bad {
        let options = ConsumeOptions::new().circuit_breaker(failures, window, cool_down, successes);
        match client.consume("q", options).await {
            Err(Error::Server { code, message }) => {
                assert_eq!(code, ErrorCode::InvalidArgument, "{what}: {message}");
                assert!(message.contains(what), "{what}: {message}");
            }
            other => panic!("{what}: {other:?}"),
        }
    }
    // The connection stays up and a valid one works.
    let options = ConsumeOptions::new().circuit_breaker(1, second, second, 1);
    let c = client.consume("q", options).await.expect("valid settings");
    assert_eq!(c.circuit().state, CircuitState::Closed);
    process.stop();
}
