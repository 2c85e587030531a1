"""Tampering with an audit trail: every kind of change is found by `pdp audit verify`,
which names the first bad record (file and line)."""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

import pytest
from audit_helpers import admin, decision

from pdp.audit import AuditConfig, AuditLog, verify
from pdp.audit.commands import register
from pdp.audit.records import canonical
from pdp.clock import FakeClock
from pdp.errors import AuditVerificationError


def run_cli(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="pdp")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(list(argv))
    code: int = args.func(args)
    return code


@pytest.fixture
def trail(tmp_path: Path) -> Path:
    """A closed trail of 60 decisions and 5 admin events over several 4 KiB files."""
    directory = tmp_path / "audit"
    log = AuditLog(
        AuditConfig(dir=directory, max_file_bytes=4096, flush_interval=0.01), clock=FakeClock()
    )
    log.start()
    for i in range(60):
        log.emit(decision("deny" if i % 2 else "allow"))
        if i % 12 == 0:
            log.emit(admin())
    log.close()
    assert len(list(directory.glob("audit-*.jsonl"))) >= 4
    return directory


def lines_of(path: Path) -> list[str]:
    return path.read_text().splitlines(keepends=True)


def put(path: Path, lines: list[str]) -> None:
    path.write_text("".join(lines))


def forge(record: dict[str, object]) -> str:
    """A record with a correct hash, as an attacker who knows the format would write it."""
    body = {k: v for k, v in record.items() if k != "hash"}
    body["hash"] = hashlib.sha256(canonical(body)).hexdigest()
    return json.dumps(body) + "\n"


