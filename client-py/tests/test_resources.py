"""Closing leaves nothing behind: no sockets, no threads."""

from __future__ import annotations

import asyncio
import gc
import os
import threading
import time
from typing import Callable

import sluice

from .conftest import Broker


def broker_sockets(port: int) -> int:
    """This process's open TCP sockets whose peer is the broker (any state)."""
    inodes = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    count = 0
    for table in ("/proc/self/net/tcp", "/proc/self/net/tcp6"):
        with open(table) as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                remote_port = int(fields[2].rsplit(":", 1)[1], 16)
                if remote_port == port and fields[9] in inodes:
                    count += 1
    return count


def native_threads() -> int:
    return len(os.listdir("/proc/self/task"))


def eventually(check: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def use_sync(url: str, queue: str) -> None:
    with sluice.Client(url) as client:
        client.publish("", queue, b"x")
        consumer = client.consume(queue)
        next(consumer).ack()


async def use_async(url: str, queue: str) -> None:
    async with sluice.AsyncClient(url) as client:
        await client.publish("", queue, b"x")
        async for msg in client.consume(queue):
            await msg.ack()
            break


def test_no_sockets_or_threads_leak(broker: Broker, url: str, queue_name: str) -> None:
    open_sockets = lambda: broker_sockets(broker.port)  # noqa: E731
    with sluice.Client(url) as client:
        client.declare_queue(queue_name)
    use_sync(url, queue_name)  # the shared runtime and its threads are up from here on
    asyncio.run(use_async(url, queue_name))
    assert eventually(lambda: open_sockets() == 0), open_sockets()
    threads, py_threads = native_threads(), threading.active_count()

    for _ in range(20):
        use_sync(url, queue_name)

    async def cycles() -> None:
        for _ in range(20):
            await use_async(url, queue_name)

    asyncio.run(cycles())
    assert eventually(lambda: open_sockets() == 0), f"{open_sockets()} sockets left open"
    assert threading.active_count() == py_threads
    # The runtime's threads are shared; a connect may leave one idle resolver thread.
    assert native_threads() <= threads + 2, (threads, native_threads())


def test_close_returns_with_the_socket_closed(broker: Broker, url: str, queue_name: str) -> None:
    open_sockets = lambda: broker_sockets(broker.port)  # noqa: E731
    assert eventually(lambda: open_sockets() == 0), "sockets left by earlier tests"
    for _ in range(5):
        client = sluice.Client(url)
        client.declare_queue(queue_name)
        assert open_sockets() == 1
        client.close()
        assert open_sockets() == 0

    async def use_and_close() -> None:
        async with sluice.AsyncClient(url) as client:
            await client.declare_queue(queue_name)
            assert open_sockets() == 1
        assert open_sockets() == 0

    for _ in range(5):
        asyncio.run(use_and_close())


def test_dropped_clients_close_their_connections(
    broker: Broker, url: str, queue_name: str
) -> None:
    open_sockets = lambda: broker_sockets(broker.port)  # noqa: E731
    with sluice.Client(url) as client:
        client.declare_queue(queue_name)
    assert eventually(lambda: open_sockets() == 0)
    for _ in range(5):
        client = sluice.Client(url)
        client.publish("", queue_name, b"x")
        consumer = client.consume(queue_name)
        next(consumer)  # held, never settled
        assert open_sockets() >= 1  # the count sees live connections
        del client, consumer
    gc.collect()
    assert eventually(lambda: open_sockets() == 0), f"{open_sockets()} sockets left open"
    with sluice.Client(url) as client:  # the unsettled messages went back
        assert eventually(lambda: client.inspect_queue(queue_name).ready == 5)
        client.purge_queue(queue_name)
