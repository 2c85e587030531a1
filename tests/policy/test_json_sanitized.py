"""The loader's and the compiler's C helpers (pdp/policy/_json.c) under AddressSanitizer:
hostile bundles never make them read or write outside an object.

The comparisons in test_policy_large.py and test_policy_loader.py see only what the helpers
answer; a read past the end of a tuple that happens not to change the answer is invisible to
them. Here _json.c is built again with ``-fsanitize=address`` and fed 3,000 bundles of
faulty, look-alike and random rules (tests/policy/bundle_fuzz.py) in a process that aborts on
any out-of-bounds access. A copy with a deliberate bug (a read one past the end of a
tuple) is run the same way first, to show the harness catches one.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.sanitize import NEEDS_ASAN, REPO, build, run

SOURCE = REPO / "pdp" / "policy" / "_json.c"
FUZZ = REPO / "tests" / "policy" / "bundle_fuzz.py"
LAST_ITEM = "reads_peer = PyTuple_GET_ITEM(found, 2);"  # when_seen holds 3-tuples
pytestmark = [pytest.mark.slow, NEEDS_ASAN]


def _fuzz(module: Path, logs: Path, bundles: int) -> tuple[subprocess.CompletedProcess[str],
                                                            list[str]]:
    return run(FUZZ, module, logs, str(bundles), "20261129")


def test_a_read_past_a_tuple_is_caught_by_this_harness(tmp_path: Path) -> None:
    broken = tmp_path / "broken.c"
    text = SOURCE.read_text()
    assert LAST_ITEM in text
    broken.write_text(text.replace(LAST_ITEM, "reads_peer = PyTuple_GET_ITEM(found, 3);"))
    done, reports = _fuzz(build(broken, "_json", tmp_path), tmp_path / "logs", 300)
    assert done.returncode == 86, done.stderr[-2000:]
    assert any("heap-buffer-overflow" in r and "quick_rule" in r for r in reports)


def test_hostile_bundles_stay_inside_their_objects(tmp_path: Path) -> None:
    done, reports = _fuzz(build(SOURCE, "_json", tmp_path), tmp_path / "logs", 3000)
    assert done.returncode == 0 and not reports, (done.stdout[-2000:], done.stderr[-2000:],
                                                  reports)
    loaded, refused, keys, canonical = (int(w.rstrip(",")) for w in done.stdout.split()
                                        if w.rstrip(",").isdigit())
    assert loaded > 200 and refused > 1000  # both the fast path's rules and its refusals ran
    assert keys == loaded and canonical > 1_000_000
