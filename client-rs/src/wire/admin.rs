//! Listings for operators and the CLI (protocol.md §15): queues, exchanges, bindings and
//! consumers, one page at a time.
//!
//! A request names where its page starts (`after`: the sort key of the last item of the
//! previous page, `None` = from the first item) and how many items it wants (`limit`, 0 = as
//! many as fit in one frame). The answer holds items in a fixed order, every one sorting
//! strictly after `after`, and says whether more follow. The first page with the default limit
//! is the empty payload, so requests from before paging are still valid.
//!
//! ```text
//! request: empty, or  limit u32, flags u8 (bit 0: after present), after (per listing)
//! answer:  count u32 (bits 0-30: items in this page, bit 31: more pages follow), items
//! ```

use std::cmp::Ordering;

use bytes::BytesMut;

use super::circuit::CircuitState;
use super::error::WireError;
use super::exchange::ExchangeKind;
use super::frame::Payload;
use super::header::{headers_len, put_headers, read_headers, HeaderValue, Headers};
use super::primitives::{self as p, Reader};

const DURABLE: u8 = 1;
const EXCLUSIVE: u8 = 2;
const AUTO_DELETE: u8 = 4;

/// Bit 0 of a listing request's flags: the `after` cursor follows.
const HAS_AFTER: u8 = 1;
/// Bit 31 of a listing answer's count: more pages follow this one.
const MORE: u32 = 1 << 31;
/// Most items one page can count (bits 0-30 of the count).
pub const MAX_PAGE_ITEMS: usize = (MORE - 1) as usize;
/// Bytes of a listing answer's payload besides its items (the count).
pub const PAGE_FIXED_LEN: usize = 4;

/// A cursor's wire form: the sort key of one item of a listing.
pub(super) trait Cursor: Sized {
    fn put(&self, buf: &mut BytesMut) -> Result<(), WireError>;
    fn read(r: &mut Reader<'_>) -> Result<Self, WireError>;
}

/// Queues and exchanges are listed by name.
impl Cursor for String {
    fn put(&self, buf: &mut BytesMut) -> Result<(), WireError> {
        p::put_str(buf, "after", self)
    }

