"""Types of the loader's C helper (pdp/policy/_json.c)."""

from typing import Any

def pairs_to_dict(pairs: list[tuple[str, Any]], /) -> dict[str, Any]: ...
