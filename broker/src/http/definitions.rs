//! `/api/definitions`: export and import the topology (the format is in [`crate::topology`]).

use std::sync::Arc;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use sluice_client::wire::{DeclareExchange, DeclareQueue, ListBindings, ListExchanges};

use super::error::{ApiError, JsonBody};
use super::Api;
use crate::admin;
use crate::broker::Broker;
use crate::error::RequestError;
use crate::queue::ConnId;
use crate::routing::Binding;
use crate::topology::{
    self, BindingDefinition, Definitions, ExchangeDefinition, ImportTarget, QueueDefinition,
    QueueFacts,
};

/// `GET /api/definitions`: the durable topology, as `sluice definitions export` writes it.
pub async fn export(State(api): State<Api>) -> Response {
    let queues = api.broker.queues();
    let exchanges = admin::list_exchanges(&api.broker, &ListExchanges::default(), u32::MAX);
    let bindings = admin::list_bindings(&api.broker, &ListBindings::default(), u32::MAX);
    let facts = queues.iter().map(|q| QueueFacts {
        name: &q.meta.name,
        durable: q.meta.durable,
        exclusive: q.meta.exclusive_owner.is_some(),
        auto_delete: q.meta.auto_delete,
        arguments: &q.meta.arguments,
    });
    let definitions = Definitions::from_parts(facts, &exchanges.exchanges, &bindings.bindings);
    Json(definitions).into_response()
}

/// `POST /api/definitions`: declares everything in the body that does not exist yet; what
/// exists as given is left alone, and what conflicts is listed in the report's `errors`.
pub async fn import(
    State(api): State<Api>,
    JsonBody(definitions): JsonBody<Definitions>,
) -> Result<Response, ApiError> {
    let target = BrokerTarget {
        broker: Arc::clone(&api.broker),
        conn: api.broker.next_conn_id(),
    };
    let report = topology::import(&target, &definitions).await?;
    Ok(Json(report).into_response())
}

/// Imports with the broker's own declares, as a connection of its own.
struct BrokerTarget {
    broker: Arc<Broker>,
    conn: ConnId,
}

impl ImportTarget for BrokerTarget {
    async fn declare_exchange(&self, x: &ExchangeDefinition) -> Result<(), RequestError> {
        let request = DeclareExchange {
            name: x.name.clone(),
            kind: x.kind.into(),
            durable: true,
            auto_delete: x.auto_delete,
            passive: false,
            alternate_exchange: x.alternate_exchange.clone(),
        };
        // Writes the topology file durably: off the runtime's worker, as sessions do.
        tokio::task::block_in_place(|| self.broker.declare_exchange(request))
    }

    async fn declare_queue(&self, q: &QueueDefinition) -> Result<(), RequestError> {
        let request = DeclareQueue {
            name: q.name.clone(),
            durable: true,
            exclusive: false,
            auto_delete: q.auto_delete,
            passive: false,
            arguments: (&q.arguments).into(),
        };
        tokio::task::block_in_place(|| self.broker.declare_queue(self.conn, request)).map(drop)
    }

    async fn bind(&self, b: &BindingDefinition) -> Result<(), RequestError> {
        let binding = Binding {
            queue: b.queue.clone(),
            exchange: b.exchange.clone(),
            routing_key: b.routing_key.clone(),
            arguments: b.header_arguments()?,
        };
        tokio::task::block_in_place(|| self.broker.bind(self.conn, binding, true))
    }
}
