"""What the server gives back to the system: big buffers (a pushed bundle is several, 14 MB
each at 100,000 rules) leave the resident set when freed, not at the next trim."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

from pdp.server import bundles
from tests.server.conftest import Harness

ROOT = Path(__file__).resolve().parents[2]

# Frees a 16 MB block, then an 8 MB one, and prints how much of the second stayed resident.
SCRIPT = textwrap.dedent(
    """
    import sys
    from pdp.server import bundles

    def rss():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * 4096

    if sys.argv[1] == "tuned":
        bundles._map_large_blocks()
    block = b"x" * (16 << 20)
    del block
    before = rss()
    block = b"x" * (8 << 20)
    del block
    print((rss() - before) >> 20)
    """
)


def _kept_mb(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True,
                         check=True, cwd=ROOT)
    return int(out.stdout)


@pytest.mark.skipif(bundles._MALLOPT is None, reason="glibc's mallopt only")
def test_a_freed_big_block_leaves_the_resident_set_at_once() -> None:
    # glibc's own rule: the first big block freed raises the bar for mapping to its size,
    # and the next, smaller, one is carved from the heap and kept after it is freed.
    assert _kept_mb("default") >= 7
    assert _kept_mb("tuned") == 0


def test_a_server_has_big_blocks_mapped_apart(
    monkeypatch: pytest.MonkeyPatch, start_server: Callable[..., Harness],
) -> None:
    calls: list[tuple[int, int]] = []
    monkeypatch.setattr(bundles, "_MALLOPT", lambda param, value: calls.append((param, value)))
    start_server()
    assert (-3, 1 << 20) in calls  # M_MMAP_THRESHOLD: 1 MiB, fixed
