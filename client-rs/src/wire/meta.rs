//! The meta block (protocol.md §8.1): a message's exchange, routing key and properties in one
//! contiguous block, separate from its body.
//!
//! The broker validates a published meta block, stores its bytes as they are and sends them
//! back unchanged in deliveries, so it never re-encodes them on the hot path. Routing reads
//! the block through the borrowing [`MetaView`]; clients build and read it as a [`MessageMeta`].
//!
//! ```text
//! flags u8 (0 mandatory, 1 persistent), exchange str, routing_key str,
//! present u16 (bit i set = field i follows), then the present fields in bit order:
//! 0 content_type str, 1 content_encoding str, 2 message_id str, 3 correlation_id str,
//! 4 reply_to str, 5 expiration_ms u64, 6 timestamp_ms u64, 7 headers (at least one entry),
//! 8 deliver_at_ms u64, 9 delay_ms u64 (not both)
//! 10 priority u8, 11 trace_parent (trace_id 16 bytes, span_id 8 bytes, flags u8),
//! 12 trace_state str
//! ```

use bytes::{Bytes, BytesMut};

use super::error::WireError;
use super::frame::Payload;
use super::header::{headers_len, put_headers, read_headers, skip_headers, Headers};
use super::primitives::{self as p, Reader};
use super::trace::{TraceParent, TRACE_PARENT_LEN};

const MANDATORY: u8 = 1 << 0;
const PERSISTENT: u8 = 1 << 1;

const CONTENT_TYPE: u16 = 1 << 0;
const CONTENT_ENCODING: u16 = 1 << 1;
const MESSAGE_ID: u16 = 1 << 2;
const CORRELATION_ID: u16 = 1 << 3;
const REPLY_TO: u16 = 1 << 4;
const EXPIRATION: u16 = 1 << 5;
const TIMESTAMP: u16 = 1 << 6;
const HEADERS: u16 = 1 << 7;
const DELIVER_AT: u16 = 1 << 8;
const DELAY: u16 = 1 << 9;
const PRIORITY: u16 = 1 << 10;
const TRACE_PARENT: u16 = 1 << 11;
const TRACE_STATE: u16 = 1 << 12;
const ALL_PROPERTIES: u16 = 0x1fff;

/// Message properties: what the broker and the consumer know about a body.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Properties {
    /// Stored durably (in a durable queue) and confirmed only once synced to disk.
    pub persistent: bool,
    /// MIME type of the body, e.g. `application/json`.
    pub content_type: Option<String>,
    /// Encoding of the body, e.g. `gzip`.
    pub content_encoding: Option<String>,
    /// Application message id (not interpreted by the broker).
    pub message_id: Option<String>,
    /// Id of the request this message answers.
    pub correlation_id: Option<String>,
    /// Queue a reply should be sent to.
    pub reply_to: Option<String>,
    /// Per-message TTL in milliseconds, counted from when the queue accepted the message.
    pub expiration_ms: Option<u64>,
    /// Application timestamp, milliseconds since the Unix epoch.
    pub timestamp_ms: Option<u64>,
    /// Application headers (matched by headers exchanges). Empty = none.
    pub headers: Headers,
    /// Deliver no earlier than this Unix time in milliseconds (a time past means now).
    /// Not together with `delay_ms` (the broker refuses both with `INVALID_ARGUMENT`).
    pub deliver_at_ms: Option<u64>,
    /// Deliver no earlier than this many milliseconds after the queue accepted the message.
    /// Not together with `deliver_at_ms`.
    pub delay_ms: Option<u64>,
    /// Delivered before messages of lower priority in a queue with `max_priority`; above
    /// the queue's maximum counts as the maximum. `None` = 0, the lowest.
    pub priority: Option<u8>,
    /// The W3C `traceparent` of the span that published the message (protocol.md §8.1):
    /// the broker's spans and the consumer's continue its trace.
    pub trace_parent: Option<TraceParent>,
    /// The W3C `tracestate` that goes with `trace_parent` (vendor data, passed through).
    pub trace_state: Option<String>,
}

/// When a delayed message becomes ready (meta properties 8 and 9).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryDelay {
    /// At this Unix time in milliseconds.
    At(u64),
    /// This many milliseconds after the queue accepted it.
    After(u64),
}

