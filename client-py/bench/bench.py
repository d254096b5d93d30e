"""Publish and consume rates from Python: sluice (this package) or pika against RabbitMQ.

    python bench.py sluice --url sluice://127.0.0.1:5680
    python bench.py pika --url amqp://guest:guest@127.0.0.1:5672/%2F

Three measurements, each on a fresh durable queue with persistent 100-byte messages:

- ``single``: one publish at a time, each waiting for its confirm.
- ``batch``: many publishes with their confirms pipelined (sluice: ``publish_batch`` of
  ``--batch`` messages; pika's BlockingConnection cannot pipeline confirms, so its batch is
  confirm mode off plus one round trip at the end: faster, but nothing is confirmed).
- ``consume``: consume and ack every message one by one, ``--prefetch`` in flight.
"""

from __future__ import annotations

import argparse
import json
import time
import uuid
from typing import Any, Callable

BODY = b"x" * 100


def timed(count: int, run: Callable[[], None]) -> float:
    started = time.perf_counter()
    run()
    return count / (time.perf_counter() - started)


def bench_sluice(args: argparse.Namespace) -> dict[str, float]:
    import sluice

    rates = {}
    with sluice.Client(args.url) as client:
        queue = f"bench-{uuid.uuid4().hex[:8]}"
        client.declare_queue(queue)

        def single() -> None:
            for _ in range(args.single):
                client.publish("", queue, BODY)

        def batch() -> None:
            for first in range(0, args.messages, args.batch):
                n = min(args.batch, args.messages - first)
                client.publish_batch(("", queue, BODY) for _ in range(n))

        def consume() -> None:
            left = args.single + args.messages
            with client.consume(queue, prefetch=args.prefetch) as consumer:
                for msg in consumer:
                    msg.ack()
                    left -= 1
                    if left == 0:
                        break

        rates["single"] = timed(args.single, single)
        rates["batch"] = timed(args.messages, batch)
        rates["consume"] = timed(args.single + args.messages, consume)
        client.delete_queue(queue)
    return rates


def bench_pika(args: argparse.Namespace) -> dict[str, float]:
    import pika

    rates = {}
    connection = pika.BlockingConnection(pika.URLParameters(args.url))
    try:
        channel = connection.channel()
        queue = f"bench-{uuid.uuid4().hex[:8]}"
        channel.queue_declare(queue, durable=True)
        persistent = pika.BasicProperties(delivery_mode=2)

        def single() -> None:
            channel.confirm_delivery()
            for _ in range(args.single):
                channel.basic_publish("", queue, BODY, persistent)  # waits for the confirm

        unconfirmed = connection.channel()

        def batch() -> None:
            for _ in range(args.messages):
                unconfirmed.basic_publish("", queue, BODY, persistent)
            unconfirmed.queue_declare(queue, passive=True)  # one round trip

        def consume() -> None:
            left = args.single + args.messages
            consumer = connection.channel()
            consumer.basic_qos(prefetch_count=args.prefetch)
            for method, _props, _body in consumer.consume(queue):
                consumer.basic_ack(method.delivery_tag)
                left -= 1
                if left == 0:
                    break
            consumer.cancel()

        rates["single"] = timed(args.single, single)
        rates["batch"] = timed(args.messages, batch)
        time.sleep(0.5)  # let RabbitMQ settle the unconfirmed ones before counting
        rates["consume"] = timed(args.single + args.messages, consume)
        channel.queue_delete(queue)
    finally:
        connection.close()
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("target", choices=["sluice", "pika"])
    parser.add_argument("--url", required=True)
    parser.add_argument("--single", type=int, default=2000, help="confirmed one at a time")
    parser.add_argument("--messages", type=int, default=50_000, help="published in batches")
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--prefetch", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=3, help="best of")
    args = parser.parse_args()
    bench: Callable[[argparse.Namespace], dict[str, float]] = (
        bench_sluice if args.target == "sluice" else bench_pika
    )
    runs = [bench(args) for _ in range(args.runs)]
    best: dict[str, Any] = {k: round(max(r[k] for r in runs)) for k in runs[0]}
    print(json.dumps({"target": args.target, "msg_per_s": best, "runs": args.runs}))


if __name__ == "__main__":
    main()
