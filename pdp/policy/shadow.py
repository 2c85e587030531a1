"""Shadow evaluation: decide live requests again on a candidate policy, off the hot path.

Answers always come from the active policy; this only counts where the candidate would differ.
"""

from __future__ import annotations

import collections
import threading
import time
from dataclasses import dataclass
from typing import Any

from pdp.clock import Clock
from pdp.policy.compiler import CompiledPolicy
from pdp.policy.model import Decision, Effect, Request
from pdp.policy.testing import request_to_dict

__all__ = ["ShadowDifference", "ShadowEvaluator", "ShadowReportData"]

DiffKey = tuple[str, str, str, str]


def _word(effect: Effect) -> str:
    return "allow" if effect is Effect.ALLOW else "deny"


@dataclass(frozen=True, slots=True)
class ShadowDifference:
    """One kind of disagreement: active rule and decision vs shadow rule and decision
    ("" is the default deny), how often, and the first requests that showed it."""

    active_rule: str
    active_decision: str
    shadow_rule: str
    shadow_decision: str
    count: int
    samples: tuple[dict[str, Any], ...]

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return {
            "active_rule": self.active_rule,
            "active_decision": self.active_decision,
            "shadow_rule": self.shadow_rule,
            "shadow_decision": self.shadow_decision,
            "count": self.count,
            "samples": list(self.samples),
        }


@dataclass(frozen=True, slots=True)
class ShadowReportData:
    """What the shadow policy would have done since it was set.

    ``agreed`` counts requests with the same decision *and* rule; ``same_decision`` those
    with the same allow/deny whatever the rule; ``agreement_rate`` is agreed / evaluated
    (0.0 before any evaluation: no evidence is not agreement).
    """

    version: str
    evaluated: int
    agreed: int
    agreement_rate: float
    top_differences: tuple[ShadowDifference, ...]
    same_decision: int = 0
    dropped: int = 0
    errors: int = 0
    other_differences: int = 0  # differing requests beyond the tracked difference kinds
    since: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return {
            "version": self.version,
            "evaluated": self.evaluated,
            "agreed": self.agreed,
            "agreement_rate": self.agreement_rate,
            "same_decision": self.same_decision,
            "dropped": self.dropped,
            "errors": self.errors,
            "other_differences": self.other_differences,
            "since": self.since,
            "top_differences": [d.to_dict() for d in self.top_differences],
        }


class _Diff:
    __slots__ = ("count", "samples")

    def __init__(self) -> None:
        self.count = 0
        self.samples: list[dict[str, Any]] = []


Item = tuple[CompiledPolicy, Request, Decision, float]


