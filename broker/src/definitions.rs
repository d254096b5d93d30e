//! The durable topology (queues, exchanges, bindings) in one file, `<data>/definitions.bin`.
//!
//! The whole file is rewritten on every change (topology changes are rare): written to a
//! temporary file, synced, renamed over the old one, and the directory synced, so a crash
//! leaves either the old or the new topology. Layout: magic `SLUICEDF`, format version `u32`,
//! payload length `u32`, CRC32 of the payload `u32`, then the payload, encoded with bincode.
//! This is the only module that uses bincode (1.3.3, complete and otherwise unmaintained).

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::storage::fault::{self, Point};

const MAGIC: &[u8; 8] = b"SLUICEDF";
const VERSION: u32 = 1;
const HEADER_LEN: usize = 20;
/// Name of the topology file in the data directory.
pub const FILE_NAME: &str = "definitions.bin";

/// A durable queue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueDef {
    /// Its name.
    pub name: String,
    /// Its log's directory id in the store.
    pub uid: u64,
    /// Deleted when its last consumer goes.
    pub auto_delete: bool,
    /// Its arguments in the wire encoding of protocol.md §6.1.
    pub arguments: Vec<u8>,
}

/// A durable exchange.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExchangeDef {
    /// Its name.
    pub name: String,
    /// 0 direct, 1 fanout, 2 topic, 3 headers (protocol.md §7.1).
    pub kind: u8,
    /// Deleted when its last binding goes.
    pub auto_delete: bool,
    /// Where unroutable messages go.
    pub alternate_exchange: Option<String>,
}

/// A binding between a durable exchange and a durable queue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BindingDef {
    /// Destination queue.
    pub queue: String,
    /// Source exchange.
    pub exchange: String,
    /// Binding key.
    pub routing_key: String,
    /// Arguments, as a wire header table (protocol.md §2.3).
    pub arguments: Vec<u8>,
}

/// Everything that survives a restart besides the messages.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Topology {
    /// Durable queues.
    pub queues: Vec<QueueDef>,
    /// Durable exchanges.
    pub exchanges: Vec<ExchangeDef>,
    /// Durable bindings.
    pub bindings: Vec<BindingDef>,
}

/// The topology file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum DefinitionsError {
    /// An I/O error.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is damaged: refuse to start rather than lose the topology silently.
    #[error("{path} is damaged: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> DefinitionsError + '_ {
    move |source| DefinitionsError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Reads the topology of `data_dir`; a missing file is an empty topology.
pub fn load(data_dir: &Path) -> Result<Topology, DefinitionsError> {
    let path = data_dir.join(FILE_NAME);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Topology::default()),
        Err(e) => return Err(io(&path)(e)),
    };
    decode(&bytes).map_err(|reason| DefinitionsError::Corrupt { path, reason })
}

/// What a topology change does to the space used, which decides whether it may use the
/// reserve (see [`keep_reserve`]) when the disk is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    /// Adds something (a declare, a binding): refused on a full disk.
    Grows,
    /// Removes something (a deletion, an unbinding): what an operator does to free space, so
    /// it may use the reserve.
    Shrinks,
}

/// Replaces the topology of `data_dir` atomically and durably.
///
/// A [`ChangeKind::Shrinks`] write that finds the disk full gives back the reserve and tries
/// once more, so the deletions an operator makes to free space still get recorded.
pub fn store(
    data_dir: &Path,
    topology: &Topology,
    kind: ChangeKind,
) -> Result<(), DefinitionsError> {
    let bytes = encode(topology);
    match write_atomically(data_dir, &bytes) {
        Err(DefinitionsError::Io { source, .. })
            if kind == ChangeKind::Shrinks && is_no_space(&source) && release_reserve(data_dir) =>
        {
            tracing::warn!("the disk is full: the topology reserve was used to record a change");
            write_atomically(data_dir, &bytes)?;
        }
        other => other?,
    }
    keep_reserve(data_dir, bytes.len());
    Ok(())
}

/// Writes `bytes` as the new topology file. An error means nothing changed: the directory is
/// opened first (running out of descriptors fails here, before any change), and once the
/// rename is done the change is made, so the only step after it, the directory's `fsync`,
/// stops the process if it fails (as a failed sync does anywhere in the broker: retrying
/// could report durable what the kernel dropped).
fn write_atomically(data_dir: &Path, bytes: &[u8]) -> Result<(), DefinitionsError> {
    let path = data_dir.join(FILE_NAME);
    let tmp = data_dir.join(format!("{FILE_NAME}.tmp"));
    let dir = fault::check(Point::OpenDir, data_dir)
        .and_then(|()| std::fs::File::open(data_dir))
        .map_err(io(data_dir))?;
    let written = (|| {
        fault::check(Point::TopologyWrite, &tmp)?;
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_data()?;
        std::fs::rename(&tmp, &path)
    })();
    if let Err(e) = written {
        // A partial temporary file must not hold on to space the disk lacks.
        let _ = std::fs::remove_file(&tmp);
        return Err(io(&tmp)(e));
    }
    if let Err(e) = dir.sync_all() {
        tracing::error!(dir = %data_dir.display(), error = %e,
            "fsync of the data directory failed after a topology change; stopping");
        eprintln!(
            "sluice: FATAL: fsync of {} failed after a topology change: {e}; stopping",
            data_dir.display()
        );
        std::process::abort();
    }
    Ok(())
}

