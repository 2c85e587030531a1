"""The cheap paths of detection change no alert: detectors see only the events they can count,
and the deny-ratio buckets keep running sums; both checked against the plain way."""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import pytest
from detect_support import Recorder
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import pdp.detect._pipeline
from pdp.clock import FakeClock
from pdp.configuration import build_section
from pdp.detect import Alert, DetectionConfig, DetectionPipeline
from pdp.detect._detectors import Detector, build_detectors
from pdp.detect._windows import BucketedRatio
from pdp.events import DecisionCall, Event, EventType
from pdp.policy import Action, Decision, Effect, Request, Resource, Subject

PROPERTY = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Small thresholds and windows so that short streams raise alerts.
SETTINGS: dict[str, Any] = {
    "cooldown": 5.0,
    "deny_storm": {"threshold": 3, "window": 4.0},
    "auth_failure_burst": {"threshold": 2, "window": 4.0, "quarantine": True},
    "token_replay": {"threshold": 1, "window": 4.0},
    "deny_ratio_jump": {"window": 5.0, "baseline_window": 10.0, "bucket": 1.0,
                        "min_events": 3, "min_baseline_events": 3, "threshold": 0.3},
}

event_strategy = st.builds(
    lambda type_, outcome, actor, peer, details, step: (step, type_, outcome, actor, peer, details),
    st.sampled_from(list(EventType)),
    st.sampled_from(["allow", "deny", "", "failure", "success", "other"]),
    st.sampled_from(["", "spiffe://t/a", "spiffe://t/b"]),
    st.sampled_from(["", "ipv4:10.0.0.1:1", "ipv4:10.0.0.2:2"]),
    st.fixed_dictionaries({}, optional={
        "subject": st.sampled_from(["alice", "bob", ""]),
        "reason": st.sampled_from(["quarantined", "default deny"]),
        "kind": st.sampled_from(["replayed_jti", "revoked", "expired", "invalid"]),
        "listener": st.sampled_from(["admin", "data"]),
        "method": st.sampled_from(["/pdp.v1.Admin/Push", "/pdp.v1.Authorization/Authorize"]),
    }),
    st.sampled_from([0.0, 0.0, 0.3, 1.0, 2.5, -0.5]),  # the clock may step back a little
)


def pipeline(clock: FakeClock, recorder: Recorder, *, every_detector: bool) -> DetectionPipeline:
    config = build_section(DetectionConfig, SETTINGS, where="[detection]")
    made = DetectionPipeline(config, clock=clock, quarantine=recorder.quarantine,
                             sinks=[recorder])
    if every_detector:  # the plain way: every detector sees every event
        everyone = tuple(made._detectors)
        made._on_allow = made._on_deny = made._on_decision = everyone
        made._on_type = {kind: everyone for kind in made._on_type}
    return made


def comparable(alerts: list[Alert]) -> list[Alert]:
    return [replace(a, alert_id="") for a in alerts]  # ids are random


@PROPERTY
@given(stream=st.lists(event_strategy, max_size=60))
def test_routing_raises_the_same_alerts_as_running_every_detector(
    stream: list[tuple[float, EventType, str, str, str, dict[str, str]]],
) -> None:
    runs = []
    for every in (False, True):
        clock, recorder = FakeClock(), Recorder()
        made = pipeline(clock, recorder, every_detector=every)
        for step, type_, outcome, actor, peer, details in stream:
            clock.set(clock() + step)
            made._process(Event(type=type_, time=clock(), actor=actor, peer=peer,
                                outcome=outcome, details=details))
        runs.append((comparable(recorder.sent), [(s, t) for s, t, _ in recorder.quarantined],
                     made.stats().detector_errors, made.stats().tracked_keys,
                     comparable(made.alerts())))
        made.close()
    assert runs[0] == runs[1]


class PlainRatio:
    """The deny-ratio buckets as first written: every count sums every bucket."""

    def __init__(self, *, window: float, baseline_window: float, bucket: float) -> None:
        self._window = window
        self._span = window + baseline_window
        self._bucket = bucket
        self._buckets: deque[list[float]] = deque(maxlen=math.ceil(self._span / bucket) + 2)

    def add(self, now: float, deny: bool) -> None:
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


@PROPERTY
@given(
    shape=st.sampled_from([(5.0, 15.0, 1.0), (60.0, 900.0, 5.0), (1.0, 2.5, 0.7), (3.0, 3.0, 3.0)]),
    steps=st.lists(st.tuples(st.floats(-4.0, 6.0), st.booleans()), max_size=200),
    start=st.floats(0.0, 2e9),
)
def test_bucketed_ratio_counts_like_summing_every_bucket(
    shape: tuple[float, float, float], steps: list[tuple[float, bool]], start: float
) -> None:
    window, baseline, bucket = shape
    fast = BucketedRatio(window=window, baseline_window=baseline, bucket=bucket)
    plain = PlainRatio(window=window, baseline_window=baseline, bucket=bucket)
    now = start
    for step, deny in steps:
        now += step
        fast.add(now, deny)
        plain.add(now, deny)
        assert fast.counts(now) == plain.counts(now)
        assert fast.counts(now + step) == plain.counts(now + step)


decision_strategy = st.tuples(
    st.sampled_from(["allow", "allow", "allow", "deny", "other"]),  # mostly allows, as served
    st.sampled_from(["alice", "bob"]),
    st.sampled_from([0.0, 0.0, 0.0, 0.4, 1.0, -0.5]),  # runs of one time; the clock may step back
    st.integers(1, 6),  # how many decisions go into the batch that this one ends
)


