"""A worker on the asyncio API: one process working on several tasks at once.

    python async_worker.py --prefetch 10

It competes for the queue with every other worker (``worker.py``, ``worker_pool.py``, more
of these) exactly like they do. ``--prefetch`` is also its concurrency: the broker hands it
at most that many unacknowledged tasks, and it starts an asyncio task for each one.
SIGTERM or Ctrl-C requeues the tasks in progress.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
from typing import Optional

import sluice


async def handle(client: sluice.AsyncClient, msg: sluice.AsyncMessage, results: Optional[str]) -> None:
    pid = os.getpid()
    async with msg.process():
        task = json.loads(msg.body)
        print(f"started id={task['id']} delivery_count={msg.delivery_count} pid={pid}", flush=True)
        await asyncio.sleep(float(task.get("work", 0)))
        if results:
            outcome = {"id": task["id"], "worker": pid, "delivery_count": msg.delivery_count}
            await client.publish("", results, json.dumps(outcome))
        print(f"done id={task['id']} pid={pid}", flush=True)


async def run(url: str, queue: str = "tasks", results: Optional[str] = None, prefetch: int = 10) -> None:
    """Consumes `queue` until cancelled, `prefetch` tasks at a time."""
    pid = os.getpid()
    running: set[asyncio.Task[None]] = set()
    async with sluice.AsyncClient(url, name=f"async-worker-{pid}") as client:
        await client.declare_queue(queue)
        if results:
            await client.declare_queue(results)
        try:
            async with client.consume(queue, prefetch=prefetch) as consumer:
                # The broker knows this consumer from here on: tasks published now can reach it.
                print(f"ready pid={pid}", flush=True)
                async for msg in consumer:
                    task = asyncio.create_task(handle(client, msg, results))
                    running.add(task)
                    task.add_done_callback(running.discard)
        finally:
            # Stopped: the tasks in progress requeue their messages (see `process()`).
            for task in running:
                task.cancel()
            await asyncio.gather(*running, return_exceptions=True)


async def main_async(args: argparse.Namespace) -> None:
    main = asyncio.current_task()
    assert main is not None
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, main.cancel)
    try:
        await run(args.url, args.queue, args.results, args.prefetch)
    except asyncio.CancelledError:
        pass


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default=os.environ.get("SLUICE_URL", "sluice://"))
    parser.add_argument("--queue", default="tasks")
    parser.add_argument("--results", default=None, help="queue to report finished tasks to")
    parser.add_argument("--prefetch", type=int, default=10, help="tasks worked on at once")
    asyncio.run(main_async(parser.parse_args(argv)))


if __name__ == "__main__":
    main()
