//! Publishing: one message and wait ([`Client::publish`]), a pipelined batch
//! ([`Client::publish_batch`]), or a stream of messages through a confirm window
//! ([`Publisher`]).
//!
//! The server numbers a connection's messages implicitly and settles them with cumulative
//! `Confirm` frames, listing refused ones in `PublishRejected` first (protocol.md §8.2–8.4).
//! The connection task does that bookkeeping; none of these calls waits for a round trip per
//! message, and consecutive messages share `Publish` frames whichever call they came from.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use tokio::sync::{oneshot, Semaphore};

use crate::client::Client;
use crate::connection::{Batch, Command, PublishSink};
use crate::error::{CloseReason, Error, Result};
use crate::options::PublishOptions;
use crate::wire::{meta_len, put_meta, Properties, PublishMessage};

/// Largest publish command `publish_batch` hands to the connection at once, so a huge batch
/// is encoded progressively instead of all at once.
const CHUNK_BYTES: usize = 1024 * 1024;
const CHUNK_MESSAGES: usize = 8192;
/// Meta blocks are encoded into shared buffers of at least this size.
const META_BUF: usize = 16 * 1024;

/// How the server settled a published message it accepted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum Confirmed {
    /// Stored (durably, if persistent and its queues are durable) in every queue it was
    /// routed to, or routed nowhere and not mandatory.
    #[default]
    Stored,
    /// Confirmed, but not stored again in at least one queue it was routed to: that queue
    /// had accepted a message with the same `message_id` within its dedup window (protocol.md
    /// §8.4). Other queues it was routed to may have stored it.
    Duplicate,
}

impl Confirmed {
    /// Whether a queue took the message as a duplicate.
    pub fn is_duplicate(self) -> bool {
        self == Confirmed::Duplicate
    }
}

/// A message for [`Client::publish_batch`]: where it goes, its body and its options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutgoingMessage {
    /// Exchange; empty = the default exchange (routes to the queue named by the routing key).
    pub exchange: String,
    /// Routing key.
    pub routing_key: String,
    /// Body, opaque to the broker.
    pub body: Bytes,
    /// Flags and properties (default: persistent).
    pub options: PublishOptions,
}

impl OutgoingMessage {
    /// A message with default options (persistent, not mandatory).
    pub fn new(
        exchange: impl Into<String>,
        routing_key: impl Into<String>,
        body: impl Into<Bytes>,
    ) -> Self {
        OutgoingMessage {
            exchange: exchange.into(),
            routing_key: routing_key.into(),
            body: body.into(),
            options: PublishOptions::default(),
        }
    }

    /// Replaces the options.
    pub fn with_options(mut self, options: PublishOptions) -> Self {
        self.options = options;
        self
    }
}

/// A message id no other message has: a random prefix drawn once per process, and a counter.
fn fresh_message_id() -> String {
    static PREFIX: OnceLock<u64> = OnceLock::new();
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let prefix = PREFIX.get_or_init(|| fastrand::u64(..));
    format!("{prefix:016x}-{:x}", NEXT.fetch_add(1, Ordering::Relaxed))
}

/// Encodes meta blocks, many to one allocation, and checks sizes against the server's limit.
struct MetaEncoder {
    buf: BytesMut,
    max_message_len: usize,
    /// Give messages without a `message_id` a fresh one (`ClientBuilder::resend`).
    stamp_ids: bool,
}

impl MetaEncoder {
    /// A copy of `properties` with what the client adds: a fresh message id
    /// (`ClientBuilder::resend`), the current OpenTelemetry span (the `opentelemetry`
    /// feature). `None` when nothing is added, so the common case copies nothing.
    fn adjusted(&self, properties: &Properties) -> Option<Properties> {
        let mut adjusted = None;
        if self.stamp_ids && properties.message_id.is_none() {
            let mut stamped = properties.clone();
            stamped.message_id = Some(fresh_message_id());
            adjusted = Some(stamped);
        }
        #[cfg(feature = "opentelemetry")]
        if let Some(traced) =
            crate::otel::with_current_span(adjusted.as_ref().unwrap_or(properties))
        {
            adjusted = Some(traced);
        }
        adjusted
    }

    fn new(max_message_len: usize, stamp_ids: bool) -> Self {
        MetaEncoder {
            buf: BytesMut::new(),
            max_message_len,
            stamp_ids,
        }
    }

