"""Decision event details: a tuple read as the mapping every sink expects."""

from __future__ import annotations

import pytest

from pdp.events import DECISION_KEYS, DecisionDetails


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
