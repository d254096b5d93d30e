//! `sluice browse` and `sluice move-messages`, and the JSON shapes of browsed messages and
//! moves that they share with the HTTP API (docs/http-api.md).

use std::time::Duration;

use base64::Engine as _;
use serde_json::json;
use sluice_client::wire::{BrowsedMessage, MessageMeta, MoveState, MAX_BROWSE_LIMIT};
use sluice_client::Client;

use super::commands::{print, print_json};
use super::format::{Align, HeadersJson, Table};
use super::{BrowseArgs, CliError, MoveMessagesArgs};
use crate::moves::MoveInfo;

/// How often `sluice move-messages` asks for the move's progress.
const MOVE_POLL_INTERVAL: Duration = Duration::from_millis(200);

/// `sluice browse`: reads pages until `--count` messages or the end of the ready messages.
pub(super) async fn browse(client: &Client, a: &BrowseArgs, json: bool) -> Result<(), CliError> {
    let mut messages = Vec::new();
    let mut after = 0;
    while (messages.len() as u64) < a.count {
        let want = (a.count - messages.len() as u64).min(u64::from(MAX_BROWSE_LIMIT)) as u32;
        let page = client.browse(&a.queue, want, after).await?;
        after = page.messages.last().map_or(after, |m| m.message_seq);
        messages.extend(page.messages);
        if !page.more {
            break;
        }
    }
    messages.truncate(a.count as usize);
    let now = crate::queue::unix_now_ms();
    if json {
        let metas: Vec<Option<MessageMeta>> = messages
            .iter()
            .map(|m| MessageMeta::from_slice(&m.meta).ok())
            .collect();
        let shown: Vec<BrowsedJson<'_>> = messages
            .iter()
            .zip(&metas)
            .map(|(m, meta)| BrowsedJson::new(m, meta.as_ref(), now, usize::MAX))
            .collect();
        print_json(&shown)
    } else if messages.is_empty() {
        print(&format!("queue '{}' has no ready message\n", a.queue))
    } else {
        print(&browse_table(&messages, now).to_string())
    }
}

/// `sluice move-messages`: starts the move, then reports its progress until it ends.
pub(super) async fn move_messages(
    client: &Client,
    a: &MoveMessagesArgs,
    json: bool,
) -> Result<(), CliError> {
    let id = client
        .move_messages(&a.source, &a.destination, a.max)
        .await?;
    let mut shown = None;
    let status = loop {
        let status = client.move_status(id).await?;
        if status.state.is_finished() {
            break status;
        }
        if !json && shown != Some(status.moved) {
            eprintln!("moved {} of {} messages", status.moved, status.requested);
            shown = Some(status.moved);
        }
        tokio::time::sleep(MOVE_POLL_INTERVAL).await;
    };
    if let MoveState::Failed { code, message } = &status.state {
        return Err(CliError::with_code(
            format!(
                "the move stopped after {} of {} messages: {message}; the rest are still in '{}'",
                status.moved, status.requested, a.source
            ),
            *code,
        ));
    }
    if json {
        print_json(&json!({
            "id": id.0,
            "source": a.source,
            "destination": a.destination,
            "requested": status.requested,
            "moved": status.moved,
            "state": status.state.name(),
        }))
    } else {
        print(&format!(
            "moved {} messages from '{}' to '{}'\n",
            status.moved, a.source, a.destination
        ))
    }
}

/// Bytes of a payload the HTTP API shows; longer ones are cut and flagged `truncated`.
pub const HTTP_PAYLOAD_LIMIT: usize = 64 * 1024;

/// One browsed message as JSON.
#[derive(serde::Serialize)]
pub struct BrowsedJson<'a> {
    seq: u64,
    delivery_count: u32,
    redelivered: bool,
    enqueued_at_ms: u64,
    age_ms: u64,
    exchange: Option<&'a str>,
    routing_key: Option<&'a str>,
    properties: Option<PropertiesJson<'a>>,
    headers: Option<HeadersJson<'a>>,
    payload: String,
    payload_encoding: &'static str,
    payload_bytes: usize,
    truncated: bool,
}

/// A message's properties, every one named (`null` when absent).
#[derive(serde::Serialize)]
struct PropertiesJson<'a> {
    persistent: bool,
    content_type: Option<&'a str>,
    content_encoding: Option<&'a str>,
    message_id: Option<&'a str>,
    correlation_id: Option<&'a str>,
    reply_to: Option<&'a str>,
    expiration_ms: Option<u64>,
    timestamp_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    priority: Option<u8>,
}

impl<'a> BrowsedJson<'a> {
    /// The JSON of `message` (whose decoded meta block is `meta`, `None` if it does not
    /// decode) at `now_ms`, its payload cut to `payload_limit` bytes.
    pub fn new(
        message: &'a BrowsedMessage,
        meta: Option<&'a MessageMeta>,
        now_ms: u64,
        payload_limit: usize,
    ) -> Self {
        let (payload, payload_encoding, truncated) = payload_text(&message.body, payload_limit);
        BrowsedJson {
            seq: message.message_seq,
            delivery_count: message.delivery_count,
            redelivered: message.redelivered,
            enqueued_at_ms: message.enqueued_at_ms,
            age_ms: now_ms.saturating_sub(message.enqueued_at_ms),
            exchange: meta.map(|m| m.exchange.as_str()),
            routing_key: meta.map(|m| m.routing_key.as_str()),
            properties: meta.map(|m| {
                let p = &m.properties;
                PropertiesJson {
                    persistent: p.persistent,
                    content_type: p.content_type.as_deref(),
                    content_encoding: p.content_encoding.as_deref(),
                    message_id: p.message_id.as_deref(),
                    correlation_id: p.correlation_id.as_deref(),
                    reply_to: p.reply_to.as_deref(),
                    expiration_ms: p.expiration_ms,
                    timestamp_ms: p.timestamp_ms,
                    priority: p.priority,
                }
            }),
            headers: meta.map(|m| HeadersJson(&m.properties.headers)),
            payload,
            payload_encoding,
            payload_bytes: message.body.len(),
            truncated,
        }
    }
}

