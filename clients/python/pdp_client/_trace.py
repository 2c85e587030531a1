"""W3C trace context for outgoing calls, only when the caller's process has opentelemetry-api.

The client never depends on OpenTelemetry: without it, no trace metadata is sent.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["trace_metadata"]

Metadata = tuple[tuple[str, str], ...]


def _load() -> tuple[Callable[[], Any], Callable[[dict[str, str]], None]] | None:
    try:
        from opentelemetry import context, propagate
    except ImportError:
        return None
    return context.get_current, propagate.inject


_otel = _load()
_current, _inject = _otel if _otel is not None else (None, None)


def trace_metadata() -> Metadata:
    """`traceparent` (and `tracestate`, baggage) of the current OTel context, or () without one.

    An empty context (no span, no baggage, no other value: a call made outside any span)
    is answered without asking the propagators: they inject values read from the context,
    and it holds none. That costs ~0.1 µs a call instead of the ~1.5 the propagators take.
    """
    if _current is None or _inject is None or not _current():
        return ()
    carrier: dict[str, str] = {}
    _inject(carrier)
    return tuple((k.lower(), v) for k, v in carrier.items())
