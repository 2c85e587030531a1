"""The audit record format: canonical JSON lines chained by sha256, file names, audit.head.

Shared by the writer (:mod:`pdp.audit.log`) and the verifier (:mod:`pdp.audit.verify`).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import math
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from json.encoder import encode_basestring_ascii as _json_string
from operator import itemgetter
from pathlib import Path
from typing import Any, Protocol

from pdp.events import DECISION_KEYS, DecisionCall, DecisionDetails, EventType, Severity
from pdp.policy.model import Effect

__all__ = [
    "GENESIS",
    "HEAD_NAME",
    "RECOVERED",
    "SEAL",
    "DecisionBatch",
    "EventView",
    "Head",
    "canonical",
    "file_name",
    "format_fields",
    "format_record",
    "iter_lines",
    "list_files",
    "read_head",
    "record_hash",
    "redact",
    "rfc3339",
    "write_head",
]

GENESIS = "0" * 64  # ``prev`` of the very first record
HEAD_NAME = "audit.head"
SEAL = "chain.seal"  # last record of a rotated file
RECOVERED = "chain.recovered"  # first record of the file started after a torn tail
_FILE_RE = re.compile(r"^audit-(\d{6,})\.jsonl$")
# Defence in depth: a token or a key must never reach the trail, whoever forgot to strip it.
_JWT_RE = re.compile(r"eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*")
_PEM_RE = re.compile(r"-----BEGIN [A-Z0-9 ]+-----")
REDACTED = "[redacted]"


def file_name(number: int) -> str:
    """The name of audit file ``number`` (1-based), e.g. ``audit-000001.jsonl``."""
    return f"audit-{number:06d}.jsonl"


def list_files(directory: Path) -> list[tuple[int, Path]]:
    """The audit files in ``directory`` as (number, path), in chain order."""
    found = []
    for entry in os.scandir(directory):
        match = _FILE_RE.match(entry.name)
        if match:
            found.append((int(match.group(1)), Path(entry.path)))
    return sorted(found)


def rfc3339(seconds: float) -> str:
    """``seconds`` since the epoch as RFC 3339 UTC with microseconds."""
    moment = _dt.datetime.fromtimestamp(seconds, _dt.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def redact(value: Any) -> Any:
    """``value`` with any string that looks like a JWT or a PEM block replaced."""
    if isinstance(value, str):
        # Substring tests first: they are C-speed, and nearly every value passes them.
        if ("eyJ" in value and _JWT_RE.search(value)) or (
                "-----BEGIN" in value and _PEM_RE.search(value)):
            return REDACTED
        return value
    if isinstance(value, Mapping):
        return {str(k): redact(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [redact(v) for v in value]
    if value is None or isinstance(value, bool | int | float):
        return value
    return redact(str(value))


def canonical(record: Mapping[str, Any]) -> bytes:
    """The canonical JSON of ``record``: sorted keys, no spaces, ASCII."""
    return json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def record_hash(record: Mapping[str, Any]) -> str:
    """sha256 (hex) over the canonical JSON of ``record`` without its ``hash`` field."""
    body = {k: v for k, v in record.items() if k != "hash"}
    return hashlib.sha256(canonical(body)).hexdigest()


class EventView(Protocol):
    """What the audit trail reads of an event: :class:`pdp.events.Event` or any class with
    the same attributes (decision events may use a lighter one)."""

    @property
    def type(self) -> EventType: ...
    @property
    def time(self) -> float: ...
    @property
    def severity(self) -> str: ...
    @property
    def actor(self) -> str: ...
    @property
    def peer(self) -> str: ...
    @property
    def outcome(self) -> str: ...
    @property
    def details(self) -> Mapping[str, Any]: ...
    @property
    def event_id(self) -> str: ...


def format_record(event: EventView, *, seq: int, prev: str) -> tuple[bytes, str]:
    """The JSON line (with newline) of ``event`` at ``seq`` after ``prev``, and its hash."""
    if event.type is not _DECISION:
        if type(event) is DecisionBatch:
            return _format_batch(event, seq, prev)
        return _format_event(event, seq, prev)
    # One record per Authorize call, so decisions of the server's shape are formatted by
    # hand: the bytes of format_fields (tests/audit compare the two over arbitrary input)
    # at a fifth of the cost. Any other shape goes through format_fields.
    details: Any = event.details
    if type(details) is DecisionDetails:  # the server's decision details: a tuple in a Mapping
        row = details.row
        if type(row) is not tuple or len(row) != _DECISION_KEY_COUNT:
            return _format_event(event, seq, prev)
        values = _row_values(row)
    else:
        if type(details) is not dict:
            if not isinstance(details, Mapping):
                return _format_event(event, seq, prev)
            details = dict(details.items())  # what redact() iterates
        if len(details) != _DECISION_KEY_COUNT or [*map(type, details)] != _STR_KEYS:
            return _format_event(event, seq, prev)
        try:
            values = _decision_values(details)
        except KeyError:
            return _format_event(event, seq, prev)
    (action, version, cached, decision_id, reason, resource_id, resource_type, rule_id,
     subject, subject_type) = values
    moment = event.time
    if type(moment) is not float or not 0.0 <= moment < _FAST_TIME_LIMIT or type(seq) is not int:
        return _format_event(event, seq, prev)
    cached_text = _json_bool(cached)
    if cached_text is None:
        return _format_event(event, seq, prev)
    # Most of a record repeats from one decision to the next (caller, action, bundle, rule,
    # subject...): its JSON is built once per such shape and kept. Only the ids, the chain
    # and the time are encoded per record.
    shape = (event.actor, action, version, cached_text, reason, resource_type, rule_id,
             subject, subject_type, event.outcome, event.peer, event.severity)
    try:
        parts = _shapes.get(shape)
    except TypeError:  # an unhashable value: not a string
        return _format_event(event, seq, prev)
    if parts is None:
        parts = _shape_parts(shape)
        if parts is None:
            return _format_event(event, seq, prev)
        if len(_shapes) >= _SHAPES_MAX:
            _shapes.clear()  # a bound, not a policy: shapes come back on their next record
        _shapes[shape] = parts
    E = _json_string  # a JSON string literal, ASCII: the C encoder json.dumps uses
    try:
        ids = f"{E(decision_id)}{parts[1]}{E(resource_id)}{parts[2]}{E(event.event_id)}"
        chain = E(prev)
    except TypeError:  # a value that is not a string
        return _format_event(event, seq, prev)
    # The encoder leaves printable ASCII as it is, so a value holding "eyJ" or "-----BEGIN"
    # shows it here: then redact() must look (format_fields); else it changes nothing.
    # (The shape's own parts were checked when it was built.)
    if "eyJ" in ids or "-----BEGIN" in ids or "eyJ" in chain or "-----BEGIN" in chain:
        return _format_event(event, seq, prev)
    head = f'{parts[0]}{ids}{parts[3]}{chain},"seq":{seq}{parts[4]}'
    stamp = _stamp(moment)
    core = f'{head}{stamp}","type":"decision"'
    digest = _sha256((core + "}").encode()).hexdigest()
    return f'{core},"hash":"{digest}"}}\n'.encode(), digest


def _json_bool(value: object) -> str | None:
    """``value`` as JSON when it is a bool (by identity: 1 and 0 are not), else None."""
    if value is True:
        return "true"
    if value is False:
        return "false"
    return None


def _stamp(moment: float) -> str:
    """``moment`` (a float in [0, _FAST_TIME_LIMIT)) as rfc3339() writes it."""
    global _second, _moment
    last = _moment
    if last[0] == moment:  # the decisions of one call share their time
        return last[1]
    # datetime.fromtimestamp's rounding: the fraction to microseconds, half to even,
    # carried into the next second (x.9999995 -> (x+1).000000).
    fraction, whole = math.modf(moment)
    micros = round(fraction * 1e6)
    second = int(whole)
    if micros >= 1_000_000:
        micros -= 1_000_000
        second += 1
    cached_second = _second
    if cached_second[0] == second:
        prefix = cached_second[1]
    else:
        prefix = _dt.datetime.fromtimestamp(second, _dt.UTC).strftime("%Y-%m-%dT%H:%M:%S")
        _second = (second, prefix)
    stamp = f"{prefix}.{micros:06d}Z"
    _moment = (moment, stamp)
    return stamp


class DecisionBatch:
    """The decisions of one call (one caller, one address, one time), written as one record
    of type ``decision.batch``: ``details`` holds ``count`` and ``decisions``, each with the
    keys of a decision record's details plus its ``outcome``; the record's ``outcome`` is
    allow or deny when every decision agrees, else mixed, and its ``event_id`` the first
    decision's id."""

    __slots__ = ("actor", "event_id", "events", "peer", "severity", "time")
    type = EventType.DECISION_BATCH

    def __init__(self, events: Sequence[EventView] | DecisionCall) -> None:
        if not events:
            raise ValueError("a decision batch needs at least one decision")
        if type(events) is DecisionCall:  # the server's: kept as it is, read by _format_batch
            self.events: Sequence[EventView] = events
            self.severity: str = Severity.INFO  # decision_event's
            self.time, self.actor, self.peer = events.time, events.actor, events.peer
            self.event_id = events.idents[0]
            return
        self.events = tuple(events)
        first = self.events[0]  # the call's: every decision shares them
        self.time, self.severity, self.actor = first.time, first.severity, first.actor
        self.peer, self.event_id = first.peer, first.event_id

    @property
    def outcome(self) -> str:
        events = self.events
        outcomes = set(events.outcomes() if type(events) is DecisionCall
                       else (e.outcome for e in events))
        return outcomes.pop() if len(outcomes) == 1 else "mixed"

    @property
    def details(self) -> Mapping[str, Any]:
        return {"count": len(self.events),
                "decisions": [{**dict(e.details.items()), "outcome": e.outcome}
                              for e in self.events]}


