"""The bundle store contract: records, the abstract store, and checks shared by backends.

A store keeps pushed bundle bytes plus metadata, the activation history, the shadow
pointer and the quarantine list; it knows nothing of gRPC or of the policy language.
"""

from __future__ import annotations

import abc
import builtins
import hashlib
import hmac
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass

from pdp.errors import StoreCorruptError

__all__ = [
    "Activation",
    "BundleStore",
    "QuarantineEntry",
    "StoredBundle",
    "check_put_arguments",
    "make_version",
    "run_callback",
    "verify_bundle",
]

_log = logging.getLogger("pdp.store")
_DIGEST = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True, slots=True)
class StoredBundle:
    """One pushed bundle, exactly as pushed, with the metadata recorded at push time."""

    version: str  # f"{sequence}-{digest[:12]}"
    sequence: int  # store-assigned, strictly increasing per store
    digest: str  # sha256 hex of the canonical form (given by the caller)
    data: bytes  # the bundle exactly as pushed
    data_sha256: str  # sha256 of data, recorded at put, verified on every read
    signature: bytes | None  # detached signature as pushed, if any
    key_id: str | None  # id of the signing key, if any
    pushed_by: str  # identity of the pusher
    pushed_at: float  # epoch seconds
    name: str  # bundle metadata name, for listings
    revision: str  # bundle metadata revision, for listings
    rule_count: int  # number of rules, for listings


@dataclass(frozen=True, slots=True)
class Activation:
    """One entry of the activation history; ``sequence`` totally orders activations."""

    sequence: int  # activation counter, strictly increasing per store
    version: str  # the version made active
    by: str  # who activated (or rolled back)
    at: float  # epoch seconds


@dataclass(frozen=True, slots=True)
class QuarantineEntry:
    """A subject denied before any rule until ``until`` (epoch seconds)."""

    subject: str
    until: float
    reason: str
    by: str


class BundleStore(abc.ABC):
    """A versioned bundle store shared by every replica that opens the same URL.

    Every method raises :class:`pdp.errors.StoreUnavailableError` when the backing
    database cannot be reached and :class:`pdp.errors.StoreError` for other store
    failures; backend exceptions never escape.
    """

    @abc.abstractmethod
    def put(
        self,
        data: bytes,
        *,
        digest: str,
        signature: bytes | None,
        key_id: str | None,
        pushed_by: str,
        name: str,
        revision: str,
        rule_count: int,
        now: float,
    ) -> StoredBundle:
        """Store ``data``; a digest already stored returns the existing record.

        Raises ValueError for malformed arguments (digest not 64 lowercase hex, ...)
        and StoreCorruptError if the existing record for the digest is corrupt.
        """

    @abc.abstractmethod
    def get(self, version: str) -> StoredBundle:
        """Return a bundle; UnknownVersionError if absent, StoreCorruptError if altered."""

    @abc.abstractmethod
    def list(self) -> list[StoredBundle]:
        """Every bundle by sequence; StoreCorruptError if any record was altered."""

    @abc.abstractmethod
    def activate(self, version: str, *, by: str, now: float) -> Activation:
        """Make ``version`` active in one transaction and return the new activation.

        Activating the version that is already active returns the current activation.
        Raises UnknownVersionError, or StoreCorruptError if the bundle was altered.
        """

    @abc.abstractmethod
    def rollback(self, *, by: str, now: float) -> Activation:
        """Re-activate the version active before the current one (repeatable: walks back).

        Raises UnknownVersionError if there is no earlier activation, StoreCorruptError
        if that bundle was altered.
        """

    @abc.abstractmethod
    def active(self) -> tuple[Activation, StoredBundle] | None:
        """The current activation and its bundle, or None; StoreCorruptError if altered."""

    def activation(self) -> Activation | None:
        """The current activation without its bundle (cheap: no bundle bytes are read)."""
        current = self.active()
        return None if current is None else current[0]

    @abc.abstractmethod
    def set_shadow(self, version: str | None, *, by: str, now: float) -> None:
        """Set (or clear with None) the shadow version; UnknownVersionError if absent."""

    @abc.abstractmethod
    def shadow(self) -> str | None:
        """The shadow version, or None."""

    @abc.abstractmethod
    def quarantine(self, entry: QuarantineEntry) -> None:
        """Insert or replace the quarantine entry for ``entry.subject``."""

    @abc.abstractmethod
    def release(self, subject: str) -> bool:
        """Remove a subject's quarantine entry; True if there was one."""

    @abc.abstractmethod
    def quarantined(self, *, now: float) -> builtins.list[QuarantineEntry]:
        """Unexpired entries (``until > now``), by subject."""

    @abc.abstractmethod
    def remember_token(self, issuer: str, jti: str, until: float, *, now: float) -> bool:
        """Record a service token's (issuer, jti) until ``until``; False if already recorded.

        Shared by every replica of the store, so a token is accepted once in the whole fleet.
        Entries expired at ``now`` are forgotten.
        """

    @abc.abstractmethod
    def state_token(self) -> object:
        """A cheap value that changes whenever activation, shadow or quarantine changes."""

    @abc.abstractmethod
    def watch(self, on_change: Callable[[], None], *, poll_interval: float = 0.5) -> None:
        """Start a daemon thread calling ``on_change`` after any change by any replica.

        Returns once the watcher has its baseline (or its first attempt failed), so
        any change committed after the call returns is reported. Exceptions raised by
        ``on_change`` are logged and the watcher keeps running. Raises ValueError for
        a non-positive ``poll_interval``.
        """

    @abc.abstractmethod
    def close(self) -> None:
        """Stop watchers and close connections; later calls raise StoreError."""

    def __enter__(self) -> BundleStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def make_version(sequence: int, digest: str) -> str:
    """The version string of a bundle: ``f"{sequence}-{digest[:12]}"``."""
    return f"{sequence}-{digest[:12]}"


def check_put_arguments(data: bytes, digest: str, rule_count: int, pushed_by: str) -> str:
    """Validate ``put`` arguments and return sha256 hex of ``data``; raise ValueError."""
    if not isinstance(data, bytes) or not data:
        raise ValueError("bundle data must be non-empty bytes")
    if not isinstance(digest, str) or not _DIGEST.fullmatch(digest):
        raise ValueError("digest must be 64 lowercase hex characters (sha256)")
    if isinstance(rule_count, bool) or not isinstance(rule_count, int) or rule_count < 0:
        raise ValueError("rule_count must be a non-negative integer")
    if not pushed_by:
        raise ValueError("pushed_by must name the pusher")
    return hashlib.sha256(data).hexdigest()


def verify_bundle(bundle: StoredBundle) -> StoredBundle:
    """Return ``bundle`` if its bytes and version match what was recorded at put.

    Raises StoreCorruptError naming the version otherwise; such a bundle is never served.
    """
    actual = hashlib.sha256(bundle.data).hexdigest()
    if not hmac.compare_digest(actual, bundle.data_sha256):
        raise StoreCorruptError(
            f"bundle {bundle.version}: stored data no longer matches its recorded sha256"
        )
    if bundle.version != make_version(bundle.sequence, bundle.digest):
        raise StoreCorruptError(
            f"bundle {bundle.version}: version does not match its sequence and digest"
        )
    return bundle


def run_callback(on_change: Callable[[], None]) -> None:
    """Run a watch callback; its failure is logged, never fatal to the watcher."""
    try:
        on_change()
    except Exception:
        _log.exception("store watch callback failed")
