//! The dashboard's side of the HTTP port end to end (its pages are clicked through in
//! tests/browser/): its files are served without credentials, a script's refused request
//! carries no browser challenge, and the history its charts open with is sampled from the
//! queues' counters.

use std::time::Duration;

use serde_json::Value;
use sluice_client::{Client, PublishOptions, QueueOptions};
use sluice_tests::broker::BrokerProcess;
use sluice_tests::http::{HttpClient, HttpResponse};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn start() -> (BrokerProcess, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temporary directory");
    let process = BrokerProcess::start(&dir.path().join("data"), &[]);
    (process, dir)
}

use sluice_tests::broker::within;

fn json_of(r: &HttpResponse) -> Value {
    assert_eq!(r.status, 200, "{r:?}");
    serde_json::from_str(&r.body).unwrap_or_else(|e| panic!("{e}: {r:?}"))
}

/// Sends `request` as it is and returns the answer's head (status line and headers).
async fn raw_head(addr: &str, request: &str) -> String {
    within("raw request", async {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).await.unwrap();
        let answer = String::from_utf8_lossy(&answer).into_owned();
        answer
            .split("\r\n\r\n")
            .next()
            .unwrap()
            .to_ascii_lowercase()
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_and_its_files_are_served_without_credentials() {
    let (broker, _dir) = start();
    let http = HttpClient::anonymous(broker.http_addr().unwrap());
    let page = http.get("/").await;
    assert_eq!(page.status, 200, "{page:?}");
    assert_eq!(
        page.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    assert!(page.body.contains("/dashboard/app.js"), "{}", page.body);
    for (path, media_type) in [
        ("/dashboard/app.js", "text/javascript; charset=utf-8"),
        ("/dashboard/app.css", "text/css; charset=utf-8"),
        ("/favicon.svg", "image/svg+xml"),
    ] {
        let file = http.get(path).await;
        assert_eq!(file.status, 200, "{path}: {file:?}");
        assert_eq!(file.header("content-type"), Some(media_type), "{path}");
        assert!(file.body.len() > 100, "{path}");
    }
    // The data stays behind the login.
    assert_eq!(http.get("/api/overview/history").await.status, 401);
    broker.stop_and_log();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_request_from_a_script_carries_no_browser_challenge() {
    let (broker, _dir) = start();
    let addr = broker.http_addr().unwrap().to_owned();
    let wrong = "Authorization: Basic Z3Vlc3Q6d3Jvbmc=\r\n"; // guest:wrong
    let scripted = raw_head(
        &addr,
        &format!(
            "GET /api/overview HTTP/1.1\r\nHost: {addr}\r\n{wrong}X-Requested-With: sluice-dashboard\r\nConnection: close\r\n\r\n"
        ),
    )
    .await;
    assert!(scripted.starts_with("http/1.1 401"), "{scripted}");
    assert!(!scripted.contains("www-authenticate"), "{scripted}");
    // Without the header a browser or curl is still asked for credentials.
    let plain = raw_head(
        &addr,
        &format!("GET /api/overview HTTP/1.1\r\nHost: {addr}\r\n{wrong}Connection: close\r\n\r\n"),
    )
    .await;
    assert!(plain.starts_with("http/1.1 401"), "{plain}");
    assert!(
        plain.contains("www-authenticate: basic realm=\"sluice\""),
        "{plain}"
    );
    broker.stop_and_log();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_samples_the_broker_and_each_queue_with_rates_from_counters() {
    let (broker, _dir) = start();
    let http = HttpClient::new(broker.http_addr().unwrap(), "guest", "guest");
    let client = within("connect", Client::connect(&broker.url()))
        .await
        .unwrap();
    client
        .declare_queue("work", QueueOptions::new())
        .await
        .unwrap();
    for i in 0..5 {
        within(
            "publish",
            client.publish("", "work", format!("m{i}"), &PublishOptions::new()),
        )
        .await
        .unwrap();
    }
    // The sampler reads the counters every 5 s: wait for a sample that saw all five.
    let history = within("a sample with the five messages", async {
        loop {
            let h = json_of(&http.get("/api/queues/work/history").await);
            if h["samples"]
                .as_array()
                .unwrap()
                .last()
                .is_some_and(|s| s["ready"] == 5)
            {
                return h;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await;
    assert_eq!(history["interval_ms"], 5000);
    let samples = history["samples"].as_array().unwrap();
    // Rates are counts over each sample's time: together they add up to the five publishes.
    let published: f64 = samples
        .iter()
        .map(|s| s["publish_rate"].as_f64().unwrap() * 5.0)
        .sum();
    assert!((published - 5.0).abs() < 0.5, "{history}");
    assert!(samples.iter().all(|s| s["ack_rate"] == 0.0), "{history}");
    let at: Vec<u64> = samples
        .iter()
        .map(|s| s["at_ms"].as_u64().unwrap())
        .collect();
    assert!(at.windows(2).all(|w| w[0] < w[1]), "{history}");

    let overview = json_of(&http.get("/api/overview/history").await);
    let last = overview["samples"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    assert_eq!(last["ready"], 5, "{overview}");
    assert_eq!(last["connections"], 1, "{overview}");

    let missing = http.get("/api/queues/no-such-queue/history").await;
    assert_eq!(missing.status, 404, "{missing:?}");
    client.close().await.unwrap();
    broker.stop_and_log();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_shows_how_many_messages_it_dead_lettered_by_reason() {
    let (broker, _dir) = start();
    let http = HttpClient::new(broker.http_addr().unwrap(), "guest", "guest");
    let declare = |name: &str, arguments: &str| {
        let http = http.clone();
        let (path, body) = (
            format!("/api/queues/{name}"),
            format!("{{\"arguments\": {arguments}}}"),
        );
        async move { json_of(&http.put(&path, &body).await) }
    };
    declare("dead", "{}").await;
    declare(
        "small",
        r#"{"max_length": 1, "overflow": "drop-head", "dead_letter_exchange": "", "dead_letter_routing_key": "dead"}"#,
    )
    .await;
    for i in 0..3 {
        let r = http
            .post(
                "/api/exchanges/amq.default/publish",
                &format!(r#"{{"routing_key": "small", "payload": "m{i}"}}"#),
            )
            .await;
        assert_eq!(r.status, 200, "{r:?}");
    }
    // Counted once the copies are stored in `dead`.
    let queue = within("two dead-lettered", async {
        loop {
            let q = json_of(&http.get("/api/queues/small").await);
            if q["dead_lettered_by_reason"]["maxlen"] == 2 {
                return q;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert_eq!(
        queue["dead_lettered_by_reason"],
        serde_json::json!({"delivery-limit": 0, "expired": 0, "maxlen": 2, "rejected": 0})
    );
    assert_eq!(queue["message_stats"]["dead_lettered"], 2);
    broker.stop_and_log();
}
