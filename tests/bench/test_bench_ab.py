"""The side-by-side tool (benchmarks.ab): each side really serves its own revision's code.

Real git worktree, real C build, real server processes over mTLS on 127.0.0.1; figures are
not asserted, only that every window ran without a failed call and that the old side
imported the revision it names.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from benchmarks.ab import SHAPES, run
from benchmarks.harness import ROOT
from benchmarks.native import NativeUnavailable, build

pytestmark = pytest.mark.skipif(not (ROOT / ".git").exists(),
                                reason="not a git checkout: there is no revision to compare")


def _git(*args: str) -> str:
    return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True,
                          check=True).stdout.strip()


@pytest.mark.slow
def test_each_side_serves_its_own_revision_and_the_worktree_goes(tmp_path: Path) -> None:
    shapes = ("authorize-1", "batch100-8")
    out = run("HEAD", shapes=shapes, rounds=1, seconds=0.2, out_dir=tmp_path / "results",
              work=tmp_path / "work", pushes=1)
    written = json.loads((tmp_path / "results" / "ab.json").read_text())
    assert written["old"]["commit"] == _git("rev-parse", "HEAD") == out["old"]["commit"]
    # The running servers' own C modules (HEAD has them): each from its side's code.
    assert written["old"]["loaded"] and written["new"]["loaded"]
    assert all(Path(p).is_relative_to(tmp_path / "work") for p in written["old"]["loaded"])
    assert all(Path(p).is_relative_to(ROOT / "pdp") for p in written["new"]["loaded"])
    for module in ("pdp", "pdp_client"):
        assert Path(written["old"]["served_from"][module]).is_relative_to(tmp_path / "work")
        assert Path(written["new"]["served_from"][module]).is_relative_to(ROOT)
    for shape in shapes:
        for side in ("floor", "old", "new"):
            row = written["shapes"][shape][side]
            assert row["errors"] == 0, row
            assert row["rounds"][0]["calls"] > 0, row
            assert row["median"]["server_cpu_us_per_call"] > 0, row
        assert written["shapes"][shape]["new_over_old"]["server_cpu_us_per_call"] > 0
    assert "floor" in written["table"] and "new/old CPU" in written["table"]
    for side in ("old", "new"):  # one push each with no load, one under load: none failed
        pushed = written["pushes"][side]
        assert len(pushed["no_load_s"]) == len(pushed["under_load_s"]) == 1, pushed
        assert min(pushed["no_load_s"] + pushed["under_load_s"]) > 0, pushed
        assert pushed["calls"] > 0 and pushed["failed_calls"] == 0, pushed
    assert written["pushes"]["new_over_old"]["under_load_s"] > 0
    assert str(tmp_path) not in _git("worktree", "list")  # removed after the run


def test_an_unknown_revision_or_shape_is_refused_before_anything_starts(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="'no-such-revision' names no commit"):
        run("no-such-revision", shapes=("authorize-1",), rounds=1, seconds=0.1,
            out_dir=tmp_path / "results", work=tmp_path / "work")
    with pytest.raises(RuntimeError, match=r"unknown shape.*authorize-2"):
        run("HEAD", shapes=("authorize-2",), rounds=1, seconds=0.1,
            out_dir=tmp_path / "results", work=tmp_path / "work")
    with pytest.raises(RuntimeError, match="rounds must be at least 1"):
        run("HEAD", shapes=("authorize-1",), rounds=0, seconds=0.1,
            out_dir=tmp_path / "results", work=tmp_path / "work")
    with pytest.raises(RuntimeError, match="unknown client 'ghz'"):
        run("HEAD", shapes=("authorize-1",), rounds=1, seconds=0.1,
            out_dir=tmp_path / "results", work=tmp_path / "work", client="ghz")
    with pytest.raises(RuntimeError, match="pushes must be 0 or more, not -1"):
        run("HEAD", shapes=("authorize-1",), rounds=1, seconds=0.1,
            out_dir=tmp_path / "results", work=tmp_path / "work", pushes=-1)
    with pytest.raises(RuntimeError, match="at least 3 rules here, not 2"):
        run("HEAD", shapes=("authorize-1",), rounds=1, seconds=0.1,
            out_dir=tmp_path / "results", work=tmp_path / "work", rules=2)
    assert not (tmp_path / "results" / "ab.json").exists()


@pytest.mark.slow
def test_the_native_generator_can_send_every_shape(tmp_path: Path) -> None:
    try:
        build()
    except NativeUnavailable as exc:
        pytest.skip(f"the native load generator cannot be built here: {exc}")
    out = run("HEAD", shapes=tuple(SHAPES), rounds=1, seconds=0.2, out_dir=tmp_path / "results",
              work=tmp_path / "work", client="native")
    assert out["client"] == "native" and out["command"].endswith("--client native")
    for shape in SHAPES:
        for side in ("floor", "old", "new"):
            one = out["shapes"][shape][side]["rounds"][0]
            assert one["errors"] == 0 and one["calls"] > 0, (shape, side, one["first_error"])
            # the native generator's window: one process, the shape's items per call
            assert one["workers"] == 1, one
            assert one["decisions"] == one["calls"] * SHAPES[shape].batch, (shape, side)
    assert "load from native" in out["table"]
