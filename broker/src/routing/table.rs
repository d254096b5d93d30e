//! The routing table: exchanges, bindings, known queues, and the indexes a publish reads.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use sluice_client::wire::{HeaderValue, Headers};

use super::consistent_hash::{header_key, HashRing, MAX_RING_WEIGHT};
use super::exchange::{is_builtin, is_default};
use super::headers::{HeadersFilter, MessageHeaders};
use super::namespace::{check_local, prefix_of};
use super::queue_list::QueueList;
use super::topic::TopicTrie;
use super::weighted::{weight_of, WeightedQueues, MAX_WEIGHT};
use super::{Binding, Exchange, ExchangeKind, RoutingError};

/// A queue name, shared between the table and routing results so that routing copies a
/// pointer, not the string.
pub type QueueName = Arc<str>;

/// Identifies a binding inside the table; increasing, so it also orders bindings by age.
pub(super) type BindingId = u64;

/// The exchanges every table starts with, besides the default one, as in RabbitMQ.
const BUILTIN_EXCHANGES: [(&str, ExchangeKind); 5] = [
    ("amq.direct", ExchangeKind::Direct),
    ("amq.fanout", ExchangeKind::Fanout),
    ("amq.headers", ExchangeKind::Headers),
    ("amq.match", ExchangeKind::Headers),
    ("amq.topic", ExchangeKind::Topic),
];

/// Where a message goes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RouteResult {
    /// The destination queues, each once, sorted by name. Empty when unroutable.
    pub queues: Vec<QueueName>,
    /// Whether the queues were found through an alternate exchange.
    pub via_alternate: bool,
}

/// What [`RoutingTable::unbind`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UnbindOutcome {
    /// Whether the binding existed and was removed.
    pub removed: bool,
    /// The exchange, if it is auto-delete and this was its last binding: the caller deletes it.
    pub unused_auto_delete: Option<String>,
}

/// Exchanges, bindings and known queues, indexed for routing.
///
/// Mutations take `&mut self` and are rare; [`route`](Self::route) takes `&self`, so the
/// broker can share one table between connections (behind a lock or a copy-on-write `Arc`).
#[derive(Debug, Clone)]
pub struct RoutingTable {
    exchanges: HashMap<Arc<str>, ExchangeState>,
    queues: HashSet<QueueName>,
    next_binding_id: BindingId,
}

#[derive(Debug, Clone)]
struct ExchangeState {
    exchange: Exchange,
    /// The explicit bindings, by queue (few per queue, so a linear scan finds one).
    bindings: HashMap<QueueName, Vec<BindingRecord>>,
    binding_count: usize,
    matcher: Matcher,
}

#[derive(Debug, Clone)]
struct BindingRecord {
    id: BindingId,
    routing_key: String,
    /// Sorted by key, so that argument order does not make two bindings differ.
    arguments: Headers,
}

/// The per-kind index that routing reads.
#[derive(Debug, Clone)]
enum Matcher {
    /// The default exchange: the routing key names the queue.
    Default,
    Direct(HashMap<Box<str>, QueueList>),
    Fanout(QueueList),
    Topic(TopicTrie),
    Headers(Vec<HeadersBinding>),
    Weighted(WeightedQueues),
    ConsistentHash(HashRing),
}

#[derive(Debug, Clone)]
struct HeadersBinding {
    id: BindingId,
    queue: QueueName,
    filter: HeadersFilter,
}

impl Matcher {
    fn new(kind: ExchangeKind) -> Self {
        match kind {
            ExchangeKind::Direct => Self::Direct(HashMap::new()),
            ExchangeKind::Fanout => Self::Fanout(QueueList::default()),
            ExchangeKind::Topic => Self::Topic(TopicTrie::default()),
            ExchangeKind::Headers => Self::Headers(Vec::new()),
            ExchangeKind::Weighted => Self::Weighted(WeightedQueues::default()),
            ExchangeKind::ConsistentHash => Self::ConsistentHash(HashRing::default()),
        }
    }

    /// Validates and indexes a binding (for weighted and consistent-hash, sets the queue's
    /// weight); on error nothing changed.
    fn add(
        &mut self,
        id: BindingId,
        queue: &QueueName,
        routing_key: &str,
        arguments: &[(String, HeaderValue)],
    ) -> Result<(), String> {
        match self {
            Self::Default => return Err("the default exchange cannot be bound".to_owned()),
            Self::Direct(by_key) => by_key.entry(routing_key.into()).or_default().add(queue),
            Self::Fanout(list) => list.add(queue),
            Self::Topic(trie) => trie.insert(routing_key, queue),
            Self::Headers(bindings) => {
                let binding = HeadersBinding {
                    id,
                    queue: QueueName::clone(queue),
                    filter: HeadersFilter::parse(arguments)?,
                };
                // Kept sorted by queue, so that matches come out sorted.
                let at = bindings.partition_point(|b| *b.queue <= **queue);
                bindings.insert(at, binding);
            }
            Self::Weighted(weighted) => {
                weighted.set(queue, weight_of(arguments, 1, 0..=MAX_WEIGHT)?)
            }
            Self::ConsistentHash(ring) => {
                ring.set(queue, weight_of(arguments, 1, 1..=MAX_RING_WEIGHT)?)?;
            }
        }
        Ok(())
    }

    fn remove(&mut self, id: BindingId, queue: &str, routing_key: &str) {
        match self {
            Self::Default => {}
            Self::Direct(by_key) => {
                if by_key
                    .get_mut(routing_key)
                    .is_some_and(|list| list.remove(queue))
                {
                    by_key.remove(routing_key);
                }
            }
            Self::Fanout(list) => {
                list.remove(queue);
            }
            Self::Topic(trie) => trie.remove(routing_key, queue),
            Self::Headers(bindings) => bindings.retain(|b| b.id != id),
            Self::Weighted(weighted) => weighted.remove(queue),
            Self::ConsistentHash(ring) => ring.remove(queue),
        }
    }
}

impl Default for RoutingTable {
    fn default() -> Self {
        Self::new()
    }
}

impl RoutingTable {
    /// A table with the default exchange and the built-in `amq.*` exchanges of `/`, and no
    /// queues.
    pub fn new() -> Self {
        let mut table = Self {
            exchanges: HashMap::new(),
            queues: HashSet::new(),
            next_binding_id: 0,
        };
        table.ensure_namespace("");
        table
    }

    /// Gives the vhost whose names start with `prefix` (see [`super::namespace`]) its default
    /// exchange and `amq.*` exchanges, unless it has them. Returns whether it added them.
    pub fn ensure_namespace(&mut self, prefix: &str) -> bool {
        if self.exchanges.contains_key(prefix) {
            return false;
        }
        let default = Exchange {
            durable: true,
            ..Exchange::new(prefix, ExchangeKind::Direct)
        };
        self.insert_exchange(default, Matcher::Default);
        for (name, kind) in BUILTIN_EXCHANGES {
            let exchange = Exchange {
                durable: true,
                ..Exchange::new(format!("{prefix}{name}"), kind)
            };
            self.insert_exchange(exchange, Matcher::new(kind));
        }
        true
    }