def expect_bad(directory: Path, file: str, line: int, words: str,
               capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(AuditVerificationError) as caught:
        verify(directory)
    assert Path(caught.value.file).name == file
    assert caught.value.line == line
    assert words in caught.value.reason
    assert run_cli("audit", "verify", str(directory)) == 1
    err = capsys.readouterr().err
    assert f"{file}:{line}:" in err and words in err


def test_untouched_trail_verifies(trail: Path, capsys: pytest.CaptureFixture[str]) -> None:
    report = verify(trail)
    assert run_cli("audit", "verify", str(trail)) == 0
    summary = f"ok: {report.records} records in {report.files} files"
    assert capsys.readouterr().out.strip() == summary


def test_changed_record_detected(trail: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = trail / "audit-000002.jsonl"
    lines = lines_of(path)
    record = json.loads(lines[2])
    record["outcome"] = "success" if record["outcome"] != "success" else "failure"
    lines[2] = json.dumps(record, separators=(",", ":")) + "\n"  # hash left as it was
    put(path, lines)
    expect_bad(trail, "audit-000002.jsonl", 3, "record was changed", capsys)


def test_removed_record_detected(trail: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = trail / "audit-000001.jsonl"
    lines = lines_of(path)
    del lines[2]
    put(path, lines)
    expect_bad(trail, "audit-000001.jsonl", 3, "removed", capsys)


def test_inserted_copy_detected(trail: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = trail / "audit-000001.jsonl"
    lines = lines_of(path)
    lines.insert(4, lines[1])  # replay of an old, validly hashed record
    put(path, lines)
    expect_bad(trail, "audit-000001.jsonl", 5, "inserted", capsys)


def test_inserted_forged_record_detected(trail: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = trail / "audit-000002.jsonl"
    lines = lines_of(path)
    before = json.loads(lines[1])
    fake = dict(before, seq=before["seq"] + 1, prev=before["hash"], outcome="allow")
    lines.insert(2, forge(fake))  # perfectly chained to its predecessor...
    put(path, lines)
    # ...so the break shows at the next genuine record, which now repeats a seq.
    expect_bad(trail, "audit-000002.jsonl", 4, "inserted", capsys)


def test_reordered_records_detected(trail: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = trail / "audit-000003.jsonl"
    lines = lines_of(path)
    lines[1], lines[2] = lines[2], lines[1]
    put(path, lines)
    expect_bad(trail, "audit-000003.jsonl", 2, "reordered", capsys)


def test_truncated_partial_line_detected(trail: Path, capsys: pytest.CaptureFixture[str]) -> None:
    last = sorted(trail.glob("audit-*.jsonl"))[-1]
    lines = lines_of(last)
    put(last, [*lines[:-1], lines[-1][:40]])
    expect_bad(trail, last.name, len(lines), "partial record", capsys)


def test_truncated_whole_records_detected(trail: Path, capsys: pytest.CaptureFixture[str]) -> None:
    last = sorted(trail.glob("audit-*.jsonl"))[-1]
    lines = lines_of(last)
    assert len(lines) > 3
    put(last, lines[:-2])  # every remaining line intact: only audit.head can tell
    expect_bad(trail, last.name, len(lines) - 1, "truncated", capsys)


def test_records_cut_from_a_middle_file_detected(
    trail: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = trail / "audit-000002.jsonl"
    lines = lines_of(path)
    put(path, lines[:-3])  # the seal and two records before it
    expect_bad(trail, "audit-000002.jsonl", len(lines) - 2, "chain.seal", capsys)


def test_missing_middle_file_detected(trail: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (trail / "audit-000002.jsonl").unlink()
    expect_bad(trail, "audit-000003.jsonl", 1, "missing audit file audit-000002.jsonl", capsys)


def test_missing_first_file_detected_unless_pruned(
    trail: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (trail / "audit-000001.jsonl").unlink()
    expect_bad(trail, "audit-000002.jsonl", 1, "missing audit file audit-000001.jsonl", capsys)
    report = verify(trail, allow_pruned=True)  # retention removed the oldest file
    assert report.first_seq > 1
    assert run_cli("audit", "verify", "--allow-pruned", str(trail)) == 0


def test_deleted_head_detected(trail: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (trail / "audit.head").unlink()
    expect_bad(trail, "audit.head", 1, "audit.head is missing", capsys)


def test_cli_tail_prints_last_records(trail: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli("audit", "tail", str(trail), "-n", "25") == 0
    out = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    report = verify(trail)
    assert [r["seq"] for r in out] == list(range(report.last_seq - 24, report.last_seq + 1))


def test_cli_on_missing_directory_fails_cleanly(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_cli("audit", "verify", str(tmp_path / "nope")) == 2
    assert "not a directory" in capsys.readouterr().err
    assert run_cli("audit", "tail", str(tmp_path / "nope")) == 2


def test_a_trail_started_but_never_written_verifies(tmp_path: Path) -> None:
    """A server whose listener failed to bind leaves an empty file and audit.head at seq 0:
    nothing was written, so nothing is missing (it used to be reported as truncated)."""
    directory = tmp_path / "audit"
    log = AuditLog(AuditConfig(dir=directory, flush_interval=0.01), clock=FakeClock())
    log.start()
    log.close()
    assert json.loads((directory / "audit.head").read_text())["seq"] == 0
    report = verify(directory)
    assert (report.records, report.files) == (0, 1)
    assert run_cli("audit", "verify", str(directory)) == 0


def test_a_head_at_seq_0_with_records_after_it_verifies(trail: Path) -> None:
    """A crash after the first write but before audit.head was updated: the head lags, as
    it may at any seq, and the records after it are checked by their chain."""
    (trail / "audit.head").write_text(json.dumps(
        {"seq": 0, "hash": "0" * 64, "file": "audit-000001.jsonl"}) + "\n")
    assert verify(trail).records > 60


def test_a_head_at_seq_0_with_another_hash_is_refused(
        trail: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (trail / "audit.head").write_text(json.dumps(
        {"seq": 0, "hash": "1" * 64, "file": "audit-000001.jsonl"}) + "\n")
    expect_bad(trail, "audit.head", 1, "seq 0 with a hash other than", capsys)
