"""format_record's decision fast path writes exactly the bytes of the generic format_fields."""

from __future__ import annotations

import math
import types
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

import pdp.events
from pdp.audit.records import (
    DecisionBatch,
    canonical,
    format_fields,
    format_record,
    record_hash,
)
from pdp.audit.verify import parse_record
from pdp.events import DecisionCall, Event, EventType, Severity
from pdp.policy import Action, Decision, Effect, Request, Resource, Subject

# The server's decision details (a Mapping over a tuple), where pdp.events has them.
ROW_DETAILS: Any = getattr(pdp.events, "DecisionDetails", None)
PROPERTY = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])

KEYS = (
    "subject", "subject_type", "action", "resource_type", "resource_id", "rule_id",
    "bundle_version", "reason", "cached", "decision_id",
)
JWT = (
    "eyJhbGciOiJFZERTQSIsInR5cCI6IkpXVCJ9."
    "eyJzdWIiOiJzcGlmZmU6Ly9leGFtcGxlLm9yZy9zdmMifQ."
    "c2lnbmF0dXJlc2lnbmF0dXJlc2lnbmF0dXJl"
)
PEM = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIOq\n-----END PRIVATE KEY-----\n"

# Every code point, lone surrogates included (json escapes them as \udxxx).
any_text = st.text(st.characters(codec=None, exclude_categories=()), max_size=40)
tricky = st.sampled_from([
    "", "eyJ", "eyJabcd.efgh.", "x eyJabcd.efgh.ijk y", JWT, PEM, "-----BEGIN", "-----BEGIN X",
    "-----BEGIN CERTIFICATE-----", "\0", "\\", '"', "\\u0000", "\x7f", "é", "\u2028", "\ud800",
    "😀", "\x00eyJ", "eyJ\x00abcd.efgh.ijk", "-----\x00BEGIN A-----",
])
text = st.one_of(
    any_text,
    tricky,
    st.builds(lambda a, b, c: a + b + c, any_text, tricky, any_text),
    st.from_regex(r"eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*", fullmatch=True),
    st.from_regex(r"-----BEGIN [A-Z0-9 ]+-----", fullmatch=False),
)
# Times around microsecond rounding edges (x.9999995 carries into the next second, halves
# round to even) as well as arbitrary finite and non-finite floats.
edge_time = st.builds(
    lambda second, micros, nudge: second + micros / 1e6 + nudge,
    st.integers(0, 4_102_444_800),
    st.integers(0, 1_000_000),
    st.sampled_from([0.0, 5e-7, -5e-7, 4.9999e-7, 5.0001e-7, 1e-9, -1e-9]),
)
times = st.one_of(
    edge_time,
    st.floats(min_value=0.0, max_value=4.2e9),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, 0.9999995, 1.9999995, 1_800_000_000.9999995, 1_800_000_000.0000005,
                     1_800_000_000.5, 1e-7, 32503679999.999996, 32503680000.0, -0.5]),
    st.integers(-10, 4_102_444_800),
)
severity = st.one_of(st.sampled_from(list(Severity)), any_text)
cached = st.one_of(st.booleans(), st.sampled_from([None, 0, 1, "true", 1.0]))


@dataclass(frozen=True, slots=True)
class LightEvent:
    """A stand-in for a lighter decision class: Event's attribute names, no dataclass kw."""

    type: EventType
    time: float
    severity: Any
    actor: Any
    peer: Any
    outcome: Any
    details: Mapping[str, Any]
    event_id: Any = field(default="e" * 32)


def generic(event: Any, seq: int, prev: str) -> tuple[bytes, str]:
    """The line and hash format_fields produces for ``event``."""
    return format_fields(
        time=event.time, event_id=event.event_id, type=str(event.type),
        severity=str(event.severity), actor=event.actor, peer=event.peer,
        outcome=event.outcome, details=event.details, seq=seq, prev=prev,
    )


