//! `storage-bench`: how close the storage engine gets to the disk.
//!
//! One run measures
//! 1. the disk's raw rate: sequential `pwrite` + `fdatasync` of fixed chunks into a
//!    preallocated file (1 MiB chunks are the reference; other chunk sizes, and overwriting
//!    an already written file, show how the rate depends on the size of a sync);
//! 2. for each record size: durable appends through `Store`/`QueueLog` with group commit. A
//!    producer appends as fast as it can, calls `flush` every `--batch` records and keeps at
//!    most `--outstanding` batches not yet durable; a second thread waits for each batch's
//!    epoch and records every record's append-to-durable latency. Only records that were
//!    durable when the clock stopped are counted.
//!
//! ```text
//! cargo build --release -p sluice-benches
//! target/release/storage-bench --seconds 5 --sizes 128,4096 [--json]
//! ```

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Parser;
use sluice_benches::storage::{
    filesystem_of, is_memory_fs, raw_write_rate, store_append_rate, RawMode, RawResult,
    StoreResult, StoreRun,
};

#[derive(Debug, Parser)]
#[command(
    name = "storage-bench",
    about = "Raw disk rate vs durable appends through the storage engine"
)]
struct Args {
    /// Directory to work in (a temporary directory is made inside it and removed after).
    /// Default: ./target if it exists, else /var/tmp; never a memory filesystem.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Seconds per store measurement and for the 1 MiB raw reference.
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// Record body sizes to measure.
    #[arg(long, value_delimiter = ',', default_values_t = [128usize, 4096])]
    sizes: Vec<usize>,
    /// Records per flush batch; default: as many as make 1 MiB of log.
    #[arg(long)]
    batch: Option<usize>,
    /// Batches that may be in flight (appended, not yet durable).
    #[arg(long, default_value_t = 2)]
    outstanding: usize,
    /// Segment size of the store.
    #[arg(long, default_value_t = 8 << 20)]
    segment_bytes: usize,
    /// Rounds of (raw reference, store runs); the summary reports medians.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Chunk sizes (bytes) of extra raw measurements into a preallocated file, once, each for
    /// min(2, seconds) seconds (given without values: none).
    #[arg(long, value_delimiter = ',', num_args = 0.., default_values_t = [64usize << 10, 256 << 10, 4 << 20])]
    raw_chunks: Vec<usize>,
    /// Chunk sizes (bytes) of extra raw measurements that `fallocate` each chunk right before
    /// writing it, as the store does (given without values: none).
    #[arg(long, value_delimiter = ',', num_args = 0.., default_values_t = [1usize << 20])]
    alloc_each_chunks: Vec<usize>,
    /// Chunk sizes (bytes) of extra raw measurements overwriting an already written file
    /// (given without values: none).
    #[arg(long, value_delimiter = ',', num_args = 0.., default_values_t = [4096usize, 1 << 20])]
    overwrite_chunks: Vec<usize>,
    /// Print JSON on stdout (the table goes to stderr).
    #[arg(long)]
    json: bool,
}

const REFERENCE_CHUNK: usize = 1 << 20;

