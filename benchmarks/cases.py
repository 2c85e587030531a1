"""Decision cases as data: tests/policy/cases/*.yaml, shared by the tests and the benchmarks.

Each file holds a `bundle` and `cases` (request -> expected effect, rule id, optional now/reason).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from pdp.policy import Action, Bundle, Request, Resource, Subject, load_bundle

__all__ = ["CASES_DIR", "Case", "load_cases", "request_from"]

CASES_DIR = Path(__file__).resolve().parent.parent / "tests" / "policy" / "cases"
DEFAULT_NOW = 1_800_000_000.0


@dataclass(frozen=True)
class Case:
    """One decision case: the bundle, the request and what must come out."""

    file: str
    name: str
    bundle: Bundle
    request: Request
    now: float
    expect: str
    rule: str
    reason: str
    quarantine: tuple[str, ...]


def request_from(data: Mapping[str, Any]) -> Request:
    """Build a Request from its plain-data form in a case file."""
    s, a, r = data["subject"], data["action"], data["resource"]
    return Request(
        subject=Subject(s["type"], s["id"], s.get("properties", {})),
        action=Action(a["name"], a.get("properties", {})),
        resource=Resource(r["type"], r["id"], r.get("properties", {})),
        context=data.get("context", {}),
        peer_ip=data.get("peer_ip"),
    )


def _now(value: Any) -> float:
    if value is None:
        return DEFAULT_NOW
    if isinstance(value, str):
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    return float(value)


def load_cases(directory: Path = CASES_DIR) -> list[Case]:
    """Every case of every *.yaml file in ``directory``, in file order."""
    out = []
    for path in sorted(directory.glob("*.yaml")):
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
        bundle = load_bundle(yaml.safe_dump(doc["bundle"]), source=f"{path.name}#bundle")
        for item in doc["cases"]:
            out.append(
                Case(
                    file=path.name,
                    name=item["name"],
                    bundle=bundle,
                    request=request_from(item["request"]),
                    now=_now(item.get("now")),
                    expect=item["expect"],
                    rule=item["rule"],
                    reason=item.get("reason", ""),
                    quarantine=tuple(item.get("quarantine", ())),
                )
            )
    return out
