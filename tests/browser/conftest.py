"""Fixtures of the dashboard's browser test: the real `sluice` broker on free ports in a temp
directory, traffic from the `sluice` CLI, and Debian's Chromium driven by Playwright.

Every process started here is stopped by its pid. `SLUICE_BIN` names the broker binary
(default: target/debug/sluice); `SLUICE_CHROMIUM` the browser (default: /usr/bin/chromium).
"""

from __future__ import annotations

import base64
import json
import math
import os
import signal
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

ROOT = Path(__file__).resolve().parents[2]
SLUICE = Path(os.environ.get("SLUICE_BIN", ROOT / "target" / "debug" / "sluice"))
CHROMIUM = os.environ.get("SLUICE_CHROMIUM", "/usr/bin/chromium")
START_TIMEOUT_S = 30
STOP_TIMEOUT_S = 10
# Longest wait for what a page shows (a refresh takes a request or two; a debug broker on a
# busy two-core machine may be slow to answer): Playwright's default of 5 s is tight.
PAGE_TIMEOUT_MS = 20_000
expect.set_options(timeout=PAGE_TIMEOUT_MS)

# The topology the traffic runs over (declared through the HTTP API):
# - orders: published to continuously, taken by the consumer "orders-worker";
# - emails: published to continuously, taken by the consumer "emails-worker";
# - invoices: published to continuously, never consumed;
# - receipts: only what a test publishes (browse and purge);
# - payments: at most 2 messages, the oldest dropped to payments.dlq ("maxlen");
# - payments.retry: where the dashboard moves payments.dlq's messages.
QUEUES = {
    "orders": {},
    "emails": {},
    "invoices": {},
    "receipts": {},
    "payments.dlq": {},
    "payments.retry": {},
    "payments": {
        "max_length": 2,
        "overflow": "drop-head",
        "dead_letter_exchange": "",
        "dead_letter_routing_key": "payments.dlq",
    },
}


