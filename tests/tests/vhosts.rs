//! Vhosts as namespaces (protocol.md §5.8), against the real broker: the same names in two
//! vhosts are two resources, nothing crosses between them, listings show a client its own
//! vhost only, and a data directory with only `/` (what every broker wrote before vhosts)
//! reads back unchanged.

use std::path::{Path, PathBuf};

use serde_json::Value;
use sluice_client::{
    Client, Error, ExchangeKind, ExchangeOptions, HeaderValue, OutgoingMessage, PublishOptions,
    QueueOptions,
};
use sluice_tests::broker::{users_file_command, within, BrokerProcess};
use sluice_tests::http::HttpClient;

const APP_PASSWORD: &str = "app-secret";

/// A broker with vhosts `a` and `b`, user `app` (tag `management`) with every permission in
/// both and none in `/`, and `guest` (administrator) with every permission in all three.
struct Broker {
    process: BrokerProcess,
    data: PathBuf,
    _dir: tempfile::TempDir,
}

impl Broker {
    fn start() -> Broker {
        let dir = tempfile::tempdir().expect("temporary directory");
        let data = dir.path().join("data");
        let run = |args: &[&str], password: Option<&str>| {
            users_file_command(&data, args, password);
        };
        run(
            &["user", "add", "app", "--tags", "management"],
            Some(APP_PASSWORD),
        );
        for vhost in ["a", "b"] {
            run(&["vhost", "add", vhost], None);
            for user in ["app", "guest"] {
                let all = [
                    "permissions",
                    "set",
                    user,
                    "--vhost",
                    vhost,
                    "--configure",
                    ".*",
                    "--write",
                    ".*",
                    "--read",
                    ".*",
                ];
                run(&all, None);
            }
        }
        let process = BrokerProcess::start(&data, &[]);
        Broker {
            process,
            data,
            _dir: dir,
        }
    }

    /// Stops the broker and starts it again on the same data directory.
    fn restart(self) -> Broker {
        let Broker {
            process,
            data,
            _dir,
        } = self;
        process.stop();
        let process = BrokerProcess::start(&data, &[]);
        Broker {
            process,
            data,
            _dir,
        }
    }

    async fn app(&self, vhost: &str) -> Client {
        let url = format!(
            "sluice://app:{APP_PASSWORD}@{}/{vhost}",
            self.process.addr()
        );
        connect(&url).await
    }

    async fn guest(&self) -> Client {
        connect(&self.process.url()).await
    }

    fn http(&self, user: &str, password: &str) -> HttpClient {
        HttpClient::new(self.process.http_addr().expect("HTTP on"), user, password)
    }
}

