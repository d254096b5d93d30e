//! The load generator behind `sluice-bench`: one workload, three back ends.
//!
//! A [`Workload`] says how many producers and consumers, how large the messages, how fast
//! (a fixed rate or flat out), the confirm window and prefetch, how many queues and through
//! which kind of exchange, and for how long (a duration, a message count, or both). The same
//! workload runs against
//! - Sluice, through `sluice-client` ([`sluice`]);
//! - an AMQP 0-9-1 broker such as RabbitMQ, through `lapin` ([`amqp`]): durable queues,
//!   persistent messages, publisher confirms, manual acks;
//! - NATS JetStream, through `async-nats` ([`nats`]): file storage, work-queue (or interest)
//!   retention, explicit acks.
//!
//! Every message carries its send time (nanoseconds since a shared [`Instant`]) and its
//! producer and sequence number in the first [`HEADER_LEN`] bytes of its body ([`body`]), so
//! publish→deliver latency is measured on one clock, and every delivery is checked off in a
//! per-queue bitmap: the run ends by checking that exactly the confirmed messages arrived,
//! each once, with all their bytes.
//!
//! [`run`] drives a workload: it sets the topology up, starts consumers then producers (or,
//! for a backlog test, producers first and consumers once every message is confirmed),
//! prints a progress line every second, samples the broker's RSS, and returns a [`Report`].

pub mod amqp;
pub mod body;
pub mod nats;
pub mod proc;
pub mod report;
pub mod sluice;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use hdrhistogram::Histogram;
use tokio::sync::watch;
use tokio::task::JoinSet;

pub use report::Report;

/// Bytes at the start of every body that the generator uses itself.
pub use body::HEADER_LEN;

/// Which broker, through which client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// Sluice, through sluice-client.
    Sluice,
    /// AMQP 0-9-1 (RabbitMQ), through lapin.
    Amqp,
    /// NATS JetStream, through async-nats.
    Nats,
}

impl Backend {
    /// Lower-case name, as on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Sluice => "sluice",
            Backend::Amqp => "amqp",
            Backend::Nats => "nats",
        }
    }

    /// The URL used when none is given.
    pub fn default_url(self) -> &'static str {
        match self {
            Backend::Sluice => "sluice://guest:guest@127.0.0.1:5680",
            Backend::Amqp => "amqp://guest:guest@127.0.0.1:5672/%2f",
            Backend::Nats => "nats://127.0.0.1:4222",
        }
    }
}

/// How messages reach the queues.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Routing {
    /// The default exchange: each message goes to one queue, round robin over the queues.
    Default,
    /// A direct exchange, one binding per queue: each message goes to one queue.
    Direct,
    /// A topic exchange with every queue bound by `bench.#`: each message goes to every
    /// queue (fan-out = number of queues).
    Topic,
    /// A fanout exchange: each message goes to every queue.
    Fanout,
}

impl Routing {
    /// True when every message is routed to every queue.
    pub fn fans_out(self) -> bool {
        matches!(self, Routing::Topic | Routing::Fanout)
    }
}

/// What to run.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Workload {
    /// Producers, each on its own connection.
    pub producers: usize,
    /// Consumers per queue (competing), each on its own connection.
    pub consumers: usize,
    /// Message body size in bytes (at least [`HEADER_LEN`]).
    pub size: usize,
    /// Total publish rate over all producers, msg/s; `None` = flat out.
    pub rate: Option<f64>,
    /// Messages each producer may have awaiting their confirm.
    pub confirm_window: u32,
    /// Unacked deliveries each consumer may hold.
    pub prefetch: u32,
    /// Number of queues.
    pub queues: usize,
    /// How messages reach the queues.
    pub routing: Routing,
    /// Stop publishing after this long.
    #[serde(serialize_with = "report::ser_opt_secs")]
    pub duration: Option<Duration>,
    /// Stop publishing after this many messages in total.
    pub count: Option<u64>,
    /// Publish everything with no consumer first, then drain.
    pub backlog: bool,
    /// Messages sent in the first this-long are counted but left out of the latency figures.
    #[serde(serialize_with = "report::ser_secs")]
    pub warmup: Duration,
    /// How long to wait for the last deliveries once publishing has ended.
    #[serde(serialize_with = "report::ser_secs")]
    pub drain_timeout: Duration,
    /// Prefix of queue, exchange and stream names.
    pub prefix: String,
}