    /// The exchanges that survive a restart: the durable ones users declared (never `""`
    /// nor the built-in `amq.*` ones, which every vhost gets anew), by name.
    pub fn durable_exchanges(&self) -> Vec<Exchange> {
        self.exchanges()
            .into_iter()
            .filter(|x| x.durable && !is_builtin(&x.name))
            .cloned()
            .collect()
    }

    /// The bindings that survive a restart, oldest first: those whose exchange (built-in or
    /// durable) and queue are both durable, as RabbitMQ keeps them.
    pub fn durable_bindings(&self, queue_is_durable: impl Fn(&str) -> bool) -> Vec<Binding> {
        let mut bindings = self.bindings();
        bindings.retain(|b| {
            self.exchange(&b.exchange).is_some_and(|x| x.durable) && queue_is_durable(&b.queue)
        });
        bindings
    }

    fn insert_exchange(&mut self, exchange: Exchange, matcher: Matcher) {
        let state = ExchangeState {
            exchange,
            bindings: HashMap::new(),
            binding_count: 0,
            matcher,
        };
        self.exchanges
            .insert(Arc::from(state.exchange.name.as_str()), state);
    }

    /// Declares an exchange. Returns `true` if it was created, `false` if an equivalent one
    /// already existed. Kind, durability, auto-delete and alternate exchange must all agree
    /// with an existing exchange. New names may not start with `amq.`.
    pub fn declare_exchange(&mut self, exchange: Exchange) -> Result<bool, RoutingError> {
        if is_default(&exchange.name) {
            return Err(RoutingError::DefaultExchangeAccess);
        }
        self.ensure_namespace(prefix_of(&exchange.name));
        if let Some(state) = self.exchanges.get(exchange.name.as_str()) {
            check_equivalent(&state.exchange, &exchange)?;
            return Ok(false);
        }
        if is_builtin(&exchange.name) {
            return Err(RoutingError::ReservedExchange(exchange.name));
        }
        check_hash_header(&exchange)?;
        let matcher = Matcher::new(exchange.kind);
        self.insert_exchange(exchange, matcher);
        Ok(true)
    }

    /// Deletes an exchange and its bindings. Returns whether it existed: deleting a missing
    /// exchange succeeds, as in RabbitMQ. With `if_unused`, an exchange that still has
    /// bindings is kept and [`RoutingError::ExchangeInUse`] returned. Exchanges naming it as
    /// their alternate keep the name; routing skips a missing alternate.
    pub fn delete_exchange(&mut self, name: &str, if_unused: bool) -> Result<bool, RoutingError> {
        if is_default(name) {
            return Err(RoutingError::DefaultExchangeAccess);
        }
        if is_builtin(name) {
            return Err(RoutingError::ReservedExchange(name.to_owned()));
        }
        let Some(state) = self.exchanges.get(name) else {
            return Ok(false);
        };
        if if_unused && state.binding_count > 0 {
            return Err(RoutingError::ExchangeInUse(name.to_owned()));
        }
        self.exchanges.remove(name);
        Ok(true)
    }

    /// The exchange with this name, built-in ones included.
    pub fn exchange(&self, name: &str) -> Option<&Exchange> {
        self.exchanges.get(name).map(|state| &state.exchange)
    }

    /// All exchanges, the default and built-in ones included, sorted by name.
    pub fn exchanges(&self) -> Vec<&Exchange> {
        let mut all: Vec<&Exchange> = self.exchanges.values().map(|s| &s.exchange).collect();
        all.sort_unstable_by(|a, b| a.name.cmp(&b.name));
        all
    }

    /// All explicit bindings, oldest first. The default exchange's bindings are implicit
    /// (one per queue, keyed by its name) and not listed.
    pub fn bindings(&self) -> Vec<Binding> {
        let mut all: Vec<(BindingId, Binding)> = self
            .exchanges
            .values()
            .flat_map(|state| {
                state.bindings.iter().flat_map(move |(queue, records)| {
                    records.iter().map(move |r| {
                        let binding = Binding {
                            queue: queue.to_string(),
                            exchange: state.exchange.name.clone(),
                            routing_key: r.routing_key.clone(),
                            arguments: r.arguments.clone(),
                        };
                        (r.id, binding)
                    })
                })
            })
            .collect();
        all.sort_unstable_by_key(|(id, _)| *id);
        all.into_iter().map(|(_, b)| b).collect()
    }

    /// The explicit bindings of `exchange` (0 for a missing one).
    pub fn binding_count(&self, exchange: &str) -> usize {
        self.exchanges
            .get(exchange)
            .map_or(0, |state| state.binding_count)
    }

    /// The most bindings any one exchange has.
    pub fn most_bindings(&self) -> usize {
        self.exchanges
            .values()
            .map(|state| state.binding_count)
            .max()
            .unwrap_or(0)
    }

    /// Every exchange with more than `max` bindings, with its count (made before a lower limit
    /// was configured: kept, and reported).
    pub fn exchanges_over(&self, max: usize) -> Vec<(String, usize)> {
        let mut over: Vec<(String, usize)> = self
            .exchanges
            .iter()
            .filter(|(_, state)| state.binding_count > max)
            .map(|(name, state)| (name.to_string(), state.binding_count))
            .collect();
        over.sort();
        over
    }

    /// Binds a queue to an exchange. Returns `true` if the binding is new (or, for weighted
    /// and consistent-hash exchanges, changed the queue's weight), `false` if the same one
    /// existed. Both must exist; the arguments must suit the exchange's kind (headers: a valid
    /// `x-match`; weighted and consistent-hash: only `x-weight`; any topic pattern is valid).
    pub fn bind(&mut self, binding: Binding) -> Result<bool, RoutingError> {
        if is_default(&binding.exchange) {
            return Err(RoutingError::DefaultExchangeAccess);
        }
        let state = self
            .exchanges
            .get_mut(binding.exchange.as_str())
            .ok_or_else(|| RoutingError::ExchangeNotFound(binding.exchange.clone()))?;
        let queue = self
            .queues
            .get(binding.queue.as_str())
            .cloned()
            .ok_or_else(|| RoutingError::QueueNotFound(binding.queue.clone()))?;
        let arguments = normalized(binding.arguments);
        if state.exchange.kind.picks_one() {
            let id = self.next_binding_id;
            let added = state.bind_one(id, &queue, arguments)?;
            if added {
                self.next_binding_id += 1;
            }
            return Ok(added);
        }
        let exists = state.bindings.get(&queue).is_some_and(|records| {
            records
                .iter()
                .any(|r| r.routing_key == binding.routing_key && r.arguments == arguments)
        });
        if exists {
            return Ok(false);
        }
        let id = self.next_binding_id;
        state
            .matcher
            .add(id, &queue, &binding.routing_key, &arguments)
            .map_err(|reason| RoutingError::InvalidBinding {
                exchange: binding.exchange.clone(),
                reason,
            })?;
        self.next_binding_id += 1;
        state.binding_count += 1;
        state
            .bindings
            .entry(queue)
            .or_default()
            .push(BindingRecord {
                id,
                routing_key: binding.routing_key,
                arguments,
            });
        Ok(true)
    }

