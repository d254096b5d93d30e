"""Type stubs for the native module ``sluice._sluice`` (re-exported by ``sluice``).

In the async API, the methods of ``AsyncClient`` and ``AsyncConsumer.receive``/``cancel`` return
coroutines, started when awaited (``asyncio.create_task`` and ``TaskGroup.create_task`` take
them). Settling a message and the iterator and context-manager protocols return asyncio
futures, often already done: acks and messages already buffered cost no task switch.
"""

from asyncio import Future
from datetime import datetime
from collections.abc import AsyncIterator, Coroutine, Iterable, Iterator, Mapping
from datetime import datetime
from decimal import Decimal
from types import TracebackType
from typing import Any, Literal, Optional, Union, final, overload

from typing_extensions import Self, disjoint_base

from .exceptions import SluiceError

__all__ = [
    "AsyncClient",
    "AsyncConsumer",
    "AsyncMessage",
    "AsyncMessageProcess",
    "BaseMessage",
    "CircuitInfo",
    "Client",
    "Consumer",
    "ConsumerInfo",
    "DeclaredQueue",
    "ERROR_CODES",
    "HistoryEvent",
    "Message",
    "MessageHistory",
    "MessageProcess",
    "OutgoingMessage",
    "PublishResult",
    "QueueInfo",
    "ScheduledMessage",
    "__version__",
    "_exception_for",
    "_set_trace_injector",
]

__version__: str
#: Every protocol error code the Rust client knows, as ``(number, name)`` (protocol.md §11).
ERROR_CODES: list[tuple[int, str]]

def _exception_for(kind: str, code: int, message: str) -> BaseException:
    """The exception the client raises for `code` arriving as `kind` (``"close"``,
    ``"error"``, ``"rejected"`` or ``"cancelled"``); for tests of the mapping."""

def _set_trace_injector(injector: Any) -> None:
    """Registers the callable returning the current OpenTelemetry context's
    ``(traceparent, tracestate)`` headers, or None (``sluice._tracing`` does, when
    ``opentelemetry-api`` is installed)."""

#: What a message body may be: bytes are sent without a copy, str as UTF-8.
_Body = Union[bytes, bytearray, memoryview, str]
#: A header value, AMQP's field types: None is void, bool is kept apart from int, float is
#: finite, list/tuple is an array, a mapping a nested table (16 levels at most), datetime a
#: timestamp (whole seconds; naive means UTC; read back as UTC) and Decimal a decimal.
#: Read back, arrays are lists and tables dicts.
_HeaderValue = Union[
    None,
    str,
    int,
    bool,
    float,
    bytes,
    datetime,
    Decimal,
    list["_HeaderValue"],
    tuple["_HeaderValue", ...],
    Mapping[str, "_HeaderValue"],
]
_Headers = Mapping[str, _HeaderValue]
_ExchangeKind = Literal[
    "direct", "fanout", "topic", "headers", "weighted", "consistent-hash"
]
_Overflow = Literal["drop-head", "reject-publish", "reject-publish-dlx"]

@final
class DeclaredQueue:
    """What ``declare_queue`` answers."""

    @property
    def name(self) -> str: ...
    @property
    def ready(self) -> int: ...
    @property
    def consumers(self) -> int: ...

@final
class ConsumerInfo:
    """One consumer of ``list_consumers``."""

    @property
    def queue(self) -> str: ...
    @property
    def consumer_tag(self) -> str: ...
    @property
    def connection_id(self) -> int: ...
    @property
    def prefetch(self) -> int: ...
    @property
    def unacked(self) -> int: ...
    @property
    def active(self) -> bool: ...
    @property
    def priority(self) -> int: ...
    @property
    def circuit(self) -> Optional[CircuitInfo]: ...

@final
class CircuitInfo:
    """A consumer's circuit (circuit breaking): ``Consumer.circuit``, ``ConsumerInfo.circuit``."""

    @property
    def state(self) -> Literal["closed", "open", "half-open"]: ...
    @property
    def until(self) -> Optional[float]: ...
    @property
    def failures(self) -> int: ...
    @property
    def reason(self) -> str: ...