impl Workload {
    /// Queues each message is routed to.
    pub fn fanout(&self) -> u64 {
        if self.routing.fans_out() {
            self.queues as u64
        } else {
            1
        }
    }

    /// Name of queue `i`.
    pub fn queue_name(&self, i: usize) -> String {
        format!("{}-q{i}", self.prefix)
    }

    /// Name of the exchange (empty for the default exchange).
    pub fn exchange_name(&self) -> String {
        match self.routing {
            Routing::Default => String::new(),
            Routing::Direct => format!("{}-direct", self.prefix),
            Routing::Topic => format!("{}-topic", self.prefix),
            Routing::Fanout => format!("{}-fanout", self.prefix),
        }
    }

    /// Binding key of queue `i` (direct and topic exchanges).
    pub fn binding_key(&self, i: usize) -> String {
        match self.routing {
            Routing::Topic => "bench.#".to_owned(),
            _ => self.queue_name(i),
        }
    }

    /// Routing key of message number `seq` of producer `producer`.
    pub fn routing_key(&self, producer: usize, seq: u64) -> String {
        match self.routing {
            Routing::Default | Routing::Direct => {
                let q = (seq as usize + producer) % self.queues;
                self.queue_name(q)
            }
            Routing::Topic => format!("bench.msg.p{producer}"),
            Routing::Fanout => String::new(),
        }
    }

    /// Messages producer `p` sends, if the run is bounded by a count.
    fn quota(&self, p: usize) -> Option<u64> {
        self.count.map(|n| {
            let per = n / self.producers as u64;
            per + u64::from((p as u64) < n % self.producers as u64)
        })
    }

    fn check(&self) -> Result<()> {
        if self.producers == 0 || self.queues == 0 {
            bail!("need at least one producer and one queue");
        }
        if self.consumers == 0 {
            bail!("need at least one consumer per queue (a backlog run drains with them)");
        }
        if self.size < HEADER_LEN {
            bail!("messages must be at least {HEADER_LEN} bytes (send time, producer, sequence)");
        }
        if self.duration.is_none() && self.count.is_none() {
            bail!("give a duration, a message count, or both");
        }
        if self.backlog && self.count.is_none() {
            bail!("a backlog run needs a message count");
        }
        if self.rate.is_some_and(|r| r <= 0.0 || !r.is_finite()) {
            bail!("the rate must be positive");
        }
        Ok(())
    }
}

/// Where and what the broker under test is, for RSS and disk figures.
#[derive(Debug, Clone, Default)]
pub struct BrokerProcess {
    /// Process whose VmRSS and CPU time are sampled.
    pub pid: Option<u32>,
    /// Data directory whose disk use is reported after the run.
    pub data_dir: Option<PathBuf>,
}

/// Counters shared by every task of a run.
#[derive(Debug)]
pub struct Shared {
    /// The clock every timestamp is measured from.
    pub base: Instant,
    /// Messages handed to the client.
    pub sent: AtomicU64,
    /// Messages confirmed by the broker.
    pub confirmed: AtomicU64,
    /// Messages refused (nacked) or whose confirm failed.
    pub failed: AtomicU64,
    /// Deliveries received (all queues).
    pub received: AtomicU64,
    /// Body bytes received.
    pub received_bytes: AtomicU64,
    /// Deliveries of a message already seen on that queue.
    pub duplicates: AtomicU64,
    /// Deliveries whose body was not one of ours.
    pub malformed: AtomicU64,
    /// Nanoseconds since `base` of the last confirm and the last delivery.
    pub last_confirm_ns: AtomicU64,
    pub last_delivery_ns: AtomicU64,
    /// First error any task hit; the run stops on it.
    pub error: Mutex<Option<String>>,
    pub stop_on_error: AtomicBool,
    /// Publish→confirm latency of all producers, microseconds.
    pub confirm_latency_us: Mutex<Histogram<u64>>,
    /// One bitmap per queue of the message ids seen on it.
    seen: Vec<Mutex<Vec<u64>>>,
    producers: u64,
    warmup_ns: u64,
}

