"""A renewed client certificate is picked up without a restart; W3C trace context is sent."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

from opentelemetry import baggage, trace
from opentelemetry import context as otel_context
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

from pdp_client import PDPClient

from .conftest import PKI, Running

ASK = {"subject": {"type": "u", "id": "alice"}, "action": "read", "resource": {"type": "d"}}


def _copy_client(pki: PKI, tmp: Path, label: str, spiffe: str) -> dict[str, Path]:
    leaf = pki.ca.issue(label, cn=label, spiffe=spiffe, directory=tmp)
    cert, key = tmp / "client.pem", tmp / "client.key"
    # rename into place, as a careful renewal does, so no half-written file is ever read
    shutil.copy(leaf.cert, tmp / "next.pem")
    shutil.copy(leaf.key, tmp / "next.key")
    (tmp / "next.key").replace(key)
    (tmp / "next.pem").replace(cert)
    return {"ca_file": pki.ca.ca_file, "cert_file": cert, "key_file": key}


def test_renewed_client_certificate_is_used_without_restart(
    pki: PKI, test_pdp: Running, tmp_path: Path
) -> None:
    files = _copy_client(pki, tmp_path, "first", "spiffe://test.local/svc/first")
    fake = test_pdp.fake
    with PDPClient(test_pdp.target, **files, reload_interval=0) as c:
        assert c.authorize(**ASK).allowed
        # a call in flight on the old connection while the certificate is renewed
        gate = threading.Event()
        fake.gate = gate
        result: list[bool] = []
        t = threading.Thread(target=lambda: result.append(c.authorize(**ASK, timeout=5).allowed))
        t.start()
        assert fake.entered.wait(5)
        _copy_client(pki, tmp_path, "second", "spiffe://test.local/svc/second")
        fake.gate = None
        assert c.authorize(**ASK).allowed           # opens the new generation
        assert c._pool.generation == 1 and c._pool.retiring == 1
        gate.set()
        t.join(5)
        assert result == [True]                     # the in-flight call was not dropped
        assert c._pool.retiring == 0                # and then the old channels were closed
        assert c.authorize(**ASK).allowed
    ids = [s.spiffe for s in fake.calls()]
    assert ids[:2] == ["spiffe://test.local/svc/first"] * 2
    assert ids[2:] == ["spiffe://test.local/svc/second"] * 2


def test_half_written_renewal_keeps_working_credentials(
    pki: PKI, test_pdp: Running, tmp_path: Path
) -> None:
    files = _copy_client(pki, tmp_path, "first", "spiffe://test.local/svc/first")
    with PDPClient(test_pdp.target, **files, reload_interval=0) as c:
        files["key_file"].write_bytes(b"")          # truncated mid-rotation
        assert c.authorize(**ASK).allowed
        assert c._pool.generation == 0


def test_reload_is_checked_at_most_once_per_interval(
    pki: PKI, test_pdp: Running, tmp_path: Path
) -> None:
    files = _copy_client(pki, tmp_path, "first", "spiffe://test.local/svc/first")
    with PDPClient(test_pdp.target, **files, reload_interval=3600) as c:
        _copy_client(pki, tmp_path, "second", "spiffe://test.local/svc/second")
        assert c.authorize(**ASK).allowed
        assert c._pool.generation == 0
    assert test_pdp.fake.calls()[0].spiffe == "spiffe://test.local/svc/first"


def test_trace_context_is_injected(test_pdp: Running, client_files: dict) -> None:
    span = SpanContext(trace_id=0x0AF7651916CD43DD8448EB211C80319C, span_id=0xB7AD6B7169203331,
                       is_remote=False, trace_flags=TraceFlags(TraceFlags.SAMPLED))
    token = otel_context.attach(trace.set_span_in_context(NonRecordingSpan(span)))
    try:
        with PDPClient(test_pdp.target, **client_files) as c:
            c.authorize(**ASK)
    finally:
        otel_context.detach(token)
    with PDPClient(test_pdp.target, **client_files) as c:
        c.authorize(**ASK)
    first, second = test_pdp.fake.calls()
    assert first.metadata["traceparent"] == (
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
    assert "traceparent" not in second.metadata


def test_baggage_without_a_span_is_still_sent(test_pdp: Running, client_files: dict) -> None:
    # The client skips the propagators only for an empty context; baggage alone is a value.
    token = otel_context.attach(baggage.set_baggage("tenant", "acme"))
    try:
        with PDPClient(test_pdp.target, **client_files) as c:
            c.authorize(**ASK)
    finally:
        otel_context.detach(token)
    (call,) = test_pdp.fake.calls()
    assert call.metadata["baggage"] == "tenant=acme"
    assert "traceparent" not in call.metadata
