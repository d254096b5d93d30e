//! What a replicated queue's raft group agrees on: [`QueueOp`]s (the commands), their
//! [`OpResult`]s (the leader's apply answers the proposer with one) and the
//! [`QueueSnapshot`] (the whole state at an applied index).
//!
//! Encoded through the cluster's codec (`cluster::encode`/`decode`: bincode 1.3, fixed-width
//! little-endian integers): every replica decodes the same bytes the same way, and a command
//! that does not decode is refused the same way everywhere, so the replicas never diverge.

use serde::{Deserialize, Serialize};

/// A command of a replicated queue's log. Applying one depends on nothing but the state and
/// the command: time comes from `ts_ms`, never from a replica's clock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum QueueOp {
    /// Store messages, in order, at the group's next seqs.
    Publish {
        /// When the proposer took them (Unix ms): their timestamp, and the dedup window's now.
        ts_ms: u64,
        /// Whether they are checked against (and enter) the queue's dedup window: messages
        /// from publishers are; dead-lettered or moved copies are not (see `PublishOrigin`).
        dedup: bool,
        /// The messages.
        messages: Vec<OpMessage>,
    },
    /// Delete messages: acked, or rejected (the replicated mode has no dead-letter exchange).
    Settle {
        /// Their seqs; one no longer live is skipped.
        acks: Vec<u64>,
    },
    /// Delete every live message up to `through` except those in `except` (the leader's
    /// deliveries in flight when it proposed the purge: a purge removes ready messages only).
    Purge {
        /// The highest seq purged.
        through: u64,
        /// Seqs kept.
        except: Vec<u64>,
    },
}

/// A message of a [`QueueOp::Publish`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpMessage {
    /// The meta block, as received.
    pub meta: Vec<u8>,
    /// The body.
    pub body: Vec<u8>,
}

/// What applying a [`QueueOp`] answered (on the leader, this goes back to the proposer).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum OpResult {
    /// A `Publish`: which messages were duplicates and which were refused (by index in the
    /// op); the others are stored.
    Published {
        /// Indexes of messages confirmed without being stored (dedup).
        duplicates: Vec<u32>,
        /// Messages this replica could not store.
        rejections: Vec<OpRejection>,
    },
    /// A `Settle`: how many of its seqs were live.
    Settled {
        /// Messages deleted.
        messages: u64,
    },
    /// A `Purge`: how many messages it deleted.
    Purged {
        /// Messages deleted.
        messages: u64,
    },
    /// The command could not be decoded (corruption or a newer version): nothing changed.
    Refused {
        /// Why.
        reason: String,
    },
}

/// A message of a `Publish` that the replica could not store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpRejection {
    /// Its index in the op.
    pub index: u32,
    /// The wire error code.
    pub code: u16,
    /// Detail.
    pub message: String,
}

/// A replicated queue's whole state at an applied index: its live messages, the seq the next
/// message gets, and its dedup window.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueSnapshot {
    /// The seq the next published message gets.
    pub next_seq: u64,
    /// The newest `ts_ms` applied (the dedup window forgets by this clock).
    pub last_ts_ms: u64,
    /// The live messages, in seq order.
    pub messages: Vec<SnapshotMessage>,
    /// The dedup window: `(message_id, accepted at ms)`, oldest first.
    pub dedup: Vec<(String, u64)>,
}

/// A live message in a [`QueueSnapshot`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotMessage {
    /// Its seq.
    pub seq: u64,
    /// When it was published (the op's `ts_ms`).
    pub ts_ms: u64,
    /// Its meta block.
    pub meta: Vec<u8>,
    /// Its body.
    pub body: Vec<u8>,
}

pub use crate::cluster::DecodeError;

macro_rules! codec {
    ($t:ty, $what:literal) => {
        impl $t {
            /// The bytes that go into the raft log (or the snapshot).
            pub fn encode(&self) -> Vec<u8> {
                crate::cluster::encode(self)
            }

            /// Reads back what [`encode`](Self::encode) wrote.
            pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
                crate::cluster::decode($what, bytes)
            }
        }
    };
}

codec!(QueueOp, "replicated queue command");
codec!(OpResult, "replicated queue result");
codec!(QueueSnapshot, "replicated queue snapshot");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ops_results_and_snapshots_read_back_as_written() {
        let ops = [
            QueueOp::Publish {
                ts_ms: 7,
                dedup: true,
                messages: vec![OpMessage {
                    meta: vec![1, 2],
                    body: b"hello".to_vec(),
                }],
            },
            QueueOp::Settle { acks: vec![3, 9] },
            QueueOp::Purge {
                through: 12,
                except: vec![4],
            },
        ];
        for op in ops {
            assert_eq!(QueueOp::decode(&op.encode()).unwrap(), op);
        }
        let r = OpResult::Published {
            duplicates: vec![1],
            rejections: vec![OpRejection {
                index: 0,
                code: 301,
                message: "full".into(),
            }],
        };
        assert_eq!(OpResult::decode(&r.encode()).unwrap(), r);
        let s = QueueSnapshot {
            next_seq: 5,
            last_ts_ms: 9,
            messages: vec![SnapshotMessage {
                seq: 4,
                ts_ms: 9,
                meta: vec![],
                body: vec![0; 3],
            }],
            dedup: vec![("id".into(), 9)],
        };
        assert_eq!(QueueSnapshot::decode(&s.encode()).unwrap(), s);
    }

    #[test]
    fn a_truncated_command_is_an_error_not_a_panic() {
        let op = QueueOp::Settle {
            acks: vec![1, 2, 3],
        }
        .encode();
        for len in 0..op.len() {
            assert!(
                QueueOp::decode(&op[..len]).is_err(),
                "prefix of {len} bytes"
            );
        }
    }
}
