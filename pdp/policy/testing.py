"""Policy test suites: YAML cases of request -> expected decision (and rule), with rule coverage.

Cases run on the real compiled engine; coverage says which rules decided (or were considered
for) at least one case.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import Any, Literal

import yaml

from pdp.errors import BundleError
from pdp.policy.compiler import CompiledPolicy, compile_bundle
from pdp.policy.loader import kind_of
from pdp.policy.model import Action, Bundle, Decision, Effect, Request, Resource, Subject

__all__ = [
    "DEFAULT_NOW",
    "CaseResult",
    "Coverage",
    "SuiteError",
    "SuiteResult",
    "TestCase",
    "load_suite",
    "load_suite_file",
    "request_to_dict",
    "run_suite",
]

DEFAULT_NOW = 1_800_000_000.0  # the instant a case without `now` is decided at (fixed)
MAX_SUITE_BYTES = 16 * 1024 * 1024  # largest test file read
_CASE_KEYS = ("name", "description", "request", "now", "expect", "rule")
_REQUEST_KEYS = ("subject", "action", "resource", "context", "peer_ip")


class SuiteError(BundleError):
    """A policy test file is malformed, or names a rule its bundle lacks; says file and case."""


class _Loader(yaml.SafeLoader):
    """Safe YAML without aliases: a few lines must not expand into gigabytes of requests."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.peek_event()  # type: ignore[no-untyped-call]
        if isinstance(event, yaml.AliasEvent):
            raise yaml.MarkedYAMLError(
                problem="YAML aliases are not allowed",
                problem_mark=event.start_mark,  # type: ignore[arg-type]
            )
        return super().compose_node(parent, index)


@dataclass(frozen=True, slots=True)
class TestCase:
    """One case: decide ``request`` at ``now``; expect ``expect`` and, unless None, ``rule``
    ("" is the default deny)."""

    __test__ = False  # not a pytest class, whatever the name says

    name: str
    request: Request
    expect: Literal["allow", "deny"]
    rule: str | None = None
    now: float = DEFAULT_NOW
    source: str = "<tests>"
    index: int = 0

    @property
    def where(self) -> str:
        """``file: tests[i] ("name")``, for messages."""
        return f'{self.source}: tests[{self.index}] ("{self.name}")'


@dataclass(frozen=True, slots=True)
class CaseResult:
    """How one case fared: the decision the engine gave and whether it was the expected one."""

    case: TestCase
    decision: Decision
    passed: bool
    considered: tuple[str, ...]  # rule ids walked, in order, until the deciding one


@dataclass(frozen=True, slots=True)
class Coverage:
    """Rule coverage: per rule (bundle order) how many cases it decided and was considered for."""

    rules: tuple[str, ...]
    decided: Mapping[str, int]
    considered: Mapping[str, int]

    @property
    def unreached(self) -> tuple[str, ...]:
        """Rules that decided no case, in bundle order."""
        return tuple(r for r in self.rules if not self.decided.get(r))

    @property
    def percent(self) -> float:
        """Share of rules that decided at least one case (100 for a bundle without rules)."""
        if not self.rules:
            return 100.0
        return 100.0 * (len(self.rules) - len(self.unreached)) / len(self.rules)


@dataclass(frozen=True, slots=True)
class SuiteResult:
    """Every case's result, in order, and the rule coverage."""

    results: tuple[CaseResult, ...]
    coverage: Coverage
    failures: tuple[CaseResult, ...] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "failures", tuple(r for r in self.results if not r.passed))

    @property
    def passed(self) -> bool:
        """True when every case passed."""
        return not self.failures


# --- loading -----------------------------------------------------------------------------


