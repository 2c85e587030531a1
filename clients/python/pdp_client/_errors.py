"""The client's one exception tree, and the single place where gRPC status codes become exceptions.

A DENY decision is an answer, never an exception; these are raised only when no answer exists.
"""

from __future__ import annotations

import grpc

__all__ = [
    "FailedPreconditionError",
    "InvalidRequestError",
    "PDPError",
    "PDPUnavailableError",
    "PermissionDeniedError",
    "ResourceExhaustedError",
    "UnauthenticatedError",
    "error_for_status",
]


class PDPError(Exception):
    """Root of every pdp-client error; carries the status code name and the server's message."""

    code: str = "UNKNOWN"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


class PDPUnavailableError(PDPError):
    """Raised when the PDP cannot be reached after retries and the client is not fail-closed."""

    code = "UNAVAILABLE"


class InvalidRequestError(PDPError, ValueError):
    """Raised for a malformed request (INVALID_ARGUMENT), found by the client or the server."""

    code = "INVALID_ARGUMENT"


class UnauthenticatedError(PDPError):
    """Raised when the PDP rejects this client's credential or a service token (UNAUTHENTICATED)."""

    code = "UNAUTHENTICATED"


class PermissionDeniedError(PDPError):
    """Raised when this client's identity may not call the RPC at all (PERMISSION_DENIED)."""

    code = "PERMISSION_DENIED"


class ResourceExhaustedError(PDPError):
    """Raised for an oversized request or batch (RESOURCE_EXHAUSTED)."""

    code = "RESOURCE_EXHAUSTED"


class FailedPreconditionError(PDPError):
    """Raised when the PDP cannot satisfy e.g. `min_bundle_sequence` yet (FAILED_PRECONDITION)."""

    code = "FAILED_PRECONDITION"


_BY_CODE: dict[grpc.StatusCode, type[PDPError]] = {
    grpc.StatusCode.UNAVAILABLE: PDPUnavailableError,
    grpc.StatusCode.DEADLINE_EXCEEDED: PDPUnavailableError,
    grpc.StatusCode.INVALID_ARGUMENT: InvalidRequestError,
    grpc.StatusCode.UNAUTHENTICATED: UnauthenticatedError,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDeniedError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhaustedError,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPreconditionError,
}


def error_for_status(code: grpc.StatusCode, details: str | None) -> PDPError:
    """Translate a gRPC status into the matching PDPError leaf (PDPError itself for other codes)."""
    cls = _BY_CODE.get(code, PDPError)
    return cls(details or "", code=code.name)
