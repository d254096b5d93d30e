//! A data directory: the lock, the format marker, every queue's log and the sync thread.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, OnceLock};

use rustix::fs::FlockOperation;

use super::durability::{Durability, DurabilityConfig, SyncThread};
use super::error::{Result, StorageError};
use super::fault::{self, Point};
use super::files;
use super::format::DATA_DIR_FORMAT;
use super::queue_log::{LogConfig, QueueLog, CREATING_PREFIX};
use super::recovery;

/// Settings of a data directory.
#[derive(Debug, Clone, Default)]
pub struct StoreConfig {
    /// Settings every queue log gets.
    pub log: LogConfig,
    /// Settings of the sync thread.
    pub durability: DurabilityConfig,
}

/// An open data directory. Drop the queue logs first: dropping the store syncs what is
/// outstanding, writes the durable watermarks and stops the sync thread.
#[derive(Debug)]
pub struct Store {
    dir: PathBuf,
    config: StoreConfig,
    // Field order matters: the sync thread stops (and syncs) before the lock is released.
    sync: SyncThread,
    /// Whether the previous run ended with [`Store::mark_clean_stop`].
    clean_stop: bool,
    _lock: File,
}

const QUEUES_DIR: &str = "queues";
const DELETED_PREFIX: &str = ".deleted-";
/// Present while the directory is closed after a clean stop; removed at open, so a crash
/// leaves none.
const CLEAN_STOP_FILE: &str = "CLEAN";

