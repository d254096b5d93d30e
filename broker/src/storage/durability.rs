//! Group commit: one sync thread makes every dirty file durable and then releases everyone
//! waiting, in epoch order.
//!
//! Writers tag what they dirtied with the current epoch *under the lock*; the sync thread, under
//! the same lock, takes the dirty set and closes the epoch. A write tagged `e` is therefore in
//! the set that the sync for `e` flushes, and `durable_epoch() >= e` means it is on disk.
//! Batching comes from the time a sync takes, not from a timer. A failed sync stops the process:
//! after a failed `fsync` the kernel may have dropped the dirty pages, so retrying could report
//! success for data that is gone ("fsyncgate").
//!
//! The sync thread never opens a file to sync it: every dirty file and directory comes with the
//! descriptor its writer already holds (a directory is opened when it is marked). Running out
//! of descriptors (`EMFILE`) is therefore an error its writer gets back, before it changes
//! anything, and never something the sync thread would have to tell apart from a failed sync.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::error::{Result, StorageError};
use super::files;
use super::format::{Watermark, CKPT_LEN};

/// A group-commit generation. Everything tagged with epoch `e` is durable once the durable
/// epoch reaches `e`.
pub type Epoch = u64;

/// Identity of a file registered with the sync thread.
pub(crate) type FileId = u64;

static NEXT_FILE_ID: AtomicU64 = AtomicU64::new(1);

/// A fresh, process-unique [`FileId`].
pub(crate) fn new_file_id() -> FileId {
    NEXT_FILE_ID.fetch_add(1, Ordering::Relaxed)
}

/// Where a queue's durable watermark lives.
#[derive(Debug)]
pub(crate) struct CheckpointTarget {
    pub(crate) queue_uid: u64,
    pub(crate) dir: PathBuf,
}

/// Name of the durable watermark file in a queue directory.
pub(crate) const CKPT_FILE: &str = "durable.ckpt";

/// A directory opened to be marked dirty ([`Durability::mark_dir`]); open it *before*
/// changing the directory's entries, so that running out of descriptors leaves nothing half
/// done.
#[derive(Debug)]
pub(crate) struct DirHandle {
    path: PathBuf,
    file: File,
}

impl DirHandle {
    /// Opens `path`; `EMFILE` and the like are [`StorageError::ResourceExhausted`].
    pub(crate) fn open(path: &Path) -> Result<Self> {
        let file = files::open_dir(path)?;
        Ok(Self {
            path: path.to_path_buf(),
            file,
        })
    }
}

#[derive(Debug)]
struct DirtyFile {
    file: Arc<File>,
    path: Arc<Path>,
    watermark: Option<(Arc<CheckpointTarget>, Watermark)>,
}

#[derive(Debug, Default)]
struct State {
    epoch: Epoch,
    files: HashMap<FileId, DirtyFile>,
    /// Messages appended in this epoch (writes that moved a watermark), for the observer.
    messages: u64,
    /// Dirty directories, with the descriptor opened when they were marked.
    dirs: HashMap<PathBuf, File>,
    /// Checkpoints asked for so far; the sync thread takes them all with the next epoch.
    checkpoints_requested: u64,
    /// Checkpoints taken by the sync thread so far (`<= checkpoints_requested`).
    checkpoints_taken: u64,
    /// Someone waits for the open epoch: close it even if nothing is dirty, so waiting for
    /// [`Durability::current_epoch`] always ends.
    close_requested: bool,
    shutdown: bool,
}

#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    work: Condvar,
    durable: AtomicU64,
    done: Mutex<DoneCounters>,
    done_cv: Condvar,
    durable_tx: watch::Sender<Epoch>,
}

#[derive(Debug, Default)]
struct DoneCounters {
    durable: Epoch,
    /// Checkpoint requests (numbered as `State::checkpoints_requested` counts them) whose
    /// watermarks are written.
    checkpoints: u64,
}

/// Told what each group commit did, for metrics. Called on the sync thread, between syncs:
/// keep it short.
pub trait CommitObserver: std::fmt::Debug + Send + Sync {
    /// One `fdatasync` of a file (or one `syncfs` of the data directory) took `took`.
    fn file_synced(&self, took: Duration);
    /// A group commit made `messages` appended messages durable.
    fn committed(&self, messages: u64);
}

