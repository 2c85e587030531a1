"""Static analysis: each kind of finding on a crafted bundle, soundness of glob cover, the CLI."""

from __future__ import annotations

import argparse
import itertools
import json
import re
from fnmatch import translate
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pdp.policy import load_bundle, load_bundle_file
from pdp.policy.commands import register_bundle_tools
from pdp.policy.lint import Finding, glob_covers, glob_intersects, lint

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "bundle.yaml"


def bundle(rules: list[dict[str, Any]], **extra: Any) -> Any:
    doc = {"metadata": {"name": "t", "revision": "1"}, "rules": rules, **extra}
    return load_bundle(json.dumps(doc), source="crafted")


def codes(findings: list[Finding]) -> list[tuple[str, str, tuple[str, ...]]]:
    return [(f.severity, f.code, f.rules) for f in findings]


def test_example_bundle_lints_clean() -> None:
    assert lint(load_bundle_file(EXAMPLE)) == []


# --- shadowed rules -----------------------------------------------------------------------


def test_attack_broad_allow_first_hides_later_deny() -> None:
    b = bundle(
        [
            {
                "id": "allow-docs",
                "effect": "allow",
                "actions": ["read*"],
                "resources": {"type": "doc*"},
            },
            {
                "id": "deny-secret",
                "effect": "deny",
                "actions": ["read", "readMeta"],
                "subjects": {"type": "user", "ids": ["mallory"]},
                "resources": {"type": "document", "ids": ["secret-*"]},
            },
        ]
    )
    (finding,) = lint(b)
    assert (finding.severity, finding.code, finding.rules) == (
        "error",
        "shadowed-rule",
        ("allow-docs", "deny-secret"),
    )
    assert '"deny-secret"' in finding.message and '"allow-docs"' in finding.message
    assert "no condition" in finding.message


def test_same_effect_shadow_is_a_warning() -> None:
    b = bundle(
        [
            {
                "id": "all-read",
                "effect": "allow",
                "actions": ["read"],
                "resources": {"type": "doc"},
            },
            {
                "id": "owner-read",
                "effect": "allow",
                "actions": ["read"],
                "resources": {"type": "doc"},
                "when": {"attr": "resource.properties.x", "eq": 1},
            },
        ]
    )
    assert codes(lint(b)) == [("warning", "shadowed-rule", ("all-read", "owner-read"))]


def test_shadow_by_role_members_and_same_condition() -> None:
    cond = {"attr": "context.env", "eq": "prod"}
    b = bundle(
        [
            {
                "id": "team",
                "effect": "deny",
                "subjects": {"roles": ["team"]},
                "actions": ["*"],
                "when": cond,
            },
            {
                "id": "one",
                "effect": "allow",
                "subjects": {"ids": ["ops-7"]},
                "actions": ["write"],
                "when": {"all": [{"exists": "subject.properties.x"}, cond]},
            },
        ],
        roles={"team": ["ops-*", "admin"]},
    )
    assert codes(lint(b)) == [("error", "shadowed-rule", ("team", "one"))]


@pytest.mark.parametrize(
    ("early", "late"),
    [
        # a condition on the earlier rule: it may not match, so nothing is certain
        ({"when": {"attr": "context.env", "eq": "prod"}}, {}),
        ({"subjects": {"type": "user"}}, {"subjects": {"type": "u*"}}),
        ({"actions": ["read", "write"]}, {"actions": ["re*"]}),
        ({"resources": {"type": "doc", "ids": ["a-*"]}}, {"resources": {"type": "doc"}}),
        ({"subjects": {"ids": ["alice"]}}, {"subjects": {"roles": ["r"]}}),
    ],
)
def test_no_shadow_claimed_without_certainty(early: dict[str, Any], late: dict[str, Any]) -> None:
    base = {"actions": ["read"], "resources": {"type": "doc"}}
    b = bundle(
        [
            {"id": "early", "effect": "allow", **base, **early},
            {"id": "late", "effect": "allow", **base, **late},
        ],
        roles={"r": ["alice", "bob"]},
    )
    assert [f for f in lint(b) if f.code == "shadowed-rule"] == []


