//! The topology as JSON, for operators to export and import (docs/http-api.md,
//! "Definitions"): `GET` and `POST /api/definitions`, `sluice definitions export|import`.
//!
//! One format whichever door it goes through: the HTTP API builds it from the broker's state
//! and imports with the broker's own declares; the CLI builds it from the wire listings and
//! imports with the client's declares. Both go through [`Definitions::from_parts`] and
//! [`import`], so they keep and skip the same things.
//!
//! What is exported: durable exchanges other than the built-in ones (`""`, `amq.*`), durable
//! queues that are neither exclusive nor server-named (`sluice.*`), with their arguments, and
//! the bindings between those (a binding from a built-in `amq.*` exchange included). Messages
//! are not part of it.
//!
//! An import declares exchanges, then queues, then bindings, each on its own: a declare that
//! matches what exists changes nothing (so importing twice is a no-op), and one that fails (a
//! queue that exists with other arguments: `PRECONDITION_FAILED`) is reported in the
//! [`ImportReport`] while the others go on.

use std::collections::HashSet;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use sluice_client::wire::MAX_HEADER_DEPTH;
use sluice_client::wire::{
    BindingSummary, ErrorCode, ExchangeKind, ExchangeSummary, HeaderValue, Headers, Overflow,
    QueueArguments, RetryBackoff,
};

use crate::broker::RESERVED_PREFIX;
use crate::cli::format::HeadersJson;
use crate::error::RequestError;

/// The version of the format this broker writes and reads.
pub const FORMAT_VERSION: u32 = 1;

/// A whole topology.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Definitions {
    /// [`FORMAT_VERSION`].
    pub version: u32,
    /// Exchanges, by name.
    #[serde(default)]
    pub exchanges: Vec<ExchangeDefinition>,
    /// Queues, by name.
    #[serde(default)]
    pub queues: Vec<QueueDefinition>,
    /// Bindings, by exchange, queue, routing key and arguments.
    #[serde(default)]
    pub bindings: Vec<BindingDefinition>,
}

/// A durable exchange.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExchangeDefinition {
    /// Its vhost; absent for `/` in an export of the HTTP API (and in any export of the CLI,
    /// which lists its connection's vhost); on import, absent means the vhost the import
    /// works in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vhost: Option<String>,
    /// Its name.
    pub name: String,
    /// How it routes.
    pub kind: KindName,
    /// Deleted when its last binding goes.
    #[serde(default)]
    pub auto_delete: bool,
    /// Where messages that match no binding go.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alternate_exchange: Option<String>,
    /// Consistent-hash exchanges: the header hashed instead of the routing key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash_header: Option<String>,
}

/// An exchange kind, as `declare-exchange --kind`, the HTTP API and definitions name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum KindName {
    /// Routing key equals binding key.
    Direct,
    /// Every bound queue.
    Fanout,
    /// Dot-separated words; `*` matches one word, `#` zero or more.
    Topic,
    /// Message headers against binding headers, under `x-match` (all or any).
    Headers,
    /// Exactly one bound queue per message, in proportion to the bindings' weights.
    Weighted,
    /// Exactly one bound queue per message, by a hash of the routing key (or a header).
    ConsistentHash,
}

impl From<ExchangeKind> for KindName {
    fn from(k: ExchangeKind) -> Self {
        match k {
            ExchangeKind::Direct => KindName::Direct,
            ExchangeKind::Fanout => KindName::Fanout,
            ExchangeKind::Topic => KindName::Topic,
            ExchangeKind::Headers => KindName::Headers,
            ExchangeKind::Weighted => KindName::Weighted,
            ExchangeKind::ConsistentHash => KindName::ConsistentHash,
        }
    }
}

impl From<KindName> for ExchangeKind {
    fn from(k: KindName) -> Self {
        match k {
            KindName::Direct => ExchangeKind::Direct,
            KindName::Fanout => ExchangeKind::Fanout,
            KindName::Topic => ExchangeKind::Topic,
            KindName::Headers => ExchangeKind::Headers,
            KindName::Weighted => ExchangeKind::Weighted,
            KindName::ConsistentHash => ExchangeKind::ConsistentHash,
        }
    }
}

