"""Shadow evaluation: differences are exactly what the changed rule affects.

Served answers never change.
"""

from __future__ import annotations

import copy
import itertools
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from pdp.clock import FakeClock
from pdp.policy import (
    Action,
    CompiledPolicy,
    Decision,
    Effect,
    Request,
    Resource,
    Subject,
    compile_bundle,
    load_bundle,
)
from pdp.policy.shadow import ShadowEvaluator
from pdp.policy.testing import request_to_dict

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "bundle.yaml"
NOW = 1_736_931_600.0  # Wednesday 2025-01-15 10:00 Europe/Berlin
CHANGED = "classified-node-read"


def example_doc() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load(EXAMPLE.read_text())
    return doc


def compiled(doc: dict[str, Any], version: str) -> CompiledPolicy:
    return compile_bundle(load_bundle(json.dumps(doc)), version=version)


def candidate_doc() -> dict[str, Any]:
    """The example with one rule changed: clearance must now exceed the classification."""
    doc = example_doc()
    rule = next(r for r in doc["rules"] if r["id"] == CHANGED)
    rule["when"]["all"][1] = {
        "attr": "subject.properties.clearance",
        "gt": {"attr": "resource.properties.classification"},
    }
    return doc


def requests() -> Iterator[Request]:
    for clearance, classification, action, team, peer in itertools.product(
        (None, 1, 2, 3),
        (None, 1, 2, 3),
        ("read", "write", "stats"),
        ("blue", "red"),
        ("10.20.0.5", "192.0.2.1"),
    ):
        subject_props: dict[str, Any] = {"teams": ["blue"]}
        if clearance is not None:
            subject_props["clearance"] = clearance
        resource_props: dict[str, Any] = {"team": team}
        if classification is not None:
            resource_props["classification"] = classification
        yield Request(
            Subject("user", "steward-1", subject_props),
            Action(action),
            Resource("node", f"n-{classification}-{team}", resource_props),
            {"change_ticket": "KG-1"},
            peer_ip=peer,
        )


def rule_matches(doc: dict[str, Any], rule_id: str, request: Request) -> bool:
    """Does this one rule, alone in a bundle, match the request?"""
    alone = dict(doc, rules=[r for r in doc["rules"] if r["id"] == rule_id])
    return compiled(alone, "alone").evaluate(request, now=NOW).rule_id == rule_id


def reaches(doc: dict[str, Any], rule_id: str, request: Request) -> bool:
    """Does no rule before ``rule_id`` decide the request?"""
    ids = [r["id"] for r in doc["rules"]]
    before = dict(doc, rules=doc["rules"][: ids.index(rule_id)])
    return compiled(before, "before").evaluate(request, now=NOW).rule_id == ""


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(NOW)


@pytest.fixture
def shadow(clock: FakeClock) -> Iterator[ShadowEvaluator]:
    evaluator = ShadowEvaluator(clock=clock, sample_size=1000)
    evaluator.start()
    yield evaluator
    evaluator.close()


def test_differences_are_exactly_the_requests_the_changed_rule_affects(
    shadow: ShadowEvaluator,
) -> None:
    active_doc, cand_doc = example_doc(), candidate_doc()
    active = compiled(active_doc, "v1")
    shadow.set_policy(compiled(cand_doc, "v2"))
    all_requests = list(requests())
    affected = [
        r
        for r in all_requests
        if reaches(active_doc, CHANGED, r)
        and rule_matches(active_doc, CHANGED, r) != rule_matches(cand_doc, CHANGED, r)
    ]
    assert 0 < len(affected) < len(all_requests) // 4
    for r in all_requests:
        shadow.submit(r, active.evaluate(r, now=NOW), NOW)
    assert shadow.flush(timeout=30)
    report = shadow.report()
    assert (report.version, report.evaluated, report.dropped, report.errors) == (
        "v2",
        len(all_requests),
        0,
        0,
    )
    assert report.agreed == len(all_requests) - len(affected)
    assert report.agreement_rate == pytest.approx(report.agreed / report.evaluated)
    sampled = sorted(
        json.dumps(s, sort_keys=True) for d in report.top_differences for s in d.samples
    )
    assert sampled == sorted(json.dumps(request_to_dict(r), sort_keys=True) for r in affected)
    for d in report.top_differences:
        assert CHANGED in (d.active_rule, d.shadow_rule)
    # Equal clearance and classification: the active bundle allows, the candidate denies.
    keys = {
        (d.active_rule, d.active_decision, d.shadow_rule, d.shadow_decision)
        for d in report.top_differences
    }
    assert keys == {(CHANGED, "allow", "classified-node-deny", "deny")}


