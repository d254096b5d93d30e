//! Does scraping `/metrics` slow publishing? Starts a broker, declares many queues (10,000 by
//! default), then publishes at full rate into a few of them in alternating phases: without
//! scraping, and while a task scrapes `/metrics` in a loop. Prints the publish rate of each
//! phase, their ratio, and the scrape's time and size. BENCHMARKS.md ("Scraping /metrics")
//! has the method and a figure.
//!
//! ```sh
//! cargo build --release -p sluice-broker -p sluice-tests --bins
//! target/release/metrics_scrape_bench --queues 10000 --seconds 10 --rounds 3
//! ```

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use clap::Parser;
use sluice_client::{Client, PublishOptions, QueueOptions};
use sluice_tests::broker::BrokerProcess;
use sluice_tests::http::HttpClient;
use tokio::sync::mpsc;

#[derive(Debug, Parser)]
#[command(
    about = "Publish throughput with and without scraping /metrics of a broker with many queues"
)]
struct Args {
    /// Queues declared (empty, transient) besides the ones published to.
    #[arg(long, default_value_t = 10_000)]
    queues: usize,
    /// Publishing connections, each into its own durable queue.
    #[arg(long, default_value_t = 4)]
    publishers: usize,
    /// Message body size in bytes.
    #[arg(long, default_value_t = 256)]
    size: usize,
    /// Seconds of each phase.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Pairs of phases (without scraping, then with).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Pause between two scrapes, in milliseconds (0: back to back, the worst case).
    #[arg(long, default_value_t = 0)]
    interval_ms: u64,
    /// Where the broker keeps its data (default: a temporary directory under ./target).
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let parent = args
        .data_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from("target"));
    std::fs::create_dir_all(&parent)?;
    let dir = tempfile::tempdir_in(&parent)?;
    let broker = BrokerProcess::start(&dir.path().join("data"), &[]);
    let http_addr = broker.http_addr().context("the HTTP API is on")?.to_owned();
    let url = broker.url();

    let started = Instant::now();
    declare_queues(&url, args.queues).await?;
    println!(
        "declared {} queues in {:.1} s",
        args.queues,
        started.elapsed().as_secs_f64()
    );

    let published = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut publishers = Vec::new();
    for i in 0..args.publishers {
        let client = Client::connect(&url).await?;
        let queue = format!("bench-{i}");
        client.declare_queue(&queue, QueueOptions::new()).await?;
        publishers.push(tokio::spawn(publish_loop(
            client,
            queue,
            args.size,
            Arc::clone(&published),
            Arc::clone(&stop),
        )));
    }

    let http = HttpClient::anonymous(&http_addr);
    // Warm up: the first seconds fill the page cache and grow the segments.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let phase = Duration::from_secs(args.seconds);
    let (mut quiet, mut scraped) = (Vec::new(), Vec::new());
    let mut scrapes = Vec::new();
    let mut scrape_bytes = 0;
    let interval = Duration::from_millis(args.interval_ms);
    for round in 1..=args.rounds {
        let p = measure(&published, phase).await;
        println!(
            "round {round}: without scraping {:>9.0} msg/s, longest pause {:>4} ms",
            p.rate,
            p.longest_pause.as_millis()
        );
        quiet.push(p);

        let scraping = Arc::new(AtomicBool::new(true));
        let scraper = tokio::spawn(scrape_loop(http.clone(), interval, Arc::clone(&scraping)));
        let p = measure(&published, phase).await;
        scraping.store(false, Ordering::Relaxed);
        let (times, bytes) = scraper.await??;
        println!(
            "round {round}: while scraping   {:>9.0} msg/s, longest pause {:>4} ms ({} scrapes)",
            p.rate,
            p.longest_pause.as_millis(),
            times.len()
        );
        scraped.push(p);
        scrapes.extend(times);
        scrape_bytes = bytes;
    }
    stop.store(true, Ordering::Relaxed);
    for p in publishers {
        p.await??;
    }
    broker.stop();

    let mean = |v: &[Phase]| v.iter().map(|p| p.rate).sum::<f64>() / v.len() as f64;
    let pause = |v: &[Phase]| v.iter().map(|p| p.longest_pause).max().unwrap_or_default();
    scrapes.sort_by(f64::total_cmp);
    ensure!(!scrapes.is_empty(), "no scrape finished");
    let pct = |p: f64| scrapes[((scrapes.len() - 1) as f64 * p).round() as usize];
    println!(
        "publish rate while scraping / without: {:.3} ({:.0} / {:.0} msg/s); longest pause {} / {} ms",
        mean(&scraped) / mean(&quiet),
        mean(&scraped),
        mean(&quiet),
        pause(&scraped).as_millis(),
        pause(&quiet).as_millis()
    );
    println!(
        "scrape of {} queues: {:.1} MB, {} scrapes, median {:.0} ms, p90 {:.0} ms, max {:.0} ms",
        args.queues + args.publishers,
        scrape_bytes as f64 / 1e6,
        scrapes.len(),
        pct(0.5) * 1e3,
        pct(0.9) * 1e3,
        pct(1.0) * 1e3
    );
    Ok(())
}

