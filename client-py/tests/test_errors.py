"""Errors: every broker error code maps to its own exception class; none is a RuntimeError."""

from __future__ import annotations

import os
import pickle
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

import sluice
from sluice import exceptions

from .conftest import SLUICE_BIN, Broker


@pytest.fixture
def client(url: str) -> Iterator[sluice.Client]:
    with sluice.Client(url) as c:
        yield c


def test_hierarchy() -> None:
    for name in exceptions.__all__:
        cls = getattr(sluice, name)
        assert issubclass(cls, sluice.SluiceError) and not issubclass(cls, RuntimeError), name
    assert issubclass(sluice.NotFound, sluice.ChannelError)
    assert issubclass(sluice.PreconditionFailed, sluice.ChannelError)
    assert issubclass(sluice.AccessRefused, sluice.ConnectionError)
    assert issubclass(sluice.PermissionDenied, sluice.ChannelError)
    assert not issubclass(sluice.PermissionDenied, sluice.ConnectionError)
    assert issubclass(sluice.LimitExceeded, sluice.ChannelError)
    assert issubclass(sluice.ConnectionClosed, sluice.ConnectionError)
    assert issubclass(sluice.QueueFull, sluice.ResourceLimit)
    assert issubclass(sluice.ResourceLimit, sluice.PublishRejected)
    assert issubclass(sluice.InvalidUrl, ValueError)
    assert issubclass(sluice.InvalidArgument, ValueError)
    assert issubclass(sluice.LimitExceeded, sluice.ChannelError)
    assert sluice.LimitExceeded("at its limit", 208).code_name == "LIMIT_EXCEEDED"


def test_exceptions_keep_their_code_across_pickling() -> None:
    error = sluice.NotFound("no queue 'q'", 202)
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is sluice.NotFound and copy.code == 202 and str(copy) == "no queue 'q'"
    assert copy.code_name == "NOT_FOUND"
    assert sluice.SluiceError("plain").code is None


@pytest.mark.parametrize(
    "bad",
    ["http://127.0.0.1", "sluice://h?bogus=1", "sluice://h?ca_file=ca.pem", "sluice://h:99999"],
)
def test_invalid_urls(bad: str) -> None:
    with pytest.raises(sluice.InvalidUrl):
        sluice.Client(bad)
    with pytest.raises(ValueError):
        sluice.AsyncClient(bad)  # checked in the constructor, before any connect


def test_connection_refused() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(sluice.ConnectionError) as info:
        sluice.Client(f"sluice://127.0.0.1:{port}")
    assert not isinstance(info.value, sluice.ConnectionClosed)


def test_connect_timeout_against_a_silent_server() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()  # completes TCP handshakes but never speaks
        port = listener.getsockname()[1]
        with pytest.raises(sluice.TimeoutError):
            sluice.Client(f"sluice://127.0.0.1:{port}", connect_timeout=0.3)


def test_access_refused(broker) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(sluice.AccessRefused) as info:
        sluice.Client(f"sluice://guest:wrong@127.0.0.1:{broker.port}")
    assert info.value.code == 103 and info.value.code_name == "ACCESS_REFUSED"


def test_channel_errors(client: sluice.Client, queue_name: str, url: str) -> None:
    with pytest.raises(sluice.NotFound) as not_found:
        client.purge_queue(queue_name)
    assert not_found.value.code == 202 and queue_name in str(not_found.value)

    client.declare_queue(queue_name, durable=True)
    with pytest.raises(sluice.PreconditionFailed) as mismatch:
        client.declare_queue(queue_name, durable=False)
    assert mismatch.value.code == 203

    with pytest.raises(sluice.NotAllowed):
        client.declare_exchange("sluice.mine", "direct")

    with pytest.raises(sluice.InvalidArgument) as too_long:
        client.declare_queue("q" * 300)
    assert too_long.value.code == 207

    with pytest.raises(sluice.InvalidArgument) as unencodable:  # refused before sending
        client.publish("", queue_name, b"x", headers={"k": "v" * 70_000})
    assert unencodable.value.code is None

    private = client.declare_queue("", durable=False, exclusive=True).name
    with sluice.Client(url) as other:
        with pytest.raises(sluice.ResourceLocked):
            other.consume(private)
    # The connection is still usable after request errors.
    client.publish("", queue_name, b"still fine")


