"""The pdp instruments: decision counters and latency, cache, auth failures, alerts,
and observable gauges fed by callbacks (bundle sequence, certificate expiry, audit queue).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable

from opentelemetry.metrics import CallbackOptions, Meter, Observation

__all__ = ["LATENCY_BUCKETS", "Metrics"]

# Seconds: a decision takes tens of microseconds to a few milliseconds.
LATENCY_BUCKETS = (
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
)
_DECISION_ATTRS = {"allow": {"decision": "allow"}, "deny": {"decision": "deny"}}


class _Tally:
    """One thread's decision counts. Only that thread adds to them, so they need no lock
    and lose nothing; a collection sums every thread's (see :meth:`Metrics.record_decision`).
    """

    __slots__ = ("decisions", "hits", "misses")

    def __init__(self) -> None:
        self.decisions: dict[str, int] = {}
        self.hits = 0
        self.misses = 0


class Metrics:
    """The instruments on one meter; every method is cheap enough for the hot path."""

    def __init__(self, meter: Meter) -> None:
        # The per-decision counters are observable: each thread counts into a _Tally of its
        # own and the SDK reads the sums when it collects. An SDK counter's add costs ~3-4 µs
        # (its attributes hashed, a lock), three of them per decision; the histogram, which
        # has no observable form, is the one SDK call left there.
        self._local = threading.local()
        self._tallies: list[_Tally] = []
        self._tallies_lock = threading.Lock()  # taken once per thread, at its first decision
        meter.create_observable_counter(
            "pdp.decisions", callbacks=[self._observe_decisions], unit="{decision}",
            description="Authorization decisions by outcome",
        )
        self._duration = meter.create_histogram(
            "pdp.decision.duration",
            unit="s",
            description="Time to decide one authorization request",
            explicit_bucket_boundaries_advisory=LATENCY_BUCKETS,
        )
        meter.create_observable_counter(
            "pdp.cache.hits", callbacks=[self._observe_hits], unit="{decision}",
            description="Decisions answered from the cache",
        )
        meter.create_observable_counter(
            "pdp.cache.misses", callbacks=[self._observe_misses], unit="{decision}",
            description="Decisions evaluated by the engine",
        )
        self._auth_failures = meter.create_counter(
            "pdp.auth.failures", unit="{failure}", description="Rejected credentials by kind"
        )
        self._alerts = meter.create_counter(
            "pdp.alerts", unit="{alert}", description="Alerts raised by detector and severity"
        )
        self._bundle: Callable[[], int] | None = None
        self._expiry: Callable[[], dict[str, float]] | None = None
        self._queue: Callable[[], int] | None = None
        meter.create_observable_gauge(
            "pdp.bundle.sequence", callbacks=[self._observe_bundle], unit="1",
            description="Store sequence number of the active policy bundle",
        )
        meter.create_observable_gauge(
            "pdp.certificate.expiry", callbacks=[self._observe_expiry], unit="d",
            description="Days until a certificate in use expires, by certificate",
        )
        meter.create_observable_gauge(
            "pdp.audit.queue_depth", callbacks=[self._observe_queue], unit="{event}",
            description="Audit events accepted but not yet written",
        )

    def record_decision(self, decision: str, latency_s: float, cached: bool) -> None:
        """Count one decision (``allow``/``deny``), its latency and whether it was cached."""
        try:
            tally: _Tally = self._local.tally
        except AttributeError:
            tally = self._local.tally = _Tally()
            with self._tallies_lock:
                self._tallies.append(tally)  # kept when the thread ends: counts only grow
        counts = tally.decisions
        counts[decision] = counts.get(decision, 0) + 1
        if cached:
            tally.hits += 1
        else:
            tally.misses += 1
        self._duration.record(latency_s, _DECISION_ATTRS.get(decision) or {"decision": decision})

    def record_auth_failure(self, kind: str) -> None:
        """Count one rejected credential of ``kind`` (certificate, token, peer, ...)."""
        self._auth_failures.add(1, {"kind": kind})

    def record_alert(self, detector: str, severity: str) -> None:
        """Count one alert raised by ``detector``."""
        self._alerts.add(1, {"detector": detector, "severity": severity})

    def observe_gauges(
        self,
        *,
        active_bundle_sequence: Callable[[], int] | None = None,
        cert_expiry_days: Callable[[], dict[str, float]] | None = None,
        audit_queue_depth: Callable[[], int] | None = None,
    ) -> None:
        """Set the callbacks read at each collection (replacing earlier ones when given)."""
        if active_bundle_sequence is not None:
            self._bundle = active_bundle_sequence
        if cert_expiry_days is not None:
            self._expiry = cert_expiry_days
        if audit_queue_depth is not None:
            self._queue = audit_queue_depth

    def _snapshot(self) -> list[_Tally]:
        with self._tallies_lock:
            return list(self._tallies)

    def _observe_decisions(self, options: CallbackOptions) -> Iterable[Observation]:
        totals: dict[str, int] = {}
        for tally in self._snapshot():
            for decision, count in tally.decisions.copy().items():  # copy(): one C call
                totals[decision] = totals.get(decision, 0) + count
        return [Observation(count, {"decision": decision}) for decision, count in totals.items()]

    def _observe_hits(self, options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(sum(tally.hits for tally in self._snapshot()))]

    def _observe_misses(self, options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(sum(tally.misses for tally in self._snapshot()))]

    # A failing callback must not break the collection of every other metric: skip it.

    def _observe_bundle(self, options: CallbackOptions) -> Iterable[Observation]:
        source = self._bundle
        try:
            return [Observation(int(source()))] if source else []
        except Exception:
            return []

    def _observe_expiry(self, options: CallbackOptions) -> Iterable[Observation]:
        source = self._expiry
        try:
            items = source().items() if source else ()
            return [Observation(float(days), {"certificate": name}) for name, days in items]
        except Exception:
            return []

    def _observe_queue(self, options: CallbackOptions) -> Iterable[Observation]:
        source = self._queue
        try:
            return [Observation(int(source()))] if source else []
        except Exception:
            return []
