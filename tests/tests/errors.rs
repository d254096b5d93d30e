//! Errors users can catch: a refused publish carries its code; PRECONDITION_FAILED names the
//! first difference of a redeclare in words; a missing dead-letter exchange is reported when a
//! queue names it and counted and logged when a message is dropped for it; an ack, nack,
//! reject or extend that fails reports its error to the call that sent it, and only to it.

use std::time::Duration;

use sluice_client::{
    Client, Error, ErrorCode, ExchangeKind, ExchangeOptions, Message, PublishOptions, QueueOptions,
};
use sluice_tests::broker::{users_file_command, within, BrokerProcess, WAIT};
use sluice_tests::http::HttpClient;

/// A broker in a temporary directory.
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

    async fn client(&self) -> Client {
        within("connect", Client::connect(&self.process.url()))
            .await
            .expect("connect")
    }

    /// The value of one series of `/metrics`, if present.
    async fn metric(&self, name: &str, labels: &str) -> Option<f64> {
        let addr = self.process.http_addr().expect("the HTTP API is on");
        let http = HttpClient::new(addr, "guest", "guest");
        let r = http.get_accepting("/metrics", "text/plain").await;
        assert_eq!(r.status, 200, "{r:?}");
        let series = format!("{name}{{{labels}}} ");
        r.body
            .lines()
            .find_map(|l| l.strip_prefix(&series))
            .map(|v| v.trim().parse().expect("a number"))
    }
}

fn server_error(result: Result<impl std::fmt::Debug, Error>) -> (ErrorCode, String) {
    match result {
        Err(Error::Server { code, message }) => (code, message),
        other => panic!("expected an Error reply, got {other:?}"),
    }
}

// ---- typed errors -------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_to_a_missing_exchange_is_a_rejection_with_the_not_found_code() {
    let broker = Broker::start();
    let client = broker.client().await;
    let refused = within(
        "publish",
        client.publish("nowhere", "k", "body", &PublishOptions::new()),
    )
    .await
    .expect_err("no such exchange");
    assert!(refused.is_publish_rejected(), "{refused:?}");
    assert!(refused.is_not_found(), "{refused:?}");
    assert!(
        matches!(
            refused,
            Error::PublishRejected {
                code: ErrorCode::NotFound,
                ..
            }
        ),
        "{refused:?}"
    );
    assert!(refused.to_string().contains("nowhere"), "{refused}");
}

// ---- PRECONDITION_FAILED in words ---------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redeclaring_a_queue_with_other_settings_names_the_first_difference_in_words() {
    let broker = Broker::start();
    let client = broker.client().await;
    let ttl = QueueOptions::new().message_ttl(Duration::from_secs(60));
    client.declare_queue("jobs", ttl.clone()).await.unwrap();

    let (code, message) = server_error(
        client
            .declare_queue("jobs", ttl.clone().durable(false))
            .await,
    );
    assert_eq!(code, ErrorCode::PreconditionFailed);
    assert_eq!(
        message,
        "queue 'jobs' exists with durable=true; the declare asked durable=false"
    );

    let (code, message) = server_error(client.declare_queue("jobs", QueueOptions::new()).await);
    assert_eq!(code, ErrorCode::PreconditionFailed);
    assert_eq!(
        message,
        "queue 'jobs' exists with other arguments; argument message_ttl_ms: existing 60000, \
         requested absent"
    );

    let (_, message) = server_error(
        client
            .declare_queue("jobs", ttl.clone().dead_letter_exchange("dlx"))
            .await,
    );
    assert_eq!(
        message,
        "queue 'jobs' exists with other arguments; argument dead_letter_exchange: existing \
         absent, requested 'dlx'"
    );
    // The same declaration still succeeds: nothing changed.
    client.declare_queue("jobs", ttl).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redeclaring_an_exchange_with_other_settings_names_the_difference_in_words() {
    let broker = Broker::start();
    let client = broker.client().await;
    client
        .declare_exchange(
            "logs",
            ExchangeKind::Topic,
            ExchangeOptions::new().alternate_exchange("ae"),
        )
        .await
        .unwrap();

    let (code, message) = server_error(
        client
            .declare_exchange("logs", ExchangeKind::Direct, ExchangeOptions::new())
            .await,
    );
    assert_eq!(code, ErrorCode::PreconditionFailed);
    assert_eq!(
        message,
        "exchange 'logs' exists with kind=topic; the declare asked kind=direct"
    );

    let (_, message) = server_error(
        client
            .declare_exchange("logs", ExchangeKind::Topic, ExchangeOptions::new())
            .await,
    );
    assert_eq!(
        message,
        "exchange 'logs' exists with alternate_exchange='ae'; the declare asked \
         alternate_exchange=none"
    );
}

