"""Policy test suites: the example suite at 100% coverage, failures, formats, bad test files."""

from __future__ import annotations

import argparse
import json
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from pdp.errors import BundleError, ConfigError
from pdp.policy import load_bundle_file
from pdp.policy.commands import register_bundle_tools
from pdp.policy.testing import DEFAULT_NOW, SuiteError, load_suite, run_suite

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
BUNDLE = EXAMPLES / "bundle.yaml"

ONE_CASE = """
tests:
  - name: public read
    request:
      subject: {type: user, id: u}
      action: read
      resource: {type: graph, id: public}
      peer_ip: 10.20.0.5
    expect: {expect}
    rule: {rule}
"""


def run_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    register_bundle_tools(parser.add_subparsers())
    args = parser.parse_args(argv)
    code: int = args.func(args)
    return code


def suite_file(tmp_path: Path, expect: str = "allow", rule: str = "public-graph-read") -> Path:
    path = tmp_path / "t.tests.yaml"
    path.write_text(ONE_CASE.replace("{expect}", expect).replace("{rule}", rule))
    return path


def test_example_suite_passes_with_full_coverage(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli(["test", str(BUNDLE), "--min-coverage", "100"]) == 0
    out = capsys.readouterr().out
    assert "13/13 rules decided a case (100.0%)" in out
    assert " 0 failed" in out


def test_example_suite_catches_a_reordered_bundle(tmp_path: Path) -> None:
    """Moving the suspended deny to the top must break the suite: the tests can fail."""
    text = BUNDLE.read_text()
    start = text.index("  # 12. Suspended")
    end = text.index("  # 13. Metrics")
    moved = text[start:end]
    text = text[:start] + text[end:]
    text = text.replace("rules:\n", "rules:\n" + moved, 1)
    (tmp_path / "bundle.yaml").write_text(text)
    shutil.copy(EXAMPLES / "bundle.tests.yaml", tmp_path / "bundle.tests.yaml")
    assert run_cli(["test", str(tmp_path / "bundle.yaml")]) == 1


def test_failure_shows_request_expected_and_actual(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tests = suite_file(tmp_path, expect="deny", rule='""')
    assert run_cli(["test", str(BUNDLE), str(tests)]) == 1
    out = capsys.readouterr().out
    assert (
        f'FAIL {tests}: tests[0] ("public read"): expected deny by default deny, '
        "got allow by rule public-graph-read" in out
    )
    assert '"id": "public"' in out  # the request
    assert "rules no test reached: legal-hold-no-delete" in out


def test_min_coverage_fails_a_passing_suite(tmp_path: Path) -> None:
    tests = suite_file(tmp_path)
    assert run_cli(["test", str(BUNDLE), str(tests)]) == 0
    assert run_cli(["test", str(BUNDLE), str(tests), "--min-coverage", "8"]) == 1
    with pytest.raises(ConfigError, match="--min-coverage"):
        run_cli(["test", str(BUNDLE), str(tests), "--min-coverage", "101"])


def test_json_output(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tests = suite_file(tmp_path, rule="team-read")
    assert run_cli(["test", str(BUNDLE), str(tests), "--format", "json"]) == 1
    out = json.loads(capsys.readouterr().out)
    assert (out["ok"], out["passed"], out["failed"]) == (False, 0, 1)
    (case,) = out["cases"]
    assert (case["expect_rule"], case["rule"], case["decision"]) == (
        "team-read",
        "public-graph-read",
        "allow",
    )
    assert case["considered"][-1] == "public-graph-read"
    assert case["request"]["resource"]["id"] == "public"
    rules = {r["rule"]: r for r in out["coverage"]["rules"]}
    assert rules["public-graph-read"]["decided"] == 1
    assert rules["team-read"] == {"rule": "team-read", "decided": 0, "considered": 1}
    assert rules["suspended-deny"]["considered"] == 0


def test_junit_output(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tests = suite_file(tmp_path, expect="deny", rule="deny-outside-mesh")
    assert run_cli(["test", str(BUNDLE), str(tests), "--format", "junit"]) == 1
    root = ET.fromstring(capsys.readouterr().out)  # noqa: S314 (our own output)
    assert root.tag == "testsuites" and root.get("failures") == "1"
    case = root.find("testsuite/testcase")
    assert case is not None and case.get("name") == "public read"
    failure = case.find("failure")
    assert failure is not None
    assert "expected deny by rule deny-outside-mesh" in (failure.get("message") or "")


def test_coverage_counts_considered_rules() -> None:
    bundle = load_bundle_file(BUNDLE)
    text = ONE_CASE.replace("{expect}", "allow").replace("{rule}", "public-graph-read")
    cases = load_suite(text)
    result = run_suite(bundle, cases)
    assert result.passed
    (r,) = result.results
    assert r.considered == (
        "deny-outside-mesh",
        "owner-full-access",
        "team-read",
        "public-graph-read",
    )
    assert r.case.now == DEFAULT_NOW
    assert result.coverage.considered["team-read"] == 1
    assert result.coverage.decided["team-read"] == 0
    assert result.coverage.percent == pytest.approx(100 / 13)


def test_default_suite_missing_is_a_clear_error(tmp_path: Path) -> None:
    shutil.copy(BUNDLE, tmp_path / "b.yaml")
    with pytest.raises(FileNotFoundError, match=r"b\.tests\.yaml"):
        run_cli(["test", str(tmp_path / "b.yaml")])


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("tests: {}", 'expected a mapping with a "tests" list'),
        ("tests: []\nextra: 1", 'unknown key "extra"'),
        ("tests:\n  - 3", "tests[0]: expected a mapping"),
        ("tests:\n  - {name: x, expect: allow}", 'tests[0] ("x"): missing key "request"'),
        (
            ONE_CASE.replace("{expect}", "maybe").replace("{rule}", "r"),
            'tests[0] ("public read").expect: expected "allow" or "deny"',
        ),
        (
            ONE_CASE.replace("{expect}", "allow").replace("{rule}", '""'),
            'rule "" is the default deny',
        ),
        (
            ONE_CASE.replace("{expect}", "allow").replace("{rule}", "r").replace("id: u", "id: ''"),
            "request.subject.id: expected a non-empty string",
        ),
        (
            ONE_CASE.replace("{expect}", "allow")
            .replace("{rule}", "r")
            .replace("action: read", "action: {verb: read}"),
            'request.action: unknown key "verb"',
        ),
        (
            ONE_CASE.replace("{expect}", "allow").replace("{rule}", "r") + "    now: 2025-01-01\n",
            "a date is not an instant",
        ),
        (
            ONE_CASE.replace("{expect}", "allow").replace("{rule}", "r")
            + "    now: '2025-01-01T10:00:00'\n",
            "needs an offset",
        ),
        (
            ONE_CASE.replace("{expect}", "allow")
            .replace("{rule}", "r")
            .replace("id: u}", "id: u, properties: {since: 2025-01-01}}"),
            "subject.properties.since: date is not a JSON value",
        ),
        (
            ONE_CASE.replace("{expect}", "allow").replace("{rule}", "r") * 1
            + ONE_CASE.replace("{expect}", "allow").replace("{rule}", "r").replace("tests:\n", ""),
            'tests[1].name: duplicate case name "public read" (first at tests[0])',
        ),
    ],
)
def test_bad_test_file_names_file_and_case(text: str, message: str) -> None:
    with pytest.raises(SuiteError) as info:
        load_suite(text, source="my.tests.yaml")
    assert isinstance(info.value, BundleError)
    assert str(info.value).startswith("my.tests.yaml")
    assert message in str(info.value)


def test_bad_case_error_has_the_line() -> None:
    text = ONE_CASE.replace("{expect}", "allow").replace("{rule}", "r") + "    bogus: 1\n"
    with pytest.raises(SuiteError) as info:
        load_suite(text, source="f.yaml")
    assert info.value.line == 3 and str(info.value).startswith("f.yaml:3: tests[0]")


def test_unknown_expected_rule_is_an_error() -> None:
    cases = load_suite(
        ONE_CASE.replace("{expect}", "allow").replace("{rule}", "nope"), source="f.yaml"
    )
    with pytest.raises(SuiteError, match=r'f.yaml: tests\[0\] \("public read"\).rule: no rule'):
        run_suite(load_bundle_file(BUNDLE), cases)


def test_attack_yaml_alias_bomb_in_a_test_file_is_refused() -> None:
    bomb = "a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
    bomb += "c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\ntests: [*c]\n"
    with pytest.raises(SuiteError, match="aliases are not allowed"):
        load_suite(bomb)


def test_now_accepts_rfc3339_and_epoch() -> None:
    base = ONE_CASE.replace("{expect}", "allow").replace("{rule}", "public-graph-read")
    (a,) = load_suite(base + "    now: 2025-01-15T09:00:00Z\n")
    (b,) = load_suite(base + "    now: '2025-01-15T10:00:00+01:00'\n")
    (c,) = load_suite(base + "    now: 1736931600\n")
    assert a.now == b.now == c.now == 1736931600.0