fn json_of(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

/// `(vhost, name)` of each listed item, in order.
fn vhost_names(listing: &Value, name_field: &str) -> Vec<(String, String)> {
    listing
        .as_array()
        .expect("a listing")
        .iter()
        .map(|x| {
            (
                x["vhost"].as_str().expect("vhost").to_owned(),
                x[name_field].as_str().expect("name").to_owned(),
            )
        })
        .collect()
}

async fn queue_names(client: &Client) -> Vec<String> {
    let queues = within("list", client.list_queues()).await.unwrap();
    queues.into_iter().map(|q| q.name).collect()
}

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_names_in_two_vhosts_are_two_resources_and_messages_never_cross() {
    let broker = Broker::start();
    let (a, b, root) = (
        broker.app("a").await,
        broker.app("b").await,
        broker.guest().await,
    );
    for client in [&a, &b] {
        client
            .declare_queue("jobs", QueueOptions::new())
            .await
            .unwrap();
        client
            .declare_exchange("orders", ExchangeKind::Fanout, ExchangeOptions::new())
            .await
            .unwrap();
        client.bind("jobs", "orders", "", Vec::new()).await.unwrap();
    }
    root.declare_queue("rootq", QueueOptions::new())
        .await
        .unwrap();
    publish(&a, "orders", "", &["a1", "a2"]).await;
    // The default exchange of each vhost routes to its own queue of that name.
    publish(&a, "", "jobs", &["a3"]).await;
    publish(&b, "", "jobs", &["b1"]).await;
    let inspected = a.inspect_queue("jobs").await.unwrap();
    assert_eq!(inspected.ready, 3);
    // The reply names the queue as the vhost's clients do, never by its internal name.
    assert_eq!(inspected.name, "jobs");
    assert_eq!(b.inspect_queue("jobs").await.unwrap().ready, 1);
    // `/` has no queue `jobs`, and a publish there reaches neither.
    let missing = root
        .declare_queue("jobs", QueueOptions::passive())
        .await
        .unwrap_err();
    assert!(missing.is_not_found(), "{missing}");
    let unroutable = root
        .publish("", "jobs", "r1", &PublishOptions::new().mandatory())
        .await
        .unwrap_err();
    assert!(unroutable.is_unroutable(), "{unroutable}");

    // Listings over the wire show the connection's vhost, in its own names.
    assert_eq!(queue_names(&a).await, ["jobs"]);
    assert_eq!(queue_names(&root).await, ["rootq"]);
    let exchanges: Vec<String> = a
        .list_exchanges()
        .await
        .unwrap()
        .into_iter()
        .map(|x| x.name)
        .collect();
    assert_eq!(
        exchanges,
        [
            "",
            "amq.direct",
            "amq.fanout",
            "amq.headers",
            "amq.match",
            "amq.topic",
            "orders"
        ]
    );
    let bindings = a.list_bindings().await.unwrap();
    assert_eq!(bindings.len(), 1);
    assert_eq!(
        (&*bindings[0].exchange, &*bindings[0].queue),
        ("orders", "jobs")
    );

    // The HTTP API lists what each user may see, each item with its vhost.
    let all = json_of(&broker.http("guest", "guest").get("/api/queues").await.body);
    let mut all = vhost_names(&all, "name");
    all.sort();
    let pairs = |v: &[(&str, &str)]| -> Vec<(String, String)> {
        v.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    };
    assert_eq!(all, pairs(&[("/", "rootq"), ("a", "jobs"), ("b", "jobs")]));
    let app_http = broker.http("app", APP_PASSWORD);
    let mut seen = vhost_names(&json_of(&app_http.get("/api/queues").await.body), "name");
    seen.sort();
    assert_eq!(
        seen,
        pairs(&[("a", "jobs"), ("b", "jobs")]),
        "app has nothing in /"
    );
    let only_b = json_of(&app_http.get("/api/queues?vhost=b").await.body);
    assert_eq!(vhost_names(&only_b, "name"), pairs(&[("b", "jobs")]));
    assert_eq!(only_b[0]["ready"], 1);
    let refused = app_http.get("/api/queues/rootq").await;
    assert_eq!(refused.status, 403, "{refused:?}");
    // A queue of another vhost, through the HTTP API: the message taken is that vhost's.
    let got = app_http
        .post("/api/queues/jobs/get?vhost=b", r#"{"count": 5}"#)
        .await;
    assert_eq!(got.status, 200, "{got:?}");
    let got = json_of(&got.body);
    assert_eq!(got.as_array().unwrap().len(), 1, "{got}");
    assert_eq!(got[0]["payload"], "b1", "{got}");

    // /metrics tells the two queues apart by their vhost label.
    let metrics = HttpClient::anonymous(broker.process.http_addr().unwrap())
        .get("/metrics")
        .await
        .body;
    assert!(
        metrics.contains("sluice_queue_ready_messages{vhost=\"a\",queue=\"jobs\"} 3"),
        "{metrics}"
    );
    assert!(
        metrics.contains("sluice_queue_ready_messages{vhost=\"b\",queue=\"jobs\"} 0"),
        "{metrics}"
    );
    assert_eq!(take_all(&a, "jobs").await, ["a1", "a2", "a3"]);
    assert!(take_all(&b, "jobs").await.is_empty());
    broker.process.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_to_a_vhost_that_does_not_exist_is_refused() {
    let broker = Broker::start();
    let url = format!("sluice://app:{APP_PASSWORD}@{}/nope", broker.process.addr());
    let refused = within("login", Client::connect(&url)).await.unwrap_err();
    assert!(
        matches!(refused, Error::ConnectionClosed(_)) && refused.is_access_refused(),
        "{refused}"
    );
    // Nor may a user log in to a vhost it has no permission in.
    let url = format!("sluice://app:{APP_PASSWORD}@{}/", broker.process.addr());
    let refused = within("login", Client::connect(&url)).await.unwrap_err();
    assert!(refused.is_access_refused(), "{refused}");
    broker.process.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_stay_in_their_vhost_and_name_its_queue_and_exchange() {
    let broker = Broker::start();
    let (a, root) = (broker.app("a").await, broker.guest().await);
    for client in [&a, &root] {
        client
            .declare_exchange("dlx", ExchangeKind::Fanout, ExchangeOptions::new())
            .await
            .unwrap();
        client
            .declare_queue("dead", QueueOptions::new())
            .await
            .unwrap();
        client.bind("dead", "dlx", "", Vec::new()).await.unwrap();
    }
    a.declare_queue("work", QueueOptions::new().dead_letter_exchange("dlx"))
        .await
        .unwrap();
    publish(&a, "", "work", &["w1"]).await;
    let m = within("get", a.get("work")).await.unwrap().expect("w1");
    within("reject", m.reject()).await.unwrap();
    let dead = within("dead letter", async {
        loop {
            if let Some(m) = a.get("dead").await.unwrap() {
                return m;
            }
            tokio::task::yield_now().await;
        }
    })
    .await;
    assert_eq!(&dead.body[..], b"w1");
    assert_eq!(dead.exchange(), "dlx");
    assert_eq!(
        dead.header("x-death-queue"),
        Some(HeaderValue::from("work"))
    );
    assert_eq!(dead.header("x-death-exchange"), Some(HeaderValue::from("")));
    assert!(
        take_all(&root, "dead").await.is_empty(),
        "nothing reached /"
    );
    broker.process.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vhost_s_queues_exchanges_and_messages_survive_a_restart() {
    let broker = Broker::start();
    let a = broker.app("a").await;
    a.declare_exchange("orders", ExchangeKind::Topic, ExchangeOptions::new())
        .await
        .unwrap();
    a.declare_queue("jobs", QueueOptions::new()).await.unwrap();
    a.bind("jobs", "orders", "eu.#", Vec::new()).await.unwrap();
    publish(&a, "orders", "eu.de", &["kept"]).await;
    a.close().await.unwrap();
    let broker = broker.restart();
    let a = broker.app("a").await;
    let root = broker.guest().await;
    assert_eq!(queue_names(&root).await, Vec::<String>::new());
    assert_eq!(queue_names(&a).await, ["jobs"]);
    publish(&a, "orders", "eu.fr", &["after"]).await;
    publish(&a, "amq.direct", "x", &["nowhere"]).await;
    assert_eq!(take_all(&a, "jobs").await, ["kept", "after"]);
    broker.process.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn definitions_carry_their_vhost_out_and_back_in() {
    let source = Broker::start();
    let a = source.app("a").await;
    a.declare_exchange("orders", ExchangeKind::Topic, ExchangeOptions::new())
        .await
        .unwrap();
    a.declare_queue("jobs", QueueOptions::new().dead_letter_exchange("orders"))
        .await
        .unwrap();
    a.bind("jobs", "orders", "eu.#", Vec::new()).await.unwrap();
    source
        .guest()
        .await
        .declare_queue("rootq", QueueOptions::new())
        .await
        .unwrap();
    let exported = source.http("guest", "guest").get("/api/definitions").await;
    assert_eq!(exported.status, 200, "{exported:?}");
    let doc = json_of(&exported.body);
    // By vhost (`/` first, its items without a `vhost` field), then by name.
    assert_eq!(
        doc["queues"],
        serde_json::json!([
            {"name": "rootq", "auto_delete": false, "arguments": {}},
            {"vhost": "a", "name": "jobs", "auto_delete": false,
             "arguments": {"dead_letter_exchange": "orders"}}
        ]),
        "{doc}"
    );
    assert_eq!(doc["exchanges"][0]["vhost"], "a", "{doc}");
    assert_eq!(doc["bindings"][0]["vhost"], "a", "{doc}");
    // app sees only its vhosts' part.
    let app_doc = json_of(
        &source
            .http("app", APP_PASSWORD)
            .get("/api/definitions")
            .await
            .body,
    );
    assert_eq!(app_doc["queues"].as_array().unwrap().len(), 1, "{app_doc}");
    source.process.stop();

    let target = Broker::start();
    let imported = target
        .http("guest", "guest")
        .post("/api/definitions", &exported.body)
        .await;
    assert_eq!(imported.status, 200, "{imported:?}");
    let report = json_of(&imported.body);
    assert_eq!(report["errors"], serde_json::json!([]), "{report}");
    assert_eq!(
        (report["queues"].as_u64(), report["bindings"].as_u64()),
        (Some(2), Some(1))
    );
    let a = target.app("a").await;
    assert_eq!(queue_names(&a).await, ["jobs"]);
    publish(&a, "orders", "eu.it", &["routed"]).await;
    assert_eq!(take_all(&a, "jobs").await, ["routed"]);
    assert_eq!(queue_names(&target.guest().await).await, ["rootq"]);
    target.process.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_imports_into_its_url_s_vhost_and_refuses_items_of_another() {
    let broker = Broker::start();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("topology.json");
    std::fs::write(
        &file,
        r#"{"version": 1, "queues": [
            {"name": "here", "auto_delete": false, "arguments": {}},
            {"vhost": "b", "name": "there", "auto_delete": false, "arguments": {}}]}"#,
    )
    .unwrap();
    let url = format!("sluice://app@{}/a", broker.process.addr());
    let mut cmd = sluice_tests::broker::sluice_command();
    cmd.args(["definitions", "import"])
        .arg(&file)
        .args(["--url", &url])
        .env("SLUICE_PASSWORD", APP_PASSWORD)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let child = cmd.spawn().expect("sluice starts");
    let output = tokio::task::spawn_blocking(move || sluice_tests::broker::wait_output(child))
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("belongs to vhost 'b'"), "{stderr}");
    assert_eq!(queue_names(&broker.app("a").await).await, ["here"]);
    assert!(queue_names(&broker.app("b").await).await.is_empty());
    broker.process.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_vhost_closes_its_connections_and_removes_its_queues_and_exchanges() {
    let broker = Broker::start();
    let a = broker.app("a").await;
    a.declare_exchange("orders", ExchangeKind::Fanout, ExchangeOptions::new())
        .await
        .unwrap();
    a.declare_queue("jobs", QueueOptions::new()).await.unwrap();
    a.bind("jobs", "orders", "", Vec::new()).await.unwrap();
    publish(&a, "orders", "", &["gone with the vhost"]).await;
    let root = broker.guest().await;
    root.declare_queue("jobs", QueueOptions::new())
        .await
        .unwrap();
    publish(&root, "", "jobs", &["stays in /"]).await;

    let admin = broker.http("guest", "guest");
    let deleted = admin.delete("/api/vhosts/a", None).await;
    assert_eq!(deleted.status, 204, "{}", deleted.body);
    // Its connection is closed by the server, not left working in a vhost that is gone.
    match within("the connection closes", a.list_queues()).await {
        Err(Error::ConnectionClosed(_)) => {}
        other => panic!("a connection of the deleted vhost stayed open: {other:?}"),
    }
    // Created again, the vhost is empty: nothing of the old one was left behind.
    let created = admin.put("/api/vhosts/a", "{}").await;
    assert_eq!(created.status, 201, "{}", created.body);
    let granted = admin
        .put(
            "/api/permissions/a/app",
            r#"{"configure": ".*", "write": ".*", "read": ".*"}"#,
        )
        .await;
    assert!(granted.status < 300, "{}", granted.body);
    let again = broker.app("a").await;
    assert_eq!(queue_names(&again).await, Vec::<String>::new());
    let exchanges = within("list", again.list_exchanges()).await.unwrap();
    assert!(
        exchanges.iter().all(|x| x.name != "orders"),
        "{exchanges:?}"
    );
    // The same name in `/` was never touched.
    assert_eq!(take_all(&root, "jobs").await, ["stays in /"]);
    again.close().await.unwrap();
    root.close().await.unwrap();
    // After a restart too: the deleted vhost's queue left nothing in the data directory.
    let broker = broker.restart();
    let root = broker.guest().await;
    assert_eq!(queue_names(&root).await, ["jobs"]);
    let a = broker.app("a").await;
    assert_eq!(queue_names(&a).await, Vec::<String>::new());
    broker.process.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_management_user_does_not_see_sums_over_other_vhosts() {
    let broker = Broker::start();
    let app = broker.http("app", APP_PASSWORD);
    for path in ["/api/overview", "/api/overview/history", "/api/limits"] {
        let refused = app.get(path).await;
        assert_eq!(refused.status, 403, "{path}: {}", refused.body);
        assert!(refused.body.contains("monitoring"), "{}", refused.body);
    }
    // Its own vhosts' listings stay open to it.
    let queues = app.get("/api/queues?vhost=a").await;
    assert_eq!(queues.status, 200, "{}", queues.body);
    let admin = broker.http("guest", "guest");
    assert_eq!(admin.get("/api/overview").await.status, 200);
    broker.process.stop();
}