def _format_batch(batch: DecisionBatch, seq: int, prev: str) -> tuple[bytes, str]:
    """format_record of a DecisionBatch: by hand for the server's decisions (the bytes of
    format_fields, as for a single decision), else through format_fields."""
    events = batch.events
    moment = batch.time
    if type(moment) is not float or not 0.0 <= moment < _FAST_TIME_LIMIT or type(seq) is not int:
        return _format_event(batch, seq, prev)
    E = _json_string
    try:
        if type(events) is DecisionCall:
            made = _call_entries(events)
        else:
            made = _event_entries(events), batch.outcome
        entries, outcome = made
        if entries is None:
            return _format_event(batch, seq, prev)
        head = (
            f'{{"actor":{E(batch.actor)},"details":{{"count":{len(events)},'
            f'"decisions":[{",".join(entries)}]}},"event_id":{E(batch.event_id)},'
            f'"outcome":{E(outcome)},"peer":{E(batch.peer)},"prev":{E(prev)},'
            f'"seq":{seq},"severity":{E(str(batch.severity))},"time":"'
        )
    except (TypeError, AttributeError):  # a value that is not a string, details of no row
        return _format_event(batch, seq, prev)
    if "eyJ" in head or "-----BEGIN" in head:  # redact() must look: format_fields
        return _format_event(batch, seq, prev)
    core = f'{head}{_stamp(moment)}","type":"decision.batch"'
    digest = _sha256((core + "}").encode()).hexdigest()
    return f'{core},"hash":"{digest}"}}\n'.encode(), digest


