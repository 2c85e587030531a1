"""End to end over real mTLS: decisions, batches, the admin plane, refusals (issue 3)."""

from __future__ import annotations

import gc
import socket
import ssl
import threading
import time
import weakref
from collections.abc import Callable

import grpc
import pytest

from pdp.errors import ConfigError
from pdp.policy import Bundle, load_bundle
from pdp_client._proto import admin_pb2, admin_pb2_grpc, authorization_pb2
from tests.server.conftest import TEST_BUNDLE, Harness, authorize_request

ALLOW = authorization_pb2.DECISION_ALLOW
DENY = authorization_pb2.DECISION_DENY


def test_allow_and_deny_carry_rule_version_and_id(harness: Harness) -> None:
    stub = harness.authz()
    allowed = stub.Authorize(authorize_request("alice", "read", "d1"), timeout=5)
    assert allowed.decision == ALLOW
    assert allowed.rule_id == "read-docs"
    assert allowed.bundle_version == harness.server.engine.policy.version
    assert allowed.decision_id
    denied = stub.Authorize(authorize_request("alice", "read", "secret-plans"), timeout=5)
    assert (denied.decision, denied.rule_id) == (DENY, "deny-secret")
    default = stub.Authorize(authorize_request("alice", "delete", "d1"), timeout=5)
    assert (default.decision, default.rule_id, default.reason) == (DENY, "", "default deny")
    assert len({allowed.decision_id, denied.decision_id, default.decision_id}) == 3


def test_owner_condition_compares_two_attributes(harness: Harness) -> None:
    stub = harness.authz()
    mine = stub.Authorize(authorize_request("alice", "write", "d1",
                                            resource_props={"owner": "alice"}), timeout=5)
    theirs = stub.Authorize(authorize_request("alice", "write", "d1",
                                              resource_props={"owner": "bob"}), timeout=5)
    assert (mine.decision, mine.rule_id) == (ALLOW, "owner-write")
    assert (theirs.decision, theirs.reason) == (DENY, "default deny")


def test_a_repeated_call_is_cached_from_its_third_time(harness: Harness) -> None:
    """The default admission keeps a decision when it is asked for a second time."""
    stub = harness.authz()
    first, second, third = (stub.Authorize(authorize_request("carol", "read", "d9"), timeout=5)
                            for _ in range(3))
    assert (first.cached, second.cached, third.cached) == (False, False, True)
    assert first.decision == second.decision == third.decision == ALLOW


