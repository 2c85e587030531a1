"""Big-bundle paths of the loader and compiler: JSON read rule by rule, repeated rule parts
validated once and shared, the canonical digest unchanged, compiled policies that free; and
what a full decision cache keeps per entry."""

from __future__ import annotations

import copy
import gc
import hashlib
import itertools
import json
import sys
import types
import weakref
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from pdp.clock import FakeClock
from pdp.errors import BundleError, BundleTooLargeError
from pdp.policy import (
    Action,
    Bundle,
    Decision,
    DecisionCache,
    Effect,
    Limits,
    Request,
    Resource,
    ResourceMatch,
    Rule,
    Subject,
    compile_bundle,
    conditions,
    load_bundle,
    load_bundle_file,
    loader,
)

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "bundle.yaml"

OWNER = {"attr": "resource.properties.owner", "eq": {"attr": "subject.id"}}


def _doc(n: int = 6) -> dict[str, Any]:
    rules = [
        {"id": f"r{i}", "effect": "allow" if i % 2 else "deny",
         "subjects": {"type": "user"}, "actions": ["read", f"act{i % 3}"],
         "resources": {"type": f"kind{i}"}, "when": copy.deepcopy(OWNER)}
        for i in range(n)
    ]
    return {"metadata": {"name": "big", "revision": "1"}, "rules": rules}


def _error(doc: Any) -> BundleError:
    with pytest.raises(BundleError) as info:
        load_bundle(json.dumps(doc))
    return info.value


def test_the_example_bundle_keeps_its_digest() -> None:
    # Signatures are over this digest: the canonical form must never change.
    bundle = load_bundle_file(EXAMPLE)
    assert bundle.digest == "9c8a994e160775e031d0dc17826e4554072d1851a8ed11b9b3728361346c986c"
    assert hashlib.sha256(bundle.canonical_bytes()).hexdigest() == bundle.digest


def _spelled_out(bundle: Bundle) -> dict[str, Any]:
    """The bundle as a document with every field spelled out: what its digest is over."""
    return {
        "metadata": {"name": bundle.name, "revision": bundle.revision},
        "roles": {k: list(v) for k, v in bundle.roles.items()},
        "segments": {k: list(v) for k, v in bundle.segments.items()},
        "rules": [{
            "id": r.id, "effect": "allow" if r.effect is Effect.ALLOW else "deny",
            "description": r.description, "actions": list(r.actions),
            "subjects": {"type": r.subjects.type, "ids": list(r.subjects.ids),
                         "roles": list(r.subjects.roles)},
            "resources": {"type": r.resources.type, "ids": list(r.resources.ids)},
            "when": None if r.when is None else conditions.canonical(r.when),
        } for r in bundle.rules],
    }


_TEXT = st.text(st.characters(codec="utf-8"), min_size=1, max_size=8)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(_TEXT, st.text(st.characters(codec="utf-8"), max_size=8), _TEXT,
                          st.sampled_from([None, OWNER, {"attr": "subject.properties.n",
                                                         "in": [3.0, 2.5, "\u2028", True]}])),
                max_size=12, unique_by=lambda t: t[0]))
def test_the_canonical_form_is_json_dumps_of_the_spelled_out_bundle(rows: list[Any]) -> None:
    # Ids, descriptions and types with quotes, backslashes, control characters and any
    # code point: the canonical form is byte for byte what json.dumps makes of the bundle.
    rules = [{"id": rid, "effect": "allow" if i % 2 else "deny", "description": text,
              "actions": ["read", rid], "subjects": {"type": "user", "roles": ["team"]},
              "resources": {"type": rtype, "ids": [rid]}, **({"when": when} if when else {})}
             for i, (rid, text, rtype, when) in enumerate(rows)]
    doc = {"metadata": {"name": "n\"1", "revision": "r\u00e9"}, "roles": {"team": ["a\\"]},
           "segments": {"corp": ["10.0.0.0/8"]}, "rules": rules}
    try:
        bundle = load_bundle(json.dumps(doc))
    except BundleError:  # a type or id that is not a valid pattern
        assume(False)
        raise
    expected = json.dumps(_spelled_out(bundle), sort_keys=True, separators=(",", ":"),
                          ensure_ascii=False).encode("utf-8")
    assert bundle.canonical_bytes() == expected
    assert bundle.digest == hashlib.sha256(expected).hexdigest()


