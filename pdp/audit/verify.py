"""Verification of an audit directory: the hash chain across files and against audit.head.

:func:`verify` raises :class:`pdp.errors.AuditVerificationError` naming the first bad record.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pdp.audit.records import (
    GENESIS,
    HEAD_NAME,
    RECOVERED,
    SEAL,
    Head,
    file_name,
    iter_lines,
    list_files,
    read_head,
    record_hash,
)
from pdp.errors import AuditVerificationError

__all__ = ["VerifyReport", "parse_record", "verify"]


@dataclass(frozen=True, slots=True)
class VerifyReport:
    """What a successful verification saw."""

    records: int  # records checked
    files: int  # files checked
    first_seq: int  # seq of the first record (1 unless older files were pruned)
    last_seq: int  # seq of the last record (0 when empty)
    last_hash: str  # hash of the last record (GENESIS when empty)
    recoveries: tuple[str, ...] = ()  # torn tails acknowledged by chain.recovered records

    def summary(self) -> str:
        """The one-line summary printed by ``pdp audit verify``."""
        text = f"ok: {self.records} records in {self.files} files"
        if self.recoveries:
            text += f" ({len(self.recoveries)} crash recoveries)"
        return text


def parse_record(raw: bytes) -> dict[str, Any]:
    """One record line as a dict; raises ValueError when it is not a well-formed record."""
    record = json.loads(raw)
    if not isinstance(record, dict):
        raise ValueError("not a JSON object")
    for key, kind in (("seq", int), ("prev", str), ("hash", str), ("type", str)):
        if not isinstance(record.get(key), kind) or isinstance(record.get(key), bool):
            raise ValueError(f"missing or malformed field {key!r}")
    return record


@dataclass(slots=True)
class _Torn:
    file: str
    line: int
    size: int


class _Verifier:
    def __init__(self, directory: Path, head: Head | None) -> None:
        self.directory = directory
        self.head = head
        self.seq = 0
        self.prev = GENESIS
        self.first_seq = 0
        self.records = 0
        self.recoveries: list[str] = []
        self.head_seen = False
        self.last_type = ""

    def fail(self, reason: str, path: Path, line: int) -> AuditVerificationError:
        return AuditVerificationError(reason, file=str(path), line=line)

    def check_file(self, path: Path, torn: _Torn | None, pruned_start: bool) -> _Torn | None:
        line_no = 0
        for line_no, raw, complete in iter_lines(path):
            if not complete and torn is None:
                return _Torn(path.name, line_no, len(raw))
            if not complete:
                break
            try:
                record = parse_record(raw)
            except ValueError as exc:
                raise self.fail(f"not a valid audit record: {exc}", path, line_no) from None
            if record_hash(record) != record["hash"]:
                raise self.fail("record hash mismatch: the record was changed", path, line_no)
            if torn is not None:
                self.check_recovery(record, torn, path, line_no)
                torn = None
            if pruned_start and self.records == 0:
                self.seq, self.prev = record["seq"] - 1, record["prev"]
            if self.records == 0:
                self.first_seq = record["seq"]
            self.check_link(record, path, line_no)
        if torn is not None:
            raise self.fail(
                f"truncated: partial record at end of file (next file {path.name} "
                "does not record a crash recovery)",
                self.directory / torn.file,
                torn.line,
            )
        return None

    def check_recovery(self, record: dict[str, Any], torn: _Torn, path: Path, line: int) -> None:
        details = record.get("details")
        ok = (
            record["type"] == RECOVERED
            and isinstance(details, dict)
            and details.get("file") == torn.file
            and details.get("torn_bytes") == torn.size
        )
        if not ok:
            raise self.fail(
                "truncated: partial record at end of file", self.directory / torn.file, torn.line
            )
        self.recoveries.append(
            f"{torn.file}:{torn.line} ({torn.size} bytes) recovered at {path.name}:{line}"
        )

    def check_link(self, record: dict[str, Any], path: Path, line: int) -> None:
        seq = record["seq"]
        if seq > self.seq + 1:
            raise self.fail(
                f"expected seq {self.seq + 1}, found {seq}: record(s) removed or reordered",
                path,
                line,
            )
        if seq <= self.seq:
            raise self.fail(
                f"expected seq {self.seq + 1}, found {seq}: record inserted or reordered",
                path,
                line,
            )
        if record["prev"] != self.prev:
            raise self.fail("chain broken: prev is not the hash of the previous record", path, line)
        if self.head is not None and seq == self.head.seq:
            if record["hash"] != self.head.hash:
                raise self.fail("record does not match audit.head", path, line)
            self.head_seen = True
        self.seq, self.prev = seq, record["hash"]
        self.records += 1
        self.last_type = record["type"]


def verify(directory: Path | str, *, allow_pruned: bool = False) -> VerifyReport:
    """Check every audit file of ``directory`` and the chain between them and audit.head.

    Raises AuditVerificationError (reason, file, 1-based line) at the first changed,
    removed, inserted or reordered record, partial line, missing file, a file that was
    cut short (no ``chain.seal`` before the next file) or whole records cut from the end
    (audit.head names a later record). ``allow_pruned`` accepts a trail whose oldest
    files were removed by retention (the first present record then starts the check).
    """
    directory = Path(directory)
    head_path = directory / HEAD_NAME
    try:
        head = read_head(directory)
    except (ValueError, OSError) as exc:
        raise AuditVerificationError(
            f"unreadable audit.head: {exc}", file=str(head_path), line=1
        ) from None
    files = list_files(directory)
    v = _Verifier(directory, head)
    torn: _Torn | None = None
    expected = files[0][0] if files and allow_pruned else 1
    for index, (number, path) in enumerate(files):
        if number != expected:
            raise v.fail(f"missing audit file {file_name(expected)} before this one", path, 1)
        if index > 0 and torn is None and v.records and v.last_type != SEAL:
            previous = files[index - 1][1]
            raise v.fail(
                "file does not end with a chain.seal record: records removed from its end",
                previous,
                _count_lines(previous) + 1,
            )
        torn = v.check_file(path, torn, pruned_start=allow_pruned and index == 0)
        expected = number + 1
    if torn is not None:
        raise v.fail("truncated: partial record at end of file", directory / torn.file, torn.line)
    if files and head is None and v.records:
        raise AuditVerificationError(
            "audit.head is missing: the end of the trail cannot be checked",
            file=str(head_path),
            line=1,
        )
    if head is not None and head.seq == 0:
        # The head of a trail before its first record (written when the log starts, e.g. by
        # a server whose listener then failed to bind): no record can be missing after it.
        if head.hash != GENESIS:
            raise AuditVerificationError(
                "audit.head names seq 0 with a hash other than the chain's start",
                file=str(head_path), line=1)
    elif head is not None and not v.head_seen:
        last = files[-1][1] if files else directory / head.file
        line = _count_lines(last) + 1 if last.exists() else 1
        raise v.fail(
            f"truncated: audit.head names seq {head.seq} in {head.file} "
            f"but the trail ends at seq {v.seq}",
            last,
            line,
        )
    return VerifyReport(v.records, len(files), v.first_seq, v.seq, v.prev, tuple(v.recoveries))


def _count_lines(path: Path) -> int:
    return sum(1 for _ in iter_lines(path))
