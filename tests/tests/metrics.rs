//! `/metrics` end to end: a real broker with known traffic, its scrape checked against what
//! happened, against `promtool`, against the README's list of metrics (the contract), and
//! against the PromQL queries that deploy/keda scales workers with.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::{json, Value};
use sluice_client::{
    Client, ConsumeOptions, Consumer, ErrorCode, ExchangeKind, ExchangeOptions, Message,
    PublishOptions, QueueOptions,
};
use sluice_tests::broker::{BrokerProcess, WAIT};
use sluice_tests::http::{HttpClient, HttpResponse};

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A broker with its HTTP API.
struct Broker {
    process: BrokerProcess,
    http: HttpClient,
    _dir: tempfile::TempDir,
}

impl Broker {
    fn start() -> Broker {
        let dir = tempfile::tempdir().expect("temporary directory");
        // With an OTLP endpoint (where nothing listens), so the exporter's counters show.
        let process = BrokerProcess::start(
            &dir.path().join("data"),
            &["--otlp-endpoint", "http://127.0.0.1:9"],
        );
        let addr = process.http_addr().expect("the HTTP API is on");
        let http = HttpClient::new(addr, "guest", "guest");
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

    /// A scrape in the Prometheus text format, parsed.
    async fn scrape(&self) -> Scrape {
        let r = self.http.get_accepting("/metrics", "text/plain").await;
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.header("content-type"), Some(PROMETHEUS_TEXT));
        Scrape::parse(&r.body, TextFormat::Prometheus)
    }

    /// Scrapes until `done` holds (counters move as the queues handle what clients sent).
    async fn scrape_until(&self, what: &str, done: impl Fn(&Scrape) -> bool) -> Scrape {
        let deadline = Instant::now() + WAIT;
        loop {
            let scrape = self.scrape().await;
            if done(&scrape) {
                return scrape;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: not within {WAIT:?}:\n{scrape:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn stop(self) {
        let log = self.process.stop_and_log();
        assert!(!log.contains("assumes a crash"), "{log}");
    }
}

use sluice_tests::broker::within;

async fn next_message(consumer: &mut Consumer) -> Message {
    within("a delivery", consumer.next())
        .await
        .expect("the consumer goes on")
        .expect("a message")
}

fn json_of(r: &HttpResponse) -> Value {
    assert_eq!(r.status, 200, "{r:?}");
    serde_json::from_str(&r.body).unwrap_or_else(|e| panic!("{e}: {r:?}"))
}

// ---------------------------------------------------------------------------------------
// The scrape, parsed
// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TextFormat {
    Prometheus,
    OpenMetrics,
}

/// One sample line.
#[derive(Debug, Clone, PartialEq)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// A parsed scrape: the families' types (by the name a sample carries: counters with
/// `_total`, histograms without their suffixes) and every sample.
#[derive(Debug)]
struct Scrape {
    types: BTreeMap<String, String>,
    samples: Vec<Sample>,
}

impl Scrape {
    fn parse(text: &str, format: TextFormat) -> Scrape {
        let mut types = BTreeMap::new();
        let mut samples = Vec::new();
        let mut ended = false;
        for line in text.lines() {
            assert!(!ended, "text after # EOF: {line}");
            if line == "# EOF" {
                ended = true;
            } else if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').expect("# TYPE name type");
                // OpenMetrics names a counter's family without `_total`; its samples have it.
                let name = match (format, kind) {
                    (TextFormat::OpenMetrics, "counter") => format!("{name}_total"),
                    _ => name.to_owned(),
                };
                types.insert(name, kind.to_owned());
            } else if !line.starts_with('#') {
                samples.push(parse_sample(line));
            }
        }
        assert_eq!(
            ended,
            format == TextFormat::OpenMetrics,
            "OpenMetrics ends with # EOF, the Prometheus text format does not"
        );
        Scrape { types, samples }
    }

    /// The value of the sample `name` with exactly `labels` (a queue's series in vhost `/`
    /// unless `labels` name another).
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let mut wanted: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        if wanted.contains_key("queue") {
            wanted.entry("vhost".into()).or_insert_with(|| "/".into());
        }
        self.samples
            .iter()
            .find(|s| s.name == name && s.labels == wanted)
            .map(|s| s.value)
    }

    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.get(name, labels)
            .unwrap_or_else(|| panic!("no sample {name} {labels:?} in\n{self:?}"))
    }

