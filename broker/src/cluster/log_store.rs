//! openraft's log storage over [`RaftLog`]: each entry's bytes are the bincode of openraft's
//! `Entry` (its log id included); vote, committed and purged log ids are blobs. An append
//! reports "flushed" to openraft only once the sync thread made it durable, in order, so a
//! vote or an ack to the leader never covers an entry a crash could lose.
//!
//! The committed log id openraft hands over can be ahead of what is durable here (a
//! follower learns the leader's commit index with entries it has not flushed yet; a leader
//! commits with a majority that need not include itself). At start openraft re-applies the
//! log up to the saved id, so a saved id past the durable log would leave the node unable
//! to start after a crash: the saved id is never past the last flushed entry.

// openraft's trait methods return its `StorageError` (224 bytes); our helpers return it too.
#![allow(clippy::result_large_err)]

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures_util::future::BoxFuture;
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

/// Waits until an epoch is durable: the sync thread's wait (tests hold it back).
type WaitDurable = Arc<dyn Fn(Epoch) -> BoxFuture<'static, ()> + Send + Sync>;

/// An append whose durability is awaited, in append order.
struct Flush {
    epoch: Epoch,
    /// The append's last entry (`None`: it had none).
    last: Option<LogId>,
    /// `Progress::truncations` when it was appended.
    truncations: u64,
    /// Called once it is durable (tells openraft).
    done: Box<dyn FnOnce() + Send>,
}

/// What may be saved as the committed log id.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Progress {
    /// The newest committed log id openraft handed over.
    wanted: Option<LogId>,
    /// The last entry known durable here: it and every entry before it survive a crash.
    flushed: Option<LogId>,
    /// Truncations so far. The flush of an append made before the latest truncation may
    /// name an entry that is gone, so it does not count.
    truncations: u64,
}

impl Progress {
    /// The committed id to save: the wanted one, but never past the last durable entry. An
    /// entry at or below the committed index is the committed one (openraft commits on a
    /// follower only what matches the leader's log), so the flushed id is committed then.
    fn savable(&self) -> Option<LogId> {
        let wanted = self.wanted?;
        let flushed = self.flushed?;
        Some(if wanted.index <= flushed.index {
            wanted
        } else {
            flushed
        })
    }
}

/// One group's log, as openraft sees it.
pub(crate) struct LogStore {
    log: Arc<Mutex<RaftLog>>,
    flushes: mpsc::Sender<Flush>,
    progress: Arc<watch::Sender<Progress>>,
    /// The committed log id last saved (what a restart re-applies to).
    #[cfg(test)]
    saved: watch::Receiver<Option<LogId>>,
}

impl Debug for LogStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogStore").finish_non_exhaustive()
    }
}

impl LogStore {
    pub(crate) fn new(log: RaftLog) -> LogStore {
        let durability = log.durability().clone();
        let wait: WaitDurable = Arc::new(move |epoch| {
            let durability = durability.clone();
            Box::pin(async move { durability.wait(epoch).await })
        });
        LogStore::with_wait(log, wait)
    }

    fn with_wait(log: RaftLog, wait: WaitDurable) -> LogStore {
        // What the log holds at open survived (recovery made it durable); so did the purged
        // entries, which were applied. Unreadable, nothing is known durable (openraft reads
        // the same and fails its start on it).
        let flushed = match last_log_id(&log) {
            Ok(Some(id)) => Some(id),
            Ok(None) => load_blob(&log, PURGED_BLOB).ok().flatten(),
            Err(_) => None,
        };
        let saved = load_blob(&log, COMMITTED_BLOB).ok().flatten();
        let log = Arc::new(Mutex::new(log));
        let (flushes, rx) = mpsc::channel(FLUSH_QUEUE);
        let progress = Arc::new(
            watch::channel(Progress {
                flushed,
                ..Progress::default()
            })
            .0,
        );
        tokio::spawn(report_flushes(wait, rx, Arc::clone(&progress)));
        let (saved_tx, _saved) = watch::channel(saved);
        tokio::spawn(save_committed(
            Arc::clone(&log),
            progress.subscribe(),
            saved_tx,
        ));
        LogStore {
            log,
            flushes,
            progress,
            #[cfg(test)]
            saved: _saved,
        }
    }

