"""A canary rollout: worker v2 gets 5 % of the work, then 50 %, then all of it.

    python canary_rollout.py --per-stage 1000

Producers publish to one exchange of kind ``weighted``; v1 workers consume ``work-v1`` and v2
workers ``work-v2``, each queue bound with a weight. Each stage re-binds ``work-v2`` (and at
the end ``work-v1``) with a new weight: the broker changes the weight in place, from the next
message on, without losing or duplicating any. Watch the split on the dashboard's Exchanges
page (or ``sluice bindings``) while this runs; roll back by setting v2's weight to 0.

Here one v1 and one v2 worker run as threads of this script and count what they take, so the
script can print the split each stage produced.
"""

from __future__ import annotations

import argparse
import json
import os
import threading
from collections import Counter
from typing import Optional

import sluice

EXCHANGE = "work"
STAGES = [("5%", 95, 5), ("50%", 50, 50), ("100%", 0, 100)]


def worker(url: str, version: str, done: Counter[tuple[str, str]], stop: threading.Event) -> None:
    """Takes tasks from ``work-VERSION`` and counts them by stage until `stop` is set."""
    with sluice.Client(url, name=f"worker-{version}") as client:
        with client.consume(f"work-{version}", prefetch=100) as consumer:
            while not stop.is_set():
                msg = consumer.receive(timeout=0.1)
                if msg is None:
                    continue
                with msg.process():
                    done[(json.loads(msg.body)["stage"], version)] += 1


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default=os.environ.get("SLUICE_URL", "sluice://"))
    parser.add_argument("--per-stage", type=int, default=1000, help="tasks published per stage")
    args = parser.parse_args(argv)

    done: Counter[tuple[str, str]] = Counter()
    stop = threading.Event()
    with sluice.Client(args.url, name="rollout") as client:
        client.declare_exchange(EXCHANGE, "weighted")
        for version in ("v1", "v2"):
            client.declare_queue(f"work-{version}")
        workers = [
            threading.Thread(target=worker, args=(args.url, v, done, stop)) for v in ("v1", "v2")
        ]
        for t in workers:
            t.start()
        try:
            for stage, v1_weight, v2_weight in STAGES:
                # Binding a bound queue again changes its weight, atomically.
                client.bind("work-v1", EXCHANGE, weight=v1_weight)
                client.bind("work-v2", EXCHANGE, weight=v2_weight)
                client.publish_batch(
                    (EXCHANGE, "", json.dumps({"stage": stage, "task": i}))
                    for i in range(args.per_stage)
                )
            # Every task published is taken once by one of the two workers.
            while sum(done.values()) < args.per_stage * len(STAGES):
                stop.wait(0.05)
        finally:
            stop.set()
            for t in workers:
                t.join()
    for stage, _, _ in STAGES:
        print(f"stage {stage}: v1 took {done[(stage, 'v1')]}, v2 took {done[(stage, 'v2')]}")


if __name__ == "__main__":
    main()
