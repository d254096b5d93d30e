//! openraft's state machine over a [`GroupMachine`]: membership and blank entries are kept
//! here (with the last applied log id), commands go to the machine in log order. Snapshots
//! are one file per group, `snapshot` (header, openraft's meta, the machine's bytes, CRC),
//! replaced atomically. The machine itself is not persisted between snapshots: at start it is
//! installed from the snapshot and openraft re-applies the log after it.

// openraft's trait methods return its `StorageError` (224 bytes); our helpers return it too.
#![allow(clippy::result_large_err)]

use std::fs::File;
use std::io::{Cursor, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures_util::future::BoxFuture;
use openraft::storage::{RaftSnapshotBuilder, RaftStateMachine, Snapshot, SnapshotMeta};
use openraft::{AnyError, EntryPayload, StorageIOError};
use serde::{Deserialize, Serialize};

use super::codec::{decode, encode};
use super::types::{
    Entry, GroupId, LogId, Membership, NodeId, NodeInfo, Response, StorageError, TypeConfig,
};

/// What a group's state machine is. Called by the openraft adapter in log order.
///
/// An error means this node's copy of the machine can no longer follow the log (its storage
/// failed, or it holds something it cannot decode): the adapter hands it to openraft as a
/// storage error, which stops the group on this node for good, while the other replicas go
/// on. It is never "skip this one": a replica that went on without a committed command could
/// later lead without it, or send a snapshot lacking it. A command the machine refuses by
/// its own rules, the same way on every replica, is an answer, not an error.
pub trait GroupMachine: Send + Sync + 'static {
    /// Applies committed commands (membership and blank entries never reach it), one response each.
    fn apply(
        &self,
        batch: Vec<Committed>,
    ) -> BoxFuture<'static, Result<Vec<Vec<u8>>, MachineError>>;
    /// The machine's whole state, for a snapshot taken at the last applied command.
    fn snapshot(&self) -> BoxFuture<'static, Result<Vec<u8>, MachineError>>;
    /// Replaces the machine's state with a snapshot's.
    fn install(&self, data: Vec<u8>) -> BoxFuture<'static, Result<(), MachineError>>;
}

/// Why a group's machine cannot go on on this node (see [`GroupMachine`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MachineError {
    /// Its local storage failed: a full disk, an I/O error, a record too large for this node.
    #[error("{machine}: local storage failed: {cause}")]
    Storage { machine: String, cause: String },
    /// A command or snapshot of the group that this node cannot decode.
    #[error("{machine}: cannot decode {what}: {cause}")]
    Undecodable {
        machine: String,
        what: &'static str,
        cause: String,
    },
    /// The machine is gone (its task ended): it has no state to apply to or give.
    #[error("{machine}: the state machine stopped")]
    Stopped { machine: String },
}

/// A committed command, with its raft log index.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Committed {
    pub index: u64,
    pub command: Vec<u8>,
}

const SNAPSHOT_FILE: &str = "snapshot";
const SNAPSHOT_TMP: &str = "snapshot.tmp";
const SNAPSHOT_MAGIC: &[u8; 8] = b"SLCSNAP1";

/// The stored snapshot: openraft's meta and the machine's bytes.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta<NodeId, NodeInfo>,
    data: Vec<u8>,
}

fn sm_err(e: impl ToString) -> StorageError {
    StorageIOError::write_state_machine(AnyError::error(e.to_string())).into()
}

fn snap_err(e: impl ToString) -> StorageError {
    StorageIOError::write_snapshot(None, AnyError::error(e.to_string())).into()
}

/// Writes the snapshot file: magic, CRC32 of the body, the body; through a temporary file,
/// fsync, rename, fsync of the directory, so a crash leaves the old or the new one whole.
fn write_snapshot(dir: &Path, snap: &StoredSnapshot) -> std::io::Result<()> {
    let body = encode(snap);
    let tmp = dir.join(SNAPSHOT_TMP);
    let mut f = File::create(&tmp)?;
    f.write_all(SNAPSHOT_MAGIC)?;
    f.write_all(&crc32fast::hash(&body).to_le_bytes())?;
    f.write_all(&body)?;
    f.sync_all()?;
    std::fs::rename(&tmp, dir.join(SNAPSHOT_FILE))?;
    File::open(dir)?.sync_all()
}

