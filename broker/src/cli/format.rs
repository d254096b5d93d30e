//! Output of the admin commands: a small text table, header values as text, and the JSON
//! shapes printed with `--json` (field order as declared, so the output reads like the table).

use std::fmt::{self, Write as _};

use serde::ser::{Serialize, SerializeMap, Serializer};
use sluice_client::wire::{
    BindingSummary, ConnectionSummary, ConsumerSummary, ExchangeSummary, InspectQueueOk,
    QueueSummary, RetryBackoff,
};
use sluice_client::{ExchangeKind, HeaderValue, Headers, Message, Overflow};

/// How a column is aligned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Align {
    /// Text.
    Left,
    /// Numbers.
    Right,
}

/// A text table: a header line, then one line per row, columns separated by two spaces. The
/// last column is not padded, so no line ends in spaces.
#[derive(Debug)]
pub struct Table {
    columns: Vec<(&'static str, Align)>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these columns and no rows.
    pub fn new(columns: &[(&'static str, Align)]) -> Self {
        Table {
            columns: columns.to_vec(),
            rows: Vec::new(),
        }
    }

    /// Adds a row (one cell per column).
    pub fn row(&mut self, cells: Vec<String>) {
        debug_assert_eq!(cells.len(), self.columns.len());
        self.rows.push(cells);
    }
}

impl fmt::Display for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let width = |cell: &str| cell.chars().count();
        let mut widths: Vec<usize> = self.columns.iter().map(|(h, _)| width(h)).collect();
        for row in &self.rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(width(cell));
            }
        }
        let header: Vec<String> = self.columns.iter().map(|(h, _)| (*h).to_owned()).collect();
        for cells in std::iter::once(&header).chain(&self.rows) {
            let mut line = String::new();
            let last = cells.len().saturating_sub(1);
            for (i, cell) in cells.iter().enumerate() {
                if i > 0 {
                    line.push_str("  ");
                }
                let pad = widths[i] - width(cell);
                match self.columns[i].1 {
                    Align::Right => {
                        line.extend(std::iter::repeat_n(' ', pad));
                        line.push_str(cell);
                    }
                    Align::Left => {
                        line.push_str(cell);
                        if i < last {
                            line.extend(std::iter::repeat_n(' ', pad));
                        }
                    }
                }
            }
            writeln!(f, "{}", line.trim_end())?;
        }
        Ok(())
    }
}

/// A byte count for people: `512 B`, `1.5 KiB`, `20.0 MiB`.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// A duration in milliseconds, short: `250ms`, `12.5s`, `4m05s`, `3h07m`, `2d05h`.
pub fn human_ms(ms: u64) -> String {
    let s = ms / 1000;
    match ms {
        0..1_000 => format!("{ms}ms"),
        1_000..60_000 => format!("{:.1}s", ms as f64 / 1000.0),
        60_000..3_600_000 => format!("{}m{:02}s", s / 60, s % 60),
        3_600_000..86_400_000 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{:02}h", s / 86_400, s % 86_400 / 3600),
    }
}

/// How long the oldest ready message has waited, for tables: `-` when none is ready.
fn oldest_text(ready: u64, age_ms: u64) -> String {
    if ready == 0 {
        "-".to_owned()
    } else {
        human_ms(age_ms)
    }
}

/// Lower-case hex digits.
pub fn hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// The name of an exchange kind, as `declare-exchange --kind` takes it.
pub fn kind_name(kind: ExchangeKind) -> &'static str {
    crate::routing::ExchangeKind::from(kind).as_str()
}

/// The name of an overflow behaviour, as `declare-queue --overflow` takes it.
pub fn overflow_name(overflow: Overflow) -> &'static str {
    match overflow {
        Overflow::DropHead => "drop-head",
        Overflow::RejectPublish => "reject-publish",
        Overflow::RejectPublishDlx => "reject-publish-dlx",
    }
}

/// An exchange name for text output: the default exchange has the empty name.
pub fn exchange_name(name: &str) -> &str {
    if name.is_empty() {
        "(default)"
    } else {
        name
    }
}

