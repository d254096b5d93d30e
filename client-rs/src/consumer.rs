//! Consuming: [`Consumer`], a stream of [`Message`]s, and [`Client::get`].
//!
//! Deliveries arrive in batches (one `Deliver` frame each) on the consumer's channel; the
//! stream hands them out one by one without copying their bodies out of the receive buffer.
//! A message is settled with [`Message::ack`], [`nack`](Message::nack),
//! [`reject`](Message::reject), or its lease pushed back with [`extend`](Message::extend).
//! These return once the request is queued, as RabbitMQ's `basic.ack` (the broker answers
//! settles only with errors, which are then logged); their `_confirmed` variants
//! ([`Message::ack_confirmed`], ...) wait for the broker's outcome, as SQS's
//! `DeleteMessage`, and return its error (`UNKNOWN_DELIVERY_TAG` for an expired lease) to
//! the call that sent the request.
//!
//! A consumer outlives its connection: when the client reconnects, or the leader of its
//! replicated queue moves (`LEADER_MOVED`), the stream consumes again with the same request
//! (queue, tag, prefetch, options) and goes on; a `NOT_LEADER` answer is followed to the node
//! it names. Deliveries of a lost connection still buffered are skipped (they will come
//! again); one already handed out cannot be settled ([`Error::DeliveryLost`]).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures_core::Stream;
use tokio::sync::{mpsc, oneshot, watch};

use crate::circuit::CircuitNotice;

use crate::client::{unexpected_reply, Client, Follow};
use crate::connection::{Command, ConsumerEvent, Subscribed};
use crate::error::{Error, Result};
use crate::options::{millis, millis_at_least_1, ConsumeOptions};
use crate::url::HostPort;
use crate::wire::{
    Ack, Consume, ConsumerId, Delivery, DeliveryTag, ErrorCode, Extend, Get, GetMany, HeaderValue,
    Headers, MetaView, Nack, Properties, Reject, Reply, Request, SetPrefetch, TraceParent,
};

/// A consumer started on some connection of a client.
struct Subscription {
    client: Client,
    ok: crate::wire::ConsumeOk,
    generation: u64,
    events: mpsc::UnboundedReceiver<ConsumerEvent>,
}

/// A consumer consuming again, after its connection was lost or its leader moved.
type Resubscribing = Pin<Box<dyn Future<Output = Result<Subscription>> + Send>>;

/// Where a consumer consumes again.
enum Target {
    /// Through the client's own connection (reconnected), following `NOT_LEADER`.
    Home,
    /// On the connection it was on, after a pause: `LEADER_MOVED` named no leader yet.
    Current,
    /// At this node: `LEADER_MOVED` named it.
    Leader(HostPort),
}

/// The pause before consuming again after a `LEADER_MOVED` that named no leader.
const LEADER_MOVED_PAUSE: Duration = Duration::from_millis(200);

impl Client {
    /// Starts consuming from `queue`. The [`Consumer`] is a [`Stream`] of messages; it ends
    /// when the consumer is cancelled, and yields an error first when the server cancels it
    /// or the connection fails. Dropping it cancels the consumer and requeues the deliveries
    /// it had received but not yet handed out.
    ///
    /// ```no_run
    /// # async fn example(client: sluice_client::Client) -> sluice_client::Result<()> {
    /// use futures_util::StreamExt;
    /// use sluice_client::ConsumeOptions;
    ///
    /// let mut consumer = client.consume("tasks", ConsumeOptions::new().prefetch(100)).await?;
    /// while let Some(message) = consumer.next().await {
    ///     let message = message?;
    ///     println!("{:?}", message.body);
    ///     message.ack().await?;
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub async fn consume(&self, queue: &str, options: ConsumeOptions) -> Result<Consumer> {
        let mut request = options.into_request(queue, self.shared.settings.prefetch);
        let sub = self.subscribe(request.clone()).await?;
        // Consuming again keeps the tag, the server's if it chose one.
        request.consumer_tag = sub.ok.consumer_tag.clone();
        Ok(Consumer {
            id: sub.ok.consumer_id,
            tag: sub.ok.consumer_tag,
            queue: Arc::from(queue),
            events: sub.events,
            batch: Vec::new().into_iter(),
            batch_generation: sub.generation,
            generation: sub.generation,
            client: sub.client,
            home: self.clone(),
            request,
            resubscribing: Mutex::new(None),
            cancelled: false,
            ended: false,
            circuit: watch::Sender::new(CircuitNotice::default()),
        })
    }

