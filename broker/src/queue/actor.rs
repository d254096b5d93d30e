//! The queue task: its state, its loop, and publishing, delivering and settling.
//!
//! The rest of what it does is split by concept into submodules that add methods to the same
//! [`Actor`]: `expiry.rs` (the TTL timer and the oldest ready message), `dead_letter.rs`
//! (copies to the dead-letter exchange, acked once durable), `counters.rs` (the live
//! [`QueueStats`](super::QueueStats) and confirm counting), and for operators `browse.rs`
//! (ready messages shown in place) and `mover.rs` (messages held for a move to another queue).
//! Its bookkeeping lives in types of their own beside it, each with its unit tests:
//! [`ReadySet`], [`InFlight`], [`DeadLetters`], [`Unconfirmed`] and [`RateBase`].

mod browse;
mod chaos;
mod circuit;
mod counters;
mod dead_letter;
mod expiry;
mod get_many;
mod history;
mod mover;
mod replica;
mod scheduled;
mod spans;

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use sluice_client::wire::{
    ConsumeOk, ConsumerId, Delivery, DeliveryTag, ErrorCode, InspectQueueOk, MetaView, Overflow,
    PublishSeq, PurgeQueueOk, Rejection, Reply, RequestId, ReturnCause,
};
use tokio::sync::mpsc;

use super::breaker::{Admits, CircuitBreaker};
use super::chaos::{ChaosHeld, ExtraDeliveries, Injection};
use super::consumers::{Consumers, Member};
use super::dead_letters::DeadLetters;
use super::dedup::Dedup;
use super::getters::Getters;
use super::history::{History, HistorySettings};
use super::in_flight::{Delivered, InFlight};
use super::rates::RateBase;
use super::ready_set::{ReadyMessage, ReadySet};
use super::schedule::Schedule;
use super::unconfirmed::Unconfirmed;
use super::{
    delivery_bytes, ConnEvent, ConnId, ConnLink, DeathReason, Incoming, PublishOrigin, QueueCmd,
    QueueHandle, QueueMeta, Settlement,
};
use crate::broker::Broker;
use crate::error::RequestError;
use crate::metrics::Metrics;
use crate::storage::{QueueLog, StorageError};
use crate::telemetry::Telemetry;
use circuit::{Outcome, Tally};
use mover::HeldForMoves;
use replica::Replica;

/// Most deliveries handed to one consumer before the next consumer's turn.
const DELIVERY_BATCH: u32 = 64;
/// Most commands handled before ready messages are handed out.
const COMMANDS_PER_ROUND: usize = 256;
/// Shortest time between two writes of pending acks to the ack logs.
const ACK_FLUSH_INTERVAL: Duration = Duration::from_millis(10);
/// How often acks are written and segments maintained when nothing else triggers it.
const MAINTENANCE_INTERVAL: Duration = Duration::from_millis(250);
/// Most messages expired in one round: a backlog that expires at once is dead-lettered over
/// several rounds, with commands and deliveries in between.
const EXPIRE_PER_ROUND: usize = 1024;
/// How long expiry waits, at start, for the broker to publish the topology a dead-lettered
/// copy is routed by.
const TOPOLOGY_WAIT: Duration = Duration::from_millis(10);

/// What a queue task takes from the broker's configuration.
struct ActorSettings {
    default_lease: Duration,
    metrics: Arc<Metrics>,
    history: HistorySettings,
    telemetry: Option<Arc<Telemetry>>,
}

impl ActorSettings {
    fn of(broker: &Weak<Broker>) -> Self {
        match broker.upgrade() {
            Some(b) => ActorSettings {
                default_lease: b.config.default_ack_timeout,
                metrics: Arc::clone(b.metrics()),
                history: b.config.message_history,
                telemetry: b.telemetry().cloned(),
            },
            None => ActorSettings {
                default_lease: Duration::from_secs(1800),
                metrics: Arc::default(),
                history: HistorySettings::default(),
                telemetry: None,
            },
        }
    }
}

/// Starts the task of a queue whose log is open; returns its handle.
pub(crate) fn spawn(meta: Arc<QueueMeta>, log: QueueLog, broker: Weak<Broker>) -> QueueHandle {
    let (tx, rx) = mpsc::unbounded_channel();
    let handle = QueueHandle::new(Arc::clone(&meta), tx);
    let settings = ActorSettings::of(&broker);
    let mut actor = Actor::new(meta, log, broker, handle.clone(), settings);
    tokio::spawn(async move { actor.run(rx).await });
    handle
}

/// Starts the task of a replicated queue (`queue::replicated`) on the empty log `log`: its
/// state comes from its group's snapshot and committed ops (`QueueCmd::Apply`), its group
/// from a `QueueCmd::Attach`.
pub(crate) fn spawn_replicated(
    meta: Arc<QueueMeta>,
    log: QueueLog,
    broker: Weak<Broker>,
) -> QueueHandle {
    let (tx, rx) = mpsc::unbounded_channel();
    let handle = QueueHandle::new(Arc::clone(&meta), tx);
    let settings = ActorSettings::of(&broker);
    let mut actor = Actor::new(meta, log, broker, handle.clone(), settings);
    actor.become_replicated();
    tokio::spawn(async move { actor.run(rx).await });
    handle
}

struct Consumer {
    conn: Arc<ConnLink>,
    id: ConsumerId,
    tag: String,
    prefetch: u32,
    unacked: u32,
    lease: Duration,
    priority: i32,
    /// Its circuit (`None`: no circuit breaking, the usual case).
    breaker: Option<CircuitBreaker>,
}

impl Member for Consumer {
    fn credit(&self) -> u32 {
        Consumer::credit(self)
    }

    fn priority(&self) -> i32 {
        self.priority
    }

    fn unacked(&self) -> u32 {
        self.unacked
    }
}

impl Consumer {
    /// Deliveries this consumer takes now: its prefetch window, and none while its
    /// connection's outbox is full (the connection asks for a `Resume` when it drains).
    fn credit(&self) -> u32 {
        let window = if self.prefetch == 0 {
            DELIVERY_BATCH
        } else {
            self.prefetch
                .saturating_sub(self.unacked)
                .min(DELIVERY_BATCH)
        };
        if window == 0 || !self.conn.outbox.accepts_more() {
            return 0;
        }
        match self.breaker.as_ref().map(|b| b.admits(self.unacked)) {
            None | Some(Admits::All) => window,
            Some(Admits::One) => 1,
            Some(Admits::None) => 0,
        }
    }
}