/// One header value as text: strings as they are, bytes as `0x` and hex, floats always
/// with a point or exponent (`1.0`), void as `null`, timestamps as `@` and seconds since
/// 1970, arrays and tables as JSON.
pub fn header_value_text(value: &HeaderValue) -> String {
    match value {
        HeaderValue::Str(s) => s.clone(),
        HeaderValue::Int(i) => i.to_string(),
        HeaderValue::Bool(b) => b.to_string(),
        HeaderValue::Bytes(b) => format!("0x{}", hex(b)),
        HeaderValue::Float(f) => format!("{f:?}"),
        HeaderValue::Void => "null".to_owned(),
        HeaderValue::Timestamp(t) => format!("@{t}"),
        HeaderValue::Decimal(d) => d.to_string(),
        HeaderValue::Array(_) | HeaderValue::Table(_) => {
            serde_json::to_string(&HeaderValueJson(value)).unwrap_or_default()
        }
    }
}

/// A header table as text: `k=v, k2=v2`.
pub fn headers_text(headers: &Headers) -> String {
    headers
        .iter()
        .map(|(k, v)| format!("{k}={}", header_value_text(v)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Flags as letters: `D` durable, `E` exclusive, `A` auto-delete; `-` for none.
pub fn flags_text(durable: bool, exclusive: bool, auto_delete: bool) -> String {
    let flags: String = [(durable, 'D'), (exclusive, 'E'), (auto_delete, 'A')]
        .iter()
        .filter_map(|&(set, c)| set.then_some(c))
        .collect();
    if flags.is_empty() {
        "-".to_owned()
    } else {
        flags
    }
}

/// `yes` / `no`.
pub fn yes_no(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

// ---- tables -----------------------------------------------------------------------------

/// The `sluice queues` table.
pub fn queues_table(queues: &[QueueSummary]) -> Table {
    use Align::{Left, Right};
    let mut table = Table::new(&[
        ("NAME", Left),
        ("FLAGS", Left),
        ("READY", Right),
        ("UNACKED", Right),
        ("CONSUMERS", Right),
        ("BYTES", Right),
        ("PUBLISH/S", Right),
        ("ACK/S", Right),
        ("OLDEST", Right),
    ]);
    for q in queues {
        table.row(vec![
            q.name.clone(),
            flags_text(q.durable, q.exclusive, q.auto_delete),
            q.ready.to_string(),
            q.unacked.to_string(),
            q.consumers.to_string(),
            human_bytes(q.bytes),
            q.publish_rate.to_string(),
            q.ack_rate.to_string(),
            oldest_text(q.ready, q.oldest_ready_age_ms),
        ]);
    }
    table
}

/// The `sluice exchanges` table.
pub fn exchanges_table(exchanges: &[ExchangeSummary]) -> Table {
    use Align::Left;
    let mut table = Table::new(&[
        ("NAME", Left),
        ("KIND", Left),
        ("FLAGS", Left),
        ("ALTERNATE", Left),
    ]);
    for x in exchanges {
        table.row(vec![
            exchange_name(&x.name).to_owned(),
            kind_name(x.kind).to_owned(),
            flags_text(x.durable, false, x.auto_delete),
            x.alternate_exchange.clone().unwrap_or_default(),
        ]);
    }
    table
}

/// The `sluice bindings` table.
pub fn bindings_table(bindings: &[BindingSummary]) -> Table {
    use Align::Left;
    let mut table = Table::new(&[
        ("EXCHANGE", Left),
        ("QUEUE", Left),
        ("ROUTING KEY", Left),
        ("ARGUMENTS", Left),
    ]);
    for b in bindings {
        table.row(vec![
            exchange_name(&b.exchange).to_owned(),
            b.queue.clone(),
            b.routing_key.clone(),
            headers_text(&b.arguments),
        ]);
    }
    table
}

/// The `sluice consumers` table.
pub fn consumers_table(consumers: &[ConsumerSummary]) -> Table {
    use Align::{Left, Right};
    let mut table = Table::new(&[
        ("QUEUE", Left),
        ("TAG", Left),
        ("CONNECTION", Right),
        ("PREFETCH", Right),
        ("UNACKED", Right),
        ("STATE", Left),
        ("PRIORITY", Right),
        ("CIRCUIT", Left),
    ]);
    for c in consumers {
        table.row(vec![
            c.queue.clone(),
            c.consumer_tag.clone(),
            c.connection_id.to_string(),
            match c.prefetch {
                0 => "unlimited".to_owned(),
                n => n.to_string(),
            },
            c.unacked.to_string(),
            if c.active { "active" } else { "standby" }.to_owned(),
            c.priority.to_string(),
            // "-": no circuit breaking for this consumer.
            c.circuit
                .map_or_else(|| "-".to_owned(), |b| b.state.as_str().to_owned()),
        ]);
    }
    table
}

/// The `sluice connections` table. SINCE is when the handshake completed (UTC).
pub fn connections_table(connections: &[ConnectionSummary]) -> Table {
    use Align::{Left, Right};
    let mut table = Table::new(&[
        ("ID", Right),
        ("USER", Left),
        ("PEER", Left),
        ("CLIENT", Left),
        ("NAME", Left),
        ("SINCE", Left),
        ("IN", Right),
        ("OUT", Right),
        ("UNSETTLED", Right),
        ("CONSUMERS", Right),
    ]);
    for c in connections {
        let client = [c.client_product.as_deref(), c.client_version.as_deref()]
            .into_iter()
            .flatten()
            .collect::<Vec<_>>()
            .join(" ");
        table.row(vec![
            c.connection_id.to_string(),
            c.user.clone(),
            c.peer.clone().unwrap_or_else(|| "-".to_owned()),
            if client.is_empty() {
                "-".to_owned()
            } else {
                client
            },
            c.connection_name.clone().unwrap_or_default(),
            utc_time(c.connected_at_ms),
            human_bytes(c.bytes_in),
            human_bytes(c.bytes_out),
            c.unsettled_publishes.to_string(),
            c.consumers.to_string(),
        ]);
    }
    table
}

/// Milliseconds since the Unix epoch as `YYYY-MM-DD HH:MM:SS` UTC.
pub fn utc_time(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rest) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

/// The `sluice inspect` text: one `key  value` line per field, the queue's arguments after
/// its counters (only those that are set).
pub fn inspect_text(q: &InspectQueueOk) -> String {
    let a = &q.arguments;
    let mut lines: Vec<(&str, String)> = vec![
        ("name", q.name.clone()),
        ("durable", yes_no(q.durable).to_owned()),
        ("exclusive", yes_no(q.exclusive).to_owned()),
        ("auto-delete", yes_no(q.auto_delete).to_owned()),
        ("ready", q.ready.to_string()),
        ("unacked", q.unacked.to_string()),
        ("consumers", q.consumers.to_string()),
        ("bytes", format!("{} ({})", q.bytes, human_bytes(q.bytes))),
        (
            "oldest-ready-age-ms",
            match q.ready {
                0 => "0 (no ready message)".to_owned(),
                _ => format!(
                    "{} ({})",
                    q.oldest_ready_age_ms,
                    human_ms(q.oldest_ready_age_ms)
                ),
            },
        ),
        ("scheduled", q.scheduled.to_string()),
        ("duplicates-dropped", q.duplicates_dropped.to_string()),
    ];
    let optional: [(&str, Option<String>); 16] = [
        ("max-length", a.max_length.map(|v| v.to_string())),
        (
            "max-length-bytes",
            a.max_length_bytes.map(|v| v.to_string()),
        ),
        ("overflow", a.overflow.map(|o| overflow_name(o).to_owned())),
        ("message-ttl-ms", a.message_ttl_ms.map(|v| v.to_string())),
        ("dead-letter-exchange", a.dead_letter_exchange.clone()),
        ("dead-letter-routing-key", a.dead_letter_routing_key.clone()),
        ("ack-timeout-ms", a.ack_timeout_ms.map(|v| v.to_string())),
        ("delivery-limit", a.delivery_limit.map(|v| v.to_string())),
        ("expires-ms", a.expires_ms.map(|v| v.to_string())),
        (
            "max-message-bytes",
            a.max_message_bytes.map(|v| v.to_string()),
        ),
        ("max-priority", a.max_priority.map(|v| v.to_string())),
        ("retry-backoff", a.retry_backoff.map(backoff_text)),
        ("dedup-window-ms", a.dedup_window_ms.map(|v| v.to_string())),
        (
            "dedup-window-count",
            a.dedup_window_count.map(|v| v.to_string()),
        ),
        ("replicas", a.replicas.map(|v| v.to_string())),
        (
            "single-active-consumer",
            a.single_active_consumer.map(|v| (v == 1).to_string()),
        ),
    ];
    lines.extend(optional.into_iter().filter_map(|(k, v)| Some((k, v?))));
    let width = lines.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    lines
        .iter()
        .map(|(k, v)| format!("{k:width$}  {v}\n"))
        .collect()
}

// ---- JSON -------------------------------------------------------------------------------

/// A header value as JSON: strings, integers, booleans and floats as themselves (a float
/// always with a point or exponent), void as `null`, arrays as arrays, tables as objects;
/// bytes as `{"bytes": "<hex>"}`, timestamps as `{"timestamp": <seconds>}`, decimals as
/// `{"decimal": "<digits>"}`, and a table whose only key is one of those names or `table`
/// as `{"table": {...}}`, so that [`header_value_from_json`](crate::topology::header_value_from_json)
/// reads back each value as it was.
pub struct HeaderValueJson<'a>(pub &'a HeaderValue);

/// The one-key objects that are not tables.
const JSON_TAGS: [&str; 4] = ["bytes", "timestamp", "decimal", "table"];

impl Serialize for HeaderValueJson<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            HeaderValue::Str(v) => s.serialize_str(v),
            HeaderValue::Int(v) => s.serialize_i64(*v),
            HeaderValue::Bool(v) => s.serialize_bool(*v),
            HeaderValue::Bytes(v) => Tagged("bytes", hex(v)).serialize(s),
            HeaderValue::Float(v) => s.serialize_f64(*v),
            HeaderValue::Void => s.serialize_unit(),
            HeaderValue::Array(items) => s.collect_seq(items.iter().map(HeaderValueJson)),
            HeaderValue::Table(table) => {
                if let [(key, _)] = table.as_slice() {
                    if JSON_TAGS.contains(&key.as_str()) {
                        return Tagged("table", HeadersJson(table)).serialize(s);
                    }
                }
                HeadersJson(table).serialize(s)
            }
            HeaderValue::Timestamp(v) => Tagged("timestamp", v).serialize(s),
            HeaderValue::Decimal(v) => Tagged("decimal", v.to_string()).serialize(s),
        }
    }
}

