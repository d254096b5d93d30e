//! Typed storage errors.

use std::io;
use std::ops::RangeInclusive;
use std::path::PathBuf;

use rustix::io::Errno;

/// Result of a storage operation.
pub type Result<T, E = StorageError> = std::result::Result<T, E>;

/// Everything that can go wrong in the storage engine, as a value.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The disk (or a file-size limit or quota) has no room; nothing was written.
    #[error("storage full while writing {path}: {source}")]
    StorageFull {
        /// The file that could not grow.
        path: PathBuf,
        /// `ENOSPC`, `EDQUOT` or `EFBIG`.
        source: io::Error,
    },
    /// The process ran out of a kernel resource: file descriptors (`EMFILE`, `ENFILE`) or
    /// memory for a mapping (`ENOMEM`). Nothing was changed; the same call can succeed once
    /// descriptors are released (connections closed, queues deleted).
    #[error("out of resources while opening {path}: {source}")]
    ResourceExhausted {
        /// The file or directory that could not be opened or mapped.
        path: PathBuf,
        /// `EMFILE`, `ENFILE` or `ENOMEM`.
        source: io::Error,
    },
    /// Any other I/O error, with the file it concerns.
    #[error("I/O error on {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// A record larger than the configured maximum.
    #[error("record of {size} bytes exceeds the maximum of {max} bytes")]
    RecordTooLarge {
        /// Size asked for.
        size: usize,
        /// Configured maximum.
        max: usize,
    },
    /// Every sequence number a record can carry ([`MAX_SEQ`](super::format::MAX_SEQ)) is used:
    /// reachable only from files written by something else, never by 2^62 appends.
    #[error("no sequence numbers left: {max} is the last a record can carry")]
    SeqsExhausted {
        /// The last sequence number allowed.
        max: u64,
    },
    /// [`QueueLog::skip_to`](super::QueueLog::skip_to) was asked to go back: seqs only grow.
    #[error("sequence number {seq} is behind the next one, {next}")]
    SeqBehind {
        /// The seq asked for.
        seq: u64,
        /// The log's next seq.
        next: u64,
    },
    /// The sequence number names no live message (never written, or already acknowledged).
    #[error("message {0} is not live: unknown or already acknowledged")]
    NotLive(u64),
    /// The message's record failed validation; it is quarantined and never delivered.
    #[error("message {seq} is corrupt: {reason}")]
    CorruptRecord {
        /// The message.
        seq: u64,
        /// What failed.
        reason: &'static str,
    },
    /// A segment header is damaged, so none of its records can be trusted; the queue is refused.
    #[error("corrupt segment header in {path}: {reason}")]
    CorruptSegmentHeader {
        /// The segment file.
        path: PathBuf,
        /// What failed.
        reason: &'static str,
    },
    /// A file other than a segment has a damaged header.
    #[error("corrupt file {path}: {reason}")]
    CorruptFile {
        /// The file.
        path: PathBuf,
        /// What failed.
        reason: &'static str,
    },
    /// Durable data of a Raft log is damaged: a record below its durable watermark fails
    /// validation, a segment it needs is missing, or its indexes have a gap. The log is
    /// refused rather than opened without entries it had acknowledged.
    #[error("corrupt Raft log at {path} (offset {offset}): {reason}")]
    CorruptLog {
        /// The segment (or the log directory).
        path: PathBuf,
        /// Byte offset of the damage in that file (0 when it concerns the whole file).
        offset: u64,
        /// What failed.
        reason: &'static str,
    },
    /// A Raft log entry failed validation when read back.
    #[error("Raft log entry {index} is corrupt: {reason}")]
    CorruptEntry {
        /// The entry's index.
        index: u64,
        /// What failed.
        reason: &'static str,
    },
    /// A Raft log append whose index does not follow the log's last entry.
    #[error("Raft log append out of order: expected index {expected}, got {got}")]
    IndexOutOfOrder {
        /// The index the log expects next (with an empty log: the lowest index allowed).
        expected: u64,
        /// The index given.
        got: u64,
    },
    /// An index the Raft log cannot take: beyond the largest index, or at or below the purge
    /// point for a truncation.
    #[error("Raft log index {index} is out of range: {reason}")]
    IndexOutOfRange {
        /// The index given.
        index: u64,
        /// Why it is refused.
        reason: &'static str,
    },
    /// A blob name other than 1 to 64 ASCII letters, digits, `-` or `_`.
    #[error("invalid blob name {0:?}: use 1 to 64 ASCII letters, digits, '-' or '_'")]
    InvalidBlobName(String),
    /// Another process holds the data directory.
    #[error("data directory {0} is in use by another process")]
    Locked(PathBuf),
    /// The data directory was written by an incompatible version.
    #[error("data directory {path} has unsupported format {found:?}")]
    UnsupportedFormat {
        /// The `FORMAT` file.
        path: PathBuf,
        /// What it says.
        found: String,
    },
}

