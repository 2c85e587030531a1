"""Static analysis of a validated bundle: shadowed rules, unsatisfiable conditions, risky overlaps.

Every finding is certain (sound): when the analysis cannot prove a fact, it says nothing.
"""

from __future__ import annotations

import fnmatch
import heapq
import json
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Literal

from pdp.policy.evaluate import json_eq
from pdp.policy.model import Bundle, Effect, Rule
from pdp.policy.patterns import is_glob

__all__ = ["Finding", "Severity", "glob_covers", "glob_intersects", "lint"]

Severity = Literal["error", "warning", "info"]
_SEVERITY_ORDER = {"error": 0, "warning": 1, "info": 2}
_STATE_LIMIT = 20_000  # most automaton states explored per glob question; beyond: "unknown"
_STAR, _ANY = "*", "?"


@dataclass(frozen=True, slots=True)
class Finding:
    """One lint finding: how bad, a stable code, the rules involved (in bundle order), and why."""

    severity: Severity
    code: str
    rules: tuple[str, ...]
    message: str

    def to_dict(self) -> dict[str, Any]:
        """The finding as JSON-able data."""
        return {
            "severity": self.severity,
            "code": self.code,
            "rules": list(self.rules),
            "message": self.message,
        }


# --- globs as automata ------------------------------------------------------------------


@lru_cache(maxsize=4096)
def _tokens(pattern: str) -> tuple[str, ...]:
    """The glob as tokens: "*", "?", a "[...]" class, or one literal character.

    Bracket spans are found exactly as :func:`fnmatch.translate` finds them, which is
    what the engine compiles, so each class token means what it means at runtime.
    """
    out: list[str] = []
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        i += 1
        if c == "[":
            j = i
            if j < n and pattern[j] == "!":
                j += 1
            if j < n and pattern[j] == "]":
                j += 1
            while j < n and pattern[j] != "]":
                j += 1
            if j < n:
                out.append("[" + pattern[i : j + 1])
                i = j + 1
                continue
            out.append("\\[")  # unclosed: a literal "[" (kept distinct from a class)
        elif c == "*":
            if not out or out[-1] != _STAR:
                out.append(_STAR)
        elif c == "?":
            out.append(_ANY)
        else:
            out.append("\\" + c)
    return tuple(out)


@lru_cache(maxsize=4096)
def _class_test(token: str) -> Any:
    return re.compile(fnmatch.translate(token)).match


def _step_ok(token: str, ch: str) -> bool:
    if token == _ANY:
        return True
    if token[0] == "\\":
        return token[1] == ch
    return _class_test(token)(ch) is not None


def _closure(tokens: tuple[str, ...], states: set[int]) -> frozenset[int]:
    todo = list(states)
    seen = set(states)
    while todo:
        p = todo.pop()
        if p < len(tokens) and tokens[p] == _STAR and p + 1 not in seen:
            seen.add(p + 1)
            todo.append(p + 1)
    return frozenset(seen)


def _step(tokens: tuple[str, ...], states: frozenset[int], ch: str) -> frozenset[int]:
    nxt: set[int] = set()
    for p in states:
        if p < len(tokens):
            if tokens[p] == _STAR:
                nxt.add(p)
            elif _step_ok(tokens[p], ch):
                nxt.add(p + 1)
    return _closure(tokens, nxt)


def _alphabet(*patterns: str) -> list[str]:
    """One representative character per class of characters no pattern tells apart."""
    starts = {0}
    for pattern in patterns:
        for ch in pattern:
            starts.add(ord(ch))
            if ord(ch) < 0x10FFFF:
                starts.add(ord(ch) + 1)
    return [chr(s) for s in sorted(starts)]


def _explore(a: str, b: str, stop: Any) -> bool | None:
    """Walk the product of both globs' automata; True as soon as ``stop(acc_a, acc_b)``.

    False when no reachable pair of states satisfies ``stop``; None when too many states.
    """
    ta, tb = _tokens(a), _tokens(b)
    alphabet = _alphabet(a, b)
    start = (_closure(ta, {0}), _closure(tb, {0}))
    seen = {start}
    todo = [start]
    while todo:
        sa, sb = todo.pop()
        if stop(len(ta) in sa, len(tb) in sb):
            return True
        for ch in alphabet:
            pair = (_step(ta, sa, ch), _step(tb, sb, ch))
            if not pair[1] or pair in seen:
                continue
            if len(seen) >= _STATE_LIMIT:
                return None
            seen.add(pair)
            todo.append(pair)
    return False


