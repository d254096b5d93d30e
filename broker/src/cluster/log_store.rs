//! openraft's log storage over [`RaftLog`]: each entry's bytes are the bincode of openraft's
//! `Entry` (its log id included); vote, committed and purged log ids are blobs. An append
//! reports "flushed" to openraft only once the sync thread made it durable, in order, so a
//! vote or an ack to the leader never covers an entry a crash could lose.

// openraft's trait methods return its `StorageError` (224 bytes); our helpers return it too.
#![allow(clippy::result_large_err)]

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use openraft::storage::{LogFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::{AnyError, StorageIOError, Vote};
use tokio::sync::{mpsc, watch};

use super::codec::{decode, encode};
use super::types::{Entry, LogId, NodeId, StorageError, TypeConfig};
use crate::storage::{Epoch, RaftLog};

const VOTE_BLOB: &str = "vote";
const COMMITTED_BLOB: &str = "committed";
const PURGED_BLOB: &str = "purged";
/// Appends whose durability is awaited at once, per group, before `append` waits.
const FLUSH_QUEUE: usize = 1024;
/// The committed log id is saved at most this often: it only lets a restart re-apply sooner,
/// and a stale one is safe (committed only grows), so it is not worth an fsync per commit.
const COMMITTED_SAVE_INTERVAL: Duration = Duration::from_millis(200);

fn lock(log: &Mutex<RaftLog>) -> MutexGuard<'_, RaftLog> {
    log.lock().unwrap_or_else(|e| e.into_inner())
}

fn read_err(e: impl ToString) -> StorageError {
    StorageIOError::read_logs(AnyError::error(e.to_string())).into()
}

fn write_err(e: impl ToString) -> StorageError {
    StorageIOError::write_logs(AnyError::error(e.to_string())).into()
}

fn vote_err(e: impl ToString) -> StorageError {
    StorageIOError::write_vote(AnyError::error(e.to_string())).into()
}

/// One group's log, as openraft sees it.
pub(crate) struct LogStore {
    log: Arc<Mutex<RaftLog>>,
    flushes: mpsc::Sender<(Epoch, LogFlushed<TypeConfig>)>,
    committed: watch::Sender<Option<LogId>>,
}

impl Debug for LogStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogStore").finish_non_exhaustive()
    }
}

impl LogStore {
    pub(crate) fn new(log: RaftLog) -> LogStore {
        let log = Arc::new(Mutex::new(log));
        let (flushes, rx) = mpsc::channel(FLUSH_QUEUE);
        let durability = lock(&log).durability().clone();
        tokio::spawn(report_flushes(durability, rx));
        let (committed, committed_rx) = watch::channel(None);
        tokio::spawn(save_committed(Arc::clone(&log), committed_rx));
        LogStore {
            log,
            flushes,
            committed,
        }
    }

    /// Runs a blocking (fsyncing) log operation off the runtime's workers.
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut RaftLog) -> crate::storage::Result<T> + Send + 'static,
    ) -> Result<T, crate::storage::StorageError> {
        let log = Arc::clone(&self.log);
        tokio::task::spawn_blocking(move || f(&mut lock(&log)))
            .await
            .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
    }

    fn load<T: serde::de::DeserializeOwned>(
        &self,
        name: &'static str,
    ) -> Result<Option<T>, StorageError> {
        load_blob(&lock(&self.log), name)
    }
}

fn load_blob<T: serde::de::DeserializeOwned>(
    log: &RaftLog,
    name: &'static str,
) -> Result<Option<T>, StorageError> {
    match log.load_blob(name).map_err(read_err)? {
        Some(bytes) => decode(name, &bytes).map(Some).map_err(read_err),
        None => Ok(None),
    }
}

/// Tells openraft, in append order, which appends are durable.
async fn report_flushes(
    durability: crate::storage::Durability,
    mut rx: mpsc::Receiver<(Epoch, LogFlushed<TypeConfig>)>,
) {
    while let Some((epoch, flushed)) = rx.recv().await {
        durability.wait(epoch).await;
        flushed.log_io_completed(Ok(()));
    }
}

