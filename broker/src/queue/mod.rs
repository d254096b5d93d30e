//! Queues: one task per queue owns its log, its ready messages, its consumers and the
//! deliveries in flight (an actor: no lock on the hot path).
//!
//! Connections talk to a queue with [`QueueCmd`]s over its mailbox; the queue answers through
//! the connection's event channel ([`ConnEvent`]), so replies, deliveries and publish results
//! reach a connection in the order the queue produced them.
//!
//! # Bounds
//! A queue never waits for a connection, so the event channel from queues to a connection is
//! not a bounded channel (a queue blocked on a full session while the session waits for the
//! queue would deadlock). It is bounded by credit instead: deliveries by the connection's
//! [`Outbox`] (a queue stops delivering to a full connection, so at most
//! [`Outbox::HIGH_WATER`] plus one message per queue are on their way), and every other event
//! answers a request or a publish the session sent, which it stops doing while its outbox is
//! full or its unsettled publishes are over their limit.
//!
//! A queue's mailbox is bounded in bytes where the bytes are: publishes from sessions take
//! their share of [`MAILBOX_PUBLISH_BYTES`] first and wait for it, so a queue that cannot keep
//! up slows down its own publishers only. Dead-letter copies from other queues skip it (a
//! queue never waits for another). The other commands are small and bounded by credit: each
//! settles a delivery once, answers into the sender's outbox, or stops with the connection.
//! A move (crate::moves) has one batch on its way at a time: one `TakeForMove`, then one
//! `SettleMove`.

mod actor;
mod breaker;
pub mod chaos;
mod consumers;
mod dead_letters;
mod dedup;
mod getters;
pub mod history;
mod in_flight;
mod outbox;
mod rates;
mod ready;
mod ready_set;
pub mod replicated;
mod schedule;
mod unconfirmed;

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use sluice_client::wire::{
    ConsumerId, ConsumerSummary, Delivery, DeliveryTag, ErrorCode, MessageHistory, QueueArguments,
    Rejection, Reply, RequestId, BROWSE_FIXED_LEN, MAX_BROWSE_LIMIT, MAX_PRIORITY, MIN_FRAME_LEN,
};
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};

use crate::cluster::MachineError;
use crate::error::RequestError;
use crate::metrics::RefusedCounts;
use crate::storage::Epoch;

pub(crate) use actor::{spawn, spawn_replicated};
pub(crate) use dedup::check_window as check_dedup_window;
pub use getters::BatchLimit;
pub use outbox::{delivery_bytes, Outbox};
pub use schedule::ScheduledPage;

/// The wall clock in Unix milliseconds, as message timestamps are (0 before 1970).
pub fn unix_now_ms() -> u64 {
    crate::storage::now_unix_ms()
}

/// A connection's number, unique for the life of the process.
pub type ConnId = u64;

/// What a queue knows of a connection: where its events go, what its socket still owes
/// (deliveries pause while that is full), and its delivery tag counter (tags are per
/// connection, shared by all its consumers, protocol.md §9.5).
#[derive(Debug)]
pub struct ConnLink {
    /// The connection's number.
    pub id: ConnId,
    /// Its event channel (bounded by credit: see the module documentation).
    pub events: mpsc::UnboundedSender<ConnEvent>,
    /// Bytes on their way to its socket.
    pub outbox: Arc<Outbox>,
    next_tag: AtomicU64,
}

impl ConnLink {
    /// A link for connection `id`.
    pub fn new(
        id: ConnId,
        events: mpsc::UnboundedSender<ConnEvent>,
        outbox: Arc<Outbox>,
    ) -> Arc<Self> {
        Arc::new(Self {
            id,
            events,
            outbox,
            next_tag: AtomicU64::new(0),
        })
    }

    /// Takes the connection's next delivery tag (the first is 1).
    pub fn take_tag(&self) -> DeliveryTag {
        DeliveryTag(self.next_tag.fetch_add(1, Ordering::Relaxed) + 1)
    }

