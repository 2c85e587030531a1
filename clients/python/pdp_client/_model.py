"""Plain Python values of the client API (Subject, Action, Resource, Decision) and their wire form.

Generated protobuf types stop here: callers see frozen dataclasses, never messages.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, field, fields
from typing import Any, TypeAlias, TypeVar

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
    "put_request",
    "put_request_parts",
    "request_to_wire",
    "unavailable_decision",
]


_T = TypeVar("_T")
# The __init__ that dataclass generated for each class below, before _quick_init replaced it
# (kept for the tests that hold the two to the same results).
GENERATED_INITS: dict[type[Any], Any] = {}


def _quick_init(cls: type[_T]) -> type[_T]:
    """Give the frozen, slotted dataclass ``cls`` an ``__init__`` that sets each field through
    its slot's own descriptor.

    The ``__init__`` dataclass generates for a frozen class calls ``object.__setattr__`` once
    per field, to step around the class's refusing ``__setattr__``. That made a Resource cost
    ~1 µs to build, 3x what setting its slots directly costs, and services build one or more
    per request. This one takes the same parameters in the same order, with the same
    defaults (a default factory is called per instance, as before) and keyword-only fields,
    and sets the fields in the same order. Instances stay frozen. Raises TypeError at import
    for what it does not reproduce: a ``__post_init__``, init=False fields, InitVars or
    ClassVars.
    """
    params_of = getattr(cls, "__dataclass_params__", None)
    if params_of is None or not params_of.frozen or "__slots__" not in cls.__dict__:
        raise TypeError(f"{cls.__name__}: _quick_init is for frozen, slotted dataclasses")
    if hasattr(cls, "__post_init__") or len(fields(cls)) != len(cls.__dataclass_fields__):  # type: ignore[arg-type, attr-defined]
        raise TypeError(f"{cls.__name__}: a __post_init__, InitVar or ClassVar is not handled")
    namespace: dict[str, Any] = {"_MISSING": MISSING}
    params, body, keyword_only = [], [], False
    for f in fields(cls):  # type: ignore[arg-type]
        if not f.init:
            raise TypeError(f"{cls.__name__}.{f.name}: init=False fields are not handled")
        namespace[f"_set_{f.name}"] = cls.__dict__[f.name].__set__
        if f.kw_only and not keyword_only:
            params.append("*")
            keyword_only = True
        value = f.name
        if f.default is not MISSING:
            namespace[f"_default_{f.name}"] = f.default
            params.append(f"{f.name}=_default_{f.name}")
        elif f.default_factory is not MISSING:
            namespace[f"_factory_{f.name}"] = f.default_factory
            params.append(f"{f.name}=_MISSING")
            value = f"_factory_{f.name}() if {f.name} is _MISSING else {f.name}"
        else:
            params.append(f.name)
        body.append(f"    _set_{f.name}(self, {value})")
    exec(f"def __init__(self, {', '.join(params)}):\n" + "\n".join(body),  # noqa: S102
         namespace)
    init = namespace["__init__"]
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    init.__module__ = cls.__module__
    init.__doc__ = cls.__init__.__doc__
    GENERATED_INITS[cls] = cls.__init__
    cls.__init__ = init  # type: ignore[method-assign]
    return cls


@_quick_init
@dataclass(frozen=True, slots=True)
class Subject:
    """Who asks: e.g. Subject("user", "alice", {"department": "eng"})."""

    type: str
    id: str
    properties: Mapping[str, Any] = field(default_factory=dict)


@_quick_init
@dataclass(frozen=True, slots=True)
class Action:
    """What is asked: e.g. Action("read") or the full gRPC method name."""

    name: str
    properties: Mapping[str, Any] = field(default_factory=dict)


@_quick_init
@dataclass(frozen=True, slots=True)
class Resource:
    """On what: e.g. Resource("document", "42", {"owner": "alice"})."""

    type: str
    id: str = ""
    properties: Mapping[str, Any] = field(default_factory=dict)


SubjectLike: TypeAlias = Subject | Mapping[str, Any]
ActionLike: TypeAlias = Action | Mapping[str, Any] | str
ResourceLike: TypeAlias = Resource | Mapping[str, Any]


@_quick_init
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


@_quick_init
@dataclass(frozen=True, slots=True)
class RuleTrace:
    """One rule an explained decision considered, and why it did or did not match."""

    rule_id: str
    effect: str
    matched: bool
    failed_part: str
    detail: str


@_quick_init
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


@_quick_init
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


# Containers nested deeper than this go to ParseDict (whose own limit, 100 messages, counts a
# Struct or ListValue and each Value: well above 2 * this).
_FAST_NESTING = 32


def _fill_struct(out: struct_pb2.Struct, value: dict[Any, Any], depth: int) -> bool:
    """Fill `out` from `value` making exactly the calls ParseDict makes, for the values it takes
    as they are: str keys; str, bool, int, float and None leaves; dict, list and tuple containers
    (exact types: no user code runs). False, with `out` partly filled, at anything else."""
    fields = out.fields
    for key, item in value.items():
        if type(key) is not str or not _fill_value(fields[key], item, depth):
            return False
    return True


def _fill_value(out: struct_pb2.Value, item: Any, depth: int) -> bool:
    """One Value of `_fill_struct` (a dict's or a list's item)."""
    cls = type(item)
    if cls is str:
        out.string_value = item
    elif cls is bool:
        out.bool_value = item
    elif cls is int or cls is float:
        out.number_value = item
    elif item is None:
        out.null_value = struct_pb2.NULL_VALUE
    elif depth >= _FAST_NESTING:
        return False
    elif cls is dict:
        inner = out.struct_value
        inner.Clear()
        return _fill_struct(inner, item, depth + 1)
    elif cls is list or cls is tuple:
        items = out.list_value
        items.ClearField("values")
        add = items.values.add
        return all(_fill_value(add(), x, depth + 1) for x in item)
    else:
        return False
    return True


def _put_struct(out: struct_pb2.Struct, value: Any, where: str, part: str) -> None:
    """Set the unset Struct field `out` from a JSON-like mapping (not None), as
    json_format.ParseDict does; raise InvalidRequestError naming `where + part` otherwise."""
    if type(value) is not dict and not isinstance(value, Mapping):
        raise InvalidRequestError(
            f"{where}{part}: expected a mapping, got {type(value).__name__}")
    try:
        js = value if type(value) is dict else dict(value)
        if not js:
            out.SetInParent()  # present, though empty (filled, it is present anyway)
        try:
            done = _fill_struct(out, js, 0)
        except Exception:  # ParseDict below redoes it and decides
            done = False
        if not done:  # into a fresh Struct, as before: `out` may be partly filled
            fresh = struct_pb2.Struct()
            json_format.ParseDict(js, fresh)
            out.CopyFrom(fresh)
    except (json_format.ParseError, TypeError, ValueError) as exc:
        raise InvalidRequestError(f"{where}{part}: not JSON-like: {exc}") from None


def _struct(value: Mapping[str, Any] | None, where: str) -> struct_pb2.Struct | None:
    """A protobuf Struct from a JSON-like mapping; raise InvalidRequestError for other values."""
    if value is None:
        return None
    out = struct_pb2.Struct()
    _put_struct(out, value, where, "")
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


# The builders below fill a message in place (no intermediate messages, no copies), checking
# and setting in the order the keyword constructors used to: a part's strings are checked, then
# its properties filled, then its strings set. Error locations are formatted only on error.

_TYPED_KEYS = ("type", "id", "properties")  # Subject and Resource
_ACTION_KEYS = ("name", "properties")
_REQUEST_KEYS = ("subject", "action", "resource", "context", "service_token")


def _put_typed(out: pb.Subject | pb.Resource, value: SubjectLike | ResourceLike,
               cls: type[Subject] | type[Resource], where: str, part: str) -> None:
    """Fill a Subject or a Resource message (type, id, properties) from ``value``."""
    if isinstance(value, cls):
        type_, id_, props = value.type, value.id, value.properties
    else:
        f = _fields(value, cls, _TYPED_KEYS, f"{where}{part}")
        type_, id_, props = f["type"], f["id"], f["properties"]
    if type(type_) is not str:
        type_ = _text(type_, f"{where}{part}.type")
    if type(id_) is not str:
        id_ = _text(id_, f"{where}{part}.id")
    out.SetInParent()
    if props is not None:
        _put_struct(out.properties, props, where, f"{part}.properties")
    out.type = type_
    out.id = id_


def _put_action(out: pb.Action, value: ActionLike, where: str) -> None:
    if isinstance(value, str):
        out.SetInParent()
        out.name = value
        return
    if isinstance(value, Action):  # as _fields would read it, without the dict
        name, props = value.name, value.properties
    else:
        f = _fields(value, Action, _ACTION_KEYS, f"{where}.action")
        name, props = f["name"], f["properties"]
    if type(name) is not str:
        name = _text(name, f"{where}.action.name")
    out.SetInParent()
    if props is not None:
        _put_struct(out.properties, props, where, ".action.properties")
    out.name = name


def _put_flags(out: pb.AuthorizeRequest, explain: bool, min_bundle_sequence: int) -> None:
    # As keyword arguments of the constructor: None leaves the field unset. So does the usual
    # False and 0, which proto3 does not send either way (a set costs ~0.15 µs per item).
    if explain is not None and explain is not False:
        out.explain = explain
    if min_bundle_sequence is not None and (type(min_bundle_sequence) is not int
                                            or min_bundle_sequence):
        out.min_bundle_sequence = min_bundle_sequence


def put_request_parts(
    out: pb.AuthorizeRequest, subject: SubjectLike | None, action: ActionLike | None,
    resource: ResourceLike | None, context: Mapping[str, Any] | None, service_token: str | None,
    explain: bool, min_bundle_sequence: int, where: str,
) -> None:
    """Fill the empty `out` as request_to_wire does for an item of these parts."""
    if min_bundle_sequence < 0:
        raise InvalidRequestError(f"{where}.min_bundle_sequence: must not be negative")
    if context is not None:
        _put_struct(out.context, context, where, ".context")
    if service_token is not None:  # (None: the field stays "")
        if type(service_token) is not str:
            service_token = _text(service_token, f"{where}.service_token")
        out.service_token = service_token
    _put_flags(out, explain, min_bundle_sequence)
    if subject is not None:
        _put_typed(out.subject, subject, Subject, where, ".subject")
    if action is not None:
        _put_action(out.action, action, where)
    if resource is not None:
        _put_typed(out.resource, resource, Resource, where, ".resource")


def put_request(
    out: pb.AuthorizeRequest, item: RequestLike | None, explain: bool, min_bundle_sequence: int,
    where: str,
) -> None:
    """Fill the empty `out` as request_to_wire does; raise InvalidRequestError if malformed."""
    if item is None:
        _put_flags(out, explain, min_bundle_sequence)
        return
    if isinstance(item, AccessRequest):
        put_request_parts(out, item.subject, item.action, item.resource, item.context,
                          item.service_token, explain, min_bundle_sequence, where)
        return
    f = _fields(item, AccessRequest, _REQUEST_KEYS, where)
    put_request_parts(out, f["subject"], f["action"], f["resource"], f["context"],
                      f["service_token"], explain, min_bundle_sequence, where)


def request_to_wire(
    item: RequestLike | None, *, explain: bool = False, min_bundle_sequence: int = 0,
    where: str = "request",
) -> pb.AuthorizeRequest:
    """Build an AuthorizeRequest (missing parts unset); raise InvalidRequestError if malformed."""
    msg = pb.AuthorizeRequest()
    put_request(msg, item, explain, min_bundle_sequence, where)
    return msg


# Decision and RuleTrace are built as their __init__ builds them (each field set through its
# slot's descriptor, in order: see _quick_init) minus the keyword binding: the values are the
# same frozen objects. A response's Decision costs ~1.2 µs so, against ~2.2 µs with
# object.__setattr__ per field.
_DECISION_FIELDS = ("decision", "rule_id", "bundle_version", "reason", "decision_id", "cached",
                    "explanation")
_RULE_TRACE_FIELDS = ("rule_id", "effect", "matched", "failed_part", "detail")
if (tuple(f.name for f in fields(Decision)) != _DECISION_FIELDS
        or tuple(f.name for f in fields(RuleTrace)) != _RULE_TRACE_FIELDS):
    raise ImportError("decision_from_wire is out of step with the Decision/RuleTrace fields")
_ALLOW = pb.DECISION_ALLOW
_new = object.__new__
(_set_decision, _set_rule_id, _set_bundle_version, _set_reason, _set_decision_id, _set_cached,
 _set_explanation) = (Decision.__dict__[name].__set__ for name in _DECISION_FIELDS)
(_set_trace_rule_id, _set_trace_effect, _set_trace_matched, _set_trace_failed_part,
 _set_trace_detail) = (RuleTrace.__dict__[name].__set__ for name in _RULE_TRACE_FIELDS)


def _rule_trace(t: pb.RuleTrace) -> RuleTrace:
    r = _new(RuleTrace)
    _set_trace_rule_id(r, t.rule_id)
    _set_trace_effect(r, t.effect)
    _set_trace_matched(r, t.matched)
    _set_trace_failed_part(r, t.failed_part)
    _set_trace_detail(r, t.detail)
    return r


def decision_from_wire(msg: pb.AuthorizeResponse) -> Decision:
    """A Decision from a response; any value other than DECISION_ALLOW is a DENY."""
    d = _new(Decision)
    _set_decision(d, Effect.ALLOW if msg.decision == _ALLOW else Effect.DENY)
    _set_rule_id(d, msg.rule_id)
    _set_bundle_version(d, msg.bundle_version)
    _set_reason(d, msg.reason)
    _set_decision_id(d, msg.decision_id)
    _set_cached(d, msg.cached)
    explanation = msg.explanation
    _set_explanation(d, tuple(map(_rule_trace, explanation)) if explanation else ())
    return d


def unavailable_decision(status: str) -> Decision:
    """The fail-closed answer when the PDP could not be reached."""
    return Decision(decision=Effect.DENY, reason=f"pdp unavailable: {status}")
