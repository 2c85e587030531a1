"""The plain data of the policy engine: requests, decisions, limits and the bundle model.

Everything here is immutable and knows nothing of parsing, compiling or gRPC.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

__all__ = [
    "Action",
    "Bundle",
    "Decision",
    "Effect",
    "Limits",
    "Request",
    "Resource",
    "ResourceMatch",
    "Rule",
    "RuleTrace",
    "Subject",
    "SubjectMatch",
]

_EMPTY: Mapping[str, Any] = MappingProxyType({})

# _REQUEST_NOTE: Subject, Action, Resource and Request are immutable by contract (nothing
# assigns to them once built) but not frozen dataclasses: the server builds all four on every
# call, and frozen ones cost four times as much to build (2.1 against 0.5 µs, every field set
# through object.__setattr__). unsafe_hash keeps them hashable, as frozen ones were. Those
# the server builds in C (pdp.server._wire) are also left out of the cycle collector, which
# is sound only because nothing assigns to them: built after what they hold, they cannot be
# part of a cycle.


class Effect(enum.IntEnum):
    """The outcome of a decision; the zero value (and every default) is DENY."""

    DENY = 0
    ALLOW = 1


@dataclass(slots=True, unsafe_hash=True)  # see _REQUEST_NOTE
class Subject:
    """Who asks: a typed id plus JSON-like properties (e.g. ``clearance``)."""

    type: str
    id: str
    properties: Mapping[str, Any] = field(default_factory=lambda: _EMPTY)


@dataclass(slots=True, unsafe_hash=True)  # see _REQUEST_NOTE
class Action:
    """What the subject wants to do, e.g. ``read``."""

    name: str
    properties: Mapping[str, Any] = field(default_factory=lambda: _EMPTY)


@dataclass(slots=True, unsafe_hash=True)  # see _REQUEST_NOTE
class Resource:
    """What the action is done on: a typed id plus JSON-like properties (e.g. ``owner``)."""

    type: str
    id: str
    properties: Mapping[str, Any] = field(default_factory=lambda: _EMPTY)


@dataclass(slots=True, unsafe_hash=True)  # see _REQUEST_NOTE
class Request:
    """One authorization question.

    ``context`` holds JSON-like facts the PEP reports (``context.source.ip`` is the
    caller's address). ``peer_ip`` is the PEP connection's own address, set by the
    server and never taken from the request body.
    """

    subject: Subject
    action: Action
    resource: Resource
    context: Mapping[str, Any] = field(default_factory=lambda: _EMPTY)
    peer_ip: str | None = None


@dataclass(frozen=True, slots=True)
class Decision:
    """An answer: the effect, the deciding rule ("" when none), why, and the bundle version."""

    effect: Effect
    rule_id: str
    reason: str
    bundle_version: str
    cached: bool = False

    @property
    def allowed(self) -> bool:
        """True only for an explicit ALLOW."""
        return self.effect is Effect.ALLOW


@dataclass(frozen=True, slots=True, kw_only=True)
class Limits:
    """Limits on what the bundle loader accepts (also the ``[limits]`` config section)."""

    max_bytes: int = 64 * 1024 * 1024  # largest bundle document accepted, in bytes
    max_rules: int = 250_000  # most rules one bundle may hold
    max_depth: int = 32  # deepest nesting of all/any/not in a rule's `when`

    def __post_init__(self) -> None:
        for name in ("max_bytes", "max_rules", "max_depth"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")


@dataclass(frozen=True, slots=True)
class SubjectMatch:
    """Which subjects a rule applies to: type (exact or glob), ids (exact or glob), roles.

    No ids and no roles means every subject of the type.
    """

    type: str = "*"
    ids: tuple[str, ...] = ()
    roles: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ResourceMatch:
    """Which resources a rule applies to: type and ids, exact or glob (no ids = every id)."""

    type: str = "*"
    ids: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Rule:
    """One rule of a bundle; ``when`` is the validated condition tree as JSON-like data."""

    id: str
    effect: Effect
    actions: tuple[str, ...]
    subjects: SubjectMatch = field(default_factory=SubjectMatch)
    resources: ResourceMatch = field(default_factory=ResourceMatch)
    when: Mapping[str, Any] | None = None
    description: str = ""


@dataclass(frozen=True, slots=True, eq=False)
class Bundle:
    """A validated policy bundle. ``digest`` is the sha256 hex of :meth:`canonical_bytes`.

    Build bundles with :func:`pdp.policy.load_bundle`; two bundles are equal when
    their digests are.
    """

    name: str
    revision: str
    segments: Mapping[str, tuple[str, ...]]
    roles: Mapping[str, tuple[str, ...]]
    rules: tuple[Rule, ...]
    digest: str
    # Empty unless given: the loader hashes the canonical form without keeping it (at
    # 100,000 rules it is 20 MB), and canonical_bytes() rebuilds it from the rules.
    _canonical: bytes = field(repr=False, default=b"")
    reads_clock: bool = False  # some rule has a time_window condition
    reads_peer: bool = False  # some rule has a peer_in_segment condition

    def canonical_bytes(self) -> bytes:
        """The canonical JSON form the digest is computed over."""
        if self._canonical:
            return self._canonical
        from pdp.policy.loader import canonical_bytes  # the loader defines the form

        return canonical_bytes(self.name, self.revision, self.segments, self.roles, self.rules)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Bundle) and other.digest == self.digest

    def __hash__(self) -> int:
        return hash(self.digest)


@dataclass(frozen=True, slots=True)
class RuleTrace:
    """How one candidate rule fared in :meth:`CompiledPolicy.explain`.

    ``failed_part`` is "subject", "action", "resource" or "when" ("" when it matched);
    ``detail`` says why, e.g. ``when.all[1]: subject.properties.clearance = 2 (expected ge 3)``.
    """

    rule_id: str
    effect: str
    matched: bool
    failed_part: str
    detail: str