/// A message taken from the ready set for a delivery.
struct Deliverable {
    seq: u64,
    /// Deliveries so far, this one included.
    count: u32,
    /// Its priority level.
    priority: u8,
    /// When its own TTL runs out (Unix ms).
    expires_at_ms: Option<u64>,
    delivery: Delivery,
}

struct Actor {
    meta: Arc<QueueMeta>,
    /// `None` once the queue is deleted.
    log: Option<QueueLog>,
    broker: Weak<Broker>,
    handle: QueueHandle,
    default_lease: Duration,
    /// Messages waiting for a delivery (the oldest refreshed after every round).
    ready: ReadySet,
    /// The broker's published topology names this queue (dead-lettered copies can be routed).
    registered: bool,
    /// Expiry waits until then after a dead-lettered copy found no space, instead of trying
    /// again at once.
    expiry_paused_until: Option<Instant>,
    /// Deliveries not settled yet, with their leases.
    in_flight: InFlight,
    /// Who gets the next messages: round-robin, by priority, or the single active one.
    consumers: Consumers<Consumer>,
    /// `GetMany` requests waiting for a message.
    getters: Getters,
    exclusive_consumer: bool,
    had_consumer: bool,
    /// Recovered messages below this may have been delivered before a crash (see
    /// `RecoveredDeliveries::maybe_delivered_below`).
    maybe_delivered_below: u64,
    delivered_hwm: u64,
    dirty: bool,
    last_used: Instant,
    /// Where dead-lettered copies report back (as a publisher would).
    dl_link: Arc<ConnLink>,
    dl_events: mpsc::UnboundedReceiver<ConnEvent>,
    dead: DeadLetters,
    /// Messages taken by moves to other queues, not settled yet.
    held: HeldForMoves,
    unconfirmed: Unconfirmed,
    /// The publish dedup window, when the queue has one.
    dedup: Option<Dedup>,
    /// Broker-wide histograms (delivery→ack time) and the totals of deleted queues.
    metrics: Arc<Metrics>,
    /// Counters when the rates were last measured, and when.
    rates: RateBase,
    last_flush: Instant,
    /// Messages waiting for their time (`scheduled.rs`), and their bytes (not ready bytes).
    schedule: Schedule,
    scheduled_bytes: u64,
    /// A due time was recorded: write it this round, not after the ack interval.
    flush_due_soon: bool,
    /// A replicated queue's group state (`replica.rs`); `None` for a local queue.
    replica: Option<Box<Replica>>,
    /// What happened to the recent messages that have an id (`sluice trace`).
    history: History,
    /// Where spans go (`--otlp-endpoint`); `None`: no spans.
    telemetry: Option<Arc<Telemetry>>,
    /// The traced messages in the queue (those with a sampled `traceparent`).
    traced: spans::Traced,
    /// Consumers with a circuit breaker (`circuit.rs`); 0 costs one test per settle batch.
    breakers: usize,
    /// The running chaos injection (`chaos.rs`); `None` nearly always.
    chaos: Option<Injection>,
    /// Messages chaos holds back (delayed, or dropped on the way).
    chaos_held: ChaosHeld,
    /// Extra deliveries of chaos's duplicate mode, not settled yet.
    chaos_extra: ExtraDeliveries,
}

use super::unix_now_ms as now_ms;

impl Actor {
    fn new(
        meta: Arc<QueueMeta>,
        log: QueueLog,
        broker: Weak<Broker>,
        handle: QueueHandle,
        settings: ActorSettings,
    ) -> Self {
        let ActorSettings {
            default_lease,
            metrics,
            history,
            telemetry,
        } = settings;
        let mut log = log;
        let recovered = log.recovered_deliveries().clone();
        let mut ready = ReadySet::new(meta.arguments.max_priority);
        let mut transient = Vec::new();
        let queue_ttl = meta.arguments.message_ttl_ms;
        // Rebuilt from the log at every start (queue/schedule/): the log holds each due time.
        let mut schedule = Schedule::open(log.dir());
        let mut scheduled_bytes = 0;
        let now = now_ms();
        let mut dedup = Dedup::open(&meta.name, &meta.arguments, meta.durable, log.dir());
        for seq in log.live_seqs() {
            // Transient messages do not survive a restart (protocol.md §8.1): drop them now,
            // so they are never counted as ready.
            let mut expires_at_ms = None;
            let mut priority = 0;
            if let Ok(head) = log.peek(seq) {
                if !MetaView::peek_persistent(head.meta) {
                    transient.push(seq);
                    continue;
                }
                // After the transient check: a message dropped now is no longer in the queue,
                // so its id must not hold back a publish (protocol.md §6.1).
                if let Some(d) = &mut dedup {
                    d.recovered(head.meta, head.timestamp_ms);
                }
                if let Some(entry) = scheduled::recovered_entry(seq, &head, &recovered, now) {
                    schedule.insert(entry);
                    scheduled_bytes += log.payload_bytes(seq).unwrap_or(0);
                    continue;
                }
                let since = scheduled::ready_since_ms(head.timestamp_ms, head.meta);
                expires_at_ms = MetaView::peek_expiration_ms(head.meta)
                    .map(|own| expiry_deadline(since, own, queue_ttl));
                // Back into its priority: the priority lives in the stored meta block.
                priority = priority_of(&ready, head.meta);
            }
            if seq <= recovered.delivered_hwm || recovered.counts.contains_key(&seq) {
                let count = recovered.counts.get(&seq).copied().unwrap_or(1);
                ready.push_returned(seq, count, priority, expires_at_ms);
            } else {
                ready.push_new(seq, priority, expires_at_ms);
            }
        }
        for &seq in &transient {
            if let Err(e) = log.ack(seq) {
                tracing::warn!(queue = %meta.name, seq, error = %e, "could not drop a transient message");
            }
        }
        let lease = meta
            .arguments
            .ack_timeout_ms
            .map_or(default_lease, Duration::from_millis);
        let (dl_tx, dl_events) = mpsc::unbounded_channel();
        let single_active = meta.arguments.single_active_consumer == Some(1);
        let mut actor = Self {
            meta,
            log: Some(log),
            broker,
            handle,
            default_lease: lease,
            ready,
            registered: false,
            expiry_paused_until: None,
            in_flight: InFlight::default(),
            consumers: Consumers::new(single_active),
            getters: Getters::default(),
            exclusive_consumer: false,
            had_consumer: false,
            maybe_delivered_below: recovered.maybe_delivered_below,
            delivered_hwm: recovered.delivered_hwm,
            dirty: !transient.is_empty(),
            last_used: Instant::now(),
            dl_link: ConnLink::new(0, dl_tx, Arc::default()),
            dl_events,
            dead: DeadLetters::default(),
            held: HeldForMoves::default(),
            unconfirmed: Unconfirmed::default(),
            dedup,
            metrics,
            rates: RateBase::new(Instant::now()),
            last_flush: Instant::now(),
            schedule,
            scheduled_bytes,
            flush_due_soon: false,
            replica: None,
            history: History::new(history),
            telemetry,
            traced: spans::Traced::new(),
            breakers: 0,
            chaos: None,
            chaos_held: ChaosHeld::default(),
            chaos_extra: ExtraDeliveries::default(),
        };
        actor.refresh_oldest();
        actor.update_stats();
        actor
    }

