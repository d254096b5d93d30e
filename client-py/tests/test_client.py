"""The blocking Client: queues, exchanges, publishing, consuming, settling, closing."""

from __future__ import annotations

import threading
import time

import pytest

import sluice


@pytest.fixture
def client(url: str):
    with sluice.Client(url) as c:
        yield c


def drain(client: sluice.Client, queue: str, count: int, timeout: float = 10.0) -> list[sluice.Message]:
    """Takes `count` messages from `queue` with a consumer (acked), failing after `timeout`."""
    received = []
    with client.consume(queue, prefetch=count) as consumer:
        deadline = time.monotonic() + timeout
        while len(received) < count:
            msg = consumer.receive(timeout=max(0.0, deadline - time.monotonic()))
            assert msg is not None, f"got {len(received)} of {count} messages"
            msg.ack()
            received.append(msg)
    return received


def test_url_defaults_and_repr(url: str) -> None:
    with sluice.Client(url) as client:
        assert ":guest@" not in repr(client) and ":***@" in repr(client)  # no password shown
        assert repr(client).startswith("<Client url=sluice://") and "closed=False" in repr(client)
        assert not client.is_closed
    assert client.is_closed


def test_publish_and_consume_round_trip(client: sluice.Client, queue_name: str) -> None:
    declared = client.declare_queue(queue_name)
    assert (declared.name, declared.ready, declared.consumers) == (queue_name, 0, 0)
    client.publish(
        "",
        queue_name,
        b"hello",
        headers={"n": 7, "flag": True, "s": "x", "raw": b"\x00\x01"},
        content_type="text/plain",
        content_encoding="identity",
        message_id="m-1",
        correlation_id="c-1",
        reply_to="replies",
        expiration=60.0,
        timestamp=1_700_000_000.5,
    )
    client.publish("", queue_name, "text bodies are UTF-8: é", persistent=False)
    client.publish("", queue_name, bytearray(b"ba"))
    client.publish("", queue_name, memoryview(b"mv"))
    assert client.inspect_queue(queue_name).ready == 4

    consumer = client.consume(queue_name, prefetch=100)
    assert consumer.queue == queue_name and consumer.tag
    first = next(consumer)
    assert isinstance(first, sluice.Message) and isinstance(first, sluice.BaseMessage)
    assert first.body == b"hello"
    assert first.headers == {"n": 7, "flag": True, "s": "x", "raw": b"\x00\x01"}
    assert type(first.headers["flag"]) is bool
    assert (first.exchange, first.routing_key) == ("", queue_name)
    assert (first.redelivered, first.delivery_count) == (False, 1)
    assert first.content_type == "text/plain" and first.content_encoding == "identity"
    assert (first.message_id, first.correlation_id, first.reply_to) == ("m-1", "c-1", "replies")
    assert first.expiration == 60.0 and first.timestamp == 1_700_000_000.5
    assert first.persistent and not first.settled
    first.ack()
    assert first.settled
    second = next(consumer)
    assert second.body == "text bodies are UTF-8: é".encode() and not second.persistent
    assert second.headers == {} and second.content_type is None
    second.ack()
    assert [m.body for m in (next(consumer), next(consumer))] == [b"ba", b"mv"]
    consumer.cancel()
    assert consumer.is_closed
    assert list(consumer) == []


def test_for_loop_consume(client: sluice.Client, queue_name: str) -> None:
    client.declare_queue(queue_name)
    client.publish_batch(("", queue_name, f"job-{i}") for i in range(20))
    bodies = []
    for msg in client.consume(queue_name, prefetch=100):
        bodies.append(msg.body)
        msg.ack()
        if len(bodies) == 20:
            break
    assert bodies == [f"job-{i}".encode() for i in range(20)]


def test_publish_batch_pipelines_and_reports_each_outcome(
    client: sluice.Client, queue_name: str
) -> None:
    client.declare_queue(queue_name)
    assert client.publish_batch([]) is None
    client.publish_batch(
        sluice.OutgoingMessage("", queue_name, f"{i}", headers={"i": i}) for i in range(1000)
    )
    assert client.inspect_queue(queue_name).ready == 1000
    outcomes = client.publish_batch(
        [
            ("", queue_name, b"ok"),
            sluice.OutgoingMessage("", "no-such-queue-anywhere", b"x", mandatory=True),
            ("", queue_name, b"ok too"),
        ],
        return_exceptions=True,
    )
    for ok in (outcomes[0], outcomes[2]):
        assert isinstance(ok, sluice.PublishResult) and not ok.duplicate
    assert isinstance(outcomes[1], sluice.Unroutable) and outcomes[1].code == 302
    with pytest.raises(sluice.Unroutable):
        client.publish_batch([sluice.OutgoingMessage("", "no-such-queue-anywhere", b"x", mandatory=True)])
    with pytest.raises(TypeError):
        client.publish_batch([42])  # type: ignore[list-item]


