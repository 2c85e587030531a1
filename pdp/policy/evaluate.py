"""Compiles validated condition trees into closures, and explains their failures.

A condition is ``fn(request, now) -> bool``; it raises :class:`EvalError` when a
comparison cannot be evaluated (wrong types), which ends the whole decision with DENY.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from functools import lru_cache
from typing import Any

from pdp.policy import conditions
from pdp.policy.model import Request
from pdp.policy.patterns import GlobError, compile_glob

__all__ = [
    "MISSING",
    "Accessor",
    "Cond",
    "EvalError",
    "Node",
    "Window",
    "accessor",
    "compile_condition",
    "explain",
    "freeze",
    "json_eq",
    "paths_read",
]

Accessor = Callable[[Request], Any]
Cond = Callable[[Request, float], bool]
Net = ipaddress.IPv4Network | ipaddress.IPv6Network
Addr = ipaddress.IPv4Address | ipaddress.IPv6Address


class _Missing:
    __slots__ = ()

    def __repr__(self) -> str:
        return "<missing>"


MISSING: Any = _Missing()
_BOOL, _LIST, _DICT = object(), object(), object()


class EvalError(Exception):
    """A comparison cannot be evaluated (e.g. ``lt`` between a string and a number)."""


def _walk(obj: Any, keys: Sequence[str]) -> Any:
    for key in keys:
        if not isinstance(obj, Mapping):
            return MISSING
        obj = obj.get(key, MISSING)
        if obj is MISSING:
            return MISSING
    return obj


@lru_cache(maxsize=16_384)  # pure, so rules reading the same path share one closure
def accessor(path: str) -> Accessor:
    """A function reading ``path`` (validated) from a request; MISSING when absent."""
    parts = path.split(".")
    root, rest = parts[0], tuple(parts[1:])
    if root == "context":
        keys = rest
        return lambda r: _walk(r.context, keys)
    if rest[0] in ("id", "type", "name"):
        field = rest[0]
        if root == "subject":
            return (lambda r: r.subject.id) if field == "id" else (lambda r: r.subject.type)
        if root == "resource":
            return (lambda r: r.resource.id) if field == "id" else (lambda r: r.resource.type)
        return lambda r: r.action.name
    keys = rest[1:]
    if len(keys) == 1:
        (key,) = keys
        if root == "subject":
            return lambda r: r.subject.properties.get(key, MISSING)
        if root == "resource":
            return lambda r: r.resource.properties.get(key, MISSING)
        return lambda r: r.action.properties.get(key, MISSING)
    if root == "subject":
        return lambda r: _walk(r.subject.properties, keys)
    if root == "resource":
        return lambda r: _walk(r.resource.properties, keys)
    return lambda r: _walk(r.action.properties, keys)


def freeze(value: Any) -> Any:
    """A hashable stand-in for a JSON-like value; True and 1 stay apart, 3 and 3.0 do not."""
    t = type(value)
    if t is str or t is int or t is float or value is None or value is MISSING:
        return value
    if t is bool:
        return (_BOOL, value)
    if isinstance(value, list | tuple):
        return (_LIST, tuple(freeze(v) for v in value))
    if isinstance(value, Mapping):
        return (_DICT, frozenset((k, freeze(v)) for k, v in value.items()))
    return object()  # unknown type: a key that never hits, so never a wrong answer


def _is_num(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def json_eq(a: Any, b: Any) -> bool:
    """JSON equality: numbers by value (3 == 3.0), bools only equal bools, deep for lists/maps."""
    if isinstance(a, str) or isinstance(b, str):
        return isinstance(a, str) and isinstance(b, str) and a == b
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if _is_num(a) or _is_num(b):
        return _is_num(a) and _is_num(b) and a == b
    if a is None or b is None:
        return a is None and b is None
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(json_eq(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return a.keys() == b.keys() and all(json_eq(a[k], b[k]) for k in a)
    return False


def _kind(v: Any) -> str:
    if isinstance(v, bool):
        return "bool"
    if _is_num(v):
        return "number"
    if isinstance(v, str):
        return "string"
    if v is None:
        return "null"
    return "list" if isinstance(v, list | tuple) else "map" if isinstance(v, Mapping) else "value"


@lru_cache(maxsize=8192)
def _parse_ip(text: str) -> Addr:
    addr = ipaddress.ip_address(text)
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped  # ::ffff:10.0.0.1 is 10.0.0.1: no evading a v4 segment
    return addr


def _ip(value: Any, what: str) -> Addr:
    if not isinstance(value, str):
        raise EvalError(f"{what} is a {_kind(value)}, not an IP address")
    try:
        return _parse_ip(value)
    except ValueError:
        raise EvalError(f"{what} {value[:64]!r} is not an IP address") from None


def _in_nets(addr: Addr, nets: Iterable[Net]) -> bool:
    return any(addr.version == n.version and addr in n for n in nets)


def _order(op: str) -> Callable[[Any, Any], bool]:
    return {
        "lt": lambda a, b: a < b,
        "le": lambda a, b: a <= b,
        "gt": lambda a, b: a > b,
        "ge": lambda a, b: a >= b,
    }[op]


def _binary(op: str, what: str) -> Callable[[Any, Any], bool]:
    """The test for ``op`` on two present values; raises EvalError on wrong types."""
    if op == "eq":
        return json_eq
    if op == "ne":
        return lambda a, b: not json_eq(a, b)
    if op in ("lt", "le", "gt", "ge"):
        cmp = _order(op)

        def ordered(a: Any, b: Any) -> bool:
            if (isinstance(a, str) and isinstance(b, str)) or (_is_num(a) and _is_num(b)):
                return cmp(a, b)
            raise EvalError(f"{what}: cannot compare {_kind(a)} with {_kind(b)} using {op}")

        return ordered
    if op in ("in", "not_in"):
        negate = op == "not_in"

        def member(a: Any, b: Any) -> bool:
            if not isinstance(b, list | tuple):
                raise EvalError(f"{what}: {op} needs a list, got a {_kind(b)}")
            return any(json_eq(a, x) for x in b) != negate

        return member
    if op == "contains":

        def contains(a: Any, b: Any) -> bool:
            if isinstance(a, list | tuple):
                return any(json_eq(x, b) for x in a)
            if isinstance(a, str) and isinstance(b, str):
                return b in a
            raise EvalError(f"{what}: cannot test a {_kind(a)} contains a {_kind(b)}")

        return contains
    if op == "glob":

        def glob(a: Any, b: Any) -> bool:
            if not isinstance(a, str) or not isinstance(b, str):
                raise EvalError(f"{what}: glob needs strings, got {_kind(a)} and {_kind(b)}")
            try:
                return compile_glob(b)(a) is not None
            except GlobError as exc:
                raise EvalError(f"{what}: {exc}") from None

        return glob

    def cidr(a: Any, b: Any) -> bool:
        texts = b if isinstance(b, list | tuple) else [b]
        try:
            nets = [ipaddress.ip_network(t, strict=False) for t in texts]
        except (ValueError, TypeError):
            raise EvalError(f"{what}: {b!r} is not a CIDR") from None
        return _in_nets(_ip(a, what), nets)

    return cidr


def _attrs_equal(left: Accessor, right: Accessor) -> Cond:
    """``eq`` of two attributes: json_eq of both values when both are present, with two
    strings (the usual: an owner and a subject id) compared here, without the call."""

    def equal(r: Request, now: float) -> bool:
        a = left(r)
        if type(a) is str:  # json_eq's answer: only a string equals a string
            return bool(a == right(r))
        if a is MISSING:
            return False
        b = right(r)
        return b is not MISSING and json_eq(a, b)

    return equal


def _fast_literal(op: str, get: Accessor, lit: Any, what: str) -> Cond | None:
    """Hand-made closures for the commonest shapes (attribute vs string literal)."""
    if op == "eq" and isinstance(lit, str):
        return lambda r, now: get(r) == lit  # MISSING and non-strings never equal a str
    if op == "ne" and isinstance(lit, str):
        return lambda r, now: (v := get(r)) is not MISSING and v != lit
    if op in ("in", "not_in") and isinstance(lit, list) and all(isinstance(x, str) for x in lit):
        members = frozenset(lit)
        # Only a string can equal a string member; a list value must not reach the set.
        if op == "in":
            return lambda r, now: isinstance(v := get(r), str) and v in members
        return lambda r, now: (
            (v := get(r)) is not MISSING and (not isinstance(v, str) or v not in members)
        )
    if op == "glob":
        match = compile_glob(lit)

        def glob(r: Request, now: float) -> bool:
            v = get(r)
            if v is MISSING:
                return False
            if not isinstance(v, str):
                raise EvalError(f"{what}: glob needs a string, got a {_kind(v)}")
            return match(v) is not None

        return glob
    if op == "cidr":
        nets = [ipaddress.ip_network(t) for t in ([lit] if isinstance(lit, str) else lit)]

        def cidr(r: Request, now: float) -> bool:
            v = get(r)
            return v is not MISSING and _in_nets(_ip(v, what), nets)

        return cidr
    return None


@dataclass(frozen=True, slots=True)
class Window:
    """A compiled time window: days on which it opens, [start, end) minutes, a zone."""

    days: frozenset[int]
    start: int
    end: int
    tz: Any

    def contains(self, now: float) -> bool:
        """True when ``now`` (epoch seconds) falls in the window, in the window's zone."""
        local = datetime.fromtimestamp(now, self.tz)
        minute = local.hour * 60 + local.minute
        day = local.weekday()
        if self.start < self.end:
            return day in self.days and self.start <= minute < self.end
        # Over midnight: the window opened yesterday if it has not closed yet.
        return (day in self.days and minute >= self.start) or (
            (day - 1) % 7 in self.days and minute < self.end
        )

    def next_change(self, now: float) -> float:
        """An instant after ``now`` no later than the next time :meth:`contains` may change."""
        local = datetime.fromtimestamp(now, self.tz)
        limit = now + 23 * 3600.0  # candidates cover at least the next 23 hours
        best = limit
        for offset in (-1, 0, 1):
            day = local.date() + timedelta(days=offset)
            for minute in (self.start, self.end):
                for fold in (0, 1):
                    t = _wall(day, minute, self.tz, fold)
                    if now < t < best:
                        best = t
        # A DST jump moves the wall clock without passing a boundary: stop at it too.
        before = local.utcoffset()
        if datetime.fromtimestamp(best, self.tz).utcoffset() != before:
            lo, hi = int(now), int(best)
            while hi - lo > 1:
                mid = (lo + hi) // 2
                if datetime.fromtimestamp(mid, self.tz).utcoffset() != before:
                    hi = mid
                else:
                    lo = mid
            best = min(best, float(hi))
        return best


