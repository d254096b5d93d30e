//! Publish and get for debugging: `POST /api/exchanges/NAME/publish` and
//! `POST /api/queues/NAME/get`.
//!
//! Both act as a connection of their own, through the broker's own paths: a publish is checked
//! and routed by the same code as a wire `Publish` and stored by the queues like any other, and
//! answered only once it is durable; a get takes messages with the queue's `Get` and acks or
//! returns them before it answers.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine;
use bytes::Bytes;
use serde_json::json;
use sluice_client::wire::{
    Delivery, Headers, MessageMeta, Properties, RequestId, MAX_GET_MANY_WAIT_MS,
};
use tokio::sync::mpsc;

use super::access::Scope;
use super::bindings::header_value_of;
use super::error::{ApiError, JsonBody};
use super::Api;
use crate::auth::{Permission, ResourceKind};
use crate::cli::format::HeadersJson;
use crate::error::RequestError;
use crate::publish::{route_message, ExchangeDoor, PublishLimits};
use crate::queue::PublishOrigin;
use crate::queue::{
    BatchLimit, ConnEvent, ConnId, ConnLink, Incoming, Outbox, QueueCmd, QueueHandle, Settlement,
};
use crate::routing::RouteResult;

/// How the default exchange (whose name is empty, which a path cannot hold) is named in
/// `POST /api/exchanges/NAME/publish`. New exchange names may not start with `amq.`, so it
/// names nothing else.
pub const DEFAULT_EXCHANGE_ALIAS: &str = "amq.default";
/// Most messages one `get` takes.
pub const MAX_GET_COUNT: u32 = 100;
/// Longest wait for a queue's answer or for durability.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);

/// How a payload is written in JSON.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PayloadEncoding {
    /// UTF-8 text, as it is.
    #[default]
    String,
    /// Any bytes, in standard base64.
    Base64,
}

/// The body of `POST /api/exchanges/NAME/publish`.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublishBody {
    #[serde(default)]
    routing_key: String,
    #[serde(default)]
    payload: String,
    #[serde(default)]
    payload_encoding: PayloadEncoding,
    #[serde(default)]
    properties: PropertiesBody,
    #[serde(default = "yes")]
    persistent: bool,
    #[serde(default)]
    mandatory: bool,
}

fn yes() -> bool {
    true
}

/// Message properties, named as in `sluice get --json`.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct PropertiesBody {
    content_type: Option<String>,
    content_encoding: Option<String>,
    message_id: Option<String>,
    correlation_id: Option<String>,
    reply_to: Option<String>,
    expiration_ms: Option<u64>,
    timestamp_ms: Option<u64>,
    priority: Option<u8>,
    #[serde(default)]
    headers: serde_json::Map<String, serde_json::Value>,
    /// Deliver no earlier than this Unix time (ms); not with `delay_ms`.
    deliver_at_ms: Option<u64>,
    /// Deliver no earlier than this long after the queue accepted it.
    delay_ms: Option<u64>,
}

impl PublishBody {
    fn payload(&self) -> Result<Bytes, RequestError> {
        match self.payload_encoding {
            PayloadEncoding::String => Ok(Bytes::from(self.payload.clone())),
            PayloadEncoding::Base64 => base64::engine::general_purpose::STANDARD
                .decode(&self.payload)
                .map(Bytes::from)
                .map_err(|e| RequestError::invalid(format!("payload is not base64: {e}"))),
        }
    }

    /// The message's meta block, as a client would have encoded it.
    fn meta(self, exchange: String) -> Result<Bytes, RequestError> {
        let p = self.properties;
        let headers = p
            .headers
            .into_iter()
            .map(|(k, v)| header_value_of("header", &k, v).map(|v| (k, v)))
            .collect::<Result<Headers, _>>()?;
        let meta = MessageMeta {
            exchange,
            routing_key: self.routing_key,
            mandatory: self.mandatory,
            properties: Properties {
                persistent: self.persistent,
                content_type: p.content_type,
                content_encoding: p.content_encoding,
                message_id: p.message_id,
                correlation_id: p.correlation_id,
                reply_to: p.reply_to,
                expiration_ms: p.expiration_ms,
                timestamp_ms: p.timestamp_ms,
                headers,
                priority: p.priority,
                deliver_at_ms: p.deliver_at_ms,
                delay_ms: p.delay_ms,
                trace_parent: None,
                trace_state: None,
            },
        };
        meta.to_bytes()
            .map_err(|e| RequestError::invalid(format!("message: {e}")))
    }
}