    async fn run(&mut self, mut rx: mpsc::UnboundedReceiver<QueueCmd>) {
        let mut tick = tokio::time::interval(MAINTENANCE_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let next_deadline = self.in_flight.next_deadline();
            let next_expiry = self.next_expiry();
            let next_due = self.next_due();
            let next_chaos = self.next_chaos_wake();
            tokio::select! {
                cmd = rx.recv() => {
                    let Some(cmd) = cmd else { break };
                    if self.handle_cmd(cmd) {
                        break;
                    }
                    let mut stop = false;
                    for _ in 1..COMMANDS_PER_ROUND {
                        match rx.try_recv() {
                            Ok(cmd) => if self.handle_cmd(cmd) { stop = true; break; },
                            Err(_) => break,
                        }
                    }
                    if stop {
                        break;
                    }
                }
                _ = sleep_until_opt(next_deadline) => self.expire_leases(),
                _ = sleep_until_opt(self.getters.next_deadline()) => self.expire_getters(),
                _ = sleep_until_opt(self.next_circuit_deadline()) => self.poll_circuits(),
                _ = sleep_until_opt(next_expiry) => {
                    self.expire_messages();
                    if self.expired_unused() {
                        if self.delete_or_log("it expired unused") {
                            break;
                        }
                        // Not again at once: after another `expires_ms` (or the next tick).
                        self.last_used = Instant::now();
                    }
                }
                // Due messages are released below, as every round does.
                _ = sleep_until_opt(next_due) => {}
                // So are messages chaos held back, and an injection whose time is up ends.
                _ = sleep_until_opt(next_chaos) => {}
                Some(event) = self.dl_events.recv() => self.on_dead_letter_event(event),
                _ = tick.tick() => {
                    self.dirty = true;
                    // A drained backlog should not keep its index's memory.
                    self.ready.shrink_if_sparse();
                    self.measure_rates();
                    self.publish_consumers();
                    self.maintain_dedup();
                    self.history.prune(now_ms());
                    if self.expired_unused() && self.delete_or_log("it expired unused") {
                        break;
                    }
                }
            }
            self.ack_dead_letters();
            self.count_confirmed();
            self.release_due();
            self.chaos_round();
            self.pump();
            if self.consumers.take_switched() {
                self.publish_consumers();
            }
            self.flush();
            self.refresh_oldest();
            self.update_stats();
        }
        self.close(&mut rx);
    }

