"""Tracing and "why is this message stuck": settle reasons in a message's history
(trace_message), and the W3C trace context a message carries from publisher to consumer,
by hand and through OpenTelemetry."""

from __future__ import annotations

import asyncio
import time
from typing import Callable

import pytest

import sluice

TRACE_PARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def wait_for_history(
    client: sluice.Client,
    message_id: str,
    done: Callable[[list[sluice.HistoryEvent]], bool],
    timeout: float = 10.0,
) -> sluice.MessageHistory:
    """The message's (one) history once `done` holds for its events; polls with a bound."""
    deadline = time.monotonic() + timeout
    while True:
        histories, truncated = client.trace_message(message_id)
        assert not truncated
        if histories and done(histories[0].events):
            assert len(histories) == 1
            return histories[0]
        if time.monotonic() > deadline:
            pytest.fail(f"history of {message_id!r} never got there: {histories!r}")
        time.sleep(0.05)


def kinds(events: list[sluice.HistoryEvent]) -> list[str]:
    return [e.kind for e in events]


def test_nack_and_reject_reasons_show_in_the_history(url: str, queue_name: str) -> None:
    with sluice.Client(url) as client:
        client.declare_queue(queue_name)
        client.publish("", queue_name, b"job", message_id="m-reasons")
        first = client.get(queue_name)
        assert first is not None
        first.nack(reason="db down", confirm=True)
        second = client.get(queue_name)
        assert second is not None and second.delivery_count == 2
        second.reject(reason="bad json: line 1", confirm=True)
        history = wait_for_history(client, "m-reasons", lambda ev: "rejected" in kinds(ev))
        assert history.queue == queue_name
        assert history.message_id == "m-reasons"
        assert history.state == "gone"
        assert kinds(history.events)[:5] == [
            "stored", "delivered", "nacked", "delivered", "rejected",
        ]
        stored, delivered, nacked, _, rejected = history.events[:5]
        assert stored.exchange == "" and stored.routing_key == queue_name
        assert delivered.consumer_tag == "" and delivered.delivery_count == 1
        assert nacked.reason == "db down" and nacked.delay_ms == 0
        assert rejected.reason == "bad json: line 1"
        # no dead-letter exchange: the rejected message is dropped
        assert history.events[-1].kind == "dead-lettered"
        assert history.events[-1].exchange is None
        assert history.events[-1].reason == "rejected"


def test_settle_reasons_are_checked_and_an_empty_one_is_none(url: str, queue_name: str) -> None:
    with sluice.Client(url) as client:
        client.declare_queue(queue_name)
        client.publish("", queue_name, b"job", message_id="m-empty-reason")
        msg = client.get(queue_name)
        assert msg is not None
        with pytest.raises(ValueError):
            msg.nack(reason="x" * 1025)
        assert not msg.settled
        msg.nack(requeue=False, reason="", confirm=True)
        history = wait_for_history(client, "m-empty-reason", lambda ev: "rejected" in kinds(ev))
        assert [e.reason for e in history.events if e.kind == "rejected"] == [None]
        # unknown ids have no history, and that is not an error
        assert client.trace_message("no-such-message") == ([], False)


async def test_async_reasons_and_trace_message(url: str, queue_name: str) -> None:
    async with sluice.AsyncClient(url) as client:
        await client.declare_queue(queue_name)
        await client.publish("", queue_name, b"job", message_id="m-async")
        msg = await client.get(queue_name)
        assert msg is not None
        await msg.nack(delay=0.01, reason="retry later", confirm=True)
        again = None
        deadline = time.monotonic() + 10
        while again is None and time.monotonic() < deadline:  # ready after its 10 ms delay
            again = await client.get(queue_name)
            if again is None:
                await asyncio.sleep(0.02)
        assert again is not None
        await again.reject(reason="gave up", confirm=True)
        histories, truncated = await client.trace_message("m-async")
        assert not truncated and len(histories) == 1
        events = histories[0].events
        nacked = [e for e in events if e.kind == "nacked"]
        assert [(e.reason, e.delay_ms) for e in nacked] == [("retry later", 10)]
        assert [e.reason for e in events if e.kind == "rejected"] == ["gave up"]


def test_a_trace_parent_comes_back_on_the_delivery(url: str, queue_name: str) -> None:
    with sluice.Client(url) as client:
        client.declare_queue(queue_name)
        client.publish(
            "", queue_name, b"traced", message_id="m-traced",
            trace_parent=TRACE_PARENT, trace_state="vendor=1",
        )
        client.publish("", queue_name, b"plain")
        msg = client.get(queue_name)
        assert msg is not None
        assert msg.trace_parent == TRACE_PARENT
        assert msg.trace_state == "vendor=1"
        msg.ack()
        plain = client.get(queue_name)
        assert plain is not None and plain.trace_parent is None
        plain.ack()
        history = wait_for_history(client, "m-traced", lambda ev: "acked" in kinds(ev))
        assert history.trace_parent == TRACE_PARENT
        # a malformed header is the caller's error, and nothing is sent
        with pytest.raises(ValueError):
            client.publish("", queue_name, b"x", trace_parent="00-nope")
        with pytest.raises(ValueError):
            sluice.OutgoingMessage("", queue_name, b"x", trace_parent="00-" + "0" * 32 + "-" + "1" * 16 + "-01")


def test_opentelemetry_spans_travel_with_the_message(url: str, queue_name: str) -> None:
    pytest.importorskip("opentelemetry.sdk")
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider

    # A provider of our own, not the global one: other tests see no tracer.
    tracer = TracerProvider().get_tracer("test")
    with sluice.Client(url) as client:
        client.declare_queue(queue_name)
        with tracer.start_as_current_span("publish") as span:
            client.publish("", queue_name, b"in a span")
            client.publish_batch([sluice.OutgoingMessage("", queue_name, b"batched")])
        published = span.get_span_context()
        client.publish("", queue_name, b"outside any span")
        for _ in range(2):
            msg = client.get(queue_name)
            assert msg is not None and msg.trace_parent is not None
            _, trace_id, span_id, flags = msg.trace_parent.split("-")
            assert int(trace_id, 16) == published.trace_id
            assert int(span_id, 16) == published.span_id
            assert int(flags, 16) == published.trace_flags  # sampled (and maybe "random")
            parent = msg.trace_context()
            remote = trace.get_current_span(parent).get_span_context()
            assert remote.is_remote and remote.trace_id == published.trace_id
            with tracer.start_as_current_span("process", context=parent) as child:
                ctx = child.get_span_context()
                assert ctx.trace_id == published.trace_id
                assert ctx.span_id != published.span_id
                assert child.parent is not None and child.parent.span_id == published.span_id
            msg.ack()
        untraced = client.get(queue_name)
        assert untraced is not None and untraced.trace_parent is None
        assert not trace.get_current_span(untraced.trace_context()).get_span_context().is_valid
        untraced.ack()


async def test_async_publish_in_a_span_carries_it(url: str, queue_name: str) -> None:
    pytest.importorskip("opentelemetry.sdk")
    from opentelemetry.sdk.trace import TracerProvider

    tracer = TracerProvider().get_tracer("test")
    async with sluice.AsyncClient(url) as client:
        await client.declare_queue(queue_name)
        with tracer.start_as_current_span("publish") as span:
            await client.publish("", queue_name, b"async")
        msg = await client.get(queue_name)
        assert msg is not None and msg.trace_parent is not None
        assert msg.trace_parent.split("-")[1] == format(span.get_span_context().trace_id, "032x")
        await msg.ack()
