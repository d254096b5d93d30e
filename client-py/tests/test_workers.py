"""Worker processes competing on one queue (the examples), crashes, and Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator

import pytest

import sluice

from .conftest import EXAMPLES, read_line, spawn_python


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[str]]]:
    """Child processes to kill at the end of the test, whatever happened."""
    started: list[subprocess.Popen[str]] = []
    yield started
    for p in started:
        if p.poll() is None:
            p.kill()
        p.communicate(timeout=10)


def collect_results(client: sluice.Client, queue: str, count: int, timeout: float = 30.0) -> list[dict]:
    results = []
    with client.consume(queue, prefetch=count) as consumer:
        deadline = time.monotonic() + timeout
        while len(results) < count:
            msg = consumer.receive(timeout=max(0.0, deadline - time.monotonic()))
            assert msg is not None, f"{len(results)} of {count} results after {timeout}s"
            results.append(json.loads(msg.body))
            msg.ack()
    return results


def stop(process: subprocess.Popen[str], sig: int = signal.SIGTERM) -> tuple[int, str]:
    os.kill(process.pid, sig)
    try:
        _, err = process.communicate(timeout=15)
    except subprocess.TimeoutExpired:
        # Make the hang tell where it is: the fault handler prints every thread's stack.
        process.send_signal(signal.SIGABRT)
        out, err = process.communicate(timeout=10)
        pytest.fail(f"still running 15 s after signal {sig}; stdout:\n{out}\nstderr:\n{err}")
    return process.returncode, err


def test_competing_worker_processes(
    url: str, queue_name: str, processes: list[subprocess.Popen[str]]
) -> None:
    results_queue = f"{queue_name}-results"
    workers = []
    # Two blocking workers and one asyncio worker (working on up to 3 tasks at once).
    for script, prefetch in [("worker.py", "1"), ("worker.py", "1"), ("async_worker.py", "3")]:
        worker = spawn_python(
            str(EXAMPLES / script), "--url", url, "--queue", queue_name,
            "--results", results_queue, "--prefetch", prefetch,
        )
        processes.append(worker)
        workers.append(worker)
    for worker in workers:
        read_line(worker, "ready")

    producer = subprocess.run(
        [os.sys.executable, str(EXAMPLES / "producer.py"), "--url", url, "--queue", queue_name,
         "--count", "60", "--work", "0.02", "--batch", "25"],
        capture_output=True, text=True, timeout=60,
    )
    assert producer.returncode == 0, producer.stderr
    assert "published 60 tasks" in producer.stdout

    with sluice.Client(url) as client:
        results = collect_results(client, results_queue, 60)
        assert sorted(r["id"] for r in results) == list(range(60))  # each task exactly once
        per_worker = {w.pid: sum(r["worker"] == w.pid for r in results) for w in workers}
        assert all(n > 0 for n in per_worker.values()), per_worker  # all three competed
        assert all(r["delivery_count"] == 1 for r in results)
        assert client.inspect_queue(queue_name).ready == 0

    for worker in workers:
        code, err = stop(worker)
        assert code == 0, err


def test_worker_pool_and_scaling_workers_independently(
    url: str, queue_name: str, processes: list[subprocess.Popen[str]]
) -> None:
    results_queue = f"{queue_name}-results"
    pool = spawn_python(
        str(EXAMPLES / "worker_pool.py"), "--url", url, "--queue", queue_name,
        "--results", results_queue, "--workers", "2",
    )
    processes.append(pool)
    read_line(pool, "pool started 2 workers")
    with sluice.Client(url) as client:
        client.declare_queue(queue_name)
        client.declare_queue(results_queue)
        client.publish_batch(
            ("", queue_name, json.dumps({"id": i, "work": 0.05})) for i in range(40)
        )
        # One more worker joins while the pool is busy: nothing else changes. Tasks published
        # once it consumes reach it too, whether or not the pool has finished the first 40.
        extra = spawn_python(
            str(EXAMPLES / "worker.py"), "--url", url, "--queue", queue_name,
            "--results", results_queue,
        )
        processes.append(extra)
        read_line(extra, "ready")
        client.publish_batch(
            ("", queue_name, json.dumps({"id": i, "work": 0.05})) for i in range(40, 50)
        )
        results = collect_results(client, results_queue, 50)
        assert sorted(r["id"] for r in results) == list(range(50))
        workers = {r["worker"] for r in results}
        assert extra.pid in workers and len(workers) == 3, workers

    code, err = stop(extra)
    assert code == 0, err
    code, err = stop(pool)
    assert code == 0, err


def test_killed_worker_task_goes_to_another_worker(
    url: str, queue_name: str, processes: list[subprocess.Popen[str]]
) -> None:
    with sluice.Client(url) as client:
        client.declare_queue(queue_name)
        client.publish("", queue_name, json.dumps({"id": 7, "work": 60}))

    first = spawn_python(str(EXAMPLES / "worker.py"), "--url", url, "--queue", queue_name)
    processes.append(first)
    assert read_line(first, "started").startswith("started id=7 delivery_count=1")

    second = spawn_python(str(EXAMPLES / "worker.py"), "--url", url, "--queue", queue_name)
    processes.append(second)
    read_line(second, "ready")
    first.kill()  # SIGKILL mid-task: no ack, no goodbye
    first.wait(timeout=10)
    assert read_line(second, "started").startswith("started id=7 delivery_count=2")

    # A graceful stop mid-task (SIGTERM) requeues the task too.
    code, err = stop(second)
    assert code == 0, err
    with sluice.Client(url) as client:
        msg = client.get(queue_name)
        assert msg is not None and json.loads(msg.body)["id"] == 7
        assert msg.delivery_count >= 3  # more if the broker redelivered it before the cancel
        msg.ack()


CONSUME_FOREVER = """
import sys, time, sluice
client = sluice.Client(sys.argv[1])
client.declare_queue(sys.argv[2])
print("ready", flush=True)
try:
    for msg in client.consume(sys.argv[2]):
        pass
