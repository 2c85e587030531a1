"""The condition language: validation of `when` trees and their canonical form.

Validated trees are plain JSON-like data; :mod:`pdp.policy.evaluate` compiles them to closures.
"""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, NoReturn
from zoneinfo import ZoneInfo

from pdp.policy.patterns import glob_error

__all__ = [
    "COMPARISONS",
    "DAYS",
    "Checker",
    "Flags",
    "canonical",
    "check_path",
    "is_ref",
    "parse_hhmm",
    "zone",
]

COMPARISONS = ("eq", "ne", "lt", "le", "gt", "ge", "in", "not_in", "contains", "glob", "cidr")
DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_OTHER = ("all", "any", "not", "exists", "source_in_segment", "peer_in_segment", "time_window")
_ROOTS = {
    "subject": ("id", "type", "properties"),
    "resource": ("id", "type", "properties"),
    "action": ("name", "properties"),
}


@dataclass(slots=True)
class Flags:
    """What the validated rules read beyond the request's own fields."""

    clock: bool = False
    peer: bool = False


def check_path(path: object) -> str | None:
    """Say what is wrong with an attribute path such as ``subject.properties.clearance``."""
    if not isinstance(path, str):
        return f"an attribute path must be a string, got {type(path).__name__}"
    parts = path.split(".")
    if any(p == "" for p in parts):
        return f'bad attribute path "{path}" (empty segment)'
    root = parts[0]
    if root == "context":
        return None if len(parts) >= 2 else 'a context path needs a key, e.g. "context.source.ip"'
    if root not in _ROOTS:
        return f'bad attribute path "{path}" (starts with subject, action, resource or context)'
    if len(parts) < 2 or parts[1] not in _ROOTS[root]:
        fields = ", ".join(_ROOTS[root])
        return f'bad attribute path "{path}" ({root} has {fields})'
    if parts[1] == "properties":
        return None if len(parts) >= 3 else f'bad attribute path "{path}" (name a property)'
    return None if len(parts) == 2 else f'bad attribute path "{path}" ({parts[1]} has no fields)'


def is_ref(operand: object) -> bool:
    """True for an attribute reference operand ``{"attr": path}``."""
    return isinstance(operand, dict) and len(operand) == 1 and "attr" in operand


def _parse_hhmm(text: object, *, allow_24: bool) -> int | None:
    if not isinstance(text, str) or len(text) != 5 or text[2] != ":":
        return None
    hh, mm = text[:2], text[3:]
    if not (hh.isdigit() and mm.isdigit() and hh.isascii() and mm.isascii()):
        return None
    minutes = int(hh) * 60 + int(mm)
    if int(mm) > 59 or minutes > 24 * 60 or (minutes == 24 * 60 and not allow_24):
        return None
    return minutes


def zone(name: str) -> ZoneInfo | None:
    """The IANA zone ``name`` or None when there is no such zone."""
    try:
        return ZoneInfo(name)
    except Exception:  # ZoneInfoNotFoundError, ValueError for odd keys, OSError for odd paths
        return None


Fail = Callable[..., NoReturn]


