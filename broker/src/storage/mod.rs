//! The storage engine: one crash-safe, append-only, segmented, memory-mapped log per queue.
//!
//! # Layout
//! ```text
//! <data>/LOCK                      flock()ed while a process uses the directory
//! <data>/FORMAT                    "sluice-storage 1"
//! <data>/CLEAN                     only while closed after a clean stop; removed at open
//! <data>/queues/<uid:016x>/        one directory per queue log
//!     manifest.log                 Created/Deleted record per segment (CRC'd, pwrite)
//!     durable.ckpt                 durable watermark, rewritten by the sync thread
//!     00000000000000000001.seg     segment: 64-byte header, then 8-byte aligned records
//!     00000000000000000001.ack     its ack log: batches of acked seqs and delivery counts
//!     quarantine/                  copies of damaged records, for inspection
//! <data>/cluster/groups/<id:016x>/ one Raft log per consensus group (`raft_log`)
//!     raft.state                   identity and purge point (replaced atomically)
//!     durable.ckpt                 durable watermark, rewritten by the sync thread
//!     00000000000000000001.seg     segment: 64-byte header, then 8-byte aligned entries
//!     <name>.blob                  named blobs: vote, committed log id, ...
//! ```
//!
//! # Modules
//! - [`format`]: every byte layout, pure encode/decode.
//! - `mmap`: the segment mapping, the only `unsafe` code. Small records are copied into the
//!   mapping; records of 2 KiB and more are written with `pwritev` into the same reserved space
//!   (writeback of writable-mapped pages costs a TLB shootdown per page, which halved the 4 KiB
//!   rate). Reads always go through the mapping.
//! - `durability`: the sync thread (group commit, fail-stop, watermarks).
//! - `queue_log`: append, read, ack, rotate, delete, relocate.
//! - `recovery`: open after any stop (torn tails, corruption, interrupted deletions).
//! - `raft_log`: a Raft log (index + opaque bytes per entry) made of the same pieces, with
//!   truncation, purge, its own recovery and atomically replaced blobs.
//! - `store`: the data directory.
//!
//! # Guarantees
//! - A message whose append epoch is durable survives any crash of the process or machine.
//! - Sequence numbers are per queue and never reused, even across torn tails.
//! - A full disk is a [`StorageError::StorageFull`] from `fallocate`, never a SIGBUS; nothing
//!   already written is harmed.
//! - Damage below the durable watermark is reported ([`Damage`]) and quarantined, never
//!   silently dropped; the rest of the queue, and every other queue, keeps serving.

mod durability;
mod error;
pub mod fault;
mod files;
pub mod format;
mod mmap;
mod queue_log;
mod raft_log;
mod recovery;
mod store;

#[cfg(test)]
pub(crate) mod tests;
#[cfg(test)]
pub(crate) mod tmpfs;

pub use durability::{CommitObserver, Durability, DurabilityConfig, Epoch};
pub use error::{is_out_of_resources, Damage, Result, StorageError};
pub(crate) use files::now_unix_ms;
pub use queue_log::{
    Appended, LogConfig, MessageHead, QueueLog, RecoveredDeliveries, RecoveryReport, StoredMessage,
    TornTail,
};
pub use raft_log::{RaftLog, RaftLogConfig};
pub use store::{Store, StoreConfig};
