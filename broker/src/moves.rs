//! Moves: ready messages carried from one queue to another (protocol.md §18), for example a
//! dead-letter queue back to its source, by a task in the broker that operators follow by id.
//!
//! # Crash safety
//! A move goes batch by batch. It takes a batch of ready messages from the source, which holds
//! them (neither ready nor delivered, nothing written), publishes copies into the destination,
//! waits until they are durable there, and only then acks them in the source. Whenever the
//! process dies, every message is still in the source's log, or already durable in the
//! destination, or both: a crash duplicates at most one batch and never loses a message.
//! A destination that refuses part of a batch (full, out of disk) gets no more: what it
//! refused goes back to the source, ready where it was, and the move fails with its reason.
//!
//! # Sharing the queues
//! Batches are bounded ([`BATCH_MESSAGES`], [`BATCH_BYTES`]), the copies wait for room in the
//! destination's mailbox like any publisher's, and the task yields between batches, so
//! publishers and consumers of both queues keep their turn. Consumers of the source may take
//! messages during a move: a message is either taken by a consumer or held by the move,
//! never both.
//!
//! # Bounds
//! At most [`MAX_RUNNING_MOVES`] run at once; the last [`FINISHED_MOVES_KEPT`] finished ones
//! are remembered for their status, older ones forgotten.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use sluice_client::wire::{ErrorCode, MoveId, MoveState, MoveStatusOk, Rejection};
use tokio::sync::{mpsc, oneshot};

use crate::broker::Broker;
use crate::error::RequestError;
use crate::queue::PublishOrigin;
use crate::queue::{ConnEvent, ConnId, ConnLink, Incoming, Outbox, QueueCmd, QueueHandle};
use crate::storage::{Durability, Epoch};

/// Most messages taken from the source at once.
pub const BATCH_MESSAGES: usize = 256;
/// Most bytes (meta + body) taken from the source at once (but at least one message).
pub const BATCH_BYTES: usize = 4 << 20;
/// Moves running at the same time; one more is `RESOURCE_EXHAUSTED`.
pub const MAX_RUNNING_MOVES: usize = 16;
/// Finished moves whose status is kept.
pub const FINISHED_MOVES_KEPT: usize = 100;
/// Longest wait for the destination to store a batch; past it the batch goes back to the
/// source (the destination may still store it: a duplicate, never a loss).
const STORE_TIMEOUT: Duration = Duration::from_secs(60);

/// What operators see of a move.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MoveInfo {
    /// Its number.
    pub id: MoveId,
    /// The queue the messages leave.
    pub source: String,
    /// The queue they go to.
    pub destination: String,
    /// Messages it set out to move.
    pub requested: u64,
    /// Messages moved so far.
    pub moved: u64,
    /// Running, done or failed (with why).
    pub state: MoveState,
    /// When it started, milliseconds since the Unix epoch.
    pub started_at_ms: u64,
    /// When it finished, if it did.
    pub finished_at_ms: Option<u64>,
}

impl MoveInfo {
    /// The answer to `MoveStatus`.
    pub fn status(&self) -> MoveStatusOk {
        MoveStatusOk {
            state: self.state.clone(),
            moved: self.moved,
            requested: self.requested,
        }
    }
}

/// The error for a move id the broker does not know (never started, or forgotten).
pub fn unknown(id: MoveId) -> RequestError {
    RequestError::new(
        ErrorCode::NotFound,
        format!("no move {id}: it never started, or finished long ago and was forgotten"),
    )
}

/// Every running move and the last finished ones.
#[derive(Debug, Default)]
pub struct Moves {
    inner: Mutex<Registry>,
}

#[derive(Debug, Default)]
struct Registry {
    last_id: u64,
    moves: BTreeMap<MoveId, MoveInfo>,
    /// Finished moves, oldest first.
    finished: VecDeque<MoveId>,
    running: usize,
}

impl Moves {
    /// A move's status, while it runs and for a while after.
    pub fn get(&self, id: MoveId) -> Option<MoveInfo> {
        self.lock().moves.get(&id).cloned()
    }