def test_a_bundle_encoded_and_compiled_in_several_pieces() -> None:
    # The rules are encoded and compiled 4,096 at a time: 9,000 rules make three pieces.
    doc = _doc(9000)
    doc["rules"].append({"id": "last", "effect": "allow", "actions": ["read"],
                         "resources": {"type": "kind4100"}})  # a type's second rule
    bundle = load_bundle(json.dumps(doc))
    expected = json.dumps(_spelled_out(bundle), sort_keys=True, separators=(",", ":"),
                          ensure_ascii=False).encode("utf-8")
    assert bundle.canonical_bytes() == expected
    assert bundle.digest == hashlib.sha256(expected).hexdigest()
    policy = compile_bundle(bundle, version="1-a")

    def decide(rtype: str, owner: str) -> str:
        return policy.evaluate(Request(Subject("user", "alice"), Action("read"),
                                       Resource(rtype, "d", {"owner": owner})), now=0.0).rule_id

    assert [decide(f"kind{i}", "alice") for i in (0, 4095, 4096, 8191, 8192, 8999)] == [
        "r0", "r4095", "r4096", "r8191", "r8192", "r8999"]
    assert decide("kind4100", "bob") == "last"
    assert decide("kind9000", "alice") == ""


def test_the_c_helpers_refuse_what_is_not_a_rule_of_the_loader() -> None:
    # canonical_rules and compile_rules read Rules through their slots: anything else is a
    # TypeError naming it, never a read of the wrong memory.
    from pdp.policy._json import canonical_rules, compile_rules

    good = load_bundle(json.dumps(_doc(1))).rules[0]
    odd = [("r", "allow"), Rule(id=1, effect=Effect.ALLOW, actions=("read",)),  # type: ignore[arg-type]
           Rule(id="r", effect=Effect.ALLOW, actions=("read",), resources=("doc",))]  # type: ignore[arg-type]
    for bad, message in zip(odd, ("expected a Rule", "id a str", "a ResourceMatch"), strict=True):
        with pytest.raises(TypeError, match=message):
            canonical_rules([good, bad], 0, 2, {}, lambda value, kind: "[]", json.dumps)
        with pytest.raises(TypeError, match=message):
            compile_rules([good, bad], 0, 2, "v", (lambda s: None, lambda i: None,
                                                    lambda a, w: (None, None), lambda t: None),
                          ({}, {}, {}, [], {}, []))


def test_json_with_rules_last_or_first_loads_to_the_same_bundle() -> None:
    doc = _doc()
    rules_first = {"rules": doc["rules"], "metadata": doc["metadata"]}
    streamed, whole = load_bundle(json.dumps(doc)), load_bundle(json.dumps(rules_first))
    assert streamed.digest == whole.digest == load_bundle(json.dumps(doc, indent=2)).digest
    assert streamed.rules == whole.rules


def test_rules_alike_share_their_parts() -> None:
    bundle = load_bundle(json.dumps(_doc()))
    first, later = bundle.rules[0], bundle.rules[3]
    assert first.when is later.when and first.subjects is later.subjects
    assert first.actions is later.actions


def test_a_fault_in_a_part_met_before_is_named_at_its_rule() -> None:
    doc = _doc()
    doc["rules"][4]["when"] = {"attr": "resource.properties.owner", "gte": {"attr": "subject.id"}}
    err = _error(doc)
    assert err.location == 'rules[4] (id "r4").when'
    assert err.message == 'unknown operator "gte"'
    doc = _doc()
    doc["rules"][5]["actions"] = ["read", 1]
    err = _error(doc)
    assert err.location == 'rules[5] (id "r5").actions[1]'