/// A one-key object `{tag: value}`.
struct Tagged<'a, T>(&'a str, T);

impl<T: Serialize> Serialize for Tagged<'_, T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(1))?;
        map.serialize_entry(self.0, &self.1)?;
        map.end()
    }
}

/// A header table as a JSON object, in its order.
pub struct HeadersJson<'a>(pub &'a Headers);

impl Serialize for HeadersJson<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in self.0 {
            map.serialize_entry(k, &HeaderValueJson(v))?;
        }
        map.end()
    }
}

/// One queue of `sluice queues --json`.
#[derive(serde::Serialize)]
pub struct QueueJson<'a> {
    name: &'a str,
    durable: bool,
    exclusive: bool,
    auto_delete: bool,
    ready: u64,
    unacked: u64,
    consumers: u32,
    bytes: u64,
    publish_rate: u64,
    ack_rate: u64,
    /// How long the oldest ready message has waited; 0 when none is ready.
    oldest_ready_age_ms: u64,
}

impl<'a> From<&'a QueueSummary> for QueueJson<'a> {
    fn from(q: &'a QueueSummary) -> Self {
        QueueJson {
            name: &q.name,
            durable: q.durable,
            exclusive: q.exclusive,
            auto_delete: q.auto_delete,
            ready: q.ready,
            unacked: q.unacked,
            consumers: q.consumers,
            bytes: q.bytes,
            publish_rate: q.publish_rate,
            ack_rate: q.ack_rate,
            oldest_ready_age_ms: q.oldest_ready_age_ms,
        }
    }
}

