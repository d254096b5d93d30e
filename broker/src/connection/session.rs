//! The state of one connection and the handling of every request (protocol.md §5–§10).

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice_client::wire::{
    Ack, Blocked, CancelOk, Close, ConsumerCancelled, ConsumerId, DecodeError, ErrorCode,
    ErrorReply, Frame, FrameBody, Nack, Reply, Request, RequestId,
};
use tokio::sync::{mpsc, oneshot, watch};

mod chaos;
mod consume;
mod get_many;
mod publish;
mod publish_tracker;
mod topology;
mod trace;

use consume::{ConsumerEntry, OutstandingDeliveries};
use publish_tracker::{PublishTracker, ToConfirm};

use super::access::Access;
use super::limits;
use super::output::Output;
use super::{
    Agreed, CloseReason, ConnectionEntry, ConnectionRegistry, ConnectionStats, Control, ReadEvent,
};
use crate::auth::{Permission, Principal, ResourceKind, Tag, VhostLimits};
use crate::broker::Broker;
use crate::error::RequestError;
use crate::queue::{
    BrowsePage, ConnEvent, ConnLink, QueueCmd, QueueHandle, ScheduledPage, Settlement,
};

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
    /// Every publish from its numbering to its confirm.
    publishes: PublishTracker,
    /// The confirm task: confirms finished publish frames once they are durable.
    to_confirm: mpsc::UnboundedSender<ToConfirm>,
    /// The spans of traced publishes not confirmed yet, in publish order.
    traced_publishes: VecDeque<crate::telemetry::PublishSpans>,
    // Consuming.
    next_consumer: ConsumerId,
    consumers: HashMap<ConsumerId, ConsumerEntry>,
    pending_consumes: HashMap<RequestId, ConsumerId>,
    /// `GetMany` requests a queue has not answered yet (bounded, protocol.md §9.7).
    waiting_gets: HashSet<RequestId>,
    outstanding: OutstandingDeliveries,
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
        let to_confirm = publish::spawn_confirm_task(
            broker.store().durability().clone(),
            Arc::clone(&link),
            Arc::clone(broker.metrics()),
        );
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
            publishes: PublishTracker::default(),
            to_confirm,
            traced_publishes: VecDeque::new(),
            next_consumer: ConsumerId(1),
            consumers: HashMap::new(),
            pending_consumes: HashMap::new(),
            waiting_gets: HashSet::new(),
            outstanding: OutstandingDeliveries::new(),
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
            && self.publishes.unsettled_bytes()
                < self.broker.config.limits.max_unsettled_publish_bytes
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
        stats
            .unsettled_publishes
            .store(self.publishes.unsettled_messages(), Ordering::Relaxed);
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
            Request::SetPrefetch(p) => self.on_set_prefetch(id, p.consumer_id, p.prefetch),
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
            }) => self.settle(id, delivery_tag, multiple, Settlement::Ack, None),
            Request::Nack(Nack {
                delivery_tag,
                multiple,
                requeue,
                delay_ms,
                reason,
            }) => {
                let how = match (requeue, delay_ms) {
                    (true, Some(delay)) => Settlement::RequeueAfter(delay),
                    (true, None) => Settlement::Requeue,
                    (false, _) => Settlement::Reject,
                };
                self.settle(id, delivery_tag, multiple, how, reason);
            }
            Request::Reject(r) => {
                self.settle(id, r.delivery_tag, false, Settlement::Reject, r.reason)
            }
            Request::Extend(e) => self.on_extend(id, e),
            Request::TraceMessage(t) => self.on_trace_message(id, t.message_id),
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
            Request::ListScheduled(l) => {
                let page = ScheduledPage::for_frame(&l, self.agreed.max_frame_len);
                self.with_queue(id, Permission::Read, &l.queue, |link| {
                    QueueCmd::ListScheduled {
                        conn: link,
                        request_id: id,
                        page,
                    }
                });
            }
            Request::CancelScheduled(c) => {
                self.with_queue(id, Permission::Read, &c.queue, |link| {
                    QueueCmd::CancelScheduled {
                        conn: link,
                        request_id: id,
                        seq: c.message_seq,
                    }
                });
            }
            Request::ClusterStatus
            | Request::AddNode(_)
            | Request::RemoveNode(_)
            | Request::TransferLeadership(_) => return self.on_cluster_request(id, req),
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
            Request::SetChaos(c) => self.on_set_chaos(id, c),
            Request::ClearChaos(c) => self.on_clear_chaos(id, &c.queue),
            Request::ListChaos => self.on_list_chaos(id),
        }
        Ending::No
    }

    /// The cluster's operator requests (§20): administrators only, on a node in a cluster.
    fn on_cluster_request(&mut self, id: RequestId, req: Request) -> Ending {
        use crate::cluster::admin;
        if let Err(e) = self
            .access
            .check_tag(Tag::Administrator, "administer the cluster")
        {
            return self.refuse(id, e);
        }
        let Some(cluster) = self.broker.cluster().cloned() else {
            return self.refuse(id, admin::no_cluster());
        };
        match req {
            Request::ClusterStatus => self.send(id, admin::status(&cluster)),
            Request::AddNode(r) => {
                self.answer_later(id, Reply::AddNodeOk, admin::add_node(cluster, r));
            }
            Request::RemoveNode(r) => {
                self.answer_later(id, Reply::RemoveNodeOk, admin::remove_node(cluster, r));
            }
            Request::TransferLeadership(r) => {
                let internal = if r.queue.is_empty() {
                    None
                } else {
                    match self.access.namespace().qualify(&r.queue) {
                        Ok(name) => Some(name.into_owned()),
                        Err(e) => return self.refuse(id, RequestError::invalid(e.to_string())),
                    }
                };
                self.answer_later(
                    id,
                    Reply::TransferLeadershipOk,
                    admin::transfer_leadership(cluster, r, internal),
                );
            }
            _ => unreachable!("only cluster requests come here"),
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

    /// A client `Close` is a barrier: answer it once every publish before it is settled.
    fn check_client_close(&mut self) -> Ending {
        let Some(id) = self.client_close else {
            return Ending::No;
        };
        if self.publishes.all_settled() {
            self.send(id, Reply::CloseOk);
            return Ending::Now;
        }
        Ending::No
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
            } => self.on_deliver(consumer_id, queue, deliveries),
            ConnEvent::Got {
                request_id,
                queue,
                ready,
                delivery,
            } => self.on_got(request_id, queue, ready, delivery),
            ConnEvent::GotMany {
                request_id,
                queue,
                ready,
                deliveries,
            } => {
                for d in &deliveries {
                    self.note_outstanding(&queue, d);
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
                rejections,
            } => self.on_stored(batch, epoch, rejections),
            ConnEvent::Duplicates { batch, seqs } => self.on_duplicates(batch, seqs),
            ConnEvent::ConsumerStopped {
                consumer_id,
                code,
                reason,
            } => {
                self.consumers.remove(&consumer_id);
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
                self.consumers.remove(&consumer_id);
                self.send(request_id, CancelOk { consumer_id });
            }
            ConnEvent::Circuit(notice) => {
                let notice = sluice_client::wire::ConsumerCircuit {
                    reason: self.access.namespace().localize(notice.reason),
                    ..notice
                };
                self.send(RequestId(0), notice);
            }
            ConnEvent::LeasesExpired { tags } => self.forget_expired(tags),
            ConnEvent::Confirmed { up_to } => self.on_confirmed(up_to),
            ConnEvent::Shutdown => {
                self.close_with(ErrorCode::ConnectionForced, "the server is shutting down");
                return Ending::Now;
            }
        }
        Ending::No
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

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d.into()).await,
        None => std::future::pending().await,
    }
}
