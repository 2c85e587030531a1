"""The pipeline: one alert per incident, cooldown, bounded queue and memory, failure isolation."""

from __future__ import annotations

import threading

import pytest
from detect_support import MakePipeline, Recorder, auth_event, decision

import pdp.detect
import pdp.errors
from pdp.clock import FakeClock
from pdp.configuration import build_section
from pdp.detect import Alert, DetectionConfig, DetectionPipeline
from pdp.events import Event, EventType


def _storm(pipeline: DetectionPipeline, clock: FakeClock, subject: str, n: int) -> None:
    for _ in range(n):
        pipeline.emit(decision(clock, subject))
        clock.advance(0.05)


def test_cooldown_re_raises_a_new_alert(
    make_pipeline: MakePipeline, clock: FakeClock, recorder: Recorder
) -> None:
    pipeline = make_pipeline({"cooldown": 300, "deny_storm": {"threshold": 20}})
    _storm(pipeline, clock, "user:eve", 100)
    assert pipeline.flush()
    clock.advance(200)  # still within the cooldown: the same incident
    _storm(pipeline, clock, "user:eve", 100)
    assert pipeline.flush()
    first = recorder.by_detector("deny_storm")
    assert len(first) == 1
    assert pipeline.alerts()[0].count == 200
    clock.advance(120)  # cooldown over: the incident is closed
    assert pipeline.alerts() == []
    _storm(pipeline, clock, "user:eve", 100)
    assert pipeline.flush()
    alerts = recorder.by_detector("deny_storm")
    assert len(alerts) == 2 and alerts[1].alert_id != alerts[0].alert_id
    assert [q[0] for q in recorder.quarantined] == ["user:eve", "user:eve"]


def test_incidents_are_per_key(
    make_pipeline: MakePipeline, clock: FakeClock, recorder: Recorder
) -> None:
    pipeline = make_pipeline({"deny_storm": {"threshold": 10}})
    _storm(pipeline, clock, "user:a", 30)
    _storm(pipeline, clock, "user:b", 30)
    assert pipeline.flush()
    assert sorted(a.key for a in recorder.by_detector("deny_storm")) == ["user:a", "user:b"]
    assert pipeline.stats().open_incidents == 2


def test_full_queue_drops_and_counts_without_blocking(clock: FakeClock) -> None:
    config = build_section(DetectionConfig, {"queue_size": 10}, where="[detection]")
    pipeline = DetectionPipeline(config, clock=clock, quarantine=None, sinks=[])
    try:  # not started: nothing drains the queue
        for _ in range(1000):
            pipeline.emit(decision(clock, "user:z"))
        stats = pipeline.stats()
        assert (stats.queued, stats.dropped) == (10, 990)
    finally:
        pipeline.close(timeout=1)


def test_a_batch_fills_the_queue_to_its_bound_and_the_rest_is_counted(clock: FakeClock) -> None:
    config = build_section(DetectionConfig, {"queue_size": 10}, where="[detection]")
    pipeline = DetectionPipeline(config, clock=clock, quarantine=None, sinks=[])
    try:  # not started: nothing drains the queue
        pipeline.emit_all([decision(clock, "user:z") for _ in range(6)])
        pipeline.emit_all([decision(clock, "user:z") for _ in range(6)])  # room for 4 of 6
        stats = pipeline.stats()
        assert (stats.queued, stats.dropped) == (10, 2)
    finally:
        pipeline.close(timeout=1)


def test_emit_after_close_is_dropped_not_raised(
    make_pipeline: MakePipeline, clock: FakeClock
) -> None:
    pipeline = make_pipeline()
    pipeline.close()
    pipeline.emit(decision(clock, "user:late"))
    assert pipeline.stats().dropped == 1


def test_irrelevant_events_are_not_queued(clock: FakeClock) -> None:
    config = DetectionConfig(queue_size=1)
    pipeline = DetectionPipeline(config, clock=clock, quarantine=None, sinks=[])
    for _ in range(10):
        pipeline.emit(Event(type=EventType.TOKEN_ISSUED, time=clock(), actor="spiffe://t/a"))
    assert pipeline.stats().queued == 0 and pipeline.stats().dropped == 0
    pipeline.close()


def test_disabled_pipeline_does_nothing(
    make_pipeline: MakePipeline, clock: FakeClock, recorder: Recorder
) -> None:
    pipeline = make_pipeline({"enabled": False, "deny_storm": {"threshold": 1}})
    _storm(pipeline, clock, "user:a", 10)
    assert pipeline.flush()
    assert recorder.sent == [] and pipeline.stats().queued == 0


def test_failing_sink_and_quarantine_do_not_stop_other_sinks(
    make_pipeline: MakePipeline, clock: FakeClock, recorder: Recorder
) -> None:
    class Broken:
        def send(self, alert: Alert) -> None:
            raise OSError("disk full")

        def close(self) -> None:
            raise OSError("still full")

    def quarantine(subject: str, ttl: float, reason: str) -> None:
        raise RuntimeError("store down")

    pipeline = make_pipeline(
        {"deny_storm": {"threshold": 5}}, sinks=[Broken(), recorder], quarantine=quarantine
    )
    _storm(pipeline, clock, "user:a", 5)
    pipeline.emit(auth_event(clock, EventType.AUTH_FAILURE_TOKEN, actor="x", kind="replayed_jti"))
    assert pipeline.flush()
    storm = recorder.by_detector("deny_storm")[0]
    assert storm.action == "" and storm.details["quarantine_error"] == "RuntimeError"
    assert recorder.by_detector("token_replay")
    stats = pipeline.stats()
    assert stats.sink_errors == 2 and stats.quarantine_errors == 1 and stats.quarantines == 0
    pipeline.close()
    assert recorder.closed


