"""Batch get with a long-poll wait (get_many), and overflow reject-publish-dlx."""

from __future__ import annotations

import asyncio
import time

import pytest

import sluice


def test_get_many_takes_up_to_max_in_order(url: str, queue_name: str) -> None:
    with sluice.Client(url) as client:
        client.declare_queue(queue_name)
        for i in range(5):
            client.publish("", queue_name, f"m{i}".encode())
        batch = client.get_many(queue_name, max=3)
        assert [m.body for m in batch] == [b"m0", b"m1", b"m2"]
        rest = client.get_many(queue_name, max=10, wait=5.0)
        assert [m.body for m in rest] == [b"m3", b"m4"]
        for m in batch + rest:
            m.ack(confirm=True)
        assert client.inspect_queue(queue_name).ready == 0


def test_get_many_on_an_empty_queue_ends_empty_after_its_wait(url: str, queue_name: str) -> None:
    with sluice.Client(url) as client:
        client.declare_queue(queue_name)
        assert client.get_many(queue_name) == []
        started = time.monotonic()
        assert client.get_many(queue_name, max=5, wait=0.3) == []
        assert time.monotonic() - started >= 0.3


def test_get_many_outside_its_limits_raises_invalid_argument(url: str, queue_name: str) -> None:
    with sluice.Client(url) as client:
        client.declare_queue(queue_name)
        with pytest.raises(sluice.InvalidArgument):
            client.get_many(queue_name, max=0)
        with pytest.raises(sluice.InvalidArgument):
            client.get_many(queue_name, max=1, wait=20.5)
        with pytest.raises(sluice.NotFound):
            client.get_many(queue_name + "-missing")


async def test_async_long_poll_answers_when_a_message_arrives(url: str, queue_name: str) -> None:
    async with sluice.AsyncClient(url) as client, sluice.AsyncClient(url) as publisher:
        await client.declare_queue(queue_name)
        waiting = asyncio.ensure_future(client.get_many(queue_name, max=10, wait=20.0))
        # Whether the publish reaches the queue before the long poll or wakes it, the answer
        # is the message, well before the 20 s wait.
        await publisher.publish("", queue_name, b"hello")
        got = await asyncio.wait_for(waiting, timeout=15)
        assert [m.body for m in got] == [b"hello"]
        await got[0].ack(confirm=True)


async def test_async_get_many_batches(url: str, queue_name: str) -> None:
    async with sluice.AsyncClient(url) as client:
        await client.declare_queue(queue_name)
        for i in range(3):
            await client.publish("", queue_name, f"a{i}".encode())
        got = await client.get_many(queue_name, max=2, wait=1.0)
        assert [m.body for m in got] == [b"a0", b"a1"]
        for m in got:
            await m.ack()
        assert [m.body for m in await client.get_many(queue_name, max=2)] == [b"a2"]


def test_reject_publish_dlx_refuses_and_dead_letters(url: str, queue_name: str) -> None:
    dead = queue_name + "-dead"
    dlx = queue_name + "-dlx"
    with sluice.Client(url) as client:
        client.declare_exchange(dlx, "fanout")
        client.declare_queue(dead)
        client.bind(dead, dlx)
        client.declare_queue(
            queue_name, max_length=1, overflow="reject-publish-dlx", dead_letter_exchange=dlx
        )
        assert client.inspect_queue(queue_name).arguments["overflow"] == "reject-publish-dlx"
        client.publish("", queue_name, b"kept")
        with pytest.raises(sluice.QueueFull):
            client.publish("", queue_name, b"refused")
        got = client.get_many(dead, max=1, wait=10.0)
        assert [m.body for m in got] == [b"refused"]
        assert got[0].headers["x-death-reason"] == "maxlen"
        got[0].ack()