    fn encode(
        &mut self,
        exchange: &str,
        routing_key: &str,
        body: Bytes,
        options: &PublishOptions,
    ) -> Result<PublishMessage> {
        let adjusted = self.adjusted(&options.properties);
        let properties = adjusted.as_ref().unwrap_or(&options.properties);
        let len = meta_len(exchange, routing_key, properties);
        let size = len + body.len();
        if size > self.max_message_len {
            return Err(Error::MessageTooLarge {
                size,
                max: self.max_message_len,
            });
        }
        if self.buf.capacity() < len {
            self.buf.reserve(len.max(META_BUF));
        }
        if let Err(e) = put_meta(
            &mut self.buf,
            exchange,
            routing_key,
            options.mandatory,
            properties,
        ) {
            self.buf.clear();
            return Err(e.into());
        }
        Ok(PublishMessage {
            meta: self.buf.split().freeze(),
            body,
        })
    }
}

impl Client {
    fn encode_one(
        &self,
        exchange: &str,
        routing_key: &str,
        body: Bytes,
        options: &PublishOptions,
    ) -> Result<PublishMessage> {
        let len = meta_len(exchange, routing_key, &options.properties);
        let mut encoder = MetaEncoder {
            buf: BytesMut::with_capacity(len),
            max_message_len: self.shared.info.max_message_len,
            stamp_ids: self.shared.settings.resend_ids,
        };
        encoder.encode(exchange, routing_key, body, options)
    }

    /// Publishes one message and waits until the server settles it: `Ok` once it is stored
    /// (durably, if persistent and its queues are durable) or was dropped as unroutable and
    /// not mandatory ([`Confirmed::Duplicate`] when a queue's dedup window already had its
    /// `message_id`); [`Error::PublishRejected`] if the server refused it.
    ///
    /// Many concurrent calls share frames and confirms, but each waits for its own confirm;
    /// for throughput from one task use [`publish_batch`](Self::publish_batch) or a
    /// [`Publisher`].
    pub async fn publish(
        &self,
        exchange: &str,
        routing_key: &str,
        body: impl Into<Bytes>,
        options: &PublishOptions,
    ) -> Result<Confirmed> {
        let message = self.encode_one(exchange, routing_key, body.into(), options)?;
        let (reply, rx) = oneshot::channel();
        self.send(Command::Publish {
            batch: Batch::One(message),
            sink: PublishSink::One {
                reply,
                permit: None,
            },
        })?;
        PublishConfirm { rx }.await
    }

    /// Publishes many messages pipelined, and returns each one's outcome, in order, once all
    /// are settled. Messages that cannot be sent (too large, a field too long) fail alone;
    /// the others go out.
    ///
    /// ```no_run
    /// # async fn example(client: sluice_client::Client) {
    /// use sluice_client::OutgoingMessage;
    ///
    /// let jobs = (0..1000).map(|i| OutgoingMessage::new("", "tasks", format!("job-{i}")));
    /// let outcomes = client.publish_batch(jobs).await;
    /// let refused = outcomes.iter().filter(|r| r.is_err()).count();
    /// # }
    /// ```
    pub async fn publish_batch<I>(&self, messages: I) -> Vec<Result<Confirmed>>
    where
        I: IntoIterator<Item = OutgoingMessage>,
    {
        let mut results: Vec<Result<Confirmed>> = Vec::new();
        let mut waiting = Vec::new();
        let mut encoder = MetaEncoder::new(
            self.shared.info.max_message_len,
            self.shared.settings.resend_ids,
        );
        let mut chunk = Chunk::default();
        for (i, message) in messages.into_iter().enumerate() {
            let OutgoingMessage {
                exchange,
                routing_key,
                body,
                options,
            } = message;
            match encoder.encode(&exchange, &routing_key, body, &options) {
                Ok(encoded) => {
                    results.push(Ok(Confirmed::Stored));
                    chunk.push(i, encoded);
                }
                Err(e) => results.push(Err(e)),
            }
            if chunk.is_full() {
                self.send_chunk(std::mem::take(&mut chunk), &mut waiting, &mut results);
            }
        }
        if !chunk.indices.is_empty() {
            self.send_chunk(chunk, &mut waiting, &mut results);
        }
        for (indices, rx) in waiting {
            match rx.await {
                Ok(outcomes) => {
                    for (i, outcome) in indices.into_iter().zip(outcomes) {
                        results[i] = outcome;
                    }
                }
                Err(_) => {
                    let error = self.shared.closed_error();
                    for i in indices {
                        results[i] = Err(error.clone());
                    }
                }
            }
        }
        results
    }