    /// The highest tag issued so far.
    pub fn last_tag(&self) -> u64 {
        self.next_tag.load(Ordering::Relaxed)
    }

    /// Sends an event; a closed connection no longer cares.
    pub fn send(&self, event: ConnEvent) {
        let _ = self.events.send(event);
    }
}

/// What a queue (or the connection's own helpers) tells a connection.
#[derive(Debug)]
pub enum ConnEvent {
    /// Deliveries for one consumer (tags already assigned).
    Deliver {
        /// The consumer.
        consumer_id: ConsumerId,
        /// The queue they come from.
        queue: QueueHandle,
        /// The deliveries.
        deliveries: Vec<Delivery>,
    },
    /// The answer to a `Get`.
    Got {
        /// The request.
        request_id: RequestId,
        /// The queue.
        queue: QueueHandle,
        /// Ready messages left.
        ready: u64,
        /// The delivery, if there was a message.
        delivery: Option<Delivery>,
    },
    /// The answer to a `GetMany`.
    GotMany {
        /// The request.
        request_id: RequestId,
        /// The queue.
        queue: QueueHandle,
        /// Ready messages left.
        ready: u64,
        /// The deliveries (tags already assigned); empty when the wait ended first.
        deliveries: Vec<Delivery>,
    },
    /// A reply frame to send as is.
    Reply {
        /// The request it answers.
        request_id: RequestId,
        /// The reply.
        reply: Reply,
    },
    /// A request failed.
    Error {
        /// The request.
        request_id: RequestId,
        /// Why.
        error: RequestError,
    },
    /// Messages of a publish batch the queue confirms without storing them: their
    /// `message_id` is in its dedup window. Sent just before the batch's `Stored`.
    Duplicates {
        /// The connection's batch number.
        batch: u64,
        /// Their publish sequence numbers.
        seqs: Vec<u64>,
    },
    /// A queue stored (or refused) its part of a publish batch.
    Stored {
        /// The connection's batch number.
        batch: u64,
        /// The epoch that makes the stored messages durable (0: nothing to wait for).
        epoch: Epoch,
        /// Refused messages.
        rejections: Vec<Rejection>,
    },
    /// A consumer was stopped by the server (`ConsumerCancelled`).
    ConsumerStopped {
        /// The consumer.
        consumer_id: ConsumerId,
        /// Why (a 4xx code).
        code: ErrorCode,
        /// Detail.
        reason: String,
    },
    /// A `Cancel` took effect; no delivery for the consumer follows.
    Cancelled {
        /// The request.
        request_id: RequestId,
        /// The consumer.
        consumer_id: ConsumerId,
    },
    /// A consumer's circuit changed state (`ConsumerCircuit`, protocol.md §9.8).
    Circuit(sluice_client::wire::ConsumerCircuit),
    /// Leases that expired: these tags are no longer outstanding.
    LeasesExpired {
        /// The tags.
        tags: Vec<u64>,
    },
    /// Publishes up to this sequence number are settled and durable.
    Confirmed {
        /// Publish sequence number.
        up_to: u64,
    },
    /// The server is shutting down.
    Shutdown,
}

/// A message on its way into a queue.
#[derive(Debug, Clone)]
pub struct Incoming {
    /// The publisher's sequence number, for rejections.
    pub publish_seq: u64,
    /// The meta block, as received.
    pub meta: Bytes,
    /// The body.
    pub body: Bytes,
    /// Whether it must be synced before it is confirmed.
    pub persistent: bool,
    /// The broker's `publish` span, when the message is traced (its `store` span goes under).
    pub trace: Option<crate::telemetry::StoreParent>,
}

/// How a delivery is settled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settlement {
    /// Processed: delete it.
    Ack,
    /// Not processed: deliver it again.
    Requeue,
    /// Not processed: deliver it again once this many milliseconds have passed.
    RequeueAfter(u64),
    /// Bad: dead-letter or drop it.
    Reject,
    /// Given back unprocessed (`Extend` to 0): ready again at once, and the delivery does not
    /// count against the delivery limit.
    Release,
}

