//! Weighted and consistent-hash exchanges against the real broker (issue #15, part 1): the
//! split of every thousand messages follows the weights; a re-weight through the CLI while a
//! publisher runs loses and duplicates nothing and holds after a restart; a consistent-hash
//! exchange keeps each key on one queue and, when a queue is added, moves only about its
//! share of the keys, all to the new queue.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use sluice_client::{
    weight, Client, ErrorCode, ExchangeKind, ExchangeOptions, Headers, OutgoingMessage,
    PublishOptions, QueueOptions,
};
use sluice_tests::broker::{within, BrokerProcess};

async fn connect(broker: &BrokerProcess) -> Client {
    within("connect", Client::connect(&broker.url()))
        .await
        .expect("connect")
}

async fn bound_queue(client: &Client, queue: &str, exchange: &str, args: Headers) {
    within(
        "declare queue",
        client.declare_queue(queue, QueueOptions::new()),
    )
    .await
    .expect("declare queue");
    within("bind", client.bind(queue, exchange, "", args))
        .await
        .unwrap_or_else(|e| panic!("bind {queue} to {exchange}: {e}"));
}

/// Publishes `bodies` to `exchange` in one batch, each with `options_of` its options; every
/// one must be confirmed.
async fn publish(
    client: &Client,
    exchange: &str,
    bodies: impl IntoIterator<Item = String>,
    options_of: impl Fn(&str) -> PublishOptions,
) {
    let messages: Vec<OutgoingMessage> = bodies
        .into_iter()
        .map(|b| OutgoingMessage::new(exchange, "", b.clone()).with_options(options_of(&b)))
        .collect();
    for outcome in within("publish", client.publish_batch(messages)).await {
        outcome.expect("confirmed");
    }
}

/// Every ready message body of `queue`, page by page.
async fn bodies(client: &Client, queue: &str) -> Vec<String> {
    let mut all = Vec::new();
    let mut after = 0;
    loop {
        let page = within("browse", client.browse(queue, 0, after))
            .await
            .expect("browse");
        all.extend(
            page.messages
                .iter()
                .map(|m| String::from_utf8(m.body.to_vec()).expect("UTF-8 body")),
        );
        match page.messages.last() {
            Some(last) if page.more => after = last.message_seq,
            _ => return all,
        }
    }
}

async fn ready(client: &Client, queue: &str) -> u64 {
    within("inspect", client.inspect_queue(queue))
        .await
        .expect("inspect")
        .ready
}

async fn purge(client: &Client, queues: &[&str]) {
    for q in queues {
        within("purge", client.purge_queue(q)).await.expect("purge");
    }
}

/// Publishes 1,000 messages and returns how many each queue received.
async fn split_of_a_thousand(client: &Client, tag: &str) -> (u64, u64) {
    let (v1, v2) = (ready(client, "v1").await, ready(client, "v2").await);
    publish(
        client,
        "canary",
        (0..1000).map(|i| format!("{tag}-{i}")),
        |_| PublishOptions::new(),
    )
    .await;
    (
        ready(client, "v1").await - v1,
        ready(client, "v2").await - v2,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_weighted_exchange_splits_by_weight_and_is_reweighted_live_with_nothing_lost() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(dir.path(), &[]);
    let client = connect(&broker).await;
    within(
        "declare",
        client.declare_exchange("canary", ExchangeKind::Weighted, ExchangeOptions::new()),
    )
    .await
    .unwrap();
    bound_queue(&client, "v1", "canary", weight(95)).await;
    bound_queue(&client, "v2", "canary", weight(5)).await;

    // Within 1 % of the weights over a thousand messages (10 messages).
    let (v1, v2) = split_of_a_thousand(&client, "first").await;
    assert_eq!(v1 + v2, 1000);
    assert!(v2.abs_diff(50) <= 10, "v2 got {v2} of 1000 at weight 5");

    // A publisher runs before, during and after the CLI moves v2 to 50: every message lands
    // exactly once.
    let batches = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let publisher = {
        let (client, batches, stop) = (client.clone(), Arc::clone(&batches), Arc::clone(&stop));
        tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                let batch = batches.load(Ordering::SeqCst);
                let bodies = (0..200).map(move |i| format!("live-{batch}-{i}"));
                publish(&client, "canary", bodies, |_| PublishOptions::new()).await;
                batches.fetch_add(1, Ordering::SeqCst);
            }
        })
    };
    let batches_past = |n: u64| {
        let batches = Arc::clone(&batches);
        within("publisher batches", async move {
            while batches.load(Ordering::SeqCst) < n {
                tokio::task::yield_now().await;
            }
        })
    };
    batches_past(5).await;
    let printed = broker.cli(&["bind", "v2", "canary", "--weight", "50", "--json"]);
    assert!(printed.contains("\"x-weight\""), "{printed}");
    let reweighted_at = batches.load(Ordering::SeqCst);
    batches_past(reweighted_at + 5).await;
    stop.store(true, Ordering::SeqCst);
    within("publisher", publisher).await.unwrap();
    let published = batches.load(Ordering::SeqCst);
    let mut seen = HashSet::new();
    for q in ["v1", "v2"] {
        for body in bodies(&client, q).await {
            assert!(seen.insert(body.clone()), "{body} delivered twice");
        }
    }
    for batch in 0..published {
        for i in 0..200 {
            assert!(
                seen.contains(&format!("live-{batch}-{i}")),
                "live-{batch}-{i} lost"
            );
        }
    }
    assert_eq!(seen.len() as u64, 1000 + published * 200);
    let (v1, v2) = split_of_a_thousand(&client, "after").await;
    // 50 / (95 + 50) of a thousand.
    assert!(
        v2.abs_diff(345) <= 10,
        "v2 got {v2} of 1000 at weight 50 against 95"
    );
    assert_eq!(v1 + v2, 1000);

    // The weights are part of the durable topology.
    drop(client);
    broker.stop();
    let broker = BrokerProcess::start(dir.path(), &[]);
    let client = connect(&broker).await;
    let listed = broker.cli(&["bindings", "--json"]);
    assert!(
        listed.contains("\"x-weight\":50") || listed.contains("\"x-weight\": 50"),
        "{listed}"
    );
    let (_, v2) = split_of_a_thousand(&client, "restarted").await;
    assert!(
        v2.abs_diff(345) <= 10,
        "v2 got {v2} of 1000 at weight 50 against 95"
    );
    // Weight 0 drains a queue; an unbind naming only the queue removes its binding.
    broker.cli(&["bind", "v1", "canary", "--weight", "0"]);
    assert_eq!(split_of_a_thousand(&client, "drained").await, (0, 1000));
    broker.cli(&["unbind", "v2", "canary"]);
    let e = within(
        "publish",
        client.publish("canary", "", "nowhere", &PublishOptions::new().mandatory()),
    )
    .await
    .unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::Unroutable), "{e}");
    broker.stop();
}

