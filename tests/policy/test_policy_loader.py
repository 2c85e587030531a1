"""Loader and validator: error messages that name source, rule and field; refused YAML; versions."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from pdp.errors import BundleError, BundleTooLargeError
from pdp.policy import Limits, load_bundle, load_bundle_file
from pdp.policy._json import Key, pairs_to_dict

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "bundle.yaml"

GOOD = """
metadata: {name: t, revision: "1"}
segments: {corp: ["10.0.0.0/8"]}
roles: {admins: [alice]}
rules:
  - id: kg-read
    effect: allow
    actions: [read]
  - id: kg-write
    effect: allow
    actions: [write]
    when:
      all:
        - {attr: subject.properties.clearance, ge: 3}
        - {attr: resource.properties.owner, eq: {attr: subject.id}}
"""


def _doc() -> dict:
    return yaml.safe_load(GOOD)


def _error(doc: object, source: str = "policy.yaml") -> BundleError:
    with pytest.raises(BundleError) as info:
        load_bundle(yaml.safe_dump(doc, sort_keys=False), source=source)
    return info.value


def test_the_example_bundle_loads() -> None:
    bundle = load_bundle_file(EXAMPLE)
    assert bundle.name == "kg-platform"
    assert 10 <= len(bundle.rules) <= 15
    assert bundle.reads_clock and bundle.reads_peer


def test_unknown_operator_names_source_rule_index_id_and_field() -> None:
    doc = _doc()
    doc["rules"][1]["when"]["all"][1] = {"attr": "subject.properties.clearance", "gte": 3}
    err = _error(doc)
    assert err.source == "policy.yaml"
    assert err.location == 'rules[1] (id "kg-write").when.all[1]'
    assert err.message == 'unknown operator "gte"'
    assert "policy.yaml:" in str(err) and 'rules[1] (id "kg-write").when.all[1]' in str(err)
    assert err.line is not None  # YAML errors carry the line


@pytest.mark.parametrize(
    ("mutate", "location", "fragment"),
    [
        (
            lambda d: d["rules"][0].update(colour="red"),
            'rules[0] (id "kg-read")',
            'unknown key "colour"',
        ),
        (
            lambda d: d["rules"][1].update(id="kg-read"),
            'rules[1] (id "kg-read").id',
            "duplicate rule id",
        ),
        (
            lambda d: d["rules"][0].update(effect="permit"),
            'rules[0] (id "kg-read").effect',
            '"allow" or "deny"',
        ),
        (
            lambda d: d["rules"][0].pop("actions"),
            'rules[0] (id "kg-read")',
            'missing key "actions"',
        ),
        (lambda d: d["segments"].update(corp=["10.0.0.1/8"]), 'segments["corp"][0]', "bad CIDR"),
        (lambda d: d["segments"].update(corp=["10.0.0.0/33"]), 'segments["corp"][0]', "bad CIDR"),
        (
            lambda d: d["rules"][0].update(actions=["re[ad"]),
            'rules[0] (id "kg-read").actions[0]',
            "unclosed '['",
        ),
        (
            lambda d: d["rules"][0].update(subjects={"roles": ["admin"]}),
            'rules[0] (id "kg-read").subjects.roles[0]',
            'unknown role "admin"',
        ),
        (
            lambda d: d["rules"][0].update(when={"time_window": {"tz": "Mars/Olympus"}}),
            'rules[0] (id "kg-read").when.time_window.tz',
            "unknown time zone",
        ),
        (
            lambda d: d["rules"][0].update(when={"time_window": {"from": "25:00"}}),
            'rules[0] (id "kg-read").when.time_window.from',
            "HH:MM",
        ),
        (
            lambda d: d["rules"][0].update(when={"time_window": {"days": ["someday"]}}),
            'rules[0] (id "kg-read").when.time_window.days[0]',
            "unknown day",
        ),
        (
            lambda d: d["rules"][0].update(when={"attr": "subject.name", "eq": 1}),
            'rules[0] (id "kg-read").when.attr',
            "bad attribute path",
        ),
        (
            lambda d: d["rules"][0].update(when={"attr": "context.ip", "cidr": "1.2.3.4/40"}),
            'rules[0] (id "kg-read").when.cidr',
            "bad CIDR",
        ),
        (
            lambda d: d["rules"][0].update(when={"attr": "context.n", "lt": [1]}),
            'rules[0] (id "kg-read").when.lt',
            "compares numbers or strings",
        ),
        (
            lambda d: d["rules"][0].update(when={"attr": "context.n", "in": "abc"}),
            'rules[0] (id "kg-read").when.in',
            "needs a list",
        ),
        (
            lambda d: d["rules"][0].update(when={"source_in_segment": "dmz"}),
            'rules[0] (id "kg-read").when.source_in_segment[0]',
            "unknown segment",
        ),
        (
            lambda d: d["rules"][0].update(when={"attr": "context.a", "eq": 1, "ne": 2}),
            'rules[0] (id "kg-read").when',
            "exactly one of",
        ),
        (
            lambda d: d["rules"][0].update(when={"value": 1, "eq": 1}),
            'rules[0] (id "kg-read").when',
            "two literals",
        ),
        (
            lambda d: d["rules"][0].update(when={"all": []}),
            'rules[0] (id "kg-read").when.all',
            "non-empty list",
        ),
        (
            lambda d: d["rules"][0].update(when={"attr": "context.a", "eq": {"x": 1}}),
            'rules[0] (id "kg-read").when.eq',
            "{attr: <path>}",
        ),
        (lambda d: d["metadata"].pop("name"), "metadata.name", "non-empty string"),
        (lambda d: d.update(extra=1), "bundle", 'unknown key "extra"'),
    ],
)
def test_validation_errors_name_the_field(mutate: object, location: str, fragment: str) -> None:
    doc = _doc()
    mutate(doc)  # type: ignore[operator]
    err = _error(doc)
    assert err.location == location, str(err)
    assert fragment in err.message, str(err)
    assert str(err).startswith("policy.yaml")


def test_json_errors_name_rule_and_field_too() -> None:
    doc = _doc()
    doc["rules"][1]["when"]["all"][0]["ge"] = True
    with pytest.raises(BundleError) as info:
        load_bundle(json.dumps(doc), source="b.json")
    assert info.value.location == 'rules[1] (id "kg-write").when.all[0].ge'


def test_billion_laughs_yaml_aliases_are_refused() -> None:
    lol = "a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n"
    for i in range(1, 9):
        prev = chr(ord("a") + i - 1)
        lol += f"{chr(ord('a') + i)}: &{chr(ord('a') + i)} [*{prev}, *{prev}, *{prev}, *{prev}]\n"
    with pytest.raises(BundleError, match="anchors"):
        load_bundle(lol)
    with pytest.raises(BundleError, match="aliases"):
        load_bundle("metadata: *x\n")


def test_yaml_python_tags_are_refused_without_running_code() -> None:
    evil = "!!python/object/apply:os.system ['touch /tmp/pdp-pwned']\n"
    with pytest.raises(BundleError, match="invalid YAML"):
        load_bundle(evil)
    assert not Path("/tmp/pdp-pwned").exists()


def test_yaml_merge_keys_and_duplicate_keys_are_refused() -> None:
    with pytest.raises(BundleError, match="merge keys"):
        load_bundle("metadata: {<<: {name: x}, revision: '1'}\nrules: []\n")
    with pytest.raises(BundleError, match="duplicate key 'effect'"):
        load_bundle(
            "metadata: {name: x, revision: '1'}\nrules:\n"
            " - {id: a, effect: deny, effect: allow, actions: [x]}\n"
        )
    with pytest.raises(BundleError, match="duplicate key"):
        load_bundle('{"metadata": {"name": "x", "name": "y", "revision": "1"}, "rules": []}')


def test_the_json_pairs_hook_keeps_order_and_refuses_a_repeated_key() -> None:
    assert list(pairs_to_dict([("b", 1), ("a", [2]), ("c", None)]).items()) == [
        ("b", 1), ("a", [2]), ("c", None)]
    assert pairs_to_dict([]) == {}
    with pytest.raises(ValueError, match=r"^duplicate key 'a'$"):
        pairs_to_dict([("a", 1), ("b", 2), ("a", 1)])
    with pytest.raises(TypeError):
        pairs_to_dict((("a", 1),))  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        pairs_to_dict([("a", 1, 2)])  # type: ignore[list-item]
    # A deep, wide JSON document: every mapping of it goes through the hook.
    text = json.dumps({"metadata": {"name": "x", "revision": "1"}, "rules": [
        {"id": f"r{i}", "effect": "allow", "actions": ["read"],
         "resources": {"type": "doc"}, "when": {"attr": "subject.id", "eq": f"u{i}"}}
        for i in range(50)]})
    assert len(load_bundle(text).rules) == 50


# Values whose repr()s are alike or almost: the loader remembers validated rule parts under
# Key(part), which must be equal exactly when the repr()s are.
_LOOK_ALIKES: list[Any] = [
    1, 1.0, True, "1", 0, 0.0, -0.0, False, "", None, 2**70, 2.0**70, "\u00e9", "e\u0301",
    [], {}, [1], [1.0], [True], ["1"], [1, 2], [2, 1], [[1]], [[1.0]], {"a": 1},
    {"a": 1.0}, {"a": True}, {"a": 1, "b": 2}, {"b": 2, "a": 1}, {"a": [1, {"b": None}]},
    {"a": [1, {"b": False}]}, {"1": 1}, [{}], [[]], [None], [None, None],
]


def test_a_key_equals_another_exactly_when_their_reprs_are_equal() -> None:
    for a in _LOOK_ALIKES:
        for b in _LOOK_ALIKES:
            b = copy.deepcopy(b)  # another object, alike
            same = repr(a) == repr(b)
            assert (Key(a) == Key(b)) is same, (a, b)
            assert (Key(a) != Key(b)) is not same, (a, b)
            if same:
                assert hash(Key(a)) == hash(Key(b))
    assert len({Key(v) for v in _LOOK_ALIKES}) == len({repr(v) for v in _LOOK_ALIKES})
    assert Key(1) != 1 and Key("a") != "a"  # only Keys are equal to Keys


def test_a_key_refuses_what_json_cannot_hold_and_absurd_nesting() -> None:
    for value in ((1,), {1, 2}, b"x", [1, (2,)], {"a": object()}, 1j):
        with pytest.raises(ValueError, match="not a JSON value"):
            Key(value)
    deep: Any = 1
    for _ in range(100_000):
        deep = [deep]
    with pytest.raises(RecursionError):
        Key(deep)


def test_json_nan_and_deep_nesting_are_bundle_errors() -> None:
    with pytest.raises(BundleError):
        load_bundle('{"metadata": {"name": "x", "revision": NaN}, "rules": []}')
    with pytest.raises(BundleError):
        load_bundle("[" * 100_000 + "]" * 100_000)
    with pytest.raises(BundleError):
        load_bundle("a: " + "[" * 5_000 + "]" * 5_000)


def test_limits_bytes_rules_depth_give_too_large_errors() -> None:
    with pytest.raises(BundleTooLargeError, match="limit of 100"):
        load_bundle(GOOD + " " * 200, limits=Limits(max_bytes=100))
    with pytest.raises(BundleTooLargeError, match="2 rules, more than the limit of 1"):
        load_bundle(GOOD, limits=Limits(max_rules=1))
    doc = _doc()
    cond: dict = {"attr": "context.a", "eq": 1}
    for _ in range(5):
        cond = {"not": cond}
    doc["rules"][0]["when"] = cond
    with pytest.raises(BundleTooLargeError, match="deeper than the limit of 3"):
        load_bundle(json.dumps(doc), limits=Limits(max_depth=3))
    with pytest.raises(ValueError):
        Limits(max_rules=0)


def test_non_utf8_and_wrong_types_are_bundle_errors() -> None:
    with pytest.raises(BundleError, match="UTF-8"):
        load_bundle(b"\xff\xfe\x00garbage")
    with pytest.raises(BundleError):
        load_bundle(12345)  # type: ignore[arg-type]
    with pytest.raises(BundleError, match="expected a mapping"):
        load_bundle("- just\n- a list\n")
    with pytest.raises(BundleError, match="cannot read"):
        load_bundle_file("/nonexistent/bundle.yaml")


def test_dates_stay_strings() -> None:
    bundle = load_bundle("metadata: {name: x, revision: 2024-06-01}\nrules: []\n")
    assert bundle.revision == "2024-06-01"


def test_version_is_the_same_for_yaml_json_spacing_and_key_order() -> None:
    doc = _doc()
    as_yaml = load_bundle(GOOD)
    as_json = load_bundle(json.dumps(doc))
    as_json_spaced = load_bundle(json.dumps(doc, indent=7).encode())
    reordered = {
        "rules": doc["rules"][:],
        "roles": doc["roles"],
        "segments": doc["segments"],
        "metadata": {"revision": "1", "name": "t"},
    }
    reordered["rules"][1] = dict(reversed(list(doc["rules"][1].items())))
    as_reordered = load_bundle(yaml.safe_dump(reordered, default_flow_style=True))
    digests = {b.digest for b in (as_yaml, as_json, as_json_spaced, as_reordered)}
    assert len(digests) == 1
    assert as_yaml == as_json
    assert len(as_yaml.digest) == 64
    # 3 and 3.0 are the same policy; a different literal is not.
    doc["rules"][1]["when"]["all"][0]["ge"] = 3.0
    assert load_bundle(json.dumps(doc)).digest == as_yaml.digest
    doc["rules"][1]["when"]["all"][0]["ge"] = 4
    assert load_bundle(json.dumps(doc)).digest != as_yaml.digest


def test_rule_order_changes_the_version() -> None:
    doc = _doc()
    doc["rules"].reverse()
    assert load_bundle(json.dumps(doc)).digest != load_bundle(GOOD).digest
