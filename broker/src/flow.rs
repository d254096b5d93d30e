//! Publisher flow control: publishing is blocked while the disk is nearly full or the broker
//! holds more memory than it may, and resumes by itself when both are fine again
//! (protocol.md §5.6). Sessions turn changes into `Blocked` and `Unblocked`.
//!
//! The memory watermark compares the process's resident *anonymous* memory (its heap:
//! `RssAnon` of `/proc/self/status`) with a limit, by default 40% of the machine's
//! memory or of the cgroup's limit. File pages of the mapped queue logs are left out: they
//! are page cache, which the kernel reclaims without swapping.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sluice_client::wire::ErrorCode;
use tokio::sync::watch;

/// How often the memory in use is measured.
const MEMORY_CHECK_INTERVAL: Duration = Duration::from_millis(500);
/// Share of the machine's (or cgroup's) memory the broker may use by default, in percent.
const DEFAULT_MEMORY_SHARE_PERCENT: u64 = 40;
/// Publishing resumes once memory use is below this share of the limit, in percent, so it
/// does not flap around the limit.
const MEMORY_RESUME_PERCENT: u64 = 90;

/// Why publishing is blocked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// Free disk space is below `min_free_disk_bytes`.
    Disk,
    /// Resident memory is above `max_memory_bytes`.
    Memory,
}

/// What publishers are told while they are blocked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blocking {
    /// `STORAGE_FULL` when the disk is one of the causes, `MEMORY_LIMIT` otherwise.
    pub code: ErrorCode,
    /// Every cause, in words.
    pub reason: String,
}

/// The causes in effect, and the channel that tells sessions about changes.
#[derive(Debug)]
pub struct Flow {
    causes: Mutex<Causes>,
    blocked: AtomicBool,
    changes: watch::Sender<Option<Blocking>>,
}

#[derive(Debug, Default)]
struct Causes {
    disk: Option<String>,
    memory: Option<String>,
}

impl Causes {
    fn blocking(&self) -> Option<Blocking> {
        let code = match (&self.disk, &self.memory) {
            (None, None) => return None,
            (Some(_), _) => ErrorCode::StorageFull,
            (None, Some(_)) => ErrorCode::MemoryLimit,
        };
        let reasons: Vec<&str> = [&self.disk, &self.memory]
            .into_iter()
            .flatten()
            .map(String::as_str)
            .collect();
        Some(Blocking {
            code,
            reason: reasons.join("; "),
        })
    }
}

impl Default for Flow {
    fn default() -> Self {
        Self {
            causes: Mutex::default(),
            blocked: AtomicBool::new(false),
            changes: watch::channel(None).0,
        }
    }
}

impl Flow {
    /// Sets or clears one cause (`reason` is `None` when it no longer holds).
    pub fn set(&self, cause: Cause, reason: Option<String>) {
        let mut causes = self.causes.lock().unwrap_or_else(|e| e.into_inner());
        let slot = match cause {
            Cause::Disk => &mut causes.disk,
            Cause::Memory => &mut causes.memory,
        };
        if *slot == reason {
            return;
        }
        *slot = reason;
        let blocking = causes.blocking();
        self.blocked.store(blocking.is_some(), Ordering::Relaxed);
        self.changes.send_replace(blocking);
    }

    /// Whether a cause holds (cheap: read on every publish).
    pub fn is_blocked(&self) -> bool {
        self.blocked.load(Ordering::Relaxed)
    }

    /// Whether this cause holds.
    pub fn holds(&self, cause: Cause) -> bool {
        let causes = self.causes.lock().unwrap_or_else(|e| e.into_inner());
        match cause {
            Cause::Disk => causes.disk.is_some(),
            Cause::Memory => causes.memory.is_some(),
        }
    }

    /// What publishers are told now, if they are blocked.
    pub fn blocking(&self) -> Option<Blocking> {
        self.changes.borrow().clone()
    }

    /// Follows the changes.
    pub fn subscribe(&self) -> watch::Receiver<Option<Blocking>> {
        self.changes.subscribe()
    }
}

/// Blocks publishers while the resident heap memory is above `limit` and lets them go once it
/// is below 90% of it. Checks once at once, then every [`MEMORY_CHECK_INTERVAL`]; runs until
/// aborted.
pub async fn watch_memory(flow: Arc<Flow>, limit: u64) {
    let mut tick = tokio::time::interval(MEMORY_CHECK_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        check_memory(&flow, limit);
    }
}

