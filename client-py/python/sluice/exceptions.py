"""The exceptions the Sluice client raises.

Every error the broker reports carries a stable protocol error code (``protocol.md`` §11);
the client maps each code to one class here (:data:`BY_CODE`), so that ``except
sluice.NotFound`` works without comparing numbers. The numeric code stays available as
``error.code`` and its protocol name as ``error.code_name``.

A refused publish is a :class:`PublishRejected` *and* the class of its code: a message
published to a missing exchange raises an error that both ``except sluice.NotFound`` and
``except sluice.PublishRejected`` catch (its class is ``PublishRejectedNotFound``, one such
class per code, made once when this module loads; see :func:`rejected_class`).

::

    SluiceError
    ├── InvalidUrl                  (also a ValueError)
    ├── ConnectionError             could not connect, or the connection was lost
    │   │                           (also the built-in ConnectionError)
    │   ├── ConnectionClosed        the connection has ended (1xx codes, or closed by us)
    │   │   ├── MalformedFrame      100
    │   │   ├── FrameTooLarge       101
    │   │   ├── UnsupportedVersion  102
    │   │   ├── HeartbeatTimeout    104
    │   │   ├── UnexpectedFrame     105
    │   │   ├── ConnectionForced    106: the broker shut down, or an operator closed it
    │   │   ├── SlowConsumer        107
    │   │   └── ConnectionLimit     108
    │   ├── AccessRefused           103 in Close: bad credentials, or no access to the vhost
    │   └── TlsError                sluices://: the TLS handshake failed or TLS is misconfigured
    ├── TimeoutError                no answer in time (also the built-in TimeoutError)
    ├── ProtocolError               the server broke the protocol
    ├── ChannelError                2xx: the request failed; the connection is still usable
    │   ├── MalformedRequest        200
    │   ├── UnknownOpcode           201
    │   ├── NotFound                202
    │   ├── PreconditionFailed      203
    │   ├── ResourceLocked          204
    │   ├── NotAllowed              205
    │   ├── UnknownDeliveryTag      206: an ack, nack, reject or extend for a delivery that
    │   │                           is not outstanding (its lease expired, already settled)
    │   ├── InvalidArgument         207 (also a ValueError)
    │   ├── LimitExceeded           208: a configured limit (the message names it)
    │   ├── NotLeader               209: a replicated queue led by another node (the client
    │   │                           follows it; raised when it cannot)
    │   └── PermissionDenied        103 in Error: the user lacks a permission
    │                               (the connection stays up)
    ├── PublishRejected             the broker refused one published message (any code; the
    │   │                           error is also an instance of its code's class)
    │   ├── Unroutable              302: a mandatory message matched no queue
    │   └── ResourceLimit           a limit was hit
    │       ├── MessageTooLarge     300
    │       ├── StorageFull         301
    │       ├── QueueFull           303
    │       └── MemoryLimit         304: the broker's memory limit
    ├── ConsumerCancelled           4xx: the broker stopped a consumer
    │   ├── QueueDeleted            400
    │   ├── CancelledByOperator     401 (CONSUMER_CANCELLED)
    │   └── LeaderMoved             402: its replicated queue's leader moved (the client
    │                               consumes there; raised when it cannot)
    ├── ServerError                 5xx: a server fault; the operation may be retried
    │   ├── InternalError           500
    │   └── ResourceExhausted       501
    ├── AlreadySettled              the message was already acked, nacked or rejected
    └── DeliveryLostError           the message's connection was lost (the client
                                    reconnected): it will be delivered again
"""

from __future__ import annotations

import builtins
from typing import Any, Optional

