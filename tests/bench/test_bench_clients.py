"""The client-process check (benchmarks.clients): every row measured, over real mTLS.

Figures are not asserted (a timed test could not fail honestly on a shared 2-core machine),
only that each server got a row per number of load generators, every call succeeded, and
the core shares printed are the row's own figures.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.clients import PROCESSES, run


@pytest.mark.slow
def test_each_server_is_measured_from_each_number_of_processes(tmp_path: Path) -> None:
    out = run(rounds_=1, seconds=0.2, out_dir=tmp_path / "results", work=tmp_path / "work")
    written = json.loads((tmp_path / "results" / "clients.json").read_text())
    assert written["rows"] == out["rows"]
    seen = [(row["server"], row["processes"]) for row in written["rows"]]
    assert seen == [(who, n) for who in ("floor", "pdp") for n in PROCESSES]
    for row in written["rows"]:
        assert row["errors"] == 0, row
        # One worker per process took part: the 32 calls in flight were spread over them.
        assert row["rounds"][0]["workers"] == row["processes"], row
        assert row["median"]["server_cpu_us_per_call"] > 0, row
    # The server core's share printed for a row is its calls/s x CPU per call (one round:
    # the round's own figures).
    table = [line for line in written["table"].splitlines() if line.startswith(("floor", "pdp"))]
    for line, row in zip(table, written["rows"], strict=True):
        one = row["rounds"][0]
        share = one["calls_per_s"] * one["server_cpu_us_per_call"] / 1e4
        assert line.split()[:2] == [row["server"], str(row["processes"])]
        assert line.split()[-2] == f"{share:.0f}", (line, share)