/// A payload as text: itself when it is UTF-8, else base64; cut to `limit` bytes (a UTF-8
/// character split by the cut is left out). Returns the text, its encoding, and whether it
/// was cut.
pub(crate) fn payload_text(body: &[u8], limit: usize) -> (String, &'static str, bool) {
    let truncated = body.len() > limit;
    let shown = &body[..body.len().min(limit)];
    let text = match std::str::from_utf8(shown) {
        Ok(s) => Some(s),
        // Only the cut split a character: the rest is text.
        Err(e) if truncated && e.error_len().is_none() => {
            std::str::from_utf8(&shown[..e.valid_up_to()]).ok()
        }
        Err(_) => None,
    };
    match text {
        Some(s) => (s.to_owned(), "string", truncated),
        None => (
            base64::engine::general_purpose::STANDARD.encode(shown),
            "base64",
            truncated,
        ),
    }
}

/// `sluice browse` as text: one line per message.
pub fn browse_table(messages: &[BrowsedMessage], now_ms: u64) -> Table {
    let mut table = Table::new(&[
        ("SEQ", Align::Right),
        ("DELIVERIES", Align::Right),
        ("AGE", Align::Right),
        ("ROUTING KEY", Align::Left),
        ("BYTES", Align::Right),
        ("PAYLOAD", Align::Left),
    ]);
    for m in messages {
        let meta = MessageMeta::from_slice(&m.meta).ok();
        let (payload, encoding, _) = payload_text(&m.body, 60);
        let payload = match encoding {
            "string" => payload.replace(['\n', '\r', '\t'], " "),
            _ => format!("(binary) {payload}"),
        };
        table.row(vec![
            m.message_seq.to_string(),
            format!(
                "{}{}",
                m.delivery_count,
                if m.redelivered { " R" } else { "" }
            ),
            age_text(now_ms.saturating_sub(m.enqueued_at_ms)),
            meta.map_or_else(String::new, |m| m.routing_key),
            m.body.len().to_string(),
            payload,
        ]);
    }
    table
}

/// An age in the largest unit that keeps it readable: `850ms`, `42s`, `7m`, `3h`, `2d`.
pub(super) fn age_text(ms: u64) -> String {
    match ms {
        0..1_000 => format!("{ms}ms"),
        1_000..60_000 => format!("{}s", ms / 1_000),
        60_000..3_600_000 => format!("{}m", ms / 60_000),
        3_600_000..86_400_000 => format!("{}h", ms / 3_600_000),
        _ => format!("{}d", ms / 86_400_000),
    }
}

/// A move as JSON.
#[derive(serde::Serialize)]
pub struct MoveJson<'a> {
    id: u64,
    source: &'a str,
    destination: &'a str,
    requested: u64,
    moved: u64,
    state: &'static str,
    error: Option<MoveErrorJson<'a>>,
    started_at_ms: u64,
    finished_at_ms: Option<u64>,
}

/// Why a move failed.
#[derive(serde::Serialize)]
struct MoveErrorJson<'a> {
    code: &'static str,
    message: &'a str,
}

impl<'a> From<&'a MoveInfo> for MoveJson<'a> {
    fn from(m: &'a MoveInfo) -> Self {
        MoveJson {
            id: m.id.0,
            source: &m.source,
            destination: &m.destination,
            requested: m.requested,
            moved: m.moved,
            state: m.state.name(),
            error: match &m.state {
                MoveState::Failed { code, message } => Some(MoveErrorJson {
                    code: code.name(),
                    message,
                }),
                _ => None,
            },
            started_at_ms: m.started_at_ms,
            finished_at_ms: m.finished_at_ms,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_are_text_when_they_can_be_and_base64_otherwise() {
        assert_eq!(
            payload_text(b"hello", 10),
            ("hello".into(), "string", false)
        );
        assert_eq!(
            payload_text(&[0xff, 0x00], 10),
            ("/wA=".into(), "base64", false)
        );
        assert_eq!(payload_text(b"hello", 3), ("hel".into(), "string", true));
        // "é" is two bytes: a cut through it leaves the text before it.
        assert_eq!(
            payload_text("aé".as_bytes(), 2),
            ("a".into(), "string", true)
        );
    }

    #[test]
    fn ages_read_in_one_unit() {
        assert_eq!(age_text(850), "850ms");
        assert_eq!(age_text(42_000), "42s");
        assert_eq!(age_text(7 * 60_000), "7m");
        assert_eq!(age_text(3 * 3_600_000), "3h");
        assert_eq!(age_text(2 * 86_400_000), "2d");
    }
}
