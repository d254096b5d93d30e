//! Listings for operators (protocol.md §15, §16), read from the registry, the queues' counters
//! and the live connections, one page at a time.
//!
//! Each page holds the items that sort strictly after the request's cursor, in a fixed order,
//! as many as the request's limit and the connection's maximum frame allow. Because the
//! cursor is a key rather than a position, an item that exists for the whole of a listing is
//! listed exactly once, whatever is created or deleted meanwhile, and no item is listed twice.

use std::sync::atomic::Ordering;

use std::time::UNIX_EPOCH;

use sluice_client::wire::{
    BindingSummary, ConnectionSummary, ConsumerSummary, ExchangeSummary, ListBindings,
    ListBindingsOk, ListConnections, ListConnectionsOk, ListConsumers, ListConsumersOk,
    ListExchanges, ListExchangesOk, ListQueues, ListQueuesOk, QueueSummary, MAX_PAGE_ITEMS,
    MIN_FRAME_LEN, PAGE_FIXED_LEN,
};

use crate::broker::Broker;
use crate::connection::{ConnectionEntry, ConnectionRegistry};
use crate::queue::QueueHandle;
use crate::routing::Namespace;

/// The names of `internal` as a listing shows them: with a scope, only the vhost's names, in
/// its clients' terms; without one (the HTTP API, which splits them itself), every name.
pub(crate) fn in_scope<'a>(scope: Option<&Namespace>, internal: &'a str) -> Option<&'a str> {
    match scope {
        Some(ns) => ns.local(internal),
        None => Some(internal),
    }
}

/// How much of a listing one answer may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageLimit {
    /// Most items.
    items: usize,
    /// Most encoded bytes of items.
    bytes: usize,
}

impl PageLimit {
    /// At most `limit` items (0 = no count limit), and no more than fit in an answer frame of
    /// `max_frame_len` (the connection's agreed maximum).
    pub fn new(limit: u32, max_frame_len: u32) -> Self {
        let items = match limit {
            0 => MAX_PAGE_ITEMS,
            n => (n as usize).min(MAX_PAGE_ITEMS),
        };
        let fixed = MIN_FRAME_LEN as usize + PAGE_FIXED_LEN;
        PageLimit {
            items,
            bytes: (max_frame_len as usize).saturating_sub(fixed),
        }
    }
}

/// Takes `items` (already in listing order, after the cursor) while they fit in `limit`, and
/// says whether any are left. The first item is taken even if it alone is too large, so a
/// listing never stalls on an empty page: such an answer fails to encode and the request gets
/// an `INTERNAL_ERROR` instead (only a binding with arguments near their 64 KiB limit, listed
/// over a connection with frames near the 64 KiB minimum, can be that large).
fn take_page<T>(
    items: impl IntoIterator<Item = T>,
    limit: PageLimit,
    encoded_len: impl Fn(&T) -> usize,
) -> (Vec<T>, bool) {
    let mut page = Vec::new();
    let mut bytes = 0;
    for item in items {
        let len = encoded_len(&item);
        if !page.is_empty() && (page.len() >= limit.items || bytes + len > limit.bytes) {
            return (page, true);
        }
        bytes += len;
        page.push(item);
    }
    (page, false)
}

/// A page of queues, by name (of `scope`'s vhost, or of all).
pub fn list_queues(
    broker: &Broker,
    scope: Option<&Namespace>,
    request: &ListQueues,
    max_frame_len: u32,
) -> ListQueuesOk {
    let queues = broker.queues();
    // A vhost's names share its prefix, so they sort among themselves as their local names.
    let named = queues
        .iter()
        .filter_map(|q| in_scope(scope, &q.meta.name).map(|name| (name, q)))
        .filter(|(name, _)| request.after.as_deref().is_none_or(|after| *name > after));
    let limit = PageLimit::new(request.limit, max_frame_len);
    let (queues, more) = take_page(
        named.map(|(name, q)| queue_summary(name, q)),
        limit,
        QueueSummary::encoded_len,
    );
    ListQueuesOk { queues, more }
}

