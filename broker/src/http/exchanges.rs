//! `/api/exchanges`: list, declare and delete exchanges.

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;
use sluice_client::wire::{DeclareExchange, ErrorCode, ExchangeKind, ListExchanges};

use super::access::{Scope, Visible, WithVhost};
use super::error::{flag, ApiError, JsonBody, QueryParams};
use super::Api;
use crate::admin;
use crate::auth::{Permission, ResourceKind};
use crate::cli::format::{kind_name, ExchangeJson};
use crate::error::RequestError;
use crate::topology::KindName;

/// `GET /api/exchanges`: every exchange, the default one (`""`) first, as
/// `sluice exchanges --json` prints them.
pub async fn list(State(api): State<Api>, visible: Visible) -> Response {
    let mut all = admin::list_exchanges(&api.broker, None, &ListExchanges::default(), u32::MAX);
    let mut vhosts = Vec::new();
    all.exchanges.retain_mut(|x| match visible.show(&x.name) {
        Some(name) => {
            vhosts.push(name.vhost.to_owned());
            x.name = name.local.to_owned();
            true
        }
        None => false,
    });
    let json: Vec<WithVhost<'_, ExchangeJson<'_>>> = all
        .exchanges
        .iter()
        .zip(&vhosts)
        .map(|(x, vhost)| WithVhost {
            vhost,
            item: ExchangeJson::from(x),
        })
        .collect();
    Json(json).into_response()
}

/// The body of `PUT /api/exchanges/NAME`.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExchangeDeclaration {
    kind: KindName,
    #[serde(default = "yes")]
    durable: bool,
    #[serde(default)]
    auto_delete: bool,
    alternate_exchange: Option<String>,
    hash_header: Option<String>,
}

fn yes() -> bool {
    true
}

/// `PUT /api/exchanges/NAME`: declares the exchange (durable unless told otherwise).
pub async fn declare(
    State(api): State<Api>,
    scope: Scope,
    Path(name): Path<String>,
    JsonBody(body): JsonBody<ExchangeDeclaration>,
) -> Result<Response, ApiError> {
    let kind = ExchangeKind::from(body.kind);
    let internal = scope.grant(Permission::Configure, ResourceKind::Exchange, &name)?;
    if let Some(alternate) = &body.alternate_exchange {
        scope.check(Permission::Write, ResourceKind::Exchange, alternate)?;
        scope.check(Permission::Read, ResourceKind::Exchange, &name)?;
    }
    let request = DeclareExchange {
        name: internal,
        kind,
        durable: body.durable,
        auto_delete: body.auto_delete,
        passive: false,
        alternate_exchange: body.alternate_exchange,
        hash_header: body.hash_header,
    };
    // Writes the topology file durably: off the runtime's worker, as sessions do.
    let limits = api.broker.vhost_limits(scope.vhost());
    tokio::task::block_in_place(|| api.broker.declare_exchange(request, &limits))
        .map_err(|e| scope.localize(e))?;
    Ok(Json(json!({ "exchange": name, "kind": kind_name(kind) })).into_response())
}

/// The query of `DELETE /api/exchanges/NAME`.
#[derive(Debug, serde::Deserialize)]
pub struct DeleteConditions {
    if_unused: Option<String>,
}

/// `DELETE /api/exchanges/NAME` (`?if_unused`): deletes the exchange and its bindings.
pub async fn delete(
    State(api): State<Api>,
    scope: Scope,
    Path(name): Path<String>,
    QueryParams(conditions): QueryParams<DeleteConditions>,
) -> Result<Response, ApiError> {
    let if_unused = flag("if_unused", conditions.if_unused.as_deref())?;
    let internal = scope.grant(Permission::Configure, ResourceKind::Exchange, &name)?;
    if api.broker.read().routing.exchange(&internal).is_none() {
        let missing = RequestError::new(ErrorCode::NotFound, format!("no exchange '{name}'"));
        return Err(missing.into());
    }
    tokio::task::block_in_place(|| api.broker.delete_exchange(&internal, if_unused))
        .map_err(|e| scope.localize(e))?;
    Ok(Json(json!({ "exchange": name, "deleted": true })).into_response())
}
