"""The `pdp` command line: serve, run, bundle, certs, keys, audit, check."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `pdp` console script."""
    print("pdp: not wired yet", file=sys.stderr)
    return 2