fn queue_summary(name: &str, q: &QueueHandle) -> QueueSummary {
    let m = &q.meta;
    let s = &m.stats;
    QueueSummary {
        name: name.to_owned(),
        durable: m.durable,
        exclusive: m.exclusive_owner.is_some(),
        auto_delete: m.auto_delete,
        ready: s.ready.load(Ordering::Relaxed),
        unacked: s.unacked.load(Ordering::Relaxed),
        consumers: s.consumers.load(Ordering::Relaxed),
        bytes: s.bytes.load(Ordering::Relaxed),
        publish_rate: s.publish_rate.load(Ordering::Relaxed),
        ack_rate: s.ack_rate.load(Ordering::Relaxed),
        oldest_ready_age_ms: s.oldest_ready_age_ms(crate::queue::unix_now_ms()),
    }
}

/// A page of exchanges, by name (the default exchange, `""`, first), of `scope`'s vhost or
/// of all.
pub fn list_exchanges(
    broker: &Broker,
    scope: Option<&Namespace>,
    request: &ListExchanges,
    max_frame_len: u32,
) -> ListExchangesOk {
    let reg = broker.read();
    let exchanges = reg.routing.exchanges();
    let named = exchanges
        .iter()
        .filter_map(|x| in_scope(scope, &x.name).map(|name| (name, x)))
        .filter(|(name, _)| request.after.as_deref().is_none_or(|after| *name > after));
    let summaries = named.map(|(name, x)| ExchangeSummary {
        name: name.to_owned(),
        kind: x.kind.into(),
        durable: x.durable,
        auto_delete: x.auto_delete,
        alternate_exchange: x.alternate_exchange.clone(),
        hash_header: x.hash_header.clone(),
    });
    let limit = PageLimit::new(request.limit, max_frame_len);
    let (exchanges, more) = take_page(summaries, limit, ExchangeSummary::encoded_len);
    ListExchangesOk { exchanges, more }
}

/// A page of explicit bindings, in [`BindingSummary::listing_cmp`] order, of `scope`'s vhost
/// or of all.
pub fn list_bindings(
    broker: &Broker,
    scope: Option<&Namespace>,
    request: &ListBindings,
    max_frame_len: u32,
) -> ListBindingsOk {
    let all = broker.read().routing.bindings();
    let mut rest: Vec<BindingSummary> = all
        .into_iter()
        .filter_map(|b| {
            Some(BindingSummary {
                exchange: in_scope(scope, &b.exchange)?.to_owned(),
                queue: in_scope(scope, &b.queue)?.to_owned(),
                routing_key: b.routing_key,
                arguments: b.arguments,
            })
        })
        .filter(|b| match &request.after {
            Some(after) => b.listing_cmp(after).is_gt(),
            None => true,
        })
        .collect();
    rest.sort_unstable_by(BindingSummary::listing_cmp);
    let limit = PageLimit::new(request.limit, max_frame_len);
    let (bindings, more) = take_page(rest, limit, BindingSummary::encoded_len);
    ListBindingsOk { bindings, more }
}