/// One exchange of `sluice exchanges --json`.
#[derive(serde::Serialize)]
pub struct ExchangeJson<'a> {
    name: &'a str,
    kind: &'static str,
    durable: bool,
    auto_delete: bool,
    alternate_exchange: Option<&'a str>,
    /// Consistent-hash exchanges that hash a header: its name.
    #[serde(skip_serializing_if = "Option::is_none")]
    hash_header: Option<&'a str>,
}

impl<'a> From<&'a ExchangeSummary> for ExchangeJson<'a> {
    fn from(x: &'a ExchangeSummary) -> Self {
        ExchangeJson {
            name: &x.name,
            kind: kind_name(x.kind),
            durable: x.durable,
            auto_delete: x.auto_delete,
            alternate_exchange: x.alternate_exchange.as_deref(),
            hash_header: x.hash_header.as_deref(),
        }
    }
}

/// One binding of `sluice bindings --json` (and what `bind`/`unbind` print).
#[derive(serde::Serialize)]
pub struct BindingJson<'a> {
    /// Source exchange.
    pub exchange: &'a str,
    /// Destination queue.
    pub queue: &'a str,
    /// Binding key.
    pub routing_key: &'a str,
    /// Binding arguments.
    pub arguments: HeadersJson<'a>,
}

impl<'a> From<&'a BindingSummary> for BindingJson<'a> {
    fn from(b: &'a BindingSummary) -> Self {
        BindingJson {
            exchange: &b.exchange,
            queue: &b.queue,
            routing_key: &b.routing_key,
            arguments: HeadersJson(&b.arguments),
        }
    }
}