    /// The value of a queue's metric.
    fn queue(&self, name: &str, queue: &str) -> f64 {
        self.value(name, &[("queue", queue)])
    }

    /// The family a sample belongs to (histogram samples carry a suffix).
    fn family_of(&self, sample: &str) -> Option<&str> {
        if let Some((family, _)) = self.types.get_key_value(sample) {
            return Some(family);
        }
        ["_bucket", "_sum", "_count"].iter().find_map(|suffix| {
            let base = sample.strip_suffix(suffix)?;
            let (family, kind) = self.types.get_key_value(base)?;
            (kind == "histogram").then_some(family.as_str())
        })
    }
}

fn parse_sample(line: &str) -> Sample {
    let (series, value) = line.rsplit_once(' ').expect("name and value");
    let value = match value {
        "+Inf" => f64::INFINITY,
        v => v.parse().unwrap_or_else(|e| panic!("{e}: {line}")),
    };
    let (name, labels) = match series.split_once('{') {
        None => (series, BTreeMap::new()),
        Some((name, rest)) => {
            let body = rest.strip_suffix('}').expect("labels end with }");
            (name, parse_labels(body))
        }
    };
    Sample {
        name: name.to_owned(),
        labels,
        value,
    }
}

/// `k="v",k2="v2"` with `\"`, `\\` and `\n` escapes.
fn parse_labels(body: &str) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    let mut chars = body.chars().peekable();
    while chars.peek().is_some() {
        let key: String = chars.by_ref().take_while(|&c| c != '=').collect();
        assert_eq!(chars.next(), Some('"'), "label {key} opens a quote");
        let mut value = String::new();
        loop {
            match chars.next().expect("label value ends") {
                '"' => break,
                '\\' => match chars.next() {
                    Some('n') => value.push('\n'),
                    Some(c) => value.push(c),
                    None => panic!("escape at the end"),
                },
                c => value.push(c),
            }
        }
        labels.insert(key, value);
        if chars.peek() == Some(&',') {
            chars.next();
        }
    }
    labels
}

// ---------------------------------------------------------------------------------------
// Traffic
// ---------------------------------------------------------------------------------------

/// Queue `work` dead-letters into `dead` through the direct exchange `dlx`.
async fn declare_work_and_dead(client: &Client) {
    client
        .declare_exchange("dlx", ExchangeKind::Direct, ExchangeOptions::new())
        .await
        .unwrap();
    client
        .declare_queue("dead", QueueOptions::new())
        .await
        .unwrap();
    client
        .bind("dead", "dlx", "work", Default::default())
        .await
        .unwrap();
    client
        .declare_queue("work", QueueOptions::new().dead_letter_exchange("dlx"))
        .await
        .unwrap();
}

/// Publishes `n` persistent messages to `queue` and waits for their confirms.
async fn publish(client: &Client, queue: &str, n: usize) {
    for i in 0..n {
        within(
            "publish",
            client.publish("", queue, format!("m{i}"), &PublishOptions::new()),
        )
        .await
        .unwrap();
    }
}

/// Publish 10 to `work`; ack 7, nack 1 with requeue (then ack its redelivery), reject 2.
async fn settle_known_traffic(client: &Client) {
    publish(client, "work", 10).await;
    let mut consumer = client
        .consume("work", ConsumeOptions::new().prefetch(20))
        .await
        .unwrap();
    let mut held = Vec::new();
    for _ in 0..10 {
        held.push(next_message(&mut consumer).await);
    }
    for m in &held[..7] {
        m.ack().await.unwrap();
    }
    held[7].nack(true).await.unwrap();
    held[8].reject().await.unwrap();
    held[9].reject().await.unwrap();
    let again = next_message(&mut consumer).await;
    assert!(again.redelivered);
    again.ack().await.unwrap();
    consumer.cancel().await.unwrap();
}