    fn read(r: &mut Reader<'_>) -> Result<Self, WireError> {
        r.string()
    }
}

pub(super) fn put_page_request<C: Cursor>(
    buf: &mut BytesMut,
    limit: u32,
    after: Option<&C>,
) -> Result<(), WireError> {
    // The first page with the default limit is the empty payload (its only encoding, §2.5).
    if limit == 0 && after.is_none() {
        return Ok(());
    }
    p::put_u32(buf, limit);
    p::put_u8(buf, if after.is_some() { HAS_AFTER } else { 0 });
    after.map_or(Ok(()), |c| c.put(buf))
}

pub(super) fn read_page_request<C: Cursor>(
    r: &mut Reader<'_>,
) -> Result<(u32, Option<C>), WireError> {
    if r.remaining() == 0 {
        return Ok((0, None));
    }
    let limit = r.u32()?;
    let flags = r.flags_u8("listing flags", HAS_AFTER)?;
    if flags & HAS_AFTER == 0 {
        if limit == 0 {
            // The empty payload says this; two encodings of one request are not allowed.
            return Err(WireError::InvalidValue {
                what: "listing limit without after (send an empty payload)",
                value: 0,
            });
        }
        return Ok((limit, None));
    }
    Ok((limit, Some(C::read(r)?)))
}

pub(super) fn put_page_count(
    buf: &mut BytesMut,
    what: &'static str,
    n: usize,
    more: bool,
) -> Result<(), WireError> {
    let n = p::checked_len(what, n, MAX_PAGE_ITEMS)?;
    p::put_u32(buf, n as u32 | if more { MORE } else { 0 });
    Ok(())
}

/// Reads a page's count: the number of items (checked against the bytes left, at least
/// `min_item_len` each) and whether more pages follow.
pub(super) fn read_page_count(
    r: &mut Reader<'_>,
    min_item_len: usize,
) -> Result<(usize, bool), WireError> {
    let raw = r.u32()?;
    page_count(r, raw, min_item_len)
}

/// The items counted by a page's count `raw` (flags of the answer other than bit 31
/// cleared), and whether more pages follow.
fn page_count(
    r: &mut Reader<'_>,
    raw: u32,
    min_item_len: usize,
) -> Result<(usize, bool), WireError> {
    let more = raw & MORE != 0;
    let count = r.count((raw & !MORE) as usize, min_item_len)?;
    if more && count == 0 {
        // The client would ask for the same page again, forever.
        return Err(WireError::InvalidValue {
            what: "empty listing page with more to follow",
            value: u64::from(raw),
        });
    }
    Ok((count, more))
}

macro_rules! page_request {
    ($(#[doc = $doc:literal])* $name:ident, $cursor:ty, $after_doc:literal, $limit_doc:literal) => {
        $(#[doc = $doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Default)]
        pub struct $name {
            #[doc = $after_doc]
            pub after: Option<$cursor>,
            #[doc = $limit_doc]
            pub limit: u32,
        }

        impl Payload for $name {
            fn encode(&self, buf: &mut BytesMut) -> Result<(), WireError> {
                put_page_request(buf, self.limit, self.after.as_ref())
            }

            fn decode(r: &mut Reader<'_>) -> Result<Self, WireError> {
                let (limit, after) = read_page_request(r)?;
                Ok($name { after, limit })
            }
        }
    };
}

page_request!(
    /// `ListQueues` (0x0601): asks for a page of queues, by name.
    ListQueues,
    String,
    "The name of the last queue of the previous page; `None` = from the first queue.",
    "Most queues wanted; 0 = as many as fit in one frame. The server may send fewer."
);

page_request!(
    /// `ListExchanges` (0x0603): asks for a page of exchanges, by name.
    ListExchanges,
    String,
    "The name of the last exchange of the previous page (`\"\"` is the default exchange, \
     which sorts first); `None` = from the first exchange.",
    "Most exchanges wanted; 0 = as many as fit in one frame. The server may send fewer."
);

page_request!(
    /// `ListBindings` (0x0605): asks for a page of bindings, in [`BindingSummary::listing_cmp`]
    /// order.
    ListBindings,
    BindingSummary,
    "The last binding of the previous page (a binding is its own key); `None` = from the \
     first binding.",
    "Most bindings wanted; 0 = as many as fit in one frame. The server may send fewer."
);

/// Bit 1 of `ListConsumers` flags: list each consumer's circuit (protocol.md §15.1).
const WITH_CIRCUIT: u8 = 2;
/// Bit 30 of a `ListConsumersOk` count: each item ends with its circuit.
const ITEMS_WITH_CIRCUIT: u32 = 1 << 30;

/// `ListConsumers` (0x0607): asks for a page of consumers, in [`ConsumerKey`] order.
///
/// ```text
/// empty, or: limit u32, flags u8 (0 after present, 1 circuit), [after]
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ListConsumers {
    /// The key of the last consumer of the previous page; `None` = from the first consumer.
    pub after: Option<ConsumerKey>,
    /// Most consumers wanted; 0 = as many as fit in one frame. The server may send fewer.
    pub limit: u32,
    /// Ask for each consumer's circuit (circuit breaking) too. A server that predates it
    /// answers `MALFORMED_REQUEST`.
    pub circuit: bool,
}

impl Payload for ListConsumers {
    fn encode(&self, buf: &mut BytesMut) -> Result<(), WireError> {
        if !self.circuit {
            return put_page_request(buf, self.limit, self.after.as_ref());
        }
        p::put_u32(buf, self.limit);
        let after = if self.after.is_some() { HAS_AFTER } else { 0 };
        p::put_u8(buf, after | WITH_CIRCUIT);
        self.after.as_ref().map_or(Ok(()), |c| c.put(buf))
    }

    fn decode(r: &mut Reader<'_>) -> Result<Self, WireError> {
        if r.remaining() == 0 {
            return Ok(ListConsumers::default());
        }
        let limit = r.u32()?;
        let flags = r.flags_u8("listing flags", HAS_AFTER | WITH_CIRCUIT)?;
        let circuit = flags & WITH_CIRCUIT != 0;
        if flags & HAS_AFTER == 0 {
            if limit == 0 && !circuit {
                return Err(WireError::InvalidValue {
                    what: "listing limit without after (send an empty payload)",
                    value: 0,
                });
            }
            return Ok(ListConsumers {
                after: None,
                limit,
                circuit,
            });
        }
        Ok(ListConsumers {
            after: Some(ConsumerKey::read(r)?),
            limit,
            circuit,
        })
    }
}

/// One queue in `ListQueuesOk`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueSummary {
    /// Its name.
    pub name: String,
    /// Survives restarts.
    pub durable: bool,
    /// Belongs to one connection.
    pub exclusive: bool,
    /// Deleted when its last consumer goes.
    pub auto_delete: bool,
    /// Messages ready for delivery.
    pub ready: u64,
    /// Messages delivered and not yet settled.
    pub unacked: u64,
    /// Active consumers.
    pub consumers: u32,
    /// Bytes of ready and unacked messages.
    pub bytes: u64,
    /// Messages published into the queue per second, over the last few seconds.
    pub publish_rate: u64,
    /// Messages acknowledged per second, over the last few seconds.
    pub ack_rate: u64,
    /// How long the oldest ready message has waited, in milliseconds; 0 when none is ready.
    pub oldest_ready_age_ms: u64,
}

/// Encoded size of a queue summary besides its name.
const QUEUE_FIXED_LEN: usize = 2 + 1 + 8 + 8 + 4 + 8 + 8 + 8 + 8;

impl QueueSummary {
    /// Bytes it takes in a `ListQueuesOk` payload.
    pub fn encoded_len(&self) -> usize {
        QUEUE_FIXED_LEN + self.name.len()
    }

    fn put(&self, buf: &mut BytesMut) -> Result<(), WireError> {
        p::put_str(buf, "queue name", &self.name)?;
        let flags = (u8::from(self.durable) * DURABLE)
            | (u8::from(self.exclusive) * EXCLUSIVE)
            | (u8::from(self.auto_delete) * AUTO_DELETE);
        p::put_u8(buf, flags);
        p::put_u64(buf, self.ready);
        p::put_u64(buf, self.unacked);
        p::put_u32(buf, self.consumers);
        p::put_u64(buf, self.bytes);
        p::put_u64(buf, self.publish_rate);
        p::put_u64(buf, self.ack_rate);
        p::put_u64(buf, self.oldest_ready_age_ms);
        Ok(())
    }

    fn read(r: &mut Reader<'_>) -> Result<Self, WireError> {
        let name = r.string()?;
        let flags = r.flags_u8("queue flags", DURABLE | EXCLUSIVE | AUTO_DELETE)?;
        Ok(QueueSummary {
            name,
            durable: flags & DURABLE != 0,
            exclusive: flags & EXCLUSIVE != 0,
            auto_delete: flags & AUTO_DELETE != 0,
            ready: r.u64()?,
            unacked: r.u64()?,
            consumers: r.u32()?,
            bytes: r.u64()?,
            publish_rate: r.u64()?,
            ack_rate: r.u64()?,
            oldest_ready_age_ms: r.u64()?,
        })
    }
}

/// `ListQueuesOk` (0x0602): a page of queues, sorted by name.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ListQueuesOk {
    /// The queues.
    pub queues: Vec<QueueSummary>,
    /// More queues follow: ask again with `after` = the last one's name.
    pub more: bool,
}

impl Payload for ListQueuesOk {
    fn encode(&self, buf: &mut BytesMut) -> Result<(), WireError> {
        put_page_count(buf, "queues", self.queues.len(), self.more)?;
        self.queues.iter().try_for_each(|q| q.put(buf))
    }

