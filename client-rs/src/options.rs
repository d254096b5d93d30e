//! Options for the client's operations, each with chainable setters.
//!
//! Sluice leans towards durability: [`QueueOptions`] and [`ExchangeOptions`] default to
//! durable, and [`PublishOptions`] to persistent messages. Opt out with `durable(false)` /
//! [`PublishOptions::transient`].

use std::time::Duration;

use crate::wire::{
    Consume, DeclareExchange, DeclareQueue, DeleteExchange, DeleteQueue, ExchangeKind, HeaderValue,
    Headers, Overflow, Properties, QueueArguments, RetryBackoff, TraceParent,
};

/// Whole milliseconds, saturating.
pub(crate) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Whole milliseconds, at least 1 (for fields where 0 is invalid).
pub(crate) fn millis_at_least_1(d: Duration) -> u64 {
    millis(d).max(1)
}

/// How to declare a queue (protocol.md §6.1). Default: durable, not exclusive, not
/// auto-delete, no arguments.
///
/// ```
/// use std::time::Duration;
/// use sluice_client::QueueOptions;
///
/// let options = QueueOptions::new()
///     .max_length(100_000)
///     .dead_letter_exchange("dlx")
///     .delivery_limit(5)
///     .ack_timeout(Duration::from_secs(60));
/// assert!(options.durable);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueOptions {
    /// Survive broker restarts, with the queue's persistent messages.
    pub durable: bool,
    /// Belong to this connection: other connections get `RESOURCE_LOCKED`, and the queue is
    /// deleted when the connection closes.
    pub exclusive: bool,
    /// Delete the queue when its last consumer is cancelled.
    pub auto_delete: bool,
    /// Only check that the queue exists (`NOT_FOUND` otherwise); flags and arguments are
    /// ignored.
    pub passive: bool,
    /// Limits, TTLs, dead-lettering, leases.
    pub arguments: QueueArguments,
}

impl Default for QueueOptions {
    fn default() -> Self {
        QueueOptions {
            durable: true,
            exclusive: false,
            auto_delete: false,
            passive: false,
            arguments: QueueArguments::default(),
        }
    }
}

impl QueueOptions {
    /// The defaults: a durable queue without arguments.
    pub fn new() -> Self {
        Self::default()
    }

    /// A passive declare: checks that the queue exists and reads its counters.
    pub fn passive() -> Self {
        QueueOptions {
            passive: true,
            ..Self::default()
        }
    }

    /// A private, temporary queue: exclusive to this connection, not durable, auto-deleted.
    pub fn temporary() -> Self {
        QueueOptions {
            durable: false,
            exclusive: true,
            auto_delete: true,
            ..Self::default()
        }
    }

    /// Sets [`durable`](Self::durable).
    pub fn durable(mut self, durable: bool) -> Self {
        self.durable = durable;
        self
    }

    /// Sets [`exclusive`](Self::exclusive).
    pub fn exclusive(mut self, exclusive: bool) -> Self {
        self.exclusive = exclusive;
        self
    }

    /// Sets [`auto_delete`](Self::auto_delete).
    pub fn auto_delete(mut self, auto_delete: bool) -> Self {
        self.auto_delete = auto_delete;
        self
    }

    /// Most ready messages the queue holds.
    pub fn max_length(mut self, messages: u64) -> Self {
        self.arguments.max_length = Some(messages);
        self
    }

    /// Most bytes (meta plus body) of ready messages the queue holds.
    pub fn max_length_bytes(mut self, bytes: u64) -> Self {
        self.arguments.max_length_bytes = Some(bytes);
        self
    }

    /// What happens at a length limit (default: drop the oldest).
    pub fn overflow(mut self, overflow: Overflow) -> Self {
        self.arguments.overflow = Some(overflow);
        self
    }

    /// Messages older than this are dead-lettered (or dropped).
    pub fn message_ttl(mut self, ttl: Duration) -> Self {
        self.arguments.message_ttl_ms = Some(millis(ttl));
        self
    }

    /// Where dead-lettered messages are published.
    pub fn dead_letter_exchange(mut self, exchange: impl Into<String>) -> Self {
        self.arguments.dead_letter_exchange = Some(exchange.into());
        self
    }

