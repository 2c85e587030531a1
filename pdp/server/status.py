"""The one place where `pdp` errors become gRPC status codes, from a table.

Servicers raise PdpError leaves; :func:`abort_with` maps the most specific class in
:data:`STATUS_TABLE` to its code and aborts the call with the error's precise message.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import NoReturn, TypeVar

import grpc

from pdp.errors import (
    AuditUnavailableError,
    BundleError,
    BundleTooLargeError,
    CallerNotAllowedError,
    ConfigError,
    CredentialError,
    PdpError,
    RequestError,
    RequestTooLargeError,
    StaleReplicaError,
    StoreCorruptError,
    StoreUnavailableError,
    UnknownVersionError,
)

__all__ = ["STATUS_TABLE", "abort_with", "status_for", "translated"]

S = TypeVar("S")
Q = TypeVar("Q")
R = TypeVar("R")

# Most specific first: the first class the error is an instance of decides.
STATUS_TABLE: tuple[tuple[type[PdpError], grpc.StatusCode], ...] = (
    (BundleTooLargeError, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (RequestTooLargeError, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (BundleError, grpc.StatusCode.INVALID_ARGUMENT),
    (RequestError, grpc.StatusCode.INVALID_ARGUMENT),
    (CredentialError, grpc.StatusCode.UNAUTHENTICATED),
    (CallerNotAllowedError, grpc.StatusCode.PERMISSION_DENIED),
    (UnknownVersionError, grpc.StatusCode.FAILED_PRECONDITION),
    (StaleReplicaError, grpc.StatusCode.FAILED_PRECONDITION),
    (StoreCorruptError, grpc.StatusCode.DATA_LOSS),
    (StoreUnavailableError, grpc.StatusCode.UNAVAILABLE),
    (AuditUnavailableError, grpc.StatusCode.UNAVAILABLE),
    (ConfigError, grpc.StatusCode.FAILED_PRECONDITION),
)


def status_for(error: PdpError) -> grpc.StatusCode:
    """The gRPC status code for ``error``; INTERNAL for a family not in the table."""
    for cls, code in STATUS_TABLE:
        if isinstance(error, cls):
            return code
    return grpc.StatusCode.INTERNAL


def abort_with(context: grpc.ServicerContext, error: PdpError) -> NoReturn:
    """Abort the call with the status code of ``error`` and its message."""
    context.abort(status_for(error), str(error))
    raise AssertionError("unreachable: context.abort raises")  # pragma: no cover


def translated(
    method: Callable[[S, Q, grpc.ServicerContext], R],
) -> Callable[[S, Q, grpc.ServicerContext], R]:
    """Decorate a servicer method: a PdpError it raises aborts the call via the table."""

    @functools.wraps(method)
    def wrapper(self: S, request: Q, context: grpc.ServicerContext) -> R:
        try:
            return method(self, request, context)
        except PdpError as exc:
            abort_with(context, exc)

    return wrapper