/// Where the messages of a [`QueueCmd::Publish`] come from. Only a publisher's messages are
/// checked against the queue's dedup window, and dead-lettered when a `reject-publish-dlx`
/// queue refuses them: a dead-lettered or moved copy keeps its `message_id`, and dropping it as
/// a duplicate (or copying it to a dead-letter exchange while a move gives it back to its
/// source) would lose or double the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PublishOrigin {
    /// A publisher, on the wire or through the HTTP API.
    Client,
    /// Copies dead-lettered by another queue.
    DeadLetter,
    /// Messages moved from another queue; those refused go back to their source.
    Move,
}

/// A request to a queue.
#[derive(Debug)]
pub enum QueueCmd {
    /// Store messages and report with [`ConnEvent::Stored`].
    Publish {
        /// The publisher.
        conn: Arc<ConnLink>,
        /// Its batch number.
        batch: u64,
        /// The messages.
        messages: Vec<Incoming>,
        /// Their share of the mailbox, given back once they are stored (`None`: dead-letter
        /// copies from another queue).
        room: Option<PublishRoom>,
        /// Who sent them.
        origin: PublishOrigin,
    },
    /// Start a consumer.
    Consume {
        /// Its connection.
        conn: Arc<ConnLink>,
        /// The request.
        request_id: RequestId,
        /// The consumer's number on its connection.
        consumer_id: ConsumerId,
        /// Its tag.
        tag: String,
        /// Its window; 0 = unlimited.
        prefetch: u32,
        /// Whether it must be the only consumer.
        exclusive: bool,
        /// Lease of its deliveries, overriding the queue's.
        ack_timeout: Option<Duration>,
        /// Its priority (protocol.md §9.1): higher ones with credit get messages first.
        priority: i32,
        /// Its circuit breaking settings, overriding the queue's (protocol.md §9.8).
        circuit_breaker: Option<sluice_client::wire::CircuitBreaker>,
    },
    /// Stop a consumer; answers with [`ConnEvent::Cancelled`] when `request_id` is given.
    Cancel {
        /// Its connection.
        conn: Arc<ConnLink>,
        /// The consumer.
        consumer_id: ConsumerId,
        /// The request, if a client asked.
        request_id: Option<RequestId>,
    },
    /// Stop a consumer for the server (an operator): its deliveries return to the queue,
    /// its connection gets [`ConnEvent::LeasesExpired`] for them, then
    /// [`ConnEvent::ConsumerStopped`].
    StopConsumer {
        /// Its connection.
        conn: Arc<ConnLink>,
        /// The consumer.
        consumer_id: ConsumerId,
        /// Why (a 4xx code).
        code: ErrorCode,
        /// Detail for the client.
        reason: String,
    },
    /// Change a consumer's window.
    SetPrefetch {
        /// Its connection.
        conn_id: ConnId,
        /// The consumer.
        consumer_id: ConsumerId,
        /// The new window.
        prefetch: u32,
    },
    /// Take one ready message.
    Get {
        /// The connection.
        conn: Arc<ConnLink>,
        /// The request.
        request_id: RequestId,
    },
    /// Take up to `limit` ready messages, waiting up to `wait` for the first; answers with
    /// [`ConnEvent::GotMany`].
    GetMany {
        /// The connection.
        conn: Arc<ConnLink>,
        /// The request.
        request_id: RequestId,
        /// How much to take.
        limit: BatchLimit,
        /// How long to wait for a first message (0: answer at once).
        wait: Duration,
    },
    /// Settle deliveries: `(tag, message seq)` pairs.
    Settle {
        /// The connection that holds them.
        conn: Arc<ConnLink>,
        /// The request, for errors.
        request_id: RequestId,
        /// The deliveries.
        deliveries: Vec<(u64, u64)>,
        /// What to do with them.
        how: Settlement,
        /// The reason the worker gave with a `Nack` or `Reject`, for the messages' history.
        reason: Option<Arc<str>>,
    },
    /// Push a delivery's deadline to `extend` from now.
    Extend {
        /// The connection that holds it.
        conn: Arc<ConnLink>,
        /// The request, for errors.
        request_id: RequestId,
        /// Its tag.
        tag: u64,
        /// Its message.
        seq: u64,
        /// The new lease.
        extend: Duration,
    },
    /// Answer `InspectQueueOk`.
    Inspect {
        /// The connection.
        conn: Arc<ConnLink>,
        /// The request.
        request_id: RequestId,
    },
    /// Remove the ready messages; answer `PurgeQueueOk`.
    Purge {
        /// The connection.
        conn: Arc<ConnLink>,
        /// The request.
        request_id: RequestId,
    },
    /// Delete the queue if the conditions hold; the answer is the number of messages
    /// deleted with it, or why not.
    Delete {
        /// Fail if it has consumers.
        if_unused: bool,
        /// Fail if it holds messages.
        if_empty: bool,
        /// The answer.
        reply: oneshot::Sender<Result<u64, RequestError>>,
    },
    /// A connection ended: cancel its consumers, return its deliveries.
    ConnectionClosed {
        /// The connection.
        conn_id: ConnId,
    },
    /// The queue was declared again: it is in use (for `expires_ms`).
    Touch,
    /// A connection's outbox drained: its consumers may take deliveries again.
    Resume,
    /// Show ready messages without taking them; answers `BrowseQueueOk`.
    Browse {
        /// The connection.
        conn: Arc<ConnLink>,
        /// The request.
        request_id: RequestId,
        /// Which messages, and how many bytes of them fit the answer.
        page: BrowsePage,
    },
    /// Show scheduled messages without taking them; answers `ListScheduledOk`.
    ListScheduled {
        /// The connection.
        conn: Arc<ConnLink>,
        /// The request.
        request_id: RequestId,
        /// Which messages, and how many bytes of them fit the answer.
        page: ScheduledPage,
    },
    /// Delete a scheduled message before its time; answers `CancelScheduledOk`, or
    /// `NOT_FOUND` when it is not scheduled.
    CancelScheduled {
        /// The connection.
        conn: Arc<ConnLink>,
        /// The request.
        request_id: RequestId,
        /// The message.
        seq: u64,
    },
    /// Take ready messages for a move (crate::moves): they are held, neither ready nor
    /// delivered, until a [`QueueCmd::SettleMove`] names them. The answer is empty when no
    /// message is ready.
    TakeForMove {
        /// Most messages.
        max_messages: usize,
        /// Most bytes (meta + body), but at least one message.
        max_bytes: usize,
        /// The messages taken, or why none may be.
        reply: oneshot::Sender<Result<Vec<Incoming>, RequestError>>,
    },
    /// Ends a move's hold on messages it took.
    SettleMove {
        /// Stored durably in the destination: delete them here.
        moved: Vec<u64>,
        /// Not moved: ready again, where they were in the queue.
        returned: Vec<u64>,
    },
    /// Start (or replace) the queue's chaos injection (`queue::chaos`); the answer is when it
    /// ends (Unix ms), or why not.
    SetChaos {
        /// What it does.
        plan: sluice_client::wire::ChaosPlan,
        /// How long it runs.
        duration: Duration,
        /// The answer.
        reply: oneshot::Sender<Result<u64, RequestError>>,
    },
    /// End the queue's chaos injection now; the answer says whether one was running.
    ClearChaos {
        /// The answer.
        reply: oneshot::Sender<bool>,
    },
    /// A replicated queue's committed ops, in log order ([`replicated`]); one result each.
    Apply {
        /// The encoded [`replicated::QueueOp`]s.
        ops: Vec<Vec<u8>>,
        /// Their encoded [`replicated::OpResult`]s, or why this replica cannot apply them.
        reply: oneshot::Sender<Result<Vec<Vec<u8>>, MachineError>>,
    },
    /// A replicated queue's whole state, an encoded [`replicated::QueueSnapshot`].
    Snapshot {
        /// The answer.
        reply: oneshot::Sender<Result<Vec<u8>, MachineError>>,
    },
    /// Replaces a replicated queue's state with a snapshot's.
    Install {
        /// An encoded [`replicated::QueueSnapshot`].
        data: Vec<u8>,
        /// Installed, or why not.
        reply: oneshot::Sender<Result<(), MachineError>>,
    },
    /// Gives a replicated queue the way to its raft group (once the group is hosted or known).
    Attach {
        /// Where its proposals go.
        proposer: Arc<dyn replicated::Proposer>,
    },
    /// Who leads a replicated queue's group now.
    Leadership(replicated::LeaderView),
    /// The histories of the queue's messages with this `message_id` (`sluice trace`).
    TraceMessage {
        /// The id.
        message_id: Arc<str>,
        /// The answer; empty when the queue follows no such message.
        reply: oneshot::Sender<Vec<MessageHistory>>,
    },
    /// Write what is pending and stop (server shutdown).
    Shutdown {
        /// Dropped when the queue's log is closed.
        done: oneshot::Sender<()>,
    },
}