def outcome_of(fn: Any, *args: Any) -> tuple[str, Any]:
    try:
        return "ok", fn(*args)
    except Exception as exc:  # the generic path may raise (NaN time, ...): so must the fast
        return "raised", type(exc)


def check(event: Any, seq: int, prev: str) -> None:
    fast = outcome_of(lambda: format_record(event, seq=seq, prev=prev))
    assert fast == outcome_of(generic, event, seq, prev)
    if fast[0] == "ok" and type(seq) is int:
        line, digest = fast[1]
        record = parse_record(line.rstrip(b"\n"))
        assert record["hash"] == digest == record_hash(record)


SHARED = ("subject", "subject_type", "action", "resource_type", "rule_id", "bundle_version",
          "reason")
# Values that pass as they are, so that shapes are kept and reused; `poison` then puts a
# token, a PEM block or an odd character into one field of the first shape or record.
clean = st.one_of(st.sampled_from(["alice", "user", "read", "doc", "r1", "v1", ""]),
                  st.text(max_size=12))
POISONABLE = (*SHARED, "actor", "peer", "outcome", "decision_id", "resource_id", "event_id")


@PROPERTY
@given(
    shapes=st.lists(st.tuples(st.fixed_dictionaries({k: clean for k in SHARED}),
                              st.one_of(st.booleans(), cached), clean, clean,
                              st.one_of(st.sampled_from(["allow", "deny"]), clean), severity),
                    min_size=1, max_size=3),
    moments=st.lists(st.one_of(edge_time, times), min_size=1, max_size=3),
    records=st.lists(st.tuples(st.integers(0, 2), st.integers(0, 2), clean, clean, clean,
                               st.integers(0, 2**40), st.one_of(st.just("0" * 64), any_text)),
                     min_size=1, max_size=12),
    poison=st.one_of(st.none(), st.tuples(st.sampled_from(POISONABLE), tricky)),
)
def test_records_that_repeat_a_shape_or_a_time_stay_byte_for_byte(
    shapes: list[tuple[Any, ...]], moments: list[float], records: list[tuple[Any, ...]],
    poison: tuple[str, str] | None,
) -> None:
    """The fast path keeps the JSON of a repeated shape (caller, action, rule...) and of a
    repeated time: records drawn from a few shapes and times, in any order, with their own
    ids, are still the generic records."""
    for n, (shape_at, moment_at, decision_id, resource_id, event_id, seq, prev) in enumerate(
            records):
        values, cached_value, actor, peer, outcome, sev = shapes[shape_at % len(shapes)]
        fields = {**values, "cached": cached_value, "decision_id": decision_id,
                  "resource_id": resource_id, "actor": actor, "peer": peer,
                  "outcome": outcome, "event_id": event_id}
        if poison is not None and (shape_at % len(shapes) == 0 if poison[0] in SHARED
                                   else n == 0):
            fields[poison[0]] = poison[1]
        row = ROW_DETAILS(tuple(fields[key] for key in pdp.events.DECISION_KEYS))
        event = Event(type=EventType.DECISION, time=moments[moment_at % len(moments)],
                      severity=sev, actor=fields["actor"], peer=fields["peer"],
                      outcome=fields["outcome"], details=row, event_id=fields["event_id"])
        check(event, seq, prev)


@PROPERTY
@given(
    values=st.fixed_dictionaries({k: text for k in KEYS if k != "cached"}),
    cached=cached,
    actor=text, peer=text, outcome=st.one_of(st.sampled_from(["allow", "deny"]), text),
    moment=times, severity=severity, event_id=text,
    seq=st.integers(0, 2**70), prev=st.one_of(st.just("0" * 64), any_text),
    light=st.booleans(), shape=st.sampled_from(["dict", "proxy", "row"]),
)
@example(values={k: "x" for k in KEYS if k != "cached"}, cached=False, actor=JWT, peer=PEM,
         outcome="deny", moment=1_800_000_000.9999995, severity=Severity.INFO,
         event_id="e", seq=1, prev="0" * 64, light=False, shape="row")
