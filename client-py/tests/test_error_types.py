"""One exception class per protocol error code, caught the way users expect.

A refused publish is caught by its code's class *and* by ``PublishRejected``; the client's
timeouts and lost connections are also the built-in ``TimeoutError`` and ``ConnectionError``;
the table of codes matches the Rust client's; a settle call with ``confirm=True`` raises the
broker's error (``UnknownDeliveryTag`` for an expired lease) in the call that sent it.
"""

from __future__ import annotations

import asyncio
import builtins
import pickle
import socket
import time
from collections.abc import Iterator

import pytest

import sluice
from sluice import _sluice, exceptions


@pytest.fixture
def client(url: str) -> Iterator[sluice.Client]:
    with sluice.Client(url) as c:
        yield c


# ---- the table ----------------------------------------------------------------------------


def test_the_python_code_table_is_the_rust_clients() -> None:
    rust = dict(_sluice.ERROR_CODES)
    assert exceptions.CODE_NAMES == rust
    assert set(exceptions.BY_CODE) == set(rust), "every code needs its own class"
    classes = list(exceptions.BY_CODE.values())
    assert len(set(classes)) == len(classes), "one class per code"
    for cls in classes:
        assert cls.__name__ in exceptions.__all__ and getattr(sluice, cls.__name__) is cls


GROUPS: dict[int, tuple[str, type[sluice.SluiceError]]] = {
    1: ("close", sluice.ConnectionClosed),
    2: ("error", sluice.ChannelError),
    3: ("rejected", sluice.PublishRejected),
    4: ("cancelled", sluice.ConsumerCancelled),
    5: ("error", sluice.ServerError),
}


