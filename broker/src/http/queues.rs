//! `/api/queues`: list, show, declare, delete and purge queues.
//!
//! The API is not a connection of the wire protocol, so each request acts as a connection of
//! its own: it may not touch another connection's exclusive queue (`RESOURCE_LOCKED`), and it
//! cannot declare an exclusive queue, which would belong to nobody.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;
use sluice_client::wire::{DeclareQueue, ListQueues, Overflow, QueueArguments, Reply, RequestId};
use tokio::sync::{mpsc, oneshot};

use super::access::{Scope, Visible, WithVhost};
use super::error::{flag, ApiError, JsonBody, QueryParams};
use super::history::Rates;
use super::Api;
use crate::admin;
use crate::auth::{Permission, ResourceKind};
use crate::broker::ReplicationStatus;
use crate::cli::format::{InspectJson, QueueJson};
use crate::error::RequestError;
use crate::metrics::MessageStats;
use crate::queue::{ConnEvent, ConnLink, DeathReason, Outbox, QueueCmd};
use crate::routing::namespace;

/// Longest wait for a queue's answer; a queue stuck on its disk must not hold a request (and
/// its socket) forever.
const QUEUE_ANSWER_TIMEOUT: Duration = Duration::from_secs(30);

/// A queue as the CLI's `--json` shows it, with its message counters since the start.
#[derive(Debug, serde::Serialize)]
struct WithStats<T> {
    #[serde(flatten)]
    queue: T,
    message_stats: MessageStats,
}

/// The message counters of queue `name` now (zeros if it was deleted meanwhile).
fn message_stats(api: &Api, name: &str) -> MessageStats {
    api.broker
        .read()
        .queues
        .get(name)
        .map(|q| MessageStats::of(&q.meta.stats))
        .unwrap_or_default()
}

/// One queue of `GET /api/queues`: with its publish, deliver and ack rates over the history's
/// latest sample (`null` before its first), to a tenth of a message per second; the queues'
/// own `publish_rate` and `ack_rate` are whole numbers, and there is no deliver rate beside
/// them.
#[derive(serde::Serialize)]
struct Listed<'a> {
    #[serde(flatten)]
    queue: WithStats<QueueJson<'a>>,
    rates: Option<Rates>,
    /// Messages waiting for their time (not in `ready`).
    scheduled: u64,
    /// A replicated queue's leader and replicas (absent for a local queue).
    #[serde(flatten)]
    replication: Option<ReplicationStatus>,
    /// Its chaos injection and counters (`http/chaos.rs`); `null` if chaos never touched it.
    chaos: serde_json::Value,
}

/// `GET /api/queues`: every queue, as `sluice queues --json` prints them, with their
/// `message_stats` and sampled `rates`.
pub async fn list(State(api): State<Api>, visible: Visible) -> Response {
    // In-process there is no frame to fit: one page holds everything.
    let mut all = admin::list_queues(&api.broker, None, &ListQueues::default(), u32::MAX);
    all.queues.retain(|q| visible.show(&q.name).is_some());
    let rates = api
        .history
        .latest_rates(all.queues.iter().map(|q| q.name.as_str()));
    let registry = api.broker.read();
    let stats: Vec<(MessageStats, u64, Option<ReplicationStatus>)> = all
        .queues
        .iter()
        .map(|q| {
            registry
                .queues
                .get(q.name.as_str())
                .map(|h| {
                    let scheduled = h.meta.stats.scheduled.load(Ordering::Relaxed);
                    let replication = api.broker.replication_status(&h.meta);
                    (MessageStats::of(&h.meta.stats), scheduled, replication)
                })
                .unwrap_or_default()
        })
        .collect();
    let chaos: Vec<serde_json::Value> = all
        .queues
        .iter()
        .map(|q| {
            let local = namespace::split(&q.name).local;
            registry
                .queues
                .get(q.name.as_str())
                // Untouched queues (nearly all) carry `null`: ten thousand queues do not
                // each add a chaos object to every poll of the list.
                .filter(|h| h.meta.stats.chaos.touched())
                .map_or(serde_json::Value::Null, |h| {
                    super::chaos::queue_chaos(h, local)
                })
        })
        .collect();
    // Names in their vhost's terms from here on.
    let vhosts: Vec<String> = all
        .queues
        .iter_mut()
        .map(|q| {
            let name = namespace::split(&q.name);
            let vhost = name.vhost.to_owned();
            q.name = name.local.to_owned();
            vhost
        })
        .collect();
    let json: Vec<WithVhost<'_, Listed<'_>>> = all
        .queues
        .iter()
        .zip(rates)
        .zip(stats)
        .zip(&vhosts)
        .zip(chaos)
        .map(
            |((((q, rates), (message_stats, scheduled, replication)), vhost), chaos)| WithVhost {
                vhost,
                item: Listed {
                    queue: WithStats {
                        queue: QueueJson::from(q),
                        message_stats,
                    },
                    rates,
                    scheduled,
                    replication,
                    chaos,
                },
            },
        )
        .collect();
    Json(json).into_response()
}

