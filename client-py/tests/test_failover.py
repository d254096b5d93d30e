"""Both clients across a lost connection (issue 14): several hosts in a URL, reconnecting
after ``kill -9`` and a restart, consumers that go on, unconfirmed publishes published again
(kept single by a dedup window with ``resend=True``), ``DeliveryLostError`` for a delivery
of the lost connection, ``reconnect_timeout=0`` for the old behaviour, and the ``replicas``
queue argument with the cluster's exception classes."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

import sluice

from .conftest import Broker


@pytest.fixture
def own_broker(tmp_path: Path) -> Iterator[Broker]:
    """A broker of this test's own: it gets killed."""
    (tmp_path / "data").mkdir()
    b = Broker(tmp_path / "data", tmp_path).start()
    yield b
    b.stop()


def restart_on_same_port(broker: Broker) -> None:
    """kill -9, then the same data directory and port again."""
    port = broker.port
    broker.kill9()
    broker.start(listen=f"127.0.0.1:{port}")
    assert broker.port == port


def free_port() -> int:
    """A port nothing listens on (connecting is refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_consumer_goes_on_after_kill_9_and_a_restart_and_publishes_are_resent_once(
    own_broker: Broker,
) -> None:
    with sluice.Client(own_broker.url, resend=True, request_timeout=60) as client:
        client.declare_queue("jobs", dedup_window=3600, dedup_window_count=10_000)
        client.publish_batch([("", "jobs", f"m-{i}".encode()) for i in range(20)])
        consumer = client.consume("jobs", prefetch=5)
        held = next(consumer)  # taken, never settled before the crash
        seen: dict[bytes, set[int]] = {held.body: {held.message_seq}}
        restart_on_same_port(own_broker)

        with pytest.raises(sluice.DeliveryLostError):
            held.ack()
        # Publishing waits while the client reconnects, then goes out on the new connection.
        client.publish_batch([("", "jobs", f"m-{i}".encode()) for i in range(20, 40)])
        for message in consumer:
            seen.setdefault(message.body, set()).add(message.message_seq)
            message.ack()
            if len(seen) == 40:
                break
        assert {f"m-{i}".encode() for i in range(40)} == set(seen)
        assert all(len(seqs) == 1 for seqs in seen.values()), "each message stored once"
        assert client.inspect_queue("jobs").ready == 0
        assert not client.is_closed


def test_an_async_consumer_goes_on_after_kill_9_and_a_restart(own_broker: Broker) -> None:
    async def main() -> None:
        async with sluice.AsyncClient(own_broker.url) as client:
            await client.declare_queue("tasks")
            await client.publish("", "tasks", b"before")
            consumer = client.consume("tasks")
            first = await asyncio.wait_for(consumer.__anext__(), 30)
            assert first.body == b"before"
            restart_on_same_port(own_broker)
            with pytest.raises(sluice.DeliveryLostError):
                await first.ack()
            await client.publish("", "tasks", b"after")
            bodies = set()
            while bodies != {b"before", b"after"}:
                message = await asyncio.wait_for(consumer.__anext__(), 60)
                bodies.add(message.body)
                await message.ack()

    asyncio.run(main())


def test_a_url_with_several_hosts_connects_to_the_first_that_answers(url: str) -> None:
    dead = free_port()
    hosts = url.replace("@127.0.0.1:", f"@127.0.0.1:{dead},127.0.0.1:")
    assert hosts.count(",") == 1
    with sluice.Client(hosts) as client:
        client.declare_queue("several-hosts", durable=False)
        client.publish("", "several-hosts", b"x")
        message = client.get("several-hosts")
        assert message is not None and message.body == b"x"
        message.ack()


def test_several_hosts_in_a_url_are_checked_like_one() -> None:
    with pytest.raises(sluice.InvalidUrl):
        sluice.Client("sluice://a,,b:5680")


def test_with_reconnect_timeout_zero_a_lost_connection_ends_the_consumer(
    own_broker: Broker,
) -> None:
    client = sluice.Client(own_broker.url, reconnect_timeout=0)
    client.declare_queue("q")
    consumer = client.consume("q")
    own_broker.kill9()
    with pytest.raises(sluice.ConnectionClosed):
        next(consumer)
    assert client.is_closed


def test_replicas_need_a_cluster_and_the_cluster_codes_have_their_classes(url: str) -> None:
    with sluice.Client(url) as client:
        with pytest.raises(sluice.PreconditionFailed, match="need a cluster"):
            client.declare_queue("replicated", replicas=3)
        with pytest.raises(sluice.InvalidArgument):
            client.declare_queue("replicated", replicas=0)
        client.declare_queue("one-replica", replicas=1, durable=False)
    assert issubclass(sluice.NotLeader, sluice.ChannelError)
    assert issubclass(sluice.LeaderMoved, sluice.ConsumerCancelled)
    assert sluice.exceptions.BY_CODE[209] is sluice.NotLeader
    assert sluice.exceptions.BY_CODE[402] is sluice.LeaderMoved
    assert issubclass(sluice.DeliveryLostError, sluice.SluiceError)