impl Shared {
    fn new(workload: &Workload) -> Self {
        Shared {
            base: Instant::now(),
            sent: AtomicU64::new(0),
            confirmed: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            received: AtomicU64::new(0),
            received_bytes: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            malformed: AtomicU64::new(0),
            last_confirm_ns: AtomicU64::new(0),
            last_delivery_ns: AtomicU64::new(0),
            error: Mutex::new(None),
            stop_on_error: AtomicBool::new(false),
            confirm_latency_us: Mutex::new(latency_histogram()),
            seen: (0..workload.queues)
                .map(|_| Mutex::new(Vec::new()))
                .collect(),
            producers: workload.producers as u64,
            warmup_ns: u64::try_from(workload.warmup.as_nanos()).unwrap_or(u64::MAX),
        }
    }

    /// Nanoseconds since the shared base.
    pub fn now_ns(&self) -> u64 {
        u64::try_from(self.base.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// Counts a confirm (or a refusal) of a message sent at `sent_ns`, and records its
    /// publish→confirm latency in the producer's `histogram`.
    pub fn confirmed(&self, ok: bool, sent_ns: u64, histogram: &mut Histogram<u64>) {
        let now = self.now_ns();
        if ok {
            self.confirmed.fetch_add(1, Ordering::Relaxed);
            if sent_ns >= self.warmup_ns {
                histogram.saturating_record((now.saturating_sub(sent_ns) / 1000).max(1));
            }
        } else {
            self.failed.fetch_add(1, Ordering::Relaxed);
        }
        self.last_confirm_ns.fetch_max(now, Ordering::Relaxed);
    }

    /// Adds a producer's publish→confirm latencies to the run's.
    pub fn merge_confirm_latency(&self, histogram: &Histogram<u64>) {
        let mut all = self
            .confirm_latency_us
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        all.add(histogram).expect("same bounds");
    }

    /// Records the failure of a task; the run stops.
    pub fn fail(&self, what: impl std::fmt::Display) {
        let mut error = self.error.lock().unwrap_or_else(|e| e.into_inner());
        if error.is_none() {
            *error = Some(what.to_string());
        }
        self.stop_on_error.store(true, Ordering::Relaxed);
    }

    fn has_failed(&self) -> bool {
        self.stop_on_error.load(Ordering::Relaxed)
    }
}

/// What one consumer task measures: its latency histogram.
#[derive(Debug)]
pub struct ConsumerStats {
    /// Publish→deliver latency, microseconds.
    pub latency_us: Histogram<u64>,
}

/// A histogram of microseconds, up to a day, 3 significant digits.
pub fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 24 * 3_600 * 1_000_000, 3).expect("valid histogram bounds")
}

impl ConsumerStats {
    pub(crate) fn new() -> Self {
        ConsumerStats {
            latency_us: latency_histogram(),
        }
    }

    /// Checks one delivery off: latency, counters, the queue's bitmap.
    pub fn record(&mut self, shared: &Shared, queue: usize, body: &[u8]) {
        let now = shared.now_ns();
        shared.received.fetch_add(1, Ordering::Relaxed);
        shared
            .received_bytes
            .fetch_add(body.len() as u64, Ordering::Relaxed);
        shared.last_delivery_ns.fetch_max(now, Ordering::Relaxed);
        let Some(header) = body::Header::read(body) else {
            shared.malformed.fetch_add(1, Ordering::Relaxed);
            return;
        };
        if header.sent_ns >= shared.warmup_ns {
            let us = now.saturating_sub(header.sent_ns) / 1000;
            self.latency_us.saturating_record(us.max(1));
        }
        let id = header.seq * shared.producers + u64::from(header.producer);
        let (word, bit) = ((id / 64) as usize, id % 64);
        let mut seen = shared.seen[queue].lock().unwrap_or_else(|e| e.into_inner());
        if seen.len() <= word {
            seen.resize((word + 1).next_power_of_two(), 0);
        }
        if seen[word] & (1 << bit) != 0 {
            shared.duplicates.fetch_add(1, Ordering::Relaxed);
        } else {
            seen[word] |= 1 << bit;
        }
    }
}

/// Everything a producer task needs.
#[derive(Debug, Clone)]
pub struct ProducerCtx {
    pub id: usize,
    pub url: String,
    pub workload: Arc<Workload>,
    pub shared: Arc<Shared>,
    /// Messages this producer sends (None: until `deadline`).
    pub quota: Option<u64>,
    /// When to stop publishing.
    pub deadline: Option<Instant>,
}

