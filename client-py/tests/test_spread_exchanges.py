"""Weighted and consistent-hash exchanges from Python: a canary's share, changed live with
``bind(..., weight=)``, and the same key always reaching the same shard."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import pytest

import sluice

from .conftest import EXAMPLES


@pytest.fixture
def client(url: str):
    with sluice.Client(url) as c:
        yield c


def test_a_canary_gets_its_weight_and_is_reweighted_live(
    client: sluice.Client, queue_name: str
) -> None:
    exchange, v1, v2 = f"{queue_name}-canary", f"{queue_name}-v1", f"{queue_name}-v2"
    client.declare_exchange(exchange, "weighted")
    for queue, weight in ((v1, 95), (v2, 5)):
        client.declare_queue(queue)
        client.bind(queue, exchange, weight=weight)

    def split(n: int) -> tuple[int, int]:
        before = (client.inspect_queue(v1).ready, client.inspect_queue(v2).ready)
        client.publish_batch((exchange, "", f"{i}") for i in range(n))
        return (
            client.inspect_queue(v1).ready - before[0],
            client.inspect_queue(v2).ready - before[1],
        )

    assert split(1000) == (950, 50)
    client.bind(v2, exchange, weight=95)
    assert split(1000) == (500, 500)
    client.bind(v1, exchange, weight=0)
    assert split(100) == (0, 100)
    with pytest.raises(sluice.InvalidArgument):
        client.bind(v1, exchange, weight=2_000_000)


def test_a_consistent_hash_exchange_keeps_a_key_on_its_shard(url: str, queue_name: str) -> None:
    async def main() -> None:
        async with sluice.AsyncClient(url) as client:
            exchange = f"{queue_name}-by-user"
            await client.declare_exchange(exchange, "consistent-hash", hash_header="user")
            shards = [f"{queue_name}-s{i}" for i in range(3)]
            for shard in shards:
                await client.declare_queue(shard)
                await client.bind(shard, exchange)
            for i in range(300):
                await client.publish(exchange, "", f"u{i % 30}", headers={"user": f"u{i % 30}"})
            seen: dict[str, str] = {}
            for shard in shards:
                for message in await client.get_many(shard, max=300):
                    user = message.body.decode()
                    assert seen.setdefault(user, shard) == shard, f"{user} on two shards"
                    await message.ack()
            assert len(seen) == 30
            assert len(set(seen.values())) == 3, "users spread over every shard"
            with pytest.raises(sluice.Unroutable):
                await client.publish(exchange, "", b"no user", mandatory=True)

    asyncio.run(main())


def test_the_canary_rollout_example_moves_the_work_to_v2_in_three_stages(url: str) -> None:
    example = subprocess.run(
        [sys.executable, str(EXAMPLES / "canary_rollout.py"), "--url", url, "--per-stage", "200"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert example.returncode == 0, example.stderr
    assert example.stdout.splitlines() == [
        "stage 5%: v1 took 190, v2 took 10",
        "stage 50%: v1 took 100, v2 took 100",
        "stage 100%: v1 took 0, v2 took 200",
    ]
