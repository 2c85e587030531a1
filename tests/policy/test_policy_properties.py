"""Property tests: indexed engine == linear reference; cached == uncached; loader never crashes."""

from __future__ import annotations

import contextlib
import json
from fnmatch import fnmatchcase
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pdp.clock import FakeClock
from pdp.errors import BundleError
from pdp.policy import (
    Action,
    Bundle,
    DecisionCache,
    Effect,
    PolicyEngine,
    Request,
    Resource,
    Subject,
    compile_bundle,
    load_bundle,
)

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

ACTIONS = ["read", "write", "delete", "list"]
TYPES = ["doc", "img", "dir"]
IDS = ["a", "b", "ab", "c1"]
SUBJECT_TYPES = ["user", "svc"]
VALUES = [0, 1, 2, 2.0, 3, "x", "y", True, None, [1, "x"]]
PROPS = ["level", "tag"]

patterns = lambda names: st.sampled_from([*names, "*", "?", "???", "[ab]*", "r*", "d*"])  # noqa: E731

literal = st.sampled_from([0, 1, 2, 3, "x", "y", True])


def leaf() -> st.SearchStrategy[dict[str, Any]]:
    path = st.sampled_from([f"subject.properties.{p}" for p in PROPS] + ["context.level"])
    return st.one_of(
        st.builds(lambda p: {"exists": p}, path),
        st.builds(lambda p, v: {"attr": p, "eq": v}, path, literal),
        st.builds(lambda p, v: {"attr": p, "lt": v}, path, st.sampled_from([1, 2, "m"])),
        st.builds(lambda p, q: {"attr": p, "eq": {"attr": q}}, path, path),
        st.builds(lambda p, v: {"attr": p, "in": v}, path, st.lists(literal, max_size=3)),
    )


conditions = st.recursive(
    leaf(),
    lambda inner: st.one_of(
        st.builds(lambda c: {"not": c}, inner),
        st.builds(lambda cs: {"all": cs}, st.lists(inner, min_size=1, max_size=3)),
        st.builds(lambda cs: {"any": cs}, st.lists(inner, min_size=1, max_size=3)),
    ),
    max_leaves=5,
)


@st.composite
def rules(draw: st.DrawFn) -> list[dict[str, Any]]:
    out = []
    for i in range(draw(st.integers(0, 12))):
        rule: dict[str, Any] = {
            "id": f"r{i}",
            "effect": draw(st.sampled_from(["allow", "deny"])),
            "actions": draw(st.lists(patterns(ACTIONS), min_size=1, max_size=2)),
        }
        if draw(st.booleans()):
            rule["resources"] = {"type": draw(patterns(TYPES))}
            if draw(st.booleans()):
                rule["resources"]["ids"] = draw(st.lists(patterns(IDS), min_size=1, max_size=2))
        if draw(st.booleans()):
            subj: dict[str, Any] = {"type": draw(st.sampled_from([*SUBJECT_TYPES, "*"]))}
            if draw(st.booleans()):
                subj["ids"] = draw(st.lists(patterns(IDS), min_size=1, max_size=2))
            if draw(st.booleans()):
                subj["roles"] = ["team"]
            rule["subjects"] = subj
        if draw(st.booleans()):
            rule["when"] = draw(conditions)
        out.append(rule)
    return out


props = st.dictionaries(st.sampled_from(PROPS), st.sampled_from(VALUES), max_size=2)
requests = st.builds(
    lambda st_, sid, sp, a, t, rid, ctx: Request(
        Subject(st_, sid, sp), Action(a), Resource(t, rid), ctx
    ),
    st.sampled_from(SUBJECT_TYPES),
    st.sampled_from(IDS),
    props,
    st.sampled_from([*ACTIONS, "purge"]),
    st.sampled_from([*TYPES, "tmp"]),
    st.sampled_from(IDS),
    st.dictionaries(st.just("level"), st.sampled_from(VALUES), max_size=1),
)


def make_bundle(rule_list: list[dict[str, Any]]) -> Bundle:
    doc = {
        "metadata": {"name": "p", "revision": "1"},
        "roles": {"team": ["a", "c*"]},
        "rules": rule_list,
    }
    return load_bundle(json.dumps(doc))


# --- the plain linear reference -------------------------------------------------------

_MISSING = object()


class RefError(Exception):
    pass


def _get(req: Request, path: str) -> Any:
    root, *rest = path.split(".")
    obj: Any = req.context if root == "context" else req.subject.properties
    for key in rest[1:] if root == "subject" else rest:
        if not isinstance(obj, dict) or key not in obj:
            return _MISSING
        obj = obj[key]
    return obj