/// A durable queue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueDefinition {
    /// Its vhost; absent for `/` in an export of the HTTP API (and in any export of the CLI,
    /// which lists its connection's vhost); on import, absent means the vhost the import
    /// works in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vhost: Option<String>,
    /// Its name.
    pub name: String,
    /// Deleted when its last consumer goes.
    #[serde(default)]
    pub auto_delete: bool,
    /// Its arguments; those not set are left out.
    #[serde(default)]
    pub arguments: ArgumentsDefinition,
}

/// Queue arguments, named as in `sluice inspect --json`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArgumentsDefinition {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    max_length: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    max_length_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    overflow: Option<OverflowName>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    message_ttl_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    dead_letter_exchange: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    dead_letter_routing_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ack_timeout_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    delivery_limit: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    expires_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    max_message_bytes: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    max_priority: Option<u8>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    retry_backoff: Option<RetryBackoffJson>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    dedup_window_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    dedup_window_count: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    replicas: Option<u8>,
    /// `true` when on (absent when off, as in `PUT /api/queues/NAME`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    single_active_consumer: Option<bool>,
}

/// The `retry_backoff` queue argument in JSON (the topology, the HTTP API, the CLI).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryBackoffJson {
    /// The wait after the first delivery.
    pub initial_ms: u64,
    /// Growth per further delivery, in percent (200 doubles).
    pub multiplier_percent: u32,
    /// The longest wait.
    pub max_ms: u64,
}

impl From<RetryBackoff> for RetryBackoffJson {
    fn from(b: RetryBackoff) -> Self {
        RetryBackoffJson {
            initial_ms: b.initial_ms,
            multiplier_percent: b.multiplier_percent,
            max_ms: b.max_ms,
        }
    }
}

impl From<RetryBackoffJson> for RetryBackoff {
    fn from(b: RetryBackoffJson) -> Self {
        RetryBackoff {
            initial_ms: b.initial_ms,
            multiplier_percent: b.multiplier_percent,
            max_ms: b.max_ms,
        }
    }
}

/// What a queue does at its length limit, as `declare-queue --overflow` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
enum OverflowName {
    DropHead,
    RejectPublish,
    RejectPublishDlx,
}

impl From<&QueueArguments> for ArgumentsDefinition {
    fn from(a: &QueueArguments) -> Self {
        ArgumentsDefinition {
            max_length: a.max_length,
            max_length_bytes: a.max_length_bytes,
            overflow: a.overflow.map(|o| match o {
                Overflow::DropHead => OverflowName::DropHead,
                Overflow::RejectPublish => OverflowName::RejectPublish,
                Overflow::RejectPublishDlx => OverflowName::RejectPublishDlx,
            }),
            message_ttl_ms: a.message_ttl_ms,
            dead_letter_exchange: a.dead_letter_exchange.clone(),
            dead_letter_routing_key: a.dead_letter_routing_key.clone(),
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
        }
    }
}

impl From<&ArgumentsDefinition> for QueueArguments {
    fn from(a: &ArgumentsDefinition) -> Self {
        QueueArguments {
            max_length: a.max_length,
            max_length_bytes: a.max_length_bytes,
            overflow: a.overflow.map(|o| match o {
                OverflowName::DropHead => Overflow::DropHead,
                OverflowName::RejectPublish => Overflow::RejectPublish,
                OverflowName::RejectPublishDlx => Overflow::RejectPublishDlx,
            }),
            message_ttl_ms: a.message_ttl_ms,
            dead_letter_exchange: a.dead_letter_exchange.clone(),
            dead_letter_routing_key: a.dead_letter_routing_key.clone(),
            ack_timeout_ms: a.ack_timeout_ms,
            delivery_limit: a.delivery_limit,
            expires_ms: a.expires_ms,
            max_message_bytes: a.max_message_bytes,
            max_priority: a.max_priority,
            retry_backoff: a.retry_backoff.map(Into::into),
            dedup_window_ms: a.dedup_window_ms,
            dedup_window_count: a.dedup_window_count,
            replicas: a.replicas,
            single_active_consumer: a.single_active_consumer.and_then(|on| on.then_some(1)),
        }
    }
}

