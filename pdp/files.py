"""Crash-safe file writes shared by the PKI, the key store and the dev tooling.

A reader sees the old file or the new one, never a torn one; permissions are set before
the data is written, so a key is never readable by others even for a moment.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

__all__ = ["write_atomic"]


def write_atomic(path: Path, data: bytes, *, mode: int, make_parents: bool = False) -> None:
    """Write ``data`` to ``path`` via a temp file, fsync, rename and a directory fsync.

    The file gets permission ``mode``. Raises OSError (the temp file is removed).
    """
    if make_parents:
        path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
