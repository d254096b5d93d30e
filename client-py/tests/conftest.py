"""Fixtures: a real `sluice` broker on a free port with a temporary data directory.

The broker binary is $SLUICE_BIN, else target/debug/sluice of the repository. It listens on
127.0.0.1:0 and prints `sluice listening on 127.0.0.1:PORT (data directory DIR)` first, then
`sluice http ...` and `sluice tls on 127.0.0.1:PORT` (or `sluice tls off`); the fixture reads
the ports from those lines and stops the broker by its process id.
"""

from __future__ import annotations

import os
import re
import select
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Optional

import pytest

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "client-py" / "examples"
SLUICE_BIN = os.environ.get("SLUICE_BIN") or str(REPO / "target" / "debug" / "sluice")
LISTENING = re.compile(r"sluice listening on 127\.0\.0\.1:(\d+) ")
TLS_LISTENING = re.compile(r"sluice tls on 127\.0\.0\.1:(\d+)$")


class Broker:
    """A broker process started by `Broker.start`."""

    def __init__(self, data_dir: Path, log_dir: Path) -> None:
        self.data_dir = data_dir
        self.stdout_path = log_dir / "broker.stdout"
        self.stderr_path = log_dir / "broker.stderr"
        self.process: Optional[subprocess.Popen[bytes]] = None
        self.port = 0
        #: The TLS port, when started with TLS flags.
        self.tls_port = 0
        self._stdout: Optional[IO[bytes]] = None
        self._stderr: Optional[IO[bytes]] = None

    @property
    def url(self) -> str:
        return f"sluice://guest:guest@127.0.0.1:{self.port}"

    def start(
        self, timeout: float = 20.0, extra: tuple[str, ...] = (), listen: str = "127.0.0.1:0"
    ) -> "Broker":
        """Starts the broker; `listen` another address to start it again on its old port."""
        if not os.path.exists(SLUICE_BIN):
            pytest.fail(f"no broker binary at {SLUICE_BIN}: build it or set SLUICE_BIN")
        # Output goes to files, not pipes: a pipe nobody drains would block the broker.
        self._stdout = open(self.stdout_path, "wb")
        self._stderr = open(self.stderr_path, "wb")
        self.process = subprocess.Popen(
            [
                SLUICE_BIN,
                "serve",
                "--data-dir",
                str(self.data_dir),
                "--listen",
                listen,
                # Brokers of parallel runs would collide on the default HTTP port.
                "--http-listen",
                "127.0.0.1:0",
                *extra,
            ],
            stdout=self._stdout,
            stderr=self._stderr,
            stdin=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            lines = self.stdout_path.read_text(errors="replace").split("\n")
            # Three complete lines: the plain port, the HTTP API, the TLS port.
            match = LISTENING.match(lines[0]) if len(lines) > 3 else None
            if match:
                self.port = int(match.group(1))
                tls = TLS_LISTENING.match(lines[2])
                self.tls_port = int(tls.group(1)) if tls else 0
                return self
            if self.process.poll() is not None:
                break
            time.sleep(0.02)
        self.stop()
        pytest.fail(f"broker did not start:\n{self.stderr_path.read_text(errors='replace')}")

    def kill9(self) -> None:
        """SIGKILL: a crash."""
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)
        for f in (self._stdout, self._stderr):
            if f is not None:
                f.close()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.kill(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
        for f in (self._stdout, self._stderr):
            if f is not None:
                f.close()


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    """One broker for the session; tests keep apart by using their own queue names."""
    root = tmp_path_factory.mktemp("broker")
    (root / "data").mkdir()
    b = Broker(root / "data", root).start()
    yield b
    b.stop()


@pytest.fixture
def url(broker: Broker) -> str:
    return broker.url


@pytest.fixture
def queue_name(request: pytest.FixtureRequest) -> str:
    """A queue name of this test's own."""
    return f"{request.node.name[:40]}-{uuid.uuid4().hex[:8]}"


def spawn_python(*args: str) -> subprocess.Popen[str]:
    """Runs this interpreter (unbuffered) with `args` in a child process, output piped.

    With the fault handler on, a child that hangs prints every thread's stack on SIGABRT
    (see `stop` in test_workers.py), so a hang in CI says where it was.
    """
    return subprocess.Popen(
        [sys.executable, "-u", "-X", "faulthandler", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
    )


def read_line(process: subprocess.Popen[str], prefix: str, timeout: float = 20.0) -> str:
    """Reads the child's stdout until a line starting with `prefix` (or fails).

    Reads the pipe's file descriptor directly, keeping what follows the line for the next
    call: a buffered `readline()` may swallow the next line where `select` cannot see it.
    """
    assert process.stdout is not None
    fd = process.stdout.fileno()
    pending: bytes = getattr(process, "_pending_output", b"")
    deadline = time.monotonic() + timeout
    try:
        while True:
            while b"\n" in pending:
                line, pending = pending.split(b"\n", 1)
                if line.decode(errors="replace").startswith(prefix):
                    return line.decode(errors="replace").strip()
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
                break
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            pending += chunk
    finally:
        process._pending_output = pending  # type: ignore[attr-defined]
    process.kill()
    _, err = process.communicate(timeout=10)
    pytest.fail(f"no line starting with {prefix!r} from the child; stderr:\n{err}")
