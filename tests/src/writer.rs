//! Driving the `log_writer` binary and reopening the directory it wrote.

use std::path::Path;
use std::process::Command;
use std::sync::MutexGuard;

use anyhow::{ensure, Context, Result};
use sluice_broker::storage::{QueueLog, Store};

use crate::child::fork_lock;
use crate::workload::store_config;

/// Segment size the writer uses unless told otherwise (`log_writer --segment-bytes`).
pub const DEFAULT_SEGMENT_BYTES: usize = 256 << 10;

/// The command that runs the writer binary `exe` on `dir` with `seed`; append the mode
/// (`run`, `fill`) and its flags.
pub fn command(exe: &Path, dir: &Path, seed: u64) -> Command {
    let mut cmd = Command::new(exe);
    cmd.arg(dir).arg("--seed").arg(seed.to_string());
    cmd
}

/// The same command, run under a file-size limit of `kib` KiB (`ulimit -f` in bash, then
/// `exec`, so the process is the writer itself and inherits the limit).
pub fn command_with_file_size_limit(exe: &Path, dir: &Path, seed: u64, kib: u64) -> Command {
    let mut cmd = Command::new("bash");
    cmd.args(["-c", r#"ulimit -f "$1" && shift && exec "$@""#, "bash"])
        .arg(kib.to_string())
        .arg(exe)
        .arg(dir)
        .arg("--seed")
        .arg(seed.to_string());
    cmd
}

/// A reopened data directory. Fields drop in order: the log before the store, as the store
/// requires, and the store before the fork lock (see [`fork_lock`]).
#[derive(Debug)]
pub struct Reopened {
    /// The directory's one queue, if the writer got as far as creating it.
    pub log: Option<QueueLog>,
    /// The store.
    pub store: Store,
    /// Keeps children from being started while the store is open.
    _no_spawn: MutexGuard<'static, ()>,
}

/// Opens the data directory the way the writer does and opens its one queue, if any.
pub fn reopen(dir: &Path, segment_bytes: usize) -> Result<Reopened> {
    let no_spawn = fork_lock();
    let store = Store::open(dir, store_config(segment_bytes)).context("reopening the store")?;
    let uids = store.queue_uids()?;
    ensure!(
        uids.len() <= 1,
        "expected at most one queue, found {uids:x?}"
    );
    let log = match uids.first() {
        Some(&uid) => Some(store.open_queue(uid).context("reopening the queue")?),
        None => None,
    };
    Ok(Reopened {
        log,
        store,
        _no_spawn: no_spawn,
    })
}
