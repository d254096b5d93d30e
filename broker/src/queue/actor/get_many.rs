//! Batch `Get` with a long-poll wait (protocol.md §9.7): answered at once when a message is
//! ready (or the wait is 0), otherwise parked in [`Getters`](crate::queue::getters) and served
//! before the consumers as soon as messages are ready.

use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice_client::wire::{ErrorCode, RequestId};

use super::Actor;
use crate::error::RequestError;
use crate::queue::getters::{BatchLimit, WaitingGet};
use crate::queue::{ConnEvent, ConnLink};

impl Actor {
    /// A `GetMany`: answered now, or parked until a message is ready or `wait` ends.
    pub(super) fn get_many(
        &mut self,
        conn: Arc<ConnLink>,
        request_id: RequestId,
        limit: BatchLimit,
        wait: Duration,
    ) {
        if self.exclusive_consumer {
            conn.send(ConnEvent::Error {
                request_id,
                error: RequestError::new(
                    ErrorCode::ResourceLocked,
                    format!("queue '{}' has an exclusive consumer", self.meta.name),
                ),
            });
            return;
        }
        // Behind other waiting requests a new one waits its turn, even with messages ready.
        if wait.is_zero() || (self.ready_count() > 0 && self.getters.is_empty()) {
            return self.answer_get_many(&conn, request_id, limit);
        }
        self.getters.push(WaitingGet {
            conn,
            request_id,
            limit,
            deadline: Instant::now() + wait,
        });
    }

    /// Serves waiting requests, oldest first, while messages are ready (before consumers:
    /// each is served once, so consumers wait for at most their batches).
    pub(super) fn serve_getters(&mut self) {
        while self.ready_count() > 0 {
            let Some(get) = self.getters.pop_oldest() else {
                return;
            };
            self.answer_get_many(&get.conn, get.request_id, get.limit);
        }
    }

    /// Answers the requests whose wait ended with no message.
    pub(super) fn expire_getters(&mut self) {
        for get in self.getters.take_expired(Instant::now()) {
            self.answer_get_many(&get.conn, get.request_id, get.limit);
        }
    }

    /// The queue is deleted: its waiting requests get `NOT_FOUND`, as a `Get` sent after the
    /// deletion would.
    pub(super) fn cancel_getters(&mut self) {
        for get in self.getters.take_all() {
            get.conn.send(ConnEvent::Error {
                request_id: get.request_id,
                error: RequestError::no_queue(&self.meta.name),
            });
        }
    }

    /// Takes up to `limit` ready messages (each with a lease, as a `Get`'s) and answers.
    fn answer_get_many(&mut self, conn: &Arc<ConnLink>, request_id: RequestId, limit: BatchLimit) {
        let mut deliveries = Vec::new();
        let mut bytes = 0;
        while deliveries.len() < limit.max {
            let Some(mut d) = self.take_deliverable() else {
                break;
            };
            let len = d.delivery.encoded_len();
            if !deliveries.is_empty() && bytes + len > limit.max_bytes {
                // Not in this answer's frame: ready again, first in line, not delivered.
                self.ready
                    .push_returned(d.seq, d.count - 1, d.priority, d.expires_at_ms);
                break;
            }
            bytes += len;
            d.delivery.delivery_tag = self.record_flight(conn, None, self.default_lease, &d);
            deliveries.push(d.delivery);
        }
        self.count_deliveries(&deliveries);
        conn.send(ConnEvent::GotMany {
            request_id,
            queue: self.handle.clone(),
            ready: self.ready_count(),
            deliveries,
        });
    }
}
