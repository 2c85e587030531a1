"""PDPClient over real mTLS against the test PDP: wire shape, batches, errors, retries,
fail-closed."""

from __future__ import annotations

import random
import socket
import threading

import grpc
import pytest

from pdp_client import (
    AccessRequest,
    Action,
    Decision,
    Effect,
    FailedPreconditionError,
    InvalidRequestError,
    PDPClient,
    PDPError,
    PDPUnavailableError,
    PermissionDeniedError,
    Resource,
    ResourceExhaustedError,
    Subject,
    UnauthenticatedError,
)
from pdp_client._proto import authorization_pb2 as pb

from .conftest import PKI, Running


def make(run: Running, files: dict, **kw: object) -> PDPClient:
    kw.setdefault("rng", random.Random(7))
    return PDPClient(run.target, **files, **kw)  # type: ignore[arg-type]


def test_allow_and_deny_with_dataclasses_and_dicts(test_pdp: Running, client_files: dict) -> None:
    with make(test_pdp, client_files) as c:
        yes = c.authorize(subject=Subject("user", "alice", {"level": 3}), action=Action("read"),
                          resource=Resource("doc", "42", {"owner": "alice"}),
                          context={"source": {"ip": "10.0.0.1"}})
        no = c.authorize(subject={"type": "user", "id": "bob"}, action="read",
                         resource={"type": "doc", "id": "42"})
    assert yes.allowed and yes.decision is Effect.ALLOW and bool(yes)
    assert (yes.rule_id, yes.bundle_version, yes.decision_id) == ("alice-read", "1-abc", "d-1")
    assert not no.allowed and no.reason == "default deny" and not bool(no)
    first, second = (s.request for s in test_pdp.fake.calls())
    assert first.subject.type == "user" and first.subject.properties["level"] == 3
    assert first.resource.properties["owner"] == "alice"
    assert first.context["source"]["ip"] == "10.0.0.1"
    assert second.subject.id == "bob" and second.action.name == "read"
    assert not second.HasField("context")
    # the PDP saw this client's certificate identity
    assert test_pdp.fake.calls()[0].spiffe == "spiffe://test.local/svc/frontend"


def test_check_and_explain(test_pdp: Running, client_files: dict) -> None:
    def explain(req: pb.AuthorizeRequest) -> pb.AuthorizeResponse:
        assert req.explain and req.min_bundle_sequence == 5
        trace = pb.RuleTrace(rule_id="r1", effect="allow", matched=False, failed_part="when",
                             detail="when.all[0]")
        return pb.AuthorizeResponse(reason="default deny", explanation=[trace])

    with make(test_pdp, client_files) as c:
        assert c.check(subject={"type": "user", "id": "alice"}, action="read",
                       resource={"type": "doc"}) is True
        test_pdp.fake.decide = explain
        d = c.authorize(subject={"type": "user", "id": "x"}, action="read",
                        resource={"type": "doc"}, explain=True, min_bundle_sequence=5)
    assert d.explanation[0].rule_id == "r1" and d.explanation[0].failed_part == "when"


def test_service_token_sent_without_subject(test_pdp: Running, client_files: dict) -> None:
    with make(test_pdp, client_files) as c:
        c.authorize(action="read", resource={"type": "doc"}, service_token="jwt")
    req = test_pdp.fake.calls()[0].request
    assert req.service_token == "jwt" and not req.HasField("subject")


def test_unknown_decision_value_is_deny(test_pdp: Running, client_files: dict) -> None:
    # proto3 enums are open: a future or corrupted value must never read as ALLOW
    test_pdp.fake.decide = lambda req: pb.AuthorizeResponse(decision=7, reason="?")
    with make(test_pdp, client_files) as c:
        d = c.authorize(subject={"type": "u", "id": "alice"}, action="read", resource={"type": "d"})
    assert d.decision is Effect.DENY and not d.allowed