/// A binding, in the shape `sluice bindings --json` prints it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BindingDefinition {
    /// Its vhost; absent for `/` in an export of the HTTP API (and in any export of the CLI,
    /// which lists its connection's vhost); on import, absent means the vhost the import
    /// works in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vhost: Option<String>,
    /// Source exchange.
    pub exchange: String,
    /// Destination queue.
    pub queue: String,
    /// Binding key.
    #[serde(default)]
    pub routing_key: String,
    /// Arguments: strings, integers and booleans as themselves, bytes as
    /// `{"bytes": "<hex>"}`.
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub arguments: serde_json::Map<String, serde_json::Value>,
}

impl BindingDefinition {
    /// The binding's arguments as a header table.
    pub fn header_arguments(&self) -> Result<Headers, RequestError> {
        self.arguments
            .iter()
            .map(|(k, v)| {
                header_value_from_json(k, v)
                    .map(|v| (k.clone(), v))
                    .map_err(|e| RequestError::invalid(format!("binding argument {e}")))
            })
            .collect()
    }
}

/// A header value from JSON, the inverse of [`HeadersJson`]; the error names `key` and what
/// was expected.
///
/// Strings, booleans and integers are themselves, a number with a fraction or exponent is a
/// float, `null` is void, an array an array and an object a table, except the one-key
/// objects `{"bytes": "<hex>"}`, `{"timestamp": <seconds>}`, `{"decimal": "<digits>"}` and
/// `{"table": {...}}` (a table whose only key is one of those four names).
pub fn header_value_from_json(key: &str, v: &serde_json::Value) -> Result<HeaderValue, String> {
    json_value(v, 1).map_err(|why| format!("'{key}': {why}"))
}

/// `depth`: the value's depth, 1 for a value of the header table (protocol.md §2.3).
fn json_value(v: &serde_json::Value, depth: usize) -> Result<HeaderValue, String> {
    use serde_json::Value;
    let container = |depth: usize| {
        if depth > MAX_HEADER_DEPTH {
            Err(format!(
                "arrays and tables nest at most {MAX_HEADER_DEPTH} deep"
            ))
        } else {
            Ok(())
        }
    };
    match v {
        Value::String(s) => Ok(HeaderValue::Str(s.clone())),
        Value::Bool(b) => Ok(HeaderValue::Bool(*b)),
        Value::Null => Ok(HeaderValue::Void),
        Value::Number(n) if n.is_f64() => n
            .as_f64()
            .filter(|f| f.is_finite())
            .map(HeaderValue::Float)
            .ok_or_else(|| format!("{n} is not a finite float")),
        Value::Number(n) => n
            .as_i64()
            .map(HeaderValue::Int)
            .ok_or_else(|| format!("{n} does not fit a 64-bit signed integer")),
        Value::Array(items) => {
            container(depth)?;
            items
                .iter()
                .map(|item| json_value(item, depth + 1))
                .collect::<Result<_, _>>()
                .map(HeaderValue::Array)
        }
        Value::Object(map) => {
            if let (1, Some((tag, inner))) = (map.len(), map.iter().next()) {
                if let Some(tagged) = json_tagged(tag, inner, depth) {
                    return tagged;
                }
            }
            container(depth)?;
            json_table(map, depth)
        }
    }
}

/// The value of a one-key object whose key is a tag, or `None` for a plain table.
fn json_tagged(
    tag: &str,
    inner: &serde_json::Value,
    depth: usize,
) -> Option<Result<HeaderValue, String>> {
    use serde_json::Value;
    Some(match (tag, inner) {
        ("bytes", Value::String(hex)) => parse_hex(hex)
            .map(HeaderValue::Bytes)
            .ok_or_else(|| format!("'{hex}' is not an even number of hex digits")),
        ("timestamp", Value::Number(n)) => n
            .as_u64()
            .map(HeaderValue::Timestamp)
            .ok_or_else(|| format!("timestamp {n} is not whole seconds since 1970 (u64)")),
        ("decimal", Value::String(d)) => d
            .parse()
            .map(HeaderValue::Decimal)
            .map_err(|e| e.to_string()),
        ("table", Value::Object(map)) => {
            if depth > MAX_HEADER_DEPTH {
                return Some(Err(format!(
                    "arrays and tables nest at most {MAX_HEADER_DEPTH} deep"
                )));
            }
            json_table(map, depth)
        }
        ("bytes" | "timestamp" | "decimal" | "table", _) => Err(format!(
            "expected {{\"bytes\": \"<hex>\"}}, {{\"timestamp\": <seconds>}}, \
             {{\"decimal\": \"<digits>\"}} or {{\"table\": {{...}}}}, not {{\"{tag}\": {inner}}}"
        )),
        _ => return None,
    })
}

