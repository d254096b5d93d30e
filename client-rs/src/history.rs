//! A message's history (protocol.md §21): [`Client::trace_message`] asks every queue of the
//! vhost the user may read what happened to the messages with a `message_id`.

use crate::client::{unexpected_reply, Client};
use crate::error::Result;
use crate::wire::{Reply, TraceMessage, TraceMessageOk};

impl Client {
    /// The histories of the messages whose `message_id` is `message_id`: where each was
    /// routed, every delivery with its consumer, connection and lease, nacks and rejects
    /// with the worker's reason, lease expiries, and how it left (acked, dead-lettered...).
    /// Queues keep them for a window after the message left (`--message-history-window-ms`).
    pub async fn trace_message(&self, message_id: &str) -> Result<TraceMessageOk> {
        let reply = self
            .call(TraceMessage {
                message_id: message_id.to_owned(),
            })
            .await?;
        match reply {
            Reply::TraceMessageOk(ok) => Ok(ok),
            other => Err(unexpected_reply(other)),
        }
    }
}