@pytest.mark.parametrize("code", sorted(exceptions.CODE_NAMES))
def test_every_code_raises_its_own_class(code: int) -> None:
    kind, group = GROUPS[code // 100]
    error = _sluice._exception_for(kind, code, "detail")
    assert type(error) is exceptions.BY_CODE[code]
    assert isinstance(error, sluice.SluiceError)
    assert error.code == code and error.code_name == exceptions.CODE_NAMES[code]
    if code != 103:  # ACCESS_REFUSED at login is a ConnectionError, not a closed connection
        assert isinstance(error, group)


@pytest.mark.parametrize(
    "code", [c for c in sorted(exceptions.CODE_NAMES) if c == 103 or c // 100 in (2, 3, 5)]
)
def test_a_refused_publish_is_its_codes_class_and_publish_rejected(code: int) -> None:
    error = _sluice._exception_for("rejected", code, "refused")
    assert isinstance(error, sluice.PublishRejected)
    wanted = sluice.PermissionDenied if code == 103 else exceptions.BY_CODE[code]
    assert isinstance(error, wanted)
    assert type(error) is exceptions.rejected_class(code)
    assert error.code == code
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is type(error) and copy.code == code and str(copy) == str(error)


def test_unknown_codes_fall_back_to_their_group() -> None:
    assert type(_sluice._exception_for("error", 299, "new")) is sluice.ChannelError
    assert type(_sluice._exception_for("error", 599, "new")) is sluice.ServerError
    assert type(_sluice._exception_for("rejected", 399, "new")) is sluice.PublishRejected
    assert type(_sluice._exception_for("close", 199, "new")) is sluice.ConnectionClosed
    assert exceptions.rejected_class(399) is sluice.PublishRejected


def test_names_kept_from_earlier_versions() -> None:
    assert issubclass(sluice.QueueFull, sluice.ResourceLimit)
    assert issubclass(sluice.MemoryLimit, sluice.ResourceLimit)
    assert issubclass(sluice.InvalidArgument, ValueError)
    assert issubclass(sluice.AccessRefused, sluice.ConnectionError)
    assert issubclass(sluice.ConnectionForced, sluice.ConnectionClosed)


# ---- built-ins ----------------------------------------------------------------------------


def test_timeouts_and_lost_connections_are_also_the_builtins() -> None:
    assert issubclass(sluice.TimeoutError, builtins.TimeoutError)
    assert issubclass(sluice.TimeoutError, sluice.SluiceError)
    assert issubclass(sluice.ConnectionError, builtins.ConnectionError)
    assert issubclass(sluice.ConnectionClosed, builtins.ConnectionError)
    assert issubclass(sluice.ConnectionError, sluice.SluiceError)
    error = sluice.ConnectionError("lost", 106)
    assert str(error) == "lost" and error.code == 106


def test_a_refused_connection_is_caught_as_the_builtin_connection_error() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(builtins.ConnectionError) as info:
        sluice.Client(f"sluice://127.0.0.1:{port}")
    assert isinstance(info.value, sluice.SluiceError)


def test_a_silent_server_times_out_as_the_builtin_timeout_error() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()  # completes TCP handshakes but never speaks
        port = listener.getsockname()[1]
        with pytest.raises(builtins.TimeoutError) as info:
            sluice.Client(f"sluice://127.0.0.1:{port}", connect_timeout=0.3)
    assert isinstance(info.value, sluice.SluiceError)


# ---- against the broker -------------------------------------------------------------------


def test_a_publish_to_a_missing_exchange_is_caught_as_not_found_and_as_publish_rejected(
    client: sluice.Client,
) -> None:
    with pytest.raises(sluice.NotFound) as info:
        client.publish("nowhere", "k", b"x")
    assert isinstance(info.value, sluice.PublishRejected)
    assert info.value.code == 202 and "nowhere" in str(info.value)
    try:
        client.publish("nowhere", "k", b"x")
    except sluice.PublishRejected as e:
        assert isinstance(e, sluice.NotFound)
    else:
        pytest.fail("not refused")


def test_a_full_queue_is_caught_as_queue_full_and_publish_rejected(
    client: sluice.Client, queue_name: str
) -> None:
    client.declare_queue(queue_name, max_length=1, overflow="reject-publish")
    client.publish("", queue_name, b"first")
    with pytest.raises(sluice.QueueFull) as info:
        client.publish("", queue_name, b"second")
    assert isinstance(info.value, sluice.PublishRejected)
    assert isinstance(info.value, sluice.ResourceLimit)


def test_a_redeclare_names_the_difference_in_words(client: sluice.Client, queue_name: str) -> None:
    client.declare_queue(queue_name, message_ttl=60)
    with pytest.raises(sluice.PreconditionFailed) as info:
        client.declare_queue(queue_name)
    assert str(info.value).endswith(
        f"queue '{queue_name}' exists with other arguments; "
        "argument message_ttl_ms: existing 60000, requested absent"
    ), str(info.value)


def wait_for_ready(client: sluice.Client, queue: str, ready: int) -> None:
    deadline = time.monotonic() + 60
    while client.inspect_queue(queue).ready != ready:
        assert time.monotonic() < deadline, "no lease expired"
        time.sleep(0.01)


def test_a_confirmed_ack_of_an_expired_lease_raises_unknown_delivery_tag(
    client: sluice.Client, queue_name: str
) -> None:
    client.declare_queue(queue_name, ack_timeout=2.0)
    client.publish_batch(("", queue_name, f"m{i}") for i in range(3))
    messages = [client.get(queue_name) for _ in range(3)]
    assert all(m is not None for m in messages)
    first, expiring, last = messages  # type: ignore[misc]
    first.extend(600, confirm=True)
    last.extend(600, confirm=True)
    wait_for_ready(client, queue_name, 1)

    first.ack()  # sent at once, not waited for
    with pytest.raises(sluice.UnknownDeliveryTag) as info:
        expiring.ack(confirm=True)
    assert isinstance(info.value, sluice.ChannelError) and info.value.code == 206
    last.ack(confirm=True)
    info_after = client.inspect_queue(queue_name)
    assert (info_after.ready, info_after.unacked) == (1, 0)
    with pytest.raises(sluice.AlreadySettled):
        expiring.ack(confirm=True)


def test_confirmed_nack_and_extend_of_an_expired_lease_raise(
    client: sluice.Client, queue_name: str
) -> None:
    client.declare_queue(queue_name, ack_timeout=0.1)
    client.publish("", queue_name, b"x")
    msg = client.get(queue_name)
    assert msg is not None
    wait_for_ready(client, queue_name, 1)
    with pytest.raises(sluice.UnknownDeliveryTag):
        msg.extend(10, confirm=True)
    with pytest.raises(sluice.UnknownDeliveryTag):
        msg.nack(requeue=False, confirm=True)


async def test_asyncio_raises_the_same_types(url: str, queue_name: str) -> None:
    async with sluice.AsyncClient(url) as client:
        with pytest.raises(sluice.NotFound) as info:
            await client.publish("nowhere", "k", b"x")
        assert isinstance(info.value, sluice.PublishRejected)

        await client.declare_queue(queue_name, ack_timeout=2.0)
        await client.publish_batch(("", queue_name, f"m{i}") for i in range(2))
        kept = await client.get(queue_name)
        expiring = await client.get(queue_name)
        assert kept is not None and expiring is not None
        await kept.extend(600, confirm=True)
        deadline = time.monotonic() + 60
        while (await client.inspect_queue(queue_name)).ready != 1:
            assert time.monotonic() < deadline, "no lease expired"
            await asyncio.sleep(0.01)
        with pytest.raises(sluice.UnknownDeliveryTag):
            await expiring.ack(confirm=True)
        await kept.reject(confirm=True)
        assert (await client.inspect_queue(queue_name)).unacked == 0
