"""One worker: takes tasks from a queue and processes them.

    python worker.py --prefetch 1

Run as many workers as you like, on as many machines: they compete for the same queue, and
the broker hands each task to exactly one of them, never more than ``--prefetch``
unacknowledged tasks per worker. Start workers to drain a backlog faster, stop them when it
is gone; the producers do not know or care how many there are.

A task is acknowledged only when it is done (``msg.process()``), so nothing is lost when a
worker dies mid-task: the broker notices the closed connection and hands the task to another
worker, marked ``redelivered``. A task that fails with an exception is rejected (dropped, or
dead-lettered if the queue has a dead-letter exchange); a worker stopped by Ctrl-C or
SIGTERM puts its current task back.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from types import FrameType
from typing import Optional

import sluice


def stop(signum: int, frame: Optional[FrameType]) -> None:
    """SIGTERM ends the worker like Ctrl-C: the current task is requeued, the client closed."""
    raise SystemExit(0)


def run(
    url: str,
    queue: str = "tasks",
    results: Optional[str] = None,
    prefetch: int = 1,
    name: Optional[str] = None,
) -> None:
    """Consumes `queue` until stopped. With `results`, publishes one JSON line per task there."""
    pid = os.getpid()
    with sluice.Client(url, name=name or f"worker-{pid}") as client:
        client.declare_queue(queue)
        if results:
            client.declare_queue(results)
        with client.consume(queue, prefetch=prefetch) as consumer:
            # The broker knows this consumer from here on: tasks published now can reach it.
            print(f"ready pid={pid}", flush=True)
            for msg in consumer:
                with msg.process():
                    task = json.loads(msg.body)
                    print(
                        f"started id={task['id']} delivery_count={msg.delivery_count} pid={pid}",
                        flush=True,
                    )
                    time.sleep(float(task.get("work", 0)))
                    if results:
                        outcome = {
                            "id": task["id"], "worker": pid, "delivery_count": msg.delivery_count,
                        }
                        client.publish("", results, json.dumps(outcome))
                    print(f"done id={task['id']} pid={pid}", flush=True)


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default=os.environ.get("SLUICE_URL", "sluice://"))
    parser.add_argument("--queue", default="tasks")
    parser.add_argument("--results", default=None, help="queue to report finished tasks to")
    parser.add_argument("--prefetch", type=int, default=1, help="unacked tasks held at once")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, stop)
    try:
        run(args.url, args.queue, args.results, args.prefetch)
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
