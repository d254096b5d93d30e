//! Operators' tools for messages (protocol.md §17, §18): [`Client::browse`] reads a queue's
//! ready messages without taking them; [`Client::move_messages`] starts moving them to
//! another queue and [`Client::move_status`] follows the move.

use crate::client::{unexpected_reply, Client};
use crate::error::Result;
use crate::wire::{
    BrowseQueue, BrowseQueueOk, MoveId, MoveMessages, MoveStatus, MoveStatusOk, Reply,
};

impl Client {
    /// Reads up to `limit` ready messages of `queue` (at most
    /// [`MAX_BROWSE_LIMIT`](crate::wire::MAX_BROWSE_LIMIT); 0 = that many) whose sequence
    /// number is above `after_seq` (0 = from the head), in sequence order. Nothing about them
    /// changes: no delivery tag, no lease, no delivery counted. For the next page, pass the
    /// last `message_seq` as `after_seq` while the answer says `more`.
    pub async fn browse(&self, queue: &str, limit: u32, after_seq: u64) -> Result<BrowseQueueOk> {
        let reply = self
            .call(BrowseQueue {
                queue: queue.to_owned(),
                limit,
                after_seq,
            })
            .await?;
        match reply {
            Reply::BrowseQueueOk(ok) => Ok(ok),
            other => Err(unexpected_reply(other)),
        }
    }

    /// Starts moving ready messages from `source` to `destination`: at most `max` of them, or
    /// (`None`) as many as are ready in `source` now. The server moves them in batches, each
    /// stored durably in `destination` before it leaves `source`, so a crash can duplicate a
    /// message but never lose it. Returns the move's id for [`Client::move_status`].
    /// A missing queue is `NOT_FOUND`; the same queue twice is `INVALID_ARGUMENT`.
    pub async fn move_messages(
        &self,
        source: &str,
        destination: &str,
        max: Option<u64>,
    ) -> Result<MoveId> {
        let reply = self
            .call(MoveMessages {
                source: source.to_owned(),
                destination: destination.to_owned(),
                max: max.unwrap_or(0),
            })
            .await?;
        match reply {
            Reply::MoveMessagesOk(ok) => Ok(ok.move_id),
            other => Err(unexpected_reply(other)),
        }
    }

    /// A move's state and progress. The server remembers the last finished moves for a while;
    /// an unknown (or long forgotten) id is `NOT_FOUND`.
    pub async fn move_status(&self, move_id: MoveId) -> Result<MoveStatusOk> {
        let reply = self.call(MoveStatus { move_id }).await?;
        match reply {
            Reply::MoveStatusOk(ok) => Ok(ok),
            other => Err(unexpected_reply(other)),
        }
    }
}
