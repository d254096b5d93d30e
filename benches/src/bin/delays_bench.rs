//! `delays-bench`: delayed delivery at scale (issue #13). Starts a `sluice` broker (release
//! build) on a temporary data directory, schedules `--messages` delayed messages into one
//! queue, and reports:
//!
//! - the broker's RSS before, after scheduling them all (the timer index must keep memory
//!   bounded: no growth per scheduled message beyond a small window), and its peak;
//! - timer accuracy: `--trickle` messages due one every `--trickle-gap-ms`, each consumed
//!   as it becomes due; lateness = receipt time - due time (p50/p99/max; the issue asks for
//!   p99 <= 10 ms);
//! - a due burst: `--burst` messages due at the same millisecond, consumed as fast as the
//!   consumer can; lateness p50/p99/max (bounded by consumer throughput, not by the timer).
//!
//! The other messages are due far in the future (`--horizon-days`, spread evenly), so they
//! stay in the index while the trickle and the burst come due. Every body carries its due
//! time (8 bytes, little endian) then padding up to `--body-bytes`.
//!
//! ```text
//! cargo build --release -p sluice-broker -p sluice-benches
//! target/release/delays-bench --messages 10000000        # the lead's run
//! target/release/delays-bench --messages 100000          # a smoke run
//! ```

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use clap::Parser;
use futures_util::StreamExt;
use hdrhistogram::Histogram;
use sluice_benches::load::proc::rss;
use sluice_client::{Client, ConsumeOptions, OutgoingMessage, PublishOptions, QueueOptions};

#[derive(Debug, Parser)]
#[command(about = "Schedules many delayed messages; reports RSS and due-time lateness")]
struct Args {
    /// Delayed messages in total (far, trickle and burst together).
    #[arg(long, default_value_t = 10_000_000)]
    messages: u64,
    /// Messages due at one millisecond (the burst).
    #[arg(long, default_value_t = 100_000)]
    burst: u64,
    /// Messages due one after another (timer accuracy).
    #[arg(long, default_value_t = 2_000)]
    trickle: u64,
    /// Time between two trickle messages.
    #[arg(long, default_value_t = 5)]
    trickle_gap_ms: u64,
    /// The far messages are due over this many days.
    #[arg(long, default_value_t = 30)]
    horizon_days: u64,
    /// Body size (at least 8: the due time).
    #[arg(long, default_value_t = 16)]
    body_bytes: usize,
    /// Messages per publish batch.
    #[arg(long, default_value_t = 5_000)]
    batch: usize,
    /// The broker binary.
    #[arg(long, default_value = "target/release/sluice")]
    sluice_bin: PathBuf,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_millis() as u64
}