/// Reads the snapshot file; a damaged one is an error, never an empty state.
fn read_snapshot(dir: &Path) -> std::io::Result<Option<StoredSnapshot>> {
    let bytes = match std::fs::read(dir.join(SNAPSHOT_FILE)) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let corrupt = |why: &str| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{}: {why}", dir.join(SNAPSHOT_FILE).display()),
        )
    };
    if bytes.len() < 12 || &bytes[..8] != SNAPSHOT_MAGIC {
        return Err(corrupt("not a snapshot file"));
    }
    let crc = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes"));
    let body = &bytes[12..];
    if crc32fast::hash(body) != crc {
        return Err(corrupt("checksum mismatch"));
    }
    decode("snapshot", body)
        .map(Some)
        .map_err(|e| corrupt(&e.to_string()))
}

/// The state-machine side of one group.
pub(crate) struct StateMachine {
    group: GroupId,
    dir: PathBuf,
    machine: Arc<dyn GroupMachine>,
    last_applied: Option<LogId>,
    membership: Membership,
    /// Distinguishes snapshots taken at the same log id.
    taken: u64,
    /// Set by the machine's first error: from then on every call fails without reaching it
    /// (its state is somewhere inside a batch, fit for nothing).
    failed: Option<MachineError>,
}

impl std::fmt::Debug for StateMachine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateMachine")
            .field("group", &self.group)
            .field("last_applied", &self.last_applied)
            .finish_non_exhaustive()
    }
}

