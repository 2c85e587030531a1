"""W3C trace context for outgoing calls, only when the caller's process has opentelemetry-api.

The client never depends on OpenTelemetry: without it, no trace metadata is sent.
"""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["trace_metadata"]


def _load() -> Callable[[dict[str, str]], None] | None:
    try:
        from opentelemetry import propagate
    except ImportError:
        return None
    return propagate.inject


_inject = _load()


def trace_metadata() -> list[tuple[str, str]]:
    """`traceparent` (and `tracestate`, baggage) of the current OTel context, or [] without one."""
    if _inject is None:
        return []
    carrier: dict[str, str] = {}
    _inject(carrier)
    return [(k.lower(), v) for k, v in carrier.items()]