    /// Routing key of dead-lettered messages (default: the message's own).
    pub fn dead_letter_routing_key(mut self, routing_key: impl Into<String>) -> Self {
        self.arguments.dead_letter_routing_key = Some(routing_key.into());
        self
    }

    /// Lease of deliveries from this queue (server default 30 minutes).
    pub fn ack_timeout(mut self, timeout: Duration) -> Self {
        self.arguments.ack_timeout_ms = Some(millis_at_least_1(timeout));
        self
    }

    /// Deliveries after which a message is dead-lettered instead of redelivered (≥ 1).
    pub fn delivery_limit(mut self, deliveries: u32) -> Self {
        self.arguments.delivery_limit = Some(deliveries);
        self
    }

    /// Delete the queue after it has been unused this long.
    pub fn expires(mut self, after: Duration) -> Self {
        self.arguments.expires_ms = Some(millis_at_least_1(after));
        self
    }

    /// Largest message (meta plus body) the queue takes; a larger one routed to it is refused
    /// with `MESSAGE_TOO_LARGE` (the server's own limit applies anyway).
    pub fn max_message_bytes(mut self, bytes: u32) -> Self {
        self.arguments.max_message_bytes = Some(bytes);
        self
    }

    /// Priority levels above 0 (1 to 10): messages of higher priority are delivered first,
    /// FIFO within a priority (see [`PublishOptions::priority`]).
    pub fn max_priority(mut self, levels: u8) -> Self {
        self.arguments.max_priority = Some(levels);
        self
    }

    /// Every requeue (nack with requeue, an expired lease, a lost consumer) waits before the
    /// message is ready again: `initial` after the first delivery, times `multiplier_percent`
    /// / 100 per further delivery, at most `max`.
    pub fn retry_backoff(
        mut self,
        initial: Duration,
        multiplier_percent: u32,
        max: Duration,
    ) -> Self {
        self.arguments.retry_backoff = Some(RetryBackoff {
            initial_ms: millis(initial),
            multiplier_percent,
            max_ms: millis(max),
        });
        self
    }

    /// One consumer receives at a time; the others wait as standbys and take over in turn
    /// (RabbitMQ's `x-single-active-consumer`).
    pub fn single_active_consumer(mut self, on: bool) -> Self {
        self.arguments.single_active_consumer = on.then_some(1);
        self
    }

    pub(crate) fn into_request(self, name: &str) -> DeclareQueue {
        DeclareQueue {
            name: name.to_owned(),
            durable: self.durable,
            exclusive: self.exclusive,
            auto_delete: self.auto_delete,
            passive: self.passive,
            arguments: self.arguments,
        }
    }
}

/// Conditions for deleting a queue (protocol.md §6.2). Default: unconditional.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DeleteQueueOptions {
    /// Fail with `PRECONDITION_FAILED` if the queue has consumers.
    pub if_unused: bool,
    /// Fail with `PRECONDITION_FAILED` if the queue holds messages.
    pub if_empty: bool,
}

impl DeleteQueueOptions {
    pub(crate) fn into_request(self, name: &str) -> DeleteQueue {
        DeleteQueue {
            name: name.to_owned(),
            if_unused: self.if_unused,
            if_empty: self.if_empty,
        }
    }
}

/// How to declare an exchange (protocol.md §7.1). Default: durable, no alternate exchange.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExchangeOptions {
    /// Survive broker restarts, with its bindings to durable queues.
    pub durable: bool,
    /// Delete the exchange when its last binding is removed.
    pub auto_delete: bool,
    /// Only check that the exchange exists (`NOT_FOUND` otherwise).
    pub passive: bool,
    /// Where messages that match no binding go.
    pub alternate_exchange: Option<String>,
    /// Consistent-hash exchanges only: hash this message header instead of the routing key
    /// (a message without it is unroutable).
    pub hash_header: Option<String>,
}

impl Default for ExchangeOptions {
    fn default() -> Self {
        ExchangeOptions {
            durable: true,
            auto_delete: false,
            passive: false,
            alternate_exchange: None,
            hash_header: None,
        }
    }
}

