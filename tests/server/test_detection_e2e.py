"""Detection and response end to end over mTLS: deny storm -> one alert -> quarantine (issue 6)."""

from __future__ import annotations

import json
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import grpc
import pytest

from pdp_client._proto import admin_pb2
from tests.server.conftest import Harness, authorize_request

DETECTION = """
[detection.deny_storm]
window = 30.0
threshold = 20
quarantine = true
quarantine_ttl = 600.0
[detection.webhook]
url = "{url}"
timeout = 1.0
retries = 1
"""


class _Hook(BaseHTTPRequestHandler):
    received: list[dict[str, Any]]

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", "0"))
        self.received.append(json.loads(self.rfile.read(length)))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def webhook() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    received: list[dict[str, Any]] = []
    handler = type("Hook", (_Hook,), {"received": received})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/alerts", received
    server.shutdown()
    server.server_close()


def _wait(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.05)


def test_deny_storm_raises_one_alert_quarantines_and_release_restores(
    start_server: Callable[..., Harness], webhook: tuple[str, list[dict[str, Any]]],
) -> None:
    url, received = webhook
    harness = start_server(detection=True, extra=DETECTION.format(url=url))
    stub = harness.authz()
    assert stub.Authorize(authorize_request("mallory", "read", "d1"), timeout=5).decision == 1
    for i in range(200):
        stub.Authorize(authorize_request("mallory", "delete", f"d{i}"), timeout=5)
    _wait(lambda: harness.server.engine.is_quarantined("mallory", time.time()))
    answer = stub.Authorize(authorize_request("mallory", "read", "d1"), timeout=5)
    assert (answer.decision, answer.reason) == (0, "quarantined")
    _wait(lambda: any(a.get("detector") == "deny_storm" for a in received))
    storms = [a for a in received if a.get("detector") == "deny_storm"]
    assert len(storms) == 1, storms
    admin = harness.admin()
    listed = admin.ListQuarantine(admin_pb2.ListQuarantineRequest(), timeout=5)
    assert [e.subject for e in listed.entries] == ["mallory"]
    assert admin.Release(admin_pb2.ReleaseRequest(subject="mallory"), timeout=5).released
    assert stub.Authorize(authorize_request("mallory", "read", "d1"), timeout=5).decision == 1


def test_restart_keeps_an_active_quarantine(start_server: Callable[..., Harness]) -> None:
    first = start_server()
    first.admin().Quarantine(admin_pb2.QuarantineRequest(
        subject="eve", ttl_seconds=3600, reason="incident 42"), timeout=5)
    assert first.authz().Authorize(authorize_request("eve", "read", "d1"),
                                   timeout=5).reason == "quarantined"
    directory = first.directory
    first.close()
    second = start_server(directory=directory, seed=False)
    answer = second.authz().Authorize(authorize_request("eve", "read", "d1"), timeout=5)
    assert (answer.decision, answer.reason) == (0, "quarantined")


def test_down_webhook_does_not_break_decisions(start_server: Callable[..., Harness]) -> None:
    harness = start_server(detection=True,
                           extra=DETECTION.format(url="http://127.0.0.1:9/down"))
    stub = harness.authz()
    for i in range(100):
        stub.Authorize(authorize_request("trudy", "delete", f"d{i}"), timeout=5)
    _wait(lambda: harness.server.engine.is_quarantined("trudy", time.time()))
    assert stub.Authorize(authorize_request("alice", "read", "d1"), timeout=5).decision == 1


def test_admin_call_by_outsider_raises_an_alert(start_server: Callable[..., Harness]) -> None:
    harness = start_server(detection=True, extra=DETECTION.format(url=""))
    with pytest.raises(grpc.RpcError):
        harness.admin(harness.pki.service).ListBundles(admin_pb2.ListBundlesRequest(),
                                                       timeout=5)
    detection = harness.server.detection
    assert detection is not None
    _wait(lambda: any(a.detector == "admin_outsider" for a in detection.alerts()))


TOKEN_BUNDLE = """\
metadata: {name: tokens, revision: "1"}
rules:
  - id: services-read
    effect: allow
    subjects: {type: service}
    actions: [read]
    resources: {type: doc}
"""


def _alerts_by(received: list[dict[str, Any]], detector: str) -> list[dict[str, Any]]:
    return [a for a in received if a.get("detector") == detector]


def test_token_replay_raises_its_alert_at_the_webhook(
    start_server: Callable[..., Harness], webhook: tuple[str, list[dict[str, Any]]],
) -> None:
    from pdp_client._proto import identity_pb2, identity_pb2_grpc

    url, received = webhook
    harness = start_server(detection=True, extra=DETECTION.format(url=url))
    harness.push(TOKEN_BUNDLE)
    token = identity_pb2_grpc.IdentityStub(harness.channel(harness.pki.service)).IssueServiceToken(
        identity_pb2.IssueServiceTokenRequest(audience="pdp", ttl_seconds=60), timeout=5).token
    stub = harness.authz()
    first = stub.Authorize(authorize_request("x", "read", "d1", service_token=token), timeout=5)
    replayed = stub.Authorize(authorize_request("x", "read", "d1", service_token=token),
                              timeout=5)
    assert first.decision == 1 and replayed.decision == 0
    _wait(lambda: bool(_alerts_by(received, "token_replay")))
    alert = _alerts_by(received, "token_replay")[0]
    assert alert["key"].endswith("spiffe://pdp.test/svc/search")


def test_revoked_certificate_and_failure_burst_raise_their_alerts(
    start_server: Callable[..., Harness], webhook: tuple[str, list[dict[str, Any]]],
    pki: Any, tmp_path: Path,
) -> None:
    from pdp.security import pki as pki_module
    from tests.conftest import CertPair

    url, received = webhook
    ca_dir = tmp_path / "ca"
    shutil.copytree(pki.ca_dir, ca_dir)
    victim = pki_module.issue(ca_dir, tmp_path / "victim", common_name="victim",
                              spiffe_id="spiffe://pdp.test/svc/search", days=5)
    crl = pki_module.make_crl(ca_dir, days=7)
    burst = "\n[detection.auth_failure_burst]\nthreshold = 5\n"
    harness = start_server(detection=True, crl=crl, extra=DETECTION.format(url=url) + burst)
    stub = harness.authz(CertPair(victim.cert_path, victim.key_path, victim.serial))
    assert stub.Authorize(authorize_request("alice", "read", "d1"), timeout=5).decision == 1
    pki_module.revoke(ca_dir, victim.serial, reason="key-compromise")
    pki_module.make_crl(ca_dir, days=7)
    refused = 0
    deadline = time.monotonic() + 15
    while refused < 6:
        assert time.monotonic() < deadline, "revocation not picked up"
        try:
            stub.Authorize(authorize_request("alice", "read", "d1"), timeout=5)
            time.sleep(0.2)
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.UNAUTHENTICATED
            refused += 1
    _wait(lambda: bool(_alerts_by(received, "revoked_certificate")))
    _wait(lambda: bool(_alerts_by(received, "auth_failure_burst")))
    assert _alerts_by(received, "revoked_certificate")[0]["details"]["kind"] == "revoked"
    # One incident per key: six refusals raised one revoked-certificate alert per key.
    keys = [a["key"] for a in _alerts_by(received, "revoked_certificate")]
    assert len(keys) == len(set(keys))
