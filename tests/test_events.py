"""Decision events: details as a tuple read as the mapping every sink expects, and a call's
decisions handed over as lists read as its events."""

from __future__ import annotations

import pytest

from pdp.events import DECISION_KEYS, DecisionCall, DecisionDetails, EventType, decision_event
from pdp.policy import Action, Decision, Effect, Request, Resource, Subject


def row() -> tuple[object, ...]:
    return ("alice", "user", "write", "doc", "d1", "owner-write", "1-abc",
            "allowed by rule owner-write", False, "p-1")


def test_decision_details_read_like_the_dict_they_replace() -> None:
    details = DecisionDetails(row())
    as_dict = dict(zip(DECISION_KEYS, row(), strict=True))
    assert details == as_dict and dict(details) == as_dict
    assert list(details) == list(DECISION_KEYS) and len(details) == 10
    assert details["reason"] == details.get("reason") == "allowed by rule owner-write"
    assert details.get("kind") is None and details.get("kind", "x") == "x"
    assert "subject" in details and "kind" not in details
    with pytest.raises(KeyError):
        details["kind"]


def test_decision_details_refuse_a_row_of_the_wrong_length() -> None:
    with pytest.raises(ValueError, match="10 details, got 9"):
        DecisionDetails(row()[:-1])


def call_of(effects: list[Effect]) -> DecisionCall:
    """A call's decisions as the server hands them over: one caller, address and time."""
    requests = [Request(Subject("user", f"u{i}"), Action("read"), Resource("doc", f"d{i}"))
                for i in range(len(effects))]
    decisions = [Decision(effect, f"r{i}", f"why {i}", "1-abc", cached=i % 2 == 0)
                 for i, effect in enumerate(effects)]
    return DecisionCall("spiffe://t/svc", "ipv4:127.0.0.1:1", 1.8e9, requests, decisions,
                        [f"p-{i}" for i in range(len(effects))])


def test_a_decision_call_reads_as_the_events_the_server_built_one_by_one() -> None:
    call = call_of([Effect.ALLOW, Effect.DENY, Effect.ALLOW])
    one_by_one = [decision_event(r, d, i, call.actor, call.peer, call.time)
                  for r, d, i in zip(call.requests, call.decisions, call.idents, strict=True)]
    assert len(call) == 3
    assert list(call) == [call[0], call[1], call[2]] == one_by_one
    assert call[-1] == one_by_one[-1] and call[1:] == one_by_one[1:]
    second = call[1]
    assert (second.type, second.outcome, second.event_id, second.time) == (
        EventType.DECISION, "deny", "p-1", 1.8e9)
    assert dict(second.details) == {
        "subject": "u1", "subject_type": "user", "action": "read", "resource_type": "doc",
        "resource_id": "d1", "rule_id": "r1", "bundle_version": "1-abc", "reason": "why 1",
        "cached": False, "decision_id": "p-1"}
    assert call.outcomes() == ["allow", "deny", "allow"]
    with pytest.raises(IndexError):
        call[3]


def test_a_decision_call_refuses_lists_of_different_lengths() -> None:
    call = call_of([Effect.ALLOW, Effect.DENY])
    with pytest.raises(ValueError, match="differ in number: 2, 2, 1"):
        DecisionCall("a", "p", 1.0, call.requests, call.decisions, call.idents[:1])