class ShadowEvaluator:
    """Evaluates submitted requests on the shadow policy in one worker thread.

    :meth:`submit` is the only call on the hot path: one attribute read when no shadow
    is set, else a bounded append (drop and count when full). Thread-safe.
    """

    def __init__(
        self,
        *,
        clock: Clock,
        queue_size: int = 10_000,
        sample_size: int = 20,
        max_differences: int = 1_000,
    ) -> None:
        if queue_size < 1 or sample_size < 0 or max_differences < 1:
            raise ValueError("queue_size and max_differences must be >= 1, sample_size >= 0")
        self._clock = clock
        self._queue_size = queue_size
        self._sample_size = sample_size
        self._max_differences = max_differences
        self._items: collections.deque[Item] = collections.deque()
        self._policy: CompiledPolicy | None = None
        self._lock = threading.Lock()  # guards the statistics below
        self._idle_cond = threading.Condition()  # flush waits on it
        self._wake = threading.Event()
        self._idle = False
        self._busy = False
        self._stop = False
        self._thread: threading.Thread | None = None
        self._reset()

    def _reset(self) -> None:
        self._evaluated = 0
        self._agreed = 0
        self._same = 0
        self._dropped = 0
        self._errors = 0
        self._other = 0
        self._diffs: dict[DiffKey, _Diff] = {}
        self._since = self._clock()

    def set_policy(self, policy: CompiledPolicy | None) -> None:
        """Shadow ``policy`` from now on (None: stop); the statistics start afresh."""
        with self._lock:
            self._policy = policy
            self._reset()

    @property
    def policy(self) -> CompiledPolicy | None:
        """The policy being shadowed, if any."""
        return self._policy

    def submit(self, request: Request, active: Decision, now: float) -> None:
        """Queue ``request`` (answered with ``active`` at ``now``) for shadow evaluation.

        Never blocks and never raises; drops (and counts) the request when the queue is full.
        """
        policy = self._policy
        if policy is None:
            return
        if len(self._items) >= self._queue_size:
            with self._lock:
                self._dropped += 1
            return
        self._items.append((policy, request, active, now))
        if self._idle:
            self._wake.set()

    def start(self) -> None:
        """Start the worker thread (idempotent)."""
        if self._thread is None:
            self._stop = False
            self._thread = threading.Thread(target=self._run, name="pdp-shadow", daemon=True)
            self._thread.start()

    def close(self, timeout: float = 5.0) -> None:
        """Stop the worker; queued requests not yet evaluated are discarded."""
        self._stop = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        self._items.clear()

    def flush(self, timeout: float) -> bool:
        """Wait until every queued request is evaluated; False when ``timeout`` ran out."""
        end = time.monotonic() + timeout  # real time: this waits for a real thread
        with self._idle_cond:
            while self._items or self._busy:
                remaining = end - time.monotonic()
                if remaining <= 0:
                    return False
                self._wake.set()
                self._idle_cond.wait(min(remaining, 0.05))
        return True

    def _run(self) -> None:
        while not self._stop:
            with self._idle_cond:
                item = self._items.popleft() if self._items else None
                self._busy = item is not None
                if item is None:
                    self._idle_cond.notify_all()
            if item is None:
                self._idle = True
                self._wake.clear()
                if not self._items:
                    self._wake.wait(0.5)
                self._idle = False
                continue
            try:
                self._evaluate(*item)
            except Exception:  # the worker must outlive any odd request; counted, never raised
                with self._lock:
                    self._errors += 1
            finally:
                with self._idle_cond:
                    self._busy = False
                    self._idle_cond.notify_all()

    def _evaluate(
        self, policy: CompiledPolicy, request: Request, active: Decision, now: float
    ) -> None:
        shadow = policy.evaluate(request, now=now)
        same = shadow.effect is active.effect
        agree = same and shadow.rule_id == active.rule_id
        with self._lock:
            if policy is not self._policy:
                return  # submitted for a shadow that has since been replaced
            self._evaluated += 1
            self._same += 1 if same else 0
            if agree:
                self._agreed += 1
                return
            key = (active.rule_id, _word(active.effect), shadow.rule_id, _word(shadow.effect))
            diff = self._diffs.get(key)
            if diff is None:
                if len(self._diffs) >= self._max_differences:
                    self._other += 1
                    return
                diff = self._diffs[key] = _Diff()
            diff.count += 1
            if len(diff.samples) < self._sample_size:
                diff.samples.append(request_to_dict(request))

    def report(self, top: int = 10) -> ShadowReportData:
        """The statistics so far: agreement and the ``top`` most frequent differences."""
        with self._lock:
            policy = self._policy
            ranked = sorted(self._diffs.items(), key=lambda kv: (-kv[1].count, kv[0]))[:top]
            return ShadowReportData(
                version=policy.version if policy is not None else "",
                evaluated=self._evaluated,
                agreed=self._agreed,
                agreement_rate=self._agreed / self._evaluated if self._evaluated else 0.0,
                top_differences=tuple(
                    ShadowDifference(*key, count=d.count, samples=tuple(d.samples))
                    for key, d in ranked
                ),
                same_decision=self._same,
                dropped=self._dropped,
                errors=self._errors,
                other_differences=self._other,
                since=self._since,
            )
