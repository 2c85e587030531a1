"""The audit trail writer: decisions through a bounded queue and a writer thread, every
other event written synchronously, all under one lock so the hash chain stays linear.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import hashlib
import logging
import os
import stat
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pdp.audit.config import AuditConfig
from pdp.audit.records import (
    GENESIS,
    RECOVERED,
    SEAL,
    DecisionBatch,
    Head,
    file_name,
    format_fields,
    format_record,
    iter_lines,
    list_files,
    read_head,
    record_hash,
    write_head,
)
from pdp.audit.verify import parse_record
from pdp.clock import Clock
from pdp.errors import AuditError, AuditUnavailableError
from pdp.events import DecisionCall, Event, EventType, new_event_id

__all__ = ["RETRY_INTERVAL", "AuditCorruptError", "AuditLog", "NullAuditLog", "create_audit_log"]

RETRY_INTERVAL = 0.5  # seconds between attempts to write again after a failure
_log = logging.getLogger("pdp.audit")


# Every 16 records it formats, the writer yields the core, and the GIL with it (os.sched_yield
# releases it around the call): a decision that arrives while a batch is being formatted, up
# to batch_max records every flush_interval, waits for ~16 records rather than for the whole
# batch. A waiting thread on another core may lose the GIL to the writer again; it then waits
# for the rest of the batch, as before (docs/performance.md, item 38).
_YIELD_MASK = 15
_yield = os.sched_yield


class AuditCorruptError(AuditError):
    """The existing trail's tail is not intact (changed record, head ahead of the files);
    the log refuses to continue it. Run ``pdp audit verify`` and move the directory aside."""


class _WriteFailedError(Exception):
    def __init__(self, written: int, cause: OSError) -> None:
        super().__init__(str(cause))
        self.written = written
        self.cause = cause


class AuditLog:
    """The hash-chained audit trail of one process; an EventSink.

    ``emit`` of a decision queues it (raising AuditUnavailableError when the log is
    unhealthy, or the queue stays full for ``queue_wait`` seconds, unless ``fail_open``);
    any other event is written, flushed and (unless fsync="never") fsynced before ``emit``
    returns.
    """

    def __init__(self, config: AuditConfig, *, clock: Clock) -> None:
        self.config = config
        self._clock = clock
        self._dir = Path(config.dir)
        self.healthy = False  # read on the hot path: a plain attribute
        self.last_error = "not started"
        self.sampled_out = 0  # allow decisions dropped by sampling
        self.lost = 0  # events dropped (fail_open overflow, or unwritable at close)
        self._threshold = int(config.sample_allow * 2**64)
        self._sampling = self._threshold < 2**64  # else every allow is kept: no hash
        self._queue_size = config.queue_size
        self._batch_max = config.batch_max
        self._sync = config.fsync != "never"
        lock = threading.RLock()
        self._cond = threading.Condition(lock)  # guards _pending, _closing; wakes the writer
        # Decisions waiting for room in a full queue (see _wait_for_room) wait on _room, and
        # the writer wakes them when it takes a batch off the queue.
        self._room = threading.Condition(lock)
        self._waiting = 0  # how many wait on _room (under the lock)
        self._queue_wait = config.queue_wait
        self._wlock = threading.Lock()  # the one writer order: held while records are chained
        self._pending: collections.deque[Event | DecisionBatch] = collections.deque()
        # Decisions queued inside DecisionBatch records beyond one each: the queue's bound
        # counts decisions. Updated without a lock: `+=` on an attribute is not interrupted
        # by another thread in CPython (no eval-breaker check between its load and store).
        self._extra = 0
        self._closing = False
        self._started = False
        self._accepting = False  # started and not closing: the one flag the hot path reads
        self._thread: threading.Thread | None = None
        # chain state, only touched under _wlock
        self._fd: int | None = None
        self._ident: tuple[int, int] = (0, 0)
        self._number = 1
        self._size = 0
        self._seq = 0
        self._prev = GENESIS
        self._ready = False  # chain state known (resumed from disk)
        self._dirty = False  # a write failed: repair before writing again
        self._exclusive = False  # the next file opened must be new
        self._abandoned = ""  # why this log no longer owns its directory (see abandon)

    # --- public surface -----------------------------------------------------------

    @property
    def queue_depth(self) -> int:
        """Events accepted but not yet written."""
        return len(self._pending) + self._extra

    def start(self) -> None:
        """Resume the chain from the directory and start the writer thread.

        Raises AuditCorruptError when the existing tail is not intact. An unwritable
        directory does not raise: the log starts unhealthy and keeps retrying.
        """
        if self._started:
            return
        with self._wlock:
            try:
                self._dir.mkdir(parents=True, exist_ok=True, mode=0o750)
                self._resume()
                self._set_healthy()
            except OSError as exc:
                self._set_failed(exc)
        self._started = True
        self._accepting = True
        self._thread = threading.Thread(target=self._run, name="pdp-audit-writer", daemon=True)
        self._thread.start()

    def emit(self, event: Event) -> None:
        """Accept ``event``; raises AuditUnavailableError when it cannot be kept."""
        if event.type is not EventType.DECISION:
            self._emit_sync(event)
            return
        # A decision: once per Authorize call on every gRPC thread, so no lock (deque append
        # and len are atomic; a lock here made the handler threads convoy) and no call more
        # than needed. The server stops taking calls before close(), so none races the close.
        if self._sampling and event.outcome == "allow" and self._sampled_out(event):
            return
        pending = self._pending
        if ((self.healthy and self._accepting and len(pending) + self._extra < self._queue_size)
                or self._wait_for_room(1)):
            pending.append(event)
            if len(pending) >= self._batch_max:
                with self._cond:  # a full batch: write it now rather than at the next tick
                    self._cond.notify()
            return
        self._emit_decision_refused(event)

    def emit_all(self, events: Sequence[Event]) -> None:
        """Accept the decision events of one batch, all or none; raises
        AuditUnavailableError (having kept none) when they cannot all be kept.

        Decisions of one call (one caller, address and time, as AuthorizeBatch's) are
        written as one ``decision.batch`` record; others one record each. A DecisionCall
        (the server's) is queued as it is, its records formatted by the writer thread."""
        call = type(events) is DecisionCall  # one call's decisions, by construction
        if not call and any(e.type is not EventType.DECISION for e in events):
            raise ValueError("emit_all takes decision events only")
        if self._sampling:
            events = [e for e in events
                      if not (e.outcome == "allow" and self._sampled_out(e))]
            call = False
        count = len(events)
        pending = self._pending
        if ((self.healthy and self._accepting
                and len(pending) + self._extra + count <= self._queue_size)
                or self._wait_for_room(count)):
            if count > 1 and (call or _one_call(events)):
                self._extra += count - 1
                pending.append(DecisionBatch(events))
            else:
                pending.extend(events)
            if len(pending) >= self._batch_max:
                with self._cond:
                    self._cond.notify()
            return
        if self.healthy and self._accepting and not self.config.fail_open:
            # Running, but the queue had no room for the whole batch in time: keep none.
            raise AuditUnavailableError("audit unavailable: queue full")
        for event in events:  # refused (the first raises) or kept fail-open, as one by one
            self._emit_decision_refused(event)

    def probe(self) -> bool:
        """Try to make the log writable again (writes queued events); True when healthy."""
        with self._wlock:
            if self._repair():
                self._drain_locked(limit=None)
        return self.healthy

    def abandon(self, reason: str) -> None:
        """Stop writing for good: the directory is no longer this log's (its server found
        its lock file removed or replaced, so another server may own it now, and one chain
        with two writers would fork). From now on the log is unhealthy: decisions are
        refused (or, with ``fail_open``, queued until the queue is full and then counted
        lost) and nothing more is written, not even into a directory recreated at the same
        path."""
        with self._wlock:
            self._abandoned = reason
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
            self._set_failed(RuntimeError(reason))

    def close(self, timeout: float = 10.0) -> None:
        """Write every accepted event, then stop; waits at most ``timeout`` seconds.

        Events still unwritten after ``timeout`` (the trail stayed unwritable) are
        counted in ``lost`` and logged; nothing accepted is dropped while writable.
        """
        with self._cond:
            self._closing = True
            self._accepting = False
            self._cond.notify_all()
            self._room.notify_all()  # decisions waiting for room: refused now
        deadline = time.monotonic() + timeout
        if self._thread is not None:
            self._thread.join(max(0.0, timeout))
        if self._wlock.acquire(timeout=max(0.1, deadline - time.monotonic())):
            try:
                with self._cond:
                    left = len(self._pending) + self._extra
                    self._pending.clear()
                    self._extra = 0
                if left:
                    self.lost += left
                    _log.error("audit log closed with %d unwritten events", left)
                if self._fd is not None:
                    os.close(self._fd)
                    self._fd = None
            finally:
                self._wlock.release()
        self.healthy = False
        self.last_error = "closed"

    # --- emit paths -------------------------------------------------------------------

    def _sampled_out(self, event: Event) -> bool:
        key = str(event.details.get("decision_id") or event.event_id).encode()
        if int.from_bytes(hashlib.sha256(key).digest()[:8], "big") >= self._threshold:
            self.sampled_out += 1
            return True
        return False

    def _wait_for_room(self, count: int) -> bool:
        """Wait, at most ``queue_wait`` seconds, for room for ``count`` more decisions in a
        full queue, with the writer woken to make it: back-pressure on the callers when the
        writer falls behind, where refusing at once answered DENY to a burst. True when
        there is room (the caller queues them); False at once when waiting is off or could
        never help (more than the whole queue), and when the time is up or the trail stops
        being writable or running meanwhile: the caller then refuses (or fails open) as
        before."""
        wait = self._queue_wait
        if not (wait and self.healthy and self._accepting) or count > self._queue_size:
            return False
        deadline = time.monotonic() + wait
        with self._cond:
            self._waiting += 1
            try:
                while self.healthy and self._accepting:
                    if len(self._pending) + self._extra + count <= self._queue_size:
                        return True
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    self._cond.notify()  # the writer: write now, not at its next tick
                    self._room.wait(left)
            finally:
                self._waiting -= 1
        return False

    def _emit_decision_refused(self, event: Event) -> None:
        """A decision when the log is unhealthy, not running or full: raise, or fail open."""
        fail_open = self.config.fail_open
        if not self.healthy and not fail_open:
            raise AuditUnavailableError(f"audit unavailable: {self.last_error}")
        if self._closing or not self._started:
            if fail_open:
                self.lost += 1
                return
            raise AuditUnavailableError("audit unavailable: log not running")
        if len(self._pending) + self._extra >= self._queue_size:
            if fail_open:
                self.lost += 1
                return
            raise AuditUnavailableError("audit unavailable: queue full")
        self._pending.append(event)  # fail_open while unhealthy: kept for when it recovers
        if len(self._pending) >= self._batch_max:
            with self._cond:
                self._cond.notify()

    def _emit_sync(self, event: Event) -> None:
        if not self._started or self._closing:
            raise AuditUnavailableError("audit unavailable: log not running")
        with self._wlock:
            for _ in range(2):  # a second try after _repair moved to a fresh file
                # The decisions queued before this event go first, in order; not those that
                # keep arriving meanwhile (under load "until the queue is empty" meant until
                # the load stopped: a 100,000-rule push waited seconds for it).
                if not (self._repair() and self._drain_locked(limit=len(self._pending))):
                    break
                try:
                    self._write_events([event])
                    return
                except _WriteFailedError as exc:
                    self._set_failed(exc.cause)
            if self.config.fail_open:
                with self._cond:
                    if len(self._pending) + self._extra < self.config.queue_size:
                        self._pending.append(event)
                    else:
                        self.lost += 1
                return
            raise AuditUnavailableError(f"audit unavailable: {self.last_error}")

    # --- writer thread ----------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._cond:
                if not self._pending and not self._closing:
                    # While unhealthy, wake up to probe even with nothing queued.
                    # A timed wait: emit() does not signal every event, the writer polls.
                    self._cond.wait(self.config.flush_interval if self.healthy
                                    else RETRY_INTERVAL)
                if self._closing and not self._pending:
                    return
                if (
                    self._pending
                    and self.healthy
                    and not self._closing
                    and len(self._pending) < self.config.batch_max
                ):
                    self._cond.wait_for(
                        lambda: (self._closing or self._waiting > 0
                                 or len(self._pending) >= self.config.batch_max),
                        timeout=self.config.flush_interval,
                    )
                idle = not self._pending
            if idle and self.healthy:
                continue
            with self._wlock:
                ok = self._repair() and self._drain_locked(limit=self.config.batch_max)
            if not ok and self._pending:
                time.sleep(RETRY_INTERVAL)

    def _drain_locked(self, *, limit: int | None) -> bool:
        """Write queued events (all, or one batch); True unless a write failed."""
        while True:
            with self._cond:
                pending = self._pending
                count = len(pending) if limit is None else min(limit, len(pending))
                # popleft, not copy-and-clear: emitters append without holding _cond.
                pop = pending.popleft
                batch = [pop() for _ in range(count)]
                self._extra -= _extra_in(batch)
                if self._waiting:
                    self._room.notify_all()  # room for the decisions waiting for it
            if not batch:
                return True
            try:
                self._write_events(batch)
            except _WriteFailedError as exc:
                with self._cond:
                    back = batch[exc.written :]
                    self._pending.extendleft(reversed(back))
                    self._extra += _extra_in(back)
                self._set_failed(exc.cause)
                return False
            if limit is not None:
                return True

    # --- health -----------------------------------------------------------------------

    def _set_failed(self, exc: Exception) -> None:
        if isinstance(exc, OSError):
            reason = f"{errno.errorcode.get(exc.errno or 0, 'error')}: {exc.strerror or exc}"
        else:
            reason = str(exc)
        if self.healthy or reason != self.last_error:
            _log.error("audit trail unwritable (%s); failing %s", reason,
                       "open" if self.config.fail_open else "closed")
        self.last_error = reason
        self.healthy = False
        self._dirty = True
        with self._cond:  # wake the writer so it starts probing
            self._cond.notify_all()
            self._room.notify_all()  # decisions waiting for room: refused now

    def _set_healthy(self) -> None:
        if not self.healthy and self._started:
            _log.warning("audit trail writable again")
        self.last_error = ""
        self.healthy = True

    def _repair(self) -> bool:
        """Under _wlock: undo a failed write and prove the directory writable."""
        if self._abandoned:
            return False
        if self.healthy and not self._dirty:
            return True
        try:
            if not self._ready:
                self._resume()
            elif self._fd is not None:
                # Only a directory that is there can tell us our file is gone (no transient
                # rename window makes us abandon a file that comes back).
                if not stat.S_ISDIR(os.stat(self._dir).st_mode):
                    raise OSError(errno.ENOTDIR, "audit directory is not a directory")
                try:
                    same = _ident(os.stat(self._path())) == self._ident
                except FileNotFoundError:
                    same = False
                if same:
                    os.ftruncate(self._fd, self._size)  # drop a partly written batch
                else:  # the file was removed or replaced: continue the chain in a new file
                    os.close(self._fd)
                    self._fd = None
                    self._number += 1
                    self._exclusive = True
            self._ensure_file()
            write_head(self._dir, Head(self._seq, self._prev, file_name(self._number)),
                       sync=self._sync)
        except (OSError, AuditCorruptError) as exc:
            self._set_failed(exc)
            return False
        self._dirty = False
        self._set_healthy()
        return True

    # --- the chain ----------------------------------------------------------------------

    def _path(self) -> Path:
        return self._dir / file_name(self._number)

    def _ensure_file(self) -> None:
        if self._fd is not None:
            return
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | (os.O_EXCL if self._exclusive else 0)
        fd = os.open(self._path(), flags, 0o640)
        info = os.fstat(fd)
        self._fd, self._ident, self._size = fd, _ident(info), info.st_size
        self._exclusive = False

    def _write_events(self, events: Sequence[Event | DecisionBatch]) -> None:
        """Chain and write ``events`` in order, rotating by size; raises _WriteFailedError."""
        written = 0
        limit = self.config.max_file_bytes
        try:
            self._ensure_file()
            if _ident(os.stat(self._path())) != self._ident:
                raise OSError(errno.ESTALE, "audit file was removed or replaced")
            while written < len(events):
                lines: list[bytes] = []
                append = lines.append
                size, seq, prev = self._size, self._seq, self._prev
                for event in events[written:] if written else events:
                    if not seq & _YIELD_MASK:
                        _yield()
                    line, digest = format_record(event, seq=seq + 1, prev=prev)
                    length = len(line)
                    if size and size + length > limit:
                        break
                    append(line)
                    size += length
                    seq += 1
                    prev = digest
                if lines:
                    self._commit(lines, seq, prev)
                    written += len(lines)
                if written < len(events):
                    self._rotate()
        except OSError as exc:
            raise _WriteFailedError(written, exc) from exc

    def _internal(self, kind: str, severity: str, details: dict[str, Any]) -> tuple[bytes, str]:
        return format_fields(
            time=self._clock(), event_id=new_event_id(), type=kind, severity=severity,
            actor="pdp", peer="", outcome="success", details=details,
            seq=self._seq + 1, prev=self._prev,
        )

    def _rotate(self) -> None:
        name = file_name(self._number)
        line, digest = self._internal(
            SEAL, "info", {"file": name, "next_file": file_name(self._number + 1)}
        )
        self._commit([line], self._seq + 1, digest)
        assert self._fd is not None
        os.close(self._fd)
        self._fd = None
        self._number += 1
        self._exclusive = True
        self._ensure_file()

    def _commit(self, lines: list[bytes], seq: int, digest: str) -> None:
        """Append ``lines`` and update audit.head; on OSError undo what it can and raise."""
        assert self._fd is not None
        fd = self._fd
        offset = self._size
        try:
            if self.config.fsync == "always":
                for line in lines:
                    _write_all(fd, line)
                    os.fsync(fd)
                size = offset + sum(map(len, lines))
            else:
                data = b"".join(lines)
                _write_all(fd, data)
                if self._sync:
                    os.fsync(fd)
                size = offset + len(data)
            write_head(self._dir, Head(seq, digest, file_name(self._number)), sync=self._sync)
        except OSError:
            with contextlib.suppress(OSError):  # _repair truncates again before the next write
                os.ftruncate(fd, offset)
            raise
        self._size, self._seq, self._prev = size, seq, digest

    def _resume(self) -> None:
        """Pick up the chain from the last intact record on disk (under _wlock)."""
        try:
            head = read_head(self._dir)
        except ValueError as exc:
            raise AuditCorruptError(f"{self._dir / 'audit.head'}: {exc}") from None
        files = list_files(self._dir)
        torn: tuple[Path, int] | None = None
        last: dict[str, Any] | None = None
        last_at = ""
        number = files[-1][0] if files else 1
        for index, (_, path) in enumerate(reversed(files)):
            raw_last, line_no, torn_bytes = _tail(path)
            if index == 0 and torn_bytes:
                torn = (path, torn_bytes)
            if raw_last is not None:
                last_at = f"{path}:{line_no}"
                try:
                    last = parse_record(raw_last)
                except ValueError as exc:
                    raise AuditCorruptError(f"{last_at}: tail record unreadable: {exc}") from None
                if record_hash(last) != last["hash"]:
                    raise AuditCorruptError(f"{last_at}: tail record hash mismatch")
                break
        self._seq = last["seq"] if last else 0
        self._prev = last["hash"] if last else GENESIS
        if head is not None and (
            head.seq > self._seq or (head.seq == self._seq and head.hash != self._prev)
        ):
            raise AuditCorruptError(
                f"audit.head names seq {head.seq} in {head.file} but the trail ends at seq "
                f"{self._seq}: records were removed; run `pdp audit verify`"
            )
        self._number = number
        self._exclusive = False
        if torn is not None or (last is not None and last["type"] == SEAL and files and
                                last_at.startswith(str(files[-1][1]) + ":")):
            self._number, self._exclusive = number + 1, True
        self._fd = None
        self._ensure_file()
        self._ready = True
        if torn is not None:
            path, size = torn
            _log.error("audit file %s ends with a torn record (%d bytes); sealed as-is",
                       path.name, size)
            line, digest = self._internal(RECOVERED, "warning", {
                "file": path.name, "torn_bytes": size, "last_seq": self._seq,
                "last_hash": self._prev, "reason": "partial record at end of file (crash)",
            })
            self._commit([line], self._seq + 1, digest)
        else:
            write_head(self._dir, Head(self._seq, self._prev, file_name(self._number)),
                       sync=self._sync)


def _one_call(events: Sequence[Event]) -> bool:
    """True when ``events`` share their caller, address and time (one call's decisions)."""
    first = events[0]
    actor, peer, moment = first.actor, first.peer, first.time
    return all(e.actor == actor and e.peer == peer and e.time == moment for e in events)


def _extra_in(items: Sequence[Event | DecisionBatch]) -> int:
    """Decisions in ``items`` beyond one per record."""
    return sum(len(item.events) - 1 for item in items if type(item) is DecisionBatch)


def _ident(info: os.stat_result) -> tuple[int, int]:
    return info.st_dev, info.st_ino


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _tail(path: Path) -> tuple[bytes | None, int, int]:
    """The last complete line of ``path``, its line number, and the torn tail's size."""
    last: bytes | None = None
    last_no = 0
    torn = 0
    for number, raw, complete in iter_lines(path):
        if complete:
            last, last_no = raw, number
        else:
            torn = len(raw)
    return last, last_no, torn


class NullAuditLog:
    """The audit trail when ``enabled = false``: accepts everything, keeps nothing."""

    healthy = True
    last_error = ""
    sampled_out = 0
    lost = 0
    queue_depth = 0

    def emit(self, event: Event) -> None:
        """Discard ``event``."""

    def emit_all(self, events: Sequence[Event]) -> None:
        """Discard ``events``."""

    def abandon(self, reason: str) -> None:
        """Nothing is written anyway."""

    def start(self) -> None:
        """Nothing to start."""

    def probe(self) -> bool:
        """Always healthy."""
        return True

    def close(self, timeout: float = 10.0) -> None:
        """Nothing to close."""


def create_audit_log(config: AuditConfig, *, clock: Clock) -> AuditLog | NullAuditLog:
    """An AuditLog, or a NullAuditLog when ``config.enabled`` is false (not started)."""
    return AuditLog(config, clock=clock) if config.enabled else NullAuditLog()
