//! The two frame-body enums: [`Request`] (client to server) and [`Reply`] (server to client:
//! answers, errors and the unsolicited deliveries, confirms and notices), each tied to the
//! opcode table.

use bytes::{Bytes, BytesMut};

use super::ack::{Ack, Extend, Nack, Reject};
use super::admin::{
    ListBindings, ListBindingsOk, ListConsumers, ListConsumersOk, ListExchanges, ListExchangesOk,
    ListQueues, ListQueuesOk,
};
use super::browse::{BrowseQueue, BrowseQueueOk};
use super::chaos::{ClearChaos, ClearChaosOk, ListChaosOk, SetChaos, SetChaosOk};
use super::circuit::ConsumerCircuit;
use super::cluster::{AddNode, ClusterStatusOk, RemoveNode, TransferLeadership};
use super::connection::{Blocked, Close, ErrorReply, Hello, Welcome};
use super::connections::{CancelConsumer, CloseConnection, ListConnections, ListConnectionsOk};
use super::consume::{
    Cancel, CancelOk, Consume, ConsumeOk, ConsumerCancelled, Deliver, Get, GetOk, SetPrefetch,
};
use super::error::WireError;
use super::exchange::{Bind, DeclareExchange, DeleteExchange, Unbind};
use super::frame::{FrameBody, Opcode, Payload};
use super::get_many::{GetMany, GetManyOk};
use super::history::{TraceMessage, TraceMessageOk};
use super::moves::{MoveMessages, MoveMessagesOk, MoveStatus, MoveStatusOk};
use super::publish::{Confirm, Publish, PublishDuplicates, PublishRejected};
use super::queue::{
    DeclareQueue, DeclareQueueOk, DeleteQueue, DeleteQueueOk, InspectQueue, InspectQueueOk,
    PurgeQueue, PurgeQueueOk,
};
use super::scheduled::{CancelScheduled, ListScheduled, ListScheduledOk};

