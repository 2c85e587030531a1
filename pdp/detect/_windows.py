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
    """Deny and total counts in fixed buckets covering a short window and its baseline.

    :meth:`add` is O(1) and :meth:`counts` reads only the short window's buckets: running
    sums cover all buckets, and the short window is the newest ones while bucket starts are
    in time order (after the clock stepped back, it scans them all until that bucket is gone).
    """

    def __init__(self, *, window: float, baseline_window: float, bucket: float) -> None:
        self._window = window
        self._span = window + baseline_window
        self._bucket = bucket
        # [bucket start, total, denies]; at most span / bucket + 1 buckets are in the span.
        self._buckets: deque[list[float]] = deque()
        self._max_buckets = math.ceil(self._span / bucket) + 2
        self._total = 0.0  # sums over every bucket held
        self._denies = 0.0
        self._disorder = 0  # adjacent bucket pairs whose starts go back in time

    def add(self, now: float, deny: bool, count: int = 1) -> None:
        """Count ``count`` decisions at ``now`` (as many calls with one each would)."""
        start = math.floor(now / self._bucket) * self._bucket
        buckets = self._buckets
        if buckets and buckets[-1][0] == start:
            last = buckets[-1]
        else:
            if len(buckets) >= self._max_buckets:  # bounded, whatever the clock does
                self._drop_oldest()
            if buckets and start < buckets[-1][0]:
                self._disorder += 1
            last = [start, 0.0, 0.0]
            buckets.append(last)
        last[1] += count
        self._total += count
        if deny:
            last[2] += count
            self._denies += count
        horizon = now - self._span
        while buckets and buckets[0][0] + self._bucket <= horizon:
            self._drop_oldest()

    def _drop_oldest(self) -> None:
        buckets = self._buckets
        start, total, denies = buckets.popleft()
        self._total -= total
        self._denies -= denies
        if buckets and buckets[0][0] < start:
            self._disorder -= 1

    def counts(self, now: float) -> tuple[int, int, int, int]:
        """(recent total, recent denies, baseline total, baseline denies) as of ``now``.

        A bucket belongs to the recent window when it starts after ``now - window``; the
        baseline is everything before, so a jump never dilutes its own baseline.
        """
        split = now - self._window
        rt = rd = 0.0
        if self._disorder:
            for start, total, denies in self._buckets:
                if start > split:
                    rt += total
                    rd += denies
        else:
            for start, total, denies in reversed(self._buckets):
                if start <= split:
                    break
                rt += total
                rd += denies
        return int(rt), int(rd), int(self._total - rt), int(self._denies - rd)