__all__ = [
    "AccessRefused",
    "AlreadySettled",
    "CancelledByOperator",
    "ChannelError",
    "ConnectionClosed",
    "ConnectionError",
    "ConnectionForced",
    "ConnectionLimit",
    "ConsumerCancelled",
    "DeliveryLostError",
    "FrameTooLarge",
    "HeartbeatTimeout",
    "InternalError",
    "InvalidArgument",
    "InvalidUrl",
    "LeaderMoved",
    "LimitExceeded",
    "MalformedFrame",
    "MalformedRequest",
    "MemoryLimit",
    "MessageTooLarge",
    "NotAllowed",
    "NotFound",
    "NotLeader",
    "PermissionDenied",
    "PreconditionFailed",
    "ProtocolError",
    "PublishRejected",
    "QueueDeleted",
    "QueueFull",
    "ResourceExhausted",
    "ResourceLimit",
    "ResourceLocked",
    "ServerError",
    "SlowConsumer",
    "SluiceError",
    "StorageFull",
    "TimeoutError",
    "TlsError",
    "UnexpectedFrame",
    "UnknownDeliveryTag",
    "UnknownOpcode",
    "Unroutable",
    "UnsupportedVersion",
]

#: Protocol names of the error codes (protocol.md §11). A test checks this table against the
#: Rust client's (``sluice._sluice.ERROR_CODES``), so a code added there needs a class here.
CODE_NAMES: dict[int, str] = {
    100: "MALFORMED_FRAME",
    101: "FRAME_TOO_LARGE",
    102: "UNSUPPORTED_VERSION",
    103: "ACCESS_REFUSED",
    104: "HEARTBEAT_TIMEOUT",
    105: "UNEXPECTED_FRAME",
    106: "CONNECTION_FORCED",
    107: "SLOW_CONSUMER",
    108: "CONNECTION_LIMIT",
    200: "MALFORMED_REQUEST",
    201: "UNKNOWN_OPCODE",
    202: "NOT_FOUND",
    203: "PRECONDITION_FAILED",
    204: "RESOURCE_LOCKED",
    205: "NOT_ALLOWED",
    206: "UNKNOWN_DELIVERY_TAG",
    207: "INVALID_ARGUMENT",
    208: "LIMIT_EXCEEDED",
    209: "NOT_LEADER",
    300: "MESSAGE_TOO_LARGE",
    301: "STORAGE_FULL",
    302: "UNROUTABLE",
    303: "QUEUE_FULL",
    304: "MEMORY_LIMIT",
    400: "QUEUE_DELETED",
    401: "CONSUMER_CANCELLED",
    402: "LEADER_MOVED",
    500: "INTERNAL_ERROR",
    501: "RESOURCE_EXHAUSTED",
}


class SluiceError(Exception):
    """Base class of every error the client raises."""

    #: The protocol error code, when the broker sent one.
    code: Optional[int]

    def __init__(self, message: str = "", code: Optional[int] = None) -> None:
        super().__init__(message)
        self.code = code

    @property
    def code_name(self) -> Optional[str]:
        """The code's name in the protocol, e.g. ``"NOT_FOUND"``."""
        if self.code is None:
            return None
        return CODE_NAMES.get(self.code, "UNKNOWN")

    def __reduce__(self) -> tuple[Any, ...]:
        # Keeps the code when the error crosses a process boundary (multiprocessing).
        return (type(self), (str(self), self.code))


class InvalidUrl(SluiceError, ValueError):
    """The connection URL does not parse (``sluice://user:password@host:port/?options``)."""


class ConnectionError(SluiceError, builtins.ConnectionError):
    """Connecting failed, or the connection was lost. Also the built-in
    :class:`ConnectionError`, so ``except ConnectionError`` (or ``OSError``) catches it."""


class ConnectionClosed(ConnectionError):
    """The connection has ended: closed by this client, by the broker, or lost."""


class MalformedFrame(ConnectionClosed):
    """``MALFORMED_FRAME`` (100): the framing broke; the connection was closed."""


class FrameTooLarge(ConnectionClosed):
    """``FRAME_TOO_LARGE`` (101): a frame above the agreed maximum; the connection was closed."""


class UnsupportedVersion(ConnectionClosed):
    """``UNSUPPORTED_VERSION`` (102): no protocol version in common."""


