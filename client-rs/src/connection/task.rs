//! The connection task: one select loop over the socket's two halves, the command channel
//! and a timer (heartbeats, close timeout); and, when the connection is lost and reconnection
//! is on, the loop that dials again (see the parent module).

use std::collections::{HashMap, VecDeque};
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};
use tokio::time::{sleep_until, Instant, Sleep};

use super::dial::{DynRead, DynWrite, Link};
use super::outbuf::OutBuf;
use super::publishes::{PublishSink, PublishTracker};
use super::{Batch, Command, ConsumerEvent, Redial, ServerInfo, Shared, Subscribed};
use crate::error::{CloseReason, Error, Result};
use crate::wire::{
    Cancel, CancelOk, Close, ConsumeOk, ConsumerCancelled, ConsumerId, Deliver, Delivery,
    DeliveryTag, ErrorCode, ErrorReply, Frame, FrameBody, FrameDecoder, InspectQueue, MetaView,
    Nack, Reply, Request, RequestId,
};

/// Stop taking commands while this much is waiting to be written.
const WRITE_HIGH_WATER: usize = 1024 * 1024;
/// Free space to have in the read buffer before each read.
const READ_RESERVE: usize = 64 * 1024;
/// How long the client waits for `CloseOk` (protocol.md §5.4, §14).
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the task tries to write its last frames when it stops.
const FINAL_FLUSH_TIMEOUT: Duration = Duration::from_secs(1);
/// Timer period when no heartbeat or close deadline needs it sooner.
const IDLE_TICK: Duration = Duration::from_secs(3600);
/// First pause between reconnection attempts; it doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// What waits for the answer to a request.
#[derive(Debug)]
enum Pending {
    Reply(oneshot::Sender<Result<Reply>>),
    Consume {
        reply: oneshot::Sender<Result<Subscribed>>,
        events: mpsc::UnboundedSender<ConsumerEvent>,
    },
    Cancel {
        consumer: ConsumerId,
        reply: Option<oneshot::Sender<Result<()>>>,
    },
    /// A settle request whose caller waits for its outcome: an `Error` fails it, the answer
    /// to its barrier proves it succeeded.
    Settle(oneshot::Sender<Result<()>>),
    /// The `InspectQueue` sent after the settle request `settle`: the queue answers it only
    /// after that settle, so whatever the answer, the settle did not fail.
    SettleBarrier {
        settle: u32,
    },
}

impl Pending {
    fn fail(self, error: Error) {
        match self {
            Pending::Reply(reply) => {
                let _ = reply.send(Err(error));
            }
            Pending::Consume { reply, .. } => {
                let _ = reply.send(Err(error));
            }
            Pending::Cancel { reply, .. } => {
                if let Some(reply) = reply {
                    let _ = reply.send(Err(error));
                }
            }
            Pending::Settle(reply) => {
                let _ = reply.send(Err(error));
            }
            // Its settle is pending too, and fails with the same error.
            Pending::SettleBarrier { .. } => {}
        }
    }