def test_a_decision_record_is_the_generic_record_byte_for_byte(
    values: dict[str, str], cached: Any, actor: str, peer: str, outcome: str, moment: float,
    severity: Any, event_id: str, seq: int, prev: str, light: bool, shape: str,
) -> None:
    details: Mapping[str, Any] = {**values, "cached": cached}
    if shape == "proxy":
        details = types.MappingProxyType(dict(details))
    elif shape == "row" and ROW_DETAILS is not None:  # the server's decision details
        details = ROW_DETAILS(tuple(details[key] for key in pdp.events.DECISION_KEYS))
    cls: Any = LightEvent if light else Event
    event = cls(type=EventType.DECISION, time=moment, severity=severity, actor=actor, peer=peer,
                outcome=outcome, details=details, event_id=event_id)
    check(event, seq, prev)


@PROPERTY
@given(
    drop=st.sets(st.sampled_from(KEYS), max_size=2),
    extra=st.dictionaries(st.one_of(any_text, st.integers()), st.one_of(
        text, st.integers(), st.floats(), st.none(), st.lists(text, max_size=2)), max_size=2),
    replace=st.dictionaries(st.sampled_from(KEYS), st.one_of(
        st.integers(), st.floats(), st.none(), st.lists(text, max_size=2),
        st.dictionaries(text, text, max_size=2)), max_size=2),
    moment=times,
)
def test_a_decision_of_another_shape_falls_back_to_the_same_record(
    drop: set[str], extra: dict[Any, Any], replace: dict[str, Any], moment: float
) -> None:
    details: dict[Any, Any] = {k: "v" for k in KEYS if k not in drop}
    details.update(extra)
    details.update(replace)
    assume(details)
    event = Event(type=EventType.DECISION, time=moment, actor="a", peer="p", outcome="deny",
                  details=details)
    check(event, 7, "1" * 64)


class Shout(str):
    """A str whose str() differs from its value."""

    __slots__ = ()

    def __str__(self) -> str:
        return self.upper()


def test_odd_keys_and_values_take_the_generic_path() -> None:
    base = {k: "v" for k in KEYS} | {"cached": True}
    odd: list[Mapping[Any, Any]] = [
        {Shout(k) if k == "action" else k: v for k, v in base.items()},
        base | {"action": Shout("read")},
        base | {"cached": 1},
        types.MappingProxyType(base),
    ]
    for details in odd:
        for moment in (1_800_000_000.25, 1_800_000_000, -1.0, math.inf):
            check(Event(type=EventType.DECISION, time=moment, details=details), 3, "2" * 64)
    check(Event(type=EventType.DECISION, time=1.5, details=base), True, "2" * 64)


def test_other_events_keep_the_generic_format() -> None:
    event = Event(type=EventType.BUNDLE_PUSH, time=1_800_000_000.5, actor=JWT,
                  details={"version": "3", "key": PEM, "n": 1.25})
    line, digest = format_record(event, seq=9, prev="3" * 64)
    assert (line, digest) == generic(event, 9, "3" * 64)
    record = parse_record(line.rstrip(b"\n"))
    assert record["actor"] == record["details"]["key"] == "[redacted]"


@pytest.mark.parametrize(("moment", "text"), [
    (1_800_000_000.0, "2027-01-15T08:00:00.000000Z"),
    (1_800_000_000.9999995, "2027-01-15T08:00:01.000000Z"),  # carried into the next second
    (1_800_000_059.9999999, "2027-01-15T08:01:00.000000Z"),
    (0.0000005, "1970-01-01T00:00:00.000000Z"),  # half to even
    (0.0000015, "1970-01-01T00:00:00.000002Z"),
])
def test_decision_times_round_like_datetime(moment: float, text: str) -> None:
    details = {k: "v" for k in KEYS} | {"cached": False}
    event = Event(type=EventType.DECISION, time=moment, details=details)
    line, _ = format_record(event, seq=1, prev="0" * 64)
    assert parse_record(line.rstrip(b"\n"))["time"] == text
    assert line == generic(event, 1, "0" * 64)[0]
    assert canonical(parse_record(line.rstrip(b"\n")))  # still canonical JSON


