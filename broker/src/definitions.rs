//! The durable topology (queues, exchanges, bindings) in one file, `<data>/definitions.bin`.
//!
//! The whole file is rewritten on every change (topology changes are rare): written to a
//! temporary file, synced, renamed over the old one, and the directory synced, so a crash
//! leaves either the old or the new topology. Layout: magic `SLUICEDF`, format version `u32`,
//! payload length `u32`, CRC32 of the payload `u32`, then the payload, encoded with bincode.
//! This is the only module that uses bincode (1.3.3, complete and otherwise unmaintained).

use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};

use bytes::{Bytes, BytesMut};
use serde::{Deserialize, Serialize};
use sluice_client::wire::{self, Headers, Payload, QueueArguments, Reader};

use crate::routing::{Binding, Exchange, ExchangeKind};
use crate::storage::fault::{self, Point};

const MAGIC: &[u8; 8] = b"SLUICEDF";
/// 2 added the exchanges' hash header; version 1 files are still read.
const VERSION: u32 = 2;
const HEADER_LEN: usize = 20;
/// Name of the topology file in the data directory.
pub const FILE_NAME: &str = "definitions.bin";

/// A durable queue.
#[derive(Debug, Clone, PartialEq)]
pub struct QueueDef {
    /// Its name.
    pub name: String,
    /// Its log's directory id in the store.
    pub uid: u64,
    /// Deleted when its last consumer goes.
    pub auto_delete: bool,
    /// Its arguments.
    pub arguments: QueueArguments,
}

/// Everything that survives a restart besides the messages: the one model of the durable
/// topology, which the broker builds from its registry and restores it from. Exchanges are
/// durable ones users declared; bindings are those between durable exchanges (built-in ones
/// included) and durable queues.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Topology {
    /// Durable queues, by name.
    pub queues: Vec<QueueDef>,
    /// Durable user-declared exchanges, by name.
    pub exchanges: Vec<Exchange>,
    /// Durable bindings, oldest first.
    pub bindings: Vec<Binding>,
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
    /// The file reads, but one of its entries cannot be used: refuse to start rather than
    /// guess (an unknown exchange kind is not `direct`, unreadable arguments are not none).
    #[error("{path} is damaged: {entry}: {reason}")]
    BadEntry {
        /// The file.
        path: PathBuf,
        /// The entry.
        entry: Entry,
        /// What is wrong with it.
        reason: String,
    },
}

/// An entry of the topology file, as a damage report names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    /// The queue of this name.
    Queue(String),
    /// The exchange of this name.
    Exchange(String),
    /// A binding.
    Binding {
        /// Its exchange.
        exchange: String,
        /// Its queue.
        queue: String,
        /// Its binding key.
        routing_key: String,
    },
}

impl Entry {
    /// The entry of `binding`.
    pub fn binding(binding: &Binding) -> Self {
        Entry::Binding {
            exchange: binding.exchange.clone(),
            queue: binding.queue.clone(),
            routing_key: binding.routing_key.clone(),
        }
    }
}

impl fmt::Display for Entry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Internal names of vhosts hold `\0`: escaped, so the report stays one readable line.
        match self {
            Entry::Queue(name) => write!(f, "queue '{}'", name.escape_debug()),
            Entry::Exchange(name) => write!(f, "exchange '{}'", name.escape_debug()),
            Entry::Binding {
                exchange,
                queue,
                routing_key,
            } => write!(
                f,
                "binding of exchange '{}' to queue '{}' (key '{}')",
                exchange.escape_debug(),
                queue.escape_debug(),
                routing_key.escape_debug()
            ),
        }
    }
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
    let stored = decode(&bytes).map_err(|reason| DefinitionsError::Corrupt {
        path: path.clone(),
        reason,
    })?;
    stored
        .into_topology()
        .map_err(|(entry, reason)| DefinitionsError::BadEntry {
            path,
            entry,
            reason,
        })
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
    let payload = bincode::serialize(&Stored::from(topology)).expect("topology serializes");
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    out.extend_from_slice(&payload);
    out
}

/// The file's records, checked against its header and checksum but not yet read as a
/// topology.
fn decode(bytes: &[u8]) -> Result<Stored, String> {
    if bytes.len() < HEADER_LEN || &bytes[..8] != MAGIC {
        return Err("bad magic number".into());
    }
    let word = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
    let version = word(8);
    if version != VERSION && version != 1 {
        return Err(format!("unsupported format version {version}"));
    }
    let len = word(12) as usize;
    let payload = bytes
        .get(HEADER_LEN..HEADER_LEN + len)
        .filter(|_| bytes.len() == HEADER_LEN + len)
        .ok_or("length does not match the file size")?;
    if crc32fast::hash(payload) != word(16) {
        return Err("checksum mismatch".into());
    }
    if version == 1 {
        return bincode::deserialize::<StoredV1>(payload)
            .map(Stored::from)
            .map_err(|e| e.to_string());
    }
    bincode::deserialize(payload).map_err(|e| e.to_string())
}

