//! Faults on a 3-node cluster of real `sluice serve` processes, with a replicated queue
//! (`replicas = 3`) under confirmed load throughout: kill -9 of its leader 20 times in a row,
//! a partition of one node, a rolling restart, a node's disk wiped and rebuilt. Every run ends
//! with the model check of what the clients saw ([`History::check`]): no confirmed message
//! lost, none delivered again after its ack was confirmed.
//!
//! The clients follow the cluster themselves, as an application on a one-host client would:
//! the publisher moves to the next node when its node dies or stops answering, the consumer
//! follows `NOT_LEADER` and `LEADER_MOVED` to the queue's leader. Waits are on events (the
//! load's counters, a node's answers) and bounded; the short pauses in the clients' loops pace
//! retries, they synchronise nothing.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::Value;
use sluice_client::{
    Client, ConsumeOptions, Consumer, Error, ErrorCode, OutgoingMessage, QueueArguments,
};
use sluice_tests::broker::within;
use sluice_tests::cluster::{replicated, ClusterProcess, NodeId};
use sluice_tests::history::{AckOutcome, History, Violation};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Bounded wait for a leader to be elected and known everywhere (election timeout 1–2 s on
/// a busy 2-core machine, and a debug build).
const ELECTION: Duration = Duration::from_secs(30);
/// Bounded wait for the load to make progress after a fault was dealt with.
const PROGRESS: Duration = Duration::from_secs(45);
/// Pace of the clients' retries and of polls of a node's HTTP API.
const POLL: Duration = Duration::from_millis(100);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Longer than the broker's own proposal timeout (10 s): a publish or an ack that outlives it
/// is stuck, not slow.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(20);
/// Messages per publish call: pipelined, each confirmed on its own.
const BATCH: usize = 8;
/// One ack in this many waits for its confirmation (the others are plain acks, settled in
/// the same group commits).
const CONFIRM_EVERY: u64 = 4;
const QUEUE: &str = "faults";

/// A client that neither reconnects nor follows leaders by itself: this load driver does
/// both explicitly, and records every delivery on the node that made it.
async fn raw_connect(url: &str) -> Result<Client, sluice_client::Error> {
    Client::builder()
        .reconnect_timeout(Duration::ZERO)
        .connect(url)
        .await
}

async fn connect(url: &str) -> Client {
    within("connect", raw_connect(url)).await.unwrap()
}

async fn declare(cluster: &ClusterProcess) {
    let client = connect(&cluster.node(1).url()).await;
    if let Err(e) = within(
        "declare",
        client.declare_queue(QUEUE, replicated(QueueArguments::default())),
    )
    .await
    {
        panic!(
            "declare {QUEUE}: {e}; node 1's log:\n{}",
            cluster.node(1).log()
        );
    }
    client.close().await.unwrap();
}

/// Every node's id and client address: the addresses stay the same across restarts.
#[derive(Debug, Clone)]
struct Nodes(Arc<Vec<(NodeId, String)>>);

impl Nodes {
    fn of(cluster: &ClusterProcess) -> Nodes {
        let nodes = (1..=cluster.len() as NodeId)
            .map(|id| (id, cluster.node(id).addr().to_owned()))
            .collect();
        Nodes(Arc::new(nodes))
    }

    fn url(&self, id: NodeId) -> String {
        format!("sluice://guest:guest@{}", self.addr(id))
    }

    fn addr(&self, id: NodeId) -> &str {
        &self.0.iter().find(|(n, _)| *n == id).expect("a node").1
    }

    fn at(&self, addr: &str) -> Option<NodeId> {
        self.0.iter().find(|(_, a)| a == addr).map(|(n, _)| *n)
    }
}

/// What the load did so far, published on a watch channel so a test waits on it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Counts {
    confirmed: u64,
    delivered: u64,
    /// Acks the broker confirmed.
    acks_confirmed: u64,
    /// Longest time between two confirms, and the last confirm.
    longest_gap: Duration,
    last_confirm: Option<Instant>,
}