def _parts(shape: tuple[Any, ...]) -> tuple[str, str, str]:
    """The JSON around the ids of one decision of a batch record of ``shape`` (see
    _entry_parts): built once per shape and kept. Raises TypeError when a value is not a
    string."""
    parts = _entries.get(shape)
    if parts is None:
        parts = _entry_parts(shape)
        if len(_entries) >= _SHAPES_MAX:
            _entries.clear()
        _entries[shape] = parts
    return parts


def _event_entries(events: Sequence[EventView]) -> list[str] | None:
    """The JSON of each decision event of a batch record; None when one is not of the
    server's shape (then format_fields writes the record)."""
    E = _json_string
    entries = []
    for event in events:
        details: Any = event.details
        if type(details) is not DecisionDetails:
            return None
        row = details.row
        if type(row) is not tuple or len(row) != _DECISION_KEY_COUNT:
            return None
        (action, version, cached, decision_id, reason, resource_id, resource_type, rule_id,
         subject, subject_type) = _row_values(row)
        cached_text = _json_bool(cached)
        if cached_text is None:
            return None
        parts = _parts((action, version, cached_text, event.outcome, reason, resource_type,
                        rule_id, subject, subject_type))
        entries.append(f"{parts[0]}{E(decision_id)}{parts[1]}{E(resource_id)}{parts[2]}")
    return entries