/// Defines a frame-body enum: variants with a payload type, then variants with an empty
/// payload, each named after its opcode.
macro_rules! frame_body {
    (
        $(#[doc = $doc:literal])*
        $enum:ident {
            payload { $( $(#[doc = $pdoc:literal])* $pvar:ident($pty:ty), )* }
            empty { $( $(#[doc = $edoc:literal])* $evar:ident, )* }
        }
    ) => {
        $(#[doc = $doc])*
        #[derive(Debug, Clone, PartialEq, Eq)]
        pub enum $enum {
            $( $(#[doc = $pdoc])* $pvar($pty), )*
            $( $(#[doc = $edoc])* $evar, )*
        }

        impl FrameBody for $enum {
            fn opcode(&self) -> Opcode {
                match self {
                    $( $enum::$pvar(_) => Opcode::$pvar, )*
                    $( $enum::$evar => Opcode::$evar, )*
                }
            }

            fn encode_payload(&self, buf: &mut BytesMut) -> Result<(), WireError> {
                match self {
                    $( $enum::$pvar(m) => m.encode(buf), )*
                    $( $enum::$evar => Ok(()), )*
                }
            }

            fn decode_payload(opcode: u16, payload: &Bytes) -> Result<Self, WireError> {
                let Some(known) = Opcode::from_u16(opcode) else {
                    return Err(WireError::UnknownOpcode { opcode });
                };
                match known {
                    $( Opcode::$pvar => <$pty>::decode_exact(payload).map($enum::$pvar), )*
                    $( Opcode::$evar => match payload.len() {
                        0 => Ok($enum::$evar),
                        count => Err(WireError::TrailingBytes { count }),
                    }, )*
                    #[allow(unreachable_patterns)]
                    _ => Err(WireError::UnknownOpcode { opcode }),
                }
            }
        }

        $(
            impl From<$pty> for $enum {
                fn from(m: $pty) -> Self {
                    $enum::$pvar(m)
                }
            }
        )*
    };
}

frame_body! {
    /// Every frame a client sends.
    Request {
        payload {
            /// Opens the handshake.
            Hello(Hello),
            /// Starts closing the connection.
            Close(Close),
            /// Declares a queue; answered by `DeclareQueueOk`.
            DeclareQueue(DeclareQueue),
            /// Deletes a queue; answered by `DeleteQueueOk`.
            DeleteQueue(DeleteQueue),
            /// Purges a queue; answered by `PurgeQueueOk`.
            PurgeQueue(PurgeQueue),
            /// Inspects a queue; answered by `InspectQueueOk`.
            InspectQueue(InspectQueue),
            /// Declares an exchange; answered by `DeclareExchangeOk`.
            DeclareExchange(DeclareExchange),
            /// Deletes an exchange; answered by `DeleteExchangeOk`.
            DeleteExchange(DeleteExchange),
            /// Binds a queue; answered by `BindOk`.
            Bind(Bind),
            /// Unbinds a queue; answered by `UnbindOk`.
            Unbind(Unbind),
            /// Publishes a batch; settled by `Confirm` (and `PublishRejected`).
            Publish(Publish),
            /// Starts a consumer; answered by `ConsumeOk`.
            Consume(Consume),
            /// Stops a consumer; answered by `CancelOk`.
            Cancel(Cancel),
            /// Changes a consumer's prefetch; no answer unless it fails.
            SetPrefetch(SetPrefetch),
            /// Pulls one message; answered by `GetOk`.
            Get(Get),
            /// Pulls up to N messages, waiting for the first; answered by `GetManyOk`.
            GetMany(GetMany),
            /// Acknowledges; no answer unless it fails.
            Ack(Ack),
            /// Negatively acknowledges; no answer unless it fails.
            Nack(Nack),
            /// Rejects; no answer unless it fails.
            Reject(Reject),
            /// Extends a lease; no answer unless it fails.
            Extend(Extend),
            /// Asks for a page of queues (§15); answered by `ListQueuesOk`.
            ListQueues(ListQueues),
            /// Asks for a page of exchanges (§15); answered by `ListExchangesOk`.
            ListExchanges(ListExchanges),
            /// Asks for a page of bindings (§15); answered by `ListBindingsOk`.
            ListBindings(ListBindings),
            /// Asks for a page of consumers (§15); answered by `ListConsumersOk`.
            ListConsumers(ListConsumers),
            /// Asks for a page of connections (§16); answered by `ListConnectionsOk`.
            ListConnections(ListConnections),
            /// Closes a connection (§16.2); answered by `CloseConnectionOk`.
            CloseConnection(CloseConnection),
            /// Cancels a consumer of any connection (§16.3); answered by `CancelConsumerOk`.
            CancelConsumer(CancelConsumer),
            /// Reads a queue's first ready messages (§17); answered by `BrowseQueueOk`.
            BrowseQueue(BrowseQueue),
            /// Starts a move (§18); answered by `MoveMessagesOk`.
            MoveMessages(MoveMessages),
            /// Asks for a move's progress (§18); answered by `MoveStatusOk`.
            MoveStatus(MoveStatus),
            /// Reads a queue's scheduled messages (§19); answered by `ListScheduledOk`.
            ListScheduled(ListScheduled),
            /// Cancels a scheduled message (§19); answered by `CancelScheduledOk`.
            CancelScheduled(CancelScheduled),
            /// Asks for a message's history (§21); answered by `TraceMessageOk`.
            TraceMessage(TraceMessage),
            /// Adds a node to the cluster (§20); answered by `AddNodeOk`.
            AddNode(AddNode),
            /// Removes a node from the cluster (§20); answered by `RemoveNodeOk`.
            RemoveNode(RemoveNode),
            /// Moves a group's leadership (§20); answered by `TransferLeadershipOk`.
            TransferLeadership(TransferLeadership),
            /// Starts a queue's chaos injection (§22); answered by `SetChaosOk`.
            SetChaos(SetChaos),
            /// Ends a queue's chaos injection (§22); answered by `ClearChaosOk`.
            ClearChaos(ClearChaos),
        }
        empty {
            /// Keep-alive.
            Heartbeat,
            /// Answers a server's `Close`.
            CloseOk,
            /// Asks for the cluster's state (§20); answered by `ClusterStatusOk`.
            ClusterStatus,
            /// Lists the queues with chaos injections (§22); answered by `ListChaosOk`.
            ListChaos,
        }
    }
}

frame_body! {
    /// Every frame a server sends: answers to requests, `Error`, and unsolicited frames
    /// (`Deliver`, `Confirm`, `PublishRejected`, `ConsumerCancelled`, `Blocked`, …).
    Reply {
        payload {
            /// Accepts the handshake.
            Welcome(Welcome),
            /// Starts closing the connection.
            Close(Close),
            /// A request failed.
            Error(ErrorReply),
            /// Publishing is refused until `Unblocked`.
            Blocked(Blocked),
            /// Answers `DeclareQueue`.
            DeclareQueueOk(DeclareQueueOk),
            /// Answers `DeleteQueue`.
            DeleteQueueOk(DeleteQueueOk),
            /// Answers `PurgeQueue`.
            PurgeQueueOk(PurgeQueueOk),
            /// Answers `InspectQueue`.
            InspectQueueOk(InspectQueueOk),
            /// Settles every publish up to a sequence number.
            Confirm(Confirm),
            /// Refuses some published messages.
            PublishRejected(PublishRejected),
            /// Confirms some published messages as duplicates, not stored again.
            PublishDuplicates(PublishDuplicates),
            /// Answers `Consume`.
            ConsumeOk(ConsumeOk),
            /// Answers `Cancel`.
            CancelOk(CancelOk),
            /// The server stopped a consumer.
            ConsumerCancelled(ConsumerCancelled),
            /// Deliveries for a consumer.
            Deliver(Deliver),
            /// Answers `Get`.
            GetOk(GetOk),
            /// Answers `GetMany`.
            GetManyOk(GetManyOk),
            /// A page of queues.
            ListQueuesOk(ListQueuesOk),
            /// A page of exchanges.
            ListExchangesOk(ListExchangesOk),
            /// A page of bindings.
            ListBindingsOk(ListBindingsOk),
            /// A page of consumers.
            ListConsumersOk(ListConsumersOk),
            /// A page of connections.
            ListConnectionsOk(ListConnectionsOk),
            /// Ready messages of a queue, left in place.
            BrowseQueueOk(BrowseQueueOk),
            /// A move started.
            MoveMessagesOk(MoveMessagesOk),
            /// A move's progress.
            MoveStatusOk(MoveStatusOk),
            /// Scheduled messages of a queue, left in place.
            ListScheduledOk(ListScheduledOk),
            /// A message's history.
            TraceMessageOk(TraceMessageOk),
            /// The cluster's state.
            ClusterStatusOk(ClusterStatusOk),
            /// A consumer's circuit changed state.
            ConsumerCircuit(ConsumerCircuit),
            /// A chaos injection started.
            SetChaosOk(SetChaosOk),
            /// A chaos injection ended.
            ClearChaosOk(ClearChaosOk),
            /// The queues with chaos injections.
            ListChaosOk(ListChaosOk),
        }
        empty {
            /// Keep-alive.
            Heartbeat,
            /// Answers a client's `Close`.
            CloseOk,
            /// Publishing is accepted again.
            Unblocked,
            /// Answers `DeclareExchange`.
            DeclareExchangeOk,
            /// Answers `DeleteExchange`.
            DeleteExchangeOk,
            /// Answers `Bind`.
            BindOk,
            /// Answers `Unbind`.
            UnbindOk,
            /// Answers `CloseConnection`.
            CloseConnectionOk,
            /// Answers `CancelConsumer`.
            CancelConsumerOk,
            /// Answers `CancelScheduled`.
            CancelScheduledOk,
            /// Answers `AddNode`.
            AddNodeOk,
            /// Answers `RemoveNode`.
            RemoveNodeOk,
            /// Answers `TransferLeadership`.
            TransferLeadershipOk,
        }
    }
}

impl Request {
    /// Whether the server answers this request when it succeeds. Requests that are not
    /// answered (`Publish`, `Ack`, `Nack`, `Reject`, `Extend`, `SetPrefetch`, `Heartbeat`,
    /// `CloseOk`) may still get an `Error` naming them; a `Publish` is settled by `Confirm`.
    pub fn expects_reply(&self) -> bool {
        !matches!(
            self,
            Request::Publish(_)
                | Request::Ack(_)
                | Request::Nack(_)
                | Request::Reject(_)
                | Request::Extend(_)
                | Request::SetPrefetch(_)
                | Request::Heartbeat
                | Request::CloseOk
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::frame::Direction;

    /// Every opcode belongs to exactly the enums its direction says.
    #[test]
    fn opcode_directions_match_the_enums() {
        for &op in Opcode::ALL {
            let n = op as u16;
            // An empty payload decodes for empty variants and fails with a field error
            // (never UnknownOpcode) for payload variants of the right direction.
            let known =
                |r: Result<(), WireError>| !matches!(r, Err(WireError::UnknownOpcode { .. }));
            let as_request = known(Request::decode_payload(n, &Bytes::new()).map(drop));
            let as_reply = known(Reply::decode_payload(n, &Bytes::new()).map(drop));
            let expected = match op.direction() {
                Direction::ToServer => (true, false),
                Direction::ToClient => (false, true),
                Direction::Both => (true, true),
            };
            assert_eq!((as_request, as_reply), expected, "{op:?}");
        }
    }

    #[test]
    fn fire_and_forget_requests_expect_no_reply() {
        assert!(Request::Get(Get { queue: "q".into() }).expects_reply());
        assert!(!Request::Heartbeat.expects_reply());
        assert!(!Request::Reject(Reject {
            delivery_tag: crate::wire::DeliveryTag(1),
            reason: None,
        })
        .expects_reply());
    }

    #[test]
    fn empty_bodies_refuse_payload_bytes() {
        assert_eq!(
            Request::decode_payload(Opcode::Heartbeat as u16, &Bytes::from_static(b"x")),
            Err(WireError::TrailingBytes { count: 1 })
        );
    }
}