fn main() -> Result<()> {
    let args = Args::parse();
    let base = match &args.dir {
        Some(d) => {
            std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
            d.clone()
        }
        None => default_dir()?,
    };
    let (fs, device, free) = filesystem_of(&base)?;
    if is_memory_fs(&fs) {
        bail!(
            "{} is on {fs}: syncs there measure nothing; pass --dir on a real disk",
            base.display()
        );
    }
    let work = tempfile::Builder::new()
        .prefix("storage-bench-")
        .tempdir_in(&base)?;
    let machine = Machine {
        cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
            .to_string(),
        fs,
        device,
        dir: work.path().to_path_buf(),
    };
    eprintln!(
        "storage-bench: {} ({} on {}), kernel {}, {} CPUs",
        machine.dir.display(),
        machine.fs,
        machine.device,
        machine.kernel,
        machine.cpus
    );
    // The raw file wraps around at its end; make it big enough not to, within reason.
    let region = (free / 4).clamp(64 << 20, 8 << 30);

    // The disk of a shared or virtual machine drifts: each round measures the raw reference
    // right before the store runs it is compared with, and the summary takes medians.
    let mut rounds = Vec::new();
    for round in 0..args.rounds.max(1) {
        eprintln!("round {}: raw 1 MiB chunks, preallocated ...", round + 1);
        let reference = raw_write_rate(
            work.path(),
            REFERENCE_CHUNK,
            RawMode::Preallocated,
            region,
            args.seconds,
        )?;
        let mut stores = Vec::new();
        for &size in &args.sizes {
            let record = (32 + size).next_multiple_of(8);
            let run = StoreRun {
                size,
                seconds: args.seconds,
                batch: args.batch.unwrap_or((REFERENCE_CHUNK / record).max(1)),
                outstanding: args.outstanding,
                segment_bytes: args.segment_bytes,
            };
            eprintln!(
                "round {}: store, {size} B records, batch {} ...",
                round + 1,
                run.batch
            );
            stores.push(store_append_rate(work.path(), &run)?);
        }
        rounds.push(Round { reference, stores });
    }
    let short = args.seconds.min(2.0);
    let mut curve = Vec::new();
    for &chunk in &args.raw_chunks {
        eprintln!("raw: {} chunks, preallocated ...", size_name(chunk));
        curve.push(raw_write_rate(
            work.path(),
            chunk,
            RawMode::Preallocated,
            region,
            short,
        )?);
    }
    for &chunk in &args.alloc_each_chunks {
        eprintln!(
            "raw: {} chunks, each fallocated before its write ...",
            size_name(chunk)
        );
        curve.push(raw_write_rate(
            work.path(),
            chunk,
            RawMode::AllocateEach,
            region,
            short,
        )?);
    }
    for &chunk in &args.overwrite_chunks {
        eprintln!("raw: {} chunks, overwrite ...", size_name(chunk));
        curve.push(raw_write_rate(
            work.path(),
            chunk,
            RawMode::Overwrite,
            region.min(256 << 20),
            short,
        )?);
    }

    let report = Report {
        machine,
        rounds,
        curve,
        sizes: args.sizes.clone(),
    };
    if args.json {
        eprint!("{}", report.table());
        println!("{}", report.json());
    } else {
        print!("{}", report.table());
    }
    Ok(())
}

/// `./target` if it exists, else `/var/tmp`; the first that is not in memory.
fn default_dir() -> Result<PathBuf> {
    let candidates = [Path::new("target").to_path_buf(), PathBuf::from("/var/tmp")];
    for c in candidates.iter().filter(|c| c.is_dir()) {
        if let Ok((fs, _, _)) = filesystem_of(c) {
            if !is_memory_fs(&fs) {
                return Ok(c.clone());
            }
        }
    }
    bail!("no directory on a real disk among {candidates:?}; pass --dir")
}

#[derive(Debug)]
struct Machine {
    cpus: usize,
    kernel: String,
    fs: String,
    device: String,
    dir: PathBuf,
}

fn size_name(n: usize) -> String {
    if n >= 1 << 20 && n % (1 << 20) == 0 {
        format!("{} MiB", n >> 20)
    } else if n >= 1 << 10 && n % (1 << 10) == 0 {
        format!("{} KiB", n >> 10)
    } else {
        format!("{n} B")
    }
}

fn mode_name(m: RawMode) -> &'static str {
    match m {
        RawMode::Preallocated => "preallocated",
        RawMode::Overwrite => "overwrite",
        RawMode::AllocateEach => "alloc-each",
    }
}

/// One round: the raw reference and the store runs right after it.
#[derive(Debug)]
struct Round {
    reference: RawResult,
    stores: Vec<StoreResult>,
}

