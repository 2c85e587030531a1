"""Generated policy bundles of any size for the benchmarks (JSON, the loader reads it directly).

Every bundle ends with the same three `doc` rules the benchmark requests hit, behind
``rules - 3`` filler rules on other resource types, so the index must skip the filler.
"""

from __future__ import annotations

import json
from typing import Any

__all__ = ["DOC_RULES", "bundle_json"]

DOC_RULES: list[dict[str, Any]] = [
    {"id": "owner-write", "effect": "allow", "subjects": {"type": "user"},
     "actions": ["write", "delete"], "resources": {"type": "doc"},
     "when": {"attr": "resource.properties.owner", "eq": {"attr": "subject.id"}}},
    {"id": "deny-secret", "effect": "deny", "actions": ["*"],
     "resources": {"type": "doc", "ids": ["secret-*"]}},
    {"id": "read-docs", "effect": "allow", "subjects": {"type": "user"},
     "actions": ["read"], "resources": {"type": "doc"}},
]


def _filler(i: int) -> dict[str, Any]:
    # A mix of exact and wildcard actions and of conditions, as real bundles have.
    rule: dict[str, Any] = {
        "id": f"r{i}", "effect": "allow" if i % 3 else "deny",
        "subjects": {"type": "user"},
        "actions": ["*"] if i % 7 == 0 else [f"act{i % 20}", "read"],
        "resources": {"type": f"kind{i}"},
    }
    if i % 2:
        rule["when"] = {"attr": "resource.properties.owner", "eq": {"attr": "subject.id"}}
    return rule


def bundle_json(rules: int, *, revision: str = "1") -> bytes:
    """A bundle of exactly ``rules`` rules (at least 3), as JSON bytes."""
    if rules < len(DOC_RULES):
        raise ValueError(f"a bench bundle has at least {len(DOC_RULES)} rules")
    doc = {"metadata": {"name": f"bench-{rules}", "revision": revision},
           "rules": [_filler(i) for i in range(rules - len(DOC_RULES))] + DOC_RULES}
    return json.dumps(doc, separators=(",", ":")).encode()