/// The layout of the file's payload (bincode of these, in this field order): the encoding
/// of [`Topology`], private to this module. Kinds and arguments are kept in their wire
/// encoding (protocol.md §7.1, §6.1, §2.3).
#[derive(Serialize, Deserialize)]
struct Stored {
    queues: Vec<StoredQueue>,
    exchanges: Vec<StoredExchange>,
    bindings: Vec<StoredBinding>,
}

#[derive(Serialize, Deserialize)]
struct StoredQueue {
    name: String,
    uid: u64,
    auto_delete: bool,
    arguments: Vec<u8>,
}

#[derive(Serialize, Deserialize)]
struct StoredExchange {
    name: String,
    /// 0 direct, 1 fanout, 2 topic, 3 headers, 4 weighted, 5 consistent-hash.
    kind: u8,
    auto_delete: bool,
    alternate_exchange: Option<String>,
    hash_header: Option<String>,
}

/// Version 1 of the payload: exchanges had no hash header.
#[derive(Deserialize)]
struct StoredV1 {
    queues: Vec<StoredQueue>,
    exchanges: Vec<StoredExchangeV1>,
    bindings: Vec<StoredBinding>,
}

#[derive(Deserialize)]
struct StoredExchangeV1 {
    name: String,
    kind: u8,
    auto_delete: bool,
    alternate_exchange: Option<String>,
}

impl From<StoredV1> for Stored {
    fn from(v1: StoredV1) -> Self {
        let exchanges = v1
            .exchanges
            .into_iter()
            .map(|x| StoredExchange {
                name: x.name,
                kind: x.kind,
                auto_delete: x.auto_delete,
                alternate_exchange: x.alternate_exchange,
                hash_header: None,
            })
            .collect();
        Stored {
            queues: v1.queues,
            exchanges,
            bindings: v1.bindings,
        }
    }
}

#[derive(Serialize, Deserialize)]
struct StoredBinding {
    queue: String,
    exchange: String,
    routing_key: String,
    arguments: Vec<u8>,
}

impl From<&Topology> for Stored {
    fn from(t: &Topology) -> Self {
        Stored {
            queues: t
                .queues
                .iter()
                .map(|q| StoredQueue {
                    name: q.name.clone(),
                    uid: q.uid,
                    auto_delete: q.auto_delete,
                    arguments: encode_arguments(&q.arguments),
                })
                .collect(),
            exchanges: t
                .exchanges
                .iter()
                .map(|x| StoredExchange {
                    name: x.name.clone(),
                    kind: wire::ExchangeKind::from(x.kind) as u8,
                    auto_delete: x.auto_delete,
                    alternate_exchange: x.alternate_exchange.clone(),
                    hash_header: x.hash_header.clone(),
                })
                .collect(),
            bindings: t
                .bindings
                .iter()
                .map(|b| StoredBinding {
                    queue: b.queue.clone(),
                    exchange: b.exchange.clone(),
                    routing_key: b.routing_key.clone(),
                    arguments: encode_headers(&b.arguments),
                })
                .collect(),
        }
    }
}

impl Stored {
    /// The topology the records describe, or the first entry that cannot be read and why.
    fn into_topology(self) -> Result<Topology, (Entry, String)> {
        let queues = self
            .queues
            .into_iter()
            .map(|q| {
                let arguments = decode_arguments(&q.arguments)
                    .map_err(|e| (Entry::Queue(q.name.clone()), e))?;
                Ok(QueueDef {
                    name: q.name,
                    uid: q.uid,
                    auto_delete: q.auto_delete,
                    arguments,
                })
            })
            .collect::<Result<_, _>>()?;
        let exchanges = self
            .exchanges
            .into_iter()
            .map(|x| {
                let kind = kind_from_u8(x.kind).ok_or_else(|| {
                    let reason = format!("unknown exchange kind {}", x.kind);
                    (Entry::Exchange(x.name.clone()), reason)
                })?;
                Ok(Exchange {
                    name: x.name,
                    kind,
                    durable: true,
                    auto_delete: x.auto_delete,
                    alternate_exchange: x.alternate_exchange,
                    hash_header: x.hash_header,
                })
            })
            .collect::<Result<_, _>>()?;
        let bindings = self
            .bindings
            .into_iter()
            .map(|b| {
                let mut binding = Binding::new(b.exchange, b.queue, b.routing_key);
                binding.arguments =
                    decode_headers(&b.arguments).map_err(|e| (Entry::binding(&binding), e))?;
                Ok(binding)
            })
            .collect::<Result<_, _>>()?;
        Ok(Topology {
            queues,
            exchanges,
            bindings,
        })
    }
}

fn kind_from_u8(k: u8) -> Option<ExchangeKind> {
    match k {
        0 => Some(ExchangeKind::Direct),
        1 => Some(ExchangeKind::Fanout),
        2 => Some(ExchangeKind::Topic),
        3 => Some(ExchangeKind::Headers),
        4 => Some(ExchangeKind::Weighted),
        5 => Some(ExchangeKind::ConsistentHash),
        _ => None,
    }
}