_HistoryEventKind = Literal[
    "stored",
    "delivered",
    "acked",
    "nacked",
    "rejected",
    "lease-expired",
    "lease-extended",
    "returned",
    "dead-lettered",
    "purged",
    "moved",
]

@final
class HistoryEvent:
    """One thing that happened to a message (``trace_message``); fields that do not belong
    to its ``kind`` are None."""

    @property
    def at_ms(self) -> int: ...
    @property
    def kind(self) -> _HistoryEventKind: ...
    @property
    def exchange(self) -> Optional[str]: ...
    @property
    def routing_key(self) -> Optional[str]: ...
    @property
    def consumer_tag(self) -> Optional[str]: ...
    @property
    def connection_id(self) -> Optional[int]: ...
    @property
    def delivery_tag(self) -> Optional[int]: ...
    @property
    def delivery_count(self) -> Optional[int]: ...
    @property
    def lease_deadline_ms(self) -> Optional[int]: ...
    @property
    def delay_ms(self) -> Optional[int]: ...
    @property
    def reason(self) -> Optional[str]: ...
    @property
    def cause(self) -> Optional[Literal["released", "connection-closed", "consumer-cancelled"]]: ...
    @property
    def to_queue(self) -> Optional[str]: ...

@final
class MessageHistory:
    """One queue's record of one message (``trace_message``)."""

    @property
    def queue(self) -> str: ...
    @property
    def message_seq(self) -> int: ...
    @property
    def message_id(self) -> str: ...
    @property
    def state(self) -> Literal["ready", "delivered", "scheduled", "moving", "gone"]: ...
    @property
    def deadline_ms(self) -> Optional[int]: ...
    @property
    def trace_parent(self) -> Optional[str]: ...
    @property
    def events_dropped(self) -> int: ...
    @property
    def events(self) -> list[HistoryEvent]: ...

@final
class QueueInfo:
    """What ``inspect_queue`` answers: a queue's settings and counters."""

    @property
    def name(self) -> str: ...
    @property
    def durable(self) -> bool: ...
    @property
    def exclusive(self) -> bool: ...
    @property
    def auto_delete(self) -> bool: ...
    @property
    def ready(self) -> int: ...
    @property
    def unacked(self) -> int: ...
    @property
    def consumers(self) -> int: ...
    @property
    def bytes(self) -> int: ...
    @property
    def oldest_ready_age_ms(self) -> int: ...
    @property
    def scheduled(self) -> int: ...
    @property
    def duplicates_dropped(self) -> int: ...
    @property
    def arguments(self) -> dict[str, Any]: ...

@final
class ScheduledMessage:
    """A message stored but waiting for its time, as ``list_scheduled`` returns it."""

    @property
    def message_seq(self) -> int: ...
    @property
    def due_at_ms(self) -> int: ...
    @property
    def enqueued_at_ms(self) -> int: ...
    @property
    def delivery_count(self) -> int: ...
    @property
    def exchange(self) -> str: ...
    @property
    def routing_key(self) -> str: ...
    @property
    def body(self) -> bytes: ...

@final
class PublishResult:
    """How the broker settled a published message it accepted."""

    @property
    def duplicate(self) -> bool: ...

@final
class OutgoingMessage:
    """A message for ``publish_batch``."""

    def __new__(
        cls,
        exchange: str,
        routing_key: str,
        body: _Body,
        *,
        headers: Optional[_Headers] = None,
        mandatory: bool = False,
        persistent: bool = True,
        content_type: Optional[str] = None,
        content_encoding: Optional[str] = None,
        message_id: Optional[str] = None,
        correlation_id: Optional[str] = None,
        reply_to: Optional[str] = None,
        expiration: Optional[float] = None,
        timestamp: Optional[float] = None,
        priority: Optional[int] = None,
        delay: Optional[float] = None,
        deliver_at: Union[datetime, float, None] = None,
        trace_parent: Optional[str] = None,
        trace_state: Optional[str] = None,
    ) -> OutgoingMessage: ...
    @property
    def exchange(self) -> str: ...
    @property
    def routing_key(self) -> str: ...
    @property
    def body(self) -> bytes: ...
    @property
    def headers(self) -> dict[str, _HeaderValue]: ...
    @property
    def mandatory(self) -> bool: ...
    @property
    def persistent(self) -> bool: ...

