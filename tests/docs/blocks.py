"""Marked shell blocks in the Markdown guides: find them, and parse their markers.

A fenced block runs in the docs test when the line just before its opening fence is
``<!-- doc-test [exit=N] [server=dev|deploy] -->``; ``<!-- doc-test skip: why -->`` names
a block that cannot run here. Every ``sh``/``bash``/``shell`` block must carry one of them.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

__all__ = ["SHELL_INFOS", "Block", "MarkerError", "extract_blocks"]

SHELL_INFOS = frozenset({"sh", "bash", "shell", "console"})
SERVERS = frozenset({"dev", "deploy"})

_MARKER = re.compile(r"^\s*<!--\s*doc-test(?P<body>.*?)\s*-->\s*$")
_FENCE = re.compile(r"^(?P<indent>\s*)(?P<fence>`{3,}|~{3,})\s*(?P<info>[^`]*)$")


class MarkerError(ValueError):
    """A doc-test marker that cannot be understood, or one that marks no fenced block."""


@dataclass(frozen=True, slots=True)
class Block:
    """One fenced block: where it is, its info string, its text and what its marker asks."""

    path: Path
    line: int  # 1-based line of the opening fence
    info: str  # first word of the fence's info string ("" if none)
    text: str
    marked: bool  # has a doc-test marker (run or skip)
    skip: str  # the reason, for `doc-test skip: reason`; "" for a block that runs
    exit_code: int = 0  # expected exit status of the whole block
    server: str = ""  # "", "dev" or "deploy": a server this block needs

    @property
    def runs(self) -> bool:
        """Whether the docs test runs this block."""
        return self.marked and not self.skip

    @property
    def where(self) -> str:
        """``file:line`` of the opening fence."""
        return f"{self.path.name}:{self.line}"


def _parse_marker(body: str, where: str) -> dict[str, str | int]:
    body = body.strip()
    if body.startswith("skip"):
        reason = body[len("skip"):].lstrip(":").strip()
        if not reason:
            raise MarkerError(f"{where}: `doc-test skip` needs a reason")
        return {"skip": reason}
    options: dict[str, str | int] = {}
    for word in shlex.split(body):
        key, sep, value = word.partition("=")
        if key == "exit" and sep and value.isdigit():
            options["exit_code"] = int(value)
        elif key == "server" and sep and value in SERVERS:
            options["server"] = value
        else:
            raise MarkerError(f"{where}: unknown doc-test option {word!r}")
    return options


def extract_blocks(path: Path) -> list[Block]:
    """Every fenced block of the Markdown file ``path``, with its marker if it has one.

    Raises MarkerError for a malformed marker or a marker not followed by a fence.
    """
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks: list[Block] = []
    pending: tuple[int, dict[str, str | int]] | None = None
    i = 0
    while i < len(lines):
        line = lines[i]
        marker = _MARKER.match(line)
        fence = _FENCE.match(line)
        if marker:
            if pending is not None:
                raise MarkerError(f"{path.name}:{pending[0]}: marker not followed by a fence")
            pending = (i + 1, _parse_marker(marker.group("body"), f"{path.name}:{i + 1}"))
            i += 1
            continue
        if fence is None:
            if pending is not None:
                raise MarkerError(f"{path.name}:{pending[0]}: marker not followed by a fence")
            i += 1
            continue
        indent, mark = fence.group("indent"), fence.group("fence")
        info = (fence.group("info").split() or [""])[0]
        body: list[str] = []
        j = i + 1
        while j < len(lines) and not lines[j].strip().startswith(mark):
            text = lines[j]
            body.append(text[len(indent):] if text.startswith(indent) else text.lstrip())
            j += 1
        options = pending[1] if pending is not None else {}
        blocks.append(Block(
            path=path, line=i + 1, info=info, text="\n".join(body) + "\n",
            marked=pending is not None, skip=str(options.get("skip", "")),
            exit_code=int(options.get("exit_code", 0)), server=str(options.get("server", ""))))
        pending = None
        i = j + 1
    if pending is not None:
        raise MarkerError(f"{path.name}:{pending[0]}: marker not followed by a fence")
    return blocks
