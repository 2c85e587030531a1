"""Bounded sliding windows: event times per key, and deny/total counts in time buckets.

Both are bounded whatever the input, so a flood of distinct keys cannot grow memory.
"""

from __future__ import annotations

import math
from collections import OrderedDict, deque

__all__ = ["BucketedRatio", "KeyedWindows", "peer_host"]


def peer_host(peer: str) -> str:
    """The host part of a gRPC peer string: ``ipv4:10.0.0.1:5555`` -> ``10.0.0.1``.

    The port changes with every connection, so counting by it would split one attacker.
    Unknown forms are returned unchanged.
    """
    kind, sep, rest = peer.partition(":")
    if not sep:
        return peer
    if kind == "ipv4":
        return rest.rpartition(":")[0] or rest
    if kind == "ipv6":
        host = rest.rpartition(":")[0] if rest.startswith("[") else rest
        return host.strip("[]") or rest
    return peer


class KeyedWindows:
    """For each key, the times of its recent events within ``window`` seconds.

    Each key keeps at most ``max_events`` times (enough to decide a threshold) and at most
    ``max_keys`` keys are tracked; the least recently seen key is evicted first.
    """

    def __init__(self, *, window: float, max_events: int, max_keys: int) -> None:
        self._window = window
        self._max_events = max_events
        self._max_keys = max_keys
        self._keys: OrderedDict[str, deque[float]] = OrderedDict()
        self.evicted = 0  # keys pushed out by the max_keys bound

    def __len__(self) -> int:
        return len(self._keys)

    def add(self, key: str, now: float) -> tuple[int, float]:
        """Record an event for ``key`` at ``now``; return (events in window, oldest time)."""
        times = self._keys.get(key)
        if times is None:
            times = deque(maxlen=self._max_events)
            self._keys[key] = times
            while len(self._keys) > self._max_keys:
                self._keys.popitem(last=False)
                self.evicted += 1
        else:
            self._keys.move_to_end(key)
        times.append(now)
        horizon = now - self._window
        while times and times[0] <= horizon:
            times.popleft()
        return len(times), times[0]


class BucketedRatio:
    """Deny and total counts in fixed buckets covering a short window and its baseline."""

    def __init__(self, *, window: float, baseline_window: float, bucket: float) -> None:
        self._window = window
        self._span = window + baseline_window
        self._bucket = bucket
        # [bucket start, total, denies]; at most span / bucket + 1 buckets ever.
        self._buckets: deque[list[float]] = deque(maxlen=math.ceil(self._span / bucket) + 2)

    def add(self, now: float, deny: bool) -> None:
        """Count one decision at ``now``."""
        start = math.floor(now / self._bucket) * self._bucket
        if self._buckets and self._buckets[-1][0] == start:
            last = self._buckets[-1]
        else:
            last = [start, 0.0, 0.0]
            self._buckets.append(last)
        last[1] += 1
        if deny:
            last[2] += 1
        horizon = now - self._span
        while self._buckets and self._buckets[0][0] + self._bucket <= horizon:
            self._buckets.popleft()

    def counts(self, now: float) -> tuple[int, int, int, int]:
        """(recent total, recent denies, baseline total, baseline denies) as of ``now``.

        A bucket belongs to the recent window when it starts after ``now - window``; the
        baseline is everything before, so a jump never dilutes its own baseline.
        """
        split = now - self._window
        rt = rd = bt = bd = 0.0
        for start, total, denies in self._buckets:
            if start > split:
                rt += total
                rd += denies
            else:
                bt += total
                bd += denies
        return int(rt), int(rd), int(bt), int(bd)