/// A link for a request that acts as a connection of its own, and where its answers arrive.
fn own_link(conn: ConnId) -> (Arc<ConnLink>, mpsc::UnboundedReceiver<ConnEvent>) {
    let (events, answers) = mpsc::unbounded_channel();
    // Its own outbox: nothing it receives is on its way to a socket.
    (
        ConnLink::new(conn, events, Arc::new(Outbox::default())),
        answers,
    )
}

async fn next_answer(
    answers: &mut mpsc::UnboundedReceiver<ConnEvent>,
    what: &str,
) -> Result<ConnEvent, RequestError> {
    match tokio::time::timeout(ANSWER_TIMEOUT, answers.recv()).await {
        Ok(Some(event)) => Ok(event),
        // The link's sender is held by the caller: only a timeout ends the wait.
        Ok(None) | Err(_) => Err(RequestError::internal(format!(
            "{what}: no answer within {} s",
            ANSWER_TIMEOUT.as_secs()
        ))),
    }
}

/// `POST /api/exchanges/NAME/publish`: publishes one message and answers once it is durable
/// in every queue it reached, with whether it reached any.
pub async fn publish(
    State(api): State<Api>,
    scope: Scope,
    Path(exchange): Path<String>,
    JsonBody(body): JsonBody<PublishBody>,
) -> Result<Response, ApiError> {
    let exchange = if exchange == DEFAULT_EXCHANGE_ALIAS {
        String::new()
    } else {
        exchange
    };
    let mut door = Granted {
        internal: scope.grant(Permission::Write, ResourceKind::Exchange, &exchange)?,
        max_message_len: api
            .broker
            .vhost_limits(scope.vhost())
            .max_message_bytes
            .map(|max| (max, scope.vhost())),
    };
    let payload = body.payload()?;
    let meta = body.meta(exchange)?;
    let broker = &api.broker;
    let blocking = if broker.is_blocked() {
        broker.flow_control().blocking()
    } else {
        None
    };
    let limits = PublishLimits {
        max_message_len: broker.config.max_message_len,
        blocking: blocking.as_ref(),
        headers: broker.config.limits.headers,
    };
    let (persistent, targets) = {
        let reg = broker.read();
        let mut route = RouteResult::default();
        let persistent = route_message(&reg, &meta, payload.len(), limits, &mut door, &mut route)
            .map_err(|e| scope.localize(e))?;
        let targets: Vec<QueueHandle> = route
            .queues
            .iter()
            .filter_map(|name| reg.queues.get(name).cloned())
            .collect();
        (persistent, targets)
    };
    let (link, mut answers) = own_link(broker.next_conn_id());
    let mut waiting = 0;
    for q in &targets {
        let messages = vec![Incoming {
            publish_seq: 1,
            meta: meta.clone(),
            body: payload.clone(),
            persistent,
            trace: None,
        }];
        let room = q.publish_room(&messages).await;
        if q.send(QueueCmd::Publish {
            conn: Arc::clone(&link),
            batch: 1,
            messages,
            room: Some(room),
            origin: PublishOrigin::Client,
        }) {
            waiting += 1;
        }
    }
    broker.note_published((meta.len() + payload.len()) * waiting);
    let mut epoch = 0;
    let mut refused = None;
    while waiting > 0 {
        if let ConnEvent::Stored {
            epoch: e,
            rejections,
            ..
        } = next_answer(&mut answers, "publish").await?
        {
            waiting -= 1;
            epoch = epoch.max(e);
            refused = refused.or(rejections.into_iter().next());
        }
    }
    if let Some(r) = refused {
        return Err(scope.localize(RequestError::new(r.code, r.message)));
    }
    if epoch > 0 {
        let durable = broker.store().durability().wait(epoch);
        if tokio::time::timeout(ANSWER_TIMEOUT, durable).await.is_err() {
            return Err(RequestError::internal(format!(
                "the message was stored but not synced within {} s; it may survive a crash",
                ANSWER_TIMEOUT.as_secs()
            ))
            .into());
        }
    }
    Ok(Json(json!({ "routed": !targets.is_empty() })).into_response())
}

