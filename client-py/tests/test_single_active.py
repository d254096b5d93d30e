"""Single active consumer and consumer priorities (protocol.md §9.1), blocking and asyncio."""

from __future__ import annotations

import sluice


def bodies(start: int, end: int) -> list[bytes]:
    return [f"m{i}".encode() for i in range(start, end)]


def test_only_the_active_consumer_receives_and_the_standby_takes_over_with_its_unacked(
    url: str, queue_name: str
) -> None:
    with sluice.Client(url) as admin, sluice.Client(url) as first, sluice.Client(url) as second:
        admin.declare_queue(queue_name, single_active_consumer=True)
        assert admin.inspect_queue(queue_name).arguments["single_active_consumer"] is True
        active = first.consume(queue_name, prefetch=10)
        standby = second.consume(queue_name, prefetch=10)
        for body in bodies(0, 5):
            admin.publish("", queue_name, body)
        got = [active.receive(timeout=10) for _ in range(5)]
        assert [m.body for m in got if m is not None] == bodies(0, 5)
        assert admin.inspect_queue(queue_name).unacked == 5
        listed = {c.consumer_tag: c for c in admin.list_consumers() if c.queue == queue_name}
        assert sorted(c.active for c in listed.values()) == [False, True]
        assert all(c.priority == 0 for c in listed.values())

        first.close()  # its five unacked go to the standby, in queue order
        again = [standby.receive(timeout=10) for _ in range(5)]
        assert [m.body for m in again if m is not None] == bodies(0, 5)
        assert all(m is not None and m.redelivered for m in again)
        for m in again:
            assert m is not None
            m.ack()
        standby.cancel()


def test_a_higher_priority_consumer_is_served_first(url: str, queue_name: str) -> None:
    with sluice.Client(url) as client:
        client.declare_queue(queue_name)
        low = client.consume(queue_name, prefetch=10)
        high = client.consume(queue_name, prefetch=2, priority=5)
        for body in bodies(0, 4):
            client.publish("", queue_name, body)
        firsts = [high.receive(timeout=10) for _ in range(2)]
        assert [m.body for m in firsts if m is not None] == bodies(0, 2)
        # High has no credit left: the lower one gets the rest.
        rest = [low.receive(timeout=10) for _ in range(2)]
        assert [m.body for m in rest if m is not None] == bodies(2, 4)
        for m in firsts + rest:
            assert m is not None
            m.ack()
        low.cancel()
        high.cancel()


async def test_async_single_active_consumer_hands_over_and_takes_priorities(
    url: str, queue_name: str
) -> None:
    async with sluice.AsyncClient(url) as admin, sluice.AsyncClient(
        url
    ) as first, sluice.AsyncClient(url) as second:
        await admin.declare_queue(queue_name, single_active_consumer=True)
        info = await admin.inspect_queue(queue_name)
        assert info.arguments["single_active_consumer"] is True
        # Started (registered) in this order by entering them.
        async with first.consume(queue_name, prefetch=10, priority=1) as active:
            async with second.consume(queue_name, prefetch=10) as standby:
                for body in bodies(0, 3):
                    await admin.publish("", queue_name, body)
                got = [await active.receive(timeout=10) for _ in range(3)]
                mine = [c for c in await admin.list_consumers() if c.queue == queue_name]
                assert sorted((c.priority, c.active) for c in mine) == [(0, False), (1, True)]
                assert [m.body for m in got if m is not None] == bodies(0, 3)
                await first.close()
                again = [await standby.receive(timeout=10) for _ in range(3)]
                assert [m.body for m in again if m is not None] == bodies(0, 3)
                for m in again:
                    assert m is not None and m.redelivered
                    await m.ack()