    fn decode(r: &mut Reader<'_>) -> Result<Self, WireError> {
        let (count, more) = read_page_count(r, QUEUE_FIXED_LEN)?;
        let queues = (0..count)
            .map(|_| QueueSummary::read(r))
            .collect::<Result<_, _>>()?;
        Ok(ListQueuesOk { queues, more })
    }
}

/// One exchange in `ListExchangesOk`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExchangeSummary {
    /// Its name (`""` is the default exchange).
    pub name: String,
    /// How it routes.
    pub kind: ExchangeKind,
    /// Survives restarts.
    pub durable: bool,
    /// Deleted when its last binding goes.
    pub auto_delete: bool,
    /// Where unroutable messages go.
    pub alternate_exchange: Option<String>,
    /// The header a consistent-hash exchange hashes instead of the routing key.
    pub hash_header: Option<String>,
}

const EXCHANGE_AUTO_DELETE: u8 = 2;
const HAS_ALTERNATE: u8 = 4;
const HAS_HASH_HEADER: u8 = 8;
/// Encoded size of an exchange summary without a name or an alternate exchange.
const EXCHANGE_MIN_LEN: usize = 2 + 1 + 1;

impl ExchangeSummary {
    /// Bytes it takes in a `ListExchangesOk` payload.
    pub fn encoded_len(&self) -> usize {
        EXCHANGE_MIN_LEN
            + self.name.len()
            + self.alternate_exchange.as_deref().map_or(0, p::str_len)
            + self.hash_header.as_deref().map_or(0, p::str_len)
    }

    fn put(&self, buf: &mut BytesMut) -> Result<(), WireError> {
        p::put_str(buf, "exchange name", &self.name)?;
        p::put_u8(buf, self.kind as u8);
        let flags = (u8::from(self.durable) * DURABLE)
            | (u8::from(self.auto_delete) * EXCHANGE_AUTO_DELETE)
            | (u8::from(self.alternate_exchange.is_some()) * HAS_ALTERNATE)
            | (u8::from(self.hash_header.is_some()) * HAS_HASH_HEADER);
        p::put_u8(buf, flags);
        if let Some(a) = &self.alternate_exchange {
            p::put_str(buf, "alternate exchange", a)?;
        }
        match &self.hash_header {
            Some(h) => p::put_str(buf, "hash header", h),
            None => Ok(()),
        }
    }