fn encode_arguments(a: &QueueArguments) -> Vec<u8> {
    let mut buf = BytesMut::new();
    // Values that came off the wire encode again.
    let _ = a.encode(&mut buf);
    buf.to_vec()
}

fn decode_arguments(bytes: &[u8]) -> Result<QueueArguments, String> {
    QueueArguments::decode_exact(&Bytes::copy_from_slice(bytes))
        .map_err(|e| format!("its arguments cannot be decoded: {e}"))
}

fn encode_headers(h: &Headers) -> Vec<u8> {
    let mut buf = BytesMut::new();
    let _ = wire::put_headers(&mut buf, h);
    buf.to_vec()
}

fn decode_headers(bytes: &[u8]) -> Result<Headers, String> {
    let mut r = Reader::new(bytes);
    wire::read_headers(&mut r).map_err(|e| format!("its arguments cannot be decoded: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Topology {
        let mut binding = Binding::new("orders", "tasks", "eu.#");
        binding.arguments = vec![("n".into(), wire::HeaderValue::Int(1))];
        Topology {
            queues: vec![QueueDef {
                name: "tasks".into(),
                uid: 7,
                auto_delete: false,
                arguments: QueueArguments {
                    max_length: Some(5),
                    ..QueueArguments::default()
                },
            }],
            exchanges: vec![Exchange {
                durable: true,
                alternate_exchange: Some("ae".into()),
                ..Exchange::new("orders", ExchangeKind::Topic)
            }],
            bindings: vec![binding],
        }
    }

    /// Writes `stored` as the topology file of `dir`, with a valid header and checksum.
    fn write_stored(dir: &Path, stored: &Stored) {
        write_payload(dir, VERSION, &bincode::serialize(stored).unwrap());
    }

    fn write_payload(dir: &Path, version: u32, payload: &[u8]) {
        let mut out = Vec::new();
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&version.to_le_bytes());
        out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        out.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
        out.extend_from_slice(payload);
        std::fs::write(dir.join(FILE_NAME), out).unwrap();
    }

    #[test]
    fn a_version_1_file_is_read_its_exchanges_without_hash_header() {
        // Version 1's layout, as the broker wrote it before hash headers existed.
        #[derive(Serialize)]
        struct V1Exchange {
            name: String,
            kind: u8,
            auto_delete: bool,
            alternate_exchange: Option<String>,
        }
        let v1 = (
            Vec::<StoredQueue>::new(),
            vec![V1Exchange {
                name: "orders".into(),
                kind: 2,
                auto_delete: false,
                alternate_exchange: Some("ae".into()),
            }],
            Vec::<StoredBinding>::new(),
        );
        let dir = tempfile::tempdir().unwrap();
        write_payload(dir.path(), 1, &bincode::serialize(&v1).unwrap());
        let topology = load(dir.path()).unwrap();
        assert_eq!(
            topology.exchanges,
            vec![Exchange {
                durable: true,
                alternate_exchange: Some("ae".into()),
                ..Exchange::new("orders", ExchangeKind::Topic)
            }]
        );
    }

    #[test]
    fn a_consistent_hash_exchange_keeps_its_hash_header() {
        let dir = tempfile::tempdir().unwrap();
        let mut topology = sample();
        topology.exchanges.push(Exchange {
            durable: true,
            hash_header: Some("user".into()),
            ..Exchange::new("by-user", ExchangeKind::ConsistentHash)
        });
        write_stored(dir.path(), &Stored::from(&topology));
        assert_eq!(load(dir.path()).unwrap().exchanges, topology.exchanges);
    }

    fn bad_entry(dir: &Path) -> (Entry, String) {
        match load(dir) {
            Err(DefinitionsError::BadEntry { entry, reason, .. }) => (entry, reason),
            other => panic!("expected a bad entry, got {other:?}"),
        }
    }

    #[test]
    fn an_unknown_exchange_kind_is_reported_not_read_as_direct() {
        let dir = tempfile::tempdir().unwrap();
        let mut stored = Stored::from(&sample());
        stored.exchanges[0].kind = 9;
        write_stored(dir.path(), &stored);
        let (entry, reason) = bad_entry(dir.path());
        assert_eq!(entry, Entry::Exchange("orders".into()));
        assert_eq!(reason, "unknown exchange kind 9");
        let message = load(dir.path()).unwrap_err().to_string();
        assert!(
            message.ends_with(
                "definitions.bin is damaged: exchange 'orders': unknown exchange kind 9"
            ),
            "{message}"
        );
    }

    #[test]
    fn undecodable_arguments_name_their_queue_or_binding() {
        let dir = tempfile::tempdir().unwrap();
        let mut stored = Stored::from(&sample());
        stored.queues[0].arguments = vec![0xff];
        write_stored(dir.path(), &stored);
        assert_eq!(bad_entry(dir.path()).0, Entry::Queue("tasks".into()));

        let mut stored = Stored::from(&sample());
        stored.bindings[0].arguments.pop();
        write_stored(dir.path(), &stored);
        let (entry, _) = bad_entry(dir.path());
        assert_eq!(
            entry.to_string(),
            "binding of exchange 'orders' to queue 'tasks' (key 'eu.#')"
        );
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