    /// Handles one command; true when the task must stop.
    fn handle_cmd(&mut self, cmd: QueueCmd) -> bool {
        let cmd = match self.replica {
            None => cmd,
            Some(_) => match self.handle_replicated(cmd) {
                Some(cmd) => cmd,
                None => return false,
            },
        };
        match cmd {
            QueueCmd::Publish {
                conn,
                batch,
                messages,
                room,
                origin,
            } => {
                self.publish(&conn, batch, messages, origin);
                drop(room);
            }
            QueueCmd::Consume {
                conn,
                request_id,
                consumer_id,
                tag,
                prefetch,
                exclusive,
                ack_timeout,
                priority,
                circuit_breaker,
            } => {
                if exclusive && !self.consumers.is_empty() || self.exclusive_consumer {
                    conn.send(ConnEvent::Error {
                        request_id,
                        error: RequestError::new(
                            ErrorCode::ResourceLocked,
                            format!("queue '{}' has an exclusive consumer or, for an exclusive consumer, other consumers", self.meta.name),
                        ),
                    });
                    return false;
                }
                self.exclusive_consumer = exclusive;
                self.had_consumer = true;
                self.last_used = Instant::now();
                // Listed before it is confirmed: a listing after `ConsumeOk` shows it.
                self.consumers.push(Consumer {
                    conn: Arc::clone(&conn),
                    id: consumer_id,
                    tag: tag.clone(),
                    prefetch,
                    unacked: 0,
                    lease: ack_timeout.unwrap_or(self.default_lease),
                    priority,
                    breaker: circuit_breaker.map(CircuitBreaker::new),
                });
                self.breakers += usize::from(circuit_breaker.is_some());
                self.publish_consumers();
                conn.send(ConnEvent::Reply {
                    request_id,
                    reply: Reply::ConsumeOk(ConsumeOk {
                        consumer_id,
                        consumer_tag: tag,
                    }),
                });
            }
            QueueCmd::Cancel {
                conn,
                consumer_id,
                request_id,
            } => {
                self.remove_consumer(conn.id, consumer_id);
                if let Some(request_id) = request_id {
                    conn.send(ConnEvent::Cancelled {
                        request_id,
                        consumer_id,
                    });
                }
                return self.auto_delete_if_unused();
            }
            QueueCmd::StopConsumer {
                conn,
                consumer_id,
                code,
                reason,
            } => return self.stop_consumer(&conn, consumer_id, code, reason),
            QueueCmd::SetPrefetch {
                conn_id,
                consumer_id,
                prefetch,
            } => {
                if let Some(c) = self
                    .consumers
                    .find_mut(|c| c.conn.id == conn_id && c.id == consumer_id)
                {
                    c.prefetch = prefetch;
                }
            }
            QueueCmd::Get { conn, request_id } => {
                self.last_used = Instant::now();
                self.get(&conn, request_id);
            }
            QueueCmd::GetMany {
                conn,
                request_id,
                limit,
                wait,
            } => {
                self.last_used = Instant::now();
                self.get_many(conn, request_id, limit, wait);
            }
            QueueCmd::Touch => self.last_used = Instant::now(),
            // Nothing to do here: every round of commands ends with `pump`.
            QueueCmd::Resume => {}
            QueueCmd::Settle {
                conn,
                request_id,
                deliveries,
                how,
                reason,
            } => self.settle(&conn, request_id, &deliveries, how, reason),
            QueueCmd::Extend {
                conn,
                request_id,
                tag,
                seq,
                extend,
            } => {
                let deadline = Instant::now() + extend;
                let tag = DeliveryTag(tag);
                if self.in_flight.extend(seq, conn.id, tag, deadline) {
                    self.note_lease_extended(seq, deadline);
                } else if !self.chaos_extra.contains(conn.id, tag.0) {
                    // (An extra delivery of chaos's duplicate mode has no lease: nothing to
                    // extend, and nothing wrong.)
                    conn.send(unknown_tag(request_id, tag));
                }
            }
            QueueCmd::Inspect { conn, request_id } => {
                let reply = self.inspect();
                conn.send(ConnEvent::Reply { request_id, reply });
            }
            QueueCmd::Purge { conn, request_id } => {
                let messages = self.purge();
                conn.send(ConnEvent::Reply {
                    request_id,
                    reply: Reply::PurgeQueueOk(PurgeQueueOk { messages }),
                });
            }
            QueueCmd::Delete {
                if_unused,
                if_empty,
                reply,
            } => {
                if if_unused && !self.consumers.is_empty() {
                    let _ = reply.send(Err(RequestError::precondition(format!(
                        "queue '{}' has {} consumers",
                        self.meta.name,
                        self.consumers.len()
                    ))));
                    return false;
                }
                // Scheduled messages are the queue's too: `if_empty` counts them.
                let messages = self.ready_count()
                    + self.in_flight.len() as u64
                    + self.held.len() as u64
                    + self.schedule.len()
                    + self.chaos_held_len();
                if if_empty && messages > 0 {
                    let _ = reply.send(Err(RequestError::precondition(format!(
                        "queue '{}' holds {messages} messages",
                        self.meta.name
                    ))));
                    return false;
                }
                if let Err(e) = self.delete() {
                    let _ = reply.send(Err(e));
                    return false;
                }
                let _ = reply.send(Ok(messages));
                return true;
            }
            QueueCmd::ConnectionClosed { conn_id } => {
                self.getters.forget_connection(conn_id);
                self.chaos_extra.forget_connection(conn_id);
                self.consumers.remove_where(|c| c.conn.id == conn_id);
                self.forget_breakers();
                self.publish_consumers();
                self.note_if_unused();
                for seq in self.in_flight.held_by(conn_id, None) {
                    self.note_returned(seq, ReturnCause::ConnectionClosed);
                    self.return_delivery(seq);
                }
                if self.consumers.is_empty() {
                    self.exclusive_consumer = false;
                }
                return self.auto_delete_if_unused();
            }
            QueueCmd::Browse {
                conn,
                request_id,
                page,
            } => conn.send(ConnEvent::Reply {
                request_id,
                reply: Reply::BrowseQueueOk(self.browse(&page)),
            }),
            QueueCmd::ListScheduled {
                conn,
                request_id,
                page,
            } => conn.send(ConnEvent::Reply {
                request_id,
                reply: Reply::ListScheduledOk(self.list_scheduled(&page)),
            }),
            QueueCmd::CancelScheduled {
                conn,
                request_id,
                seq,
            } => self.cancel_scheduled(&conn, request_id, seq),
            QueueCmd::TakeForMove {
                max_messages,
                max_bytes,
                reply,
            } => {
                let _ = reply.send(self.take_for_move(max_messages, max_bytes));
            }
            QueueCmd::SettleMove { moved, returned } => self.settle_move(&moved, &returned),
            QueueCmd::TraceMessage { message_id, reply } => {
                let _ = reply.send(self.trace(&message_id));
            }
            QueueCmd::SetChaos {
                plan,
                duration,
                reply,
            } => {
                let _ = reply.send(self.set_chaos(plan, duration));
            }
            QueueCmd::ClearChaos { reply } => {
                let _ = reply.send(self.clear_chaos());
            }
            // Only a replicated queue's group sends these (handled above); a local queue has
            // none to answer.
            QueueCmd::Apply { .. }
            | QueueCmd::Snapshot { .. }
            | QueueCmd::Install { .. }
            | QueueCmd::Attach { .. }
            | QueueCmd::Leadership(_) => {}
            QueueCmd::Shutdown { done } => {
                self.flush_now();
                self.maintain_dedup();
                drop(done);
                return true;
            }
        }
        false
    }

    /// The answer to an `InspectQueue`: the counters now.
    fn inspect(&mut self) -> Reply {
        self.refresh_oldest();
        self.update_stats();
        let s = &self.meta.stats;
        Reply::InspectQueueOk(InspectQueueOk {
            // The name its vhost's clients use (protocol.md §5.8).
            name: crate::routing::namespace::split(&self.meta.name)
                .local
                .to_owned(),
            durable: self.meta.durable,
            exclusive: self.meta.exclusive_owner.is_some(),
            auto_delete: self.meta.auto_delete,
            ready: s.ready.load(Ordering::Relaxed),
            unacked: s.unacked.load(Ordering::Relaxed),
            consumers: s.consumers.load(Ordering::Relaxed),
            bytes: s.bytes.load(Ordering::Relaxed),
            arguments: self.meta.arguments.clone(),
            oldest_ready_age_ms: s.oldest_ready_age_ms(now_ms()),
            scheduled: self.schedule.len() + self.chaos_held_len(),
            duplicates_dropped: s.duplicates_dropped.load(Ordering::Relaxed),
        })
    }

    fn log(&mut self) -> &mut QueueLog {
        self.log
            .as_mut()
            .expect("the log is open while the task runs")
    }