impl ProducerCtx {
    /// Waits for the next send slot at a fixed rate; false once the producer is done.
    pub async fn next_slot(&self, seq: u64, start: Instant) -> bool {
        if self.quota.is_some_and(|q| seq >= q) || self.shared.has_failed() {
            return false;
        }
        if let Some(rate) = self.workload.rate {
            let per_producer = rate / self.workload.producers as f64;
            let at = start + Duration::from_secs_f64(seq as f64 / per_producer);
            if at > Instant::now() {
                tokio::time::sleep_until(at.into()).await;
            }
        }
        // Checked per message only every 256 to keep the hot loop cheap.
        !(seq % 256 == 0 && self.deadline.is_some_and(|d| Instant::now() >= d))
    }

    /// The body of message `seq`, stamped now, and the stamp.
    pub fn body(&self, template: &[u8], seq: u64) -> (bytes::Bytes, u64) {
        let now = self.shared.now_ns();
        (body::stamp(template, now, self.id as u32, seq), now)
    }
}

/// Everything a consumer task needs.
#[derive(Debug, Clone)]
pub struct ConsumerCtx {
    /// Index of the queue it consumes from.
    pub queue: usize,
    /// Its number among the queue's consumers.
    pub index: usize,
    pub url: String,
    pub workload: Arc<Workload>,
    pub shared: Arc<Shared>,
    /// Becomes true when the consumer should stop.
    pub stop: watch::Receiver<bool>,
}

/// Sets up the topology: deletes what a previous run left and declares it afresh.
async fn setup(backend: Backend, url: &str, workload: &Workload) -> Result<()> {
    match backend {
        Backend::Sluice => sluice::setup(url, workload).await,
        Backend::Amqp => amqp::setup(url, workload).await,
        Backend::Nats => nats::setup(url, workload).await,
    }
}

/// Deletes the topology.
async fn teardown(backend: Backend, url: &str, workload: &Workload) -> Result<()> {
    match backend {
        Backend::Sluice => sluice::teardown(url, workload).await,
        Backend::Amqp => amqp::teardown(url, workload).await,
        Backend::Nats => nats::teardown(url, workload).await,
    }
}

fn spawn_producer(set: &mut JoinSet<()>, backend: Backend, ctx: ProducerCtx) {
    set.spawn(async move {
        let shared = ctx.shared.clone();
        let result = match backend {
            Backend::Sluice => sluice::produce(ctx).await,
            Backend::Amqp => amqp::produce(ctx).await,
            Backend::Nats => nats::produce(ctx).await,
        };
        if let Err(e) = result {
            shared.fail(format!("producer: {e:#}"));
        }
    });
}

fn spawn_consumer(set: &mut JoinSet<Option<ConsumerStats>>, backend: Backend, ctx: ConsumerCtx) {
    set.spawn(async move {
        let shared = ctx.shared.clone();
        let result = match backend {
            Backend::Sluice => sluice::consume(ctx).await,
            Backend::Amqp => amqp::consume(ctx).await,
            Backend::Nats => nats::consume(ctx).await,
        };
        match result {
            Ok(stats) => Some(stats),
            Err(e) => {
                shared.fail(format!("consumer: {e:#}"));
                None
            }
        }
    });
}

/// How a run is driven besides its workload.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub backend: Backend,
    pub url: String,
    pub broker: BrokerProcess,
    /// Seconds to wait after the drain before measuring disk use.
    pub settle: Duration,
    /// Delete the queues (streams) after the run.
    pub cleanup: bool,
    /// Print a progress line every second.
    pub progress: bool,
    /// Free-form label for the report.
    pub label: String,
}