/// `GET /api/queues/NAME`: the queue's counters and arguments, as `sluice inspect --json`.
pub async fn show(
    State(api): State<Api>,
    scope: Scope,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let internal = scope.grant_any(ResourceKind::Queue, &name)?;
    let reply = ask_queue(&api, &internal, |conn, request_id| QueueCmd::Inspect {
        conn,
        request_id,
    })
    .await
    .map_err(|e| scope.localize(e))?;
    match reply {
        Reply::InspectQueueOk(q) => Ok(Json(WithVhost {
            vhost: scope.vhost(),
            item: QueueDetail {
                queue: WithStats {
                    queue: InspectJson::from(&q),
                    message_stats: message_stats(&api, &internal),
                },
                dead_lettered_by_reason: dead_lettered_by_reason(&api, &internal),
                replication: replication_status(&api, &internal),
                chaos: queue_chaos(&api, &internal, &name),
            },
        })
        .into_response()),
        other => Err(unexpected(&other)),
    }
}

/// One queue as `GET /api/queues/NAME` shows it: with why its messages were dead-lettered,
/// which the dashboard shows beside a dead-letter queue's contents.
#[derive(Debug, serde::Serialize)]
struct QueueDetail<T> {
    #[serde(flatten)]
    queue: WithStats<T>,
    dead_lettered_by_reason: BTreeMap<&'static str, u64>,
    /// A replicated queue's leader and replicas (absent for a local queue).
    #[serde(flatten)]
    replication: Option<ReplicationStatus>,
    /// Its chaos injection and counters (`http/chaos.rs`).
    chaos: serde_json::Value,
}

/// Queue `name`'s chaos state, shown as `shown`.
fn queue_chaos(api: &Api, name: &str, shown: &str) -> serde_json::Value {
    let queue = api.broker.read().queues.get(name).cloned();
    queue.map_or(serde_json::Value::Null, |q| {
        super::chaos::queue_chaos(&q, shown)
    })
}

/// Where queue `name`'s replicas are, if it is replicated.
fn replication_status(api: &Api, name: &str) -> Option<ReplicationStatus> {
    let queue = api.broker.read().queues.get(name).cloned()?;
    api.broker.replication_status(&queue.meta)
}

/// Messages dead-lettered from queue `name` since the start, by `x-death-reason`.
fn dead_lettered_by_reason(api: &Api, name: &str) -> BTreeMap<&'static str, u64> {
    let registry = api.broker.read();
    let Some(queue) = registry.queues.get(name) else {
        return BTreeMap::new();
    };
    DeathReason::ALL
        .iter()
        .map(|&r| {
            let n = queue.meta.stats.dead_lettered[r as usize].load(Ordering::Relaxed);
            (r.as_str(), n)
        })
        .collect()
}

/// The body of `PUT /api/queues/NAME`; every field may be left out.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueDeclaration {
    #[serde(default = "yes")]
    durable: bool,
    #[serde(default)]
    exclusive: bool,
    #[serde(default)]
    auto_delete: bool,
    #[serde(default)]
    arguments: ArgumentsBody,
}