@disjoint_base
class BaseMessage:
    """A delivered message's fields; ``Message`` and ``AsyncMessage`` add settling."""

    @property
    def body(self) -> bytes: ...
    @property
    def headers(self) -> dict[str, _HeaderValue]: ...
    @property
    def exchange(self) -> str: ...
    @property
    def routing_key(self) -> str: ...
    @property
    def redelivered(self) -> bool: ...
    @property
    def delivery_count(self) -> int: ...
    @property
    def delivery_tag(self) -> int: ...
    @property
    def message_seq(self) -> int: ...
    @property
    def enqueued_at_ms(self) -> int: ...
    @property
    def persistent(self) -> bool: ...
    @property
    def content_type(self) -> Optional[str]: ...
    @property
    def content_encoding(self) -> Optional[str]: ...
    @property
    def message_id(self) -> Optional[str]: ...
    @property
    def correlation_id(self) -> Optional[str]: ...
    @property
    def reply_to(self) -> Optional[str]: ...
    @property
    def expiration(self) -> Optional[float]: ...
    @property
    def timestamp(self) -> Optional[float]: ...
    @property
    def priority(self) -> Optional[int]: ...
    @property
    def trace_parent(self) -> Optional[str]:
        """The W3C ``traceparent`` header it was published with, or None."""
    @property
    def trace_state(self) -> Optional[str]: ...
    def trace_context(self) -> Any:
        """An OpenTelemetry ``Context`` whose span is the publisher's (needs
        ``opentelemetry-api``)."""
    @property
    def settled(self) -> bool: ...

@final
class Message(BaseMessage):
    """A message from the blocking API."""

    def ack(self, *, confirm: bool = False) -> None: ...
    def nack(
        self,
        requeue: bool = True,
        *,
        delay: Optional[float] = None,
        reason: Optional[str] = None,
        confirm: bool = False,
    ) -> None: ...
    def reject(self, *, reason: Optional[str] = None, confirm: bool = False) -> None: ...
    def extend(self, seconds: float, *, confirm: bool = False) -> None: ...
    def process(
        self, *, requeue: bool = False, reject_on_redelivered: bool = False
    ) -> MessageProcess: ...

@final
class AsyncMessage(BaseMessage):
    """A message from the asyncio API."""

    def ack(self, *, confirm: bool = False) -> Future[None]: ...
    def nack(
        self,
        requeue: bool = True,
        *,
        delay: Optional[float] = None,
        reason: Optional[str] = None,
        confirm: bool = False,
    ) -> Future[None]: ...
    def reject(
        self, *, reason: Optional[str] = None, confirm: bool = False
    ) -> Future[None]: ...
    def extend(self, seconds: float, *, confirm: bool = False) -> Future[None]: ...
    def process(
        self, *, requeue: bool = False, reject_on_redelivered: bool = False
    ) -> AsyncMessageProcess: ...

@final
class MessageProcess:
    """Acks the message when the block succeeds; rejects or requeues it when it raises."""

    def __enter__(self) -> Message: ...
    def __exit__(
        self,
        exc_type: Optional[type[BaseException]],
        exc_value: Optional[BaseException],
        traceback: Optional[TracebackType],
    ) -> bool: ...

@final
class AsyncMessageProcess:
    """Acks the message when the block succeeds; rejects or requeues it when it raises."""

    def __aenter__(self) -> Future[AsyncMessage]: ...
    def __aexit__(
        self,
        exc_type: Optional[type[BaseException]],
        exc_value: Optional[BaseException],
        traceback: Optional[TracebackType],
    ) -> Future[bool]: ...

