"""The per-replica decision cache: bounded, time-limited, keyed by bundle version and inputs.

A decision that read the clock expires at the next window boundary, never later.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Hashable
from dataclasses import dataclass, replace

from cachetools import TTLCache

from pdp.clock import Clock, system_clock
from pdp.policy.model import Decision

__all__ = ["CacheStats", "DecisionCache"]


@dataclass(frozen=True, slots=True)
class CacheStats:
    """Counters of a :class:`DecisionCache` since it was made."""

    hits: int
    misses: int
    size: int
    max_size: int


class DecisionCache:
    """A thread-safe TTL cache of decisions (a cachetools TTLCache inside).

    Entries live ``ttl`` seconds by the injected clock, or less when the decision
    depends on a time window: each entry also carries its own deadline, checked on
    every read. Raises ValueError for a non-positive size or ttl.
    """

    def __init__(
        self, *, max_size: int = 100_000, ttl: float = 60.0, clock: Clock = system_clock
    ) -> None:
        if max_size < 1 or not ttl > 0:
            raise ValueError("max_size and ttl must be positive")
        self.max_size = max_size
        self.ttl = float(ttl)
        self._clock = clock
        self._data: TTLCache[Hashable, tuple[Decision, float]] = TTLCache(
            maxsize=max_size, ttl=self.ttl, timer=clock
        )
        self._lock = threading.Lock()
        self._hits = 0
        self._misses = 0

    def get(self, key: Hashable, now: float | None = None) -> Decision | None:
        """The cached decision (marked ``cached=True``) for ``key``, or None.

        ``now`` saves a clock read when the caller already has the time.
        """
        with self._lock:
            try:
                found = self._data[key]  # [] not .get(): several times faster in cachetools
            except KeyError:
                self._misses += 1
                return None
            if found[1] <= (self._clock() if now is None else now):  # past a window boundary
                del self._data[key]
                self._misses += 1
                return None
            self._hits += 1
            return found[0]

    def put(self, key: Hashable, decision: Decision, *, expires: float = math.inf) -> None:
        """Store ``decision`` until ``expires`` (epoch seconds) or ttl from now, the earlier."""
        now = self._clock()
        until = min(now + self.ttl, expires)
        if until <= now:
            return
        with self._lock:
            self._data[key] = (replace(decision, cached=True), until)

    def stats(self) -> CacheStats:
        """Hits, misses, current size (expired entries dropped first) and maximum size."""
        with self._lock:
            self._data.expire()
            return CacheStats(self._hits, self._misses, len(self._data), self.max_size)

    def clear(self) -> None:
        """Drop every entry (the counters stay)."""
        with self._lock:
            self._data.clear()