fn yes() -> bool {
    true
}

/// Queue arguments, named as in `sluice inspect --json`.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ArgumentsBody {
    max_length: Option<u64>,
    max_length_bytes: Option<u64>,
    overflow: Option<OverflowName>,
    message_ttl_ms: Option<u64>,
    dead_letter_exchange: Option<String>,
    dead_letter_routing_key: Option<String>,
    ack_timeout_ms: Option<u64>,
    delivery_limit: Option<u32>,
    expires_ms: Option<u64>,
    max_message_bytes: Option<u32>,
    max_priority: Option<u8>,
    retry_backoff: Option<crate::topology::RetryBackoffJson>,
    dedup_window_ms: Option<u64>,
    dedup_window_count: Option<u32>,
    /// Nodes of a cluster that hold the queue (1 to 7).
    replicas: Option<u8>,
    /// `true` turns it on; `false` is the same as absent.
    single_active_consumer: Option<bool>,
}

/// What a queue does at its length limit, as `declare-queue --overflow` names it.
#[derive(Debug, Clone, Copy, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
enum OverflowName {
    DropHead,
    RejectPublish,
    RejectPublishDlx,
}

impl From<ArgumentsBody> for QueueArguments {
    fn from(a: ArgumentsBody) -> Self {
        QueueArguments {
            max_length: a.max_length,
            max_length_bytes: a.max_length_bytes,
            overflow: a.overflow.map(|o| match o {
                OverflowName::DropHead => Overflow::DropHead,
                OverflowName::RejectPublish => Overflow::RejectPublish,
                OverflowName::RejectPublishDlx => Overflow::RejectPublishDlx,
            }),
            message_ttl_ms: a.message_ttl_ms,
            dead_letter_exchange: a.dead_letter_exchange,
            dead_letter_routing_key: a.dead_letter_routing_key,
            ack_timeout_ms: a.ack_timeout_ms,
            delivery_limit: a.delivery_limit,
            expires_ms: a.expires_ms,
            max_message_bytes: a.max_message_bytes,
            max_priority: a.max_priority,
            retry_backoff: a.retry_backoff.map(Into::into),
            dedup_window_ms: a.dedup_window_ms,
            dedup_window_count: a.dedup_window_count,
            replicas: a.replicas,
            single_active_consumer: a.single_active_consumer.and_then(|on| on.then_some(1)),
        }
    }
}

/// `PUT /api/queues/NAME`: declares the queue (durable unless told otherwise); declaring it
/// again with the same settings is a no-op, with others `PRECONDITION_FAILED`.
pub async fn declare(
    State(api): State<Api>,
    scope: Scope,
    Path(name): Path<String>,
    JsonBody(body): JsonBody<QueueDeclaration>,
) -> Result<Response, ApiError> {
    let internal = scope.grant(Permission::Configure, ResourceKind::Queue, &name)?;
    if let Some(dlx) = &body.arguments.dead_letter_exchange {
        scope.check(Permission::Write, ResourceKind::Exchange, dlx)?;
        scope.check(Permission::Read, ResourceKind::Queue, &name)?;
    }
    if body.exclusive {
        return Err(RequestError::invalid(
            "exclusive queues belong to a client connection: declare them over the wire protocol",
        )
        .into());
    }
    let request = DeclareQueue {
        name: internal,
        durable: body.durable,
        exclusive: false,
        auto_delete: body.auto_delete,
        passive: false,
        arguments: body.arguments.into(),
    };
    let broker = Arc::clone(&api.broker);
    let conn = broker.next_conn_id();
    // The declare writes the topology file durably: off the runtime's worker, as sessions do.
    let limits = broker.vhost_limits(scope.vhost());
    let ok = tokio::task::block_in_place(|| broker.declare_queue(conn, request, &limits))
        .map_err(|e| scope.localize(e))?;
    let name = namespace::split(&ok.name).local;
    Ok(Json(json!({ "name": name, "ready": ok.ready, "consumers": ok.consumers })).into_response())
}

