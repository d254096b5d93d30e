//! `/api/queues/NAME/chaos` and `/api/chaos`: chaos injection per queue (docs/chaos.md).
//! Setting and clearing need the administrator tag; the listing shows the vhosts the user
//! sees. A queue's chaos state is also in `GET /api/queues` and `GET /api/queues/NAME`.

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};
use sluice_client::wire::{
    ChaosDelay, ChaosPlan, ChaosRate, DelayChaos, DropChaos, FailPublishChaos, ShortLeaseChaos,
};

use super::access::{Scope, Visible, WithVhost};
use super::auth::Administrator;
use super::error::{ApiError, JsonBody};
use super::Api;
use crate::auth::ResourceKind;
use crate::cli::chaos::{chaos_json, parse_code};
use crate::error::RequestError;
use crate::queue::QueueHandle;

/// The body of `PUT /api/queues/NAME/chaos`: a duration and at least one mode.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChaosBody {
    /// How long the injection runs (1 ms to 24 h).
    duration_ms: u64,
    #[serde(default)]
    delay: Option<DelayBody>,
    #[serde(default)]
    drop: Option<DropBody>,
    #[serde(default)]
    duplicate: Option<RateBody>,
    #[serde(default)]
    fail_publish: Option<FailBody>,
    #[serde(default)]
    short_lease: Option<LeaseBody>,
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct DelayBody {
    #[serde(default = "every")]
    percent: f64,
    /// `fixed:MS`, `uniform:MIN-MAX` or `exponential:MEAN`.
    distribution: String,
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct DropBody {
    percent: f64,
    #[serde(default = "one_second")]
    redeliver_after_ms: u32,
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RateBody {
    percent: f64,
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct FailBody {
    percent: f64,
    #[serde(default = "internal_error")]
    code: String,
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct LeaseBody {
    percent: f64,
    #[serde(default = "one_second")]
    lease_ms: u32,
}

fn every() -> f64 {
    100.0
}

fn one_second() -> u32 {
    1000
}

fn internal_error() -> String {
    "INTERNAL_ERROR".into()
}

fn rate(mode: &str, percent: f64) -> Result<ChaosRate, RequestError> {
    ChaosRate::from_percent(percent).ok_or_else(|| {
        RequestError::invalid(format!("chaos {mode}: {percent}% is not between 0 and 100"))
    })
}

impl ChaosBody {
    fn plan(&self) -> Result<ChaosPlan, RequestError> {
        let delay = match &self.delay {
            Some(d) => Some(DelayChaos {
                rate: rate("delay", d.percent)?,
                delay: ChaosDelay::parse(&d.distribution)
                    .map_err(|e| RequestError::invalid(format!("chaos delay: {e}")))?,
            }),
            None => None,
        };
        let drop = match &self.drop {
            Some(d) => Some(DropChaos {
                rate: rate("drop", d.percent)?,
                redeliver_after_ms: d.redeliver_after_ms,
            }),
            None => None,
        };
        let duplicate = match &self.duplicate {
            Some(d) => Some(rate("duplicate", d.percent)?),
            None => None,
        };
        let fail_publish = match &self.fail_publish {
            Some(f) => Some(FailPublishChaos {
                rate: rate("fail_publish", f.percent)?,
                code: parse_code(&f.code)
                    .map_err(|e| RequestError::invalid(format!("chaos fail_publish: {e}")))?,
            }),
            None => None,
        };
        let short_lease = match &self.short_lease {
            Some(l) => Some(ShortLeaseChaos {
                rate: rate("short_lease", l.percent)?,
                lease_ms: l.lease_ms,
            }),
            None => None,
        };
        Ok(ChaosPlan {
            delay,
            drop,
            duplicate,
            fail_publish,
            short_lease,
        })
    }
}

/// A queue's chaos state as the queue JSON of the API shows it, named `shown`.
pub(super) fn queue_chaos(q: &QueueHandle, shown: &str) -> Value {
    chaos_json(
        &crate::chaos::entry_of(q, shown),
        crate::queue::unix_now_ms(),
    )
}

/// `PUT /api/queues/NAME/chaos` (administrators): starts or replaces the queue's injection;
/// answers its chaos state.
pub async fn set(
    State(api): State<Api>,
    _admin: Administrator,
    scope: Scope,
    Path(name): Path<String>,
    JsonBody(body): JsonBody<ChaosBody>,
) -> Result<Response, ApiError> {
    let internal = scope.grant_any(ResourceKind::Queue, &name)?;
    let plan = body.plan()?;
    let conn = api.broker.next_conn_id();
    crate::chaos::set(&api.broker, conn, &internal, plan, body.duration_ms)
        .await
        .map_err(|e| scope.localize(e))?;
    let entry = crate::chaos::entry(&api.broker, &internal, &name)
        .ok_or_else(|| scope.localize(RequestError::no_queue(&internal)))?;
    let item = chaos_json(&entry, crate::queue::unix_now_ms());
    Ok(Json(WithVhost {
        vhost: scope.vhost(),
        item,
    })
    .into_response())
}

/// `DELETE /api/queues/NAME/chaos` (administrators): ends the queue's injection now.
pub async fn clear(
    State(api): State<Api>,
    _admin: Administrator,
    scope: Scope,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let internal = scope.grant_any(ResourceKind::Queue, &name)?;
    let conn = api.broker.next_conn_id();
    let was_active = crate::chaos::clear(&api.broker, conn, &internal)
        .await
        .map_err(|e| scope.localize(e))?;
    Ok(
        Json(json!({ "vhost": scope.vhost(), "queue": name, "was_active": was_active }))
            .into_response(),
    )
}

/// `GET /api/chaos`: the queues (of the vhosts the user sees) with an injection running or
/// with chaos counters since the broker started.
pub async fn list(State(api): State<Api>, visible: Visible) -> Response {
    let now = crate::queue::unix_now_ms();
    let all = crate::chaos::list(&api.broker, None);
    let json: Vec<Value> = all
        .entries
        .into_iter()
        .filter_map(|mut e| {
            let name = visible.show(&e.queue)?;
            let vhost = name.vhost.to_owned();
            e.queue = name.local.to_owned();
            let mut v = chaos_json(&e, now);
            if let Some(obj) = v.as_object_mut() {
                obj.insert("vhost".into(), Value::String(vhost));
            }
            Some(v)
        })
        .collect();
    Json(json).into_response()
}