/// What a browse asks of a queue.
#[derive(Debug, Clone, Copy)]
pub struct BrowsePage {
    /// Most messages.
    pub limit: usize,
    /// Only messages with a greater sequence number; 0 = from the head.
    pub after_seq: u64,
    /// Bytes the answer's messages may take (their encoded size, bodies counted up to
    /// `body_budget`); at least one message is answered.
    pub max_bytes: usize,
    /// Bytes of each body counted against `max_bytes`: a reader that shows only the start of
    /// long bodies (the HTTP API) gets more of them per page.
    pub body_budget: usize,
}

impl BrowsePage {
    /// A page for a `BrowseQueue` request answered in a frame of at most `max_frame_len`:
    /// whole bodies, and a `limit` of 0 or above [`MAX_BROWSE_LIMIT`] means that maximum.
    pub fn for_frame(limit: u32, after_seq: u64, max_frame_len: u32) -> Self {
        let limit = match limit {
            0 => MAX_BROWSE_LIMIT,
            n => n.min(MAX_BROWSE_LIMIT),
        };
        let fixed = MIN_FRAME_LEN as usize + BROWSE_FIXED_LEN;
        BrowsePage {
            limit: limit as usize,
            after_seq,
            max_bytes: (max_frame_len as usize).saturating_sub(fixed),
            body_budget: usize::MAX,
        }
    }
}