    fn read(r: &mut Reader<'_>) -> Result<Self, WireError> {
        let name = r.string()?;
        let kind = ExchangeKind::from_u8(r.u8()?)?;
        let flags = r.flags_u8(
            "exchange flags",
            DURABLE | EXCHANGE_AUTO_DELETE | HAS_ALTERNATE | HAS_HASH_HEADER,
        )?;
        let alternate_exchange = (flags & HAS_ALTERNATE != 0)
            .then(|| r.string())
            .transpose()?;
        let hash_header = (flags & HAS_HASH_HEADER != 0)
            .then(|| r.string())
            .transpose()?;
        Ok(ExchangeSummary {
            name,
            kind,
            durable: flags & DURABLE != 0,
            auto_delete: flags & EXCHANGE_AUTO_DELETE != 0,
            alternate_exchange,
            hash_header,
        })
    }
}

/// `ListExchangesOk` (0x0604): a page of exchanges, sorted by name.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ListExchangesOk {
    /// The exchanges.
    pub exchanges: Vec<ExchangeSummary>,
    /// More exchanges follow: ask again with `after` = the last one's name.
    pub more: bool,
}

impl Payload for ListExchangesOk {
    fn encode(&self, buf: &mut BytesMut) -> Result<(), WireError> {
        put_page_count(buf, "exchanges", self.exchanges.len(), self.more)?;
        self.exchanges.iter().try_for_each(|x| x.put(buf))
    }

    fn decode(r: &mut Reader<'_>) -> Result<Self, WireError> {
        let (count, more) = read_page_count(r, EXCHANGE_MIN_LEN)?;
        let exchanges = (0..count)
            .map(|_| ExchangeSummary::read(r))
            .collect::<Result<_, _>>()?;
        Ok(ListExchangesOk { exchanges, more })
    }
}

/// One binding in `ListBindingsOk`, and the cursor of `ListBindings`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindingSummary {
    /// Source exchange.
    pub exchange: String,
    /// Destination queue.
    pub queue: String,
    /// Binding key.
    pub routing_key: String,
    /// Binding arguments.
    pub arguments: Headers,
}

/// Encoded size of a binding with empty names, key and arguments.
const BINDING_MIN_LEN: usize = 2 + 2 + 2 + 2;

impl BindingSummary {
    /// Bytes it takes in a `ListBindingsOk` payload.
    pub fn encoded_len(&self) -> usize {
        p::str_len(&self.exchange)
            + p::str_len(&self.queue)
            + p::str_len(&self.routing_key)
            + headers_len(&self.arguments)
    }

    /// The order of bindings in listings (protocol.md §15), which is also what a
    /// `ListBindings` cursor means: by exchange, then queue, then routing key (each compared
    /// as bytes), then arguments ([`cmp_headers`]). Bindings are unique under this order.
    pub fn listing_cmp(&self, other: &Self) -> Ordering {
        (
            self.exchange.as_str(),
            self.queue.as_str(),
            self.routing_key.as_str(),
        )
            .cmp(&(
                other.exchange.as_str(),
                other.queue.as_str(),
                other.routing_key.as_str(),
            ))
            .then_with(|| cmp_headers(&self.arguments, &other.arguments))
    }
}

impl Cursor for BindingSummary {
    fn put(&self, buf: &mut BytesMut) -> Result<(), WireError> {
        p::put_str(buf, "exchange name", &self.exchange)?;
        p::put_str(buf, "queue name", &self.queue)?;
        p::put_str(buf, "routing key", &self.routing_key)?;
        put_headers(buf, &self.arguments)
    }

    fn read(r: &mut Reader<'_>) -> Result<Self, WireError> {
        Ok(BindingSummary {
            exchange: r.string()?,
            queue: r.string()?,
            routing_key: r.string()?,
            arguments: read_headers(r)?,
        })
    }
}

/// Orders header tables entry by entry, in their order (a table that is a prefix of another
/// sorts first); entries by key (as bytes), then type code (protocol.md §2.3), then value:
/// as `cmp_header_values` orders them.
pub fn cmp_headers(a: &[(String, HeaderValue)], b: &[(String, HeaderValue)]) -> Ordering {
    a.iter()
        .zip(b)
        .map(|((ka, va), (kb, vb))| ka.cmp(kb).then_with(|| cmp_header_values(va, vb)))
        .find(|o| o.is_ne())
        .unwrap_or_else(|| a.len().cmp(&b.len()))
}

/// Orders header values by type code, then value: str and bytes as bytes, int and timestamp
/// as numbers, `false` before `true`, floats by value with `-0.0` before `0.0`, decimals by
/// scale then unscaled value, arrays element by element and tables as [`cmp_headers`] (a
/// prefix first). Equal exactly when the values are `==`.
pub fn cmp_header_values(x: &HeaderValue, y: &HeaderValue) -> Ordering {
    use HeaderValue as V;
    match (x, y) {
        (V::Str(x), V::Str(y)) => x.cmp(y),
        (V::Int(x), V::Int(y)) => x.cmp(y),
        (V::Bool(x), V::Bool(y)) => x.cmp(y),
        (V::Bytes(x), V::Bytes(y)) => x.cmp(y),
        (V::Float(x), V::Float(y)) => x.total_cmp(y),
        (V::Void, V::Void) => Ordering::Equal,
        (V::Array(x), V::Array(y)) => x
            .iter()
            .zip(y)
            .map(|(a, b)| cmp_header_values(a, b))
            .find(|o| o.is_ne())
            .unwrap_or_else(|| x.len().cmp(&y.len())),
        (V::Table(x), V::Table(y)) => cmp_headers(x, y),
        (V::Timestamp(x), V::Timestamp(y)) => x.cmp(y),
        (V::Decimal(x), V::Decimal(y)) => (x.scale, x.value).cmp(&(y.scale, y.value)),
        (x, y) => x.type_code().cmp(&y.type_code()),
    }
}

