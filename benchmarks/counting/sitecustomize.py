"""Counts every Python and C function call of this process, for benchmarks.counts.

Python imports this module at start-up when its directory is on the child's PYTHONPATH.
It does nothing unless ``PDP_BENCH_COUNT`` names the file to write. Then a profile hook is
set for every thread (those started later too). It counts nothing until SIGUSR1. On SIGUSR2
it stops counting and writes the counts (JSON: "file:function" -> calls) to that file.
"""

from __future__ import annotations

import os

if os.environ.get("PDP_BENCH_COUNT"):
    import collections
    import json
    import signal
    import sys
    import threading
    from typing import Any

    _OUT = os.environ["PDP_BENCH_COUNT"]
    _counts: collections.Counter[str] = collections.Counter()
    _on = [False]

    def _where(filename: str) -> str:
        for marker in ("/site-packages/", "/lib/python3."):
            if marker in filename:
                filename = filename.rsplit(marker, 1)[1]
                return filename.split("/", 1)[1] if marker == "/lib/python3." else filename
        pdp = filename.rfind("/pdp/")
        return filename[pdp + 1:] if pdp >= 0 else filename

    def _count(frame: Any, event: str, arg: Any) -> None:
        if not _on[0]:
            return
        if event == "call":
            code = frame.f_code
            _counts[f"{_where(code.co_filename)}:{code.co_qualname}"] += 1
        elif event == "c_call":
            _counts["C:" + getattr(arg, "__qualname__", type(arg).__name__)] += 1

    def _start(signum: int, frame: Any) -> None:
        _counts.clear()
        _on[0] = True

    def _dump(signum: int, frame: Any) -> None:
        _on[0] = False
        tmp = _OUT + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(dict(_counts), f)
        os.replace(tmp, _OUT)

    threading.setprofile(_count)
    sys.setprofile(_count)
    signal.signal(signal.SIGUSR1, _start)
    signal.signal(signal.SIGUSR2, _dump)
