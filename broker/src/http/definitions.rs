//! `/api/definitions`: export and import the topology (the format is in [`crate::topology`]).
//!
//! Items of a vhost other than `/` carry a `vhost` field. An export holds the vhost
//! `?vhost=` names, or every vhost the user sees; an import declares each item in its
//! `vhost`, or in the one `?vhost=` names (`/` by default), with the user's permissions
//! there (an item it may not declare is reported as `ACCESS_REFUSED`).

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use sluice_client::wire::{
    BindingSummary, DeclareExchange, DeclareQueue, ErrorCode, ExchangeSummary, ListBindings,
    ListExchanges, QueueArguments,
};

use super::access::Visible;
use super::error::{ApiError, JsonBody};
use super::Api;
use crate::admin;
use crate::auth::{AuthenticatedUser, Permission, ResourceKind, VhostName};
use crate::broker::Broker;
use crate::error::RequestError;
use crate::queue::ConnId;
use crate::routing::{namespace, Binding, Namespace};
use crate::topology::{
    self, BindingDefinition, Definitions, ExchangeDefinition, ImportTarget, QueueDefinition,
    QueueFacts,
};

/// One vhost's part of the topology, its names in the vhost's terms.
#[derive(Default)]
struct VhostParts<'a> {
    queues: Vec<QueueFacts<'a>>,
    exchanges: Vec<ExchangeSummary>,
    bindings: Vec<BindingSummary>,
}

/// `GET /api/definitions`: the durable topology, as `sluice definitions export` writes it.
pub async fn export(State(api): State<Api>, visible: Visible) -> Response {
    let queues = api.broker.queues();
    let exchanges = admin::list_exchanges(&api.broker, None, &ListExchanges::default(), u32::MAX);
    let bindings = admin::list_bindings(&api.broker, None, &ListBindings::default(), u32::MAX);
    let mut parts: BTreeMap<&str, VhostParts<'_>> = BTreeMap::new();
    for q in &queues {
        if let Some(name) = visible.show(&q.meta.name) {
            parts
                .entry(name.vhost)
                .or_default()
                .queues
                .push(QueueFacts {
                    name: name.local,
                    durable: q.meta.durable,
                    exclusive: q.meta.exclusive_owner.is_some(),
                    auto_delete: q.meta.auto_delete,
                    arguments: &q.meta.arguments,
                });
        }
    }
    for x in &exchanges.exchanges {
        if let Some(name) = visible.show(&x.name) {
            let local = ExchangeSummary {
                name: name.local.to_owned(),
                ..x.clone()
            };
            parts.entry(name.vhost).or_default().exchanges.push(local);
        }
    }
    for b in &bindings.bindings {
        if let Some(name) = visible.show(&b.exchange) {
            let local = BindingSummary {
                exchange: name.local.to_owned(),
                queue: namespace::split(&b.queue).local.to_owned(),
                ..b.clone()
            };
            parts.entry(name.vhost).or_default().bindings.push(local);
        }
    }
    let mut all = Definitions::from_parts([], &[], &[]);
    for (vhost, part) in parts {
        let mut d = Definitions::from_parts(part.queues, &part.exchanges, &part.bindings);
        let tag = (vhost != namespace::DEFAULT_VHOST).then(|| vhost.to_owned());
        d.exchanges
            .iter_mut()
            .for_each(|x| x.vhost.clone_from(&tag));
        d.queues.iter_mut().for_each(|q| q.vhost.clone_from(&tag));
        d.bindings.iter_mut().for_each(|b| b.vhost.clone_from(&tag));
        all.exchanges.extend(d.exchanges);
        all.queues.extend(d.queues);
        all.bindings.extend(d.bindings);
    }
    Json(all).into_response()
}

/// `POST /api/definitions`: declares everything in the body that does not exist yet; what
/// exists as given is left alone, and what conflicts is listed in the report's `errors`.
pub async fn import(
    State(api): State<Api>,
    visible: Visible,
    JsonBody(definitions): JsonBody<Definitions>,
) -> Result<Response, ApiError> {
    let target = BrokerTarget {
        broker: Arc::clone(&api.broker),
        conn: api.broker.next_conn_id(),
        user: visible.user().clone(),
        default_vhost: visible.vhost_or_default().to_owned(),
    };
    let report = topology::import(&target, &definitions).await?;
    Ok(Json(report).into_response())
}