/// A confirmed publisher and an acking consumer of [`QUEUE`], recording into one history.
struct Load {
    history: History,
    counts: watch::Receiver<Counts>,
    stop_publishing: Arc<AtomicBool>,
    publisher: JoinHandle<u64>,
    consumer: JoinHandle<()>,
}

impl Load {
    /// Starts publishing through `publish_on` (the next one when a node fails) and consuming
    /// from the queue's leader, when it is one of `consume_on`.
    fn start(nodes: &Nodes, publish_on: Vec<NodeId>, consume_on: Vec<NodeId>) -> Load {
        let history = History::new();
        let (counts_tx, counts) = watch::channel(Counts::default());
        let counts_tx = Arc::new(counts_tx);
        let stop_publishing = Arc::new(AtomicBool::new(false));
        let publisher = tokio::spawn(publish(
            nodes.clone(),
            publish_on,
            history.clone(),
            Arc::clone(&counts_tx),
            Arc::clone(&stop_publishing),
        ));
        let consumer = tokio::spawn(consume(
            nodes.clone(),
            consume_on,
            history.clone(),
            counts_tx,
        ));
        Load {
            history,
            counts,
            stop_publishing,
            publisher,
            consumer,
        }
    }

    fn now(&self) -> Counts {
        *self.counts.borrow()
    }

    /// Waits (bounded) until `more` confirms and `acks` confirmed acks beyond `since`.
    async fn progress(&mut self, what: &str, since: Counts, more: u64, acks: u64) {
        let wait = self.counts.wait_for(|c| {
            c.confirmed >= since.confirmed + more && c.acks_confirmed >= since.acks_confirmed + acks
        });
        let outcome = tokio::time::timeout(PROGRESS, wait)
            .await
            .map(|r| r.is_ok());
        match outcome {
            Ok(true) => {}
            Ok(false) => panic!("{what}: the load's tasks ended"),
            Err(_) => panic!(
                "{what}: no progress within {PROGRESS:?} (wanted {more} confirms and {acks} acks \
                 beyond {since:?}, at {:?})",
                self.now()
            ),
        }
    }

    async fn stop_publishing(&mut self) -> u64 {
        self.stop_publishing.store(true, Ordering::Relaxed);
        within("the publisher stops", &mut self.publisher)
            .await
            .expect("the publisher task")
    }

    /// Stops publishing, waits (bounded) until every confirmed message was delivered, stops
    /// consuming, and returns the history.
    async fn drain(mut self) -> History {
        self.stop_publishing().await;
        let history = self.history.clone();
        let drained = async {
            loop {
                if !history
                    .check()
                    .iter()
                    .any(|v| matches!(v, Violation::Lost { .. }))
                {
                    return;
                }
                self.counts.changed().await.expect("the consumer runs");
            }
        };
        if tokio::time::timeout(PROGRESS, drained).await.is_err() {
            let lost = history.check().len();
            panic!(
                "{lost} confirmed message(s) still undelivered after {PROGRESS:?}: {:?}",
                history.summary()
            );
        }
        self.consumer.abort();
        let _ = self.consumer.await;
        history
    }
}

