"""Three `pdp serve` replicas on one PostgreSQL store: propagation, database cuts,
concurrent admins, quarantine and service tokens across replicas (issue 7)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import grpc
import pytest

from pdp_client._proto import admin_pb2, authorization_pb2, identity_pb2
from tests.replicas.cluster import Cluster, Replica, read_request, terminate_backends

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

ALLOW, DENY = authorization_pb2.DECISION_ALLOW, authorization_pb2.DECISION_DENY


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


def all_answer(cluster: Cluster, version: str) -> bool:
    return all(r.version() == version for r in cluster.replicas)


def last_activation(cluster: Cluster) -> tuple[int, str]:
    rows = cluster.sql("SELECT a.sequence, a.version FROM pdp_state s "
                       "JOIN pdp_activations a ON a.sequence = s.active WHERE s.id = 1")
    return int(rows[0][0]), str(rows[0][1])


class Load:
    """One thread per replica calling Authorize back to back on a long-lived channel."""

    def __init__(self, replicas: list[Replica]) -> None:
        self.stop = threading.Event()
        self.failures: list[str] = []
        self.seen: dict[str, list[str]] = {r.name: [] for r in replicas}
        self.calls = 0
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, args=(r,)) for r in replicas]

    def _run(self, replica: Replica) -> None:
        stub = replica.authz()
        while not self.stop.is_set():
            try:
                answer = stub.Authorize(read_request(), timeout=5)
            except grpc.RpcError as exc:
                with self._lock:
                    self.failures.append(f"{replica.name}: {exc.code()} {exc.details()}")
                continue
            with self._lock:
                self.calls += 1
                if answer.decision != ALLOW:
                    self.failures.append(f"{replica.name}: {answer.reason}")
                seen = self.seen[replica.name]
                if not seen or seen[-1] != answer.bundle_version:
                    seen.append(answer.bundle_version)
            time.sleep(0.005)

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self._threads:
            t.join(timeout=30)


def test_push_through_one_replica_is_answered_by_all_three_within_a_second(
    cluster: Cluster,
) -> None:
    a = cluster.replicas[0]
    pushed = cluster.push(a, "propagation")
    version = pushed.bundle.version
    assert pushed.activated
    returned = time.monotonic()
    pending = {r.name: r for r in cluster.replicas}
    took: dict[str, float] = {}
    while pending and time.monotonic() - returned < 1.0:
        for name, replica in list(pending.items()):
            if replica.version() == version:
                took[name] = time.monotonic() - returned
                del pending[name]
        time.sleep(0.005)
    assert not pending, f"not answering {version} within 1 s: {sorted(pending)} ({took})"
    # Every replica stays on it, also on fresh connections.
    assert {r.fresh_version() for r in cluster.replicas} == {version}


def test_pg_terminate_backend_mid_load_keeps_answering_and_catches_up(
    cluster: Cluster,
) -> None:
    a, b, c = cluster.replicas
    before = cluster.push(a, "before-cut").bundle.version
    wait_until(lambda: all_answer(cluster, before), 10, "every replica on the first bundle")
    with Load(cluster.replicas) as load:
        # Cut every replica's connections (store and LISTEN) repeatedly under load.
        for _ in range(3):
            assert terminate_backends(cluster.dbname) >= 1
            time.sleep(0.3)
        # They reconnect by themselves: each store connection and each watcher comes back.
        names = {f"{r.name}{s}" for r in cluster.replicas for s in ("", "-watch")}
        wait_until(lambda: names <= cluster.connected(), 20, "replicas to reconnect")
        assert {r.version() for r in cluster.replicas} == {before}

        # Now keep b and c cut off while an activation goes through a.
        cluster.allow_connections(False)
        try:
            assert terminate_backends(cluster.dbname,
                                      app_prefixes=[b.name, c.name]) >= 2
            during = cluster.push(a, "while-cut-off").bundle.version
            assert a.version() == during
            assert b.version() == before and c.version() == before  # serving the last one
        finally:
            cluster.allow_connections(True)
        wait_until(lambda: all_answer(cluster, during), 20,
                   "cut-off replicas to catch up with the activation they missed")
    assert load.calls > 0
    assert load.failures == [], load.failures[:5]
    for name, seen in load.seen.items():
        assert seen == [before, during] or seen == [before], (name, seen)  # never backwards


def test_two_admins_pushing_concurrently_are_totally_ordered_and_none_lost(
    cluster: Cluster, second_admin: Any,
) -> None:
    a, b, c = cluster.replicas
    first_sequence, _ = last_activation(cluster)
    rounds = 4
    barrier = threading.Barrier(2)
    pushed: dict[str, list[str]] = {"one": [], "two": []}
    errors: list[BaseException] = []

    def admin(label: str, replica: Replica, stub: Any) -> None:
        try:
            barrier.wait(timeout=10)
            for i in range(rounds):
                response = cluster.push(replica, f"{label}-{i}", admin=stub)
                assert response.activated
                pushed[label].append(response.bundle.version)
        except BaseException as exc:
            errors.append(exc)

    stubs = {"one": a.admin(), "two": b.admin(second_admin.cert, second_admin.key)}
    threads = [threading.Thread(target=admin, args=("one", a, stubs["one"])),
               threading.Thread(target=admin, args=("two", b, stubs["two"]))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors
    ours = set(pushed["one"]) | set(pushed["two"])
    assert len(ours) == 2 * rounds

    # Both admins' versions are stored (listed by a third replica).
    listed = {bundle.version for bundle in c.admin().ListBundles(
        admin_pb2.ListBundlesRequest(), timeout=10).bundles}
    assert ours <= listed
    # Activations: strictly increasing, no gaps, each push activated exactly once, in each
    # admin's own order, by that admin.
    rows = cluster.sql("SELECT sequence, version, actor FROM pdp_activations "
                       "WHERE sequence > %s ORDER BY sequence", (first_sequence,))
    sequences = [int(r[0]) for r in rows]
    assert sequences == list(range(first_sequence + 1, first_sequence + 1 + 2 * rounds))
    assert sorted(str(r[1]) for r in rows) == sorted(ours)
    by_actor = {"spiffe://pdp.test/admin": "one", "spiffe://pdp.test/admin-2": "two"}
    for label in ("one", "two"):
        order = [str(r[1]) for r in rows if by_actor[str(r[2])] == label]
        assert order == pushed[label]
    # Every replica converges on the last activation.
    last_sequence, last_version = last_activation(cluster)
    assert last_sequence == sequences[-1] and last_version == str(rows[-1][1])
    wait_until(lambda: all_answer(cluster, last_version), 10,
               f"every replica to answer the last activation {last_version}")


def test_quarantine_through_one_replica_denies_on_all_three(cluster: Cluster) -> None:
    a, b, c = cluster.replicas
    subject = "mallory"
    assert {r.authz().Authorize(read_request(subject), timeout=5).decision
            for r in cluster.replicas} == {ALLOW}
    a.admin().Quarantine(admin_pb2.QuarantineRequest(subject=subject, ttl_seconds=300,
                                                     reason="test"), timeout=10)

    def denied_everywhere() -> bool:
        answers = [r.authz().Authorize(read_request(subject), timeout=5)
                   for r in cluster.replicas]
        return all(x.decision == DENY and x.reason == "quarantined"
                   for x in answers)

    wait_until(denied_everywhere, 10, "quarantine to reach every replica")
    # Others are untouched; a release through another replica reaches all of them too.
    assert c.authz().Authorize(read_request("alice"), timeout=5).decision == ALLOW
    assert b.admin().Release(admin_pb2.ReleaseRequest(subject=subject), timeout=10).released
    wait_until(lambda: all(r.authz().Authorize(read_request(subject), timeout=5).decision
                           == ALLOW for r in cluster.replicas),
               10, "release to reach every replica")


def issue_token(replica: Replica) -> str:
    response = replica.identity().IssueServiceToken(
        identity_pb2.IssueServiceTokenRequest(audience="pdp", ttl_seconds=60), timeout=10)
    return str(response.token)


def test_token_issued_by_one_replica_verifies_at_another_with_a_shared_key_dir(
    cluster: Cluster,
) -> None:
    a, b, _ = cluster.replicas
    answer = b.authz().Authorize(read_request("ignored", token=issue_token(a)), timeout=5)
    assert answer.decision == ALLOW, answer.reason
    assert answer.rule_id == "service-read"  # the subject came from the verified token


def test_token_replay_across_replicas_is_refused(cluster: Cluster) -> None:
    a, b, _ = cluster.replicas
    token = issue_token(a)
    first = a.authz().Authorize(read_request("x", token=token), timeout=5)
    assert first.decision == ALLOW
    again = a.authz().Authorize(read_request("x", token=token), timeout=5)
    assert again.decision == DENY  # the same replica refuses a replay
    replayed = b.authz().Authorize(read_request("x", token=token), timeout=5)
    assert replayed.decision == DENY, "token replayed at another replica"
    assert "another replica" in replayed.reason


def test_replica_starting_while_the_database_is_down_refuses_to_start(cluster: Cluster) -> None:
    running = list(cluster.replicas)
    cluster.allow_connections(False)
    try:
        with pytest.raises(RuntimeError, match="exited with") as failed:
            cluster.start(["replica-late"])
    finally:
        cluster.allow_connections(True)
        cluster.replicas[:] = running
    assert "not currently accepting connections" in str(failed.value)
    assert "Traceback" not in str(failed.value)  # one clear line, not a crash
    # The running replicas were never disturbed.
    assert len({r.version() for r in running}) == 1