    fn publish(
        &mut self,
        conn: &Arc<ConnLink>,
        batch: u64,
        messages: Vec<Incoming>,
        origin: PublishOrigin,
    ) {
        let mut epoch = 0;
        let mut stored = 0;
        let mut rejections = Vec::new();
        let mut duplicates = Vec::new();
        let ts = now_ms();
        let args = &self.meta.arguments;
        let (max_len, max_bytes) = (args.max_length, args.max_length_bytes);
        let reject_when_full = matches!(
            args.overflow,
            Some(Overflow::RejectPublish | Overflow::RejectPublishDlx)
        );
        // Only a publisher's messages: a dead-lettered copy refused here is not dead-lettered
        // again (two full queues could pass one message back and forth), and a moved one goes
        // back to its source.
        let from_client = origin == PublishOrigin::Client;
        let dead_letter_refused = args.overflow == Some(Overflow::RejectPublishDlx) && from_client;
        for m in messages {
            // One branch when no chaos injection runs: refused as the mode says, not stored.
            if from_client && self.chaos.is_some() {
                if let Some(code) = self.chaos_fail_publish() {
                    rejections.push(Rejection {
                        seq: PublishSeq(m.publish_seq),
                        code,
                        message: format!(
                            "chaos injection on queue '{}': publish refused on purpose ({}); the message was not stored",
                            self.meta.name,
                            code.name()
                        ),
                    });
                    continue;
                }
            }
            if from_client
                && self
                    .dedup
                    .as_mut()
                    .is_some_and(|d| d.is_duplicate(&m.meta, ts))
            {
                duplicates.push(m.publish_seq);
                continue;
            }
            let size = (m.meta.len() + m.body.len()) as u64;
            // One branch for a message without a delivery delay (two presence bits).
            let due = MetaView::peek_delivery_delay(&m.meta)
                .and_then(|d| scheduled::due_after_publish(d, ts));
            // A scheduled message is not ready: the length limits do not count it.
            let refusal = match due {
                None => self.make_room(size, max_len, max_bytes, reject_when_full),
                Some(_) => None,
            };
            if let Some(refusal) = refusal {
                rejections.push(Rejection {
                    seq: PublishSeq(m.publish_seq),
                    code: ErrorCode::QueueFull,
                    message: refusal,
                });
                if dead_letter_refused {
                    self.dead_letter_refused(&m);
                }
                continue;
            }
            match self.log().append(&m.meta, &m.body, ts) {
                Ok(a) => {
                    if m.persistent && self.meta.durable {
                        epoch = epoch.max(a.epoch);
                    }
                    stored += 1;
                    self.history.stored(a.seq, &m.meta, ts);
                    if self.telemetry.is_some() {
                        self.span_stored(Some(a.seq), &m.meta, m.trace.as_ref(), None);
                    }
                    if let Some(d) = self.dedup.as_mut().filter(|_| from_client) {
                        // Journaled only if the message itself survives a restart.
                        let lasting = m.persistent && self.meta.durable;
                        d.accepted(&m.meta, ts, lasting.then_some(a.epoch));
                    }
                    if let Some(due) = due {
                        self.schedule(a.seq, due, 0, size);
                        continue;
                    }
                    let expires_at_ms = MetaView::peek_expiration_ms(&m.meta)
                        .map(|own| expiry_deadline(ts, own, self.meta.arguments.message_ttl_ms));
                    let priority = priority_of(&self.ready, &m.meta);
                    self.ready.push_new(a.seq, priority, expires_at_ms);
                }
                Err(e) => {
                    let err = RequestError::from(e);
                    rejections.push(Rejection {
                        seq: PublishSeq(m.publish_seq),
                        code: err.code,
                        message: err.message,
                    });
                }
            }
        }
        let stats = &self.meta.stats;
        stats.published.fetch_add(stored, Ordering::Relaxed);
        for r in &rejections {
            stats.refused.add(r.code, 1);
        }
        if !duplicates.is_empty() {
            let dropped = duplicates.len() as u64;
            stats
                .duplicates_dropped
                .fetch_add(dropped, Ordering::Relaxed);
            conn.send(ConnEvent::Duplicates {
                batch,
                seqs: duplicates,
            });
        }
        self.await_confirm(epoch, stored);
        conn.send(ConnEvent::Stored {
            batch,
            epoch,
            rejections,
        });
    }

    /// Journals the dedup ids whose messages are durable now (see `queue::dedup`).
    fn maintain_dedup(&mut self) {
        let durable = self.log().durability().durable_epoch();
        // A replicated queue's window forgets by the ops' clock, as every replica does.
        let now = self.replica.as_ref().map_or_else(now_ms, |r| r.clock_ms());
        if let Some(d) = &mut self.dedup {
            d.maintain(durable, now);
        }
    }

    /// Applies the length limits before a message of `size` bytes is added: drops (or
    /// dead-letters) the oldest ready messages, or returns why the message is refused.
    fn make_room(
        &mut self,
        size: u64,
        max_len: Option<u64>,
        max_bytes: Option<u64>,
        reject_when_full: bool,
    ) -> Option<String> {
        if max_len.is_none() && max_bytes.is_none() {
            return None;
        }
        loop {
            let over_len = max_len.is_some_and(|m| self.ready_count() + 1 > m);
            let over_bytes = max_bytes.is_some_and(|m| self.ready_bytes() + size > m);
            if !over_len && !over_bytes {
                return None;
            }
            if reject_when_full || self.ready_count() == 0 {
                return Some(match (over_len, max_len, max_bytes) {
                    (true, Some(m), _) => {
                        format!("queue '{}' is full ({m} messages)", self.meta.name)
                    }
                    (_, _, Some(m)) => format!("queue '{}' is full ({m} bytes)", self.meta.name),
                    _ => format!("queue '{}' is full", self.meta.name),
                });
            }
            if let Some(oldest) = self.ready.take_oldest() {
                self.dead_letter(oldest.seq, DeathReason::MaxLen);
            }
        }
    }

    /// Bytes of ready messages (meta + body).
    fn ready_bytes(&self) -> u64 {
        let live = self.log.as_ref().map_or(0, QueueLog::message_bytes);
        let chaos_held = self.chaos_held.bytes();
        live.saturating_sub(
            self.in_flight.bytes() + self.held.bytes() + self.scheduled_bytes + chaos_held,
        )
    }

    fn ready_count(&self) -> u64 {
        self.ready.len() as u64
    }

    fn ack_in_log(&mut self, seq: u64) {
        self.history.gone(seq, now_ms());
        self.span_forget(seq);
        match self.log().ack(seq) {
            Ok(()) | Err(StorageError::NotLive(_)) => {}
            Err(e) => tracing::warn!(queue = %self.meta.name, seq, error = %e, "ack failed"),
        }
        self.dirty = true;
    }

    /// Reads the next deliverable message: dead-letters expired ones on the way (the timer
    /// may not have fired yet).
    fn take_deliverable(&mut self) -> Option<Deliverable> {
        loop {
            let ReadyMessage {
                seq,
                count,
                priority,
            } = self.ready.take_next()?;
            let msg = match self.log().read(seq) {
                Ok(m) => m,
                Err(e) => {
                    tracing::error!(queue = %self.meta.name, seq, error = %e, "unreadable message skipped; see the recovery report");
                    continue;
                }
            };
            let queue_ttl = self.meta.arguments.message_ttl_ms;
            let own = MetaView::peek_expiration_ms(&msg.meta);
            let since = scheduled::ready_since_ms(msg.timestamp_ms, &msg.meta);
            let own_deadline = own.map(|own| expiry_deadline(since, own, queue_ttl));
            let deadline = own_deadline
                .or_else(|| queue_ttl.map(|_| expiry_deadline(since, u64::MAX, queue_ttl)));
            if let Some(deadline) = deadline {
                if deadline <= now_ms() {
                    self.dead_letter_at(seq, DeathReason::Expired, deadline);
                    continue;
                }
            }
            let delivery = Delivery {
                delivery_tag: DeliveryTag(0),
                redelivered: self.may_have_been_delivered(seq, count),
                delivery_count: count + 1,
                message_seq: seq,
                enqueued_at_ms: msg.timestamp_ms,
                meta: msg.meta,
                body: msg.body,
            };
            return Some(Deliverable {
                seq,
                count: count + 1,
                priority,
                expires_at_ms: own_deadline,
                delivery,
            });
        }
    }

