"""The call counts (benchmarks.counts): real servers, real mTLS, the hook really counting.

The counts of the handler's path are exact (one request, one path), so they are asserted;
the background threads' are not (they depend on how many decisions each wake-up finds).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.counts import HOOK, SERVERS, main, run


def test_the_hook_is_inert_without_its_variable() -> None:
    # Without PDP_BENCH_COUNT, SIGUSR1 keeps its default action (it ends the process).
    environ = {**os.environ, "PYTHONPATH": str(HOOK)}
    environ.pop("PDP_BENCH_COUNT", None)
    code = "import os, signal, sys; print(sys.getprofile()); os.kill(os.getpid(), signal.SIGUSR1)"
    done = subprocess.run([sys.executable, "-c", code], env=environ, capture_output=True,
                          text=True, check=False)
    assert done.stdout == "None\n"
    assert done.returncode == -signal.SIGUSR1


@pytest.mark.parametrize("argv", [["--calls", "0"], ["--top", "0"]])
def test_bad_settings_are_refused_before_any_server_starts(
        argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 1
    assert "calls and top must be at least 1" in capsys.readouterr().err


@pytest.mark.slow
def test_each_server_is_counted_per_request(tmp_path: Path) -> None:
    out = run(calls=40, top=10, out_dir=tmp_path / "results", work=tmp_path / "work")
    written = json.loads((tmp_path / "results" / "counts.json").read_text())
    assert written["per_request"] == out["per_request"]
    assert list(written["per_request"]) == list(SERVERS)
    floor, pdp, off = (written["per_request"][who] for who in SERVERS)
    # The floor runs none of pdp's code; both pdp servers run the handler once per request.
    assert not [name for name in floor if name.startswith("pdp/")]
    for counts in (pdp, off):
        assert counts["pdp/server/authorization.py:AuthorizationService.Authorize"] == 1.0
        assert counts["pdp/policy/engine.py:PolicyEngine.decide"] == 1.0
    # Audit and detection: once per request when on; off, the audit trail's null stand-in.
    assert pdp["pdp/audit/log.py:AuditLog.emit"] == 1.0
    assert pdp["pdp/detect/_pipeline.py:DetectionPipeline.emit"] == 1.0
    assert off["pdp/audit/log.py:NullAuditLog.emit"] == 1.0
    assert "pdp/audit/log.py:AuditLog.emit" not in off
    assert "pdp/detect/_pipeline.py:DetectionPipeline.emit" not in off
    assert written["totals"]["floor"] < written["totals"][SERVERS[2]] < written["totals"]["pdp"]
    assert "What pdp adds over the floor" in written["table"]
