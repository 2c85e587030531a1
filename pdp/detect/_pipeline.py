"""The detection pipeline: a bounded queue off the Authorize hot path, a worker running the
detectors, incidents deduplicated with a cooldown, alerts fanned out to sinks, quarantine.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from pdp.clock import Clock
from pdp.detect._alerts import Alert, AlertSink
from pdp.detect._config import DetectionConfig
from pdp.detect._detectors import RELEVANT_TYPES, Detector, Hit, build_detectors
from pdp.events import DecisionCall, Event, EventType

__all__ = ["DetectionPipeline", "DetectionStats", "QuarantineFn"]

log = logging.getLogger("pdp.detect")

# quarantine(subject, ttl_seconds, reason): the server persists it and updates the engine.
QuarantineFn = Callable[[str, float, str], None]

_STOP = object()
POLL_INTERVAL = 0.02  # seconds: how stale a decision may be when the detectors see it
_COUNT_EVERY = 256  # events the worker processes between updates of the processed counter


@dataclass(frozen=True, slots=True)
class DetectionStats:
    """Counters of the pipeline (exported as metrics by the server)."""

    queued: int  # events waiting now
    dropped: int  # events dropped: queue full, or emitted after close
    processed: int  # events run through the detectors
    alerts: int  # alerts raised (new incidents)
    open_incidents: int  # incidents within their cooldown now
    quarantines: int  # successful quarantine calls
    quarantine_errors: int  # quarantine calls that raised
    sink_errors: int  # sink sends that raised
    detector_errors: int  # detector calls that raised (the event is skipped by that detector)
    tracked_keys: int  # keys held in all detector windows (bounded)


@dataclass(slots=True)
class _Incident:
    alert: Alert
    raised_at: float
    count: int
    last_seen: float
    extra: dict[str, Any] = field(default_factory=dict)


class DetectionPipeline:
    """Runs the detectors of ``config`` over emitted events on a worker thread.

    One alert per incident: an incident is keyed by (detector, key) and stays open for
    ``config.cooldown`` seconds after it was raised. While open, further hits only raise its
    count and last_seen, visible in :meth:`alerts`; sinks receive the alert once, when it is
    raised, never updates. When the cooldown has passed and the condition holds again, a new
    alert (new id) is raised and a quarantining detector quarantines again.

    Sinks are exactly those in ``sinks`` (the caller builds the file and webhook sinks from
    ``config.alert_file`` and ``config.webhook``); the pipeline closes them in :meth:`close`.
    """

    def __init__(
        self,
        config: DetectionConfig,
        *,
        clock: Clock,
        quarantine: QuarantineFn | None,
        sinks: Sequence[AlertSink],
    ) -> None:
        """Build the enabled detectors with fresh state; nothing runs until :meth:`start`."""
        self._config = config
        self._clock = clock
        self._quarantine = quarantine
        self._sinks: list[AlertSink] = list(sinks)
        self._detectors: list[Detector] = build_detectors(config) if config.enabled else []
        # Which detectors see which events, worked out once: most decisions are allows, and
        # only the deny-ratio detector counts those.
        detectors = self._detectors
        self._on_allow = tuple(d for d in detectors if d.sees(EventType.DECISION, "allow"))
        self._on_deny = tuple(d for d in detectors if d.sees(EventType.DECISION, "deny"))
        self._on_decision = tuple(d for d in detectors if d.sees(EventType.DECISION))
        self._on_type = {
            kind: tuple(d for d in detectors if d.sees(kind))
            for kind in RELEVANT_TYPES if kind is not EventType.DECISION
        }
        # A batch's allows are counted at once when every detector that sees allows can
        # (Detector.count_allows); None when one cannot, and they go one by one.
        self._allow_counters: tuple[tuple[Detector, Callable[[float, int], None]], ...] | None = (
            tuple((d, d.count_allows) for d in self._on_allow if d.count_allows is not None)
            if all(d.count_allows is not None for d in self._on_allow) else None)
        # A deque the worker drains every POLL_INTERVAL: appending costs the Authorize hot
        # path ~0.1 µs, where a queue.Queue put (lock, condition, a wake-up per event)
        # measured several µs of server CPU per decision.
        self._queue: deque[object] = deque()
        # Events queued inside batch items (a tuple per AuthorizeBatch call) beyond one each:
        # the queue's bound counts events. `+=` on an int attribute has no GIL release point
        # between its load and its store in CPython, so the emitting threads need no lock.
        self._extra = 0
        self._wake = threading.Event()
        self._incidents: OrderedDict[tuple[str, str], _Incident] = OrderedDict()
        self._lock = threading.Lock()  # guards the incidents and the counters
        self._closed = False
        self._queue_size = config.queue_size
        self._accepting = bool(self._detectors)  # has detectors and not closed (hot path)
        self._thread: threading.Thread | None = None
        self._dropped = self._processed = self._alerts = 0
        self._quarantines = self._quarantine_errors = 0
        self._sink_errors = self._detector_errors = 0

    # --- the hot path ------------------------------------------------------------------

    def emit(self, event: Event) -> None:
        """Queue ``event`` for the detectors; never blocks and never raises.

        Irrelevant event types are ignored; a full queue (or a closed pipeline) drops the
        event and counts it.
        """
        try:
            queue = self._queue
            if event.type is EventType.DECISION:  # once per Authorize call: the short way
                if self._accepting and len(queue) + self._extra < self._queue_size:
                    queue.append(event)
                    return
            elif event.type not in RELEVANT_TYPES:
                return
            if not self._detectors:
                return
            if self._closed or len(queue) + self._extra >= self._queue_size:
                with self._lock:
                    self._dropped += 1
                return
            queue.append(event)
            if event.type is not EventType.DECISION:
                self._wake.set()  # rare and urgent (auth failures): no need to wait a poll
        except Exception:  # pragma: no cover - the caller is Authorize: never break it
            log.exception("detection emit failed")

    def emit_all(self, events: Sequence[Event]) -> None:
        """Queue a batch's decision events; never blocks and never raises (as emit).

        They are queued as one item, all or (when the queue has no room for all) one by one
        as by :meth:`emit`. A DecisionCall (the server's) is queued as it is: the worker
        builds an Event only for a decision a detector must see one by one."""
        queue = self._queue
        count = len(events)
        if self._accepting and len(queue) + self._extra + count <= self._queue_size:
            if count > 1:
                self._extra += count - 1
                queue.append(events if type(events) is DecisionCall else tuple(events))
            elif count:
                queue.append(events[0])
            return
        for event in events:
            self.emit(event)

    # --- lifecycle -----------------------------------------------------------------------

    def start(self) -> None:
        """Start the worker thread (idempotent; does nothing when detection is disabled)."""
        if self._thread is not None or not self._detectors or self._closed:
            return
        self._thread = threading.Thread(target=self._run, name="pdp-detect", daemon=True)
        self._thread.start()

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until every event queued before this call is processed; False on timeout."""
        if self._thread is None or not self._thread.is_alive():
            return not self._queue
        done = threading.Event()
        self._queue.append(done)
        self._wake.set()
        return done.wait(timeout)

    def close(self, timeout: float = 5.0) -> None:
        """Process what is queued (up to ``timeout``), stop the worker, close every sink."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._accepting = False
        if self._thread is not None:
            self._queue.append(_STOP)
            self._wake.set()
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning("detection did not finish its queue at close; pending events dropped")
        for sink in self._sinks:
            try:
                sink.close()
            except Exception:
                log.exception("alert sink %s failed to close", type(sink).__name__)

    # --- reading -------------------------------------------------------------------------

    def alerts(self) -> list[Alert]:
        """The open incidents (within their cooldown) with their current counts, oldest first."""
        now = self._clock()
        with self._lock:
            self._expire(now)
            return [
                replace(i.alert, count=i.count, last_seen=i.last_seen)
                for i in self._incidents.values()
            ]

    def stats(self) -> DetectionStats:
        """A snapshot of the pipeline's counters."""
        with self._lock:
            self._expire(self._clock())
            return DetectionStats(
                queued=len(self._queue) + self._extra,
                dropped=self._dropped,
                processed=self._processed,
                alerts=self._alerts,
                open_incidents=len(self._incidents),
                quarantines=self._quarantines,
                quarantine_errors=self._quarantine_errors,
                sink_errors=self._sink_errors,
                detector_errors=self._detector_errors,
                tracked_keys=sum(d.tracked() for d in self._detectors),
            )

    # --- the worker ----------------------------------------------------------------------

    def _run(self) -> None:
        pending = self._queue
        take = pending.popleft
        process = self._process
        while True:
            if not pending:
                self._wake.wait(POLL_INTERVAL)
                self._wake.clear()
                continue
            done = 0  # processed, not yet counted: the counter's lock is taken once a batch
            while pending and done < _COUNT_EVERY:
                item = take()
                if item is _STOP:
                    self._count(done)
                    return
                if type(item) is threading.Event:  # flush(): everything before it is done
                    self._count(done)
                    done = 0
                    item.set()
                    continue
                if type(item) is tuple or type(item) is DecisionCall:  # a batch's decisions
                    self._extra -= len(item) - 1
                    self._process_batch(item)
                    done += len(item)
                    continue
                process(item)  # type: ignore[arg-type]  # only events and markers are queued
                done += 1
            self._count(done)

    def _count(self, processed: int) -> None:
        if processed:
            with self._lock:
                self._processed += processed

    def _process(self, event: Event) -> None:
        """Run ``event`` through the detectors that can count it (the worker counts it)."""
        if event.type is EventType.DECISION:
            outcome = event.outcome
            if outcome == "allow":
                detectors = self._on_allow
            elif outcome == "deny":
                detectors = self._on_deny
            else:
                detectors = self._on_decision
        else:
            detectors = self._on_type.get(event.type, ())
        for detector in detectors:
            try:
                for hit in detector.observe(event):
                    self._handle(detector, hit, event.time)
            except Exception:  # a bug in one detector must not stop the others or the worker
                log.exception("detector %s failed", detector.name)
                with self._lock:
                    self._detector_errors += 1

    def _process_batch(self, events: tuple[Event, ...] | DecisionCall) -> None:
        """:meth:`_process` of each event in order, except that each run of allows of one
        time is counted at once where the detectors that see allows can (the same counts)."""
        counters, process = self._allow_counters, self._process
        if counters is None:
            for event in events:
                process(event)
            return
        if type(events) is DecisionCall:  # one time: its allows counted between its denies
            run = 0
            for index, outcome in enumerate(events.outcomes()):
                if outcome == "allow":
                    run += 1
                    continue
                if run:
                    self._count_allows(counters, events.time, run)
                    run = 0
                process(events[index])  # an Event for a deny only
            if run:
                self._count_allows(counters, events.time, run)
            return
        run, at = 0, 0.0
        for event in events:
            if event.type is EventType.DECISION and event.outcome == "allow":
                if run and event.time != at:
                    self._count_allows(counters, at, run)
                    run = 0
                at = event.time
                run += 1
                continue
            if run:
                self._count_allows(counters, at, run)
                run = 0
            process(event)
        if run:
            self._count_allows(counters, at, run)

    def _count_allows(self, counters: tuple[tuple[Detector, Callable[[float, int], None]], ...],
                      now: float, count: int) -> None:
        for detector, count_allows in counters:
            try:
                count_allows(now, count)
            except Exception:  # as in _process: one detector's bug stops neither the others
                log.exception("detector %s failed", detector.name)
                with self._lock:
                    self._detector_errors += 1

    def _expire(self, now: float) -> None:
        # Incidents are in raise order, so the expired ones are at the front.
        cooldown = self._config.cooldown
        while self._incidents:
            first = next(iter(self._incidents.values()))
            if first.raised_at + cooldown > now:
                break
            self._incidents.popitem(last=False)

    def _handle(self, detector: Detector, hit: Hit, now: float) -> None:
        if not hit.firing and not self._incidents:
            # The usual deny: nothing open to count it against, nothing to raise. Only this
            # thread adds incidents, so an empty dict stays empty while we look.
            return
        ident = (detector.name, hit.key)
        with self._lock:
            self._expire(now)
            incident = self._incidents.get(ident)
            if incident is not None:
                incident.count += 1
                incident.last_seen = max(incident.last_seen, now)
                return
            if not hit.firing:
                return
            while len(self._incidents) >= self._config.max_keys:
                self._incidents.popitem(last=False)  # bounded: forget the oldest incident
            alert = Alert(
                alert_id=uuid.uuid4().hex,
                detector=detector.name,
                severity=detector.severity,
                key=hit.key,
                count=hit.count,
                first_seen=hit.first_seen,
                last_seen=now,
                details=dict(hit.details),
            )
            self._incidents[ident] = _Incident(
                alert=alert, raised_at=now, count=hit.count, last_seen=now
            )
            self._alerts += 1
        alert = self._act(detector, hit, alert)
        with self._lock:
            current = self._incidents.get(ident)
            if current is not None and current.alert.alert_id == alert.alert_id:
                current.alert = alert
        for sink in self._sinks:
            try:
                sink.send(alert)
            except Exception:
                log.exception("alert sink %s failed", type(sink).__name__)
                with self._lock:
                    self._sink_errors += 1

    def _act(self, detector: Detector, hit: Hit, alert: Alert) -> Alert:
        """Quarantine the hit's subject if the detector acts; return the alert as sent."""
        if not (detector.quarantine and hit.quarantine_subject and self._quarantine):
            return alert
        reason = (
            f"detector {detector.name}: {hit.count} events in {detector.window:g}s "
            f"(alert {alert.alert_id})"
        )
        try:
            self._quarantine(hit.quarantine_subject, detector.quarantine_ttl, reason)
        except Exception as exc:
            log.exception("quarantine of %r failed", hit.quarantine_subject)
            with self._lock:
                self._quarantine_errors += 1
            details = {**alert.details, "quarantine_error": type(exc).__name__}
            return replace(alert, details=details)
        with self._lock:
            self._quarantines += 1
        details = {
            **alert.details,
            "quarantine_ttl": detector.quarantine_ttl,
            "quarantine_subject": hit.quarantine_subject,
        }
        return replace(alert, action="quarantined", details=details)
