"""Requests arrive as bytes; a request that repeats is not parsed again (pdp.server.authorization
``_Known``). Everything a decision depends on besides the bytes is still checked on every
call: the caller, the bundle, the quarantine, the replica's freshness, a service token."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
import pytest

import pdp.server.authorization as authorization
from pdp_client._proto import admin_pb2, authorization_pb2
from tests.server.conftest import TEST_BUNDLE, Harness, authorize_request
from tests.server.test_identity_e2e import TOKEN_BUNDLE, _token

AUTHORIZE = "/pdp.v1.Authorization/Authorize"
AUTHORIZE_BATCH = "/pdp.v1.Authorization/AuthorizeBatch"


def _raw_call(harness: Harness, method: str, data: bytes, pair: Any = None) -> bytes:
    """Send ``data`` as they are (no serializer) and return the answer's bytes."""
    channel = harness.channel(pair or harness.pki.service)
    answer: bytes = channel.unary_unary(method)(data, timeout=5)
    return answer


def _batch(*resources: str, subject: str = "alice",
           action: str = "read") -> authorization_pb2.AuthorizeBatchRequest:
    batch = authorization_pb2.AuthorizeBatchRequest()
    batch.defaults.subject.type, batch.defaults.subject.id = "user", subject
    batch.defaults.action.name = action
    for rid in resources:
        item = batch.requests.add()
        item.resource.type, item.resource.id = "doc", rid
    return batch


def _known(harness: Harness) -> dict[Any, Any]:
    return harness.server.authorization._known


@pytest.mark.parametrize(("method", "message"), [(AUTHORIZE, "AuthorizeRequest"),
                                                 (AUTHORIZE_BATCH, "AuthorizeBatchRequest")])
def test_bytes_that_are_not_a_request_are_invalid_argument_naming_the_message(
        harness: Harness, method: str, message: str) -> None:
    # A field 1 that claims 100 bytes where there are 2: not a protobuf message.
    with pytest.raises(grpc.RpcError) as err:
        _raw_call(harness, method, b"\x0a\x64\x01\x02")
    assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert f"not a valid {message}" in (err.value.details() or "")


def test_the_caller_is_refused_before_its_bytes_are_parsed(harness: Harness) -> None:
    with pytest.raises(grpc.RpcError) as err:
        _raw_call(harness, AUTHORIZE, b"\x0a\x64\x01\x02", harness.pki.other_service)
    assert err.value.code() is grpc.StatusCode.PERMISSION_DENIED


def test_a_repeated_request_is_known_and_answered_as_before(harness: Harness) -> None:
    stub = harness.authz()
    request = authorize_request("alice", "read", "d1")
    answers = [stub.Authorize(request, timeout=5) for _ in range(2)]
    assert _known(harness) == {}  # one-off requests are not kept
    answers += [stub.Authorize(request, timeout=5) for _ in range(3)]
    # Cached from the third call (the cache admits on the second request), known from then.
    assert [a.cached for a in answers] == [False, False, True, True, True]
    assert len(_known(harness)) == 1
    assert {(a.decision, a.rule_id, a.bundle_version) for a in answers} == {
        (answers[0].decision, "read-docs", answers[0].bundle_version)}
    assert len({a.decision_id for a in answers}) == 5  # each call its own decision and record


def test_a_known_request_follows_a_new_bundle(harness: Harness) -> None:
    stub = harness.authz()
    request = authorize_request("alice", "read", "d1")
    before = [stub.Authorize(request, timeout=5) for _ in range(4)][-1]
    assert len(_known(harness)) == 1 and before.rule_id == "read-docs"
    harness.push(TEST_BUNDLE.replace('revision: "1"', 'revision: "2"')
                 .replace("read-docs", "read-docs-v2"))
    after = stub.Authorize(request, timeout=5)
    assert (after.decision, after.rule_id, after.cached) == (1, "read-docs-v2", False)
    assert after.bundle_version != before.bundle_version


