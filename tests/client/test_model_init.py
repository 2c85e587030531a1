"""The client's value classes are built by pdp_client._model._quick_init's __init__: it must
take every argument list exactly as the __init__ dataclass generated for them (kept in
GENERATED_INITS), with the same fields set to the same objects, the same errors, and the
instances as frozen as before."""

from __future__ import annotations

import copy
import inspect
import pickle
from dataclasses import FrozenInstanceError, InitVar, dataclass, field, fields, replace
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pdp_client import (
    AccessRequest,
    Action,
    Decision,
    Effect,
    Resource,
    RuleTrace,
    ServiceToken,
    Subject,
)
from pdp_client._model import GENERATED_INITS, _quick_init

MODELS: list[type[Any]] = [Subject, Action, Resource, AccessRequest, RuleTrace, Decision,
                           ServiceToken]
UNSET = object()  # a slot never set
VALUES: list[Any] = [None, "", "x", 0, 1, True, False, (), {}, {"a": 1}, [1], Effect.ALLOW,
                     Resource("doc"), object()]


def built(init: Any, cls: type[Any], args: tuple[Any, ...], kwargs: dict[str, Any]
          ) -> tuple[Any, ...]:
    """What ``init`` makes of these arguments: each field's object (a default factory's
    product by type and value, since each call makes a new one), or the error."""
    obj = object.__new__(cls)
    try:
        init(obj, *args, **kwargs)
    except TypeError as exc:
        return ("raised", type(exc), str(exc))
    given_ids = {id(v) for v in (*args, *kwargs.values())}
    out = []
    for f in fields(cls):
        value = getattr(obj, f.name, UNSET)
        if id(value) in given_ids or value is UNSET:
            out.append(("object", id(value)))
        else:  # a default: the same object, or a fresh one from the factory
            out.append(("default", type(value), value))
    return ("ok", tuple(out))


@st.composite
def arguments(draw: st.DrawFn, cls: type[Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
    names = [f.name for f in fields(cls)]
    positional = draw(st.lists(st.sampled_from(VALUES), max_size=len(names) + 1))
    keys = draw(st.lists(st.sampled_from([*names, "unknown"]), unique=True,
                         max_size=len(names) + 1))
    return tuple(positional), {k: draw(st.sampled_from(VALUES)) for k in keys}


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_every_argument_list_builds_what_the_generated_init_built(data: st.DataObject) -> None:
    cls = data.draw(st.sampled_from(MODELS))
    args, kwargs = data.draw(arguments(cls))
    assert built(cls.__init__, cls, args, kwargs) == built(GENERATED_INITS[cls], cls, args,
                                                           kwargs)


def test_the_signatures_are_the_generated_ones() -> None:
    for cls in MODELS:
        ours = inspect.signature(cls.__init__).parameters
        theirs = inspect.signature(GENERATED_INITS[cls]).parameters
        assert [(p.name, p.kind) for p in ours.values()] == [
            (p.name, p.kind) for p in theirs.values()], cls
        for f in fields(cls):
            if f.default_factory is f.default:  # (both MISSING: no factory)
                assert ours[f.name].default == theirs[f.name].default, (cls, f.name)
        assert cls.__init__.__qualname__ == f"{cls.__qualname__}.__init__"


def test_a_default_factory_is_called_for_each_instance() -> None:
    a, b = Subject("user", "alice"), Subject("user", "alice")
    assert a.properties == {} and a.properties is not b.properties
    assert Resource("doc").properties is not Resource("doc").properties
    mine: dict[str, Any] = {}
    assert Action("read", mine).properties is mine


def test_instances_stay_frozen_and_behave_as_dataclasses() -> None:
    resource = Resource("doc", "1", {"owner": "alice"})
    with pytest.raises(FrozenInstanceError):
        resource.id = "2"  # type: ignore[misc]
    assert not hasattr(resource, "__dict__")
    assert replace(resource, id="2") == Resource("doc", "2", {"owner": "alice"})
    assert pickle.loads(pickle.dumps(resource)) == resource  # noqa: S301 - our own bytes
    assert copy.deepcopy(resource) == resource and repr(resource).startswith("Resource(type=")
    decision = Decision(decision=Effect.ALLOW, rule_id="r")
    assert decision.allowed and hash(decision) == hash(Decision(decision=Effect.ALLOW,
                                                                rule_id="r"))
    with pytest.raises(TypeError, match="positional"):
        Decision(Effect.ALLOW)  # type: ignore[misc]  # keyword-only, as generated
    request = AccessRequest(resource=resource)
    assert (request.subject, request.action, request.context, request.service_token) == (
        None, None, None, None)
    assert "token" not in repr(ServiceToken(token="secret", expires_at=1, key_id="k", jti="j"))


def test_quick_init_refuses_what_it_would_not_reproduce() -> None:
    @dataclass(slots=True)
    class Thawed:
        a: int

    @dataclass(frozen=True)
    class Unslotted:
        a: int

    @dataclass(frozen=True, slots=True)
    class Checked:
        a: int

        def __post_init__(self) -> None:
            raise AssertionError

    @dataclass(frozen=True, slots=True)
    class WithInitVar:
        a: int
        b: InitVar[int] = 0

    @dataclass(frozen=True, slots=True)
    class Computed:
        a: int
        b: int = field(init=False, default=0)

    for cls in (Thawed, Unslotted, Checked, WithInitVar, Computed, int):
        with pytest.raises(TypeError):
            _quick_init(cls)
