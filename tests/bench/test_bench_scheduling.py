"""The scheduling-policy comparison (benchmarks.scheduling): servers really run under the
policy named, and every row is measured over real mTLS.

Figures are not asserted (a timed test could not fail honestly on a shared 2-core machine),
only that each server ran under its policy, got a row per shape and answered every call.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.harness import POLICIES, launcher, scheduling_policies
from benchmarks.scheduling import SHAPES, neighbour, run

# Starts one thread besides the main one, then waits to be killed.
_THREADED = ("import threading, time; threading.Thread(target=time.sleep, args=(60,), "
             "daemon=True).start(); print('up', flush=True); time.sleep(60)")


@pytest.mark.parametrize("policy", sorted(POLICIES))
def test_every_thread_of_a_server_started_under_a_policy_runs_under_it(policy: str) -> None:
    with subprocess.Popen([*launcher(None, policy), sys.executable, "-c", _THREADED],
                          stdout=subprocess.PIPE) as proc:
        try:
            assert proc.stdout is not None and proc.stdout.readline() == b"up\n"
            assert len(os.listdir(f"/proc/{proc.pid}/task")) == 2
            assert scheduling_policies(proc.pid) == {policy}
        finally:
            proc.kill()


def test_an_unknown_policy_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown scheduling policy 'fifo'; known: normal, batch"):
        launcher("0", "fifo")


def test_the_neighbour_runs_on_the_core_for_the_block_only() -> None:
    with neighbour("0") as proc:
        assert proc.poll() is None
        assert scheduling_policies(proc.pid) == {"normal"}
    assert proc.returncode is not None


def test_an_unknown_shape_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown shape"):
        run(shapes=("authorize-7",), out_dir=tmp_path, work=tmp_path)


@pytest.mark.slow
def test_floor_and_pdp_are_measured_under_each_policy(tmp_path: Path) -> None:
    out = run(rounds_=1, seconds=0.2, out_dir=tmp_path / "results", work=tmp_path / "work")
    written = json.loads((tmp_path / "results" / "scheduling.json").read_text())
    assert written["shapes"] == out["shapes"]
    keys = [f"{who}, {policy}" for policy in POLICIES for who in ("floor", "pdp")]
    # What the kernel reported for every thread of each server, read back before the rounds.
    assert written["policies"] == {key: [key.split(", ")[1]] for key in keys}
    assert list(written["shapes"]) == list(SHAPES)
    for shape, rows in written["shapes"].items():
        assert list(rows) == keys, shape
        for key, row in rows.items():
            assert row["errors"] == 0, (shape, key, row)
            assert len(row["rounds"]) == 1 and row["rounds"][0]["calls"] > 0, (shape, key)
            assert row["median"]["server_cpu_us_per_call"] > 0, (shape, key)