/// The one exchange a debugging publish may name, already granted.
struct Granted<'a> {
    internal: String,
    max_message_len: Option<(u64, &'a str)>,
}

impl ExchangeDoor for Granted<'_> {
    fn open(&mut self, _exchange: &str) -> Result<&str, RequestError> {
        Ok(&self.internal)
    }

    fn max_message_len(&self) -> Option<(u64, &str)> {
        self.max_message_len
    }
}

/// The body of `POST /api/queues/NAME/get`.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GetBody {
    #[serde(default = "one")]
    count: u32,
    #[serde(default)]
    requeue: bool,
    /// Wait up to this long for a first message (a long poll, protocol.md §9.7).
    #[serde(default)]
    wait_ms: u64,
}

fn one() -> u32 {
    1
}

/// A get with `wait_ms`: one `GetMany` that answers once any message is ready or the wait
/// ends (an empty answer).
async fn long_poll(
    queue: &QueueHandle,
    link: &Arc<ConnLink>,
    answers: &mut mpsc::UnboundedReceiver<ConnEvent>,
    body: &GetBody,
    local: &str,
) -> Result<Vec<Delivery>, RequestError> {
    let wait = Duration::from_millis(body.wait_ms);
    let sent = queue.send(QueueCmd::GetMany {
        conn: Arc::clone(link),
        request_id: RequestId(1),
        limit: BatchLimit {
            max: body.count as usize,
            max_bytes: usize::MAX,
        },
        wait,
    });
    if !sent {
        return Err(RequestError::no_queue(local));
    }
    match tokio::time::timeout(wait + ANSWER_TIMEOUT, answers.recv()).await {
        Ok(Some(ConnEvent::GotMany { deliveries, .. })) => Ok(deliveries),
        Ok(Some(ConnEvent::Error { error, .. })) => Err(error),
        Ok(Some(other)) => Err(RequestError::internal(format!(
            "queue '{local}' answered {other:?}"
        ))),
        Ok(None) | Err(_) => Err(RequestError::internal(format!(
            "get: no answer within {} s",
            (wait + ANSWER_TIMEOUT).as_secs()
        ))),
    }
}

/// Returns whatever a get still holds to its queue when the request ends, however it ends (a
/// client that hangs up mid-request must not leave messages leased for half an hour).
struct ReturnOnDrop {
    queue: QueueHandle,
    conn: ConnId,
}

impl Drop for ReturnOnDrop {
    fn drop(&mut self) {
        self.queue
            .send(QueueCmd::ConnectionClosed { conn_id: self.conn });
    }
}