    /// Records a delivery in flight; returns its tag.
    fn record_flight(
        &mut self,
        conn: &Arc<ConnLink>,
        consumer: Option<ConsumerId>,
        lease: Duration,
        d: &Deliverable,
    ) -> DeliveryTag {
        let (seq, count) = (d.seq, d.count);
        let tag = conn.take_tag();
        let delivered_at = Instant::now();
        self.in_flight.insert(
            seq,
            Delivered {
                conn: Arc::clone(conn),
                consumer,
                tag,
                deadline: delivered_at + lease,
                delivered_at,
                count,
                priority: d.priority,
                bytes: (d.delivery.meta.len() + d.delivery.body.len()) as u64,
                expires_at_ms: d.expires_at_ms,
                short_lease: false,
            },
        );
        self.note_handed_out(seq);
        self.note_delivered(seq, conn, consumer, tag, count, lease);
        if count > 1 {
            if let Err(e) = self.log().record_delivery_count(seq, count) {
                tracing::warn!(queue = %self.meta.name, seq, error = %e, "could not record a delivery count");
            }
            self.dirty = true;
        }
        tag
    }

    /// Whether message `seq`, delivered `count` times before, may have gone out already: the
    /// `redelivered` flag of its next delivery.
    fn may_have_been_delivered(&self, seq: u64, count: u32) -> bool {
        count > 0 || seq < self.maybe_delivered_below
    }

    /// Raises the delivered high-water mark to `seq`: after a crash, every message up to it
    /// is flagged `redelivered`, since it may have gone out (to a consumer or a move).
    fn note_handed_out(&mut self, seq: u64) {
        if seq > self.delivered_hwm {
            self.delivered_hwm = seq;
            self.log().set_delivered_hwm(seq);
            self.dirty = true;
        }
    }

    /// Hands ready messages to consumers with credit: round-robin, by consumer priority, or
    /// to the single active consumer (see [`Consumers::pick`]).
    fn pump(&mut self) {
        self.serve_getters();
        while self.ready_count() > 0 && !self.consumers.is_empty() {
            let Some(idx) = self.consumers.pick() else {
                return;
            };
            let c = self.consumers.get(idx);
            let credit = c.credit();
            let conn = Arc::clone(&c.conn);
            let consumer_id = c.id;
            let lease = c.lease;
            let mut deliveries = Vec::with_capacity(credit.min(64) as usize);
            // At most one message past the connection's room: its outbox stays bounded. (Its
            // credit was checked just now; at least one goes even if the room closed since.)
            let room = conn.outbox.room().max(1);
            let mut outbox_bytes = 0;
            // Deliveries that take credit: not the extra ones of chaos's duplicate mode.
            let mut taken = 0;
            while taken < credit as usize && outbox_bytes < room {
                let Some(mut d) = self.take_deliverable() else {
                    break;
                };
                // One branch when no chaos injection runs (queue/chaos.rs).
                let mut chaos = None;
                if self.chaos.is_some() {
                    let Some(c) = self.chaos_divert(&d) else {
                        continue;
                    };
                    chaos = Some(c);
                }
                // A short lease never lengthens the consumer's own.
                let lease = chaos
                    .and_then(|c| c.short_lease)
                    .map_or(lease, |short| short.min(lease));
                outbox_bytes += delivery_bytes(&d.delivery);
                d.delivery.delivery_tag = self.record_flight(&conn, Some(consumer_id), lease, &d);
                taken += 1;
                if let Some(c) = chaos {
                    if c.short_lease.is_some() {
                        self.in_flight.mark_short_lease(d.seq);
                    }
                    if c.duplicate {
                        let extra = self.chaos_duplicate(&conn, &d.delivery);
                        outbox_bytes += delivery_bytes(&extra);
                        deliveries.push(d.delivery);
                        deliveries.push(extra);
                        continue;
                    }
                }
                deliveries.push(d.delivery);
            }
            self.consumers.get_mut(idx).unacked += taken as u32;
            if deliveries.is_empty() {
                return;
            }
            self.count_deliveries(&deliveries);
            conn.outbox.add(outbox_bytes);
            conn.send(ConnEvent::Deliver {
                consumer_id,
                queue: self.handle.clone(),
                deliveries,
            });
        }
    }

    fn get(&mut self, conn: &Arc<ConnLink>, request_id: RequestId) {
        if self.exclusive_consumer {
            conn.send(ConnEvent::Error {
                request_id,
                error: RequestError::new(
                    ErrorCode::ResourceLocked,
                    format!("queue '{}' has an exclusive consumer", self.meta.name),
                ),
            });
            return;
        }
        let delivery = self.take_deliverable().map(|mut d| {
            d.delivery.delivery_tag = self.record_flight(conn, None, self.default_lease, &d);
            d.delivery
        });
        if let Some(d) = &delivery {
            self.count_deliveries(std::slice::from_ref(d));
        }
        conn.send(ConnEvent::Got {
            request_id,
            queue: self.handle.clone(),
            ready: self.ready_count(),
            delivery,
        });
    }