class HeartbeatTimeout(ConnectionClosed):
    """``HEARTBEAT_TIMEOUT`` (104): nothing was heard for two heartbeat intervals."""


class UnexpectedFrame(ConnectionClosed):
    """``UNEXPECTED_FRAME`` (105): a frame not allowed in the connection's state."""


class ConnectionForced(ConnectionClosed):
    """``CONNECTION_FORCED`` (106): the broker is shutting down, or an operator closed the
    connection; reconnecting later may work."""


class SlowConsumer(ConnectionClosed):
    """``SLOW_CONSUMER`` (107): this client left what it asked for unread too long."""


class ConnectionLimit(ConnectionClosed):
    """``CONNECTION_LIMIT`` (108): the broker or the user is at its connection limit."""


class AccessRefused(ConnectionError):
    """The broker refused the credentials, or the vhost (``ACCESS_REFUSED`` at login)."""


class TlsError(ConnectionError):
    """TLS (``sluices://``) failed: the server's certificate is not trusted, the server
    refused ours (mutual TLS), or a ``ca_file``/``cert_file``/``key_file`` is unusable."""


class TimeoutError(SluiceError, builtins.TimeoutError):
    """No answer within the allowed time; the outcome of the request is unknown. Also the
    built-in :class:`TimeoutError`."""


class ProtocolError(SluiceError):
    """The broker sent something this client cannot accept."""


class ChannelError(SluiceError):
    """The broker refused a request (2xx codes). It had no effect; the connection stays up."""


class MalformedRequest(ChannelError):
    """``MALFORMED_REQUEST`` (200): the broker could not decode the request."""


class UnknownOpcode(ChannelError):
    """``UNKNOWN_OPCODE`` (201): the broker does not know the request."""


class NotFound(ChannelError):
    """No such queue, exchange or consumer (``NOT_FOUND``)."""


class PreconditionFailed(ChannelError):
    """A declare with other settings, or an unmet ``if_unused`` / ``if_empty``; the message
    names the first setting that differs."""


class ResourceLocked(ChannelError):
    """An exclusive queue or consumer of another connection (``RESOURCE_LOCKED``)."""


class NotAllowed(ChannelError):
    """A reserved name, the default exchange, a duplicate consumer tag (``NOT_ALLOWED``)."""


class UnknownDeliveryTag(ChannelError):
    """The delivery is not outstanding: already settled, or its lease expired (it will be
    delivered again)."""


class InvalidArgument(ChannelError, ValueError):
    """A value out of range: a name too long, a bad ``x-match``, a field too long to encode."""


class LimitExceeded(ChannelError):
    """A configured limit would be exceeded (``LIMIT_EXCEEDED``): a vhost's ``max_queues``,
    consumers per connection, bindings per exchange, ...; the message names the limit."""


class NotLeader(ChannelError):
    """``NOT_LEADER`` (209): the request needs the leader of a replicated queue, and this
    node is not it; the message is the leader's ``host:port`` (empty while none is known).
    The client follows it by itself; this is raised only when it cannot (no leader in time,
    or an address it cannot reach)."""


class PermissionDenied(ChannelError):
    """The user lacks the permission the request needs (``ACCESS_REFUSED`` in an ``Error``);
    the message names it. Unlike :class:`AccessRefused`, the connection stays up. A refused
    publish raises ``PublishRejectedPermissionDenied``, caught by both this class and
    :class:`PublishRejected`."""


class PublishRejected(SluiceError):
    """The broker refused a published message; it was not stored. The error is also an
    instance of its code's class (:class:`NotFound`, :class:`QueueFull`, ...)."""


class Unroutable(PublishRejected):
    """A mandatory message matched no queue (``UNROUTABLE``)."""


class ResourceLimit(PublishRejected):
    """A limit refused the message: its size, the broker's disk or memory, a queue's length."""


class MessageTooLarge(ResourceLimit):
    """Meta block plus body exceed the broker's ``max_message_len``, or a queue's
    ``max_message_bytes``."""


class StorageFull(ResourceLimit):
    """The broker is out of disk space (``STORAGE_FULL``)."""


