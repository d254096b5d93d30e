//! Typed storage errors.

use std::io;
use std::ops::RangeInclusive;
use std::path::PathBuf;

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
    /// Wraps an I/O error, classifying "no space" errors as [`StorageError::StorageFull`].
    pub fn io(path: impl Into<PathBuf>, source: io::Error) -> Self {
        let path = path.into();
        match source.raw_os_error() {
            Some(code) if is_no_space(code) => Self::StorageFull { path, source },
            _ => Self::Io { path, source },
        }
    }

    /// True for [`StorageError::StorageFull`].
    pub fn is_storage_full(&self) -> bool {
        matches!(self, Self::StorageFull { .. })
    }
}

fn is_no_space(code: i32) -> bool {
    use rustix::io::Errno;
    [Errno::NOSPC, Errno::DQUOT, Errno::FBIG]
        .iter()
        .any(|e| e.raw_os_error() == code)
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