/// `ListBindingsOk` (0x0606): a page of explicit bindings, in
/// [`BindingSummary::listing_cmp`] order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ListBindingsOk {
    /// The bindings.
    pub bindings: Vec<BindingSummary>,
    /// More bindings follow: ask again with `after` = the last one.
    pub more: bool,
}

impl Payload for ListBindingsOk {
    fn encode(&self, buf: &mut BytesMut) -> Result<(), WireError> {
        put_page_count(buf, "bindings", self.bindings.len(), self.more)?;
        self.bindings.iter().try_for_each(|b| b.put(buf))
    }

    fn decode(r: &mut Reader<'_>) -> Result<Self, WireError> {
        let (count, more) = read_page_count(r, BINDING_MIN_LEN)?;
        let bindings = (0..count)
            .map(|_| BindingSummary::read(r))
            .collect::<Result<_, _>>()?;
        Ok(ListBindingsOk { bindings, more })
    }
}

/// What orders consumers in listings and names one in a `ListConsumers` cursor: a tag is
/// unique on its connection, not on its queue, hence the connection too.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct ConsumerKey {
    /// The queue it consumes from (first sort field).
    pub queue: String,
    /// Its tag (second).
    pub consumer_tag: String,
    /// Its connection (third).
    pub connection_id: u64,
}

impl Cursor for ConsumerKey {
    fn put(&self, buf: &mut BytesMut) -> Result<(), WireError> {
        p::put_str(buf, "queue name", &self.queue)?;
        p::put_str(buf, "consumer tag", &self.consumer_tag)?;
        p::put_u64(buf, self.connection_id);
        Ok(())
    }

    fn read(r: &mut Reader<'_>) -> Result<Self, WireError> {
        Ok(ConsumerKey {
            queue: r.string()?,
            consumer_tag: r.string()?,
            connection_id: r.u64()?,
        })
    }
}

/// One consumer in `ListConsumersOk`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerSummary {
    /// The queue it consumes from.
    pub queue: String,
    /// Its tag.
    pub consumer_tag: String,
    /// The server's number for its connection (`Welcome.connection_id`).
    pub connection_id: u64,
    /// Its window; 0 = unlimited.
    pub prefetch: u32,
    /// Deliveries it holds unsettled.
    pub unacked: u32,
    /// It receives messages; false for a standby of a single-active-consumer queue.
    pub active: bool,
    /// Its priority (`Consume` flags bit 2; 0 by default).
    pub priority: i32,
    /// Its circuit, when it has circuit breaking and the listing asked for circuits
    /// (`ListConsumers::circuit`); `None` otherwise.
    pub circuit: Option<CircuitSummary>,
}

/// A consumer's circuit in `ListConsumersOk`.
///
/// ```text
/// state u8, failures u32, until_ms u64
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CircuitSummary {
    /// Closed, open or half-open.
    pub state: CircuitState,
    /// Failures counted in the window (closed), or those that opened it (open).
    pub failures: u32,
    /// When an open circuit becomes half-open (Unix ms); 0 otherwise.
    pub until_ms: u64,
}

/// Encoded size of a consumer summary besides its queue name and tag.
const CONSUMER_FIXED_LEN: usize = 2 + 2 + 8 + 4 + 4 + 1 + 4;
/// Encoded size of an item's circuit: presence u8, then state u8, failures u32, until_ms u64.
const CIRCUIT_LEN: usize = 1 + 1 + 4 + 8;

impl ConsumerSummary {
    /// Bytes it takes in a `ListConsumersOk` payload without circuits (the most a page
    /// with circuits adds is [`Self::CIRCUIT_LEN`] per item).
    pub fn encoded_len(&self) -> usize {
        CONSUMER_FIXED_LEN + self.queue.len() + self.consumer_tag.len()
    }

    /// Bytes an item's circuit adds in a page with circuits (at most).
    pub const CIRCUIT_LEN: usize = CIRCUIT_LEN;

    /// Its place in listings, and the cursor that continues after it.
    pub fn key(&self) -> ConsumerKey {
        ConsumerKey {
            queue: self.queue.clone(),
            consumer_tag: self.consumer_tag.clone(),
            connection_id: self.connection_id,
        }
    }

