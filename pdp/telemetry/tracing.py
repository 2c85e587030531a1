"""One SERVER span per RPC, continuing the W3C trace context found in gRPC metadata.

With tracing off, :data:`NOOP_SPAN` is both the context manager and the handle: no allocation.
With tracing on, the span is started and ended directly (not made the current span: pdp starts
no child spans). A call that continues a caller's trace is recorded as the caller sampled it
(the provider's parent-based sampler); a call that starts a trace is traced with probability
``root_ratio``, decided here before the SDK is asked, so that an untraced call costs little
more than the read of its metadata. A span that is not recorded gets :data:`NOOP_SPAN` and
sets no attributes.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from contextlib import AbstractContextManager
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


class _RpcSpan(SpanHandle, AbstractContextManager[SpanHandle]):
    """A recording span, its own handle and context manager: ends the span on exit, marking
    it failed when an exception leaves the block and :meth:`error` was not called."""

    __slots__ = ("_failed", "_span")

    def __init__(self, span: trace.Span) -> None:
        self._span = span
        self._failed = False

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is not None and not self._failed:
            self.error(exc)
        self._span.end()

    def set(self, key: str, value: AttributeValue) -> None:
        self._span.set_attribute(key, value)

    def error(self, exc: BaseException) -> None:
        self._failed = True
        self._span.record_exception(exc)
        self._span.set_status(Status(StatusCode.ERROR, type(exc).__name__))


def split_method(method: str) -> tuple[str, str]:
    """``/pkg.Service/Method`` as (``pkg.Service``, ``Method``)."""
    service, _, name = method.lstrip("/").rpartition("/")
    return service, name


def start_rpc_span(
    tracer: trace.Tracer, method: str, metadata: Metadata, root_ratio: float = 1.0
) -> AbstractContextManager[SpanHandle]:
    """A SERVER span for ``method`` whose parent is the caller's ``traceparent``, if valid;
    without one, a new trace with probability ``root_ratio``. :data:`NOOP_SPAN` when the
    call is not traced (nothing to set on a span not recorded)."""
    carrier: dict[str, str] = {}
    for key, value in metadata or ():
        if key in _TRACE_KEYS and isinstance(value, str):
            carrier[key] = value
    parent = _PROPAGATOR.extract(carrier) if carrier else None
    if (root_ratio < 1.0
            and (parent is None or not trace.get_current_span(parent).get_span_context().is_valid)
            and random.random() >= root_ratio):  # noqa: S311 - sampling, not a secret
        return NOOP_SPAN
    service, name = split_method(method)
    span = tracer.start_span(
        method.lstrip("/"), context=parent, kind=SpanKind.SERVER,
        attributes={"rpc.system": "grpc", "rpc.service": service, "rpc.method": name},
        record_exception=False, set_status_on_exception=False,
    )
    if not span.is_recording():
        span.end()
        return NOOP_SPAN
    return _RpcSpan(span)
