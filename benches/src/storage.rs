//! Storage engine measurements: the disk's raw `fdatasync`'d write rate, and durable append
//! throughput and latency through `Store`/`QueueLog` with group commit.

use std::collections::VecDeque;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use hdrhistogram::Histogram;
use rustix::fs::FallocateFlags;
use sluice_broker::storage::{Epoch, LogConfig, Store, StoreConfig};

const MIB: f64 = (1u64 << 20) as f64;

/// A latency histogram in nanoseconds, 1 ns to 100 s, 3 significant digits.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 100_000_000_000, 3).expect("valid histogram bounds")
}

/// Latency percentiles, in microseconds.
#[derive(Debug, Clone, Copy, Default)]
pub struct Percentiles {
    /// Median.
    pub p50_us: f64,
    /// 99th percentile.
    pub p99_us: f64,
    /// 99.9th percentile.
    pub p999_us: f64,
    /// Largest value.
    pub max_us: f64,
}

impl Percentiles {
    /// Reads the percentiles of a histogram of nanoseconds.
    pub fn of(h: &Histogram<u64>) -> Self {
        let us = |ns: u64| ns as f64 / 1000.0;
        Self {
            p50_us: us(h.value_at_quantile(0.50)),
            p99_us: us(h.value_at_quantile(0.99)),
            p999_us: us(h.value_at_quantile(0.999)),
            max_us: us(h.max()),
        }
    }
}

/// Fills `buf` with pseudo-random bytes (no zero pages a virtual disk could skip).
pub fn fill_random(buf: &mut [u8], seed: u64) {
    let mut x = seed | 1;
    for b in buf {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
}

/// How the raw file is prepared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RawMode {
    /// A fresh file preallocated with `fallocate` (unwritten extents: the first write of each
    /// block also commits an extent conversion, as the store's segments do).
    Preallocated,
    /// A file written and synced once before, overwritten in place (pure data writes).
    Overwrite,
    /// Each chunk is `fallocate`d right before it is written, as the store reserves segment
    /// space in pieces ahead of the writer (no large unwritten extent to split).
    AllocateEach,
}

/// Result of one raw write measurement.
#[derive(Debug, Clone)]
pub struct RawResult {
    /// Bytes per `pwrite` + `fdatasync`.
    pub chunk: usize,
    /// How the file was prepared.
    pub mode: RawMode,
    /// Sustained rate.
    pub mib_per_s: f64,
    /// Syncs per second.
    pub syncs_per_s: f64,
    /// Time of one `pwrite` + `fdatasync`.
    pub sync: Percentiles,
}

/// Writes `chunk`-byte blocks sequentially with `pwrite`, each followed by `fdatasync`, for
/// `seconds`, into a file in `dir` of at most `region` bytes (wrapping around at its end).
pub fn raw_write_rate(
    dir: &Path,
    chunk: usize,
    mode: RawMode,
    region: u64,
    seconds: f64,
) -> Result<RawResult> {
    let path = dir.join(format!("raw-{chunk}.bin"));
    let _cleanup = RemoveOnDrop(path.clone());
    let file = File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .with_context(|| format!("creating {}", path.display()))?;
    let region = region - region % chunk as u64;
    let mut buf = vec![0u8; chunk];
    fill_random(&mut buf, chunk as u64);
    match mode {
        RawMode::Preallocated => {
            rustix::fs::fallocate(&file, FallocateFlags::empty(), 0, region)
                .context("fallocate")?;
            rustix::fs::fdatasync(&file).context("fdatasync")?;
        }
        RawMode::AllocateEach => {}
        RawMode::Overwrite => {
            let mut at = 0;
            while at < region {
                file.write_all_at(&buf, at).context("pwrite")?;
                at += chunk as u64;
            }
            rustix::fs::fsync(&file).context("fsync")?;
        }
    }
    let mut hist = new_histogram();
    let mut written = 0u64;
    let mut at = 0u64;
    let start = Instant::now();
    let limit = Duration::from_secs_f64(seconds);
    while start.elapsed() < limit {
        let t = Instant::now();
        if mode == RawMode::AllocateEach {
            rustix::fs::fallocate(&file, FallocateFlags::empty(), at, chunk as u64)
                .context("fallocate")?;
        }
        file.write_all_at(&buf, at).context("pwrite")?;
        rustix::fs::fdatasync(&file).context("fdatasync")?;
        hist.saturating_record(t.elapsed().as_nanos() as u64);
        written += chunk as u64;
        at = (at + chunk as u64) % region;
    }
    let secs = start.elapsed().as_secs_f64();
    Ok(RawResult {
        chunk,
        mode,
        mib_per_s: written as f64 / MIB / secs,
        syncs_per_s: hist.len() as f64 / secs,
        sync: Percentiles::of(&hist),
    })
}

/// Settings of one store measurement.
#[derive(Debug, Clone)]
pub struct StoreRun {
    /// Body size of every record (metadata is empty).
    pub size: usize,
    /// How long the producer appends.
    pub seconds: f64,
    /// Records between two `flush` calls; each such batch is one unit of waiting.
    pub batch: usize,
    /// Batches that may be appended but not yet durable; the producer waits for the oldest
    /// before it starts one more.
    pub outstanding: usize,
    /// Segment size of the store.
    pub segment_bytes: usize,
}

