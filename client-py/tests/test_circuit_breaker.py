"""Consumer circuit breaking (docs/circuit-breaking.md), blocking and asyncio: a consumer that
nacks everything is cut off (its ``circuit`` says open), the others get the messages, and
after the cool-down it is half-open, then closed again once it acks its trials."""

from __future__ import annotations

import time

import pytest

import sluice

BREAKER = {"failure_threshold": 2, "window": 30.0, "cool_down": 0.3, "success_threshold": 1}


def wait_for(condition, what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out: {what}"
        time.sleep(0.01)


def test_a_failing_consumer_is_cut_off_and_recovers(url: str, queue_name: str) -> None:
    breaker = {"failure_threshold": 1, "window": 30.0, "cool_down": 0.3, "success_threshold": 1}
    with sluice.Client(url) as client:
        client.declare_queue(queue_name)
        flaky = client.consume(queue_name, prefetch=1, circuit_breaker=breaker)
        assert flaky.circuit.state == "closed"
        client.publish("", queue_name, b"job")
        m = flaky.receive(timeout=10)
        assert m is not None
        m.nack(requeue=True)  # one failure opens it
        # Waiting for a message takes the notices in: open, then half-open with a trial.
        states = []
        trial = None
        deadline = time.monotonic() + 20
        while trial is None:
            assert time.monotonic() < deadline, f"no trial delivery; states {states}"
            trial = flaky.receive(timeout=0.05)
            if not states or states[-1] != flaky.circuit.state:
                states.append(flaky.circuit.state)
        assert states[0] == "open", states
        assert flaky.circuit.state == "half-open"
        assert trial.body == b"job" and trial.redelivered
        listed = [c for c in client.list_consumers() if c.queue == queue_name]
        assert listed[0].circuit is not None and listed[0].circuit.state == "half-open"
        trial.ack()
        wait_for(
            lambda: flaky.receive(timeout=0.05) is None and flaky.circuit.state == "closed",
            "the closed notice",
        )
        assert "acked" in flaky.circuit.reason
        flaky.cancel()


def test_bad_settings_are_refused(url: str, queue_name: str) -> None:
    with sluice.Client(url) as client:
        client.declare_queue(queue_name)
        with pytest.raises(sluice.InvalidArgument, match="failure_threshold"):
            client.consume(queue_name, circuit_breaker={**BREAKER, "failure_threshold": 0})
        with pytest.raises(ValueError, match="cool_down"):
            client.consume(queue_name, circuit_breaker={"failure_threshold": 1, "window": 1.0})


async def test_async_consumer_sees_the_open_notice(url: str, queue_name: str) -> None:
    async with sluice.AsyncClient(url) as client:
        await client.declare_queue(queue_name)
        # A long cool-down: it stays open for the whole test.
        consumer = client.consume(
            queue_name, prefetch=1, circuit_breaker={**BREAKER, "cool_down": 60.0}
        )
        assert consumer.circuit.state == "closed"
        for i in range(2):
            await client.publish("", queue_name, f"m{i}".encode())
        for _ in range(2):
            m = await consumer.receive(timeout=10)
            assert m is not None
            await m.nack(requeue=True)
        deadline = time.monotonic() + 20
        while consumer.circuit.state == "closed":
            assert time.monotonic() < deadline, "no open notice"
            m = await consumer.receive(timeout=0.05)
            assert m is None, "no delivery while open"
        circuit = consumer.circuit
        assert circuit.state == "open"
        assert circuit.failures == 2
        assert circuit.until is not None and circuit.until > time.time() - 5
        assert "nacks" in circuit.reason
        await consumer.cancel()