/// Imports with the broker's own declares, as a connection of its own, with the user's
/// permissions in each item's vhost.
struct BrokerTarget {
    broker: Arc<Broker>,
    conn: ConnId,
    user: AuthenticatedUser,
    default_vhost: String,
}

impl BrokerTarget {
    /// The item's vhost, its namespace, and `Ok` once the user holds `permission` on `name`
    /// of `kind` there.
    fn check(
        &self,
        vhost: &Option<String>,
        checks: &[(Permission, ResourceKind, &str)],
    ) -> Result<Namespace, RequestError> {
        let vhost = vhost.as_deref().unwrap_or(&self.default_vhost);
        let vhost = VhostName::new(vhost).map_err(|e| RequestError::invalid(e.to_string()))?;
        let principal = self.user.principal(&vhost).ok_or_else(|| {
            RequestError::new(
                ErrorCode::AccessRefused,
                format!("user '{}' has no access to vhost '{vhost}'", self.user.name),
            )
        })?;
        for (permission, kind, name) in checks {
            principal.check(*permission, *kind, name)?;
        }
        let ns = Namespace::of_vhost(vhost.as_str());
        self.broker.open_vhost(&ns);
        Ok(ns)
    }
}

impl ImportTarget for BrokerTarget {
    async fn declare_exchange(&self, x: &ExchangeDefinition) -> Result<(), RequestError> {
        let mut checks = vec![(
            Permission::Configure,
            ResourceKind::Exchange,
            x.name.as_str(),
        )];
        if let Some(alternate) = &x.alternate_exchange {
            checks.push((Permission::Write, ResourceKind::Exchange, alternate));
            checks.push((Permission::Read, ResourceKind::Exchange, &x.name));
        }
        let ns = self.check(&x.vhost, &checks)?;
        let request = DeclareExchange {
            name: ns.qualify(&x.name)?.into_owned(),
            kind: x.kind.into(),
            durable: true,
            auto_delete: x.auto_delete,
            passive: false,
            alternate_exchange: x.alternate_exchange.clone(),
            hash_header: x.hash_header.clone(),
        };
        let limits = self.broker.vhost_limits(ns.vhost());
        // Writes the topology file durably: off the runtime's worker, as sessions do.
        tokio::task::block_in_place(|| self.broker.declare_exchange(request, &limits))
            .map_err(|e| localize(&ns, e))
    }

    async fn declare_queue(&self, q: &QueueDefinition) -> Result<(), RequestError> {
        let mut checks = vec![(Permission::Configure, ResourceKind::Queue, q.name.as_str())];
        let arguments: QueueArguments = (&q.arguments).into();
        if let Some(dlx) = &arguments.dead_letter_exchange {
            checks.push((Permission::Write, ResourceKind::Exchange, dlx));
            checks.push((Permission::Read, ResourceKind::Queue, &q.name));
        }
        let ns = self.check(&q.vhost, &checks)?;
        let request = DeclareQueue {
            name: ns.qualify(&q.name)?.into_owned(),
            durable: true,
            exclusive: false,
            auto_delete: q.auto_delete,
            passive: false,
            arguments,
        };
        let limits = self.broker.vhost_limits(ns.vhost());
        tokio::task::block_in_place(|| self.broker.declare_queue(self.conn, request, &limits))
            .map(drop)
            .map_err(|e| localize(&ns, e))
    }

    async fn bind(&self, b: &BindingDefinition) -> Result<(), RequestError> {
        let ns = self.check(
            &b.vhost,
            &[
                (Permission::Write, ResourceKind::Queue, &b.queue),
                (Permission::Read, ResourceKind::Exchange, &b.exchange),
            ],
        )?;
        let binding = Binding {
            queue: ns.qualify(&b.queue)?.into_owned(),
            exchange: ns.qualify(&b.exchange)?.into_owned(),
            routing_key: b.routing_key.clone(),
            arguments: b.header_arguments()?,
        };
        tokio::task::block_in_place(|| self.broker.bind(self.conn, binding, true))
            .map_err(|e| localize(&ns, e))
    }
}

fn localize(ns: &Namespace, mut e: RequestError) -> RequestError {
    e.message = ns.localize(e.message);
    e
}