/// Live counters of a queue, for declare replies, listings and `/metrics`.
///
/// Only the queue's task writes them (relaxed, counted per batch where it can); readers take
/// them as they are, without asking the task, so a scrape of many queues never waits for one.
/// The `*ed` totals count since the broker started.
#[derive(Debug, Default)]
pub struct QueueStats {
    /// Messages ready for delivery.
    pub ready: AtomicU64,
    /// Of those, per priority (index = priority), in a queue with `max_priority`; all 0 in
    /// a queue without.
    pub ready_by_priority: [AtomicU64; MAX_PRIORITY as usize + 1],
    /// Messages delivered and not settled.
    pub unacked: AtomicU64,
    /// Active consumers.
    pub consumers: AtomicU32,
    /// Bytes of ready and unacked messages.
    pub bytes: AtomicU64,
    /// Messages stored in the queue (published to it, or dead-lettered into it).
    pub published: AtomicU64,
    /// Messages handed to a consumer or a `Get`, redeliveries included.
    pub delivered: AtomicU64,
    /// Deliveries of messages that may have been delivered before.
    pub redelivered: AtomicU64,
    /// Messages acknowledged.
    pub acked: AtomicU64,
    /// Deliveries settled with a requeue.
    pub nacked: AtomicU64,
    /// Deliveries rejected (dead-lettered, or dropped without a dead-letter exchange).
    pub rejected: AtomicU64,
    /// Messages whose TTL ran out in the queue.
    pub expired: AtomicU64,
    /// Messages moved to the dead-letter exchange, by [`DeathReason`] (index `reason as
    /// usize`), counted once their copies are stored.
    pub dead_lettered: [AtomicU64; DeathReason::ALL.len()],
    /// Messages that were to be dead-lettered but were dropped, by [`DeathReason`]: the
    /// dead-letter exchange does not exist, or routes them to no queue.
    pub dead_letters_dropped: [AtomicU64; DeathReason::ALL.len()],
    /// Stored messages whose part of the publisher's confirm is settled: durable, or
    /// transient and stored.
    pub confirmed: AtomicU64,
    /// Messages the queue refused (`QUEUE_FULL`, `STORAGE_FULL`, ...).
    pub refused: RefusedCounts,
    /// Published messages confirmed without being stored: duplicates of a `message_id` in
    /// the queue's dedup window (since the broker started).
    pub duplicates_dropped: AtomicU64,
    /// Messages stored per second, recently.
    pub publish_rate: AtomicU64,
    /// Messages acknowledged per second, recently.
    pub ack_rate: AtomicU64,
    /// When the oldest ready message was enqueued (Unix ms); 0 = no ready message.
    pub oldest_ready_at_ms: AtomicU64,
    /// Messages stored but waiting for their time (delayed, or requeued with a delay).
    pub scheduled: AtomicU64,
    /// Consumers whose circuit is open now (circuit breaking).
    pub circuits_open: AtomicU32,
    /// Times a consumer's circuit opened (since the broker started).
    pub circuit_trips: AtomicU64,
    /// The consumers, refreshed a few times a second.
    pub consumers_list: std::sync::Mutex<Vec<ConsumerSummary>>,
    /// The running chaos injection and what chaos did (`queue::chaos`).
    pub chaos: chaos::ChaosShared,
}

