"""Building one of pdp's C modules with AddressSanitizer, for the tests that feed it hostile
input in a process that aborts on any read or write outside a buffer
(tests/server/test_wire_sanitized.py, tests/policy/test_json_sanitized.py)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _libasan() -> Path | None:
    gcc = shutil.which("gcc")
    if gcc is None:
        return None
    found = subprocess.run([gcc, "-print-file-name=libasan.so"], capture_output=True,
                           text=True, check=False).stdout.strip()
    return Path(found) if found and Path(found).is_file() else None


LIBASAN = _libasan()
NEEDS_ASAN = pytest.mark.skipif(
    LIBASAN is None, reason="no gcc with AddressSanitizer's runtime (libasan) on this machine: "
    "the sanitized build cannot be made")


def build(source: Path, name: str, out_dir: Path) -> Path:
    """``source`` (a C module of pdp) built with -fsanitize=address as module ``name``."""
    target = out_dir / f"{name}{sysconfig.get_config_var('EXT_SUFFIX')}"
    subprocess.run(["gcc", "-O1", "-g", "-fsanitize=address", "-fno-omit-frame-pointer",
                    "-fPIC", "-shared", f"-I{sysconfig.get_paths()['include']}",
                    f"-I{REPO / 'pdp'}", str(source), "-o", str(target)], check=True)
    return target


def run(script: Path, module: Path, logs: Path, *args: str) -> tuple[
        subprocess.CompletedProcess[str], list[str]]:
    """Run ``script module *args`` with the sanitizer's runtime preloaded; its exit status is
    86 when the sanitizer found something, and its reports are returned."""
    logs.mkdir(exist_ok=True)
    env = {**os.environ, "LD_PRELOAD": str(LIBASAN), "PYTHONMALLOC": "malloc",
           "ASAN_OPTIONS": f"detect_leaks=0:exitcode=86:log_path={logs / 'asan'}"}
    done = subprocess.run([sys.executable, str(script), str(module), *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600, check=False)
    return done, [p.read_text() for p in logs.glob("asan*")]
