"""The shipped pdp-client and PEP interceptor against the real server over mTLS (issue 3)."""

from __future__ import annotations

import grpc
import pytest

from examples.backend.server import SERVICE, build_server
from pdp_client import (
    PDPClient,
    Resource,
    ServiceTokenInterceptor,
    Subject,
    TokenSource,
)
from tests.server.conftest import Harness

PEP_BUNDLE = """\
metadata: {name: pep, revision: "1"}
rules:
  - id: search-lists-inventory
    effect: allow
    subjects: {type: service, ids: ["spiffe://pdp.test/svc/search"]}
    actions: ["/example.v1.Inventory/List"]
    resources: {type: grpc.service, ids: [example.v1.Inventory]}
  - id: read-docs
    effect: allow
    subjects: {type: user}
    actions: [read]
    resources: {type: doc}
"""


def _client(harness: Harness, pair: object = None, **options: object) -> PDPClient:
    pair = pair or harness.pki.service
    return PDPClient(harness.data_target, ca_file=harness.pki.ca_cert,
                     cert_file=pair.cert, key_file=pair.key,  # type: ignore[attr-defined]
                     server_name="localhost", timeout=5.0, **options)


def test_client_single_and_batch(harness: Harness) -> None:
    with _client(harness, channels=2) as client:
        allowed = client.authorize(subject=Subject("user", "alice"), action="read",
                                   resource=Resource("doc", "d1"))
        assert allowed.allowed and allowed.rule_id == "read-docs"
        denied = client.authorize(subject={"type": "user", "id": "alice"}, action="delete",
                                  resource={"type": "doc", "id": "d1"})
        assert not denied.allowed and denied.reason == "default deny"
        batch = client.authorize_batch(
            [{"resource": {"type": "doc", "id": "d1"}},
             {"resource": {"type": "doc", "id": "secret-1"}}],
            defaults={"subject": {"type": "user", "id": "alice"}, "action": "read"})
        assert [(d.allowed, d.rule_id) for d in batch] == [(True, "read-docs"),
                                                            (False, "deny-secret")]


def test_client_fails_closed_when_the_pdp_is_gone(harness: Harness) -> None:
    client = _client(harness, retries=1, backoff=0.01)
    harness.close()
    decision = client.authorize(subject=Subject("user", "alice"), action="read",
                                resource=Resource("doc", "d1"), timeout=1.0)
    assert not decision.allowed and decision.reason.startswith("pdp unavailable")
    client.close()


def test_pep_interceptor_lets_allowed_through_and_denies_forbidden(
    harness: Harness, pki: object,
) -> None:
    harness.push(PEP_BUNDLE)
    creds = grpc.ssl_server_credentials(
        [(pki.server.key.read_bytes(), pki.server.cert.read_bytes())],  # type: ignore[attr-defined]
        root_certificates=pki.ca_cert.read_bytes(),  # type: ignore[attr-defined]
        require_client_auth=True)
    with _client(harness) as pdp:
        backend, port = build_server(pdp, creds)
        backend.start()
        try:
            def call(pair: object, method: str) -> bytes:
                from tests.server.conftest import channel

                ch = channel(f"127.0.0.1:{port}", pki.ca_cert,  # type: ignore[attr-defined]
                             pair.cert, pair.key)  # type: ignore[attr-defined]
                with ch:
                    result: bytes = ch.unary_unary(f"/{SERVICE}/{method}")(b"42", timeout=5)
                    return result

            assert call(pki.service, "List")  # type: ignore[attr-defined]
            with pytest.raises(grpc.RpcError) as err:
                call(pki.service, "Delete")  # type: ignore[attr-defined]
            assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
            with pytest.raises(grpc.RpcError) as err:
                call(pki.other_service, "List")  # type: ignore[attr-defined]
            assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
        finally:
            backend.stop(0)


def test_service_token_carries_identity_from_a_to_b(harness: Harness) -> None:
    """Service A (search) fetches a token; a call carrying it is decided as A."""
    harness.push(PEP_BUNDLE + """\
  - id: token-read
    effect: allow
    subjects: {type: service}
    actions: [token-read]
    resources: {type: doc}
""")
    with _client(harness) as client:
        source = TokenSource(client, "pdp")
        token = source.token()
        decision = client.authorize(subject=Subject("user", "mallory"), action="token-read",
                                    resource=Resource("doc", "d1"), service_token=token)
        assert decision.allowed and decision.rule_id == "token-read"
        assert isinstance(ServiceTokenInterceptor(source), grpc.UnaryUnaryClientInterceptor)