/// A page of consumers, by queue, tag and connection ([`ConsumerKey`] order).
///
/// [`ConsumerKey`]: sluice_client::wire::ConsumerKey
pub fn list_consumers(
    broker: &Broker,
    scope: Option<&Namespace>,
    request: &ListConsumers,
    max_frame_len: u32,
) -> ListConsumersOk {
    let after = request.after.as_ref();
    let mut rest: Vec<ConsumerSummary> = broker
        .queues()
        .iter()
        .filter_map(|q| in_scope(scope, &q.meta.name).map(|name| (name, q)))
        // Queues are sorted by name: those before the cursor's queue hold no consumer after it.
        .filter(|(name, _)| after.is_none_or(|a| **name >= *a.queue))
        .flat_map(|(name, q)| {
            let mut consumers = q
                .meta
                .stats
                .consumers_list
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
            for c in &mut consumers {
                name.clone_into(&mut c.queue);
            }
            consumers
        })
        .filter(|c| after.is_none_or(|a| c.key() > *a))
        .collect();
    if !request.circuit {
        // A peer that did not ask for circuits gets the layout it knows.
        rest.iter_mut().for_each(|c| c.circuit = None);
    }
    rest.sort_unstable_by_key(ConsumerSummary::key);
    let limit = PageLimit::new(request.limit, max_frame_len);
    let extra = if request.circuit {
        ConsumerSummary::CIRCUIT_LEN
    } else {
        0
    };
    let (consumers, more) = take_page(rest, limit, |c| c.encoded_len() + extra);
    ListConsumersOk {
        consumers,
        more,
        circuit: request.circuit,
    }
}

/// A page of client connections, by id: every one, or only those of the user `only_user`.
pub(crate) fn list_connections(
    registry: &ConnectionRegistry,
    only_user: Option<&str>,
    request: &ListConnections,
    max_frame_len: u32,
) -> ListConnectionsOk {
    let rest = registry.snapshot_after(request.after);
    let limit = PageLimit::new(request.limit, max_frame_len);
    let summaries = rest
        .iter()
        .filter(|e| only_user.is_none_or(|u| e.user == u))
        .map(|e| connection_summary(e));
    let (connections, more) = take_page(summaries, limit, ConnectionSummary::encoded_len);
    ListConnectionsOk { connections, more }
}

fn connection_summary(c: &ConnectionEntry) -> ConnectionSummary {
    let s = &c.stats;
    ConnectionSummary {
        connection_id: c.id,
        user: c.user.clone(),
        peer: c.peer.map(|p| p.to_string()),
        client_product: c.client.product.clone(),
        client_version: c.client.version.clone(),
        connection_name: c.client.connection_name.clone(),
        connected_at_ms: c
            .connected_at
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64),
        bytes_in: s.bytes_in.load(Ordering::Relaxed),
        bytes_out: s.bytes_out.load(Ordering::Relaxed),
        frames_in: s.frames_in.load(Ordering::Relaxed),
        frames_out: s.frames_out.load(Ordering::Relaxed),
        unsettled_publishes: s.unsettled_publishes.load(Ordering::Relaxed),
        consumers: s.consumers.load(Ordering::Relaxed) as u32,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lens(page: &(Vec<usize>, bool)) -> (usize, bool) {
        (page.0.len(), page.1)
    }

    #[test]
    fn a_page_stops_at_the_limit_or_the_frame_whichever_comes_first() {
        let fixed = MIN_FRAME_LEN as usize + PAGE_FIXED_LEN;
        let items = || vec![10usize; 10];
        let by_count = PageLimit::new(3, 1 << 20);
        assert_eq!(lens(&take_page(items(), by_count, |n| *n)), (3, true));
        let by_bytes = PageLimit::new(0, (fixed + 45) as u32);
        assert_eq!(lens(&take_page(items(), by_bytes, |n| *n)), (4, true));
        let exact = PageLimit::new(0, (fixed + 100) as u32);
        assert_eq!(lens(&take_page(items(), exact, |n| *n)), (10, false));
        let all = PageLimit::new(u32::MAX, u32::MAX);
        assert_eq!(lens(&take_page(items(), all, |n| *n)), (10, false));
        assert_eq!(lens(&take_page(Vec::new(), all, |n| *n)), (0, false));
    }

    #[test]
    fn a_page_holds_at_least_one_item_even_if_it_is_too_large() {
        let tiny = PageLimit::new(0, 0);
        assert_eq!(
            take_page(vec![500usize, 1], tiny, |n| *n),
            (vec![500], true)
        );
        assert_eq!(take_page(vec![500usize], tiny, |n| *n), (vec![500], false));
    }
}
