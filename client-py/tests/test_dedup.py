"""Publish dedup from Python: a queue's window on `message_id`, the outcome of each publish
(`PublishResult.duplicate`), the count in `inspect_queue`, and the window after `kill -9`."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

import sluice

from .conftest import Broker


def test_a_duplicate_is_confirmed_reported_and_stored_once(url: str, queue_name: str) -> None:
    with sluice.Client(url) as client:
        client.declare_queue(queue_name, dedup_window=60.0, dedup_window_count=100)
        first = client.publish("", queue_name, b"1", message_id="pay-1")
        assert isinstance(first, sluice.PublishResult) and not first.duplicate
        again = client.publish("", queue_name, b"1 again", message_id="pay-1")
        assert again.duplicate
        # Without a message_id a message is never a duplicate.
        assert not client.publish("", queue_name, b"anon").duplicate
        assert not client.publish("", queue_name, b"anon").duplicate
        outcomes = client.publish_batch(
            [
                sluice.OutgoingMessage("", queue_name, b"2", message_id="pay-2"),
                sluice.OutgoingMessage("", queue_name, b"2", message_id="pay-2"),
            ],
            return_exceptions=True,
        )
        assert [o.duplicate for o in outcomes] == [False, True]  # type: ignore[union-attr]
        info = client.inspect_queue(queue_name)
        assert info.duplicates_dropped == 2
        assert info.ready == 4
        assert info.arguments["dedup_window"] == 60.0
        assert info.arguments["dedup_window_count"] == 100


async def test_the_asyncio_client_reports_duplicates_too(url: str, queue_name: str) -> None:
    async with sluice.AsyncClient(url) as client:
        await client.declare_queue(queue_name, dedup_window_count=10)
        assert not (await client.publish("", queue_name, b"x", message_id="a")).duplicate
        assert (await client.publish("", queue_name, b"x", message_id="a")).duplicate
        assert (await client.inspect_queue(queue_name)).duplicates_dropped == 1


def test_a_window_of_zero_is_refused(url: str, queue_name: str) -> None:
    with sluice.Client(url) as client:
        with pytest.raises(sluice.SluiceError) as e:
            client.declare_queue(queue_name, dedup_window_count=0)
        assert e.value.code == 207
        client.declare_queue(queue_name, dedup_window_count=1)


def test_the_window_holds_after_kill_9(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    broker = Broker(tmp_path / "data", tmp_path).start()
    try:
        with sluice.Client(broker.url) as client:
            client.declare_queue("orders", dedup_window_count=1000)
            assert not client.publish("", "orders", b"kept", message_id="o-1").duplicate
        assert broker.process is not None
        os.kill(broker.process.pid, signal.SIGKILL)
        broker.process.wait(timeout=10)
        broker.stop()
        broker = Broker(tmp_path / "data", tmp_path).start()
        with sluice.Client(broker.url) as client:
            assert client.publish("", "orders", b"again", message_id="o-1").duplicate
            assert client.inspect_queue("orders").ready == 1
    finally:
        broker.stop()
