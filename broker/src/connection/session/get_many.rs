//! `GetMany` (protocol.md §9.7): checked here, answered by the queue, now or after its wait;
//! the session meanwhile serves the connection's other requests. A connection has at most
//! [`MAX_WAITING_GET_MANY`] of them unanswered.

use std::time::Duration;

use sluice_client::wire::{
    GetMany, GetManyOk, Reply, RequestId, GET_MANY_OK_FIXED_LEN, MAX_GET_MANY,
    MAX_GET_MANY_WAIT_MS, MAX_WAITING_GET_MANY, MIN_FRAME_LEN,
};

use super::Session;
use crate::auth::Permission;
use crate::error::RequestError;
use crate::queue::{BatchLimit, QueueCmd};

impl Session {
    pub(super) fn on_get_many(&mut self, id: RequestId, g: GetMany) {
        if let Err(e) = check_get_many(&g) {
            return self.send_error(id, e);
        }
        if self.waiting_gets.len() >= MAX_WAITING_GET_MANY {
            return self.send_error(
                id,
                RequestError::new(
                    sluice_client::wire::ErrorCode::LimitExceeded,
                    format!(
                        "this connection already has {MAX_WAITING_GET_MANY} GetMany requests \
                         waiting (protocol.md §9.7)"
                    ),
                ),
            );
        }
        let fixed = MIN_FRAME_LEN as usize + GET_MANY_OK_FIXED_LEN;
        let limit = BatchLimit {
            max: g.max as usize,
            max_bytes: (self.agreed.max_frame_len as usize).saturating_sub(fixed),
        };
        let wait = Duration::from_millis(g.wait_ms);
        let sent = self.send_to_queue(id, Permission::Read, &g.queue, |link| QueueCmd::GetMany {
            conn: link,
            request_id: id,
            limit,
            wait,
        });
        if sent {
            self.waiting_gets.insert(id);
        }
    }

    /// The queue answered a `GetMany` (its deliveries are outstanding already).
    pub(super) fn on_got_many(
        &mut self,
        id: RequestId,
        ready: u64,
        deliveries: Vec<sluice_client::wire::Delivery>,
    ) {
        self.waiting_gets.remove(&id);
        self.send(id, Reply::GetManyOk(GetManyOk { ready, deliveries }));
    }
}

fn check_get_many(g: &GetMany) -> Result<(), RequestError> {
    if !(1..=MAX_GET_MANY).contains(&g.max) {
        return Err(RequestError::invalid(format!(
            "GetMany max must be 1..={MAX_GET_MANY}, not {}",
            g.max
        )));
    }
    if g.wait_ms > MAX_GET_MANY_WAIT_MS {
        return Err(RequestError::invalid(format!(
            "GetMany wait_ms must be at most {MAX_GET_MANY_WAIT_MS}, not {}",
            g.wait_ms
        )));
    }
    Ok(())
}