    /// Removes a binding. As in RabbitMQ, removing one that does not exist (or whose exchange
    /// or queue does not) succeeds with `removed: false`. A weighted or consistent-hash
    /// binding is named by its queue: the routing key is ignored, and arguments, if any, must
    /// be the binding's.
    pub fn unbind(&mut self, binding: &Binding) -> Result<UnbindOutcome, RoutingError> {
        if is_default(&binding.exchange) {
            return Err(RoutingError::DefaultExchangeAccess);
        }
        let Some(state) = self.exchanges.get_mut(binding.exchange.as_str()) else {
            return Ok(UnbindOutcome::default());
        };
        let Some(records) = state.bindings.get_mut(binding.queue.as_str()) else {
            return Ok(UnbindOutcome::default());
        };
        let arguments = normalized(binding.arguments.clone());
        let picks_one = state.exchange.kind.picks_one();
        let Some(pos) = records.iter().position(|r| {
            if picks_one {
                // The queue names the binding; arguments, if given, must be its own (so that a
                // stale unbind does not take away a binding whose weight changed since).
                arguments.is_empty() || r.arguments == arguments
            } else {
                r.routing_key == binding.routing_key && r.arguments == arguments
            }
        }) else {
            return Ok(UnbindOutcome::default());
        };
        let record = records.remove(pos);
        if records.is_empty() {
            state.bindings.remove(binding.queue.as_str());
        }
        state
            .matcher
            .remove(record.id, &binding.queue, &record.routing_key);
        state.binding_count -= 1;
        Ok(UnbindOutcome {
            removed: true,
            unused_auto_delete: state.unused_auto_delete().then(|| binding.exchange.clone()),
        })
    }

    /// Makes a queue known, so that it can be bound and the default exchange routes to it.
    /// Returns `false` if it was known already.
    pub fn add_queue(&mut self, name: &str) -> bool {
        if self.queues.contains(name) {
            return false;
        }
        self.ensure_namespace(prefix_of(name));
        self.queues.insert(QueueName::from(name))
    }

    /// Whether a queue is known.
    pub fn has_queue(&self, name: &str) -> bool {
        self.queues.contains(name)
    }

    /// Forgets a queue and drops its bindings. Returns, sorted, the auto-delete exchanges
    /// that thereby lost their last binding: the caller deletes them.
    pub fn remove_queue(&mut self, name: &str) -> Vec<String> {
        self.queues.remove(name);
        let mut unused = Vec::new();
        for state in self.exchanges.values_mut() {
            let Some(records) = state.bindings.remove(name) else {
                continue;
            };
            for record in &records {
                state.matcher.remove(record.id, name, &record.routing_key);
            }
            state.binding_count -= records.len();
            if state.unused_auto_delete() {
                unused.push(state.exchange.name.clone());
            }
        }
        unused.sort_unstable();
        unused
    }

    /// Routes a message published to `exchange`; see [`route_into`](Self::route_into).
    pub fn route(
        &self,
        exchange: &str,
        routing_key: &str,
        headers: &[(String, HeaderValue)],
    ) -> Result<RouteResult, RoutingError> {
        let mut result = RouteResult::default();
        self.route_into(exchange, routing_key, headers, &mut result)?;
        Ok(result)
    }

    /// Routes a message into `out`, reusing its allocation (handy when routing a batch).
    ///
    /// When no binding matches, the exchange's alternate exchange routes it, then that one's,
    /// until some queue matches, the chain reaches a missing exchange or comes back to one
    /// already tried. Only an unknown `exchange` is an error; unroutable is an empty result.
    pub fn route_into(
        &self,
        exchange: &str,
        routing_key: &str,
        headers: &[(String, HeaderValue)],
        out: &mut RouteResult,
    ) -> Result<(), RoutingError> {
        out.queues.clear();
        out.via_alternate = false;
        let start = self
            .exchanges
            .get(exchange)
            .ok_or_else(|| RoutingError::ExchangeNotFound(exchange.to_owned()))?;
        // Sorted at most once for the whole alternate chain, and only if a headers exchange
        // is on it.
        let headers = MessageHeaders::new(headers);
        let mut current = start;
        let mut hops = 0;
        loop {
            self.collect(current, routing_key, &headers, &mut out.queues);
            if !out.queues.is_empty() {
                out.via_alternate = hops > 0;
                return Ok(());
            }
            let Some(next) = self.alternate_of(current) else {
                return Ok(());
            };
            if self.chain_contains(start, hops, next) {
                return Ok(());
            }
            current = next;
            hops += 1;
        }
    }

    /// Whether `target` is among the first `hops + 1` exchanges of the alternate chain from
    /// `start`. Chains are short, so walking again beats allocating a visited set per publish.
    fn chain_contains(&self, start: &ExchangeState, hops: usize, target: &ExchangeState) -> bool {
        let mut state = start;
        for _ in 0..=hops {
            if std::ptr::eq(state, target) {
                return true;
            }
            match self.alternate_of(state) {
                Some(next) => state = next,
                None => return false,
            }
        }
        false
    }

    /// The exchange's alternate exchange, if it has one that exists. The name is the one its
    /// vhost's clients gave, so it is looked up in that vhost.
    fn alternate_of(&self, state: &ExchangeState) -> Option<&ExchangeState> {
        let alternate = state.exchange.alternate_exchange.as_deref()?;
        let prefix = prefix_of(&state.exchange.name);
        if prefix.is_empty() {
            self.exchanges.get(alternate)
        } else {
            self.exchanges.get(format!("{prefix}{alternate}").as_str())
        }
    }

    /// Appends the queues one exchange's bindings select, each once, sorted by name.
    fn collect(
        &self,
        state: &ExchangeState,
        routing_key: &str,
        headers: &MessageHeaders<'_>,
        out: &mut Vec<QueueName>,
    ) {
        match &state.matcher {
            Matcher::Default => {
                // A key holding the separator would reach into another vhost.
                if check_local(routing_key).is_err() {
                    return;
                }
                let prefix = state.exchange.name.as_str();
                let queue = if prefix.is_empty() {
                    self.queues.get(routing_key)
                } else {
                    self.queues.get(format!("{prefix}{routing_key}").as_str())
                };
                if let Some(queue) = queue {
                    out.push(QueueName::clone(queue));
                }
            }
            Matcher::Direct(by_key) => {
                if let Some(list) = by_key.get(routing_key) {
                    list.extend_into(out);
                }
            }
            Matcher::Fanout(list) => list.extend_into(out),
            Matcher::Topic(trie) => {
                // Each trie node holds a sorted list: only several of them need merging.
                if trie.collect(routing_key, out) > 1 {
                    // A stable sort merges the sorted runs in about linear time.
                    out.sort();
                    out.dedup();
                }
            }
            Matcher::Headers(bindings) => {
                out.extend(
                    bindings
                        .iter()
                        .filter(|b| b.filter.matches(headers))
                        .map(|b| QueueName::clone(&b.queue)),
                );
                // Already sorted; a queue bound twice may be there twice.
                out.dedup();
            }
            Matcher::Weighted(weighted) => out.extend(weighted.pick().cloned()),
            Matcher::ConsistentHash(ring) => {
                let picked = match &state.exchange.hash_header {
                    None => ring.pick(routing_key.as_bytes()),
                    Some(name) => headers
                        .get(name)
                        .and_then(header_key)
                        .and_then(|key| ring.pick(&key)),
                };
                out.extend(picked.cloned());
            }
        }
    }
}