/// Result of one store measurement.
#[derive(Debug, Clone)]
pub struct StoreResult {
    /// The settings.
    pub run: StoreRun,
    /// Records appended, all durable when the clock stopped.
    pub records: u64,
    /// From the first append until the last record was durable.
    pub seconds: f64,
    /// Durable appends per second.
    pub appends_per_s: f64,
    /// Body bytes per second.
    pub payload_mib_per_s: f64,
    /// Bytes written to the log (headers and padding included) per second.
    pub log_mib_per_s: f64,
    /// Group commits (sync-thread epochs) per second.
    pub commits_per_s: f64,
    /// Append-to-durable latency of every record.
    pub latency: Percentiles,
}

/// Appends `run.size`-byte records to a fresh queue in a store under `dir` for `run.seconds`,
/// with group commit, keeping at most `run.outstanding` batches in flight; a second thread
/// waits for every batch's epoch and records each record's append-to-durable latency.
pub fn store_append_rate(dir: &Path, run: &StoreRun) -> Result<StoreResult> {
    let data = tempfile::Builder::new().prefix("store-").tempdir_in(dir)?;
    let config = StoreConfig {
        log: LogConfig {
            segment_bytes: run.segment_bytes,
            ..LogConfig::default()
        },
        ..StoreConfig::default()
    };
    let store = Store::open(data.path(), config)?;
    let mut log = store.create_queue()?;
    let durability = store.durability().clone();
    let mut body = vec![0u8; run.size];
    fill_random(&mut body, 7);
    let record_bytes = (32 + run.size).next_multiple_of(8) as u64;

    // The confirmer: waits for each batch's epoch and stamps every record of it.
    let (tx, rx) = mpsc::channel::<(Epoch, Vec<u64>)>();
    let (recycle_tx, recycle_rx) = mpsc::channel::<Vec<u64>>();
    let confirmer_durability = durability.clone();
    let start = Instant::now();
    let confirmer = std::thread::Builder::new()
        .name("confirmer".into())
        .spawn(move || {
            let mut hist = new_histogram();
            let mut last = 0u64;
            for (epoch, stamps) in rx {
                confirmer_durability.wait_blocking(epoch);
                let now = start.elapsed().as_nanos() as u64;
                for &t in &stamps {
                    hist.saturating_record(now.saturating_sub(t).max(1));
                }
                last = now;
                let _ = recycle_tx.send(stamps);
            }
            (hist, last)
        })?;

    let first_epoch = durability.durable_epoch();
    let mut inflight: VecDeque<Epoch> = VecDeque::new();
    let mut records = 0u64;
    let limit = Duration::from_secs_f64(run.seconds);
    while start.elapsed() < limit {
        if inflight.len() >= run.outstanding.max(1) {
            let oldest = inflight.pop_front().expect("non-empty");
            durability.wait_blocking(oldest);
        }
        let mut stamps = recycle_rx
            .try_recv()
            .unwrap_or_else(|_| Vec::with_capacity(run.batch));
        stamps.clear();
        let mut epoch = 0;
        for _ in 0..run.batch {
            let t = start.elapsed().as_nanos() as u64;
            let a = log.append(&[], &body, t / 1_000_000)?;
            epoch = a.epoch;
            stamps.push(t);
        }
        epoch = epoch.max(log.flush()?);
        records += run.batch as u64;
        inflight.push_back(epoch);
        tx.send((epoch, stamps))
            .expect("the confirmer runs until the channel closes");
    }
    drop(tx);
    let (hist, last_ns) = confirmer.join().expect("the confirmer does not panic");
    let commits = durability.durable_epoch() - first_epoch;
    let secs = last_ns as f64 / 1e9;
    drop(log);
    drop(store);
    Ok(StoreResult {
        run: run.clone(),
        records,
        seconds: secs,
        appends_per_s: records as f64 / secs,
        payload_mib_per_s: (records * run.size as u64) as f64 / MIB / secs,
        log_mib_per_s: (records * record_bytes) as f64 / MIB / secs,
        commits_per_s: commits as f64 / secs,
        latency: Percentiles::of(&hist),
    })
}

/// Filesystem type names for the magic numbers of `statfs`.
pub fn filesystem_name(magic: u64) -> &'static str {
    match magic {
        0xEF53 => "ext4",
        0x5846_5342 => "xfs",
        0x9123_683E => "btrfs",
        0x0102_1994 => "tmpfs",
        0x8584_58f6 => "ramfs",
        0x794c_7630 => "overlayfs",
        0x2FC1_2FC1 => "zfs",
        0xF2F5_2010 => "f2fs",
        _ => "unknown",
    }
}

/// The filesystem type of `path` and the device it is mounted from (from `/proc/mounts`).
pub fn filesystem_of(path: &Path) -> Result<(String, String, u64)> {
    let st = rustix::fs::statfs(path).with_context(|| format!("statfs {}", path.display()))?;
    let magic = st.f_type as u64;
    let free = st.f_bavail * st.f_bsize as u64;
    let canon = path.canonicalize()?;
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    let device = mounts
        .lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            Some((w.next()?, w.next()?))
        })
        .filter(|(_, mnt)| canon.starts_with(mnt))
        .max_by_key(|(_, mnt)| mnt.len())
        .map_or_else(|| "?".to_string(), |(dev, mnt)| format!("{dev} on {mnt}"));
    Ok((filesystem_name(magic).to_string(), device, free))
}

/// True for filesystems that live in memory, where a sync measures nothing.
pub fn is_memory_fs(name: &str) -> bool {
    matches!(name, "tmpfs" | "ramfs")
}

/// Removes a file when dropped.
#[derive(Debug)]
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}