/// Settings of the sync thread.
#[derive(Debug, Clone)]
pub struct DurabilityConfig {
    /// How often watermarks are written when they changed.
    pub checkpoint_interval: Duration,
    /// Above this many dirty files, one `syncfs` replaces per-file `fdatasync` calls. Kept
    /// high: `syncfs` also flushes every other writer's dirty data on the file system, so a
    /// confirm would wait for them (a fan-out to 4 queues already dirties 8 files).
    pub syncfs_min_files: usize,
    /// Told about every group commit, if set.
    pub observer: Option<Arc<dyn CommitObserver>>,
}

impl Default for DurabilityConfig {
    fn default() -> Self {
        Self {
            checkpoint_interval: Duration::from_secs(1),
            syncfs_min_files: 64,
            observer: None,
        }
    }
}

/// Handle to the sync thread of one data directory; cheap to clone.
#[derive(Debug, Clone)]
pub struct Durability {
    shared: Arc<Shared>,
}

/// Owns the sync thread; dropping it syncs everything, writes watermarks and joins the thread.
#[derive(Debug)]
pub(crate) struct SyncThread {
    handle: Durability,
    thread: Option<JoinHandle<()>>,
}

impl SyncThread {
    pub(crate) fn start(data_dir: &Path, config: DurabilityConfig) -> std::io::Result<Self> {
        let (durable_tx, _) = watch::channel(0);
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                epoch: 1,
                ..State::default()
            }),
            work: Condvar::new(),
            durable: AtomicU64::new(0),
            done: Mutex::new(DoneCounters::default()),
            done_cv: Condvar::new(),
            durable_tx,
        });
        let dir = File::open(data_dir)?;
        let worker = Worker {
            shared: Arc::clone(&shared),
            config,
            data_dir_fd: dir,
            watermarks: HashMap::new(),
            watermarks_failing: false,
        };
        let thread = std::thread::Builder::new()
            .name("sluice-sync".into())
            .spawn(move || worker.run())?;
        Ok(Self {
            handle: Durability { shared },
            thread: Some(thread),
        })
    }

    pub(crate) fn handle(&self) -> &Durability {
        &self.handle
    }
}

