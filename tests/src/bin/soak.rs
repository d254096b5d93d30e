//! `soak`: kills the real broker with SIGKILL over and over under mixed load (publishers,
//! consumers that ack, a client that declares and deletes queues) and checks the history:
//! nothing delivered that was never published, no message with different bytes, no acked
//! message delivered again without the `redelivered` flag, every confirmed message delivered
//! in the end, and every answered declare or delete still true after the crashes.
//!
//! Not part of the test suite (it runs for minutes): `scripts/soak [CYCLES]`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use futures_util::stream::FuturesUnordered;
use futures_util::StreamExt;
use sluice_client::{
    Client, ConsumeOptions, DeleteQueueOptions, ErrorCode, PublishOptions, QueueOptions,
};
use sluice_tests::broker::BrokerProcess;
use tokio::sync::mpsc;

const QUEUES: [&str; 3] = ["soak-a", "soak-b", "soak-c"];
const FLAGS: &[&str] = &["--segment-bytes", "1048576"];
const WAIT: Duration = Duration::from_secs(60);

/// Message `id`'s exact bytes: its id, then a pattern of varying length.
fn payload(id: u64) -> Bytes {
    let mut x = id.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut v = format!("{id}:").into_bytes();
    v.extend((0..32 + id % 500).map(|_| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x as u8
    }));
    Bytes::from(v)
}

fn id_of(body: &[u8]) -> Option<u64> {
    let end = body.iter().position(|&b| b == b':')?;
    std::str::from_utf8(&body[..end]).ok()?.parse().ok()
}

/// What the clients saw, in the order they saw it.
#[derive(Debug)]
enum Event {
    Sent(usize, u64),
    Confirmed(usize, u64),
    Delivered {
        queue: usize,
        body: Bytes,
        redelivered: bool,
    },
    Acked(usize, u64),
    /// A churn queue's state as last answered: true = declared, false = deleted.
    Churn(u64, bool),
    /// A churn request was sent and not answered: its outcome is unknown.
    ChurnUnknown(u64),
}

#[derive(Debug, Default)]
struct History {
    sent: Vec<BTreeSet<u64>>,
    confirmed: Vec<BTreeSet<u64>>,
    acked: Vec<BTreeSet<u64>>,
    delivered: u64,
    redelivered: u64,
    churn: BTreeMap<u64, Option<bool>>,
    violations: Vec<String>,
}

impl History {
    fn new() -> Self {
        let per_queue = || vec![BTreeSet::new(); QUEUES.len()];
        History {
            sent: per_queue(),
            confirmed: per_queue(),
            acked: per_queue(),
            ..History::default()
        }
    }

    fn apply(&mut self, event: Event) {
        match event {
            Event::Sent(q, id) => {
                self.sent[q].insert(id);
            }
            Event::Confirmed(q, id) => {
                self.confirmed[q].insert(id);
            }
            Event::Delivered {
                queue,
                body,
                redelivered,
            } => self.delivered(queue, &body, redelivered),
            Event::Acked(q, id) => {
                self.acked[q].insert(id);
            }
            Event::Churn(k, declared) => {
                self.churn.insert(k, Some(declared));
            }
            Event::ChurnUnknown(k) => {
                self.churn.insert(k, None);
            }
        }
    }

    fn delivered(&mut self, q: usize, body: &Bytes, redelivered: bool) {
        self.delivered += 1;
        self.redelivered += u64::from(redelivered);
        let Some(id) = id_of(body) else {
            return self.violation(format!("{}: a body without an id", QUEUES[q]));
        };
        if !self.sent[q].contains(&id) {
            self.violation(format!("{}: message {id} was never published", QUEUES[q]));
        } else if *body != payload(id) {
            self.violation(format!("{}: message {id} has other bytes", QUEUES[q]));
        } else if self.acked[q].contains(&id) && !redelivered {
            self.violation(format!(
                "{}: acked message {id} delivered again without the redelivered flag",
                QUEUES[q]
            ));
        }
    }

    fn violation(&mut self, what: String) {
        eprintln!("VIOLATION: {what}");
        self.violations.push(what);
    }
}

