"""The client's cheap wire conversions (messages filled in place, Structs without ParseDict for
plain JSON values, Decisions without keyword binding) produce the same bytes, and the same
errors, as the plain way they replaced, which is kept here as the reference."""

from __future__ import annotations

import enum
import math
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from dataclasses import FrozenInstanceError, fields
from types import MappingProxyType
from typing import Any

import pytest
from google.protobuf import json_format, struct_pb2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pdp_client import AccessRequest, Action, Decision, Effect, Resource, RuleTrace, Subject
from pdp_client._client import batch_to_wire, single_to_wire
from pdp_client._errors import InvalidRequestError
from pdp_client._model import _fields as ref_fields  # unchanged helpers: not copied
from pdp_client._model import _struct, decision_from_wire, request_to_wire
from pdp_client._model import _text as ref_text
from pdp_client._proto import authorization_pb2 as pb

PROPERTY = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# --- the reference: the plain conversions as they were --------------------------------------

def ref_struct(value: Any, where: str) -> struct_pb2.Struct | None:
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


def ref_subject(value: Any, where: str) -> pb.Subject:
    f = ref_fields(value, Subject, ("type", "id", "properties"), where)
    return pb.Subject(type=ref_text(f["type"], f"{where}.type"),
                      id=ref_text(f["id"], f"{where}.id"),
                      properties=ref_struct(f["properties"], f"{where}.properties"))


def ref_action(value: Any, where: str) -> pb.Action:
    if isinstance(value, str):
        return pb.Action(name=value)
    f = ref_fields(value, Action, ("name", "properties"), where)
    return pb.Action(name=ref_text(f["name"], f"{where}.name"),
                     properties=ref_struct(f["properties"], f"{where}.properties"))


def ref_resource(value: Any, where: str) -> pb.Resource:
    f = ref_fields(value, Resource, ("type", "id", "properties"), where)
    return pb.Resource(type=ref_text(f["type"], f"{where}.type"),
                       id=ref_text(f["id"], f"{where}.id"),
                       properties=ref_struct(f["properties"], f"{where}.properties"))


def ref_request(item: Any, *, explain: Any = False, min_bundle_sequence: Any = 0,
                where: str = "request") -> pb.AuthorizeRequest:
    if item is None:
        return pb.AuthorizeRequest(explain=explain, min_bundle_sequence=min_bundle_sequence)
    keys = ("subject", "action", "resource", "context", "service_token")
    f = ref_fields(item, AccessRequest, keys, where)
    if min_bundle_sequence < 0:
        raise InvalidRequestError(f"{where}.min_bundle_sequence: must not be negative")
    msg = pb.AuthorizeRequest(
        context=ref_struct(f["context"], f"{where}.context"),
        service_token=ref_text(f["service_token"], f"{where}.service_token"),
        explain=explain, min_bundle_sequence=min_bundle_sequence)
    if f["subject"] is not None:
        msg.subject.CopyFrom(ref_subject(f["subject"], f"{where}.subject"))
    if f["action"] is not None:
        msg.action.CopyFrom(ref_action(f["action"], f"{where}.action"))
    if f["resource"] is not None:
        msg.resource.CopyFrom(ref_resource(f["resource"], f"{where}.resource"))
    return msg


def ref_single(subject: Any, action: Any, resource: Any, context: Any, service_token: Any,
               explain: Any, min_bundle_sequence: Any) -> pb.AuthorizeRequest:
    if action is None or resource is None:
        raise InvalidRequestError("action and resource are required")
    if subject is None and not service_token:
        raise InvalidRequestError("a subject or a service_token is required")
    item = {"subject": subject, "action": action, "resource": resource, "context": context,
            "service_token": service_token}
    return ref_request(item, explain=explain, min_bundle_sequence=min_bundle_sequence)