impl DeliveryDelay {
    /// The Unix time (ms) the message becomes ready, for a message the queue accepted at
    /// `accepted_ms`.
    pub fn due_ms(self, accepted_ms: u64) -> u64 {
        match self {
            DeliveryDelay::At(at) => at,
            DeliveryDelay::After(delay) => accepted_ms.saturating_add(delay),
        }
    }
}

/// A message's meta block, owned: where it is published and its properties.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MessageMeta {
    /// Exchange to publish to; empty = the default exchange (routes to the queue named by
    /// the routing key).
    pub exchange: String,
    /// Routing key.
    pub routing_key: String,
    /// Refuse the message with `UNROUTABLE` if it matches no queue.
    pub mandatory: bool,
    /// Properties.
    pub properties: Properties,
}

impl MessageMeta {
    /// The meta block for `exchange` and `routing_key` with default properties.
    pub fn new(exchange: impl Into<String>, routing_key: impl Into<String>) -> Self {
        MessageMeta {
            exchange: exchange.into(),
            routing_key: routing_key.into(),
            ..Default::default()
        }
    }

    /// Encoded length of the block.
    pub fn encoded_len(&self) -> usize {
        meta_len(&self.exchange, &self.routing_key, &self.properties)
    }

    /// The encoded block, ready to go into a `PublishMessage`.
    pub fn to_bytes(&self) -> Result<Bytes, WireError> {
        let mut buf = BytesMut::with_capacity(self.encoded_len());
        self.encode(&mut buf)?;
        Ok(buf.freeze())
    }

    /// Decodes a whole meta block.
    pub fn from_slice(meta: &[u8]) -> Result<Self, WireError> {
        MetaView::parse(meta)?.to_meta()
    }
}

impl Payload for MessageMeta {
    fn encode(&self, buf: &mut BytesMut) -> Result<(), WireError> {
        put_meta(
            buf,
            &self.exchange,
            &self.routing_key,
            self.mandatory,
            &self.properties,
        )
    }

    fn decode(r: &mut Reader<'_>) -> Result<Self, WireError> {
        MetaView::read(r)?.to_meta()
    }
}

/// Encoded length of the meta block with these parts (what [`put_meta`] appends).
pub fn meta_len(exchange: &str, routing_key: &str, props: &Properties) -> usize {
    let strs = [
        &props.content_type,
        &props.content_encoding,
        &props.message_id,
        &props.correlation_id,
        &props.reply_to,
    ];
    1 + p::str_len(exchange)
        + p::str_len(routing_key)
        + 2
        + strs
            .iter()
            .map(|s| s.as_deref().map_or(0, p::str_len))
            .sum::<usize>()
        + props.expiration_ms.map_or(0, |_| 8)
        + props.timestamp_ms.map_or(0, |_| 8)
        + props.deliver_at_ms.map_or(0, |_| 8)
        + props.delay_ms.map_or(0, |_| 8)
        + if props.headers.is_empty() {
            0
        } else {
            headers_len(&props.headers)
        }
        + props.priority.map_or(0, |_| 1)
        + props.trace_parent.map_or(0, |_| TRACE_PARENT_LEN)
        + props.trace_state.as_deref().map_or(0, p::str_len)
}

