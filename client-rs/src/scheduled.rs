//! Scheduled messages (protocol.md §19): [`Client::list_scheduled`] reads the messages of a
//! queue that wait for their time, soonest first; [`Client::cancel_scheduled`] deletes one
//! before its time.

use crate::client::{unexpected_reply, Client};
use crate::error::Result;
use crate::wire::{CancelScheduled, ListScheduled, ListScheduledOk, Reply};

impl Client {
    /// Reads up to `limit` scheduled messages of `queue` (at most
    /// [`MAX_SCHEDULED_LIMIT`](crate::wire::MAX_SCHEDULED_LIMIT); 0 = that many) in due
    /// order, after the cursor `after` = `(due_at_ms, message_seq)` of the last message of
    /// the previous page (`None` = from the soonest). Nothing about them changes.
    pub async fn list_scheduled(
        &self,
        queue: &str,
        limit: u32,
        after: Option<(u64, u64)>,
    ) -> Result<ListScheduledOk> {
        let (after_due_ms, after_seq) = after.unwrap_or((0, 0));
        let reply = self
            .call(ListScheduled {
                queue: queue.to_owned(),
                limit,
                after_due_ms,
                after_seq,
            })
            .await?;
        match reply {
            Reply::ListScheduledOk(ok) => Ok(ok),
            other => Err(unexpected_reply(other)),
        }
    }

    /// Deletes scheduled message `message_seq` of `queue` before its time. A message that is
    /// not scheduled there (never was, already due, or cancelled) is `NOT_FOUND`.
    pub async fn cancel_scheduled(&self, queue: &str, message_seq: u64) -> Result<()> {
        let reply = self
            .call(CancelScheduled {
                queue: queue.to_owned(),
                message_seq,
            })
            .await?;
        match reply {
            Reply::CancelScheduledOk => Ok(()),
            other => Err(unexpected_reply(other)),
        }
    }
}
