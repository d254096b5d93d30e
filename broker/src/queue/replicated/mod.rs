//! Replicated queues (`replicas > 1`, in a cluster): the queue's raft group is its truth, and
//! the queue actor on each replica is the group's state machine.
//!
//! # How a replicated queue works
//! - Every change is a [`QueueOp`] in the group's log, applied in log order on every replica
//!   (`QueueCmd::Apply`, handled in `actor/replica.rs`). Apply is deterministic: time comes
//!   from the op, seqs from the group's own counter (kept in the snapshot), so every replica
//!   stores the same messages at the same seqs and an ack names seqs.
//! - The local queue log is a view of that state, rebuilt at every start from the group's
//!   snapshot and log (`Store::recreate_queue`); its own syncs are not what makes a message
//!   safe: a publish is confirmed once the group committed it (a majority has it durable).
//! - Consumers, deliveries, prefetch and leases live on the leader only; its settles propose
//!   [`QueueOp::Settle`]. A follower answers consumers with `NOT_LEADER` naming the leader;
//!   when the leader moves, the old one cancels its consumers with `LEADER_MOVED` and forgets
//!   its deliveries (ready again on the new leader: at-least-once).
//! - Publishes go through [`Proposer::propose`] on every node (forwarded to the leader by the
//!   cluster), so a publish on any node reaches the queue. A node that is not a replica runs
//!   the same actor without a group: it never applies anything and answers like a follower.
//!
//! This module holds what needs no actor internals: the op codec ([`op`]), the state-machine
//! door ([`QueueMachine`]) and the tasks that wait for a proposal and answer the client.

pub mod op;
#[cfg(test)]
mod tests;

use std::sync::Arc;

use futures_util::future::BoxFuture;
use sluice_client::wire::{ErrorCode, PublishSeq, PurgeQueueOk, Rejection, Reply, RequestId};
use tokio::sync::{mpsc, oneshot};

pub use op::{OpMessage, OpRejection, OpResult, QueueOp, QueueSnapshot, SnapshotMessage};

use super::{ConnEvent, ConnLink, PublishRoom, QueueCmd, QueueHandle};
use crate::cluster::MachineError;
use crate::error::RequestError;

/// How a replicated queue reaches its raft group: proposals go to the leader wherever it is.
pub trait Proposer: std::fmt::Debug + Send + Sync + 'static {
    /// Proposes `command`; the answer is the leader's apply result, once committed.
    fn propose(&self, command: Vec<u8>) -> BoxFuture<'static, Result<Vec<u8>, ProposeFailure>>;
}

/// A proposal that did not commit (or whose outcome is unknown).
#[derive(Debug, Clone, thiserror::Error)]
pub enum ProposeFailure {
    /// The group has no leader now (an election is under way); retry shortly.
    #[error("the queue's group has no leader at the moment")]
    NoLeader,
    /// The leader could not be reached, or the group stopped.
    #[error("the queue's group is unavailable: {0}")]
    Unavailable(String),
}

/// Who leads a replicated queue's group, as its actor needs to know it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LeaderView {
    /// This node leads the group.
    pub is_self: bool,
    /// The leader's client address (`host:port`), empty while none is known.
    pub client_addr: String,
}

/// The state-machine side of a replicated queue: what the cluster's group calls, in log
/// order. Each call is a command in the queue actor's mailbox, so it is ordered with
/// everything else the queue does.
#[derive(Debug, Clone)]
pub struct QueueMachine {
    queue: QueueHandle,
}

impl QueueMachine {
    /// The machine of the queue whose actor is `queue`.
    pub fn new(queue: QueueHandle) -> Self {
        Self { queue }
    }

    /// Applies committed commands; one result each. A task that ended (a panic, or a
    /// deletion under way) is an error, never an empty answer: the group must not count
    /// them as applied here.
    pub fn apply(
        &self,
        ops: Vec<Vec<u8>>,
    ) -> BoxFuture<'static, Result<Vec<Vec<u8>>, MachineError>> {
        let (reply, answer) = oneshot::channel();
        let sent = self.queue.send(QueueCmd::Apply { ops, reply });
        self.answer(sent, answer)
    }

    /// The queue's whole state ([`QueueSnapshot`], encoded); an error when the task ended
    /// (an empty snapshot would be purged behind and sent to followers).
    pub fn snapshot(&self) -> BoxFuture<'static, Result<Vec<u8>, MachineError>> {
        let (reply, answer) = oneshot::channel();
        let sent = self.queue.send(QueueCmd::Snapshot { reply });
        self.answer(sent, answer)
    }

    /// Replaces the queue's state with a snapshot's.
    pub fn install(&self, data: Vec<u8>) -> BoxFuture<'static, Result<(), MachineError>> {
        let (reply, answer) = oneshot::channel();
        let sent = self.queue.send(QueueCmd::Install { data, reply });
        self.answer(sent, answer)
    }

    /// The task's answer, or [`MachineError::Stopped`] when it is gone.
    fn answer<T: Send + 'static>(
        &self,
        sent: bool,
        answer: oneshot::Receiver<Result<T, MachineError>>,
    ) -> BoxFuture<'static, Result<T, MachineError>> {
        // Named only when it is needed: this runs for every applied batch.
        let name = Arc::clone(&self.queue.meta.name);
        let stopped = move || MachineError::Stopped {
            machine: format!("queue '{name}'"),
        };
        Box::pin(async move {
            if !sent {
                return Err(stopped());
            }
            answer.await.unwrap_or_else(|_| Err(stopped()))
        })
    }
}

/// The error a client gets for a request only the leader serves.
pub fn not_leader(leader: &LeaderView) -> RequestError {
    RequestError::new(ErrorCode::NotLeader, leader.client_addr.clone())
}

