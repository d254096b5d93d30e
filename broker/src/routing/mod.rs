//! Exchanges, bindings and routing with the AMQP 0-9-1 matching rules (DESIGN.md §4).
//!
//! Pure logic: no I/O, no storage, no async. The broker keeps one [`RoutingTable`], mutates it
//! on declare/bind/delete, and reads it on every publish.
//!
//! # Layout
//! - `exchange`: exchanges and bindings as declared ([`Exchange`], [`Binding`]), which the
//!   broker persists and lists.
//! - `table`: [`RoutingTable`], the indexes routing reads on the hot path.
//! - `topic`: topic patterns (`*`, `#`), a trie for many bindings and [`topic_matches`] for one.
//! - [`namespace`]: vhosts as prefixes of the names the table knows (the default exchange,
//!   `amq.*` and alternate exchanges are per vhost).
//! - `headers`: the `x-match` rules of headers exchanges, matched by merging sorted lists,
//!   and the limits on header tables ([`HeaderLimits`]).
//! - `header_eq`: header values compared as RabbitMQ compares them.
//! - `weighted`, `consistent_hash`: the exchanges that send each message to exactly one bound
//!   queue, by weight (smooth weighted round robin) or by a hash ring.
//!
//! # Matching rules (as RabbitMQ)
//! - direct: the binding key equals the routing key.
//! - fanout: every bound queue.
//! - topic: keys and patterns are words split on `.`, empty words kept (`"a..b"` is three
//!   words, `"a."` two); the empty string is zero words. `*` is exactly one word (possibly
//!   empty), `#` zero or more words; a pattern may hold any number of `#`.
//! - headers: `x-match` is `all` (default), `any`, `all-with-x` or `any-with-x`; binding
//!   arguments starting with `x-` count only in the `-with-x` modes (`x-match` itself never);
//!   an argument matches when the message has the key with an equal value, compared as
//!   RabbitMQ compares them (numbers by value, so `1 == 1.0`; strings never equal numbers;
//!   see `header_eq`), and a void argument when the message has the key at all.
//!   `all` with nothing to compare matches every message, `any` matches none.
//! - weighted: exactly one queue, each binding's share of the messages its `x-weight`
//!   (default 1, 0 sends it none); deterministic, so every run of messages is split so.
//! - consistent-hash: exactly one queue, by a fixed hash of the routing key (or of the
//!   exchange's `hash_header`; a message without it matches nothing) on a ring where each
//!   binding holds `x-weight` × 100 points.
//! - weighted and consistent-hash exchanges bind a queue once: binding it again with another
//!   `x-weight` changes its weight in place, and an unbind names the queue (with no
//!   arguments, or the binding's own).
//! - default exchange `""`: routes to the queue named by the routing key, if it exists.
//! - a message no binding matches goes to the exchange's alternate exchange, and so on along
//!   the chain, stopping at a missing exchange or one already visited.

mod consistent_hash;
mod exchange;
mod header_eq;
mod headers;
pub mod namespace;
mod queue_list;
mod table;
mod topic;
mod weighted;

pub use consistent_hash::MAX_RING_WEIGHT;
pub use exchange::{Binding, Exchange, ExchangeKind};
pub use headers::{HeaderLimitError, HeaderLimits, MAX_HEADERS_LEN, MAX_HEADER_ENTRIES};
pub use namespace::{Namespace, ResourceName};
pub use table::{QueueName, RouteResult, RoutingTable, UnbindOutcome};
pub use topic::topic_matches;
pub use weighted::{MAX_WEIGHT, WEIGHT_ARGUMENT};

/// Why a routing-table operation was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RoutingError {
    /// No exchange has this name.
    #[error("exchange '{0}' not found")]
    ExchangeNotFound(String),
    /// No queue has this name.
    #[error("queue '{0}' not found")]
    QueueNotFound(String),
    /// The exchange exists with different properties than the ones declared.
    #[error(
        "exchange '{name}' exists with {field}={existing}; the declare asked {field}={requested}"
    )]
    ExchangeMismatch {
        /// The exchange.
        name: String,
        /// The property that differs: `kind`, `durable`, `auto_delete` or `alternate_exchange`.
        field: &'static str,
        /// Its current value, in words (`topic`, `true`, `'ae'`, `none`).
        existing: String,
        /// The value asked for, in words.
        requested: String,
    },
    /// The default exchange cannot be declared, deleted, bound or unbound.
    #[error("operation not permitted on the default exchange")]
    DefaultExchangeAccess,
    /// Names starting with `amq.` belong to the broker: they cannot be created or deleted.
    #[error("exchange name '{0}' is reserved (prefix 'amq.')")]
    ReservedExchange(String),
    /// `if_unused` was asked and the exchange still has bindings.
    #[error("exchange '{0}' is in use")]
    ExchangeInUse(String),
    /// A client's name holding `\0`, which only internal names of vhosts hold.
    #[error("invalid name '{0}': names may not contain the character U+0000")]
    InvalidName(String),
    /// Not one of `direct`, `fanout`, `topic`, `headers`, `weighted`, `consistent-hash`.
    #[error("invalid exchange kind '{0}'")]
    InvalidKind(String),
    /// A property that the exchange's kind does not take (a hash header on an exchange
    /// that is not consistent-hash).
    #[error("invalid exchange '{exchange}': {reason}")]
    InvalidExchange {
        /// The exchange.
        exchange: String,
        /// What is wrong.
        reason: String,
    },
    /// The binding's key or arguments are not valid for the exchange's kind.
    #[error("invalid binding to exchange '{exchange}': {reason}")]
    InvalidBinding {
        /// The exchange.
        exchange: String,
        /// What is wrong.
        reason: String,
    },
}