/// Why a message leaves for the dead-letter exchange (protocol.md §8.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeathReason {
    /// Rejected without requeue.
    Rejected,
    /// Its TTL ran out.
    Expired,
    /// Pushed out by the queue's length limit (`drop-head`).
    MaxLen,
    /// Returned more often than the queue's delivery limit.
    DeliveryLimit,
}

impl DeathReason {
    /// Every reason, in index order.
    pub const ALL: [DeathReason; 4] = [
        DeathReason::Rejected,
        DeathReason::Expired,
        DeathReason::MaxLen,
        DeathReason::DeliveryLimit,
    ];

    /// The name in `x-death-reason` headers and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            DeathReason::Rejected => "rejected",
            DeathReason::Expired => "expired",
            DeathReason::MaxLen => "maxlen",
            DeathReason::DeliveryLimit => "delivery-limit",
        }
    }
}

impl QueueStats {
    /// How long the oldest ready message has waited at `now_ms` (Unix ms); 0 when there is
    /// no ready message.
    pub fn oldest_ready_age_ms(&self, now_ms: u64) -> u64 {
        match self.oldest_ready_at_ms.load(Ordering::Relaxed) {
            0 => 0,
            at => now_ms.saturating_sub(at),
        }
    }
}

/// What does not change about a queue after its declaration.
#[derive(Debug)]
pub struct QueueMeta {
    /// Its name.
    pub name: Arc<str>,
    /// Its log's id in the store.
    pub uid: u64,
    /// Survives restarts.
    pub durable: bool,
    /// The connection that owns it, if exclusive.
    pub exclusive_owner: Option<ConnId>,
    /// Deleted when its last consumer goes.
    pub auto_delete: bool,
    /// Its arguments, as declared.
    pub arguments: QueueArguments,
    /// Live counters.
    pub stats: QueueStats,
}

impl QueueMeta {
    /// Whether connection `conn` may use the queue.
    pub fn accessible_by(&self, conn: ConnId) -> bool {
        self.exclusive_owner.is_none_or(|owner| owner == conn)
    }
}

