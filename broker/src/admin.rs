//! Listings for operators (protocol.md §15), read from the registry and the queues' counters.

use std::sync::atomic::Ordering;

use sluice_client::wire::{
    BindingSummary, ExchangeSummary, ListBindingsOk, ListConsumersOk, ListExchangesOk,
    ListQueuesOk, QueueSummary,
};

use crate::broker::Broker;

/// Every queue, by name.
pub fn list_queues(broker: &Broker) -> ListQueuesOk {
    let queues = broker
        .queues()
        .into_iter()
        .map(|q| {
            let m = &q.meta;
            let s = &m.stats;
            QueueSummary {
                name: m.name.to_string(),
                durable: m.durable,
                exclusive: m.exclusive_owner.is_some(),
                auto_delete: m.auto_delete,
                ready: s.ready.load(Ordering::Relaxed),
                unacked: s.unacked.load(Ordering::Relaxed),
                consumers: s.consumers.load(Ordering::Relaxed),
                bytes: s.bytes.load(Ordering::Relaxed),
                publish_rate: s.publish_rate.load(Ordering::Relaxed),
                ack_rate: s.ack_rate.load(Ordering::Relaxed),
            }
        })
        .collect();
    ListQueuesOk { queues }
}

/// Every exchange, by name.
pub fn list_exchanges(broker: &Broker) -> ListExchangesOk {
    let reg = broker.read();
    let mut exchanges: Vec<ExchangeSummary> = reg
        .routing
        .exchanges()
        .into_iter()
        .map(|x| ExchangeSummary {
            name: x.name.clone(),
            kind: x.kind.into(),
            durable: x.durable,
            auto_delete: x.auto_delete,
            alternate_exchange: x.alternate_exchange.clone(),
        })
        .collect();
    exchanges.sort_by(|a, b| a.name.cmp(&b.name));
    ListExchangesOk { exchanges }
}

/// Every explicit binding, oldest first.
pub fn list_bindings(broker: &Broker) -> ListBindingsOk {
    let bindings = broker
        .read()
        .routing
        .bindings()
        .into_iter()
        .map(|b| BindingSummary {
            exchange: b.exchange,
            queue: b.queue,
            routing_key: b.routing_key,
            arguments: b.arguments,
        })
        .collect();
    ListBindingsOk { bindings }
}

/// Every consumer, by queue.
pub fn list_consumers(broker: &Broker) -> ListConsumersOk {
    let consumers = broker
        .queues()
        .iter()
        .flat_map(|q| {
            q.meta
                .stats
                .consumers_list
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone()
        })
        .collect();
    ListConsumersOk { consumers }
}
