"""Types of the loader's C helpers (pdp/policy/_json.c)."""

from collections.abc import Callable
from typing import Any

from pdp.policy.conditions import Flags
from pdp.policy.model import Rule

class Key:
    def __init__(self, value: Any, /) -> None: ...
    def __hash__(self) -> int: ...
    def __eq__(self, other: object) -> bool: ...

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
    actions_seen: dict[Key, Any],
    subjects_seen: dict[Key, Any],
    ids_seen: dict[Key, Any],
    when_seen: dict[Key, Any],
    types_seen: dict[str, str],
    /,
) -> Rule | None: ...
def canonical_rules(
    rules: tuple[Rule, ...] | list[Rule],
    start: int,
    stop: int,
    parts: dict[int, str],
    make: Callable[[Any, int], str],
    quote: Callable[[str], str],
    /,
) -> str: ...
def decision_type(decision: type, /) -> None: ...
def compile_rules(
    rules: tuple[Rule, ...] | list[Rule],
    start: int,
    stop: int,
    version: str,
    makers: tuple[
        Callable[[Any], Any],
        Callable[[tuple[str, ...]], Any],
        Callable[[tuple[str, ...], Any], tuple[Any, Any]],
        Callable[[str], Any],
    ],
    state: tuple[Any, ...],
    /,
) -> None: ...