def ref_batch(requests: Any, defaults: Any, explain: Any,
              min_bundle_sequence: Any) -> pb.AuthorizeBatchRequest:
    items = [ref_request(r, explain=explain, min_bundle_sequence=min_bundle_sequence,
                         where=f"requests[{i}]") for i, r in enumerate(requests)]
    msg = pb.AuthorizeBatchRequest(requests=items)
    if defaults is not None:
        msg.defaults.CopyFrom(ref_request(defaults, explain=explain,
                                          min_bundle_sequence=min_bundle_sequence,
                                          where="defaults"))
    return msg


def ref_decision(msg: pb.AuthorizeResponse) -> Decision:
    effect = Effect.ALLOW if msg.decision == pb.DECISION_ALLOW else Effect.DENY
    return Decision(decision=effect, rule_id=msg.rule_id, bundle_version=msg.bundle_version,
                    reason=msg.reason, decision_id=msg.decision_id, cached=msg.cached,
                    explanation=tuple(RuleTrace(t.rule_id, t.effect, t.matched, t.failed_part,
                                                t.detail) for t in msg.explanation))


# --- comparing outcomes ----------------------------------------------------------------------

def outcome(fn: Callable[..., Any], *args: Any, **kw: Any) -> tuple[Any, ...]:
    """What a call gives: the message's bytes, or the exception's type and text. The bytes are
    the deterministic ones (map entries sorted): they show presence, NaN and -0.0 exactly, but
    not the order of a map's entries, which protobuf leaves unspecified (the reference's copies
    reorder them; the server reads them into a dict)."""
    try:
        got = fn(*args, **kw)
    except Exception as exc:
        return ("raised", type(exc), str(exc))
    if got is None:
        return ("none",)
    return ("ok", type(got), got.SerializeToString(deterministic=True))


def assert_same(new: Callable[..., Any], ref: Callable[..., Any], *args: Any, **kw: Any) -> None:
    assert outcome(new, *args, **kw) == outcome(ref, *args, **kw)


# --- odd values --------------------------------------------------------------------------------

class Colour(enum.IntEnum):
    RED = 1


class Mood(enum.StrEnum):
    GLAD = "glad"


class Key(str):
    pass


class Real(float):
    pass


class Hollow(str):
    """A str that claims to be empty."""

    def __len__(self) -> int:
        return 0

    def __bool__(self) -> bool:
        return False


class Frozen(Mapping[str, Any]):
    """A read-only Mapping that is not a dict."""

    def __init__(self, data: dict[str, Any]) -> None:
        self._data = data

    def __getitem__(self, key: str) -> Any:
        return self._data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)


class Broken(Mapping[str, Any]):
    """A Mapping whose iteration fails."""

    def __getitem__(self, key: str) -> Any:
        raise KeyError(key)

    def __iter__(self) -> Iterator[str]:
        raise TypeError("no iteration here")

    def __len__(self) -> int:
        return 1


def nested(depth: int, kind: str) -> Any:
    value: Any = "leaf"
    for _ in range(depth):
        value = {"k": value} if kind == "dict" else [value]
    return value


def cyclic() -> dict[str, Any]:
    d: dict[str, Any] = {}
    d["self"] = d
    return d


ODD_LEAVES: list[Any] = [
    b"x", bytearray(b"x"), {1, 2}, frozenset(), object(), 1j, Colour.RED, Mood.GLAD, Key("k"),
    Real(1.5), math.nan, math.inf, -math.inf, -0.0, 2**53 + 1, 10**308, 10**400, -(10**400),
    "\ud800", "", "ü€𝄞", True, False, 0, None, Effect.ALLOW, range(2), iter([1]),
]

