"""`pdp audit verify DIR` and `pdp audit tail DIR [-n N]`: check and read the audit trail.

``register(subparsers)`` adds the ``audit`` command group; pdp/cli.py wires it in.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pdp.audit.records import iter_lines, list_files
from pdp.audit.verify import verify
from pdp.errors import AuditVerificationError

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``audit verify`` and ``audit tail`` to ``subparsers``."""
    audit = subparsers.add_parser("audit", help="verify and read the hash-chained audit trail")
    commands = audit.add_subparsers(dest="audit_command", required=True)
    check = commands.add_parser("verify", help="check the hash chain of an audit directory")
    check.add_argument("dir", type=Path, help="the audit directory")
    check.add_argument(
        "--allow-pruned",
        action="store_true",
        help="accept a trail whose oldest files were removed by retention",
    )
    check.set_defaults(func=_verify)
    tail = commands.add_parser("tail", help="print the last records of an audit directory")
    tail.add_argument("dir", type=Path, help="the audit directory")
    tail.add_argument("-n", type=int, default=10, metavar="N", help="records to print (10)")
    tail.set_defaults(func=_tail)


def _verify(args: argparse.Namespace) -> int:
    directory: Path = args.dir
    if not directory.is_dir():
        print(f"pdp audit verify: {directory}: not a directory", file=sys.stderr)
        return 2
    try:
        report = verify(directory, allow_pruned=args.allow_pruned)
    except AuditVerificationError as exc:
        print(f"FAILED: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"pdp audit verify: {exc}", file=sys.stderr)
        return 2
    print(report.summary())
    for note in report.recoveries:
        print(f"note: torn record {note}")
    return 0


def _tail(args: argparse.Namespace) -> int:
    directory: Path = args.dir
    if args.n < 0:
        print("pdp audit tail: -n must not be negative", file=sys.stderr)
        return 2
    if not directory.is_dir():
        print(f"pdp audit tail: {directory}: not a directory", file=sys.stderr)
        return 2
    last: list[bytes] = []
    try:
        # Walk back from the newest file only as far as needed for N records.
        for _, path in reversed(list_files(directory)):
            if len(last) >= args.n:
                break
            lines = [raw for _, raw, complete in iter_lines(path) if complete]
            last = lines[max(0, len(lines) - (args.n - len(last))) :] + last
    except OSError as exc:
        print(f"pdp audit tail: {exc}", file=sys.stderr)
        return 2
    out = sys.stdout
    for raw in last:
        out.write(raw.decode("utf-8", "replace") + "\n")
    return 0
