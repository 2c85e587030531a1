"""W3C trace context for outgoing calls, only when the caller's process has opentelemetry-api.

The client never depends on OpenTelemetry: without it, no trace metadata is sent.
"""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["trace_metadata"]

Metadata = tuple[tuple[str, str], ...]


def _no_metadata() -> Metadata:
    return ()


def _load() -> Callable[[], Metadata]:
    try:
        from opentelemetry import context, propagate
    except ImportError:
        return _no_metadata
    current, inject = context.get_current, propagate.inject

    def trace_metadata() -> Metadata:
        """`traceparent` (and `tracestate`, baggage) of the current OTel context, or ().

        An empty context (no span, no baggage, no other value: a call made outside any
        span) is answered without asking the propagators: they inject values read from the
        context, and it holds none. That costs ~0.1 µs a call instead of their ~1.5.
        """
        if not current():
            return ()
        carrier: dict[str, str] = {}
        inject(carrier)
        return tuple((k.lower(), v) for k, v in carrier.items())

    return trace_metadata


trace_metadata = _load()
