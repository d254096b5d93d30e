//! `sluice trace MESSAGE-ID`: "why is this message stuck" (protocol.md §21), and the JSON
//! shape of a message's history shared with the HTTP API (docs/http-api.md).

use serde_json::{json, Value};
use sluice_client::wire::{HistoryEvent, HistoryEventKind, MessageHistory, MessageState};
use sluice_client::Client;

use super::commands::{print, print_json};
use super::{CliError, TraceArgs};

/// Runs `sluice trace`.
pub(super) async fn run(client: &Client, a: &TraceArgs, json: bool) -> Result<(), CliError> {
    let answer = client.trace_message(&a.message_id).await?;
    if json {
        let shown: Vec<Value> = answer.messages.iter().map(history_json).collect();
        return print_json(&json!({ "messages": shown, "truncated": answer.truncated }));
    }
    if answer.messages.is_empty() {
        return print(&format!(
            "no queue remembers a message with id '{}' (only messages with a message_id are \
             followed, for --message-history-window-ms after they leave)\n",
            a.message_id
        ));
    }
    let mut out = String::new();
    for m in &answer.messages {
        out.push_str(&history_text(m));
        out.push('\n');
    }
    if answer.truncated {
        out.push_str("(more messages have this id; the first are shown)\n");
    }
    print(&out)
}

/// A message's history as the CLI prints it: a heading with where it is now, then one line
/// per event with its UTC time.
pub fn history_text(m: &MessageHistory) -> String {
    let mut out = format!(
        "queue '{}'  seq {}  message '{}'  now: {}\n",
        m.queue,
        m.message_seq,
        m.message_id,
        state_text(m.state, m.deadline_ms)
    );
    if let Some(tp) = &m.trace_parent {
        out.push_str(&format!("  trace {}\n", tp.trace_id_hex()));
    }
    for (i, e) in m.events.iter().enumerate() {
        if i == 1 && m.events_dropped > 0 {
            out.push_str(&format!(
                "  ... {} older events dropped\n",
                m.events_dropped
            ));
        }
        out.push_str(&format!(
            "  {}  {:<14} {}\n",
            utc_text(e.at_ms),
            e.kind.name(),
            event_detail(&e.kind)
        ));
    }
    out
}

fn state_text(state: MessageState, deadline_ms: u64) -> String {
    match state {
        MessageState::Delivered => format!("delivered, lease until {}", utc_text(deadline_ms)),
        MessageState::Scheduled if deadline_ms > 0 => {
            format!("scheduled, ready at {}", utc_text(deadline_ms))
        }
        other => other.as_str().to_owned(),
    }
}

fn event_detail(kind: &HistoryEventKind) -> String {
    use HistoryEventKind as K;
    let reason = |r: &Option<String>| match r {
        Some(r) => format!(" reason \"{r}\""),
        None => String::new(),
    };
    match kind {
        K::Stored {
            exchange,
            routing_key,
        } => {
            let exchange = if exchange.is_empty() {
                "(default)"
            } else {
                exchange
            };
            format!("from exchange {exchange} with routing key \"{routing_key}\"")
        }
        K::Delivered {
            consumer_tag,
            connection_id,
            delivery_tag,
            delivery_count,
            lease_deadline_ms,
        } => {
            let to = if consumer_tag.is_empty() {
                "a get".to_owned()
            } else {
                format!("consumer {consumer_tag}")
            };
            format!(
                "to {to} on connection {connection_id} (tag {delivery_tag}, delivery \
                 {delivery_count}), lease until {}",
                utc_text(*lease_deadline_ms)
            )
        }
        K::Acked { connection_id } => format!("by connection {connection_id}"),
        K::Nacked {
            delay_ms,
            reason: r,
        } => {
            let delay = if *delay_ms > 0 {
                format!(", ready again in {delay_ms} ms")
            } else {
                String::new()
            };
            format!("requeued{delay}{}", reason(r))
        }
        K::Rejected { reason: r } => format!("not requeued{}", reason(r)),
        K::LeaseExpired { connection_id } => {
            format!("held by connection {connection_id}; ready again")
        }
        K::LeaseExtended { lease_deadline_ms } => {
            format!("lease until {}", utc_text(*lease_deadline_ms))
        }
        K::Returned { cause } => cause.as_str().to_owned(),
        K::DeadLettered {
            reason,
            exchange: None,
        } => format!("{reason}; dropped (no dead-letter exchange took it)"),
        K::DeadLettered {
            reason,
            exchange: Some(x),
        } => {
            let x = if x.is_empty() { "(default)" } else { x };
            format!("{reason}; to exchange {x}")
        }
        K::Purged => String::new(),
        K::Moved { to_queue } => format!("to queue {to_queue}"),
    }
}

/// A message's history as JSON (the CLI's `--json` and `GET /api/trace/{id}`).
pub fn history_json(m: &MessageHistory) -> Value {
    let deadline = (m.deadline_ms > 0).then_some(m.deadline_ms);
    json!({
        "queue": m.queue,
        "message_seq": m.message_seq,
        "message_id": m.message_id,
        "state": m.state.as_str(),
        "deadline_ms": deadline,
        "trace_id": m.trace_parent.map(|tp| tp.trace_id_hex()),
        "events_dropped": m.events_dropped,
        "events": m.events.iter().map(event_json).collect::<Vec<_>>(),
    })
}

fn event_json(e: &HistoryEvent) -> Value {
    use HistoryEventKind as K;
    let mut v = match &e.kind {
        K::Stored {
            exchange,
            routing_key,
        } => json!({ "exchange": exchange, "routing_key": routing_key }),
        K::Delivered {
            consumer_tag,
            connection_id,
            delivery_tag,
            delivery_count,
            lease_deadline_ms,
        } => json!({
            "consumer_tag": (!consumer_tag.is_empty()).then_some(consumer_tag),
            "connection": connection_id,
            "delivery_tag": delivery_tag,
            "delivery_count": delivery_count,
            "lease_deadline_ms": lease_deadline_ms,
        }),
        K::Acked { connection_id } | K::LeaseExpired { connection_id } => {
            json!({ "connection": connection_id })
        }
        K::Nacked { delay_ms, reason } => json!({ "delay_ms": delay_ms, "reason": reason }),
        K::Rejected { reason } => json!({ "reason": reason }),
        K::LeaseExtended { lease_deadline_ms } => json!({ "lease_deadline_ms": lease_deadline_ms }),
        K::Returned { cause } => json!({ "cause": cause.as_str() }),
        K::DeadLettered { reason, exchange } => json!({
            "reason": reason,
            "exchange": exchange,
            "dropped": exchange.is_none(),
        }),
        K::Purged => json!({}),
        K::Moved { to_queue } => json!({ "to_queue": to_queue }),
    };
    v["at_ms"] = json!(e.at_ms);
    v["event"] = json!(e.kind.name());
    v
}

/// Unix milliseconds as `YYYY-MM-DD HH:MM:SS.mmmZ`.
pub fn utc_text(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, day_secs) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}.{:03}Z",
        day_secs / 3600,
        day_secs / 60 % 60,
        day_secs % 60,
        ms % 1000
    )
}

/// The proleptic Gregorian date of a day count since 1970-01-01 (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_times_are_calendar_dates() {
        assert_eq!(utc_text(0), "1970-01-01 00:00:00.000Z");
        assert_eq!(utc_text(951_782_400_123), "2000-02-29 00:00:00.123Z");
        assert_eq!(utc_text(1_796_550_100_000), "2026-12-06 09:41:40.000Z");
    }
}