# --- unsatisfiable conditions ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("when", "why"),
    [
        (
            {
                "all": [
                    {"attr": "subject.properties.dept", "eq": "a"},
                    {"attr": "subject.properties.dept", "eq": "b"},
                ]
            },
            "requires 'a'",
        ),
        (
            {"all": [{"attr": "context.flag", "eq": True}, {"attr": "context.flag", "eq": 1}]},
            "requires True",
        ),
        (
            {"all": [{"attr": "context.x", "eq": "v"}, {"attr": "context.x", "ne": "v"}]},
            "excludes it",
        ),
        ({"attr": "subject.properties.dept", "in": []}, "empty list"),
        (
            {"all": [{"attr": "context.level", "gt": 5}, {"attr": "context.level", "lt": 3}]},
            "from 5 up",
        ),
        (
            {"all": [{"attr": "context.level", "ge": 4}, {"attr": "context.level", "lt": 4}]},
            "from 4 up",
        ),
        (
            {"all": [{"attr": "context.level", "eq": 9}, {"attr": "context.level", "le": 3}]},
            "up to 3",
        ),
        (
            {
                "any": [
                    {"attr": "context.a", "in": []},
                    {"all": [{"attr": "context.b", "eq": 1}, {"attr": "context.b", "eq": 2}]},
                ]
            },
            "empty list",
        ),
    ],
)
def test_unsatisfiable_condition(when: dict[str, Any], why: str) -> None:
    b = bundle(
        [
            {
                "id": "never",
                "effect": "allow",
                "actions": ["read"],
                "resources": {"type": "doc"},
                "when": when,
            }
        ]
    )
    (finding,) = lint(b)
    assert (finding.severity, finding.code, finding.rules) == (
        "error",
        "unsatisfiable-condition",
        ("never",),
    )
    assert why in finding.message


@pytest.mark.parametrize(
    "when",
    [
        {"all": [{"attr": "context.x", "eq": 3}, {"attr": "context.x", "eq": 3.0}]},
        {"all": [{"attr": "context.x", "ge": 4}, {"attr": "context.x", "le": 4}]},
        {"all": [{"attr": "context.x", "eq": "a"}, {"attr": "context.y", "eq": "b"}]},
        {"any": [{"attr": "context.a", "in": []}, {"attr": "context.a", "eq": 1}]},
        {
            "all": [
                {"attr": "context.x", "eq": {"attr": "subject.id"}},
                {"attr": "context.x", "eq": "a"},
            ]
        },
    ],
)
def test_satisfiable_condition_is_not_flagged(when: dict[str, Any]) -> None:
    b = bundle(
        [
            {
                "id": "ok",
                "effect": "allow",
                "actions": ["read"],
                "resources": {"type": "doc"},
                "when": when,
            }
        ]
    )
    assert lint(b) == []


# --- overlaps, unused names, match-everything --------------------------------------------------


def test_overlap_allow_before_deny_is_a_warning_and_deny_before_allow_info() -> None:
    b = bundle(
        [
            {
                "id": "allow-a",
                "effect": "allow",
                "actions": ["read", "write"],
                "resources": {"type": "doc", "ids": ["a-*"]},
            },
            {
                "id": "deny-x",
                "effect": "deny",
                "actions": ["write", "delete"],
                "resources": {"type": "doc", "ids": ["*-x"]},
            },
            {
                "id": "allow-b",
                "effect": "allow",
                "actions": ["delete"],
                "resources": {"type": "d?c", "ids": ["b-*"]},
            },
        ]
    )
    assert codes(lint(b)) == [
        ("warning", "overlapping-rules", ("allow-a", "deny-x")),
        ("info", "overlapping-rules", ("deny-x", "allow-b")),
    ]


def test_disjoint_or_conditional_pairs_do_not_overlap() -> None:
    b = bundle(
        [
            {
                "id": "allow-a",
                "effect": "allow",
                "actions": ["read"],
                "resources": {"type": "doc", "ids": ["a-*"]},
            },
            {
                "id": "deny-b",
                "effect": "deny",
                "actions": ["read"],
                "resources": {"type": "doc", "ids": ["b-*"]},
            },
            {
                "id": "deny-cond",
                "effect": "deny",
                "actions": ["read"],
                "resources": {"type": "doc"},
                "when": {"exists": "context.x"},
            },
        ]
    )
    assert lint(b) == []