impl ExchangeOptions {
    /// The defaults: durable, no alternate exchange.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets [`durable`](Self::durable).
    pub fn durable(mut self, durable: bool) -> Self {
        self.durable = durable;
        self
    }

    /// Sets [`auto_delete`](Self::auto_delete).
    pub fn auto_delete(mut self, auto_delete: bool) -> Self {
        self.auto_delete = auto_delete;
        self
    }

    /// Sets [`passive`](Self::passive).
    pub fn passive(mut self, passive: bool) -> Self {
        self.passive = passive;
        self
    }

    /// Sets the [`alternate_exchange`](Self::alternate_exchange).
    pub fn alternate_exchange(mut self, exchange: impl Into<String>) -> Self {
        self.alternate_exchange = Some(exchange.into());
        self
    }

    /// Sets the [`hash_header`](Self::hash_header).
    pub fn hash_header(mut self, header: impl Into<String>) -> Self {
        self.hash_header = Some(header.into());
        self
    }

    pub(crate) fn into_request(self, name: &str, kind: ExchangeKind) -> DeclareExchange {
        DeclareExchange {
            name: name.to_owned(),
            kind,
            durable: self.durable,
            auto_delete: self.auto_delete,
            passive: self.passive,
            alternate_exchange: self.alternate_exchange,
            hash_header: self.hash_header,
        }
    }
}

/// Conditions for deleting an exchange (protocol.md §7.2). Default: unconditional.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DeleteExchangeOptions {
    /// Fail with `PRECONDITION_FAILED` if the exchange has bindings.
    pub if_unused: bool,
}

impl DeleteExchangeOptions {
    pub(crate) fn into_request(self, name: &str) -> DeleteExchange {
        DeleteExchange {
            name: name.to_owned(),
            if_unused: self.if_unused,
        }
    }
}

/// How to consume (protocol.md §9.1). Default: server-generated tag, the client's default
/// prefetch, not exclusive, the queue's lease.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConsumeOptions {
    /// Name shown by the admin API; empty = server-generated.
    pub consumer_tag: String,
    /// Most unsettled deliveries held at once; `None` = the client's default
    /// ([`ClientBuilder::prefetch`](crate::ClientBuilder::prefetch)); `Some(0)` = no limit.
    pub prefetch: Option<u32>,
    /// Be the queue's only consumer.
    pub exclusive: bool,
    /// Lease of this consumer's deliveries, overriding the queue's.
    pub ack_timeout: Option<Duration>,
    /// Its priority (RabbitMQ's `x-priority`): consumers with a higher one get messages
    /// first while they have credit; `None` = 0.
    pub priority: Option<i32>,
    /// Circuit breaking for this consumer, overriding the queue's (docs/circuit-breaking.md):
    /// after too many nacks, rejects or lease timeouts in a window the broker stops
    /// delivering to it for a cool-down. `None` = the queue's setting, if any.
    pub circuit_breaker: Option<crate::wire::CircuitBreaker>,
}

impl ConsumeOptions {
    /// The defaults.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the [`consumer_tag`](Self::consumer_tag).
    pub fn consumer_tag(mut self, tag: impl Into<String>) -> Self {
        self.consumer_tag = tag.into();
        self
    }

    /// Sets the [`prefetch`](Self::prefetch) window (0 = no limit).
    pub fn prefetch(mut self, prefetch: u32) -> Self {
        self.prefetch = Some(prefetch);
        self
    }

    /// Sets [`exclusive`](Self::exclusive).
    pub fn exclusive(mut self, exclusive: bool) -> Self {
        self.exclusive = exclusive;
        self
    }

    /// Sets the [`ack_timeout`](Self::ack_timeout) (lease).
    pub fn ack_timeout(mut self, timeout: Duration) -> Self {
        self.ack_timeout = Some(timeout);
        self
    }

    /// Sets the consumer's [`priority`](Self::priority).
    pub fn priority(mut self, priority: i32) -> Self {
        self.priority = Some(priority);
        self
    }