    fn send_chunk(
        &self,
        chunk: Chunk,
        waiting: &mut Vec<SentChunk>,
        results: &mut [Result<Confirmed>],
    ) {
        let (reply, rx) = oneshot::channel();
        let command = Command::Publish {
            batch: Batch::Many(chunk.messages),
            sink: PublishSink::Many { reply },
        };
        match self.send(command) {
            Ok(()) => waiting.push((chunk.indices, rx)),
            Err(error) => {
                for i in chunk.indices {
                    results[i] = Err(error.clone());
                }
            }
        }
    }

    /// A [`Publisher`] with the client's confirm window
    /// ([`ClientBuilder::confirm_window`](crate::ClientBuilder::confirm_window)).
    pub fn publisher(&self) -> Publisher {
        self.publisher_with_window(self.shared.settings.confirm_window)
    }

    /// A [`Publisher`] that lets at most `window` messages await their confirm (at least 1).
    pub fn publisher_with_window(&self, window: u32) -> Publisher {
        let max = u32::try_from(Semaphore::MAX_PERMITS).unwrap_or(u32::MAX);
        let window = window.clamp(1, max);
        Publisher {
            client: self.clone(),
            window: Arc::new(Semaphore::new(window as usize)),
            size: window,
        }
    }
}

/// A chunk handed to the connection: the messages' places in the caller's list, and where
/// their outcomes will arrive.
type SentChunk = (Vec<usize>, oneshot::Receiver<Vec<Result<Confirmed>>>);

/// Messages of one `publish_batch` command, with their places in the caller's list.
#[derive(Debug, Default)]
struct Chunk {
    messages: Vec<PublishMessage>,
    indices: Vec<usize>,
    bytes: usize,
}

impl Chunk {
    fn push(&mut self, index: usize, message: PublishMessage) {
        self.bytes += message.encoded_len();
        self.messages.push(message);
        self.indices.push(index);
    }

    fn is_full(&self) -> bool {
        self.bytes >= CHUNK_BYTES || self.messages.len() >= CHUNK_MESSAGES
    }
}

/// Publishes a stream of messages with at most a window of them awaiting their confirm.
///
/// [`publish`](Self::publish) waits only while the window is full, then hands the message to
/// the connection and returns a [`PublishConfirm`] to await (or drop) later. Clones share the
/// window.
///
/// ```no_run
/// # async fn example(client: sluice_client::Client) -> sluice_client::Result<()> {
/// use sluice_client::PublishOptions;
///
/// let publisher = client.publisher_with_window(1000);
/// let options = PublishOptions::new();
/// let mut confirms = Vec::new();
/// for i in 0..100_000 {
///     confirms.push(publisher.publish("", "tasks", format!("job-{i}"), &options).await?);
/// }
/// for confirm in confirms {
///     confirm.await?; // Err(PublishRejected) for a refused message
/// }
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct Publisher {
    client: Client,
    window: Arc<Semaphore>,
    size: u32,
}

impl Publisher {
    /// Waits for room in the window, then sends the message. The returned future resolves
    /// to its outcome. Fails at once if the message is too large or the connection is
    /// closed.
    pub async fn publish(
        &self,
        exchange: &str,
        routing_key: &str,
        body: impl Into<Bytes>,
        options: &PublishOptions,
    ) -> Result<PublishConfirm> {
        let message = self
            .client
            .encode_one(exchange, routing_key, body.into(), options)?;
        let permit = self
            .window
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| Error::ConnectionClosed(CloseReason::Aborted))?;
        let (reply, rx) = oneshot::channel();
        self.client.send(Command::Publish {
            batch: Batch::One(message),
            sink: PublishSink::One {
                reply,
                permit: Some(permit),
            },
        })?;
        Ok(PublishConfirm { rx })
    }

    /// Waits until every message published so far through this window is settled (or the
    /// connection has ended).
    pub async fn flush(&self) {
        let _all = self.window.acquire_many(self.size).await;
    }

    /// The window size.
    pub fn window(&self) -> u32 {
        self.size
    }

    /// Messages sent and not yet settled.
    pub fn in_flight(&self) -> u32 {
        self.size - self.window.available_permits() as u32
    }

    /// The client this publisher sends through.
    pub fn client(&self) -> &Client {
        &self.client
    }
}

/// The outcome of one published message: `Ok` once the server confirms it (saying whether as
/// a [`Confirmed::Duplicate`]),
/// [`Error::PublishRejected`] if it refused it, [`Error::ConnectionClosed`] if the connection
/// ended first (the message may or may not have been stored).
#[derive(Debug)]
#[must_use = "a PublishConfirm tells whether the message was refused"]
pub struct PublishConfirm {
    rx: oneshot::Receiver<Result<Confirmed>>,
}