    /// Sends `Consume` on this connection.
    async fn subscribe_here(&self, request: Consume) -> Result<Subscription> {
        let (events_tx, events) = mpsc::unbounded_channel();
        let (reply, rx) = oneshot::channel();
        self.send(Command::Consume {
            request,
            events: events_tx,
            reply,
        })?;
        let Subscribed { ok, generation } = self.wait(rx).await?;
        Ok(Subscription {
            client: self.clone(),
            ok,
            generation,
            events,
        })
    }

    /// Starts a consumer, following `NOT_LEADER` to the queue's leader.
    async fn subscribe(&self, request: Consume) -> Result<Subscription> {
        let mut client = self.clone();
        let mut attempt = 0;
        loop {
            match client.subscribe_here(request.clone()).await {
                Ok(sub) => return Ok(sub),
                Err(error) => match client.follow(error, attempt).await {
                    Follow::Retry(next) => client = next,
                    Follow::Fail(error) => return Err(error),
                },
            }
            attempt += 1;
        }
    }

    /// Takes one ready message from `queue` without a consumer; `None` when it has none.
    /// The message must be settled like a consumer's. A `NOT_LEADER` answer (a replicated
    /// queue led by another node) is followed.
    pub async fn get(&self, queue: &str) -> Result<Option<Message>> {
        let mut client = self.clone();
        let mut attempt = 0;
        loop {
            match client.get_here(queue).await {
                Ok(message) => return Ok(message),
                Err(error) => match client.follow(error, attempt).await {
                    Follow::Retry(next) => client = next,
                    Follow::Fail(error) => return Err(error),
                },
            }
            attempt += 1;
        }
    }

    async fn get_here(&self, queue: &str) -> Result<Option<Message>> {
        let reply = self
            .call(Get {
                queue: queue.to_owned(),
            })
            .await?;
        // A reply of the current connection: its generation is the delivery's.
        let generation = self.generation();
        match reply {
            Reply::GetOk(ok) => Ok(ok
                .delivery
                .map(|d| Message::new(d, Arc::from(queue), self.clone(), generation))),
            other => Err(unexpected_reply(other)),
        }
    }

    /// Takes up to `max` (1..=1000) ready messages from `queue`, waiting up to `wait` (at most
    /// 20 s) for the first one: answers as soon as any message is ready, with what is ready
    /// then, or empty when `wait` passes (protocol.md §9.7). Each message must be settled
    /// like a consumer's; its lease is the queue's.
    ///
    /// ```no_run
    /// # async fn example(client: sluice_client::Client) -> sluice_client::Result<()> {
    /// use std::time::Duration;
    ///
    /// for message in client.get_many("tasks", 10, Duration::from_secs(5)).await? {
    ///     println!("{:?}", message.body);
    ///     message.ack().await?;
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub async fn get_many(&self, queue: &str, max: u32, wait: Duration) -> Result<Vec<Message>> {
        let mut client = self.clone();
        let mut attempt = 0;
        loop {
            match client.get_many_here(queue, max, wait).await {
                Ok(messages) => return Ok(messages),
                Err(error) => match client.follow(error, attempt).await {
                    Follow::Retry(next) => client = next,
                    Follow::Fail(error) => return Err(error),
                },
            }
            attempt += 1;
        }
    }

    async fn get_many_here(&self, queue: &str, max: u32, wait: Duration) -> Result<Vec<Message>> {
        let request = GetMany {
            queue: queue.to_owned(),
            max,
            wait_ms: u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
        };
        let (reply, rx) = oneshot::channel();
        self.send(Command::Call {
            request: request.into(),
            reply,
        })?;
        // The server answers after the wait at the latest: the request timeout counts from then.
        let after = self.shared.settings.request_timeout.saturating_add(wait);
        let reply = match tokio::time::timeout(after, rx).await {
            Err(_) => {
                return Err(Error::Timeout {
                    operation: "request",
                    after,
                })
            }
            Ok(Err(_)) => return Err(self.shared.closed_error()),
            Ok(Ok(result)) => result?,
        };
        let generation = self.generation();
        match reply {
            Reply::GetManyOk(ok) => {
                let queue: Arc<str> = Arc::from(queue);
                Ok(ok
                    .deliveries
                    .into_iter()
                    .map(|d| Message::new(d, Arc::clone(&queue), self.clone(), generation))
                    .collect())
            }
            other => Err(unexpected_reply(other)),
        }
    }
}

