"""Each detector raises its alert on the attack it is for, and stays quiet below threshold."""

from __future__ import annotations

from collections.abc import Callable

from detect_support import MakePipeline, Recorder, auth_event, decision

from pdp.clock import FakeClock
from pdp.events import Event, EventType, Severity

ADMIN = "/pdp.v1.Admin/PushBundle"


def test_deny_storm_500_denies_one_alert_one_quarantine(
    make_pipeline: MakePipeline, clock: FakeClock, recorder: Recorder
) -> None:
    pipeline = make_pipeline({"deny_storm": {"threshold": 50, "window": 60}})
    for _ in range(500):
        pipeline.emit(decision(clock, "user:mallory"))
        clock.advance(0.01)
    assert pipeline.flush()
    alerts = recorder.by_detector("deny_storm")
    assert len(alerts) == 1
    alert = alerts[0]
    assert alert.key == "user:mallory"
    assert alert.action == "quarantined"
    assert alert.count == 50 and alert.severity is Severity.HIGH
    assert len(recorder.quarantined) == 1
    subject, ttl, reason = recorder.quarantined[0]
    assert (subject, ttl) == ("user:mallory", 900.0)
    assert "deny_storm" in reason and alert.alert_id in reason
    # The open incident kept counting every further deny.
    (open_alert,) = [a for a in pipeline.alerts() if a.detector == "deny_storm"]
    assert open_alert.alert_id == alert.alert_id and open_alert.count == 500
    assert open_alert.last_seen > alert.last_seen


def test_deny_storm_under_threshold_no_alert(
    make_pipeline: MakePipeline, clock: FakeClock, recorder: Recorder
) -> None:
    pipeline = make_pipeline({"deny_storm": {"threshold": 50, "window": 60}})
    for _ in range(49):
        pipeline.emit(decision(clock, "user:bob"))
    for _ in range(200):  # allows never count, nor do other subjects' denies
        pipeline.emit(decision(clock, "user:bob", outcome="allow"))
    for i in range(49):
        pipeline.emit(decision(clock, f"user:other{i}"))
    assert pipeline.flush()
    assert recorder.by_detector("deny_storm") == []
    assert recorder.quarantined == []


def test_deny_storm_spread_beyond_window_no_alert(
    make_pipeline: MakePipeline, clock: FakeClock, recorder: Recorder
) -> None:
    pipeline = make_pipeline({"deny_storm": {"threshold": 10, "window": 60}})
    for _ in range(100):  # one deny every 7 s: never 10 within 60 s
        pipeline.emit(decision(clock, "user:slow"))
        clock.advance(7)
    assert pipeline.flush()
    assert recorder.by_detector("deny_storm") == []


def test_quarantine_denies_do_not_renew_quarantine(
    make_pipeline: MakePipeline, clock: FakeClock, recorder: Recorder
) -> None:
    pipeline = make_pipeline({"deny_storm": {"threshold": 5}, "cooldown": 10})
    for _ in range(100):
        pipeline.emit(decision(clock, "user:retry", reason="quarantined"))
        clock.advance(1)
    assert pipeline.flush()
    assert recorder.quarantined == []


def test_deny_storm_without_quarantine_setting_only_alerts(
    make_pipeline: MakePipeline, clock: FakeClock, recorder: Recorder
) -> None:
    pipeline = make_pipeline({"deny_storm": {"threshold": 3, "quarantine": False}})
    for _ in range(3):
        pipeline.emit(decision(clock, "user:x"))
    assert pipeline.flush()
    assert [a.action for a in recorder.by_detector("deny_storm")] == [""]
    assert recorder.quarantined == []


def test_token_replay_alert(
    make_pipeline: MakePipeline, clock: FakeClock, recorder: Recorder
) -> None:
    pipeline = make_pipeline()
    pipeline.emit(
        auth_event(
            clock,
            EventType.AUTH_FAILURE_TOKEN,
            actor="spiffe://t/svc",
            peer="ipv4:10.0.0.9:5000",
            kind="replayed_jti",
            jti="abc",
        )
    )
    pipeline.emit(
        auth_event(
            clock,
            EventType.AUTH_FAILURE_TOKEN,
            actor="spiffe://t/other",
            kind="bad_signature",
            jti="",
        )
    )
    assert pipeline.flush()
    (alert,) = recorder.by_detector("token_replay")
    assert alert.key == "spiffe://t/svc" and alert.details["jti"] == "abc"


def test_revoked_certificate_alert(
    make_pipeline: MakePipeline, clock: FakeClock, recorder: Recorder
) -> None:
    pipeline = make_pipeline()
    pipeline.emit(
        auth_event(
            clock,
            EventType.AUTH_FAILURE_CERT,
            actor="spiffe://t/old",
            peer="ipv4:10.0.0.7:1234",
            kind="revoked",
            serial="0a1b",
        )
    )
    pipeline.emit(
        auth_event(
            clock, EventType.AUTH_FAILURE_CERT, peer="ipv4:10.0.0.8:1", kind="expired", serial="ff"
        )
    )
    pipeline.emit(
        auth_event(
            clock, EventType.AUTH_FAILURE_CERT, peer="ipv4:10.0.0.9:1", kind="no_certificate"
        )
    )
    assert pipeline.flush()
    alerts = {a.key: a for a in recorder.by_detector("revoked_certificate")}
    assert set(alerts) == {"spiffe://t/old", "peer:10.0.0.8"}
    assert alerts["spiffe://t/old"].details["serial"] == "0a1b"
    assert alerts["peer:10.0.0.8"].details["kind"] == "expired"