/// Publishes batches of [`BATCH`] messages, one confirmed publish call after another, until
/// told to stop; returns how many messages it sent.
async fn publish(
    nodes: Nodes,
    on: Vec<NodeId>,
    history: History,
    counts: Arc<watch::Sender<Counts>>,
    stop: Arc<AtomicBool>,
) -> u64 {
    let mut sent = 0u64;
    let mut turn = 0usize;
    let mut client: Option<Client> = None;
    while !stop.load(Ordering::Relaxed) {
        let node = on[turn % on.len()];
        let c = match client.as_ref().filter(|c| !c.is_closed()) {
            Some(c) => c.clone(),
            None => {
                match tokio::time::timeout(CONNECT_TIMEOUT, raw_connect(&nodes.url(node))).await {
                    Ok(Ok(c)) => client.insert(c).clone(),
                    _ => {
                        turn += 1;
                        tokio::time::sleep(POLL).await;
                        continue;
                    }
                }
            }
        };
        let ids: Vec<String> = (sent..sent + BATCH as u64)
            .map(|i| format!("m-{i}"))
            .collect();
        sent += BATCH as u64;
        for id in &ids {
            history.published(id.as_str());
        }
        let batch = ids
            .iter()
            .map(|id| OutgoingMessage::new("", QUEUE, id.clone().into_bytes()));
        let mut failed = false;
        match tokio::time::timeout(ANSWER_TIMEOUT, c.publish_batch(batch)).await {
            Ok(results) => {
                for (id, result) in ids.iter().zip(results) {
                    match result {
                        Ok(_) => {
                            history.confirmed(id.as_str());
                            counts.send_modify(|c| {
                                let now = Instant::now();
                                if let Some(last) = c.last_confirm {
                                    c.longest_gap = c.longest_gap.max(now - last);
                                }
                                c.last_confirm = Some(now);
                                c.confirmed += 1;
                            });
                        }
                        Err(e) => {
                            failed = true;
                            if e.is_connection_closed() {
                                client = None;
                            }
                            history.refused(id.as_str(), e);
                        }
                    }
                }
            }
            Err(_) => {
                for id in &ids {
                    history.refused(id.as_str(), "no answer in time");
                }
                failed = true;
                client = None;
            }
        }
        if failed {
            // A node that is down, cut off or between leaders: try the next one shortly.
            if client.is_none() {
                turn += 1;
            }
            tokio::time::sleep(POLL).await;
        }
    }
    sent
}

/// Consumes from the queue's leader and acks everything, following it wherever it goes
/// among `on`; runs until aborted.
async fn consume(
    nodes: Nodes,
    on: Vec<NodeId>,
    history: History,
    counts: Arc<watch::Sender<Counts>>,
) {
    let mut ask = on[0];
    loop {
        let Some((node, mut consumer)) = consumer_on_leader(&nodes, &on, &mut ask).await else {
            tokio::time::sleep(POLL).await;
            continue;
        };
        let mut n = 0u64;
        // Ends with LEADER_MOVED, or when the node dies: find the leader again.
        while let Some(Ok(m)) = consumer.next().await {
            let id = String::from_utf8_lossy(&m.body).into_owned();
            history.delivered(id.as_str(), node, m.redelivered);
            counts.send_modify(|c| c.delivered += 1);
            n += 1;
            let outcome = if n % CONFIRM_EVERY == 0 {
                match tokio::time::timeout(ANSWER_TIMEOUT, m.ack_confirmed()).await {
                    Ok(Ok(())) => AckOutcome::Confirmed,
                    Ok(Err(e)) if e.is_connection_closed() => AckOutcome::Lost,
                    _ => AckOutcome::Unconfirmed,
                }
            } else {
                match m.ack().await {
                    Ok(()) => AckOutcome::Unconfirmed,
                    Err(_) => AckOutcome::Lost,
                }
            };
            history.acked(id.as_str(), node, outcome);
            if outcome == AckOutcome::Confirmed {
                counts.send_modify(|c| c.acks_confirmed += 1);
            }
        }
    }
}

/// One attempt at a consumer on the queue's leader, starting with node `ask` and following
/// `NOT_LEADER` (within `on`); on failure `ask` names the node to try next.
async fn consumer_on_leader(
    nodes: &Nodes,
    on: &[NodeId],
    ask: &mut NodeId,
) -> Option<(NodeId, Consumer)> {
    let next = |n: NodeId| {
        let i = on.iter().position(|&o| o == n).unwrap_or(0);
        on[(i + 1) % on.len()]
    };
    let connected = tokio::time::timeout(CONNECT_TIMEOUT, raw_connect(&nodes.url(*ask))).await;
    let Ok(Ok(client)) = connected else {
        *ask = next(*ask);
        return None;
    };
    let asked = client.consume(QUEUE, ConsumeOptions::new().prefetch(50));
    match tokio::time::timeout(ANSWER_TIMEOUT, asked).await {
        Ok(Ok(consumer)) => Some((*ask, consumer)),
        Ok(Err(Error::Server {
            code: ErrorCode::NotLeader,
            message,
        })) => {
            // Empty while no leader is known: ask the same node again shortly.
            if let Some(leader) = nodes.at(&message).filter(|l| on.contains(l)) {
                *ask = leader;
            }
            None
        }
        _ => {
            *ask = next(*ask);
            None
        }
    }
}

