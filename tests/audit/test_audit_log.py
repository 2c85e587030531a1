"""AuditLog: record format, chain, rotation, resume, crash recovery, sampling, queue bounds."""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from audit_helpers import admin, decision, emit_waiting, wait_until

import pdp.audit.log as audit_log
from pdp.audit import AuditConfig, AuditCorruptError, AuditLog, NullAuditLog, create_audit_log
from pdp.audit import verify as verify_dir
from pdp.audit.records import GENESIS, DecisionBatch, canonical, record_hash
from pdp.clock import FakeClock
from pdp.configuration import build_section
from pdp.errors import AuditUnavailableError, ConfigError
from pdp.events import DecisionCall, EventType
from pdp.policy import Action, Decision, Effect, Request, Resource, Subject

JWT = (
    "eyJhbGciOiJFZERTQSIsInR5cCI6IkpXVCJ9."
    "eyJzdWIiOiJzcGlmZmU6Ly9leGFtcGxlLm9yZy9zdmMifQ."
    "c2lnbmF0dXJlc2lnbmF0dXJlc2lnbmF0dXJl"
)
PEM = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIOq\n-----END PRIVATE KEY-----\n"
_JWT_LIKE = re.compile(r"eyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.")


def records(directory: Path) -> list[dict[str, Any]]:
    out = []
    for path in sorted(directory.glob("audit-*.jsonl")):
        out.extend(json.loads(line) for line in path.read_text().splitlines())
    return out


def test_records_are_chained_json_lines_with_the_documented_fields(
    make_log: Callable[..., AuditLog], tmp_path: Path
) -> None:
    log = make_log()
    first = decision("allow")
    log.emit(first)
    log.emit(admin())
    log.close()
    recs = records(tmp_path / "audit")
    assert [r["type"] for r in recs] == ["decision", "admin.bundle.push"]
    rec = recs[0]
    assert set(rec) == {
        "time", "event_id", "type", "severity", "actor", "peer", "outcome", "details",
        "seq", "prev", "hash",
    }
    assert rec["time"] == "2027-01-15T08:00:00.000000Z"
    assert rec["event_id"] == first.event_id
    assert rec["details"]["decision_id"] == first.details["decision_id"]
    assert (rec["seq"], rec["prev"]) == (1, GENESIS)
    assert rec["hash"] == record_hash(rec)
    body = {k: v for k, v in rec.items() if k != "hash"}
    assert rec["hash"] == __import__("hashlib").sha256(canonical(body)).hexdigest()
    assert (recs[1]["seq"], recs[1]["prev"]) == (2, rec["hash"])
    assert verify_dir(tmp_path / "audit").records == 2


def test_token_or_key_leaked_into_event_is_redacted(
    make_log: Callable[..., AuditLog], tmp_path: Path
) -> None:
    log = make_log()
    log.emit(decision("deny", reason=f"bad token {JWT}", jti="j-123"))
    log.emit(admin(EventType.KEY_ROTATE, key=PEM, kid="k2", nested={"t": [JWT]}))
    log.emit(admin(EventType.AUTH_FAILURE_TOKEN, token=JWT))
    log.close()
    text = "".join(p.read_text() for p in (tmp_path / "audit").glob("audit-*.jsonl"))
    assert not _JWT_LIKE.search(text)
    assert "BEGIN" not in text and "PRIVATE KEY" not in text
    recs = records(tmp_path / "audit")
    assert recs[0]["details"]["jti"] == "j-123"  # tokens appear only as their jti
    assert recs[1]["details"]["kid"] == "k2"
    verify_dir(tmp_path / "audit")


def test_sync_event_is_on_disk_before_emit_returns(
    make_log: Callable[..., AuditLog], tmp_path: Path
) -> None:
    log = make_log(flush_interval=60.0, batch_max=10_000)
    queued = decision("deny")
    log.emit(queued)
    log.emit(admin(EventType.BUNDLE_ACTIVATE))
    # The admin event is durable now, and the decision queued before it precedes it.
    assert [r["type"] for r in records(tmp_path / "audit")] == ["decision", "admin.bundle.activate"]
    assert log.queue_depth == 0