/// `POST /api/queues/NAME/get`: takes up to `count` ready messages and acks them, or with
/// `requeue` returns them (they are then marked redelivered), before answering with them.
pub async fn get(
    State(api): State<Api>,
    scope: Scope,
    Path(name): Path<String>,
    JsonBody(body): JsonBody<GetBody>,
) -> Result<Response, ApiError> {
    let local = name;
    let name = scope.grant(Permission::Read, ResourceKind::Queue, &local)?;
    if body.count == 0 || body.count > MAX_GET_COUNT {
        return Err(RequestError::invalid(format!(
            "count must be between 1 and {MAX_GET_COUNT}, not {}",
            body.count
        ))
        .into());
    }
    let conn = api.broker.next_conn_id();
    let queue = api
        .broker
        .queue(&name, conn)
        .map_err(|e| scope.localize(e))?;
    let (link, mut answers) = own_link(conn);
    let _return = ReturnOnDrop {
        queue: queue.clone(),
        conn,
    };
    if body.wait_ms > MAX_GET_MANY_WAIT_MS {
        return Err(RequestError::invalid(format!(
            "wait_ms must be at most {MAX_GET_MANY_WAIT_MS}, not {}",
            body.wait_ms
        ))
        .into());
    }
    let mut taken: Vec<Delivery> = Vec::new();
    // Without a wait, one `Get` at a time; with one, a single long poll takes them all.
    let mut gets = body.count;
    if body.wait_ms > 0 {
        taken = long_poll(&queue, &link, &mut answers, &body, &local)
            .await
            .map_err(|e| scope.localize(e))?;
        gets = 0;
    }
    for i in 0..gets {
        let request_id = RequestId(i + 1);
        if !queue.send(QueueCmd::Get {
            conn: Arc::clone(&link),
            request_id,
        }) {
            return Err(RequestError::no_queue(&local).into());
        }
        match next_answer(&mut answers, "get").await? {
            ConnEvent::Got {
                delivery: Some(d), ..
            } => taken.push(d),
            ConnEvent::Got { delivery: None, .. } => break,
            ConnEvent::Error { error, .. } => return Err(scope.localize(error)),
            other => {
                return Err(
                    RequestError::internal(format!("queue '{local}' answered {other:?}")).into(),
                )
            }
        }
    }
    // Shown first: a message that cannot be shown is not acked (it returns to the queue).
    let messages = taken
        .iter()
        .map(GotMessage::new)
        .collect::<Result<Vec<_>, _>>()?;
    if !body.requeue && !taken.is_empty() {
        queue.send(QueueCmd::Settle {
            conn: Arc::clone(&link),
            request_id: RequestId::NONE,
            deliveries: taken
                .iter()
                .map(|d| (d.delivery_tag.0, d.message_seq))
                .collect(),
            how: Settlement::Ack,
            reason: None,
        });
    }
    Ok(Json(messages).into_response())
}

/// One message of a get's answer.
#[derive(serde::Serialize)]
struct GotMessage {
    exchange: String,
    routing_key: String,
    redelivered: bool,
    delivery_count: u32,
    message_seq: u64,
    /// When the queue stored it (Unix ms, the broker's clock).
    enqueued_at_ms: u64,
    payload: String,
    /// `string` or `base64`, as a publish's `payload_encoding`.
    payload_encoding: &'static str,
    payload_bytes: usize,
    properties: PropertiesJson,
    headers: serde_json::Value,
}

/// A message's properties besides its headers.
#[derive(serde::Serialize)]
struct PropertiesJson {
    persistent: bool,
    content_type: Option<String>,
    content_encoding: Option<String>,
    message_id: Option<String>,
    correlation_id: Option<String>,
    reply_to: Option<String>,
    expiration_ms: Option<u64>,
    timestamp_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    priority: Option<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    deliver_at_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    delay_ms: Option<u64>,
}

impl GotMessage {
    fn new(d: &Delivery) -> Result<Self, RequestError> {
        let meta = MessageMeta::from_slice(&d.meta)
            .map_err(|e| RequestError::internal(format!("a stored meta block: {e}")))?;
        let (payload, payload_encoding, _) =
            crate::cli::messages::payload_text(&d.body, usize::MAX);
        let p = meta.properties;
        Ok(GotMessage {
            exchange: meta.exchange,
            routing_key: meta.routing_key,
            redelivered: d.redelivered,
            delivery_count: d.delivery_count,
            message_seq: d.message_seq,
            enqueued_at_ms: d.enqueued_at_ms,
            payload,
            payload_encoding,
            payload_bytes: d.body.len(),
            properties: PropertiesJson {
                persistent: p.persistent,
                content_type: p.content_type,
                content_encoding: p.content_encoding,
                message_id: p.message_id,
                correlation_id: p.correlation_id,
                reply_to: p.reply_to,
                expiration_ms: p.expiration_ms,
                timestamp_ms: p.timestamp_ms,
                priority: p.priority,
                deliver_at_ms: p.deliver_at_ms,
                delay_ms: p.delay_ms,
            },
            headers: serde_json::to_value(HeadersJson(&p.headers))
                .map_err(|e| RequestError::internal(format!("headers as JSON: {e}")))?,
        })
    }
}
