"""Audit and health end to end: every decision leaves a verifiable record; fail closed (issue 5)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from pdp.audit import verify
from pdp.audit.records import list_files
from pdp_client._proto import admin_pb2, authorization_pb2
from tests.server.conftest import Harness, authorize_request


def _records(directory: Path) -> list[str]:
    return [line for _, path in list_files(directory) for line in path.read_text().splitlines()]


def _wait(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.05)


def test_decisions_and_admin_acts_leave_a_verifiable_chain(harness: Harness) -> None:
    stub = harness.authz()
    answers = [stub.Authorize(authorize_request("alice", a, "d1"), timeout=5)
               for a in ("read", "delete")]
    audit_dir = harness.server.config.audit_config.dir
    _wait(lambda: all(any(a.decision_id in line for line in _records(audit_dir))
                      for a in answers))
    records = _records(audit_dir)
    assert any('"admin.bundle.push"' in line for line in records)
    harness.close()  # flushes the queue
    report = verify(audit_dir)
    assert report.records == len(_records(audit_dir))


def test_a_decision_record_holds_every_field_of_the_call(harness: Harness) -> None:
    answer = harness.authz().Authorize(authorize_request("alice", "delete", "d7"), timeout=5)
    harness.close()  # flushes the queue
    audit_dir = harness.server.config.audit_config.dir
    [record] = [json.loads(line) for line in _records(audit_dir)
                if answer.decision_id in line]
    assert (record["type"], record["severity"], record["outcome"]) == ("decision", "info", "deny")
    assert record["actor"] == "spiffe://pdp.test/svc/search"
    assert record["peer"].startswith("ipv4:127.0.0.1:")
    assert record["event_id"] == answer.decision_id
    assert record["details"] == {
        "subject": "alice", "subject_type": "user", "action": "delete", "resource_type": "doc",
        "resource_id": "d7", "rule_id": answer.rule_id, "bundle_version": answer.bundle_version,
        "reason": answer.reason, "cached": False, "decision_id": answer.decision_id}


def test_a_batch_is_one_record_holding_each_of_its_decisions(harness: Harness) -> None:
    stub = harness.authz()
    batch = stub.AuthorizeBatch(authorization_pb2.AuthorizeBatchRequest(requests=[
        authorize_request("alice", action, "d1") for action in ("read", "delete", "read")]),
        timeout=5).responses
    harness.close()  # flushes the queue
    audit_dir = harness.server.config.audit_config.dir
    written = [json.loads(line) for line in _records(audit_dir)]
    kept = [r for r in written if r["type"] == "decision.batch"]
    assert len(kept) == 1 and kept[0]["details"]["count"] == 3
    assert kept[0]["actor"] == "spiffe://pdp.test/svc/search"
    assert kept[0]["outcome"] == "mixed"
    assert [(d["decision_id"], d["outcome"], d["rule_id"], d["action"])
            for d in kept[0]["details"]["decisions"]] == [
        (a.decision_id, "allow" if a.decision == 1 else "deny", a.rule_id, action)
        for a, action in zip(batch, ("read", "delete", "read"), strict=True)]
    assert verify(audit_dir).records == len(written)


def test_unwritable_audit_denies_then_recovers(harness: Harness) -> None:
    stub = harness.authz()
    assert stub.Authorize(authorize_request("alice", "read", "d1"), timeout=5).decision == 1
    audit_dir = harness.server.config.audit_config.dir
    moved = audit_dir.with_name("audit-moved")
    # As root, permissions do not stop writes; a regular file where the directory was does.
    audit_dir.rename(moved)
    audit_dir.write_text("not a directory")
    try:
        _wait(lambda: not harness.server.audit.healthy)
        answer = stub.Authorize(authorize_request("alice", "read", "d2"), timeout=5)
        assert (answer.decision, answer.reason) == (0, "audit unavailable")
        batch = stub.AuthorizeBatch(authorization_pb2.AuthorizeBatchRequest(requests=[
            authorize_request("alice", "read", f"b{i}") for i in range(3)]), timeout=5)
        assert [(r.decision, r.reason) for r in batch.responses] == [
            (0, "audit unavailable")] * 3
        health = health_pb2_grpc.HealthStub(harness.channel(harness.pki.service))
        _wait(lambda: health.Check(health_pb2.HealthCheckRequest(), timeout=5).status
              == health_pb2.HealthCheckResponse.NOT_SERVING)
        with pytest.raises(Exception) as err:
            harness.push("metadata: {name: x, revision: '2'}\nrules: []\n")
        assert "audit unavailable" in str(err.value)
    finally:
        audit_dir.unlink()
        moved.rename(audit_dir)
    _wait(lambda: harness.server.audit.healthy)
    assert stub.Authorize(authorize_request("alice", "read", "d3"), timeout=5).decision == 1


def test_a_data_directory_replaced_under_a_running_server_fails_it_closed(
    start_server: Callable[..., Harness],
) -> None:
    old = start_server()
    stub = old.authz()
    first = stub.Authorize(authorize_request("alice", "read", "d1"), timeout=5)
    assert first.decision == 1
    audit_dir = old.server.config.audit_config.dir
    _wait(lambda: any(first.decision_id in line for line in _records(audit_dir)))
    data_dir = old.server.config.data_dir
    # Moved away whole, the lock file beside the audit directory with it: a removal by
    # rmtree raced the running server, whose writer may still create a file in the audit
    # directory until it notices (rmdir then failed: "Directory not empty").
    data_dir.rename(data_dir.with_name(data_dir.name + ".removed"))
    data_dir.mkdir()
    health = health_pb2_grpc.HealthStub(old.channel(old.pki.service))
    _wait(lambda: health.Check(health_pb2.HealthCheckRequest(), timeout=5).status
          == health_pb2.HealthCheckResponse.NOT_SERVING)
    assert "lock file" in old.server.audit.last_error
    # A new server takes the recreated directory; the old one refuses every decision and
    # writes nothing into the new server's chain.
    new = start_server(directory=old.directory)
    refused = stub.Authorize(authorize_request("alice", "read", "d2"), timeout=5)
    assert (refused.decision, refused.reason) == (0, "audit unavailable")
    assert new.authz().Authorize(authorize_request("alice", "read", "d3"),
                                 timeout=5).decision == 1
    time.sleep(1.0)  # two of the old server's health checks and audit retries
    assert not old.server.audit.healthy
    new.close()
    assert verify(audit_dir).records == len(_records(audit_dir))
    assert not any(refused.decision_id in line or first.decision_id in line
                   for line in _records(audit_dir))


def test_health_is_not_serving_until_a_bundle_is_active(
    start_server: Callable[..., Harness],
) -> None:
    harness = start_server(seed=False)
    health = health_pb2_grpc.HealthStub(harness.channel(harness.pki.service))
    status = health.Check(health_pb2.HealthCheckRequest(), timeout=5).status
    assert status == health_pb2.HealthCheckResponse.NOT_SERVING
    answer = harness.authz().Authorize(authorize_request("alice", "read", "d1"), timeout=5)
    assert (answer.decision, answer.reason) == (0, "no active bundle")
    harness.push(harness_bundle())
    _wait(lambda: health.Check(health_pb2.HealthCheckRequest(), timeout=5).status
          == health_pb2.HealthCheckResponse.SERVING)
    status_rpc = harness.admin().GetStatus(admin_pb2.GetStatusRequest(), timeout=5)
    assert status_rpc.serving and status_rpc.certificates[0].days_left > 0


def harness_bundle() -> str:
    from tests.server.conftest import TEST_BUNDLE

    return TEST_BUNDLE


def test_a_burst_beyond_the_audit_queue_waits_for_room_and_is_answered_in_full(
        start_server: Callable[..., Harness]) -> None:
    """Back-pressure end to end: batches from four callers at once hold far more decisions
    than the audit queue (20) and arrive while the writer waits for its next tick (5 s away).
    Each call waits for room rather than being answered DENY "audit unavailable"; every
    decision is answered by the policy and recorded in the chain."""
    harness = start_server(extra="[audit]\nqueue_size = 20\nbatch_max = 10000\n"
                                 "flush_interval = 5.0\nqueue_wait = 30.0\n")
    stub = harness.authz()
    answers: list[authorization_pb2.AuthorizeResponse] = []
    errors: list[BaseException] = []

    def caller(who: int) -> None:
        try:
            for n in range(5):
                batch = authorization_pb2.AuthorizeBatchRequest(requests=[
                    authorize_request("alice", "read", f"c{who}-{n}-{i}") for i in range(15)])
                answers.extend(stub.AuthorizeBatch(batch, timeout=60).responses)
        except BaseException as exc:  # reported below, with the answers
            errors.append(exc)

    threads = [threading.Thread(target=caller, args=(who,)) for who in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors and len(answers) == 4 * 5 * 15
    assert {(a.decision, a.rule_id) for a in answers} == {(1, "read-docs")}, {
        a.reason for a in answers}
    harness.close()  # flushes the queue
    audit_dir = harness.server.config.audit_config.dir
    written = [json.loads(line) for line in _records(audit_dir)]
    recorded = {d["decision_id"] for r in written if r["type"] == "decision.batch"
                for d in r["details"]["decisions"]}
    assert recorded == {a.decision_id for a in answers}
    assert verify(audit_dir).records == len(written)