def test_get(client: sluice.Client, queue_name: str) -> None:
    client.declare_queue(queue_name)
    assert client.get(queue_name) is None
    client.publish("", queue_name, b"one")
    msg = client.get(queue_name)
    assert msg is not None and msg.body == b"one"
    msg.ack()
    assert client.get(queue_name) is None


def test_messages_carry_the_time_their_queue_stored_them(
    client: sluice.Client, queue_name: str
) -> None:
    client.declare_queue(queue_name)
    before_ms = time.time_ns() // 1_000_000
    client.publish("", queue_name, b"stamped")  # returns once confirmed
    after_ms = time.time_ns() // 1_000_000
    info = client.inspect_queue(queue_name)
    assert info.ready == 1 and info.oldest_ready_age_ms >= 0
    msg = client.get(queue_name)
    assert msg is not None
    assert before_ms <= msg.enqueued_at_ms <= after_ms
    msg.nack(requeue=True)
    again = client.get(queue_name)
    assert again is not None and again.enqueued_at_ms == msg.enqueued_at_ms
    again.ack()
    assert client.inspect_queue(queue_name).oldest_ready_age_ms == 0


def test_exchanges_and_bindings(client: sluice.Client, queue_name: str) -> None:
    ex = f"{queue_name}-topic"
    client.declare_exchange(ex, "topic")
    client.declare_queue(queue_name)
    client.bind(queue_name, ex, "orders.*")
    client.publish(ex, "orders.created", b"1")
    client.publish(ex, "users.created", b"2")  # matches nothing: dropped (not mandatory)
    with pytest.raises(sluice.Unroutable):
        client.publish(ex, "users.created", b"3", mandatory=True)
    assert [m.body for m in drain(client, queue_name, 1)] == [b"1"]
    client.unbind(queue_name, ex, "orders.*")
    with pytest.raises(sluice.Unroutable):
        client.publish(ex, "orders.created", b"4", mandatory=True)

    headers_ex = f"{queue_name}-headers"
    client.declare_exchange(headers_ex, "headers", durable=False)
    client.bind(queue_name, headers_ex, arguments={"x-match": "all", "kind": "invoice"})
    client.publish(headers_ex, "", b"invoice", headers={"kind": "invoice"})
    with pytest.raises(sluice.Unroutable):
        client.publish(headers_ex, "", b"receipt", headers={"kind": "receipt"}, mandatory=True)
    assert [m.body for m in drain(client, queue_name, 1)] == [b"invoice"]

    fanout = f"{queue_name}-fanout"
    client.declare_exchange(fanout, "fanout")
    other = client.declare_queue("", durable=False, exclusive=True, auto_delete=True).name
    assert other  # the broker named it
    client.bind(queue_name, fanout)
    client.bind(other, fanout)
    client.publish(fanout, "ignored", b"everyone")
    assert drain(client, queue_name, 1)[0].body == b"everyone"
    assert drain(client, other, 1)[0].body == b"everyone"

    client.delete_exchange(fanout)
    client.delete_exchange(fanout)  # deleting a missing exchange succeeds
    with pytest.raises(sluice.NotFound):
        client.declare_exchange(fanout, "fanout", passive=True)
    with pytest.raises(ValueError):
        client.declare_exchange("x", "round-robin")  # type: ignore[arg-type]


def test_queue_management(client: sluice.Client, queue_name: str) -> None:
    client.declare_queue(
        queue_name,
        max_length=100,
        overflow="reject-publish",
        message_ttl=60,
        ack_timeout=30,
        delivery_limit=5,
    )
    info = client.inspect_queue(queue_name)
    assert info.durable and not info.exclusive and not info.auto_delete
    assert info.arguments == {
        "max_length": 100,
        "overflow": "reject-publish",
        "message_ttl": 60.0,
        "ack_timeout": 30.0,
        "delivery_limit": 5,
    }
    client.publish_batch(("", queue_name, b"x") for _ in range(3))
    assert client.purge_queue(queue_name) == 3
    client.publish("", queue_name, b"y")
    with pytest.raises(sluice.PreconditionFailed):
        client.delete_queue(queue_name, if_empty=True)
    assert client.delete_queue(queue_name) == 1
    assert client.delete_queue(queue_name) == 0
    with pytest.raises(sluice.NotFound):
        client.inspect_queue(queue_name)


def test_nack_requeues_and_counts_deliveries(client: sluice.Client, queue_name: str) -> None:
    client.declare_queue(queue_name)
    client.publish("", queue_name, b"retry me")
    with client.consume(queue_name, prefetch=1) as consumer:
        first = consumer.receive(timeout=10)
        assert first is not None and first.delivery_count == 1 and not first.redelivered
        first.nack()  # requeue=True by default
        second = consumer.receive(timeout=10)
        assert second is not None and second.body == b"retry me"
        assert second.redelivered and second.delivery_count == 2
        assert second.message_seq == first.message_seq
        second.nack(requeue=False)  # no dead-letter exchange: dropped
    assert client.inspect_queue(queue_name).ready == 0
    with pytest.raises(sluice.AlreadySettled):
        second.ack()