def test_a_known_request_is_still_quarantined(harness: Harness) -> None:
    stub = harness.authz()
    request = authorize_request("alice", "read", "d1")
    batch = _batch("d1", "d2")
    for _ in range(4):
        assert stub.Authorize(request, timeout=5).decision == 1
        assert [a.decision for a in stub.AuthorizeBatch(batch, timeout=5).responses] == [1, 1]
    assert len(_known(harness)) == 2
    harness.admin().Quarantine(admin_pb2.QuarantineRequest(subject="alice", ttl_seconds=60,
                                                           reason="test"), timeout=5)
    answer = stub.Authorize(request, timeout=5)
    assert (answer.decision, answer.reason) == (0, "quarantined")
    assert [(a.decision, a.reason) for a in stub.AuthorizeBatch(batch, timeout=5).responses] == [
        (0, "quarantined"), (0, "quarantined")]


def test_a_known_request_still_refuses_a_replica_behind_its_minimum(harness: Harness) -> None:
    first = harness.push(TEST_BUNDLE.replace('revision: "1"', 'revision: "a"')).bundle
    second = harness.push(TEST_BUNDLE.replace('revision: "1"', 'revision: "b"')).bundle
    stub = harness.authz()
    request = authorize_request("alice", "read", "d1", min_bundle_sequence=second.sequence)
    batch = _batch("d1")
    batch.requests[0].min_bundle_sequence = second.sequence
    for _ in range(4):
        assert stub.Authorize(request, timeout=5).decision == 1
        assert stub.AuthorizeBatch(batch, timeout=5).responses[0].decision == 1
    assert len(_known(harness)) == 2
    harness.admin().ActivateBundle(admin_pb2.ActivateBundleRequest(version=first.version),
                                   timeout=30)
    for call in (lambda: stub.Authorize(request, timeout=5),
                 lambda: stub.AuthorizeBatch(batch, timeout=5)):
        with pytest.raises(grpc.RpcError) as err:
            call()
        assert err.value.code() is grpc.StatusCode.FAILED_PRECONDITION
        assert f"requested {second.sequence}" in (err.value.details() or "")


def test_a_repeated_request_with_a_token_is_verified_every_time(harness: Harness) -> None:
    harness.push(TOKEN_BUNDLE)
    token = _token(harness).token
    stub = harness.authz()
    request = authorize_request("x", "read", "d1", service_token=token)
    batch = _batch("d1", "d2", subject="x")
    batch.defaults.service_token = _token(harness).token
    answers = [stub.Authorize(request, timeout=5) for _ in range(5)]
    batches = [stub.AuthorizeBatch(batch, timeout=5) for _ in range(5)]
    assert answers[0].decision == 1
    assert all(a.decision == 0 and "replay" in a.reason for a in answers[1:])
    # The batch's one token is used by its first item; the second item replays it.
    assert all(b.responses[1].decision == 0 for b in batches)
    assert all(b.responses[0].decision == 0 and "replay" in b.responses[0].reason
               for b in batches[1:])
    assert _known(harness) == {}


def test_a_token_whose_decision_was_cached_is_not_replayable(harness: Harness) -> None:
    # Three tokens for one question: the third's decision comes from the cache, so its
    # request would be kept if tokens were not excluded, and its bytes sent again would
    # skip the token's verification (and its replay check).
    harness.push(TOKEN_BUNDLE)
    stub = harness.authz()
    singles = [authorize_request("x", "read", "d1", service_token=_token(harness).token)
               for _ in range(3)]
    assert [stub.Authorize(r, timeout=5).cached for r in singles] == [False, False, True]
    again = stub.Authorize(singles[2], timeout=5)
    assert again.decision == 0 and "replay" in again.reason
    batches = [_batch("d1", subject="x") for _ in range(3)]
    for batch in batches:
        batch.requests[0].service_token = _token(harness).token
    assert [stub.AuthorizeBatch(b, timeout=5).responses[0].cached for b in batches] == [
        True, True, True]  # the same question as the singles: cached already
    again = stub.AuthorizeBatch(batches[2], timeout=5).responses[0]
    assert again.decision == 0 and "replay" in again.reason
    assert _known(harness) == {}


