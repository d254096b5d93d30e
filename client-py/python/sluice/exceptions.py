"""The exceptions the Sluice client raises.

Every error the broker reports carries a stable protocol error code (``protocol.md`` §11);
the client maps each code to one class here, so that ``except sluice.NotFound`` works
without comparing numbers. The numeric code stays available as ``error.code`` and its
protocol name as ``error.code_name``.

::

    SluiceError
    ├── InvalidUrl                  (also a ValueError)
    ├── ConnectionError             could not connect, or the connection was lost
    │   ├── ConnectionClosed        the connection has ended (1xx codes, or closed by us)
    │   ├── AccessRefused           103 in Close: bad credentials, or no access to the vhost
    │   └── TlsError                sluices://: the TLS handshake failed or TLS is misconfigured
    ├── TimeoutError                no answer in time
    ├── ProtocolError               the server broke the protocol
    ├── ChannelError                2xx: the request failed; the connection is still usable
    │   ├── NotFound                202
    │   ├── PreconditionFailed      203
    │   ├── ResourceLocked          204
    │   ├── NotAllowed              205
    │   ├── UnknownDeliveryTag      206
    │   ├── InvalidArgument         207 (also a ValueError)
    │   ├── LimitExceeded           208: a configured limit (the message names it)
    │   └── PermissionDenied        103 in Error: the user lacks a permission
    │                               (the connection stays up)
    ├── PublishRejected             3xx: the broker refused one published message
    │   ├── Unroutable              302: a mandatory message matched no queue
    │   └── ResourceLimit           a limit was hit (itself for 304: the broker's memory limit)
    │       ├── MessageTooLarge     300
    │       ├── StorageFull         301
    │       └── QueueFull           303
    ├── ConsumerCancelled           4xx: the broker stopped a consumer
    ├── ServerError                 5xx: a server fault; the operation may be retried
    └── AlreadySettled              the message was already acked, nacked or rejected
"""

from __future__ import annotations

from typing import Any, Optional

__all__ = [
    "AccessRefused",
    "AlreadySettled",
    "ChannelError",
    "ConnectionClosed",
    "ConnectionError",
    "ConsumerCancelled",
    "InvalidArgument",
    "InvalidUrl",
    "LimitExceeded",
    "MessageTooLarge",
    "NotAllowed",
    "NotFound",
    "PermissionDenied",
    "PreconditionFailed",
    "ProtocolError",
    "PublishRejected",
    "QueueFull",
    "ResourceLimit",
    "ResourceLocked",
    "ServerError",
    "SluiceError",
    "StorageFull",
    "TimeoutError",
    "TlsError",
    "UnknownDeliveryTag",
    "Unroutable",
]

#: Protocol names of the error codes (protocol.md §11).
CODE_NAMES: dict[int, str] = {
    100: "MALFORMED_FRAME",
    101: "FRAME_TOO_LARGE",
    102: "UNSUPPORTED_VERSION",
    103: "ACCESS_REFUSED",
    104: "HEARTBEAT_TIMEOUT",
    105: "UNEXPECTED_FRAME",
    106: "CONNECTION_FORCED",
    200: "MALFORMED_REQUEST",
    201: "UNKNOWN_OPCODE",
    202: "NOT_FOUND",
    203: "PRECONDITION_FAILED",
    204: "RESOURCE_LOCKED",
    205: "NOT_ALLOWED",
    206: "UNKNOWN_DELIVERY_TAG",
    207: "INVALID_ARGUMENT",
    208: "LIMIT_EXCEEDED",
    300: "MESSAGE_TOO_LARGE",
    301: "STORAGE_FULL",
    302: "UNROUTABLE",
    303: "QUEUE_FULL",
    400: "QUEUE_DELETED",
    401: "CONSUMER_CANCELLED",
    500: "INTERNAL_ERROR",
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


class ConnectionError(SluiceError):
    """Connecting failed, or the connection was lost."""


class ConnectionClosed(ConnectionError):
    """The connection has ended: closed by this client, by the broker, or lost."""


class AccessRefused(ConnectionError):
    """The broker refused the credentials, or the vhost (``ACCESS_REFUSED`` at login)."""


class TlsError(ConnectionError):
    """TLS (``sluices://``) failed: the server's certificate is not trusted, the server
    refused ours (mutual TLS), or a ``ca_file``/``cert_file``/``key_file`` is unusable."""


class TimeoutError(SluiceError):
    """No answer within the allowed time; the outcome of the request is unknown."""


class ProtocolError(SluiceError):
    """The broker sent something this client cannot accept."""


class ChannelError(SluiceError):
    """The broker refused a request (2xx codes). It had no effect; the connection stays up."""


class NotFound(ChannelError):
    """No such queue, exchange or consumer (``NOT_FOUND``)."""


class PreconditionFailed(ChannelError):
    """A declare with other settings, or an unmet ``if_unused`` / ``if_empty``."""


class ResourceLocked(ChannelError):
    """An exclusive queue or consumer of another connection (``RESOURCE_LOCKED``)."""


class NotAllowed(ChannelError):
    """A reserved name, the default exchange, a duplicate consumer tag (``NOT_ALLOWED``)."""


class UnknownDeliveryTag(ChannelError):
    """The delivery is not outstanding: already settled, or its lease expired."""


class InvalidArgument(ChannelError, ValueError):
    """A value out of range: a name too long, a bad ``x-match``, a field too long to encode."""


class LimitExceeded(ChannelError):
    """A configured limit would be exceeded (``LIMIT_EXCEEDED``): a vhost's ``max_queues``,
    consumers per connection, bindings per exchange, ...; the message names the limit."""


class PermissionDenied(ChannelError):
    """The user lacks the permission the request needs (``ACCESS_REFUSED`` in an ``Error``);
    the message names it. Unlike :class:`AccessRefused`, the connection stays up. A refused
    publish raises :class:`PublishRejected` with code 103."""


class PublishRejected(SluiceError):
    """The broker refused a published message; it was not stored."""


class Unroutable(PublishRejected):
    """A mandatory message matched no queue (``UNROUTABLE``)."""


class ResourceLimit(PublishRejected):
    """A limit refused the message: its size, the broker's disk, a queue's length."""


class MessageTooLarge(ResourceLimit):
    """Meta block plus body exceed the broker's ``max_message_len``."""


class StorageFull(ResourceLimit):
    """The broker is out of disk space (``STORAGE_FULL``)."""


class QueueFull(ResourceLimit):
    """A ``reject-publish`` queue is at its length limit (``QUEUE_FULL``)."""


class ConsumerCancelled(SluiceError):
    """The broker stopped a consumer: its queue was deleted, or an operator cancelled it."""


class ServerError(SluiceError):
    """The broker failed (5xx); the operation may be retried."""


class AlreadySettled(SluiceError):
    """The message was already acked, nacked or rejected through this handle."""

