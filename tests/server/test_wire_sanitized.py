"""The C request decoder under AddressSanitizer: hostile bytes never make it read or write
outside a buffer.

The comparisons with protobuf (test_wire.py) see only what the decoder answers; a read past
the end of the input that happens not to change the answer is invisible to them. Here the
decoder is built again with ``-fsanitize=address`` and fed 20,000 mutated and random inputs
(tests/server/wire_fuzz.py), each decoded request's Requests built too, in a process that
aborts on any out-of-bounds access. A copy with a deliberate bounds bug is run the same way
first, to show the harness catches one.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.sanitize import NEEDS_ASAN, REPO, build, run

SOURCE = REPO / "pdp" / "server" / "_wire.c"
FUZZ = REPO / "tests" / "server" / "wire_fuzz.py"
BOUNDS_CHECK = "if (r->end - r->p < 8)"  # a double's 8 bytes are there
pytestmark = [pytest.mark.slow, NEEDS_ASAN]


def _fuzz(module: Path, logs: Path, inputs: int) -> tuple[subprocess.CompletedProcess[str],
                                                          list[str]]:
    return run(FUZZ, module, logs, str(inputs), "20261128")


def test_a_bounds_bug_is_caught_by_this_harness(tmp_path: Path) -> None:
    broken = tmp_path / "broken.c"
    text = SOURCE.read_text()
    assert BOUNDS_CHECK in text
    broken.write_text(text.replace(BOUNDS_CHECK, "if (r->end - r->p < 4)"))
    done, reports = _fuzz(build(broken, "_wire", tmp_path), tmp_path / "logs", 100)
    assert done.returncode == 86, done.stderr[-2000:]
    assert any("heap-buffer-overflow" in r and "value_of" in r for r in reports)


def test_hostile_bytes_stay_inside_their_buffers(tmp_path: Path) -> None:
    done, reports = _fuzz(build(SOURCE, "_wire", tmp_path), tmp_path / "logs", 20_000)
    assert done.returncode == 0 and not reports, (done.stderr[-2000:], reports)
    decoded, left, built = (int(w.rstrip(",")) for w in done.stdout.split()
                            if w.rstrip(",").isdigit())
    assert decoded > 1000 and left > 1000  # both the decoder's reading and its refusals ran
    assert built > 100  # and plain_request and batch_requests built Requests
