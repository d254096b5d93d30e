"""The asyncio AsyncClient: the same surface as Client, with coroutines."""

from __future__ import annotations

import asyncio
import inspect

import pytest

import sluice


async def test_same_methods_as_the_blocking_client() -> None:
    public = lambda cls: {n for n in dir(cls) if not n.startswith("_")}  # noqa: E731
    assert public(sluice.Client) == public(sluice.AsyncClient)
    for name in public(sluice.Client) - {"is_closed"}:
        sync_sig = getattr(sluice.Client, name).__text_signature__
        async_sig = getattr(sluice.AsyncClient, name).__text_signature__
        assert sync_sig == async_sig, name
    assert sluice.Client.__text_signature__ == sluice.AsyncClient.__text_signature__
    assert public(sluice.Message) == public(sluice.AsyncMessage)
    assert public(sluice.Consumer) == public(sluice.AsyncConsumer)


async def test_publish_and_async_for(url: str, queue_name: str) -> None:
    async with sluice.AsyncClient(url) as client:
        declared = await client.declare_queue(queue_name)
        assert declared.name == queue_name
        pending = client.publish("", queue_name, b"one", headers={"k": "v"})
        assert inspect.isawaitable(pending)
        await pending
        await client.publish_batch(("", queue_name, f"{i}") for i in range(2, 11))
        assert (await client.inspect_queue(queue_name)).ready == 10

        bodies = []
        async for msg in client.consume(queue_name, prefetch=100):
            assert isinstance(msg, sluice.AsyncMessage)
            bodies.append(msg.body)
            if msg.body == b"one":
                assert msg.headers == {"k": "v"}
            await msg.ack()
            if len(bodies) == 10:
                break
        assert bodies == [b"one"] + [f"{i}".encode() for i in range(2, 11)]


async def test_concurrent_publishes_share_the_connection(url: str, queue_name: str) -> None:
    async with sluice.AsyncClient(url) as client:
        await client.declare_queue(queue_name)
        await asyncio.gather(*(client.publish("", queue_name, f"{i}") for i in range(200)))
        assert (await client.inspect_queue(queue_name)).ready == 200
        assert await client.purge_queue(queue_name) == 200


async def test_methods_are_coroutines_that_tasks_take(url: str, queue_name: str) -> None:
    async with sluice.AsyncClient(url) as client:
        pending = client.declare_queue(queue_name)
        assert inspect.iscoroutine(pending)
        await asyncio.create_task(pending)
        # Concurrent tasks: every publish is confirmed, in no particular order.
        tasks = [asyncio.create_task(client.publish("", queue_name, f"{i}")) for i in range(5)]
        await asyncio.wait_for(asyncio.gather(*tasks), timeout=10)
        consumer = client.consume(queue_name, prefetch=10)
        received = await asyncio.create_task(consumer.receive(timeout=10))
        assert received is not None and received.body in {b"0", b"1", b"2", b"3", b"4"}
        await received.ack()
        await asyncio.create_task(consumer.cancel())
        assert (await client.inspect_queue(queue_name)).ready == 4


async def test_a_coroutine_closed_while_waiting_stops_its_call(url: str, queue_name: str) -> None:
    async with sluice.AsyncClient(url) as client:
        await client.declare_queue(queue_name)
        consumer = client.consume(queue_name)
        waiting = consumer.receive()
        pending = next(waiting.__await__())  # started: waits on the empty queue
        waiting.close()  # not a task cancel: the coroutine is just closed
        await asyncio.sleep(0)
        assert pending.cancelled()
        await client.publish("", queue_name, b"m")
        # The abandoned receive did not take the message.
        msg = await consumer.receive(timeout=10)
        assert msg is not None and msg.body == b"m"
        await msg.ack()
        await consumer.cancel()


def test_coroutines_run_in_an_event_loop_started_after_them(url: str, queue_name: str) -> None:
    client = sluice.AsyncClient(url)
    declare = client.declare_queue(queue_name)  # no event loop runs yet
    assert asyncio.run(declare).name == queue_name
    assert asyncio.run(client.purge_queue(queue_name)) == 0
    asyncio.run(client.close())
    assert client.is_closed


async def test_lazy_connect_and_explicit_connect(url: str, queue_name: str) -> None:
    client = sluice.AsyncClient(url)
    assert not client.is_closed
    await client.declare_queue(queue_name)  # connects on first use
    assert await client.connect() is client
    await client.close()
    await client.close()
    assert client.is_closed
    with pytest.raises(sluice.ConnectionClosed):
        await client.get(queue_name)


