//! The state of one connection and the handling of every request (protocol.md §5–§10).

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice_client::wire::{
    Ack, Blocked, Cancel, CancelOk, Close, Confirm, Consume, ConsumerCancelled, ConsumerId,
    DecodeError, Deliver, Delivery, ErrorCode, ErrorReply, Extend, Frame, FrameBody, GetOk, Nack,
    Publish, PublishRejected, PublishSeq, Rejection, Reply, Request, RequestId,
};
use tokio::sync::{mpsc, oneshot, watch};

mod get_many;
mod topology;

use super::access::Access;
use super::limits;
use super::output::Output;
use super::{
    Agreed, CloseReason, ConnectionEntry, ConnectionRegistry, ConnectionStats, Control, ReadEvent,
};
use crate::auth::{Permission, Principal, ResourceKind, Tag, VhostLimits};
use crate::broker::Broker;
use crate::error::RequestError;
use crate::metrics::Metrics;
use crate::publish::{route_message, PublishLimits};
use crate::queue::{
    delivery_bytes, BrowsePage, ConnEvent, ConnLink, Incoming, QueueCmd, QueueHandle, Settlement,
};
use crate::routing::RouteResult;
use crate::storage::Epoch;

/// Fixed bytes of a `Deliver` frame (protocol.md §9.5).
const DELIVER_FRAME_FIXED: usize = 12 + 4 + 4;

/// A publish frame on its way through the queues.
struct Batch {
    id: u64,
    up_to: u64,
    waiting: usize,
    epoch: Epoch,
    bytes: usize,
    rejections: Vec<Rejection>,
    /// When the frame reached the session, and its messages: for the publish→confirm time.
    received: Instant,
    messages: u64,
}

/// Publishes handed to the confirm task: confirmed once `epoch` is durable.
struct ToConfirm {
    up_to: u64,
    epoch: Epoch,
    received: Instant,
    messages: u64,
}

/// A publish frame's messages, numbered and routed.
struct Routed {
    /// What goes to each queue.
    per_queue: Vec<(QueueHandle, Vec<Incoming>)>,
    /// Messages refused before they reached a queue.
    rejections: Vec<Rejection>,
    /// Bytes of messages handed to queues (counted once per queue).
    bytes: usize,
}

struct ConsumerEntry {
    queue: QueueHandle,
    tag: String,
}

/// Whether the session goes on after an event.
enum Ending {
    /// Keep going.
    No,
    /// Stop now: the socket is gone, a `Close` was exchanged, or a connection error was sent.
    Now,
}

pub(super) struct Session {
    broker: Arc<Broker>,
    /// Who is logged in, in which vhost: every request passes through it.
    access: Access,
    link: Arc<ConnLink>,
    /// The peer's address as the log shows it.
    peer: String,
    events: mpsc::UnboundedReceiver<ConnEvent>,
    agreed: Agreed,
    output: Output,
    /// Frames read but not handled yet: a batch is handled only while the outbox has room,
    /// the rest waits here (at most one read's worth).
    unread: VecDeque<Result<Frame<Request>, DecodeError>>,
    last_recv: Arc<AtomicU64>,
    started: Instant,
    /// This connection in the server's registry: its counters for operators.
    entry: Arc<ConnectionEntry>,
    /// Every connection: what this one's operator requests list and act on.
    registry: Arc<ConnectionRegistry>,
    // Publishing.
    next_publish_seq: u64,
    next_batch: u64,
    batches: VecDeque<Batch>,
    /// Bytes of publishes not yet confirmed; the session stops reading at the connection's
    /// `max_unsettled_publish_bytes` (TCP back-pressure to the publisher).
    unsettled_bytes: usize,
    /// Bytes of the frames handed to the confirm task, by the last sequence number each
    /// covers: released from `unsettled_bytes` when the confirm covering them is sent.
    confirming: VecDeque<(u64, usize)>,
    to_confirm: mpsc::UnboundedSender<ToConfirm>,
    /// Rejections of batches handed to the confirm task, emitted before the covering confirm.
    rejections: VecDeque<Rejection>,
    confirmed: u64,
    // Consuming.
    next_consumer: u32,
    consumers: HashMap<u32, ConsumerEntry>,
    pending_consumes: HashMap<RequestId, u32>,
    /// `GetMany` requests a queue has not answered yet (bounded, protocol.md §9.7).
    waiting_gets: HashSet<RequestId>,
    outstanding: BTreeMap<u64, (QueueHandle, u64)>,
    touched: Vec<QueueHandle>,
    /// Names of the exclusive queues this connection declared: deleted when it ends.
    exclusive_queues: Vec<String>,
    // Closing.
    client_close: Option<RequestId>,
    /// The first `Close` sent or received: what the connection's last log line says.
    close_reason: Option<CloseReason>,
    /// The operator who closed this connection, told once its deliveries are on their way
    /// back to their queues (so what the operator does next sees them there).
    closed_by_operator: Option<oneshot::Sender<()>>,
}

