//! `/api/bindings`: list, bind and unbind.

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use sluice_client::wire::{HeaderValue, Headers, ListBindings};

use super::access::{Scope, Visible, WithVhost};
use super::error::{ApiError, JsonBody};
use super::Api;
use crate::admin;
use crate::auth::{Permission, ResourceKind};
use crate::cli::format::{BindingJson, HeadersJson};
use crate::error::RequestError;
use crate::routing::Binding;
use crate::topology::header_value_from_json;

/// `GET /api/bindings`: every explicit binding, as `sluice bindings --json` prints them.
pub async fn list(State(api): State<Api>, visible: Visible) -> Response {
    let mut all = admin::list_bindings(&api.broker, None, &ListBindings::default(), u32::MAX);
    let mut vhosts = Vec::new();
    all.bindings.retain_mut(|b| {
        let Some(exchange) = visible.show(&b.exchange) else {
            return false;
        };
        vhosts.push(exchange.vhost.to_owned());
        b.exchange = exchange.local.to_owned();
        b.queue = crate::routing::namespace::split(&b.queue).local.to_owned();
        true
    });
    let json: Vec<WithVhost<'_, BindingJson<'_>>> = all
        .bindings
        .iter()
        .zip(&vhosts)
        .map(|(b, vhost)| WithVhost {
            vhost,
            item: BindingJson::from(b),
        })
        .collect();
    Json(json).into_response()
}

/// The body of `POST` and `DELETE /api/bindings`: the binding, in the shape it is listed in.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BindingBody {
    exchange: String,
    queue: String,
    #[serde(default)]
    routing_key: String,
    #[serde(default)]
    arguments: serde_json::Map<String, serde_json::Value>,
    /// Weighted and consistent-hash exchanges: the binding's `x-weight`, as a shorthand.
    weight: Option<u32>,
}

impl BindingBody {
    fn into_binding(self) -> Result<Binding, RequestError> {
        let mut arguments = self
            .arguments
            .into_iter()
            .filter(|(k, _)| self.weight.is_none() || k != sluice_client::WEIGHT_ARGUMENT)
            .map(|(k, v)| header_value(&k, v).map(|v| (k, v)))
            .collect::<Result<Headers, _>>()?;
        if let Some(weight) = self.weight {
            sluice_client::set_weight(&mut arguments, weight);
        }
        Ok(Binding {
            queue: self.queue,
            exchange: self.exchange,
            routing_key: self.routing_key,
            arguments,
        })
    }
}

/// A binding argument from JSON, the inverse of how listings print it (see
/// [`header_value_from_json`]).
fn header_value(key: &str, v: serde_json::Value) -> Result<HeaderValue, RequestError> {
    header_value_of("binding argument", key, v)
}

/// A header value from JSON (`what` names the table in errors), as
/// [`header_value_from_json`] reads it.
pub(super) fn header_value_of(
    what: &str,
    key: &str,
    v: serde_json::Value,
) -> Result<HeaderValue, RequestError> {
    header_value_from_json(key, &v).map_err(|e| RequestError::invalid(format!("{what} {e}")))
}

/// `POST /api/bindings`: binds the queue to the exchange.
pub async fn bind(
    State(api): State<Api>,
    scope: Scope,
    JsonBody(body): JsonBody<BindingBody>,
) -> Result<Response, ApiError> {
    change(&api, &scope, body, true)
}

/// `DELETE /api/bindings`: removes the binding (nothing to remove is not an error).
pub async fn unbind(
    State(api): State<Api>,
    scope: Scope,
    JsonBody(body): JsonBody<BindingBody>,
) -> Result<Response, ApiError> {
    change(&api, &scope, body, false)
}

/// Binding writes to the queue and reads from the exchange (as RabbitMQ).
fn change(api: &Api, scope: &Scope, body: BindingBody, bind: bool) -> Result<Response, ApiError> {
    let binding = body.into_binding()?;
    let internal = Binding {
        queue: scope.grant(Permission::Write, ResourceKind::Queue, &binding.queue)?,
        exchange: scope.grant(Permission::Read, ResourceKind::Exchange, &binding.exchange)?,
        ..binding.clone()
    };
    let conn = api.broker.next_conn_id();
    // Writes the topology file durably: off the runtime's worker, as sessions do.
    tokio::task::block_in_place(|| api.broker.bind(conn, internal, bind))
        .map_err(|e| scope.localize(e))?;
    let json = BindingJson {
        exchange: &binding.exchange,
        queue: &binding.queue,
        routing_key: &binding.routing_key,
        arguments: HeadersJson(&binding.arguments),
    };
    Ok(Json(json).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binding_arguments_read_back_what_listings_print() {
        let body: BindingBody = serde_json::from_str(
            r#"{"exchange":"x","queue":"q","arguments":
                {"x-match":"any","n":-4,"ok":true,"raw":{"bytes":"00ff"}}}"#,
        )
        .unwrap();
        let binding = body.into_binding().unwrap();
        assert_eq!(binding.routing_key, "");
        let printed = serde_json::to_value(HeadersJson(&binding.arguments)).unwrap();
        assert_eq!(
            printed,
            serde_json::json!({"x-match":"any","n":-4,"ok":true,"raw":{"bytes":"00ff"}})
        );
        for bad in [
            r#"18446744073709551615"#,
            r#"{"bytes":"0"}"#,
            r#"{"bytes":"zz"}"#,
            r#"{"timestamp":1.5}"#,
        ] {
            let v: serde_json::Value = serde_json::from_str(bad).unwrap();
            assert!(header_value("k", v).is_err(), "{bad}");
        }
    }
}
