//! `cluster-bench`: a replicated queue (`replicas = 3`) on a 3-node Sluice cluster started on
//! this machine (the `sluice` binary next to this one, nodes on 127.0.0.1 with their cluster
//! listeners on 127.0.0.11–13, as the test suite's harness starts them).
//!
//! - `failover`: publishes at a steady rate with confirms through a node that survives, and
//!   kills the queue's leader (`kill -9`) `--kills` times (restarting it each time, and
//!   waiting until it has caught up before the next kill, unless `--back-to-back`); prints
//!   p50/p99/max of "leader kill → first confirm of a message sent after the kill" (that
//!   confirm can only come from a new leader).
//! - `w1`: one producer (confirm window 1000) and one consumer (prefetch 1000, acking every
//!   message), 128-byte persistent messages, both on the queue's leader; a confirm means
//!   the message is durable on a majority. Prints msg/s.
//!
//! ```text
//! cargo build --release -p sluice-broker --bins && cargo build --release -p sluice-benches
//! target/release/cluster-bench failover --kills 20
//! target/release/cluster-bench w1 --duration 20
//! ```

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use futures_util::StreamExt;
use sluice_client::{Client, ConsumeOptions, PublishOptions, QueueArguments, QueueOptions};
use sluice_tests::cluster::{ClusterProcess, NodeId};
use tokio::sync::watch;

const QUEUE: &str = "bench";

#[derive(Debug, Parser)]
#[command(
    name = "cluster-bench",
    about = "Failover time and replicated W1 on a 3-node cluster"
)]
struct Args {
    #[command(subcommand)]
    mode: Mode,
    /// Write each node's log (every process it ran) to DIR/node-N.log at the end; with
    /// `SLUICE_LOG` set, this shows what the nodes did around each kill.
    #[arg(long, value_name = "DIR")]
    logs: Option<std::path::PathBuf>,
    /// The nodes' `--cluster-election-timeout-ms` (the broker's default: 1000).
    #[arg(long, default_value_t = 1000)]
    election_timeout_ms: u64,
}