/// Appends the meta block built from borrowed parts: the bytes [`MessageMeta`] encodes to,
/// without first copying the exchange and routing key into owned strings (the publish hot
/// path). On error `buf` may hold a partial block.
pub fn put_meta(
    buf: &mut BytesMut,
    exchange: &str,
    routing_key: &str,
    mandatory: bool,
    props: &Properties,
) -> Result<(), WireError> {
    let mut flags = 0;
    if mandatory {
        flags |= MANDATORY;
    }
    if props.persistent {
        flags |= PERSISTENT;
    }
    p::put_u8(buf, flags);
    p::put_str(buf, "exchange name", exchange)?;
    p::put_str(buf, "routing key", routing_key)?;
    let strs = [
        (CONTENT_TYPE, "content_type", &props.content_type),
        (
            CONTENT_ENCODING,
            "content_encoding",
            &props.content_encoding,
        ),
        (MESSAGE_ID, "message_id", &props.message_id),
        (CORRELATION_ID, "correlation_id", &props.correlation_id),
        (REPLY_TO, "reply_to", &props.reply_to),
    ];
    let mut present = 0;
    for (bit, _, value) in &strs {
        if value.is_some() {
            present |= bit;
        }
    }
    for (bit, value) in [
        (EXPIRATION, props.expiration_ms.is_some()),
        (TIMESTAMP, props.timestamp_ms.is_some()),
        (HEADERS, !props.headers.is_empty()),
        (DELIVER_AT, props.deliver_at_ms.is_some()),
        (DELAY, props.delay_ms.is_some()),
        (PRIORITY, props.priority.is_some()),
        (TRACE_PARENT, props.trace_parent.is_some()),
        (TRACE_STATE, props.trace_state.is_some()),
    ] {
        if value {
            present |= bit;
        }
    }
    p::put_u16(buf, present);
    for (_, what, value) in strs {
        if let Some(value) = value {
            p::put_str(buf, what, value)?;
        }
    }
    if let Some(v) = props.expiration_ms {
        p::put_u64(buf, v);
    }
    if let Some(v) = props.timestamp_ms {
        p::put_u64(buf, v);
    }
    if !props.headers.is_empty() {
        put_headers(buf, &props.headers)?;
    }
    if let Some(v) = props.deliver_at_ms {
        p::put_u64(buf, v);
    }
    if let Some(v) = props.delay_ms {
        p::put_u64(buf, v);
    }
    if let Some(v) = props.priority {
        p::put_u8(buf, v);
    }
    if let Some(tp) = &props.trace_parent {
        tp.encode(buf);
    }
    if let Some(state) = &props.trace_state {
        p::put_str(buf, "trace_state", state)?;
    }
    Ok(())
}

/// A validated meta block, borrowed: what the broker reads to route a message without
/// allocating. Every field was checked by [`MetaView::parse`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MetaView<'a> {
    /// Exchange the message was published to.
    pub exchange: &'a str,
    /// Routing key.
    pub routing_key: &'a str,
    /// Refuse the message with `UNROUTABLE` if it matches no queue.
    pub mandatory: bool,
    /// Stored durably and confirmed only once synced.
    pub persistent: bool,
    /// See [`Properties::content_type`].
    pub content_type: Option<&'a str>,
    /// See [`Properties::content_encoding`].
    pub content_encoding: Option<&'a str>,
    /// See [`Properties::message_id`].
    pub message_id: Option<&'a str>,
    /// See [`Properties::correlation_id`].
    pub correlation_id: Option<&'a str>,
    /// See [`Properties::reply_to`].
    pub reply_to: Option<&'a str>,
    /// See [`Properties::expiration_ms`].
    pub expiration_ms: Option<u64>,
    /// See [`Properties::timestamp_ms`].
    pub timestamp_ms: Option<u64>,
    /// The encoded header table (validated), or empty when the message has no headers.
    pub raw_headers: &'a [u8],
    /// See [`Properties::deliver_at_ms`].
    pub deliver_at_ms: Option<u64>,
    /// See [`Properties::delay_ms`].
    pub delay_ms: Option<u64>,
    /// See [`Properties::priority`].
    pub priority: Option<u8>,
    /// See [`Properties::trace_parent`].
    pub trace_parent: Option<TraceParent>,
    /// See [`Properties::trace_state`].
    pub trace_state: Option<&'a str>,
}

impl<'a> MetaView<'a> {
    /// Validates a whole meta block and borrows its fields.
    pub fn parse(meta: &'a [u8]) -> Result<Self, WireError> {
        let mut r = Reader::new(meta);
        let view = MetaView::read(&mut r)?;
        r.finish()?;
        Ok(view)
    }