def test_publish_rejections(client: sluice.Client, queue_name: str) -> None:
    client.declare_queue(queue_name, max_length=1, overflow="reject-publish")
    client.publish("", queue_name, b"1")
    with pytest.raises(sluice.QueueFull) as full:
        client.publish("", queue_name, b"2")
    assert isinstance(full.value, sluice.ResourceLimit) and full.value.code == 303
    with pytest.raises(sluice.Unroutable):
        client.publish("", f"{queue_name}-nowhere", b"x", mandatory=True)
    with pytest.raises(sluice.MessageTooLarge):
        client.publish("", queue_name, bytes(17 * 1024 * 1024))
    with pytest.raises(sluice.PublishRejected) as missing:
        client.publish(f"{queue_name}-no-exchange", "k", b"x")
    assert missing.value.code == 202


def test_consumer_cancelled_when_its_queue_is_deleted(
    client: sluice.Client, queue_name: str, url: str
) -> None:
    client.declare_queue(queue_name)
    consumer = client.consume(queue_name)
    errors: list[BaseException] = []

    def iterate() -> None:
        try:
            for _ in consumer:
                pass
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    thread = threading.Thread(target=iterate)
    thread.start()
    with sluice.Client(url) as other:
        other.delete_queue(queue_name)
    thread.join(timeout=10)
    assert not thread.is_alive()
    assert len(errors) == 1 and isinstance(errors[0], sluice.ConsumerCancelled)
    assert errors[0].code == 400 and errors[0].code_name == "QUEUE_DELETED"
    assert consumer.is_closed


def test_argument_errors_are_python_errors(client: sluice.Client, queue_name: str) -> None:
    with pytest.raises(TypeError):
        client.publish("", queue_name, 42)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        client.publish("", queue_name, b"x", headers={"k": object()})  # type: ignore[dict-item]
    with pytest.raises(ValueError):
        client.publish("", queue_name, b"x", headers={"k": 2**70})
    with pytest.raises(ValueError):
        client.declare_queue(queue_name, overflow="sometimes")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        client.declare_queue(queue_name, message_ttl=-1)


def test_a_missing_permission_and_a_vhost_limit_are_request_errors(tmp_path: Path) -> None:
    data = tmp_path / "data"

    def users_file(*args: str) -> None:
        env = {**os.environ, "SLUICE_NEW_PASSWORD": "app-pw"}
        cmd = [SLUICE_BIN, *args, "--data-dir", str(data)]
        subprocess.run(cmd, check=True, env=env, capture_output=True, timeout=60)

    users_file("vhost", "add", "small", "--max-queues", "1")
    users_file("user", "add", "app")
    users_file(
        "permissions", "set", "app", "--vhost", "small",
        "--configure", "^own", "--write", ".*", "--read", ".*",
    )  # fmt: skip
    broker = Broker(data, tmp_path).start()
    try:
        with sluice.Client(f"sluice://app:app-pw@127.0.0.1:{broker.port}/small") as c:
            with pytest.raises(sluice.PermissionDenied) as denied:
                c.declare_queue("theirs")
            assert denied.value.code == 103 and denied.value.code_name == "ACCESS_REFUSED"
            assert "lacks configure permission on queue 'theirs'" in str(denied.value)
            assert isinstance(denied.value, sluice.ChannelError)
            assert not isinstance(denied.value, sluice.ConnectionError)
            c.declare_queue("own.1")
            with pytest.raises(sluice.LimitExceeded) as limit:
                c.declare_queue("own.2")
            assert limit.value.code == 208 and "max_queues" in str(limit.value)
            # The connection goes on.
            c.declare_queue("own.1")
    finally:
        broker.stop()