def _call_entries(call: DecisionCall) -> tuple[list[str] | None, str]:
    """The JSON of each decision of a DecisionCall, read from its requests and decisions
    (the values decision_event would put in each event's details), and the record's
    outcome; (None, "") when a cached flag is not a bool."""
    E = _json_string
    entries: list[str] = []
    append = entries.append
    allows = 0
    allow = False
    parts = ("", "", "")
    # What the last shape was read from: a decision that shares the previous one's decision,
    # subject and action objects and resource type has its shape (in a batch with defaults,
    # nearly every one), so its parts are reused without building and looking up the shape.
    # (Identity of objects the call holds alive: never a stale match.)
    last: tuple[Any, Any, Any, Any] = (None, None, None, None)
    for request, decision, ident in zip(call.requests, call.decisions, call.idents,
                                        strict=True):
        subject, action, resource = request.subject, request.action, request.resource
        rtype = resource.type
        if (decision is not last[0] or subject is not last[1] or action is not last[2]
                or rtype != last[3]):
            cached_text = _json_bool(decision.cached)  # a bool, unless built otherwise
            if cached_text is None:
                return None, ""
            allow = decision.effect is _ALLOW
            parts = _parts((action.name, decision.bundle_version, cached_text,
                            "allow" if allow else "deny", decision.reason, rtype,
                            decision.rule_id, subject.id, subject.type))
            last = (decision, subject, action, rtype)
        if allow:
            allows += 1
        append(f"{parts[0]}{E(ident)}{parts[1]}{E(resource.id)}{parts[2]}")
    outcome = "allow" if allows == len(entries) else "deny" if not allows else "mixed"
    return entries, outcome


def _format_event(event: EventView, seq: int, prev: str) -> tuple[bytes, str]:
    return format_fields(
        time=event.time,
        event_id=event.event_id,
        type=str(event.type),
        severity=str(event.severity),
        actor=event.actor,
        peer=event.peer,
        outcome=event.outcome,
        details=event.details,
        seq=seq,
        prev=prev,
    )


def format_fields(
    *,
    time: float,
    event_id: str,
    type: str,
    severity: str,
    actor: str,
    peer: str,
    outcome: str,
    details: Mapping[str, Any],
    seq: int,
    prev: str,
) -> tuple[bytes, str]:
    """The JSON line (with newline) of one record and its hash; strings that look like
    a JWT or a PEM block are redacted first."""
    record: dict[str, Any] = {
        "time": rfc3339(time),
        "event_id": event_id,
        "type": type,
        "severity": severity,
        "actor": redact(actor),
        "peer": redact(peer),
        "outcome": redact(outcome),
        "details": redact(details),
        "seq": seq,
        "prev": prev,
    }
    body = canonical(record)
    digest = hashlib.sha256(body).hexdigest()
    # Same fields as canonical(record | {"hash": digest}); readers do not depend on key order.
    line = body[:-1] + b',"hash":"' + digest.encode() + b'"}\n'
    return line, digest


# --- the decision fast path of format_record ------------------------------------------------

# The details of a decision, in json.dumps(sort_keys=True) order.
_DECISION_KEYS = (
    "action", "bundle_version", "cached", "decision_id", "reason", "resource_id",
    "resource_type", "rule_id", "subject", "subject_type",
)
_decision_values = itemgetter(*_DECISION_KEYS)
# pdp.events.DecisionDetails, the server's decision details: a read-only Mapping whose
# ``row`` holds the values in DECISION_KEYS order; read straight from the row, in the order above.
_row_values = itemgetter(*(DECISION_KEYS.index(key) for key in _DECISION_KEYS))
_DECISION_KEY_COUNT = len(_DECISION_KEYS)
_STR_KEYS = [str] * _DECISION_KEY_COUNT  # the type of each key: str() of them is themselves
_DECISION = EventType.DECISION
_ALLOW = Effect.ALLOW
_sha256 = hashlib.sha256
# Timestamps the fast path formats itself: 1970 up to (not including) the year 3000.
_FAST_TIME_LIMIT = 32503680000.0
# (second, its "YYYY-MM-DDTHH:MM:SS"): one datetime per second instead of one per record;
# replaced whole, so a reader on another thread sees a consistent pair.
_second: tuple[int, str] = (-1, "")
# (time, its "YYYY-MM-DDTHH:MM:SS.ffffffZ") of the last record: a batch's decisions share it.
_moment: tuple[float, str] = (-1.0, "")
# The JSON around a record's ids, chain and time, by shape (see format_record). Replaced
# entries are whole tuples, so a reader on another thread never sees a half-built one.
_shapes: dict[tuple[Any, ...], tuple[str, str, str, str, str]] = {}
_SHAPES_MAX = 4096
# The same for the decisions inside a decision.batch record (see _format_batch).
_entries: dict[tuple[Any, ...], tuple[str, str, str]] = {}