class Checker:
    """Validates one rule's `when` tree, returning its normalized form."""

    def __init__(
        self, *, where: str, segments: Mapping[str, Any], max_depth: int, flags: Flags, fail: Fail
    ) -> None:
        self.where = where
        self.segments = segments
        self.max_depth = max_depth
        self.flags = flags
        self.fail = fail

    def check(self, cond: Any, where: str, parent: object, depth: int) -> dict[str, Any]:
        if depth > self.max_depth:
            self.fail(
                where,
                f"conditions nested deeper than the limit of {self.max_depth}",
                parent,
                too_large=True,
            )
        if not isinstance(cond, dict) or not cond:
            self.fail(where, "expected a condition (a non-empty mapping)", parent)
        for key in cond:
            if key not in COMPARISONS and key not in _OTHER and key not in ("attr", "value"):
                self.fail(where, f'unknown operator "{key}"', cond)
        if "attr" in cond or "value" in cond:
            return self.comparison(cond, where)
        if len(cond) != 1:
            self.fail(where, f"one operator per condition, got {', '.join(sorted(cond))}", cond)
        ((op, arg),) = cond.items()
        if op in ("all", "any"):
            if not isinstance(arg, list) or not arg:
                self.fail(f"{where}.{op}", "expected a non-empty list of conditions", cond)
            return {
                op: [self.check(c, f"{where}.{op}[{i}]", arg, depth + 1) for i, c in enumerate(arg)]
            }
        if op == "not":
            return {"not": self.check(arg, f"{where}.not", cond, depth + 1)}
        if op == "exists":
            if (problem := check_path(arg)) is not None:
                self.fail(f"{where}.exists", problem, cond)
            return {"exists": arg}
        if op in ("source_in_segment", "peer_in_segment"):
            names = [arg] if isinstance(arg, str) else arg
            if not isinstance(names, list) or not names:
                self.fail(f"{where}.{op}", "expected a segment name or a list of them", cond)
            for i, name in enumerate(names):
                if not isinstance(name, str) or name not in self.segments:
                    self.fail(f"{where}.{op}[{i}]", f"unknown segment {name!r}", cond)
            if op == "peer_in_segment":
                self.flags.peer = True
            return {op: list(names)}
        if op == "time_window":
            return {"time_window": self.window(arg, f"{where}.time_window", cond)}
        self.fail(where, f'operator "{op}" needs "attr" (or "value") as its left side', cond)

    def comparison(self, cond: dict[str, Any], where: str) -> dict[str, Any]:
        ops = [k for k in cond if k in COMPARISONS]
        if "attr" in cond and "value" in cond:
            self.fail(where, 'a comparison has "attr" or "value" on its left side, not both', cond)
        if len(ops) != 1 or len(cond) != 2:
            others = [k for k in cond if k not in ("attr", "value")]
            self.fail(
                where,
                f"a comparison needs exactly one of {', '.join(COMPARISONS)}"
                f" (got {', '.join(others) or 'none'})",
                cond,
            )
        op = ops[0]
        out: dict[str, Any] = {}
        if "attr" in cond:
            if (problem := check_path(cond["attr"])) is not None:
                self.fail(f"{where}.attr", problem, cond)
            out["attr"] = cond["attr"]
        else:
            out["value"] = self.literal(cond["value"], f"{where}.value", cond, 0)
        out[op] = operand = self.operand(cond[op], f"{where}.{op}", cond)
        if "value" in out and not is_ref(operand):
            self.fail(where, "compares two literals; one side must be an attribute", cond)
        if not is_ref(operand):
            self.literal_for(op, operand, f"{where}.{op}", cond)
        return out

    def operand(self, value: Any, where: str, parent: object) -> Any:
        if isinstance(value, dict):
            if len(value) == 1 and "attr" in value:
                if (problem := check_path(value["attr"])) is not None:
                    self.fail(f"{where}.attr", problem, value)
                return {"attr": value["attr"]}
            if len(value) == 1 and "value" in value:
                lit = self.literal(value["value"], f"{where}.value", value, 0)
                return {"value": lit} if isinstance(lit, dict) else lit
            self.fail(where, "a mapping operand is {attr: <path>} or {value: <literal>}", parent)
        return self.literal(value, where, parent, 0)

    def literal(self, value: Any, where: str, parent: object, depth: int) -> Any:
        if depth > self.max_depth:
            self.fail(
                where,
                f"literal nested deeper than the limit of {self.max_depth}",
                parent,
                too_large=True,
            )
        if value is None or isinstance(value, str | bool | int):
            return value
        if isinstance(value, float):
            if not math.isfinite(value):
                self.fail(where, f"{value} is not a number a bundle may hold", parent)
            return value
        if isinstance(value, list):
            return [self.literal(v, f"{where}[{i}]", value, depth + 1) for i, v in enumerate(value)]
        if isinstance(value, dict):
            return {k: self.literal(v, f"{where}.{k}", value, depth + 1) for k, v in value.items()}
        self.fail(where, f"{type(value).__name__} is not a JSON value", parent)

    def literal_for(self, op: str, lit: Any, where: str, parent: object) -> None:
        if op in ("lt", "le", "gt", "ge"):
            if isinstance(lit, bool) or not isinstance(lit, int | float | str):
                self.fail(where, f'"{op}" compares numbers or strings, got {lit!r}', parent)
        elif op in ("in", "not_in"):
            if not isinstance(lit, list):
                self.fail(where, f'"{op}" needs a list, got {lit!r}', parent)
        elif op == "glob":
            if not isinstance(lit, str):
                self.fail(where, f'"glob" needs a pattern string, got {lit!r}', parent)
            if (problem := glob_error(lit)) is not None:
                self.fail(where, problem, parent)
        elif op == "cidr":
            nets = [lit] if isinstance(lit, str) else lit
            if not isinstance(nets, list) or not nets:
                self.fail(where, '"cidr" needs a CIDR or a list of them', parent)
            for i, net in enumerate(nets):
                try:
                    ipaddress.ip_network(net, strict=True)
                except (ValueError, TypeError) as exc:
                    self.fail(
                        f"{where}[{i}]" if isinstance(lit, list) else where,
                        f"bad CIDR {net!r}: {exc}",
                        parent,
                    )

    def window(self, arg: Any, where: str, parent: object) -> dict[str, Any]:
        if not isinstance(arg, dict):
            self.fail(where, "expected a mapping with days, from, to, tz", parent)
        for key in arg:
            if key not in ("days", "from", "to", "tz"):
                self.fail(where, f'unknown key "{key}" (allowed: days, from, to, tz)', arg)
        days = arg.get("days", list(DAYS))
        if isinstance(days, str):
            days = [days]
        if not isinstance(days, list) or not days:
            self.fail(f"{where}.days", "expected a non-empty list of mon..sun", arg)
        for i, day in enumerate(days):
            if day not in DAYS:
                self.fail(f"{where}.days[{i}]", f"unknown day {day!r} (use {', '.join(DAYS)})", arg)
        start, end = arg.get("from", "00:00"), arg.get("to", "24:00")
        if _parse_hhmm(start, allow_24=False) is None:
            self.fail(f"{where}.from", f'expected "HH:MM" (00:00 to 23:59), got {start!r}', arg)
        if _parse_hhmm(end, allow_24=True) is None:
            self.fail(f"{where}.to", f'expected "HH:MM" (00:00 to 24:00), got {end!r}', arg)
        first, last = _parse_hhmm(start, allow_24=False), _parse_hhmm(end, allow_24=True)
        if last is not None and first == last % 1440 and not (first == 0 and last == 1440):
            self.fail(
                where, 'from and to are the same time (for a whole day use "00:00" to "24:00")', arg
            )
        tz = arg.get("tz", "UTC")
        if not isinstance(tz, str) or zone(tz) is None:
            self.fail(f"{where}.tz", f"unknown time zone {tz!r}", arg)
        self.flags.clock = True
        ordered = [d for d in DAYS if d in days]
        return {"days": ordered, "from": start, "to": end, "tz": tz}


def canonical(cond: Any) -> Any:
    """The condition tree with integral floats as ints, so 3 and 3.0 hash alike."""
    if isinstance(cond, float) and cond.is_integer():
        return int(cond)
    if isinstance(cond, list):
        return [canonical(c) for c in cond]
    if isinstance(cond, dict):
        return {k: canonical(v) for k, v in cond.items()}
    return cond


def parse_hhmm(text: str) -> int:
    """Minutes since midnight of a validated "HH:MM" (24:00 is 1440)."""
    minutes = _parse_hhmm(text, allow_24=True)
    assert minutes is not None
    return minutes