/// Declares `n` empty transient queues over a few connections at once.
async fn declare_queues(url: &str, n: usize) -> Result<()> {
    const CONNECTIONS: usize = 8;
    let mut tasks = Vec::new();
    for c in 0..CONNECTIONS {
        let client = Client::connect(url).await?;
        tasks.push(tokio::spawn(async move {
            for i in (c..n).step_by(CONNECTIONS) {
                let name = format!("idle-{i:05}");
                client
                    .declare_queue(&name, QueueOptions::new().durable(false))
                    .await?;
            }
            client.close().await?;
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(())
}

/// Publishes persistent messages into `queue` as fast as confirms come back.
async fn publish_loop(
    client: Client,
    queue: String,
    size: usize,
    published: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
) -> Result<()> {
    let publisher = client.publisher_with_window(1024);
    let options = PublishOptions::new();
    let body = bytes::Bytes::from(vec![b'x'; size]);
    // Confirms are awaited in order by a second task, so the window stays full.
    let (tx, mut rx) = mpsc::unbounded_channel::<sluice_client::PublishConfirm>();
    let counter = Arc::clone(&published);
    let confirms = tokio::spawn(async move {
        while let Some(confirm) = rx.recv().await {
            confirm.await?;
            counter.fetch_add(1, Ordering::Relaxed);
        }
        anyhow::Ok(())
    });
    while !stop.load(Ordering::Relaxed) {
        let confirm = publisher
            .publish("", &queue, body.clone(), &options)
            .await?;
        let _ = tx.send(confirm);
    }
    drop(tx);
    confirms.await??;
    client.close().await?;
    Ok(())
}

/// What publishers did during one phase.
#[derive(Debug, Clone, Copy)]
struct Phase {
    /// Confirmed messages per second.
    rate: f64,
    /// The longest time no confirm arrived (sampled every 5 ms): a stalled broker shows here.
    longest_pause: Duration,
}

/// Measures the publishers over `phase`.
async fn measure(published: &AtomicU64, phase: Duration) -> Phase {
    let before = published.load(Ordering::Relaxed);
    let started = Instant::now();
    let (mut last, mut last_change) = (before, started);
    let mut longest_pause = Duration::ZERO;
    let mut tick = tokio::time::interval(Duration::from_millis(5));
    while started.elapsed() < phase {
        tick.tick().await;
        let now = published.load(Ordering::Relaxed);
        if now != last {
            (last, last_change) = (now, Instant::now());
        }
        longest_pause = longest_pause.max(last_change.elapsed());
    }
    let n = published.load(Ordering::Relaxed) - before;
    Phase {
        rate: n as f64 / started.elapsed().as_secs_f64(),
        longest_pause,
    }
}

/// Scrapes `/metrics` while `running`, `interval` apart; returns each scrape's seconds and
/// the size of the last one.
async fn scrape_loop(
    http: HttpClient,
    interval: Duration,
    running: Arc<AtomicBool>,
) -> Result<(Vec<f64>, usize)> {
    let mut times = Vec::new();
    let mut bytes = 0;
    while running.load(Ordering::Relaxed) {
        let started = Instant::now();
        let r = http.get("/metrics").await;
        ensure!(r.status == 200, "scrape answered {}", r.status);
        times.push(started.elapsed().as_secs_f64());
        bytes = r.body.len();
        tokio::time::sleep(interval).await;
    }
    Ok((times, bytes))
}