/// The query of `DELETE /api/queues/NAME`: `?if_unused&if_empty` (bare, or `=true`/`=false`).
#[derive(Debug, serde::Deserialize)]
pub struct DeleteConditions {
    if_unused: Option<String>,
    if_empty: Option<String>,
}

/// `DELETE /api/queues/NAME`: deletes the queue and its messages.
pub async fn delete(
    State(api): State<Api>,
    scope: Scope,
    Path(name): Path<String>,
    QueryParams(conditions): QueryParams<DeleteConditions>,
) -> Result<Response, ApiError> {
    let if_unused = flag("if_unused", conditions.if_unused.as_deref())?;
    let if_empty = flag("if_empty", conditions.if_empty.as_deref())?;
    let internal = scope.grant(Permission::Configure, ResourceKind::Queue, &name)?;
    let conn = api.broker.next_conn_id();
    let queue = api
        .broker
        .queue(&internal, conn)
        .map_err(|e| scope.localize(e))?;
    let (reply, answer) = oneshot::channel();
    if !queue.send(QueueCmd::Delete {
        if_unused,
        if_empty,
        reply,
    }) {
        return Err(RequestError::no_queue(&name).into());
    }
    let messages = match tokio::time::timeout(QUEUE_ANSWER_TIMEOUT, answer).await {
        Ok(Ok(result)) => result.map_err(|e| scope.localize(e))?,
        // The task stopped before answering: another request deleted the queue first.
        Ok(Err(_)) => return Err(RequestError::no_queue(&name).into()),
        Err(_) => return Err(no_answer(&name)),
    };
    Ok(Json(json!({ "queue": name, "messages": messages })).into_response())
}

/// `DELETE /api/queues/NAME/contents`: purges the queue's ready messages.
pub async fn purge(
    State(api): State<Api>,
    scope: Scope,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let internal = scope.grant(Permission::Read, ResourceKind::Queue, &name)?;
    let reply = ask_queue(&api, &internal, |conn, request_id| QueueCmd::Purge {
        conn,
        request_id,
    })
    .await
    .map_err(|e| scope.localize(e))?;
    match reply {
        Reply::PurgeQueueOk(ok) => {
            Ok(Json(json!({ "queue": name, "messages": ok.messages })).into_response())
        }
        other => Err(unexpected(&other)),
    }
}

/// Sends the queue `name` a command that answers through a connection's event channel, as
/// a connection of its own, and waits (bounded) for the answer.
pub(super) async fn ask_queue(
    api: &Api,
    name: &str,
    cmd: impl FnOnce(Arc<ConnLink>, RequestId) -> QueueCmd,
) -> Result<Reply, ApiError> {
    let conn = api.broker.next_conn_id();
    let queue = api.broker.queue(name, conn)?;
    // One answer comes back; the queue drops the link after sending it.
    let (events, mut answers) = mpsc::unbounded_channel();
    let request_id = RequestId(1);
    // Its own outbox: the answer is no delivery, and nothing else counts against it.
    let link = ConnLink::new(conn, events, Arc::new(Outbox::default()));
    if !queue.send(cmd(link, request_id)) {
        return Err(RequestError::no_queue(name).into());
    }
    match tokio::time::timeout(QUEUE_ANSWER_TIMEOUT, answers.recv()).await {
        Ok(Some(ConnEvent::Reply { reply, .. })) => Ok(reply),
        Ok(Some(ConnEvent::Error { error, .. })) => Err(error.into()),
        Ok(Some(other)) => {
            Err(RequestError::internal(format!("queue '{name}' answered with {other:?}")).into())
        }
        // The task stopped without answering: the queue was deleted meanwhile.
        Ok(None) => Err(RequestError::no_queue(name).into()),
        Err(_) => Err(no_answer(name)),
    }
}

fn no_answer(name: &str) -> ApiError {
    RequestError::internal(format!(
        "queue '{name}' did not answer within {} s",
        QUEUE_ANSWER_TIMEOUT.as_secs()
    ))
    .into()
}

pub(super) fn unexpected(reply: &Reply) -> ApiError {
    RequestError::internal(format!("unexpected answer from the queue: {reply:?}")).into()
}
