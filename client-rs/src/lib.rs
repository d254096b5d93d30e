//! Async Rust client for the Sluice message broker, and the wire codec the broker shares.
//!
//! A [`Client`] is a cheap, cloneable handle to one connection, served by a background tokio
//! task that owns the socket. The connection survives a broker failover: the task dials the
//! URL's hosts again (`sluice://u:p@h1,h2,h3/vhost`), consumers consume again, unconfirmed
//! publishes are published again ([`ClientBuilder::reconnect_timeout`]), and requests for a
//! replicated queue led by another node follow it (`NOT_LEADER`, `LEADER_MOVED`). Every call is pipelined: the task tags requests with ids and
//! matches the answers, packs consecutive publishes into shared frames, and writes whatever
//! is queued in one system call. Consumers are [`Stream`](futures_core::Stream)s of
//! [`Message`]s.
//!
//! # Layout
//! - [`wire`]: the sans-I/O codec for the wire protocol (`protocol.md`). The broker reuses
//!   these types, so there is exactly one definition of every frame.
//! - `url`: [`ConnectUrl`], `sluice://user:password@host:port[,host:port...]/vhost?options`
//!   (`sluices://` for TLS), and [`HostPort`].
//! - `tls`: TLS for `sluices://` (rustls), and its typed [`TlsError`].
//! - `error`: [`Error`], [`CloseReason`], and the mapping from protocol error codes.
//! - `options`: [`QueueOptions`], [`ExchangeOptions`], [`ConsumeOptions`],
//!   [`PublishOptions`] and friends.
//! - `client`: [`Client`] (connecting, queues, exchanges, bindings, settling by tag, close)
//!   and [`ClientBuilder`].
//! - `listing`: operators' listings, every page fetched ([`Client::list_queues`]) or one at a
//!   time ([`Client::list_queues_page`]).
//! - `browse`: operators' tools for messages: [`Client::browse`], [`Client::move_messages`],
//!   [`Client::move_status`].
//! - `publish`: [`Client::publish`], [`Client::publish_batch`], [`Publisher`].
//! - `consumer`: [`Client::consume`], [`Consumer`], [`Message`], [`Client::get`].
//! - `connection`: the handshake, dialing, and the connection task (not public): the select
//!   loop, request/reply correlation, publish-confirm tracking, delivery dispatch,
//!   heartbeats, reconnecting.
//! - `history`: [`Client::trace_message`], what happened to a message ("why is it stuck").
//! - `otel` (the `opentelemetry` cargo feature, off by default): publishes carry the current
//!   OpenTelemetry span as their W3C trace context, and `Message::trace_context` gives a
//!   delivery's back. Without it, [`PublishOptions::trace_parent`] and
//!   [`Message::trace_parent`] carry it by hand.
//!
//! # Use
//! ```no_run
//! use futures_util::StreamExt;
//! use sluice_client::{Client, ConsumeOptions, OutgoingMessage, PublishOptions, QueueOptions};
//!
//! # async fn example() -> sluice_client::Result<()> {
//! let client = Client::connect("sluice://guest:guest@localhost:5680").await?;
//! client.declare_queue("tasks", QueueOptions::new()).await?;
//!
//! // One message, waiting for its confirm (durable once this returns).
//! client.publish("", "tasks", "job-1", &PublishOptions::new()).await?;
//!
//! // Many messages, pipelined: one outcome each.
//! let batch = (2..100).map(|i| OutgoingMessage::new("", "tasks", format!("job-{i}")));
//! for outcome in client.publish_batch(batch).await {
//!     outcome?;
//! }
//!
//! // Work through the queue.
//! let mut consumer = client.consume("tasks", ConsumeOptions::new().prefetch(50)).await?;
//! while let Some(message) = consumer.next().await {
//!     let message = message?;
//!     println!("{}", String::from_utf8_lossy(&message.body));
//!     message.ack().await?;
//! }
//! client.close().await?;
//! # Ok(())
//! # }
//! ```

mod browse;
mod chaos;
mod circuit;
mod client;
mod cluster;
mod connection;
mod consumer;
mod error;
mod history;
mod listing;
mod options;
#[cfg(feature = "opentelemetry")]
mod otel;
mod publish;
mod scheduled;
mod tls;
mod url;
pub mod wire;

pub use circuit::CircuitNotice;
pub use client::{
    Client, ClientBuilder, DEFAULT_CONFIRM_WINDOW, DEFAULT_PREFETCH, DEFAULT_RECONNECT_TIMEOUT,
    DEFAULT_REQUEST_TIMEOUT,
};
pub use connection::ServerInfo;
pub use consumer::{Consumer, Message};
pub use error::{CloseReason, Error, ErrorGroup, Result};
pub use options::{
    set_weight, weight, ConsumeOptions, DeleteExchangeOptions, DeleteQueueOptions, ExchangeOptions,
    PublishOptions, QueueOptions, WEIGHT_ARGUMENT,
};
pub use publish::{Confirmed, OutgoingMessage, PublishConfirm, Publisher};
pub use tls::TlsError;
pub use url::{ConnectUrl, HostPort, UrlError};
/// Header values of type decimal (AMQP's); the other header types are plain Rust values.
pub use wire::Decimal;
pub use wire::{
    BindingSummary, BrowseQueueOk, BrowsedMessage, CircuitBreaker, CircuitState, CircuitSummary,
    ConnectionSummary, ConsumerId, ConsumerSummary, DeclareQueueOk, DeliveryTag, ErrorCode,
    ExchangeKind, ExchangeSummary, HeaderValue, Headers, InspectQueueOk, ListScheduledOk, MetaView,
    MoveId, MoveState, MoveStatusOk, Overflow, Properties, PublishSeq, QueueArguments,
    QueueSummary, RetryBackoff, ScheduledMessage,
};
pub use wire::{ChaosDelay, ChaosEntry, ChaosPlan, ChaosRate, ChaosStats, ListChaosOk};
/// W3C trace context on messages (protocol.md §8.1).
pub use wire::{InvalidTraceParent, TraceParent};

#[cfg(test)]
mod tests {
    use super::*;

    fn send_sync<T: Send + Sync>() {}

    /// Handles are shared across tasks and threads.
    #[test]
    fn handles_are_send_and_sync() {
        send_sync::<Client>();
        send_sync::<Consumer>();
        send_sync::<Message>();
        send_sync::<Publisher>();
        send_sync::<PublishConfirm>();
        send_sync::<Error>();
    }
}
