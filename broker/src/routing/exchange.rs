//! Exchanges and bindings as declared: what the routing table holds, the broker persists
//! (`crate::definitions`) and the listings show.

use std::fmt;
use std::str::FromStr;

use sluice_client::wire::{self, Headers};

use super::RoutingError;

/// How an exchange picks the queues for a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ExchangeKind {
    /// The binding key equals the routing key.
    Direct,
    /// Every bound queue.
    Fanout,
    /// The binding key is a pattern of dot-separated words with `*` and `#`.
    Topic,
    /// The binding arguments are compared with the message headers.
    Headers,
    /// Exactly one bound queue, in proportion to the bindings' weights.
    Weighted,
    /// Exactly one bound queue, by a hash of the routing key or of a header.
    ConsistentHash,
}

impl ExchangeKind {
    /// The protocol name: `direct`, `fanout`, `topic`, `headers`, `weighted` or
    /// `consistent-hash`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Direct => "direct",
            Self::Fanout => "fanout",
            Self::Topic => "topic",
            Self::Headers => "headers",
            Self::Weighted => "weighted",
            Self::ConsistentHash => "consistent-hash",
        }
    }

    /// Whether each message goes to exactly one bound queue, chosen by the bindings'
    /// weights. A queue then has at most one binding to the exchange, identified by the
    /// queue alone: binding it again changes its weight in place.
    pub fn picks_one(self) -> bool {
        matches!(self, Self::Weighted | Self::ConsistentHash)
    }
}

/// The wire's exchange kind (protocol.md §7.1) is the same set of kinds.
impl From<wire::ExchangeKind> for ExchangeKind {
    fn from(k: wire::ExchangeKind) -> Self {
        match k {
            wire::ExchangeKind::Direct => ExchangeKind::Direct,
            wire::ExchangeKind::Fanout => ExchangeKind::Fanout,
            wire::ExchangeKind::Topic => ExchangeKind::Topic,
            wire::ExchangeKind::Headers => ExchangeKind::Headers,
            wire::ExchangeKind::Weighted => ExchangeKind::Weighted,
            wire::ExchangeKind::ConsistentHash => ExchangeKind::ConsistentHash,
        }
    }
}

impl From<ExchangeKind> for wire::ExchangeKind {
    fn from(k: ExchangeKind) -> Self {
        match k {
            ExchangeKind::Direct => wire::ExchangeKind::Direct,
            ExchangeKind::Fanout => wire::ExchangeKind::Fanout,
            ExchangeKind::Topic => wire::ExchangeKind::Topic,
            ExchangeKind::Headers => wire::ExchangeKind::Headers,
            ExchangeKind::Weighted => wire::ExchangeKind::Weighted,
            ExchangeKind::ConsistentHash => wire::ExchangeKind::ConsistentHash,
        }
    }
}

impl fmt::Display for ExchangeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ExchangeKind {
    type Err = RoutingError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "direct" => Ok(Self::Direct),
            "fanout" => Ok(Self::Fanout),
            "topic" => Ok(Self::Topic),
            "headers" => Ok(Self::Headers),
            "weighted" => Ok(Self::Weighted),
            "consistent-hash" => Ok(Self::ConsistentHash),
            other => Err(RoutingError::InvalidKind(other.to_owned())),
        }
    }
}

/// An exchange as declared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exchange {
    /// Its name; `""` is the default exchange.
    pub name: String,
    /// How it routes.
    pub kind: ExchangeKind,
    /// Whether it survives a broker restart.
    pub durable: bool,
    /// Whether it is deleted when its last binding is removed.
    pub auto_delete: bool,
    /// Where messages go that no binding matches.
    pub alternate_exchange: Option<String>,
    /// Consistent-hash exchanges only: the message header hashed instead of the routing key.
    pub hash_header: Option<String>,
}

impl Exchange {
    /// A transient, non-auto-delete exchange without an alternate exchange.
    pub fn new(name: impl Into<String>, kind: ExchangeKind) -> Self {
        Self {
            name: name.into(),
            kind,
            durable: false,
            auto_delete: false,
            alternate_exchange: None,
            hash_header: None,
        }
    }
}

/// A binding from an exchange to a queue. Two bindings are the same when exchange, queue,
/// routing key and arguments are equal; the order of the arguments does not matter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binding {
    /// The queue messages go to.
    pub queue: String,
    /// The exchange messages come from.
    pub exchange: String,
    /// The binding key (a pattern for topic exchanges, ignored by fanout, headers, weighted
    /// and consistent-hash).
    pub routing_key: String,
    /// Binding arguments (`x-match` and the headers to compare for headers exchanges,
    /// `x-weight` for weighted and consistent-hash ones).
    pub arguments: Headers,
}

impl Binding {
    /// A binding without arguments.
    pub fn new(
        exchange: impl Into<String>,
        queue: impl Into<String>,
        routing_key: impl Into<String>,
    ) -> Self {
        Self {
            queue: queue.into(),
            exchange: exchange.into(),
            routing_key: routing_key.into(),
            arguments: Headers::new(),
        }
    }
}

/// The default exchange and the `amq.*` ones exist from the start (in every vhost) and
/// cannot be deleted.
pub(super) fn is_builtin(name: &str) -> bool {
    let local = super::namespace::split(name).local;
    local.is_empty() || local.starts_with("amq.")
}

/// Whether `name` is a vhost's default exchange (`""` in the vhost's own terms).
pub(super) fn is_default(name: &str) -> bool {
    super::namespace::split(name).local.is_empty()
}