    fn read(r: &mut Reader<'a>) -> Result<Self, WireError> {
        let flags = r.flags_u8("meta flags", MANDATORY | PERSISTENT)?;
        let exchange = r.str()?;
        let routing_key = r.str()?;
        let present = r.flags_u16("meta properties", ALL_PROPERTIES)?;
        let mut opt_str = |bit: u16| (present & bit != 0).then(|| r.str()).transpose();
        let content_type = opt_str(CONTENT_TYPE)?;
        let content_encoding = opt_str(CONTENT_ENCODING)?;
        let message_id = opt_str(MESSAGE_ID)?;
        let correlation_id = opt_str(CORRELATION_ID)?;
        let reply_to = opt_str(REPLY_TO)?;
        let expiration_ms = (present & EXPIRATION != 0).then(|| r.u64()).transpose()?;
        let timestamp_ms = (present & TIMESTAMP != 0).then(|| r.u64()).transpose()?;
        let raw_headers = if present & HEADERS != 0 {
            let raw = skip_headers(r)?;
            if raw.starts_with(&[0, 0]) {
                // An empty table is encoded by leaving the bit clear, so encoding stays unique.
                return Err(WireError::InvalidValue {
                    what: "meta header count",
                    value: 0,
                });
            }
            raw
        } else {
            &[]
        };
        let deliver_at_ms = (present & DELIVER_AT != 0).then(|| r.u64()).transpose()?;
        let delay_ms = (present & DELAY != 0).then(|| r.u64()).transpose()?;
        let priority = (present & PRIORITY != 0).then(|| r.u8()).transpose()?;
        let trace_parent = (present & TRACE_PARENT != 0)
            .then(|| TraceParent::decode(r))
            .transpose()?;
        let trace_state = (present & TRACE_STATE != 0).then(|| r.str()).transpose()?;
        Ok(MetaView {
            exchange,
            routing_key,
            mandatory: flags & MANDATORY != 0,
            persistent: flags & PERSISTENT != 0,
            content_type,
            content_encoding,
            message_id,
            correlation_id,
            reply_to,
            expiration_ms,
            timestamp_ms,
            raw_headers,
            deliver_at_ms,
            delay_ms,
            priority,
            trace_parent,
            trace_state,
        })
    }

    /// Whether a meta block is flagged persistent, reading only its first byte (for a block
    /// validated before; an empty block counts as persistent, the safe side).
    pub fn peek_persistent(meta: &[u8]) -> bool {
        meta.first().is_none_or(|f| f & PERSISTENT != 0)
    }

    /// The per-message TTL of a meta block validated before, reading only what precedes it
    /// (cheap enough for every publish); `None` when it has none or the block is malformed.
    pub fn peek_expiration_ms(meta: &[u8]) -> Option<u64> {
        let (mut r, present) = Self::at_properties(meta, EXPIRATION)?;
        skip_string_properties(&mut r, present)?;
        r.u64().ok()
    }

    /// The `message_id` of a meta block validated before, reading only what precedes it (a
    /// dedup queue reads it for every publish); `None` when it has none or the block is
    /// malformed.
    pub fn peek_message_id(meta: &[u8]) -> Option<&str> {
        let (mut r, present) = Self::at_properties(meta, MESSAGE_ID)?;
        for bit in [CONTENT_TYPE, CONTENT_ENCODING] {
            if present & bit != 0 {
                skip_str(&mut r)?;
            }
        }
        r.str().ok()
    }

    /// A reader at the first property of a meta block validated before, with the block's
    /// presence bits; `None` when none of the `wanted` properties is present (then only the
    /// strings' lengths before the properties were read) or the block is malformed. Fields
    /// are skipped, not checked again.
    fn at_properties(meta: &[u8], wanted: u16) -> Option<(Reader<'_>, u16)> {
        let mut r = Reader::new(meta);
        r.u8().ok()?;
        skip_str(&mut r)?;
        skip_str(&mut r)?;
        let present = r.u16().ok()?;
        (present & wanted != 0).then_some((r, present))
    }

    /// As [`at_properties`](Self::at_properties), with the reader just past the headers.
    fn past_headers(meta: &[u8], wanted: u16) -> Option<(Reader<'_>, u16)> {
        let (mut r, present) = Self::at_properties(meta, wanted)?;
        skip_string_properties(&mut r, present)?;
        for bit in [EXPIRATION, TIMESTAMP] {
            if present & bit != 0 {
                r.u64().ok()?;
            }
        }
        if present & HEADERS != 0 {
            skip_headers(&mut r).ok()?;
        }
        Some((r, present))
    }

    /// The delivery delay of a meta block validated before. Without one it reads only the
    /// strings' lengths before the properties and tests two bits: cheap enough for every
    /// publish. `None` when it has none or the block is malformed.
    pub fn peek_delivery_delay(meta: &[u8]) -> Option<DeliveryDelay> {
        let (mut r, present) = Self::past_headers(meta, DELIVER_AT | DELAY)?;
        let v = r.u64().ok()?;
        Some(if present & DELIVER_AT != 0 {
            DeliveryDelay::At(v)
        } else {
            DeliveryDelay::After(v)
        })
    }