// ---------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_match_the_traffic_that_was_sent() {
    let broker = Broker::start();
    let client = broker.client().await;
    declare_work_and_dead(&client).await;
    settle_known_traffic(&client).await;

    let s = broker
        .scrape_until("acks, nack and rejects counted", |s| {
            s.get("sluice_queue_acked_messages_total", &[("queue", "work")]) == Some(8.0)
                && s.get(
                    "sluice_queue_dead_lettered_messages_total",
                    &[("queue", "work"), ("reason", "rejected")],
                ) == Some(2.0)
                && s.get(
                    "sluice_queue_confirmed_messages_total",
                    &[("queue", "dead")],
                ) == Some(2.0)
                && s.get("sluice_queue_ready_messages", &[("queue", "dead")]) == Some(2.0)
                && s.get("sluice_queue_consumers", &[("queue", "work")]) == Some(0.0)
                && s.get("sluice_queue_unacked_messages", &[("queue", "work")]) == Some(0.0)
        })
        .await;
    let work = |name: &str| s.queue(name, "work");
    assert_eq!(work("sluice_queue_published_messages_total"), 10.0);
    assert_eq!(work("sluice_queue_confirmed_messages_total"), 10.0);
    assert_eq!(work("sluice_queue_delivered_messages_total"), 11.0);
    assert_eq!(work("sluice_queue_redelivered_messages_total"), 1.0);
    assert_eq!(work("sluice_queue_nacked_messages_total"), 1.0);
    assert_eq!(work("sluice_queue_rejected_messages_total"), 2.0);
    assert_eq!(work("sluice_queue_expired_messages_total"), 0.0);
    assert_eq!(work("sluice_queue_ready_messages"), 0.0);
    assert_eq!(work("sluice_queue_unacked_messages"), 0.0);
    assert_eq!(work("sluice_queue_message_bytes"), 0.0);
    // Reasons that did not happen have no series.
    for reason in ["expired", "maxlen", "delivery-limit"] {
        let labels = [("queue", "work"), ("reason", reason)];
        assert_eq!(
            s.get("sluice_queue_dead_lettered_messages_total", &labels),
            None
        );
    }
    // The dead-letter queue stored the two rejected messages.
    assert_eq!(
        s.queue("sluice_queue_published_messages_total", "dead"),
        2.0
    );
    assert_eq!(s.queue("sluice_queue_ready_messages", "dead"), 2.0);
    assert!(s.queue("sluice_queue_message_bytes", "dead") >= 4.0);
    assert_eq!(s.value("sluice_queues", &[]), 2.0);
    assert_eq!(s.value("sluice_connections", &[]), 1.0);
    assert_eq!(s.value("sluice_publishing_blocked", &[]), 0.0);
    assert!(s.value("sluice_disk_free_bytes", &[]) > 0.0);

    // The histograms moved with the traffic.
    assert!(s.value("sluice_publish_confirm_seconds_count", &[]) >= 10.0);
    assert_eq!(s.value("sluice_delivery_ack_seconds_count", &[]), 8.0);
    assert_eq!(
        s.value("sluice_delivery_ack_seconds_bucket", &[("le", "+Inf")]),
        8.0
    );
    // 10 published and 2 dead-lettered copies, all persistent in durable queues.
    assert_eq!(s.value("sluice_group_commit_messages_sum", &[]), 12.0);
    assert!(s.value("sluice_fdatasync_seconds_count", &[]) >= 1.0);
    assert!(s.value("sluice_fdatasync_seconds_sum", &[]) > 0.0);

    // The same counters as JSON, per queue and in total.
    let expected_work = json!({
        "published": 10, "delivered": 11, "redelivered": 1, "acked": 8, "nacked": 1,
        "rejected": 2, "expired": 0, "dead_lettered": 2, "confirmed": 10,
        "duplicates_dropped": 0
    });
    let shown = json_of(&broker.http.get("/api/queues/work").await);
    assert_eq!(shown["message_stats"], expected_work);
    assert_eq!(shown["name"], "work");
    let listed = json_of(&broker.http.get("/api/queues").await);
    assert_eq!(listed[1]["name"], "work");
    assert_eq!(listed[1]["message_stats"], expected_work);
    assert_eq!(listed[0]["message_stats"]["published"], 2);
    let overview = json_of(&broker.http.get("/api/overview").await);
    assert_eq!(
        overview["message_stats"],
        json!({
            "published": 12, "delivered": 11, "redelivered": 1, "acked": 8, "nacked": 1,
            "rejected": 2, "expired": 0, "dead_lettered": 2, "confirmed": 12,
            "duplicates_dropped": 0
        })
    );

    // A deleted queue's series go; the broker's totals keep what it counted.
    client
        .delete_queue("work", Default::default())
        .await
        .unwrap();
    let s = broker.scrape().await;
    assert_eq!(
        s.get(
            "sluice_queue_published_messages_total",
            &[("queue", "work")]
        ),
        None
    );
    let overview = json_of(&broker.http.get("/api/overview").await);
    assert_eq!(overview["message_stats"]["published"], 12);
    assert_eq!(overview["message_stats"]["acked"], 8);
    broker.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_and_expiries_are_counted_by_code_and_reason() {
    let broker = Broker::start();
    let client = broker.client().await;
    client
        .declare_queue(
            "small",
            QueueOptions::new()
                .max_length(1)
                .overflow(sluice_client::Overflow::RejectPublish),
        )
        .await
        .unwrap();
    publish(&client, "small", 1).await;
    let refused = client
        .publish("", "small", "one too many", &PublishOptions::new())
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Some(ErrorCode::QueueFull));
    let unroutable = client
        .publish("", "nowhere", "x", &PublishOptions::new().mandatory())
        .await
        .unwrap_err();
    assert_eq!(unroutable.code(), Some(ErrorCode::Unroutable));

    // A message whose TTL runs out goes to the dead-letter exchange as expired.
    declare_work_and_dead(&client).await;
    client
        .publish(
            "",
            "work",
            "short-lived",
            &PublishOptions::new().expiration(Duration::from_millis(1)),
        )
        .await
        .unwrap();
    // The queue expires it by itself (eagerly, within 100 ms of its deadline).
    let s = broker
        .scrape_until("the expiry dead-lettered", |s| {
            s.get(
                "sluice_queue_dead_lettered_messages_total",
                &[("queue", "work"), ("reason", "expired")],
            ) == Some(1.0)
                && s.get("sluice_queue_ready_messages", &[("queue", "dead")]) == Some(1.0)
        })
        .await;
    let small_full = [("queue", "small"), ("code", "QUEUE_FULL")];
    assert_eq!(
        s.value("sluice_queue_refused_messages_total", &small_full),
        1.0
    );
    assert_eq!(
        s.value(
            "sluice_publish_refused_messages_total",
            &[("code", "UNROUTABLE")]
        ),
        1.0
    );
    assert_eq!(
        s.queue("sluice_queue_published_messages_total", "small"),
        1.0
    );
    assert_eq!(s.queue("sluice_queue_expired_messages_total", "work"), 1.0);
    assert_eq!(s.queue("sluice_queue_ready_messages", "dead"), 1.0);
    assert!(client.get("work").await.unwrap().is_none());
    // Codes that refused nothing have no series.
    let refusal_codes: BTreeSet<&str> = s
        .samples
        .iter()
        .filter(|x| x.name == "sluice_queue_refused_messages_total")
        .map(|x| x.labels["code"].as_str())
        .collect();
    assert_eq!(refusal_codes, BTreeSet::from(["QUEUE_FULL"]));
    let overview = json_of(&broker.http.get("/api/overview").await);
    assert_eq!(overview["message_stats"]["expired"], 1);
    assert_eq!(overview["message_stats"]["dead_lettered"], 1);
    broker.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_need_no_credentials_while_the_api_still_does() {
    let broker = Broker::start();
    let anonymous = HttpClient::anonymous(broker.process.http_addr().unwrap());
    // No Accept header, or Prometheus' own: OpenMetrics.
    for r in [
        anonymous.get("/metrics").await,
        anonymous
            .get_accepting(
                "/metrics",
                "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5,*/*;q=0.1",
            )
            .await,
    ] {
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.header("content-type"), Some(OPENMETRICS));
        assert!(r.body.ends_with("# EOF\n"), "{}", r.body);
    }
    let text = anonymous
        .get_accepting("/metrics", "text/plain;version=0.0.4")
        .await;
    assert_eq!(text.status, 200);
    assert_eq!(text.header("content-type"), Some(PROMETHEUS_TEXT));
    assert!(!text.body.contains("# EOF"));
    assert_eq!(anonymous.get("/api/overview").await.status, 401);
    assert_eq!(
        HttpClient::new(broker.process.http_addr().unwrap(), "guest", "wrong")
            .get("/api/overview")
            .await
            .status,
        401
    );
    broker.stop();
}

