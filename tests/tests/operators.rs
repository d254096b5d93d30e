//! Operators acting on other connections, over the wire protocol and through the `sluice`
//! command line: listing connections, closing one (`CONNECTION_FORCED` with the operator's
//! reason, its unacked messages redelivered), cancelling a consumer (`CONSUMER_CANCELLED`,
//! its unacked messages returned, the connection kept).

use std::io::Read;
use std::process::Stdio;
use std::thread::{self, JoinHandle};

use futures_util::StreamExt;
use serde_json::Value;
use sluice_client::{
    Client, CloseReason, ConsumeOptions, Consumer, Error, ErrorCode, Message, PublishOptions,
    QueueOptions,
};
use sluice_tests::broker::{sluice_command, wait_bounded, BrokerProcess, WAIT};

struct Broker {
    process: BrokerProcess,
    _dir: tempfile::TempDir,
}

impl Broker {
    fn start() -> Broker {
        let dir = tempfile::tempdir().expect("temporary directory");
        let process = BrokerProcess::start(&dir.path().join("data"), &[]);
        Broker { process, _dir: dir }
    }

    async fn client(&self, name: &str) -> Client {
        let url = self.process.url();
        // These tests watch connections an operator closes end: no reconnecting.
        let connect = Client::builder()
            .name(name)
            .reconnect_timeout(std::time::Duration::ZERO)
            .connect(&url);
        within("connect", connect).await.expect("connect")
    }

    /// Runs `sluice ARGS --url <this broker>` off the runtime's threads, bounded in time.
    async fn sluice(&self, args: &[&str]) -> Run {
        let mut args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
        args.extend(["--url".to_owned(), self.process.cli_url()]);
        tokio::task::spawn_blocking(move || run_sluice(&args))
            .await
            .expect("the command's thread")
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!("broker log:\n{}", self.process.log());
        }
    }
}

/// What a `sluice` command did.
#[derive(Debug)]
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

fn run_sluice(args: &[String]) -> Run {
    let mut child = sluice_command()
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting sluice");
    let stdout = drain(child.stdout.take().expect("piped"));
    let stderr = drain(child.stderr.take().expect("piped"));
    let status = wait_bounded(child, WAIT)
        .unwrap_or_else(|| panic!("`sluice {args:?}` did not finish within {WAIT:?}"));
    let run = Run {
        code: status.code(),
        stdout: stdout.join().expect("stdout reader"),
        stderr: stderr.join().expect("stderr reader"),
    };
    eprintln!("$ sluice {args:?}\n{}{}", run.stdout, run.stderr);
    run
}

fn drain(mut pipe: impl Read + Send + 'static) -> JoinHandle<String> {
    thread::spawn(move || {
        let mut text = String::new();
        let _ = pipe.read_to_string(&mut text);
        text
    })
}

use sluice_tests::broker::within;

/// Declares `queue` and publishes `n` confirmed messages `m0`, `m1`, ... to it.
async fn fill(client: &Client, queue: &str, n: usize) {
    client
        .declare_queue(queue, QueueOptions::new())
        .await
        .expect("declare");
    for i in 0..n {
        within(
            "publish",
            client.publish("", queue, format!("m{i}"), &PublishOptions::new()),
        )
        .await
        .expect("confirmed");
    }
}

/// Takes `n` messages from a consumer, without settling them.
async fn take(consumer: &mut Consumer, n: usize) -> Vec<Message> {
    let mut taken = Vec::new();
    while taken.len() < n {
        let next = within("a delivery", consumer.next()).await;
        taken.push(next.expect("the stream goes on").expect("a message"));
    }
    taken
}

/// The id the broker gave the connection named `name`.
async fn connection_id(operator: &Client, name: &str) -> u64 {
    let connections = operator.list_connections().await.expect("list connections");
    connections
        .iter()
        .find(|c| c.connection_name.as_deref() == Some(name))
        .unwrap_or_else(|| panic!("no connection named {name} in {connections:?}"))
        .connection_id
}