    /// The priority of a meta block validated before (`None` when it has none or the block
    /// is malformed). A queue with `max_priority` reads it for every message it stores.
    pub fn peek_priority(meta: &[u8]) -> Option<u8> {
        let (mut r, present) = Self::past_headers(meta, PRIORITY)?;
        for bit in [DELIVER_AT, DELAY] {
            if present & bit != 0 {
                r.u64().ok()?;
            }
        }
        r.u8().ok()
    }

    /// The trace parent of a meta block validated before (`None` when it has none or the
    /// block is malformed). Without one it reads only the strings' lengths before the
    /// properties and tests a bit: the broker asks for every message it might trace.
    pub fn peek_trace_parent(meta: &[u8]) -> Option<TraceParent> {
        let (mut r, present) = Self::past_headers(meta, TRACE_PARENT)?;
        for bit in [DELIVER_AT, DELAY] {
            if present & bit != 0 {
                r.u64().ok()?;
            }
        }
        if present & PRIORITY != 0 {
            r.u8().ok()?;
        }
        TraceParent::decode(&mut r).ok()
    }

    /// Decodes the headers (empty when there are none).
    pub fn headers(&self) -> Result<Headers, WireError> {
        if self.raw_headers.is_empty() {
            return Ok(Vec::new());
        }
        read_headers(&mut Reader::new(self.raw_headers))
    }

    /// Copies the block into an owned [`MessageMeta`].
    pub fn to_meta(&self) -> Result<MessageMeta, WireError> {
        let owned = |s: Option<&str>| s.map(str::to_owned);
        Ok(MessageMeta {
            exchange: self.exchange.to_owned(),
            routing_key: self.routing_key.to_owned(),
            mandatory: self.mandatory,
            properties: Properties {
                persistent: self.persistent,
                content_type: owned(self.content_type),
                content_encoding: owned(self.content_encoding),
                message_id: owned(self.message_id),
                correlation_id: owned(self.correlation_id),
                reply_to: owned(self.reply_to),
                expiration_ms: self.expiration_ms,
                timestamp_ms: self.timestamp_ms,
                headers: self.headers()?,
                deliver_at_ms: self.deliver_at_ms,
                delay_ms: self.delay_ms,
                priority: self.priority,
                trace_parent: self.trace_parent,
                trace_state: owned(self.trace_state),
            },
        })
    }
}

/// Skips a string of a block validated before, without checking it again.
fn skip_str(r: &mut Reader<'_>) -> Option<()> {
    let len = r.u16().ok()?;
    r.raw(usize::from(len)).ok().map(drop)
}