/// Traffic that makes every metric of the README show at least one series.
async fn make_every_series(broker: &Broker) -> Client {
    let client = broker.client().await;
    declare_work_and_dead(&client).await;
    settle_known_traffic(&client).await;
    client
        .declare_queue(
            "small",
            QueueOptions::new()
                .max_length(1)
                .overflow(sluice_client::Overflow::RejectPublish),
        )
        .await
        .unwrap();
    publish(&client, "small", 1).await;
    client
        .declare_queue("urgent", QueueOptions::new().max_priority(2))
        .await
        .unwrap();
    let _ = client
        .publish("", "small", "refused", &PublishOptions::new())
        .await;
    let _ = client
        .publish("", "nowhere", "x", &PublishOptions::new().mandatory())
        .await;
    // A dead letter with no exchange to go to.
    client
        .declare_queue("orphan", QueueOptions::new().dead_letter_exchange("ghost"))
        .await
        .unwrap();
    publish(&client, "orphan", 1).await;
    let orphan = client.get("orphan").await.unwrap().expect("a message");
    orphan.reject().await.unwrap();
    // A chaos injection (docs/chaos.md): its gauge and its counters by mode.
    let chaos = sluice_client::ChaosPlan {
        duplicate: Some(sluice_client::ChaosRate(100)),
        ..sluice_client::ChaosPlan::default()
    };
    client
        .set_chaos("urgent", chaos, std::time::Duration::from_secs(600))
        .await
        .unwrap();
    broker
        .scrape_until("every series", |s| {
            s.get(
                "sluice_queue_refused_messages_total",
                &[("queue", "small"), ("code", "QUEUE_FULL")],
            )
            .is_some()
                && s.get(
                    "sluice_queue_dead_letters_dropped_messages_total",
                    &[("queue", "orphan"), ("reason", "rejected")],
                )
                .is_some()
                && s.get("sluice_queue_acked_messages_total", &[("queue", "work")]) == Some(8.0)
        })
        .await;
    client
}

