//! `TraceMessage` (protocol.md §21): the history of the messages with an id, from the queues
//! of the session's vhost its user may read, answered once every queue has.

use std::sync::Arc;

use sluice_client::wire::{Reply, RequestId};

use super::Session;
use crate::auth::{Permission, ResourceKind};
use crate::message_trace;
use crate::queue::ConnEvent;

impl Session {
    pub(super) fn on_trace_message(&mut self, id: RequestId, message_id: String) {
        let principal = self.access.principal();
        let queues =
            message_trace::readable_queues(&self.broker, Some(self.access.namespace()), |name| {
                principal
                    .permissions
                    .allows(Permission::Read, ResourceKind::Queue, name)
            });
        let link = Arc::clone(&self.link);
        let max_frame_len = self.agreed.max_frame_len;
        tokio::spawn(async move {
            let answer = message_trace::trace_message(queues, &message_id, max_frame_len).await;
            link.send(ConnEvent::Reply {
                request_id: id,
                reply: Reply::TraceMessageOk(answer),
            });
        });
    }
}