def test_rotation_continues_the_chain_and_seals_each_file(
    make_log: Callable[..., AuditLog], tmp_path: Path
) -> None:
    log = make_log(max_file_bytes=4096, batch_max=7)
    for i in range(60):
        log.emit(decision("deny" if i % 3 else "allow"))
    log.close()
    directory = tmp_path / "audit"
    files = sorted(directory.glob("audit-*.jsonl"))
    assert len(files) >= 4
    previous_last: dict[str, Any] | None = None
    for path in files:
        lines = [json.loads(x) for x in path.read_text().splitlines()]
        assert path.stat().st_size <= 4096 + 400  # a seal may overshoot by itself only
        if previous_last is not None:
            assert previous_last["type"] == "chain.seal"
            assert previous_last["details"]["next_file"] == path.name
            assert lines[0]["prev"] == previous_last["hash"]
        previous_last = lines[-1]
    report = verify_dir(directory)
    assert report.files == len(files)
    assert report.records == 60 + len(files) - 1
    assert [r["seq"] for r in records(directory)] == list(range(1, report.records + 1))


def test_resume_after_restart_continues_the_chain(tmp_path: Path, clock: FakeClock) -> None:
    config = AuditConfig(dir=tmp_path / "audit", flush_interval=0.01)
    for run in range(3):
        log = AuditLog(config, clock=clock)
        log.start()
        assert log.healthy
        log.emit(admin(EventType.SERVICE_START))
        log.emit(decision("allow"))
        log.close()
        report = verify_dir(tmp_path / "audit")
        assert report.records == 2 * (run + 1)
    assert len(list((tmp_path / "audit").glob("audit-*.jsonl"))) == 1


def test_torn_final_line_is_sealed_and_recovered_in_a_new_file(
    tmp_path: Path, clock: FakeClock
) -> None:
    directory = tmp_path / "audit"
    config = AuditConfig(dir=directory, flush_interval=0.01)
    log = AuditLog(config, clock=clock)
    log.start()
    for _ in range(3):
        log.emit(admin())
    log.close()
    first = directory / "audit-000001.jsonl"
    torn = b'{"actor":"spiffe://example.org/admin","details":{"ver'
    with first.open("ab") as fh:  # what a crash in the middle of a write leaves
        fh.write(torn)
    with pytest.raises(Exception, match="partial record"):
        verify_dir(directory)
    log = AuditLog(config, clock=clock)
    log.start()
    assert log.healthy
    log.emit(admin())
    log.close()
    assert first.read_bytes().endswith(torn)  # sealed as-is, never written again
    recovered = json.loads((directory / "audit-000002.jsonl").read_text().splitlines()[0])
    assert recovered["type"] == "chain.recovered"
    assert recovered["details"]["file"] == "audit-000001.jsonl"
    assert recovered["details"]["torn_bytes"] == len(torn)
    assert recovered["details"]["last_seq"] == 3
    report = verify_dir(directory)
    assert report.records == 5
    assert len(report.recoveries) == 1


def test_changed_tail_record_refuses_to_start(tmp_path: Path, clock: FakeClock) -> None:
    directory = tmp_path / "audit"
    config = AuditConfig(dir=directory)
    log = AuditLog(config, clock=clock)
    log.start()
    log.emit(admin())
    log.close()
    path = directory / "audit-000001.jsonl"
    path.write_text(path.read_text().replace("3:ab12", "3:ab13"))
    with pytest.raises(AuditCorruptError, match="hash mismatch"):
        AuditLog(config, clock=clock).start()


def test_records_cut_from_the_end_refuse_to_start(tmp_path: Path, clock: FakeClock) -> None:
    directory = tmp_path / "audit"
    config = AuditConfig(dir=directory)
    log = AuditLog(config, clock=clock)
    log.start()
    for _ in range(4):
        log.emit(admin())
    log.close()
    path = directory / "audit-000001.jsonl"
    path.write_text("".join(path.read_text().splitlines(keepends=True)[:2]))
    with pytest.raises(AuditCorruptError, match="records were removed"):
        AuditLog(config, clock=clock).start()