    /// Every move known, oldest first.
    pub fn list(&self) -> Vec<MoveInfo> {
        self.lock().moves.values().cloned().collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Registry> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn register(
        &self,
        source: &str,
        destination: &str,
        requested: u64,
    ) -> Result<MoveId, RequestError> {
        let mut r = self.lock();
        if r.running >= MAX_RUNNING_MOVES {
            return Err(RequestError::new(
                ErrorCode::ResourceExhausted,
                format!("{MAX_RUNNING_MOVES} moves are running already; start this one when one of them is done"),
            ));
        }
        r.running += 1;
        r.last_id += 1;
        let id = MoveId(r.last_id);
        r.moves.insert(
            id,
            MoveInfo {
                id,
                source: source.to_owned(),
                destination: destination.to_owned(),
                requested,
                moved: 0,
                state: MoveState::Running,
                started_at_ms: crate::queue::unix_now_ms(),
                finished_at_ms: None,
            },
        );
        Ok(id)
    }

    fn progress(&self, id: MoveId, moved: u64) {
        if let Some(m) = self.lock().moves.get_mut(&id) {
            m.moved = moved;
        }
    }

    fn finish(&self, id: MoveId, state: MoveState) {
        let mut r = self.lock();
        if let Some(m) = r.moves.get_mut(&id) {
            m.state = state;
            m.finished_at_ms = Some(crate::queue::unix_now_ms());
        }
        r.running -= 1;
        r.finished.push_back(id);
        while r.finished.len() > FINISHED_MOVES_KEPT {
            if let Some(old) = r.finished.pop_front() {
                r.moves.remove(&old);
            }
        }
    }
}

/// Starts moving ready messages from `source` to `destination` for connection `conn` (which
/// must be allowed to use both): at most `max`, or with 0 as many as `source` has ready now.
/// Errors come before anything moves: a missing queue, the same queue twice, too many moves.
pub fn start(
    broker: &Arc<Broker>,
    conn: ConnId,
    source: &str,
    destination: &str,
    max: u64,
) -> Result<MoveId, RequestError> {
    if source == destination {
        return Err(RequestError::invalid(format!(
            "cannot move messages from queue '{source}' to itself; name another destination"
        )));
    }
    let from = broker.queue(source, conn)?;
    let to = broker.queue(destination, conn)?;
    let requested = match max {
        0 => from
            .meta
            .stats
            .ready
            .load(std::sync::atomic::Ordering::Relaxed),
        n => n,
    };
    let moves = Arc::clone(broker.moves());
    let id = moves.register(source, destination, requested)?;
    let (events_tx, events) = mpsc::unbounded_channel();
    let mover = Mover {
        id,
        moves,
        broker: Arc::downgrade(broker),
        durability: broker.store().durability().clone(),
        source: from,
        destination: to,
        requested,
        moved: 0,
        link: ConnLink::new(
            broker.next_conn_id(),
            events_tx,
            Arc::new(Outbox::default()),
        ),
        events,
        next_batch: 0,
    };
    tokio::spawn(mover.run());
    Ok(id)
}

/// The destination's answer to a batch.
struct Stored {
    /// Makes the stored copies durable once synced.
    epoch: Epoch,
    /// Copies it refused, named by their seq in the source.
    rejections: Vec<Rejection>,
}

/// The task of one move.
struct Mover {
    id: MoveId,
    moves: Arc<Moves>,
    broker: Weak<Broker>,
    durability: Durability,
    source: QueueHandle,
    destination: QueueHandle,
    requested: u64,
    /// Messages moved so far.
    moved: u64,
    /// Where the destination reports stored batches, as to a publisher.
    link: Arc<ConnLink>,
    events: mpsc::UnboundedReceiver<ConnEvent>,
    next_batch: u64,
}

impl Mover {
    async fn run(mut self) {
        let state = match self.move_all().await {
            Ok(()) => {
                tracing::info!(move_id = %self.id, source = %self.source.meta.name,
                    destination = %self.destination.meta.name, moved = self.moved, "a move is done");
                MoveState::Done
            }
            Err(e) => {
                tracing::warn!(move_id = %self.id, source = %self.source.meta.name,
                    destination = %self.destination.meta.name, error = %e, "a move stopped early");
                MoveState::Failed {
                    code: e.code,
                    message: e.message,
                }
            }
        };
        self.moves.finish(self.id, state);
    }

    async fn move_all(&mut self) -> Result<(), RequestError> {
        while self.moved < self.requested {
            self.check_flow()?;
            let want = (self.requested - self.moved).min(BATCH_MESSAGES as u64) as usize;
            let batch = self.take(want).await?;
            if batch.is_empty() {
                // The source has nothing ready left (consumers took the rest).
                return Ok(());
            }
            self.store(batch).await?;
            // The queues' other work gets its turn between batches.
            tokio::task::yield_now().await;
        }
        Ok(())
    }

    /// Refuses to write while publishing is blocked (disk nearly full, memory over its
    /// limit): a move is a publisher too.
    fn check_flow(&self) -> Result<(), RequestError> {
        let Some(broker) = self.broker.upgrade() else {
            return Err(RequestError::internal("the broker is stopping"));
        };
        let blocking = broker.flow().borrow().clone();
        match blocking {
            Some(b) => Err(RequestError::new(b.code, b.reason)),
            None => Ok(()),
        }
    }