/// Name of the file that holds disk blocks in reserve for topology writes.
pub const RESERVE_FILE: &str = "definitions.reserve";
/// The reserve holds at least this much, and at least twice the topology.
const MIN_RESERVE_BYTES: u64 = 1 << 20;

/// Makes sure a reserve of blocks for the next topology writes is allocated (best effort: on
/// a disk that is already full it stays smaller, and is topped up by a later write).
pub fn keep_reserve(data_dir: &Path, topology_bytes: usize) {
    let want = MIN_RESERVE_BYTES.max(2 * topology_bytes as u64);
    let path = data_dir.join(RESERVE_FILE);
    let result = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .and_then(|f| {
            if f.metadata()?.len() >= want {
                return Ok(());
            }
            rustix::fs::fallocate(&f, rustix::fs::FallocateFlags::empty(), 0, want)
                .map_err(std::io::Error::from)
        });
    if let Err(e) = result {
        tracing::debug!(path = %path.display(), error = %e, "topology reserve not topped up");
    }
}

/// Frees the reserve; true when there was one to free.
fn release_reserve(data_dir: &Path) -> bool {
    // Removing a file gives its blocks back at once; no sync is needed for the space.
    std::fs::remove_file(data_dir.join(RESERVE_FILE)).is_ok()
}

fn is_no_space(e: &std::io::Error) -> bool {
    let code = e.raw_os_error();
    code == Some(rustix::io::Errno::NOSPC.raw_os_error())
        || code == Some(rustix::io::Errno::DQUOT.raw_os_error())
}

fn encode(topology: &Topology) -> Vec<u8> {
    // Serializing plain owned data into a Vec cannot fail.
    let payload = bincode::serialize(topology).expect("topology serializes");
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    out.extend_from_slice(&payload);
    out
}

fn decode(bytes: &[u8]) -> Result<Topology, String> {
    if bytes.len() < HEADER_LEN || &bytes[..8] != MAGIC {
        return Err("bad magic number".into());
    }
    let word = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
    if word(8) != VERSION {
        return Err(format!("unsupported format version {}", word(8)));
    }
    let len = word(12) as usize;
    let payload = bytes
        .get(HEADER_LEN..HEADER_LEN + len)
        .filter(|_| bytes.len() == HEADER_LEN + len)
        .ok_or("length does not match the file size")?;
    if crc32fast::hash(payload) != word(16) {
        return Err("checksum mismatch".into());
    }
    bincode::deserialize(payload).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Topology {
        Topology {
            queues: vec![QueueDef {
                name: "tasks".into(),
                uid: 7,
                auto_delete: false,
                arguments: vec![0, 0],
            }],
            exchanges: vec![ExchangeDef {
                name: "orders".into(),
                kind: 2,
                auto_delete: false,
                alternate_exchange: Some("ae".into()),
            }],
            bindings: vec![BindingDef {
                queue: "tasks".into(),
                exchange: "orders".into(),
                routing_key: "eu.#".into(),
                arguments: vec![0, 0],
            }],
        }
    }

    #[test]
    fn round_trips_through_the_file() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(load(dir.path()).unwrap(), Topology::default());
        store(dir.path(), &sample(), ChangeKind::Grows).unwrap();
        assert_eq!(load(dir.path()).unwrap(), sample());
        assert!(!dir.path().join("definitions.bin.tmp").exists());
    }

    #[test]
    fn a_write_keeps_a_reserve_for_the_next_one() {
        let dir = tempfile::tempdir().unwrap();
        store(dir.path(), &sample(), ChangeKind::Grows).unwrap();
        let reserve = std::fs::metadata(dir.path().join(RESERVE_FILE)).unwrap();
        assert!(reserve.len() >= MIN_RESERVE_BYTES);
    }

    #[test]
    fn every_flipped_byte_is_detected() {
        let bytes = encode(&sample());
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x10;
            assert!(decode(&bad).is_err(), "flip at {i} went unnoticed");
        }
        assert!(decode(&bytes[..bytes.len() - 1]).is_err());
    }
}