impl Session {
    /// The session of the connection `entry` (its number comes from there; `peer` is its
    /// address as the log shows it).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        broker: Arc<Broker>,
        limits: VhostLimits,
        entry: Arc<ConnectionEntry>,
        registry: Arc<ConnectionRegistry>,
        peer: String,
        agreed: Agreed,
        principal: Principal,
        output: Output,
        last_recv: Arc<AtomicU64>,
        started: Instant,
    ) -> Self {
        let (events_tx, events) = mpsc::unbounded_channel();
        let link = ConnLink::new(entry.id, events_tx, Arc::clone(output.outbox()));
        let (to_confirm, confirm_rx) = mpsc::unbounded_channel();
        tokio::spawn(confirm_task(
            broker.store().durability().clone(),
            confirm_rx,
            Arc::clone(&link),
            Arc::clone(broker.metrics()),
        ));
        let access = Access::new(entry.id, principal, limits);
        broker.open_vhost(access.namespace());
        Self {
            broker,
            access,
            link,
            peer,
            events,
            agreed,
            output,
            unread: VecDeque::new(),
            last_recv,
            started,
            entry,
            registry,
            next_publish_seq: 1,
            next_batch: 1,
            batches: VecDeque::new(),
            unsettled_bytes: 0,
            confirming: VecDeque::new(),
            to_confirm,
            rejections: VecDeque::new(),
            confirmed: 0,
            next_consumer: 1,
            consumers: HashMap::new(),
            pending_consumes: HashMap::new(),
            waiting_gets: HashSet::new(),
            outstanding: BTreeMap::new(),
            touched: Vec::new(),
            exclusive_queues: Vec::new(),
            client_close: None,
            close_reason: None,
            closed_by_operator: None,
        }
    }

    pub(super) async fn run(
        mut self,
        mut frames: mpsc::Receiver<ReadEvent>,
        mut control: mpsc::Receiver<Control>,
        mut shutdown: watch::Receiver<bool>,
    ) -> CloseReason {
        let tick_every = self.agreed.heartbeat.map_or(Duration::from_secs(1), |h| {
            (h / 4).max(Duration::from_millis(100))
        });
        let mut flow = self.broker.flow();
        if let Some(b) = flow.borrow_and_update().clone() {
            self.send(
                RequestId(0),
                Blocked {
                    code: b.code,
                    reason: b.reason,
                },
            );
        }
        let mut tick = tokio::time::interval(tick_every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let takes_requests = self.takes_requests();
            if takes_requests && !self.unread.is_empty() {
                let ending = self.on_unread().await;
                if self.end_round(ending) {
                    break;
                }
                continue;
            }
            let ending = tokio::select! {
                biased;
                // The entry holds a sender while the session runs: never closed here.
                Some(request) = control.recv() => self.on_control(request),
                event = self.events.recv() => {
                    // The session holds a sender (in its link), so the channel never closes.
                    let mut ending = event.map_or(Ending::No, |e| self.on_event(e));
                    while matches!(ending, Ending::No) {
                        match self.events.try_recv() {
                            Ok(e) => ending = self.on_event(e),
                            Err(_) => break,
                        }
                    }
                    ending
                }
                _ = self.output.outbox().drained() => self.on_drained(),
                read = frames.recv(), if takes_requests => match read {
                    Some(ReadEvent::Frames(batch)) => {
                        self.unread.extend(batch);
                        self.on_unread().await
                    }
                    Some(ReadEvent::Closed) | None => Ending::Now,
                },
                _ = self.output.writer_room(), if self.output.has_pending() => Ending::No,
                // Also ends a session that stopped reading requests from a peer that left.
                _ = self.output.writer_gone() => Ending::Now,
                _ = sleep_until_opt(self.output.stall_deadline()) => self.on_stall_deadline(),
                _ = tick.tick() => self.on_tick(),
                Ok(()) = flow.changed() => {
                    match flow.borrow_and_update().clone() {
                        Some(b) => self.send(RequestId(0), Blocked { code: b.code, reason: b.reason }),
                        None => self.send(RequestId(0), Reply::Unblocked),
                    }
                    Ending::No
                }
                _ = shutdown.changed() => {
                    self.close_with(ErrorCode::ConnectionForced, "the server is shutting down");
                    Ending::Now
                }
            };
            if self.end_round(ending) {
                break;
            }
        }
        self.cleanup();
        if let Some(done) = self.closed_by_operator.take() {
            let _ = done.send(());
        }
        self.close_reason
            .take()
            .unwrap_or(CloseReason::SocketClosed)
    }

    /// Whether the session handles request frames now: not while the socket owes too much
    /// (the peer is not reading its replies), nor while too many publishes are unsettled (a
    /// slow queue slows its publishers), nor after the client's `Close`. Unread frames then
    /// wait in the reader's channel and the socket, which slows the client down.
    fn takes_requests(&self) -> bool {
        !self.output.is_full()
            && self.unsettled_bytes < self.broker.config.limits.max_unsettled_publish_bytes
            && self.client_close.is_none()
    }

    /// After each round: answers a pending client `Close` once it may, hands the output to
    /// the writer and notes whether the outbox is full; true when the session ends.
    fn end_round(&mut self, ending: Ending) -> bool {
        let ending = match ending {
            Ending::No => self.check_client_close(),
            e => e,
        };
        self.output.flush();
        self.output.observe();
        self.publish_counters();
        matches!(ending, Ending::Now)
    }

    /// The outbox drained: the stall is over, and the queues may deliver to this connection's
    /// consumers again.
    fn on_drained(&mut self) -> Ending {
        self.output.drained();
        let mut queues: Vec<&QueueHandle> = Vec::new();
        for entry in self.consumers.values() {
            if !queues.iter().any(|q| q.same(&entry.queue)) {
                queues.push(&entry.queue);
            }
        }
        for q in queues {
            q.send(QueueCmd::Resume);
        }
        Ending::No
    }

    /// The outbox has stayed full for the slow-consumer timeout: the peer does not read what
    /// it asked for, so it is disconnected and its deliveries go to other consumers.
    fn on_stall_deadline(&mut self) -> Ending {
        let stalled = self.output.stalled_for();
        if !self.output.is_slow_consumer() {
            return Ending::No;
        }
        let owed = self.output.outbox().bytes();
        tracing::warn!(
            conn = self.link.id,
            peer = self.peer,
            user = self.access.principal().user,
            vhost = %self.access.principal().vhost,
            owed_bytes = owed,
            stalled_ms = stalled.as_millis() as u64,
            "slow consumer: its socket stayed full; closing the connection"
        );
        self.close_with(
            ErrorCode::SlowConsumer,
            &format!(
                "slow consumer: {owed} bytes unread for {} ms",
                stalled.as_millis()
            ),
        );
        Ending::Now
    }

    /// An operator's request for this connection (through the registry).
    fn on_control(&mut self, request: Control) -> Ending {
        match request {
            Control::Close { reason, done } => {
                tracing::info!(
                    conn = self.link.id,
                    peer = self.peer,
                    user = self.access.principal().user,
                    vhost = %self.access.principal().vhost,
                    reason,
                    "an operator closes the connection"
                );
                self.close_with(ErrorCode::ConnectionForced, &reason);
                self.closed_by_operator = Some(done);
                Ending::Now
            }
            Control::CancelConsumer { tag, done } => {
                let _ = done.send(self.stop_consumer(&tag));
                Ending::No
            }
        }
    }

    /// Asks the queue of the consumer tagged `tag` to stop it for an operator: the queue
    /// takes back its deliveries and answers `ConsumerStopped`, which the client sees as
    /// `ConsumerCancelled`.
    fn stop_consumer(&mut self, tag: &str) -> Result<(), RequestError> {
        let Some((&id, entry)) = self.consumers.iter().find(|(_, e)| e.tag == tag) else {
            return Err(RequestError::new(
                ErrorCode::NotFound,
                format!("connection {} has no consumer '{tag}'", self.link.id),
            ));
        };
        tracing::info!(
            conn = self.link.id,
            consumer_tag = tag,
            "an operator cancels a consumer"
        );
        // A queue that is gone has stopped the consumer already (QUEUE_DELETED).
        entry.queue.send(QueueCmd::StopConsumer {
            conn: Arc::clone(&self.link),
            consumer_id: ConsumerId(id),
            code: ErrorCode::ConsumerCancelled,
            reason: format!("consumer '{tag}' was cancelled by an operator"),
        });
        Ok(())
    }

    /// Runs an operator's request on another connection without waiting for it here (the
    /// target may be this very session, or one waiting on this one), and answers `id` with
    /// `ok` or the error once it is done.
    fn answer_later<F>(&self, id: RequestId, ok: Reply, act: F)
    where
        F: std::future::Future<Output = Result<(), RequestError>> + Send + 'static,
    {
        let link = Arc::clone(&self.link);
        tokio::spawn(async move {
            let event = match act.await {
                Ok(()) => ConnEvent::Reply {
                    request_id: id,
                    reply: ok,
                },
                Err(error) => ConnEvent::Error {
                    request_id: id,
                    error,
                },
            };
            link.send(event);
        });
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    fn on_tick(&mut self) -> Ending {
        let Some(h) = self.agreed.heartbeat else {
            return Ending::No;
        };
        if !self.takes_requests() {
            // Not reading is the server's choice (backpressure): the peer's silence means
            // nothing until it reads again. A peer that never drains is a slow consumer.
            self.mark_alive();
        }
        let silent_ms = self
            .now_ms()
            .saturating_sub(self.last_recv.load(Ordering::Relaxed));
        // Twice the interval, plus a little for scheduling jitter (§5.3).
        if Duration::from_millis(silent_ms) > h * 2 + h / 10 {
            self.close_with(
                ErrorCode::HeartbeatTimeout,
                "no data received for two heartbeat intervals",
            );
            return Ending::Now;
        }
        if self.output.last_sent().elapsed() >= h {
            self.send(RequestId(0), Reply::Heartbeat);
        }
        Ending::No
    }

    /// Counts the peer as heard from now.
    fn mark_alive(&self) {
        self.last_recv.store(self.now_ms(), Ordering::Relaxed);
    }

    // ------------------------------------------------------------------------------------
    // Output
    // ------------------------------------------------------------------------------------

    /// Queues a frame. A reply that cannot be encoded (a field or the frame too long for this
    /// connection) is replaced by an `INTERNAL_ERROR` naming the same request, so the client
    /// is never left waiting for an answer that was dropped.
    fn send(&mut self, request_id: RequestId, reply: impl Into<Reply>) {
        let frame = Frame::<Reply>::new(request_id, reply);
        ConnectionStats::add(&self.entry.stats.frames_out, 1);
        let Err(e) = self.output.send(&frame) else {
            return;
        };
        let opcode = frame.body.opcode();
        tracing::error!(conn = self.link.id, request = %request_id, ?opcode, error = %e, "could not encode a reply");
        if request_id == RequestId::NONE {
            // An unsolicited frame: there is no request to answer.
            return;
        }
        let error = ErrorReply {
            code: ErrorCode::InternalError,
            message: format!("the {opcode:?} reply could not be sent: {e}"),
        };
        if let Err(e) = self.output.send(&Frame::<Reply>::new(request_id, error)) {
            // A short message in a frame of at least 64 KiB: cannot happen.
            tracing::error!(conn = self.link.id, error = %e, "could not encode an error reply");
        }
    }

    fn send_error(&mut self, request_id: RequestId, e: RequestError) {
        let e = self.access.localize(e);
        self.send(
            request_id,
            ErrorReply {
                code: e.code,
                message: e.message,
            },
        );
    }

    /// Publishes the counters the session keeps itself, once per round rather than per
    /// change: operators look a few times a second.
    fn publish_counters(&self) {
        let stats = &self.entry.stats;
        let unsettled = (self.next_publish_seq - 1).saturating_sub(self.confirmed);
        stats
            .unsettled_publishes
            .store(unsettled, Ordering::Relaxed);
        stats
            .consumers
            .store(self.consumers.len() as u64, Ordering::Relaxed);
    }

    /// Sends a connection-level `Close` (no `CloseOk` awaited: §5.4).
    fn close_with(&mut self, code: ErrorCode, reason: &str) {
        tracing::info!(
            conn = self.link.id,
            code = code.name(),
            reason,
            "closing connection"
        );
        self.close_reason
            .get_or_insert_with(|| CloseReason::Server {
                code,
                reason: reason.to_owned(),
            });
        self.send(
            RequestId(0),
            Close {
                code: Some(code),
                reason: reason.into(),
            },
        );
    }

    // ------------------------------------------------------------------------------------
    // Requests
    // ------------------------------------------------------------------------------------

    /// Handles read frames while the session takes requests; the rest stay in `unread`.
    async fn on_unread(&mut self) -> Ending {
        while self.takes_requests() {
            let Some(item) = self.unread.pop_front() else {
                break;
            };
            let frame = match item {
                Ok(f) => f,
                Err(e) if e.is_fatal() => {
                    self.close_with(e.error_code(), &e.to_string());
                    return Ending::Now;
                }
                Err(e) => {
                    let request_id = e.request_id().unwrap_or(RequestId(0));
                    let code = e.error_code();
                    self.send_error(request_id, RequestError::new(code, e.to_string()));
                    continue;
                }
            };
            if let Ending::Now = self.on_request(frame.request_id, frame.body).await {
                return Ending::Now;
            }
        }
        Ending::No
    }

    async fn on_request(&mut self, id: RequestId, req: Request) -> Ending {
        match req {
            Request::Hello(_) => {
                self.close_with(ErrorCode::UnexpectedFrame, "a second Hello");
                return Ending::Now;
            }
            Request::Heartbeat => {}
            Request::Close(c) => {
                tracing::debug!(conn = self.link.id, code = ?c.code, reason = %c.reason, "client closes");
                self.client_close = Some(id);
                self.close_reason.get_or_insert(CloseReason::Client {
                    code: c.code,
                    reason: c.reason,
                });
            }
            Request::CloseOk => return Ending::Now,
            Request::Publish(p) => self.on_publish(p).await,
            Request::DeclareQueue(d) => self.on_declare_queue(id, d),
            Request::DeleteQueue(d) => self.on_delete_queue(id, d).await,
            Request::PurgeQueue(p) => {
                self.with_queue(id, Permission::Read, &p.name, |link| QueueCmd::Purge {
                    conn: link,
                    request_id: id,
                })
            }
            Request::InspectQueue(p) => {
                if let Err(e) = self.access.check_any(ResourceKind::Queue, &p.name) {
                    return self.refuse(id, e);
                }
                self.with_queue(id, None, &p.name, |link| QueueCmd::Inspect {
                    conn: link,
                    request_id: id,
                })
            }
            Request::DeclareExchange(d) => self.on_declare_exchange(id, d),
            Request::DeleteExchange(d) => {
                let name =
                    match self
                        .access
                        .grant(Permission::Configure, ResourceKind::Exchange, &d.name)
                    {
                        Ok(name) => name.into_owned(),
                        Err(e) => return self.refuse(id, e),
                    };
                let broker = Arc::clone(&self.broker);
                match tokio::task::block_in_place(|| broker.delete_exchange(&name, d.if_unused)) {
                    Ok(()) => self.send(id, Reply::DeleteExchangeOk),
                    Err(e) => self.send_error(id, e),
                }
            }
            Request::Bind(b) => {
                self.on_bind(id, b.queue, b.exchange, b.routing_key, b.arguments, true)
            }
            Request::Unbind(b) => {
                self.on_bind(id, b.queue, b.exchange, b.routing_key, b.arguments, false)
            }
            Request::Consume(c) => self.on_consume(id, c),
            Request::Cancel(c) => self.on_cancel(id, c),
            Request::SetPrefetch(p) => match self.consumers.get(&p.consumer_id.0) {
                Some(entry) => {
                    entry.queue.send(QueueCmd::SetPrefetch {
                        conn_id: self.link.id,
                        consumer_id: p.consumer_id,
                        prefetch: self.broker.config.limits.effective_prefetch(p.prefetch),
                    });
                }
                None => self.send_error(id, no_consumer(p.consumer_id)),
            },
            Request::Get(g) => {
                self.with_queue(id, Permission::Read, &g.queue, |link| QueueCmd::Get {
                    conn: link,
                    request_id: id,
                })
            }
            Request::GetMany(g) => self.on_get_many(id, g),
            Request::Ack(Ack {
                delivery_tag,
                multiple,
            }) => self.settle(id, delivery_tag.0, multiple, Settlement::Ack),
            Request::Nack(Nack {
                delivery_tag,
                multiple,
                requeue,
            }) => {
                let how = if requeue {
                    Settlement::Requeue
                } else {
                    Settlement::Reject
                };
                self.settle(id, delivery_tag.0, multiple, how);
            }
            Request::Reject(r) => self.settle(id, r.delivery_tag.0, false, Settlement::Reject),
            Request::Extend(e) => self.on_extend(id, e),
            // Listings show the session's own vhost, in its clients' names.
            Request::ListQueues(r) => {
                let max = self.agreed.max_frame_len;
                let ns = Some(self.access.namespace());
                let reply = crate::admin::list_queues(&self.broker, ns, &r, max);
                self.send(id, reply);
            }
            Request::ListExchanges(r) => {
                let max = self.agreed.max_frame_len;
                let ns = Some(self.access.namespace());
                let reply = crate::admin::list_exchanges(&self.broker, ns, &r, max);
                self.send(id, reply);
            }
            Request::ListBindings(r) => {
                let max = self.agreed.max_frame_len;
                let ns = Some(self.access.namespace());
                let reply = crate::admin::list_bindings(&self.broker, ns, &r, max);
                self.send(id, reply);
            }
            Request::ListConsumers(r) => {
                let max = self.agreed.max_frame_len;
                let ns = Some(self.access.namespace());
                let reply = crate::admin::list_consumers(&self.broker, ns, &r, max);
                self.send(id, reply);
            }
            Request::ListConnections(r) => {
                let max = self.agreed.max_frame_len;
                // Administrators and monitors see every connection, others their own user's.
                let principal = self.access.principal();
                let only_user =
                    (!principal.has_tag(Tag::Monitoring)).then_some(principal.user.as_str());
                let reply = crate::admin::list_connections(&self.registry, only_user, &r, max);
                self.send(id, reply);
            }
            Request::CloseConnection(c) => {
                if let Err(e) =
                    self.check_operator(c.connection_id, "close another user's connection")
                {
                    return self.refuse(id, e);
                }
                let registry = Arc::clone(&self.registry);
                self.answer_later(id, Reply::CloseConnectionOk, async move {
                    registry.close(c.connection_id, &c.reason).await
                });
            }
            Request::CancelConsumer(c) => {
                if let Err(e) =
                    self.check_operator(c.connection_id, "cancel another user's consumer")
                {
                    return self.refuse(id, e);
                }
                let registry = Arc::clone(&self.registry);
                self.answer_later(id, Reply::CancelConsumerOk, async move {
                    registry
                        .cancel_consumer(c.connection_id, &c.consumer_tag)
                        .await
                });
            }
            Request::BrowseQueue(b) => {
                let page = BrowsePage::for_frame(b.limit, b.after_seq, self.agreed.max_frame_len);
                self.with_queue(id, Permission::Read, &b.queue, |link| QueueCmd::Browse {
                    conn: link,
                    request_id: id,
                    page,
                });
            }
            Request::MoveMessages(m) => self.on_move(id, m),
            // A move of another vhost is as unknown here as one never started.
            Request::MoveStatus(m) => match self
                .broker
                .moves()
                .get(m.move_id)
                .filter(|info| self.access.namespace().contains(&info.source))
            {
                Some(info) => {
                    let mut status = info.status();
                    if let sluice_client::wire::MoveState::Failed { message, .. } =
                        &mut status.state
                    {
                        *message = self.access.namespace().localize(std::mem::take(message));
                    }
                    self.send(id, status)
                }
                None => self.send_error(id, crate::moves::unknown(m.move_id)),
            },
        }
        Ending::No
    }

    /// Answers a request the session's access refused.
    fn refuse(&mut self, id: RequestId, e: RequestError) -> Ending {
        self.send_error(id, e);
        Ending::No
    }

    /// `Ok` for an operator request on connection `target`: one of the user's own, or any
    /// for an administrator.
    fn check_operator(&mut self, target: u64, what: &str) -> Result<(), RequestError> {
        let own = self
            .registry
            .user_of(target)
            .is_ok_and(|user| user == self.access.principal().user);
        if own {
            return Ok(());
        }
        self.access.check_tag(Tag::Administrator, what)
    }

    /// Sends a command to a queue this connection may use (with `permission` on it, when one
    /// is needed), or answers the error.
    fn with_queue(
        &mut self,
        id: RequestId,
        permission: impl Into<Option<Permission>>,
        name: &str,
        cmd: impl FnOnce(Arc<ConnLink>) -> QueueCmd,
    ) {
        self.send_to_queue(id, permission, name, cmd);
    }

    /// [`with_queue`](Self::with_queue); true when the command reached the queue (it answers),
    /// false when the request was answered here with an error.
    fn send_to_queue(
        &mut self,
        id: RequestId,
        permission: impl Into<Option<Permission>>,
        name: &str,
        cmd: impl FnOnce(Arc<ConnLink>) -> QueueCmd,
    ) -> bool {
        let internal = match permission.into() {
            Some(p) => self.access.grant(p, ResourceKind::Queue, name),
            None => self
                .access
                .namespace()
                .qualify(name)
                .map_err(RequestError::from),
        };
        let internal = match internal {
            Ok(n) => n.into_owned(),
            Err(e) => {
                self.send_error(id, e);
                return false;
            }
        };
        let name = internal.as_str();
        match self.broker.queue(name, self.link.id) {
            Ok(q) => {
                if !q.send(cmd(Arc::clone(&self.link))) {
                    self.send_error(id, RequestError::no_queue(name));
                    return false;
                }
                self.touch(&q);
                true
            }
            Err(e) => {
                self.send_error(id, e);
                false
            }
        }
    }

    fn touch(&mut self, q: &QueueHandle) {
        if !self.touched.iter().any(|t| t.same(q)) {
            self.touched.push(q.clone());
        }
    }

    // ------------------------------------------------------------------------------------
    // Publishing (§8)
    // ------------------------------------------------------------------------------------

    async fn on_publish(&mut self, p: Publish) {
        let received = Instant::now();
        let messages = p.messages.len() as u64;
        let batch_id = self.next_batch;
        self.next_batch += 1;
        let Routed {
            per_queue,
            rejections,
            bytes,
        } = self.route_publish(p);
        let mut waiting = 0;
        for (q, messages) in per_queue {
            // Waits while the queue's mailbox is full of other publishes: a slow queue slows
            // down the publishers that write to it (this session stops reading meanwhile, so
            // the peer counts as alive once it is done).
            let room = q.publish_room(&messages).await;
            self.mark_alive();
            if q.send(QueueCmd::Publish {
                conn: Arc::clone(&self.link),
                batch: batch_id,
                messages,
                room: Some(room),
            }) {
                waiting += 1;
            }
        }
        self.broker.note_published(bytes);
        self.unsettled_bytes += bytes;
        self.batches.push_back(Batch {
            id: batch_id,
            up_to: self.next_publish_seq - 1,
            waiting,
            epoch: 0,
            bytes,
            rejections,
            received,
            messages,
        });
        self.advance_batches();
    }

    /// Numbers a publish's messages and routes them: what goes to which queue, and what is
    /// refused (under the routing table's read lock, which is never held across an await).
    fn route_publish(&mut self, p: Publish) -> Routed {
        let mut rejections = Vec::new();
        let mut per_queue: Vec<(QueueHandle, Vec<Incoming>)> = Vec::new();
        let mut bytes = 0;
        let blocking = if self.broker.is_blocked() {
            self.broker.flow_control().blocking()
        } else {
            None
        };
        let broker = Arc::clone(&self.broker);
        let reg = broker.read();
        let mut route = RouteResult::default();
        let refused = &broker.metrics().refused;
        let mut reject = |seq: u64, code: ErrorCode, message: String| {
            refused.add(code, 1);
            rejections.push(Rejection {
                seq: PublishSeq(seq),
                code,
                message,
            });
        };
        let limits = PublishLimits {
            max_message_len: self.agreed.max_message_len,
            blocking: blocking.as_ref(),
            headers: self.broker.config.limits.headers,
        };
        let access = &mut self.access;
        for m in p.messages {
            let seq = self.next_publish_seq;
            self.next_publish_seq += 1;
            let size = m.meta.len() + m.body.len();
            let persistent =
                match route_message(&reg, &m.meta, m.body.len(), limits, access, &mut route) {
                    Ok(persistent) => persistent,
                    Err(e) => {
                        reject(seq, e.code, access.namespace().localize(e.message));
                        continue;
                    }
                };
            for name in &route.queues {
                let Some(q) = reg.queues.get(name) else {
                    continue;
                };
                let incoming = Incoming {
                    publish_seq: seq,
                    meta: m.meta.clone(),
                    body: m.body.clone(),
                    persistent,
                };
                bytes += size;
                match per_queue.iter_mut().find(|(h, _)| h.meta.uid == q.meta.uid) {
                    Some((_, v)) => v.push(incoming),
                    None => per_queue.push((q.clone(), vec![incoming])),
                }
            }
        }
        drop(reg);
        Routed {
            per_queue,
            rejections,
            bytes,
        }
    }

    /// Hands every finished batch at the front to the confirm task, in order.
    fn advance_batches(&mut self) {
        while self.batches.front().is_some_and(|b| b.waiting == 0) {
            let mut b = self.batches.pop_front().expect("checked");
            self.confirming.push_back((b.up_to, b.bytes));
            b.rejections.sort_by_key(|r| r.seq.0);
            b.rejections.dedup_by_key(|r| r.seq.0);
            self.rejections.extend(b.rejections);
            let _ = self.to_confirm.send(ToConfirm {
                up_to: b.up_to,
                epoch: b.epoch,
                received: b.received,
                messages: b.messages,
            });
        }
    }

    fn on_confirmed(&mut self, up_to: u64) {
        self.release_unsettled(up_to);
        if up_to <= self.confirmed {
            return;
        }
        let n = self
            .rejections
            .iter()
            .take_while(|r| r.seq.0 <= up_to)
            .count();
        if n > 0 {
            let rejections: Vec<Rejection> = self.rejections.drain(..n).collect();
            self.send(RequestId(0), PublishRejected { rejections });
        }
        self.confirmed = up_to;
        self.send(
            RequestId(0),
            Confirm {
                up_to: PublishSeq(up_to),
            },
        );
    }

    /// The frames whose messages are all settled by a confirm up to `up_to` no longer count
    /// against the connection's unsettled window.
    fn release_unsettled(&mut self, up_to: u64) {
        while let Some(&(last, bytes)) = self.confirming.front() {
            if last > up_to {
                break;
            }
            self.unsettled_bytes -= bytes;
            self.confirming.pop_front();
        }
    }

    /// A client `Close` is a barrier: answer it once every publish before it is settled.
    fn check_client_close(&mut self) -> Ending {
        let Some(id) = self.client_close else {
            return Ending::No;
        };
        if self.batches.is_empty() && self.confirmed == self.next_publish_seq - 1 {
            self.send(id, Reply::CloseOk);
            return Ending::Now;
        }
        Ending::No
    }

    // ------------------------------------------------------------------------------------
    // Consuming (§9) and settling (§10)
    // ------------------------------------------------------------------------------------

    fn on_consume(&mut self, id: RequestId, c: Consume) {
        let name = match self
            .access
            .grant(Permission::Read, ResourceKind::Queue, &c.queue)
        {
            Ok(n) => n.into_owned(),
            Err(e) => return self.send_error(id, e),
        };
        let q = match self.broker.queue(&name, self.link.id) {
            Ok(q) => q,
            Err(e) => return self.send_error(id, e),
        };
        if c.ack_timeout_ms == Some(0) {
            return self.send_error(
                id,
                RequestError::invalid("ack_timeout_ms must be at least 1"),
            );
        }
        let tag = if c.consumer_tag.is_empty() {
            format!("sluice.ctag-{}-{}", self.link.id, self.next_consumer)
        } else {
            c.consumer_tag
        };
        let max = self.broker.config.limits.max_consumers_per_connection;
        if let Err(e) = limits::check_consumers(self.link.id, self.consumers.len(), max) {
            return self.send_error(id, e);
        }
        if self.consumers.values().any(|e| e.tag == tag) {
            return self.send_error(
                id,
                RequestError::new(
                    ErrorCode::NotAllowed,
                    format!("consumer tag '{tag}' is already used on this connection"),
                ),
            );
        }
        let consumer_id = self.next_consumer;
        self.next_consumer += 1;
        let sent = q.send(QueueCmd::Consume {
            conn: Arc::clone(&self.link),
            request_id: id,
            consumer_id: ConsumerId(consumer_id),
            tag: tag.clone(),
            prefetch: self.broker.config.limits.effective_prefetch(c.prefetch),
            exclusive: c.exclusive,
            ack_timeout: c.ack_timeout_ms.map(Duration::from_millis),
        });
        if !sent {
            return self.send_error(id, RequestError::no_queue(&c.queue));
        }
        self.touch(&q);
        self.pending_consumes.insert(id, consumer_id);
        self.consumers
            .insert(consumer_id, ConsumerEntry { queue: q, tag });
    }

    fn on_cancel(&mut self, id: RequestId, c: Cancel) {
        let Some(entry) = self.consumers.get(&c.consumer_id.0) else {
            return self.send_error(id, no_consumer(c.consumer_id));
        };
        let sent = entry.queue.send(QueueCmd::Cancel {
            conn: Arc::clone(&self.link),
            consumer_id: c.consumer_id,
            request_id: Some(id),
        });
        if !sent {
            self.consumers.remove(&c.consumer_id.0);
            self.send(
                id,
                CancelOk {
                    consumer_id: c.consumer_id,
                },
            );
        }
    }

    fn settle(&mut self, id: RequestId, tag: u64, multiple: bool, how: Settlement) {
        let picked: Vec<(u64, (QueueHandle, u64))> = if multiple {
            if tag > self.link.last_tag() {
                return self.send_error(id, unknown_tag(tag));
            }
            let upper = if tag == 0 { u64::MAX } else { tag };
            let keys: Vec<u64> = self.outstanding.range(..=upper).map(|(&k, _)| k).collect();
            keys.into_iter()
                .filter_map(|k| self.outstanding.remove(&k).map(|v| (k, v)))
                .collect()
        } else {
            match self.outstanding.remove(&tag) {
                Some(v) => vec![(tag, v)],
                None => return self.send_error(id, unknown_tag(tag)),
            }
        };
        let mut groups: Vec<(QueueHandle, Vec<(u64, u64)>)> = Vec::new();
        for (tag, (q, seq)) in picked {
            match groups.iter_mut().find(|(h, _)| h.same(&q)) {
                Some((_, v)) => v.push((tag, seq)),
                None => groups.push((q, vec![(tag, seq)])),
            }
        }
        for (q, deliveries) in groups {
            // A deleted queue accepts settlements with no effect (§6.2).
            q.send(QueueCmd::Settle {
                conn: Arc::clone(&self.link),
                request_id: id,
                deliveries,
                how,
            });
        }
    }

    fn on_extend(&mut self, id: RequestId, e: Extend) {
        if e.extend_ms == 0 {
            return self.send_error(id, RequestError::invalid("extend_ms must be at least 1"));
        }
        let tag = e.delivery_tag.0;
        match self.outstanding.get(&tag) {
            Some((q, seq)) => {
                q.send(QueueCmd::Extend {
                    conn: Arc::clone(&self.link),
                    request_id: id,
                    tag,
                    seq: *seq,
                    extend: Duration::from_millis(e.extend_ms),
                });
            }
            None => self.send_error(id, unknown_tag(tag)),
        }
    }

    // ------------------------------------------------------------------------------------
    // Events from queues
    // ------------------------------------------------------------------------------------

    fn on_event(&mut self, event: ConnEvent) -> Ending {
        match event {
            ConnEvent::Deliver {
                consumer_id,
                queue,
                deliveries,
            } => {
                let mut bytes = 0;
                for d in &deliveries {
                    self.outstanding
                        .insert(d.delivery_tag.0, (queue.clone(), d.message_seq));
                    bytes += delivery_bytes(d);
                }
                self.output.take_over(bytes);
                self.send_deliveries(consumer_id, deliveries);
            }
            ConnEvent::Got {
                request_id,
                queue,
                ready,
                delivery,
            } => {
                if let Some(d) = &delivery {
                    self.outstanding
                        .insert(d.delivery_tag.0, (queue, d.message_seq));
                }
                self.send(request_id, Reply::GetOk(GetOk { ready, delivery }));
            }
            ConnEvent::GotMany {
                request_id,
                queue,
                ready,
                deliveries,
            } => {
                for d in &deliveries {
                    self.outstanding
                        .insert(d.delivery_tag.0, (queue.clone(), d.message_seq));
                }
                self.on_got_many(request_id, ready, deliveries);
            }
            ConnEvent::Reply { request_id, reply } => {
                if matches!(reply, Reply::ConsumeOk(_)) {
                    self.pending_consumes.remove(&request_id);
                }
                self.send(request_id, reply);
            }
            ConnEvent::Error { request_id, error } => {
                self.waiting_gets.remove(&request_id);
                if let Some(consumer) = self.pending_consumes.remove(&request_id) {
                    self.consumers.remove(&consumer);
                }
                self.send_error(request_id, error);
            }
            ConnEvent::Stored {
                batch,
                epoch,
                mut rejections,
            } => {
                for r in &mut rejections {
                    r.message = self
                        .access
                        .namespace()
                        .localize(std::mem::take(&mut r.message));
                }
                if let Some(front) = self.batches.front().map(|b| b.id) {
                    if let Some(b) = self.batches.get_mut((batch - front) as usize) {
                        b.waiting -= 1;
                        b.epoch = b.epoch.max(epoch);
                        b.rejections.extend(rejections);
                    }
                }
                self.advance_batches();
            }
            ConnEvent::ConsumerStopped {
                consumer_id,
                code,
                reason,
            } => {
                self.consumers.remove(&consumer_id.0);
                let reason = self.access.namespace().localize(reason);
                self.send(
                    RequestId(0),
                    ConsumerCancelled {
                        consumer_id,
                        code,
                        reason,
                    },
                );
            }
            ConnEvent::Cancelled {
                request_id,
                consumer_id,
            } => {
                self.consumers.remove(&consumer_id.0);
                self.send(request_id, CancelOk { consumer_id });
            }
            ConnEvent::LeasesExpired { tags } => {
                for t in tags {
                    self.outstanding.remove(&t);
                }
            }
            ConnEvent::Confirmed { up_to } => self.on_confirmed(up_to),
            ConnEvent::Shutdown => {
                self.close_with(ErrorCode::ConnectionForced, "the server is shutting down");
                return Ending::Now;
            }
        }
        Ending::No
    }

    /// Encodes deliveries as `Deliver` frames below the frame limit.
    fn send_deliveries(&mut self, consumer_id: ConsumerId, deliveries: Vec<Delivery>) {
        let max = self.agreed.max_frame_len as usize;
        let mut chunk = Vec::new();
        let mut size = DELIVER_FRAME_FIXED;
        for d in deliveries {
            let len = delivery_bytes(&d);
            if !chunk.is_empty() && size + len > max {
                let deliveries = std::mem::take(&mut chunk);
                self.send(
                    RequestId(0),
                    Deliver {
                        consumer_id,
                        deliveries,
                    },
                );
                size = DELIVER_FRAME_FIXED;
            }
            size += len;
            chunk.push(d);
        }
        if !chunk.is_empty() {
            self.send(
                RequestId(0),
                Deliver {
                    consumer_id,
                    deliveries: chunk,
                },
            );
        }
    }

    /// The connection ended: its consumers stop, its deliveries return at once, its exclusive
    /// queues go.
    fn cleanup(&mut self) {
        for q in self.touched.drain(..) {
            q.send(QueueCmd::ConnectionClosed {
                conn_id: self.link.id,
            });
        }
        for name in std::mem::take(&mut self.exclusive_queues) {
            // Still ours? It may have been deleted, or deleted and declared by another.
            let Ok(q) = self.broker.queue(&name, self.link.id) else {
                continue;
            };
            if q.meta.exclusive_owner == Some(self.link.id) {
                let (reply, _) = oneshot::channel();
                q.send(QueueCmd::Delete {
                    if_unused: false,
                    if_empty: false,
                    reply,
                });
            }
        }
        self.output.flush();
    }
}

