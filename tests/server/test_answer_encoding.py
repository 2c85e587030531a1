"""Answers encoded by hand (pdp.server.convert.encode_response / encode_batch, through
pdp.server._wire.encode_answers) are the bytes the generated message serializes to, for
any decision, and read back as what was decided."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pdp.policy import Decision, Effect
from pdp.server import _wire, convert
from pdp.server.convert import decision_to_pb, encode_batch, encode_response
from pdp_client._proto import authorization_pb2 as pb

# Any text a decision can carry: empty, ASCII, multi-byte UTF-8, and long enough (>127 bytes)
# for a two-byte length.
texts = st.one_of(st.just(""), st.text(max_size=20), st.text(min_size=100, max_size=300),
                  st.text(alphabet="é✓𝄞", min_size=40, max_size=80))
decisions = st.builds(Decision, st.sampled_from([Effect.ALLOW, Effect.DENY]), texts, texts,
                      texts, st.booleans())
ids = st.one_of(st.text(min_size=1, max_size=40), st.text(min_size=128, max_size=200))


@settings(max_examples=300, deadline=None)
@given(decisions, ids)
def test_an_answer_is_the_bytes_of_the_generated_message(decision: Decision, ident: str) -> None:
    expected = decision_to_pb(decision, ident).SerializeToString()
    assert encode_response(decision, ident) == expected
    assert encode_response(decision, ident) == expected  # the second time from the memo
    back = pb.AuthorizeResponse.FromString(encode_response(decision, ident))
    assert (back.decision == pb.DECISION_ALLOW) == (decision.effect is Effect.ALLOW)
    assert (back.rule_id, back.bundle_version, back.reason, back.decision_id, back.cached) == (
        decision.rule_id, decision.bundle_version, decision.reason, ident, decision.cached)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(decisions, ids), max_size=12))
def test_a_batch_answer_is_the_bytes_of_the_generated_message(
        answers: list[tuple[Decision, str]]) -> None:
    expected = pb.AuthorizeBatchResponse(
        responses=[decision_to_pb(d, i) for d, i in answers]).SerializeToString()
    assert encode_batch([d for d, _ in answers], [i for _, i in answers]) == expected
    assert encode_batch([d for d, _ in answers], [i for _, i in answers]) == expected  # memo


def test_the_memo_of_repeated_fields_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    """Reasons can quote an evaluation error: one-off decisions must not grow it forever."""
    monkeypatch.setattr(convert, "_ENTRIES", {})
    monkeypatch.setattr(convert, "_HEADS", {})
    for n in range(convert._MAX_ENTRIES * 2 + 5):
        decision = Decision(Effect.DENY, "r", "v1", f"evaluation error {n}")
        assert encode_response(decision, "id") == decision_to_pb(decision, "id").SerializeToString()
        assert len(convert._ENTRIES) <= convert._MAX_ENTRIES
        assert len(convert._HEADS) <= convert._MAX_ENTRIES


def test_an_entry_is_used_only_for_its_own_decision_object(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Entries are found by id(): one that holds another object (a stale or forged entry)
    is made afresh, and what the encoder is handed back is checked."""
    monkeypatch.setattr(convert, "_ENTRIES", {})
    allow = Decision(Effect.ALLOW, "r1", "v1", "allowed by rule r1")
    deny = Decision(Effect.DENY, "r2", "v1", "denied by rule r2", cached=True)
    convert._ENTRIES[id(deny)] = (allow, b"\x08\x01", b"")  # allow's bytes under deny's id
    assert encode_response(deny, "x") == decision_to_pb(deny, "x").SerializeToString()
    with pytest.raises(TypeError, match="entry_of must return"):
        _wire.encode_answers([deny], ["x"], {}, lambda d: (allow, b"", b""), False)
    with pytest.raises(TypeError, match="head and tail must be bytes"):
        _wire.encode_answers([deny], ["x"], {}, lambda d: (d, "text", b""), False)
    with pytest.raises(TypeError, match="lists of one length"):
        _wire.encode_answers([deny], [], {}, convert._entry, True)
    with pytest.raises(TypeError, match="ids must be str"):
        _wire.encode_answers([deny], [b"x"], {}, convert._entry, True)
    with pytest.raises(ZeroDivisionError):  # an error of entry_of is raised, not swallowed
        _wire.encode_answers([deny], ["x"], {}, lambda d: 1 / 0, True)
    assert _wire.encode_answers([], [], {}, convert._entry, True) == b""