impl Future for PublishConfirm {
    type Output = Result<Confirmed>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.rx)
            .poll(cx)
            .map(|r| r.unwrap_or(Err(Error::ConnectionClosed(CloseReason::Aborted))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{MessageMeta, MetaView};

    /// The `opentelemetry` feature: a publish inside a span carries it, next to a stamped
    /// message id; one with its own trace parent keeps it.
    #[cfg(feature = "opentelemetry")]
    #[test]
    fn a_publish_carries_the_current_span() {
        use opentelemetry::trace::{
            SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState,
        };
        let span = SpanContext::new(
            TraceId::from_bytes([3; 16]),
            SpanId::from_bytes([4; 8]),
            TraceFlags::SAMPLED,
            false,
            TraceState::NONE,
        );
        let _attached = opentelemetry::Context::new()
            .with_remote_span_context(span)
            .attach();
        let mut encoder = MetaEncoder::new(1 << 20, true);
        let body = || Bytes::from_static(b"1");
        let traced = encoder
            .encode("", "q", body(), &PublishOptions::new())
            .unwrap();
        let view = MetaView::parse(&traced.meta).unwrap();
        let tp = view.trace_parent.expect("the current span");
        assert_eq!((tp.trace_id, tp.span_id, tp.flags), ([3; 16], [4; 8], 1));
        assert!(view.message_id.is_some());
        let own = crate::wire::TraceParent::new([5; 16], [6; 8], 0).unwrap();
        let options = PublishOptions::new().trace_parent(own);
        let kept = encoder.encode("", "q", body(), &options).unwrap();
        assert_eq!(MetaView::parse(&kept.meta).unwrap().trace_parent, Some(own));
    }

    #[test]
    fn meta_blocks_share_buffers_and_match_the_wire_encoding() {
        let mut encoder = MetaEncoder::new(1 << 20, false);
        let options = PublishOptions::new().header("k", 1i64).mandatory();
        let a = encoder
            .encode("ex", "a.b", Bytes::from_static(b"1"), &options)
            .unwrap();
        let b = encoder
            .encode("", "q", Bytes::from_static(b"2"), &PublishOptions::new())
            .unwrap();
        let expected = MessageMeta {
            exchange: "ex".into(),
            routing_key: "a.b".into(),
            mandatory: true,
            properties: options.properties.clone(),
        };
        assert_eq!(a.meta, expected.to_bytes().unwrap());
        let view = MetaView::parse(&b.meta).unwrap();
        assert_eq!((view.exchange, view.routing_key), ("", "q"));
        assert!(view.persistent && !view.mandatory);
        // Both blocks live in one allocation.
        let a_end = a.meta.as_ptr() as usize + a.meta.len();
        assert_eq!(a_end, b.meta.as_ptr() as usize);
    }

    #[test]
    fn resending_clients_stamp_a_fresh_id_on_messages_without_one() {
        let mut encoder = MetaEncoder::new(1 << 20, true);
        let id = |m: &PublishMessage| {
            MetaView::parse(&m.meta)
                .unwrap()
                .message_id
                .map(str::to_owned)
        };
        let a = encoder
            .encode("", "q", Bytes::new(), &PublishOptions::new())
            .unwrap();
        let b = encoder
            .encode("", "q", Bytes::new(), &PublishOptions::new())
            .unwrap();
        let own = encoder
            .encode(
                "",
                "q",
                Bytes::new(),
                &PublishOptions::new().message_id("mine"),
            )
            .unwrap();
        assert!(id(&a).is_some() && id(&b).is_some());
        assert_ne!(id(&a), id(&b));
        assert_eq!(id(&own).as_deref(), Some("mine"));
        let mut plain = MetaEncoder::new(1 << 20, false);
        let c = plain
            .encode("", "q", Bytes::new(), &PublishOptions::new())
            .unwrap();
        assert_eq!(id(&c), None);
    }

    #[test]
    fn oversized_and_unencodable_messages_fail_alone() {
        let mut encoder = MetaEncoder::new(100, false);
        let err = encoder
            .encode("", "q", Bytes::from(vec![0; 100]), &PublishOptions::new())
            .unwrap_err();
        assert!(matches!(err, Error::MessageTooLarge { max: 100, .. }));
        let mut encoder = MetaEncoder::new(usize::MAX, false);
        let long = "x".repeat(70_000);
        let err = encoder
            .encode(&long, "q", Bytes::new(), &PublishOptions::new())
            .unwrap_err();
        assert!(matches!(err, Error::InvalidArgument(_)));
        let ok = encoder
            .encode("", "q", Bytes::new(), &PublishOptions::new())
            .unwrap();
        assert!(
            MetaView::parse(&ok.meta).is_ok(),
            "the failed block left nothing behind"
        );
    }
}