/// Publishes until the connection dies.
async fn publish(
    client: Client,
    q: usize,
    ids: Arc<AtomicU64>,
    events: mpsc::UnboundedSender<Event>,
) {
    let publisher = client.publisher_with_window(256);
    let options = PublishOptions::new();
    let mut pending = FuturesUnordered::new();
    loop {
        let id = ids.fetch_add(1, Ordering::Relaxed);
        let _ = events.send(Event::Sent(q, id));
        let Ok(confirm) = publisher
            .publish("", QUEUES[q], payload(id), &options)
            .await
        else {
            break;
        };
        pending.push(async move { (id, confirm.await) });
        while pending.len() >= 256 {
            match pending.next().await {
                Some((id, Ok(_))) => {
                    let _ = events.send(Event::Confirmed(q, id));
                }
                _ => return,
            }
        }
    }
    while let Some((id, result)) = pending.next().await {
        if result.is_ok() {
            let _ = events.send(Event::Confirmed(q, id));
        }
    }
}

/// Consumes and acks until the connection dies.
async fn consume(client: Client, q: usize, events: mpsc::UnboundedSender<Event>) {
    let Ok(mut consumer) = client
        .consume(QUEUES[q], ConsumeOptions::new().prefetch(100))
        .await
    else {
        return;
    };
    while let Some(Ok(m)) = consumer.next().await {
        let id = id_of(&m.body);
        let _ = events.send(Event::Delivered {
            queue: q,
            body: m.body.clone(),
            redelivered: m.redelivered,
        });
        if m.ack().await.is_err() {
            return;
        }
        if let Some(id) = id {
            let _ = events.send(Event::Acked(q, id));
        }
    }
}

/// Declares and deletes durable queues until the connection dies.
async fn churn(client: Client, first: u64, events: mpsc::UnboundedSender<Event>) {
    for k in first.. {
        let name = format!("soak-churn-{k}");
        let _ = events.send(Event::ChurnUnknown(k));
        if client
            .declare_queue(&name, QueueOptions::new())
            .await
            .is_err()
        {
            return;
        }
        let _ = events.send(Event::Churn(k, true));
        if k % 2 == 0 {
            // Every other one stays, so restarts have declared queues to find.
            continue;
        }
        let _ = events.send(Event::ChurnUnknown(k));
        if client
            .delete_queue(&name, DeleteQueueOptions::default())
            .await
            .is_err()
        {
            return;
        }
        let _ = events.send(Event::Churn(k, false));
    }
}

/// Churn queues kept across cycles at most: more would make every restart recover thousands
/// of queues, and the soak would measure start-up time instead of crashes.
const KEPT_CHURN_QUEUES: usize = 64;

/// Deletes the oldest churn queues that may exist (declared, or left unknown by a crash),
/// beyond [`KEPT_CHURN_QUEUES`]. Deleting one that is not there succeeds, so each ends known.
async fn prune_churn(client: &Client, history: &mut History) -> Result<()> {
    let declared: Vec<u64> = history
        .churn
        .iter()
        .filter(|(_, state)| **state != Some(false))
        .map(|(&k, _)| k)
        .collect();
    let excess = declared.len().saturating_sub(KEPT_CHURN_QUEUES);
    for k in declared.into_iter().take(excess) {
        let name = format!("soak-churn-{k}");
        client
            .delete_queue(&name, DeleteQueueOptions::default())
            .await
            .with_context(|| format!("deleting {name}"))?;
        history.apply(Event::Churn(k, false));
    }
    Ok(())
}

async fn connect(broker: &BrokerProcess) -> Result<Client> {
    tokio::time::timeout(WAIT, Client::connect(&broker.url()))
        .await
        .context("connect timed out")?
        .context("connect")
}

/// One cycle: start, load for `load` (at least until something is confirmed), kill -9.
async fn cycle(
    data: &std::path::Path,
    load: Duration,
    ids: &Arc<AtomicU64>,
    churn_next: u64,
    history: &mut History,
) -> Result<()> {
    let broker = BrokerProcess::start(data, FLAGS);
    let client = connect(&broker).await?;
    for q in QUEUES {
        client.declare_queue(q, QueueOptions::new()).await?;
    }
    prune_churn(&client, history).await?;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut tasks = Vec::new();
    for q in 0..QUEUES.len() {
        let publisher = connect(&broker).await?;
        tasks.push(tokio::spawn(publish(
            publisher,
            q,
            Arc::clone(ids),
            tx.clone(),
        )));
        let consumer = connect(&broker).await?;
        tasks.push(tokio::spawn(consume(consumer, q, tx.clone())));
    }
    tasks.push(tokio::spawn(churn(client, churn_next, tx.clone())));
    drop(tx);
    let started = Instant::now();
    let mut confirmed_now = 0;
    while started.elapsed() < load || confirmed_now == 0 {
        match tokio::time::timeout(Duration::from_millis(5), rx.recv()).await {
            Ok(Some(event)) => {
                confirmed_now += u64::from(matches!(event, Event::Confirmed(..)));
                history.apply(event);
            }
            Ok(None) => bail!("every client stopped before the kill"),
            Err(_) if started.elapsed() > WAIT => bail!("nothing confirmed within {WAIT:?}"),
            Err(_) => {}
        }
    }
    broker.kill9();
    for t in tasks {
        tokio::time::timeout(WAIT, t)
            .await
            .context("a client did not notice the crash")??;
    }
    while let Some(event) = rx.recv().await {
        history.apply(event);
    }
    Ok(())
}