/// A consumer: a [`Stream`] of [`Message`]s from one queue.
///
/// Items are `Err` only once, right before the stream ends: when the server cancels the
/// consumer ([`Error::ConsumerCancelled`]) or the connection fails
/// ([`Error::ConnectionClosed`]). After [`Client::close`] or [`Consumer::cancel`] the stream
/// ends without an error once the messages already received are handed out.
///
/// When the client reconnects, or the leader of a replicated queue moves (`LEADER_MOVED`),
/// the stream consumes again with the same request and goes on (see the module
/// documentation).
pub struct Consumer {
    id: ConsumerId,
    tag: String,
    queue: Arc<str>,
    events: mpsc::UnboundedReceiver<ConsumerEvent>,
    /// The rest of the last `Deliver` batch, of connection generation `batch_generation`.
    batch: std::vec::IntoIter<Delivery>,
    batch_generation: u64,
    /// The generation of the connection the consumer is on now.
    generation: u64,
    /// The connection the consumer is on now (the client's, or a leader's).
    client: Client,
    /// The client it was started from: where it consumes again.
    home: Client,
    /// The request that started it, to consume again.
    request: Consume,
    /// Consuming again (a `Mutex` only to keep `Consumer` `Sync`: it is used through `&mut`).
    resubscribing: Mutex<Option<Resubscribing>>,
    /// `cancel` was called: a lost connection ends the stream instead.
    cancelled: bool,
    ended: bool,
    /// Its circuit as last noticed (circuit breaking).
    circuit: watch::Sender<CircuitNotice>,
}

impl fmt::Debug for Consumer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Consumer")
            .field("id", &self.id)
            .field("tag", &self.tag)
            .field("queue", &self.queue)
            .field("buffered", &self.batch.len())
            .field("ended", &self.ended)
            .finish_non_exhaustive()
    }
}

impl Consumer {
    /// The consumer's number on its connection.
    pub fn id(&self) -> ConsumerId {
        self.id
    }

    /// The consumer's tag (the server-generated one if none was asked for).
    pub fn tag(&self) -> &str {
        &self.tag
    }

    /// The queue it consumes from.
    pub fn queue(&self) -> &str {
        &self.queue
    }

    /// Its circuit as the broker last noticed it (circuit breaking, docs/circuit-breaking.md):
    /// closed unless the broker said otherwise. Notices are taken in while the stream is
    /// polled, so a consumer waiting for its next message sees them at once.
    pub fn circuit(&self) -> CircuitNotice {
        self.circuit.borrow().clone()
    }

    /// A receiver of its circuit's changes (see [`circuit`](Self::circuit)), e.g. to log
    /// them or pause other work while it is open; it may be moved to another task.
    pub fn circuit_changes(&self) -> watch::Receiver<CircuitNotice> {
        self.circuit.subscribe()
    }

    /// The client the consumer belongs to: the connection it consumes on (a replicated
    /// queue's leader's, if it followed one).
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Changes the prefetch window (0 = no limit). Lowering it does not take back
    /// deliveries already made. Consuming again after a reconnection uses the new value.
    pub async fn set_prefetch(&mut self, prefetch: u32) -> Result<()> {
        self.request.prefetch = prefetch;
        self.client.send_on(
            self.generation,
            SetPrefetch {
                consumer_id: self.id,
                prefetch,
            },
        )
    }

    /// Starts consuming again (after `Lost` or `LEADER_MOVED`), at `leader` if known.
    fn resubscribe(&mut self, target: Target) {
        let home = self.home.clone();
        let current = self.client.clone();
        let request = self.request.clone();
        let future = async move {
            match target {
                Target::Leader(host) => match home.leader(host).await {
                    Ok(client) => client.subscribe(request).await,
                    Err(_) => home.subscribe(request).await,
                },
                Target::Current if !current.is_closed() => {
                    // No leader known yet: an election is going on.
                    tokio::time::sleep(LEADER_MOVED_PAUSE).await;
                    current.subscribe(request).await
                }
                Target::Current | Target::Home => home.subscribe(request).await,
            }
        };
        self.batch = Vec::new().into_iter();
        *self
            .resubscribing
            .get_mut()
            .unwrap_or_else(|e| e.into_inner()) = Some(Box::pin(future));
    }

    /// Where a consumer ended by `error` consumes again, if it does: `LEADER_MOVED` (at the
    /// address it names, else through the client), or its leader's connection lost.
    fn moves_on(&self, error: &Error) -> Option<Target> {
        if self.cancelled || self.home.router_settings_reconnect().is_zero() {
            return None;
        }
        match error {
            Error::ConsumerCancelled {
                code: ErrorCode::LeaderMoved,
                reason,
            } => Some(match HostPort::parse(reason) {
                Ok(host) => Target::Leader(host),
                Err(_) => Target::Current,
            }),
            // A leader's connection (which does not reconnect) was lost.
            Error::ConnectionClosed(reason)
                if !Arc::ptr_eq(&self.client.shared, &self.home.shared)
                    && !matches!(reason, crate::CloseReason::Normal)
                    && !self.home.is_closed() =>
            {
                Some(Target::Home)
            }
            _ => None,
        }
    }