def test_unused_segment_and_role() -> None:
    b = bundle(
        [
            {
                "id": "r",
                "effect": "allow",
                "actions": ["read"],
                "resources": {"type": "doc"},
                "subjects": {"roles": ["used"]},
                "when": {"source_in_segment": "lan"},
            }
        ],
        segments={"lan": ["10.0.0.0/8"], "dmz": ["192.0.2.0/24"]},
        roles={"used": ["a"], "stale": ["b"]},
    )
    assert [(f.code, f.message) for f in lint(b)] == [
        ("unused-segment", 'segment "dmz" is not used by any rule'),
        ("unused-role", 'role "stale" is not used by any rule'),
    ]


def test_allow_everything_globs_are_flagged() -> None:
    b = bundle(
        [
            {"id": "god", "effect": "allow", "actions": ["**"]},
            {
                "id": "anyone",
                "effect": "allow",
                "actions": ["read"],
                "subjects": {"roles": ["all"]},
                "resources": {"type": "doc", "ids": ["*"]},
            },
            {
                "id": "deny-all-is-fine",
                "effect": "deny",
                "actions": ["*"],
                "when": {"exists": "context.x"},
            },
        ],
        roles={"all": ["*"]},
    )
    found = [(f.code, f.rules, f.message) for f in lint(b) if f.code == "matches-everything"]
    assert found == [
        ("matches-everything", ("god",), 'rule "god" allows every action with no condition'),
        ("matches-everything", ("god",), 'rule "god" allows every resource with no condition'),
        (
            "matches-everything",
            ("anyone",),
            'rule "anyone" allows every subject id with no condition',
        ),
        (
            "matches-everything",
            ("anyone",),
            'rule "anyone" allows every resource id with no condition',
        ),
    ]


# --- glob cover and intersection are sound -----------------------------------------------------

_GLOB = st.lists(
    st.sampled_from(["a", "b", "?", "*", "[ab]", "[!a]", "[a-b]"]), min_size=1, max_size=4
).map("".join)
# A shortest witness needs at most one character per non-star token of the two globs
# ("aaa*" and "*baaa" meet first at "aaabaaa"): up to 8 here.
_WORDS = ["".join(w) for n in range(9) for w in itertools.product("abc", repeat=n)]


def _matches(pattern: str) -> set[str]:
    rx = re.compile(translate(pattern))
    return {w for w in _WORDS if rx.match(w)}


@settings(max_examples=300, deadline=None)
@given(_GLOB, _GLOB)
def test_glob_cover_and_intersection_agree_with_brute_force(a: str, b: str) -> None:
    ma, mb = _matches(a), _matches(b)
    # Exact on these short globs (any witness is at most 8 characters long).
    assert glob_covers(a, b) == (mb <= ma)
    assert glob_intersects(a, b) == bool(ma & mb)


def test_glob_intersects_needs_a_common_string() -> None:
    assert not glob_intersects("a*", "b*")
    assert not glob_intersects("?", "??*")
    assert glob_intersects("a*", "*b")


# --- the CLI ---------------------------------------------------------------------------


def run_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    register_bundle_tools(parser.add_subparsers())
    args = parser.parse_args(argv)
    code: int = args.func(args)
    return code


def write(tmp_path: Path, rules: list[dict[str, Any]], **extra: Any) -> Path:
    path = tmp_path / "b.yaml"
    doc = {"metadata": {"name": "t", "revision": "1"}, "rules": rules, **extra}
    path.write_text(json.dumps(doc))
    return path


def test_cli_lint_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli(["lint", str(EXAMPLE)]) == 0
    assert "0 errors, 0 warnings" in capsys.readouterr().out
    warn = write(
        tmp_path, [{"id": "r", "effect": "allow", "actions": ["read"]}], roles={"stale": ["x"]}
    )
    assert run_cli(["lint", str(warn)]) == 0
    assert run_cli(["lint", "--strict", str(warn)]) == 1
    assert 'warning: unused-role: role "stale"' in capsys.readouterr().out
    err = write(
        tmp_path,
        [
            {"id": "a", "effect": "deny", "actions": ["*"]},
            {"id": "b", "effect": "allow", "actions": ["read"]},
        ],
    )
    assert run_cli(["lint", "--json", str(err)]) == 1
    out = json.loads(capsys.readouterr().out)
    assert out["ok"] is False
    assert out["findings"][0] == {
        "severity": "error",
        "code": "shadowed-rule",
        "rules": ["a", "b"],
        "message": out["findings"][0]["message"],
    }