_META = re.compile(r"[*?\[]")


@lru_cache(maxsize=8192)
def _affixes(pattern: str) -> tuple[str, str]:
    """The literal text every match starts and ends with."""
    found = [m.start() for m in _META.finditer(pattern)]
    if not found:
        return pattern, pattern
    return pattern[: found[0]], pattern[found[-1] + 1 :] if pattern[found[-1]] != "[" else ""


def _affixes_clash(a: str, b: str) -> bool:
    """True when no string can match both globs, judged by their literal ends alone."""
    (pa, sa), (pb, sb) = _affixes(a), _affixes(b)
    n, m = min(len(pa), len(pb)), min(len(sa), len(sb))
    return pa[:n] != pb[:n] or (m > 0 and sa[-m:] != sb[-m:])


@lru_cache(maxsize=65_536)
def glob_covers(outer: str, inner: str) -> bool:
    """True only when every string ``inner`` matches is also matched by ``outer``."""
    if outer == inner or outer == "*":
        return True
    if not is_glob(inner):
        return re.compile(fnmatch.translate(outer)).match(inner) is not None
    if _affixes_clash(outer, inner):
        return False
    escaped = _explore(outer, inner, lambda acc_outer, acc_inner: acc_inner and not acc_outer)
    return escaped is False


@lru_cache(maxsize=65_536)
def glob_intersects(a: str, b: str) -> bool:
    """True only when some string is matched by both ``a`` and ``b``."""
    if a == "*" or b == "*" or a == b:
        return True
    if not is_glob(a):
        return re.compile(fnmatch.translate(b)).match(a) is not None
    if not is_glob(b):
        return re.compile(fnmatch.translate(a)).match(b) is not None
    if _affixes_clash(a, b):
        return False
    return _explore(a, b, lambda acc_a, acc_b: acc_a and acc_b) is True


# --- rule spaces -------------------------------------------------------------------------


def _members(rule: Rule, roles: Mapping[str, Sequence[str]]) -> tuple[str, ...] | None:
    """The subject id patterns a rule admits; None means every id."""
    if not rule.subjects.ids and not rule.subjects.roles:
        return None
    out = list(rule.subjects.ids)
    for role in rule.subjects.roles:
        out.extend(roles.get(role, ()))
    return None if "*" in out else tuple(out)


def _ids(patterns: tuple[str, ...]) -> tuple[str, ...] | None:
    return None if not patterns or "*" in patterns else patterns


def _set_covers(outer: tuple[str, ...] | None, inner: tuple[str, ...] | None) -> bool:
    if outer is None:
        return True
    if inner is None:
        return any(glob_covers(o, "*") for o in outer)
    return all(any(glob_covers(o, i) for o in outer) for i in inner)


def _set_meets(a: tuple[str, ...] | None, b: tuple[str, ...] | None) -> bool:
    if a is None or b is None:
        return (a is None or bool(a)) and (b is None or bool(b))
    return any(glob_intersects(x, y) for x in a for y in b)


def _space_covers(bundle: Bundle, early: Rule, late: Rule) -> bool:
    roles = bundle.roles
    return (
        _set_covers(early.actions, late.actions)
        and glob_covers(early.resources.type, late.resources.type)
        and glob_covers(early.subjects.type, late.subjects.type)
        and _set_covers(_ids(early.resources.ids), _ids(late.resources.ids))
        and _set_covers(_members(early, roles), _members(late, roles))
    )


def _space_meets(bundle: Bundle, a: Rule, b: Rule) -> bool:
    roles = bundle.roles
    return (
        _set_meets(a.actions, b.actions)
        and glob_intersects(a.resources.type, b.resources.type)
        and glob_intersects(a.subjects.type, b.subjects.type)
        and _set_meets(_ids(a.resources.ids), _ids(b.resources.ids))
        and _set_meets(_members(a, roles), _members(b, roles))
    )


def _key(cond: Any) -> str:
    # JSON text keeps true and 1 apart, which Python's == does not.
    return json.dumps(cond, sort_keys=True)


def _facts(cond: Mapping[str, Any] | None) -> frozenset[str] | None:
    """What a rule's condition guarantees when it holds: itself and, for `all`, each part."""
    if cond is None:
        return None
    facts = {_key(cond)}
    if "all" in cond:
        facts |= {_key(c) for c in cond["all"]}
    return frozenset(facts)