def test_attack_shadow_policy_never_changes_served_decisions(shadow: ShadowEvaluator) -> None:
    doc = example_doc()
    active = compiled(doc, "v1")
    allow_all = dict(doc, rules=[{"id": "open", "effect": "allow", "actions": ["*"]}])
    shadow.set_policy(compiled(allow_all, "evil"))
    served: list[Decision] = []
    for r in requests():
        decision = active.evaluate(r, now=NOW)
        shadow.submit(r, decision, NOW)
        served.append(decision)
    before = copy.deepcopy(served)
    assert shadow.flush(timeout=30)
    assert served == before
    assert [active.evaluate(r, now=NOW) for r in requests()] == served
    report = shadow.report(top=1000)
    allowed = sum(d.allowed for d in served)
    assert 0 < allowed < len(served)
    assert report.same_decision == allowed  # the candidate allows all; served answers did not
    assert sum(d.count for d in report.top_differences) == len(served)
    assert {d.shadow_rule for d in report.top_differences} == {"open"}


def test_attack_queue_flood_drops_and_counts_never_blocks(clock: FakeClock) -> None:
    evaluator = ShadowEvaluator(clock=clock, queue_size=3)
    policy = compiled(example_doc(), "v1")
    evaluator.set_policy(policy)
    req = next(requests())
    served = policy.evaluate(req, now=NOW)
    for _ in range(10):  # no worker yet: the queue fills, then submissions are dropped
        evaluator.submit(req, served, NOW)
    assert not evaluator.flush(timeout=0.05)
    evaluator.start()
    try:
        assert evaluator.flush(timeout=30)
        report = evaluator.report()
        assert (report.evaluated, report.agreed, report.dropped) == (3, 3, 7)
        assert report.agreement_rate == 1.0 and report.top_differences == ()
    finally:
        evaluator.close()


def test_no_shadow_costs_nothing_and_a_new_shadow_starts_afresh(
    shadow: ShadowEvaluator, clock: FakeClock
) -> None:
    req = next(requests())
    deny = Decision(Effect.DENY, "", "default deny", "v1")
    shadow.submit(req, deny, NOW)
    assert shadow.flush(timeout=30)
    empty = shadow.report()
    assert (empty.version, empty.evaluated, empty.agreement_rate) == ("", 0, 0.0)
    shadow.set_policy(compiled(example_doc(), "v2"))
    shadow.submit(req, deny, NOW)
    assert shadow.flush(timeout=30)
    assert shadow.report().evaluated == 1
    clock.advance(60)
    shadow.set_policy(compiled(candidate_doc(), "v3"))
    fresh = shadow.report()
    assert (fresh.version, fresh.evaluated, fresh.since) == ("v3", 0, NOW + 60)
    shadow.set_policy(None)
    shadow.submit(req, deny, NOW)
    assert shadow.flush(timeout=30)
    assert shadow.report().evaluated == 0


def test_samples_are_bounded_and_differences_ranked(clock: FakeClock) -> None:
    evaluator = ShadowEvaluator(clock=clock, sample_size=2)
    evaluator.set_policy(compiled(example_doc(), "v1"))
    evaluator.start()
    try:
        req = next(requests())
        fake_a = Decision(Effect.ALLOW, "made-up-a", "x", "v0")
        fake_b = Decision(Effect.ALLOW, "made-up-b", "x", "v0")
        for decision in [fake_a] * 5 + [fake_b] * 7:
            evaluator.submit(req, decision, NOW)
        assert evaluator.flush(timeout=30)
        report = evaluator.report(top=1)
        (top,) = report.top_differences
        assert (top.active_rule, top.count, len(top.samples)) == ("made-up-b", 7, 2)
        assert report.to_dict()["top_differences"][0]["count"] == 7
    finally:
        evaluator.close()


def test_worker_survives_a_request_it_cannot_evaluate(shadow: ShadowEvaluator) -> None:
    shadow.set_policy(compiled(example_doc(), "v1"))
    deny = Decision(Effect.DENY, "", "default deny", "v1")
    shadow.submit(None, deny, NOW)  # type: ignore[arg-type]
    req = next(requests())
    shadow.submit(req, deny, NOW)
    assert shadow.flush(timeout=30)
    report = shadow.report()
    assert (report.errors, report.evaluated) == (1, 1)


def test_bad_sizes_are_refused(clock: FakeClock) -> None:
    with pytest.raises(ValueError, match="queue_size"):
        ShadowEvaluator(clock=clock, queue_size=0)
