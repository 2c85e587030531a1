"""`pdp serve` as a process of its own, for tests: ready when it says it serves."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

__all__ = ["ServeProcess"]

# Printed by `pdp serve` once PDPServer.start() has returned (one line per worker with
# several): both listeners bound, the TLS 1.2 probe passed, health SERVING.
_SERVING = re.compile(r"pdp: (worker \d+ )?serving data on port ")


class ServeProcess:
    """One `pdp serve --config CONFIG`, its output read as it comes.

    Reading as it comes keeps a full pipe from blocking the server's logging, and keeps the
    output for failure messages. A port that accepts TCP is not readiness: the server binds
    its listeners before its start-up checks and, when one fails, exits and resets the
    connections it had taken. :meth:`wait_ready` waits for the server's own word instead.
    """

    def __init__(self, config: Path, *, cwd: Path, workers: int = 1) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pdp.cli", "serve", "--config", str(config)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=cwd)
        self.lines: list[str] = []
        self._workers = workers
        self._serving = 0
        self._ready = threading.Event()
        self._reader = threading.Thread(target=self._read, name="pdp-serve-output",
                                         daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            line = raw.decode(errors="replace")
            self.lines.append(line)
            if _SERVING.match(line):
                self._serving += 1
                if self._serving == self._workers:
                    self._ready.set()

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Until every worker says it serves; RuntimeError, with the output, if the process
        exits first or ``timeout`` passes."""
        deadline = time.monotonic() + timeout
        while not self._ready.wait(0.05):
            if self.proc.poll() is not None:
                raise RuntimeError(f"pdp serve exited with {self.proc.returncode} before "
                                   f"serving:\n{self.stop()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"pdp serve did not serve within {timeout:.0f} s:\n"
                                   f"{self.stop(signal.SIGKILL)}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> str:
        """Send ``sig`` if the process still runs (SIGKILL after ``timeout`` s); its output."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._reader.join(timeout=30)
        # Closed only once read to its end: a worker left running (its parent killed) may
        # still hold the pipe, and closing it under the reader would fail the reader.
        if self.proc.stdout is not None and not self._reader.is_alive():
            self.proc.stdout.close()
        return self.output