def _wall(day: date, minute: int, tz: Any, fold: int) -> float:
    stamp = datetime.combine(day, time(0), tzinfo=tz) + timedelta(minutes=minute)
    return stamp.replace(fold=fold).timestamp()


@dataclass(slots=True)
class Node:
    """A compiled condition with what :func:`explain` needs to say why it failed."""

    fn: Cond
    op: str
    where: str
    children: tuple[Node, ...] = ()
    left: Accessor | None = None
    left_text: str = ""
    right: Accessor | None = None
    right_text: str = ""
    window: Window | None = None


def _side(value: Any) -> tuple[Accessor, str]:
    if conditions.is_ref(value):
        return accessor(value["attr"]), value["attr"]
    if isinstance(value, dict) and set(value) == {"value"}:
        value = value["value"]
    return (lambda r: value), repr(value)


def compile_condition(
    cond: Mapping[str, Any],
    where: str,
    segments: Mapping[str, Sequence[str]],
    windows: list[Window],
) -> Node:
    """Compile a validated condition; appends every time window met to ``windows``."""
    if "all" in cond or "any" in cond:
        op = "all" if "all" in cond else "any"
        kids = tuple(
            compile_condition(c, f"{where}.{op}[{i}]", segments, windows)
            for i, c in enumerate(cond[op])
        )
        fns = tuple(k.fn for k in kids)
        if op == "all":
            fn: Cond = lambda r, now: all(f(r, now) for f in fns)  # noqa: E731
        else:
            fn = lambda r, now: any(f(r, now) for f in fns)  # noqa: E731
        if len(fns) == 1:
            fn = fns[0]
        elif len(fns) == 2:  # the common shapes skip the generator
            f0, f1 = fns
            if op == "all":
                fn = lambda r, now: f0(r, now) and f1(r, now)  # noqa: E731
            else:
                fn = lambda r, now: f0(r, now) or f1(r, now)  # noqa: E731
        return Node(fn, op, where, kids)
    if "not" in cond:
        kid = compile_condition(cond["not"], f"{where}.not", segments, windows)
        inner = kid.fn
        return Node(lambda r, now: not inner(r, now), "not", where, (kid,))
    if "exists" in cond:
        get = accessor(cond["exists"])
        return Node(
            lambda r, now: get(r) is not MISSING,
            "exists",
            where,
            left=get,
            left_text=cond["exists"],
        )
    for op in ("source_in_segment", "peer_in_segment"):
        if op in cond:
            nets = [ipaddress.ip_network(c) for name in cond[op] for c in segments[name]]
            src = op == "source_in_segment"
            get = accessor("context.source.ip") if src else (lambda r: r.peer_ip)
            text = "context.source.ip" if src else "peer_ip"

            def in_segment(
                r: Request, now: float, get: Accessor = get, nets: Any = nets, text: str = text
            ) -> bool:
                v = get(r)
                return v is not MISSING and v is not None and _in_nets(_ip(v, text), nets)

            return Node(
                in_segment, op, where, left=get, left_text=text, right_text=" or ".join(cond[op])
            )
    if "time_window" in cond:
        spec = cond["time_window"]
        window = Window(
            frozenset(conditions.DAYS.index(d) for d in spec["days"]),
            conditions.parse_hhmm(spec["from"]),
            conditions.parse_hhmm(spec["to"]),
            conditions.zone(spec["tz"]),
        )
        windows.append(window)
        return Node(
            lambda r, now: window.contains(now),
            "time_window",
            where,
            window=window,
            right_text=f"{','.join(spec['days'])} {spec['from']}-{spec['to']} {spec['tz']}",
        )
    op = next(k for k in cond if k in conditions.COMPARISONS)
    left, left_text = _side({"attr": cond["attr"]} if "attr" in cond else {"value": cond["value"]})
    right, right_text = _side(cond[op])
    what = f"{where}: {left_text} {op} {right_text}"
    fast = None
    if "attr" in cond and not conditions.is_ref(cond[op]):
        fast = _fast_literal(op, left, cond[op], what)
    elif op == "eq" and "attr" in cond:  # attribute against attribute (owner == subject.id)
        fast = _attrs_equal(left, right)
    if fast is None:
        test = _binary(op, what)

        def fast(r: Request, now: float) -> bool:
            a = left(r)
            if a is MISSING:
                return False
            b = right(r)
            return b is not MISSING and test(a, b)

    return Node(fast, op, where, left=left, left_text=left_text, right=right, right_text=right_text)