    /// Stops the consumer and waits for the server to confirm. No delivery follows; the
    /// stream still hands out the messages already received, then ends. They (and any
    /// message not yet settled) must still be settled.
    pub async fn cancel(&mut self) -> Result<()> {
        if self.ended {
            return Ok(());
        }
        self.cancelled = true;
        if self
            .resubscribing
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            .is_some()
        {
            // Not consuming anywhere yet; a consumer started meanwhile is released below.
            self.ended = true;
            return Ok(());
        }
        let (reply, rx) = oneshot::channel();
        self.client.send(Command::Cancel {
            consumer: self.id,
            generation: self.generation,
            reply,
        })?;
        self.client.wait(rx).await
    }

    /// Takes the outcome of consuming again, once it is there.
    fn poll_resubscribed(&mut self, cx: &mut Context<'_>) -> Poll<Result<()>> {
        let slot = self
            .resubscribing
            .get_mut()
            .unwrap_or_else(|e| e.into_inner());
        let Some(future) = slot.as_mut() else {
            return Poll::Ready(Ok(()));
        };
        let outcome = ready!(future.as_mut().poll(cx));
        *slot = None;
        let sub = outcome?;
        self.id = sub.ok.consumer_id;
        self.generation = sub.generation;
        // A new consumer on the broker: its circuit starts closed.
        self.circuit.send_if_modified(|c| {
            let changed = c.state != crate::wire::CircuitState::Closed;
            if changed {
                *c = CircuitNotice::default();
            }
            changed
        });
        self.events = sub.events;
        self.client = sub.client;
        Poll::Ready(Ok(()))
    }
}

impl Stream for Consumer {
    type Item = Result<Message>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            if !this.ended {
                if let Err(error) = ready!(this.poll_resubscribed(cx)) {
                    this.ended = true;
                    return Poll::Ready(Some(Err(error)));
                }
            }
            if let Some(delivery) = this.batch.next() {
                if this.batch_generation != this.client.generation() {
                    // Its connection was lost: it will be delivered again.
                    this.batch = Vec::new().into_iter();
                    continue;
                }
                let queue = Arc::clone(&this.queue);
                let client = this.client.clone();
                let message = Message::new(delivery, queue, client, this.batch_generation);
                return Poll::Ready(Some(Ok(message)));
            }
            if this.ended {
                return Poll::Ready(None);
            }
            match ready!(this.events.poll_recv(cx)) {
                Some(ConsumerEvent::Deliveries {
                    generation,
                    deliveries,
                }) => {
                    this.batch = deliveries.into_iter();
                    this.batch_generation = generation;
                }
                Some(ConsumerEvent::Circuit(notice)) => {
                    this.circuit.send_replace(notice.into());
                }
                Some(ConsumerEvent::Lost) if !this.cancelled => this.resubscribe(Target::Home),
                Some(ConsumerEvent::Lost) => this.ended = true,
                Some(ConsumerEvent::Ended(error)) => match this.moves_on(&error) {
                    Some(leader) => this.resubscribe(leader),
                    None => {
                        this.ended = true;
                        return Poll::Ready(Some(Err(error)));
                    }
                },
                None => {
                    this.ended = true;
                    return Poll::Ready(None);
                }
            }
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (
            self.batch.len(),
            if self.ended {
                Some(self.batch.len())
            } else {
                None
            },
        )
    }
}

impl Drop for Consumer {
    /// Cancels the consumer and requeues the deliveries received but never handed out.
    fn drop(&mut self) {
        let mut requeue: Vec<DeliveryTag> = self.batch.by_ref().map(|d| d.delivery_tag).collect();
        let mut ended = self.ended;
        while let Ok(event) = self.events.try_recv() {
            match event {
                ConsumerEvent::Deliveries { deliveries, .. } => {
                    requeue.extend(deliveries.iter().map(|d| d.delivery_tag));
                }
                ConsumerEvent::Lost | ConsumerEvent::Ended(_) => ended = true,
                ConsumerEvent::Circuit(_) => {}
            }
        }
        // The task drops it if the connection it names was lost meanwhile.
        if !ended || !requeue.is_empty() {
            let _ = self.client.send(Command::Release {
                consumer: self.id,
                generation: self.generation,
                requeue,
            });
        }
    }
}

