"""Explain and shadow evaluation through the real server (issue 9)."""

from __future__ import annotations

import time
from collections.abc import Callable

from pdp_client._proto import admin_pb2
from tests.server.conftest import TEST_BUNDLE, Harness, authorize_request

# The candidate differs from TEST_BUNDLE in one rule: reading "secret-*" docs is allowed.
CANDIDATE = TEST_BUNDLE.replace("effect: deny\n    actions: [\"*\"]",
                                "effect: allow\n    actions: [\"*\"]").replace(
    'revision: "1"', 'revision: "candidate"')


def test_explain_names_the_rule_and_condition_that_failed(harness: Harness) -> None:
    answer = harness.authz().Authorize(authorize_request(
        "alice", "write", "d1", resource_props={"owner": "bob"}, explain=True), timeout=5)
    assert answer.decision == 0 and answer.reason == "default deny"
    first = answer.explanation[0]
    assert (first.rule_id, first.failed_part) == ("owner-write", "when")
    assert "resource.properties.owner" in first.detail and "bob" in first.detail


def test_explain_is_only_for_identities_allowed_to_explain(
    start_server: Callable[..., Harness],
) -> None:
    harness = start_server(authorize=("spiffe://pdp.test/svc/*",))
    request = authorize_request("a", "read", "d1", explain=True)
    explainer = harness.authz().Authorize(request, timeout=5)
    assert explainer.explanation and explainer.explanation[-1].matched
    # The other service may decide but is not in [access] explain: same answer, no trace.
    other = harness.authz(harness.pki.other_service).Authorize(request, timeout=5)
    assert (other.decision, other.rule_id) == (explainer.decision, explainer.rule_id)
    assert list(other.explanation) == []


def test_shadow_differences_are_exactly_the_requests_the_changed_rule_affects(
    harness: Harness,
) -> None:
    candidate = harness.push(CANDIDATE, activate=False)
    admin = harness.admin()
    admin.SetShadow(admin_pb2.SetShadowRequest(version=candidate.bundle.version), timeout=5)
    stub = harness.authz()
    requests = [("alice", "read", "d1"), ("alice", "read", "secret-1"),
                ("bob", "delete", "secret-2"), ("bob", "delete", "d2"),
                ("carol", "read", "secret-3")]
    served = [stub.Authorize(authorize_request(*r), timeout=5) for r in requests]
    # The served decisions come from the active bundle, never the shadow.
    assert [(a.decision, a.rule_id) for a in served] == [
        (1, "read-docs"), (0, "deny-secret"), (0, "deny-secret"), (0, ""), (0, "deny-secret")]
    deadline = time.monotonic() + 10
    while True:
        report = admin.GetStatus(admin_pb2.GetStatusRequest(), timeout=5).shadow
        if report.evaluated >= len(requests) or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert report.version == candidate.bundle.version
    assert (report.evaluated, report.agreed) == (5, 2)
    differences = {(d.active_rule_id, d.active_decision, d.shadow_rule_id, d.shadow_decision):
                   d.count for d in report.top_differences}
    assert differences == {("deny-secret", "deny", "deny-secret", "allow"): 3}
    admin.SetShadow(admin_pb2.SetShadowRequest(), timeout=5)
    assert not admin.GetStatus(admin_pb2.GetStatusRequest(), timeout=5).shadow.version