/// The queue's fields as node `id` shows them (`GET /api/queues/NAME`).
async fn queue_json(cluster: &ClusterProcess, id: NodeId) -> Value {
    let path = format!("/api/queues/{QUEUE}");
    let response = cluster.node(id).http().get(&path).await;
    assert_eq!(
        response.status, 200,
        "node {id}: GET {path}: {}",
        response.body
    );
    serde_json::from_str(&response.body).expect("JSON")
}

/// The lag of `replica` as the leader `leader` sees it.
fn lag_of(queue: &Value, replica: NodeId) -> Option<u64> {
    queue["replicas"]
        .as_array()?
        .iter()
        .find(|r| r["node"].as_u64() == Some(replica))?
        .get("lag")?
        .as_u64()
}

/// Waits (bounded) until `leader` sees `replica` with no lag, and `replica` holds as many
/// messages as the leader (nothing consumes meanwhile): it caught up.
async fn await_caught_up(cluster: &ClusterProcess, leader: NodeId, replica: NodeId) {
    let last = std::sync::Mutex::new(None);
    let depth = |q: &Value| q["ready"].as_u64().unwrap_or(0) + q["unacked"].as_u64().unwrap_or(0);
    let wait = async {
        loop {
            let on_leader = queue_json(cluster, leader).await;
            let on_replica = queue_json(cluster, replica).await;
            if lag_of(&on_leader, replica) == Some(0) && depth(&on_leader) == depth(&on_replica) {
                return depth(&on_leader);
            }
            *last.lock().unwrap() = Some((on_leader, on_replica));
            tokio::time::sleep(POLL).await;
        }
    };
    let Ok(depth) = tokio::time::timeout(PROGRESS, wait).await else {
        let (on_leader, on_replica) = last.lock().unwrap().take().unwrap_or_default();
        panic!(
            "node {replica} did not catch up with leader {leader} within {PROGRESS:?}:\n\
             leader: {on_leader}\nreplica: {on_replica}\nthe replica's log:\n{}",
            cluster.node(replica).log()
        );
    };
    eprintln!("node {replica} caught up with leader {leader}: {depth} messages");
}

/// Waits (bounded) until every node of `among` sees the same leader of the queue, one of
/// `among`, and returns it (the other nodes may think otherwise: a partitioned one does).
async fn await_leader_among(cluster: &ClusterProcess, among: &[NodeId]) -> NodeId {
    let last = std::sync::Mutex::new(Vec::new());
    let wait = async {
        loop {
            let mut seen = Vec::new();
            for &id in among {
                seen.push(cluster.leader_seen_by(id, QUEUE).await);
            }
            if let Some(Some(leader)) = seen.first().copied() {
                if among.contains(&leader) && seen.iter().all(|s| *s == Some(leader)) {
                    return leader;
                }
            }
            *last.lock().unwrap() = seen;
            tokio::time::sleep(POLL).await;
        }
    };
    let Ok(leader) = tokio::time::timeout(ELECTION, wait).await else {
        let seen = last.lock().unwrap().clone();
        let logs: Vec<String> = among
            .iter()
            .zip(&seen)
            .map(|(&id, _)| format!("node {id}'s log:\n{}", cluster.node(id).log()))
            .collect();
        panic!(
            "no leader agreed by nodes {among:?} within {ELECTION:?}: they see {seen:?}\n{}",
            logs.join("\n")
        );
    };
    leader
}