/// Runs one workload and reports.
pub async fn run(workload: Workload, options: RunOptions) -> Result<Report> {
    workload.check()?;
    let workload = Arc::new(workload);
    let backend = options.backend;
    let url = options.url.clone();
    setup(backend, &url, &workload).await?;

    let shared = Arc::new(Shared::new(&workload));
    let monitor = proc::Monitor::start(options.broker.pid, shared.clone(), options.progress);
    let broker_cpu_start = options.broker.pid.and_then(proc::cpu_seconds);
    let self_cpu_start = proc::cpu_seconds(std::process::id());
    let (stop_tx, stop_rx) = watch::channel(false);

    let mut consumers = JoinSet::new();
    let start_consumers = |consumers: &mut JoinSet<Option<ConsumerStats>>| {
        for queue in 0..workload.queues {
            for index in 0..workload.consumers {
                spawn_consumer(
                    consumers,
                    backend,
                    ConsumerCtx {
                        queue,
                        index,
                        url: url.clone(),
                        workload: workload.clone(),
                        shared: shared.clone(),
                        stop: stop_rx.clone(),
                    },
                );
            }
        }
    };
    if !workload.backlog {
        monitor.phase("run");
        start_consumers(&mut consumers);
        // Let every consumer subscribe before the clock starts.
        tokio::time::sleep(Duration::from_millis(300)).await;
    } else {
        monitor.phase("publish");
    }

    let publish_start = Instant::now();
    let publish_start_ns = shared.now_ns();
    let mut producers = JoinSet::new();
    for id in 0..workload.producers {
        spawn_producer(
            &mut producers,
            backend,
            ProducerCtx {
                id,
                url: url.clone(),
                workload: workload.clone(),
                shared: shared.clone(),
                quota: workload.quota(id),
                deadline: workload.duration.map(|d| publish_start + d),
            },
        );
    }
    while let Some(joined) = producers.join_next().await {
        if let Err(e) = joined {
            shared.fail(format!("producer task: {e}"));
        }
    }
    let publish_end_ns = shared.last_confirm_ns.load(Ordering::Relaxed);

    let mut publish_phase = None;
    let drain_start_ns;
    if workload.backlog {
        publish_phase = Some(monitor.phase_stats("publish"));
        monitor.phase("drain");
        drain_start_ns = shared.now_ns();
        if !shared.has_failed() {
            start_consumers(&mut consumers);
        }
    } else {
        drain_start_ns = publish_start_ns;
    }

    // Wait for every confirmed message to arrive on every queue it was routed to.
    let expected = shared.confirmed.load(Ordering::Relaxed) * workload.fanout();
    let mut idle_since = Instant::now();
    let mut last_received = 0;
    let timed_out = loop {
        let received =
            shared.received.load(Ordering::Relaxed) - shared.duplicates.load(Ordering::Relaxed);
        if received >= expected || shared.has_failed() {
            break false;
        }
        if received != last_received {
            last_received = received;
            idle_since = Instant::now();
        } else if idle_since.elapsed() >= workload.drain_timeout {
            break true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    // A moment for stray duplicates to show up, then stop the consumers.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let _ = stop_tx.send(true);
    let mut latency = ConsumerStats::new().latency_us;
    while let Some(joined) = consumers.join_next().await {
        match joined {
            Ok(Some(stats)) => latency.add(&stats.latency_us).expect("same bounds"),
            Ok(None) => {}
            Err(e) => shared.fail(format!("consumer task: {e}")),
        }
    }
    let deliver_phase = monitor.phase_stats(if workload.backlog { "drain" } else { "run" });
    let end_ns = shared.last_delivery_ns.load(Ordering::Relaxed);
    let broker_cpu = broker_cpu_start
        .zip(options.broker.pid.and_then(proc::cpu_seconds))
        .map(|(a, b)| b - a);
    let self_cpu = self_cpu_start
        .zip(proc::cpu_seconds(std::process::id()))
        .map(|(a, b)| b - a);

    // Disk use once the broker has had a moment to drop what was acked.
    let mut disk = None;
    if let Some(dir) = &options.broker.data_dir {
        tokio::time::sleep(options.settle).await;
        disk = Some(proc::disk_usage(dir));
    }
    let rss_after = options.broker.pid.and_then(proc::rss_bytes);
    monitor.stop();
    if options.cleanup {
        if let Err(e) = teardown(backend, &url, &workload).await {
            eprintln!("warning: cleanup failed: {e:#}");
        }
    }

    let error = shared
        .error
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let confirm_latency = shared
        .confirm_latency_us
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    Ok(Report::build(report::Inputs {
        label: options.label,
        backend,
        workload: (*workload).clone(),
        shared: &shared,
        latency,
        confirm_latency,
        expected,
        timed_out,
        publish_start_ns,
        publish_end_ns,
        drain_start_ns,
        end_ns,
        publish_phase,
        deliver_phase,
        rss_after,
        disk,
        broker_cpu,
        self_cpu,
        error,
    }))
}