@PROPERTY
@given(stream=st.lists(decision_strategy, max_size=80), flush_every=st.integers(1, 5))
def test_a_batch_counted_at_once_raises_the_same_alerts_as_one_by_one(
    stream: list[tuple[str, str, float, int]], flush_every: int,
) -> None:
    """AuthorizeBatch's decisions reach the detectors as one queue item whose runs of allows
    are counted at once: the same alerts, quarantines, counts and state as one by one."""
    events, clock = [], FakeClock()
    for outcome, subject, step, _ in stream:
        clock.set(clock() + step)
        events.append(Event(type=EventType.DECISION, time=clock(), actor="spiffe://t/a",
                            outcome=outcome, details={"subject": subject}))
    batches, start = [], 0
    for i, (_, _, _, size) in enumerate(stream):  # cut the stream into batches
        if i + 1 - start >= size or i == len(stream) - 1:
            batches.append(tuple(events[start:i + 1]))
            start = i + 1
    one_by_one = observed(clock(), batches, flush_every, at_once=False)
    assert observed(clock(), batches, flush_every, at_once=True) == one_by_one
    assert one_by_one[2] == len(events)  # every decision was counted as processed


def observed(start: float, batches: Sequence[Sequence[Event]], flush_every: int, *,
             at_once: bool) -> tuple[Any, ...]:
    """What a pipeline with the deny-ratio detector sends, quarantines, counts and keeps
    after ``batches``, each handed over at once (emit_all) or one event at a time."""
    recorder = Recorder()
    made = pipeline(FakeClock(start), recorder, every_detector=False)
    assert made._allow_counters, "the deny-ratio detector counts allows at once"
    made.start()
    for n, batch in enumerate(batches):
        if at_once:
            made.emit_all(batch)
        else:
            for event in batch:
                made.emit(event)
        if n % flush_every == 0:
            assert made.flush()
    assert made.flush()
    stats = made.stats()
    ratio = ratio_of(made)
    seen = (comparable(recorder.sent), [(s, t) for s, t, _ in recorder.quarantined],
            stats.processed, stats.queued, stats.dropped, stats.detector_errors,
            stats.tracked_keys, comparable(made.alerts()),
            [tuple(b) for b in ratio._buckets], ratio._total, ratio._denies)
    made.close()
    return seen


def ratio_of(made: DetectionPipeline) -> BucketedRatio:
    """The deny-ratio detector's buckets (held by its closures), to compare their counts."""
    (detector,) = [d for d in made._detectors if d.name == "deny_ratio_jump"]
    assert detector.count_allows is not None
    cells = detector.count_allows.__closure__ or ()
    (ratio,) = [c.cell_contents for c in cells if isinstance(c.cell_contents, BucketedRatio)]
    return ratio


def test_a_detector_that_cannot_count_allows_at_once_sees_each(
    clock: FakeClock, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Where one detector that sees allows has no count_allows, a batch goes one by one."""
    seen: list[Event] = []

    def with_watcher(config: DetectionConfig) -> list[Detector]:
        built = build_detectors(config)
        return [*built, replace(built[0], name="watcher", types=frozenset({EventType.DECISION}),
                                outcomes=frozenset({"allow"}), count_allows=None,
                                observe=lambda e: seen.append(e) or [])]

    monkeypatch.setattr(pdp.detect._pipeline, "build_detectors", with_watcher)
    made = DetectionPipeline(build_section(DetectionConfig, SETTINGS, where="[detection]"),
                             clock=clock, quarantine=None, sinks=[])
    assert made._allow_counters is None
    made.start()
    batch = tuple(Event(type=EventType.DECISION, time=clock(), outcome="allow",
                        details={"subject": "alice"}) for _ in range(5))
    made.emit_all(batch)
    assert made.flush()
    assert seen == list(batch)
    assert made.stats().processed == 5
    made.close()


call_strategy = st.lists(
    st.tuples(st.sampled_from([Effect.ALLOW, Effect.ALLOW, Effect.DENY]),
              st.sampled_from(["alice", "bob"]),
              st.sampled_from(["default deny", "quarantined"])),
    min_size=1, max_size=8)


@PROPERTY
@given(calls=st.lists(st.tuples(call_strategy, st.sampled_from([0.0, 0.4, 1.0, 3.0])),
                      max_size=20),
       flush_every=st.integers(1, 5))
def test_a_calls_decisions_raise_the_same_alerts_as_its_events_one_by_one(
    calls: list[tuple[list[tuple[Effect, str, str]], float]], flush_every: int,
) -> None:
    """The server hands a batch's decisions over as a DecisionCall: the worker counts its
    allows at once and builds an Event only for each deny; the same alerts, quarantines,
    counts and state as its events emitted one by one."""
    clock = FakeClock()
    made_calls = []
    for n, (decisions, step) in enumerate(calls):
        clock.set(clock() + step)
        made_calls.append(DecisionCall(
            "spiffe://t/a", "ipv4:10.0.0.1:1", clock(),
            [Request(Subject("user", s), Action("read"), Resource("doc", "d"))
             for _, s, _ in decisions],
            [Decision(e, "r", reason, "1-ab") for e, _, reason in decisions],
            [f"c{n}-{i}" for i in range(len(decisions))]))
    one_by_one = observed(clock(), made_calls, flush_every, at_once=False)
    assert observed(clock(), made_calls, flush_every, at_once=True) == one_by_one
    assert one_by_one[2] == sum(len(c) for c in made_calls)