/// `promtool`, from Debian's `prometheus` package (scripts/test installs it).
fn promtool() -> Command {
    let found = Command::new("promtool").arg("--version").output();
    assert!(
        found.is_ok_and(|o| o.status.success()),
        "promtool is missing: install Debian's `prometheus` package (scripts/test does)"
    );
    Command::new("promtool")
}

fn run_with_stdin(mut command: Command, input: &str) -> std::process::Output {
    use std::io::Write;
    let mut child = command
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool starts");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    child.wait_with_output().expect("promtool ends")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promtool_finds_the_scrape_well_formed_and_both_formats_agree() {
    let broker = Broker::start();
    let _client = make_every_series(&broker).await;
    let text = broker
        .http
        .get_accepting("/metrics", "text/plain; version=0.0.4")
        .await
        .body;
    let checked = run_with_stdin(
        {
            let mut c = promtool();
            c.args(["check", "metrics"]);
            c
        },
        &text,
    );
    assert!(
        checked.status.success() && checked.stdout.is_empty() && checked.stderr.is_empty(),
        "promtool check metrics: {}{}\n{text}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );

    // The OpenMetrics text has the same families and series (values may have moved between
    // the two scrapes: the age gauge, the disk's free space).
    let om = broker.http.get("/metrics").await.body;
    let (a, b) = (
        Scrape::parse(&text, TextFormat::Prometheus),
        Scrape::parse(&om, TextFormat::OpenMetrics),
    );
    assert_eq!(a.types, b.types);
    // Bucket bounds are the same numbers, written `1` in one format and `1.0` in the other.
    let series = |s: &Scrape| -> BTreeSet<(String, BTreeMap<String, String>)> {
        s.samples
            .iter()
            .map(|x| {
                let mut labels = x.labels.clone();
                if let Some(le) = labels.get_mut("le") {
                    *le = le.parse::<f64>().unwrap().to_string();
                }
                (x.name.clone(), labels)
            })
            .collect()
    };
    assert_eq!(series(&a), series(&b));
    // Seconds and bytes carry their unit in OpenMetrics.
    assert!(om.contains("# UNIT sluice_queue_oldest_ready_age_seconds seconds\n"));
    assert!(om.contains("# UNIT sluice_disk_free_bytes bytes\n"));
    broker.stop();
}

/// One row of the README's table of metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Documented {
    name: String,
    kind: String,
    labels: BTreeSet<String>,
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace")
        .to_path_buf()
}