fn json_table(
    map: &serde_json::Map<String, serde_json::Value>,
    depth: usize,
) -> Result<HeaderValue, String> {
    map.iter()
        .map(|(k, v)| json_value(v, depth + 1).map(|v| (k.clone(), v)))
        .collect::<Result<_, _>>()
        .map(HeaderValue::Table)
}

fn parse_hex(hex: &str) -> Option<Bytes> {
    if hex.len() % 2 != 0 {
        return None;
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect::<Option<Vec<u8>>>()
        .map(Bytes::from)
}

/// What an export needs to know of a queue, from the broker or from `InspectQueue`.
#[derive(Debug, Clone, Copy)]
pub struct QueueFacts<'a> {
    /// Its name.
    pub name: &'a str,
    /// Survives restarts.
    pub durable: bool,
    /// Belongs to one connection.
    pub exclusive: bool,
    /// Deleted when its last consumer goes.
    pub auto_delete: bool,
    /// Its arguments.
    pub arguments: &'a QueueArguments,
}

/// Whether an exchange is one every broker has (the default one and `amq.*`).
fn is_builtin_exchange(name: &str) -> bool {
    name.is_empty() || name.starts_with("amq.")
}

/// Whether a queue of this name and kind belongs in an export.
pub fn exports_queue(name: &str, durable: bool, exclusive: bool) -> bool {
    durable && !exclusive && !name.starts_with(RESERVED_PREFIX)
}

impl Definitions {
    /// The exportable part of a topology, from what the listings show (`queues` need only
    /// be those [`exports_queue`] keeps, but may hold more).
    pub fn from_parts<'a>(
        queues: impl IntoIterator<Item = QueueFacts<'a>>,
        exchanges: &[ExchangeSummary],
        bindings: &[BindingSummary],
    ) -> Self {
        let mut queues: Vec<QueueDefinition> = queues
            .into_iter()
            .filter(|q| exports_queue(q.name, q.durable, q.exclusive))
            .map(|q| QueueDefinition {
                vhost: None,
                name: q.name.to_owned(),
                auto_delete: q.auto_delete,
                arguments: ArgumentsDefinition::from(q.arguments),
            })
            .collect();
        queues.sort_by(|a, b| a.name.cmp(&b.name));
        let mut exchanges: Vec<ExchangeDefinition> = exchanges
            .iter()
            .filter(|x| x.durable && !is_builtin_exchange(&x.name))
            .map(|x| ExchangeDefinition {
                vhost: None,
                name: x.name.clone(),
                kind: x.kind.into(),
                auto_delete: x.auto_delete,
                alternate_exchange: x.alternate_exchange.clone(),
                hash_header: x.hash_header.clone(),
            })
            .collect();
        exchanges.sort_by(|a, b| a.name.cmp(&b.name));
        let queue_names: HashSet<&str> = queues.iter().map(|q| q.name.as_str()).collect();
        let exchange_names: HashSet<&str> = exchanges.iter().map(|x| x.name.as_str()).collect();
        let mut bindings: Vec<&BindingSummary> = bindings
            .iter()
            .filter(|b| {
                queue_names.contains(b.queue.as_str())
                    && (exchange_names.contains(b.exchange.as_str())
                        || (is_builtin_exchange(&b.exchange) && !b.exchange.is_empty()))
            })
            .collect();
        bindings.sort_by(|a, b| a.listing_cmp(b));
        let bindings = bindings
            .into_iter()
            .map(|b| BindingDefinition {
                vhost: None,
                exchange: b.exchange.clone(),
                queue: b.queue.clone(),
                routing_key: b.routing_key.clone(),
                arguments: match serde_json::to_value(HeadersJson(&b.arguments)) {
                    Ok(serde_json::Value::Object(map)) => map,
                    // HeadersJson always serializes to an object.
                    _ => serde_json::Map::new(),
                },
            })
            .collect();
        Definitions {
            version: FORMAT_VERSION,
            exchanges,
            queues,
            bindings,
        }
    }
}