#[derive(Debug)]
struct Report {
    machine: Machine,
    rounds: Vec<Round>,
    curve: Vec<RawResult>,
    sizes: Vec<usize>,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// Median over rounds of the figures of record size `size`.
#[derive(Debug)]
struct Summary {
    size: usize,
    appends_per_s: f64,
    payload_mib_per_s: f64,
    ratio: f64,
    p50_us: f64,
    p99_us: f64,
    p999_us: f64,
    max_us: f64,
}

impl Report {
    fn summaries(&self) -> Vec<Summary> {
        self.sizes
            .iter()
            .enumerate()
            .map(|(i, &size)| {
                let of = |f: &dyn Fn(&Round, &StoreResult) -> f64| {
                    median(self.rounds.iter().map(|r| f(r, &r.stores[i])).collect())
                };
                Summary {
                    size,
                    appends_per_s: of(&|_, s| s.appends_per_s),
                    payload_mib_per_s: of(&|_, s| s.payload_mib_per_s),
                    ratio: of(&|r, s| s.payload_mib_per_s / r.reference.mib_per_s),
                    p50_us: of(&|_, s| s.latency.p50_us),
                    p99_us: of(&|_, s| s.latency.p99_us),
                    p999_us: of(&|_, s| s.latency.p999_us),
                    max_us: of(&|_, s| s.latency.max_us),
                }
            })
            .collect()
    }

    fn reference_median(&self) -> f64 {
        median(self.rounds.iter().map(|r| r.reference.mib_per_s).collect())
    }

    fn table(&self) -> String {
        let m = &self.machine;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "machine: {} CPUs, kernel {}, {} ({})",
            m.cpus, m.kernel, m.fs, m.device
        );
        let _ = writeln!(s);
        let _ = writeln!(
            s,
            "Durable appends with group commit vs the raw rate (1 MiB pwrite + fdatasync, preallocated file)"
        );
        let _ = writeln!(
            s,
            "{:>5} {:>6} {:>9} {:>11} {:>10} {:>9} {:>7} {:>9} {:>7} {:>8} {:>8} {:>8} {:>8}",
            "round",
            "size",
            "raw MiB/s",
            "appends/s",
            "body MiB/s",
            "log MiB/s",
            "vs raw",
            "commits/s",
            "batch",
            "p50 us",
            "p99 us",
            "p99.9 us",
            "max us"
        );
        for (i, r) in self.rounds.iter().enumerate() {
            for st in &r.stores {
                let _ = writeln!(
                    s,
                    "{:>5} {:>6} {:>9.1} {:>11.0} {:>10.1} {:>9.1} {:>6.0}% {:>9.0} {:>7} {:>8.0} {:>8.0} {:>8.0} {:>8.0}",
                    i + 1,
                    st.run.size,
                    r.reference.mib_per_s,
                    st.appends_per_s,
                    st.payload_mib_per_s,
                    st.log_mib_per_s,
                    100.0 * st.payload_mib_per_s / r.reference.mib_per_s,
                    st.commits_per_s,
                    st.run.batch,
                    st.latency.p50_us,
                    st.latency.p99_us,
                    st.latency.p999_us,
                    st.latency.max_us
                );
            }
        }
        for m in self.summaries() {
            let _ = writeln!(
                s,
                "{:>5} {:>6} {:>9.1} {:>11.0} {:>10.1} {:>9} {:>6.0}% {:>9} {:>7} {:>8.0} {:>8.0} {:>8.0} {:>8.0}",
                "med",
                m.size,
                self.reference_median(),
                m.appends_per_s,
                m.payload_mib_per_s,
                "",
                100.0 * m.ratio,
                "",
                "",
                m.p50_us,
                m.p99_us,
                m.p999_us,
                m.max_us
            );
        }
        if !self.curve.is_empty() {
            let _ = writeln!(s);
            let _ = writeln!(s, "Raw disk: sequential pwrite + fdatasync per chunk");
            let _ = writeln!(
                s,
                "{:>8} {:>13} {:>9} {:>9} {:>10} {:>10} {:>10}",
                "chunk", "file", "MiB/s", "syncs/s", "p50 us", "p99 us", "max us"
            );
            let refs = self.rounds.iter().map(|r| &r.reference);
            for r in refs.chain(&self.curve) {
                let _ = writeln!(
                    s,
                    "{:>8} {:>13} {:>9.1} {:>9.0} {:>10.0} {:>10.0} {:>10.0}",
                    size_name(r.chunk),
                    mode_name(r.mode),
                    r.mib_per_s,
                    r.syncs_per_s,
                    r.sync.p50_us,
                    r.sync.p99_us,
                    r.sync.max_us
                );
            }
        }
        s
    }