STRUCT_TABLE: list[Any] = [
    None, {}, {"owner": "alice"}, {"a": 1, "b": 2.5, "c": True, "d": None, "e": ""},
    {"a": {}}, {"a": []}, {"a": ()}, {"a": (1, "x", None)}, {"a": {"b": [1, {"c": None}]}},
    {"a": [[], [[]], {}]}, OrderedDict(a=1), {"a": OrderedDict(b=1)},
    MappingProxyType({"a": 1}), {"a": MappingProxyType({"b": 1})}, Frozen({"a": [1, {"b": 2}]}),
    {"a": Frozen({"b": 1})}, Broken(), {1: "x"}, {None: "x"}, {(1, 2): "x"}, {b"k": 1},
    {Key("k"): 1}, {"ok": 1, 2: "bad"}, {"\ud800": 1}, {"a": 1, "b": b"x", "c": 10**400},
    {"a": 10**400, "b": b"x"}, {"a": [1, 2, b"x"]}, {"a": [1, 10**400]},
    "not a mapping", 42, ["a", 1], [("a", 1)], (), cyclic(), {"a": cyclic()},
    *({"v": leaf} for leaf in ODD_LEAVES), *({"v": [leaf]} for leaf in ODD_LEAVES),
    *({"v": {"w": leaf}} for leaf in ODD_LEAVES),
    *(nested(d, kind) for d in (1, 2, 30, 31, 32, 33, 34, 47, 48, 49, 50, 51, 52, 120)
      for kind in ("dict", "list") if kind == "list" or d > 0),
    *({"v": nested(d, kind)} for d in (30, 31, 32, 33, 48, 49, 50, 51)
      for kind in ("dict", "list")),
]


@pytest.mark.parametrize("value", STRUCT_TABLE, ids=lambda v: type(v).__name__)
def test_struct_matches_parse_dict_on_a_table(value: Any) -> None:
    assert_same(_struct, ref_struct, value, "where")


def test_the_table_holds_accepted_and_refused_values_and_the_depth_limit() -> None:
    kinds = [outcome(ref_struct, v, "w")[0] for v in STRUCT_TABLE]
    assert kinds.count("ok") > 40 and kinds.count("raised") > 40
    assert "Message too deep" in outcome(ref_struct, nested(60, "dict"), "w")[2]
    assert outcome(ref_struct, {"v": nested(48, "list")}, "w")[0] == "ok"


# Keys and leaves mostly plain JSON (the fast path), sometimes odd (the ParseDict path).
keys = st.one_of(st.text(max_size=6), st.sampled_from(["", "a", "\ud800", Key("k"), 1, None]))
leaves = st.one_of(
    st.none(), st.booleans(), st.integers(), st.integers(min_value=-(2**1100), max_value=2**1100),
    st.floats(), st.text(max_size=8), st.sampled_from(ODD_LEAVES))
json_like = st.recursive(
    leaves,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.lists(inner, max_size=3).map(tuple),
        st.dictionaries(keys, inner, max_size=4),
        st.dictionaries(st.text(max_size=3), inner, max_size=2).map(OrderedDict),
        st.dictionaries(st.text(max_size=3), inner, max_size=2).map(MappingProxyType)),
    max_leaves=25)
mappings = st.one_of(st.dictionaries(keys, json_like, max_size=5),
                     st.dictionaries(st.text(max_size=4), json_like, max_size=3).map(Frozen))
plain_mappings = st.dictionaries(
    st.text(max_size=6),
    st.recursive(st.one_of(st.none(), st.booleans(), st.integers(min_value=-(2**64),
                                                                 max_value=2**64),
                           st.floats(), st.text(max_size=8)),
                 lambda inner: st.one_of(st.lists(inner, max_size=4),
                                         st.dictionaries(st.text(max_size=4), inner,
                                                         max_size=4)),
                 max_leaves=30),
    max_size=6)


@PROPERTY
@given(mappings)
def test_struct_matches_parse_dict_on_any_value(value: Any) -> None:
    assert_same(_struct, ref_struct, value, "where")


@PROPERTY
@given(plain_mappings)
def test_struct_accepts_every_plain_json_value(value: dict[str, Any]) -> None:
    assert outcome(ref_struct, value, "w")[0] == "ok"
    assert_same(_struct, ref_struct, value, "where")


# --- requests ---------------------------------------------------------------------------------