def test_explain_requests_are_never_known(start_server: Callable[..., Harness]) -> None:
    harness = start_server(authorize=("spiffe://pdp.test/svc/search",
                                      "spiffe://pdp.test/svc/other"))
    request = authorize_request("alice", "read", "d1", explain=True)
    explainer = harness.authz()
    assert all(explainer.Authorize(request, timeout=5).explanation for _ in range(4))
    # A caller the system policy does not let explain gets plain (so cached) answers.
    other = harness.authz(harness.pki.other_service)
    answers = [other.Authorize(request, timeout=5) for _ in range(4)]
    assert [(bool(a.explanation), a.cached) for a in answers][-1] == (False, True)
    assert _known(harness) == {}


def test_large_requests_and_large_or_empty_batches_are_not_kept(harness: Harness) -> None:
    stub = harness.authz()
    big = authorize_request("alice", "read", "d" * authorization.KNOWN_MAX_BYTES)
    wide = _batch(*(f"d{i}" for i in range(authorization.KNOWN_MAX_ITEMS + 1)))
    empty = authorization_pb2.AuthorizeBatchRequest()
    for _ in range(4):
        assert stub.Authorize(big, timeout=5).decision == 1
        assert all(a.decision == 1 for a in stub.AuthorizeBatch(wide, timeout=5).responses)
        assert len(stub.AuthorizeBatch(empty, timeout=5).responses) == 0
    assert _known(harness) == {}


def test_known_requests_are_bounded(harness: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(authorization, "KNOWN_MAX", 3)
    stub = harness.authz()
    for i in range(7):
        for _ in range(3):
            stub.Authorize(authorize_request("alice", "read", f"d{i}"), timeout=5)
        assert 1 <= len(_known(harness)) <= 3


class _Context:
    """A ServicerContext for calling the service in process from another address: on
    loopback a real connection always comes from 127.0.0.1."""

    def __init__(self, pem: bytes, peer: str) -> None:
        self._pem, self._peer = pem, peer

    def auth_context(self) -> dict[str, list[bytes]]:
        return {"ssl_tls_version": [b"TLSv1.3"], "x509_pem_cert": [self._pem]}

    def peer(self) -> str:
        return self._peer

    def abort(self, code: grpc.StatusCode, details: str) -> None:
        raise AssertionError(f"aborted: {code} {details}")


def test_the_same_bytes_from_another_address_are_decided_for_that_address(
        start_server: Callable[..., Harness]) -> None:
    harness = start_server(seed=False)
    harness.push("""\
metadata: {name: mesh, revision: "1"}
segments: {loopback: ["127.0.0.0/8"]}
rules:
  - {id: mesh-only, effect: allow, actions: [read], when: {peer_in_segment: loopback}}
""")
    service = harness.server.authorization
    pem = harness.pki.service.cert.read_bytes()
    raw = authorize_request("alice", "read", "d1").SerializeToString()

    def ask(peer: str) -> authorization_pb2.AuthorizeResponse:
        answer = service.Authorize(raw, _Context(pem, peer))  # type: ignore[arg-type]
        return authorization_pb2.AuthorizeResponse.FromString(answer)

    assert [ask("ipv4:127.0.0.1:4000").decision for _ in range(4)] == [1, 1, 1, 1]
    assert len(_known(harness)) == 1
    outside = ask("ipv4:10.9.9.9:4000")
    assert (outside.decision, outside.cached) == (0, False)
    assert ask("ipv4:127.0.0.1:4001").decision == 1