def _num(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _eq(a: Any, b: Any) -> bool:
    if type(a) is bool or type(b) is bool:
        return type(a) is type(b) and a == b
    if _num(a) and _num(b):
        return a == b
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_eq(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b


def _cond(c: dict[str, Any], req: Request) -> bool:
    if "not" in c:
        return not _cond(c["not"], req)
    if "all" in c:
        return all(_cond(x, req) for x in c["all"])
    if "any" in c:
        return any(_cond(x, req) for x in c["any"])
    if "exists" in c:
        return _get(req, c["exists"]) is not _MISSING
    a = _get(req, c["attr"])
    op = next(k for k in c if k != "attr")
    b = c[op]
    if isinstance(b, dict):
        b = _get(req, b["attr"])
    if a is _MISSING or b is _MISSING:
        return False
    if op == "eq":
        return _eq(a, b)
    if op == "in":
        return any(_eq(a, x) for x in b)
    if (isinstance(a, str) and isinstance(b, str)) or (_num(a) and _num(b)):
        return a < b
    raise RefError


def _matches(patterns: tuple[str, ...], value: str) -> bool:
    return any(fnmatchcase(value, p) for p in patterns)


def reference(bundle: Bundle, req: Request) -> tuple[Effect, str]:
    for rule in bundle.rules:
        s = rule.subjects
        members = s.ids + tuple(m for r in s.roles for m in bundle.roles[r])
        if not (
            _matches(rule.actions, req.action.name)
            and fnmatchcase(req.resource.type, rule.resources.type)
            and (not rule.resources.ids or _matches(rule.resources.ids, req.resource.id))
            and fnmatchcase(req.subject.type, s.type)
            and (not (s.ids or s.roles) or _matches(members, req.subject.id))
        ):
            continue
        try:
            if rule.when is None or _cond(dict(rule.when), req):
                return rule.effect, rule.id
        except RefError:
            return Effect.DENY, rule.id
    return Effect.DENY, ""


@FAST
@given(rules(), st.lists(requests, min_size=1, max_size=8))
def test_indexed_engine_agrees_with_linear_first_match(rule_list: Any, reqs: Any) -> None:
    bundle = make_bundle(rule_list)
    policy = compile_bundle(bundle, version="v")
    for req in reqs:
        got = policy.evaluate(req, now=0.0)
        assert (got.effect, got.rule_id) == reference(bundle, req), (rule_list, req, got)


@FAST
@given(
    rules(), st.lists(requests, min_size=1, max_size=6), st.lists(st.integers(0, 5), max_size=12)
)
def test_cached_answers_equal_uncached(rule_list: Any, reqs: Any, order: Any) -> None:
    policy = compile_bundle(make_bundle(rule_list), version="v")
    clock = FakeClock()
    engine = PolicyEngine(cache=DecisionCache(clock=clock, max_size=4), clock=clock)
    engine.activate(policy)
    for i in [*range(len(reqs)), *order, *range(len(reqs))]:
        req = reqs[i % len(reqs)]
        got = engine.decide(req)
        want = policy.evaluate(req, now=clock())
        assert (got.effect, got.rule_id, got.reason) == (want.effect, want.rule_id, want.reason)


def _loads(data: Any) -> None:
    with contextlib.suppress(BundleError):
        load_bundle(data)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes_give_a_bundle_or_a_bundle_error(data: bytes) -> None:
    _loads(data)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(
            st.sampled_from(
                [
                    "metadata",
                    "rules",
                    "name",
                    "revision",
                    "id",
                    "effect",
                    "actions",
                    "when",
                    "attr",
                    "eq",
                    "all",
                    "subjects",
                    "resources",
                    "type",
                    "ids",
                    "segments",
                    "roles",
                    "x",
                ]
            ),
            inner,
            max_size=4,
        )
    ),
    max_leaves=20,
)


@settings(max_examples=200, deadline=None)
@given(json_values)
def test_random_json_and_yaml_give_a_bundle_or_a_bundle_error(value: Any) -> None:
    _loads(json.dumps(value))
    _loads(yaml.safe_dump(value))


@FAST
@given(rules(), st.data())
def test_mutated_valid_bundles_give_a_bundle_or_a_bundle_error(rule_list: Any, data: Any) -> None:
    doc = {"metadata": {"name": "p", "revision": "1"}, "roles": {"team": ["a"]}, "rules": rule_list}
    text = yaml.safe_dump(doc)
    pos = data.draw(st.integers(0, max(0, len(text) - 1)))
    junk = data.draw(
        st.sampled_from(
            [
                "",
                ":",
                "- ",
                "{",
                "&a ",
                "*a",
                "!!python/name:os.system ",
                "\t",
                "'",
                "[",
                "\x00",
                "<<: ",
            ]
        )
    )
    _loads(text[:pos] + junk + text[pos + 1 :])


def test_attribute_equals_attribute_is_json_equality_for_every_pair_of_values() -> None:
    """``eq`` between two attributes (the compiled fast path compares two strings itself):
    every pair of values, absent ones included, against the reference's JSON equality
    (True is not 1, 2 is 2.0, a list is equal item by item)."""
    engine = PolicyEngine()
    engine.activate(compile_bundle(make_bundle([{
        "id": "same", "effect": "allow", "actions": ["read"],
        "when": {"attr": "subject.properties.level", "eq": {"attr": "context.level"}}}]),
        version="v"))
    absent = object()
    values = [*VALUES, "2", [1, "x"], [True, "x"], absent]
    for a in values:
        for b in values:
            req = Request(Subject("user", "a", {} if a is absent else {"level": a}),
                          Action("read"), Resource("doc", "a"),
                          {} if b is absent else {"level": b})
            expected = a is not absent and b is not absent and _eq(a, b)
            assert engine.decide(req).allowed is expected, (a, b)