impl StateMachine {
    /// Opens group `group`'s state machine in `dir`, installing the stored snapshot (if any)
    /// into `machine` first. A snapshot the machine cannot take is an error: the group does
    /// not start here rather than start without its state.
    pub(crate) async fn open(
        group: GroupId,
        dir: &Path,
        machine: Arc<dyn GroupMachine>,
    ) -> std::io::Result<StateMachine> {
        let current = read_snapshot(dir)?;
        let mut sm = StateMachine {
            group,
            dir: dir.to_owned(),
            machine,
            last_applied: None,
            membership: Membership::default(),
            taken: 0,
            failed: None,
        };
        if let Some(snap) = current {
            sm.machine.install(snap.data.clone()).await.map_err(|e| {
                tracing::error!(group = %group, error = %e,
                    "the group's stored snapshot could not be installed: the group does not start on this node");
                std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string())
            })?;
            sm.last_applied = snap.meta.last_log_id;
            sm.membership = snap.meta.last_membership.clone();
        }
        Ok(sm)
    }

    /// Records the machine's failure (logged once, here) and turns it into the storage error
    /// that makes openraft stop the group on this node.
    fn fail(&mut self, e: MachineError) -> StorageError {
        if self.failed.is_none() {
            tracing::error!(group = %self.group, error = %e,
                "the group's state machine failed on this node: the group stops here, the other replicas serve it");
            self.failed = Some(e.clone());
        }
        sm_err(e)
    }

    /// The error of a machine that failed before.
    fn check(&self) -> Result<(), StorageError> {
        match &self.failed {
            Some(e) => Err(sm_err(e)),
            None => Ok(()),
        }
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, Membership), StorageError> {
        Ok((self.last_applied, self.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Response>, StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        self.check()?;
        // One response per entry; commands are batched to the machine, keeping their order.
        // What was applied moves on only once the machine took the whole batch.
        let mut responses: Vec<Option<Response>> = Vec::new();
        let mut batch = Vec::new();
        let mut slots = Vec::new();
        let mut last_applied = self.last_applied;
        let mut membership = None;
        for entry in entries {
            last_applied = Some(entry.log_id);
            match entry.payload {
                EntryPayload::Blank => responses.push(Some(Response::default())),
                EntryPayload::Normal(cmd) => {
                    slots.push(responses.len());
                    responses.push(None);
                    batch.push(Committed {
                        index: entry.log_id.index,
                        command: cmd.0,
                    });
                }
                EntryPayload::Membership(m) => {
                    membership = Some(Membership::new(Some(entry.log_id), m));
                    responses.push(Some(Response::default()));
                }
            }
        }
        if !batch.is_empty() {
            let wanted = batch.len();
            let answers = match self.machine.apply(batch).await {
                Ok(a) => a,
                Err(e) => return Err(self.fail(e)),
            };
            if answers.len() != wanted {
                return Err(sm_err(format!(
                    "the machine answered {} of {wanted} commands",
                    answers.len()
                )));
            }
            for (slot, answer) in slots.into_iter().zip(answers) {
                responses[slot] = Some(Response(answer));
            }
        }
        self.last_applied = last_applied;
        if let Some(m) = membership {
            self.membership = m;
        }
        Ok(responses
            .into_iter()
            .map(|r| r.unwrap_or_default())
            .collect())
    }

    async fn get_snapshot_builder(&mut self) -> SnapshotBuilder {
        // The machine's state is taken here, while no apply can run, so it matches
        // `last_applied` exactly; the builder only writes it out (or reports the failure:
        // this method cannot).
        let data = match self.check() {
            Err(e) => Err(e),
            Ok(()) => match self.machine.snapshot().await {
                Ok(data) => Ok(data),
                Err(e) => Err(self.fail(e)),
            },
        };
        self.taken += 1;
        let index = self.last_applied.map(|l| l.index).unwrap_or(0);
        SnapshotBuilder {
            dir: self.dir.clone(),
            meta: SnapshotMeta {
                last_log_id: self.last_applied,
                last_membership: self.membership.clone(),
                snapshot_id: format!("{index}-{}", self.taken),
            },
            data,
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, NodeInfo>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        self.check()?;
        let snap = StoredSnapshot {
            meta: meta.clone(),
            data: snapshot.into_inner(),
        };
        let dir = self.dir.clone();
        let stored = snap.clone();
        tokio::task::spawn_blocking(move || write_snapshot(&dir, &stored))
            .await
            .map_err(snap_err)?
            .map_err(snap_err)?;
        // The file holds the group's snapshot whatever happens next; a machine that cannot
        // take it stops the group here (and a restart tries the file again).
        if let Err(e) = self.machine.install(snap.data).await {
            return Err(self.fail(e));
        }
        self.last_applied = meta.last_log_id;
        self.membership = meta.last_membership.clone();
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        // Read from the file: the builder (a separate task) writes newer ones there. Asked
        // for only when a follower needs a snapshot, so the read is rare.
        let dir = self.dir.clone();
        let snap = tokio::task::spawn_blocking(move || read_snapshot(&dir))
            .await
            .map_err(snap_err)?
            .map_err(snap_err)?;
        Ok(snap.map(|s| Snapshot {
            meta: s.meta,
            snapshot: Box::new(Cursor::new(s.data)),
        }))
    }
}

/// Writes a snapshot taken by [`StateMachine::get_snapshot_builder`].
pub(crate) struct SnapshotBuilder {
    dir: PathBuf,
    meta: SnapshotMeta<NodeId, NodeInfo>,
    /// The machine's state, or why it could not give it (openraft then stops the group).
    data: Result<Vec<u8>, StorageError>,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let snap = StoredSnapshot {
            meta: self.meta.clone(),
            data: self.data.clone()?,
        };
        let dir = self.dir.clone();
        let stored = snap.clone();
        tokio::task::spawn_blocking(move || write_snapshot(&dir, &stored))
            .await
            .map_err(snap_err)?
            .map_err(snap_err)?;
        Ok(Snapshot {
            meta: snap.meta,
            snapshot: Box::new(Cursor::new(snap.data)),
        })
    }
}
