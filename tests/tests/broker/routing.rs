//! Exchanges through the real broker: topic patterns, headers matching, mandatory publishes and
//! alternate exchanges.

use sluice_client::{ExchangeKind, ExchangeOptions, HeaderValue, PublishOptions, QueueOptions};

use crate::harness::Broker;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_patterns_match_as_in_amqp() {
    // (binding pattern, routing key, matches)
    let table: &[(&str, &str, bool)] = &[
        ("a.*.c", "a.b.c", true),
        ("a.*.c", "a.c", false),
        ("a.*.c", "a.b.b.c", false),
        ("a.#", "a", true),
        ("a.#", "a.b.c", true),
        ("#", "", true),
        ("#", "anything.at.all", true),
        ("#.#", "a.b", true),
        ("#.#", "", true),
        ("*", "", false),
        ("*", "a", true),
        ("*", "a.b", false),
        ("a.#.z", "a.z", true),
        ("a.#.z", "a.b.c.z", true),
        ("a.#.z", "a.b.c", false),
        ("*.*", "a.", true),
        ("*.*", ".a", true),
        ("a..b", "a..b", true),
        ("a.*.b", "a..b", true),
        (".a", ".a", true),
        ("a.", "a.", true),
        ("a.", "a", false),
        ("#.a", "a", true),
        ("#.a", "x.y.a", true),
    ];
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path());
    let client = broker.client().await;
    for (i, (pattern, key, expected)) in table.iter().enumerate() {
        let exchange = format!("topic-{i}");
        let queue = format!("q-{i}");
        client
            .declare_exchange(
                &exchange,
                ExchangeKind::Topic,
                ExchangeOptions::new().durable(false),
            )
            .await
            .unwrap();
        client
            .declare_queue(&queue, QueueOptions::new())
            .await
            .unwrap();
        client
            .bind(&queue, &exchange, pattern, vec![])
            .await
            .unwrap();
        let result = client
            .publish(&exchange, key, "m", &PublishOptions::new().mandatory())
            .await;
        assert_eq!(
            result.is_ok(),
            *expected,
            "pattern {pattern:?} with key {key:?}: {result:?}"
        );
        if !expected {
            assert!(result.unwrap_err().is_unroutable());
        }
        let got = client.get(&queue).await.unwrap();
        assert_eq!(
            got.is_some(),
            *expected,
            "pattern {pattern:?} with key {key:?}"
        );
    }
    broker.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_exchange_matches_all_and_any() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path());
    let client = broker.client().await;
    client
        .declare_exchange("h", ExchangeKind::Headers, ExchangeOptions::new())
        .await
        .unwrap();
    client
        .declare_queue("all", QueueOptions::new())
        .await
        .unwrap();
    client
        .declare_queue("any", QueueOptions::new())
        .await
        .unwrap();
    let args = |mode: &str| {
        vec![
            ("x-match".to_owned(), HeaderValue::from(mode)),
            ("format".to_owned(), HeaderValue::from("pdf")),
            ("pages".to_owned(), HeaderValue::Int(2)),
        ]
    };
    client.bind("all", "h", "", args("all")).await.unwrap();
    client.bind("any", "h", "", args("any")).await.unwrap();
    let publish = |headers: Vec<(&str, HeaderValue)>| {
        let mut o = PublishOptions::new();
        for (k, v) in headers {
            o = o.header(k, v);
        }
        o
    };
    // Both match.
    client
        .publish(
            "h",
            "",
            "both",
            &publish(vec![
                ("format", "pdf".into()),
                ("pages", HeaderValue::Int(2)),
            ]),
        )
        .await
        .unwrap();
    // Only `any` matches.
    client
        .publish(
            "h",
            "",
            "one",
            &publish(vec![
                ("format", "pdf".into()),
                ("pages", HeaderValue::Int(3)),
            ]),
        )
        .await
        .unwrap();
    // Same value, different type: no match (2 as a string is not the integer 2).
    client
        .publish("h", "", "typed", &publish(vec![("pages", "2".into())]))
        .await
        .unwrap();
    let bodies = |q: &'static str| {
        let client = client.clone();
        async move {
            let mut v = Vec::new();
            while let Some(m) = client.get(q).await.unwrap() {
                v.push(String::from_utf8(m.body.to_vec()).unwrap());
                m.ack().await.unwrap();
            }
            v
        }
    };
    assert_eq!(bodies("all").await, vec!["both"]);
    assert_eq!(bodies("any").await, vec!["both", "one"]);
    broker.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unroutable_mandatory_publish_is_refused_and_alternate_exchanges_catch_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path());
    let client = broker.client().await;
    client
        .declare_exchange("lost", ExchangeKind::Fanout, ExchangeOptions::new())
        .await
        .unwrap();
    client
        .declare_queue("lost-and-found", QueueOptions::new())
        .await
        .unwrap();
    client
        .bind("lost-and-found", "lost", "", vec![])
        .await
        .unwrap();
    client
        .declare_exchange(
            "orders",
            ExchangeKind::Direct,
            ExchangeOptions::new().alternate_exchange("lost"),
        )
        .await
        .unwrap();
    client
        .declare_exchange("strict", ExchangeKind::Direct, ExchangeOptions::new())
        .await
        .unwrap();
    let err = client
        .publish("strict", "nobody", "x", &PublishOptions::new().mandatory())
        .await
        .unwrap_err();
    assert!(err.is_unroutable(), "{err:?}");
    // Not mandatory: accepted and dropped.
    client
        .publish("strict", "nobody", "x", &PublishOptions::new())
        .await
        .unwrap();
    // Through the alternate exchange, even when mandatory.
    client
        .publish(
            "orders",
            "nobody",
            "caught",
            &PublishOptions::new().mandatory(),
        )
        .await
        .unwrap();
    let m = client
        .get("lost-and-found")
        .await
        .unwrap()
        .expect("caught by the alternate");
    assert_eq!(&m.body[..], b"caught");
    assert_eq!(m.exchange(), "orders");
    // An unknown exchange refuses the message with NOT_FOUND; the connection stays usable.
    let err = client
        .publish("nope", "k", "x", &PublishOptions::new())
        .await
        .unwrap_err();
    assert!(err.is_not_found(), "{err:?}");
    client
        .declare_queue("still-works", QueueOptions::new())
        .await
        .unwrap();
    broker.stop();
}