def test_sampling_keeps_every_deny_and_is_deterministic(
    make_log: Callable[..., AuditLog], tmp_path: Path
) -> None:
    log = make_log(sample_allow=0.25)
    allows = [decision("allow") for _ in range(400)]
    denies = [decision("deny") for _ in range(100)]
    for event in allows + denies:
        log.emit(event)
    log.close()
    kept = records(tmp_path / "audit")
    kept_denies = [r for r in kept if r["outcome"] == "deny"]
    kept_allows = [r for r in kept if r["outcome"] == "allow"]
    assert len(kept_denies) == 100
    assert 50 < len(kept_allows) < 150
    assert log.sampled_out == 400 - len(kept_allows)
    # Deterministic by decision id: a second log keeps exactly the same allows.
    other = make_log(dir=tmp_path / "other", sample_allow=0.25)
    for event in allows:
        other.emit(event)
    other.close()
    again = {r["event_id"] for r in records(tmp_path / "other")}
    assert again == {r["event_id"] for r in kept_allows}


def test_sample_allow_zero_still_keeps_denies(make_log: Callable[..., AuditLog]) -> None:
    log = make_log(sample_allow=0.0)
    log.emit(decision("allow"))
    log.emit(decision("deny"))
    log.close()
    assert log.sampled_out == 1
    assert verify_dir(log.config.dir).records == 1


def test_full_queue_refuses_decisions_and_close_loses_none(
    make_log: Callable[..., AuditLog], tmp_path: Path
) -> None:
    log = make_log(queue_size=50, batch_max=10_000, flush_interval=60.0, queue_wait=0)
    accepted = []
    for _ in range(50):
        event = decision("deny")
        log.emit(event)
        accepted.append(event.event_id)
    assert log.queue_depth == 50
    with pytest.raises(AuditUnavailableError, match="queue full"):
        log.emit(decision("deny"))
    log.close(timeout=10.0)
    assert [r["event_id"] for r in records(tmp_path / "audit")] == accepted
    assert log.lost == 0
    with pytest.raises(AuditUnavailableError):
        log.emit(decision("deny"))


def test_a_decision_waits_for_room_in_a_full_queue_and_is_kept(
    make_log: Callable[..., AuditLog], tmp_path: Path
) -> None:
    """Back-pressure: with the queue full and the writer waiting for its next tick (a
    minute away), a decision waits for room, the writer is woken to make it, and the
    decision is kept, in order, instead of refused."""
    log = make_log(queue_size=5, batch_max=10_000, flush_interval=60.0, queue_wait=30.0)
    first = [decision("deny") for _ in range(5)]
    for event in first:
        log.emit(event)
    late, batch = decision("deny"), [decision("allow") for _ in range(3)]
    log.emit(late)  # the queue is full: waits until the writer took the five
    log.emit_all(batch)  # the same for a batch, kept whole
    log.close(timeout=10.0)
    written = records(tmp_path / "audit")
    assert [r["event_id"] for r in written[:6]] == [e.event_id for e in [*first, late]]
    assert [d["decision_id"] for d in written[6]["details"]["decisions"]] == [
        e.details["decision_id"] for e in batch]
    assert log.lost == 0 and verify_dir(tmp_path / "audit").records == 7


def test_a_full_queue_refuses_once_queue_wait_is_over(
    make_log: Callable[..., AuditLog], tmp_path: Path
) -> None:
    """A writer that cannot catch up (here: held off the chain's lock, as a slow disk would
    hold it) leaves the decisions waiting for room refused after queue_wait, a batch whole;
    a batch larger than the whole queue is refused without waiting."""
    log = make_log(queue_size=5, batch_max=10_000, flush_interval=60.0, queue_wait=0.2)
    accepted = [decision("deny") for _ in range(5)]
    with log._wlock:  # the writer's lock: it cannot write meanwhile
        for event in accepted:
            log.emit(event)
        with pytest.raises(AuditUnavailableError, match="queue full"):
            log.emit(decision("deny"))
        with pytest.raises(AuditUnavailableError, match="queue full"):
            log.emit_all([decision("deny") for _ in range(2)])
        assert log.queue_depth == 5
    with pytest.raises(AuditUnavailableError, match="queue full"):
        log.emit_all([decision("deny") for _ in range(6)])  # could never fit: at once
    log.close(timeout=10.0)
    assert [r["event_id"] for r in records(tmp_path / "audit")] == [
        e.event_id for e in accepted]


