//! `sluice-bench`: a load generator for Sluice, RabbitMQ (AMQP 0-9-1) and NATS JetStream,
//! in the spirit of RabbitMQ's PerfTest.
//!
//! Producers publish durable messages through a confirm window, at a fixed rate or flat
//! out; consumers ack every delivery within a prefetch. Every body carries its send time on
//! the generator's clock, so the report's latency is publish→deliver on one clock. The run
//! ends by checking that every confirmed message arrived once with all its bytes.
//!
//! ```text
//! CARGO_TARGET_DIR=/work/target-bench cargo build --release -p sluice-benches
//! sluice-bench --broker sluice --producers 1 --consumers 1 --size 128 --duration 20
//! sluice-bench --broker amqp --queues 4 --routing topic --duration 20 --json out.json
//! sluice-bench --broker nats --rate 10000 --duration 30 --warmup 5
//! sluice-bench --broker sluice --backlog --count 10000000 --broker-pid PID --broker-data-dir DIR
//! ```
//!
//! The table goes to stdout, the progress line (every second) to stderr, and with `--json
//! PATH` the full report to PATH (`-` = stdout). Exits 2 if a message went missing.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;
use sluice_benches::load::{self, Backend, BrokerProcess, Routing, RunOptions, Workload};

#[derive(Debug, Parser)]
#[command(
    name = "sluice-bench",
    about = "Load generator: end-to-end throughput and latency of Sluice, RabbitMQ and NATS JetStream"
)]
struct Args {
    /// Broker and client to use.
    #[arg(long, value_enum, default_value_t = Backend::Sluice)]
    broker: Backend,
    /// Broker URL [default: sluice://guest:guest@127.0.0.1:5680,
    /// amqp://guest:guest@127.0.0.1:5672/%2f, nats://127.0.0.1:4222].
    #[arg(long)]
    url: Option<String>,
    /// Producers, each on its own connection.
    #[arg(short = 'x', long, default_value_t = 1)]
    producers: usize,
    /// Consumers per queue (competing), each on its own connection.
    #[arg(short = 'y', long, default_value_t = 1)]
    consumers: usize,
    /// Message body size in bytes (at least 24: the generator's header).
    #[arg(short = 's', long, default_value_t = 128)]
    size: usize,
    /// Total publish rate, msg/s, spread over the producers [default: flat out].
    #[arg(short = 'r', long)]
    rate: Option<f64>,
    /// Messages each producer may have awaiting their confirm.
    #[arg(short = 'c', long, default_value_t = 1000)]
    confirm_window: u32,
    /// Unacked deliveries each consumer may hold.
    #[arg(short = 'q', long, default_value_t = 1000)]
    prefetch: u32,
    /// Number of queues.
    #[arg(long, default_value_t = 1)]
    queues: usize,
    /// Routing: default (round robin over the queues), direct (one binding per queue),
    /// topic (every queue bound with `bench.#`: fan-out to all), fanout.
    #[arg(long, value_enum, default_value_t = Routing::Default)]
    routing: Routing,
    /// Seconds to publish for.
    #[arg(short = 'z', long)]
    duration: Option<f64>,
    /// Messages to publish in total.
    #[arg(short = 'C', long)]
    count: Option<u64>,
    /// Publish `--count` messages with no consumer, then drain them.
    #[arg(long)]
    backlog: bool,
    /// Seconds at the start whose messages are left out of the latency figures.
    #[arg(long, default_value_t = 0.0)]
    warmup: f64,
    /// Seconds without a delivery after which the run stops waiting for the rest.
    #[arg(long, default_value_t = 30.0)]
    drain_timeout: f64,
    /// Prefix of queue, exchange and stream names (no dots).
    #[arg(long, default_value = "bench")]
    prefix: String,
    /// Broker process to sample VmRSS and CPU time of.
    #[arg(long)]
    broker_pid: Option<u32>,
    /// Broker data directory to report disk use of at the end.
    #[arg(long)]
    broker_data_dir: Option<PathBuf>,
    /// Seconds to wait after the last delivery before measuring disk use.
    #[arg(long, default_value_t = 5.0)]
    settle: f64,
    /// Leave the queues (streams) in place after the run.
    #[arg(long)]
    no_cleanup: bool,
    /// Write the report as JSON to this file (`-`: stdout).
    #[arg(long)]
    json: Option<PathBuf>,
    /// Label in the report.
    #[arg(long, default_value = "")]
    label: String,
    /// No progress line.
    #[arg(long)]
    quiet: bool,
}

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s.max(0.0))
}

fn main() -> Result<()> {
    let args = Args::parse();
    let workload = Workload {
        producers: args.producers,
        consumers: args.consumers,
        size: args.size,
        rate: args.rate,
        confirm_window: args.confirm_window,
        prefetch: args.prefetch,
        queues: args.queues,
        routing: args.routing,
        duration: args.duration.map(secs),
        count: args.count,
        backlog: args.backlog,
        warmup: secs(args.warmup),
        drain_timeout: secs(args.drain_timeout),
        prefix: args.prefix.clone(),
    };
    let options = RunOptions {
        backend: args.broker,
        url: args
            .url
            .clone()
            .unwrap_or_else(|| args.broker.default_url().to_owned()),
        broker: BrokerProcess {
            pid: args.broker_pid,
            data_dir: args.broker_data_dir.clone(),
        },
        settle: secs(args.settle),
        cleanup: !args.no_cleanup,
        progress: !args.quiet,
        label: args.label.clone(),
    };
    eprintln!(
        "sluice-bench: {:?} at {}: {}",
        options.backend,
        options.url,
        load::report::describe(&workload)
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let report = runtime.block_on(load::run(workload, options))?;
    // Connections still closing in the background are not waited for.
    runtime.shutdown_timeout(Duration::from_secs(1));

    print!("{}", report.table());
    if let Some(path) = &args.json {
        let json = serde_json::to_string_pretty(&report)?;
        if path.as_os_str() == "-" {
            println!("{json}");
        } else {
            std::fs::write(path, json + "\n")
                .with_context(|| format!("writing {}", path.display()))?;
        }
    }
    if !report.counts.complete {
        std::process::exit(2);
    }
    Ok(())
}