SUBJECTS: list[Any] = [
    None, Subject("user", "alice"), Subject("user", "alice", {"dept": "eng", "level": 3}),
    Subject("", ""), Subject("", "", {}), Subject("u", "a", None),  # type: ignore[arg-type]
    Subject(None, None),  # type: ignore[arg-type]
    Subject(1, "a"),  # type: ignore[arg-type]
    Subject("u", "a", {"x": b"bad"}), Subject("u", "a", "bad"),  # type: ignore[arg-type]
    Subject("\ud800", "\udc00"), Subject(Key("u"), "a"), Subject(Hollow("u"), Hollow("a")),
    {}, {"type": "user"},
    {"type": "user", "id": "bob", "properties": {"a": [1]}}, {"typo": "user"}, "alice", 3,
]
ACTIONS: list[Any] = [
    None, "read", "", Key("read"), Hollow("read"), "\ud800", Action(Hollow("r")),
    Action("read"), Action("read", {"why": "audit"}),
    Action(""), Action(None), Action(7), Action("r", 1), {}, {"name": "w"},  # type: ignore[arg-type]
    {"name": "w", "properties": None}, {"nom": "w"}, 5,
]
RESOURCES: list[Any] = [
    None, Resource("doc"), Resource("doc", "1", {"owner": "alice"}), Resource("", "", {}),
    Resource("doc", properties=None),  # type: ignore[arg-type]
    Resource("doc", 1),  # type: ignore[arg-type]
    Resource("doc", "1", {"n": 10**400}), Resource("doc", "\ud800"), Resource("\ud800", "\udc00"),
    Resource("\ud800", "1", {"a": b"x"}), Resource(Hollow("d"), Hollow("1")), {},
    {"type": "doc"},
    {"type": "doc", "extra": 1}, MappingProxyType({"type": "doc", "id": "2"}), ["doc"],
]
CONTEXTS: list[Any] = [None, {}, {"ip": "10.0.0.1"}, {"a": {"b": [1, 2]}}, {"a": b"x"}, "ctx",
                       Frozen({"a": 1})]
TOKENS: list[Any] = [None, "", "tok", "\ud800", 5, Key("t"), Hollow("t")]
FLAGS: list[tuple[Any, Any]] = [
    (False, 0), (True, 7), (None, 0), (False, None), (1, 0), ("yes", 0), (False, -1),
    (False, 1.5), (False, 2**64), (False, "3"), ("", 0), (0.0, 0), ([], 0), (None, None),
]

requests = st.one_of(
    st.none(),
    st.builds(AccessRequest, subject=st.sampled_from(SUBJECTS), action=st.sampled_from(ACTIONS),
              resource=st.sampled_from(RESOURCES), context=st.sampled_from(CONTEXTS),
              service_token=st.sampled_from(TOKENS)),
    st.fixed_dictionaries({}, optional={
        "subject": st.sampled_from(SUBJECTS), "action": st.sampled_from(ACTIONS),
        "resource": st.sampled_from(RESOURCES), "context": st.sampled_from(CONTEXTS),
        "service_token": st.sampled_from(TOKENS), "unknown": st.just(1)}),
    st.sampled_from(["request", 3, Subject("u", "a")]),
)
flags = st.sampled_from(FLAGS)


@PROPERTY
@given(requests, flags)
def test_request_to_wire_matches(item: Any, flag: tuple[Any, Any]) -> None:
    explain, seq = flag
    assert_same(request_to_wire, ref_request, item, explain=explain, min_bundle_sequence=seq,
                where="here")


@PROPERTY
@given(st.sampled_from(SUBJECTS), st.sampled_from(ACTIONS), st.sampled_from(RESOURCES),
       st.sampled_from(CONTEXTS), st.sampled_from(TOKENS), flags)
def test_single_to_wire_matches(subject: Any, action: Any, resource: Any, context: Any,
                                token: Any, flag: tuple[Any, Any]) -> None:
    assert_same(single_to_wire, ref_single, subject, action, resource, context, token, *flag)