/// One consumer of `sluice consumers --json`.
#[derive(serde::Serialize)]
pub struct ConsumerJson<'a> {
    queue: &'a str,
    consumer_tag: &'a str,
    connection_id: u64,
    prefetch: u32,
    unacked: u32,
    /// Receiving; false for a standby of a single-active-consumer queue.
    active: bool,
    priority: i32,
    /// Its circuit; `null` without circuit breaking.
    circuit: Option<CircuitJson>,
}

/// A consumer's circuit in JSON (docs/circuit-breaking.md).
#[derive(serde::Serialize)]
pub struct CircuitJson {
    /// `closed`, `open` or `half-open`.
    state: &'static str,
    /// Failures in the window (closed), or those that opened it (open).
    failures: u32,
    /// When an open circuit becomes half-open (Unix ms); `null` otherwise.
    until_ms: Option<u64>,
}

impl<'a> From<&'a ConsumerSummary> for ConsumerJson<'a> {
    fn from(c: &'a ConsumerSummary) -> Self {
        ConsumerJson {
            queue: &c.queue,
            consumer_tag: &c.consumer_tag,
            connection_id: c.connection_id,
            prefetch: c.prefetch,
            unacked: c.unacked,
            active: c.active,
            priority: c.priority,
            circuit: c.circuit.map(|b| CircuitJson {
                state: b.state.as_str(),
                failures: b.failures,
                until_ms: (b.until_ms > 0).then_some(b.until_ms),
            }),
        }
    }
}

/// One connection of `sluice connections --json` and `GET /api/connections`.
#[derive(serde::Serialize)]
pub struct ConnectionJson<'a> {
    connection_id: u64,
    peer: Option<&'a str>,
    user: &'a str,
    client_product: Option<&'a str>,
    client_version: Option<&'a str>,
    connection_name: Option<&'a str>,
    connected_at_ms: u64,
    bytes_in: u64,
    bytes_out: u64,
    frames_in: u64,
    frames_out: u64,
    unsettled_publishes: u64,
    consumers: u32,
}

impl<'a> From<&'a ConnectionSummary> for ConnectionJson<'a> {
    fn from(c: &'a ConnectionSummary) -> Self {
        ConnectionJson {
            connection_id: c.connection_id,
            peer: c.peer.as_deref(),
            user: &c.user,
            client_product: c.client_product.as_deref(),
            client_version: c.client_version.as_deref(),
            connection_name: c.connection_name.as_deref(),
            connected_at_ms: c.connected_at_ms,
            bytes_in: c.bytes_in,
            bytes_out: c.bytes_out,
            frames_in: c.frames_in,
            frames_out: c.frames_out,
            unsettled_publishes: c.unsettled_publishes,
            consumers: c.consumers,
        }
    }
}