/// The table between `<!-- metrics-table: begin -->` and `<!-- metrics-table: end -->`.
fn documented_metrics() -> Vec<Documented> {
    let readme = std::fs::read_to_string(repo_root().join("README.md")).unwrap();
    let table = readme
        .split_once("<!-- metrics-table: begin -->")
        .and_then(|(_, rest)| rest.split_once("<!-- metrics-table: end -->"))
        .expect("README marks its table of metrics")
        .0;
    let unquote = |cell: &str| cell.trim().trim_matches('`').to_owned();
    let rows: Vec<Documented> = table
        .lines()
        .filter(|l| l.starts_with("| `"))
        .map(|l| {
            let cells: Vec<&str> = l.split('|').collect();
            Documented {
                name: unquote(cells[1]),
                kind: cells[2].trim().to_owned(),
                labels: cells[3]
                    .split(',')
                    .map(unquote)
                    .filter(|l| !l.is_empty())
                    .collect(),
            }
        })
        .collect();
    assert!(rows.len() >= 20, "the README lists the metrics: {rows:?}");
    rows
}

/// What a scrape shows of each family: its type and the label names of its series
/// (histograms' `le` left out).
fn exported_metrics(s: &Scrape) -> Vec<Documented> {
    s.types
        .iter()
        .map(|(name, kind)| {
            let label_sets: BTreeSet<BTreeSet<String>> = s
                .samples
                .iter()
                .filter(|x| s.family_of(&x.name) == Some(name.as_str()))
                .map(|x| x.labels.keys().filter(|k| *k != "le").cloned().collect())
                .collect();
            assert_eq!(label_sets.len(), 1, "{name}: one label set: {label_sets:?}");
            Documented {
                name: name.clone(),
                kind: kind.clone(),
                labels: label_sets.into_iter().next().unwrap(),
            }
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_readme_lists_is_exported_with_its_type_and_labels() {
    let broker = Broker::start();
    let _client = make_every_series(&broker).await;
    let mut documented = documented_metrics();
    let mut exported = exported_metrics(&broker.scrape().await);
    documented.sort_by(|a, b| a.name.cmp(&b.name));
    exported.sort_by(|a, b| a.name.cmp(&b.name));
    assert_eq!(
        exported, documented,
        "the scrape and README's table of metrics differ"
    );
    broker.stop();
}

/// The `query:` lines of deploy/keda/scaledobject.yaml.
fn keda_queries() -> Vec<String> {
    let path = repo_root().join("deploy/keda/scaledobject.yaml");
    let yaml = std::fs::read_to_string(&path).unwrap();
    let queries: Vec<String> = yaml
        .lines()
        .filter_map(|l| l.trim().strip_prefix("query: "))
        .map(str::to_owned)
        .collect();
    assert_eq!(queries.len(), 2, "{}: {queries:?}", path.display());
    queries
}

/// Evaluates `expr` with Prometheus' own engine (`promtool test rules`, offline) over the
/// scraped `series`, and checks that it gives `expected`.
fn promql_gives(series: &[&Sample], expr: &str, expected: f64) -> Result<(), String> {
    let dir = tempfile::tempdir().unwrap();
    let mut input = String::new();
    for s in series {
        let labels: Vec<String> = s
            .labels
            .iter()
            .map(|(k, v)| format!("{k}={}", serde_json::to_string(v).unwrap()))
            .collect();
        let selector = format!("{}{{{}}}", s.name, labels.join(","));
        input.push_str(&format!(
            "      - series: {}\n        values: '{}'\n",
            serde_json::to_string(&selector).unwrap(),
            s.value
        ));
    }
    let test = format!(
        "rule_files: []\nevaluation_interval: 15s\ntests:\n  - interval: 15s\n    input_series:\n{input}    promql_expr_test:\n      - expr: {}\n        eval_time: 0s\n        exp_samples:\n          - labels: '{{}}'\n            value: {expected}\n",
        serde_json::to_string(expr).unwrap()
    );
    let file = dir.path().join("keda.test.yml");
    std::fs::write(&file, &test).unwrap();
    let out = promtool()
        .args(["test", "rules"])
        .arg(&file)
        .output()
        .expect("promtool runs");
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}{}\n{test}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_keda_queries_give_the_depth_and_age_the_broker_reports() {
    let broker = Broker::start();
    let client = broker.client().await;
    client
        .declare_queue("tasks", QueueOptions::new())
        .await
        .unwrap();
    for name in ["other", "idle"] {
        client
            .declare_queue(name, QueueOptions::new())
            .await
            .unwrap();
    }
    let first_publish = Instant::now();
    publish(&client, "tasks", 5).await;
    publish(&client, "other", 3).await;
    // A worker holds two messages unacked: they are not ready, and the depth the autoscaler
    // sees excludes them.
    let mut worker = client
        .consume("tasks", ConsumeOptions::new().prefetch(2))
        .await
        .unwrap();
    let _held = [
        next_message(&mut worker).await,
        next_message(&mut worker).await,
    ];
    let inspected = client.inspect_queue("tasks").await.unwrap();
    assert_eq!((inspected.ready, inspected.unacked), (3, 2));
    // The oldest ready message has waited a few milliseconds by now: the age is above zero.
    let s = broker
        .scrape_until("the deliveries counted and the age above zero", |s| {
            s.get("sluice_queue_unacked_messages", &[("queue", "tasks")]) == Some(2.0)
                && s.get(
                    "sluice_queue_oldest_ready_age_seconds",
                    &[("queue", "tasks")],
                )
                .is_some_and(|age| age > 0.0)
        })
        .await;
    assert_eq!(
        s.queue("sluice_queue_ready_messages", "tasks"),
        inspected.ready as f64
    );
    let age = s.queue("sluice_queue_oldest_ready_age_seconds", "tasks");
    assert!(age <= first_publish.elapsed().as_secs_f64(), "age {age}");
    // A queue with nothing ready is 0 s old.
    assert_eq!(
        s.queue("sluice_queue_oldest_ready_age_seconds", "idle"),
        0.0
    );

    let queries = keda_queries();
    let expected = [inspected.ready as f64, age];
    for (query, expected) in queries.iter().zip(expected) {
        // Every metric the query names is exported, per queue, with the label it selects.
        let metric = query
            .split(['(', '{'])
            .nth(1)
            .expect("aggregation(metric{...})");
        let series: Vec<&Sample> = s.samples.iter().filter(|x| x.name == metric).collect();
        assert!(
            series
                .iter()
                .any(|x| x.labels.get("queue").map(String::as_str) == Some("tasks")),
            "{query}: no {metric} for queue tasks"
        );
        let per_queue = |x: &&Sample| x.labels.keys().eq(["queue", "vhost"].iter().copied());
        assert!(series.iter().all(per_queue), "{series:?}");
        promql_gives(&series, query, expected).unwrap_or_else(|e| panic!("{query}: {e}"));
    }
    broker.stop();
}
