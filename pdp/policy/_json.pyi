"""Types of the loader's C helpers (pdp/policy/_json.c)."""

from typing import Any

from pdp.policy.conditions import Flags
from pdp.policy.model import Rule

def pairs_to_dict(pairs: list[tuple[str, Any]], /) -> dict[str, Any]: ...
def rule_types(
    rule: type,
    resource_match: type,
    allow: object,
    deny: object,
    rule_keys: frozenset[str],
    resource_keys: frozenset[str],
    nothing: dict[str, Any],
    /,
) -> None: ...
def quick_rule(
    raw: Any,
    flags: Flags,
    actions_seen: dict[str, Any],
    subjects_seen: dict[str, Any],
    ids_seen: dict[str, Any],
    when_seen: dict[str, Any],
    types_seen: dict[str, str],
    /,
) -> Rule | None: ...
