"""Service tokens and revocation end to end over mTLS (issue 4)."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest

from pdp.security import pki as pki_module
from pdp_client._proto import identity_pb2, identity_pb2_grpc
from tests.conftest import CertPair
from tests.server.conftest import Harness, authorize_request

TOKEN_BUNDLE = """\
metadata: {name: tokens, revision: "1"}
rules:
  - id: search-service-reads
    effect: allow
    subjects: {type: service, ids: ["spiffe://pdp.test/svc/search"]}
    actions: [read]
    resources: {type: doc}
"""


def _token(harness: Harness, audience: str = "pdp") -> identity_pb2.IssueServiceTokenResponse:
    stub = identity_pb2_grpc.IdentityStub(harness.channel(harness.pki.service))
    response: identity_pb2.IssueServiceTokenResponse = stub.IssueServiceToken(
        identity_pb2.IssueServiceTokenRequest(audience=audience, ttl_seconds=60), timeout=5)
    return response


def test_token_subject_replaces_the_request_subject(harness: Harness) -> None:
    harness.push(TOKEN_BUNDLE)
    issued = _token(harness)
    assert issued.key_id and issued.jti and issued.expires_at > time.time()
    # The request claims to be "mallory"; the verified token says the search service.
    answer = harness.authz().Authorize(
        authorize_request("mallory", "read", "d1", service_token=issued.token), timeout=5)
    assert (answer.decision, answer.rule_id) == (1, "search-service-reads")


def test_replayed_token_is_denied_with_its_reason(harness: Harness) -> None:
    harness.push(TOKEN_BUNDLE)
    issued = _token(harness)
    stub = harness.authz()
    stub.Authorize(authorize_request("x", "read", "d1", service_token=issued.token), timeout=5)
    again = stub.Authorize(authorize_request("x", "read", "d1", service_token=issued.token),
                           timeout=5)
    assert again.decision == 0
    assert again.reason.startswith("invalid service token:")
    assert "replay" in again.reason


@pytest.mark.parametrize("mutate", ["signature", "alg_none"])
def test_forged_token_is_denied(harness: Harness, mutate: str) -> None:
    harness.push(TOKEN_BUNDLE)
    token = _token(harness).token
    header, payload, signature = token.split(".")
    if mutate == "signature":
        forged = f"{header}.{payload}.{signature[:-4]}AAAA"
    else:
        forged = f"eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{payload}."
    answer = harness.authz().Authorize(
        authorize_request("x", "read", "d1", service_token=forged), timeout=5)
    assert answer.decision == 0 and answer.reason.startswith("invalid service token:")


def test_token_for_another_audience_is_denied(harness: Harness) -> None:
    harness.push(TOKEN_BUNDLE)
    token = _token(harness, audience="spiffe://pdp.test/svc/other").token
    answer = harness.authz().Authorize(
        authorize_request("x", "read", "d1", service_token=token), timeout=5)
    assert answer.decision == 0 and "audience" in answer.reason


def test_key_set_lists_the_active_key(harness: Harness) -> None:
    stub = identity_pb2_grpc.IdentityStub(harness.channel(harness.pki.service))
    jwks = stub.GetKeySet(identity_pb2.GetKeySetRequest(), timeout=5).jwks_json
    issued = _token(harness)
    assert issued.key_id in jwks


def test_revoked_client_is_unauthenticated_others_are_not(
    start_server: Callable[..., Harness], pki: object, tmp_path: Path
) -> None:
    # A private CA copy, so revoking here does not touch the session PKI.
    ca_dir = tmp_path / "ca"
    shutil.copytree(pki.ca_dir, ca_dir)  # type: ignore[attr-defined]
    victim = pki_module.issue(ca_dir, tmp_path / "victim", common_name="victim",
                              spiffe_id="spiffe://pdp.test/svc/search", days=5)
    crl = pki_module.make_crl(ca_dir, days=7)
    harness = start_server(crl=crl)
    victim_stub = harness.authz(CertPair(victim.cert_path, victim.key_path, victim.serial))
    other = harness.authz()
    ok = victim_stub.Authorize(authorize_request("alice", "read", "d1"), timeout=5)
    assert ok.decision == 1
    pki_module.revoke(ca_dir, victim.serial, reason="key-compromise")
    pki_module.make_crl(ca_dir, days=7)
    deadline = time.monotonic() + 10
    while True:
        try:
            victim_stub.Authorize(authorize_request("alice", "read", "d1"), timeout=5)
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.UNAUTHENTICATED
            assert "revoked" in exc.details()
            break
        assert time.monotonic() < deadline, "revocation was not picked up"
        time.sleep(0.2)
    assert other.Authorize(authorize_request("alice", "read", "d1"), timeout=5).decision == 1


def test_key_rotated_on_disk_is_picked_up_and_audited(harness: Harness) -> None:
    from pdp.audit.records import list_files
    from pdp.security.keys import KeyStore

    before = _token(harness).key_id
    new_kid = KeyStore(harness.server.config.key_config, clock=time.time).rotate()
    audit_dir = harness.server.config.audit_config.dir

    def rotated_record() -> bool:
        return any('"security.key_rotate"' in line and new_kid in line
                   for _, path in list_files(audit_dir) for line in path.read_text().splitlines())

    deadline = time.monotonic() + 10
    while not rotated_record():
        assert time.monotonic() < deadline, "the rotation was not audited"
        time.sleep(0.1)
    after = _token(harness)
    assert after.key_id == new_kid != before
    # Tokens of the previous key still verify until they expire.
    stub = identity_pb2_grpc.IdentityStub(harness.channel(harness.pki.service))
    jwks = stub.GetKeySet(identity_pb2.GetKeySetRequest(), timeout=5).jwks_json
    assert before in jwks and new_kid in jwks