    /// Sets [`circuit_breaker`](Self::circuit_breaker): the circuit opens after
    /// `failure_threshold` failures within `window`, stays open for `cool_down`, then closes
    /// after `success_threshold` acked trial deliveries (durations in whole milliseconds, at
    /// least 1).
    pub fn circuit_breaker(
        mut self,
        failure_threshold: u32,
        window: Duration,
        cool_down: Duration,
        success_threshold: u32,
    ) -> Self {
        self.circuit_breaker = Some(crate::wire::CircuitBreaker {
            failure_threshold,
            window_ms: millis_at_least_1(window),
            cool_down_ms: millis_at_least_1(cool_down),
            success_threshold,
        });
        self
    }

    pub(crate) fn into_request(self, queue: &str, default_prefetch: u32) -> Consume {
        Consume {
            queue: queue.to_owned(),
            consumer_tag: self.consumer_tag,
            prefetch: self.prefetch.unwrap_or(default_prefetch),
            exclusive: self.exclusive,
            ack_timeout_ms: self.ack_timeout.map(millis_at_least_1),
            priority: self.priority,
            circuit_breaker: self.circuit_breaker,
        }
    }
}

/// How to publish a message (protocol.md §8.1): the `mandatory` flag and the message's
/// properties. Default: persistent, not mandatory, no properties.
///
/// ```
/// use std::time::Duration;
/// use sluice_client::PublishOptions;
///
/// let options = PublishOptions::new()
///     .mandatory()
///     .content_type("application/json")
///     .header("tenant", 42i64)
///     .expiration(Duration::from_secs(60));
/// assert!(options.properties.persistent);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishOptions {
    /// Refuse the message with `UNROUTABLE` (an [`Error::PublishRejected`](crate::Error))
    /// rather than drop it if it reaches no queue.
    pub mandatory: bool,
    /// Persistence, content type, ids, TTL, timestamp, headers.
    pub properties: Properties,
}

impl Default for PublishOptions {
    fn default() -> Self {
        PublishOptions {
            mandatory: false,
            properties: Properties {
                persistent: true,
                ..Properties::default()
            },
        }
    }
}

impl PublishOptions {
    /// The defaults: persistent, not mandatory.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets `mandatory`: be told (`UNROUTABLE`) when the message reaches no queue.
    pub fn mandatory(mut self) -> Self {
        self.mandatory = true;
        self
    }

    /// Not persistent: confirmed once enqueued, lost on a broker restart. Faster.
    pub fn transient(mut self) -> Self {
        self.properties.persistent = false;
        self
    }

    /// MIME type of the body.
    pub fn content_type(mut self, content_type: impl Into<String>) -> Self {
        self.properties.content_type = Some(content_type.into());
        self
    }

    /// Encoding of the body, e.g. `gzip`.
    pub fn content_encoding(mut self, encoding: impl Into<String>) -> Self {
        self.properties.content_encoding = Some(encoding.into());
        self
    }

    /// Application message id.
    pub fn message_id(mut self, id: impl Into<String>) -> Self {
        self.properties.message_id = Some(id.into());
        self
    }

    /// Id of the request this message answers.
    pub fn correlation_id(mut self, id: impl Into<String>) -> Self {
        self.properties.correlation_id = Some(id.into());
        self
    }

    /// Queue a reply should go to.
    pub fn reply_to(mut self, queue: impl Into<String>) -> Self {
        self.properties.reply_to = Some(queue.into());
        self
    }

    /// Per-message TTL, counted from when a queue accepted the message.
    pub fn expiration(mut self, ttl: Duration) -> Self {
        self.properties.expiration_ms = Some(millis(ttl));
        self
    }

    /// Application timestamp, milliseconds since the Unix epoch.
    pub fn timestamp_ms(mut self, timestamp_ms: u64) -> Self {
        self.properties.timestamp_ms = Some(timestamp_ms);
        self
    }

    /// Priority (0, the default, is the lowest): in a queue with `max_priority` higher
    /// priorities are delivered first; above the queue's maximum counts as the maximum.
    pub fn priority(mut self, priority: u8) -> Self {
        self.properties.priority = Some(priority);
        self
    }

    /// Delayed delivery: the message is stored (and confirmed) now and becomes ready `delay`
    /// after the queue accepted it. Replaces an earlier `deliver_at`.
    pub fn delay(mut self, delay: Duration) -> Self {
        self.properties.delay_ms = Some(millis(delay));
        self.properties.deliver_at_ms = None;
        self
    }

