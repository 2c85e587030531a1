"""Fail closed: an unwritable trail refuses decisions and admin events, and recovers;
fail_open keeps answering; SIGTERM with a full queue loses no accepted event.

Tests run as root, where chmod 0500 does not stop writes. An unwritable directory is
made by renaming the audit directory away and putting a regular file at its path:
every create or stat below it then fails with ENOTDIR, for root too, while the open
file descriptor of the current audit file still points at the moved file (so a write
to it would silently "succeed" — the log must notice that). Disk full is a real
ENOSPC on a tiny tmpfs (skipped where mounting is not permitted).
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from audit_helpers import admin, decision, emit_waiting, wait_until

from pdp.audit import AuditLog
from pdp.audit import verify as verify_dir
from pdp.errors import AuditUnavailableError

ROOT = Path(__file__).resolve().parents[2]


def break_dir(directory: Path) -> Path:
    moved = directory.with_name(directory.name + ".moved")
    directory.rename(moved)
    directory.write_text("not a directory")
    return moved


def restore_dir(directory: Path, moved: Path) -> None:
    directory.unlink()
    moved.rename(directory)


def ids(directory: Path) -> list[str]:
    out = []
    for path in sorted(directory.glob("audit-*.jsonl")):
        out.extend(json.loads(x)["event_id"] for x in path.read_text().splitlines())
    return out


def test_unwritable_audit_dir_fails_closed_and_recovers(
    make_log: Callable[..., AuditLog], tmp_path: Path
) -> None:
    directory = tmp_path / "audit"
    log = make_log()
    before = decision("allow")
    log.emit(before)
    log.emit(admin())
    moved = break_dir(directory)
    with pytest.raises(AuditUnavailableError, match="audit unavailable"):
        log.emit(admin(kind=admin().type))  # an admin action cannot be recorded: it fails
    assert not log.healthy
    assert "ENOTDIR" in log.last_error
    with pytest.raises(AuditUnavailableError):
        log.emit(decision("allow"))  # the server answers DENY "audit unavailable"
    restore_dir(directory, moved)
    wait_until(lambda: log.healthy)  # the writer's retry finds it writable again
    after = decision("allow")
    log.emit(after)
    log.close()
    written = ids(directory)
    assert written[0] == before.event_id and written[-1] == after.event_id
    verify_dir(directory)


def test_a_decision_waiting_for_room_is_refused_when_the_trail_fails(
    make_log: Callable[..., AuditLog], tmp_path: Path
) -> None:
    """A decision waiting in a full queue is refused as soon as the trail is found
    unwritable, not after its queue_wait; the decisions queued before it are kept."""
    directory = tmp_path / "audit"
    log = make_log(queue_size=2, batch_max=10_000, flush_interval=60.0, queue_wait=60.0)
    queued = [decision("deny"), decision("deny")]
    with log._wlock:  # the writer cannot take the two off the queue meanwhile
        for event in queued:
            log.emit(event)
        thread, outcome = emit_waiting(log)
        # What the writer does when a write fails (here without touching the disk, so the
        # queue stays full and nothing but the failure can end the wait).
        log._set_failed(OSError(errno.ENOSPC, "No space left on device"))
        thread.join(timeout=10.0)  # woken by the failure, well before its 60 s
        assert not thread.is_alive()
    [error] = outcome
    assert isinstance(error, AuditUnavailableError) and "ENOSPC" in str(error)
    wait_until(lambda: log.healthy and log.queue_depth == 0)  # the writer's repair
    log.close()
    assert ids(directory) == [e.event_id for e in queued]
    verify_dir(directory)


def test_audit_dir_replaced_while_decisions_queued_loses_none(
    make_log: Callable[..., AuditLog], tmp_path: Path
) -> None:
    directory = tmp_path / "audit"
    log = make_log(flush_interval=60.0, batch_max=100_000)
    accepted = []
    for _ in range(20):
        event = decision("deny")
        log.emit(event)
        accepted.append(event.event_id)
    moved = break_dir(directory)
    assert not log.probe()  # the queued batch cannot be written: kept in memory
    assert log.queue_depth == 20 and not log.healthy
    restore_dir(directory, moved)
    assert log.probe()
    log.close()
    assert ids(directory) == accepted
    verify_dir(directory)


def test_a_batch_that_could_not_be_written_is_kept_and_counted_until_it_is(
    make_log: Callable[..., AuditLog], tmp_path: Path
) -> None:
    directory = tmp_path / "audit"
    log = make_log(flush_interval=60.0, batch_max=100_000)
    batch = [decision(outcome) for outcome in ("allow", "deny", "allow")]
    for event in batch:
        event.time = 1_800_000_000.5  # one AuthorizeBatch call: one record
    log.emit_all(batch)
    assert log.queue_depth == 3
    moved = break_dir(directory)
    assert not log.probe()  # the record cannot be written: back in the queue, still 3
    assert log.queue_depth == 3 and not log.healthy
    restore_dir(directory, moved)
    assert log.probe() and log.queue_depth == 0
    log.close()
    assert ids(directory) == [batch[0].event_id]  # one decision.batch record
    verify_dir(directory)


def test_audit_files_deleted_continue_chain_in_new_file(
    make_log: Callable[..., AuditLog], tmp_path: Path
) -> None:
    directory = tmp_path / "audit"
    log = make_log()
    log.emit(admin())
    (directory / "audit-000001.jsonl").unlink()  # the writer's file vanishes under it
    log.emit(admin())  # not written into the unlinked inode: a new file continues the chain
    log.close()
    assert (directory / "audit-000002.jsonl").exists()
    with pytest.raises(Exception, match="missing audit file"):
        verify_dir(directory)  # ... and the loss stays visible


def test_fail_open_keeps_accepting_while_unwritable(
    make_log: Callable[..., AuditLog], tmp_path: Path
) -> None:
    directory = tmp_path / "audit"
    log = make_log(fail_open=True, queue_size=5)
    moved = break_dir(directory)
    log.emit(admin())  # not raised: kept in memory
    assert not log.healthy
    for _ in range(10):
        log.emit(decision("deny"))  # never refused; beyond the bound they are lost
    assert log.queue_depth == 5
    assert log.lost == 6
    restore_dir(directory, moved)
    wait_until(lambda: log.healthy and log.queue_depth == 0)
    log.close()
    assert len(ids(directory)) == 5
    verify_dir(directory)


@pytest.fixture
def tiny_fs(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "tiny"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=96k", "tmpfs", str(mount)],
        capture_output=True, check=False,
    )
    if done.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs CAP_SYS_ADMIN)")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_disk_full_fails_closed_and_recovers(
    make_log: Callable[..., AuditLog], tiny_fs: Path
) -> None:
    directory = tiny_fs / "audit"
    log = make_log(dir=directory)
    log.emit(admin())
    filler = tiny_fs / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        while os.write(fd, b"x" * 4096):
            pass
    except OSError as exc:
        assert exc.errno == 28  # ENOSPC: the disk is full now
    finally:
        os.close(fd)
    with pytest.raises(AuditUnavailableError, match="ENOSPC"):
        log.emit(admin(reason="x" * 8000))
    assert not log.healthy
    filler.unlink()
    wait_until(lambda: log.healthy)
    log.emit(admin())
    log.close()
    assert verify_dir(directory).records == 2


CHILD = textwrap.dedent(
    """
    import signal, sys, time
    sys.path.insert(0, {tests!r})
    from audit_helpers import decision
    from pdp.audit import AuditConfig, AuditLog
    from pdp.clock import FakeClock
    from pdp.errors import AuditUnavailableError

    log = AuditLog(AuditConfig(dir={dir!r}, queue_size=3000, batch_max=100000,
                               flush_interval=600.0, queue_wait=0), clock=FakeClock())
    log.start()

    def on_term(signum, frame):
        log.close(timeout=30.0)
        sys.exit(0 if log.lost == 0 else 3)

    signal.signal(signal.SIGTERM, on_term)
    refused = 0
    with open({ids!r}, "w") as out:
        for _ in range(3010):
            event = decision("deny")
            try:
                log.emit(event)
            except AuditUnavailableError:
                refused += 1
                continue
            out.write(event.event_id + "\\n")
    print("ready", log.queue_depth, refused, flush=True)
    while True:
        time.sleep(1)
    """
)


def test_sigterm_with_full_queue_loses_no_accepted_event(tmp_path: Path) -> None:
    directory, accepted = tmp_path / "audit", tmp_path / "accepted.txt"
    script = CHILD.format(tests=str(Path(__file__).parent), dir=str(directory), ids=str(accepted))
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    with subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, env=env
    ) as child:
        try:
            assert child.stdout is not None
            assert child.stdout.readline().split() == ["ready", "3000", "10"]  # queue full
            child.send_signal(signal.SIGTERM)
            assert child.wait(timeout=60) == 0
        finally:
            if child.poll() is None:
                child.kill()
    assert ids(directory) == accepted.read_text().split()
    assert verify_dir(directory).records == 3000


def test_start_in_unwritable_place_fails_closed_until_it_is_fixed(
    make_log: Callable[..., AuditLog], tmp_path: Path
) -> None:
    directory = tmp_path / "audit"
    directory.write_text("a file where the audit directory should be")
    log = make_log()  # does not raise: the service starts, failing closed
    assert not log.healthy
    with pytest.raises(AuditUnavailableError, match="audit unavailable"):
        log.emit(decision("allow"))
    with pytest.raises(AuditUnavailableError):
        log.emit(admin())
    directory.unlink()
    directory.mkdir()
    wait_until(lambda: log.healthy)
    log.emit(admin())
    log.close()
    assert verify_dir(directory).records == 1
