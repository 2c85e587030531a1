"""Table-driven decision cases from tests/policy/cases/*.yaml, through engine and cache."""

from __future__ import annotations

import gc
import importlib
import sys
import weakref
from pathlib import Path
from typing import Any

import pytest

from pdp.clock import FakeClock
from pdp.policy import DecisionCache, Effect, PolicyEngine, compile_bundle

_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:  # the shared loader lives in benchmarks/, run from anywhere
    sys.path.insert(0, _ROOT)
cases_mod = importlib.import_module("benchmarks.cases")
CASES = cases_mod.load_cases()


def test_there_are_enough_cases() -> None:
    assert len(CASES) >= 40


@pytest.mark.parametrize("case", CASES, ids=[f"{c.file}:{c.name}" for c in CASES])
def test_decision_case(case: Any) -> None:
    policy = compile_bundle(case.bundle, version="v-test")
    clock = FakeClock(case.now)
    engine = PolicyEngine(cache=DecisionCache(clock=clock), clock=clock)
    engine.activate(policy)
    engine.set_quarantine({s: case.now + 60 for s in case.quarantine})
    expect = Effect.ALLOW if case.expect == "allow" else Effect.DENY
    for attempt in range(2):  # the second answer may come from the cache: it must agree
        decision = engine.decide(case.request)
        assert decision.effect is expect, decision
        assert decision.rule_id == case.rule, decision
        assert decision.bundle_version == "v-test"
        if case.reason:
            assert decision.reason.startswith(case.reason), decision
        if attempt == 0:
            assert not decision.cached
    if not case.quarantine:
        direct = policy.evaluate(case.request, now=case.now)
        assert (direct.effect, direct.rule_id) == (expect, case.rule)
        explained, traces = policy.explain(case.request, now=case.now)
        assert explained == direct
        if case.rule:
            assert traces[-1].rule_id == case.rule
        assert all(not t.matched for t in traces[:-1])


@pytest.mark.parametrize("file", sorted({c.file for c in CASES}))
def test_a_used_compiled_policy_is_freed_by_reference_counting_alone(file: str) -> None:
    # The server freezes every activated policy out of the cycle collector's view
    # (pdp.server.app.settle_heap): a policy that held a reference cycle would then never
    # be freed once replaced. Every part of it is built here (conditions, windows, patterns,
    # the lazily filled index and id tests, explanations), then the collector is kept out.
    cases = [c for c in CASES if c.file == file]
    policy = compile_bundle(cases[0].bundle, version="v-test")
    for case in cases:
        policy.evaluate(case.request, now=case.now)
        policy.explain(case.request, now=case.now)
    gone = weakref.ref(policy)
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        del policy
        assert gone() is None, f"{file}: a compiled policy outlived its last reference"
    finally:
        if was_enabled:
            gc.enable()