@pytest.mark.parametrize("bad", [
    {"subject": {"type": "u", "id": "a", "role": "admin"}},   # unknown field
    {"subject": {"type": "u", "id": 5}},                     # wrong type
    {"context": {"when": object()}},                          # not JSON-like
    {"subject": None},                                        # neither subject nor token
    {"action": None},
])
def test_malformed_request_is_refused_before_the_wire(
    test_pdp: Running, client_files: dict, bad: dict
) -> None:
    args = {"subject": {"type": "u", "id": "a"}, "action": "read", "resource": {"type": "d"}}
    args.update(bad)
    with make(test_pdp, client_files) as c, pytest.raises(InvalidRequestError):
        c.authorize(**args)
    assert test_pdp.fake.calls() == []


def test_batch_keeps_order_and_sends_defaults(test_pdp: Running, client_files: dict) -> None:
    items = [AccessRequest(subject={"type": "user", "id": n}) for n in ("bob", "alice", "carol")]
    items.append({"subject": Subject("user", "alice"), "action": "write"})  # type: ignore[arg-type]
    with make(test_pdp, client_files) as c:
        out = c.authorize_batch(items, defaults={"action": "read", "resource": {"type": "doc"}})
        assert c.authorize_batch([]) == []
    assert [d.allowed for d in out] == [False, True, False, False]
    sent = test_pdp.fake.calls("AuthorizeBatch")[0].request
    assert sent.defaults.action.name == "read" and sent.defaults.resource.type == "doc"
    assert [r.subject.id for r in sent.requests] == ["bob", "alice", "carol", "alice"]
    assert not sent.requests[0].HasField("action") and sent.requests[3].action.name == "write"


def test_batch_with_missing_answers_is_an_error(test_pdp: Running, client_files: dict) -> None:
    # a server that drops one answer must not shift the others onto the wrong requests
    test_pdp.fake.drop_batch_answer = True
    with make(test_pdp, client_files) as c, pytest.raises(PDPError, match="protocol error"):
        c.authorize_batch([{"subject": {"type": "u", "id": "a"}, "action": "read",
                            "resource": {"type": "d"}}] * 2)


@pytest.mark.parametrize(("code", "exc"), [
    (grpc.StatusCode.INVALID_ARGUMENT, InvalidRequestError),
    (grpc.StatusCode.PERMISSION_DENIED, PermissionDeniedError),
    (grpc.StatusCode.UNAUTHENTICATED, UnauthenticatedError),
    (grpc.StatusCode.RESOURCE_EXHAUSTED, ResourceExhaustedError),
    (grpc.StatusCode.FAILED_PRECONDITION, FailedPreconditionError),
    (grpc.StatusCode.INTERNAL, PDPError),
])
def test_status_codes_become_typed_errors_without_retry(
    test_pdp: Running, client_files: dict, code: grpc.StatusCode, exc: type[PDPError]
) -> None:
    test_pdp.fake.abort = (code, "precise message")
    with make(test_pdp, client_files, retries=3) as c, pytest.raises(exc) as info:
        c.authorize(subject={"type": "u", "id": "a"}, action="read", resource={"type": "d"})
    assert info.value.code == code.name and info.value.message == "precise message"
    assert len(test_pdp.fake.calls()) == 1


def test_retries_unavailable_then_answers(test_pdp: Running, client_files: dict) -> None:
    test_pdp.fake.unavailable = 2
    with make(test_pdp, client_files, retries=2, backoff=0.01) as c:
        d = c.authorize(subject={"type": "u", "id": "alice"}, action="read", resource={"type": "d"})
    assert d.allowed
    assert len(test_pdp.fake.calls()) == 3


def test_fail_closed_after_retries(test_pdp: Running, client_files: dict) -> None:
    test_pdp.fake.unavailable = 100
    with make(test_pdp, client_files, retries=2, backoff=0.01) as c:
        d = c.authorize(subject={"type": "u", "id": "alice"}, action="read", resource={"type": "d"})
        batch = c.authorize_batch([{"subject": {"type": "u", "id": "alice"}}] * 2,
                                  defaults={"action": "read", "resource": {"type": "d"}})
    assert d == Decision(decision=Effect.DENY, reason="pdp unavailable: UNAVAILABLE")
    assert [b.reason for b in batch] == ["pdp unavailable: UNAVAILABLE"] * 2
    assert len(test_pdp.fake.calls()) == 3


