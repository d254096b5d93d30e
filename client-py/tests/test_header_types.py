"""Header values of every AMQP field type, through the real broker and back, and compared
by headers exchanges as RabbitMQ compares them."""

from __future__ import annotations

import math
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest

import sluice

UTC = timezone.utc


@pytest.fixture
def client(url: str):
    with sluice.Client(url) as c:
        yield c


def round_trip(client: sluice.Client, queue: str, headers: dict[str, Any]) -> dict[str, Any]:
    client.declare_queue(queue)
    client.publish("", queue, b"m", headers=headers)
    message = client.get(queue)
    assert message is not None
    message.ack()
    return message.headers


@pytest.mark.parametrize(
    ("sent", "received"),
    [
        (None, None),
        (True, True),
        (False, False),
        (0, 0),
        (-(2**63), -(2**63)),
        (1.0, 1.0),
        (2.5e-300, 2.5e-300),
        ("text", "text"),
        (b"\x00\xff", b"\x00\xff"),
        ([1, "a", None, 2.5], [1, "a", None, 2.5]),
        ((1, (2, 3)), [1, [2, 3]]),
        ([], []),
        ({"k": {"l": [True]}}, {"k": {"l": [True]}}),
        ({}, {}),
        (datetime(2023, 11, 14, 22, 13, 20, tzinfo=UTC), datetime(2023, 11, 14, 22, 13, 20, tzinfo=UTC)),
        (Decimal("12.30"), Decimal("12.30")),
        (Decimal("0.005"), Decimal("0.005")),
        (Decimal("7"), Decimal("7")),
    ],
    ids=lambda v: type(v).__name__,
)
def test_each_type_round_trips_through_the_broker(
    client: sluice.Client, queue_name: str, sent: Any, received: Any
) -> None:
    got = round_trip(client, queue_name, {"v": sent})["v"]
    assert got == received
    assert type(got) is type(received)


def test_bool_stays_bool_and_int_stays_int_and_floats_keep_their_sign(
    client: sluice.Client, queue_name: str
) -> None:
    got = round_trip(client, queue_name, {"t": True, "one": 1, "f": 1.0, "nz": -0.0, "a": [True, 1]})
    assert type(got["t"]) is bool and type(got["one"]) is int and type(got["f"]) is float
    assert math.copysign(1.0, got["nz"]) == -1.0
    assert [type(x) for x in got["a"]] == [bool, int]


def test_decimals_keep_their_scale(client: sluice.Client, queue_name: str) -> None:
    got = round_trip(client, queue_name, {"d": Decimal("1.50"), "e": Decimal("1E+2")})
    assert str(got["d"]) == "1.50"
    assert got["e"] == Decimal(100) and str(got["e"]) == "100"


def test_datetimes_are_whole_seconds_and_naive_ones_are_utc(
    client: sluice.Client, queue_name: str
) -> None:
    aware = datetime(2024, 2, 29, 12, 0, 1, 999_999, tzinfo=timezone(timedelta(hours=2)))
    naive = datetime(2024, 2, 29, 12, 0, 1)
    got = round_trip(client, queue_name, {"aware": aware, "naive": naive})
    assert got["aware"] == datetime(2024, 2, 29, 10, 0, 1, tzinfo=UTC)
    assert got["naive"] == datetime(2024, 2, 29, 12, 0, 1, tzinfo=UTC)


def test_nested_values_of_every_type_round_trip(client: sluice.Client, queue_name: str) -> None:
    headers = {
        "order": {
            "items": [{"sku": "a-1", "qty": 2, "price": Decimal("9.99")}],
            "placed": datetime(2024, 1, 1, tzinfo=UTC),
            "gift": None,
            "weights": [0.5, 1.25],
        }
    }
    assert round_trip(client, queue_name, headers) == headers


def nested(depth: int) -> list[Any]:
    value: list[Any] = []
    for _ in range(depth - 1):
        value = [value]
    return value


@pytest.mark.parametrize(
    ("value", "error"),
    [
        (float("nan"), ValueError),
        (float("inf"), ValueError),
        (Decimal("-1.5"), ValueError),
        (Decimal("NaN"), ValueError),
        (Decimal("4294967296"), ValueError),
        (datetime(1969, 12, 31, tzinfo=UTC), ValueError),
        (2**63, ValueError),
        (nested(17), ValueError),
        ({1: "not a str key"}, TypeError),
        ({"a", "set"}, TypeError),
    ],
    ids=lambda v: repr(v)[:30],
)
def test_values_without_a_header_type_are_refused_before_sending(
    client: sluice.Client, queue_name: str, value: Any, error: type
) -> None:
    client.declare_queue(queue_name)
    with pytest.raises(error):
        client.publish("", queue_name, b"m", headers={"v": value})
    # Nothing was sent, and the connection goes on.
    assert client.get(queue_name) is None
    assert round_trip(client, queue_name, {"v": nested(16)}) == {"v": nested(16)}


def test_a_list_that_contains_itself_is_refused(client: sluice.Client, queue_name: str) -> None:
    loop: list[Any] = []
    loop.append(loop)
    client.declare_queue(queue_name)
    with pytest.raises(ValueError, match="at most 16 deep"):
        client.publish("", queue_name, b"m", headers={"v": loop})


def test_headers_exchanges_compare_as_rabbitmq(client: sluice.Client, queue_name: str) -> None:
    exchange = f"{queue_name}-x"
    client.declare_exchange(exchange, "headers", durable=False)
    client.declare_queue(queue_name)
    client.bind(queue_name, exchange, arguments={"n": 1.0, "present": None})
    # An integer equals the same float; a void argument only asks for the key.
    client.publish(exchange, "", b"int", headers={"n": 1, "present": "anything"}, mandatory=True)
    client.publish(exchange, "", b"float", headers={"n": 1.0, "present": [1]}, mandatory=True)
    # A string never equals a number.
    with pytest.raises(sluice.Unroutable):
        client.publish(exchange, "", b"str", headers={"n": "1", "present": 0}, mandatory=True)
    with pytest.raises(sluice.Unroutable):
        client.publish(exchange, "", b"absent", headers={"n": 1}, mandatory=True)
    bodies = []
    while (message := client.get(queue_name)) is not None:
        message.ack()
        bodies.append(message.body)
    assert bodies == [b"int", b"float"]


async def test_the_async_client_converts_the_same_way(url: str, queue_name: str) -> None:
    headers = {"f": 0.25, "v": None, "a": (1, [2]), "t": {"k": Decimal("3.0")}}
    async with sluice.AsyncClient(url) as client:
        await client.declare_queue(queue_name)
        await client.publish("", queue_name, b"m", headers=headers)
        message = await client.get(queue_name)
        assert message is not None
        await message.ack()
    assert message.headers == {"f": 0.25, "v": None, "a": [1, [2]], "t": {"k": Decimal("3.0")}}