def test_admission_all_caches_the_second_call(
    start_server: Callable[..., Harness], monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PDP_CACHE__ADMISSION", "all")
    stub = start_server().authz()
    first, second = (stub.Authorize(authorize_request("carol", "read", "d9"), timeout=5)
                     for _ in range(2))
    assert (first.cached, second.cached) == (False, True)


def test_batch_keeps_order_and_applies_defaults(harness: Harness) -> None:
    defaults = authorize_request("alice", "read", "")
    items = [authorization_pb2.AuthorizeRequest() for _ in range(3)]
    items[0].resource.type, items[0].resource.id = "doc", "d1"
    items[1].resource.type, items[1].resource.id = "doc", "secret-x"
    items[2].CopyFrom(authorize_request("bob", "delete", "d1"))
    response = harness.authz().AuthorizeBatch(
        authorization_pb2.AuthorizeBatchRequest(defaults=defaults, requests=items), timeout=5)
    assert [(r.decision, r.rule_id) for r in response.responses] == [
        (ALLOW, "read-docs"), (DENY, "deny-secret"), (DENY, "")]


def test_bad_batch_item_is_named_and_refuses_the_whole_batch(harness: Harness) -> None:
    defaults = authorize_request("alice", "read", "")
    items = [authorization_pb2.AuthorizeRequest() for _ in range(3)]
    items[0].resource.type, items[0].resource.id = "doc", "d1"
    items[1].resource.id = "d2"  # no resource type
    items[2].resource.type, items[2].resource.id = "doc", "x" * 1025
    with pytest.raises(grpc.RpcError) as err:
        harness.authz().AuthorizeBatch(
            authorization_pb2.AuthorizeBatchRequest(defaults=defaults, requests=items), timeout=5)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details() == "requests[1].resource.type: is required"
    defaults.subject.id = ""
    with pytest.raises(grpc.RpcError) as err:
        harness.authz().AuthorizeBatch(
            authorization_pb2.AuthorizeBatchRequest(defaults=defaults, requests=items), timeout=5)
    assert err.value.details() == "defaults.subject.id: is required"


def test_batch_over_the_limit_is_resource_exhausted(harness: Harness) -> None:
    items = [authorize_request("a", "read", str(i)) for i in range(1001)]
    with pytest.raises(grpc.RpcError) as err:
        harness.authz().AuthorizeBatch(
            authorization_pb2.AuthorizeBatchRequest(requests=items), timeout=10)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "at most 1000" in err.value.details()


def test_oversized_message_is_resource_exhausted(harness: Harness) -> None:
    req = authorize_request("alice", "read", "d1")
    req.context.update({"blob": "x" * (5 * 1024 * 1024)})
    with pytest.raises(grpc.RpcError) as err:
        harness.authz().Authorize(req, timeout=10)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_missing_field_is_invalid_argument_naming_it(harness: Harness) -> None:
    req = authorize_request("alice", "", "d1")
    with pytest.raises(grpc.RpcError) as err:
        harness.authz().Authorize(req, timeout=5)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "action.name" in err.value.details()


def test_caller_outside_system_policy_is_permission_denied(harness: Harness) -> None:
    with pytest.raises(grpc.RpcError) as err:
        harness.authz(harness.pki.other_service).Authorize(
            authorize_request("alice", "read", "d1"), timeout=5)
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "spiffe://pdp.test/svc/other" in err.value.details()
    with pytest.raises(grpc.RpcError) as err:
        harness.admin(harness.pki.service).ListBundles(admin_pb2.ListBundlesRequest(), timeout=5)
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED


def test_admin_rpcs_are_not_served_on_the_data_listener(harness: Harness) -> None:
    stub = admin_pb2_grpc.AdminStub(harness.channel(harness.pki.admin))
    with pytest.raises(grpc.RpcError) as err:
        stub.ListBundles(admin_pb2.ListBundlesRequest(), timeout=5)
    assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_bad_bundle_push_names_the_fault_and_keeps_the_active_bundle(harness: Harness) -> None:
    before = harness.server.engine.policy.version
    bad = TEST_BUNDLE.replace("eq: {attr: subject.id}", "gte: {attr: subject.id}")
    admin = harness.admin()
    with pytest.raises(grpc.RpcError) as err:
        admin.PushBundle(admin_pb2.PushBundleRequest(bundle=bad.encode(), activate=True),
                         timeout=5)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert 'rules[0] (id "owner-write").when' in err.value.details()
    assert 'unknown operator "gte"' in err.value.details()
    assert harness.server.engine.policy.version == before
    assert len(admin.ListBundles(admin_pb2.ListBundlesRequest(), timeout=5).bundles) == 1


def test_tampered_bundle_is_refused_and_active_stays(harness: Harness) -> None:
    before = harness.server.engine.policy.version
    changed = TEST_BUNDLE.replace("ids: [\"secret-*\"]", "ids: [\"secre-*\"]")
    with pytest.raises(grpc.RpcError) as err:
        harness.admin().PushBundle(admin_pb2.PushBundleRequest(
            bundle=changed.encode(), signature=harness.sign(TEST_BUNDLE), key_id="test",
            activate=True), timeout=5)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "signature" in err.value.details()
    assert harness.server.engine.policy.version == before


def test_unsigned_bundle_is_refused(harness: Harness) -> None:
    with pytest.raises(grpc.RpcError) as err:
        harness.admin().PushBundle(admin_pb2.PushBundleRequest(
            bundle=TEST_BUNDLE.replace('"1"', '"2"').encode(), activate=True), timeout=5)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "unsigned" in err.value.details()


def test_activate_rollback_and_unknown_version(harness: Harness) -> None:
    admin = harness.admin()
    first = harness.server.engine.policy.version
    second = harness.push(TEST_BUNDLE.replace('revision: "1"', 'revision: "2"'))
    assert second.activated and harness.server.engine.policy.version == second.bundle.version
    rolled = admin.Rollback(admin_pb2.RollbackRequest(), timeout=5)
    assert rolled.bundle.version == first == harness.server.engine.policy.version
    with pytest.raises(grpc.RpcError) as err:
        admin.ActivateBundle(admin_pb2.ActivateBundleRequest(version="99-nope"), timeout=5)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    status = admin.GetStatus(admin_pb2.GetStatusRequest(), timeout=5)
    assert status.active_version == first and status.serving and status.audit.healthy


class _Cycle:
    def __init__(self) -> None:
        self.me = self


def test_an_activated_policy_leaves_the_collectors_view_and_goes_when_replaced(
    harness: Harness,
) -> None:
    # pdp.server.app.settle_heap, run by the server's monitor after an activation: a full
    # collection, then gc.freeze().
    first = harness.server.engine.policy
    assert first is not None
    first_gone = weakref.ref(first)
    del first
    was_enabled = gc.isenabled()
    gc.disable()  # only the server's own collection may reclaim the cycle below
    try:
        garbage = _Cycle()
        garbage_gone = weakref.ref(garbage)
        del garbage
        assert garbage_gone() is not None
        harness.push(TEST_BUNDLE.replace('revision: "1"', 'revision: "2"'))
        policy = harness.server.engine.policy
        assert policy is not None

        def in_view() -> bool:
            return any(o is policy for o in gc.get_objects())

        deadline = time.monotonic() + 10
        while in_view() and time.monotonic() < deadline:
            time.sleep(0.05)
        # The new policy left the collector's view (a full collection skips it)...
        assert not in_view()
        # ...cyclic garbage of that moment was collected, not frozen with it...
        assert garbage_gone() is None
    finally:
        if was_enabled:
            gc.enable()
    # ...and the replaced policy, frozen at its own activation, was freed all the same.
    assert first_gone() is None


def test_no_bundle_outlives_its_push_yet_list_status_shadow_explain_and_rollback_work(
    harness: Harness,
) -> None:
    # The server keeps compiled policies, not Bundles (at 100,000 rules the Rule objects
    # are 14 MB): what the planes show comes from the store and the compiled policies.
    admin = harness.admin()
    first = harness.server.engine.policy.version
    text = TEST_BUNDLE.replace('revision: "1"', 'revision: "2"').replace("read-docs", "read-any")
    second = harness.push(text).bundle.version
    admin.SetShadow(admin_pb2.SetShadowRequest(version=first), timeout=5)
    digests = {load_bundle(TEST_BUNDLE).digest, load_bundle(text).digest}
    gc.unfreeze()  # frozen objects (see the next test) are not in gc.get_objects()
    gc.collect()
    assert not [o for o in gc.get_objects() if isinstance(o, Bundle) and o.digest in digests]

    listed = {b.version: b for b in admin.ListBundles(admin_pb2.ListBundlesRequest(),
                                                      timeout=5).bundles}
    assert [(listed[v].rule_count, listed[v].active) for v in (first, second)] == [
        (3, False), (3, True)]
    status = admin.GetStatus(admin_pb2.GetStatusRequest(), timeout=5)
    assert (status.active_version, status.shadow.version) == (second, first)
    stub = harness.authz()
    answer = stub.Authorize(authorize_request("alice", "read", "d1", explain=True), timeout=5)
    assert answer.rule_id == "read-any"
    assert [(t.rule_id, t.matched) for t in answer.explanation] == [
        ("deny-secret", False), ("read-any", True)]
    assert harness.server.shadow.flush(5)
    report = admin.GetStatus(admin_pb2.GetStatusRequest(), timeout=5).shadow
    assert [(d.active_rule_id, d.shadow_rule_id) for d in report.top_differences] == [
        ("read-any", "read-docs")]
    assert admin.Rollback(admin_pb2.RollbackRequest(), timeout=5).bundle.version == first
    assert stub.Authorize(authorize_request("alice", "read", "d2"), timeout=5).rule_id == (
        "read-docs")


def test_batch_decisions_are_shadow_evaluated_only_while_a_shadow_is_set(
    harness: Harness,
) -> None:
    admin = harness.admin()
    first = harness.server.engine.policy.version
    harness.push(TEST_BUNDLE.replace('revision: "1"', 'revision: "2"')
                 .replace("read-docs", "read-any"))
    stub = harness.authz()
    batch = authorization_pb2.AuthorizeBatchRequest(requests=[
        authorize_request("alice", "read", f"d{i}") for i in range(3)])
    stub.AuthorizeBatch(batch, timeout=5)  # no shadow yet: nothing compared
    admin.SetShadow(admin_pb2.SetShadowRequest(version=first), timeout=5)
    stub.AuthorizeBatch(batch, timeout=5)
    assert harness.server.shadow.flush(5)
    report = admin.GetStatus(admin_pb2.GetStatusRequest(), timeout=5).shadow
    assert (report.evaluated, report.agreed) == (3, 0)
    assert [(d.active_rule_id, d.shadow_rule_id, d.count) for d in report.top_differences] == [
        ("read-any", "read-docs", 3)]


def test_read_your_writes_refuses_an_older_bundle(harness: Harness) -> None:
    sequence = harness.server.engine.policy.sequence
    stub = harness.authz()
    ok = stub.Authorize(authorize_request("a", "read", "d", min_bundle_sequence=sequence),
                        timeout=5)
    assert ok.decision == ALLOW
    with pytest.raises(grpc.RpcError) as err:
        stub.Authorize(authorize_request("a", "read", "d", min_bundle_sequence=sequence + 1),
                       timeout=5)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION


def test_restart_restores_the_active_bundle(start_server: Callable[..., Harness]) -> None:
    first = start_server()
    pushed = first.push(TEST_BUNDLE.replace('revision: "1"', 'revision: "7"'))
    directory = first.directory
    first.close()
    second = start_server(directory=directory, seed=False)
    assert second.server.engine.policy.version == pushed.bundle.version
    answer = second.authz().Authorize(authorize_request("alice", "read", "d1"), timeout=5)
    assert answer.bundle_version == pushed.bundle.version


def test_activation_under_load_loses_no_call_and_mixes_no_versions(harness: Harness) -> None:
    v1 = harness.server.engine.policy.version
    stop = threading.Event()
    versions: set[str] = set()
    failures: list[BaseException] = []

    def caller() -> None:
        stub = harness.authz()
        while not stop.is_set():
            try:
                r = stub.Authorize(authorize_request("alice", "read", "d1"), timeout=5)
                versions.add(r.bundle_version)
            except grpc.RpcError as exc:
                failures.append(exc)

    threads = [threading.Thread(target=caller) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        pushed = [harness.push(TEST_BUNDLE.replace('revision: "1"', f'revision: "r{i}"'))
                  for i in range(3)]
        # Generous deadline: the callers run in this same process and compete for its GIL.
        harness.admin().ActivateBundle(admin_pb2.ActivateBundleRequest(version=v1), timeout=60)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert failures == []
    assert versions <= {v1} | {p.bundle.version for p in pushed}
    assert len(versions) >= 2


def _tls_handshake(port: int, harness: Harness, *, maximum: ssl.TLSVersion | None) -> str:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(harness.pki.ca_cert)
    ctx.load_cert_chain(harness.pki.service.cert, harness.pki.service.key)
    ctx.set_alpn_protocols(["h2"])
    if maximum is not None:
        ctx.maximum_version = maximum
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
            ctx.wrap_socket(raw, server_hostname="localhost") as tls:
        return str(tls.version())


@pytest.mark.parametrize("listener", ["data", "admin"])
def test_tls12_client_gets_no_connection_tls13_does(harness: Harness, listener: str) -> None:
    port = harness.server.data_port if listener == "data" else harness.server.admin_port
    assert _tls_handshake(port, harness, maximum=None) == "TLSv1.3"
    with pytest.raises((ssl.SSLError, ConnectionError)):
        _tls_handshake(port, harness, maximum=ssl.TLSVersion.TLSv1_2)


def test_plaintext_client_gets_no_answer(harness: Harness) -> None:
    with grpc.insecure_channel(harness.data_target) as ch:
        stub = authorization_pb2_grpc_stub(ch)
        with pytest.raises(grpc.RpcError) as err:
            stub.Authorize(authorize_request("alice", "read", "d1"), timeout=2)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE


@pytest.mark.parametrize("who", ["expired", "foreign"])
def test_expired_or_foreign_certificate_gets_no_connection(harness: Harness, who: str) -> None:
    pair = getattr(harness.pki, who)
    with pytest.raises(grpc.RpcError) as err:
        harness.authz(pair).Authorize(authorize_request("alice", "read", "d1"), timeout=3)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE


def test_client_without_certificate_gets_no_connection(harness: Harness) -> None:
    creds = grpc.ssl_channel_credentials(harness.pki.ca_cert.read_bytes())
    options = [("grpc.ssl_target_name_override", "localhost")]
    with grpc.secure_channel(harness.data_target, creds, options=options) as ch, \
            pytest.raises(grpc.RpcError) as err:
        authorization_pb2_grpc_stub(ch).Authorize(
            authorize_request("alice", "read", "d1"), timeout=3)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE


def authorization_pb2_grpc_stub(ch: grpc.Channel) -> object:
    from pdp_client._proto import authorization_pb2_grpc

    return authorization_pb2_grpc.AuthorizationStub(ch)


def test_second_server_on_the_same_data_dir_refuses_to_start(
    start_server: Callable[..., Harness],
) -> None:
    first = start_server()
    audit_dir = first.server.config.audit_config.dir
    before = sorted(p.name for p in audit_dir.iterdir())
    with pytest.raises(ConfigError, match="another pdp process is already serving"):
        start_server(directory=first.directory, seed=False)
    # Nothing was written into the running server's hash chain by the refused one.
    assert sorted(p.name for p in audit_dir.iterdir()) == before
    assert first.authz().Authorize(authorize_request("alice", "read", "d1"), timeout=5).decision


def test_peer_outside_the_listener_allow_list_is_permission_denied(
    start_server: Callable[..., Harness],
) -> None:
    outside = start_server(data_cidrs=("10.20.0.0/16",))
    with pytest.raises(grpc.RpcError) as err:
        outside.authz().Authorize(authorize_request("alice", "read", "d1"), timeout=5)
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "allow-list" in err.value.details()
    inside = start_server(data_cidrs=("127.0.0.0/8", "::1/128"))
    assert inside.authz().Authorize(authorize_request("alice", "read", "d1"), timeout=5).decision