impl ExchangeState {
    fn unused_auto_delete(&self) -> bool {
        self.exchange.auto_delete && self.binding_count == 0
    }

    /// Binds `queue` to a weighted or consistent-hash exchange, whose queues have one binding
    /// each, with no routing key: a new binding takes `id`; an existing one takes the new
    /// arguments (its weight). Returns whether anything changed.
    fn bind_one(
        &mut self,
        id: BindingId,
        queue: &QueueName,
        arguments: Headers,
    ) -> Result<bool, RoutingError> {
        let existing = self.bindings.get(queue).and_then(|r| r.first());
        if existing.is_some_and(|r| r.arguments == arguments) {
            return Ok(false);
        }
        let routing_key = String::new();
        self.matcher
            .add(id, queue, &routing_key, &arguments)
            .map_err(|reason| RoutingError::InvalidBinding {
                exchange: self.exchange.name.clone(),
                reason,
            })?;
        let record = BindingRecord {
            id,
            routing_key,
            arguments,
        };
        match self.bindings.get_mut(queue) {
            Some(records) => {
                // Keeps its place among the bindings (its age), takes the new weight.
                records[0].arguments = record.arguments;
            }
            None => {
                self.bindings.insert(QueueName::clone(queue), vec![record]);
                self.binding_count += 1;
            }
        }
        Ok(true)
    }
}

/// Binding arguments in a canonical order, as RabbitMQ sorts them by key.
fn normalized(mut arguments: Headers) -> Headers {
    arguments.sort_by(|a, b| a.0.cmp(&b.0));
    arguments
}

/// A hash header is a property of consistent-hash exchanges only, and names a header.
fn check_hash_header(exchange: &Exchange) -> Result<(), RoutingError> {
    let reason = match &exchange.hash_header {
        Some(_) if exchange.kind != ExchangeKind::ConsistentHash => format!(
            "a hash header applies to consistent-hash exchanges only, not {}",
            exchange.kind
        ),
        Some(h) if h.is_empty() => "the hash header may not be empty".to_owned(),
        _ => return Ok(()),
    };
    Err(RoutingError::InvalidExchange {
        exchange: exchange.name.clone(),
        reason,
    })
}

