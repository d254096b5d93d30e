"""Delayed delivery and retry with backoff, from Python (blocking and asyncio): a delayed
message is confirmed at once and delivered at its time, never before; a nack with a delay and
a queue's retry_backoff make a requeue wait; extend(0) releases a message without counting
the delivery; operators list and cancel scheduled messages."""

from __future__ import annotations

import datetime
import time

import pytest

import sluice


def test_a_delayed_publish_is_scheduled_then_delivered_no_earlier_than_its_time(
    url: str, queue_name: str
) -> None:
    with sluice.Client(url) as client:
        client.declare_queue(queue_name)
        sent = time.time()
        client.publish("", queue_name, b"later", delay=0.5)
        at = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=0.3)
        client.publish("", queue_name, b"at", deliver_at=at)
        info = client.inspect_queue(queue_name)
        assert (info.ready, info.scheduled) == (0, 2)
        with client.consume(queue_name, prefetch=10) as consumer:
            first = consumer.receive(timeout=10)
            assert first is not None and first.body == b"at"
            assert time.time() >= at.timestamp() - 0.002
            first.ack()
            second = consumer.receive(timeout=10)
            assert second is not None and second.body == b"later"
            assert time.time() >= sent + 0.5 - 0.002
            assert second.delivery_count == 1 and not second.redelivered
            second.ack()
        with pytest.raises(ValueError):
            client.publish("", queue_name, b"x", delay=1.0, deliver_at=at)


def test_operators_list_scheduled_messages_soonest_first_and_cancel_one(
    url: str, queue_name: str
) -> None:
    with sluice.Client(url) as client:
        client.declare_queue(queue_name)
        for body, delay in [(b"c", 300.0), (b"a", 100.0), (b"b", 200.0)]:
            client.publish("", queue_name, body, delay=delay)
        first, more = client.list_scheduled(queue_name, limit=2)
        assert [m.body for m in first] == [b"a", b"b"] and more
        rest, more = client.list_scheduled(
            queue_name, after=(first[-1].due_at_ms, first[-1].message_seq)
        )
        assert [m.body for m in rest] == [b"c"] and not more
        assert rest[0].routing_key == queue_name and rest[0].delivery_count == 0
        client.cancel_scheduled(queue_name, first[0].message_seq)
        with pytest.raises(sluice.NotFound):
            client.cancel_scheduled(queue_name, first[0].message_seq)
        assert client.inspect_queue(queue_name).scheduled == 2


def test_a_nack_with_a_delay_and_a_retry_backoff_make_the_requeue_wait(
    url: str, queue_name: str
) -> None:
    with sluice.Client(url) as client:
        client.declare_queue(queue_name, retry_backoff=(0.3, 2.0, 1.0))
        assert client.inspect_queue(queue_name).arguments["retry_backoff"] == (0.3, 2.0, 1.0)
        client.publish("", queue_name, b"job")
        with client.consume(queue_name, prefetch=1) as consumer:
            msg = consumer.receive(timeout=10)
            assert msg is not None
            nacked = time.time()
            msg.nack(delay=0.5)
            assert client.inspect_queue(queue_name).scheduled == 1
            again = consumer.receive(timeout=10)
            assert again is not None and time.time() >= nacked + 0.5 - 0.002
            assert again.delivery_count == 2 and again.redelivered
            nacked = time.time()
            again.nack()  # the queue's backoff: 0.3 s × 2 for the second delivery
            third = consumer.receive(timeout=10)
            assert third is not None and time.time() >= nacked + 0.6 - 0.002
            third.ack()
        with pytest.raises(ValueError):
            msg.nack(False, delay=1.0)


def test_extend_zero_releases_without_counting_the_delivery(url: str, queue_name: str) -> None:
    with sluice.Client(url) as client:
        client.declare_queue(queue_name, delivery_limit=1)
        client.publish("", queue_name, b"job")
        for _ in range(3):
            msg = client.get(queue_name)
            assert msg is not None and msg.delivery_count == 1
            msg.extend(0)
        msg = client.get(queue_name)
        assert msg is not None
        msg.ack()


async def test_async_delays_backoff_release_and_scheduled_listing(
    url: str, queue_name: str
) -> None:
    async with sluice.AsyncClient(url) as client:
        await client.declare_queue(queue_name, retry_backoff=(0.2, 1.0, 0.2))
        sent = time.time()
        await client.publish("", queue_name, b"later", delay=0.4)
        messages, more = await client.list_scheduled(queue_name)
        assert [m.body for m in messages] == [b"later"] and not more
        assert (await client.inspect_queue(queue_name)).scheduled == 1
        consumer = client.consume(queue_name, prefetch=1)
        msg = await consumer.receive(timeout=10)
        assert msg is not None and time.time() >= sent + 0.4 - 0.002
        nacked = time.time()
        await msg.nack(delay=0.3)
        msg = await consumer.receive(timeout=10)
        assert msg is not None and time.time() >= nacked + 0.3 - 0.002
        await msg.extend(0)  # released: back at once, without the backoff, not counted
        msg = await consumer.receive(timeout=10)
        assert msg is not None and msg.delivery_count == 2
        await msg.ack()
        await consumer.cancel()
        await client.publish("", queue_name, b"cancel me", delay=60)
        (waiting,), _ = await client.list_scheduled(queue_name)
        await client.cancel_scheduled(queue_name, waiting.message_seq)
        assert (await client.inspect_queue(queue_name)).scheduled == 0