@final
class Consumer(Iterator[Message]):
    """Messages from one queue, for the blocking API."""

    def __iter__(self) -> Self: ...
    def __next__(self) -> Message: ...
    def receive(self, timeout: Optional[float] = None) -> Optional[Message]: ...
    def cancel(self) -> None: ...
    def __enter__(self) -> Self: ...
    def __exit__(
        self,
        exc_type: Optional[type[BaseException]],
        exc_value: Optional[BaseException],
        traceback: Optional[TracebackType],
    ) -> bool: ...
    @property
    def queue(self) -> str: ...
    @property
    def tag(self) -> Optional[str]: ...
    @property
    def circuit(self) -> CircuitInfo: ...
    @property
    def is_closed(self) -> bool: ...

@final
class AsyncConsumer(AsyncIterator[AsyncMessage]):
    """Messages from one queue, for the asyncio API."""

    def __aiter__(self) -> Self: ...
    def __anext__(self) -> Future[AsyncMessage]: ...
    def receive(
        self, timeout: Optional[float] = None
    ) -> Coroutine[Any, Any, Optional[AsyncMessage]]: ...
    def cancel(self) -> Coroutine[Any, Any, None]: ...
    def __aenter__(self) -> Future[Self]: ...
    def __aexit__(
        self,
        exc_type: Optional[type[BaseException]],
        exc_value: Optional[BaseException],
        traceback: Optional[TracebackType],
    ) -> Future[bool]: ...
    @property
    def queue(self) -> str: ...
    @property
    def tag(self) -> Optional[str]: ...
    @property
    def circuit(self) -> CircuitInfo: ...
    @property
    def is_closed(self) -> bool: ...