/// After the last crash: every confirmed message is delivered (or was acked), and every
/// answered churn operation holds.
async fn final_check(data: &std::path::Path, history: &mut History) -> Result<()> {
    let broker = BrokerProcess::start(data, FLAGS);
    let client = connect(&broker).await?;
    for (q, name) in QUEUES.iter().enumerate() {
        let mut seen = BTreeSet::new();
        while let Some(m) = tokio::time::timeout(WAIT, client.get(name)).await?? {
            history.delivered(q, &m.body, m.redelivered);
            if let Some(id) = id_of(&m.body) {
                seen.insert(id);
            }
            m.ack().await?;
        }
        let missing: Vec<u64> = history.confirmed[q]
            .iter()
            .filter(|id| !history.acked[q].contains(id) && !seen.contains(id))
            .copied()
            .collect();
        if !missing.is_empty() {
            history.violation(format!(
                "{name}: {} confirmed messages lost, e.g. {:?}",
                missing.len(),
                &missing[..missing.len().min(5)]
            ));
        }
    }
    let churn: Vec<(u64, bool)> = history
        .churn
        .iter()
        .filter_map(|(&k, state)| state.map(|s| (k, s)))
        .collect();
    for (k, declared) in churn {
        let name = format!("soak-churn-{k}");
        let found = client.declare_queue(&name, QueueOptions::passive()).await;
        let exists = match found {
            Ok(_) => true,
            Err(e) if e.code() == Some(ErrorCode::NotFound) => false,
            Err(e) => return Err(e.into()),
        };
        if exists != declared {
            history.violation(format!(
                "{name}: answered as {} but {} after the crashes",
                if declared { "declared" } else { "deleted" },
                if exists { "exists" } else { "is gone" },
            ));
        }
    }
    drop(client);
    broker.stop();
    Ok(())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let cycles: u64 = std::env::args()
        .nth(1)
        .map(|s| s.parse().context("CYCLES must be a number"))
        .transpose()?
        .unwrap_or(1000);
    let seed = std::env::var("SOAK_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    let mut rng = fastrand::Rng::with_seed(seed);
    let dir = tempfile::Builder::new().prefix("sluice-soak").tempdir()?;
    let data = dir.path().join("data");
    let ids = Arc::new(AtomicU64::new(0));
    let mut history = History::new();
    let started = Instant::now();
    for i in 0..cycles {
        let load = Duration::from_millis(rng.u64(20..400));
        let churn_next = i * 1_000_000;
        cycle(&data, load, &ids, churn_next, &mut history)
            .await
            .with_context(|| format!("cycle {i}"))?;
        if (i + 1) % 50 == 0 {
            eprintln!(
                "{} cycles, {:.0} s: {} confirmed, {} delivered ({} redelivered), {} violations",
                i + 1,
                started.elapsed().as_secs_f64(),
                history.confirmed.iter().map(BTreeSet::len).sum::<usize>(),
                history.delivered,
                history.redelivered,
                history.violations.len()
            );
        }
    }
    final_check(&data, &mut history).await?;
    let confirmed: usize = history.confirmed.iter().map(BTreeSet::len).sum();
    println!(
        "soak: {cycles} kill -9 cycles in {:.0} s (seed {seed}): {confirmed} messages confirmed, \
         {} deliveries ({} redelivered), {} churn queues checked, {} violations",
        started.elapsed().as_secs_f64(),
        history.delivered,
        history.redelivered,
        history.churn.values().filter(|s| s.is_some()).count(),
        history.violations.len()
    );
    if !history.violations.is_empty() {
        bail!("{} violations", history.violations.len());
    }
    Ok(())
}