/// `sluice inspect --json`: the counters and every argument (`null` when not set).
#[derive(serde::Serialize)]
pub struct InspectJson<'a> {
    name: &'a str,
    durable: bool,
    exclusive: bool,
    auto_delete: bool,
    ready: u64,
    unacked: u64,
    consumers: u32,
    bytes: u64,
    /// How long the oldest ready message has waited; 0 when none is ready.
    oldest_ready_age_ms: u64,
    /// Messages waiting for their time.
    scheduled: u64,
    /// Publishes confirmed as duplicates without being stored again.
    duplicates_dropped: u64,
    arguments: ArgumentsJson<'a>,
}

#[derive(serde::Serialize)]
struct ArgumentsJson<'a> {
    max_length: Option<u64>,
    max_length_bytes: Option<u64>,
    overflow: Option<&'static str>,
    message_ttl_ms: Option<u64>,
    dead_letter_exchange: Option<&'a str>,
    dead_letter_routing_key: Option<&'a str>,
    ack_timeout_ms: Option<u64>,
    delivery_limit: Option<u32>,
    expires_ms: Option<u64>,
    max_message_bytes: Option<u32>,
    max_priority: Option<u8>,
    retry_backoff: Option<crate::topology::RetryBackoffJson>,
    dedup_window_ms: Option<u64>,
    dedup_window_count: Option<u32>,
    replicas: Option<u8>,
    single_active_consumer: Option<bool>,
}

impl<'a> From<&'a InspectQueueOk> for InspectJson<'a> {
    fn from(q: &'a InspectQueueOk) -> Self {
        let a = &q.arguments;
        InspectJson {
            name: &q.name,
            durable: q.durable,
            exclusive: q.exclusive,
            auto_delete: q.auto_delete,
            ready: q.ready,
            unacked: q.unacked,
            consumers: q.consumers,
            bytes: q.bytes,
            oldest_ready_age_ms: q.oldest_ready_age_ms,
            scheduled: q.scheduled,
            duplicates_dropped: q.duplicates_dropped,
            arguments: ArgumentsJson {
                max_length: a.max_length,
                max_length_bytes: a.max_length_bytes,
                overflow: a.overflow.map(overflow_name),
                message_ttl_ms: a.message_ttl_ms,
                dead_letter_exchange: a.dead_letter_exchange.as_deref(),
                dead_letter_routing_key: a.dead_letter_routing_key.as_deref(),
                ack_timeout_ms: a.ack_timeout_ms,
                delivery_limit: a.delivery_limit,
                expires_ms: a.expires_ms,
                max_message_bytes: a.max_message_bytes,
                max_priority: a.max_priority,
                retry_backoff: a.retry_backoff.map(Into::into),
                dedup_window_ms: a.dedup_window_ms,
                dedup_window_count: a.dedup_window_count,
                replicas: a.replicas,
                single_active_consumer: a.single_active_consumer.map(|v| v == 1),
            },
        }
    }
}

/// A delivered message, for `get --json` and `consume --json` (one line each). The body is
/// `body` when it is UTF-8 text, else `null` with `body_hex`.
#[derive(serde::Serialize)]
pub struct MessageJson<'a> {
    exchange: &'a str,
    routing_key: &'a str,
    redelivered: bool,
    delivery_count: u32,
    message_seq: u64,
    /// When the queue stored it (Unix ms, the broker's clock).
    enqueued_at_ms: u64,
    persistent: bool,
    content_type: Option<&'a str>,
    content_encoding: Option<&'a str>,
    message_id: Option<&'a str>,
    correlation_id: Option<&'a str>,
    reply_to: Option<&'a str>,
    expiration_ms: Option<u64>,
    timestamp_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    priority: Option<u8>,
    headers: HeadersJson<'a>,
    body: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    body_hex: Option<String>,
}

