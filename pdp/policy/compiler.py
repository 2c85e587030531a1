"""Compiles a bundle into an indexed, closure-based policy and evaluates requests on it.

Rules are grouped by resource type at compile time (glob-typed rules merged in bundle
order) and the (action, type) index is filled from the groups as keys are first asked, so
a decision only looks at rules that can apply, and a big bundle's index costs one slot per
type, not one per (action, type).
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pdp.policy._json import compile_rules as _compile_rules
from pdp.policy._json import decision_type as _decision_type
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
from pdp.policy.model import Bundle, Decision, Effect, Request, RuleTrace, SubjectMatch
from pdp.policy.patterns import compile_glob, id_matcher, is_glob, pause_gc

__all__ = ["CompiledPolicy", "compile_bundle"]

_MEMO_LIMIT = 65_536  # most (action, resource type) keys the index remembers
_ALWAYS_KEYS = frozenset(
    {"subject.id", "subject.type", "action.name", "resource.id", "resource.type"}
)

_PLAIN = frozenset({str, int, float, type(None)})  # already hashable, and bool is not among them

SubjectTest = Callable[[str, str], bool]
IdTest = Callable[[str], bool]


@dataclass(frozen=True, slots=True)
class _Meta:
    """What the index, explain and cache deadlines need of a rule beyond its hot-loop
    entry; rules with the same actions and `when` (the loader shares repeated ones) share
    one."""

    action_ok: IdTest | None  # None: every action
    when: Node | None
    windows: tuple[Window, ...]


_UNSET: Any = object()
_decision_type(Decision)  # what _compile_rules makes a rule's Decision of

# One rule, compiled: what the hot loop unpacks. Nothing else is kept per rule (the
# Decision's rule id and effect name it), so 100,000 rules cost one tuple and one Decision
# each (and a slot in the index); every test and condition is shared between rules alike
# in it. The Bundle itself is not kept: at 100,000 rules its Rule objects are 14 MB.
Entry = tuple[SubjectTest | None, IdTest | None, Any, Decision, _Meta]


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


def _subject_test(subjects: SubjectMatch, roles: Any) -> SubjectTest | None:
    type_ok = _pattern_test(subjects.type)
    members = list(subjects.ids)
    for role in subjects.roles:
        members.extend(roles[role])
    if not members and not subjects.roles:
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
    """An immutable, indexed policy: :meth:`evaluate` is a pure function of request and time.

    It keeps what deciding and explaining need, not the :class:`Bundle` it was compiled
    from (``digest``, ``rule_count`` and ``rule_ids`` describe that).
    """

    def __init__(self, bundle: Bundle, *, version: str, sequence: int) -> None:
        self.version = version
        self.sequence = sequence
        self.digest = bundle.digest
        self.rule_count = len(bundle.rules)
        # The rules' ids in bundle order.
        self.rule_ids: tuple[str, ...] = tuple([rule.id for rule in bundle.rules])
        self._default = Decision(Effect.DENY, "", "default deny", version)
        # Type -> its rules' entries; a type with one rule maps to that entry itself, not to
        # a tuple of one (48 bytes a type, and big bundles have a type per rule or so).
        self._types: dict[str, tuple[Any, ...]] = {}
        self._wild: tuple[tuple[IdTest | None, Entry], ...] = ()
        self._compile(bundle)
        # (action, type) -> candidates, filled from _types on first use (bounded).
        self._index: dict[tuple[str, str], tuple[Entry, ...]] = {}
        self._memo_count = 0
        whens = {id(r.when): r.when for r in bundle.rules if r.when is not None}
        paths = set().union(*(paths_read(w) for w in whens.values()))
        self._readers: tuple[Accessor, ...] = tuple(
            accessor(p) for p in sorted(paths - _ALWAYS_KEYS)
        )
        self._reads_peer = bundle.reads_peer

    def _compile(self, bundle: Bundle) -> None:
        """One entry per rule, grouped by exact resource type in bundle order (rules with a
        glob type merged into every group they match, and kept apart for other types);
        tests and conditions are built once per distinct spelling."""
        roles, segments = bundle.roles, bundle.segments
        action_tests: dict[int, IdTest | None] = {}
        nodes: dict[int, tuple[Any, Node, tuple[Window, ...]]] = {}

        def meta(actions: tuple[str, ...], when: Any) -> tuple[Any, _Meta]:
            """The condition's function and the rule's _Meta, per (actions, when) objects."""
            action_ok = action_tests.get(id(actions), _UNSET)
            if action_ok is _UNSET:
                action_ok = action_tests[id(actions)] = _any_of(actions)
            compiled = nodes.get(id(when))
            if compiled is None and when is not None:
                windows: list[Window] = []
                node = compile_condition(when, "when", segments, windows)
                compiled = nodes[id(when)] = (node.fn, node, tuple(windows))
            fn, node_or_none, window_list = compiled or (None, None, ())
            return fn, _Meta(action_ok, node_or_none, window_list)

        # The loop over the rules is in C (_json.c, compile_rules): an entry per rule, each
        # part made once by the functions given; 4,096 rules a call, so that the serving
        # threads get the GIL in between.
        entries: list[Entry] = []
        typed: dict[str, Any] = {}  # type -> the one rule's position, or several positions
        globbed: list[tuple[int, IdTest | None]] = []  # rules with a glob type: (position, test)
        makers = (lambda subjects: _subject_test(subjects, roles), _lazy, meta, _pattern_test)
        # The caches of subject tests, id tests and metas, then what the loop makes.
        state: tuple[Any, ...] = ({}, {}, {}, entries, typed, globbed)
        for start in range(0, len(bundle.rules), 4096):
            _compile_rules(bundle.rules, start, start + 4096, self.version, makers, state)
        types = self._types
        for rtype, at in typed.items():
            positions = [at] if type(at) is int else at
            if globbed:
                more = [i for i, type_ok in globbed if _ok(type_ok, rtype)]
                if more:
                    positions = sorted(positions + more)
            types[rtype] = (
                entries[positions[0]] if len(positions) == 1
                else tuple([entries[i] for i in positions])
            )
        self._wild = tuple((type_ok, entries[i]) for i, type_ok in globbed)
        self._windowed = any(entry[4].windows for entry in entries)

    def _candidates(self, action: str, rtype: str) -> tuple[Any, ...]:
        key = (action, rtype)
        found = self._index.get(key)
        if found is None:
            typed = self._types.get(rtype)
            if typed is None:  # no rule names this type: only glob-typed rules can apply
                found = tuple(
                    [e for t, e in self._wild if _ok(t, rtype) and _ok(e[4].action_ok, action)]
                )
            else:
                if type(typed[0]) is not tuple:  # one rule's entry (its [0] is a test)
                    typed = (typed,)
                kept = [e for e in typed if _ok(e[4].action_ok, action)]
                found = typed if len(kept) == len(typed) else tuple(kept)
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
        if not self._windowed:  # no rule reads the clock: the answer holds until the ttl
            return decision, expires, error
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
        readers = self._readers
        if not readers:
            return key
        # No comprehension (each is a function call on Python 3.11): for one reader, the
        # usual policy (a rule reading resource.owner, say), 1.16 -> 0.48 µs a key.
        if len(readers) == 1:
            value = readers[0](request)
            return (*key, value if type(value) in _PLAIN else freeze(value))
        values = []
        for read in readers:
            value = read(request)
            values.append(value if type(value) in _PLAIN else freeze(value))
        return key + tuple(values)

    def lasting_key(self, key: tuple[Any, ...]) -> tuple[Any, ...]:
        """``key`` (from :meth:`cache_key`) as the cache should keep it: its strings shared
        with every other key that repeats them (types, subject and action, peer, attribute
        values), so a full cache holds one "alice", not 100,000. The resource id, usually
        unique, is kept as it is."""
        intern = sys.intern
        version, stype, sid, action, rtype, rid, peer = key[:7]
        try:
            head = (version, intern(stype), intern(sid), intern(action), intern(rtype), rid,
                    None if peer is None else intern(peer))
        except TypeError:  # a field that is not a str (only from Python callers): as it is
            return key
        if len(key) == 7:
            return head
        return head + tuple([intern(v) if type(v) is str else v for v in key[7:]])

    def explain(self, request: Request, *, now: float) -> tuple[Decision, list[RuleTrace]]:
        """The decision plus a trace of every candidate rule walked, in order, until it."""
        decision = self.evaluate(request, now=now)
        traces = []
        for entry in self._candidates(request.action.name, request.resource.type):
            d = entry[3]
            effect = "allow" if d.effect is Effect.ALLOW else "deny"
            part, detail = _why_not(entry, request, now)
            traces.append(RuleTrace(d.rule_id, effect, part == "", part, detail))
            if part == "" or part == "error":
                if part == "error":
                    traces[-1] = RuleTrace(d.rule_id, effect, False, "when", detail)
                break
        return decision, traces

    def __repr__(self) -> str:
        return f"CompiledPolicy(version={self.version!r}, rules={self.rule_count})"


def _why_not(entry: Entry, request: Request, now: float) -> tuple[str, str]:
    subj, res, when, node = entry[0], entry[1], entry[2], entry[4].when
    s = request.subject
    if subj is not None and not subj(s.type, s.id):
        return "subject", f"subject {s.type}:{s.id} is not among the rule's subjects"
    if res is not None and not res(request.resource.id):
        return "resource", f"resource id {request.resource.id!r} is not among the rule's ids"
    if when is None or node is None:
        return "", "matched"
    try:
        if when(request, now):
            return "", "matched"
        return "when", explain(node, request, now)
    except EvalError as exc:
        return "error", f"evaluation error: {exc}"


def _any_of(patterns: tuple[str, ...]) -> IdTest | None:
    if "*" in patterns:
        return None
    if not any(is_glob(p) for p in patterns):
        return frozenset(patterns).__contains__
    tests = [_pattern_test(p) for p in patterns]
    return lambda value: any(t is None or t(value) for t in tests)


def _ok(test: IdTest | None, value: str) -> bool:
    return test is None or test(value)


def compile_bundle(bundle: Bundle, *, version: str, sequence: int = 0) -> CompiledPolicy:
    """Compile ``bundle`` under the version string the store gave it."""
    with pause_gc():
        return CompiledPolicy(bundle, version=version, sequence=sequence)
