"""A pool of worker processes on one machine, all competing on one queue.

    python worker_pool.py --workers 4

Scaling is per worker, not per pool: run another pool (or single ``worker.py`` processes)
on this or any other machine and the broker spreads the tasks over every worker it sees,
each getting at most ``--prefetch`` at a time. The pool restarts a worker that dies; a task
the dead worker held goes back to the queue and to another worker. Ctrl-C or SIGTERM stops
the pool and its workers; their current tasks are requeued.

Workers are separate processes (not threads), so CPU-bound tasks scale with cores; each has
its own connection.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import signal
import time
from multiprocessing.process import BaseProcess
from types import FrameType
from typing import Any, Optional

import worker


def serve(kwargs: dict[str, Any]) -> None:
    """A worker process's body: the worker, with SIGTERM handled like Ctrl-C."""
    signal.signal(signal.SIGTERM, worker.stop)
    try:
        worker.run(**kwargs)
    except KeyboardInterrupt:
        pass


def stop(signum: int, frame: Optional[FrameType]) -> None:
    raise KeyboardInterrupt


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default=os.environ.get("SLUICE_URL", "sluice://"))
    parser.add_argument("--queue", default="tasks")
    parser.add_argument("--results", default=None, help="queue to report finished tasks to")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--prefetch", type=int, default=1)
    args = parser.parse_args(argv)
    kwargs = {"url": args.url, "queue": args.queue, "results": args.results, "prefetch": args.prefetch}

    # "spawn": each worker starts a fresh interpreter, with nothing inherited from the pool.
    context = multiprocessing.get_context("spawn")

    def start(i: int) -> BaseProcess:
        process = context.Process(target=serve, args=(kwargs,), name=f"worker-{i}")
        process.start()
        return process

    signal.signal(signal.SIGTERM, stop)
    workers = [start(i) for i in range(args.workers)]
    print(f"pool started {len(workers)} workers", flush=True)
    try:
        while True:
            for i, process in enumerate(workers):
                if not process.is_alive():
                    print(f"worker {process.pid} exited ({process.exitcode}); restarting", flush=True)
                    workers[i] = start(i)
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        for process in workers:
            if process.is_alive() and process.pid is not None:
                os.kill(process.pid, signal.SIGTERM)
        for process in workers:
            process.join(timeout=10)
            if process.is_alive():
                process.kill()
        print("pool stopped", flush=True)


if __name__ == "__main__":
    main()