impl<'a> MessageJson<'a> {
    /// The JSON view of `message`; `headers` are its decoded headers.
    pub fn new(message: &'a Message, headers: &'a Headers) -> Self {
        let meta = message.meta();
        let body = std::str::from_utf8(&message.body).ok();
        MessageJson {
            exchange: meta.exchange,
            routing_key: meta.routing_key,
            redelivered: message.redelivered,
            delivery_count: message.delivery_count,
            message_seq: message.message_seq,
            enqueued_at_ms: message.enqueued_at_ms,
            persistent: meta.persistent,
            content_type: meta.content_type,
            content_encoding: meta.content_encoding,
            message_id: meta.message_id,
            correlation_id: meta.correlation_id,
            reply_to: meta.reply_to,
            expiration_ms: meta.expiration_ms,
            timestamp_ms: meta.timestamp_ms,
            priority: meta.priority,
            headers: HeadersJson(headers),
            body,
            body_hex: body.is_none().then(|| hex(&message.body)),
        }
    }
}

/// A retry backoff as `sluice declare-queue --retry-backoff` takes it: `initial,multiplier,max`
/// with the multiplier as a factor (`1000ms,2,60s` reads back as `1000ms,2,60000ms`).
pub fn backoff_text(b: RetryBackoff) -> String {
    let factor = f64::from(b.multiplier_percent) / 100.0;
    format!("{}ms,{factor},{}ms", b.initial_ms, b.max_ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_and_do_not_end_lines_in_spaces() {
        let mut table = Table::new(&[
            ("NAME", Align::Left),
            ("READY", Align::Right),
            ("NOTE", Align::Left),
        ]);
        table.row(vec!["tasks".into(), "3".into(), String::new()]);
        table.row(vec!["q".into(), "12345".into(), "x".into()]);
        assert_eq!(
            table.to_string(),
            "NAME   READY  NOTE\n\
             tasks      3\n\
             q      12345  x\n"
        );
    }

    #[test]
    fn times_print_as_utc_dates() {
        assert_eq!(utc_time(0), "1970-01-01 00:00:00");
        assert_eq!(utc_time(951_782_400_000), "2000-02-29 00:00:00");
        assert_eq!(utc_time(1_798_761_599_999), "2026-12-31 23:59:59");
    }

    #[test]
    fn sizes_and_flags_read_well() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(20 * 1024 * 1024), "20.0 MiB");
        assert_eq!(human_bytes(u64::MAX), "16.0 EiB");
        assert_eq!(flags_text(true, false, true), "DA");
        assert_eq!(flags_text(false, false, false), "-");
    }

    #[test]
    fn ages_read_well() {
        assert_eq!(human_ms(0), "0ms");
        assert_eq!(human_ms(999), "999ms");
        assert_eq!(human_ms(12_500), "12.5s");
        assert_eq!(human_ms(245_000), "4m05s");
        assert_eq!(human_ms(3 * 3_600_000 + 7 * 60_000), "3h07m");
        assert_eq!(human_ms(2 * 86_400_000 + 5 * 3_600_000), "2d05h");
        assert_eq!(oldest_text(0, 0), "-");
        assert_eq!(oldest_text(4, 1500), "1.5s");
    }

    #[test]
    fn header_values_keep_their_type_in_json() {
        let headers: Headers = vec![
            ("s".into(), HeaderValue::from("x\"y")),
            ("i".into(), HeaderValue::Int(-4)),
            ("b".into(), HeaderValue::Bool(true)),
            (
                "raw".into(),
                HeaderValue::Bytes(bytes::Bytes::from_static(&[0, 255])),
            ),
        ];
        assert_eq!(
            serde_json::to_string(&HeadersJson(&headers)).unwrap(),
            r#"{"s":"x\"y","i":-4,"b":true,"raw":{"bytes":"00ff"}}"#
        );
        assert_eq!(headers_text(&headers), "s=x\"y, i=-4, b=true, raw=0x00ff");
        let more: Headers = vec![
            ("f".into(), HeaderValue::Float(2.0)),
            ("v".into(), HeaderValue::Void),
            ("ts".into(), HeaderValue::Timestamp(17)),
            (
                "d".into(),
                HeaderValue::Decimal(sluice_client::Decimal { scale: 1, value: 5 }),
            ),
            (
                "a".into(),
                HeaderValue::Array(vec![HeaderValue::Int(1), HeaderValue::from("x")]),
            ),
        ];
        assert_eq!(
            headers_text(&more),
            r#"f=2.0, v=null, ts=@17, d=0.5, a=[1,"x"]"#
        );
    }
}
