"""An order traced end to end through two services and the broker.

    pip install opentelemetry-sdk        # opentelemetry-api comes with it
    sluice serve --otlp-endpoint http://127.0.0.1:4318   # optional: the broker's spans too
    python traced_services.py

Three parts of one system run as threads here:

- **checkout** publishes ``order-N`` to the queue ``orders`` inside its span ``checkout``. The
  client puts that span's W3C ``traceparent`` into the message by itself, because
  ``opentelemetry-api`` is installed.
- **billing** (service 1) takes orders. It bills each one in a span that continues the
  publisher's trace (``msg.trace_context()``), then publishes a receipt to ``receipts`` from
  inside that span. Its first try at each order fails, and it says why:
  ``msg.nack(reason=...)``.
- **mailer** (service 2) takes receipts and sends each one in a span that continues billing's.

At the end the script prints each trace as a tree, using an in-memory span exporter: one
trace per order, crossing both services. It also prints what the broker remembers of
``order-1`` (``client.trace_message``, the same as ``sluice trace order-1``). With
``--otlp-endpoint`` the broker's own spans (publish, route, store, confirm, deliver, nack,
ack) land in the same traces in your collector. Set ``OTEL_EXPORTER_OTLP_ENDPOINT`` and
install ``opentelemetry-exporter-otlp-proto-http`` to send this script's spans there too.
"""

from __future__ import annotations

import argparse
import os
import threading
from collections import defaultdict

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import sluice


def setup_tracing() -> InMemorySpanExporter:
    """A tracer provider that keeps spans in memory, and also exports them over OTLP when
    ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set and the exporter package is installed."""
    provider = TracerProvider(resource=Resource.create({"service.name": "sluice-example"}))
    memory = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    if os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import (  # type: ignore[import-not-found]
                OTLPSpanExporter,
            )

            provider.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter()))
        except ImportError:
            print("(install opentelemetry-exporter-otlp-proto-http to export over OTLP)")
    trace.set_tracer_provider(provider)
    return memory


def billing(url: str, orders: int, done: threading.Event) -> None:
    """Service 1: bills orders, publishes receipts; the first try of each order fails."""
    tracer = trace.get_tracer("billing")
    tried: set[str] = set()
    billed = 0
    with sluice.Client(url, name="billing") as client:
        with client.consume("orders", prefetch=10, consumer_tag="billing-1") as consumer:
            while billed < orders:
                msg = consumer.receive(timeout=5)
                if msg is None:
                    raise SystemExit("billing: no order came")
                order = msg.message_id or "?"
                with tracer.start_as_current_span(
                    f"bill {order}", context=msg.trace_context(), kind=trace.SpanKind.CONSUMER
                ) as span:
                    if order not in tried:
                        tried.add(order)
                        span.set_attribute("billing.outcome", "payment service timed out")
                        msg.nack(requeue=True, reason="payment service timed out")
                        continue
                    # Published inside this span: the receipt carries its traceparent.
                    client.publish("", "receipts", f"receipt for {order}", message_id=f"receipt-{order}")
                    msg.ack()
                    billed += 1
    done.set()


def mailer(url: str, orders: int, done: threading.Event) -> None:
    """Service 2: sends receipts."""
    tracer = trace.get_tracer("mailer")
    with sluice.Client(url, name="mailer") as client:
        with client.consume("receipts", prefetch=10, consumer_tag="mailer-1") as consumer:
            for _ in range(orders):
                msg = consumer.receive(timeout=5)
                if msg is None:
                    raise SystemExit("mailer: no receipt came")
                with tracer.start_as_current_span(
                    f"mail {msg.message_id}", context=msg.trace_context(), kind=trace.SpanKind.CONSUMER
                ):
                    msg.ack()
    done.set()


def print_trees(spans: tuple[ReadableSpan, ...]) -> None:
    """Each trace as a tree of its spans, by parent."""
    by_trace: dict[int, list[ReadableSpan]] = defaultdict(list)
    for s in spans:
        by_trace[s.context.trace_id].append(s)
    for trace_id, members in by_trace.items():
        ids = {s.context.span_id for s in members}
        children: dict[int, list[ReadableSpan]] = defaultdict(list)
        roots = []
        for s in sorted(members, key=lambda s: s.start_time or 0):
            parent = s.parent.span_id if s.parent else None
            if parent is not None and parent in ids:
                children[parent].append(s)
            else:
                roots.append(s)
        print(f"trace {trace_id:032x}")

        def show(s: ReadableSpan, depth: int) -> None:
            print(f"  {'  ' * depth}{s.name}")
            for c in children[s.context.span_id]:
                show(c, depth + 1)

        for r in roots:
            show(r, 0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default=os.environ.get("SLUICE_URL", "sluice://guest:guest@127.0.0.1:5680"))
    parser.add_argument("--orders", type=int, default=3)
    args = parser.parse_args()
    memory = setup_tracing()
    tracer = trace.get_tracer("checkout")

    with sluice.Client(args.url, name="checkout") as client:
        for queue in ("orders", "receipts"):
            client.declare_queue(queue)
            client.purge_queue(queue)
        done = [threading.Event(), threading.Event()]
        workers = [
            threading.Thread(target=billing, args=(args.url, args.orders, done[0])),
            threading.Thread(target=mailer, args=(args.url, args.orders, done[1])),
        ]
        for w in workers:
            w.start()
        for i in range(1, args.orders + 1):
            with tracer.start_as_current_span("checkout", kind=trace.SpanKind.PRODUCER):
                client.publish("", "orders", f"order {i}", message_id=f"order-{i}")
        for w in workers:
            w.join()
        if not all(d.is_set() for d in done):
            raise SystemExit("a service stopped early")

        print_trees(memory.get_finished_spans())
        histories, _ = client.trace_message("order-1")
        for h in histories:
            print(f"\nthe broker's record of order-1 in {h.queue}: now {h.state}")
            for e in h.events:
                detail = e.reason or e.consumer_tag or ""
                print(f"  {e.kind:<14} {detail}")


if __name__ == "__main__":
    main()
