"""One SERVER span per RPC, continuing the W3C trace context found in gRPC metadata.

With tracing off, :data:`NOOP_SPAN` is both the context manager and the handle: no allocation.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from types import TracebackType
from typing import Any

from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

__all__ = ["NOOP_SPAN", "Metadata", "SpanHandle", "split_method", "start_rpc_span"]

Metadata = Sequence[tuple[str, Any]] | None  # gRPC invocation metadata: (key, value) pairs
AttributeValue = str | bool | int | float
_PROPAGATOR = TraceContextTextMapPropagator()
_TRACE_KEYS = frozenset({"traceparent", "tracestate"})


class SpanHandle:
    """What the server may do with the span of a call: set attributes, record an error."""

    __slots__ = ()

    def set(self, key: str, value: AttributeValue) -> None:
        """Set attribute ``key`` (e.g. ``pdp.decision``) on the span."""

    def error(self, exc: BaseException) -> None:
        """Mark the span failed with ``exc``."""


class _NoopSpan(SpanHandle, AbstractContextManager[SpanHandle]):
    """The shared handle (and its own context manager) used when tracing is off."""

    __slots__ = ()

    def __enter__(self) -> SpanHandle:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None


NOOP_SPAN = _NoopSpan()


class _RecordingSpan(SpanHandle):
    __slots__ = ("_span",)

    def __init__(self, span: trace.Span) -> None:
        self._span = span

    def set(self, key: str, value: AttributeValue) -> None:
        self._span.set_attribute(key, value)

    def error(self, exc: BaseException) -> None:
        self._span.record_exception(exc)
        self._span.set_status(Status(StatusCode.ERROR, type(exc).__name__))


def split_method(method: str) -> tuple[str, str]:
    """``/pkg.Service/Method`` as (``pkg.Service``, ``Method``)."""
    service, _, name = method.lstrip("/").rpartition("/")
    return service, name


@contextmanager
def start_rpc_span(tracer: trace.Tracer, method: str, metadata: Metadata) -> Iterator[SpanHandle]:
    """A SERVER span for ``method`` whose parent is the caller's ``traceparent``, if valid."""
    carrier: dict[str, str] = {}
    for key, value in metadata or ():
        if key in _TRACE_KEYS and isinstance(value, str):
            carrier[key] = value
    parent = _PROPAGATOR.extract(carrier) if carrier else None
    service, name = split_method(method)
    attributes = {"rpc.system": "grpc", "rpc.service": service, "rpc.method": name}
    with tracer.start_as_current_span(
        method.lstrip("/"), context=parent, kind=SpanKind.SERVER, attributes=attributes
    ) as span:
        yield _RecordingSpan(span)