@final
class Client:
    """A blocking client: one connection, made in the constructor."""

    def __new__(
        cls,
        url: str = "sluice://",
        *,
        name: Optional[str] = None,
        heartbeat: Optional[float] = None,
        connect_timeout: Optional[float] = None,
        request_timeout: float = 30.0,
        prefetch: int = 1000,
        reconnect_timeout: float = 60.0,
        resend: bool = False,
    ) -> Client: ...
    def connect(self) -> Self: ...
    def declare_queue(
        self,
        name: str,
        durable: bool = True,
        *,
        exclusive: bool = False,
        auto_delete: bool = False,
        passive: bool = False,
        max_length: Optional[int] = None,
        max_length_bytes: Optional[int] = None,
        overflow: Optional[_Overflow] = None,
        message_ttl: Optional[float] = None,
        dead_letter_exchange: Optional[str] = None,
        dead_letter_routing_key: Optional[str] = None,
        ack_timeout: Optional[float] = None,
        delivery_limit: Optional[int] = None,
        expires: Optional[float] = None,
        max_priority: Optional[int] = None,
        retry_backoff: Optional[tuple[float, float, float]] = None,
        dedup_window: Optional[float] = None,
        dedup_window_count: Optional[int] = None,
        single_active_consumer: bool = False,
        replicas: Optional[int] = None,
    ) -> DeclaredQueue: ...
    def delete_queue(
        self, name: str, *, if_unused: bool = False, if_empty: bool = False
    ) -> int: ...
    def purge_queue(self, name: str) -> int: ...
    def list_consumers(self) -> list[ConsumerInfo]: ...
    def inspect_queue(self, name: str) -> QueueInfo: ...
    def trace_message(self, message_id: str) -> tuple[list[MessageHistory], bool]: ...
    def declare_exchange(
        self,
        name: str,
        kind: _ExchangeKind = "direct",
        *,
        durable: bool = True,
        auto_delete: bool = False,
        passive: bool = False,
        alternate_exchange: Optional[str] = None,
        hash_header: Optional[str] = None,
    ) -> None: ...
    def delete_exchange(self, name: str, *, if_unused: bool = False) -> None: ...
    def bind(
        self,
        queue: str,
        exchange: str,
        routing_key: str = "",
        arguments: Optional[_Headers] = None,
        *,
        weight: Optional[int] = None,
    ) -> None: ...
    def unbind(
        self,
        queue: str,
        exchange: str,
        routing_key: str = "",
        arguments: Optional[_Headers] = None,
    ) -> None: ...
    def publish(
        self,
        exchange: str,
        routing_key: str,
        body: _Body,
        *,
        headers: Optional[_Headers] = None,
        mandatory: bool = False,
        persistent: bool = True,
        content_type: Optional[str] = None,
        content_encoding: Optional[str] = None,
        message_id: Optional[str] = None,
        correlation_id: Optional[str] = None,
        reply_to: Optional[str] = None,
        expiration: Optional[float] = None,
        timestamp: Optional[float] = None,
        priority: Optional[int] = None,
        delay: Optional[float] = None,
        deliver_at: Union[datetime, float, None] = None,
        trace_parent: Optional[str] = None,
        trace_state: Optional[str] = None,
    ) -> PublishResult: ...
    @overload
    def publish_batch(
        self,
        messages: Iterable[Union[OutgoingMessage, tuple[str, str, _Body]]],
        *,
        return_exceptions: Literal[False] = False,
    ) -> None: ...
    @overload
    def publish_batch(
        self,
        messages: Iterable[Union[OutgoingMessage, tuple[str, str, _Body]]],
        *,
        return_exceptions: Literal[True],
    ) -> list[Union[PublishResult, SluiceError]]: ...
    def get(self, queue: str) -> Optional[Message]: ...
    def list_scheduled(
        self, queue: str, *, limit: int = 100, after: Optional[tuple[int, int]] = None
    ) -> tuple[list[ScheduledMessage], bool]: ...
    def cancel_scheduled(self, queue: str, message_seq: int) -> None: ...
    def get_many(
        self, queue: str, *, max: int = 10, wait: float = 0.0
    ) -> list[Message]: ...
    def consume(
        self,
        queue: str,
        *,
        prefetch: Optional[int] = None,
        consumer_tag: Optional[str] = None,
        exclusive: bool = False,
        ack_timeout: Optional[float] = None,
        priority: Optional[int] = None,
        circuit_breaker: Optional[Mapping[str, float]] = None,
    ) -> Consumer: ...
    def close(self) -> None: ...
    @property
    def is_closed(self) -> bool: ...
    def __enter__(self) -> Self: ...
    def __exit__(
        self,
        exc_type: Optional[type[BaseException]],
        exc_value: Optional[BaseException],
        traceback: Optional[TracebackType],
    ) -> bool: ...