/// A delivered message.
///
/// The body and the delivery facts are fields; what the publisher set (exchange, routing key,
/// properties, headers) is read from the meta block on demand. Settle it once, with
/// [`ack`](Self::ack), [`nack`](Self::nack) or [`reject`](Self::reject); a second settlement
/// fails with [`Error::AlreadySettled`]. A message dropped unsettled stays outstanding until
/// its lease expires or the connection closes, then returns to its queue.
pub struct Message {
    /// The body.
    pub body: Bytes,
    /// Names this delivery on its connection.
    pub delivery_tag: DeliveryTag,
    /// The message may have been delivered before.
    pub redelivered: bool,
    /// Deliveries of this message so far, this one included (1 = first).
    pub delivery_count: u32,
    /// The message's number in its queue (stable across redeliveries).
    pub message_seq: u64,
    /// When its queue stored it, Unix milliseconds by the broker's clock (stable across
    /// redeliveries); see [`enqueued_at`](Self::enqueued_at).
    pub enqueued_at_ms: u64,
    meta: Bytes,
    /// The queue it came from: where a confirmed settle sends its barrier.
    queue: Arc<str>,
    client: Client,
    /// The generation of the connection it came on: it is settled only there.
    generation: u64,
    settled: AtomicBool,
}

impl fmt::Debug for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Message")
            .field("delivery_tag", &self.delivery_tag)
            .field("exchange", &self.exchange())
            .field("routing_key", &self.routing_key())
            .field("redelivered", &self.redelivered)
            .field("delivery_count", &self.delivery_count)
            .field("enqueued_at_ms", &self.enqueued_at_ms)
            .field("body_len", &self.body.len())
            .finish_non_exhaustive()
    }
}

/// What [`Message::meta`] returns if a block could not be read (never: the connection task
/// validates every meta block before it hands a delivery out).
const EMPTY_META: MetaView<'static> = MetaView {
    exchange: "",
    routing_key: "",
    mandatory: false,
    persistent: false,
    content_type: None,
    content_encoding: None,
    message_id: None,
    correlation_id: None,
    reply_to: None,
    expiration_ms: None,
    timestamp_ms: None,
    raw_headers: &[],
    priority: None,
    trace_parent: None,
    trace_state: None,
    deliver_at_ms: None,
    delay_ms: None,
};

/// A reason as the wire carries it: an empty one is left out.
/// Longer reasons (a stack trace) are cut at a character boundary to
/// [`MAX_SETTLE_REASON_LEN`](crate::wire::MAX_SETTLE_REASON_LEN) bytes rather than refused:
/// a settlement that could not be sent would leave the message in flight until its lease ran
/// out.
fn non_empty(mut reason: String) -> Option<String> {
    let max = crate::wire::MAX_SETTLE_REASON_LEN;
    if reason.len() > max {
        let cut = (0..=max)
            .rev()
            .find(|&i| reason.is_char_boundary(i))
            .unwrap_or(0);
        reason.truncate(cut);
    }
    (!reason.is_empty()).then_some(reason)
}

impl Message {
    fn new(delivery: Delivery, queue: Arc<str>, client: Client, generation: u64) -> Self {
        Message {
            body: delivery.body,
            delivery_tag: delivery.delivery_tag,
            redelivered: delivery.redelivered,
            delivery_count: delivery.delivery_count,
            message_seq: delivery.message_seq,
            enqueued_at_ms: delivery.enqueued_at_ms,
            meta: delivery.meta,
            queue,
            client,
            generation,
            settled: AtomicBool::new(false),
        }
    }

    /// True while the connection the message came on is the client's current one: it can
    /// be settled. Once `false`, settling fails with [`Error::DeliveryLost`].
    pub fn is_deliverable(&self) -> bool {
        self.lost().is_none()
    }

    /// `DeliveryLost` if the message's connection was lost (and the client went on).
    fn lost(&self) -> Option<Error> {
        if self.client.generation() != self.generation {
            return Some(Error::DeliveryLost);
        }
        // A leader's connection does not reconnect: once it is gone, so is the delivery,
        // while the client lives on.
        match self.client.close_reason() {
            Some(crate::CloseReason::Normal) | None => None,
            Some(_) if !self.client.home_is_closed() => Some(Error::DeliveryLost),
            Some(_) => None,
        }
    }