except KeyboardInterrupt:
    print("interrupted", flush=True)
    client.close()
    sys.exit(3)
"""


def test_ctrl_c_interrupts_a_blocking_consume(
    url: str, queue_name: str, processes: list[subprocess.Popen[str]]
) -> None:
    child = spawn_python("-c", CONSUME_FOREVER, url, queue_name)
    processes.append(child)
    read_line(child, "ready")
    time.sleep(0.2)  # well inside the blocking wait
    sent = time.monotonic()
    os.kill(child.pid, signal.SIGINT)
    read_line(child, "interrupted", timeout=5)
    assert time.monotonic() - sent < 1.0
    assert child.wait(timeout=10) == 3


FORK_AFTER_USE = """
import os, sys, sluice
url, queue = sys.argv[1], sys.argv[2]
with sluice.Client(url) as client:  # the runtime is up in the parent
    client.declare_queue(queue)
pid = os.fork()
if pid == 0:
    # A forked child has none of the parent's runtime threads: it starts its own.
    with sluice.Client(url) as client:
        client.publish("", queue, f"from {os.getpid()}")
    os._exit(0)
_, status = os.waitpid(pid, 0)
print(f"child exited {os.waitstatus_to_exitcode(status)}", flush=True)
"""


def test_a_forked_child_gets_its_own_runtime(
    url: str, queue_name: str, processes: list[subprocess.Popen[str]]
) -> None:
    parent = spawn_python("-c", FORK_AFTER_USE, url, queue_name)
    processes.append(parent)
    assert read_line(parent, "child exited") == "child exited 0"
    with sluice.Client(url) as client:
        msg = client.get(queue_name)
        assert msg is not None and msg.body.startswith(b"from ")
        msg.ack()


def test_killed_async_worker_tasks_go_to_another_worker(
    url: str, queue_name: str, processes: list[subprocess.Popen[str]]
) -> None:
    with sluice.Client(url) as client:
        client.declare_queue(queue_name)
        client.publish_batch(("", queue_name, json.dumps({"id": i, "work": 60})) for i in range(2))

    first = spawn_python(
        str(EXAMPLES / "async_worker.py"), "--url", url, "--queue", queue_name, "--prefetch", "5"
    )
    processes.append(first)
    read_line(first, "started")
    read_line(first, "started")  # both tasks at once
    second = spawn_python(
        str(EXAMPLES / "async_worker.py"), "--url", url, "--queue", queue_name, "--prefetch", "5"
    )
    processes.append(second)
    read_line(second, "ready")
    first.kill()
    first.wait(timeout=10)
    taken = {read_line(second, "started").split()[1] for _ in range(2)}
    assert taken == {"id=0", "id=1"}

    code, err = stop(second)  # SIGTERM: both tasks go back to the queue
    assert code == 0, err
    with sluice.Client(url) as client:
        assert client.inspect_queue(queue_name).ready == 2
        client.purge_queue(queue_name)