fn check_equivalent(existing: &Exchange, requested: &Exchange) -> Result<(), RoutingError> {
    let mismatch = |field, was: String, asked: String| RoutingError::ExchangeMismatch {
        name: requested.name.clone(),
        field,
        existing: was,
        requested: asked,
    };
    if existing.kind != requested.kind {
        return Err(mismatch(
            "kind",
            existing.kind.to_string(),
            requested.kind.to_string(),
        ));
    }
    if existing.durable != requested.durable {
        return Err(mismatch(
            "durable",
            existing.durable.to_string(),
            requested.durable.to_string(),
        ));
    }
    if existing.auto_delete != requested.auto_delete {
        return Err(mismatch(
            "auto_delete",
            existing.auto_delete.to_string(),
            requested.auto_delete.to_string(),
        ));
    }
    // A name, or `none`.
    let show = |name: &Option<String>| {
        name.as_ref()
            .map_or_else(|| "none".to_owned(), |n| format!("'{n}'"))
    };
    if existing.alternate_exchange != requested.alternate_exchange {
        return Err(mismatch(
            "alternate_exchange",
            show(&existing.alternate_exchange),
            show(&requested.alternate_exchange),
        ));
    }
    if existing.hash_header != requested.hash_header {
        return Err(mismatch(
            "hash_header",
            show(&existing.hash_header),
            show(&requested.hash_header),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table_with_queues(queues: &[&str]) -> RoutingTable {
        let mut table = RoutingTable::new();
        for q in queues {
            assert!(table.add_queue(q));
        }
        table
    }

    fn declare(table: &mut RoutingTable, name: &str, kind: ExchangeKind) {
        assert!(table.declare_exchange(Exchange::new(name, kind)).unwrap());
    }

    fn bind(table: &mut RoutingTable, exchange: &str, queue: &str, key: &str) -> bool {
        table.bind(Binding::new(exchange, queue, key)).unwrap()
    }

    fn bind_args(
        table: &mut RoutingTable,
        exchange: &str,
        queue: &str,
        args: &[(&str, HeaderValue)],
    ) -> Result<bool, RoutingError> {
        table.bind(Binding {
            arguments: headers(args),
            ..Binding::new(exchange, queue, "")
        })
    }

    fn headers(pairs: &[(&str, HeaderValue)]) -> Headers {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect()
    }

    fn s(v: &str) -> HeaderValue {
        HeaderValue::Str(v.to_owned())
    }

    /// The queues a message reaches, as strings.
    fn route(table: &RoutingTable, exchange: &str, key: &str) -> Vec<String> {
        route_h(table, exchange, key, &[])
    }

    fn route_h(
        table: &RoutingTable,
        exchange: &str,
        key: &str,
        hdrs: &[(&str, HeaderValue)],
    ) -> Vec<String> {
        let result = table.route(exchange, key, &headers(hdrs)).unwrap();
        result.queues.iter().map(|q| q.to_string()).collect()
    }

    #[test]
    fn exchange_kind_parses_and_displays() {
        for kind in [
            ExchangeKind::Direct,
            ExchangeKind::Fanout,
            ExchangeKind::Topic,
            ExchangeKind::Headers,
        ] {
            assert_eq!(kind.to_string().parse::<ExchangeKind>().unwrap(), kind);
        }
        assert_eq!(
            "topic".parse::<ExchangeKind>().unwrap(),
            ExchangeKind::Topic
        );
        assert_eq!(
            "x-delayed".parse::<ExchangeKind>(),
            Err(RoutingError::InvalidKind("x-delayed".into()))
        );
        assert!("Direct".parse::<ExchangeKind>().is_err());
    }

    #[test]
    fn direct_routes_on_exact_key_and_dedups_sorted() {
        let mut t = table_with_queues(&["q1", "q2", "q3"]);
        declare(&mut t, "x", ExchangeKind::Direct);
        bind(&mut t, "x", "q2", "k");
        bind(&mut t, "x", "q1", "k");
        bind(&mut t, "x", "q3", "other");
        // A second binding of q1 under the same key (different arguments) must not duplicate.
        t.bind(Binding {
            arguments: headers(&[("a", s("b"))]),
            ..Binding::new("x", "q1", "k")
        })
        .unwrap();
        assert_eq!(route(&t, "x", "k"), ["q1", "q2"]);
        assert_eq!(route(&t, "x", "other"), ["q3"]);
        assert!(route(&t, "x", "K").is_empty());
        assert!(route(&t, "x", "").is_empty());
        assert_eq!(t.bindings().len(), 4);
        t.unbind(&Binding::new("x", "q1", "k")).unwrap();
        assert_eq!(route(&t, "x", "k"), ["q1", "q2"]);
    }

    #[test]
    fn fanout_routes_everywhere_ignoring_key() {
        let mut t = table_with_queues(&["b", "a", "c"]);
        declare(&mut t, "f", ExchangeKind::Fanout);
        bind(&mut t, "f", "b", "x");
        bind(&mut t, "f", "a", "");
        bind(&mut t, "f", "b", "y");
        assert_eq!(route(&t, "f", "anything"), ["a", "b"]);
        assert_eq!(route(&t, "amq.fanout", "k"), Vec::<String>::new());
    }

    #[test]
    fn topic_routes_through_the_table() {
        let mut t = table_with_queues(&["all", "eu", "created", "root"]);
        declare(&mut t, "t", ExchangeKind::Topic);
        bind(&mut t, "t", "all", "#");
        bind(&mut t, "t", "eu", "orders.*.eu");
        bind(&mut t, "t", "created", "orders.created.#");
        bind(&mut t, "t", "created", "#.created.#");
        bind(&mut t, "t", "root", "");
        assert_eq!(
            route(&t, "t", "orders.created.eu"),
            ["all", "created", "eu"]
        );
        assert_eq!(route(&t, "t", "orders.created"), ["all", "created"]);
        assert_eq!(route(&t, "t", "orders.paid.us"), ["all"]);
        assert_eq!(route(&t, "t", ""), ["all", "root"]);
        // Any number of `#` groups, as in RabbitMQ.
        assert!(bind(&mut t, "t", "root", "#.a.#.b.#"));
        assert_eq!(route(&t, "t", "x.a.y.b"), ["all", "root"]);
        assert!(bind(&mut t, "t", "all", "#.#.#"));
    }

    #[test]
    fn headers_exchange_routes_by_x_match() {
        let mut t = table_with_queues(&["pdf", "any", "withx", "empty_all", "empty_any"]);
        declare(&mut t, "h", ExchangeKind::Headers);
        bind_args(
            &mut t,
            "h",
            "pdf",
            &[("format", s("pdf")), ("pages", HeaderValue::Int(1))],
        )
        .unwrap();
        bind_args(
            &mut t,
            "h",
            "any",
            &[
                ("x-match", s("any")),
                ("format", s("pdf")),
                ("urgent", HeaderValue::Bool(true)),
            ],
        )
        .unwrap();
        bind_args(
            &mut t,
            "h",
            "withx",
            &[("x-match", s("all-with-x")), ("x-tenant", s("t1"))],
        )
        .unwrap();
        bind_args(&mut t, "h", "empty_all", &[]).unwrap();
        bind_args(&mut t, "h", "empty_any", &[("x-match", s("any"))]).unwrap();

        let pdf = [("format", s("pdf")), ("pages", HeaderValue::Int(1))];
        assert_eq!(route_h(&t, "h", "", &pdf), ["any", "empty_all", "pdf"]);
        // Int 1 and Str "1" differ.
        let wrong_type = [("format", s("pdf")), ("pages", s("1"))];
        assert_eq!(route_h(&t, "h", "", &wrong_type), ["any", "empty_all"]);
        let urgent = [("urgent", HeaderValue::Bool(true))];
        assert_eq!(route_h(&t, "h", "", &urgent), ["any", "empty_all"]);
        let tenant = [("x-tenant", s("t1"))];
        assert_eq!(route_h(&t, "h", "", &tenant), ["empty_all", "withx"]);
        assert_eq!(route_h(&t, "h", "ignored", &[]), ["empty_all"]);

        let bad = bind_args(&mut t, "h", "pdf", &[("x-match", s("most"))]);
        assert!(matches!(bad, Err(RoutingError::InvalidBinding { .. })));
        let bad_type = bind_args(&mut t, "h", "pdf", &[("x-match", HeaderValue::Int(1))]);
        assert!(matches!(bad_type, Err(RoutingError::InvalidBinding { .. })));
        // A refused binding leaves nothing behind.
        assert_eq!(t.bindings().len(), 5);
    }

    #[test]
    fn binding_arguments_order_does_not_matter() {
        let mut t = table_with_queues(&["q"]);
        declare(&mut t, "h", ExchangeKind::Headers);
        assert!(bind_args(&mut t, "h", "q", &[("a", s("1")), ("b", s("2"))]).unwrap());
        assert!(!bind_args(&mut t, "h", "q", &[("b", s("2")), ("a", s("1"))]).unwrap());
        let reversed = Binding {
            arguments: headers(&[("b", s("2")), ("a", s("1"))]),
            ..Binding::new("h", "q", "")
        };
        assert!(t.unbind(&reversed).unwrap().removed);
        assert!(t.bindings().is_empty());
    }

    #[test]
    fn default_exchange_routes_to_named_existing_queue_only() {
        let mut t = table_with_queues(&["jobs"]);
        assert_eq!(route(&t, "", "jobs"), ["jobs"]);
        assert!(route(&t, "", "nope").is_empty());
        assert!(route(&t, "", "").is_empty());
        t.remove_queue("jobs");
        assert!(route(&t, "", "jobs").is_empty());

        let default = t.exchange("").unwrap();
        assert_eq!(default.kind, ExchangeKind::Direct);
        assert!(default.durable);
        let refused = Err(RoutingError::DefaultExchangeAccess);
        t.add_queue("jobs");
        assert_eq!(t.bind(Binding::new("", "jobs", "jobs")), refused);
        assert_eq!(
            t.unbind(&Binding::new("", "jobs", "jobs")),
            Err(RoutingError::DefaultExchangeAccess)
        );
        assert_eq!(
            t.delete_exchange("", false),
            Err(RoutingError::DefaultExchangeAccess)
        );
        assert_eq!(
            t.declare_exchange(Exchange::new("", ExchangeKind::Direct)),
            Err(RoutingError::DefaultExchangeAccess)
        );
    }

    #[test]
    fn each_vhost_has_its_own_default_and_builtin_exchanges_and_routes_only_to_its_queues() {
        let v = "\0v\0";
        let mut t = table_with_queues(&["jobs", "\0v\0jobs"]);
        // The default exchange of each vhost routes its own routing keys to its own queues.
        assert_eq!(route(&t, "", "jobs"), ["jobs"]);
        assert_eq!(route(&t, v, "jobs"), ["\0v\0jobs"]);
        // A key that spells another vhost's name reaches nothing.
        assert!(route(&t, "", "\0v\0jobs").is_empty());
        assert!(t.exchange("\0v\0amq.topic").is_some());
        assert_eq!(
            t.delete_exchange("\0v\0amq.direct", false),
            Err(RoutingError::ReservedExchange("\0v\0amq.direct".into()))
        );
        assert_eq!(
            t.bind(Binding::new(v, "\0v\0jobs", "k")),
            Err(RoutingError::DefaultExchangeAccess)
        );
        // Alternate exchanges are named in the exchange's vhost.
        let x = Exchange {
            alternate_exchange: Some("ae".into()),
            ..Exchange::new("\0v\0x", ExchangeKind::Direct)
        };
        t.declare_exchange(x).unwrap();
        declare(&mut t, "\0v\0ae", ExchangeKind::Fanout);
        declare(&mut t, "ae", ExchangeKind::Fanout);
        assert!(bind(&mut t, "\0v\0ae", "\0v\0jobs", ""));
        assert!(bind(&mut t, "ae", "jobs", ""));
        assert_eq!(route(&t, "\0v\0x", "nothing"), ["\0v\0jobs"]);
        // Built-in exchanges of any vhost are never stored.
        assert!(t
            .durable_exchanges()
            .iter()
            .all(|x| !x.name.ends_with("amq.topic")));
    }

    #[test]
    fn builtin_exchanges_exist_and_are_reserved() {
        let mut t = table_with_queues(&["q"]);
        let names: Vec<&str> = t.exchanges().iter().map(|x| x.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "",
                "amq.direct",
                "amq.fanout",
                "amq.headers",
                "amq.match",
                "amq.topic"
            ]
        );
        assert_eq!(t.exchange("amq.topic").unwrap().kind, ExchangeKind::Topic);
        assert_eq!(t.exchange("amq.match").unwrap().kind, ExchangeKind::Headers);
        // Redeclaring with the same properties is fine, creating a new amq.* is not.
        let same = Exchange {
            durable: true,
            ..Exchange::new("amq.direct", ExchangeKind::Direct)
        };
        assert_eq!(t.declare_exchange(same), Ok(false));
        assert_eq!(
            t.declare_exchange(Exchange::new("amq.custom", ExchangeKind::Direct)),
            Err(RoutingError::ReservedExchange("amq.custom".into()))
        );
        assert_eq!(
            t.delete_exchange("amq.direct", false),
            Err(RoutingError::ReservedExchange("amq.direct".into()))
        );
        // They can be bound like any other.
        assert!(bind(&mut t, "amq.direct", "q", "k"));
        assert_eq!(route(&t, "amq.direct", "k"), ["q"]);
        assert!(t.durable_exchanges().is_empty());
    }

    #[test]
    fn declare_is_idempotent_and_reports_each_mismatch() {
        let mut t = RoutingTable::new();
        let x = Exchange {
            name: "x".into(),
            kind: ExchangeKind::Topic,
            durable: true,
            auto_delete: false,
            alternate_exchange: Some("ae".into()),
            hash_header: None,
        };
        assert_eq!(t.declare_exchange(x.clone()), Ok(true));
        assert_eq!(t.declare_exchange(x.clone()), Ok(false));
        let cases = [
            (
                Exchange {
                    kind: ExchangeKind::Direct,
                    ..x.clone()
                },
                "kind",
                "topic",
                "direct",
            ),
            (
                Exchange {
                    durable: false,
                    ..x.clone()
                },
                "durable",
                "true",
                "false",
            ),
            (
                Exchange {
                    auto_delete: true,
                    ..x.clone()
                },
                "auto_delete",
                "false",
                "true",
            ),
            (
                Exchange {
                    alternate_exchange: None,
                    ..x.clone()
                },
                "alternate_exchange",
                "'ae'",
                "none",
            ),
            (
                Exchange {
                    alternate_exchange: Some("other".into()),
                    ..x.clone()
                },
                "alternate_exchange",
                "'ae'",
                "'other'",
            ),
        ];
        for (requested, field, existing, asked) in cases {
            assert_eq!(
                t.declare_exchange(requested),
                Err(RoutingError::ExchangeMismatch {
                    name: "x".into(),
                    field,
                    existing: existing.into(),
                    requested: asked.into(),
                })
            );
        }
        assert_eq!(t.exchange("x"), Some(&x));
    }

    #[test]
    fn delete_exchange_if_unused() {
        let mut t = table_with_queues(&["q"]);
        declare(&mut t, "x", ExchangeKind::Direct);
        bind(&mut t, "x", "q", "k");
        assert_eq!(
            t.delete_exchange("x", true),
            Err(RoutingError::ExchangeInUse("x".into()))
        );
        assert_eq!(route(&t, "x", "k"), ["q"]);
        assert_eq!(t.delete_exchange("x", false), Ok(true));
        assert!(t.bindings().is_empty());
        assert_eq!(
            t.route("x", "k", &[]),
            Err(RoutingError::ExchangeNotFound("x".into()))
        );
        // Deleting what is not there succeeds, as in RabbitMQ.
        assert_eq!(t.delete_exchange("x", true), Ok(false));
        declare(&mut t, "y", ExchangeKind::Fanout);
        assert_eq!(t.delete_exchange("y", true), Ok(true));
        // Redeclaring after deletion starts empty.
        declare(&mut t, "x", ExchangeKind::Direct);
        assert!(route(&t, "x", "k").is_empty());
    }

    #[test]
    fn bind_is_idempotent_and_checks_both_ends() {
        let mut t = table_with_queues(&["q"]);
        declare(&mut t, "x", ExchangeKind::Direct);
        assert!(bind(&mut t, "x", "q", "k"));
        assert!(!bind(&mut t, "x", "q", "k"));
        assert_eq!(t.bindings(), [Binding::new("x", "q", "k")]);
        assert_eq!(
            t.bind(Binding::new("nope", "q", "k")),
            Err(RoutingError::ExchangeNotFound("nope".into()))
        );
        assert_eq!(
            t.bind(Binding::new("x", "nope", "k")),
            Err(RoutingError::QueueNotFound("nope".into()))
        );
    }

    #[test]
    fn unbind_removes_and_missing_is_ok() {
        let mut t = table_with_queues(&["q", "r"]);
        declare(&mut t, "x", ExchangeKind::Direct);
        bind(&mut t, "x", "q", "k");
        bind(&mut t, "x", "r", "k");
        let b = Binding::new("x", "q", "k");
        assert_eq!(
            t.unbind(&b),
            Ok(UnbindOutcome {
                removed: true,
                unused_auto_delete: None
            })
        );
        assert_eq!(route(&t, "x", "k"), ["r"]);
        assert_eq!(t.unbind(&b), Ok(UnbindOutcome::default()));
        assert_eq!(
            t.unbind(&Binding::new("nope", "q", "k")),
            Ok(UnbindOutcome::default())
        );
        assert_eq!(
            t.unbind(&Binding::new("x", "nope", "k")),
            Ok(UnbindOutcome::default())
        );
        assert_eq!(
            t.unbind(&Binding::new("x", "r", "other")),
            Ok(UnbindOutcome::default())
        );
        assert!(t.unbind(&Binding::new("x", "r", "k")).unwrap().removed);
        assert!(route(&t, "x", "k").is_empty());
    }

    #[test]
    fn unbinding_last_binding_of_auto_delete_exchange_reports_it() {
        let mut t = table_with_queues(&["q"]);
        let x = Exchange {
            auto_delete: true,
            ..Exchange::new("x", ExchangeKind::Topic)
        };
        t.declare_exchange(x).unwrap();
        bind(&mut t, "x", "q", "a.*");
        bind(&mut t, "x", "q", "b.#");
        assert_eq!(
            t.unbind(&Binding::new("x", "q", "a.*"))
                .unwrap()
                .unused_auto_delete,
            None
        );
        assert_eq!(
            t.unbind(&Binding::new("x", "q", "b.#"))
                .unwrap()
                .unused_auto_delete,
            Some("x".into())
        );
    }

    #[test]
    fn remove_queue_drops_bindings_and_reports_unused_auto_delete() {
        let mut t = table_with_queues(&["q", "r"]);
        for (name, auto_delete) in [("auto1", true), ("auto2", true), ("keep", false)] {
            let x = Exchange {
                auto_delete,
                ..Exchange::new(name, ExchangeKind::Fanout)
            };
            t.declare_exchange(x).unwrap();
        }
        declare(&mut t, "t", ExchangeKind::Topic);
        declare(&mut t, "h", ExchangeKind::Headers);
        bind(&mut t, "auto2", "q", "");
        bind(&mut t, "auto1", "q", "");
        bind(&mut t, "auto1", "q", "again");
        bind(&mut t, "keep", "q", "");
        bind(&mut t, "t", "q", "#");
        bind(&mut t, "t", "r", "#");
        bind_args(&mut t, "h", "q", &[]).unwrap();
        let still_used = Exchange {
            auto_delete: true,
            ..Exchange::new("shared", ExchangeKind::Fanout)
        };
        t.declare_exchange(still_used).unwrap();
        bind(&mut t, "shared", "q", "");
        bind(&mut t, "shared", "r", "");

        assert_eq!(t.remove_queue("q"), ["auto1", "auto2"]);
        assert!(!t.has_queue("q"));
        assert!(t.bindings().iter().all(|b| b.queue == "r"));
        assert_eq!(route(&t, "t", "a.b"), ["r"]);
        assert!(route(&t, "h", "").is_empty());
        assert!(route(&t, "keep", "").is_empty());
        assert_eq!(route(&t, "shared", ""), ["r"]);
        assert_eq!(
            t.bind(Binding::new("t", "q", "#")),
            Err(RoutingError::QueueNotFound("q".into()))
        );
        // Removing it again is harmless.
        assert!(t.remove_queue("q").is_empty());
    }

    fn with_alternate(name: &str, kind: ExchangeKind, alternate: &str) -> Exchange {
        Exchange {
            alternate_exchange: Some(alternate.into()),
            ..Exchange::new(name, kind)
        }
    }

    #[test]
    fn alternate_exchange_takes_unroutable_messages() {
        let mut t = table_with_queues(&["orders", "unrouted"]);
        t.declare_exchange(with_alternate("main", ExchangeKind::Direct, "ae"))
            .unwrap();
        declare(&mut t, "ae", ExchangeKind::Fanout);
        bind(&mut t, "main", "orders", "order");
        bind(&mut t, "ae", "unrouted", "");

        let routed = t.route("main", "order", &[]).unwrap();
        assert_eq!(routed.queues, [QueueName::from("orders")]);
        assert!(!routed.via_alternate);
        let fallback = t.route("main", "other", &[]).unwrap();
        assert_eq!(fallback.queues, [QueueName::from("unrouted")]);
        assert!(fallback.via_alternate);
    }

    #[test]
    fn alternate_chain_is_followed_and_missing_alternate_is_unroutable() {
        let mut t = table_with_queues(&["last"]);
        t.declare_exchange(with_alternate("a", ExchangeKind::Direct, "b"))
            .unwrap();
        t.declare_exchange(with_alternate("b", ExchangeKind::Topic, "c"))
            .unwrap();
        declare(&mut t, "c", ExchangeKind::Fanout);
        bind(&mut t, "c", "last", "");
        assert_eq!(route(&t, "a", "x"), ["last"]);
        // The alternate may be the default exchange.
        t.declare_exchange(with_alternate("d", ExchangeKind::Direct, ""))
            .unwrap();
        assert_eq!(route(&t, "d", "last"), ["last"]);
        t.declare_exchange(with_alternate("dangling", ExchangeKind::Direct, "gone"))
            .unwrap();
        let result = t.route("dangling", "x", &[]).unwrap();
        assert_eq!(result, RouteResult::default());
        t.delete_exchange("c", false).unwrap();
        assert!(route(&t, "a", "x").is_empty());
    }

    #[test]
    fn alternate_cycles_terminate() {
        let mut t = table_with_queues(&["q"]);
        t.declare_exchange(with_alternate("self", ExchangeKind::Direct, "self"))
            .unwrap();
        assert!(route(&t, "self", "x").is_empty());

        t.declare_exchange(with_alternate("x", ExchangeKind::Direct, "y"))
            .unwrap();
        t.declare_exchange(with_alternate("y", ExchangeKind::Topic, "z"))
            .unwrap();
        t.declare_exchange(with_alternate("z", ExchangeKind::Fanout, "y"))
            .unwrap();
        assert!(route(&t, "x", "k").is_empty());
        assert!(route(&t, "y", "k").is_empty());
        // A cycle does not stop a later exchange in it from routing.
        bind(&mut t, "z", "q", "");
        let result = t.route("x", "k", &[]).unwrap();
        assert_eq!(result.queues, [QueueName::from("q")]);
        assert!(result.via_alternate);
    }

    #[test]
    fn route_into_reuses_and_clears_the_result() {
        let mut t = table_with_queues(&["a", "b"]);
        declare(&mut t, "x", ExchangeKind::Direct);
        bind(&mut t, "x", "a", "ka");
        bind(&mut t, "x", "b", "kb");
        let mut out = RouteResult::default();
        t.route_into("x", "ka", &[], &mut out).unwrap();
        assert_eq!(out.queues, [QueueName::from("a")]);
        t.route_into("x", "kb", &[], &mut out).unwrap();
        assert_eq!(out.queues, [QueueName::from("b")]);
        t.route_into("x", "none", &[], &mut out).unwrap();
        assert!(out.queues.is_empty());
        assert_eq!(
            t.route_into("missing", "ka", &[], &mut out),
            Err(RoutingError::ExchangeNotFound("missing".into()))
        );
    }

    #[test]
    fn only_durable_exchanges_and_bindings_between_durable_things_survive_a_restart() {
        let mut t = table_with_queues(&["q", "r", "tmp"]);
        t.declare_exchange(Exchange {
            durable: true,
            ..with_alternate("t", ExchangeKind::Topic, "ae")
        })
        .unwrap();
        t.declare_exchange(Exchange {
            durable: true,
            ..Exchange::new("ae", ExchangeKind::Fanout)
        })
        .unwrap();
        declare(&mut t, "transient", ExchangeKind::Direct);
        bind(&mut t, "t", "q", "a.#");
        bind(&mut t, "ae", "r", "");
        bind(&mut t, "amq.direct", "r", "k");
        bind(&mut t, "transient", "q", "k");
        bind(&mut t, "t", "tmp", "#");
        bind_args(
            &mut t,
            "amq.headers",
            "q",
            &[("x-match", s("any")), ("a", s("1"))],
        )
        .unwrap();

        let names: Vec<String> = t.durable_exchanges().into_iter().map(|x| x.name).collect();
        assert_eq!(names, ["ae", "t"]);
        let kept: Vec<(String, String)> = t
            .durable_bindings(|queue| queue != "tmp")
            .into_iter()
            .map(|b| (b.exchange, b.queue))
            .collect();
        let pairs: Vec<(&str, &str)> = kept.iter().map(|(x, q)| (x.as_str(), q.as_str())).collect();
        assert_eq!(
            pairs,
            [
                ("t", "q"),
                ("ae", "r"),
                ("amq.direct", "r"),
                ("amq.headers", "q")
            ]
        );
        assert_eq!(
            t.durable_bindings(|_| true)[0],
            Binding::new("t", "q", "a.#")
        );

        // A table rebuilt from the durable parts routes as the original for them.
        let mut copy = table_with_queues(&["q", "r", "tmp"]);
        for x in t.durable_exchanges() {
            copy.declare_exchange(x).unwrap();
        }
        for b in t.durable_bindings(|_| true) {
            copy.bind(b).unwrap();
        }
        assert_eq!(copy.durable_exchanges(), t.durable_exchanges());
        assert_eq!(
            copy.durable_bindings(|_| true),
            t.durable_bindings(|_| true)
        );
        for (x, key) in [("t", "a.b"), ("t", "z"), ("amq.direct", "k")] {
            assert_eq!(copy.route(x, key, &[]), t.route(x, key, &[]));
        }
    }

    fn weight(w: i64) -> [(&'static str, HeaderValue); 1] {
        [("x-weight", HeaderValue::Int(w))]
    }

    #[test]
    fn a_weighted_exchange_sends_each_message_to_one_queue_by_weight() {
        let mut t = table_with_queues(&["v1", "v2"]);
        declare(&mut t, "canary", ExchangeKind::Weighted);
        assert_eq!(bind_args(&mut t, "canary", "v1", &weight(95)), Ok(true));
        assert_eq!(bind_args(&mut t, "canary", "v2", &weight(5)), Ok(true));
        let mut v2 = 0;
        for _ in 0..1000 {
            let queues = route(&t, "canary", "any key");
            assert_eq!(queues.len(), 1);
            v2 += usize::from(queues[0] == "v2");
        }
        assert_eq!(v2, 50);
        // Binding again with the same weight changes nothing; another weight replaces it.
        assert_eq!(bind_args(&mut t, "canary", "v2", &weight(5)), Ok(false));
        assert_eq!(bind_args(&mut t, "canary", "v2", &weight(50)), Ok(true));
        assert_eq!(t.binding_count("canary"), 2);
        let listed: Vec<_> = t.bindings().into_iter().map(|b| b.arguments).collect();
        assert_eq!(listed, vec![headers(&weight(95)), headers(&weight(50))]);
        let v2 = (0..145)
            .filter(|_| route(&t, "canary", "")[0] == "v2")
            .count();
        assert_eq!(v2, 50);
        // A stale unbind (the old weight) leaves it; an unbind naming only the queue removes.
        let stale = Binding {
            arguments: headers(&weight(5)),
            ..Binding::new("canary", "v2", "")
        };
        assert!(!t.unbind(&stale).unwrap().removed);
        assert!(
            t.unbind(&Binding::new("canary", "v2", "ignored"))
                .unwrap()
                .removed
        );
        assert!((0..10).all(|_| route(&t, "canary", "") == ["v1"]));
        bind_args(&mut t, "canary", "v1", &weight(0)).unwrap();
        assert!(
            route(&t, "canary", "").is_empty(),
            "weight 0 everywhere routes nowhere"
        );
    }

    #[test]
    fn weighted_and_hash_bindings_take_only_a_weight_in_range() {
        let mut t = table_with_queues(&["q"]);
        declare(&mut t, "w", ExchangeKind::Weighted);
        declare(&mut t, "c", ExchangeKind::ConsistentHash);
        for (x, args) in [
            ("w", vec![("x-weight", HeaderValue::Int(1_000_001))]),
            ("w", vec![("x-match", s("any"))]),
            ("c", vec![("x-weight", HeaderValue::Int(0))]),
            ("c", vec![("x-weight", HeaderValue::Int(101))]),
        ] {
            let e = bind_args(&mut t, x, "q", &args).unwrap_err();
            assert!(matches!(e, RoutingError::InvalidBinding { .. }), "{e}");
        }
        assert_eq!(t.binding_count("w") + t.binding_count("c"), 0);
        // Without x-weight, a binding weighs 1.
        assert_eq!(bind_args(&mut t, "c", "q", &[]), Ok(true));
    }

    #[test]
    fn a_consistent_hash_exchange_keeps_a_key_on_its_queue() {
        let mut t = table_with_queues(&["a", "b", "c"]);
        declare(&mut t, "by-key", ExchangeKind::ConsistentHash);
        for q in ["a", "b", "c"] {
            bind_args(&mut t, "by-key", q, &[]).unwrap();
        }
        let mut seen = HashSet::new();
        for k in 0..300 {
            let key = format!("order-{k}");
            let first = route(&t, "by-key", &key);
            assert_eq!(first.len(), 1);
            assert_eq!(route(&t, "by-key", &key), first);
            seen.insert(first[0].clone());
        }
        assert_eq!(seen.len(), 3, "keys spread over every queue");
    }

    #[test]
    fn a_hash_header_is_hashed_instead_of_the_routing_key() {
        let mut t = table_with_queues(&["a", "b"]);
        let x = Exchange {
            hash_header: Some("user".into()),
            ..Exchange::new("by-user", ExchangeKind::ConsistentHash)
        };
        assert_eq!(t.declare_exchange(x.clone()), Ok(true));
        bind_args(&mut t, "by-user", "a", &[]).unwrap();
        bind_args(&mut t, "by-user", "b", &[]).unwrap();
        for u in 0..100 {
            let user = [("user", HeaderValue::Int(u))];
            let by_number = route_h(&t, "by-user", "k1", &user);
            assert_eq!(by_number.len(), 1);
            assert_eq!(route_h(&t, "by-user", &format!("k{u}"), &user), by_number);
            let as_text = [("user", s(&u.to_string()))];
            assert_eq!(route_h(&t, "by-user", "k1", &as_text), by_number);
        }
        assert!(route(&t, "by-user", "no header").is_empty());
        // The hash header is part of the exchange's identity, and only this kind takes one.
        let other = Exchange {
            hash_header: Some("tenant".into()),
            ..x
        };
        assert!(matches!(
            t.declare_exchange(other),
            Err(RoutingError::ExchangeMismatch {
                field: "hash_header",
                ..
            })
        ));
        let direct = Exchange {
            hash_header: Some("user".into()),
            ..Exchange::new("d", ExchangeKind::Direct)
        };
        assert!(matches!(
            t.declare_exchange(direct),
            Err(RoutingError::InvalidExchange { .. })
        ));
    }
}