async def test_get_nack_and_requeue(url: str, queue_name: str) -> None:
    async with sluice.AsyncClient(url) as client:
        await client.declare_queue(queue_name)
        assert await client.get(queue_name) is None
        await client.publish("", queue_name, b"again")
        msg = await client.get(queue_name)
        assert msg is not None and msg.delivery_count == 1
        await msg.nack(requeue=True)
        with pytest.raises(sluice.AlreadySettled):
            await msg.ack()
        msg = await client.get(queue_name)
        assert msg is not None and msg.redelivered and msg.delivery_count == 2
        await msg.reject()
        assert await client.get(queue_name) is None


async def test_process_helper(url: str, queue_name: str) -> None:
    async with sluice.AsyncClient(url) as client:
        await client.declare_queue(queue_name)
        await client.publish_batch([("", queue_name, b"ok"), ("", queue_name, b"fails")])
        async with client.consume(queue_name, prefetch=10) as consumer:
            ok = await consumer.__anext__()
            async with ok.process() as same:
                assert same is ok
            assert ok.settled
            failing = await consumer.__anext__()
            with pytest.raises(RuntimeError):
                async with failing.process(requeue=True):
                    raise RuntimeError("try again")
            again = await consumer.receive(timeout=10)
            assert again is not None and again.body == b"fails" and again.delivery_count == 2
            with pytest.raises(RuntimeError):
                async with again.process():
                    raise RuntimeError("give up")  # rejected: dropped
        assert consumer.is_closed
        assert (await client.inspect_queue(queue_name)).ready == 0


async def test_cancelled_task_requeues_inside_process(url: str, queue_name: str) -> None:
    async with sluice.AsyncClient(url) as client:
        await client.declare_queue(queue_name)
        await client.publish("", queue_name, b"slow")
        started = asyncio.Event()

        async def work() -> None:
            async with client.consume(queue_name, prefetch=1) as consumer:
                async for msg in consumer:
                    async with msg.process():
                        started.set()
                        await asyncio.sleep(60)

        task = asyncio.create_task(work())
        await asyncio.wait_for(started.wait(), 10)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        # The block requeued the message; the consumer was cancelled on the way out.
        msg = await client.get(queue_name)
        assert msg is not None and msg.body == b"slow" and msg.redelivered
        await msg.ack()


async def test_receive_timeout_and_wait_for_cancellation(url: str, queue_name: str) -> None:
    async with sluice.AsyncClient(url) as client:
        await client.declare_queue(queue_name)
        consumer = client.consume(queue_name)
        assert consumer.tag is None  # not started yet
        assert await consumer.receive(timeout=0.2) is None
        assert consumer.tag and not consumer.is_closed
        # Cancelling a pending __anext__ leaves the consumer usable.
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(consumer.__anext__(), 0.2)
        await client.publish("", queue_name, b"late")
        msg = await asyncio.wait_for(consumer.__anext__(), 10)
        assert msg.body == b"late"
        await msg.ack()
        await consumer.cancel()
        with pytest.raises(StopAsyncIteration):
            await consumer.__anext__()


async def test_cancel_ends_a_waiting_async_for(url: str, queue_name: str) -> None:
    async with sluice.AsyncClient(url) as client:
        await client.declare_queue(queue_name)
        consumer = client.consume(queue_name)
        received = []

        async def loop() -> None:
            async for msg in consumer:
                received.append(msg)

        task = asyncio.create_task(loop())
        await asyncio.sleep(0.2)
        await consumer.cancel()
        await asyncio.wait_for(task, 5)
        assert received == []


async def test_close_ends_consumers(url: str, queue_name: str) -> None:
    client = sluice.AsyncClient(url)
    await client.declare_queue(queue_name)
    consumer = client.consume(queue_name)

    async def loop() -> int:
        return len([m async for m in consumer])

    task = asyncio.create_task(loop())
    await asyncio.sleep(0.2)
    await client.close()
    assert await asyncio.wait_for(task, 5) == 0
    with pytest.raises(sluice.ConnectionClosed):
        await client.publish("", queue_name, b"x")


async def test_async_with_closes_even_when_the_block_raises(url: str) -> None:
    with pytest.raises(ZeroDivisionError):
        async with sluice.AsyncClient(url) as client:
            1 / 0
    assert client.is_closed


async def test_errors_surface_from_awaitables(url: str, queue_name: str) -> None:
    async with sluice.AsyncClient(url) as client:
        with pytest.raises(sluice.NotFound) as info:
            await client.declare_queue(queue_name, passive=True)
        assert info.value.code == 202
        with pytest.raises(sluice.NotFound):
            async for _ in client.consume(queue_name):
                pass
        with pytest.raises(sluice.Unroutable):
            await client.publish("", queue_name, b"x", mandatory=True)
