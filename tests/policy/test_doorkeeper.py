"""The decision cache's admission test in C (pdp/policy/_doorkeeper.c) against the Python
code it replaced: the same answers and the same bits, for any hash (negative ones too:
Python's >> rounds down) and ones whose two bits are the same bit."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pdp.policy import DecisionCache
from pdp.policy._doorkeeper import seen_before

HASHES = st.integers(min_value=-(2**63), max_value=2**63 - 1)


def reference(seen: bytearray, before: bytearray, h: int, mask: int) -> bool:
    """DecisionCache._repeated as it was written in Python, less the generation count."""
    a, b = h & mask, (h >> 24) & mask
    byte_a, bit_a, byte_b, bit_b = a >> 3, 1 << (a & 7), b >> 3, 1 << (b & 7)
    if (seen[byte_a] & bit_a and seen[byte_b] & bit_b) or (
            before[byte_a] & bit_a and before[byte_b] & bit_b):
        return True
    seen[byte_a] |= bit_a
    seen[byte_b] |= bit_b
    return False


@settings(max_examples=300, deadline=None)
@given(hashes=st.lists(HASHES, min_size=1, max_size=60), bits_log2=st.integers(3, 14),
       seed=st.integers(0, 2**32))
def test_same_answers_and_bits_as_the_python_reference(hashes: list[int], bits_log2: int,
                                                       seed: int) -> None:
    rng = random.Random(seed)
    size = (1 << bits_log2) >> 3
    before = bytearray(rng.randbytes(size)) if rng.random() < 0.5 else bytearray(size)
    mask = (1 << bits_log2) - 1
    ours, theirs = bytearray(size), bytearray(size)
    for h in hashes + hashes[: len(hashes) // 2]:  # repeats, to be found the second time
        assert seen_before(ours, before, h, mask) == reference(theirs, before, h, mask), h
        assert ours == theirs


def test_negative_and_extreme_hashes_set_the_bits_python_set() -> None:
    mask = (1 << 20) - 1
    for h in (-1, -(2**63), -(2**24), -(2**24) - 1, 2**63 - 1, 0, 1 << 24):
        ours, theirs = bytearray(mask // 8 + 1), bytearray(mask // 8 + 1)
        assert seen_before(ours, bytearray(len(ours)), h, mask) is False
        reference(theirs, bytearray(len(theirs)), h, mask)
        assert ours == theirs, h


def test_bad_arguments_are_refused_not_read_past() -> None:
    small = bytearray(2)
    with pytest.raises(ValueError, match="mask \\+ 1 bits"):
        seen_before(small, bytearray(1024), 5, 1023)  # 16 bits, 1,024 asked for
    with pytest.raises(ValueError, match="mask \\+ 1 bits"):
        seen_before(bytearray(1024), small, 5, 1023)
    for mask in (-1, 1 << 40):
        with pytest.raises(ValueError, match="mask must be in"):
            seen_before(small, small, 5, mask)
    with pytest.raises(TypeError, match="bytearrays"):
        seen_before(bytes(2), small, 5, 15)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        seen_before(small, small, 5)  # type: ignore[call-arg]
    with pytest.raises(OverflowError):
        seen_before(small, small, 2**64, 15)


def test_the_cache_admits_a_key_on_its_second_request_through_it() -> None:
    cache = DecisionCache(max_size=1000)
    keys = [("v1", "user", f"u{i}", "read", "doc", f"d{i}", None) for i in range(500)]
    # The first time, a key is admitted only by a false positive of the filter (8,192 bits
    # here: ~1 %); the second time, always.
    assert sum(cache.admits(k) for k in keys) < 25
    assert all(cache.admits(k) for k in keys)