def test_closing_refuses_the_decisions_waiting_for_room(
    make_log: Callable[..., AuditLog], tmp_path: Path
) -> None:
    log = make_log(queue_size=1, batch_max=10_000, flush_interval=60.0, queue_wait=60.0)
    log.emit(decision("deny"))
    with log._wlock:  # the writer cannot make room
        thread, outcome = emit_waiting(log)
        closing = threading.Thread(target=log.close, kwargs={"timeout": 10.0})
        closing.start()
        thread.join(timeout=10.0)  # woken by close(), well before its 60 s
        assert not thread.is_alive()
    closing.join(timeout=30.0)
    [error] = outcome
    assert isinstance(error, AuditUnavailableError)
    assert len(records(tmp_path / "audit")) == 1  # the one accepted before


def test_a_batch_is_kept_whole_or_refused_whole(
    make_log: Callable[..., AuditLog], tmp_path: Path
) -> None:
    log = make_log(queue_size=10, batch_max=10_000, flush_interval=60.0, queue_wait=0)
    first = [decision("allow") for _ in range(6)]
    log.emit_all(first)
    assert log.queue_depth == 6
    with pytest.raises(AuditUnavailableError, match="queue full"):
        log.emit_all([decision("deny") for _ in range(5)])  # room for 4 of 5: none kept
    assert log.queue_depth == 6
    last = [decision("deny") for _ in range(4)]
    log.emit_all(last)
    with pytest.raises(ValueError, match="decision events only"):
        log.emit_all([admin()])
    log.close(timeout=10.0)
    written = records(tmp_path / "audit")
    assert [r["details"]["count"] for r in written] == [6, 4]  # one record per batch
    assert [d["decision_id"] for r in written for d in r["details"]["decisions"]] == [
        e.details["decision_id"] for e in first + last]


def _one_call(outcomes: list[str], moment: float = 1_800_000_000.25) -> list[Any]:
    """Decisions as one AuthorizeBatch call emits them: one caller, address and time."""
    events = [decision(outcome) for outcome in outcomes]
    for event in events:
        event.time = moment
    return events


def test_one_calls_decisions_are_one_record_and_verify(
    make_log: Callable[..., AuditLog], tmp_path: Path
) -> None:
    log = make_log()
    mixed, same = _one_call(["allow", "deny", "allow"]), _one_call(["deny", "deny"], 1.8e9 + 1)
    log.emit_all(mixed)
    log.emit_all(same)
    apart = _one_call(["allow", "allow"])
    apart[1].time += 1.0  # not one call: a record each
    log.emit_all(apart)
    log.close(timeout=10.0)
    written = records(tmp_path / "audit")
    assert [(r["type"], r["outcome"]) for r in written] == [
        ("decision.batch", "mixed"), ("decision.batch", "deny"),
        ("decision", "allow"), ("decision", "allow")]
    first = written[0]
    assert first["event_id"] == mixed[0].event_id and first["time"] == "2027-01-15T08:00:00.250000Z"
    assert first["details"]["count"] == 3
    entries = first["details"]["decisions"]
    assert [e["outcome"] for e in entries] == ["allow", "deny", "allow"]
    assert entries[1] == {**dict(mixed[1].details), "outcome": "deny"}
    assert all(r["hash"] == record_hash(r) for r in written)
    assert verify_dir(tmp_path / "audit").records == 4


def test_a_decision_batch_needs_a_decision() -> None:
    with pytest.raises(ValueError, match="at least one decision"):
        DecisionBatch([])