async fn save_committed(log: Arc<Mutex<RaftLog>>, mut rx: watch::Receiver<Option<LogId>>) {
    loop {
        let stopping = rx.changed().await.is_err();
        let value = *rx.borrow_and_update();
        if let Some(id) = value {
            let log = Arc::clone(&log);
            let saved = tokio::task::spawn_blocking(move || {
                lock(&log).save_blob(COMMITTED_BLOB, &encode(&id))
            })
            .await;
            if let Ok(Err(e)) = saved {
                tracing::warn!(error = %e, "saving the committed log id failed");
            }
        }
        if stopping {
            return;
        }
        tokio::time::sleep(COMMITTED_SAVE_INTERVAL).await;
    }
}

/// Reads entries; shared by the store and the readers openraft's replication tasks use.
#[derive(Clone)]
pub(crate) struct LogReader {
    log: Arc<Mutex<RaftLog>>,
}

impl Debug for LogReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogReader").finish_non_exhaustive()
    }
}

fn read_entries<RB: RangeBounds<u64>>(
    log: &Mutex<RaftLog>,
    range: RB,
) -> Result<Vec<Entry>, StorageError> {
    let start = match range.start_bound() {
        Bound::Included(&s) => s,
        Bound::Excluded(&s) => s + 1,
        Bound::Unbounded => 0,
    };
    let end = match range.end_bound() {
        Bound::Included(&e) => e.saturating_add(1),
        Bound::Excluded(&e) => e,
        Bound::Unbounded => u64::MAX,
    };
    let raw = lock(log).read(start..end).map_err(read_err)?;
    raw.iter()
        .map(|(_, bytes)| decode::<Entry>("raft log entry", bytes).map_err(read_err))
        .collect()
}

impl RaftLogReader<TypeConfig> for LogReader {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        read_entries(&self.log, range)
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        read_entries(&self.log, range)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogReader;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let purged: Option<LogId> = self.load(PURGED_BLOB)?;
        let last = {
            let log = lock(&self.log);
            match log.last_index() {
                Some(i) => {
                    let raw = log.read(i..i + 1).map_err(read_err)?;
                    let (_, bytes) = raw
                        .first()
                        .ok_or_else(|| read_err("last entry unreadable"))?;
                    Some(
                        decode::<Entry>("raft log entry", bytes)
                            .map_err(read_err)?
                            .log_id,
                    )
                }
                None => purged,
            }
        };
        Ok(LogState {
            last_purged_log_id: purged,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> LogReader {
        LogReader {
            log: Arc::clone(&self.log),
        }
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError> {
        let bytes = encode(vote);
        self.blocking(move |log| log.save_blob(VOTE_BLOB, &bytes))
            .await
            .map_err(vote_err)
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError> {
        self.load(VOTE_BLOB)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        self.committed.send_replace(committed);
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        self.load(COMMITTED_BLOB)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let encoded: Vec<(u64, Vec<u8>)> = entries
            .into_iter()
            .map(|e| (e.log_id.index, encode(&e)))
            .collect();
        let epoch = lock(&self.log)
            .append(encoded.iter().map(|(i, b)| (*i, b.as_slice())))
            .map_err(write_err)?;
        self.flushes
            .send((epoch, callback))
            .await
            .map_err(|_| write_err("the flush reporter stopped"))
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let index = log_id.index;
        self.blocking(move |log| log.truncate_from(index))
            .await
            .map_err(write_err)
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        // The purged id first: a crash between the two leaves entries below a recorded purge
        // point, which nobody reads; the other order could lose the id of purged entries.
        let bytes = encode(&log_id);
        let index = log_id.index;
        self.blocking(move |log| {
            log.save_blob(PURGED_BLOB, &bytes)?;
            log.purge_through(index)
        })
        .await
        .map_err(write_err)
    }
}