    /// The meta block as published, borrowed: exchange, routing key, flags, properties.
    pub fn meta(&self) -> MetaView<'_> {
        MetaView::parse(&self.meta).unwrap_or(EMPTY_META)
    }

    /// When its queue stored it (the broker's clock): how long a message waited is
    /// `SystemTime::now().duration_since(message.enqueued_at())`, give or take clock skew.
    pub fn enqueued_at(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(self.enqueued_at_ms)
    }

    /// The exchange it was published to (empty: the default exchange).
    pub fn exchange(&self) -> &str {
        self.meta().exchange
    }

    /// The routing key it was published with.
    pub fn routing_key(&self) -> &str {
        self.meta().routing_key
    }

    /// Its headers (decoded on each call; empty when it has none).
    pub fn headers(&self) -> Headers {
        self.meta().headers().unwrap_or_default()
    }

    /// One header's value.
    pub fn header(&self, key: &str) -> Option<HeaderValue> {
        self.headers()
            .into_iter()
            .find_map(|(k, v)| (k == key).then_some(v))
    }

    /// The W3C trace context it was published with (protocol.md §8.1), if any, to continue
    /// its trace from (with the `opentelemetry` feature, `trace_context` does it for you).
    pub fn trace_parent(&self) -> Option<TraceParent> {
        self.meta().trace_parent
    }

    /// The W3C `tracestate` that came with [`trace_parent`](Self::trace_parent).
    pub fn trace_state(&self) -> Option<&str> {
        self.meta().trace_state
    }

    /// An OpenTelemetry context whose span is the publisher's (a remote parent), for the
    /// worker's own span: the processing then shows in the publisher's trace, after the
    /// broker's spans. Without a trace parent it is an empty context (a new trace).
    ///
    /// ```no_run
    /// # async fn work(message: sluice_client::Message) -> sluice_client::Result<()> {
    /// use opentelemetry::trace::{TraceContextExt, Tracer};
    ///
    /// let tracer = opentelemetry::global::tracer("worker");
    /// let parent = message.trace_context();
    /// let span = tracer.start_with_context("process", &parent);
    /// let cx = parent.with_span(span);
    /// {
    ///     let _guard = cx.attach();
    ///     // ... process the body: spans started here are children of "process". Across
    ///     // `.await`s, pass `cx` on with opentelemetry's `FutureExt::with_context`
    ///     // instead; messages published in it continue the same trace.
    /// }
    /// message.ack().await
    /// # }
    /// ```
    #[cfg(feature = "opentelemetry")]
    pub fn trace_context(&self) -> opentelemetry::Context {
        let meta = self.meta();
        match meta.trace_parent {
            Some(tp) => crate::otel::remote_context(tp, meta.trace_state),
            None => opentelemetry::Context::new(),
        }
    }

    /// All properties, owned.
    pub fn properties(&self) -> Properties {
        self.meta()
            .to_meta()
            .map(|meta| meta.properties)
            .unwrap_or_default()
    }

    /// True once this handle has acked, nacked or rejected the delivery.
    pub fn is_settled(&self) -> bool {
        self.settled.load(Ordering::Relaxed)
    }

    /// The client the message came through.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The queue the message came from.
    pub fn queue(&self) -> &str {
        &self.queue
    }

    fn settle(&self, request: impl Into<Request>) -> Result<()> {
        if self.settled.swap(true, Ordering::Relaxed) {
            return Err(Error::AlreadySettled);
        }
        if let Some(lost) = self.lost() {
            return Err(lost);
        }
        self.client.send_on(self.generation, request)
    }

    /// Sends a settle request and waits for the broker to have handled it: `Ok` when it
    /// succeeded, the broker's error (e.g. `UNKNOWN_DELIVERY_TAG`) otherwise. Costs a round
    /// trip (an `InspectQueue` of the message's queue follows the request; its answer proves
    /// the settle succeeded, protocol.md §10).
    async fn confirm(&self, request: Request) -> Result<()> {
        if let Some(lost) = self.lost() {
            return Err(lost);
        }
        let (reply, rx) = oneshot::channel();
        self.client.send(Command::Settle {
            request,
            queue: Arc::clone(&self.queue),
            generation: self.generation,
            reply,
        })?;
        self.client.wait(rx).await
    }

    /// Marks the message settled, then [`confirm`](Self::confirm)s `request`.
    async fn settle_confirmed(&self, request: impl Into<Request>) -> Result<()> {
        if self.settled.swap(true, Ordering::Relaxed) {
            return Err(Error::AlreadySettled);
        }
        self.confirm(request.into()).await
    }

    /// Acks: the message was processed; the broker deletes it. Like RabbitMQ's `basic.ack`,
    /// this does not wait for the broker (acks are not answered on success): `Ok` means the
    /// ack was queued, and a late failure (the lease had expired, so the message will be
    /// delivered again) is only logged. [`ack_confirmed`](Self::ack_confirmed) reports it.
    pub async fn ack(&self) -> Result<()> {
        self.settle(Ack {
            delivery_tag: self.delivery_tag,
            multiple: false,
        })
    }

    /// Acks and waits for the broker to have deleted the message, like SQS's
    /// `DeleteMessage`: fails with [`ErrorCode::UnknownDeliveryTag`](crate::ErrorCode) when
    /// the delivery was no longer outstanding (its lease expired: the message will be, or
    /// was, delivered again). Costs one round trip; acks of other messages sent meanwhile
    /// are not slowed down.
    ///
    /// ```no_run
    /// # async fn example(message: sluice_client::Message) -> sluice_client::Result<()> {
    /// match message.ack_confirmed().await {
    ///     Ok(()) => {}
    ///     Err(e) if e.is_unknown_delivery_tag() => println!("too late: it will come again"),
    ///     Err(e) => return Err(e),
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub async fn ack_confirmed(&self) -> Result<()> {
        self.settle_confirmed(Ack {
            delivery_tag: self.delivery_tag,
            multiple: false,
        })
        .await
    }

    /// Acks this delivery and every earlier outstanding one of the connection, whatever
    /// consumer it came from (other [`Message`] handles are not marked settled).
    pub async fn ack_multiple(&self) -> Result<()> {
        self.settle(Ack {
            delivery_tag: self.delivery_tag,
            multiple: true,
        })
    }

    /// Nacks: the message was not processed. With `requeue` it returns to its queue
    /// (`delivery_count` + 1, dead-lettered past the queue's delivery limit); without, it is
    /// dead-lettered (or dropped when the queue has no dead-letter exchange). Does not wait
    /// for the broker, as [`ack`](Self::ack).
    pub async fn nack(&self, requeue: bool) -> Result<()> {
        self.settle(Nack {
            delivery_tag: self.delivery_tag,
            multiple: false,
            requeue,
            delay_ms: None,
            reason: None,
        })
    }

    /// Nacks and requeues the message to be ready again only after `delay` (a retry with
    /// backoff chosen by the consumer; it replaces the queue's `retry_backoff`). The delay
    /// is kept durably: a broker restart neither delivers it early nor loses it.
    pub async fn nack_with_delay(&self, delay: Duration) -> Result<()> {
        self.settle(Nack {
            delivery_tag: self.delivery_tag,
            multiple: false,
            requeue: true,
            delay_ms: Some(millis(delay)),
            reason: None,
        })
    }

    /// [`nack_with_delay`](Self::nack_with_delay), waiting for the broker's outcome as
    /// [`ack_confirmed`](Self::ack_confirmed).
    pub async fn nack_with_delay_confirmed(&self, delay: Duration) -> Result<()> {
        self.settle_confirmed(Nack {
            delivery_tag: self.delivery_tag,
            multiple: false,
            requeue: true,
            delay_ms: Some(millis(delay)),
            reason: None,
        })
        .await
    }

    /// [`nack`](Self::nack), waiting for the broker's outcome as
    /// [`ack_confirmed`](Self::ack_confirmed).
    pub async fn nack_confirmed(&self, requeue: bool) -> Result<()> {
        self.settle_confirmed(Nack {
            delivery_tag: self.delivery_tag,
            multiple: false,
            requeue,
            delay_ms: None,
            reason: None,
        })
        .await
    }

    /// [`nack`](Self::nack) with the reason the worker gives up, kept in the message's
    /// history for operators (`sluice trace MESSAGE-ID`, the dashboard's Trace page).
    /// Cut to [`MAX_SETTLE_REASON_LEN`](crate::wire::MAX_SETTLE_REASON_LEN) bytes; an
    /// empty reason is sent as none.
    pub async fn nack_with_reason(&self, requeue: bool, reason: impl Into<String>) -> Result<()> {
        self.settle(Nack {
            delivery_tag: self.delivery_tag,
            multiple: false,
            requeue,
            delay_ms: None,
            reason: non_empty(reason.into()),
        })
    }

    /// Every form of nack at once, for callers that take them as arguments (the Python
    /// client): requeue (after `delay`, which needs `requeue`), an optional reason (empty =
    /// none), and with `confirm` wait for the broker's outcome as
    /// [`nack_confirmed`](Self::nack_confirmed) does.
    pub async fn nack_with(
        &self,
        requeue: bool,
        delay: Option<Duration>,
        reason: Option<String>,
        confirm: bool,
    ) -> Result<()> {
        if delay.is_some() && !requeue {
            // Checked before the message counts as settled: it can still be settled.
            return Err(Error::InvalidArgument(
                crate::wire::WireError::InvalidValue {
                    what: "nack delay without requeue",
                    value: 0,
                },
            ));
        }
        let nack = Nack {
            delivery_tag: self.delivery_tag,
            multiple: false,
            requeue,
            delay_ms: delay.map(millis),
            reason: reason.and_then(non_empty),
        };
        if confirm {
            self.settle_confirmed(nack).await
        } else {
            self.settle(nack)
        }
    }

    /// A reject with an optional reason (empty = none); with `confirm`, waits for the
    /// broker's outcome as [`reject_confirmed`](Self::reject_confirmed) does.
    pub async fn reject_with(&self, reason: Option<String>, confirm: bool) -> Result<()> {
        let reject = Reject {
            delivery_tag: self.delivery_tag,
            reason: reason.and_then(non_empty),
        };
        if confirm {
            self.settle_confirmed(reject).await
        } else {
            self.settle(reject)
        }
    }

    /// [`reject`](Self::reject) with the reason the message is bad, kept in its history as
    /// for [`nack_with_reason`](Self::nack_with_reason).
    pub async fn reject_with_reason(&self, reason: impl Into<String>) -> Result<()> {
        self.settle(Reject {
            delivery_tag: self.delivery_tag,
            reason: non_empty(reason.into()),
        })
    }

    /// Rejects: the message is bad; dead-lettered, or dropped without a dead-letter exchange.
    /// Does not wait for the broker, as [`ack`](Self::ack).
    pub async fn reject(&self) -> Result<()> {
        self.settle(Reject {
            delivery_tag: self.delivery_tag,
            reason: None,
        })
    }

    /// [`reject`](Self::reject), waiting for the broker's outcome as
    /// [`ack_confirmed`](Self::ack_confirmed).
    pub async fn reject_confirmed(&self) -> Result<()> {
        self.settle_confirmed(Reject {
            delivery_tag: self.delivery_tag,
            reason: None,
        })
        .await
    }

    /// Pushes the ack deadline to `by` from now (a heartbeat for long tasks). Does not
    /// settle the message, nor wait for the broker, as [`ack`](Self::ack). `Duration::ZERO`
    /// is the exception: it releases the message now (SQS's visibility timeout 0), ready
    /// again at once, and this delivery does not count against the queue's `delivery_limit`
    /// (protocol.md §10.4).
    pub async fn extend(&self, by: Duration) -> Result<()> {
        if by.is_zero() {
            return self.settle(Extend {
                delivery_tag: self.delivery_tag,
                extend_ms: 0,
            });
        }
        if self.is_settled() {
            return Err(Error::AlreadySettled);
        }
        if let Some(lost) = self.lost() {
            return Err(lost);
        }
        self.client
            .send_on(self.generation, self.extend_request(by))
    }

    /// [`extend`](Self::extend), waiting for the broker's outcome: fails with
    /// `UNKNOWN_DELIVERY_TAG` when the lease had already expired.
    pub async fn extend_confirmed(&self, by: Duration) -> Result<()> {
        if by.is_zero() {
            return self
                .settle_confirmed(Extend {
                    delivery_tag: self.delivery_tag,
                    extend_ms: 0,
                })
                .await;
        }
        if self.is_settled() {
            return Err(Error::AlreadySettled);
        }
        self.confirm(self.extend_request(by).into()).await
    }

    fn extend_request(&self, by: Duration) -> Extend {
        Extend {
            delivery_tag: self.delivery_tag,
            extend_ms: millis_at_least_1(by),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::non_empty;
    use crate::wire::MAX_SETTLE_REASON_LEN;

    #[test]
    fn a_reason_is_cut_to_the_wire_limit_at_a_character_boundary() {
        assert_eq!(non_empty(String::new()), None);
        assert_eq!(non_empty("db down".into()).as_deref(), Some("db down"));
        let long = "é".repeat(MAX_SETTLE_REASON_LEN); // 2 bytes each
        let cut = non_empty(long).unwrap();
        assert_eq!(cut.len(), MAX_SETTLE_REASON_LEN);
        let odd = format!("x{}", "é".repeat(MAX_SETTLE_REASON_LEN));
        assert_eq!(non_empty(odd).unwrap().len(), MAX_SETTLE_REASON_LEN - 1);
    }
}