def test_a_batch_record_changed_on_disk_fails_verification(
    make_log: Callable[..., AuditLog], tmp_path: Path
) -> None:
    log = make_log()
    log.emit_all(_one_call(["deny", "deny", "deny"]))
    log.emit(decision("allow"))
    log.close(timeout=10.0)
    path = next((tmp_path / "audit").glob("audit-*.jsonl"))
    path.write_text(path.read_text().replace('"outcome":"deny"', '"outcome":"allow"', 1))
    with pytest.raises(Exception, match="hash"):
        verify_dir(tmp_path / "audit")


def test_sampling_applies_to_each_decision_of_a_batch(
    make_log: Callable[..., AuditLog], tmp_path: Path
) -> None:
    log = make_log(sample_allow=0.0)
    log.emit_all(_one_call(["allow", "deny", "allow", "deny"]))
    log.emit_all(_one_call(["allow", "deny"]))  # one decision left: a plain record
    log.emit_all(_one_call(["allow", "allow"]))  # none left: no record
    log.close(timeout=10.0)
    written = records(tmp_path / "audit")
    assert [(r["type"], r["outcome"]) for r in written] == [
        ("decision.batch", "deny"), ("decision", "deny")]
    assert written[0]["details"]["count"] == 2
    assert log.sampled_out == 5


def test_concurrent_emitters_keep_the_chain_linear(
    make_log: Callable[..., AuditLog], tmp_path: Path
) -> None:
    log = make_log(max_file_bytes=64 * 1024, batch_max=64)
    ids: list[str] = []
    lock = threading.Lock()

    def decisions() -> None:
        for _ in range(300):
            event = decision("deny")
            log.emit(event)
            with lock:
                ids.append(event.event_id)

    def admins() -> None:
        for _ in range(40):
            event = admin()
            log.emit(event)
            with lock:
                ids.append(event.event_id)

    threads = [threading.Thread(target=decisions) for _ in range(3)]
    threads.append(threading.Thread(target=admins))
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    log.close()
    report = verify_dir(tmp_path / "audit")
    written = [r["event_id"] for r in records(tmp_path / "audit") if r["type"] != "chain.seal"]
    assert sorted(written) == sorted(ids)
    assert report.records == len(ids) + report.files - 1