/// Where an import declares things: the broker itself (HTTP) or a client connection (CLI).
/// Each declare creates the item, or checks that it exists as given.
pub(crate) trait ImportTarget {
    /// Declares a durable exchange.
    async fn declare_exchange(&self, x: &ExchangeDefinition) -> Result<(), RequestError>;
    /// Declares a durable queue.
    async fn declare_queue(&self, q: &QueueDefinition) -> Result<(), RequestError>;
    /// Binds.
    async fn bind(&self, b: &BindingDefinition) -> Result<(), RequestError>;
}

/// What an import did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImportReport {
    /// Exchanges that now exist as given (created, or already so).
    pub exchanges: usize,
    /// Queues that now exist as given.
    pub queues: usize,
    /// Bindings that now exist.
    pub bindings: usize,
    /// The items that could not be imported, in the order they were tried.
    pub errors: Vec<ImportFailure>,
}

/// One item an import could not declare.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImportFailure {
    /// `exchange`, `queue` or `binding`.
    pub item: String,
    /// The exchange's or queue's name; for a binding `exchange -> queue (routing key)`.
    pub name: String,
    /// The error code's name, e.g. `PRECONDITION_FAILED`.
    pub error: String,
    /// What went wrong.
    pub message: String,
}

impl ImportFailure {
    fn new(item: &str, name: String, e: RequestError) -> Self {
        ImportFailure {
            item: item.to_owned(),
            name,
            error: e.code.name().to_owned(),
            message: e.message,
        }
    }
}

/// Imports `definitions` into `target`: exchanges, then queues, then bindings, each on its
/// own; failures are reported and the import goes on. A definition of another format version
/// is refused whole (`INVALID_ARGUMENT`).
pub(crate) async fn import(
    target: &impl ImportTarget,
    definitions: &Definitions,
) -> Result<ImportReport, RequestError> {
    if definitions.version != FORMAT_VERSION {
        return Err(RequestError::invalid(format!(
            "definitions of format version {} cannot be read; this broker reads version {FORMAT_VERSION}",
            definitions.version
        )));
    }
    let mut report = ImportReport::default();
    for x in &definitions.exchanges {
        match target.declare_exchange(x).await {
            Ok(()) => report.exchanges += 1,
            Err(e) => report
                .errors
                .push(ImportFailure::new("exchange", x.name.clone(), e)),
        }
    }
    for q in &definitions.queues {
        match target.declare_queue(q).await {
            Ok(()) => report.queues += 1,
            Err(e) => report
                .errors
                .push(ImportFailure::new("queue", q.name.clone(), e)),
        }
    }
    for b in &definitions.bindings {
        match target.bind(b).await {
            Ok(()) => report.bindings += 1,
            Err(e) => {
                let name = format!("{} -> {} ({})", b.exchange, b.queue, b.routing_key);
                report.errors.push(ImportFailure::new("binding", name, e));
            }
        }
    }
    Ok(report)
}