    /// Delayed delivery: the message becomes ready at `at` (a time past means now).
    /// Replaces an earlier `delay`.
    pub fn deliver_at(mut self, at: std::time::SystemTime) -> Self {
        let ms = at.duration_since(std::time::UNIX_EPOCH).map_or(0, millis);
        self.properties.deliver_at_ms = Some(ms);
        self.properties.delay_ms = None;
        self
    }

    /// The W3C trace context the message continues (protocol.md §8.1): the broker's spans
    /// and the consumer's join this trace. With the `opentelemetry` feature a publish without
    /// one takes the current span's; set it by hand otherwise, e.g. from a `traceparent`
    /// header received over HTTP (`TraceParent::parse`).
    pub fn trace_parent(mut self, trace_parent: TraceParent) -> Self {
        self.properties.trace_parent = Some(trace_parent);
        self
    }

    /// The W3C `tracestate` that goes with [`trace_parent`](Self::trace_parent): vendor
    /// data, passed through to the consumer untouched.
    pub fn trace_state(mut self, trace_state: impl Into<String>) -> Self {
        self.properties.trace_state = Some(trace_state.into());
        self
    }

    /// Adds a header, replacing an earlier one with the same key.
    pub fn header(mut self, key: impl Into<String>, value: impl Into<HeaderValue>) -> Self {
        let key = key.into();
        let value = value.into();
        let headers = &mut self.properties.headers;
        match headers.iter_mut().find(|(k, _)| *k == key) {
            Some(slot) => slot.1 = value,
            None => headers.push((key, value)),
        }
        self
    }
}

/// The binding argument that gives a binding its share of a `weighted` or `consistent-hash`
/// exchange (protocol.md §7.4).
pub const WEIGHT_ARGUMENT: &str = "x-weight";

/// Binding arguments giving a binding `weight` (protocol.md §7.4): for a `weighted`
/// exchange, its share of the messages (0 sends it none); for `consistent-hash`, its share of
/// the hash ring. Binding the same queue again with another weight changes the weight in
/// place.
pub fn weight(weight: u32) -> Headers {
    let mut arguments = Headers::new();
    set_weight(&mut arguments, weight);
    arguments
}

/// Gives binding `arguments` the weight `weight`, replacing any `x-weight` they hold.
pub fn set_weight(arguments: &mut Headers, weight: u32) {
    arguments.retain(|(k, _)| k != WEIGHT_ARGUMENT);
    arguments.push((
        WEIGHT_ARGUMENT.to_owned(),
        HeaderValue::Int(i64::from(weight)),
    ));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_lean_towards_durability() {
        assert!(QueueOptions::default().durable);
        assert!(ExchangeOptions::default().durable);
        assert!(PublishOptions::default().properties.persistent);
        assert!(!PublishOptions::new().transient().properties.persistent);
        let temp = QueueOptions::temporary();
        assert!(!temp.durable && temp.exclusive && temp.auto_delete);
    }

    #[test]
    fn durations_become_milliseconds() {
        let q = QueueOptions::new()
            .message_ttl(Duration::from_micros(1500))
            .ack_timeout(Duration::ZERO)
            .into_request("q");
        assert_eq!(q.arguments.message_ttl_ms, Some(1));
        assert_eq!(
            q.arguments.ack_timeout_ms,
            Some(1),
            "0 is invalid on the wire"
        );
        let c = ConsumeOptions::new()
            .ack_timeout(Duration::from_secs(2))
            .into_request("q", 7);
        assert_eq!((c.prefetch, c.ack_timeout_ms), (7, Some(2000)));
        assert_eq!(millis(Duration::MAX), u64::MAX);
    }

    #[test]
    fn headers_replace_by_key() {
        let options = PublishOptions::new()
            .header("a", 1i64)
            .header("b", "x")
            .header("a", true);
        assert_eq!(
            options.properties.headers,
            vec![
                ("a".to_owned(), HeaderValue::Bool(true)),
                ("b".to_owned(), HeaderValue::from("x")),
            ]
        );
    }
}