@PROPERTY
@given(st.lists(requests, max_size=4), requests, flags)
def test_batch_to_wire_matches(items: list[Any], defaults: Any, flag: tuple[Any, Any]) -> None:
    assert_same(batch_to_wire, ref_batch, items, defaults, *flag)


def test_every_table_combination_of_one_request_matches() -> None:
    for subject in SUBJECTS:
        for action in ACTIONS:
            for resource in RESOURCES:
                item = AccessRequest(subject=subject, action=action, resource=resource)
                assert_same(request_to_wire, ref_request, item)
                assert_same(single_to_wire, ref_single, subject, action, resource, None, "t",
                            False, 0)


def test_presence_is_kept() -> None:
    """A part given is present even when empty; None leaves it unset; {} properties are set."""
    msg = request_to_wire(AccessRequest(subject={}, action={}, resource=Resource("d"),
                                        context={}))
    assert msg.HasField("subject") and msg.HasField("action") and msg.HasField("resource")
    assert msg.HasField("context") and msg.resource.HasField("properties")
    assert not msg.subject.HasField("properties")
    bare = request_to_wire(AccessRequest(resource=Resource("d", properties=None)))  # type: ignore[arg-type]
    assert not bare.HasField("subject") and not bare.HasField("context")
    assert not bare.resource.HasField("properties")
    batch = batch_to_wire([None], AccessRequest(), False, 0)  # type: ignore[list-item]
    assert batch.HasField("defaults") and len(batch.requests) == 1
    assert not batch_to_wire([], None, False, 0).HasField("defaults")


def test_a_batch_names_the_first_bad_item_as_before() -> None:
    items: list[Any] = [AccessRequest(resource=Resource("d")), {"resource": {"type": 1}},
                        {"bad": 1}]
    with pytest.raises(InvalidRequestError, match=r"requests\[1\]\.resource\.type"):
        batch_to_wire(items, None, False, 0)
    assert_same(batch_to_wire, ref_batch, items, None, False, 0)
    assert_same(batch_to_wire, ref_batch, items[:1], {"action": 3}, False, 0)


# --- decisions ------------------------------------------------------------------------------------

responses = st.builds(
    pb.AuthorizeResponse, decision=st.sampled_from([0, 1, 2, 99]), rule_id=st.text(max_size=5),
    bundle_version=st.text(max_size=5), reason=st.text(max_size=5),
    decision_id=st.text(max_size=5), cached=st.booleans(),
    explanation=st.lists(st.builds(pb.RuleTrace, rule_id=st.text(max_size=3),
                                   effect=st.sampled_from(["allow", "deny"]),
                                   matched=st.booleans(), failed_part=st.text(max_size=3),
                                   detail=st.text(max_size=5)), max_size=3))


@PROPERTY
@given(responses)
def test_decision_from_wire_matches_the_constructor(msg: pb.AuthorizeResponse) -> None:
    got, want = decision_from_wire(msg), ref_decision(msg)
    assert got == want and repr(got) == repr(want) and hash(got) == hash(want)
    assert type(got) is Decision and got.allowed == want.allowed and bool(got) == bool(want)
    for f in fields(Decision):
        assert getattr(got, f.name) == getattr(want, f.name)
        assert type(getattr(got, f.name)) is type(getattr(want, f.name))
    for a, b in zip(got.explanation, want.explanation, strict=True):
        assert type(a) is RuleTrace and a == b and repr(a) == repr(b) and hash(a) == hash(b)


def test_a_decision_from_wire_is_still_frozen() -> None:
    msg = pb.AuthorizeResponse(decision=pb.DECISION_ALLOW, rule_id="r",
                               explanation=[pb.RuleTrace(rule_id="r", matched=True)])
    got = decision_from_wire(msg)
    with pytest.raises(FrozenInstanceError):
        got.rule_id = "other"  # type: ignore[misc]
    with pytest.raises(FrozenInstanceError):
        got.explanation[0].detail = "x"  # type: ignore[misc]
    assert not hasattr(got, "__dict__") and got.allowed