@final
class AsyncClient:
    """An asyncio client: one connection, made on first use."""

    def __new__(
        cls,
        url: str = "sluice://",
        *,
        name: Optional[str] = None,
        heartbeat: Optional[float] = None,
        connect_timeout: Optional[float] = None,
        request_timeout: float = 30.0,
        prefetch: int = 1000,
        reconnect_timeout: float = 60.0,
        resend: bool = False,
    ) -> AsyncClient: ...
    def connect(self) -> Coroutine[Any, Any, Self]: ...
    def declare_queue(
        self,
        name: str,
        durable: bool = True,
        *,
        exclusive: bool = False,
        auto_delete: bool = False,
        passive: bool = False,
        max_length: Optional[int] = None,
        max_length_bytes: Optional[int] = None,
        overflow: Optional[_Overflow] = None,
        message_ttl: Optional[float] = None,
        dead_letter_exchange: Optional[str] = None,
        dead_letter_routing_key: Optional[str] = None,
        ack_timeout: Optional[float] = None,
        delivery_limit: Optional[int] = None,
        expires: Optional[float] = None,
        max_priority: Optional[int] = None,
        retry_backoff: Optional[tuple[float, float, float]] = None,
        dedup_window: Optional[float] = None,
        dedup_window_count: Optional[int] = None,
        single_active_consumer: bool = False,
        replicas: Optional[int] = None,
    ) -> Coroutine[Any, Any, DeclaredQueue]: ...
    def delete_queue(
        self, name: str, *, if_unused: bool = False, if_empty: bool = False
    ) -> Coroutine[Any, Any, int]: ...
    def purge_queue(self, name: str) -> Coroutine[Any, Any, int]: ...
    def list_consumers(self) -> Coroutine[Any, Any, list[ConsumerInfo]]: ...
    def inspect_queue(self, name: str) -> Coroutine[Any, Any, QueueInfo]: ...
    def trace_message(
        self, message_id: str
    ) -> Coroutine[Any, Any, tuple[list[MessageHistory], bool]]: ...
    def declare_exchange(
        self,
        name: str,
        kind: _ExchangeKind = "direct",
        *,
        durable: bool = True,
        auto_delete: bool = False,
        passive: bool = False,
        alternate_exchange: Optional[str] = None,
        hash_header: Optional[str] = None,
    ) -> Coroutine[Any, Any, None]: ...
    def delete_exchange(
        self, name: str, *, if_unused: bool = False
    ) -> Coroutine[Any, Any, None]: ...
    def bind(
        self,
        queue: str,
        exchange: str,
        routing_key: str = "",
        arguments: Optional[_Headers] = None,
        *,
        weight: Optional[int] = None,
    ) -> Coroutine[Any, Any, None]: ...
    def unbind(
        self,
        queue: str,
        exchange: str,
        routing_key: str = "",
        arguments: Optional[_Headers] = None,
    ) -> Coroutine[Any, Any, None]: ...
    def publish(
        self,
        exchange: str,
        routing_key: str,
        body: _Body,
        *,
        headers: Optional[_Headers] = None,
        mandatory: bool = False,
        persistent: bool = True,
        content_type: Optional[str] = None,
        content_encoding: Optional[str] = None,
        message_id: Optional[str] = None,
        correlation_id: Optional[str] = None,
        reply_to: Optional[str] = None,
        expiration: Optional[float] = None,
        timestamp: Optional[float] = None,
        priority: Optional[int] = None,
        delay: Optional[float] = None,
        deliver_at: Union[datetime, float, None] = None,
        trace_parent: Optional[str] = None,
        trace_state: Optional[str] = None,
    ) -> Coroutine[Any, Any, PublishResult]: ...
    @overload
    def publish_batch(
        self,
        messages: Iterable[Union[OutgoingMessage, tuple[str, str, _Body]]],
        *,
        return_exceptions: Literal[False] = False,
    ) -> Coroutine[Any, Any, None]: ...
    @overload
    def publish_batch(
        self,
        messages: Iterable[Union[OutgoingMessage, tuple[str, str, _Body]]],
        *,
        return_exceptions: Literal[True],
    ) -> Coroutine[Any, Any, list[Union[PublishResult, SluiceError]]]: ...
    def get(self, queue: str) -> Coroutine[Any, Any, Optional[AsyncMessage]]: ...
    def list_scheduled(
        self, queue: str, *, limit: int = 100, after: Optional[tuple[int, int]] = None
    ) -> Coroutine[Any, Any, tuple[list[ScheduledMessage], bool]]: ...
    def cancel_scheduled(self, queue: str, message_seq: int) -> Coroutine[Any, Any, None]: ...
    def get_many(
        self, queue: str, *, max: int = 10, wait: float = 0.0
    ) -> Coroutine[Any, Any, list[AsyncMessage]]: ...
    def consume(
        self,
        queue: str,
        *,
        prefetch: Optional[int] = None,
        consumer_tag: Optional[str] = None,
        exclusive: bool = False,
        ack_timeout: Optional[float] = None,
        priority: Optional[int] = None,
        circuit_breaker: Optional[Mapping[str, float]] = None,
    ) -> AsyncConsumer: ...
    def close(self) -> Coroutine[Any, Any, None]: ...
    @property
    def is_closed(self) -> bool: ...
    def __aenter__(self) -> Coroutine[Any, Any, Self]: ...
    def __aexit__(
        self,
        exc_type: Optional[type[BaseException]],
        exc_value: Optional[BaseException],
        traceback: Optional[TracebackType],
    ) -> Coroutine[Any, Any, bool]: ...