@dataclass
class Broker:
    """A running `sluice serve`."""

    process: subprocess.Popen
    wire_addr: str
    http_addr: str
    data_dir: str
    children: list[subprocess.Popen] = field(default_factory=list)

    @property
    def base_url(self) -> str:
        return f"http://{self.http_addr}"

    def url(self, name: str | None = None) -> str:
        suffix = f"/?name={name}" if name else ""
        return f"sluice://guest:guest@{self.wire_addr}{suffix}"

    def api(self, method: str, path: str, body: dict | None = None):
        """Calls the HTTP API as guest and returns the decoded JSON (None when empty)."""
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base_url + path, data=data, method=method)
        token = base64.b64encode(b"guest:guest").decode()
        req.add_header("Authorization", f"Basic {token}")
        with urllib.request.urlopen(req, timeout=10) as resp:
            text = resp.read()
        return json.loads(text) if text else None

    def cli(self, *args: str, name: str | None = None, stdin: bytes | None = None) -> str:
        """Runs one `sluice` admin command against the broker and returns its stdout."""
        env = dict(os.environ, SLUICE_URL=self.url(name))
        done = subprocess.run(
            [str(SLUICE), *args],
            env=env,
            input=stdin,
            capture_output=True,
            timeout=30,
            check=True,
        )
        return done.stdout.decode()

    def spawn_consumer(self, queue: str, name: str) -> subprocess.Popen:
        """Starts `sluice consume QUEUE` as a connection named NAME; stopped at teardown."""
        env = dict(os.environ, SLUICE_URL=self.url(name))
        child = subprocess.Popen(
            [str(SLUICE), "consume", queue, "--prefetch", "5"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.children.append(child)
        return child


def _read_line(process: subprocess.Popen, deadline: float) -> str:
    """One line of the broker's stdout, failing once `deadline` passes."""
    result: list[str] = []
    reader = threading.Thread(target=lambda: result.append(process.stdout.readline().decode()))
    reader.daemon = True
    reader.start()
    reader.join(max(0.0, deadline - time.monotonic()))
    if not result or not result[0]:
        raise RuntimeError(f"the broker said nothing in {START_TIMEOUT_S} s (exit code {process.poll()})")
    return result[0].strip()


def _stop(process: subprocess.Popen) -> None:
    """SIGTERM by pid, then SIGKILL if it does not stop in time."""
    if process.poll() is not None:
        return
    os.kill(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=STOP_TIMEOUT_S)


def start_broker(data_dir: str) -> Broker:
    if not SLUICE.exists():
        raise RuntimeError(f"{SLUICE} is missing: run `cargo build --bins` first")
    process = subprocess.Popen(
        [
            str(SLUICE),
            "serve",
            "--data-dir",
            data_dir,
            "--listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + START_TIMEOUT_S
    try:
        first = _read_line(process, deadline)  # "sluice listening on ADDR (data directory ...)"
        second = _read_line(process, deadline)  # "sluice http on ADDR"
        wire_addr = first.split("listening on ")[1].split()[0]
        http_addr = second.split("sluice http on ")[1].strip()
    except Exception:
        _stop(process)
        raise
    return Broker(process=process, wire_addr=wire_addr, http_addr=http_addr, data_dir=data_dir)


class Traffic:
    """Publishes to the work queues from a thread, at a rate that rises and falls so the
    charts have a shape. Publishing is pacing, not synchronisation: tests wait on what the
    dashboard shows."""

    def __init__(self, broker: Broker):
        self.broker = broker
        self.stopping = threading.Event()
        self.published = 0
        self.errors: list[str] = []
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        n = 0
        while not self.stopping.is_set():
            n += 1
            queue = ("orders", "orders", "emails", "invoices")[n % 4]
            body = json.dumps({"order": n, "amount_cents": 1999 + n, "currency": "EUR"})
            try:
                self.broker.cli(
                    "publish", "", queue, body,
                    "--header", f"tenant=acme-{n % 3}",
                    "--content-type", "application/json",
                )
                self.published += 1
            except subprocess.CalledProcessError as e:
                self.errors.append(e.stderr.decode())
            # A wave: between about 2 and 20 publishes a second.
            self.stopping.wait(0.05 + 0.2 * (1 + math.sin(n / 40)))

    def __enter__(self) -> "Traffic":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stopping.set()
        self.thread.join(timeout=30)


def declare_topology(broker: Broker) -> None:
    for name, arguments in QUEUES.items():
        broker.api("PUT", f"/api/queues/{name}", {"arguments": arguments})
    # Five into a queue of two: three dead-lettered as "maxlen" into payments.dlq.
    for n in range(5):
        broker.cli("publish", "", "payments", f"payment {n}", "--header", "customer=c-42")


@pytest.fixture(scope="session")
def broker():
    with tempfile.TemporaryDirectory(prefix="sluice-browser-") as data_dir:
        b = start_broker(data_dir)
        try:
            declare_topology(b)
            b.spawn_consumer("orders", "orders-worker")
            b.spawn_consumer("emails", "emails-worker")
            with Traffic(b) as traffic:
                b.traffic = traffic
                yield b
        finally:
            for child in b.children:
                _stop(child)
            _stop(b.process)


@pytest.fixture(scope="session")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install chromium (scripts/test does)")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield b
        b.close()


@pytest.fixture
def page(browser: Browser, broker: Broker):
    """A fresh tab at 1440×900, not signed in."""
    context = browser.new_context(viewport={"width": 1440, "height": 900}, base_url=broker.base_url)
    tab = context.new_page()
    tab.set_default_timeout(PAGE_TIMEOUT_MS)
    yield tab
    context.close()


@pytest.fixture
def signed_in(page: Page, broker: Broker) -> Page:
    """A tab signed in as guest, through the login form."""
    page.goto("/")
    page.fill("#login-user", "guest")
    page.fill("#login-password", "guest")
    page.click("#login-submit")
    page.wait_for_selector("#ov-tiles .tile")
    return page


def api_status(broker: Broker, method: str, path: str) -> int:
    """The status of an API call (for tests that only need to know it exists)."""
    try:
        broker.api(method, path)
        return 200
    except urllib.error.HTTPError as e:
        return e.code