    fn put(&self, buf: &mut BytesMut) -> Result<(), WireError> {
        p::put_str(buf, "queue name", &self.queue)?;
        p::put_str(buf, "consumer tag", &self.consumer_tag)?;
        p::put_u64(buf, self.connection_id);
        p::put_u32(buf, self.prefetch);
        p::put_u32(buf, self.unacked);
        p::put_bool(buf, self.active);
        p::put_i32(buf, self.priority);
        Ok(())
    }

    fn put_circuit(&self, buf: &mut BytesMut) {
        p::put_bool(buf, self.circuit.is_some());
        if let Some(c) = &self.circuit {
            p::put_u8(buf, c.state as u8);
            p::put_u32(buf, c.failures);
            p::put_u64(buf, c.until_ms);
        }
    }

    fn read(r: &mut Reader<'_>, with_circuit: bool) -> Result<Self, WireError> {
        Ok(ConsumerSummary {
            queue: r.string()?,
            consumer_tag: r.string()?,
            connection_id: r.u64()?,
            prefetch: r.u32()?,
            unacked: r.u32()?,
            active: r.bool()?,
            priority: r.i32()?,
            circuit: match with_circuit && r.bool()? {
                false => None,
                true => Some(CircuitSummary {
                    state: CircuitState::from_u8(r.u8()?)?,
                    failures: r.u32()?,
                    until_ms: r.u64()?,
                }),
            },
        })
    }
}

/// `ListConsumersOk` (0x0608): a page of consumers, in [`ConsumerKey`] order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ListConsumersOk {
    /// The consumers.
    pub consumers: Vec<ConsumerSummary>,
    /// More consumers follow: ask again with `after` = the last one's key.
    pub more: bool,
    /// Each item carries its circuit (count bit 30): the request asked for circuits.
    pub circuit: bool,
}

impl Payload for ListConsumersOk {
    fn encode(&self, buf: &mut BytesMut) -> Result<(), WireError> {
        // Bit 30 is taken from the count: at most 2^30 - 1 items then.
        let max = if self.circuit {
            (ITEMS_WITH_CIRCUIT - 1) as usize
        } else {
            MAX_PAGE_ITEMS
        };
        let n = p::checked_len("consumers", self.consumers.len(), max)? as u32;
        let flags =
            if self.more { MORE } else { 0 } | if self.circuit { ITEMS_WITH_CIRCUIT } else { 0 };
        p::put_u32(buf, n | flags);
        for c in &self.consumers {
            c.put(buf)?;
            if self.circuit {
                c.put_circuit(buf);
            }
        }
        Ok(())
    }