def test_reject_dead_letters(client: sluice.Client, queue_name: str) -> None:
    dlx, dead = f"{queue_name}-dlx", f"{queue_name}-dead"
    client.declare_exchange(dlx, "fanout")
    client.declare_queue(dead)
    client.bind(dead, dlx)
    client.declare_queue(queue_name, dead_letter_exchange=dlx)
    client.publish("", queue_name, b"poison")
    msg = client.get(queue_name)
    assert msg is not None
    msg.reject()
    assert drain(client, dead, 1)[0].body == b"poison"


def test_process_acks_rejects_and_requeues(client: sluice.Client, queue_name: str) -> None:
    client.declare_queue(queue_name)
    client.publish_batch(("", queue_name, f"{i}") for i in range(3))
    with client.consume(queue_name, prefetch=10) as consumer:
        ok = next(consumer)
        with ok.process() as same:
            assert same is ok
        assert ok.settled

        failing = next(consumer)
        with pytest.raises(RuntimeError):
            with failing.process(requeue=True):
                raise RuntimeError("transient")
        assert failing.settled

        bad = next(consumer)
        with pytest.raises(ValueError):
            with bad.process():
                raise ValueError("bad message")  # rejected: dropped

        again = consumer.receive(timeout=10)  # the requeued one
        assert again is not None and again.body == failing.body and again.delivery_count == 2
        with pytest.raises(KeyError):
            with again.process(requeue=True, reject_on_redelivered=True):
                raise KeyError("still failing")  # redelivered: rejected this time

        with again.process():
            pass  # already settled inside: left alone, no AlreadySettled
    assert client.inspect_queue(queue_name).ready == 0

    client.publish("", queue_name, b"interrupted")
    msg = client.get(queue_name)
    assert msg is not None
    with pytest.raises(KeyboardInterrupt):
        with msg.process():  # not requeue=True, but an interruption is not a failure
            raise KeyboardInterrupt
    back = client.get(queue_name)
    assert back is not None and back.body == b"interrupted" and back.redelivered
    back.ack()


def test_blocking_calls_release_the_gil(client: sluice.Client, queue_name: str) -> None:
    client.declare_queue(queue_name)
    ticks = 0
    stop = threading.Event()

    def spin() -> None:
        nonlocal ticks
        while not stop.is_set():
            ticks += 1
            time.sleep(0.001)

    thread = threading.Thread(target=spin)
    thread.start()
    try:
        with client.consume(queue_name) as consumer:
            started = time.monotonic()
            assert consumer.receive(timeout=0.5) is None  # waits on an empty queue
            assert time.monotonic() - started >= 0.45
    finally:
        stop.set()
        thread.join()
    assert ticks > 50, "the other thread did not run while the client waited"


def test_client_shared_between_threads(client: sluice.Client, queue_name: str) -> None:
    client.declare_queue(queue_name)

    def publish(k: int) -> None:
        for i in range(50):
            client.publish("", queue_name, f"{k}-{i}")

    threads = [threading.Thread(target=publish, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert client.inspect_queue(queue_name).ready == 200


def test_closing_semantics(url: str, queue_name: str) -> None:
    client = sluice.Client(url)
    client.declare_queue(queue_name)
    client.publish("", queue_name, b"unsettled")
    consumer = client.consume(queue_name, prefetch=10)
    held = next(consumer)
    client.close()
    client.close()  # idempotent
    assert client.is_closed
    assert list(consumer) == []  # the consumer ends quietly with its client
    consumer.cancel()  # and cancelling it afterwards is fine
    with pytest.raises(sluice.ConnectionClosed):
        client.publish("", queue_name, b"late")
    with pytest.raises(sluice.ConnectionClosed):
        client.connect()
    with pytest.raises(sluice.ConnectionClosed):
        held.ack()

    # The unsettled delivery went back to its queue.
    with sluice.Client(url) as other:
        back = other.get(queue_name)
        assert back is not None and back.body == b"unsettled" and back.redelivered
        back.ack()

    # A context manager closes on the way out, even when the block raised.
    with pytest.raises(ZeroDivisionError):
        with sluice.Client(url) as c:
            1 / 0
    assert c.is_closed


def test_cancel_from_another_thread_stops_a_waiting_consumer(
    client: sluice.Client, queue_name: str
) -> None:
    client.declare_queue(queue_name)
    consumer = client.consume(queue_name)
    results: list[object] = []
    thread = threading.Thread(target=lambda: results.extend(consumer))
    thread.start()
    time.sleep(0.2)
    consumer.cancel()
    thread.join(timeout=5)
    assert not thread.is_alive() and results == []