class QueueFull(ResourceLimit):
    """A ``reject-publish`` queue is at its length limit (``QUEUE_FULL``)."""


class MemoryLimit(ResourceLimit):
    """The broker uses more memory than it may; publishing is blocked (``MEMORY_LIMIT``)."""


class ConsumerCancelled(SluiceError):
    """The broker stopped a consumer: its queue was deleted, or an operator cancelled it."""


class QueueDeleted(ConsumerCancelled):
    """``QUEUE_DELETED`` (400): the consumer's queue was deleted."""


class CancelledByOperator(ConsumerCancelled):
    """``CONSUMER_CANCELLED`` (401): an operator cancelled the consumer."""


class LeaderMoved(ConsumerCancelled):
    """``LEADER_MOVED`` (402): the leader of the consumer's replicated queue moved to another
    node (the message is its ``host:port``, or empty). The consumer consumes there by
    itself; this is raised only when it cannot."""


class ServerError(SluiceError):
    """The broker failed (5xx); the operation may be retried."""


class InternalError(ServerError):
    """``INTERNAL_ERROR`` (500): the broker failed; the request may be retried."""


class ResourceExhausted(ServerError):
    """``RESOURCE_EXHAUSTED`` (501): the broker ran out of a resource; retry later."""


class AlreadySettled(SluiceError):
    """The message was already acked, nacked or rejected through this handle."""


class DeliveryLostError(SluiceError):
    """The message came on a connection that has since been lost (the client reconnected,
    or followed a queue's leader elsewhere): it cannot be settled any more, and its queue
    will deliver it again."""


#: The class of each error code. ``ACCESS_REFUSED`` (103) is :class:`AccessRefused` when
#: the broker closes the connection with it, :class:`PermissionDenied` when one request is
#: refused.
BY_CODE: dict[int, type[SluiceError]] = {
    100: MalformedFrame,
    101: FrameTooLarge,
    102: UnsupportedVersion,
    103: AccessRefused,
    104: HeartbeatTimeout,
    105: UnexpectedFrame,
    106: ConnectionForced,
    107: SlowConsumer,
    108: ConnectionLimit,
    200: MalformedRequest,
    201: UnknownOpcode,
    202: NotFound,
    203: PreconditionFailed,
    204: ResourceLocked,
    205: NotAllowed,
    206: UnknownDeliveryTag,
    207: InvalidArgument,
    208: LimitExceeded,
    209: NotLeader,
    300: MessageTooLarge,
    301: StorageFull,
    302: Unroutable,
    303: QueueFull,
    304: MemoryLimit,
    400: QueueDeleted,
    401: CancelledByOperator,
    402: LeaderMoved,
    500: InternalError,
    501: ResourceExhausted,
}


def _make_rejected(cls: type[SluiceError]) -> type[PublishRejected]:
    """``PublishRejected`` mixed with `cls`, as a class of this module (so it pickles)."""
    if issubclass(cls, PublishRejected):
        return cls
    name = f"PublishRejected{cls.__name__}"
    doc = f"A publish refused with the code of :class:`{cls.__name__}`."
    made = type(name, (PublishRejected, cls), {"__doc__": doc, "__module__": __name__})
    globals()[name] = made
    return made


# A refused publish carries a 2xx or 5xx code as often as a 3xx one (NOT_FOUND for a missing
# exchange, ACCESS_REFUSED for a missing permission): one class per code, made once here.
_REJECTED: dict[int, type[PublishRejected]] = {
    code: _make_rejected(PermissionDenied if code == 103 else cls)
    for code, cls in BY_CODE.items()
    if code == 103 or code // 100 in (2, 3, 5)
}


def rejected_class(code: int) -> type[PublishRejected]:
    """The class of a publish refused with `code`: a subclass of both
    :class:`PublishRejected` and ``BY_CODE[code]`` (:class:`PublishRejected` itself for a code
    this version does not know)."""
    return _REJECTED.get(code, PublishRejected)