def _entry_parts(shape: tuple[Any, ...]) -> tuple[str, str, str]:
    """The three constant pieces of one decision of a batch record of ``shape``; raises
    TypeError when a value is not a string (the caller's redaction check sees the rest)."""
    (action, version, cached_text, outcome, reason, resource_type, rule_id, subject,
     subject_type) = shape
    E = _json_string
    return (
        f'{{"action":{E(action)},"bundle_version":{E(version)},"cached":{cached_text},'
        f'"decision_id":',
        f',"outcome":{E(outcome)},"reason":{E(reason)},"resource_id":',
        f',"resource_type":{E(resource_type)},"rule_id":{E(rule_id)},"subject":{E(subject)},'
        f'"subject_type":{E(subject_type)}}}',
    )


def _shape_parts(shape: tuple[Any, ...]) -> tuple[str, str, str, str, str] | None:
    """The five constant pieces of a decision record of ``shape`` (format_record's order of
    fields), or None when a value is not a string or needs redaction."""
    (actor, action, version, cached_text, reason, resource_type, rule_id, subject,
     subject_type, outcome, peer, severity) = shape
    E = _json_string
    try:
        parts = (
            f'{{"actor":{E(actor)},"details":{{"action":{E(action)},'
            f'"bundle_version":{E(version)},"cached":{cached_text},"decision_id":',
            f',"reason":{E(reason)},"resource_id":',
            f',"resource_type":{E(resource_type)},"rule_id":{E(rule_id)},'
            f'"subject":{E(subject)},"subject_type":{E(subject_type)}}},"event_id":',
            f',"outcome":{E(outcome)},"peer":{E(peer)},"prev":',
            f',"severity":{E(str(severity))},"time":"',
        )
    except TypeError:
        return None
    if any("eyJ" in part or "-----BEGIN" in part for part in parts):
        return None
    return parts


@dataclass(frozen=True, slots=True)
class Head:
    """The last record written, as kept in ``audit.head``."""

    seq: int
    hash: str
    file: str


def read_head(directory: Path) -> Head | None:
    """``audit.head`` of ``directory``, or None when absent; raises ValueError when unreadable."""
    path = directory / HEAD_NAME
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    data = json.loads(raw)
    if not isinstance(data, dict):
        raise ValueError("audit.head is not a JSON object")
    seq, digest, name = data.get("seq"), data.get("hash"), data.get("file")
    if not isinstance(seq, int) or not isinstance(digest, str) or not isinstance(name, str):
        raise ValueError("audit.head lacks seq, hash or file")
    return Head(seq, digest, name)


def write_head(directory: Path, head: Head, *, sync: bool) -> None:
    """Atomically replace ``audit.head`` (temp file, fsync, rename); raises OSError."""
    tmp = directory / (HEAD_NAME + ".tmp")
    data = canonical({"seq": head.seq, "hash": head.hash, "file": head.file})
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
    try:
        os.write(fd, data + b"\n")
        if sync:
            os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, directory / HEAD_NAME)
    if sync:
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def iter_lines(path: Path) -> Iterator[tuple[int, bytes, bool]]:
    """(1-based line number, bytes, complete) of each line of ``path``; the last may be torn."""
    with path.open("rb") as fh:
        for number, raw in enumerate(fh, start=1):
            complete = raw.endswith(b"\n")
            yield number, raw[:-1] if complete else raw, complete
