//! Exchanges and bindings in a 3-node cluster of real `sluice serve` processes: declared on
//! one node, they route publishes on every node (the metadata group keeps them); a conflicting
//! redeclare is refused on any node; an unbind or a delete on one node holds everywhere, also
//! on a node that was down when it happened; a node's own bindings of its local queues to a
//! cluster-wide exchange survive its restart; a weighted binding re-weighted on one node is
//! the queue's one binding on every node.

use std::collections::BTreeSet;
use std::time::Duration;

use futures_util::StreamExt;
use sluice_client::{
    weight, Client, ConsumeOptions, DeleteExchangeOptions, Error, ErrorCode, ExchangeKind,
    ExchangeOptions, HeaderValue, OutgoingMessage, PublishOptions, QueueArguments, QueueOptions,
};
use sluice_tests::broker::within;
use sluice_tests::cluster::{replicated, ClusterProcess, NodeId};

/// Pause between two looks at a node that has not applied a change of the metadata group
/// yet (it does a moment after the node that made the change answered).
const POLL: Duration = Duration::from_millis(50);

/// A client that follows `NOT_LEADER` to a queue's leader (consuming on any node).
async fn connect(url: &str) -> Client {
    within("connect", Client::builder().connect(url))
        .await
        .unwrap()
}

fn code(e: &Error) -> Option<ErrorCode> {
    match e {
        Error::Server { code, .. } => Some(*code),
        _ => None,
    }
}

/// Whether `client`'s node has exchange `name`.
async fn has_exchange(client: &Client, name: &str) -> bool {
    match client
        .declare_exchange(
            name,
            ExchangeKind::Direct,
            ExchangeOptions::new().passive(true),
        )
        .await
    {
        Ok(()) => true,
        Err(e) if code(&e) == Some(ErrorCode::NotFound) => false,
        Err(e) => panic!("passive declare of exchange {name}: {e}"),
    }
}

/// Waits (bounded) until `client`'s node has exchange `name` (`present`) or not.
async fn await_exchange(client: &Client, name: &str, present: bool) {
    within(&format!("exchange {name} present: {present}"), async {
        while has_exchange(client, name).await != present {
            tokio::time::sleep(POLL).await;
        }
    })
    .await;
}

/// Waits (bounded) until `client`'s node knows queue `name`.
async fn await_queue(client: &Client, name: &str) {
    within(&format!("queue {name} known"), async {
        loop {
            match client.declare_queue(name, QueueOptions::passive()).await {
                Ok(_) => return,
                Err(e) if code(&e) == Some(ErrorCode::NotFound) => tokio::time::sleep(POLL).await,
                Err(e) => panic!("passive declare of {name}: {e}"),
            }
        }
    })
    .await;
}

/// Publishes one mandatory message until `client`'s node routes it (an unroutable one is
/// stored nowhere: asking again never makes two).
async fn publish_routed(client: &Client, exchange: &str, key: &str, body: &str) {
    within(&format!("{body} routed by {exchange}"), async {
        loop {
            match client
                .publish(
                    exchange,
                    key,
                    body.to_owned(),
                    &PublishOptions::new().mandatory(),
                )
                .await
            {
                Ok(_) => return,
                Err(e) if e.is_unroutable() => tokio::time::sleep(POLL).await,
                Err(e) => panic!("publish {body}: {e}"),
            }
        }
    })
    .await;
}

