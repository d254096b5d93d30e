"""Python client for the Sluice message broker.

Two clients with the same methods: :class:`Client` blocks (releasing the GIL while it waits)
and :class:`AsyncClient` returns coroutines for asyncio. Both wrap the Rust client
``sluice-client``, running on one tokio runtime shared by the process.

::

    import sluice

    with sluice.Client("sluice://guest:guest@127.0.0.1:5680") as client:
        client.declare_queue("tasks")
        client.publish("", "tasks", b"job-1")          # returns once confirmed
        for msg in client.consume("tasks", prefetch=100):
            with msg.process():                         # ack, or reject if it raises
                handle(msg.body)

    async with sluice.AsyncClient("sluice://") as client:
        await client.publish("", "tasks", b"job-2")
        async for msg in client.consume("tasks"):
            async with msg.process(requeue=True):
                await handle(msg.body)
"""

from ._sluice import (
    AsyncClient,
    AsyncConsumer,
    AsyncMessage,
    AsyncMessageProcess,
    BaseMessage,
    CircuitInfo,
    Client,
    Consumer,
    ConsumerInfo,
    DeclaredQueue,
    HistoryEvent,
    Message,
    MessageHistory,
    MessageProcess,
    OutgoingMessage,
    PublishResult,
    QueueInfo,
    ScheduledMessage,
    __version__,
)
from . import _tracing  # noqa: F401  (publishes carry the OpenTelemetry span when installed)
from .exceptions import (
    AccessRefused,
    AlreadySettled,
    CancelledByOperator,
    ChannelError,
    ConnectionClosed,
    ConnectionError,
    ConnectionForced,
    ConnectionLimit,
    ConsumerCancelled,
    DeliveryLostError,
    FrameTooLarge,
    HeartbeatTimeout,
    InternalError,
    InvalidArgument,
    InvalidUrl,
    LeaderMoved,
    LimitExceeded,
    MalformedFrame,
    MalformedRequest,
    MemoryLimit,
    MessageTooLarge,
    NotAllowed,
    NotFound,
    NotLeader,
    PermissionDenied,
    PreconditionFailed,
    ProtocolError,
    PublishRejected,
    QueueDeleted,
    QueueFull,
    ResourceExhausted,
    ResourceLimit,
    ResourceLocked,
    ServerError,
    SlowConsumer,
    SluiceError,
    StorageFull,
    TimeoutError,
    TlsError,
    UnexpectedFrame,
    UnknownDeliveryTag,
    UnknownOpcode,
    Unroutable,
    UnsupportedVersion,
)

__all__ = [
    "AccessRefused",
    "AlreadySettled",
    "AsyncClient",
    "AsyncConsumer",
    "AsyncMessage",
    "AsyncMessageProcess",
    "BaseMessage",
    "CancelledByOperator",
    "ChannelError",
    "CircuitInfo",
    "Client",
    "ConnectionClosed",
    "ConnectionError",
    "ConnectionForced",
    "ConnectionLimit",
    "Consumer",
    "ConsumerCancelled",
    "ConsumerInfo",
    "DeclaredQueue",
    "DeliveryLostError",
    "FrameTooLarge",
    "HeartbeatTimeout",
    "HistoryEvent",
    "InternalError",
    "InvalidArgument",
    "InvalidUrl",
    "LeaderMoved",
    "LimitExceeded",
    "MalformedFrame",
    "MalformedRequest",
    "MemoryLimit",
    "Message",
    "MessageHistory",
    "MessageProcess",
    "MessageTooLarge",
    "NotAllowed",
    "NotFound",
    "NotLeader",
    "OutgoingMessage",
    "PermissionDenied",
    "PreconditionFailed",
    "ProtocolError",
    "PublishRejected",
    "QueueDeleted",
    "PublishResult",
    "QueueFull",
    "QueueInfo",
    "ResourceExhausted",
    "ResourceLimit",
    "ResourceLocked",
    "ScheduledMessage",
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
    "__version__",
]