/// Bytes of published messages a queue's mailbox holds at most (from sessions); a publisher
/// waits for room, so a queue that cannot keep up slows down its own publishers only.
pub const MAILBOX_PUBLISH_BYTES: usize = 64 << 20;

/// A publish's share of a queue's mailbox ([`MAILBOX_PUBLISH_BYTES`]), returned when dropped.
#[derive(Debug)]
pub struct PublishRoom {
    _permit: OwnedSemaphorePermit,
}

/// A cheap handle to a queue task.
#[derive(Debug, Clone)]
pub struct QueueHandle {
    /// The queue's fixed properties and counters.
    pub meta: Arc<QueueMeta>,
    tx: mpsc::UnboundedSender<QueueCmd>,
    publish_room: Arc<Semaphore>,
}

impl QueueHandle {
    fn new(meta: Arc<QueueMeta>, tx: mpsc::UnboundedSender<QueueCmd>) -> Self {
        Self {
            meta,
            tx,
            publish_room: Arc::new(Semaphore::new(MAILBOX_PUBLISH_BYTES)),
        }
    }

    /// Waits until the mailbox has room for these messages (a batch larger than the whole
    /// room waits for all of it).
    pub async fn publish_room(&self, messages: &[Incoming]) -> PublishRoom {
        let bytes: usize = messages.iter().map(|m| m.meta.len() + m.body.len()).sum();
        let n = bytes.clamp(1, MAILBOX_PUBLISH_BYTES) as u32;
        let room = Arc::clone(&self.publish_room);
        let permit = match room.clone().try_acquire_many_owned(n) {
            Ok(p) => p,
            Err(_) => room
                .acquire_many_owned(n)
                .await
                .expect("the publish room is never closed"),
        };
        PublishRoom { _permit: permit }
    }

    /// Sends a command; false when the queue task has stopped (the queue was deleted).
    pub fn send(&self, cmd: QueueCmd) -> bool {
        self.tx.send(cmd).is_ok()
    }

    /// Whether the queue's task has stopped taking commands (deleted, or shutting down).
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }

    /// Whether two handles name the same queue task.
    pub fn same(&self, other: &QueueHandle) -> bool {
        self.tx.same_channel(&other.tx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn handle() -> QueueHandle {
        let meta = QueueMeta {
            name: "q".into(),
            uid: 1,
            durable: true,
            exclusive_owner: None,
            auto_delete: false,
            arguments: QueueArguments::default(),
            stats: QueueStats::default(),
        };
        QueueHandle::new(Arc::new(meta), mpsc::unbounded_channel().0)
    }

    fn message(bytes: usize) -> Incoming {
        Incoming {
            publish_seq: 1,
            meta: Bytes::new(),
            body: Bytes::from(vec![0; bytes]),
            persistent: true,
            trace: None,
        }
    }

    #[tokio::test]
    async fn a_full_mailbox_makes_publishers_wait_until_the_queue_took_its_messages() {
        let q = handle();
        let first = q.publish_room(&[message(MAILBOX_PUBLISH_BYTES - 10)]).await;
        let _small = q.publish_room(&[message(10)]).await;
        let one = [message(1)];
        let waiting = q.publish_room(&one);
        tokio::pin!(waiting);
        let wait = std::time::Duration::from_millis(20);
        assert!(tokio::time::timeout(wait, &mut waiting).await.is_err());
        drop(first);
        tokio::time::timeout(std::time::Duration::from_secs(5), waiting)
            .await
            .expect("room once the queue took the first batch");
    }

    #[tokio::test]
    async fn a_batch_larger_than_the_mailbox_waits_for_all_of_it() {
        let q = handle();
        let huge = q.publish_room(&[message(MAILBOX_PUBLISH_BYTES * 2)]).await;
        drop(huge);
        let _again = q.publish_room(&[message(MAILBOX_PUBLISH_BYTES)]).await;
    }
}