/// One memory check; see [`watch_memory`].
pub fn check_memory(flow: &Flow, limit: u64) {
    let used = match resident_heap_bytes() {
        Ok(used) => used,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the memory in use");
            return;
        }
    };
    let blocked = flow.holds(Cause::Memory);
    if !blocked && used > limit {
        let reason = format!(
            "memory in use {} MiB is above the limit of {} MiB",
            used >> 20,
            limit >> 20
        );
        tracing::warn!("publishing blocked: {reason}");
        flow.set(Cause::Memory, Some(reason));
    } else if blocked && used < limit / 100 * MEMORY_RESUME_PERCENT {
        tracing::info!(
            used_mib = used >> 20,
            "publishing resumed: memory in use is below the limit"
        );
        flow.set(Cause::Memory, None);
    }
}

/// The process's resident anonymous memory (`RssAnon` of `/proc/self/status`), in bytes.
fn resident_heap_bytes() -> std::io::Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("RssAnon:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map(|kib| kib * 1024)
        .ok_or_else(|| std::io::Error::other("no RssAnon line in /proc/self/status"))
}

/// 40% of the smaller of the machine's memory and the cgroup's limit; `None` when neither can
/// be read (no limit).
pub fn default_memory_limit() -> Option<u64> {
    let total = [physical_memory(), cgroup_memory_limit()]
        .into_iter()
        .flatten()
        .min()?;
    Some(total / 100 * DEFAULT_MEMORY_SHARE_PERCENT)
}

/// `MemTotal` of `/proc/meminfo`, in bytes.
fn physical_memory() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kib: u64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(kib * 1024)
}

/// The memory limit of this process's cgroup (v2, then v1), if it has one.
fn cgroup_memory_limit() -> Option<u64> {
    let v2 = std::fs::read_to_string("/proc/self/cgroup")
        .ok()
        .and_then(|groups| {
            let path = groups
                .lines()
                .find_map(|l| l.strip_prefix("0::"))?
                .to_owned();
            std::fs::read_to_string(format!("/sys/fs/cgroup{path}/memory.max")).ok()
        });
    let text =
        v2.or_else(|| std::fs::read_to_string("/sys/fs/cgroup/memory/memory.limit_in_bytes").ok())?;
    // "max" (v2) or a huge number (v1) mean no limit.
    text.trim().parse().ok().filter(|&n: &u64| n < 1 << 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocking_names_every_cause_and_ends_when_all_are_gone() {
        let flow = Flow::default();
        let mut changes = flow.subscribe();
        assert!(!flow.is_blocked());
        flow.set(Cause::Memory, Some("memory high".into()));
        assert!(flow.is_blocked());
        assert_eq!(
            flow.blocking(),
            Some(Blocking {
                code: ErrorCode::MemoryLimit,
                reason: "memory high".into()
            })
        );
        flow.set(Cause::Disk, Some("disk low".into()));
        let both = flow.blocking().unwrap();
        assert_eq!(both.code, ErrorCode::StorageFull);
        assert_eq!(both.reason, "disk low; memory high");
        flow.set(Cause::Memory, None);
        assert_eq!(flow.blocking().unwrap().reason, "disk low");
        flow.set(Cause::Disk, None);
        assert!(!flow.is_blocked());
        assert!(changes.has_changed().unwrap());
        assert_eq!(*changes.borrow_and_update(), None);
    }

    #[test]
    fn the_same_cause_again_is_no_change() {
        let flow = Flow::default();
        flow.set(Cause::Disk, Some("disk low".into()));
        let mut changes = flow.subscribe();
        flow.set(Cause::Disk, Some("disk low".into()));
        assert!(!changes.has_changed().unwrap());
        assert!(changes.borrow_and_update().is_some());
    }

    #[test]
    fn memory_use_is_measured_and_a_default_limit_found() {
        assert!(resident_heap_bytes().unwrap() > 0);
        assert!(default_memory_limit().is_some_and(|l| l > 0));
    }

    #[test]
    fn memory_above_the_limit_blocks_until_it_is_well_below() {
        let flow = Flow::default();
        check_memory(&flow, 1);
        assert_eq!(flow.blocking().unwrap().code, ErrorCode::MemoryLimit);
        assert!(flow.blocking().unwrap().reason.contains("memory in use"));
        check_memory(&flow, u64::MAX);
        assert!(!flow.is_blocked());
    }
}