/// Waits for durability in order and reports the highest settled publish sequence number.
async fn confirm_task(
    durability: crate::storage::Durability,
    mut rx: mpsc::UnboundedReceiver<ToConfirm>,
    link: Arc<ConnLink>,
    metrics: Arc<Metrics>,
) {
    // (received, messages) of the frames one confirm settles; kept between rounds.
    let mut timings: Vec<(Instant, u64)> = Vec::new();
    while let Some(first) = rx.recv().await {
        let (mut up_to, mut epoch) = (first.up_to, first.epoch);
        timings.push((first.received, first.messages));
        while let Ok(next) = rx.try_recv() {
            up_to = next.up_to;
            epoch = epoch.max(next.epoch);
            timings.push((next.received, next.messages));
        }
        if epoch > 0 {
            durability.wait(epoch).await;
        }
        link.send(ConnEvent::Confirmed { up_to });
        let now = Instant::now();
        for (received, messages) in timings.drain(..) {
            metrics
                .publish_confirm
                .observe_duration_many(now - received, messages);
        }
        if link.events.is_closed() {
            return;
        }
    }
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d.into()).await,
        None => std::future::pending().await,
    }
}

fn no_consumer(id: ConsumerId) -> RequestError {
    RequestError::new(
        ErrorCode::NotFound,
        format!("no consumer {} on this connection", id.0),
    )
}

fn unknown_tag(tag: u64) -> RequestError {
    RequestError::new(
        ErrorCode::UnknownDeliveryTag,
        format!("delivery tag {tag} is not outstanding on this connection"),
    )
}
