//! "Why is this message stuck": a message's history gathered from every queue that holds (or
//! held, within its window) a message with the asked `message_id` (protocol.md §21). Each
//! queue keeps its own record (`queue::history`); this asks them all at once and merges the
//! answers, for the wire (`TraceMessage`), the HTTP API and the CLI.

use std::sync::Arc;

use bytes::BytesMut;
use sluice_client::wire::{
    MessageHistory, Payload, TraceMessageOk, FRAME_HEADER_LEN, MAX_TRACED_MESSAGES,
};
use tokio::sync::oneshot;

use crate::broker::Broker;
use crate::queue::{QueueCmd, QueueHandle};
use crate::routing::Namespace;

/// The queues of `scope` (every vhost when `None`) whose local names `may_read` allows: the
/// ones a trace asks.
pub fn readable_queues(
    broker: &Broker,
    scope: Option<&Namespace>,
    may_read: impl Fn(&str) -> bool,
) -> Vec<QueueHandle> {
    broker
        .queues()
        .into_iter()
        .filter(|q| crate::admin::in_scope(scope, &q.meta.name).is_some_and(&may_read))
        .collect()
}

/// The histories of the messages with id `message_id` in `queues`, oldest first; at most
/// what fits `max_frame_len`.
pub async fn trace_message(
    queues: Vec<QueueHandle>,
    message_id: &str,
    max_frame_len: u32,
) -> TraceMessageOk {
    let id: Arc<str> = Arc::from(message_id);
    let mut answers = Vec::new();
    for q in queues {
        let (reply, answer) = oneshot::channel();
        let message_id = Arc::clone(&id);
        if q.send(QueueCmd::TraceMessage { message_id, reply }) {
            answers.push(answer);
        }
    }
    let mut messages: Vec<MessageHistory> = Vec::new();
    for answer in answers {
        // A queue deleted meanwhile drops its sender: it has nothing to say.
        if let Ok(found) = answer.await {
            messages.extend(found);
        }
    }
    messages.sort_by_key(|m| m.events.first().map_or(0, |e| e.at_ms));
    fit(messages, max_frame_len)
}

/// The first histories that fit one frame, at most [`MAX_TRACED_MESSAGES`].
fn fit(mut messages: Vec<MessageHistory>, max_frame_len: u32) -> TraceMessageOk {
    let mut truncated = messages.len() > MAX_TRACED_MESSAGES;
    messages.truncate(MAX_TRACED_MESSAGES);
    let room = (max_frame_len as usize).saturating_sub(FRAME_HEADER_LEN);
    loop {
        let answer = TraceMessageOk {
            truncated,
            messages,
        };
        let mut buf = BytesMut::new();
        let fits = answer.encode(&mut buf).is_ok() && buf.len() <= room;
        if fits || answer.messages.is_empty() {
            return answer;
        }
        messages = answer.messages;
        messages.pop();
        truncated = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_client::wire::{HistoryEvent, HistoryEventKind, MessageState};

    fn history(seq: u64, reason_len: usize) -> MessageHistory {
        MessageHistory {
            queue: "q".into(),
            message_seq: seq,
            message_id: "m".into(),
            state: MessageState::Gone,
            deadline_ms: 0,
            trace_parent: None,
            events_dropped: 0,
            events: vec![HistoryEvent {
                at_ms: seq,
                kind: HistoryEventKind::Rejected {
                    reason: Some("x".repeat(reason_len)),
                },
            }],
        }
    }

    #[test]
    fn an_answer_keeps_the_first_histories_that_fit_a_frame() {
        let all: Vec<_> = (0..200).map(|s| history(s, 1000)).collect();
        let answer = fit(all.clone(), u32::MAX);
        assert!(answer.truncated);
        assert_eq!(answer.messages.len(), MAX_TRACED_MESSAGES);
        let small = fit(all[..10].to_vec(), 4096);
        assert!(small.truncated);
        assert_eq!(small.messages.len(), 3);
        assert_eq!(small.messages[0].message_seq, 0);
        let whole = fit(all[..2].to_vec(), u32::MAX);
        assert!(!whole.truncated);
    }
}
