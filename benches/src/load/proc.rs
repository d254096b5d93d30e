//! What the generator reads from `/proc` and the filesystem: the broker's RSS and CPU time,
//! disk use of its data directory; and the progress line.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::Shared;

/// Resident memory of a process, from `/proc/PID/status`, in bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Rss {
    /// VmRSS: everything resident.
    pub total: u64,
    /// RssAnon: heap, stacks, anonymous mappings.
    pub anon: u64,
    /// RssFile: resident pages of mapped files (e.g. mmap'd segments); the kernel can
    /// reclaim the clean ones.
    pub file: u64,
}

impl Rss {
    fn max(self, other: Rss) -> Rss {
        Rss {
            total: self.total.max(other.total),
            anon: self.anon.max(other.anon),
            file: self.file.max(other.file),
        }
    }
}

/// Resident memory of a process.
pub fn rss(pid: u32) -> Option<Rss> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| -> Option<u64> {
        let line = status.lines().find(|l| l.starts_with(name))?;
        let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib * 1024)
    };
    Some(Rss {
        total: field("VmRSS:")?,
        anon: field("RssAnon:").unwrap_or(0),
        file: field("RssFile:").unwrap_or(0),
    })
}

/// VmRSS of a process, in bytes.
pub fn rss_bytes(pid: u32) -> Option<u64> {
    rss(pid).map(|r| r.total)
}

/// User plus system CPU time of a process so far, in seconds.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces, in parentheses).
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line: 11 and 12 after the name.
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // USER_HZ, which /proc reports in, is 100 on every Linux ABI we run on.
    Some(ticks as f64 / 100.0)
}

/// Disk use of a directory tree.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct DiskUsage {
    /// Allocated bytes (what `du` reports).
    pub allocated_bytes: u64,
    /// Sum of file lengths.
    pub apparent_bytes: u64,
    /// Regular files.
    pub files: u64,
}

/// Walks `dir` and adds up its files.
pub fn disk_usage(dir: &Path) -> DiskUsage {
    let mut usage = DiskUsage::default();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(meta) = entry.metadata() else { continue };
            if meta.is_dir() {
                stack.push(entry.path());
            } else {
                usage.allocated_bytes += meta.blocks() * 512;
                usage.apparent_bytes += meta.len();
                usage.files += u64::from(meta.is_file());
            }
        }
    }
    usage
}

/// RSS figures of one phase of a run.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct PhaseStats {
    /// Highest VmRSS sampled (every 250 ms), bytes.
    pub peak_rss_bytes: Option<u64>,
    /// The last sample, bytes.
    pub end_rss_bytes: Option<u64>,
    /// Highest of each part (each part's own peak; they need not coincide).
    pub peak_rss: Option<Rss>,
    /// The last sample, by part.
    pub end_rss: Option<Rss>,
    /// Seconds the phase lasted.
    pub seconds: f64,
}

#[derive(Debug)]
struct State {
    phase: &'static str,
    phases: BTreeMap<&'static str, (Instant, PhaseStats)>,
    running: bool,
}

/// Samples the broker's RSS and prints the progress line.
#[derive(Debug, Clone)]
pub struct Monitor {
    state: Arc<Mutex<State>>,
    pid: Option<u32>,
}

impl Monitor {
    /// Starts sampling `pid` (if any) and, with `progress`, printing a line every second.
    pub fn start(pid: Option<u32>, shared: Arc<Shared>, progress: bool) -> Monitor {
        let monitor = Monitor {
            state: Arc::new(Mutex::new(State {
                phase: "setup",
                phases: BTreeMap::new(),
                running: true,
            })),
            pid,
        };
        let m = monitor.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(250));
            let mut last = (Instant::now(), 0u64, 0u64, 0u64);
            for n in 0u64.. {
                tick.tick().await;
                let rss = m.sample();
                if !m.lock().running {
                    break;
                }
                if progress && n % 4 == 0 && n > 0 {
                    let now = Instant::now();
                    let sent = shared.sent.load(Ordering::Relaxed);
                    let confirmed = shared.confirmed.load(Ordering::Relaxed);
                    let received = shared.received.load(Ordering::Relaxed);
                    let dt = now.duration_since(last.0).as_secs_f64().max(1e-9);
                    let rate = |a: u64, b: u64| (a - b) as f64 / dt;
                    eprintln!(
                        "[{:7.1}s {:>7}] sent {:>9.0}/s  confirmed {:>9.0}/s  received {:>9.0}/s  | in flight {:>7}  total received {:>10}{}",
                        shared.base.elapsed().as_secs_f64(),
                        m.lock().phase,
                        rate(sent, last.1),
                        rate(confirmed, last.2),
                        rate(received, last.3),
                        sent - confirmed - shared.failed.load(Ordering::Relaxed),
                        received,
                        rss.map(|r| format!("  broker RSS {:.0} MiB", r as f64 / 1048576.0))
                            .unwrap_or_default(),
                    );
                    last = (now, sent, confirmed, received);
                }
            }
        });
        monitor
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn sample(&self) -> Option<u64> {
        let rss = self.pid.and_then(rss);
        let mut state = self.lock();
        let phase = state.phase;
        if let Some((_, stats)) = state.phases.get_mut(phase) {
            if let Some(rss) = rss {
                stats.peak_rss_bytes = Some(stats.peak_rss_bytes.unwrap_or(0).max(rss.total));
                stats.end_rss_bytes = Some(rss.total);
                stats.peak_rss = Some(stats.peak_rss.unwrap_or_default().max(rss));
                stats.end_rss = Some(rss);
            }
        }
        rss.map(|r| r.total)
    }

    /// Starts a new phase.
    pub fn phase(&self, name: &'static str) {
        {
            let mut state = self.lock();
            state.phase = name;
            state
                .phases
                .insert(name, (Instant::now(), PhaseStats::default()));
        }
        self.sample();
    }

    /// The figures of a phase so far (the phase goes on).
    pub fn phase_stats(&self, name: &'static str) -> PhaseStats {
        if self.lock().phase == name {
            self.sample();
        }
        let state = self.lock();
        state
            .phases
            .get(name)
            .map(|(start, stats)| PhaseStats {
                seconds: start.elapsed().as_secs_f64(),
                ..*stats
            })
            .unwrap_or_default()
    }

    /// Stops sampling.
    pub fn stop(&self) {
        self.lock().running = false;
    }
}