    fn settle(
        &mut self,
        conn: &Arc<ConnLink>,
        request_id: RequestId,
        deliveries: &[(u64, u64)],
        how: Settlement,
        reason: Option<Arc<str>>,
    ) {
        let mut unknown = None;
        let mut settled = 0;
        // A replicated queue deletes messages through its group (`replica.rs`).
        let replicated = self.replica.is_some();
        let mut deleted = Vec::new();
        // Delivery→ack times, added to the broker-wide histogram once per batch.
        let histogram = Arc::clone(&self.metrics);
        let histogram = &histogram.delivery_ack;
        let mut ack_times = histogram.tally();
        let now = Instant::now();
        let mut tally = Tally::default();
        let outcome = Outcome::of(how).filter(|_| self.breaking());
        for &(tag, seq) in deliveries {
            // An extra delivery of chaos's duplicate mode: settled, with no effect on the
            // message (its real delivery decides).
            if self.chaos_extra.settle(conn.id, tag) {
                continue;
            }
            let tag = DeliveryTag(tag);
            if !self.in_flight.holds(seq, conn.id, tag) {
                unknown.get_or_insert(tag);
                continue;
            }
            settled += 1;
            self.note_settled(seq, conn.id, how, reason.as_ref());
            if let Some(outcome) = outcome {
                if let Some(consumer) = self.in_flight.consumer_of(seq) {
                    tally.add(conn.id, consumer, outcome);
                }
            }
            match how {
                Settlement::Ack => {
                    if let Some(f) = self.take_flight(seq) {
                        histogram.tally_duration(&mut ack_times, now - f.delivered_at);
                    }
                    if replicated {
                        deleted.push(seq);
                    } else {
                        self.ack_in_log(seq);
                    }
                }
                // No delays and no dead-letter exchange in the replicated mode yet: a delayed
                // requeue is a requeue, a reject deletes.
                Settlement::RequeueAfter(_) if replicated => {
                    self.return_delivery(seq);
                }
                Settlement::Reject if replicated => {
                    self.take_flight(seq);
                    deleted.push(seq);
                }
                Settlement::Requeue => {
                    self.return_delivery(seq);
                }
                Settlement::RequeueAfter(delay_ms) => {
                    if let Some(d) = self.take_flight(seq) {
                        self.requeue_with(seq, d, Some(delay_ms));
                    }
                }
                Settlement::Release => self.release_delivery(seq),
                Settlement::Reject => {
                    self.take_flight(seq);
                    self.dead_letter(seq, DeathReason::Rejected);
                }
            }
        }
        histogram.add(&ack_times);
        if outcome.is_some() {
            self.apply_tally(tally);
        }
        let stats = &self.meta.stats;
        let counter = match how {
            Settlement::Ack => &stats.acked,
            Settlement::Requeue | Settlement::RequeueAfter(_) | Settlement::Release => {
                &stats.nacked
            }
            Settlement::Reject => &stats.rejected,
        };
        counter.fetch_add(settled, Ordering::Relaxed);
        if replicated {
            self.propose_settle(deleted);
        }
        if let Some(tag) = unknown {
            conn.send(unknown_tag(request_id, tag));
        }
    }

    /// Removes a delivery from flight and gives its consumer the credit back.
    fn take_flight(&mut self, seq: u64) -> Option<Delivered> {
        let d = self.in_flight.take(seq)?;
        self.give_credit_back(&d);
        Some(d)
    }

    fn give_credit_back(&mut self, d: &Delivered) {
        if let Some(id) = d.consumer {
            if let Some(c) = self
                .consumers
                .find_mut(|c| c.conn.id == d.conn.id && c.id == id)
            {
                c.unacked = c.unacked.saturating_sub(1);
            }
        }
    }

    /// Puts a delivered message back in the ready set, ahead of newer messages, or after the
    /// queue's `retry_backoff`; returns its tag if it was in flight. Past the queue's delivery
    /// limit it is dead-lettered instead.
    fn return_delivery(&mut self, seq: u64) -> Option<DeliveryTag> {
        let d = self.take_flight(seq)?;
        let tag = d.tag;
        self.requeue(seq, d);
        Some(tag)
    }

    /// Makes a delivery taken out of flight ready again (after the queue's `retry_backoff`),
    /// or dead-letters it past the queue's delivery limit.
    fn requeue(&mut self, seq: u64, d: Delivered) {
        self.requeue_with(seq, d, None);
    }

    /// As [`requeue`](Self::requeue), waiting `delay_ms` (the queue's backoff when `None`)
    /// before the message is ready again.
    fn requeue_with(&mut self, seq: u64, d: Delivered, delay_ms: Option<u64>) {
        match self.meta.arguments.delivery_limit {
            Some(limit) if d.count >= limit => self.dead_letter(seq, DeathReason::DeliveryLimit),
            _ => {
                let backoff = self.meta.arguments.retry_backoff;
                let delay = delay_ms.or_else(|| backoff.map(|b| b.delay_ms(d.count)));
                if let Some(delay) = delay.filter(|&ms| ms > 0) {
                    return self.requeue_after(seq, d.count, d.bytes, delay);
                }
                self.ready
                    .push_returned(seq, d.count, d.priority, d.expires_at_ms);
            }
        }
    }

    /// Gives a delivery back uncounted (`Extend` to 0, protocol.md §10.4): ready at once with
    /// the count it had before, whatever the delivery limit and the backoff.
    fn release_delivery(&mut self, seq: u64) {
        if let Some(d) = self.take_flight(seq) {
            self.ready
                .push_returned(seq, d.count.saturating_sub(1), d.priority, d.expires_at_ms);
        }
    }

    fn expire_leases(&mut self) {
        let now = Instant::now();
        let mut expired: HashMap<ConnId, (Arc<ConnLink>, Vec<u64>)> = HashMap::new();
        let mut tally = Tally::default();
        while let Some((seq, d)) = self.in_flight.take_expired(now) {
            self.note_lease_expired(seq, d.conn.id);
            if d.short_lease {
                let early = &self.meta.stats.chaos.leases_expired_early;
                early.fetch_add(1, Ordering::Relaxed);
            }
            self.give_credit_back(&d);
            if let Some(consumer) = d.consumer.filter(|_| self.breakers > 0) {
                tally.add(d.conn.id, consumer, Outcome::LeaseTimeout);
            }
            expired
                .entry(d.conn.id)
                .or_insert_with(|| (Arc::clone(&d.conn), Vec::new()))
                .1
                .push(d.tag.0);
            self.requeue(seq, d);
        }
        for (_, (conn, tags)) in expired {
            conn.send(ConnEvent::LeasesExpired { tags });
        }
        self.apply_tally(tally);
    }

    /// Recounts the consumers with a circuit breaker after some left.
    fn forget_breakers(&mut self) {
        if self.breakers > 0 {
            self.breakers = self
                .consumers
                .iter()
                .filter(|(c, _)| c.breaker.is_some())
                .count();
            self.count_open_circuits();
        }
    }

    /// Stops a consumer for the server and takes back its deliveries (they go to the other
    /// consumers); true when the task must stop (an auto-delete queue lost its last one).
    fn stop_consumer(
        &mut self,
        conn: &Arc<ConnLink>,
        id: ConsumerId,
        code: ErrorCode,
        reason: String,
    ) -> bool {
        let known = self.consumers.any(|c| c.conn.id == conn.id && c.id == id);
        if !known {
            // Cancelled meanwhile: its connection was answered already.
            return false;
        }
        self.remove_consumer(conn.id, id);
        let tags = self
            .in_flight
            .held_by(conn.id, Some(id))
            .into_iter()
            .filter_map(|seq| {
                self.note_returned(seq, ReturnCause::ConsumerCancelled);
                self.return_delivery(seq)
            })
            .map(|tag| tag.0)
            .collect();
        conn.send(ConnEvent::LeasesExpired { tags });
        conn.send(ConnEvent::ConsumerStopped {
            consumer_id: id,
            code,
            reason,
        });
        self.auto_delete_if_unused()
    }