def test_auth_failure_burst_per_peer(
    make_pipeline: MakePipeline, clock: FakeClock, recorder: Recorder
) -> None:
    pipeline = make_pipeline({"auth_failure_burst": {"threshold": 10}})
    for port in range(20):  # a new source port per connection: still one peer host
        pipeline.emit(
            auth_event(
                clock,
                EventType.AUTH_FAILURE_CERT,
                peer=f"ipv4:192.0.2.5:{40000 + port}",
                kind="no_certificate",
            )
        )
    assert pipeline.flush()
    (alert,) = recorder.by_detector("auth_failure_burst")
    assert alert.key == "peer:192.0.2.5" and alert.count == 10
    assert recorder.quarantined == []  # an address is never quarantined


def test_auth_failure_burst_per_identity(
    make_pipeline: MakePipeline, clock: FakeClock, recorder: Recorder
) -> None:
    pipeline = make_pipeline({"auth_failure_burst": {"threshold": 5, "quarantine": True}})
    for i in range(5):  # five different addresses, one identity
        pipeline.emit(
            auth_event(
                clock,
                EventType.AUTH_FAILURE_TOKEN,
                actor="spiffe://t/svc",
                peer=f"ipv6:[2001:db8::{i}]:443",
                kind="audience",
            )
        )
    assert pipeline.flush()
    (alert,) = recorder.by_detector("auth_failure_burst")
    assert alert.key == "identity:spiffe://t/svc" and alert.action == "quarantined"
    assert [q[0] for q in recorder.quarantined] == ["spiffe://t/svc"]


def test_bundle_signature_failure_alert(
    make_pipeline: MakePipeline, clock: FakeClock, recorder: Recorder
) -> None:
    pipeline = make_pipeline()
    pipeline.emit(
        auth_event(
            clock,
            EventType.BUNDLE_SIGNATURE_FAILURE,
            actor="spiffe://t/admin",
            reason="signature does not verify",
            key_id="k1",
        )
    )
    assert pipeline.flush()
    (alert,) = recorder.by_detector("bundle_signature")
    assert alert.severity is Severity.CRITICAL and alert.details["key_id"] == "k1"


def test_admin_outsider_alert(
    make_pipeline: MakePipeline, clock: FakeClock, recorder: Recorder
) -> None:
    pipeline = make_pipeline()
    pipeline.emit(
        auth_event(
            clock,
            EventType.PERMISSION_DENIED,
            actor="spiffe://t/pep",
            method=ADMIN,
            listener="admin",
        )
    )
    pipeline.emit(
        auth_event(
            clock,
            EventType.PERMISSION_DENIED,
            actor="spiffe://t/web",
            method=ADMIN,
            listener="data",
        )
    )
    pipeline.emit(
        auth_event(clock, EventType.AUTH_FAILURE_PEER, peer="ipv4:203.0.113.4:9", listener="admin")
    )
    # A data-plane refusal of a data RPC is not an admin outsider.
    pipeline.emit(
        auth_event(
            clock,
            EventType.PERMISSION_DENIED,
            actor="spiffe://t/rogue",
            method="/pdp.v1.Authorization/Authorize",
            listener="data",
        )
    )
    assert pipeline.flush()
    keys = {a.key for a in recorder.by_detector("admin_outsider")}
    assert keys == {"spiffe://t/pep", "spiffe://t/web", "peer:203.0.113.4"}


def _ratio_traffic(
    emit: Callable[[Event], None], clock: FakeClock, *, seconds: int, deny_every: int
) -> None:
    """Ten decisions a second; every ``deny_every``-th is a deny (0: none)."""
    for i in range(seconds * 10):
        outcome = "deny" if deny_every and i % deny_every == 0 else "allow"
        emit(decision(clock, f"user:{i % 50}", outcome=outcome))
        clock.advance(0.1)


def test_deny_ratio_jump_alert(
    make_pipeline: MakePipeline, clock: FakeClock, recorder: Recorder
) -> None:
    pipeline = make_pipeline({"deny_storm": {"enabled": False}})
    _ratio_traffic(pipeline.emit, clock, seconds=900, deny_every=10)  # 10 % baseline
    assert pipeline.flush()
    assert recorder.by_detector("deny_ratio_jump") == []
    _ratio_traffic(pipeline.emit, clock, seconds=60, deny_every=2)  # 50 % now
    assert pipeline.flush()
    (alert,) = recorder.by_detector("deny_ratio_jump")
    assert alert.details["baseline_ratio"] < 0.15
    assert alert.details["recent_ratio"] >= 0.4
    assert alert.action == "" and recorder.quarantined == []


def test_deny_ratio_jump_cold_start_no_alert(
    make_pipeline: MakePipeline, clock: FakeClock, recorder: Recorder
) -> None:
    pipeline = make_pipeline({"deny_storm": {"enabled": False}})
    _ratio_traffic(pipeline.emit, clock, seconds=60, deny_every=1)  # all denies, no baseline
    assert pipeline.flush()
    assert recorder.by_detector("deny_ratio_jump") == []


def test_deny_ratio_jump_few_events_no_alert(
    make_pipeline: MakePipeline, clock: FakeClock, recorder: Recorder
) -> None:
    pipeline = make_pipeline({"deny_storm": {"enabled": False}})
    _ratio_traffic(pipeline.emit, clock, seconds=900, deny_every=0)  # a clean baseline
    clock.advance(61)  # then silence, then a handful of denies: 100 % but only 40 events
    for _ in range(40):
        pipeline.emit(decision(clock, "user:q"))
        clock.advance(1.2)
    assert pipeline.flush()
    assert recorder.by_detector("deny_ratio_jump") == []
    for _ in range(20):  # ten more within the window reach min_events: now it is a jump
        pipeline.emit(decision(clock, "user:q"))
    assert pipeline.flush()
    assert len(recorder.by_detector("deny_ratio_jump")) == 1
