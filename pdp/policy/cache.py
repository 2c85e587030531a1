"""The per-replica decision cache: bounded, time-limited, keyed by bundle version and inputs.

A decision that read the clock expires at the next window boundary, never later. By default
a decision is admitted on its second request: one-off requests never displace the entries
that repeat (see :class:`DecisionCache`).
"""

from __future__ import annotations

import collections
import math
from collections.abc import Hashable
from dataclasses import dataclass, replace
from typing import Literal

from pdp.clock import Clock, system_clock
from pdp.policy._doorkeeper import seen_before
from pdp.policy.model import Decision

__all__ = ["CacheStats", "DecisionCache"]

_STEPS = 8  # deadlines are kept in 1/8 s steps


@dataclass(frozen=True, slots=True)
class CacheStats:
    """Counters of a :class:`DecisionCache` since it was made."""

    hits: int
    misses: int
    size: int
    max_size: int


class DecisionCache:
    """A thread-safe TTL cache of decisions without a lock.

    Every operation is a single dict call (get, set, pop), atomic under the GIL, so
    threads never queue behind one another. Measured on the Authorize path with 4 or more
    gRPC threads, a lock around cachetools' TTLCache cost about 45 µs of server CPU per call
    (threads convoying on the lock), three times the decision itself; this costs ~1 µs.
    Entries live ``ttl`` seconds by the injected clock (deadlines rounded down to 1/8 s), or
    less when the decision depends on a time window (each entry carries its own deadline,
    checked on every read). When full, the oldest entries are evicted first (with one ttl
    for all, also the first to expire).

    Admission (``admission="repeat"``, the default): a decision is stored when its key is
    asked for the second time within the last ``max_size`` to ``2 * max_size`` misses, as
    remembered by a doorkeeper (two generations of a Bloom filter, ~10 bits per key); a
    one-off request is decided and not stored. Storing one costs a busy server ~20 µs of CPU
    (the insert and the eviction it forces touch memory that is no longer in the CPU cache),
    and one-off requests would only push out the entries that repeat. A key seen before
    may be admitted by a false positive of the filter (a few per cent): harmless.
    ``admission="all"`` stores every decision at once.
    Raises ValueError for a non-positive size or ttl, or an unknown admission.
    """

    def __init__(
        self, *, max_size: int = 100_000, ttl: float = 60.0, clock: Clock = system_clock,
        admission: Literal["repeat", "all"] = "repeat",
    ) -> None:
        if max_size < 1 or not ttl > 0:
            raise ValueError("max_size and ttl must be positive")
        if admission not in ("repeat", "all"):
            raise ValueError(f"admission must be 'repeat' or 'all', not {admission!r}")
        self.max_size = max_size
        self.ttl = float(ttl)
        self._clock = clock
        self._data: dict[Hashable, tuple[Decision, float]] = {}
        # Keys in insertion order, for eviction. Not the dict's own order: taking a dict's
        # first key after many deletions from its front scans every deleted slot (~30 µs a
        # put in a full 100,000-entry cache, measured), a deque's popleft is O(1). A key put
        # again appears twice; its older copy may evict it a little early, never late.
        self._order: collections.deque[Hashable] = collections.deque()
        # The cached twin (cached=True) of each decision object seen, so a put does not
        # copy a dataclass; keyed by id() with the original kept alive beside it.
        self._twins: dict[int, tuple[Decision, Decision]] = {}
        # The latest (twin, until) entry of each twin, by id() of the twin (kept alive in
        # _twins), for puts in the same 1/8 s to share.
        self._entries: dict[int, tuple[Decision, float]] = {}
        # Statistics only: `+= 1` on an int attribute has no GIL release point between its
        # load and its store in CPython, so no lock is needed for them either.
        self._hits = 0
        self._misses = 0
        # The doorkeeper: keys asked for once, as two bits each in a bit array (power of two,
        # at least 8 bits per key). ``_seen`` fills until it holds max_size keys, then becomes
        # ``_before`` and a fresh one starts. No lock: a race at worst admits a key early
        # or one request late.
        self._admit_all = admission == "all"
        bits = 1 << max(13, (8 * max_size - 1).bit_length())
        self._mask = bits - 1
        self._seen = bytearray(bits >> 3)
        self._before = bytearray(bits >> 3)
        self._seen_keys = 0

    def get(self, key: Hashable, now: float | None = None) -> Decision | None:
        """The cached decision (marked ``cached=True``) for ``key``, or None.

        ``now`` saves a clock read when the caller already has the time.
        """
        found = self._data.get(key)
        if found is None:
            self._misses += 1
            return None
        if found[1] <= (self._clock() if now is None else now):  # expired, or past a boundary
            self._data.pop(key, None)
            self._misses += 1
            return None
        self._hits += 1
        return found[0]

    def put(self, key: Hashable, decision: Decision, *, expires: float = math.inf,
            now: float | None = None) -> None:
        """Store ``decision`` until ``expires`` (epoch seconds) or ttl from now, the earlier,
        if the cache admits ``key`` (see :meth:`admits`).

        ``now`` saves a clock read when the caller already has the time.
        """
        if self.admits(key):
            self.store(key, decision, expires=expires, now=now)

    def admits(self, key: Hashable) -> bool:
        """Whether a decision for ``key`` is to be stored now: always with admission "all",
        else when ``key`` was asked for before (this call is remembered)."""
        if self._admit_all or seen_before(self._seen, self._before, hash(key), self._mask):
            return True
        self._seen_keys += 1
        if self._seen_keys >= self.max_size:  # a new generation; the last one is still read
            self._before, self._seen, self._seen_keys = self._seen, bytearray(len(self._seen)), 0
        return False

    def store(self, key: Hashable, decision: Decision, *, expires: float = math.inf,
              now: float | None = None) -> None:
        """:meth:`put` without the admission check (the caller asked :meth:`admits`)."""
        if now is None:
            now = self._clock()
        # Deadlines in steps of 1/8 s, rounded down (never later than asked), so that
        # entries put in the same step with the same decision share one (decision, until)
        # pair: 90 bytes less per entry of a full cache.
        until = math.floor(min(now + self.ttl, expires) * _STEPS) / _STEPS
        if until <= now:
            return
        twin = self._twins.get(id(decision))
        if twin is None or twin[0] is not decision:
            if len(self._twins) >= self.max_size:
                self._twins.clear()  # old bundles' decisions; rebuilt on demand
                self._entries.clear()
            twin = (decision, replace(decision, cached=True))
            self._twins[id(decision)] = twin
        cached = twin[1]
        entry = self._entries.get(id(cached))
        if entry is None or entry[0] is not cached or entry[1] != until:
            entry = self._entries[id(cached)] = (cached, until)
        data, order = self._data, self._order
        data[key] = entry
        order.append(key)
        while len(order) > self.max_size:
            try:
                data.pop(order.popleft(), None)  # the oldest entry
            except IndexError:  # emptied meanwhile by another thread
                break

    def stats(self) -> CacheStats:
        """Hits, misses, current size (expired entries dropped first) and maximum size."""
        now = self._clock()
        for key, (_, until) in list(self._data.items()):
            if until <= now:
                self._data.pop(key, None)
        return CacheStats(self._hits, self._misses, len(self._data), self.max_size)

    def clear(self) -> None:
        """Drop every entry and what the doorkeeper remembers (the counters stay)."""
        self._data.clear()
        self._order.clear()
        self._twins.clear()
        self._entries.clear()
        self._seen = bytearray(len(self._seen))
        self._before = bytearray(len(self._before))
        self._seen_keys = 0
