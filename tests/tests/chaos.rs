//! Chaos injection per queue end to end (docs/chaos.md): each mode against the real broker,
//! its statistics checked against what the clients saw, and every published message
//! consumed exactly once after the injection is cleared or ends. Also: bad input gets typed
//! errors, the HTTP API and the CLI set, show and clear injections, and `/metrics` shows them.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::{json, Value};
use sluice_client::wire::{DelayChaos, DropChaos, FailPublishChaos, ShortLeaseChaos};
use sluice_client::{
    ChaosDelay, ChaosEntry, ChaosPlan, ChaosRate, Client, ConsumeOptions, ErrorCode, Message,
    OutgoingMessage, QueueOptions,
};
use sluice_tests::broker::{users_file_command, within, BrokerProcess};
use sluice_tests::http::{HttpClient, HttpResponse};

/// How long the injections of these tests run unless a test ends them: longer than a test.
const LONG: Duration = Duration::from_secs(600);

struct Broker {
    process: BrokerProcess,
    http: HttpClient,
    _dir: tempfile::TempDir,
}

impl Broker {
    fn start() -> Broker {
        let dir = tempfile::tempdir().expect("temporary directory");
        let data = dir.path().join("data");
        users_file_command(
            &data,
            &["user", "add", "worker", "--tags", "management"],
            Some("worker-secret"),
        );
        users_file_command(
            &data,
            &[
                "permissions",
                "set",
                "worker",
                "--configure",
                ".*",
                "--write",
                ".*",
                "--read",
                ".*",
            ],
            None,
        );
        let process = BrokerProcess::start(&data, &[]);
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

    async fn worker(&self) -> Client {
        let url = format!("sluice://worker:worker-secret@{}", self.process.addr());
        within("connect", Client::connect(&url))
            .await
            .expect("login")
    }
}

async fn publish(client: &Client, q: &str, ids: std::ops::Range<u64>) {
    let batch = ids.map(|i| OutgoingMessage::new("", q, i.to_string()));
    for outcome in within("publish", client.publish_batch(batch)).await {
        outcome.unwrap();
    }
}

fn id_of(m: &Message) -> u64 {
    std::str::from_utf8(&m.body).unwrap().parse().unwrap()
}

/// The chaos entry of `q` (its counters since the start).
async fn entry(client: &Client, q: &str) -> ChaosEntry {
    let list = client.list_chaos().await.unwrap();
    list.entries
        .into_iter()
        .find(|e| e.queue == q)
        .unwrap_or_else(|| panic!("queue '{q}' is not in the chaos listing"))
}

/// Waits until `q` holds no message at all (ready, unacked, scheduled).
async fn empty(client: &Client, q: &str) {
    within("the queue to empty", async {
        loop {
            let i = client.inspect_queue(q).await.unwrap();
            if i.ready == 0 && i.unacked == 0 && i.scheduled == 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
}

/// Consumes `q` acking every delivery until each id of `0..n` was acked once; returns the
/// deliveries seen per id.
async fn consume_all(client: &Client, q: &str, n: u64) -> BTreeMap<u64, Vec<(u32, bool)>> {
    let mut seen: BTreeMap<u64, Vec<(u32, bool)>> = BTreeMap::new();
    let mut consumer = client
        .consume(q, ConsumeOptions::new().prefetch(100))
        .await
        .unwrap();
    while (seen.len() as u64) < n {
        let m = within("deliveries", consumer.next())
            .await
            .unwrap()
            .unwrap();
        seen.entry(id_of(&m))
            .or_default()
            .push((m.delivery_count, m.redelivered));
        m.ack().await.unwrap();
    }
    consumer.cancel().await.unwrap();
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicated_deliveries_are_counted_and_each_message_is_deleted_once() {
    let broker = Broker::start();
    let client = broker.client().await;
    client
        .declare_queue("dup", QueueOptions::new())
        .await
        .unwrap();
    let plan = ChaosPlan {
        duplicate: Some(ChaosRate::from_percent(30.0).unwrap()),
        ..ChaosPlan::default()
    };
    let until = client.set_chaos("dup", plan, LONG).await.unwrap();
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    assert!(
        until > now_ms + 500_000 && until < now_ms + 700_000,
        "{until}"
    );
    let n = 1000;
    publish(&client, "dup", 0..n).await;
    let mut consumer = client
        .consume("dup", ConsumeOptions::new().prefetch(200))
        .await
        .unwrap();
    let mut tags_per_id: BTreeMap<u64, usize> = BTreeMap::new();
    let mut extras = 0u64;
    loop {
        let m = within("deliveries", consumer.next())
            .await
            .unwrap()
            .unwrap();
        let copies = tags_per_id.entry(id_of(&m)).or_default();
        *copies += 1;
        if *copies > 1 {
            extras += 1;
            assert!(m.redelivered, "an extra delivery is flagged redelivered");
        }
        // Both deliveries are acked, and neither ack fails: the extra one settles harmlessly.
        m.ack_confirmed().await.unwrap();
        if tags_per_id.len() as u64 == n && entry(&client, "dup").await.stats.duplicated == extras {
            break;
        }
    }
    assert!(tags_per_id.values().all(|&c| c <= 2));
    assert!((200..=400).contains(&extras), "{extras} duplicates of 1000");
    assert!(client.clear_chaos("dup").await.unwrap());
    assert!(
        !client.clear_chaos("dup").await.unwrap(),
        "nothing left to clear"
    );
    // Every message was deleted exactly once: nothing ready or unacked is left, and no ack
    // was refused above.
    empty(&client, "dup").await;
    let after = entry(&client, "dup").await;
    assert!(!after.is_active());
    assert_eq!(after.stats.duplicated, extras);
    consumer.cancel().await.unwrap();
    // Once cleared: no more duplicates.
    publish(&client, "dup", n..n + 100).await;
    let seen = consume_all(&client, "dup", 100).await;
    assert!(seen.values().all(|d| d.len() == 1));
    assert!(seen.keys().copied().eq(n..n + 100));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_publishes_are_told_to_the_publisher_and_never_stored() {
    let broker = Broker::start();
    let client = broker.client().await;
    client
        .declare_queue("fail", QueueOptions::new())
        .await
        .unwrap();
    let plan = ChaosPlan {
        fail_publish: Some(FailPublishChaos {
            rate: ChaosRate::from_percent(25.0).unwrap(),
            code: ErrorCode::QueueFull,
        }),
        ..ChaosPlan::default()
    };
    client.set_chaos("fail", plan, LONG).await.unwrap();
    let n = 400u64;
    let batch = (0..n).map(|i| OutgoingMessage::new("", "fail", i.to_string()));
    let outcomes = within("publish", client.publish_batch(batch)).await;
    let mut stored = BTreeSet::new();
    let mut failed = 0u64;
    for (i, outcome) in outcomes.into_iter().enumerate() {
        match outcome {
            Ok(_) => {
                stored.insert(i as u64);
            }
            Err(e) => {
                assert_eq!(e.code(), Some(ErrorCode::QueueFull), "{e}");
                assert!(e.to_string().contains("chaos"), "{e}");
                failed += 1;
            }
        }
    }
    assert!((50..=150).contains(&failed), "{failed} of 400 refused");
    assert_eq!(entry(&client, "fail").await.stats.publishes_failed, failed);
    assert_eq!(
        client.inspect_queue("fail").await.unwrap().ready,
        n - failed
    );
    client.clear_chaos("fail").await.unwrap();
    // Cleared: every publish is stored again.
    publish(&client, "fail", n..n + 50).await;
    stored.extend(n..n + 50);
    let seen = consume_all(&client, "fail", stored.len() as u64).await;
    assert_eq!(seen.keys().copied().collect::<BTreeSet<_>>(), stored);
    assert!(seen.values().all(|d| d.len() == 1));
    empty(&client, "fail").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delayed_deliveries_wait_their_time_and_are_counted() {
    let broker = Broker::start();
    let client = broker.client().await;
    client
        .declare_queue("slow", QueueOptions::new())
        .await
        .unwrap();
    let plan = ChaosPlan {
        delay: Some(DelayChaos {
            rate: ChaosRate::ALL,
            delay: ChaosDelay::Uniform {
                min_ms: 300,
                max_ms: 600,
            },
        }),
        ..ChaosPlan::default()
    };
    client.set_chaos("slow", plan, LONG).await.unwrap();
    let started = Instant::now();
    publish(&client, "slow", 0..50).await;
    let seen = consume_all(&client, "slow", 50).await;
    // Every delivery was held back at least the shortest delay, and only once.
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert!(seen.values().all(|d| d == &[(1, false)]), "{seen:?}");
    assert_eq!(entry(&client, "slow").await.stats.delayed, 50);
    empty(&client, "slow").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_deliveries_come_back_counted_and_nothing_is_lost() {
    let broker = Broker::start();
    let client = broker.client().await;
    client
        .declare_queue("lossy", QueueOptions::new())
        .await
        .unwrap();
    let plan = ChaosPlan {
        drop: Some(DropChaos {
            rate: ChaosRate::from_percent(30.0).unwrap(),
            redeliver_after_ms: 100,
        }),
        ..ChaosPlan::default()
    };
    client.set_chaos("lossy", plan, LONG).await.unwrap();
    let n = 500;
    publish(&client, "lossy", 0..n).await;
    let seen = consume_all(&client, "lossy", n).await;
    // The consumer saw each message once; a message dropped k times came with its delivery
    // count raised by k (and flagged redelivered).
    assert!(seen.values().all(|d| d.len() == 1));
    let drops: u64 = seen.values().map(|d| u64::from(d[0].0 - 1)).sum();
    assert!(seen.values().all(|d| d[0].0 == 1 || d[0].1));
    assert_eq!(entry(&client, "lossy").await.stats.dropped, drops);
    assert!(
        (100..=350).contains(&drops),
        "{drops} drops for 500 messages"
    );
    client.clear_chaos("lossy").await.unwrap();
    empty(&client, "lossy").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_leases_run_out_early_and_are_counted() {
    let broker = Broker::start();
    let client = broker.client().await;
    client
        .declare_queue(
            "leases",
            QueueOptions::new().ack_timeout(Duration::from_secs(120)),
        )
        .await
        .unwrap();
    let plan = ChaosPlan {
        short_lease: Some(ShortLeaseChaos {
            rate: ChaosRate::from_percent(30.0).unwrap(),
            lease_ms: 200,
        }),
        ..ChaosPlan::default()
    };
    client.set_chaos("leases", plan, LONG).await.unwrap();
    let n = 200;
    publish(&client, "leases", 0..n).await;
    let mut consumer = client
        .consume("leases", ConsumeOptions::new().prefetch(0))
        .await
        .unwrap();
    // First deliveries are kept unsettled: those with a short lease come back. Redeliveries
    // are acked at once.
    let mut kept: BTreeMap<u64, Message> = BTreeMap::new();
    let mut highest: BTreeMap<u64, u32> = BTreeMap::new();
    let mut acked = BTreeSet::new();
    // Short leases (200 ms) of kept deliveries run out well within two seconds of the last
    // first delivery; the queue's own (120 s) do not.
    let mut last_first = Instant::now();
    within("short leases to run out", async {
        loop {
            let next = tokio::time::timeout(Duration::from_millis(100), consumer.next()).await;
            if let Ok(m) = next {
                let m = m.unwrap().unwrap();
                let id = id_of(&m);
                let count = highest.entry(id).or_default();
                *count = (*count).max(m.delivery_count);
                if m.delivery_count == 1 {
                    last_first = Instant::now();
                    kept.insert(id, m);
                } else if m.ack_confirmed().await.is_ok() {
                    kept.remove(&id);
                    acked.insert(id);
                }
            }
            let returns: u64 = highest.values().map(|&c| u64::from(c - 1)).sum();
            let expired = entry(&client, "leases").await.stats.leases_expired_early;
            let settled = last_first.elapsed() > Duration::from_secs(2);
            if highest.len() as u64 == n && settled && expired == returns {
                return;
            }
        }
    })
    .await;
    let stats = entry(&client, "leases").await.stats;
    assert!(
        (20..=120).contains(&stats.leases_expired_early),
        "{stats:?}"
    );
    assert!(stats.leases_shortened >= stats.leases_expired_early);
    client.clear_chaos("leases").await.unwrap();
    // The kept first deliveries had the queue's long lease: acking them works.
    for (id, m) in kept {
        m.ack_confirmed().await.unwrap();
        assert!(acked.insert(id), "message {id} acked twice");
    }
    assert_eq!(acked.len() as u64, n);
    empty(&client, "leases").await;
    consumer.cancel().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_injection_ends_by_itself_and_releases_what_it_held() {
    let broker = Broker::start();
    let client = broker.client().await;
    client
        .declare_queue("ends", QueueOptions::new())
        .await
        .unwrap();
    // Deliveries held back for an hour, by an injection that lasts two seconds.
    let plan = ChaosPlan {
        delay: Some(DelayChaos {
            rate: ChaosRate::ALL,
            delay: ChaosDelay::Fixed { ms: 3_600_000 },
        }),
        ..ChaosPlan::default()
    };
    client
        .set_chaos("ends", plan, Duration::from_secs(2))
        .await
        .unwrap();
    assert!(entry(&client, "ends").await.is_active());
    publish(&client, "ends", 0..30).await;
    let seen = consume_all(&client, "ends", 30).await;
    assert!(seen.values().all(|d| d.len() == 1));
    let after = entry(&client, "ends").await;
    assert!(!after.is_active(), "the injection ended by itself");
    assert_eq!(after.stats.delayed, 30);
    empty(&client, "ends").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_chaos_requests_get_typed_errors() {
    let broker = Broker::start();
    let client = broker.client().await;
    client
        .declare_queue("q", QueueOptions::new())
        .await
        .unwrap();
    let dup = |percent: f64| ChaosPlan {
        duplicate: Some(ChaosRate((percent * 100.0) as u16)),
        ..ChaosPlan::default()
    };
    let code = |r: sluice_client::Result<u64>| r.expect_err("refused").code();
    assert_eq!(
        code(client.set_chaos("nope", dup(5.0), LONG).await),
        Some(ErrorCode::NotFound)
    );
    assert_eq!(
        code(client.set_chaos("q", dup(101.0), LONG).await),
        Some(ErrorCode::InvalidArgument)
    );
    assert_eq!(
        code(client.set_chaos("q", dup(5.0), Duration::ZERO).await),
        Some(ErrorCode::InvalidArgument)
    );
    assert_eq!(
        code(
            client
                .set_chaos("q", dup(5.0), Duration::from_secs(25 * 3600))
                .await
        ),
        Some(ErrorCode::InvalidArgument)
    );
    assert_eq!(
        code(client.set_chaos("q", ChaosPlan::default(), LONG).await),
        Some(ErrorCode::InvalidArgument)
    );
    let not_a_refusal = ChaosPlan {
        fail_publish: Some(FailPublishChaos {
            rate: ChaosRate(100),
            code: ErrorCode::NotFound,
        }),
        ..ChaosPlan::default()
    };
    assert_eq!(
        code(client.set_chaos("q", not_a_refusal, LONG).await),
        Some(ErrorCode::InvalidArgument)
    );
    let worker = broker.worker().await;
    assert_eq!(
        code(worker.set_chaos("q", dup(5.0), LONG).await),
        Some(ErrorCode::NotAllowed)
    );
    let e = worker.clear_chaos("q").await.expect_err("refused");
    assert_eq!(e.code(), Some(ErrorCode::NotAllowed));
    assert_eq!(
        client
            .clear_chaos("nope")
            .await
            .expect_err("no queue")
            .code(),
        Some(ErrorCode::NotFound)
    );
    // Nothing was set by any of them, and the broker still serves everyone.
    assert!(client.list_chaos().await.unwrap().entries.is_empty());
    assert!(worker.list_chaos().await.unwrap().entries.is_empty());
    publish(&worker, "q", 0..3).await;
    assert_eq!(client.inspect_queue("q").await.unwrap().ready, 3);
}

fn json_of(r: &HttpResponse, status: u16) -> Value {
    assert_eq!(r.status, status, "{r:?}");
    serde_json::from_str(&r.body).unwrap_or_else(|e| panic!("{e}: {r:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http_api_sets_shows_and_clears_chaos_and_metrics_mark_it() {
    let broker = Broker::start();
    let client = broker.client().await;
    client
        .declare_queue("web", QueueOptions::new())
        .await
        .unwrap();
    let http = &broker.http;
    let body = json!({
        "duration_ms": 600_000,
        "duplicate": { "percent": 20 },
        "delay": { "percent": 50, "distribution": "uniform:100-200" },
        "fail_publish": { "percent": 1.5, "code": "STORAGE_FULL" },
    });
    let set = json_of(
        &http.put("/api/queues/web/chaos", &body.to_string()).await,
        200,
    );
    assert_eq!(set["queue"], "web");
    assert_eq!(set["active"], true);
    assert_eq!(set["delay"]["distribution"], "uniform:100-200");
    assert_eq!(set["fail_publish"]["code"], "STORAGE_FULL");
    assert!(set["until_ms"].as_u64().unwrap() > 0);
    // Marked in the queue listing, the queue's page and the chaos listing.
    let list = json_of(&http.get("/api/queues").await, 200);
    let web = list
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["name"] == "web")
        .unwrap();
    assert_eq!(web["chaos"]["active"], true, "{web}");
    let show = json_of(&http.get("/api/queues/web").await, 200);
    assert_eq!(show["chaos"]["duplicate"]["percent"], 20.0, "{show}");
    let all = json_of(&http.get("/api/chaos").await, 200);
    assert_eq!(all[0]["queue"], "web", "{all}");
    // /metrics: a gauge per queue and counters per mode.
    let metrics = http.get("/metrics").await.body;
    assert!(
        metrics.contains("sluice_queue_chaos_active{vhost=\"/\",queue=\"web\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains(
        "sluice_queue_chaos_events_total{vhost=\"/\",queue=\"web\",mode=\"duplicated\"} 0"
    ));
    // Bad input: typed errors.
    let bad = [
        (
            json!({ "duration_ms": 1000, "duplicate": { "percent": 150 } }),
            400,
        ),
        (
            json!({ "duration_ms": 0, "duplicate": { "percent": 5 } }),
            400,
        ),
        (
            json!({ "duration_ms": 1000, "fail_publish": { "percent": 5, "code": "NOT_FOUND" } }),
            400,
        ),
        (
            json!({ "duration_ms": 1000, "fail_publish": { "percent": 5, "code": "NO_SUCH_CODE" } }),
            400,
        ),
        (
            json!({ "duration_ms": 1000, "delay": { "percent": 5, "distribution": "normal:5" } }),
            400,
        ),
        (json!({ "duration_ms": 1000, "surprise": true }), 400),
    ];
    for (body, status) in bad {
        let r = http.put("/api/queues/web/chaos", &body.to_string()).await;
        assert_eq!(r.status, status, "{body}: {r:?}");
    }
    let missing = http
        .put(
            "/api/queues/nope/chaos",
            &json!({ "duration_ms": 1000, "duplicate": { "percent": 5 } }).to_string(),
        )
        .await;
    assert_eq!(missing.status, 404, "{missing:?}");
    let worker = HttpClient::new(
        broker.process.http_addr().unwrap(),
        "worker",
        "worker-secret",
    );
    let refused = worker.delete("/api/queues/web/chaos", None).await;
    assert_eq!(refused.status, 403, "{refused:?}");
    // Cleared: off everywhere.
    let cleared = json_of(&http.delete("/api/queues/web/chaos", None).await, 200);
    assert_eq!(cleared["was_active"], true);
    let show = json_of(&http.get("/api/queues/web").await, 200);
    assert_eq!(show["chaos"]["active"], false, "{show}");
    let metrics = http.get("/metrics").await.body;
    assert!(metrics.contains("sluice_queue_chaos_active{vhost=\"/\",queue=\"web\"} 0"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_sets_lists_and_clears_chaos() {
    let broker = Broker::start();
    let client = broker.client().await;
    client
        .declare_queue("cli", QueueOptions::new())
        .await
        .unwrap();
    let out = broker.process.cli(&[
        "chaos",
        "set",
        "cli",
        "--delay",
        "uniform:100-500",
        "--duplicate",
        "5",
        "--drop",
        "2",
        "--drop-redeliver-after",
        "2s",
        "--fail-publish",
        "1",
        "--fail-code",
        "QUEUE_FULL",
        "--short-lease",
        "3",
        "--lease",
        "500ms",
        "--duration",
        "10m",
    ]);
    assert!(out.contains("chaos on queue 'cli' until"), "{out}");
    let entry = entry(&client, "cli").await;
    assert!(entry.is_active());
    assert_eq!(entry.plan.duplicate, Some(ChaosRate(500)));
    assert_eq!(
        entry.plan.drop,
        Some(DropChaos {
            rate: ChaosRate(200),
            redeliver_after_ms: 2000
        })
    );
    let list = broker.process.cli(&["chaos", "list"]);
    assert!(
        list.contains("cli") && list.contains("duplicate 5%"),
        "{list}"
    );
    let queues = broker.process.cli(&["queues"]);
    assert!(queues.contains("CHAOS"), "{queues}");
    let json: Value =
        serde_json::from_str(&broker.process.cli(&["--json", "chaos", "list"])).unwrap();
    assert_eq!(json[0]["queue"], "cli", "{json}");
    assert_eq!(json[0]["active"], true, "{json}");
    let out = broker.process.cli(&["chaos", "clear", "cli"]);
    assert!(out.contains("cleared"), "{out}");
    assert!(!broker.process.cli(&["queues"]).contains("CHAOS"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_ends_injections_and_brings_back_what_they_held() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let process = BrokerProcess::start(&data, &[]);
    let client = within("connect", Client::connect(&process.url()))
        .await
        .unwrap();
    client
        .declare_queue("held", QueueOptions::new())
        .await
        .unwrap();
    // Every delivery dropped, back only after an hour.
    let plan = ChaosPlan {
        drop: Some(DropChaos {
            rate: ChaosRate::ALL,
            redeliver_after_ms: 3_600_000,
        }),
        ..ChaosPlan::default()
    };
    client.set_chaos("held", plan, LONG).await.unwrap();
    publish(&client, "held", 0..20).await;
    let consumer = client
        .consume("held", ConsumeOptions::new().prefetch(100))
        .await
        .unwrap();
    // Held messages are neither ready nor unacked: they wait for their time.
    within("every delivery to be dropped", async {
        while entry(&client, "held").await.stats.dropped < 20 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    let i = client.inspect_queue("held").await.unwrap();
    assert_eq!((i.ready, i.unacked, i.scheduled), (0, 0, 20));
    drop(consumer);
    client.close().await.unwrap();
    process.stop();

    let process = BrokerProcess::start(&data, &[]);
    let client = within("connect", Client::connect(&process.url()))
        .await
        .unwrap();
    assert!(
        client.list_chaos().await.unwrap().entries.is_empty(),
        "a restart ends every injection"
    );
    let seen = consume_all(&client, "held", 20).await;
    assert!(seen.keys().copied().eq(0..20));
    // Each was delivered (and lost) once before the restart: it comes back redelivered.
    assert!(seen.values().all(|d| d == &[(2, true)]), "{seen:?}");
    empty(&client, "held").await;
    process.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settling_only_the_extra_copy_deletes_nothing_and_the_message_comes_back() {
    let broker = Broker::start();
    let client = broker.client().await;
    client
        .declare_queue(
            "copy",
            QueueOptions::new().ack_timeout(Duration::from_millis(500)),
        )
        .await
        .unwrap();
    let plan = ChaosPlan {
        duplicate: Some(ChaosRate::ALL),
        ..ChaosPlan::default()
    };
    client.set_chaos("copy", plan, LONG).await.unwrap();
    publish(&client, "copy", 0..1).await;
    let mut consumer = client
        .consume("copy", ConsumeOptions::new().prefetch(10))
        .await
        .unwrap();
    let original = within("the delivery", consumer.next())
        .await
        .unwrap()
        .unwrap();
    let extra = within("its copy", consumer.next()).await.unwrap().unwrap();
    assert_eq!(original.message_seq, extra.message_seq);
    assert_ne!(original.delivery_tag, extra.delivery_tag);
    assert!(!original.redelivered && extra.redelivered);
    client.clear_chaos("copy").await.unwrap();
    // Acking the copy succeeds and deletes nothing: the original is still out.
    extra.ack_confirmed().await.unwrap();
    let i = client.inspect_queue("copy").await.unwrap();
    assert_eq!((i.ready, i.unacked), (0, 1));
    // The original's lease runs out unsettled: the message comes back, once.
    drop(original);
    let again = within("the redelivery", consumer.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!((id_of(&again), again.delivery_count), (0, 2));
    again.ack_confirmed().await.unwrap();
    empty(&client, "copy").await;
    consumer.cancel().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clearing_releases_held_deliveries_at_once() {
    let broker = Broker::start();
    let client = broker.client().await;
    client
        .declare_queue("paused", QueueOptions::new())
        .await
        .unwrap();
    let plan = ChaosPlan {
        delay: Some(DelayChaos {
            rate: ChaosRate::ALL,
            delay: ChaosDelay::Fixed { ms: 3_600_000 },
        }),
        ..ChaosPlan::default()
    };
    client.set_chaos("paused", plan, LONG).await.unwrap();
    publish(&client, "paused", 0..40).await;
    let consumer = client
        .consume("paused", ConsumeOptions::new().prefetch(100))
        .await
        .unwrap();
    within("every delivery to be held", async {
        while entry(&client, "paused").await.stats.delayed < 40 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    let mut consumer = consumer;
    assert!(
        tokio::time::timeout(Duration::from_millis(200), consumer.next())
            .await
            .is_err(),
        "nothing is delivered while held"
    );
    consumer.cancel().await.unwrap();
    assert!(client.clear_chaos("paused").await.unwrap());
    let seen = consume_all(&client, "paused", 40).await;
    assert!(seen.values().all(|d| d == &[(1, false)]));
    empty(&client, "paused").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replicated_queue_refuses_chaos_with_a_typed_error() {
    use sluice_client::QueueArguments;
    use sluice_tests::cluster::{replicated, ClusterProcess};
    let dir = tempfile::tempdir().unwrap();
    let cluster = ClusterProcess::start(dir.path(), 3, &[]).await;
    let client = within("connect", Client::connect(&cluster.node(1).url()))
        .await
        .unwrap();
    within(
        "declare",
        client.declare_queue("replicated", replicated(QueueArguments::default())),
    )
    .await
    .unwrap();
    let plan = ChaosPlan {
        duplicate: Some(ChaosRate(1000)),
        ..ChaosPlan::default()
    };
    let refused = within("the refusal", async {
        loop {
            match client.set_chaos("replicated", plan, LONG).await {
                // Not hosted here yet: the metadata group's apply is on its way.
                Err(e) if e.code() == Some(ErrorCode::NotFound) => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                other => return other,
            }
        }
    })
    .await;
    let e = refused.expect_err("chaos on a replicated queue");
    assert_eq!(e.code(), Some(ErrorCode::NotAllowed), "{e}");
    assert!(e.to_string().contains("replicated"), "{e}");
    assert!(client.list_chaos().await.unwrap().entries.is_empty());
}