/// The broker under test, killed when dropped.
struct Broker {
    child: Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Broker {
    fn start(bin: &PathBuf) -> Result<Broker> {
        let dir = tempfile::tempdir()?;
        let mut child = Command::new(bin)
            .args(["serve", "--listen", "127.0.0.1:0", "--http-listen", "off"])
            .arg("--data-dir")
            .arg(dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let stdout = child.stdout.take().context("stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let line = lines.next().context("the broker printed nothing")??;
        let addr = line
            .strip_prefix("sluice listening on ")
            .and_then(|rest| rest.split_whitespace().next())
            .with_context(|| format!("unexpected first line: {line}"))?
            .to_owned();
        // Keep draining stdout so the broker never blocks on it.
        std::thread::spawn(move || lines.for_each(drop));
        Ok(Broker {
            child,
            url: format!("sluice://guest:guest@{addr}"),
            _dir: dir,
        })
    }

    fn rss_mib(&self) -> f64 {
        rss(self.child.id()).map_or(0.0, |r| r.total as f64 / (1 << 20) as f64)
    }

    fn peak_rss_mib(&self) -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()));
        status
            .ok()
            .and_then(|s| {
                let line = s.lines().find(|l| l.starts_with("VmHWM:"))?.to_owned();
                line.split_whitespace().nth(1)?.parse::<f64>().ok()
            })
            .map_or(0.0, |kib| kib / 1024.0)
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn body(due_ms: u64, size: usize) -> Bytes {
    let mut b = vec![0u8; size.max(8)];
    b[..8].copy_from_slice(&due_ms.to_le_bytes());
    Bytes::from(b)
}

/// Publishes `(due_ms)` messages in pipelined batches.
async fn schedule(client: &Client, dues: impl Iterator<Item = u64>, args: &Args) -> Result<u64> {
    let mut batch = Vec::with_capacity(args.batch);
    let mut sent = 0;
    let flush = |batch: Vec<OutgoingMessage>| async move {
        for r in client.publish_batch(batch).await {
            r?;
        }
        anyhow::Ok(())
    };
    for due in dues {
        let options = PublishOptions::new().deliver_at(UNIX_EPOCH + Duration::from_millis(due));
        batch.push(
            OutgoingMessage::new("", "delays", body(due, args.body_bytes)).with_options(options),
        );
        if batch.len() == args.batch {
            flush(std::mem::take(&mut batch)).await?;
        }
        sent += 1;
    }
    flush(batch).await?;
    Ok(sent)
}

/// Consumes `count` messages, recording each one's lateness (receipt - due, ms).
async fn consume_lateness(client: &Client, count: u64, prefetch: u32) -> Result<Histogram<u64>> {
    let mut histogram = Histogram::<u64>::new_with_bounds(1, 3_600_000, 3)?;
    let mut early = 0u64;
    let mut consumer = client
        .consume("delays", ConsumeOptions::new().prefetch(prefetch))
        .await?;
    for _ in 0..count {
        let m = tokio::time::timeout(Duration::from_secs(600), consumer.next())
            .await
            .context("no delivery within 600 s")?
            .context("the consumer ended")??;
        let received = now_ms();
        let due = u64::from_le_bytes(m.body[..8].try_into()?);
        if received < due {
            early += 1;
        }
        histogram.record(received.saturating_sub(due).max(1))?;
        m.ack().await?;
    }
    consumer.cancel().await?;
    if early > 0 {
        bail!("{early} messages were delivered before their time");
    }
    Ok(histogram)
}

fn report(what: &str, h: &Histogram<u64>) {
    println!(
        "{what}: {} messages, lateness p50 {} ms, p99 {} ms, max {} ms",
        h.len(),
        h.value_at_quantile(0.5),
        h.value_at_quantile(0.99),
        h.max()
    );
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    if args.burst + args.trickle > args.messages {
        bail!("--messages must cover --burst and --trickle");
    }
    let broker = Broker::start(&args.sluice_bin)?;
    let client = Client::connect(&broker.url).await?;
    client.declare_queue("delays", QueueOptions::new()).await?;
    let before = broker.rss_mib();
    println!("broker RSS before: {before:.1} MiB");

    // Far messages first, due over the horizon (so they stay in the index throughout).
    let far = args.messages - args.burst - args.trickle;
    let horizon_ms = args.horizon_days * 86_400_000;
    let start = Instant::now();
    let far_from = now_ms() + 3_600_000;
    let step = (horizon_ms / far.max(1)).max(1);
    let mut sent = schedule(&client, (0..far).map(|i| far_from + i * step), &args).await?;
    // The burst and the trickle are due after everything is scheduled: estimate the time
    // their own publishing takes generously.
    let rate = sent as f64 / start.elapsed().as_secs_f64().max(0.001);
    let lead_ms = 2_000 + ((args.burst + args.trickle) as f64 / rate.max(1.0) * 2000.0) as u64;
    let trickle_from = now_ms() + lead_ms;
    let trickle_end = trickle_from + args.trickle * args.trickle_gap_ms;
    let burst_at = trickle_end + 2_000;
    sent += schedule(
        &client,
        (0..args.trickle).map(|i| trickle_from + i * args.trickle_gap_ms),
        &args,
    )
    .await?;
    sent += schedule(&client, (0..args.burst).map(|_| burst_at), &args).await?;
    let elapsed = start.elapsed();
    let info = client.inspect_queue("delays").await?;
    println!(
        "scheduled {sent} messages in {:.1} s ({:.0}/s); queue: ready {}, scheduled {}",
        elapsed.as_secs_f64(),
        sent as f64 / elapsed.as_secs_f64(),
        info.ready,
        info.scheduled
    );
    println!(
        "broker RSS after scheduling: {:.1} MiB (peak {:.1} MiB)",
        broker.rss_mib(),
        broker.peak_rss_mib()
    );
    if now_ms() > trickle_from {
        bail!("publishing took longer than estimated: the trickle was due before it was consumed; try a larger --batch or fewer --messages");
    }
    // The trickle: one consumer with room for every message, so lateness is the timer's.
    let trickle = consume_lateness(&client, args.trickle, 1_000).await?;
    report("trickle (timer accuracy)", &trickle);
    let burst = consume_lateness(&client, args.burst, 10_000).await?;
    report("burst (one due millisecond)", &burst);
    let info = client.inspect_queue("delays").await?;
    println!(
        "queue after: ready {}, scheduled {}; broker RSS {:.1} MiB (peak {:.1} MiB)",
        info.ready,
        info.scheduled,
        broker.rss_mib(),
        broker.peak_rss_mib()
    );
    client.close().await?;
    Ok(())
}