impl Drop for SyncThread {
    fn drop(&mut self) {
        lock(&self.handle.shared.state).shutdown = true;
        self.handle.shared.work.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding these locks leaves plain data behind; keep going.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Durability {
    /// Tags `file` as dirty in the current epoch and returns that epoch. `watermark`, if given,
    /// is the end of the queue log data this write covers; it becomes the queue's durable
    /// watermark once the epoch is durable.
    pub(crate) fn mark_file(
        &self,
        id: FileId,
        file: &Arc<File>,
        path: &Arc<Path>,
        watermark: Option<(&Arc<CheckpointTarget>, Watermark)>,
    ) -> Epoch {
        let mut st = lock(&self.shared.state);
        let wake = st.files.is_empty() && st.dirs.is_empty();
        st.messages += u64::from(watermark.is_some());
        let entry = st.files.entry(id).or_insert_with(|| DirtyFile {
            file: Arc::clone(file),
            path: Arc::clone(path),
            watermark: None,
        });
        if let Some((target, w)) = watermark {
            match &mut entry.watermark {
                Some((_, old)) if *old >= w => {}
                slot => *slot = Some((Arc::clone(target), w)),
            }
        }
        let e = st.epoch;
        drop(st);
        if wake {
            self.shared.work.notify_one();
        }
        e
    }

    /// Tags a directory whose entries changed (a file created or renamed) as dirty. The sync
    /// thread syncs it through `dir`'s descriptor, so it needs none of its own.
    pub(crate) fn mark_dir(&self, dir: DirHandle) -> Epoch {
        let mut st = lock(&self.shared.state);
        let wake = st.files.is_empty() && st.dirs.is_empty();
        // Already dirty in this epoch: the descriptor taken then serves; close ours after
        // the lock is released.
        let spare = match st.dirs.entry(dir.path) {
            Entry::Occupied(_) => Some(dir.file),
            Entry::Vacant(slot) => {
                slot.insert(dir.file);
                None
            }
        };
        let e = st.epoch;
        drop(st);
        drop(spare);
        if wake {
            self.shared.work.notify_one();
        }
        e
    }

    /// The epoch that covers every write tagged so far.
    pub fn current_epoch(&self) -> Epoch {
        lock(&self.shared.state).epoch
    }

    /// The highest epoch known to be durable.
    pub fn durable_epoch(&self) -> Epoch {
        self.shared.durable.load(Ordering::Acquire)
    }

    /// Waits until epoch `e` is durable.
    pub async fn wait(&self, e: Epoch) {
        if self.durable_epoch() >= e {
            return;
        }
        self.request_close(e);
        let mut rx = self.shared.durable_tx.subscribe();
        // The sender lives as long as `self`; an error would mean it is gone, and then the
        // process is stopping anyway.
        let _ = rx.wait_for(|d| *d >= e).await;
    }

    /// Blocks the calling thread until epoch `e` is durable.
    pub fn wait_blocking(&self, e: Epoch) {
        if self.durable_epoch() >= e {
            return;
        }
        self.request_close(e);
        let mut done = lock(&self.shared.done);
        while done.durable < e {
            done = self
                .shared
                .done_cv
                .wait(done)
                .unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Makes sure epoch `e` gets closed even when no write is tagged with it.
    fn request_close(&self, e: Epoch) {
        let mut st = lock(&self.shared.state);
        if st.epoch <= e && !st.close_requested {
            st.close_requested = true;
            drop(st);
            self.shared.work.notify_one();
        }
    }

    /// Syncs everything written so far and writes every queue's durable watermark now; blocks.
    pub fn checkpoint_blocking(&self) {
        // Numbered under the state lock, where the sync thread takes requests together with
        // the dirty files: a request made while a checkpoint is already under way gets a
        // later number, so it waits for the next one, which covers the caller's writes.
        // (Counting completed checkpoints instead let such a caller return early.)
        let target = {
            let mut st = lock(&self.shared.state);
            st.checkpoints_requested += 1;
            st.checkpoints_requested
        };
        self.shared.work.notify_one();
        let mut done = lock(&self.shared.done);
        while done.checkpoints < target {
            done = self
                .shared
                .done_cv
                .wait(done)
                .unwrap_or_else(|p| p.into_inner());
        }
    }
}

struct Worker {
    shared: Arc<Shared>,
    config: DurabilityConfig,
    data_dir_fd: File,
    /// Latest durable watermark per queue, and whether it still has to be written.
    watermarks: HashMap<u64, (Arc<CheckpointTarget>, Watermark, bool)>,
    /// The last attempt to write watermarks failed (and that was logged).
    watermarks_failing: bool,
}

impl Worker {
    fn run(mut self) {
        let mut last_checkpoint = Instant::now();
        loop {
            let (epoch, files, dirs, messages, checkpoint, shutdown) = {
                let mut st = lock(&self.shared.state);
                loop {
                    let has_work = !st.files.is_empty() || !st.dirs.is_empty();
                    let checkpoint_requested = st.checkpoints_requested > st.checkpoints_taken;
                    if has_work || checkpoint_requested || st.close_requested || st.shutdown {
                        break;
                    }
                    let pending = self.watermarks.values().any(|w| w.2);
                    if pending && last_checkpoint.elapsed() >= self.config.checkpoint_interval {
                        break;
                    }
                    let wait = if pending {
                        self.config
                            .checkpoint_interval
                            .saturating_sub(last_checkpoint.elapsed())
                    } else {
                        Duration::from_secs(3600)
                    };
                    st = self
                        .shared
                        .work
                        .wait_timeout(st, wait)
                        .unwrap_or_else(|p| p.into_inner())
                        .0;
                }
                let e = st.epoch;
                st.epoch += 1;
                let files = std::mem::take(&mut st.files);
                let dirs = std::mem::take(&mut st.dirs);
                let messages = std::mem::take(&mut st.messages);
                let checkpoint = (st.checkpoints_requested > st.checkpoints_taken)
                    .then_some(st.checkpoints_requested);
                st.checkpoints_taken = st.checkpoints_requested;
                st.close_requested = false;
                (e, files, dirs, messages, checkpoint, st.shutdown)
            };
            self.sync(&files, &dirs);
            if let (Some(observer), true) = (&self.config.observer, messages > 0) {
                observer.committed(messages);
            }
            for f in files.into_values() {
                if let Some((target, w)) = f.watermark {
                    let slot = self
                        .watermarks
                        .entry(target.queue_uid)
                        .or_insert((target, w, true));
                    if slot.1 < w {
                        slot.1 = w;
                    }
                    slot.2 = true;
                }
            }
            self.shared.durable.store(epoch, Ordering::Release);
            self.shared.durable_tx.send_replace(epoch);
            {
                let mut done = lock(&self.shared.done);
                done.durable = epoch;
            }
            self.shared.done_cv.notify_all();
            if checkpoint.is_some()
                || shutdown
                || last_checkpoint.elapsed() >= self.config.checkpoint_interval
            {
                self.write_watermarks();
                last_checkpoint = Instant::now();
                if let Some(n) = checkpoint {
                    lock(&self.shared.done).checkpoints = n;
                    self.shared.done_cv.notify_all();
                }
            }
            if shutdown {
                let st = lock(&self.shared.state);
                if st.files.is_empty() && st.dirs.is_empty() {
                    return;
                }
            }
        }
    }

    fn sync(&self, files: &HashMap<FileId, DirtyFile>, dirs: &HashMap<PathBuf, File>) {
        let observer = self.config.observer.as_deref();
        if files.len() >= self.config.syncfs_min_files {
            let started = Instant::now();
            if let Err(e) = rustix::fs::syncfs(&self.data_dir_fd) {
                fail_stop("syncfs of the data directory", Path::new("."), &e.into());
            }
            if let Some(o) = observer {
                o.file_synced(started.elapsed());
            }
        } else {
            for f in files.values() {
                let started = Instant::now();
                if let Err(e) = f.file.sync_data() {
                    fail_stop("fdatasync", &f.path, &e);
                }
                if let Some(o) = observer {
                    o.file_synced(started.elapsed());
                }
            }
        }
        // Through the descriptors opened at marking: opening one here could fail for want of
        // descriptors, which is not a failed sync and must not stop the process. (A directory
        // removed since, a deleted queue, syncs fine through its descriptor.)
        for (path, dir) in dirs {
            if let Err(e) = dir.sync_all() {
                fail_stop("fsync of a directory", path, &e);
            }
        }
    }

    fn write_watermarks(&mut self) {
        let mut failed = false;
        for (target, w, pending) in self.watermarks.values_mut() {
            if !*pending {
                continue;
            }
            match write_watermark(target, *w) {
                Ok(()) => *pending = false,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => *pending = false,
                // The old file is still a valid lower bound; try again next time. Said once
                // per run of failures: out of descriptors, every queue fails every second.
                Err(e) => {
                    if !failed && !self.watermarks_failing {
                        tracing::warn!(dir = %target.dir.display(), error = %e,
                            "could not write a durable watermark; retrying every checkpoint");
                    }
                    failed = true;
                }
            }
        }
        if self.watermarks_failing && !failed {
            tracing::info!("durable watermarks are written again");
        }
        self.watermarks_failing = failed;
        // Queues that were deleted leave nothing to write.
        self.watermarks.retain(|_, (t, _, _)| t.dir.exists());
    }
}

/// Replaces `durable.ckpt` atomically: write a temporary file, sync it, rename it over.
fn write_watermark(target: &CheckpointTarget, w: Watermark) -> std::io::Result<()> {
    let tmp = target.dir.join("durable.ckpt.tmp");
    let mut f = File::create(&tmp)?;
    let bytes: [u8; CKPT_LEN] = w.encode(target.queue_uid);
    f.write_all(&bytes)?;
    f.sync_data()?;
    std::fs::rename(&tmp, target.dir.join(CKPT_FILE))
}

/// Reads a queue's durable watermark; `None` if absent or damaged (then nothing is assumed
/// durable, which is the safe lower bound). A file that is there but cannot be read (out of
/// descriptors, an I/O error) is an error, not an absent watermark: recovery without it would
/// take damage to durable data for a torn tail and cut it.
pub(crate) fn load_watermark(dir: &Path, queue_uid: u64) -> Result<Option<Watermark>> {
    let path = dir.join(CKPT_FILE);
    let f = match File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(StorageError::io(path, e)),
    };
    let mut b = [0u8; CKPT_LEN];
    match f.read_exact_at(&mut b, 0) {
        Ok(()) => Ok(Watermark::decode(&b, queue_uid)),
        // Cut short: damaged.
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(None),
        Err(e) => Err(StorageError::io(path, e)),
    }
}

/// [`load_watermark`], with errors read as "no watermark" (for tests that inspect one).
#[cfg(test)]
pub(crate) fn read_watermark(dir: &Path, queue_uid: u64) -> Option<Watermark> {
    load_watermark(dir, queue_uid).ok().flatten()
}

/// Stops the process after a failed sync. Retrying is unsafe: the kernel may already have
/// dropped the pages it could not write, so a second sync could succeed over lost data.
fn fail_stop(what: &str, path: &Path, err: &std::io::Error) -> ! {
    tracing::error!(path = %path.display(), error = %err,
        "{what} failed; stopping the process to avoid confirming lost data");
    eprintln!(
        "sluice: FATAL: {what} of {} failed: {err}; stopping",
        path.display()
    );
    std::process::abort()
}