/// Skips the string properties (bits 0–4) that `present` announces.
fn skip_string_properties(r: &mut Reader<'_>, present: u16) -> Option<()> {
    for bit in [
        CONTENT_TYPE,
        CONTENT_ENCODING,
        MESSAGE_ID,
        CORRELATION_ID,
        REPLY_TO,
    ] {
        if present & bit != 0 {
            skip_str(r)?;
        }
    }
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::testing::{check_payload, hex};
    use crate::wire::HeaderValue;

    pub(crate) fn full_meta() -> MessageMeta {
        MessageMeta {
            exchange: "orders".into(),
            routing_key: "eu.new".into(),
            mandatory: true,
            properties: Properties {
                persistent: true,
                content_type: Some("application/json".into()),
                content_encoding: Some("gzip".into()),
                message_id: Some("m-1".into()),
                correlation_id: Some("c-1".into()),
                reply_to: Some("replies".into()),
                expiration_ms: Some(60_000),
                timestamp_ms: Some(1_700_000_000_000),
                headers: vec![("tenant".into(), HeaderValue::Int(42))],
                deliver_at_ms: None,
                delay_ms: Some(5_000),
                priority: None,
                trace_parent: None,
                trace_state: None,
            },
        }
    }

    #[test]
    fn minimal_meta() {
        let meta = MessageMeta::new("", "tasks");
        let bytes = hex("00  00 00  05 00 74 61 73 6b 73  00 00");
        check_payload(&meta, &bytes);
        assert_eq!(meta.encoded_len(), bytes.len());
    }

    #[test]
    fn peeking_reads_the_ttl_and_persistence_without_parsing_the_rest() {
        let full = full_meta().to_bytes().unwrap();
        assert_eq!(MetaView::peek_expiration_ms(&full), Some(60_000));
        assert!(MetaView::peek_persistent(&full));
        let mut only_ttl = MessageMeta::new("", "q");
        only_ttl.properties.expiration_ms = Some(300);
        let only_ttl = only_ttl.to_bytes().unwrap();
        assert_eq!(MetaView::peek_expiration_ms(&only_ttl), Some(300));
        assert!(!MetaView::peek_persistent(&only_ttl));
        let none = MessageMeta::new("", "q").to_bytes().unwrap();
        assert_eq!(MetaView::peek_expiration_ms(&none), None);
        assert_eq!(MetaView::peek_expiration_ms(&full[..full.len() / 2]), None);
        assert_eq!(MetaView::peek_expiration_ms(&[]), None);
    }

    #[test]
    fn peeking_reads_the_message_id_as_a_full_parse_does() {
        let full = full_meta().to_bytes().unwrap();
        assert_eq!(
            MetaView::peek_message_id(&full),
            MetaView::parse(&full).unwrap().message_id
        );
        assert!(MetaView::peek_message_id(&full).is_some());
        let mut only_id = MessageMeta::new("", "q");
        only_id.properties.message_id = Some("m-1".into());
        assert_eq!(
            MetaView::peek_message_id(&only_id.to_bytes().unwrap()),
            Some("m-1")
        );
        let none = MessageMeta::new("", "q").to_bytes().unwrap();
        assert_eq!(MetaView::peek_message_id(&none), None);
        assert_eq!(MetaView::peek_message_id(&[]), None);
    }

    #[test]
    fn full_meta_round_trips_through_view() {
        let meta = full_meta();
        let bytes = meta.to_bytes().unwrap();
        assert_eq!(meta.encoded_len(), bytes.len());
        let view = MetaView::parse(&bytes).unwrap();
        assert_eq!(view.exchange, "orders");
        assert_eq!(view.routing_key, "eu.new");
        assert!(view.mandatory && view.persistent);
        assert_eq!(view.expiration_ms, Some(60_000));
        assert_eq!(view.headers().unwrap(), meta.properties.headers);
        assert_eq!(MessageMeta::from_slice(&bytes).unwrap(), meta);
        check_payload(&meta, &bytes);
        for i in 0..bytes.len() {
            assert!(MetaView::parse(&bytes[..i]).is_err(), "prefix {i}");
        }
    }

    #[test]
    fn a_delay_and_a_deliver_at_time_have_exact_bytes_and_are_peeked_past_the_headers() {
        let mut meta = MessageMeta::new("", "q");
        meta.properties.delay_ms = Some(5_000);
        let bytes = hex("00  00 00  01 00 71  00 02  88 13 00 00 00 00 00 00");
        check_payload(&meta, &bytes);
        assert_eq!(
            MetaView::peek_delivery_delay(&bytes),
            Some(DeliveryDelay::After(5_000))
        );
        meta.properties.delay_ms = None;
        meta.properties.deliver_at_ms = Some(1);
        let bytes = hex("00  00 00  01 00 71  00 01  01 00 00 00 00 00 00 00");
        check_payload(&meta, &bytes);
        assert_eq!(
            MetaView::peek_delivery_delay(&bytes),
            Some(DeliveryDelay::At(1))
        );
        let full = full_meta().to_bytes().unwrap();
        assert_eq!(
            MetaView::peek_delivery_delay(&full),
            Some(DeliveryDelay::After(5_000)),
            "found after every other property"
        );
        let none = MessageMeta::new("", "q").to_bytes().unwrap();
        assert_eq!(MetaView::peek_delivery_delay(&none), None);
        assert_eq!(MetaView::peek_delivery_delay(&full[..full.len() - 1]), None);
        assert_eq!(DeliveryDelay::After(5).due_ms(10), 15);
        assert_eq!(DeliveryDelay::At(3).due_ms(10), 3);
        assert_eq!(DeliveryDelay::After(u64::MAX).due_ms(10), u64::MAX);
    }

    #[test]
    fn persistent_json_meta_exact_bytes() {
        let mut meta = MessageMeta::new("", "tasks");
        meta.properties.persistent = true;
        meta.properties.content_type = Some("text/plain".into());
        check_payload(
            &meta,
            &hex("02  00 00  05 00 74 61 73 6b 73  01 00  0a 00 74 65 78 74 2f 70 6c 61 69 6e"),
        );
    }

    #[test]
    fn a_priority_follows_the_headers_as_one_byte() {
        let mut meta = MessageMeta::new("", "q");
        meta.properties.priority = Some(7);
        check_payload(&meta, &hex("00  00 00  01 00 71  00 04  07"));
        let mut with_headers = meta.clone();
        with_headers.properties.headers = vec![("a".into(), HeaderValue::Int(1))];
        check_payload(
            &with_headers,
            &hex("00  00 00  01 00 71  80 04  01 00  01 00 61 02 01 00 00 00 00 00 00 00  07"),
        );
        assert_eq!(
            MetaView::parse(&with_headers.to_bytes().unwrap())
                .unwrap()
                .priority,
            Some(7)
        );
    }

    #[test]
    fn peeking_reads_the_priority_past_every_other_property() {
        let mut full = full_meta();
        assert_eq!(MetaView::peek_priority(&full.to_bytes().unwrap()), None);
        full.properties.priority = Some(9);
        let bytes = full.to_bytes().unwrap();
        assert_eq!(MetaView::peek_priority(&bytes), Some(9));
        assert_eq!(MetaView::peek_expiration_ms(&bytes), Some(60_000));
        for i in 0..bytes.len() {
            assert_eq!(MetaView::peek_priority(&bytes[..i]), None, "prefix {i}");
        }
        assert_eq!(MetaView::peek_priority(&[]), None);
    }

    #[test]
    fn non_canonical_blocks_are_rejected() {
        // headers bit set with an empty table
        assert!(MetaView::parse(&hex("00 00 00 00 00 80 00 00 00")).is_err());
        // undefined property bit 13
        assert!(matches!(
            MetaView::parse(&hex("00 00 00 00 00 00 20")),
            Err(WireError::ReservedBits { .. })
        ));

        // undefined flag bit 2
        assert!(MetaView::parse(&hex("04 00 00 00 00 00 00")).is_err());
        // trailing byte
        assert!(MetaView::parse(&hex("00 00 00 00 00 00 00 ff")).is_err());
    }

    #[test]
    fn a_trace_parent_and_state_follow_the_priority_and_are_peeked() {
        let tp =
            TraceParent::parse("00-0102030405060708090a0b0c0d0e0f10-a1a2a3a4a5a6a7a8-01").unwrap();
        let mut meta = MessageMeta::new("", "q");
        meta.properties.trace_parent = Some(tp);
        meta.properties.trace_state = Some("k=v".into());
        let bytes = hex(
            "00  00 00  01 00 71  00 18  01 02 03 04 05 06 07 08 09 0a 0b 0c 0d 0e 0f 10  \
             a1 a2 a3 a4 a5 a6 a7 a8  01  03 00 6b 3d 76",
        );
        check_payload(&meta, &bytes);
        assert_eq!(meta.encoded_len(), bytes.len());
        assert_eq!(MetaView::peek_trace_parent(&bytes), Some(tp));
        let mut full = full_meta();
        full.properties.priority = Some(3);
        full.properties.trace_parent = Some(tp);
        let bytes = full.to_bytes().unwrap();
        assert_eq!(MetaView::peek_trace_parent(&bytes), Some(tp));
        assert_eq!(MessageMeta::from_slice(&bytes).unwrap(), full);
        for i in 0..bytes.len() {
            assert!(MetaView::parse(&bytes[..i]).is_err(), "prefix {i}");
        }
        assert_eq!(
            MetaView::peek_trace_parent(&full_meta().to_bytes().unwrap()),
            None
        );
        // an all-zero trace id is refused
        let zero = hex("00 00 00 01 00 71 00 08")
            .into_iter()
            .chain([0; 25])
            .collect::<Vec<_>>();
        assert!(MetaView::parse(&zero).is_err());
    }
}