    async fn take(&self, max_messages: usize) -> Result<Vec<Incoming>, RequestError> {
        let (reply, answer) = oneshot::channel();
        let sent = self.source.send(QueueCmd::TakeForMove {
            max_messages,
            max_bytes: BATCH_BYTES,
            reply,
        });
        if !sent {
            return Err(gone(&self.source));
        }
        // No answer: the source was deleted meanwhile.
        answer.await.unwrap_or_else(|_| Err(gone(&self.source)))
    }

    /// Stores a batch in the destination and settles it in the source; fails (after counting
    /// what was moved) when the destination refused some of it.
    async fn store(&mut self, messages: Vec<Incoming>) -> Result<(), RequestError> {
        // Each message's `publish_seq` is its seq in the source.
        let seqs: Vec<u64> = messages.iter().map(|m| m.publish_seq).collect();
        let bytes: usize = messages.iter().map(|m| m.meta.len() + m.body.len()).sum();
        let room = self.destination.publish_room(&messages).await;
        self.next_batch += 1;
        let sent = self.destination.send(QueueCmd::Publish {
            conn: Arc::clone(&self.link),
            batch: self.next_batch,
            messages,
            room: Some(room),
            origin: PublishOrigin::Move,
        });
        if !sent {
            self.give_back(seqs);
            return Err(gone(&self.destination));
        }
        if let Some(broker) = self.broker.upgrade() {
            broker.note_published(bytes);
        }
        let Stored { epoch, rejections } = match self.stored().await {
            Ok(stored) => stored,
            Err(e) => {
                self.give_back(seqs);
                return Err(e);
            }
        };
        // A queue that stops (deleted, or the broker shutting down) answers the publishes
        // left in its mailbox as stored without storing them: those copies do not exist, so
        // the originals stay in the source.
        if self.destination.is_closed() {
            self.give_back(seqs);
            return Err(gone(&self.destination));
        }
        // The copies must survive a crash before the originals may go.
        self.durability.wait(epoch).await;
        let refused: HashSet<u64> = rejections.iter().map(|r| r.seq.0).collect();
        let (returned, moved): (Vec<u64>, Vec<u64>) =
            seqs.into_iter().partition(|s| refused.contains(s));
        self.moved += moved.len() as u64;
        self.moves.progress(self.id, self.moved);
        self.source.send(QueueCmd::SettleMove { moved, returned });
        match rejections.into_iter().next() {
            None => Ok(()),
            Some(r) => Err(RequestError::new(
                r.code,
                format!(
                    "queue '{}' refused a message: {}",
                    self.destination.meta.name, r.message
                ),
            )),
        }
    }

    /// Waits for the destination's answer to the last batch.
    async fn stored(&mut self) -> Result<Stored, RequestError> {
        loop {
            match tokio::time::timeout(STORE_TIMEOUT, self.events.recv()).await {
                Ok(Some(ConnEvent::Stored {
                    batch,
                    epoch,
                    rejections,
                })) if batch == self.next_batch => return Ok(Stored { epoch, rejections }),
                // An answer to a batch given up on earlier.
                Ok(Some(_)) => {}
                // The link's sender lives in `self`: the channel cannot close.
                Ok(None) => return Err(gone(&self.destination)),
                Err(_) => {
                    return Err(RequestError::internal(format!(
                        "queue '{}' did not store a batch within {} s",
                        self.destination.meta.name,
                        STORE_TIMEOUT.as_secs()
                    )))
                }
            }
        }
    }

    /// Makes messages taken from the source ready there again.
    fn give_back(&self, seqs: Vec<u64>) {
        self.source.send(QueueCmd::SettleMove {
            moved: Vec::new(),
            returned: seqs,
        });
    }
}

fn gone(q: &QueueHandle) -> RequestError {
    RequestError::no_queue(&q.meta.name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finished_moves_are_forgotten_oldest_first_beyond_the_bound() {
        let moves = Moves::default();
        for _ in 0..FINISHED_MOVES_KEPT + 5 {
            let id = moves.register("a", "b", 1).unwrap();
            moves.finish(id, MoveState::Done);
        }
        let kept = moves.list();
        assert_eq!(kept.len(), FINISHED_MOVES_KEPT);
        assert_eq!(kept[0].id, MoveId(6));
        assert!(moves.get(MoveId(5)).is_none());
        assert!(kept.iter().all(|m| m.finished_at_ms.is_some()));
    }

    #[test]
    fn too_many_running_moves_are_refused_until_one_finishes() {
        let moves = Moves::default();
        let ids: Vec<MoveId> = (0..MAX_RUNNING_MOVES)
            .map(|_| moves.register("a", "b", 1).unwrap())
            .collect();
        let err = moves.register("a", "b", 1).unwrap_err();
        assert_eq!(err.code, ErrorCode::ResourceExhausted);
        moves.progress(ids[0], 1);
        moves.finish(ids[0], MoveState::Done);
        assert_eq!(moves.get(ids[0]).unwrap().moved, 1);
        moves.register("a", "b", 1).unwrap();
    }
}