/// Whether `client`'s node routes a mandatory message to `exchange` with `key` somewhere.
async fn routes(client: &Client, exchange: &str, key: &str) -> bool {
    match client
        .publish(exchange, key, "probe", &PublishOptions::new().mandatory())
        .await
    {
        Ok(_) => true,
        Err(e) if e.is_unroutable() => false,
        Err(e) => panic!("publish to {exchange}: {e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exchange_and_a_binding_made_on_two_nodes_route_publishes_on_every_node_until_removed_on_a_third(
) {
    let dir = tempfile::tempdir().unwrap();
    let cluster = ClusterProcess::start(dir.path(), 3, &[]).await;
    let clients = [
        connect(&cluster.node(1).url()).await,
        connect(&cluster.node(2).url()).await,
        connect(&cluster.node(3).url()).await,
    ];
    let [c1, c2, c3] = &clients;
    within(
        "declare orders",
        c1.declare_queue("orders", replicated(QueueArguments::default())),
    )
    .await
    .unwrap();
    within(
        "declare events",
        c2.declare_exchange("events", ExchangeKind::Topic, ExchangeOptions::new()),
    )
    .await
    .unwrap();
    // The node that declared it routes by it at once; the others a moment later.
    assert!(has_exchange(c2, "events").await);
    await_exchange(c3, "events", true).await;
    await_queue(c3, "orders").await;
    within("bind", c3.bind("orders", "events", "eu.#", Vec::new()))
        .await
        .unwrap();

    for (i, client) in clients.iter().enumerate() {
        publish_routed(
            client,
            "events",
            &format!("eu.{i}"),
            &format!("via-node-{}", i + 1),
        )
        .await;
    }
    let mut consumer = within(
        "consume",
        c1.consume("orders", ConsumeOptions::new().prefetch(10)),
    )
    .await
    .unwrap();
    let mut seen = BTreeSet::new();
    while seen.len() < 3 {
        let m = within("delivery", consumer.next()).await.unwrap().unwrap();
        seen.insert(String::from_utf8(m.body.to_vec()).unwrap());
        within("ack", m.ack_confirmed()).await.unwrap();
    }
    assert_eq!(
        seen,
        BTreeSet::from(["via-node-1", "via-node-2", "via-node-3"].map(String::from))
    );

    // Another kind under the same name is refused on every node, the same one is fine.
    for client in &clients {
        let e = client
            .declare_exchange("events", ExchangeKind::Fanout, ExchangeOptions::new())
            .await
            .expect_err("a fanout 'events' conflicts with the topic one");
        assert_eq!(code(&e), Some(ErrorCode::PreconditionFailed), "{e}");
        client
            .declare_exchange("events", ExchangeKind::Topic, ExchangeOptions::new())
            .await
            .unwrap();
    }
    // Auto-delete exchanges depend on each node's own bindings: refused, named.
    let e = c1
        .declare_exchange(
            "scratch",
            ExchangeKind::Direct,
            ExchangeOptions::new().auto_delete(true),
        )
        .await
        .expect_err("auto-delete exchanges are refused in a cluster");
    assert_eq!(code(&e), Some(ErrorCode::PreconditionFailed), "{e}");

    // An unbind on node 1 holds there at once and on the others a moment later.
    within("unbind", c1.unbind("orders", "events", "eu.#", Vec::new()))
        .await
        .unwrap();
    assert!(!routes(c1, "events", "eu.x").await, "node 1 still routes");
    for client in [c2, c3] {
        within("unbound everywhere", async {
            while routes(client, "events", "eu.x").await {
                tokio::time::sleep(POLL).await;
            }
        })
        .await;
    }
    within(
        "delete events",
        c3.delete_exchange("events", DeleteExchangeOptions::default()),
    )
    .await
    .unwrap();
    assert!(!has_exchange(c3, "events").await);
    await_exchange(c1, "events", false).await;
    await_exchange(c2, "events", false).await;
    drop(consumer);
    drop(clients);
    cluster.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_down_during_a_delete_drops_the_exchange_with_its_bindings_and_keeps_its_own_bindings_to_the_others(
) {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = ClusterProcess::start(dir.path(), 3, &[]).await;
    let down: NodeId = 2;
    {
        let c1 = connect(&cluster.node(1).url()).await;
        for (name, kind) in [
            ("audit", ExchangeKind::Fanout),
            ("events", ExchangeKind::Direct),
        ] {
            within(
                "declare",
                c1.declare_exchange(name, kind, ExchangeOptions::new()),
            )
            .await
            .unwrap();
        }
        // Node 2's own queue, bound there to a cluster-wide exchange.
        let c2 = connect(&cluster.node(down).url()).await;
        await_exchange(&c2, "audit", true).await;
        within(
            "declare",
            c2.declare_queue("local-log", QueueOptions::new()),
        )
        .await
        .unwrap();
        within("bind", c2.bind("local-log", "audit", "", Vec::new()))
            .await
            .unwrap();
        await_exchange(&c2, "events", true).await;
        within("bind", c2.bind("local-log", "events", "e", Vec::new()))
            .await
            .unwrap();
    }
    cluster.stop_node(down);
    let c1 = connect(&cluster.node(1).url()).await;
    within(
        "delete events",
        c1.delete_exchange("events", DeleteExchangeOptions::default()),
    )
    .await
    .unwrap();
    cluster.restart(down).await;

    let c2 = connect(&cluster.node(down).url()).await;
    await_exchange(&c2, "audit", true).await;
    // The binding it stored comes back once the group declared 'audit' on it again.
    publish_routed(&c2, "audit", "", "logged").await;
    let got = within("get", c2.get("local-log"))
        .await
        .unwrap()
        .expect("the message routed to local-log");
    assert_eq!(&got.body[..], b"logged");
    // The binding is node 2's: node 1 routes nothing from 'audit'.
    assert!(!routes(&c1, "audit", "").await);
    // And the delete it missed holds there too, bindings included: 'events' declared
    // again routes nothing to node 2's queue.
    await_exchange(&c2, "events", false).await;
    within(
        "declare events again",
        c1.declare_exchange("events", ExchangeKind::Direct, ExchangeOptions::new()),
    )
    .await
    .unwrap();
    await_exchange(&c2, "events", true).await;
    assert!(
        !routes(&c2, "events", "e").await,
        "a binding of the deleted exchange came back"
    );
    drop((c1, c2));
    cluster.stop();
}

/// The weights `client`'s node has for the bindings of `exchange`, by queue.
async fn weights(client: &Client, exchange: &str) -> Vec<(String, HeaderValue)> {
    let bindings = within("list bindings", client.list_bindings())
        .await
        .unwrap();
    bindings
        .into_iter()
        .filter(|b| b.exchange == exchange)
        .flat_map(|b| {
            b.arguments
                .into_iter()
                .map(move |(_, w)| (b.queue.clone(), w))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_weighted_binding_reweighted_on_one_node_holds_on_every_node_with_one_binding_per_queue()
{
    let dir = tempfile::tempdir().unwrap();
    let cluster = ClusterProcess::start(dir.path(), 3, &[]).await;
    let c1 = connect(&cluster.node(1).url()).await;
    let c2 = connect(&cluster.node(2).url()).await;
    let c3 = connect(&cluster.node(3).url()).await;
    for q in ["v1", "v2"] {
        within(
            "declare",
            c1.declare_queue(q, replicated(QueueArguments::default())),
        )
        .await
        .unwrap();
        await_queue(&c3, q).await;
    }
    within(
        "declare canary",
        c2.declare_exchange("canary", ExchangeKind::Weighted, ExchangeOptions::new()),
    )
    .await
    .unwrap();
    await_exchange(&c3, "canary", true).await;
    for (q, w) in [("v1", 95), ("v2", 5)] {
        within("bind", c3.bind(q, "canary", "", weight(w)))
            .await
            .unwrap();
    }
    // Re-weighted on node 1: node 2 ends up with the new weight as v2's only binding.
    within("re-weight", c1.bind("v2", "canary", "", weight(95)))
        .await
        .unwrap();
    let wanted = vec![
        ("v1".to_owned(), HeaderValue::Int(95)),
        ("v2".to_owned(), HeaderValue::Int(95)),
    ];
    within("re-weight applied on node 2", async {
        while weights(&c2, "canary").await != wanted {
            tokio::time::sleep(POLL).await;
        }
    })
    .await;
    let messages = (0..1000).map(|i| OutgoingMessage::new("canary", "", format!("m{i}")));
    for outcome in within("publish", c2.publish_batch(messages)).await {
        outcome.unwrap();
    }
    let ready = |q: &'static str| {
        let c1 = c1.clone();
        async move { within("inspect", c1.inspect_queue(q)).await.unwrap().ready }
    };
    let (v1, v2) = (ready("v1").await, ready("v2").await);
    assert_eq!(v1 + v2, 1000);
    assert!(
        v2.abs_diff(500) <= 10,
        "v2 got {v2} of 1000 at equal weights"
    );
    // An unbind naming only the queue removes it everywhere, whatever its weight.
    within("unbind", c3.unbind("v2", "canary", "", Vec::new()))
        .await
        .unwrap();
    within("unbound on node 2", async {
        while weights(&c2, "canary").await.len() != 1 {
            tokio::time::sleep(POLL).await;
        }
    })
    .await;
    cluster.stop();
}