#[derive(Debug, Subcommand)]
enum Mode {
    /// Kill the queue's leader repeatedly under confirmed load; time to the next confirm.
    Failover {
        #[arg(long, default_value_t = 20)]
        kills: usize,
        /// Publishes per second during the run.
        #[arg(long, default_value_t = 200)]
        rate: u32,
        /// Kill the next leader as soon as the previous kill's confirm arrives, while the node
        /// killed before is still restarting and catching up (two faults at once), instead of
        /// waiting until every replica has caught up (one fault at a time).
        #[arg(long)]
        back_to_back: bool,
    },
    /// 1 producer, 1 consumer, 128 B, confirms after a majority.
    W1 {
        /// Seconds measured (after a 3 s warm-up).
        #[arg(long, default_value_t = 20)]
        duration: u64,
        #[arg(long, default_value_t = 128)]
        size: usize,
    },
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> Result<()> {
    let args = Args::parse();
    let dir = tempfile::tempdir().context("a temporary directory")?;
    let election = args.election_timeout_ms.to_string();
    let flags = ["--cluster-election-timeout-ms", election.as_str()];
    let mut cluster = ClusterProcess::start(dir.path(), 3, &flags).await;
    let client = Client::connect(&cluster.node(1).url()).await?;
    let mut options = QueueOptions::new();
    options.arguments = QueueArguments {
        replicas: Some(3),
        ..QueueArguments::default()
    };
    client.declare_queue(QUEUE, options).await?;
    client.close().await?;
    let result = match args.mode {
        Mode::Failover {
            kills,
            rate,
            back_to_back,
        } => failover(&mut cluster, kills, rate, back_to_back).await,
        Mode::W1 { duration, size } => w1(&mut cluster, Duration::from_secs(duration), size).await,
    };
    if let Some(logs) = &args.logs {
        std::fs::create_dir_all(logs).context("the logs directory")?;
        for id in 1..=3 {
            let path = logs.join(format!("node-{id}.log"));
            std::fs::write(&path, cluster.node(id).log())
                .with_context(|| format!("writing {}", path.display()))?;
        }
    }
    cluster.stop();
    result
}

/// The wall-clock time of day (UTC), to find a kill in the nodes' logs.
fn wall_clock() -> String {
    let since_epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let ms_of_day = since_epoch.as_millis() % 86_400_000;
    let (h, m, s, ms) = (
        ms_of_day / 3_600_000,
        ms_of_day / 60_000 % 60,
        ms_of_day / 1000 % 60,
        ms_of_day % 1000,
    );
    format!("{h:02}:{m:02}:{s:02}.{ms:03}")
}

/// Publish outcomes: (sent, confirmed) times, in confirm order.
type Confirms = Arc<Mutex<Vec<(Instant, Instant)>>>;

async fn failover(
    cluster: &mut ClusterProcess,
    kills: usize,
    rate: u32,
    back_to_back: bool,
) -> Result<()> {
    let confirms: Confirms = Arc::default();
    let (notify, mut confirmed) = watch::channel(0u64);
    let notify = Arc::new(notify);
    // The node the publisher sends through; changed before each kill to one that survives.
    let (route_tx, route) = watch::channel(None::<Client>);
    let pacer = tokio::spawn(publish_paced(
        route,
        Duration::from_secs(1) / rate.max(1),
        Arc::clone(&confirms),
        Arc::clone(&notify),
    ));
    let mut samples = Vec::with_capacity(kills);
    for round in 1..=kills {
        let leader = cluster.await_leader_of(QUEUE, None).await;
        if !back_to_back {
            await_caught_up(cluster, leader).await?;
        }
        let via = (1..=3).find(|&n| n != leader).expect("a follower");
        route_tx.send_replace(Some(Client::connect(&cluster.node(via).url()).await?));
        // Confirms flow through the new route before the kill.
        let flowing = *confirmed.borrow_and_update();
        tokio::time::timeout(
            Duration::from_secs(60),
            confirmed.wait_for(|&n| n > flowing + 10),
        )
        .await
        .context("no confirms before the kill")??;
        let killed_at = Instant::now();
        let killed_wall = wall_clock();
        cluster.kill9(leader);
        let first = tokio::time::timeout(Duration::from_secs(60), async {
            loop {
                let first = confirms
                    .lock()
                    .unwrap()
                    .iter()
                    .find(|(sent, _)| *sent >= killed_at)
                    .map(|&(_, at)| at);
                if let Some(at) = first {
                    return at;
                }
                let _ = confirmed.changed().await;
            }
        })
        .await
        .context("no confirm within 60 s of the kill")?;
        let took = first - killed_at;
        eprintln!(
            "kill {round}: node {leader} killed at {killed_wall}, next confirm after {took:?}"
        );
        samples.push(took);
        cluster.restart(leader).await;
    }
    pacer.abort();
    samples.sort();
    let at = |q: f64| samples[((samples.len() as f64 - 1.0) * q).round() as usize];
    println!(
        "failover (leader kill -> first confirm on the new leader) over {} kills: \
         p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
        samples.len(),
        at(0.5).as_secs_f64() * 1000.0,
        at(0.99).as_secs_f64() * 1000.0,
        samples.last().expect("a sample").as_secs_f64() * 1000.0
    );
    Ok(())
}

/// Waits (bounded) until the leader shows all three replicas with lag 0: the node killed last
/// time is back and has caught up, so the next kill is a single fault.
async fn await_caught_up(cluster: &ClusterProcess, leader: NodeId) -> Result<()> {
    let path = format!("/api/queues/{QUEUE}");
    let caught_up = async {
        loop {
            let response = cluster.node(leader).http().get(&path).await;
            let queue: serde_json::Value = serde_json::from_str(&response.body).unwrap_or_default();
            let lags: Vec<Option<u64>> = queue["replicas"]
                .as_array()
                .map(|rs| rs.iter().map(|r| r["lag"].as_u64()).collect())
                .unwrap_or_default();
            if lags.len() == 3 && lags.iter().all(|l| *l == Some(0)) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(60), caught_up)
        .await
        .context("the replicas did not catch up within 60 s")
}

/// Sends one persistent message every `every` through the current route, each awaited in
/// its own task, so a publish stuck on a dead leader does not hold the others back.
async fn publish_paced(
    mut route: watch::Receiver<Option<Client>>,
    every: Duration,
    confirms: Confirms,
    notify: Arc<watch::Sender<u64>>,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let options = PublishOptions::new();
    loop {
        tick.tick().await;
        let Some(client) = route.borrow_and_update().clone() else {
            continue;
        };
        let (confirms, notify, options) =
            (Arc::clone(&confirms), Arc::clone(&notify), options.clone());
        tokio::spawn(async move {
            let sent = Instant::now();
            let publish = client.publish("", QUEUE, &b"failover"[..], &options);
            if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_secs(60), publish).await {
                confirms.lock().unwrap().push((sent, Instant::now()));
                notify.send_modify(|n| *n += 1);
            }
        });
    }
}

async fn w1(cluster: &mut ClusterProcess, duration: Duration, size: usize) -> Result<()> {
    let leader: NodeId = cluster.await_leader_of(QUEUE, None).await;
    let url = cluster.node(leader).url();
    let producer = Client::connect(&url).await?;
    let consumer_client = Client::connect(&url).await?;
    let mut consumer = consumer_client
        .consume(QUEUE, ConsumeOptions::new().prefetch(1000))
        .await?;
    let (counted_tx, counted) = watch::channel(0u64);
    let consuming = tokio::spawn(async move {
        let mut n = 0u64;
        while let Some(m) = consumer.next().await {
            let m = m?;
            m.ack().await?;
            n += 1;
            if n % 100 == 0 {
                counted_tx.send_replace(n);
            }
        }
        anyhow::Ok(n)
    });
    let body = vec![b'x'; size];
    let publisher = producer.publisher_with_window(1000);
    let options = PublishOptions::new();
    let (confirmed_tx, confirmed) = watch::channel(0u64);
    let confirmed_tx = Arc::new(confirmed_tx);
    let warmup = Duration::from_secs(3);
    let end = Instant::now() + warmup + duration;
    let publishing = tokio::spawn(async move {
        while Instant::now() < end {
            let confirm = publisher.publish("", QUEUE, body.clone(), &options).await?;
            let confirmed_tx = Arc::clone(&confirmed_tx);
            tokio::spawn(async move {
                if confirm.await.is_ok() {
                    confirmed_tx.send_modify(|n| *n += 1);
                }
            });
        }
        publisher.flush().await;
        anyhow::Ok(())
    });
    tokio::time::sleep(warmup).await;
    let (c0, d0, t0) = (*confirmed.borrow(), *counted.borrow(), Instant::now());
    tokio::time::sleep(duration).await;
    let (c1, d1, t1) = (*confirmed.borrow(), *counted.borrow(), Instant::now());
    publishing.await??;
    let secs = (t1 - t0).as_secs_f64();
    println!(
        "replicated W1 (1P/1C, {size} B, replicas 3, on leader node {leader}): \
         {:.0} msg/s confirmed, {:.0} msg/s consumed over {secs:.1} s",
        (c1 - c0) as f64 / secs,
        (d1 - d0) as f64 / secs
    );
    consuming.abort();
    if c1 == c0 {
        bail!("nothing was confirmed");
    }
    Ok(())
}