def _needs(cond: Mapping[str, Any] | None) -> tuple[frozenset[str], ...]:
    """Ways to know a rule's condition holds: any one of these sets of facts suffices."""
    if cond is None:
        return (frozenset(),)
    ways = [frozenset({_key(cond)})]
    if "all" in cond:
        ways.append(frozenset(_key(c) for c in cond["all"]))
    return tuple(ways)


def _implies(late: frozenset[str] | None, early: tuple[frozenset[str], ...]) -> bool:
    """True only when the early condition (as :func:`_needs`) holds whenever the late one
    (as :func:`_facts`) does."""
    if not early[0]:
        return True
    return late is not None and any(need <= late for need in early)


# --- conditions ---------------------------------------------------------------------------


def _is_num(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _conflict(where: str, items: list[tuple[str, str, Any]]) -> str | None:
    """Why the literal comparisons ``items`` (index path, op, literal) on one attribute
    cannot all hold, or None."""
    eqs = [(w, v) for w, op, v in items if op == "eq"]
    for w1, v1 in eqs:
        for w2, v2 in eqs:
            if w1 < w2 and not json_eq(v1, v2):
                return f"{w1} requires {v1!r} and {w2} requires {v2!r}"
    for w1, v1 in eqs:
        for w2, op, v2 in items:
            if op == "ne" and json_eq(v1, v2):
                return f"{w1} requires {v1!r} and {w2} excludes it"
            if op == "in" and isinstance(v2, list) and not any(json_eq(v1, x) for x in v2):
                return f"{w1} requires {v1!r}, which is not in {w2}'s list"
            if op == "not_in" and isinstance(v2, list) and any(json_eq(v1, x) for x in v2):
                return f"{w1} requires {v1!r} and {w2} excludes it"
    lows = [(v, op == "gt", w) for w, op, v in items if op in ("gt", "ge") and _is_num(v)]
    highs = [(v, op == "lt", w) for w, op, v in items if op in ("lt", "le") and _is_num(v)]
    lows += [(v, False, w) for w, v in eqs if _is_num(v)]
    highs += [(v, False, w) for w, v in eqs if _is_num(v)]
    for lo, lo_strict, w1 in lows:
        for hi, hi_strict, w2 in highs:
            if w1 != w2 and (lo > hi or (lo == hi and (lo_strict or hi_strict))):
                return f"{w1} needs a value from {lo!r} up and {w2} one up to {hi!r}"
    return None


def _unsat(cond: Mapping[str, Any], where: str) -> str | None:
    """Why ``cond`` can never be true, or None when that is not certain."""
    if "all" in cond:
        by_attr: dict[str, list[tuple[str, str, Any]]] = {}
        for i, child in enumerate(cond["all"]):
            path = f"{where}.all[{i}]"
            if (why := _unsat(child, path)) is not None:
                return why
            if "attr" in child:
                op = next(k for k in child if k != "attr")
                if not (isinstance(child[op], dict) and "attr" in child[op]):
                    by_attr.setdefault(child["attr"], []).append((path, op, child[op]))
        for attr, items in by_attr.items():
            if (why := _conflict(where, items)) is not None:
                return f"{attr}: {why}"
        return None
    if "any" in cond:
        reasons = [_unsat(c, f"{where}.any[{i}]") for i, c in enumerate(cond["any"])]
        if all(r is not None for r in reasons):
            return "; ".join(r for r in reasons if r is not None)
        return None
    if "attr" in cond and cond.get("in") == []:
        return f"{where}: {cond['attr']} in an empty list"
    return None


# --- the checks -----------------------------------------------------------------------------


def _segments_used(cond: Any) -> Iterator[str]:
    if isinstance(cond, Mapping):
        for key, value in cond.items():
            if key in ("source_in_segment", "peer_in_segment"):
                yield from value
            else:
                yield from _segments_used(value)
    elif isinstance(cond, list):
        for item in cond:
            yield from _segments_used(item)


def _everything(bundle: Bundle, rule: Rule) -> list[str]:
    out = []
    if any(glob_covers(a, "*") for a in rule.actions):
        out.append("every action")
    members = _members(rule, bundle.roles)
    if (rule.subjects.ids or rule.subjects.roles) and (
        members is None or any(glob_covers(m, "*") for m in members)
    ):
        out.append("every subject id")
    if glob_covers(rule.resources.type, "*") and _set_covers(_ids(rule.resources.ids), None):
        out.append("every resource")
    elif rule.resources.ids and _set_covers(_ids(rule.resources.ids), None):
        out.append("every resource id")
    return out


class _TypeIndex:
    """Earlier rules by resource type, so a rule is only compared with those that can apply."""

    def __init__(self) -> None:
        self.exact: dict[str, list[int]] = {}
        self.globs: list[int] = []
        self.every: list[int] = []

    def add(self, i: int, rule: Rule) -> None:
        rtype = rule.resources.type
        (self.globs if is_glob(rtype) else self.exact.setdefault(rtype, [])).append(i)
        self.every.append(i)

    def candidates(self, rule: Rule, *, overlap: bool = False) -> Iterable[int]:
        """Earlier rules, in bundle order, whose resource type may cover (or, with
        ``overlap``, meet) ``rule``'s; a literal type is never taken to cover a glob."""
        rtype = rule.resources.type
        if is_glob(rtype):
            return self.every if overlap else self.globs
        return heapq.merge(self.exact.get(rtype, ()), self.globs)


def _first_cover(
    bundle: Bundle,
    late: Rule,
    facts: frozenset[str] | None,
    needs: list[tuple[frozenset[str], ...]],
    candidates: Iterable[int],
) -> int | None:
    for i in candidates:
        if _implies(facts, needs[i]) and _space_covers(bundle, bundle.rules[i], late):
            return i
    return None


def _effect(rule: Rule) -> str:
    return "allow" if rule.effect is Effect.ALLOW else "deny"


def lint(bundle: Bundle) -> list[Finding]:
    """Every finding for ``bundle``, most severe first, then in bundle order; never raises
    for a validated bundle."""
    found: list[tuple[int, Finding]] = []
    rules = bundle.rules
    facts = [_facts(r.when) for r in rules]
    needs = [_needs(r.when) for r in rules]
    index, unconditional = _TypeIndex(), _TypeIndex()
    for j, late in enumerate(rules):
        if late.when is not None and (why := _unsat(late.when, "when")) is not None:
            found.append(
                (
                    j,
                    Finding(
                        "error",
                        "unsatisfiable-condition",
                        (late.id,),
                        f'rule "{late.id}" can never match: {why}',
                    ),
                )
            )
        shadower = _first_cover(bundle, late, facts[j], needs, index.candidates(late))
        if shadower is not None:
            early = rules[shadower]
            same = early.effect is late.effect
            cond = "has no condition" if early.when is None else "has the same condition"
            found.append(
                (
                    j,
                    Finding(
                        "warning" if same else "error",
                        "shadowed-rule",
                        (early.id, late.id),
                        f'rule "{late.id}" ({_effect(late)}) can never match: earlier '
                        f'rule "{early.id}" ({_effect(early)}) {cond} and its subjects, '
                        f"actions and resources cover all of {late.id}'s",
                    ),
                )
            )
        elif late.when is None:
            for i in unconditional.candidates(late, overlap=True):
                early = rules[i]
                if early.effect is late.effect or not _space_meets(bundle, early, late):
                    continue
                bypass = early.effect is Effect.ALLOW
                found.append(
                    (
                        j,
                        Finding(
                            "warning" if bypass else "info",
                            "overlapping-rules",
                            (early.id, late.id),
                            f'rules "{early.id}" ({_effect(early)}) and "{late.id}" '
                            f"({_effect(late)}) both match some requests without conditions; "
                            f'order decides them: "{early.id}" wins'
                            + (f', so "{late.id}" does not deny them' if bypass else ""),
                        ),
                    )
                )
        index.add(j, late)
        if late.when is None:
            unconditional.add(j, late)
        if late.effect is Effect.ALLOW and late.when is None:
            for what in _everything(bundle, late):
                found.append(
                    (
                        j,
                        Finding(
                            "warning",
                            "matches-everything",
                            (late.id,),
                            f'rule "{late.id}" allows {what} with no condition',
                        ),
                    )
                )
    used_segments = set(_segments_used([r.when for r in rules]))
    used_roles = {role for r in rules for role in r.subjects.roles}
    end = len(rules)
    for name in bundle.segments:
        if name not in used_segments:
            found.append(
                (
                    end,
                    Finding(
                        "warning", "unused-segment", (), f'segment "{name}" is not used by any rule'
                    ),
                )
            )
    for name in bundle.roles:
        if name not in used_roles:
            found.append(
                (
                    end,
                    Finding("warning", "unused-role", (), f'role "{name}" is not used by any rule'),
                )
            )
    found.sort(key=lambda item: (_SEVERITY_ORDER[item[1].severity], item[0]))
    return [f for _, f in found]