def test_look_alike_values_are_not_taken_for_each_other() -> None:
    # repr() keys tell 1, 1.0 and True apart: each keeps its own canonical form.
    doc = _doc(3)
    for rule, value in zip(doc["rules"], (1, 1.0, True), strict=True):
        rule["when"] = {"attr": "subject.properties.level", "eq": value}
    rules = load_bundle(json.dumps(doc)).rules
    assert [r.when["eq"] for r in rules if r.when] == [1, 1.0, True]
    assert type(rules[2].when["eq"]) is bool if rules[2].when else False


def test_duplicate_keys_and_trailing_garbage_are_still_refused() -> None:
    text = json.dumps(_doc(2))
    with pytest.raises(BundleError, match="duplicate key 'id'"):
        load_bundle(text.replace('"id": "r1"', '"id": "r1", "id": "r9"'))
    with pytest.raises(BundleError, match="invalid"):
        load_bundle(text + " {}")


def test_rules_whose_parts_were_met_before_skip_the_full_path(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # _doc(6): rules 3-5 repeat the actions, subjects and condition of rules 0-2.
    full = []
    rule = loader._Validator.rule
    monkeypatch.setattr(loader._Validator, "rule",
                        lambda self, raw, *a: full.append(raw["id"]) or rule(self, raw, *a))
    bundle = load_bundle(json.dumps(_doc()))
    assert full == ["r0", "r1", "r2"]
    assert [r.id for r in bundle.rules] == [f"r{i}" for i in range(6)]
    assert [r.resources.type for r in bundle.rules] == [f"kind{i}" for i in range(6)]
    assert bundle.rules[3] == Rule(
        id="r3", effect=Effect.ALLOW, actions=("read", "act0"),
        subjects=bundle.rules[0].subjects, resources=ResourceMatch("kind3"), when=OWNER)


# The fast path for a rule whose parts were all met before (_json.c, quick_rule) against the
# full path: every rule made of valid parts (so that parts repeat), followed by a copy of it
# with one part replaced by a value from a pool of faulty ones and look-alikes of the valid
# ones. Every part of the copy but the replaced one was met before, so the fast path sees it
# first; the two paths must load the same bundle or refuse it with the same error.
_MISSING = object()
_LEVEL_1 = {"attr": "subject.properties.level", "eq": 1}
_VALID: dict[str, list[Any]] = {
    "effect": ["allow", "deny"],
    "description": [_MISSING, "text"],
    "actions": [["read"], ["read", "write"]],
    "subjects": [{"type": "user"}, _MISSING],
    "resources": [{"type": "doc"}, {"type": "doc", "ids": ["a", "b*"]}, {"type": "d*"}],
    "when": [OWNER, _MISSING, _LEVEL_1,
             {"time_window": {"days": ["mon"], "from": "08:00", "to": "17:00", "tz": "UTC"}},
             {"not": {"peer_in_segment": "mesh"}}],
}
_REPLACED: dict[str, list[Any]] = {
    "id": ["", 1, None, "r0", _MISSING],
    "effect": ["Allow", 1, None, _MISSING],
    "description": ["", 1, None],
    "actions": ["read", ["re*"], [], ["[a"], ["read", True], 1, None, {"a": 1}, _MISSING],
    "subjects": [{"type": "user", "ids": ["a*"]}, {"roles": ["team"]}, {"roles": ["nope"]},
                 {"type": 1}, {}, {"type": "u", "extra": 1}, [], "user", {"type": "[ab]"},
                 _MISSING],
    "resources": [{"type": "[ab]x"}, {"type": "a]"}, {"type": "["}, {"type": ""},
                  {"type": 1}, {"ids": ["x"]}, {}, {"type": "doc", "ids": []},
                  {"type": "doc", "ids": "x"}, {"type": "doc", "ids": [1]},
                  {"type": "doc", "ids": ["a", "b*"], "x": 1}, {"type": "kind9"}, [], None,
                  _MISSING],
    "when": [{**_LEVEL_1, "eq": 1.0}, {**_LEVEL_1, "eq": True}, {**_LEVEL_1, "eq": "1"},
             {"attr": "subject.properties.level", "gte": 1}, {"peer_in_segment": "mesh"},
             OWNER, None, {}, _MISSING],
    "extra": [1],
    "": [[], "rule", None, 1],  # the whole rule: not a mapping at all
}


def _outcomes(rules: list[Any]) -> tuple[tuple[Any, ...], tuple[Any, ...]]:
    """What loading ``rules`` gives with the fast path and with the full path alone."""
    text = json.dumps({"metadata": {"name": "p", "revision": "1"}, "roles": {"team": ["a"]},
                       "segments": {"mesh": ["10.0.0.0/8"]}, "rules": rules})

    def outcome() -> tuple[Any, ...]:
        try:
            b = load_bundle(text)
        except BundleError as exc:
            return ("refused", str(exc))
        # repr() tells 1, 1.0 and True apart inside conditions, where == does not.
        return ("loaded", b.digest, repr(b.rules), b.reads_clock, b.reads_peer)

    with_fast_path = outcome()
    saved = loader._Validator.quick_rule
    loader._Validator.quick_rule = lambda self, raw, flags: None  # type: ignore[method-assign]
    try:
        return with_fast_path, outcome()
    finally:
        loader._Validator.quick_rule = saved  # type: ignore[method-assign]


@pytest.mark.parametrize("replaced", sorted(_REPLACED))
def test_the_fast_rule_path_loads_what_the_full_path_loads(replaced: str) -> None:
    loaded = refused = 0
    for parts in itertools.product(*_VALID.values()):
        base = {"id": "r0", **{k: v for k, v in zip(_VALID, parts, strict=True)
                               if v is not _MISSING}}
        for value in _REPLACED[replaced]:
            if replaced == "":
                copied: Any = value
            else:
                copied = {**copy.deepcopy(base), "id": "r1"}
                copied.pop(replaced, None)
                if value is not _MISSING:
                    copied[replaced] = copy.deepcopy(value)
            fast, full = _outcomes([base, copied])
            assert fast == full, (base, copied)
            loaded += fast[0] == "loaded"
            refused += fast[0] == "refused"
    # Every pool holds a faulty value; these also hold valid ones.
    assert refused > 0
    assert loaded > 0 or replaced not in ("description", "actions", "subjects", "resources",
                                          "when")


def test_the_rule_limit_holds_on_the_streaming_path() -> None:
    with pytest.raises(BundleTooLargeError):
        load_bundle(json.dumps(_doc(6)), limits=Limits(max_rules=5))


def test_a_replaced_policy_is_freed_without_the_cycle_collector() -> None:
    policy = compile_bundle(load_bundle(json.dumps(_doc())), version="1-a")
    assert policy.evaluate  # compiled
    ref = weakref.ref(policy)
    gc.disable()
    try:
        del policy
        assert ref() is None  # no reference cycles: a 100,000-rule policy goes at once
    finally:
        gc.enable()


def _reachable(root: object) -> list[object]:
    """Every object reachable from ``root``, short of classes, modules and module globals."""
    stop = {id(m.__dict__) for m in list(sys.modules.values()) if m is not None}
    seen: dict[int, object] = {}
    todo = [root]
    while todo:
        obj = todo.pop()
        if id(obj) in seen or id(obj) in stop or isinstance(obj, type | types.ModuleType):
            continue
        seen[id(obj)] = obj
        todo.extend(gc.get_referents(obj))
    return list(seen.values())


def test_what_the_c_helpers_build_is_out_of_the_collectors_view() -> None:
    # Rules made by the fast path, and a policy's Decisions and entries, are untracked (none
    # can be part of a cycle): a 100,000-rule policy is not walked by every collection.
    bundle = load_bundle(json.dumps(_doc(6)))
    assert [gc.is_tracked(r) for r in bundle.rules] == [True] * 3 + [False] * 3  # full, fast
    assert not any(gc.is_tracked(r.resources) for r in bundle.rules[3:])
    assert gc.is_tracked(bundle.rules[3].when)  # what they hold stays tracked
    sizes = []
    for n in (50, 500):
        policy = compile_bundle(load_bundle(json.dumps(_doc(n))), version="1-a")
        sizes.append(sum(gc.is_tracked(o) for o in _reachable(policy)))
        entry = policy._types["kind1"]
        assert not gc.is_tracked(entry) and not gc.is_tracked(entry[3])  # entry, Decision
        assert policy.evaluate(Request(Subject("user", "u"), Action("act1"), Resource(
            "kind1", "d", {"owner": "u"})), now=0.0).reason == "allowed by rule r1"
    assert max(sizes) < 50  # for 50 rules as for 500: none per rule


def test_a_compiled_policy_keeps_no_rule_of_its_bundle_and_needs_none() -> None:
    # The server holds compiled policies: at 100,000 rules the bundle's Rule objects would
    # be 14 MB more. Deciding, explaining and describing the policy need none of them.
    doc = _doc()
    doc["rules"] += [
        {"id": "more-kind1", "effect": "allow", "actions": ["act2"],
         "resources": {"type": "kind1"}},  # kind1 has two rules, the other kinds one
        {"id": "any-other", "effect": "deny", "actions": ["*"],
         "resources": {"type": "other*"}},  # glob-typed: asked for types no rule names
    ]
    bundle = load_bundle(json.dumps(doc))
    digest, ids = bundle.digest, tuple(r.id for r in bundle.rules)
    policy = compile_bundle(bundle, version="1-a", sequence=4)
    del bundle
    kept = _reachable(policy)
    assert not [o for o in kept if isinstance(o, Bundle | Rule | ResourceMatch)]
    assert (policy.digest, policy.rule_count, policy.rule_ids) == (digest, 8, ids)

    def decide(action: str, rtype: str, owner: str = "alice") -> tuple[str, list[str]]:
        request = Request(Subject("user", "alice"), Action(action),
                          Resource(rtype, "d1", {"owner": owner}))
        decision, traces = policy.explain(request, now=0.0)
        assert policy.evaluate(request, now=0.0) == decision
        return decision.rule_id, [f"{t.rule_id}:{t.failed_part or 'matched'}" for t in traces]

    assert decide("read", "kind0") == ("r0", ["r0:matched"])  # a type's only rule
    assert decide("read", "kind0", owner="bob") == ("", ["r0:when"])
    assert decide("act2", "kind0") == ("", [])  # its only rule is not for the action
    assert decide("act2", "kind1") == ("more-kind1", ["more-kind1:matched"])
    assert decide("act1", "kind1", owner="bob") == ("", ["r1:when"])
    assert decide("read", "other-x") == ("any-other", ["any-other:matched"])
    assert decide("read", "unnamed") == ("", [])


def test_a_kept_cache_key_equals_the_asked_one_and_shares_its_strings() -> None:
    policy = compile_bundle(load_bundle(json.dumps(_doc())), version="1-a")

    def request(rid: str) -> Request:
        fresh = "".join(["al", "ice"])  # a new str object, as the wire gives each call
        return Request(Subject("user", fresh), Action("read"), Resource("kind1", rid,
                                                                         {"owner": fresh}))

    first, second = (policy.cache_key(request(r)) for r in ("a", "b"))
    kept = [policy.lasting_key(k) for k in (first, second)]
    assert kept == [first, second]
    assert kept[0][2] is kept[1][2] and kept[0][-1] is kept[1][-1]  # one "alice"
    odd = (*first[:2], 7, *first[3:])  # a non-str field from a Python caller: kept as is
    assert policy.lasting_key(odd) == odd


def test_cache_deadlines_round_down_never_up() -> None:
    clock = FakeClock(1000.3)
    cache = DecisionCache(ttl=60, clock=clock, admission="all")
    decision = Decision(Effect.ALLOW, "r", "allowed by rule r", "v1")
    cache.put(("k",), decision)
    clock.advance(59.8)
    assert cache.get(("k",)) is not None
    clock.advance(0.2)  # 1060.3: ttl is over
    assert cache.get(("k",)) is None
