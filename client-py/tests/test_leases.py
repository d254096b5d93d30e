"""Leases: a delivery's ack deadline, pushed back with extend()."""

from __future__ import annotations

import time

import sluice


def test_extend_keeps_a_long_task_and_expiry_hands_it_on(url: str, queue_name: str) -> None:
    with sluice.Client(url) as holder, sluice.Client(url) as rival:
        holder.declare_queue(queue_name, ack_timeout=1.0)
        holder.publish("", queue_name, b"long task")
        msg = holder.get(queue_name)  # leased for 1 s
        assert msg is not None
        with rival.consume(queue_name, prefetch=1) as consumer:
            # Held for 2.5 s, well past the 1 s lease, by extending it.
            until = time.monotonic() + 2.5
            while time.monotonic() < until:
                msg.extend(1.0)
                assert consumer.receive(timeout=0.3) is None
            # No more extensions: the lease runs out and the message moves on.
            again = consumer.receive(timeout=10)
            assert again is not None and again.body == b"long task"
            assert again.redelivered and again.delivery_count == 2
            again.ack()
        # The holder's late ack is not answered (the broker logs UNKNOWN_DELIVERY_TAG).
        msg.ack()


def test_consumer_lease_overrides_the_queue(url: str, queue_name: str) -> None:
    with sluice.Client(url) as client:
        client.declare_queue(queue_name)  # default lease: 30 minutes
        client.publish("", queue_name, b"x")
        with client.consume(queue_name, prefetch=1, ack_timeout=0.5) as consumer:
            first = consumer.receive(timeout=5)
            assert first is not None and first.delivery_count == 1
            again = consumer.receive(timeout=10)  # not settled: back after 0.5 s
            assert again is not None and again.delivery_count == 2
            again.ack()


async def test_async_extend(url: str, queue_name: str) -> None:
    async with sluice.AsyncClient(url) as client:
        await client.declare_queue(queue_name, ack_timeout=0.5)
        await client.publish("", queue_name, b"y")
        msg = await client.get(queue_name)
        assert msg is not None
        # Held for 1 s, twice the 0.5 s lease; each extension leaves 1.25 s of slack, so a
        # stalled machine does not let the lease run out between them.
        for _ in range(4):
            await msg.extend(1.5)
            time.sleep(0.25)
        await msg.ack()
        assert (await client.inspect_queue(queue_name)).ready == 0