def test_the_writer_lets_waiting_calls_run_every_16_records(
    make_log: Callable[..., AuditLog], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A decision that arrives while the writer formats a batch waits for at most 16
    # records: the writer yields the core (and the GIL) before records 1, 17, 33...
    yields: list[None] = []
    log = make_log()
    monkeypatch.setattr(audit_log, "_yield", lambda: yields.append(None))
    for _ in range(100):
        log.emit(decision("allow"))
    log.close()
    assert len(yields) == 7  # before records 1, 17, 33, 49, 65, 81 and 97
    assert verify_dir(tmp_path / "audit").records == 100


def test_fsync_always_and_never_write_verifiable_trails(
    make_log: Callable[..., AuditLog], tmp_path: Path
) -> None:
    for policy in ("always", "never"):
        log = make_log(dir=tmp_path / policy, fsync=policy)
        for _ in range(5):
            log.emit(decision("deny"))
        log.emit(admin())
        log.close()
        assert verify_dir(tmp_path / policy).records == 6


def test_null_audit_log_and_factory(tmp_path: Path) -> None:
    null = create_audit_log(AuditConfig(dir=tmp_path / "x", enabled=False), clock=FakeClock())
    assert isinstance(null, NullAuditLog)
    null.start()
    null.emit(decision("deny"))
    assert null.healthy and null.probe() and null.queue_depth == 0
    null.close()
    assert not (tmp_path / "x").exists()
    real = create_audit_log(AuditConfig(dir=tmp_path / "y"), clock=FakeClock())
    assert isinstance(real, AuditLog)
    assert not real.healthy  # not started yet: decisions are refused
    with pytest.raises(AuditUnavailableError):
        real.emit(decision("allow"))


def test_config_section_from_toml_table(tmp_path: Path) -> None:
    config = build_section(
        AuditConfig, {"dir": str(tmp_path), "fsync": "always", "sample_allow": 0.5},
        where="[audit]",
    )
    assert config.dir == tmp_path and config.fsync == "always" and config.sample_allow == 0.5
    with pytest.raises(ConfigError, match=r"\[audit\].fsync"):
        build_section(AuditConfig, {"fsync": "sometimes"}, where="[audit]")
    with pytest.raises(ConfigError, match="sample_allow"):
        build_section(AuditConfig, {"sample_allow": 1.5}, where="[audit]")
    with pytest.raises(ConfigError, match="queue_size"):
        build_section(AuditConfig, {"queue_size": 0}, where="[audit]")
    with pytest.raises(ConfigError, match="queue_wait must be 0 or more seconds"):
        build_section(AuditConfig, {"queue_wait": -1}, where="[audit]")
    assert build_section(AuditConfig, {"queue_wait": 0}, where="[audit]").queue_wait == 0


def test_writer_probes_without_traffic(make_log: Callable[..., AuditLog]) -> None:
    log = make_log()
    assert log.healthy and log.probe()
    wait_until(lambda: log.queue_depth == 0)


def test_exported_names_are_exactly_the_intended_ones() -> None:
    import pdp.audit

    assert sorted(pdp.audit.__all__) == [
        "AuditConfig", "AuditCorruptError", "AuditLog", "NullAuditLog", "VerifyReport",
        "create_audit_log", "verify",
    ]
    assert all(hasattr(pdp.audit, name) for name in pdp.audit.__all__)


def _call(effects: str, moment: float = 1_800_000_000.25) -> DecisionCall:
    """A call's decisions as the server hands them over (a = allow, d = deny)."""
    n = len(effects)
    return DecisionCall(
        "spiffe://t/svc", "ipv4:127.0.0.1:7", moment,
        [Request(Subject("user", "alice"), Action("read"), Resource("doc", f"d{i}"))
         for i in range(n)],
        [Decision(Effect.ALLOW if e == "a" else Effect.DENY, "r1", "why", "1-ab")
         for e in effects],
        [f"call-{moment}-{i}" for i in range(n)])


def test_a_calls_decisions_are_one_record_kept_whole_or_refused_whole(
    make_log: Callable[..., AuditLog], tmp_path: Path
) -> None:
    """The server's DecisionCall: one decision.batch record of its decisions, read from its
    lists; refused whole when the queue has no room for all; one decision a plain record."""
    log = make_log(queue_size=5, batch_max=10_000, flush_interval=60.0, queue_wait=0)
    mixed = _call("ada")
    log.emit_all(mixed)
    with pytest.raises(AuditUnavailableError, match="queue full"):
        log.emit_all(_call("aaa", 1.8e9 + 1))  # room for 2 of 3: none kept
    assert log.queue_depth == 3
    log.emit_all(_call("d", 1.8e9 + 2))
    log.close(timeout=10.0)
    written = records(tmp_path / "audit")
    assert [(r["type"], r["outcome"]) for r in written] == [
        ("decision.batch", "mixed"), ("decision", "deny")]
    first = written[0]
    assert first["event_id"] == mixed.idents[0] and first["actor"] == "spiffe://t/svc"
    assert first["details"]["decisions"] == [
        {**dict(event.details), "outcome": event.outcome} for event in mixed]
    assert verify_dir(tmp_path / "audit").records == 2


def test_sampling_applies_to_each_decision_of_a_call(
    make_log: Callable[..., AuditLog], tmp_path: Path
) -> None:
    log = make_log(sample_allow=0.0)
    log.emit_all(_call("adad"))
    log.emit_all(_call("aa", 1.8e9 + 1))  # none left: no record
    log.close(timeout=10.0)
    written = records(tmp_path / "audit")
    assert [(r["type"], r["outcome"], r["details"]["count"]) for r in written] == [
        ("decision.batch", "deny", 2)]
    assert log.sampled_out == 4
