//! openraft's state machine over a [`GroupMachine`]: membership and blank entries are kept
//! here (with the last applied log id), commands go to the machine in log order. Snapshots
//! are one file per group, `snapshot` (header, openraft's meta, the machine's bytes, CRC),
//! replaced atomically. The machine itself is not persisted between snapshots: at start it is
//! installed from the snapshot and openraft re-applies the log after it.

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
    Entry, LogId, Membership, NodeId, NodeInfo, Response, StorageError, TypeConfig,
};

/// What a group's state machine is. Called by the openraft adapter in log order.
pub trait GroupMachine: Send + Sync + 'static {
    /// Applies committed commands (membership and blank entries never reach it), one response each.
    fn apply(&self, batch: Vec<Committed>) -> BoxFuture<'static, Vec<Vec<u8>>>;
    /// The machine's whole state, for a snapshot taken at the last applied command.
    fn snapshot(&self) -> BoxFuture<'static, Vec<u8>>;
    /// Replaces the machine's state with a snapshot's.
    fn install(&self, data: Vec<u8>) -> BoxFuture<'static, ()>;
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
    dir: PathBuf,
    machine: Arc<dyn GroupMachine>,
    last_applied: Option<LogId>,
    membership: Membership,
    /// Distinguishes snapshots taken at the same log id.
    taken: u64,
}

impl std::fmt::Debug for StateMachine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateMachine")
            .field("dir", &self.dir)
            .field("last_applied", &self.last_applied)
            .finish_non_exhaustive()
    }
}

impl StateMachine {
    /// Opens the group's state machine in `dir`, installing the stored snapshot (if any) into
    /// `machine` first.
    pub(crate) async fn open(
        dir: &Path,
        machine: Arc<dyn GroupMachine>,
    ) -> std::io::Result<StateMachine> {
        let current = read_snapshot(dir)?;
        let mut sm = StateMachine {
            dir: dir.to_owned(),
            machine,
            last_applied: None,
            membership: Membership::default(),
            taken: 0,
        };
        if let Some(snap) = current {
            sm.machine.install(snap.data.clone()).await;
            sm.last_applied = snap.meta.last_log_id;
            sm.membership = snap.meta.last_membership.clone();
        }
        Ok(sm)
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
        // One response per entry; commands are batched to the machine, keeping their order.
        let mut responses: Vec<Option<Response>> = Vec::new();
        let mut batch = Vec::new();
        let mut slots = Vec::new();
        for entry in entries {
            self.last_applied = Some(entry.log_id);
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
                    self.membership = Membership::new(Some(entry.log_id), m);
                    responses.push(Some(Response::default()));
                }
            }
        }
        if !batch.is_empty() {
            let wanted = batch.len();
            let answers = self.machine.apply(batch).await;
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
        Ok(responses
            .into_iter()
            .map(|r| r.unwrap_or_default())
            .collect())
    }

    async fn get_snapshot_builder(&mut self) -> SnapshotBuilder {
        // The machine's state is taken here, while no apply can run, so it matches
        // `last_applied` exactly; the builder only writes it out.
        let data = self.machine.snapshot().await;
        self.taken += 1;
        let index = self.last_applied.map(|l| l.index).unwrap_or(0);
        SnapshotBuilder {
            dir: self.dir.clone(),
            snapshot: StoredSnapshot {
                meta: SnapshotMeta {
                    last_log_id: self.last_applied,
                    last_membership: self.membership.clone(),
                    snapshot_id: format!("{index}-{}", self.taken),
                },
                data,
            },
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
        self.machine.install(snap.data.clone()).await;
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
    snapshot: StoredSnapshot,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let dir = self.dir.clone();
        let snap = self.snapshot.clone();
        tokio::task::spawn_blocking(move || write_snapshot(&dir, &snap))
            .await
            .map_err(snap_err)?
            .map_err(snap_err)?;
        Ok(Snapshot {
            meta: self.snapshot.meta.clone(),
            snapshot: Box::new(Cursor::new(self.snapshot.data.clone())),
        })
    }
}