    /// The connection was lost and the task reconnects: a settle's delivery is lost, a
    /// cancelled consumer is gone, anything else fails with `error` (it may be retried).
    fn lost(self, error: Error) {
        match self {
            Pending::Settle(reply) => {
                let _ = reply.send(Err(Error::DeliveryLost));
            }
            Pending::Cancel { reply, .. } => {
                if let Some(reply) = reply {
                    let _ = reply.send(Ok(()));
                }
            }
            other => other.fail(error),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ConsumerState {
    /// Deliveries go to the stream.
    Active,
    /// `Cancel` sent on request; deliveries still go to the stream until `CancelOk`.
    Cancelling,
    /// The stream is gone; deliveries are requeued until `CancelOk`.
    Released,
}

#[derive(Debug)]
struct ConsumerSlot {
    events: mpsc::UnboundedSender<ConsumerEvent>,
    state: ConsumerState,
}

#[derive(Debug)]
struct Closing {
    deadline: Instant,
    replies: Vec<oneshot::Sender<Result<()>>>,
    timed_out: bool,
}

#[derive(Debug, Clone, Copy)]
struct Heartbeat {
    interval: Duration,
    dead_after: Duration,
    tick: Duration,
}

impl Heartbeat {
    fn of(info: &ServerInfo) -> Option<Heartbeat> {
        info.heartbeat.map(|interval| Heartbeat {
            interval,
            // Twice the interval (protocol.md §5.3), plus a quarter for scheduling jitter.
            dead_after: interval * 2 + interval / 4,
            tick: (interval / 4).max(Duration::from_millis(10)),
        })
    }
}

/// Why the event loop stopped.
type Stop = CloseReason;

pub(super) struct Task {
    reader: DynRead,
    writer: DynWrite,
    rbuf: BytesMut,
    out: OutBuf,
    decoder: FrameDecoder,
    commands: mpsc::UnboundedReceiver<Command>,
    shared: Arc<Shared>,
    last_id: u32,
    pending: HashMap<u32, Pending>,
    publishes: PublishTracker,
    /// Publishes held back while the server is blocked (protocol.md §5.6).
    held: VecDeque<(Batch, PublishSink)>,
    blocked: bool,
    consumers: HashMap<ConsumerId, ConsumerSlot>,
    heartbeat: Option<Heartbeat>,
    last_read: Instant,
    last_write: Instant,
    closing: Option<Closing>,
    timer: Pin<Box<Sleep>>,
    /// Where to dial again when the connection is lost; `None`: the task ends then.
    redial: Option<Redial>,
    /// This connection's generation (see the parent module).
    generation: u64,
    /// Commands taken while reconnecting, handled once connected again.
    deferred: VecDeque<Command>,
}

impl Task {
    pub(super) fn new(
        link: Link,
        commands: mpsc::UnboundedReceiver<Command>,
        shared: Arc<Shared>,
        redial: Option<Redial>,
    ) -> Self {
        let info = &shared.info;
        let heartbeat = Heartbeat::of(info);
        let now = Instant::now();
        let first_tick = heartbeat.map_or(IDLE_TICK, |h| h.tick);
        Task {
            reader: link.reader,
            writer: link.writer,
            rbuf: link.leftover,
            out: OutBuf::new(info.max_frame_len),
            decoder: FrameDecoder::new(info.max_frame_len),
            commands,
            last_id: 1, // the Hello's
            pending: HashMap::new(),
            publishes: PublishTracker::default(),
            held: VecDeque::new(),
            blocked: false,
            consumers: HashMap::new(),
            heartbeat,
            last_read: now,
            last_write: now,
            closing: None,
            timer: Box::pin(sleep_until(now + first_tick)),
            generation: shared.generation(),
            shared,
            redial,
            deferred: VecDeque::new(),
        }
    }

    pub(super) async fn run(mut self) {
        let mut reason = self.serve().await;
        while self.should_reconnect(&reason) {
            match self.reconnect(&reason).await {
                Ok(()) => reason = self.serve().await,
                Err(stop) => {
                    reason = stop;
                    break;
                }
            }
        }
        self.finish(reason).await;
    }

    /// Runs the connection until it ends.
    async fn serve(&mut self) -> Stop {
        match self.process_input() {
            Ok(()) => self.event_loop().await,
            Err(reason) => reason,
        }
    }

    async fn event_loop(&mut self) -> Stop {
        loop {
            debug_assert!(self.out.is_sealed());
            if self.rbuf.capacity() - self.rbuf.len() < READ_RESERVE / 2 {
                self.rbuf.reserve(READ_RESERVE);
            }
            let take_commands = self.closing.is_none() && self.out.len() < WRITE_HIGH_WATER;
            let step = tokio::select! {
                read = self.reader.read_buf(&mut self.rbuf) => self.on_read(read),
                written = self.writer.write_buf(&mut self.out.buf), if !self.out.is_empty() => {
                    self.on_write(written)
                }
                command = self.commands.recv(), if take_commands => self.on_command(command),
                () = self.timer.as_mut() => self.on_timer(),
            };
            if let Err(reason) = step {
                return reason;
            }
        }
    }

    fn next_id(&mut self) -> RequestId {
        next_request_id(&mut self.last_id, &self.pending)
    }

    // ---- reading ----------------------------------------------------------------------

    fn on_read(&mut self, read: io::Result<usize>) -> Result<(), Stop> {
        match read {
            Ok(0) if self.closing.is_some() => Err(CloseReason::Normal),
            Ok(0) => Err(CloseReason::Io(Arc::new(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the server closed the connection without Close",
            )))),
            Ok(_) => {
                self.last_read = Instant::now();
                self.process_input()
            }
            Err(e) => Err(CloseReason::Io(Arc::new(e))),
        }
    }

    /// Handles every complete frame in the read buffer.
    fn process_input(&mut self) -> Result<(), Stop> {
        loop {
            let raw = match self.decoder.decode_raw(&mut self.rbuf) {
                Ok(Some(raw)) => raw,
                Ok(None) => break,
                Err(e) => return Err(self.violation(e.error_code(), e.to_string())),
            };
            match raw.decode::<Reply>() {
                Ok(frame) => self.on_frame(frame)?,
                Err(e) => return Err(self.violation(ErrorCode::MalformedFrame, e.to_string())),
            }
        }
        self.out.close_publish();
        Ok(())
    }

    /// The server broke the protocol: send `Close` with `code` and stop.
    fn violation(&mut self, code: ErrorCode, what: String) -> Stop {
        tracing::error!(%code, "closing the connection: {what}");
        if self.closing.is_none() {
            let id = self.next_id();
            let close = Close {
                code: Some(code),
                reason: what.chars().take(200).collect(),
            };
            let _ = self.out.frame(id, Request::Close(close));
        }
        CloseReason::Protocol(what)
    }

    fn on_frame(&mut self, frame: Frame<Reply>) -> Result<(), Stop> {
        let id = frame.request_id;
        match frame.body {
            Reply::Heartbeat => {}
            Reply::Close(close) => {
                let _ = self.out.frame(id, Request::CloseOk);
                return Err(match (&self.closing, close.code) {
                    // Our Close crossed the server's normal one.
                    (Some(_), None) => CloseReason::Normal,
                    _ => close.into(),
                });
            }
            Reply::CloseOk if self.closing.is_some() => return Err(CloseReason::Normal),
            Reply::CloseOk => tracing::warn!("unexpected CloseOk ignored"),
            Reply::Error(error) => self.on_error(id, error),
            Reply::Blocked(blocked) => {
                tracing::warn!(code = %blocked.code, "server blocked publishing: {}", blocked.reason);
                self.blocked = true;
                self.shared.set_blocked(true);
            }
            Reply::Unblocked => {
                tracing::info!("server unblocked publishing");
                self.blocked = false;
                self.shared.set_blocked(false);
                while let Some((batch, sink)) = self.held.pop_front() {
                    self.publish(batch, sink);
                }
            }
            Reply::Confirm(confirm) => self
                .publishes
                .confirmed(confirm.up_to)
                .map_err(|what| self.violation(ErrorCode::UnexpectedFrame, what))?,
            Reply::PublishDuplicates(duplicates) => {
                for seq in duplicates.seqs {
                    self.publishes
                        .duplicate(seq)
                        .map_err(|what| self.violation(ErrorCode::UnexpectedFrame, what))?;
                }
            }
            Reply::PublishRejected(rejected) => {
                for rejection in rejected.rejections {
                    self.publishes
                        .rejected(rejection)
                        .map_err(|what| self.violation(ErrorCode::UnexpectedFrame, what))?;
                }
            }
            Reply::Deliver(deliver) => self.on_deliver(deliver)?,
            Reply::ConsumerCancelled(cancelled) => self.on_consumer_cancelled(cancelled),
            Reply::ConsumerCircuit(circuit) => {
                if let Some(slot) = self.consumers.get(&circuit.consumer_id) {
                    if slot.state != ConsumerState::Released {
                        let _ = slot.events.send(ConsumerEvent::Circuit(circuit));
                    }
                }
            }
            Reply::ConsumeOk(ok) => self.on_consume_ok(id, ok),
            Reply::CancelOk(ok) => self.on_cancel_ok(id, ok),
            Reply::Welcome(_) => {
                return Err(self.violation(ErrorCode::UnexpectedFrame, "a second Welcome".into()))
            }
            Reply::GetOk(get_ok) => {
                if let Some(delivery) = &get_ok.delivery {
                    check_meta(delivery).map_err(|what| {
                        self.violation(ErrorCode::MalformedFrame, format!("GetOk: {what}"))
                    })?;
                }
                self.on_reply(id, Reply::GetOk(get_ok));
            }
            Reply::GetManyOk(ok) => {
                for delivery in &ok.deliveries {
                    check_meta(delivery).map_err(|what| {
                        self.violation(ErrorCode::MalformedFrame, format!("GetManyOk: {what}"))
                    })?;
                }
                self.on_reply(id, Reply::GetManyOk(ok));
            }
            body => self.on_reply(id, body),
        }
        Ok(())
    }

    fn on_reply(&mut self, id: RequestId, body: Reply) {
        match self.pending.remove(&id.0) {
            Some(Pending::Reply(reply)) => {
                let _ = reply.send(Ok(body));
            }
            Some(Pending::SettleBarrier { settle }) => self.settle_succeeded(settle),
            Some(other) => other.fail(Error::Protocol(format!(
                "unexpected {:?} answering request {id}",
                body.opcode()
            ))),
            None => {
                tracing::warn!(request = %id, opcode = ?body.opcode(), "reply to no pending request")
            }
        }
    }

    fn on_error(&mut self, id: RequestId, error: ErrorReply) {
        match self.pending.remove(&id.0) {
            Some(Pending::Cancel { consumer, reply }) => {
                // NOT_FOUND: the consumer is already gone, which is what was asked.
                let result = match error.code {
                    ErrorCode::NotFound => Ok(()),
                    _ => Err(Error::from(error)),
                };
                self.consumers.remove(&consumer);
                if let Some(reply) = reply {
                    let _ = reply.send(result);
                }
            }
            // The queue answered the barrier (with an error: it was deleted meanwhile, which
            // a settle survives, §6.2) after the settle: the settle did not fail.
            Some(Pending::SettleBarrier { settle }) => self.settle_succeeded(settle),
            Some(pending) => pending.fail(error.into()),
            // A request that is not answered on success: Ack, Nack, Reject, Extend,
            // SetPrefetch. Nobody waits for it.
            None => tracing::warn!(
                request = %id,
                code = %error.code,
                "request failed: {}",
                error.message
            ),
        }
    }

    /// The settle request `settle` got no `Error` before its barrier's answer: it succeeded.
    fn settle_succeeded(&mut self, settle: u32) {
        // Gone if its `Error` came first (the id may then serve another request already).
        if !matches!(self.pending.get(&settle), Some(Pending::Settle(_))) {
            return;
        }
        if let Some(Pending::Settle(reply)) = self.pending.remove(&settle) {
            let _ = reply.send(Ok(()));
        }
    }

    fn on_consume_ok(&mut self, id: RequestId, ok: ConsumeOk) {
        let generation = self.generation;
        let Some(pending) = self.pending.remove(&id.0) else {
            tracing::warn!(request = %id, "ConsumeOk for no pending Consume");
            return;
        };
        let Pending::Consume { reply, events } = pending else {
            pending.fail(Error::Protocol(format!(
                "unexpected ConsumeOk for request {id}"
            )));
            return;
        };
        let consumer = ok.consumer_id;
        self.consumers.insert(
            consumer,
            ConsumerSlot {
                events,
                state: ConsumerState::Active,
            },
        );
        if reply.send(Ok(Subscribed { ok, generation })).is_err() {
            // The caller gave up waiting (timeout, dropped future): nobody will read.
            self.release(consumer, Vec::new());
        }
    }

    fn on_cancel_ok(&mut self, id: RequestId, ok: CancelOk) {
        self.consumers.remove(&ok.consumer_id);
        match self.pending.remove(&id.0) {
            Some(Pending::Cancel { reply, .. }) => {
                if let Some(reply) = reply {
                    let _ = reply.send(Ok(()));
                }
            }
            Some(other) => other.fail(Error::Protocol(format!(
                "unexpected CancelOk answering request {id}"
            ))),
            None => tracing::warn!(request = %id, "CancelOk for no pending Cancel"),
        }
    }

    fn on_deliver(&mut self, deliver: Deliver) -> Result<(), Stop> {
        if self.closing.is_some() {
            // They return to their queue when the connection closes.
            return Ok(());
        }
        for delivery in &deliver.deliveries {
            check_meta(delivery).map_err(|what| {
                self.violation(ErrorCode::MalformedFrame, format!("Deliver: {what}"))
            })?;
        }
        let consumer = deliver.consumer_id;
        let event = ConsumerEvent::Deliveries {
            generation: self.generation,
            deliveries: deliver.deliveries,
        };
        let returned = match self.consumers.get(&consumer) {
            Some(slot) if slot.state != ConsumerState::Released => {
                slot.events.send(event).err().map(|e| match e.0 {
                    ConsumerEvent::Deliveries { deliveries, .. } => deliveries,
                    ConsumerEvent::Circuit(_) | ConsumerEvent::Lost | ConsumerEvent::Ended(_) => {
                        Vec::new()
                    }
                })
            }
            _ => {
                if !self.consumers.contains_key(&consumer) {
                    tracing::warn!(%consumer, "deliveries for an unknown consumer are requeued");
                }
                match event {
                    ConsumerEvent::Deliveries { deliveries, .. } => Some(deliveries),
                    ConsumerEvent::Circuit(_) | ConsumerEvent::Lost | ConsumerEvent::Ended(_) => {
                        None
                    }
                }
            }
        };
        if let Some(deliveries) = returned {
            let tags = deliveries.iter().map(|d| d.delivery_tag).collect();
            self.release(consumer, tags);
        }
        Ok(())
    }

    fn on_consumer_cancelled(&mut self, cancelled: ConsumerCancelled) {
        let Some(slot) = self.consumers.remove(&cancelled.consumer_id) else {
            return;
        };
        tracing::info!(
            consumer = %cancelled.consumer_id,
            code = %cancelled.code,
            "consumer cancelled by the server: {}",
            cancelled.reason
        );
        if slot.state != ConsumerState::Released {
            let _ = slot.events.send(ConsumerEvent::Ended(cancelled.into()));
        }
    }

    /// Requeues `tags` and cancels the consumer if it is still active: its stream is gone.
    fn release(&mut self, consumer: ConsumerId, tags: Vec<DeliveryTag>) {
        for delivery_tag in tags {
            let nack = Nack {
                delivery_tag,
                multiple: false,
                requeue: true,
                delay_ms: None,
                reason: None,
            };
            let id = self.next_id();
            let _ = self.out.frame(id, Request::Nack(nack));
        }
        let Some(slot) = self.consumers.get_mut(&consumer) else {
            return;
        };
        let was = std::mem::replace(&mut slot.state, ConsumerState::Released);
        if was == ConsumerState::Active {
            self.send_cancel(consumer, None);
        }
    }

    fn send_cancel(&mut self, consumer: ConsumerId, reply: Option<oneshot::Sender<Result<()>>>) {
        let id = self.next_id();
        let cancel = Cancel {
            consumer_id: consumer,
        };
        let _ = self.out.frame(id, Request::Cancel(cancel));
        self.pending
            .insert(id.0, Pending::Cancel { consumer, reply });
    }

    // ---- commands ---------------------------------------------------------------------

    fn on_command(&mut self, command: Option<Command>) -> Result<(), Stop> {
        let Some(command) = command else {
            // Every handle is gone: close gracefully.
            self.start_close(None);
            return Ok(());
        };
        self.handle(command);
        // Take everything already queued, so it leaves in as few writes as possible.
        while self.closing.is_none() && self.out.len() < WRITE_HIGH_WATER {
            match self.commands.try_recv() {
                Ok(command) => self.handle(command),
                Err(_) => break,
            }
        }
        self.out.close_publish();
        Ok(())
    }

    fn handle(&mut self, command: Command) {
        match command {
            Command::Call { request, reply } => {
                if reply.is_closed() {
                    return; // the caller gave up before the request left
                }
                let id = self.next_id();
                match self.out.frame(id, request) {
                    Ok(()) => {
                        self.pending.insert(id.0, Pending::Reply(reply));
                    }
                    Err(e) => {
                        let _ = reply.send(Err(e.into()));
                    }
                }
            }
            Command::Send {
                request,
                generation,
            } => {
                if generation.is_some_and(|g| g != self.generation) {
                    return; // its delivery or consumer was lost with an earlier connection
                }
                let id = self.next_id();
                if let Err(e) = self.out.frame(id, request) {
                    tracing::warn!("request not sent: {e}");
                }
            }
            Command::Settle {
                request,
                queue,
                generation,
                reply,
            } => {
                if generation != self.generation {
                    let _ = reply.send(Err(Error::DeliveryLost));
                    return;
                }
                self.settle_confirmed(request, &queue, reply);
            }
            Command::Publish { batch, sink } => {
                if self.blocked || !self.held.is_empty() {
                    self.held.push_back((batch, sink));
                } else {
                    self.publish(batch, sink);
                }
            }
            Command::Consume {
                request,
                events,
                reply,
            } => {
                let id = self.next_id();
                match self.out.frame(id, Request::Consume(request)) {
                    Ok(()) => {
                        self.pending
                            .insert(id.0, Pending::Consume { reply, events });
                    }
                    Err(e) => {
                        let _ = reply.send(Err(e.into()));
                    }
                }
            }
            Command::Cancel {
                consumer,
                generation,
                reply,
            } => match self.consumers.get_mut(&consumer) {
                Some(slot)
                    if slot.state == ConsumerState::Active && generation == self.generation =>
                {
                    slot.state = ConsumerState::Cancelling;
                    self.send_cancel(consumer, Some(reply));
                }
                // Already being cancelled, or gone (with its connection, perhaps).
                _ => {
                    let _ = reply.send(Ok(()));
                }
            },
            Command::Release {
                consumer,
                generation,
                requeue,
            } => {
                if generation == self.generation {
                    self.release(consumer, requeue);
                }
            }
            Command::Close { reply } => self.start_close(Some(reply)),
        }
    }

    /// Writes a settle request and, right behind it, its barrier: an `InspectQueue` of the
    /// delivery's queue. The queue handles both in order, so an `Error` for the settle
    /// arrives before the barrier's answer (protocol.md §10).
    fn settle_confirmed(
        &mut self,
        request: Request,
        queue: &str,
        reply: oneshot::Sender<Result<()>>,
    ) {
        let id = self.next_id();
        if let Err(e) = self.out.frame(id, request) {
            let _ = reply.send(Err(e.into()));
            return;
        }
        self.pending.insert(id.0, Pending::Settle(reply));
        let barrier = self.next_id();
        let inspect = InspectQueue {
            name: queue.to_owned(),
        };
        match self.out.frame(barrier, Request::InspectQueue(inspect)) {
            Ok(()) => {
                self.pending
                    .insert(barrier.0, Pending::SettleBarrier { settle: id.0 });
            }
            // A name too long for a frame cannot be a queue's: nothing proves the outcome.
            Err(e) => {
                if let Some(pending) = self.pending.remove(&id.0) {
                    pending.fail(e.into());
                }
            }
        }
    }

    /// Writes a publish command's messages, numbering them. With reconnection on, the
    /// tracker keeps them until they are settled, to write them again on a new connection.
    fn publish(&mut self, batch: Batch, sink: PublishSink) {
        let keep = self.redial.is_some();
        let messages = batch.as_slice();
        let mut failed_at = None;
        for (i, message) in messages.iter().enumerate() {
            let Task {
                out,
                last_id,
                pending,
                ..
            } = self;
            if let Err(e) = out.publish(message, || next_request_id(last_id, pending)) {
                // The handles check sizes against the agreed limits, so this is a bug. Keep
                // the numbering consistent: only the messages before this one were written.
                tracing::error!("publish not encoded: {e}");
                if i == 0 {
                    sink.fail_unsent(messages.len(), &Error::InvalidArgument(e));
                    return;
                }
                failed_at = Some(i);
                break;
            }
        }
        let count = failed_at.unwrap_or(messages.len());
        let kept = keep.then_some(batch);
        self.publishes.written(count, sink, kept);
    }

    fn start_close(&mut self, reply: Option<oneshot::Sender<Result<()>>>) {
        if let Some(closing) = &mut self.closing {
            closing.replies.extend(reply);
            return;
        }
        let never_sent = Error::ConnectionClosed(CloseReason::Normal);
        for (batch, sink) in self.held.drain(..) {
            sink.fail_unsent(batch.as_slice().len(), &never_sent);
        }
        let id = self.next_id();
        let close = Close {
            code: None,
            reason: "client closed the connection".into(),
        };
        let _ = self.out.frame(id, Request::Close(close));
        let deadline = Instant::now() + CLOSE_TIMEOUT;
        self.closing = Some(Closing {
            deadline,
            replies: reply.into_iter().collect(),
            timed_out: false,
        });
        if deadline < self.timer.deadline() {
            self.timer.as_mut().reset(deadline);
        }
    }

    // ---- writing and timers -----------------------------------------------------------

    fn on_write(&mut self, written: io::Result<usize>) -> Result<(), Stop> {
        match written {
            Ok(0) => Err(CloseReason::Io(Arc::new(io::ErrorKind::WriteZero.into()))),
            Ok(_) => {
                self.last_write = Instant::now();
                Ok(())
            }
            Err(e) => Err(CloseReason::Io(Arc::new(e))),
        }
    }

    fn on_timer(&mut self) -> Result<(), Stop> {
        let now = Instant::now();
        if let Some(closing) = &mut self.closing {
            if now >= closing.deadline {
                tracing::warn!("no CloseOk within {CLOSE_TIMEOUT:?}");
                closing.timed_out = true;
                return Err(CloseReason::Normal);
            }
        }
        let mut next = now + IDLE_TICK;
        if let Some(heartbeat) = self.heartbeat {
            if now.duration_since(self.last_read) >= heartbeat.dead_after {
                return Err(self.heartbeat_timeout());
            }
            if now.duration_since(self.last_write) >= heartbeat.interval && self.out.is_empty() {
                let _ = self.out.frame(RequestId::NONE, Request::Heartbeat);
            }
            next = now + heartbeat.tick;
        }
        if let Some(closing) = &self.closing {
            next = next.min(closing.deadline);
        }
        self.timer.as_mut().reset(next);
        Ok(())
    }

    fn heartbeat_timeout(&mut self) -> Stop {
        tracing::error!("no data from the server for two heartbeat intervals");
        if self.closing.is_none() {
            let id = self.next_id();
            let close = Close {
                code: Some(ErrorCode::HeartbeatTimeout),
                reason: "heartbeat timeout".into(),
            };
            let _ = self.out.frame(id, Request::Close(close));
        }
        CloseReason::HeartbeatTimeout
    }

    // ---- the end ----------------------------------------------------------------------

    /// Writes what is left (a `Close` or `CloseOk`, at least), closes the socket, then settles
    /// every waiter.
    async fn finish(mut self, reason: CloseReason) {
        self.out.close_publish();
        if !matches!(reason, CloseReason::Io(_)) {
            let flush = async {
                while !self.out.is_empty() {
                    self.writer.write_buf(&mut self.out.buf).await?;
                }
                self.writer.shutdown().await
            };
            let _ = tokio::time::timeout(FINAL_FLUSH_TIMEOUT, flush).await;
        }
        // The socket is closed before anyone hears that the connection ended: `close()`
        // returns with the descriptor gone.
        drop(self.reader);
        drop(self.writer);
        let unsettled = self.publishes.unsettled();
        match &reason {
            CloseReason::Normal => tracing::debug!(unsettled, "connection closed"),
            other => tracing::warn!(unsettled, "connection closed: {other}"),
        }

        // Record the reason before refusing commands, so a handle whose send fails finds it.
        let _ = self.shared.closed.set(reason.clone());
        self.commands.close();
        let error = Error::ConnectionClosed(reason.clone());

        for (_, pending) in self.pending.drain() {
            pending.fail(error.clone());
        }
        self.publishes.fail_all(&error);
        for (batch, sink) in self.held.drain(..) {
            sink.fail_unsent(batch.as_slice().len(), &error);
        }
        let deferred = std::mem::take(&mut self.deferred);
        for command in deferred {
            fail_command(command, &error, &Ok(()));
        }
        for (_, slot) in self.consumers.drain() {
            // After our own close the streams just end; otherwise they end with the reason.
            if !matches!(reason, CloseReason::Normal) {
                let _ = slot.events.send(ConsumerEvent::Ended(error.clone()));
            }
        }
        let close_result = match (&self.closing, &reason) {
            (Some(closing), _) if closing.timed_out => Err(Error::Timeout {
                operation: "close",
                after: CLOSE_TIMEOUT,
            }),
            (_, CloseReason::Normal) => Ok(()),
            _ => Err(error.clone()),
        };
        if let Some(closing) = self.closing.take() {
            for reply in closing.replies {
                let _ = reply.send(close_result.clone());
            }
        }
        while let Ok(command) = self.commands.try_recv() {
            fail_command(command, &error, &close_result);
        }
    }

    // ---- reconnecting -----------------------------------------------------------------

    /// Whether a connection that ended with `reason` is dialed again: it was lost (not
    /// closed by us, nor refused), and reconnection is on.
    fn should_reconnect(&self, reason: &CloseReason) -> bool {
        let lost = match reason {
            CloseReason::Io(_) | CloseReason::HeartbeatTimeout => true,
            CloseReason::Server { code, .. } => *code == Some(ErrorCode::ConnectionForced),
            _ => false,
        };
        lost && self.redial.is_some() && self.closing.is_none() && !self.commands.is_closed()
    }

    /// Dials the URL's hosts until one answers (the next host first, then round-robin,
    /// backing off with jitter) or `reconnect_timeout` passes; then carries on there.
    /// Commands arriving meanwhile wait in `deferred`; a `Close`, or every handle gone,
    /// stops it. Returns why the task must end instead.
    async fn reconnect(&mut self, cause: &CloseReason) -> Result<(), Stop> {
        let Some(mut redial) = self.redial.take() else {
            return Err(cause.clone());
        };
        tracing::warn!("connection lost ({cause}); reconnecting");
        self.lose_connection(cause);
        let limit = self.shared.settings.reconnect_timeout;
        // `Duration::MAX` means "for ever": a year will do.
        let deadline = Instant::now()
            .checked_add(limit)
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(365 * 24 * 3600));
        let mut backoff = FIRST_BACKOFF;
        let outcome = loop {
            let hosts = &redial.dialer.hosts;
            redial.current = (redial.current + 1) % hosts.len();
            let host = hosts[redial.current].clone();
            let left = deadline.saturating_duration_since(Instant::now());
            let dial = redial.dialer.dial(&host, Some(left));
            match self.while_down(dial).await {
                Err(stop) => break Err(stop),
                Ok(Ok(link)) => {
                    tracing::info!(%host, "reconnected");
                    break Ok(link);
                }
                // Refused credentials (a deleted user, a changed password) stay refused.
                Ok(Err(error)) if error.is_access_refused() => {
                    tracing::error!(%host, "reconnecting: {error}");
                    break Err(cause.clone());
                }
                Ok(Err(error)) => tracing::warn!(%host, "reconnecting: {error}"),
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                tracing::error!("could not reconnect within {limit:?}");
                break Err(cause.clone());
            }
            // 50 to 100 % of the backoff, so that many clients do not dial in step.
            let pause = backoff.mul_f64(0.5 + fastrand::f64() / 2.0).min(left);
            backoff = (backoff * 2).min(MAX_BACKOFF);
            if let Err(stop) = self.while_down(tokio::time::sleep(pause)).await {
                break Err(stop);
            }
        };
        self.redial = Some(redial);
        let link = outcome?;
        self.resume(link);
        Ok(())
    }

    /// Waits for `future` while keeping commands: they wait in `deferred`. Fails when the
    /// client closes or every handle is gone.
    async fn while_down<T>(
        &mut self,
        future: impl std::future::Future<Output = T>,
    ) -> Result<T, Stop> {
        let mut future = std::pin::pin!(future);
        loop {
            tokio::select! {
                output = &mut future => return Ok(output),
                command = self.commands.recv() => match command {
                    None => return Err(CloseReason::Normal),
                    Some(Command::Close { reply }) => {
                        self.closing = Some(Closing {
                            deadline: Instant::now(),
                            replies: vec![reply],
                            timed_out: false,
                        });
                        return Err(CloseReason::Normal);
                    }
                    Some(command) => self.deferred.push_back(command),
                },
            }
        }
    }

    /// Forgets the lost connection: a new generation starts, requests in flight fail (or,
    /// for settles, report their delivery lost), consumers are told to consume again, and
    /// unconfirmed publishes wait to be written again.
    fn lose_connection(&mut self, cause: &CloseReason) {
        self.generation = self.shared.next_generation();
        let error = Error::ConnectionClosed(cause.clone());
        for (_, pending) in self.pending.drain() {
            pending.lost(error.clone());
        }
        for (_, slot) in self.consumers.drain() {
            // A consumer being cancelled just ends: its slot (and channel) is dropped.
            if slot.state == ConsumerState::Active {
                let _ = slot.events.send(ConsumerEvent::Lost);
            }
        }
        self.reader = Box::new(tokio::io::empty());
        self.writer = Box::new(tokio::io::sink());
        self.rbuf.clear();
        self.blocked = false;
        self.shared.set_blocked(false);
    }

    /// Carries on over a new connection: unconfirmed publishes first, in order, then the
    /// publishes held while blocked, then the commands that arrived meanwhile.
    fn resume(&mut self, link: Link) {
        let info = ServerInfo::from_welcome(link.welcome);
        self.reader = link.reader;
        self.writer = link.writer;
        self.rbuf = link.leftover;
        self.out = OutBuf::new(info.max_frame_len);
        self.decoder = FrameDecoder::new(info.max_frame_len);
        self.heartbeat = Heartbeat::of(&info);
        let now = Instant::now();
        self.last_read = now;
        self.last_write = now;
        let tick = self.heartbeat.map_or(IDLE_TICK, |h| h.tick);
        self.timer.as_mut().reset(now + tick);
        self.last_id = 1; // the Hello's
        let Task {
            out,
            last_id,
            pending,
            publishes,
            ..
        } = self;
        let max_message_len = info.max_message_len;
        publishes.resend(|message| {
            let size = message.meta.len() + message.body.len();
            if size > max_message_len {
                return Err(Error::MessageTooLarge {
                    size,
                    max: max_message_len,
                });
            }
            out.publish(message, || next_request_id(last_id, pending))
                .map_err(Error::from)
        });
        self.out.close_publish();
        while let Some((batch, sink)) = self.held.pop_front() {
            self.publish(batch, sink);
        }
        while let Some(command) = self.deferred.pop_front() {
            self.handle(command);
        }
        self.out.close_publish();
    }
}

/// Answers a command the task will never carry out.
fn fail_command(command: Command, error: &Error, close_result: &Result<()>) {
    match command {
        Command::Call { reply, .. } => {
            let _ = reply.send(Err(error.clone()));
        }
        Command::Publish { batch, sink } => {
            sink.fail_unsent(batch.as_slice().len(), error);
        }
        Command::Consume { reply, .. } => {
            let _ = reply.send(Err(error.clone()));
        }
        Command::Settle { reply, .. } => {
            let _ = reply.send(Err(error.clone()));
        }
        Command::Cancel { reply, .. } => {
            let _ = reply.send(Ok(()));
        }
        Command::Close { reply } => {
            let _ = reply.send(close_result.clone());
        }
        Command::Send { .. } | Command::Release { .. } => {}
    }
}

/// The next request id: counts up from 1, wraps from 2³²−1 to 1 (0 is reserved), and skips
/// ids still waiting for an answer (protocol.md §3.4).
fn next_request_id(last: &mut u32, pending: &HashMap<u32, Pending>) -> RequestId {
    loop {
        *last = last.checked_add(1).unwrap_or(1);
        if !pending.contains_key(last) {
            return RequestId(*last);
        }
    }
}

/// Checks a delivery's meta block, so that `Message` accessors can rely on it.
fn check_meta(delivery: &Delivery) -> Result<(), String> {
    MetaView::parse(&delivery.meta)
        .map(drop)
        .map_err(|e| format!("delivery {}: bad meta block: {e}", delivery.delivery_tag))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_wrap_and_skip_pending_ones() {
        let mut pending = HashMap::new();
        let mut last = 0;
        assert_eq!(next_request_id(&mut last, &pending), RequestId(1));
        let (reply, _rx) = oneshot::channel();
        pending.insert(1, Pending::Reply(reply));
        let (reply, _rx2) = oneshot::channel();
        pending.insert(u32::MAX, Pending::Reply(reply));
        let mut last = u32::MAX - 2;
        assert_eq!(
            next_request_id(&mut last, &pending),
            RequestId(u32::MAX - 1)
        );
        // u32::MAX is pending, 0 is reserved, 1 is pending.
        assert_eq!(next_request_id(&mut last, &pending), RequestId(2));
    }
}
