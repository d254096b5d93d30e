"""Publish and consume rates from Python: sluice (this package) or pika against RabbitMQ.

    python bench.py sluice --url sluice://127.0.0.1:5680
    python bench.py pika --url amqp://guest:guest@127.0.0.1:5672/%2F
    python bench.py floor --dir DATA_DISK_DIR
    python bench.py report sluice.json pika.json floor.json

``benches/run-python.sh`` runs all of them in one go, with both brokers started fresh.

Four measurements, on one fresh durable queue with persistent 128-byte messages:

- ``single``: one publish at a time, each waiting for its confirm.
- ``threads``: the same from ``--threads`` threads at once (sluice: one shared ``Client``;
  pika, which is not thread-safe: one connection per thread, opened before the clock starts).
- ``batch``: many publishes with their confirms pipelined (sluice: ``publish_batch`` of
  ``--batch`` messages; pika's BlockingConnection cannot pipeline confirms, so its batch is
  confirm mode off plus one round trip at the end: faster, but nothing is confirmed).
- ``consume``: consume and ack every message one by one, ``--prefetch`` in flight.

``floor`` measures what bounds ``single`` for a broker that makes each message durable with a
write and ``fdatasync`` before confirming it: one loopback round trip between two processes (a
publish goes to the broker and its confirm comes back; the far end is a Python echo server, so
this slightly overstates what a broker in Rust pays) plus one small write and ``fdatasync`` on
the disk (best of allocated and already-written blocks). A synchronous publisher cannot beat
their sum.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import socket
import sys
import tempfile
import threading
import time
import uuid
from typing import Any, Callable

BODY = b"x" * 128
STALL = 30  # seconds without a delivery before a consume run gives up


def timed(count: int, run: Callable[[], None]) -> float:
    started = time.perf_counter()
    run()
    return count / (time.perf_counter() - started)


def run_threads(workers: list[Callable[[], None]]) -> float:
    """Runs each worker on its own thread; seconds from when all are ready to when all are
    done. An exception in a worker is raised here."""
    ready = threading.Barrier(len(workers) + 1)
    errors: list[BaseException] = []

    def run(work: Callable[[], None]) -> None:
        ready.wait()
        try:
            work()
        except BaseException as e:  # noqa: BLE001 - handed to the main thread
            errors.append(e)

    threads = [threading.Thread(target=run, args=(w,)) for w in workers]
    for t in threads:
        t.start()
    ready.wait()
    started = time.perf_counter()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - started
    if errors:
        raise errors[0]
    return elapsed


def per_thread(args: argparse.Namespace) -> int:
    return max(1, args.single * 4 // args.threads)


def bench_sluice(args: argparse.Namespace) -> dict[str, float]:
    import sluice

    rates = {}
    with sluice.Client(args.url) as client:
        queue = f"bench-{uuid.uuid4().hex[:8]}"
        client.declare_queue(queue)

        def batch() -> None:
            for first in range(0, args.messages, args.batch):
                n = min(args.batch, args.messages - first)
                client.publish_batch(("", queue, BODY) for _ in range(n))

        def publish_n(n: int) -> None:
            for _ in range(n):
                client.publish("", queue, BODY)

        def consume() -> None:
            with client.consume(queue, prefetch=args.prefetch) as consumer:
                for left in range(published, 0, -1):
                    msg = consumer.receive(timeout=STALL)
                    if msg is None:
                        raise RuntimeError(f"{left} messages missing after {STALL} s")
                    msg.ack()

        rates["single"] = timed(args.single, lambda: publish_n(args.single))
        n = per_thread(args)
        rates["threads"] = n * args.threads / run_threads([lambda: publish_n(n)] * args.threads)
        rates["batch"] = timed(args.messages, batch)
        published = args.single + n * args.threads + args.messages
        rates["consume"] = timed(published, consume)
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

        def threads() -> float:
            n = per_thread(args)
            params = pika.URLParameters(args.url)
            connections = [pika.BlockingConnection(params) for _ in range(args.threads)]
            try:
                channels = [c.channel() for c in connections]
                for ch in channels:
                    ch.confirm_delivery()

                def publisher(ch: Any) -> Callable[[], None]:
                    def publish() -> None:
                        for _ in range(n):
                            ch.basic_publish("", queue, BODY, persistent)

                    return publish

                return n * args.threads / run_threads([publisher(ch) for ch in channels])
            finally:
                for c in connections:
                    c.close()

        def consume() -> None:
            left = published
            consumer = connection.channel()
            consumer.basic_qos(prefetch_count=args.prefetch)
            for method, _props, _body in consumer.consume(queue, inactivity_timeout=STALL):
                if method is None:
                    raise RuntimeError(f"{left} messages missing after {STALL} s")
                consumer.basic_ack(method.delivery_tag)
                left -= 1
                if left == 0:
                    break
            consumer.cancel()

        rates["single"] = timed(args.single, single)
        rates["threads"] = threads()
        rates["batch"] = timed(args.messages, batch)
        published = args.single + per_thread(args) * args.threads + args.messages
        # The batch was not confirmed: start consuming once the queue holds all of it.
        deadline = time.monotonic() + STALL
        while channel.queue_declare(queue, passive=True).method.message_count < published:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the queue did not reach {published} messages in {STALL} s")
            time.sleep(0.01)
        rates["consume"] = timed(published, consume)
        channel.queue_delete(queue)
    finally:
        connection.close()
    return rates


def echo(listener: socket.socket) -> None:
    """Echoes what it reads until the peer closes: the far end of the round-trip probe."""
    conn, _ = listener.accept()
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    with conn:
        while data := conn.recv(4096):
            conn.sendall(data)


def round_trip_us(count: int) -> float:
    """Mean time of sending 150 bytes over loopback TCP to another process and reading them
    back: the trip a publish and its confirm make."""
    listener = socket.create_server(("127.0.0.1", 0))
    server = multiprocessing.get_context("fork").Process(target=echo, args=(listener,))
    server.start()
    try:
        with socket.create_connection(listener.getsockname()) as conn:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            request = b"p" * 150
            started = time.perf_counter()
            for _ in range(count):
                conn.sendall(request)
                got = 0
                while got < len(request):
                    got += len(conn.recv(4096))
            elapsed = time.perf_counter() - started
    finally:
        server.join(timeout=10)
        if server.is_alive():
            server.kill()
        listener.close()
    return elapsed / count * 1e6


def durable_write_us(directory: str, count: int, prewritten: bool) -> float:
    """Mean time of appending one 192-byte record (a 128-byte body with its headers) to a
    preallocated file and `fdatasync`ing it: what making one message durable costs on this
    disk. The file's blocks are either only allocated (as Sluice's segments are) or already
    written (as a broker that reuses its files would have them)."""
    fd, path = tempfile.mkstemp(dir=directory, prefix="floor-")
    try:
        record = b"r" * 192
        size = (count + 1) * len(record)
        if prewritten:
            os.pwrite(fd, bytes(size), 0)
        else:
            os.posix_fallocate(fd, 0, size)
        os.fsync(fd)
        started = time.perf_counter()
        for i in range(count):
            os.pwrite(fd, record, i * len(record))
            os.fdatasync(fd)
        elapsed = time.perf_counter() - started
    finally:
        os.close(fd)
        os.unlink(path)
    return elapsed / count * 1e6


def bench_floor(args: argparse.Namespace) -> dict[str, float]:
    # The best of the runs, as for the brokers: the most generous floor.
    rtt = min(round_trip_us(args.single * 2) for _ in range(args.runs))
    flush = min(
        durable_write_us(args.dir, args.single, prewritten)
        for _ in range(args.runs)
        for prewritten in (False, True)
    )
    return {
        "round_trip_us": round(rtt, 1),
        "durable_write_us": round(flush, 1),
        "single_max": round(1e6 / (rtt + flush)),
    }


def report(paths: list[str]) -> None:
    """Prints the Markdown table of BENCHMARKS.md from the JSON lines of one run."""
    results = {}
    threads = 0
    for path in paths:
        with open(path) as f:
            line = json.loads(f.read())
        results[line["target"]] = line.get("msg_per_s") or line["floor"]
        threads = line.get("threads", threads)
    ours, theirs = results["sluice"], results["pika"]
    columns = ("single", "threads", "batch", "consume")
    print(
        f"| msg/s | single publish + confirm | the same from {threads} threads | batch publish "
        "| consume + ack |"
    )
    print("|---|---:|---:|---:|---:|")
    for name, label in (("sluice", "sluice (Python)"), ("pika", "pika + RabbitMQ")):
        print(f"| {label} | " + " | ".join(f"{results[name][k]:,}" for k in columns) + " |")
    print("| ratio | " + " | ".join(f"{ours[k] / theirs[k]:.1f}×" for k in columns) + " |")
    if "floor" in results:
        floor = results["floor"]
        limit = floor["single_max"]
        print()
        print(
            f"Floor for `single` on this machine, same run: loopback round trip "
            f"{floor['round_trip_us']} µs + 192-byte write and fdatasync "
            f"{floor['durable_write_us']} µs → at most {limit:,} confirmed publishes/s from one "
            f"synchronous caller = {limit / theirs['single']:.1f}× pika; sluice reaches "
            f"{ours['single'] / limit:.0%} of it."
        )


def main() -> None:
    if sys.argv[1:2] == ["report"]:
        report(sys.argv[2:])
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("target", choices=["sluice", "pika", "floor"])
    parser.add_argument("--url", help="the broker's (sluice, pika)")
    parser.add_argument("--dir", default=".", help="a directory on the brokers' disk (floor)")
    parser.add_argument("--single", type=int, default=2000, help="confirmed one at a time")
    parser.add_argument("--messages", type=int, default=50_000, help="published in batches")
    parser.add_argument("--threads", type=int, default=16, help="publishing threads (threads)")
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--prefetch", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=3, help="best of")
    args = parser.parse_args()
    if args.target == "floor":
        floor = bench_floor(args)
        print(json.dumps({"target": "floor", "floor": floor, "runs": args.runs}))
        return
    if not args.url:
        parser.error("--url is required")
    bench = bench_sluice if args.target == "sluice" else bench_pika
    runs = [bench(args) for _ in range(args.runs)]
    best: dict[str, Any] = {k: round(max(r[k] for r in runs)) for k in runs[0]}
    line = {"target": args.target, "msg_per_s": best, "runs": args.runs, "threads": args.threads}
    print(json.dumps(line))


if __name__ == "__main__":
    main()