/// Which queue each user's messages went to (bodies are `USER/N`); each user must have one.
async fn queue_of_each_user(client: &Client, queues: &[&str]) -> BTreeMap<String, String> {
    let mut placed: BTreeMap<String, String> = BTreeMap::new();
    for q in queues {
        for body in bodies(client, q).await {
            let user = body.split('/').next().unwrap().to_owned();
            if let Some(other) = placed.insert(user.clone(), (*q).to_owned()) {
                assert_eq!(other, *q, "{user} went to two queues");
            }
        }
    }
    placed
}

/// Users publishing to the consistent-hash exchange.
const USERS: u32 = 400;

/// 2,000 messages to `by-user`, five per user, each with its user in header `user` and its
/// body `USER/ROUND-N`.
async fn publish_round(client: &Client, round: u32) {
    let bodies = (0..2000).map(|i| format!("u{}/{round}-{i}", i % USERS));
    publish(client, "by-user", bodies, |body| {
        let user = body.split('/').next().unwrap().to_owned();
        PublishOptions::new().header("user", user)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consistent_hash_exchange_keeps_each_key_on_one_queue_and_moves_few_for_a_new_one() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(dir.path(), &[]);
    let client = connect(&broker).await;
    broker.cli(&[
        "declare-exchange",
        "by-user",
        "--kind",
        "consistent-hash",
        "--hash-header",
        "user",
    ]);
    let shards = ["s1", "s2", "s3", "s4"];
    for q in shards {
        bound_queue(&client, q, "by-user", Headers::new()).await;
    }
    publish_round(&client, 1).await;
    let before = queue_of_each_user(&client, &shards).await;
    assert_eq!(before.len(), USERS as usize);
    let mut per_queue: HashMap<&str, usize> = HashMap::new();
    for q in before.values() {
        *per_queue.entry(q.as_str()).or_default() += 1;
    }
    assert_eq!(
        per_queue.len(),
        4,
        "users spread over every shard: {per_queue:?}"
    );

    // The same keys again, after a fifth shard is bound.
    purge(&client, &shards).await;
    bound_queue(&client, "s5", "by-user", Headers::new()).await;
    publish_round(&client, 2).await;
    let all = ["s1", "s2", "s3", "s4", "s5"];
    let after = queue_of_each_user(&client, &all).await;
    let moved: Vec<&String> = before
        .keys()
        .filter(|user| before[*user] != after[*user])
        .collect();
    assert!(
        moved.iter().all(|user| after[*user] == "s5"),
        "keys move only to the new shard"
    );
    assert!(
        (40..=140).contains(&moved.len()),
        "{} of {USERS} users moved; about a fifth (80) expected",
        moved.len()
    );

    // A message without the header matches no shard: a mandatory publish is refused.
    let e = within(
        "publish",
        client.publish(
            "by-user",
            "k",
            "no user",
            &PublishOptions::new().mandatory(),
        ),
    )
    .await
    .unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::Unroutable), "{e}");

    // The hash header belongs to consistent-hash exchanges, and weights have a range.
    let e = within(
        "declare",
        client.declare_exchange(
            "d",
            ExchangeKind::Direct,
            ExchangeOptions::new().hash_header("user"),
        ),
    )
    .await
    .unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::InvalidArgument), "{e}");
    let e = within("bind", client.bind("s1", "by-user", "", weight(1000)))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::InvalidArgument), "{e}");
    assert!(e.to_string().contains("x-weight"), "{e}");

    // After a restart every user still reaches the same shard.
    purge(&client, &all).await;
    drop(client);
    broker.stop();
    let broker = BrokerProcess::start(dir.path(), &[]);
    let client = connect(&broker).await;
    publish_round(&client, 3).await;
    assert_eq!(queue_of_each_user(&client, &all).await, after);
    broker.stop();
}
