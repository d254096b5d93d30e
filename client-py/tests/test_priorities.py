"""Message priorities: ``max_priority=`` on declare_queue, ``priority=`` on publish."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import pytest

import sluice

from .conftest import Broker

#: (body, priority) in publish order, and the order a queue with max_priority=5 delivers them.
PUBLISHED: list[tuple[bytes, Optional[int]]] = [
    (b"low-1", None),
    (b"mid-1", 2),
    (b"high-1", 5),
    (b"low-2", 0),
    (b"capped", 200),
    (b"mid-2", 2),
]
DELIVERED = [b"high-1", b"capped", b"mid-1", b"mid-2", b"low-1", b"low-2"]


def publish_all(client: sluice.Client, queue: str) -> None:
    for body, priority in PUBLISHED:
        client.publish("", queue, body, priority=priority)


def take_all(client: sluice.Client, queue: str) -> list[bytes]:
    bodies = []
    while (msg := client.get(queue)) is not None:
        bodies.append(msg.body)
        msg.ack()
    return bodies


def test_higher_priorities_come_first_fifo_within_each(url: str, queue_name: str) -> None:
    with sluice.Client(url) as client:
        client.declare_queue(queue_name, max_priority=5)
        assert client.inspect_queue(queue_name).arguments["max_priority"] == 5
        publish_all(client, queue_name)
        with client.consume(queue_name, prefetch=100) as consumer:
            received = []
            for _ in DELIVERED:
                msg = consumer.receive(timeout=10)
                assert msg is not None
                received.append((msg.body, msg.priority))
                msg.ack()
        assert [body for body, _ in received] == DELIVERED
        # The message keeps the priority it was published with (the cap is the queue's).
        assert dict(received)[b"capped"] == 200
        assert dict(received)[b"low-1"] is None


def test_a_requeued_message_goes_back_into_its_priority(url: str, queue_name: str) -> None:
    with sluice.Client(url) as client:
        client.declare_queue(queue_name, max_priority=3)
        for body in (b"a", b"b"):
            client.publish("", queue_name, body, priority=2)
        client.publish("", queue_name, b"x", priority=1)
        a = client.get(queue_name)
        assert a is not None and a.body == b"a"
        client.publish("", queue_name, b"top", priority=3)
        a.nack(requeue=True)
        assert take_all(client, queue_name) == [b"top", b"a", b"b", b"x"]


def test_max_priority_out_of_range_is_refused(url: str, queue_name: str) -> None:
    with sluice.Client(url) as client:
        for refused in (0, 11):
            with pytest.raises(sluice.InvalidArgument, match="max_priority"):
                client.declare_queue(queue_name, max_priority=refused)
        with pytest.raises(OverflowError):
            client.publish("", queue_name, b"x", priority=256)
        client.declare_queue(queue_name, max_priority=10)
        with pytest.raises(sluice.PreconditionFailed, match="max_priority"):
            client.declare_queue(queue_name, max_priority=9)


def test_priorities_survive_kill_9(tmp_path: Path, queue_name: str) -> None:
    (tmp_path / "data").mkdir()
    broker = Broker(tmp_path / "data", tmp_path).start()
    try:
        with sluice.Client(broker.url) as client:
            client.declare_queue(queue_name, max_priority=5)
            publish_all(client, queue_name)
        assert broker.process is not None
        broker.process.kill()  # SIGKILL: no clean stop
        broker.process.wait(timeout=10)
    finally:
        broker.stop()
    broker = Broker(tmp_path / "data", tmp_path).start()
    try:
        with sluice.Client(broker.url) as client:
            assert client.inspect_queue(queue_name).arguments["max_priority"] == 5
            assert take_all(client, queue_name) == DELIVERED
    finally:
        broker.stop()


async def test_async_priorities(url: str, queue_name: str) -> None:
    async with sluice.AsyncClient(url) as client:
        await client.declare_queue(queue_name, max_priority=5)
        info = await client.inspect_queue(queue_name)
        assert info.arguments["max_priority"] == 5
        for body, priority in PUBLISHED:
            await client.publish("", queue_name, body, priority=priority)
        await client.publish_batch(
            [sluice.OutgoingMessage("", queue_name, b"batch-top", priority=5)]
        )
        received = []
        async for msg in client.consume(queue_name, prefetch=100):
            received.append(msg.body)
            await msg.ack()
            if len(received) == len(DELIVERED) + 1:
                break
        assert received == [b"high-1", b"capped", b"batch-top", *DELIVERED[2:]]
        with pytest.raises(sluice.InvalidArgument):
            await client.declare_queue(queue_name + "-bad", max_priority=11)