@PROPERTY
@given(
    rows=st.lists(st.tuples(st.fixed_dictionaries({k: clean for k in KEYS if k != "cached"}),
                            st.one_of(st.booleans(), cached),
                            st.one_of(st.sampled_from(["allow", "deny"]), clean)),
                  min_size=1, max_size=5),
    actor=clean, peer=clean, moment=st.one_of(edge_time, times), severity=severity,
    seq=st.integers(0, 2**40), prev=st.one_of(st.just("0" * 64), any_text),
    poison=st.one_of(st.none(), st.tuples(st.sampled_from([*KEYS, "actor", "peer", "outcome"]),
                                          tricky)),
)
def test_a_batch_record_is_the_generic_record_byte_for_byte(
    rows: list[tuple[dict[str, str], Any, str]], actor: str, peer: str, moment: float,
    severity: Any, seq: int, prev: str, poison: tuple[str, str] | None,
) -> None:
    """One AuthorizeBatch's decisions, written as one decision.batch record by hand, are the
    record format_fields writes for the same details (every decision with its outcome)."""
    events = []
    for n, (values, cached_value, outcome) in enumerate(rows):
        fields = {**values, "cached": cached_value, "actor": actor, "peer": peer,
                  "outcome": outcome}
        if poison is not None and n == len(rows) - 1:
            fields[poison[0]] = poison[1]
        events.append(Event(
            type=EventType.DECISION, time=moment, severity=severity, actor=fields["actor"],
            peer=fields["peer"], outcome=fields["outcome"], event_id=fields["decision_id"],
            details=ROW_DETAILS(tuple(fields[key] for key in pdp.events.DECISION_KEYS))))
    check(DecisionBatch(events), seq, prev)


@PROPERTY
@given(
    picks=st.lists(st.tuples(st.integers(0, 5), st.integers(0, 9), st.booleans()),
                   min_size=1, max_size=8),
    batches=st.integers(1, 3),
)
def test_batch_records_with_repeating_shapes_are_generic_byte_for_byte(
    picks: list[tuple[int, int, bool]], batches: int,
) -> None:
    """A batch's decisions repeat their shape (what is not an id) within a record and across
    records, and shapes differ from each other in one field only: each record is still the
    generic one, so the per-shape JSON is keyed by every field it holds."""
    base = {"subject": "alice", "subject_type": "user", "action": "read",
            "resource_type": "doc", "rule_id": "r1", "bundle_version": "1:ab",
            "reason": "", "cached": False}
    # Shape k changes one field of the base (0 changes none).
    changes: list[dict[str, Any]] = [{}, {"action": "write"}, {"cached": True},
                                     {"reason": "default deny"}, {"subject": "bob"},
                                     {"rule_id": "r2"}]
    for b in range(batches):
        events = []
        for n, (shape, rid, deny) in enumerate(picks):
            fields = base | changes[shape] | {"resource_id": f"doc-{rid}",
                                              "decision_id": f"d{b}-{n}"}
            events.append(Event(
                type=EventType.DECISION, time=1_800_000_000.5 + b, actor="svc",
                peer="ipv4:127.0.0.1:1", outcome="deny" if deny else "allow",
                event_id=fields["decision_id"],
                details=ROW_DETAILS(tuple(fields[key] for key in pdp.events.DECISION_KEYS))))
        check(DecisionBatch(events), b + 1, "0" * 64)


CALL_FIELDS = ("subject", "subject_type", "action", "resource_type", "resource_id", "rule_id",
               "bundle_version", "reason", "decision_id")


