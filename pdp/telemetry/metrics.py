"""The pdp instruments: decision counters and latency, cache, auth failures, alerts,
and observable gauges fed by callbacks (bundle sequence, certificate expiry, audit queue).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from opentelemetry.metrics import CallbackOptions, Meter, Observation

__all__ = ["LATENCY_BUCKETS", "Metrics"]

# Seconds: a decision takes tens of microseconds to a few milliseconds.
LATENCY_BUCKETS = (
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
)
_DECISION_ATTRS = {"allow": {"decision": "allow"}, "deny": {"decision": "deny"}}


class Metrics:
    """The instruments on one meter; every method is cheap enough for the hot path."""

    def __init__(self, meter: Meter) -> None:
        self._decisions = meter.create_counter(
            "pdp.decisions", unit="{decision}", description="Authorization decisions by outcome"
        )
        self._duration = meter.create_histogram(
            "pdp.decision.duration",
            unit="s",
            description="Time to decide one authorization request",
            explicit_bucket_boundaries_advisory=LATENCY_BUCKETS,
        )
        self._hits = meter.create_counter(
            "pdp.cache.hits", unit="{decision}", description="Decisions answered from the cache"
        )
        self._misses = meter.create_counter(
            "pdp.cache.misses", unit="{decision}", description="Decisions evaluated by the engine"
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
        attrs = _DECISION_ATTRS.get(decision) or {"decision": decision}
        self._decisions.add(1, attrs)
        self._duration.record(latency_s, attrs)
        (self._hits if cached else self._misses).add(1)

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
