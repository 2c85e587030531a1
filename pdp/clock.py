"""The injectable clock: every component that reads time takes a ``Clock``.

A clock is any zero-argument callable returning seconds since the epoch (UTC),
so ``time.time`` is the production clock and :class:`FakeClock` ticks in tests.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

__all__ = ["Clock", "FakeClock", "system_clock"]

Clock = Callable[[], float]

system_clock: Clock = time.time


class FakeClock:
    """A clock that only moves when told to; thread-safe."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self._now = float(start)
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> None:
        """Move the clock forward by ``seconds``."""
        with self._lock:
            self._now += seconds

    def set(self, now: float) -> None:
        """Set the clock to ``now`` (seconds since the epoch)."""
        with self._lock:
            self._now = float(now)