def test_detector_error_is_counted_and_worker_survives(
    make_pipeline: MakePipeline, clock: FakeClock, recorder: Recorder
) -> None:
    pipeline = make_pipeline({"deny_storm": {"threshold": 1}})
    bad = decision(clock, "user:a")
    object.__setattr__(bad, "details", None)  # a malformed event from a buggy emitter
    pipeline.emit(bad)
    pipeline.emit(decision(clock, "user:b"))
    assert pipeline.flush()
    assert pipeline.stats().detector_errors >= 1
    assert [a.key for a in recorder.by_detector("deny_storm")] == ["user:b"]


def test_flood_of_distinct_keys_is_bounded(
    make_pipeline: MakePipeline, clock: FakeClock, recorder: Recorder
) -> None:
    pipeline = make_pipeline({"max_keys": 100, "deny_storm": {"threshold": 1000}})
    for i in range(5000):
        pipeline.emit(decision(clock, f"user:{i}"))
        pipeline.emit(
            auth_event(clock, EventType.AUTH_FAILURE_CERT, actor=f"id{i}", peer=f"ipv4:10.{i}:1")
        )
    assert pipeline.flush()
    stats = pipeline.stats()
    assert stats.processed == 10_000
    # deny_storm + auth_failure_burst at most 100 keys each, deny_ratio_jump one.
    assert stats.tracked_keys <= 201


def test_flood_of_alerting_keys_bounds_incidents(
    make_pipeline: MakePipeline, clock: FakeClock, recorder: Recorder
) -> None:
    pipeline = make_pipeline({"max_keys": 50})
    for i in range(500):  # each a distinct revoked-certificate incident
        pipeline.emit(
            auth_event(clock, EventType.AUTH_FAILURE_CERT, actor=f"id{i}", kind="revoked")
        )
    assert pipeline.flush()
    assert len(recorder.by_detector("revoked_certificate")) == 500
    assert len(pipeline.alerts()) <= 50


def test_emit_is_thread_safe(make_pipeline: MakePipeline, clock: FakeClock) -> None:
    pipeline = make_pipeline()

    def spam() -> None:
        for _ in range(500):
            pipeline.emit(decision(clock, "user:t", outcome="allow"))

    threads = [threading.Thread(target=spam) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert pipeline.flush()
    assert pipeline.stats().processed == 2000


def test_alert_event_for_the_audit_trail(
    make_pipeline: MakePipeline, clock: FakeClock, recorder: Recorder
) -> None:
    pipeline = make_pipeline({"deny_storm": {"threshold": 2}})
    _storm(pipeline, clock, "user:a", 2)
    assert pipeline.flush()
    event = recorder.sent[0].to_event()
    assert event.type is EventType.ALERT and event.actor == "user:a"
    assert event.outcome == "quarantined" and event.details["detector"] == "deny_storm"


def test_exported_names() -> None:
    assert sorted(pdp.detect.__all__) == [
        "AdminOutsiderConfig",
        "Alert",
        "AlertSink",
        "AlertSinkError",
        "AuthFailureBurstConfig",
        "BundleSignatureConfig",
        "CallbackAlertSink",
        "DenyRatioJumpConfig",
        "DenyStormConfig",
        "DetectionConfig",
        "DetectionPipeline",
        "DetectionStats",
        "JsonLinesAlertSink",
        "QuarantineFn",
        "RevokedCertificateConfig",
        "TokenReplayConfig",
        "WebhookAlertSink",
        "WebhookConfig",
        "WebhookStats",
    ]
    for name in pdp.detect.__all__:
        assert getattr(pdp.detect, name) is not None


@pytest.mark.parametrize(
    ("settings", "fault"),
    [
        ({"cooldown": 0}, "cooldown"),
        ({"deny_storm": {"threshold": 0}}, "deny_storm.threshold"),
        ({"deny_storm": {"quarantine_ttl": -1}}, "quarantine_ttl"),
        ({"deny_ratio_jump": {"threshold": 1.5}}, "deny_ratio_jump.threshold"),
        ({"webhook": {"url": "file:///etc/passwd"}}, "webhook.url"),
        ({"webhook": {"url": "ftp://example.invalid/x"}}, "webhook.url"),
        ({"token_replay": {"severity": "meh"}}, "severity"),
        ({"deny_storm": {"treshold": 3}}, "unknown setting"),
    ],
)
def test_config_rejects_bad_settings(settings: dict[str, object], fault: str) -> None:
    with pytest.raises(pdp.errors.ConfigError, match=fault):
        build_section(DetectionConfig, settings, where="[detection]")


def test_config_partial_table_keeps_detector_defaults() -> None:
    config = build_section(DetectionConfig, {"deny_storm": {"window": 30}}, where="[detection]")
    assert config.deny_storm.window == 30
    assert config.deny_storm.threshold == 100 and config.deny_storm.quarantine is True
    assert config.bundle_signature.severity == "critical"