impl Store {
    /// Opens (creating if needed) the data directory `dir` and takes its lock.
    pub fn open(dir: impl Into<PathBuf>, config: StoreConfig) -> Result<Self> {
        ignore_file_size_signal();
        let dir = dir.into();
        std::fs::create_dir_all(dir.join(QUEUES_DIR)).map_err(|e| StorageError::io(&dir, e))?;
        let lock_path = dir.join("LOCK");
        let lock = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&lock_path)
            .map_err(|e| StorageError::io(&lock_path, e))?;
        rustix::fs::flock(&lock, FlockOperation::NonBlockingLockExclusive)
            .map_err(|_| StorageError::Locked(dir.clone()))?;
        check_format(&dir)?;
        let queues = dir.join(QUEUES_DIR);
        for entry in std::fs::read_dir(&queues).map_err(|e| StorageError::io(&queues, e))? {
            let entry = entry.map_err(|e| StorageError::io(&queues, e))?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with(DELETED_PREFIX) || name.starts_with(CREATING_PREFIX) {
                // A queue deletion interrupted by a stop: finish it. A queue creation
                // interrupted by a stop: nothing was ever in it, remove it.
                std::fs::remove_dir_all(entry.path())
                    .map_err(|e| StorageError::io(entry.path(), e))?;
            }
        }
        let clean_stop = dir.join(CLEAN_STOP_FILE).exists();
        files::remove_if_exists(&dir.join(CLEAN_STOP_FILE))?;
        files::sync_dir(&dir)?;
        let sync = SyncThread::start(&dir, config.durability.clone())
            .map_err(|e| StorageError::io(&dir, e))?;
        Ok(Self {
            dir,
            config,
            sync,
            clean_stop,
            _lock: lock,
        })
    }

    /// The data directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The group-commit handle shared by every queue of this store.
    pub fn durability(&self) -> &Durability {
        self.sync.handle()
    }

    fn queue_dir(&self, uid: u64) -> PathBuf {
        self.dir.join(QUEUES_DIR).join(format!("{uid:016x}"))
    }

    /// Creates a new, empty queue log with a fresh random identity.
    pub fn create_queue(&self) -> Result<QueueLog> {
        loop {
            let uid = fastrand::u64(1..);
            let dir = self.queue_dir(uid);
            if dir.exists() {
                continue;
            }
            return QueueLog::create(uid, dir, self.config.log.clone(), self.durability().clone());
        }
    }

    /// Creates an empty log for queue `uid`, deleting any log it had: a replicated queue's
    /// log is a view of its raft group, rebuilt from the group's snapshot and log at every
    /// start, never recovered; so its appends are not synced (they answer epoch 0).
    pub fn recreate_queue(&self, uid: u64) -> Result<QueueLog> {
        if self.queue_dir_exists(uid)? {
            self.remove_queue_dir(uid)?;
        }
        let mut log = QueueLog::create(
            uid,
            self.queue_dir(uid),
            self.config.log.clone(),
            self.durability().clone(),
        )?;
        log.volatile = true;
        Ok(log)
    }

    /// Opens (and recovers) the queue log `uid`. Damage to one queue is an error for that queue
    /// only; the store keeps serving the others.
    pub fn open_queue(&self, uid: u64) -> Result<QueueLog> {
        let mut log = recovery::open(
            uid,
            self.queue_dir(uid),
            self.config.log.clone(),
            self.durability().clone(),
        )?;
        if !self.clean_stop {
            log.recovered.maybe_delivered_below = log.next_seq();
        }
        Ok(log)
    }

    /// Whether the previous run stopped cleanly (see [`mark_clean_stop`](Self::mark_clean_stop)).
    pub fn last_stop_was_clean(&self) -> bool {
        self.clean_stop
    }

    /// Records that this run stops cleanly: call once every queue log is closed. Syncs
    /// everything, writes every watermark, then leaves a marker that the next open reads; its
    /// absence makes the next open assume a crash.
    pub fn mark_clean_stop(&self) -> Result<()> {
        self.checkpoint();
        let path = self.dir.join(CLEAN_STOP_FILE);
        let file = files::create_new(&path)?;
        file.sync_all().map_err(|e| StorageError::io(&path, e))?;
        files::sync_dir(&self.dir)
    }

    /// Whether the directory of queue log `uid` exists. Only "not found" is a no: a directory
    /// that cannot be looked at (permissions, I/O) is an error, never taken for a lost queue.
    pub fn queue_dir_exists(&self, uid: u64) -> Result<bool> {
        let dir = self.queue_dir(uid);
        match std::fs::symlink_metadata(&dir) {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(StorageError::io(dir, e)),
        }
    }

    /// The identities of every queue log in the directory.
    pub fn queue_uids(&self) -> Result<Vec<u64>> {
        let queues = self.dir.join(QUEUES_DIR);
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&queues).map_err(|e| StorageError::io(&queues, e))? {
            let entry = entry.map_err(|e| StorageError::io(&queues, e))?;
            let name = entry.file_name();
            if let Some(uid) = name.to_str().and_then(|n| u64::from_str_radix(n, 16).ok()) {
                out.push(uid);
            }
        }
        out.sort_unstable();
        Ok(out)
    }

    /// Deletes a queue log and all its files. The directory is renamed first (one atomic,
    /// durable step), so a stop half-way leaves nothing that looks like a live queue.
    pub fn delete_queue(&self, log: QueueLog) -> Result<()> {
        let uid = log.uid();
        drop(log);
        self.remove_queue_dir(uid)
    }

    /// Deletes the files of a queue that is not open, without reading them: a queue of an
    /// earlier run that the topology no longer names (transient, or deleted just before a
    /// stop) is removed even if it is damaged.
    pub fn remove_queue_dir(&self, uid: u64) -> Result<()> {
        let dir = self.queue_dir(uid);
        let parent = self.dir.join(QUEUES_DIR);
        let aside = parent.join(format!("{DELETED_PREFIX}{uid:016x}"));
        let parent_dir = files::open_dir(&parent)?;
        fault::check(Point::Rename, &dir)
            .and_then(|()| std::fs::rename(&dir, &aside))
            .map_err(|e| StorageError::io(&dir, e))?;
        files::sync_open_dir(&parent_dir, &parent)?;
        drop(parent_dir);
        std::fs::remove_dir_all(&aside).map_err(|e| StorageError::io(&aside, e))
    }

    /// Syncs everything written so far and records every queue's durable watermark now.
    pub fn checkpoint(&self) {
        self.durability().checkpoint_blocking();
    }
}

fn check_format(dir: &Path) -> Result<()> {
    let path = dir.join("FORMAT");
    match std::fs::read_to_string(&path) {
        Ok(s) if s == DATA_DIR_FORMAT => Ok(()),
        Ok(found) => Err(StorageError::UnsupportedFormat { path, found }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let tmp = dir.join("FORMAT.tmp");
            let write = || -> std::io::Result<()> {
                let mut f = File::create(&tmp)?;
                f.write_all(DATA_DIR_FORMAT.as_bytes())?;
                f.sync_all()?;
                std::fs::rename(&tmp, &path)
            };
            write().map_err(|e| StorageError::io(&path, e))?;
            files::sync_dir(dir)
        }
        Err(e) => Err(StorageError::io(&path, e)),
    }
}

/// Exceeding `RLIMIT_FSIZE` raises SIGXFSZ, whose default action kills the process. With a
/// handler installed the write fails with `EFBIG` instead, which becomes `StorageFull`.
fn ignore_file_size_signal() {
    static REGISTERED: OnceLock<()> = OnceLock::new();
    REGISTERED.get_or_init(|| {
        let flag = Arc::new(AtomicBool::new(false));
        if let Err(e) = signal_hook::flag::register(signal_hook::consts::SIGXFSZ, flag) {
            tracing::warn!(error = %e, "could not install a SIGXFSZ handler");
        }
    });
}
