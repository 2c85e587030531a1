"""Service tokens: a cached, self-renewing JWT source and a client interceptor that sends it.

So service A's verified identity reaches service B's PEP as `authorization: Bearer <jwt>`.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, Protocol

import grpc

from ._model import ServiceToken

__all__ = ["ServiceTokenInterceptor", "TokenIssuer", "TokenSource"]


class TokenIssuer(Protocol):
    """Anything with PDPClient.issue_service_token's signature."""

    def issue_service_token(
        self, audience: str | None = None, *, ttl_seconds: int = 0, timeout: float | None = None
    ) -> ServiceToken: ...


class TokenSource:
    """Fetches a token for `audience` from the PDP, caches it, renews at `renew_at` of its life.

    Thread-safe: concurrent callers share one fetch. If a renewal fails while the cached token
    is still valid, the cached one is returned; once it has expired, the PDPError propagates.
    """

    def __init__(
        self, client: TokenIssuer, audience: str, *, ttl_seconds: int = 0, renew_at: float = 0.8,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not audience:
            raise ValueError("audience is required")
        if not 0 < renew_at <= 1:
            raise ValueError("renew_at must be in (0, 1]")
        self._client = client
        self.audience = audience
        self._ttl = ttl_seconds
        self._renew_at = renew_at
        self._clock = clock
        self._lock = threading.Lock()
        self._current: ServiceToken | None = None
        self._refresh_after = 0.0

    def token(self) -> str:
        """A valid token (the JWT text); raises PDPError when none can be had."""
        with self._lock:
            now = self._clock()
            current = self._current
            if current is not None and now < self._refresh_after:
                return current.token
            try:
                fresh = self._client.issue_service_token(self.audience, ttl_seconds=self._ttl)
            except Exception:
                if current is not None and now < current.expires_at:
                    return current.token
                raise
            life = max(0.0, fresh.expires_at - now)
            self._current = fresh
            self._refresh_after = now + life * self._renew_at
            return fresh.token


class _Details(
    collections.namedtuple(  # grpc wants a ClientCallDetails subclass
        "_Details",
        ["method", "timeout", "metadata", "credentials", "wait_for_ready", "compression"],
    ),
    grpc.ClientCallDetails,  # type: ignore[misc]
):
    """The outgoing call's details with the token in its metadata."""


class ServiceTokenInterceptor(
    grpc.UnaryUnaryClientInterceptor,  # type: ignore[misc]
    grpc.UnaryStreamClientInterceptor,  # type: ignore[misc]
    grpc.StreamUnaryClientInterceptor,  # type: ignore[misc]
    grpc.StreamStreamClientInterceptor,  # type: ignore[misc]
):
    """Adds `authorization: Bearer <token>` from a TokenSource to every outgoing call.

    Install with grpc.intercept_channel(channel, ServiceTokenInterceptor(source)). A token that
    cannot be had raises PDPError from the call rather than sending it unauthenticated.
    """

    def __init__(self, source: TokenSource) -> None:
        self._source = source

    def _with_token(self, d: Any) -> _Details:
        md = [(k, v) for k, v in (d.metadata or ()) if k.lower() != "authorization"]
        md.append(("authorization", f"Bearer {self._source.token()}"))
        return _Details(d.method, d.timeout, md, d.credentials,
                        getattr(d, "wait_for_ready", None), getattr(d, "compression", None))

    def intercept_unary_unary(self, continuation: Any, client_call_details: Any,
                              request: Any) -> Any:
        """Unary call with the token attached."""
        return continuation(self._with_token(client_call_details), request)

    def intercept_unary_stream(self, continuation: Any, client_call_details: Any,
                               request: Any) -> Any:
        """Server-streaming call with the token attached."""
        return continuation(self._with_token(client_call_details), request)

    def intercept_stream_unary(self, continuation: Any, client_call_details: Any,
                               request_iterator: Iterator[Any]) -> Any:
        """Client-streaming call with the token attached."""
        return continuation(self._with_token(client_call_details), request_iterator)

    def intercept_stream_stream(self, continuation: Any, client_call_details: Any,
                                request_iterator: Iterator[Any]) -> Any:
        """Bidirectional call with the token attached."""
        return continuation(self._with_token(client_call_details), request_iterator)