class _Parser:
    def __init__(self, source: str, text: str) -> None:
        self.source = source
        self.text = text

    def fail(self, location: str, message: str, index: int | None = None) -> SuiteError:
        return SuiteError(message, source=self.source, location=location, line=self._line(index))

    def _line(self, index: int | None) -> int | None:
        if index is None:
            return None
        try:
            root = yaml.compose(self.text, Loader=yaml.SafeLoader)
            for key, value in root.value if root is not None else ():
                if key.value == "tests":
                    return int(value.value[index].start_mark.line) + 1
        except Exception:  # a line number is a courtesy; never let it mask the real error
            return None
        return None

    def mapping(self, value: Any, where: str, keys: tuple[str, ...], i: int) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.fail(where, f"expected a mapping, got {kind_of(value)}", i)
        for key in value:
            if key not in keys:
                raise self.fail(where, f'unknown key "{key}" (allowed: {", ".join(keys)})', i)
        return dict(value)

    def string(self, value: Any, where: str, i: int, *, empty: bool = False) -> str:
        if not isinstance(value, str) or (value == "" and not empty):
            raise self.fail(where, f"expected a non-empty string, got {kind_of(value)}", i)
        return value

    def props(self, value: Any, where: str, i: int) -> dict[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise self.fail(where, f"expected a mapping, got {kind_of(value)}", i)
        plain: dict[str, Any] = _plain(value, where, self, i)
        return plain

    def case(self, raw: Any, i: int) -> TestCase:
        where = f"tests[{i}]"
        if isinstance(raw, dict) and isinstance(raw.get("name"), str) and raw["name"]:
            where = f'tests[{i}] ("{raw["name"]}")'
        raw = self.mapping(raw, where, _CASE_KEYS, i)
        for key in ("name", "request", "expect"):
            if key not in raw:
                raise self.fail(where, f'missing key "{key}"', i)
        name = self.string(raw["name"], f"{where}.name", i)
        expect = raw["expect"]
        if expect not in ("allow", "deny"):
            raise self.fail(f"{where}.expect", f'expected "allow" or "deny", got {expect!r}', i)
        rule = None
        if "rule" in raw:
            rule = self.string(raw["rule"], f"{where}.rule", i, empty=True)
            if rule == "" and expect == "allow":
                raise self.fail(f"{where}.rule", 'rule "" is the default deny: expect deny', i)
        return TestCase(
            name=name,
            request=self.request(raw["request"], f"{where}.request", i),
            expect=expect,
            rule=rule,
            now=self.now(raw.get("now"), f"{where}.now", i),
            source=self.source,
            index=i,
        )

    def request(self, raw: Any, where: str, i: int) -> Request:
        raw = self.mapping(raw, where, _REQUEST_KEYS, i)
        for key in ("subject", "action", "resource"):
            if key not in raw:
                raise self.fail(where, f'missing key "{key}"', i)
        s = self.mapping(raw["subject"], f"{where}.subject", ("type", "id", "properties"), i)
        action = raw["action"]
        if isinstance(action, str):
            action = {"name": action}
        a = self.mapping(action, f"{where}.action", ("name", "properties"), i)
        r = self.mapping(raw["resource"], f"{where}.resource", ("type", "id", "properties"), i)
        peer = raw.get("peer_ip")
        return Request(
            subject=Subject(
                self.string(s.get("type"), f"{where}.subject.type", i),
                self.string(s.get("id"), f"{where}.subject.id", i),
                self.props(s.get("properties"), f"{where}.subject.properties", i),
            ),
            action=Action(
                self.string(a.get("name"), f"{where}.action.name", i),
                self.props(a.get("properties"), f"{where}.action.properties", i),
            ),
            resource=Resource(
                self.string(r.get("type"), f"{where}.resource.type", i),
                self.string(r.get("id"), f"{where}.resource.id", i),
                self.props(r.get("properties"), f"{where}.resource.properties", i),
            ),
            context=self.props(raw.get("context"), f"{where}.context", i),
            peer_ip=None if peer is None else self.string(peer, f"{where}.peer_ip", i),
        )

    def now(self, value: Any, where: str, i: int) -> float:
        if value is None:
            return DEFAULT_NOW
        if isinstance(value, int | float) and not isinstance(value, bool):
            if not math.isfinite(value):
                raise self.fail(where, f"{value} is not an instant", i)
            return float(value)
        if isinstance(value, str):
            try:
                value = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
            except ValueError:
                raise self.fail(
                    where, f"expected RFC 3339 or epoch seconds, got {value!r}", i
                ) from None
        if isinstance(value, datetime):
            if value.tzinfo is None:
                raise self.fail(where, "an RFC 3339 time needs an offset (e.g. Z)", i)
            return value.timestamp()
        if isinstance(value, date):
            raise self.fail(where, "a date is not an instant: give a time and an offset", i)
        raise self.fail(where, f"expected RFC 3339 or epoch seconds, got {kind_of(value)}", i)


def _plain(value: Any, where: str, parser: _Parser, i: int) -> Any:
    """``value`` checked to be JSON-like (YAML timestamps are refused: quote them)."""
    if value is None or isinstance(value, str | bool | int):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise parser.fail(where, f"{value} is not a JSON number", i)
        return value
    if isinstance(value, list):
        return [_plain(v, f"{where}[{k}]", parser, i) for k, v in enumerate(value)]
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise parser.fail(where, f"keys must be strings, got {k!r}", i)
            out[k] = _plain(v, f"{where}.{k}", parser, i)
        return out
    raise parser.fail(where, f"{type(value).__name__} is not a JSON value (quote it)", i)


def load_suite(text: str | bytes, *, source: str = "<tests>") -> list[TestCase]:
    """Parse a test file's text into cases; raise SuiteError naming the file and case index."""
    if len(text) > MAX_SUITE_BYTES:
        raise SuiteError(f"more than {MAX_SUITE_BYTES} bytes", source=source)
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            reason = f"not UTF-8 ({exc.reason} at byte {exc.start})"
            raise SuiteError(reason, source=source) from None
    parser = _Parser(source, text)
    try:
        doc = yaml.load(text, Loader=_Loader)  # noqa: S506 (a SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        raise SuiteError(
            f"invalid YAML: {exc.problem or exc.context}",
            source=source,
            line=None if mark is None else mark.line + 1,
        ) from None
    except (yaml.YAMLError, RecursionError) as exc:
        raise SuiteError(f"invalid YAML: {exc}", source=source) from None
    if not isinstance(doc, dict) or not isinstance(doc.get("tests"), list):
        raise SuiteError('expected a mapping with a "tests" list', source=source)
    unknown = [k for k in doc if k != "tests"]
    if unknown:
        raise SuiteError(f'unknown key "{unknown[0]}" (allowed: tests)', source=source)
    cases = [parser.case(raw, i) for i, raw in enumerate(doc["tests"])]
    seen: dict[str, int] = {}
    for case in cases:
        if case.name in seen:
            raise parser.fail(
                f"tests[{case.index}].name",
                f'duplicate case name "{case.name}" (first at tests[{seen[case.name]}])',
                case.index,
            )
        seen[case.name] = case.index
    return cases


