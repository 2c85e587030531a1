"""The one exception tree of `pdp`.

Every error the package raises derives from :class:`PdpError`, through one base
per family (bundle, credential, store, config, audit, request). The server turns
them into gRPC status codes in exactly one place (``pdp.server.status``).
Modules may define further leaves of a family next to the code that raises them.
"""

from __future__ import annotations

__all__ = [
    "AuditError",
    "AuditUnavailableError",
    "AuditVerificationError",
    "BundleError",
    "BundleSignatureError",
    "BundleTooLargeError",
    "CallerNotAllowedError",
    "CertificateError",
    "ConfigError",
    "CredentialError",
    "PdpError",
    "RequestError",
    "RequestTooLargeError",
    "StaleReplicaError",
    "StoreCorruptError",
    "StoreError",
    "StoreUnavailableError",
    "TokenError",
    "UnknownVersionError",
]


class PdpError(Exception):
    """Root of every error raised by `pdp`."""


# --- bundles -----------------------------------------------------------------


class BundleError(PdpError):
    """A policy bundle is invalid; names the source, the location and what is wrong.

    ``location`` is a path into the bundle such as
    ``rules[3] (id "kg-write").when.all[1]``; ``line`` is the 1-based line in the
    source when it is known.
    """

    def __init__(
        self,
        message: str,
        *,
        source: str = "<bundle>",
        location: str = "",
        line: int | None = None,
    ) -> None:
        self.message = message
        self.source = source
        self.location = location
        self.line = line
        where = source if line is None else f"{source}:{line}"
        text = f"{where}: {location}: {message}" if location else f"{where}: {message}"
        super().__init__(text)


class BundleTooLargeError(BundleError):
    """A bundle exceeds a configured limit (bytes, rules, condition depth)."""


class BundleSignatureError(BundleError):
    """A bundle is unsigned, signed by an untrusted key, or its signature does not verify."""


# --- credentials ---------------------------------------------------------------


class CredentialError(PdpError):
    """A credential presented by a caller is not acceptable."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


class CertificateError(CredentialError):
    """A peer certificate is missing, expired, revoked, or not from a TLS 1.3 session."""


class TokenError(CredentialError):
    """A service token failed verification; ``reason`` says why (signature, audience, ...)."""


class CallerNotAllowedError(PdpError):
    """An authenticated caller is not allowed by the system policy to call an RPC."""

    def __init__(self, identity: str, method: str, reason: str = "") -> None:
        self.identity = identity
        self.method = method
        self.reason = reason
        text = f"{identity or '<unknown>'} may not call {method}"
        super().__init__(f"{text}: {reason}" if reason else text)


# --- requests --------------------------------------------------------------------


class RequestError(PdpError):
    """A request is malformed; ``field`` names the offending field."""

    def __init__(self, message: str, *, field: str = "") -> None:
        self.message = message
        self.field = field
        super().__init__(f"{field}: {message}" if field else message)


class RequestTooLargeError(RequestError):
    """A request exceeds a size limit (batch size, message size)."""


class StaleReplicaError(PdpError):
    """This replica has not yet activated the bundle sequence the caller asked for."""


# --- stores --------------------------------------------------------------------------


class StoreError(PdpError):
    """A bundle store operation failed."""


class UnknownVersionError(StoreError):
    """A bundle version (or a previous active version for rollback) does not exist."""


class StoreCorruptError(StoreError):
    """A stored bundle no longer matches its recorded digest; it is never served."""


class StoreUnavailableError(StoreError):
    """The store's backing database cannot be reached."""


# --- configuration ---------------------------------------------------------------------


class ConfigError(PdpError):
    """The configuration is invalid; ``field`` names the setting, e.g. ``[audit].fsync``."""

    def __init__(self, message: str, *, field: str = "") -> None:
        self.message = message
        self.field = field
        super().__init__(f"{field}: {message}" if field else message)


# --- audit -----------------------------------------------------------------------------------


class AuditError(PdpError):
    """The audit trail failed."""


class AuditUnavailableError(AuditError):
    """The audit trail cannot be written; the PDP fails closed unless configured otherwise."""


class AuditVerificationError(AuditError):
    """An audit file fails verification; names the file and 1-based line of the first bad record."""

    def __init__(self, reason: str, *, file: str, line: int) -> None:
        self.reason = reason
        self.file = file
        self.line = line
        super().__init__(f"{file}:{line}: {reason}")
