"""The committed generated stubs match proto/pdp/v1: fails when someone forgot `make proto`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_generated_code_is_fresh() -> None:
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "gen_proto.py"), "--check"],
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr


def test_check_names_stale_files(tmp_path: Path) -> None:
    # the check must be able to fail: a copy with one edited file is reported by name
    out = tmp_path / "_proto"
    gen = [sys.executable, str(ROOT / "scripts" / "gen_proto.py"), "--out", str(out)]
    subprocess.run(gen, check=True, capture_output=True)
    target = out / "authorization_pb2.py"
    target.write_text(target.read_text() + "# edited by hand\n")
    (out / "leftover_pb2.py").write_text("")
    done = subprocess.run([*gen, "--check"], capture_output=True, text=True, check=False)
    assert done.returncode == 1
    assert "authorization_pb2.py" in done.stderr and "leftover_pb2.py" in done.stderr
    assert "identity_pb2.py" not in done.stderr


def test_generated_code_never_imports_pdp() -> None:
    for f in (ROOT / "clients" / "python" / "pdp_client" / "_proto").glob("*.py*"):
        for line in f.read_text().splitlines():
            assert not line.startswith(("from pdp.", "import pdp")), f"{f.name}: {line}"
