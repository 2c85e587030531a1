"""Compiles a bundle into an indexed, closure-based policy and evaluates requests on it.

Rules are indexed by (action name, resource type); wildcard rules are merged in bundle
order, so a decision only looks at rules that can apply.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pdp.policy.evaluate import (
    Accessor,
    EvalError,
    Node,
    Window,
    accessor,
    compile_condition,
    explain,
    freeze,
    paths_read,
)
from pdp.policy.model import Bundle, Decision, Effect, Request, Rule, RuleTrace
from pdp.policy.patterns import compile_glob, id_matcher, is_glob, pause_gc

__all__ = ["CompiledPolicy", "compile_bundle"]

_MEMO_LIMIT = 65_536  # most (action, resource type) keys outside the exact index remembered
_ALWAYS_KEYS = frozenset(
    {"subject.id", "subject.type", "action.name", "resource.id", "resource.type"}
)

_PLAIN = frozenset({str, int, float, type(None)})  # already hashable, and bool is not among them

SubjectTest = Callable[[str, str], bool]
IdTest = Callable[[str], bool]


@dataclass(frozen=True, slots=True)
class _Compiled:
    """One rule, compiled. ``entry`` is the tuple the hot loop unpacks."""

    index: int
    rule: Rule
    action_ok: IdTest | None
    type_ok: IdTest | None
    when: Node | None
    windows: tuple[Window, ...]
    entry: tuple[SubjectTest | None, IdTest | None, Any, Decision, _Compiled | None]


def _pattern_test(pattern: str) -> IdTest | None:
    if pattern == "*":
        return None
    if not is_glob(pattern):
        return lambda value: value == pattern
    match = compile_glob(pattern)
    return lambda value: match(value) is not None


def _lazy(patterns: tuple[str, ...]) -> IdTest | None:
    """An id matcher whose regex is built on first use: compiling stays fast for big bundles."""
    if not patterns or "*" in patterns:
        return None
    if not any(is_glob(p) for p in patterns):
        return id_matcher(patterns)
    built: list[IdTest | None] = []

    def test(value: str) -> bool:
        if not built:
            built.append(id_matcher(patterns))
        matcher = built[0]
        return matcher is None or matcher(value)

    return test


def _subject_test(rule: Rule, roles: Any) -> SubjectTest | None:
    type_ok = _pattern_test(rule.subjects.type)
    members = list(rule.subjects.ids)
    for role in rule.subjects.roles:
        members.extend(roles[role])
    if not members and not rule.subjects.roles:
        id_ok = None
    elif not members:  # only empty roles: nobody
        return lambda stype, sid: False
    else:
        id_ok = _lazy(tuple(members))
    if type_ok is None:
        return None if id_ok is None else (lambda stype, sid: id_ok(sid))
    if id_ok is None:
        return lambda stype, sid: type_ok(stype)
    return lambda stype, sid: type_ok(stype) and id_ok(sid)


class CompiledPolicy:
    """An immutable, indexed policy: :meth:`evaluate` is a pure function of request and time."""

    def __init__(self, bundle: Bundle, *, version: str, sequence: int) -> None:
        self.bundle = bundle
        self.version = version
        self.sequence = sequence
        self.digest = bundle.digest
        self.rule_count = len(bundle.rules)
        self._default = Decision(Effect.DENY, "", "default deny", version)
        compiled = [self._compile(i, rule) for i, rule in enumerate(bundle.rules)]
        self._wild = [c for c in compiled if not _exact(c.rule)]
        self._index: dict[tuple[str, str], tuple[Any, ...]] = {}
        self._build_index(compiled)
        self._memo_count = 0
        paths = set().union(*(paths_read(r.when) for r in bundle.rules if r.when is not None))
        self._readers: tuple[Accessor, ...] = tuple(
            accessor(p) for p in sorted(paths - _ALWAYS_KEYS)
        )
        self._reads_peer = bundle.reads_peer

    def _compile(self, i: int, rule: Rule) -> _Compiled:
        windows: list[Window] = []
        node = None
        if rule.when is not None:
            node = compile_condition(rule.when, "when", self.bundle.segments, windows)
        verb = "allowed" if rule.effect is Effect.ALLOW else "denied"
        decision = Decision(rule.effect, rule.id, f"{verb} by rule {rule.id}", self.version)
        action_ok = None if "*" in rule.actions else _any_of(rule.actions)
        c = _Compiled(
            i,
            rule,
            action_ok,
            _pattern_test(rule.resources.type),
            node,
            tuple(windows),
            (None, None, None, decision, None),
        )
        entry = (
            _subject_test(rule, self.bundle.roles),
            _lazy(rule.resources.ids),
            node.fn if node is not None else None,
            decision,
            c,
        )
        object.__setattr__(c, "entry", entry)
        return c

    def _build_index(self, compiled: list[_Compiled]) -> None:
        exact: dict[tuple[str, str], list[_Compiled]] = {}
        by_action: dict[str, list[_Compiled]] = {}  # exact actions, wildcard type
        by_type: dict[str, list[_Compiled]] = {}  # wildcard actions, exact type
        anywhere: list[_Compiled] = []
        for c in compiled:
            rule = c.rule
            glob_type = is_glob(rule.resources.type)
            glob_action = any(is_glob(a) for a in rule.actions)
            if not glob_type and not glob_action:
                for a in dict.fromkeys(rule.actions):
                    exact.setdefault((a, rule.resources.type), []).append(c)
            elif not glob_action:
                for a in dict.fromkeys(rule.actions):
                    by_action.setdefault(a, []).append(c)
            elif not glob_type:
                by_type.setdefault(rule.resources.type, []).append(c)
            else:
                anywhere.append(c)
        for (a, t), rules in exact.items():
            merged = list(rules)
            merged += [c for c in by_action.get(a, ()) if c.type_ok is None or c.type_ok(t)]
            merged += [c for c in by_type.get(t, ()) if c.action_ok is None or c.action_ok(a)]
            merged += [c for c in anywhere if _applies(c, a, t)]
            merged.sort(key=lambda c: c.index)
            self._index[(a, t)] = tuple(c.entry for c in merged)

    def _candidates(self, action: str, rtype: str) -> tuple[Any, ...]:
        key = (action, rtype)
        found = self._index.get(key)
        if found is None:
            found = tuple(c.entry for c in self._wild if _applies(c, action, rtype))
            if self._memo_count < _MEMO_LIMIT:  # bounded: unknown keys cannot grow memory
                self._memo_count += 1
                self._index[key] = found
        return found

    def evaluate(self, request: Request, *, now: float) -> Decision:
        """Decide ``request`` at ``now`` (epoch seconds): the first matching rule, else DENY."""
        return self._run(request, now)[0]

    def _run(self, request: Request, now: float) -> tuple[Decision, int, tuple[Any, ...], bool]:
        candidates = self._candidates(request.action.name, request.resource.type)
        subject = request.subject
        stype, sid, rid = subject.type, subject.id, request.resource.id
        position = 0
        try:
            for subj, res, when, decision, _ in candidates:
                if (
                    (subj is None or subj(stype, sid))
                    and (res is None or res(rid))
                    and (when is None or when(request, now))
                ):
                    return decision, position, candidates, False
                position += 1
        except EvalError as exc:
            rule_id = candidates[position][3].rule_id
            reason = f"evaluation error in rule {rule_id}: {exc}"
            return Decision(Effect.DENY, rule_id, reason, self.version), position, candidates, True
        return self._default, position, candidates, False

    def decide_for_cache(self, request: Request, now: float) -> tuple[Decision, float, bool]:
        """Evaluate, also returning until when the answer holds (inf unless a window was
        read) and whether it was an evaluation error."""
        decision, position, candidates, error = self._run(request, now)
        expires = math.inf
        for entry in candidates[: position + 1]:
            for window in entry[4].windows:
                expires = min(expires, window.next_change(now))
        return decision, expires, error

    def cache_key(self, request: Request) -> tuple[Any, ...]:
        """Every input this policy can read from ``request``, frozen to hashables."""
        s, r = request.subject, request.resource
        key: tuple[Any, ...] = (
            self.version,
            s.type,
            s.id,
            request.action.name,
            r.type,
            r.id,
            request.peer_ip if self._reads_peer else None,
        )
        if self._readers:
            values = [read(request) for read in self._readers]
            key += tuple([v if type(v) in _PLAIN else freeze(v) for v in values])
        return key

    def explain(self, request: Request, *, now: float) -> tuple[Decision, list[RuleTrace]]:
        """The decision plus a trace of every candidate rule walked, in order, until it."""
        decision = self.evaluate(request, now=now)
        traces = []
        for entry in self._candidates(request.action.name, request.resource.type):
            c: _Compiled = entry[4]
            effect = "allow" if c.rule.effect is Effect.ALLOW else "deny"
            part, detail = _why_not(c, entry, request, now)
            traces.append(RuleTrace(c.rule.id, effect, part == "", part, detail))
            if part == "" or part == "error":
                if part == "error":
                    traces[-1] = RuleTrace(c.rule.id, effect, False, "when", detail)
                break
        return decision, traces

    def __repr__(self) -> str:
        return f"CompiledPolicy(version={self.version!r}, rules={self.rule_count})"


def _why_not(c: _Compiled, entry: Any, request: Request, now: float) -> tuple[str, str]:
    subj, res, when = entry[0], entry[1], entry[2]
    s = request.subject
    if subj is not None and not subj(s.type, s.id):
        return "subject", f"subject {s.type}:{s.id} is not among the rule's subjects"
    if res is not None and not res(request.resource.id):
        return "resource", f"resource id {request.resource.id!r} is not among the rule's ids"
    if when is None or c.when is None:
        return "", "matched"
    try:
        if when(request, now):
            return "", "matched"
        return "when", explain(c.when, request, now)
    except EvalError as exc:
        return "error", f"evaluation error: {exc}"


def _any_of(patterns: tuple[str, ...]) -> IdTest:
    if not any(is_glob(p) for p in patterns):
        return frozenset(patterns).__contains__
    tests = [_pattern_test(p) for p in patterns]
    return lambda value: any(t is None or t(value) for t in tests)


def _exact(rule: Rule) -> bool:
    return not is_glob(rule.resources.type) and not any(is_glob(a) for a in rule.actions)


def _applies(c: _Compiled, action: str, rtype: str) -> bool:
    return (c.action_ok is None or c.action_ok(action)) and (c.type_ok is None or c.type_ok(rtype))


def compile_bundle(bundle: Bundle, *, version: str, sequence: int = 0) -> CompiledPolicy:
    """Compile ``bundle`` under the version string the store gave it."""
    with pause_gc():
        return CompiledPolicy(bundle, version=version, sequence=sequence)
