"""Globs and id matchers shared by the loader and the compiler.

A glob has ``*`` (any run, also across ``/``), ``?`` (one character) and ``[...]``
classes; matching is case-sensitive and anchored at both ends.
"""

from __future__ import annotations

import fnmatch
import gc
import re
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from functools import lru_cache

__all__ = [
    "GlobError",
    "IdMatcher",
    "compile_glob",
    "glob_error",
    "id_matcher",
    "is_glob",
    "pause_gc",
]


class GlobError(ValueError):
    """A glob pattern is malformed (raised by :func:`compile_glob`)."""


def is_glob(pattern: str) -> bool:
    """True when ``pattern`` holds a glob metacharacter (``*``, ``?`` or ``[``)."""
    return "*" in pattern or "?" in pattern or "[" in pattern


def glob_error(pattern: str) -> str | None:
    """Say what is wrong with ``pattern`` as a glob, or None when it is fine."""
    if pattern == "":
        return "empty pattern"
    i, n = 0, len(pattern)
    while i < n:
        if pattern[i] == "[":
            j = i + 1
            if j < n and pattern[j] in "!^":
                j += 1
            if j < n and pattern[j] == "]":
                j += 1
            while j < n and pattern[j] != "]":
                j += 1
            if j >= n:
                return f"unclosed '[' in glob {pattern!r}"
            i = j
        elif pattern[i] == "]":
            return f"unbalanced ']' in glob {pattern!r}"
        i += 1
    return None


@lru_cache(maxsize=4096)
def compile_glob(pattern: str) -> Callable[[str], object]:
    """A match function for the glob ``pattern``; raise GlobError when it is malformed."""
    problem = glob_error(pattern)
    if problem is not None:
        raise GlobError(problem)
    try:
        return re.compile(fnmatch.translate(pattern)).match
    except re.error as exc:  # e.g. a reversed range "[z-a]"
        raise GlobError(f"bad glob {pattern!r}: {exc}") from None


IdMatcher = Callable[[str], bool]


def id_matcher(patterns: Iterable[str]) -> IdMatcher | None:
    """One matcher for exact ids and globs together; None means "matches everything".

    Exact ids go to a frozenset; the globs are joined into a single regex so a
    match costs one set lookup and at most one regex call.
    """
    exact: set[str] = set()
    globs: list[str] = []
    for p in patterns:
        if p == "*":
            return None
        if is_glob(p):
            globs.append(p)
        else:
            exact.add(p)
    frozen = frozenset(exact)
    if not globs:
        if len(frozen) == 1:
            (only,) = frozen
            return lambda value: value == only
        return frozen.__contains__
    for g in globs:
        compile_glob(g)  # validate
    rx = re.compile("|".join(f"(?:{fnmatch.translate(g)})" for g in globs)).match
    if not frozen:
        return lambda value: rx(value) is not None
    return lambda value: value in frozen or rx(value) is not None


@contextmanager
def pause_gc() -> Iterator[None]:
    """Hold the cyclic garbage collector while building a big, long-lived object graph.

    Loading or compiling 100,000 rules makes millions of objects that all survive; the
    collector would rescan them again and again (more than twice the build time).
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
