//! Vhosts as namespaces (protocol.md §5.8), against the real broker: the same names in two
//! vhosts are two resources, nothing crosses between them, listings show a client its own
//! vhost only, and a data directory with only `/` (what every broker wrote before vhosts)
//! reads back unchanged.

use std::path::Path;

use sluice_client::{
    Client, ExchangeKind, ExchangeOptions, HeaderValue, OutgoingMessage, PublishOptions,
    QueueOptions,
};
use sluice_tests::broker::{within, BrokerProcess};

async fn connect(url: &str) -> Client {
    within("connect", Client::connect(url))
        .await
        .expect("connect")
}

/// Publishes `bodies` to `exchange` with `key`, each confirmed.
async fn publish(client: &Client, exchange: &str, key: &str, bodies: &[&str]) {
    let batch = bodies
        .iter()
        .map(|b| OutgoingMessage::new(exchange, key, b.to_string()));
    for outcome in within("publish", client.publish_batch(batch)).await {
        outcome.expect("confirmed");
    }
}

/// Takes the ready messages of `queue` one `Get` at a time, acking them: their bodies.
async fn take_all(client: &Client, queue: &str) -> Vec<String> {
    let mut bodies = Vec::new();
    while let Some(m) = within("get", client.get(queue)).await.expect("get") {
        bodies.push(String::from_utf8(m.body.to_vec()).expect("utf-8"));
        within("ack", m.ack()).await.expect("ack");
    }
    bodies
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_dir_with_only_the_default_vhost_reads_back_unchanged_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let broker = BrokerProcess::start(&data, &[]);
    let client = connect(&broker.url()).await;
    let plain = ExchangeOptions::new;
    client
        .declare_exchange("unrouted", ExchangeKind::Fanout, plain())
        .await
        .unwrap();
    client
        .declare_exchange(
            "orders",
            ExchangeKind::Topic,
            plain().alternate_exchange("unrouted"),
        )
        .await
        .unwrap();
    client
        .declare_exchange("dlx", ExchangeKind::Fanout, plain())
        .await
        .unwrap();
    for q in ["jobs", "lost", "dead"] {
        let options = match q {
            "jobs" => QueueOptions::new().dead_letter_exchange("dlx"),
            _ => QueueOptions::new(),
        };
        client.declare_queue(q, options).await.unwrap();
    }
    client
        .bind("jobs", "orders", "eu.#", Vec::new())
        .await
        .unwrap();
    client
        .bind("lost", "unrouted", "", Vec::new())
        .await
        .unwrap();
    client.bind("dead", "dlx", "", Vec::new()).await.unwrap();
    publish(&client, "orders", "eu.de", &["a", "b"]).await;
    publish(&client, "orders", "us.ny", &["c"]).await;
    client.close().await.unwrap();
    broker.stop();
    let topology = read(&data.join("definitions.bin"));

    let broker = BrokerProcess::start(&data, &[]);
    let client = connect(&broker.url()).await;
    let names = |mut v: Vec<String>| {
        v.sort();
        v
    };
    let queues = client.list_queues().await.unwrap();
    assert_eq!(
        names(queues.iter().map(|q| q.name.clone()).collect()),
        ["dead", "jobs", "lost"]
    );
    let orders = client.list_exchanges().await.unwrap();
    let orders = orders.iter().find(|x| x.name == "orders").expect("orders");
    assert_eq!(orders.alternate_exchange.as_deref(), Some("unrouted"));
    assert_eq!(client.list_bindings().await.unwrap().len(), 3);
    // Routing, alternate exchange and dead-lettering work as before the restart.
    assert_eq!(take_all(&client, "lost").await, ["c"]);
    publish(&client, "orders", "eu.fr", &["d"]).await;
    let first = within("get", client.get("jobs")).await.unwrap().unwrap();
    within("reject", first.reject()).await.unwrap();
    assert_eq!(take_all(&client, "jobs").await, ["b", "d"]);
    let dead = within("get", client.get("dead")).await.unwrap().unwrap();
    assert_eq!(&dead.body[..], b"a");
    assert_eq!(dead.exchange(), "dlx");
    assert_eq!(
        dead.header("x-death-queue"),
        Some(HeaderValue::from("jobs"))
    );
    assert_eq!(
        dead.header("x-death-exchange"),
        Some(HeaderValue::from("orders"))
    );
    client.close().await.unwrap();
    broker.stop();
    assert_eq!(
        read(&data.join("definitions.bin")),
        topology,
        "the topology file is read as it was written, not rewritten"
    );
}

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_holding_nul_is_refused_since_it_would_spell_another_vhost() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(&dir.path().join("data"), &[]);
    let client = connect(&broker.url()).await;
    for name in ["\0v\0jobs", "a\0b"] {
        let e = client
            .declare_queue(name, QueueOptions::new())
            .await
            .unwrap_err();
        assert!(
            e.code() == Some(sluice_client::ErrorCode::InvalidArgument),
            "{e}"
        );
        let e = client.get(name).await.unwrap_err();
        assert!(
            e.code() == Some(sluice_client::ErrorCode::InvalidArgument),
            "{e}"
        );
    }
    // A routing key spelling another vhost's queue reaches nothing through the default
    // exchange: the message is unroutable, not delivered elsewhere.
    let refused = client
        .publish("", "\0v\0jobs", "x", &PublishOptions::new().mandatory())
        .await
        .unwrap_err();
    assert!(refused.is_unroutable(), "{refused}");
    // The connection goes on.
    client
        .declare_queue("fine", QueueOptions::new())
        .await
        .unwrap();
    client.close().await.unwrap();
    broker.stop();
}
