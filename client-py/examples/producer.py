"""Publishes tasks for the workers.

    python producer.py --count 1000 --work 0.05

Each task is a small JSON object, ``{"id": n, "work": seconds}``; a worker sleeps ``work``
seconds to stand in for real work. The tasks go out in pipelined batches: ``publish_batch``
returns once the broker has confirmed (stored) every message of the batch.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from typing import Optional

import sluice


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default=os.environ.get("SLUICE_URL", "sluice://"))
    parser.add_argument("--queue", default="tasks")
    parser.add_argument("--count", type=int, default=100, help="tasks to publish")
    parser.add_argument("--first-id", type=int, default=0)
    parser.add_argument("--work", type=float, default=0.05, help="seconds of work per task")
    parser.add_argument("--batch", type=int, default=500, help="tasks per confirmed batch")
    args = parser.parse_args(argv)

    with sluice.Client(args.url, name="producer") as client:
        client.declare_queue(args.queue)
        started = time.monotonic()
        last = args.first_id + args.count
        for first in range(args.first_id, last, args.batch):
            client.publish_batch(
                sluice.OutgoingMessage(
                    "",
                    args.queue,
                    json.dumps({"id": i, "work": args.work}),
                    content_type="application/json",
                    message_id=str(i),
                )
                for i in range(first, min(first + args.batch, last))
            )
        elapsed = time.monotonic() - started
        print(f"published {args.count} tasks to {args.queue!r} in {elapsed:.2f}s", flush=True)


if __name__ == "__main__":
    main()
