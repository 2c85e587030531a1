"""Plain Python values of the client API (Subject, Action, Resource, Decision) and their wire form.

Generated protobuf types stop here: callers see frozen dataclasses, never messages.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TypeAlias

from google.protobuf import json_format, struct_pb2

from ._errors import InvalidRequestError
from ._proto import authorization_pb2 as pb
from ._proto import identity_pb2

__all__ = [
    "AccessRequest",
    "Action",
    "ActionLike",
    "Decision",
    "Effect",
    "RequestLike",
    "Resource",
    "ResourceLike",
    "RuleTrace",
    "ServiceToken",
    "Subject",
    "SubjectLike",
    "decision_from_wire",
    "request_to_wire",
    "unavailable_decision",
]


@dataclass(frozen=True, slots=True)
class Subject:
    """Who asks: e.g. Subject("user", "alice", {"department": "eng"})."""

    type: str
    id: str
    properties: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Action:
    """What is asked: e.g. Action("read") or the full gRPC method name."""

    name: str
    properties: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Resource:
    """On what: e.g. Resource("document", "42", {"owner": "alice"})."""

    type: str
    id: str = ""
    properties: Mapping[str, Any] = field(default_factory=dict)


SubjectLike: TypeAlias = Subject | Mapping[str, Any]
ActionLike: TypeAlias = Action | Mapping[str, Any] | str
ResourceLike: TypeAlias = Resource | Mapping[str, Any]


@dataclass(frozen=True, slots=True, kw_only=True)
class AccessRequest:
    """One item of a batch; unset (None) fields take the batch defaults."""

    subject: SubjectLike | None = None
    action: ActionLike | None = None
    resource: ResourceLike | None = None
    context: Mapping[str, Any] | None = None
    service_token: str | None = None


RequestLike: TypeAlias = AccessRequest | Mapping[str, Any]


class Effect(enum.Enum):
    """The answer's kind. DENY is listed first because it is the default of every doubt."""

    DENY = "DENY"
    ALLOW = "ALLOW"


@dataclass(frozen=True, slots=True)
class RuleTrace:
    """One rule an explained decision considered, and why it did or did not match."""

    rule_id: str
    effect: str
    matched: bool
    failed_part: str
    detail: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Decision:
    """The PDP's answer. `allowed` is True only for an ALLOW the PDP actually gave."""

    decision: Effect = Effect.DENY
    rule_id: str = ""
    bundle_version: str = ""
    reason: str = ""
    decision_id: str = ""
    cached: bool = False
    explanation: tuple[RuleTrace, ...] = ()

    @property
    def allowed(self) -> bool:
        """True only for ALLOW."""
        return self.decision is Effect.ALLOW

    def __bool__(self) -> bool:
        return self.allowed


@dataclass(frozen=True, slots=True, kw_only=True)
class ServiceToken:
    """A JWT from Identity.IssueServiceToken, with its expiry (epoch seconds)."""

    token: str = field(repr=False)
    expires_at: int
    key_id: str
    jti: str

    @classmethod
    def from_wire(cls, msg: identity_pb2.IssueServiceTokenResponse) -> ServiceToken:
        """Build from the response message."""
        return cls(token=msg.token, expires_at=msg.expires_at, key_id=msg.key_id, jti=msg.jti)


def _struct(value: Mapping[str, Any] | None, where: str) -> struct_pb2.Struct | None:
    """A protobuf Struct from a JSON-like mapping; raise InvalidRequestError for other values."""
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise InvalidRequestError(f"{where}: expected a mapping, got {type(value).__name__}")
    out = struct_pb2.Struct()
    try:
        json_format.ParseDict(dict(value), out)
    except (json_format.ParseError, TypeError, ValueError) as exc:
        raise InvalidRequestError(f"{where}: not JSON-like: {exc}") from None
    return out


def _fields(value: Any, cls: type[Any], keys: tuple[str, ...], where: str) -> dict[str, Any]:
    """Read a dataclass or mapping into a dict of `keys`; raise InvalidRequestError otherwise."""
    if isinstance(value, cls):
        return {k: getattr(value, k) for k in keys}
    if isinstance(value, Mapping):
        unknown = set(value) - set(keys)
        if unknown:
            raise InvalidRequestError(f"{where}: unknown field(s) {sorted(unknown)}")
        return {k: value.get(k) for k in keys}
    raise InvalidRequestError(f"{where}: expected {cls.__name__} or a mapping")


def _text(value: Any, where: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise InvalidRequestError(f"{where}: expected a string, got {type(value).__name__}")
    return value


def _subject(value: SubjectLike, where: str) -> pb.Subject:
    f = _fields(value, Subject, ("type", "id", "properties"), where)
    return pb.Subject(
        type=_text(f["type"], f"{where}.type"),
        id=_text(f["id"], f"{where}.id"),
        properties=_struct(f["properties"], f"{where}.properties"),
    )


def _action(value: ActionLike, where: str) -> pb.Action:
    if isinstance(value, str):
        return pb.Action(name=value)
    f = _fields(value, Action, ("name", "properties"), where)
    return pb.Action(
        name=_text(f["name"], f"{where}.name"),
        properties=_struct(f["properties"], f"{where}.properties"),
    )


def _resource(value: ResourceLike, where: str) -> pb.Resource:
    f = _fields(value, Resource, ("type", "id", "properties"), where)
    return pb.Resource(
        type=_text(f["type"], f"{where}.type"),
        id=_text(f["id"], f"{where}.id"),
        properties=_struct(f["properties"], f"{where}.properties"),
    )


def request_to_wire(
    item: RequestLike | None, *, explain: bool = False, min_bundle_sequence: int = 0,
    where: str = "request",
) -> pb.AuthorizeRequest:
    """Build an AuthorizeRequest (missing parts unset); raise InvalidRequestError if malformed."""
    if item is None:
        return pb.AuthorizeRequest(explain=explain, min_bundle_sequence=min_bundle_sequence)
    keys = ("subject", "action", "resource", "context", "service_token")
    f = _fields(item, AccessRequest, keys, where)
    if min_bundle_sequence < 0:
        raise InvalidRequestError(f"{where}.min_bundle_sequence: must not be negative")
    msg = pb.AuthorizeRequest(
        context=_struct(f["context"], f"{where}.context"),
        service_token=_text(f["service_token"], f"{where}.service_token"),
        explain=explain,
        min_bundle_sequence=min_bundle_sequence,
    )
    if f["subject"] is not None:
        msg.subject.CopyFrom(_subject(f["subject"], f"{where}.subject"))
    if f["action"] is not None:
        msg.action.CopyFrom(_action(f["action"], f"{where}.action"))
    if f["resource"] is not None:
        msg.resource.CopyFrom(_resource(f["resource"], f"{where}.resource"))
    return msg


def decision_from_wire(msg: pb.AuthorizeResponse) -> Decision:
    """A Decision from a response; any value other than DECISION_ALLOW is a DENY."""
    effect = Effect.ALLOW if msg.decision == pb.DECISION_ALLOW else Effect.DENY
    return Decision(
        decision=effect,
        rule_id=msg.rule_id,
        bundle_version=msg.bundle_version,
        reason=msg.reason,
        decision_id=msg.decision_id,
        cached=msg.cached,
        explanation=tuple(
            RuleTrace(t.rule_id, t.effect, t.matched, t.failed_part, t.detail)
            for t in msg.explanation
        ),
    )


def unavailable_decision(status: str) -> Decision:
    """The fail-closed answer when the PDP could not be reached."""
    return Decision(decision=Effect.DENY, reason=f"pdp unavailable: {status}")