@PROPERTY
@given(
    rows=st.lists(st.tuples(st.fixed_dictionaries({k: clean for k in CALL_FIELDS}),
                            st.one_of(st.booleans(), cached), st.sampled_from(list(Effect))),
                  min_size=1, max_size=5),
    actor=clean, peer=clean, moment=st.one_of(edge_time, times),
    seq=st.integers(0, 2**40), prev=st.one_of(st.just("0" * 64), any_text),
    poison=st.one_of(st.none(), st.tuples(st.sampled_from([*CALL_FIELDS, "actor", "peer"]),
                                          tricky)),
)
def test_a_calls_batch_record_is_the_generic_record_byte_for_byte(
    rows: list[tuple[dict[str, str], Any, Effect]], actor: str, peer: str, moment: float,
    seq: int, prev: str, poison: tuple[str, str] | None,
) -> None:
    """The server hands a batch's decisions over as a DecisionCall (requests, decisions and
    ids, no events): its record, written from those by hand, is the record format_fields
    writes for its events, and the record of the same events handed over as events."""
    requests, decisions, idents = [], [], []
    for n, (values, cached_value, effect) in enumerate(rows):
        fields = {**values, "actor": actor, "peer": peer}
        if poison is not None and n == len(rows) - 1:
            fields[poison[0]] = poison[1]
            actor, peer = fields["actor"], fields["peer"]
        requests.append(Request(Subject(fields["subject_type"], fields["subject"]),
                                Action(fields["action"]),
                                Resource(fields["resource_type"], fields["resource_id"])))
        decisions.append(Decision(effect, fields["rule_id"], fields["reason"],
                                  fields["bundle_version"], cached_value))
        idents.append(fields["decision_id"])
    call = DecisionCall(actor, peer, moment, requests, decisions, idents)
    check(DecisionBatch(call), seq, prev)
    as_call = outcome_of(lambda: format_record(DecisionBatch(call), seq=seq, prev=prev))
    as_events = outcome_of(lambda: format_record(DecisionBatch(list(call)), seq=seq, prev=prev))
    assert as_call == as_events


@PROPERTY
@given(
    picks=st.lists(st.tuples(st.integers(0, 2), st.integers(0, 2), st.integers(0, 2),
                             st.sampled_from(["doc", "img"]), st.integers(0, 3)),
                   min_size=1, max_size=12),
    subjects=st.lists(st.tuples(clean, clean), min_size=3, max_size=3),
    actions=st.lists(clean, min_size=3, max_size=3),
    decisions=st.lists(st.tuples(st.sampled_from(list(Effect)), clean, clean,
                                 st.one_of(st.booleans(), cached)), min_size=3, max_size=3),
)
def test_a_calls_decisions_sharing_objects_are_written_as_the_generic_record(
    picks: list[tuple[int, int, int, str, int]], subjects: list[tuple[str, str]],
    actions: list[str], decisions: list[tuple[Effect, str, str, Any]],
) -> None:
    """A call's decisions share their Subject, Action and Decision objects (batch defaults,
    one decision per rule), and the writer reuses the last one's JSON while they do: every
    change of any of them, or of the resource type, still gives the generic record."""
    subject_pool = [Subject(t, i) for t, i in subjects]
    action_pool = [Action(name) for name in actions]
    decision_pool = [Decision(e, rule, reason, "1-ab", c) for e, rule, reason, c in decisions]
    call = DecisionCall(
        "svc", "ipv4:127.0.0.1:1", 1_800_000_000.5,
        [Request(subject_pool[s], action_pool[a], Resource(rtype, f"doc-{rid}"))
         for s, a, _, rtype, rid in picks],
        [decision_pool[d] for _, _, d, _, _ in picks],
        [f"p-{n}" for n in range(len(picks))])
    check(DecisionBatch(call), 7, "0" * 64)
