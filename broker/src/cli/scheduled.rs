//! `sluice scheduled list|cancel`: a queue's messages that wait for their time
//! (protocol.md §19), and the JSON shape they share with the HTTP API (docs/http-api.md).

use base64::Engine as _;
use serde_json::json;
use sluice_client::wire::{MessageMeta, ScheduledMessage, MAX_SCHEDULED_LIMIT};
use sluice_client::Client;

use super::commands::{print, print_json};
use super::format::{Align, Table};
use super::messages::{age_text, payload_text};
use super::{CliError, ScheduledCommand};

/// Runs `sluice scheduled ...`.
pub(super) async fn run(client: &Client, c: &ScheduledCommand, json: bool) -> Result<(), CliError> {
    match c {
        ScheduledCommand::List(a) => {
            let mut messages = Vec::new();
            let mut after = None;
            while (messages.len() as u64) < a.count {
                let want = (a.count - messages.len() as u64).min(u64::from(MAX_SCHEDULED_LIMIT));
                let page = client.list_scheduled(&a.queue, want as u32, after).await?;
                after = page
                    .messages
                    .last()
                    .map(|m| (m.due_at_ms, m.message_seq))
                    .or(after);
                messages.extend(page.messages);
                if !page.more {
                    break;
                }
            }
            messages.truncate(a.count as usize);
            let now = crate::queue::unix_now_ms();
            if json {
                let shown: Vec<_> = messages
                    .iter()
                    .map(|m| scheduled_json(m, now, usize::MAX))
                    .collect();
                print_json(&shown)
            } else if messages.is_empty() {
                print(&format!("queue '{}' has no scheduled message\n", a.queue))
            } else {
                print(&scheduled_table(&messages, now).to_string())
            }
        }
        ScheduledCommand::Cancel(a) => {
            client.cancel_scheduled(&a.queue, a.seq).await?;
            if json {
                print_json(&json!({ "queue": a.queue, "message_seq": a.seq, "cancelled": true }))
            } else {
                print(&format!(
                    "scheduled message {} of queue '{}' cancelled\n",
                    a.seq, a.queue
                ))
            }
        }
    }
}

/// A scheduled message as JSON (the CLI and `GET /api/queues/NAME/scheduled`), its body
/// shown up to `max_body` bytes.
pub fn scheduled_json(m: &ScheduledMessage, now_ms: u64, max_body: usize) -> serde_json::Value {
    let meta = MessageMeta::from_slice(&m.meta).ok();
    let (payload, payload_encoding, truncated) = payload_text(&m.body, max_body);
    json!({
        "message_seq": m.message_seq,
        "due_at_ms": m.due_at_ms,
        "due_in_ms": m.due_at_ms.saturating_sub(now_ms),
        "enqueued_at_ms": m.enqueued_at_ms,
        "delivery_count": m.delivery_count,
        "exchange": meta.as_ref().map(|m| m.exchange.clone()),
        "routing_key": meta.as_ref().map(|m| m.routing_key.clone()),
        "payload_bytes": m.body.len(),
        "payload": payload,
        "payload_encoding": payload_encoding,
        "payload_truncated": truncated,
        "meta_base64": base64::engine::general_purpose::STANDARD.encode(&m.meta),
    })
}

/// `sluice scheduled list` as text: one line per message, soonest first.
fn scheduled_table(messages: &[ScheduledMessage], now_ms: u64) -> Table {
    let mut table = Table::new(&[
        ("SEQ", Align::Right),
        ("DUE AT MS", Align::Right),
        ("DUE IN", Align::Right),
        ("DELIVERIES", Align::Right),
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
            m.due_at_ms.to_string(),
            age_text(m.due_at_ms.saturating_sub(now_ms)),
            m.delivery_count.to_string(),
            meta.map_or_else(String::new, |m| m.routing_key),
            m.body.len().to_string(),
            payload,
        ]);
    }
    table
}