    fn remove_consumer(&mut self, conn_id: ConnId, id: ConsumerId) {
        self.consumers
            .remove_where(|c| c.conn.id == conn_id && c.id == id);
        self.forget_breakers();
        self.publish_consumers();
        self.note_if_unused();
        if self.consumers.is_empty() {
            self.exclusive_consumer = false;
        }
    }

    /// Deletes an auto-delete queue whose last consumer went; true when the task must stop.
    fn auto_delete_if_unused(&mut self) -> bool {
        if !(self.meta.auto_delete && self.had_consumer && self.consumers.is_empty()) {
            return false;
        }
        self.delete_or_log("its last consumer went (auto-delete)")
    }

    /// A deletion the server decided on: true when done; otherwise the queue stays as it was,
    /// and the next occasion (or the next start, for a transient queue) tries again.
    fn delete_or_log(&mut self, why: &str) -> bool {
        match self.delete() {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(queue = %self.meta.name, error = %e,
                    "could not delete the queue after {why}; it stays for now");
                false
            }
        }
    }

    fn purge(&mut self) -> u64 {
        let n = self.ready_count() + self.purge_scheduled() + self.purge_chaos_held();
        let seqs = self.ready.drain();
        for seq in seqs {
            self.note_purged(seq);
            self.ack_in_log(seq);
        }
        n
    }

    /// Removes the queue from the broker (durably), stops its consumers and deletes its log.
    /// When the removal cannot be recorded nothing happens: the log stays, since the topology
    /// on disk still names it.
    fn delete(&mut self) -> Result<(), RequestError> {
        if let Some(broker) = self.broker.upgrade() {
            tokio::task::block_in_place(|| broker.forget_queue(&self.meta))?;
        }
        // The broker's totals keep what this queue counted.
        self.metrics.retire(&self.meta.stats);
        for c in self.consumers.drain() {
            c.conn.send(ConnEvent::ConsumerStopped {
                consumer_id: c.id,
                code: ErrorCode::QueueDeleted,
                reason: format!("queue '{}' was deleted", self.meta.name),
            });
        }
        self.cancel_getters();
        self.in_flight.clear();
        self.ready.clear();
        self.schedule.clear();
        self.chaos_held.clear();
        if let Some(injection) = self.chaos.take() {
            injection.end(&self.meta.stats.chaos);
        }
        if let Some(log) = self.log.take() {
            match self.broker.upgrade() {
                Some(broker) => {
                    if let Err(e) = broker.store().delete_queue(log) {
                        tracing::error!(queue = %self.meta.name, error = %e, "could not delete the queue's log");
                    }
                }
                None => drop(log),
            }
        }
        Ok(())
    }

    /// Writes pending acks at most every [`ACK_FLUSH_INTERVAL`]: acks are lazy (an ack lost in
    /// a crash only means a redelivery), and an ack log written in every round would add a
    /// second file to nearly every group commit that publishers wait for.
    fn flush(&mut self) {
        if self.dirty && (self.flush_due_soon || self.last_flush.elapsed() >= ACK_FLUSH_INTERVAL) {
            self.flush_now();
        }
    }

    fn flush_now(&mut self) {
        self.dirty = false;
        self.flush_due_soon = false;
        self.last_flush = Instant::now();
        if let Some(log) = self.log.as_mut() {
            if let Err(e) = log.flush() {
                tracing::warn!(queue = %self.meta.name, error = %e, "could not write acks");
            }
        }
    }

    /// After the task's last command: answers what is still in the mailbox as a deleted queue
    /// would, so no publisher waits forever.
    fn close(&mut self, rx: &mut mpsc::UnboundedReceiver<QueueCmd>) {
        rx.close();
        while let Ok(cmd) = rx.try_recv() {
            match cmd {
                QueueCmd::Publish { conn, batch, .. } => conn.send(ConnEvent::Stored {
                    batch,
                    epoch: 0,
                    rejections: Vec::new(),
                }),
                QueueCmd::Consume {
                    conn, request_id, ..
                }
                | QueueCmd::Get { conn, request_id }
                | QueueCmd::GetMany {
                    conn, request_id, ..
                }
                | QueueCmd::Inspect { conn, request_id }
                | QueueCmd::Purge { conn, request_id }
                | QueueCmd::Browse {
                    conn, request_id, ..
                }
                | QueueCmd::ListScheduled {
                    conn, request_id, ..
                }
                | QueueCmd::CancelScheduled {
                    conn, request_id, ..
                } => conn.send(ConnEvent::Error {
                    request_id,
                    error: RequestError::no_queue(&self.meta.name),
                }),
                QueueCmd::Cancel {
                    conn,
                    consumer_id,
                    request_id: Some(request_id),
                } => conn.send(ConnEvent::Cancelled {
                    request_id,
                    consumer_id,
                }),
                QueueCmd::Delete { reply, .. } => {
                    let _ = reply.send(Ok(0));
                }
                _ => {}
            }
        }
        self.flush_now();
        self.log = None;
    }
}

fn unknown_tag(request_id: RequestId, tag: DeliveryTag) -> ConnEvent {
    ConnEvent::Error {
        request_id,
        error: RequestError::new(
            ErrorCode::UnknownDeliveryTag,
            format!("delivery tag {tag} is not outstanding on this connection"),
        ),
    }
}

/// The priority level of a message with meta block `meta` in `ready`: 0 without priorities,
/// where the meta block is not even looked at.
fn priority_of(ready: &ReadySet, meta: &[u8]) -> u8 {
    if ready.has_priorities() {
        MetaView::peek_priority(meta).unwrap_or(0)
    } else {
        0
    }
}

/// When a message stored at `enqueued_at_ms` with its own TTL `own_ms` expires, given the
/// queue's TTL (the shorter one wins).
fn expiry_deadline(enqueued_at_ms: u64, own_ms: u64, queue_ttl_ms: Option<u64>) -> u64 {
    enqueued_at_ms.saturating_add(queue_ttl_ms.map_or(own_ms, |q| q.min(own_ms)))
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d.into()).await,
        None => std::future::pending().await,
    }
}