def paths_read(cond: Any) -> set[str]:
    """Every attribute path a validated condition reads."""
    out: set[str] = set()
    if isinstance(cond, dict):
        for key, value in cond.items():
            if key in ("attr", "exists") and isinstance(value, str):
                out.add(value)
            elif key == "source_in_segment":
                out.add("context.source.ip")
            elif key != "value":
                out |= paths_read(value)
    elif isinstance(cond, list):
        for item in cond:
            out |= paths_read(item)
    return out


def explain(node: Node, r: Request, now: float) -> str:
    """Why ``node`` is false for ``r`` (call only when it is); raises EvalError like evaluation."""
    if node.op == "all":
        kid = next(k for k in node.children if not k.fn(r, now))
        return explain(kid, r, now)
    if node.op == "any":
        inner = explain(node.children[0], r, now)
        return f"{node.where}: none of {len(node.children)} alternatives matched (first: {inner})"
    if node.op == "not":
        return f"{node.where}: the negated condition matched"
    if node.op == "time_window" and node.window is not None:
        local = datetime.fromtimestamp(now, node.window.tz)
        return f"{node.where}: {local:%a %H:%M} is outside {node.right_text}"
    value = node.left(r) if node.left is not None else MISSING
    if value is MISSING or (value is None and node.op == "peer_in_segment"):
        return f"{node.where}: {node.left_text} is missing"
    if node.op in ("source_in_segment", "peer_in_segment"):
        return f"{node.where}: {node.left_text} = {value!r} (expected in segment {node.right_text})"
    other = node.right(r) if node.right is not None else MISSING
    if other is MISSING:
        return f"{node.where}: {node.right_text} is missing"
    return f"{node.where}: {node.left_text} = {value!r} (expected {node.op} {other!r})"