    /// Appends entries; `done` is called once they are durable.
    async fn append_entries(
        &self,
        entries: impl IntoIterator<Item = Entry>,
        done: Box<dyn FnOnce() + Send>,
    ) -> Result<(), StorageError> {
        let mut last = None;
        let encoded: Vec<(u64, Vec<u8>)> = entries
            .into_iter()
            .map(|e| {
                last = Some(e.log_id);
                (e.log_id.index, encode(&e))
            })
            .collect();
        let epoch = lock(&self.log)
            .append(encoded.iter().map(|(i, b)| (*i, b.as_slice())))
            .map_err(write_err)?;
        let flush = Flush {
            epoch,
            last,
            truncations: self.progress.borrow().truncations,
            done,
        };
        self.flushes
            .send(flush)
            .await
            .map_err(|_| write_err("the flush reporter stopped"))
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

/// Tells openraft, in append order, which appends are durable, and moves the flushed
/// mark the committed id is held to.
async fn report_flushes(
    wait: WaitDurable,
    mut rx: mpsc::Receiver<Flush>,
    progress: Arc<watch::Sender<Progress>>,
) {
    while let Some(flush) = rx.recv().await {
        wait(flush.epoch).await;
        if let Some(last) = flush.last {
            progress.send_if_modified(|p| {
                let counts = p.truncations == flush.truncations
                    && p.flushed.is_none_or(|f| f.index < last.index);
                if counts {
                    p.flushed = Some(last);
                }
                counts
            });
        }
        (flush.done)();
    }
}

/// Saves the committed log id (see [`Progress::savable`]), at most every
/// `COMMITTED_SAVE_INTERVAL`, and once more when the store closes.
async fn save_committed(
    log: Arc<Mutex<RaftLog>>,
    mut rx: watch::Receiver<Progress>,
    saved: watch::Sender<Option<LogId>>,
) {
    loop {
        let stopping = rx.changed().await.is_err();
        let value = rx.borrow_and_update().savable();
        if let Some(id) = value.filter(|&id| Some(id) != *saved.borrow()) {
            let log = Arc::clone(&log);
            let written = tokio::task::spawn_blocking(move || {
                lock(&log).save_blob(COMMITTED_BLOB, &encode(&id))
            })
            .await;
            match written {
                Ok(Ok(())) => {
                    saved.send_replace(Some(id));
                }
                Ok(Err(e)) => tracing::warn!(error = %e, "saving the committed log id failed"),
                Err(e) => tracing::warn!(error = %e, "saving the committed log id failed"),
            }
        }
        if stopping {
            return;
        }
        tokio::time::sleep(COMMITTED_SAVE_INTERVAL).await;
    }
}

/// The id of the log's last entry (`None` when it holds none).
fn last_log_id(log: &RaftLog) -> Result<Option<LogId>, StorageError> {
    let Some(i) = log.last_index() else {
        return Ok(None);
    };
    let raw = log.read(i..i + 1).map_err(read_err)?;
    let (_, bytes) = raw
        .first()
        .ok_or_else(|| read_err("last entry unreadable"))?;
    Ok(Some(
        decode::<Entry>("raft log entry", bytes)
            .map_err(read_err)?
            .log_id,
    ))
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
        let last = last_log_id(&lock(&self.log))?.or(purged);
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
        self.progress.send_if_modified(|p| {
            let changed = p.wanted != committed;
            p.wanted = committed;
            changed
        });
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
        let done = Box::new(move || callback.log_io_completed(Ok(())));
        self.append_entries(entries, done).await
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let index = log_id.index;
        self.blocking(move |log| log.truncate_from(index))
            .await
            .map_err(write_err)?;
        // The flushed mark may name a removed entry: none is known durable past the cut until
        // an append after it is flushed (committed entries are never cut, so what was saved
        // stays true).
        self.progress.send_modify(|p| {
            p.truncations += 1;
            if p.flushed.is_some_and(|f| f.index >= index) {
                p.flushed = None;
            }
        });
        Ok(())
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
        .map_err(write_err)?;
        // Purged entries are in a durable snapshot: a restart re-applies nothing below them,
        // so the committed id may be saved up to them (after a snapshot was installed past
        // the end of this log, say).
        self.progress.send_if_modified(|p| {
            let ahead = p.flushed.is_none_or(|f| f.index < log_id.index);
            if ahead {
                p.flushed = Some(log_id);
            }
            ahead
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use openraft::{CommittedLeaderId, EntryPayload};
    use tokio::sync::{oneshot, Semaphore};

    use super::*;
    use crate::storage::tests::support::crash_copy;
    use crate::storage::{Store, StoreConfig};

    const WAIT: Duration = Duration::from_secs(10);

    fn id(term: u64, index: u64) -> LogId {
        LogId::new(CommittedLeaderId::new(term, 1), index)
    }

    fn entries(term: u64, indexes: std::ops::RangeInclusive<u64>) -> Vec<Entry> {
        indexes
            .map(|i| Entry {
                log_id: id(term, i),
                payload: EntryPayload::Blank,
            })
            .collect()
    }

    fn group_dir(data: &Path) -> std::path::PathBuf {
        data.join("cluster/groups/0000000000000007/log")
    }

    fn open_log(store: &Store) -> RaftLog {
        let dir = group_dir(store.dir());
        std::fs::create_dir_all(&dir).unwrap();
        RaftLog::open(&dir, store.durability()).unwrap()
    }

    /// A store whose appends count as flushed only as the test hands out permits (one per
    /// append, in order), and then once the sync thread made them durable.
    fn gated(log: RaftLog, gate: &Arc<Semaphore>) -> LogStore {
        let durability = log.durability().clone();
        let gate = Arc::clone(gate);
        LogStore::with_wait(
            log,
            Arc::new(move |epoch| {
                let (gate, durability) = (Arc::clone(&gate), durability.clone());
                Box::pin(async move {
                    gate.acquire().await.unwrap().forget();
                    durability.wait(epoch).await;
                })
            }),
        )
    }

    /// Appends and returns what tells when the reporter counted the append as flushed.
    async fn append(store: &LogStore, batch: Vec<Entry>) -> oneshot::Receiver<()> {
        let (tx, rx) = oneshot::channel();
        store
            .append_entries(
                batch,
                Box::new(move || {
                    let _ = tx.send(());
                }),
            )
            .await
            .unwrap();
        rx
    }

    async fn flushed(rx: oneshot::Receiver<()>) {
        tokio::time::timeout(WAIT, rx).await.unwrap().unwrap();
    }

    async fn saved_at_least(store: &LogStore, index: u64) -> LogId {
        let mut saved = store.saved.clone();
        let got = tokio::time::timeout(
            WAIT,
            saved.wait_for(|s| s.is_some_and(|s| s.index >= index)),
        )
        .await
        .expect("saved in time")
        .unwrap();
        got.unwrap()
    }

    /// A gated store (see [`gated`]) on a fresh data directory, entries 1..=3 of term 1
    /// flushed.
    struct Gated {
        data: tempfile::TempDir,
        disk: Store,
        gate: Arc<Semaphore>,
        store: LogStore,
    }

    async fn gated_with_three_flushed() -> Gated {
        let data = tempfile::tempdir().unwrap();
        let disk = Store::open(data.path(), StoreConfig::default()).unwrap();
        let gate = Arc::new(Semaphore::new(0));
        let store = gated(open_log(&disk), &gate);
        gate.add_permits(1);
        flushed(append(&store, entries(1, 1..=3)).await).await;
        Gated {
            data,
            disk,
            gate,
            store,
        }
    }

    #[tokio::test]
    async fn the_committed_id_saved_never_passes_the_flushed_log_so_a_crash_leaves_what_to_reapply()
    {
        let Gated {
            data,
            disk,
            gate,
            mut store,
        } = gated_with_three_flushed().await;
        store.save_committed(Some(id(1, 3))).await.unwrap();
        assert_eq!(saved_at_least(&store, 3).await, id(1, 3));

        // A follower learns that 8 is committed while only 5 is flushed here.
        let first = append(&store, entries(1, 4..=5)).await;
        let _second = append(&store, entries(1, 6..=8)).await;
        store.save_committed(Some(id(1, 8))).await.unwrap();
        gate.add_permits(1);
        flushed(first).await;
        assert_eq!(
            saved_at_least(&store, 5).await,
            id(1, 5),
            "saved as far as flushed, not as far as committed"
        );

        // A power loss now takes the entries that were never flushed (6..=8).
        let copy = crash_copy(data.path());
        let disk2 = Store::open(copy.path(), StoreConfig::default()).unwrap();
        let mut log = open_log(&disk2);
        log.truncate_from(6).unwrap();
        let mut reopened = LogStore::new(log);
        // What openraft does at start: re-apply the log up to the saved committed id.
        let committed = reopened.read_committed().await.unwrap().unwrap();
        let last = reopened.get_log_state().await.unwrap().last_log_id.unwrap();
        assert!(
            committed.index <= last.index,
            "committed {committed} is past the log's end {last}: the node could not start"
        );
        let again = reopened
            .try_get_log_entries(1..=committed.index)
            .await
            .unwrap();
        assert_eq!(again.len() as u64, committed.index);
        assert_eq!(again.last().unwrap().log_id, committed);
        drop(disk);
    }

    #[tokio::test]
    async fn a_flush_of_entries_cut_meanwhile_does_not_count_as_flushed() {
        let Gated {
            data: _data,
            disk: _disk,
            gate,
            mut store,
        } = gated_with_three_flushed().await;
        // Term 1's 4..=6 are written, then cut from 5 by a new leader, whose 5..=6 follow.
        let old = append(&store, entries(1, 4..=6)).await;
        store.truncate(id(1, 5)).await.unwrap();
        let new = append(&store, entries(2, 5..=6)).await;
        store.save_committed(Some(id(2, 6))).await.unwrap();
        gate.add_permits(1);
        flushed(old).await;
        assert_eq!(
            store.progress.borrow().savable(),
            Some(id(1, 3)),
            "the old append's flush names entries that are gone"
        );
        gate.add_permits(1);
        flushed(new).await;
        assert_eq!(store.progress.borrow().savable(), Some(id(2, 6)));
        assert_eq!(saved_at_least(&store, 6).await, id(2, 6));
    }
}