/// Proposes a publish batch and answers the publisher once the group committed it (or
/// refuses every message of it): `Duplicates`, then `Stored` with epoch 0, since the
/// messages are durable on a majority already.
pub(super) fn publish(
    proposer: Arc<dyn Proposer>,
    conn: Arc<ConnLink>,
    batch: u64,
    publish_seqs: Vec<u64>,
    op: QueueOp,
    room: Option<PublishRoom>,
) {
    tokio::spawn(async move {
        let result = proposer.propose(op.encode()).await;
        // The mailbox's room is held until the group has the messages: a group that cannot
        // keep up slows its publishers down, as a local queue does.
        drop(room);
        let seq_of = |i: u32| PublishSeq(publish_seqs.get(i as usize).copied().unwrap_or(0));
        let rejections = match result.map(|bytes| OpResult::decode(&bytes)) {
            Ok(Ok(OpResult::Published {
                duplicates,
                rejections,
            })) => {
                if !duplicates.is_empty() {
                    conn.send(ConnEvent::Duplicates {
                        batch,
                        seqs: duplicates.iter().map(|&i| seq_of(i).0).collect(),
                    });
                }
                rejections
                    .into_iter()
                    .map(|r| Rejection {
                        seq: seq_of(r.index),
                        code: ErrorCode::from_u16(r.code),
                        message: r.message,
                    })
                    .collect()
            }
            other => {
                let error = refusal(other);
                publish_seqs
                    .iter()
                    .map(|&seq| Rejection {
                        seq: PublishSeq(seq),
                        code: error.code,
                        message: error.message.clone(),
                    })
                    .collect()
            }
        };
        conn.send(ConnEvent::Stored {
            batch,
            epoch: 0,
            rejections,
        });
    });
}

/// What a replicated queue's leader hands its [`Settler`].
#[derive(Debug)]
pub(super) enum SettleJob {
    /// Delete these messages (acked or rejected) through the group.
    Delete(Vec<u64>),
    /// Send `reply` once every deletion handed over before it committed: the `InspectQueue`
    /// a client sends after an ack to learn that the ack took effect (`ack_confirmed`) must
    /// not be answered before the ack is durable on a majority.
    Barrier(Box<Barrier>),
}

/// An answer held until the deletions before it committed (see [`SettleJob::Barrier`]).
#[derive(Debug)]
pub(super) struct Barrier {
    pub(super) conn: Arc<ConnLink>,
    pub(super) request_id: RequestId,
    pub(super) reply: Reply,
}

/// The task that proposes a leader's settles, in order: the deletions waiting while one
/// proposal is under way go in the next one together (one round trip for many acks).
#[derive(Debug)]
pub(super) struct Settler {
    jobs: mpsc::UnboundedSender<SettleJob>,
}

impl Settler {
    /// Starts the task; it ends when the queue drops its `Settler`.
    pub(super) fn spawn(proposer: Arc<dyn Proposer>, queue: Arc<str>) -> Self {
        let (jobs, mut rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Some(first) = rx.recv().await {
                let mut deletions = Vec::new();
                let mut barriers = Vec::new();
                let mut next = Some(first);
                while let Some(job) = next.take().or_else(|| rx.try_recv().ok()) {
                    match job {
                        SettleJob::Delete(seqs) => deletions.extend(seqs),
                        SettleJob::Barrier(b) => barriers.push(*b),
                    }
                }
                let mut failed = None;
                if !deletions.is_empty() {
                    let n = deletions.len();
                    let op = QueueOp::Settle { acks: deletions }.encode();
                    if let Err(e) = proposer.propose(op).await {
                        tracing::warn!(%queue, messages = n, error = %e,
                            "settles not replicated: those messages will be delivered again");
                        failed = Some(e);
                    }
                }
                for Barrier {
                    conn,
                    request_id,
                    reply,
                } in barriers
                {
                    let event = match &failed {
                        None => ConnEvent::Reply { request_id, reply },
                        Some(e) => ConnEvent::Error {
                            request_id,
                            error: refusal(Err(e.clone())),
                        },
                    };
                    conn.send(event);
                }
            }
        });
        Self { jobs }
    }

    /// Hands a job over (in order with the others).
    pub(super) fn send(&self, job: SettleJob) {
        let _ = self.jobs.send(job);
    }
}

/// Proposes a purge and answers `PurgeQueueOk` once it committed.
pub(super) fn purge(
    proposer: Arc<dyn Proposer>,
    conn: Arc<ConnLink>,
    request_id: RequestId,
    op: QueueOp,
) {
    tokio::spawn(async move {
        let result = proposer.propose(op.encode()).await;
        let event = match result.map(|bytes| OpResult::decode(&bytes)) {
            Ok(Ok(OpResult::Purged { messages })) => ConnEvent::Reply {
                request_id,
                reply: Reply::PurgeQueueOk(PurgeQueueOk { messages }),
            },
            other => ConnEvent::Error {
                request_id,
                error: refusal(other),
            },
        };
        conn.send(event);
    });
}

/// Why a proposal's answer is not the one expected, as a client error.
fn refusal(outcome: Result<Result<OpResult, op::DecodeError>, ProposeFailure>) -> RequestError {
    match outcome {
        Err(ProposeFailure::NoLeader) => RequestError::new(ErrorCode::NotLeader, ""),
        Err(e @ ProposeFailure::Unavailable(_)) => RequestError::internal(e.to_string()),
        Ok(Err(e)) => RequestError::internal(e.to_string()),
        Ok(Ok(OpResult::Refused { reason })) => RequestError::internal(reason),
        Ok(Ok(_)) => RequestError::internal("the queue's group answered something unexpected"),
    }
}
