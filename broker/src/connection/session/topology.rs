//! Topology requests (protocol.md §6, §7, §18): declaring, deleting and binding queues and
//! exchanges, and moving messages, each after the permission check of §5.8 and in the
//! session's vhost.

use std::borrow::Cow;
use std::sync::Arc;

use sluice_client::wire::{
    DeclareExchange, DeclareQueue, DeleteQueue, DeleteQueueOk, ErrorCode, Headers, MoveMessages,
    MoveMessagesOk, Reply, RequestId,
};
use tokio::sync::oneshot;

use super::Session;
use crate::auth::{Permission, ResourceKind};
use crate::error::RequestError;
use crate::queue::QueueCmd;
use crate::routing::Binding;

impl Session {
    /// The internal name of the client's `name` in its vhost.
    fn qualified(&self, name: &str) -> Result<String, RequestError> {
        Ok(self.access.namespace().qualify(name)?.into_owned())
    }

    pub(super) fn on_declare_queue(&mut self, id: RequestId, mut d: DeclareQueue) {
        let checked = if d.passive {
            self.access.check_any(ResourceKind::Queue, &d.name)
        } else {
            self.check_declare_queue(&d)
        };
        d.name = match checked.and_then(|()| self.qualified(&d.name)) {
            Ok(name) => name,
            Err(e) => return self.send_error(id, e),
        };
        let broker = Arc::clone(&self.broker);
        let conn = self.link.id;
        let exclusive = d.exclusive && !d.passive;
        let limits = self.access.limits().clone();
        match tokio::task::block_in_place(|| broker.declare_queue(conn, d, &limits)) {
            Ok(mut ok) => {
                if exclusive && !self.exclusive_queues.contains(&ok.name) {
                    self.exclusive_queues.push(ok.name.clone());
                }
                let ns = self.access.namespace();
                ok.name = ns.local(&ok.name).unwrap_or(&ok.name).to_owned();
                self.send(id, Reply::DeclareQueueOk(ok));
            }
            Err(e) => self.send_error(id, e),
        }
    }

    /// `configure` on the queue; with a dead-letter exchange also `write` on it and `read` on
    /// the queue (what it dead-letters is read from it and written there, as RabbitMQ).
    pub(super) fn check_declare_queue(&mut self, d: &DeclareQueue) -> Result<(), RequestError> {
        self.access
            .check(Permission::Configure, ResourceKind::Queue, &d.name)?;
        if let Some(dlx) = &d.arguments.dead_letter_exchange {
            self.access
                .check(Permission::Write, ResourceKind::Exchange, dlx)?;
            self.access
                .check(Permission::Read, ResourceKind::Queue, &d.name)?;
        }
        Ok(())
    }

    /// Moving reads the source and writes the destination.
    pub(super) fn on_move(&mut self, id: RequestId, m: MoveMessages) {
        let granted = self
            .access
            .grant(Permission::Read, ResourceKind::Queue, &m.source)
            .map(Cow::into_owned)
            .and_then(|source| {
                let destination =
                    self.access
                        .grant(Permission::Write, ResourceKind::Queue, &m.destination)?;
                Ok((source, destination.into_owned()))
            });
        let (source, destination) = match granted {
            Ok(names) => names,
            Err(e) => return self.send_error(id, e),
        };
        let conn = self.link.id;
        match crate::moves::start(&self.broker, conn, &source, &destination, m.max) {
            Ok(move_id) => self.send(id, MoveMessagesOk { move_id }),
            Err(e) => self.send_error(id, e),
        }
    }

    pub(super) async fn on_delete_queue(&mut self, id: RequestId, mut d: DeleteQueue) {
        d.name = match self
            .access
            .grant(Permission::Configure, ResourceKind::Queue, &d.name)
        {
            Ok(n) => n.into_owned(),
            Err(e) => return self.send_error(id, e),
        };
        let q = match self.broker.queue(&d.name, self.link.id) {
            Ok(q) => q,
            Err(e) if e.code == ErrorCode::NotFound => {
                self.send(id, Reply::DeleteQueueOk(DeleteQueueOk { messages: 0 }));
                return;
            }
            Err(e) => return self.send_error(id, e),
        };
        let (reply, answer) = oneshot::channel();
        let sent = q.send(QueueCmd::Delete {
            if_unused: d.if_unused,
            if_empty: d.if_empty,
            reply,
        });
        let result = if sent {
            answer.await.unwrap_or(Ok(0))
        } else {
            Ok(0)
        };
        match result {
            Ok(messages) => self.send(id, Reply::DeleteQueueOk(DeleteQueueOk { messages })),
            Err(e) => self.send_error(id, e),
        }
    }

    pub(super) fn on_declare_exchange(&mut self, id: RequestId, mut d: DeclareExchange) {
        let checked = if d.passive {
            self.access.check_any(ResourceKind::Exchange, &d.name)
        } else {
            self.check_declare_exchange(&d)
        };
        d.name = match checked.and_then(|()| self.qualified(&d.name)) {
            Ok(name) => name,
            Err(e) => return self.send_error(id, e),
        };
        let broker = Arc::clone(&self.broker);
        let limits = self.access.limits().clone();
        match tokio::task::block_in_place(|| broker.declare_exchange(d, &limits)) {
            Ok(()) => self.send(id, Reply::DeclareExchangeOk),
            Err(e) => self.send_error(id, e),
        }
    }

    /// `configure` on the exchange; with an alternate exchange also `write` on it and `read`
    /// on the exchange (as RabbitMQ).
    pub(super) fn check_declare_exchange(
        &mut self,
        d: &DeclareExchange,
    ) -> Result<(), RequestError> {
        self.access
            .check(Permission::Configure, ResourceKind::Exchange, &d.name)?;
        if let Some(alternate) = &d.alternate_exchange {
            self.access
                .check(Permission::Write, ResourceKind::Exchange, alternate)?;
            self.access
                .check(Permission::Read, ResourceKind::Exchange, &d.name)?;
        }
        Ok(())
    }

    pub(super) fn on_bind(
        &mut self,
        id: RequestId,
        queue: String,
        exchange: String,
        routing_key: String,
        arguments: Headers,
        bind: bool,
    ) {
        // Only new bindings are limited: unbinding must still reach one made before the
        // limits existed, and compares arguments without matching any message.
        if bind {
            if let Err(e) = self.broker.config.limits.headers.check(&arguments) {
                self.send_error(id, RequestError::invalid(format!("binding arguments: {e}")));
                return;
            }
        }
        // The destination is written to, the source exchange read from (as RabbitMQ).
        let names = self
            .access
            .grant(Permission::Write, ResourceKind::Queue, &queue)
            .map(Cow::into_owned)
            .and_then(|queue| {
                let exchange =
                    self.access
                        .grant(Permission::Read, ResourceKind::Exchange, &exchange)?;
                Ok((queue, exchange.into_owned()))
            });
        let (queue, exchange) = match names {
            Ok(names) => names,
            Err(e) => return self.send_error(id, e),
        };
        let binding = Binding {
            queue,
            exchange,
            routing_key,
            arguments,
        };
        let broker = Arc::clone(&self.broker);
        let conn = self.link.id;
        match tokio::task::block_in_place(|| broker.bind(conn, binding, bind)) {
            Ok(()) => self.send(id, if bind { Reply::BindOk } else { Reply::UnbindOk }),
            Err(e) => self.send_error(id, e),
        }
    }
}