/// A client error as the error an import reports.
pub(crate) fn client_error(e: sluice_client::Error) -> RequestError {
    let code = e.code().unwrap_or(ErrorCode::InternalError);
    let message = match e {
        sluice_client::Error::Server { message, .. } => message,
        other => other.to_string(),
    };
    RequestError::new(code, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_export_keeps_durable_user_made_things_only() {
        let args = QueueArguments {
            max_length: Some(5),
            overflow: Some(Overflow::RejectPublish),
            ..QueueArguments::default()
        };
        let none = QueueArguments::default();
        let q = |name, durable, exclusive| QueueFacts {
            name,
            durable,
            exclusive,
            auto_delete: false,
            arguments: if name == "tasks" { &args } else { &none },
        };
        let x = |name: &str, durable| ExchangeSummary {
            name: name.into(),
            kind: ExchangeKind::Topic,
            durable,
            auto_delete: false,
            alternate_exchange: None,
            hash_header: None,
        };
        let b = |exchange: &str, queue: &str| BindingSummary {
            exchange: exchange.into(),
            queue: queue.into(),
            routing_key: "k".into(),
            arguments: vec![("n".into(), HeaderValue::Int(1))],
        };
        let defs = Definitions::from_parts(
            [
                q("tasks", true, false),
                q("scratch", false, false),
                q("mine", true, true),
                q("sluice.gen-1-1", true, false),
            ],
            &[
                x("", true),
                x("amq.topic", true),
                x("orders", true),
                x("tmp", false),
            ],
            &[
                b("orders", "tasks"),
                b("amq.topic", "tasks"),
                b("tmp", "tasks"),
                b("orders", "scratch"),
            ],
        );
        let json = serde_json::to_value(&defs).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "version": 1,
                "exchanges": [{"name": "orders", "kind": "topic", "auto_delete": false}],
                "queues": [{"name": "tasks", "auto_delete": false,
                            "arguments": {"max_length": 5, "overflow": "reject-publish"}}],
                "bindings": [
                    {"exchange": "amq.topic", "queue": "tasks", "routing_key": "k",
                     "arguments": {"n": 1}},
                    {"exchange": "orders", "queue": "tasks", "routing_key": "k",
                     "arguments": {"n": 1}},
                ],
            })
        );
        let back: Definitions = serde_json::from_value(json).unwrap();
        assert_eq!(back, defs);
        assert_eq!(
            QueueArguments::from(&back.queues[0].arguments),
            args,
            "arguments survive the round trip"
        );
        assert_eq!(
            back.bindings[0].header_arguments().unwrap(),
            vec![("n".to_owned(), HeaderValue::Int(1))]
        );
    }

    #[test]
    fn unknown_fields_are_refused_rather_than_dropped() {
        let typo = r#"{"version": 1, "queues": [{"name": "q", "arguments": {"max_lenght": 1}}]}"#;
        assert!(serde_json::from_str::<Definitions>(typo).is_err());
    }

    #[test]
    fn every_header_type_reads_back_what_listings_print() {
        let headers: Headers = vec![
            ("s".into(), "x".into()),
            ("i".into(), HeaderValue::Int(-4)),
            ("f".into(), HeaderValue::Float(1.0)),
            ("nz".into(), HeaderValue::Float(-0.0)),
            ("v".into(), HeaderValue::Void),
            ("ts".into(), HeaderValue::Timestamp(1_700_000_000)),
            (
                "d".into(),
                HeaderValue::Decimal(sluice_client::Decimal {
                    scale: 2,
                    value: 1230,
                }),
            ),
            (
                "a".into(),
                HeaderValue::Array(vec![HeaderValue::Int(1), HeaderValue::Array(vec![])]),
            ),
            (
                "t".into(),
                HeaderValue::Table(vec![("k".into(), HeaderValue::Bool(true))]),
            ),
            // A table that would read as a tag is wrapped in {"table": ...}.
            (
                "tb".into(),
                HeaderValue::Table(vec![("bytes".into(), "00".into())]),
            ),
        ];
        let text = serde_json::to_string(&HeadersJson(&headers)).unwrap();
        assert_eq!(
            text,
            r#"{"s":"x","i":-4,"f":1.0,"nz":-0.0,"v":null,"ts":{"timestamp":1700000000},"d":{"decimal":"12.30"},"a":[1,[]],"t":{"k":true},"tb":{"table":{"bytes":"00"}}}"#
        );
        let json: serde_json::Value = serde_json::from_str(&text).unwrap();
        for (key, value) in &headers {
            assert_eq!(
                header_value_from_json(key, &json[key]).as_ref(),
                Ok(value),
                "{key}"
            );
        }
        // Nesting is limited as on the wire.
        let mut deep = serde_json::json!(1);
        for _ in 0..MAX_HEADER_DEPTH {
            deep = serde_json::json!([deep]);
        }
        assert!(header_value_from_json("k", &deep).is_ok());
        let too_deep = serde_json::json!([deep]);
        assert!(header_value_from_json("k", &too_deep)
            .unwrap_err()
            .contains("at most 16 deep"));
    }

    #[test]
    fn header_values_read_back_what_listings_print() {
        let v = |s: &str| serde_json::from_str::<serde_json::Value>(s).unwrap();
        assert_eq!(
            header_value_from_json("k", &v(r#"{"bytes":"00ff"}"#)),
            Ok(HeaderValue::Bytes(Bytes::from_static(&[0, 255])))
        );
        for bad in [
            "18446744073709551615",
            r#"{"bytes":"0"}"#,
            r#"{"bytes":"zz"}"#,
            r#"{"bytes":1}"#,
            r#"{"timestamp":-1}"#,
            r#"{"decimal":"-1.5"}"#,
            r#"{"table":1}"#,
        ] {
            assert!(header_value_from_json("k", &v(bad)).is_err(), "{bad}");
        }
    }
}
