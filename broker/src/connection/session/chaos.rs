//! Chaos injection requests (protocol.md §22): setting and clearing need the administrator
//! tag; listing shows the session's vhost to any user, as the other listings do.

use std::sync::Arc;

use sluice_client::wire::{ClearChaosOk, Reply, RequestId, SetChaos, SetChaosOk};

use super::Session;
use crate::auth::Tag;
use crate::error::RequestError;
use crate::queue::ConnEvent;

impl Session {
    pub(super) fn on_set_chaos(&mut self, id: RequestId, s: SetChaos) {
        let Some(internal) = self.chaos_target(id, &s.queue, "set a chaos injection") else {
            return;
        };
        let (broker, link) = (Arc::clone(&self.broker), Arc::clone(&self.link));
        tokio::spawn(async move {
            let done = crate::chaos::set(&broker, link.id, &internal, s.plan, s.duration_ms).await;
            link.send(match done {
                Ok(until_ms) => ConnEvent::Reply {
                    request_id: id,
                    reply: SetChaosOk { until_ms }.into(),
                },
                Err(error) => ConnEvent::Error {
                    request_id: id,
                    error,
                },
            });
        });
    }

    pub(super) fn on_clear_chaos(&mut self, id: RequestId, queue: &str) {
        let Some(internal) = self.chaos_target(id, queue, "clear a chaos injection") else {
            return;
        };
        let (broker, link) = (Arc::clone(&self.broker), Arc::clone(&self.link));
        tokio::spawn(async move {
            let done = crate::chaos::clear(&broker, link.id, &internal).await;
            link.send(match done {
                Ok(was_active) => ConnEvent::Reply {
                    request_id: id,
                    reply: ClearChaosOk { was_active }.into(),
                },
                Err(error) => ConnEvent::Error {
                    request_id: id,
                    error,
                },
            });
        });
    }

    pub(super) fn on_list_chaos(&mut self, id: RequestId) {
        let list = crate::chaos::list(&self.broker, Some(self.access.namespace()));
        self.send(id, Reply::ListChaosOk(list));
    }

    /// The internal name of `queue` for an administrator's chaos request, or `None` once the
    /// refusal is answered.
    fn chaos_target(&mut self, id: RequestId, queue: &str, what: &str) -> Option<String> {
        if let Err(e) = self.access.check_tag(Tag::Administrator, what) {
            self.send_error(id, e);
            return None;
        }
        match self.access.namespace().qualify(queue) {
            Ok(name) => Some(name.into_owned()),
            Err(e) => {
                self.send_error(id, RequestError::invalid(e.to_string()));
                None
            }
        }
    }
}