    fn json(&self) -> String {
        let m = &self.machine;
        let esc = |v: &str| v.replace('\\', "\\\\").replace('"', "\\\"");
        let raw_json = |r: &RawResult| {
            format!(
                r#"{{"chunk":{},"file":"{}","mib_per_s":{:.2},"syncs_per_s":{:.1},"p50_us":{:.1},"p99_us":{:.1},"max_us":{:.1}}}"#,
                r.chunk,
                mode_name(r.mode),
                r.mib_per_s,
                r.syncs_per_s,
                r.sync.p50_us,
                r.sync.p99_us,
                r.sync.max_us
            )
        };
        let store_json = |reference: f64, r: &StoreResult| {
            format!(
                concat!(
                    r#"{{"size":{},"records":{},"seconds":{:.3},"appends_per_s":{:.0},"#,
                    r#""payload_mib_per_s":{:.2},"log_mib_per_s":{:.2},"ratio_to_raw":{:.3},"#,
                    r#""commits_per_s":{:.1},"batch":{},"outstanding":{},"segment_bytes":{},"#,
                    r#""p50_us":{:.1},"p99_us":{:.1},"p999_us":{:.1},"max_us":{:.1}}}"#
                ),
                r.run.size,
                r.records,
                r.seconds,
                r.appends_per_s,
                r.payload_mib_per_s,
                r.log_mib_per_s,
                r.payload_mib_per_s / reference,
                r.commits_per_s,
                r.run.batch,
                r.run.outstanding,
                r.run.segment_bytes,
                r.latency.p50_us,
                r.latency.p99_us,
                r.latency.p999_us,
                r.latency.max_us
            )
        };
        let rounds: Vec<String> = self
            .rounds
            .iter()
            .map(|r| {
                let stores: Vec<String> = r
                    .stores
                    .iter()
                    .map(|s| store_json(r.reference.mib_per_s, s))
                    .collect();
                format!(
                    r#"{{"raw":{},"store":[{}]}}"#,
                    raw_json(&r.reference),
                    stores.join(",")
                )
            })
            .collect();
        let summary: Vec<String> = self
            .summaries()
            .iter()
            .map(|m| {
                format!(
                    concat!(
                        r#"{{"size":{},"appends_per_s":{:.0},"payload_mib_per_s":{:.2},"ratio_to_raw":{:.3},"#,
                        r#""p50_us":{:.1},"p99_us":{:.1},"p999_us":{:.1},"max_us":{:.1}}}"#
                    ),
                    m.size, m.appends_per_s, m.payload_mib_per_s, m.ratio, m.p50_us, m.p99_us, m.p999_us, m.max_us
                )
            })
            .collect();
        let curve: Vec<String> = self.curve.iter().map(raw_json).collect();
        format!(
            concat!(
                r#"{{"machine":{{"cpus":{},"kernel":"{}","fs":"{}","device":"{}"}},"#,
                r#""raw_reference_mib_per_s":{:.2},"median":[{}],"rounds":[{}],"raw_curve":[{}]}}"#
            ),
            m.cpus,
            esc(&m.kernel),
            esc(&m.fs),
            esc(&m.device),
            self.reference_median(),
            summary.join(","),
            rounds.join(","),
            curve.join(",")
        )
    }
}