def load_suite_file(path: Path) -> list[TestCase]:
    """Read and parse one test file; raises SuiteError (or OSError when it cannot be read)."""
    with path.open("rb") as fh:
        data = fh.read(MAX_SUITE_BYTES + 1)
    return load_suite(data, source=str(path))


# --- running -----------------------------------------------------------------------------


def run_suite(bundle: Bundle | CompiledPolicy, cases: Sequence[TestCase]) -> SuiteResult:
    """Decide every case on the compiled ``bundle`` and measure rule coverage.

    Raises SuiteError when a case expects a rule id the bundle does not have.
    """
    if isinstance(bundle, CompiledPolicy):
        policy = bundle
    else:
        policy = compile_bundle(bundle, version="test")
    rule_ids = policy.rule_ids
    known = set(rule_ids)
    decided = dict.fromkeys(rule_ids, 0)
    considered = dict.fromkeys(rule_ids, 0)
    results = []
    for case in cases:
        if case.rule and case.rule not in known:
            raise SuiteError(
                f'no rule "{case.rule}" in bundle',
                source=case.source,
                location=f'tests[{case.index}] ("{case.name}").rule',
            )
        decision = policy.evaluate(case.request, now=case.now)
        _, traces = policy.explain(case.request, now=case.now)
        walked = tuple(t.rule_id for t in traces)
        for rid in walked:
            considered[rid] += 1
        if traces and traces[-1].matched and traces[-1].rule_id == decision.rule_id:
            decided[decision.rule_id] += 1
        expect = Effect.ALLOW if case.expect == "allow" else Effect.DENY
        passed = decision.effect is expect and (case.rule is None or case.rule == decision.rule_id)
        results.append(CaseResult(case, decision, passed, walked))
    return SuiteResult(tuple(results), Coverage(rule_ids, decided, considered))


def request_to_dict(request: Request) -> dict[str, Any]:
    """A request as JSON-able plain data, in the shape test files use."""
    out: dict[str, Any] = {
        "subject": {
            "type": request.subject.type,
            "id": request.subject.id,
            "properties": _jsonable(request.subject.properties),
        },
        "action": {"name": request.action.name, "properties": _jsonable(request.action.properties)},
        "resource": {
            "type": request.resource.type,
            "id": request.resource.id,
            "properties": _jsonable(request.resource.properties),
        },
        "context": _jsonable(request.context),
    }
    if request.peer_ip is not None:
        out["peer_ip"] = request.peer_ip
    return out


def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, str | bool | int | float):
        return value
    return repr(value)
