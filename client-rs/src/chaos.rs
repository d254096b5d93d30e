//! Chaos injection per queue (protocol.md §22), for testing consumers and publishers before
//! production: [`Client::set_chaos`] makes a queue misbehave for a bounded time,
//! [`Client::clear_chaos`] ends it early, [`Client::list_chaos`] shows what runs and what it
//! did. Setting and clearing need the administrator tag.

use std::time::Duration;

use crate::client::{unexpected_reply, Client};
use crate::error::Result;
use crate::wire::{ChaosPlan, ClearChaos, ListChaosOk, Reply, Request, SetChaos};

impl Client {
    /// Starts (or replaces) `queue`'s chaos injection: `plan` for `duration`, after which it
    /// ends by itself. Returns when it ends (Unix ms). A missing queue is `NOT_FOUND`, a bad
    /// plan or duration `INVALID_ARGUMENT`, a user without the administrator tag
    /// `ACCESS_REFUSED`, a replicated queue `NOT_ALLOWED`.
    pub async fn set_chaos(&self, queue: &str, plan: ChaosPlan, duration: Duration) -> Result<u64> {
        let reply = self
            .call(SetChaos {
                queue: queue.to_owned(),
                duration_ms: u64::try_from(duration.as_millis()).unwrap_or(u64::MAX),
                plan,
            })
            .await?;
        match reply {
            Reply::SetChaosOk(ok) => Ok(ok.until_ms),
            other => Err(unexpected_reply(other)),
        }
    }

    /// Ends `queue`'s chaos injection now: messages it held back are ready again. True when an
    /// injection was running.
    pub async fn clear_chaos(&self, queue: &str) -> Result<bool> {
        let reply = self
            .call(ClearChaos {
                queue: queue.to_owned(),
            })
            .await?;
        match reply {
            Reply::ClearChaosOk(ok) => Ok(ok.was_active),
            other => Err(unexpected_reply(other)),
        }
    }

    /// The queues of the connection's vhost with an injection running, or with chaos counters
    /// since the broker started, by name.
    pub async fn list_chaos(&self) -> Result<ListChaosOk> {
        match self.call(Request::ListChaos).await? {
            Reply::ListChaosOk(ok) => Ok(ok),
            other => Err(unexpected_reply(other)),
        }
    }
}