def test_fail_open_is_refused_with_an_exception(test_pdp: Running, client_files: dict) -> None:
    test_pdp.fake.unavailable = 100
    with make(test_pdp, client_files, retries=1, backoff=0.01, fail_closed=False) as c, \
            pytest.raises(PDPUnavailableError):
        c.authorize(subject={"type": "u", "id": "alice"}, action="read", resource={"type": "d"})


def test_deadline_exceeded_fails_closed(test_pdp: Running, client_files: dict) -> None:
    test_pdp.fake.gate = threading.Event()
    with make(test_pdp, client_files, timeout=0.3) as c:
        d = c.authorize(subject={"type": "u", "id": "alice"}, action="read", resource={"type": "d"})
    test_pdp.fake.gate.set()
    assert not d.allowed and d.reason == "pdp unavailable: DEADLINE_EXCEEDED"


def test_unreachable_pdp_denies(client_files: dict) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again at once: nobody listens there
    with PDPClient(f"127.0.0.1:{port}", **client_files, retries=1, backoff=0.01) as c:
        d = c.authorize(subject={"type": "u", "id": "alice"}, action="read", resource={"type": "d"})
    assert not d.allowed and d.reason.startswith("pdp unavailable: ")


def test_rogue_server_certificate_is_refused(pki: PKI, test_pdp: Running, tmp_path) -> None:
    # a client that trusts another CA (as if the PDP were impersonated) never gets an answer
    with PDPClient(test_pdp.target, ca_file=pki.other_ca.ca_file, cert_file=pki.client.cert,
                   key_file=pki.client.key, retries=0) as c:
        d = c.authorize(subject={"type": "u", "id": "alice"}, action="read", resource={"type": "d"})
    assert not d.allowed and d.reason == "pdp unavailable: UNAVAILABLE"
    assert test_pdp.fake.calls() == []


def test_server_name_mismatch_is_refused(pki: PKI, test_pdp: Running, client_files: dict) -> None:
    with make(test_pdp, client_files, server_name="evil.example", retries=0) as c:
        d = c.authorize(subject={"type": "u", "id": "alice"}, action="read", resource={"type": "d"})
    assert not d.allowed and test_pdp.fake.calls() == []


def test_client_certificate_from_another_ca_gets_nothing(pki: PKI, test_pdp: Running) -> None:
    rogue = pki.other_ca.issue("rogue", cn="rogue", spiffe="spiffe://test.local/svc/frontend")
    with PDPClient(test_pdp.target, ca_file=pki.ca.ca_file, cert_file=rogue.cert,
                   key_file=rogue.key, retries=0) as c:
        d = c.authorize(subject={"type": "u", "id": "alice"}, action="read", resource={"type": "d"})
    assert not d.allowed and test_pdp.fake.calls() == []


def test_closed_client_fails_closed(test_pdp: Running, client_files: dict) -> None:
    c = make(test_pdp, client_files)
    c.close()
    d = c.authorize(subject={"type": "u", "id": "alice"}, action="read", resource={"type": "d"})
    assert not d.allowed and d.reason == "pdp unavailable: CLOSED"


def test_constructor_refuses_missing_tls_material(test_pdp: Running, client_files: dict) -> None:
    with pytest.raises(ValueError, match="cert_file"):
        PDPClient(test_pdp.target, ca_file=client_files["ca_file"], cert_file="",
                  key_file=client_files["key_file"])
    with pytest.raises(PDPError, match="cannot read"):
        PDPClient(test_pdp.target, ca_file=client_files["ca_file"], cert_file="/nonexistent",
                  key_file=client_files["key_file"])


def test_channels_spread_calls_over_connections(test_pdp: Running, client_files: dict) -> None:
    with make(test_pdp, client_files, channels=3) as c:
        for _ in range(30):
            c.authorize(subject={"type": "u", "id": "alice"}, action="read", resource={"type": "d"})
    peers = [s.peer for s in test_pdp.fake.calls()]
    counts = {p: peers.count(p) for p in set(peers)}
    assert len(counts) == 3, counts
    assert sorted(counts.values()) == [10, 10, 10]
