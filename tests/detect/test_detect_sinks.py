"""Alert sinks: callback, JSON-lines file, and a webhook over a real loopback HTTP server."""

from __future__ import annotations

import json
import os
import socket
import stat
import time
from pathlib import Path

import pytest
from detect_support import MakePipeline, Recorder, WebhookServer, auth_event, decision

from pdp.clock import FakeClock
from pdp.configuration import build_section
from pdp.detect import (
    Alert,
    AlertSinkError,
    CallbackAlertSink,
    JsonLinesAlertSink,
    WebhookAlertSink,
    WebhookConfig,
)
from pdp.detect._windows import peer_host
from pdp.events import EventType, Severity


def _alert(key: str = "user:a") -> Alert:
    return Alert(
        alert_id="a1",
        detector="deny_storm",
        severity=Severity.HIGH,
        key=key,
        count=3,
        first_seen=1.0,
        last_seen=2.0,
        details={"window": 60.0},
        action="quarantined",
    )


def _closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/alerts"


def _wait_for(predicate: object, timeout: float = 10.0) -> bool:
    assert callable(predicate)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return False


def test_callback_sink_passes_the_alert() -> None:
    got: list[Alert] = []
    sink = CallbackAlertSink(got.append)
    sink.send(_alert())
    sink.close()
    assert got == [_alert()]


def test_json_lines_sink_appends_with_mode_0600(tmp_path: Path) -> None:
    path = tmp_path / "alerts.jsonl"
    path.write_text("")
    path.chmod(0o644)  # a pre-existing, too-wide file is narrowed
    sink = JsonLinesAlertSink(path)
    sink.send(_alert("user:a"))
    sink.close()
    sink = JsonLinesAlertSink(path)
    sink.send(_alert("user:b"))
    sink.close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [line["key"] for line in lines] == ["user:a", "user:b"]
    assert lines[0]["action"] == "quarantined" and lines[0]["severity"] == "high"
    with pytest.raises(AlertSinkError, match="closed"):
        sink.send(_alert())


def test_json_lines_sink_refuses_symlink_redirect(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.write_text("")
    link = tmp_path / "alerts.jsonl"
    os.symlink(target, link)
    with pytest.raises(AlertSinkError, match="cannot open alert file"):
        JsonLinesAlertSink(link)
    assert target.read_text() == ""


def test_webhook_receives_the_alert_json(
    make_pipeline: MakePipeline, clock: FakeClock, webhook_server: WebhookServer
) -> None:
    webhook = WebhookAlertSink(WebhookConfig(url=webhook_server.url))
    pipeline = make_pipeline(sinks=[webhook])
    pipeline.emit(
        auth_event(clock, EventType.AUTH_FAILURE_CERT, actor="spiffe://t/old", kind="revoked")
    )
    assert pipeline.flush()
    assert webhook_server.received.wait(10)
    (body,) = webhook_server.bodies
    assert body["detector"] == "revoked_certificate" and body["key"] == "spiffe://t/old"
    assert body["severity"] == "high" and body["count"] == 1


def test_webhook_retries_with_backoff_then_delivers(webhook_server: WebhookServer) -> None:
    webhook_server.fail_first = 2
    sink = WebhookAlertSink(WebhookConfig(url=webhook_server.url, retries=3, backoff=0.01))
    sink.send(_alert())
    assert webhook_server.received.wait(10)
    assert _wait_for(lambda: sink.stats().delivered == 1)
    sink.close()
    stats = sink.stats()
    assert (stats.delivered, stats.retries, stats.failed) == (1, 2, 0)
    assert webhook_server.attempts == 3


def test_webhook_gives_up_after_retries_on_closed_port() -> None:
    sink = WebhookAlertSink(
        WebhookConfig(url=_closed_port_url(), retries=2, backoff=0.01, timeout=0.5)
    )
    sink.send(_alert())
    assert _wait_for(lambda: sink.stats().failed == 1)
    sink.close()
    assert sink.stats().retries == 2 and sink.stats().delivered == 0


def test_webhook_queue_full_drops_and_counts(webhook_server: WebhookServer) -> None:
    webhook_server.stall = True
    sink = WebhookAlertSink(
        WebhookConfig(url=webhook_server.url, retries=0, timeout=0.3, queue_size=5)
    )
    for i in range(100):
        sink.send(_alert(f"user:{i}"))
    sink.close(timeout=0.1)
    stats = sink.stats()
    assert stats.dropped >= 94 and stats.delivered == 0
    sink.send(_alert())  # after close: dropped, not raised
    assert sink.stats().dropped == stats.dropped + 1


@pytest.mark.parametrize("down", ["closed_port", "stalled_server"])
def test_webhook_down_does_not_slow_emit_and_other_sinks_get_alerts(
    down: str,
    make_pipeline: MakePipeline,
    clock: FakeClock,
    recorder: Recorder,
    webhook_server: WebhookServer,
    tmp_path: Path,
) -> None:
    if down == "stalled_server":
        webhook_server.stall = True
        url = webhook_server.url
    else:
        url = _closed_port_url()
    alert_file = tmp_path / "alerts.jsonl"
    config = {"url": url, "timeout": 0.2, "retries": 1, "backoff": 0.05, "queue_size": 10}
    webhook = WebhookAlertSink(build_section(WebhookConfig, config, where="[detection.webhook]"))
    pipeline = make_pipeline(sinks=[webhook, JsonLinesAlertSink(alert_file), recorder])
    started = time.perf_counter()
    for i in range(1000):  # each a distinct incident: 1,000 alerts for the webhook
        pipeline.emit(
            auth_event(clock, EventType.AUTH_FAILURE_CERT, actor=f"spiffe://t/{i}", kind="revoked")
        )
    elapsed = time.perf_counter() - started
    assert elapsed < 1.0  # generous: emit only enqueues
    assert pipeline.flush(timeout=30)
    assert len(recorder.by_detector("revoked_certificate")) == 1000
    assert len(alert_file.read_text().splitlines()) == 1000
    assert webhook.stats().delivered == 0 and webhook.stats().dropped > 900  # it really is down
    pipeline.emit(decision(clock, "user:after"))  # still working
    assert pipeline.flush()
    assert pipeline.stats().processed == 1001


def test_webhook_config_needs_url() -> None:
    with pytest.raises(ValueError, match="url"):
        WebhookAlertSink(WebhookConfig())


def test_webhook_redirect_is_not_followed(webhook_server: WebhookServer) -> None:
    other = WebhookServer()  # where a compromised receiver would bounce alerts to
    try:
        webhook_server.redirect_to = other.url
        sink = WebhookAlertSink(WebhookConfig(url=webhook_server.url, retries=2, backoff=0.01))
        sink.send(_alert())
        assert _wait_for(lambda: sink.stats().failed == 1)
        sink.close()
        assert other.attempts == 0 and sink.stats().retries == 0  # a redirect is final
    finally:
        other.close()


@pytest.mark.parametrize(
    ("peer", "host"),
    [
        ("ipv4:10.1.2.3:5555", "10.1.2.3"),
        ("ipv6:[2001:db8::1]:443", "2001:db8::1"),
        ("unix:/run/pdp.sock", "unix:/run/pdp.sock"),
        ("10.0.0.1", "10.0.0.1"),
    ],
)
def test_peer_host_drops_the_port(peer: str, host: str) -> None:
    assert peer_host(peer) == host
