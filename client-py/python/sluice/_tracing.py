"""OpenTelemetry for sluice, when the ``opentelemetry-api`` package is installed.

A publish without ``trace_parent=`` carries the current span's W3C trace context (taken with
``opentelemetry.propagate.inject``, so the application's configured propagator decides), and
``Message.trace_context()`` gives a delivery's back as an OpenTelemetry ``Context``
(``opentelemetry.propagate.extract``). Without the package nothing is registered and a
publish pays one empty check.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any, Optional, Tuple

from . import _sluice


def _optional(module: str) -> Optional[ModuleType]:
    try:
        return importlib.import_module(module)
    except ImportError:  # the package is optional
        return None


_propagate = _optional("opentelemetry.propagate")


def current() -> Optional[Tuple[str, Optional[str]]]:
    """The current context's ``(traceparent, tracestate)`` headers, or None."""
    if _propagate is None:
        return None
    carrier: dict[str, str] = {}
    _propagate.inject(carrier)
    trace_parent = carrier.get("traceparent")
    if trace_parent is None:
        return None
    return trace_parent, carrier.get("tracestate")


def extract(trace_parent: Optional[str], trace_state: Optional[str]) -> Any:
    """An OpenTelemetry ``Context`` whose span is the one these headers name (a remote
    parent); an empty context without ``trace_parent``."""
    if _propagate is None:
        raise ImportError(
            "Message.trace_context() needs the opentelemetry-api package "
            "(pip install opentelemetry-api)"
        )
    carrier: dict[str, str] = {}
    if trace_parent is not None:
        carrier["traceparent"] = trace_parent
        if trace_state:
            carrier["tracestate"] = trace_state
    empty = importlib.import_module("opentelemetry.context").Context()
    return _propagate.extract(carrier, context=empty)


if _propagate is not None:
    _sluice._set_trace_injector(current)