// ---- a missing dead-letter exchange ------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_naming_a_missing_dead_letter_exchange_is_declared_with_a_warning() {
    let broker = Broker::start();
    let client = broker.client().await;
    client
        .declare_queue("orders", QueueOptions::new().dead_letter_exchange("ghost"))
        .await
        .expect("accepted, as RabbitMQ does");
    broker.process.wait_for_log(WAIT, |line| {
        line.contains("WARN")
            && line.contains("dead-letter exchange that does not exist")
            && line.contains("orders")
            && line.contains("ghost")
    });
    // An existing one draws no warning.
    client
        .declare_exchange("real-dlx", ExchangeKind::Fanout, ExchangeOptions::new())
        .await
        .unwrap();
    client
        .declare_queue("paid", QueueOptions::new().dead_letter_exchange("real-dlx"))
        .await
        .unwrap();
    client
        .declare_queue(
            "marker",
            QueueOptions::new().dead_letter_exchange("ghost-2"),
        )
        .await
        .unwrap();
    let lines = broker
        .process
        .wait_for_log(WAIT, |line| line.contains("ghost-2"));
    assert!(
        !lines.iter().any(|l| l.contains("real-dlx")),
        "{}",
        lines.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_dead_lettered_to_a_missing_exchange_are_counted_and_logged_per_doubling() {
    let broker = Broker::start();
    let client = broker.client().await;
    client
        .declare_queue("work", QueueOptions::new().dead_letter_exchange("ghost"))
        .await
        .unwrap();
    for i in 0..4 {
        client
            .publish("", "work", format!("m{i}"), &PublishOptions::new())
            .await
            .unwrap();
    }
    for _ in 0..4 {
        let message = within("get", client.get("work"))
            .await
            .unwrap()
            .expect("a message");
        message.reject_confirmed().await.unwrap();
    }
    let labels = r#"vhost="/",queue="work",reason="rejected""#;
    within("the drops to be counted", async {
        while broker
            .metric("sluice_queue_dead_letters_dropped_messages_total", labels)
            .await
            != Some(4.0)
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    // Logged at the 1st, 2nd and 4th drop: the 4th line comes after the 3rd drop, which was
    // not logged.
    let lines = broker.process.wait_for_log(WAIT, |line| {
        line.contains("dead-lettered message dropped") && line.contains("dropped_so_far=4")
    });
    let drops: Vec<&String> = lines
        .iter()
        .filter(|l| l.contains("dead-lettered message dropped"))
        .collect();
    assert_eq!(drops.len(), 3, "{drops:#?}");
    for line in &drops {
        assert!(line.contains("WARN"), "{line}");
        assert!(line.contains("work") && line.contains("ghost"), "{line}");
        assert!(line.contains("the exchange does not exist"), "{line}");
        assert!(!line.contains('\0'), "{line:?}");
    }
    assert!(drops[0].contains("dropped_so_far=1"), "{}", drops[0]);
    assert!(drops[1].contains("dropped_so_far=2"), "{}", drops[1]);
    assert_eq!(client.inspect_queue("work").await.unwrap().ready, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_a_vhost_the_dead_letter_reports_and_errors_use_the_clients_names() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let data = dir.path().join("data");
    users_file_command(&data, &["vhost", "add", "staging"], None);
    let all = [
        "permissions",
        "set",
        "guest",
        "--vhost",
        "staging",
        "--configure",
        ".*",
        "--write",
        ".*",
        "--read",
        ".*",
    ];
    users_file_command(&data, &all, None);
    let process = BrokerProcess::start(&data, &[]);
    let url = format!("{}/staging", process.url());
    let client = within("connect", Client::connect(&url)).await.unwrap();
    client
        .declare_queue("work", QueueOptions::new().dead_letter_exchange("ghost"))
        .await
        .unwrap();
    let (_, message) = server_error(client.declare_queue("work", QueueOptions::new()).await);
    assert_eq!(
        message,
        "queue 'work' exists with other arguments; argument dead_letter_exchange: existing \
         'ghost', requested absent"
    );
    client
        .publish("", "work", "m", &PublishOptions::new())
        .await
        .unwrap();
    let message = within("get", client.get("work")).await.unwrap().unwrap();
    message.reject_confirmed().await.unwrap();
    let lines = process.wait_for_log(WAIT, |line| line.contains("dead-lettered message dropped"));
    let declared = lines
        .iter()
        .find(|l| l.contains("dead-letter exchange that does not exist"))
        .expect("a warning when the queue was declared");
    for line in [declared, lines.last().unwrap()] {
        assert!(!line.contains('\0'), "a raw NUL: {line:?}");
        assert!(line.contains("staging") && line.contains("work"), "{line}");
        assert!(line.contains("ghost"), "{line}");
    }
}

// ---- settle errors reach their caller ----------------------------------------------------

/// Takes `n` messages from `queue` with `Get`.
async fn get_messages(client: &Client, queue: &str, n: usize) -> Vec<Message> {
    let mut messages = Vec::new();
    for _ in 0..n {
        let message = within("get", client.get(queue))
            .await
            .unwrap()
            .expect("a ready message");
        messages.push(message);
    }
    messages
}

/// Waits until `queue` holds `ready` ready messages (a lease expired and returned one).
async fn wait_for_ready(client: &Client, queue: &str, ready: u64) {
    within("a lease to expire", async {
        while client.inspect_queue(queue).await.unwrap().ready != ready {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ack_for_an_expired_lease_reports_unknown_delivery_tag_to_its_caller_only() {
    let broker = Broker::start();
    let client = broker.client().await;
    // Leases long enough to extend the others before they run out on a busy machine.
    let lease = Duration::from_secs(2);
    client
        .declare_queue("tasks", QueueOptions::new().ack_timeout(lease))
        .await
        .unwrap();
    for i in 0..5 {
        client
            .publish("", "tasks", format!("t{i}"), &PublishOptions::new())
            .await
            .unwrap();
    }
    let messages = get_messages(&client, "tasks", 5).await;
    // Every lease but the third one's is extended far away; the third expires.
    for (i, m) in messages.iter().enumerate() {
        if i != 2 {
            m.extend_confirmed(Duration::from_secs(600)).await.unwrap();
        }
    }
    wait_for_ready(&client, "tasks", 1).await;

    // One burst of acks, all pipelined: only the expired one fails.
    let outcomes = futures_util::future::join_all(messages.iter().map(|m| m.ack_confirmed())).await;
    for (i, outcome) in outcomes.iter().enumerate() {
        if i == 2 {
            let error = outcome.as_ref().expect_err("its lease expired");
            assert!(error.is_unknown_delivery_tag(), "{error:?}");
            assert!(
                error
                    .to_string()
                    .contains(&messages[2].delivery_tag.to_string()),
                "{error}"
            );
        } else {
            assert!(outcome.is_ok(), "message {i}: {outcome:?}");
        }
    }
    let info = client.inspect_queue("tasks").await.unwrap();
    assert_eq!((info.ready, info.unacked), (1, 0));
    // The expired message comes again.
    let again = get_messages(&client, "tasks", 1).await;
    assert_eq!(&again[0].body[..], b"t2");
    again[0].ack_confirmed().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nack_reject_and_extend_of_an_expired_lease_report_unknown_delivery_tag() {
    let broker = Broker::start();
    let client = broker.client().await;
    client
        .declare_queue(
            "short",
            QueueOptions::new().ack_timeout(Duration::from_millis(100)),
        )
        .await
        .unwrap();
    client
        .publish("", "short", "x", &PublishOptions::new())
        .await
        .unwrap();
    let expired = get_messages(&client, "short", 1).await.remove(0);
    wait_for_ready(&client, "short", 1).await;

    let error = expired
        .extend_confirmed(Duration::from_secs(10))
        .await
        .unwrap_err();
    assert!(error.is_unknown_delivery_tag(), "{error:?}");
    let error = expired.nack_confirmed(true).await.unwrap_err();
    assert!(error.is_unknown_delivery_tag(), "{error:?}");
    // The handle is settled now, as after any settle call.
    assert!(matches!(
        expired.reject_confirmed().await,
        Err(Error::AlreadySettled)
    ));

    // A plain ack does not wait for the broker: it returns once sent, and the connection
    // goes on serving (the failure is only logged by the client).
    let redelivered = get_messages(&client, "short", 1).await.remove(0);
    assert!(redelivered.redelivered);
    wait_for_ready(&client, "short", 1).await;
    redelivered.ack().await.unwrap();
    assert_eq!(client.inspect_queue("short").await.unwrap().ready, 1);
}