fn bodies(messages: &[Message]) -> Vec<String> {
    let mut v: Vec<String> = messages
        .iter()
        .map(|m| String::from_utf8(m.body.to_vec()).expect("text"))
        .collect();
    v.sort();
    v
}

/// Waits for the client's connection to end, and returns why.
async fn closed(consumer: &mut Consumer) -> Error {
    loop {
        match within("the connection to end", consumer.next()).await {
            Some(Ok(_)) => continue,
            Some(Err(e)) => return e,
            None => panic!("the consumer ended without an error"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_connection_hears_the_operators_reason_and_its_messages_go_to_another_consumer() {
    let broker = Broker::start();
    let victim = broker.client("victim").await;
    fill(&victim, "jobs", 3).await;
    let mut consumer = victim
        .consume("jobs", ConsumeOptions::new().prefetch(10))
        .await
        .expect("consume");
    let held = take(&mut consumer, 3).await;
    assert!(held.iter().all(|m| !m.redelivered));

    let operator = broker.client("operator").await;
    let id = connection_id(&operator, "victim").await;
    operator
        .close_connection(id, "maintenance window")
        .await
        .expect("close");

    let error = closed(&mut consumer).await;
    match &error {
        Error::ConnectionClosed(CloseReason::Server {
            code: Some(ErrorCode::ConnectionForced),
            reason,
        }) => assert_eq!(reason, "maintenance window"),
        other => panic!("expected CONNECTION_FORCED, got {other:?}"),
    }
    assert!(error.to_string().contains("maintenance window"), "{error}");
    assert!(victim.is_closed());

    let mut other = operator
        .consume("jobs", ConsumeOptions::new().prefetch(10))
        .await
        .expect("consume");
    let again = take(&mut other, 3).await;
    assert_eq!(bodies(&again), ["m0", "m1", "m2"]);
    assert!(again.iter().all(|m| m.redelivered), "{again:?}");
    for m in again {
        m.ack().await.expect("ack");
    }
    // It leaves the listing once its last frames are written.
    within("the closed connection to leave the listing", async {
        loop {
            let listed = operator.list_connections().await.expect("list");
            if listed
                .iter()
                .all(|c| c.connection_name.as_deref() != Some("victim"))
            {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_consumer_hears_consumer_cancelled_and_its_connection_stays_open() {
    let broker = Broker::start();
    let victim = broker.client("victim").await;
    fill(&victim, "jobs", 2).await;
    let mut consumer = victim
        .consume(
            "jobs",
            ConsumeOptions::new().prefetch(10).consumer_tag("worker-1"),
        )
        .await
        .expect("consume");
    let held = take(&mut consumer, 2).await;

    let operator = broker.client("operator").await;
    let consumers = operator.list_consumers().await.expect("consumers");
    let listed = consumers
        .iter()
        .find(|c| c.consumer_tag == "worker-1")
        .expect("the consumer is listed");
    operator
        .cancel_consumer(listed.connection_id, "worker-1")
        .await
        .expect("cancel");

    match closed(&mut consumer).await {
        Error::ConsumerCancelled { code, reason } => {
            assert_eq!(code, ErrorCode::ConsumerCancelled);
            assert!(reason.contains("operator"), "{reason}");
        }
        other => panic!("expected CONSUMER_CANCELLED, got {other:?}"),
    }
    assert!(!victim.is_closed(), "the connection stays open");
    drop(held);
    // Its messages are back in the queue, marked: the same connection takes them again.
    let mut again = Vec::new();
    while again.len() < 2 {
        let got = victim.get("jobs").await.expect("get");
        let m = got.expect("the returned messages are ready");
        assert!(m.redelivered, "{m:?}");
        again.push(m);
    }
    assert_eq!(bodies(&again), ["m0", "m1"]);
    assert!(operator
        .list_consumers()
        .await
        .expect("consumers")
        .is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_connections_and_consumer_tags_are_not_found() {
    let broker = Broker::start();
    let operator = broker.client("operator").await;
    let own = connection_id(&operator, "operator").await;
    let e = operator.close_connection(999_999, "x").await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::NotFound), "{e}");
    let e = operator.cancel_consumer(own, "nobody").await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::NotFound), "{e}");
    let e = operator
        .cancel_consumer(999_999, "nobody")
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::NotFound), "{e}");
    // The errors had no effect on the connection that asked.
    assert!(operator.list_connections().await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sluice_connections_lists_a_named_client_with_the_fields_of_the_http_api() {
    let broker = Broker::start();
    let app = broker.client("billing-worker").await;
    fill(&app, "bills", 1).await;

    let run = broker.sluice(&["connections", "--json"]).await;
    assert_eq!(run.code, Some(0), "{run:?}");
    let listed: Value = serde_json::from_str(&run.stdout).expect("JSON");
    let rows = listed.as_array().expect("an array");
    let row = rows
        .iter()
        .find(|r| r["connection_name"] == "billing-worker")
        .unwrap_or_else(|| panic!("not listed: {listed}"));
    assert_eq!(row["user"], "guest");
    assert_eq!(row["client_product"], "sluice-client-rs");
    assert!(row["peer"]
        .as_str()
        .is_some_and(|p| p.starts_with("127.0.0.1:")));
    assert!(row["connected_at_ms"].as_u64().is_some_and(|t| t > 0));
    assert!(row["frames_in"].as_u64().is_some_and(|n| n >= 2), "{row}");
    for field in [
        "connection_id",
        "client_version",
        "bytes_in",
        "bytes_out",
        "frames_out",
        "unsettled_publishes",
        "consumers",
    ] {
        assert!(!row[field].is_null(), "{field} missing in {row}");
    }
    // The command's own connection is listed too, under the CLI's name.
    assert!(rows.iter().any(|r| r["connection_name"] == "sluice-cli"));

    let table = broker.sluice(&["connections"]).await;
    assert_eq!(table.code, Some(0), "{table:?}");
    let header = table.stdout.lines().next().expect("a header line");
    assert!(
        header.starts_with("ID") && header.contains("CONSUMERS"),
        "{header}"
    );
    assert!(table.stdout.contains("billing-worker"), "{}", table.stdout);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_closes_connections_and_cancels_consumers() {
    let broker = Broker::start();
    let victim = broker.client("victim").await;
    fill(&victim, "jobs", 1).await;
    let mut consumer = victim
        .consume("jobs", ConsumeOptions::new().consumer_tag("w"))
        .await
        .expect("consume");
    take(&mut consumer, 1).await;
    let operator = broker.client("operator").await;
    let id = connection_id(&operator, "victim").await.to_string();

    let run = broker.sluice(&["cancel-consumer", &id, "w"]).await;
    assert_eq!(run.code, Some(0), "{run:?}");
    assert_eq!(
        run.stdout,
        format!("consumer 'w' of connection {id} cancelled\n")
    );
    assert_eq!(
        closed(&mut consumer).await.code(),
        Some(ErrorCode::ConsumerCancelled)
    );

    let missing = broker.sluice(&["cancel-consumer", &id, "w"]).await;
    assert_eq!(missing.code, Some(1), "{missing:?}");
    assert_eq!(
        missing.stderr,
        format!("sluice: connection {id} has no consumer 'w' (NOT_FOUND)\n")
    );

    let mut second = victim
        .consume("jobs", ConsumeOptions::new())
        .await
        .expect("consume again");
    let run = broker
        .sluice(&["close-connection", &id, "--reason", "rolling restart"])
        .await;
    assert_eq!(run.code, Some(0), "{run:?}");
    assert_eq!(run.stdout, format!("connection {id} closed\n"));
    match closed(&mut second).await {
        Error::ConnectionClosed(CloseReason::Server { code, reason }) => {
            assert_eq!(code, Some(ErrorCode::ConnectionForced));
            assert_eq!(reason, "rolling restart");
        }
        other => panic!("expected CONNECTION_FORCED, got {other:?}"),
    }

    let gone = broker.sluice(&["close-connection", &id]).await;
    assert_eq!(gone.code, Some(1), "{gone:?}");
    assert_eq!(
        gone.stderr,
        format!("sluice: no connection {id} (NOT_FOUND)\n")
    );
}