    fn decode(r: &mut Reader<'_>) -> Result<Self, WireError> {
        let raw = r.u32()?;
        let circuit = raw & ITEMS_WITH_CIRCUIT != 0;
        let min_len = CONSUMER_FIXED_LEN + usize::from(circuit);
        let (count, more) = page_count(r, raw & !ITEMS_WITH_CIRCUIT, min_len)?;
        let consumers = (0..count)
            .map(|_| ConsumerSummary::read(r, circuit))
            .collect::<Result<_, _>>()?;
        Ok(ListConsumersOk {
            consumers,
            more,
            circuit,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::testing::{check_page_request, check_payload, hex};

    fn queue(name: &str) -> QueueSummary {
        QueueSummary {
            name: name.into(),
            durable: true,
            exclusive: false,
            auto_delete: false,
            ready: 2,
            unacked: 1,
            consumers: 1,
            bytes: 300,
            publish_rate: 15,
            ack_rate: 0,
            oldest_ready_age_ms: 2500,
        }
    }

    fn binding(exchange: &str, queue: &str, key: &str, arguments: Headers) -> BindingSummary {
        BindingSummary {
            exchange: exchange.into(),
            queue: queue.into(),
            routing_key: key.into(),
            arguments,
        }
    }

    fn encoded<T: Payload>(value: &T) -> BytesMut {
        let mut buf = BytesMut::new();
        value.encode(&mut buf).unwrap();
        buf
    }

    #[test]
    fn a_last_page_of_queues_is_laid_out_as_before_paging() {
        let ok = ListQueuesOk {
            queues: vec![queue("q")],
            more: false,
        };
        let bytes = hex("01 00 00 00  01 00 71  01
             02 00 00 00 00 00 00 00  01 00 00 00 00 00 00 00  01 00 00 00
             2c 01 00 00 00 00 00 00  0f 00 00 00 00 00 00 00  00 00 00 00 00 00 00 00
             c4 09 00 00 00 00 00 00");
        check_payload(&ok, &bytes);
    }

    #[test]
    fn a_page_with_more_to_follow_sets_bit_31_of_the_count() {
        let ok = ListQueuesOk {
            queues: vec![queue("q")],
            more: true,
        };
        let last = ListQueuesOk {
            more: false,
            ..ok.clone()
        };
        let mut bytes = hex("01 00 00 80");
        bytes.extend_from_slice(&encoded(&last)[4..]);
        check_payload(&ok, &bytes);
        assert_eq!(
            &encoded(&ListQueuesOk::default())[..],
            &hex("00 00 00 00")[..]
        );
    }

    #[test]
    fn an_empty_page_with_more_to_follow_is_malformed() {
        for raw in ["00 00 00 80", "00 00 00 00 00"] {
            let bytes = bytes::Bytes::from(hex(raw));
            assert!(ListQueuesOk::decode_exact(&bytes).is_err(), "{raw}");
            assert!(ListBindingsOk::decode_exact(&bytes).is_err(), "{raw}");
        }
    }

    #[test]
    fn list_exchanges_bindings_consumers() {
        check_payload(
            &ListExchangesOk {
                exchanges: vec![ExchangeSummary {
                    name: "x".into(),
                    kind: ExchangeKind::Topic,
                    durable: true,
                    auto_delete: false,
                    alternate_exchange: Some("ae".into()),
                    hash_header: None,
                }],
                more: true,
            },
            &hex("01 00 00 80  01 00 78  02  05  02 00 61 65"),
        );
        check_payload(
            &ListBindingsOk {
                bindings: vec![binding(
                    "x",
                    "q",
                    "a.#",
                    vec![("k".into(), HeaderValue::Bool(true))],
                )],
                more: false,
            },
            &hex("01 00 00 00  01 00 78  01 00 71  03 00 61 2e 23  01 00  01 00 6b 03 01"),
        );
        check_payload(
            &ListConsumersOk {
                consumers: vec![ConsumerSummary {
                    queue: "q".into(),
                    consumer_tag: "w".into(),
                    connection_id: 3,
                    prefetch: 10,
                    unacked: 4,
                    active: false,
                    priority: -1,
                    circuit: None,
                }],
                more: false,
                circuit: false,
            },
            &hex(
                "01 00 00 00  01 00 71  01 00 77  03 00 00 00 00 00 00 00  0a 00 00 00  04 00 00 00
                  00  ff ff ff ff",
            ),
        );
    }

    fn consumer(tag: &str, circuit: Option<CircuitSummary>) -> ConsumerSummary {
        ConsumerSummary {
            queue: "q".into(),
            consumer_tag: tag.into(),
            connection_id: 3,
            prefetch: 10,
            unacked: 4,
            active: true,
            priority: 0,
            circuit,
        }
    }

    #[test]
    fn consumers_with_circuits_set_bit_30_and_end_each_item_with_its_circuit() {
        let open = CircuitSummary {
            state: CircuitState::Open,
            failures: 3,
            until_ms: 0x0201,
        };
        check_payload(
            &ListConsumersOk {
                consumers: vec![consumer("a", Some(open)), consumer("b", None)],
                more: true,
                circuit: true,
            },
            &hex(
                "02 00 00 c0
                 01 00 71  01 00 61  03 00 00 00 00 00 00 00  0a 00 00 00  04 00 00 00  01  00 00 00 00
                 01  01  03 00 00 00  01 02 00 00 00 00 00 00
                 01 00 71  01 00 62  03 00 00 00 00 00 00 00  0a 00 00 00  04 00 00 00  01  00 00 00 00
                 00",
            ),
        );
        // An unknown state, and a presence byte other than 0 or 1, are refused.
        for bad in ["03", "02"] {
            let raw = format!(
                "01 00 00 40  01 00 71  01 00 61  03 00 00 00 00 00 00 00  0a 00 00 00  04 00 00 00
                 01  00 00 00 00  01  {bad}  00 00 00 00  00 00 00 00 00 00 00 00"
            );
            let raw = if bad == "02" {
                raw.replacen("01  02", "02  02", 1)
            } else {
                raw
            };
            let bytes = bytes::Bytes::from(hex(&raw));
            assert!(ListConsumersOk::decode_exact(&bytes).is_err(), "{raw}");
        }
    }

    #[test]
    fn list_consumers_asks_for_circuits_with_flags_bit_1() {
        check_page_request(
            &ListConsumers {
                after: None,
                limit: 0,
                circuit: true,
            },
            &hex("00 00 00 00  02"),
        );
        check_page_request(
            &ListConsumers {
                after: Some(ConsumerKey {
                    queue: "q".into(),
                    consumer_tag: "a".into(),
                    connection_id: 1,
                }),
                limit: 5,
                circuit: true,
            },
            &hex("05 00 00 00  03  01 00 71  01 00 61  01 00 00 00 00 00 00 00"),
        );
        // Bit 2 is not defined.
        let bytes = bytes::Bytes::from(hex("00 00 00 00  04"));
        assert!(ListConsumers::decode_exact(&bytes).is_err());
    }

    #[test]
    fn the_first_page_with_the_default_limit_is_the_empty_payload() {
        check_page_request(&ListQueues::default(), &[]);
        check_page_request(&ListExchanges::default(), &[]);
        check_page_request(&ListBindings::default(), &[]);
        check_page_request(&ListConsumers::default(), &[]);
    }

    #[test]
    fn page_requests_carry_a_limit_and_the_last_key_seen() {
        check_page_request(
            &ListQueues {
                after: Some("a".into()),
                limit: 2,
            },
            &hex("02 00 00 00  01  01 00 61"),
        );
        check_page_request(
            &ListQueues {
                after: None,
                limit: 100,
            },
            &hex("64 00 00 00  00"),
        );
        // The default exchange's name is empty: "after it" differs from "from the start".
        check_page_request(
            &ListExchanges {
                after: Some(String::new()),
                limit: 0,
            },
            &hex("00 00 00 00  01  00 00"),
        );
        check_page_request(
            &ListBindings {
                after: Some(binding(
                    "x",
                    "q",
                    "k",
                    vec![("m".into(), HeaderValue::Int(1))],
                )),
                limit: 1,
            },
            &hex("01 00 00 00  01  01 00 78  01 00 71  01 00 6b
                  01 00  01 00 6d 02 01 00 00 00 00 00 00 00"),
        );
        check_page_request(
            &ListConsumers {
                after: Some(ConsumerKey {
                    queue: "q".into(),
                    consumer_tag: "w".into(),
                    connection_id: 7,
                }),
                limit: 3,
                circuit: false,
            },
            &hex("03 00 00 00  01  01 00 71  01 00 77  07 00 00 00 00 00 00 00"),
        );
    }

    #[test]
    fn a_spelled_out_default_request_and_undefined_flags_are_malformed() {
        for raw in ["00 00 00 00  00", "01 00 00 00  02", "01 00 00 00  00  00"] {
            let bytes = bytes::Bytes::from(hex(raw));
            assert!(ListQueues::decode_exact(&bytes).is_err(), "{raw}");
            // Flags bit 1 is defined for consumers only (circuits).
            if raw != "01 00 00 00  02" {
                assert!(ListConsumers::decode_exact(&bytes).is_err(), "{raw}");
            }
        }
        let bytes = bytes::Bytes::from(hex("01 00 00 00  04"));
        assert!(ListConsumers::decode_exact(&bytes).is_err());
    }

    #[test]
    fn encoded_len_is_exact() {
        let q = queue(&"n".repeat(255));
        assert_eq!(q.encoded_len(), q.put_len());
        for ae in [None, Some("alt".to_owned())] {
            let x = ExchangeSummary {
                name: "x".into(),
                kind: ExchangeKind::Headers,
                durable: false,
                auto_delete: true,
                alternate_exchange: ae,
                hash_header: None,
            };
            assert_eq!(x.encoded_len(), x.put_len());
        }
        let b = binding("x", "q", "k.#", vec![("a".into(), "b".into())]);
        assert_eq!(b.encoded_len(), b.put_len());
        let c = ConsumerSummary {
            queue: "q".into(),
            consumer_tag: "tag".into(),
            connection_id: 1,
            prefetch: 0,
            unacked: 0,
            active: true,
            priority: 3,
            circuit: None,
        };
        assert_eq!(c.encoded_len(), c.put_len());
    }

    #[test]
    fn bindings_sort_by_exchange_queue_key_then_arguments() {
        let plain = |x, q, k| binding(x, q, k, Vec::new());
        let with = |args: Headers| binding("x", "q", "k", args);
        let ordered = [
            plain("", "z", "z"),
            plain("a", "a", "b"),
            plain("a", "b", "a"),
            plain("b", "a", "a"),
            with(Vec::new()),
            with(vec![("a".into(), "z".into())]),
            with(vec![("a".into(), HeaderValue::Int(-5))]),
            with(vec![("a".into(), HeaderValue::Int(3))]),
            with(vec![("a".into(), HeaderValue::Bool(false))]),
            with(vec![("a".into(), HeaderValue::Bool(true))]),
            with(vec![
                ("a".into(), HeaderValue::Bool(true)),
                ("b".into(), true.into()),
            ]),
            with(vec![("a".into(), HeaderValue::Bytes(bytes::Bytes::new()))]),
            with(vec![("b".into(), HeaderValue::Bool(false))]),
        ];
        for (i, a) in ordered.iter().enumerate() {
            for (j, b) in ordered.iter().enumerate() {
                assert_eq!(a.listing_cmp(b), i.cmp(&j), "{a:?} vs {b:?}");
            }
        }
    }

    trait PutLen {
        fn put_len(&self) -> usize;
    }

    macro_rules! put_len {
        ($($t:ty),*) => {$(
            impl PutLen for $t {
                fn put_len(&self) -> usize {
                    let mut buf = BytesMut::new();
                    self.put(&mut buf).unwrap();
                    buf.len()
                }
            }
        )*};
    }

    put_len!(
        QueueSummary,
        ExchangeSummary,
        BindingSummary,
        ConsumerSummary
    );
}