fn all(cluster: &ClusterProcess) -> Vec<NodeId> {
    (1..=cluster.len() as NodeId).collect()
}

/// The model check, and the redelivered flag: a message delivered again must say it may have
/// been delivered before (protocol.md §9.5), failover or not.
fn assert_clean(history: &History) {
    history.assert_clean();
    let summary = history.summary();
    if summary.unflagged_duplicates > 0 {
        // The first few, to read what happened to them.
        let mut shown = 0;
        for i in 0..summary.published {
            let Some(r) = history.record(format!("m-{i}")) else {
                continue;
            };
            if r.deliveries.iter().skip(1).any(|d| !d.redelivered) && shown < 5 {
                eprintln!("m-{i}: {r:?}");
                shown += 1;
            }
        }
    }
    assert_eq!(
        summary.unflagged_duplicates, 0,
        "messages delivered again without the redelivered flag: {summary:?}"
    );
}

fn report(test: &str, started: Instant, history: &History, load: Option<Counts>) {
    eprintln!(
        "{test}: {:?} in {:.1} s{}",
        history.summary(),
        started.elapsed().as_secs_f64(),
        load.map(|c| format!(", longest pause between confirms {:?}", c.longest_gap))
            .unwrap_or_default()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_kill_9s_of_the_leader_under_confirmed_load_lose_no_confirmed_message_and_resurrect_no_acked_one(
) {
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = ClusterProcess::start(dir.path(), 3, &[]).await;
    declare(&cluster).await;
    let nodes = Nodes::of(&cluster);
    let mut load = Load::start(&nodes, all(&cluster), all(&cluster));
    load.progress("before the first kill", Counts::default(), 50, 5)
        .await;

    for round in 1..=20 {
        let leader = cluster.await_leader_of(QUEUE, None).await;
        let at_kill = load.now();
        let killed_at = Instant::now();
        cluster.kill9(leader);
        load.history.killed(leader);
        let new_leader = cluster.await_leader_of(QUEUE, Some(leader)).await;
        let elected = killed_at.elapsed();
        cluster.restart(leader).await;
        // The load goes on through the new leader: publishes confirmed, deliveries acked.
        load.progress(&format!("round {round}"), at_kill, 2 * BATCH as u64, 2)
            .await;
        eprintln!(
            "round {round}: killed {leader}, node {new_leader} leads after {elected:?}, \
             load back after {:?}",
            killed_at.elapsed()
        );
    }
    let counts = load.now();
    let history = load.drain().await;
    report("20 kills", started, &history, Some(counts));
    assert_clean(&history);
    let summary = history.summary();
    assert_eq!(summary.kills, 20);
    assert!(
        summary.confirmed >= 500 && summary.acked >= 100,
        "the run did too little to prove anything: {summary:?}"
    );
    cluster.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_node_confirms_nothing_while_the_majority_goes_on_and_it_catches_up_once_healed(
) {
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = ClusterProcess::start_proxied(dir.path(), 3, &[]).await;
    declare(&cluster).await;
    let nodes = Nodes::of(&cluster);
    let cut = cluster.await_leader_of(QUEUE, None).await;
    let majority: Vec<NodeId> = all(&cluster).into_iter().filter(|&n| n != cut).collect();
    // The clients stay on the majority side; the node to be cut off leads at first, so the
    // publishes are forwarded to it until the partition.
    let mut load = Load::start(&nodes, majority.clone(), majority.clone());
    load.progress("before the partition", Counts::default(), 50, 0)
        .await;

    cluster.isolate(cut);
    let new_leader = await_leader_among(&cluster, &majority).await;
    let at_partition = load.now();
    load.progress("on the majority", at_partition, 100, 10)
        .await;

    // The cut-off node still believes it leads, and is reached directly by a client: what it
    // is sent cannot be committed, so it must not be confirmed.
    let minority = connect(&cluster.node(cut).url()).await;
    let ids: Vec<String> = (0..5).map(|i| format!("minority-{i}")).collect();
    for id in &ids {
        load.history.published(id.as_str());
    }
    let batch = ids
        .iter()
        .map(|id| OutgoingMessage::new("", QUEUE, id.clone().into_bytes()));
    match tokio::time::timeout(ANSWER_TIMEOUT, minority.publish_batch(batch)).await {
        Ok(results) => {
            for (id, result) in ids.iter().zip(results) {
                match result {
                    Ok(confirmed) => panic!(
                        "node {cut}, cut off from the majority, confirmed {id} ({confirmed:?})"
                    ),
                    Err(e) => load.history.refused(id.as_str(), e),
                }
            }
        }
        Err(_) => {
            for id in &ids {
                load.history
                    .refused(id.as_str(), "no answer from the minority");
            }
        }
    }
    assert!(
        load.now().confirmed > at_partition.confirmed,
        "the majority kept confirming meanwhile"
    );

    cluster.heal();
    let healed = load.now();
    let rejoined = async {
        while cluster.leader_seen_by(cut, QUEUE).await != Some(new_leader) {
            tokio::time::sleep(POLL).await;
        }
    };
    tokio::time::timeout(ELECTION, rejoined)
        .await
        .unwrap_or_else(|_| panic!("node {cut} never followed node {new_leader} once healed"));
    load.progress("after healing", healed, 50, 5).await;
    let counts = load.now();
    let history = load.drain().await;
    await_caught_up(&cluster, new_leader, cut).await;
    report("partition", started, &history, Some(counts));
    assert_clean(&history);
    cluster.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_under_confirmed_load_pauses_confirms_only_briefly_and_loses_nothing() {
    /// Longest acceptable pause between two confirms: a leader's graceful stop costs at
    /// most an election (1–2 s) and the clients' moves, on a busy machine.
    const PAUSE: Duration = Duration::from_secs(15);
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = ClusterProcess::start(dir.path(), 3, &[]).await;
    declare(&cluster).await;
    let nodes = Nodes::of(&cluster);
    let mut load = Load::start(&nodes, all(&cluster), all(&cluster));
    load.progress("before the restarts", Counts::default(), 50, 5)
        .await;

    for id in all(&cluster) {
        let before = load.now();
        cluster.stop_node(id);
        cluster.restart(id).await;
        load.progress(&format!("node {id} restarted"), before, 2 * BATCH as u64, 2)
            .await;
        // The next node goes down only once this one replicates again (within one
        // append's worth of entries of the leader: under load it is rarely at zero).
        let leader = cluster.await_leader_of(QUEUE, None).await;
        if leader != id {
            await_replicating(&cluster, leader, id).await;
        }
    }
    let counts = load.now();
    let history = load.drain().await;
    report("rolling restart", started, &history, Some(counts));
    assert_clean(&history);
    assert!(
        counts.longest_gap < PAUSE,
        "confirms paused for {:?} during the rolling restart",
        counts.longest_gap
    );
    cluster.stop();
}

/// Waits (bounded) until `leader` sees `replica` less than one append request (64 entries)
/// behind.
async fn await_replicating(cluster: &ClusterProcess, leader: NodeId, replica: NodeId) {
    let wait = async {
        while lag_of(&queue_json(cluster, leader).await, replica).is_none_or(|lag| lag >= 64) {
            tokio::time::sleep(POLL).await;
        }
    };
    tokio::time::timeout(PROGRESS, wait)
        .await
        .unwrap_or_else(|_| panic!("node {replica} never caught up with {leader}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_rebuilt_from_a_wiped_disk_serve_every_confirmed_message_once_the_leader_is_killed() {
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = ClusterProcess::start(dir.path(), 3, &[]).await;
    declare(&cluster).await;
    let nodes = Nodes::of(&cluster);
    // Messages published and partly consumed, then left in the queue.
    let history = History::new();
    let publisher = connect(&cluster.node(1).url()).await;
    for round in 0..40 {
        let ids: Vec<String> = (0..10).map(|i| format!("m-{round}-{i}")).collect();
        for id in &ids {
            history.published(id.as_str());
        }
        let batch = ids
            .iter()
            .map(|id| OutgoingMessage::new("", QUEUE, id.clone().into_bytes()));
        let results = within("publish", publisher.publish_batch(batch)).await;
        for (id, result) in ids.iter().zip(results) {
            result.unwrap_or_else(|e| panic!("publish {id}: {e}"));
            history.confirmed(id.as_str());
        }
    }
    let leader = cluster.await_leader_of(QUEUE, None).await;
    {
        let client = connect(&cluster.node(leader).url()).await;
        let mut consumer = within(
            "consume",
            client.consume(QUEUE, ConsumeOptions::new().prefetch(10)),
        )
        .await
        .unwrap();
        for _ in 0..100 {
            let m = within("delivery", consumer.next()).await.unwrap().unwrap();
            let id = String::from_utf8_lossy(&m.body).into_owned();
            history.delivered(id.as_str(), leader, m.redelivered);
            within("ack", m.ack_confirmed()).await.unwrap();
            history.acked(id.as_str(), leader, AckOutcome::Confirmed);
        }
        within("cancel", consumer.cancel()).await.unwrap();
        client.close().await.unwrap();
    }

    // Both followers lose their disk in turn. Each machine is refused under its old id (it
    // forgot that member's votes); the operator removes the member, the machine joins under
    // a new id and gets the queue from the others before the next goes.
    let followers: Vec<NodeId> = all(&cluster).into_iter().filter(|&n| n != leader).collect();
    let mut rebuilt = Vec::new();
    for &f in &followers {
        cluster.wipe_and_start_again(f).await;
        cluster
            .await_log(f, "this node's data directory is new")
            .await;
        cluster.stop_node(f);
        let admin = connect(&nodes.url(leader)).await;
        within("remove-node", admin.remove_node(f))
            .await
            .unwrap_or_else(|e| panic!("remove node {f}: {e}"));
        admin.close().await.unwrap();
        let new = cluster.add_node().await;
        rebuilt.push(new);
        let live: Vec<NodeId> = cluster.running();
        let now_leader = await_leader_among(&cluster, &live).await;
        assert_eq!(now_leader, leader, "a rejoining node took the leadership");
        await_caught_up(&cluster, leader, new).await;
    }

    // The only node that kept its disk dies: the queue lives on the rebuilt ones alone.
    cluster.kill9(leader);
    history.killed(leader);
    let rebuilt_leader = cluster.await_leader_of(QUEUE, Some(leader)).await;
    assert!(rebuilt.contains(&rebuilt_leader));
    let client = connect(&Nodes::of(&cluster).url(rebuilt_leader)).await;
    let mut consumer = within(
        "consume on the rebuilt node",
        client.consume(QUEUE, ConsumeOptions::new().prefetch(50)),
    )
    .await
    .unwrap();
    let drained = async {
        while history
            .check()
            .iter()
            .any(|v| matches!(v, Violation::Lost { .. }))
        {
            let m = consumer.next().await.unwrap().unwrap();
            let id = String::from_utf8_lossy(&m.body).into_owned();
            history.delivered(id.as_str(), rebuilt_leader, m.redelivered);
            m.ack_confirmed().await.unwrap();
            history.acked(id.as_str(), rebuilt_leader, AckOutcome::Confirmed);
        }
    };
    within("every confirmed message from the rebuilt node", drained).await;
    // Nothing more than the 300 unacked messages: no acked one came back.
    let inspected = within("inspect", client.inspect_queue(QUEUE))
        .await
        .unwrap();
    assert_eq!((inspected.ready, inspected.unacked), (0, 0));
    report("wipe and rebuild", started, &history, None);
    assert_clean(&history);
    assert_eq!(history.summary().delivered, 400);
    cluster.stop();
}
