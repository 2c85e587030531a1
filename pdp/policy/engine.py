"""The engine the server holds: the active compiled policy, quarantine, and the decision cache.

Activation is one atomic reference swap, so every decision sees one whole policy.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from types import MappingProxyType

from pdp.clock import Clock, system_clock
from pdp.policy.cache import DecisionCache
from pdp.policy.compiler import CompiledPolicy
from pdp.policy.model import Decision, Effect, Request

__all__ = ["PolicyEngine"]

_NO_BUNDLE = Decision(Effect.DENY, "", "no active bundle", "")


class PolicyEngine:
    """Decides requests against the active policy; thread-safe.

    Order: no policy -> DENY "no active bundle"; a quarantined subject -> DENY
    "quarantined"; then the cache; then evaluation. Never raises for a request.
    """

    def __init__(self, *, cache: DecisionCache | None = None, clock: Clock = system_clock) -> None:
        self._cache = cache
        self._clock = clock
        self._policy: CompiledPolicy | None = None
        self._quarantine: Mapping[str, float] = MappingProxyType({})
        self._errors = 0
        self._lock = threading.Lock()

    def activate(self, policy: CompiledPolicy) -> None:
        """Make ``policy`` the active one (one reference assignment; old decisions stay keyed
        by the old version in the cache and are simply never asked for again)."""
        self._policy = policy

    @property
    def policy(self) -> CompiledPolicy | None:
        """The active compiled policy, or None before the first activation."""
        return self._policy

    @property
    def cache(self) -> DecisionCache | None:
        """The decision cache, or None when caching is off."""
        return self._cache

    @property
    def evaluation_errors(self) -> int:
        """How many evaluations ended in an evaluation error (DENY) so far."""
        return self._errors

    def set_quarantine(self, subjects: Mapping[str, float]) -> None:
        """Replace the quarantine: subject id -> until when (epoch seconds) it is denied."""
        self._quarantine = MappingProxyType(dict(subjects))

    def is_quarantined(self, subject_id: str, now: float) -> bool:
        """True while ``subject_id`` is quarantined at ``now``."""
        until = self._quarantine.get(subject_id)
        return until is not None and now < until

    def decide(self, request: Request, *, now: float | None = None) -> Decision:
        """Decide ``request`` at ``now`` (default: the engine's clock)."""
        policy = self._policy  # one read: the whole decision uses this policy
        if policy is None:
            return _NO_BUNDLE
        if now is None:
            now = self._clock()
        if self._quarantine and self.is_quarantined(request.subject.id, now):
            return Decision(Effect.DENY, "", "quarantined", policy.version)
        cache = self._cache
        if cache is None:
            decision, _, error = policy.decide_for_cache(request, now)
        else:
            key = policy.cache_key(request)
            hit = cache.get(key, now)
            if hit is not None:
                return hit
            decision, expires, error = policy.decide_for_cache(request, now)
            # Errors are rare and each one is counted: never cached. A key asked for the
            # first time is not stored either (the cache's admission), so it is not
            # rebuilt for storing.
            if not error and cache.admits(key):
                cache.store(policy.lasting_key(key), decision, expires=expires, now=now)
        if error:
            with self._lock:
                self._errors += 1
        return decision