impl StorageError {
    /// Wraps an I/O error, classifying "no space" errors as [`StorageError::StorageFull`] and
    /// "no descriptor or memory" errors as [`StorageError::ResourceExhausted`].
    pub fn io(path: impl Into<PathBuf>, source: io::Error) -> Self {
        let path = path.into();
        match source.raw_os_error() {
            Some(code) if is_one_of(code, NO_SPACE) => Self::StorageFull { path, source },
            Some(code) if is_one_of(code, NO_RESOURCES) => Self::ResourceExhausted { path, source },
            _ => Self::Io { path, source },
        }
    }

    /// True for [`StorageError::StorageFull`].
    pub fn is_storage_full(&self) -> bool {
        matches!(self, Self::StorageFull { .. })
    }

    /// True for [`StorageError::ResourceExhausted`]: retrying later can succeed.
    pub fn is_resource_exhausted(&self) -> bool {
        matches!(self, Self::ResourceExhausted { .. })
    }
}

/// True when `err` says the process or the system ran out of descriptors or memory: what
/// [`StorageError::io`] classifies as [`StorageError::ResourceExhausted`].
pub fn is_out_of_resources(err: &io::Error) -> bool {
    err.raw_os_error()
        .is_some_and(|code| is_one_of(code, NO_RESOURCES))
}

/// The disk, a quota or a file-size limit is exhausted.
const NO_SPACE: &[Errno] = &[Errno::NOSPC, Errno::DQUOT, Errno::FBIG];

/// The process (`EMFILE`) or the system (`ENFILE`) has no descriptor left, or no memory for a
/// mapping (`ENOMEM`, also what `mmap` reports past `vm.max_map_count`).
const NO_RESOURCES: &[Errno] = &[Errno::MFILE, Errno::NFILE, Errno::NOMEM];

fn is_one_of(code: i32, errnos: &[Errno]) -> bool {
    errnos.iter().any(|e| e.raw_os_error() == code)
}

/// Damage found while opening a queue: reported, never silently dropped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Damage {
    /// A record below the durable watermark failed validation. The queue keeps every valid
    /// record; these seqs are lost (their bytes are copied to `quarantine/`).
    CorruptRecords {
        /// Segment number.
        segment_no: u64,
        /// Byte offset of the bad record.
        offset: u64,
        /// Sequence numbers that could not be recovered (possibly empty if unknown).
        lost: Option<RangeInclusive<u64>>,
        /// What failed.
        reason: &'static str,
    },
    /// A segment the manifest says exists is missing or cut short below its durable data.
    MissingSegment {
        /// Segment number.
        segment_no: u64,
        /// Sequence numbers it held, where known.
        lost: Option<RangeInclusive<u64>>,
    },
    /// An ack log was damaged; acks after the damage are lost and those messages will be
    /// delivered again (flagged redelivered). No message is lost.
    AckLogTruncated {
        /// Segment number.
        segment_no: u64,
        /// Bytes discarded.
        bytes: u64,
    },
}

impl Damage {
    /// True when messages were lost (as opposed to acks, which only cause redeliveries).
    pub fn loses_messages(&self) -> bool {
        !matches!(self, Self::AckLogTruncated { .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn classify(errno: Errno) -> StorageError {
        StorageError::io("/x", io::Error::from_raw_os_error(errno.raw_os_error()))
    }

    #[test]
    fn running_out_of_descriptors_or_mappings_is_resource_exhaustion() {
        for errno in [Errno::MFILE, Errno::NFILE, Errno::NOMEM] {
            let e = classify(errno);
            assert!(e.is_resource_exhausted(), "{errno:?} gave {e:?}");
            assert!(!e.is_storage_full());
        }
    }

    #[test]
    fn a_full_disk_stays_storage_full_and_other_errors_stay_io() {
        for errno in [Errno::NOSPC, Errno::DQUOT, Errno::FBIG] {
            assert!(classify(errno).is_storage_full(), "{errno:?}");
        }
        for errno in [Errno::IO, Errno::ACCESS, Errno::NOENT] {
            let e = classify(errno);
            assert!(matches!(e, StorageError::Io { .. }), "{errno:?} gave {e:?}");
        }
    }
}
