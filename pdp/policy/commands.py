"""`pdp bundle lint` and `pdp bundle test`: the offline bundle tools (no server, no network).

Lint validates a bundle as a push would, then analyses it; test runs policy test suites.
"""

from __future__ import annotations

import argparse
import json
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from pdp.errors import ConfigError
from pdp.policy.lint import lint
from pdp.policy.loader import load_bundle_file
from pdp.policy.model import Effect
from pdp.policy.testing import CaseResult, SuiteResult, load_suite_file, request_to_dict, run_suite

__all__ = ["register_bundle_tools"]


def register_bundle_tools(
    bundle_sub: argparse._SubParsersAction[argparse.ArgumentParser],
) -> None:
    """Add `pdp bundle lint` and `pdp bundle test` to the bundle command group."""
    p = bundle_sub.add_parser("lint", help="validate and statically analyse a bundle")
    p.add_argument("bundle", type=Path)
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--strict", action="store_true", help="fail on warnings too")
    p.set_defaults(func=_lint)
    t = bundle_sub.add_parser("test", help="run policy test suites and measure rule coverage")
    t.add_argument("bundle", type=Path)
    t.add_argument(
        "tests", type=Path, nargs="*", help="test files (default: <bundle stem>.tests.yaml)"
    )
    t.add_argument(
        "--min-coverage",
        type=float,
        default=0.0,
        metavar="PCT",
        help="fail when fewer than PCT percent of rules decide a case",
    )
    t.add_argument("--format", choices=("text", "json", "junit"), default="text")
    t.set_defaults(func=_test)


def _lint(args: argparse.Namespace) -> int:
    bundle = load_bundle_file(args.bundle)
    findings = lint(bundle)
    errors = sum(f.severity == "error" for f in findings)
    warnings = sum(f.severity == "warning" for f in findings)
    failed = errors > 0 or (args.strict and warnings > 0)
    if args.json:
        result = {
            "bundle": str(args.bundle),
            "name": bundle.name,
            "revision": bundle.revision,
            "rules": len(bundle.rules),
            "digest": bundle.digest,
            "ok": not failed,
            "findings": [f.to_dict() for f in findings],
        }
        print(json.dumps(result, indent=2))
    else:
        for f in findings:
            print(f"{f.severity}: {f.code}: {f.message}")
        verdict = "FAILED" if failed else "ok"
        print(
            f"{verdict}: {args.bundle}: {bundle.name} revision {bundle.revision}, "
            f"{len(bundle.rules)} rules, digest {bundle.digest}; "
            f"{errors} errors, {warnings} warnings, {len(findings) - errors - warnings} notes"
        )
    return 1 if failed else 0


def _test(args: argparse.Namespace) -> int:
    if not 0.0 <= args.min_coverage <= 100.0:
        raise ConfigError("must be between 0 and 100", field="--min-coverage")
    bundle = load_bundle_file(args.bundle)
    files = list(args.tests) or [args.bundle.with_name(f"{args.bundle.stem}.tests.yaml")]
    cases = [case for path in files for case in load_suite_file(path)]
    result = run_suite(bundle, cases)
    covered = result.coverage.percent >= args.min_coverage
    if args.format == "json":
        print(json.dumps(_as_json(args, result, covered), indent=2))
    elif args.format == "junit":
        sys.stdout.write(_as_junit(files, result))
    else:
        _print_text(args, result, covered)
    return 0 if result.passed and covered else 1


def _word(effect: Effect) -> str:
    return "allow" if effect is Effect.ALLOW else "deny"


def _expected(r: CaseResult) -> str:
    rule = r.case.rule
    if rule is None:
        return r.case.expect
    return f"{r.case.expect} by {f'rule {rule}' if rule else 'default deny'}"


def _actual(r: CaseResult) -> str:
    d = r.decision
    return f"{_word(d.effect)} by {f'rule {d.rule_id}' if d.rule_id else 'default deny'}"


def _failure_text(r: CaseResult) -> str:
    return (
        f"expected {_expected(r)}, got {_actual(r)} ({r.decision.reason})\n"
        f"  request: {json.dumps(request_to_dict(r.case.request), sort_keys=True)}\n"
        f"  considered: {', '.join(r.considered) or '(no candidate rule)'}"
    )


def _print_text(args: argparse.Namespace, result: SuiteResult, covered: bool) -> None:
    for r in result.failures:
        print(f"FAIL {r.case.where}: {_failure_text(r)}")
    cov = result.coverage
    width = max([len("rule"), *(len(rid) for rid in cov.rules)])
    print(f"\n{'rule':<{width}}  decided  considered")
    for rid in cov.rules:
        mark = "" if cov.decided[rid] else "  <- no test reached this rule"
        print(f"{rid:<{width}}  {cov.decided[rid]:>7}  {cov.considered[rid]:>10}{mark}")
    print(
        f"\ncoverage: {len(cov.rules) - len(cov.unreached)}/{len(cov.rules)} rules decided a "
        f"case ({cov.percent:.1f}%)"
        + ("" if covered else f", under the minimum of {args.min_coverage:g}%")
    )
    if cov.unreached:
        print(f"rules no test reached: {', '.join(cov.unreached)}")
    passed = len(result.results) - len(result.failures)
    print(f"{passed} passed, {len(result.failures)} failed")


def _as_json(args: argparse.Namespace, result: SuiteResult, covered: bool) -> dict[str, Any]:
    cov = result.coverage
    return {
        "bundle": str(args.bundle),
        "ok": result.passed and covered,
        "passed": len(result.results) - len(result.failures),
        "failed": len(result.failures),
        "cases": [
            {
                "file": r.case.source,
                "index": r.case.index,
                "name": r.case.name,
                "passed": r.passed,
                "expect": r.case.expect,
                "expect_rule": r.case.rule,
                "decision": _word(r.decision.effect),
                "rule": r.decision.rule_id,
                "reason": r.decision.reason,
                "considered": list(r.considered),
                **({} if r.passed else {"request": request_to_dict(r.case.request)}),
            }
            for r in result.results
        ],
        "coverage": {
            "percent": cov.percent,
            "min_percent": args.min_coverage,
            "unreached": list(cov.unreached),
            "rules": [
                {"rule": rid, "decided": cov.decided[rid], "considered": cov.considered[rid]}
                for rid in cov.rules
            ],
        },
    }


def _as_junit(files: list[Path], result: SuiteResult) -> str:
    root = ET.Element(
        "testsuites", tests=str(len(result.results)), failures=str(len(result.failures))
    )
    for path in files:
        mine = [r for r in result.results if r.case.source == str(path)]
        suite = ET.SubElement(
            root,
            "testsuite",
            name=str(path),
            tests=str(len(mine)),
            failures=str(sum(not r.passed for r in mine)),
        )
        props = ET.SubElement(suite, "properties")
        ET.SubElement(
            props, "property", name="rule_coverage_percent", value=f"{result.coverage.percent:.1f}"
        )
        ET.SubElement(
            props, "property", name="rules_unreached", value=",".join(result.coverage.unreached)
        )
        for r in mine:
            case = ET.SubElement(suite, "testcase", name=r.case.name, classname=str(path))
            if not r.passed:
                failure = ET.SubElement(
                    case, "failure", message=f"expected {_expected(r)}, got {_actual(r)}"
                )
                failure.text = _failure_text(r)
    ET.indent(root)
    return ET.tostring(root, encoding="unicode", xml_declaration=True) + "\n"
