//! The checks and the routing of one published message: the rules every door applies, the
//! wire protocol's sessions (protocol.md §8) and the HTTP API's debugging publish alike.

use sluice_client::wire::{ErrorCode, MetaView, MAX_NAME_LEN};

use crate::broker::Registry;
use crate::error::RequestError;
use crate::flow::Blocking;
use crate::routing::{HeaderLimits, RouteResult};

/// The publisher's way into the routing table: turns the exchange a message names into the
/// table's name for it (the publisher's vhost), or refuses it (no `write` permission).
pub(crate) trait ExchangeDoor {
    /// The internal name of `exchange`, or why the message is refused.
    fn open(&mut self, exchange: &str) -> Result<&str, RequestError>;

    /// The vhost's limit on a message's bytes, and the vhost's name, if it has one.
    fn max_message_len(&self) -> Option<(u64, &str)>;
}

/// What a message is checked against besides the topology.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PublishLimits<'a> {
    /// Most bytes of meta block plus body.
    pub max_message_len: u32,
    /// Why publishing is refused now, if it is.
    pub blocking: Option<&'a Blocking>,
    /// Entries and bytes of the message's headers.
    pub headers: HeaderLimits,
}

/// Checks one message (its encoded meta block and the length of its body) and routes it:
/// `route.queues` is where it goes (empty for an unroutable message that is not mandatory).
/// Returns whether it is persistent, or why it is refused, with the code a `PublishRejected`
/// names. Cheap enough to run under the routing snapshot for a whole batch.
pub(crate) fn route_message(
    reg: &Registry,
    meta: &[u8],
    body_len: usize,
    limits: PublishLimits<'_>,
    door: &mut dyn ExchangeDoor,
    route: &mut RouteResult,
) -> Result<bool, RequestError> {
    route.queues.clear();
    let size = meta.len() + body_len;
    if size > limits.max_message_len as usize {
        return Err(RequestError::new(
            ErrorCode::MessageTooLarge,
            format!(
                "message of {size} bytes exceeds the limit of {}",
                limits.max_message_len
            ),
        ));
    }
    if let Some((max, vhost)) = door.max_message_len() {
        if size as u64 > max {
            return Err(RequestError::new(
                ErrorCode::MessageTooLarge,
                format!(
                    "message of {size} bytes exceeds the max_message_bytes limit of {max} of vhost '{vhost}'"
                ),
            ));
        }
    }
    if let Some(b) = limits.blocking {
        return Err(RequestError::new(
            b.code,
            format!("publishing is blocked: {}", b.reason),
        ));
    }
    let view = MetaView::parse(meta).map_err(|e| {
        RequestError::new(ErrorCode::MalformedRequest, format!("bad meta block: {e}"))
    })?;
    if view.deliver_at_ms.is_some() && view.delay_ms.is_some() {
        return Err(RequestError::invalid(
            "a message has deliver_at_ms or delay_ms, not both",
        ));
    }
    if view.routing_key.len() > MAX_NAME_LEN {
        return Err(RequestError::invalid("routing key longer than 255 bytes"));
    }
    // The length is checked before decoding, so an over-long table costs no allocation; the
    // count after, since it is a decoded field. Both keep the work done under the routing
    // snapshot small (protocol.md §14).
    let header_limits = limits.headers;
    header_limits
        .check_len(view.raw_headers.len())
        .map_err(|e| RequestError::invalid(e.to_string()))?;
    let headers = if view.raw_headers.is_empty() {
        Vec::new()
    } else {
        view.headers().map_err(|e| {
            RequestError::new(ErrorCode::MalformedRequest, format!("bad headers: {e}"))
        })?
    };
    header_limits
        .check_count(headers.len())
        .map_err(|e| RequestError::invalid(e.to_string()))?;
    let exchange = door.open(view.exchange)?;
    reg.routing
        .route_into(exchange, view.routing_key, &headers, route)
        .map_err(RequestError::from)?;
    if route.queues.is_empty() && view.mandatory {
        return Err(RequestError::new(
            ErrorCode::Unroutable,
            format!(
                "no queue matched exchange '{}' with routing key '{}'",
                view.exchange, view.routing_key
            ),
        ));
    }
    check_queue_sizes(reg, route, size)?;
    Ok(view.persistent)
}

/// Refuses a message larger than the `max_message_bytes` of a queue it was routed to
/// (protocol.md §6.1): the whole message, so that it is stored in every matched queue or none.
fn check_queue_sizes(reg: &Registry, route: &RouteResult, size: usize) -> Result<(), RequestError> {
    for name in &route.queues {
        let Some(limit) = reg
            .queues
            .get(name)
            .and_then(|q| q.meta.arguments.max_message_bytes)
        else {
            continue;
        };
        if size > limit as usize {
            return Err(RequestError::new(
                ErrorCode::MessageTooLarge,
                format!(
                    "message of {size} bytes exceeds the limit of {limit} of queue '{name}' (max_message_bytes)"
                ),
            ));
        }
    }
    Ok(())
}
