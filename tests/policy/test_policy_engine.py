"""PolicyEngine and DecisionCache: order of checks, activation, cache keys and expiry, exports."""

from __future__ import annotations

import json
import threading
from datetime import datetime

import pdp.policy
from pdp.clock import FakeClock
from pdp.policy import (
    Action,
    Decision,
    DecisionCache,
    Effect,
    PolicyEngine,
    Request,
    Resource,
    Subject,
    compile_bundle,
    load_bundle,
)

BUNDLE = """
metadata: {name: e, revision: "1"}
segments: {mesh: ["10.20.0.0/16"]}
rules:
  - {id: level-one, effect: allow, actions: [read], when: {attr: subject.properties.level, eq: 1}}
  - {id: level-lt, effect: allow, actions: [sort], when: {attr: subject.properties.level, lt: 5}}
  - {id: mesh-only, effect: allow, actions: [call], when: {peer_in_segment: mesh}}
  - id: office
    effect: allow
    actions: [work]
    when: {time_window: {days: [sun], from: "02:00", to: "02:30", tz: Europe/Berlin}}
"""


def _t(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def req(action: str = "read", props: dict | None = None, peer: str | None = None) -> Request:
    return Request(
        Subject("user", "u1", props or {}), Action(action), Resource("doc", "d1"), peer_ip=peer
    )


def make(clock: FakeClock, *, version: str = "v1", ttl: float = 60.0) -> PolicyEngine:
    # Every decision stored at once: these tests are about what is stored, not when.
    engine = PolicyEngine(cache=DecisionCache(clock=clock, ttl=ttl, admission="all"),
                          clock=clock)
    engine.activate(compile_bundle(load_bundle(BUNDLE), version=version))
    return engine


def test_exported_names_are_exactly_the_public_api() -> None:
    assert sorted(pdp.policy.__all__) == sorted(
        [
            "Action",
            "Bundle",
            "CacheStats",
            "CompiledPolicy",
            "Decision",
            "DecisionCache",
            "Effect",
            "Limits",
            "PolicyEngine",
            "Request",
            "Resource",
            "ResourceMatch",
            "Rule",
            "RuleTrace",
            "Subject",
            "SubjectMatch",
            "compile_bundle",
            "load_bundle",
            "load_bundle_file",
        ]
    )
    assert Effect(0) is Effect.DENY


def test_no_active_bundle_denies() -> None:
    decision = PolicyEngine().decide(req())
    assert (decision.effect, decision.reason, decision.allowed) == (
        Effect.DENY,
        "no active bundle",
        False,
    )


def test_quarantine_comes_before_the_cache_and_expires() -> None:
    clock = FakeClock()
    engine = make(clock)
    assert engine.decide(req(props={"level": 1})).allowed
    engine.set_quarantine({"u1": clock() + 10})
    hit = engine.decide(req(props={"level": 1}))
    assert (hit.effect, hit.reason, hit.cached) == (Effect.DENY, "quarantined", False)
    clock.advance(10)
    assert not engine.is_quarantined("u1", clock())
    assert engine.decide(req(props={"level": 1})).allowed


def test_cache_hits_misses_and_ttl() -> None:
    clock = FakeClock()
    engine = make(clock, ttl=30)
    cache = engine.cache
    assert cache is not None
    first = engine.decide(req(props={"level": 1}))
    second = engine.decide(req(props={"level": 1}))
    assert not first.cached and second.cached and second.effect is first.effect
    stats = cache.stats()
    assert (stats.hits, stats.misses, stats.size) == (1, 1, 1)
    clock.advance(31)
    assert not engine.decide(req(props={"level": 1})).cached
    cache.clear()
    assert cache.stats().size == 0


def test_cache_poisoning_by_type_confusion_true_vs_1() -> None:
    clock = FakeClock()
    engine = make(clock)
    assert engine.decide(req(props={"level": 1})).allowed
    # True == 1 in Python; the cache key must keep them apart or `true` rides on the allow.
    decision = engine.decide(req(props={"level": True}))
    assert not decision.allowed and not decision.cached


def test_cache_key_holds_every_read_input() -> None:
    clock = FakeClock()
    engine = make(clock)
    assert engine.decide(req("call", peer="10.20.0.9")).allowed
    assert not engine.decide(req("call", peer="203.0.113.5")).allowed  # peer is in the key
    assert not engine.decide(req(props={"level": 1})).cached
    assert engine.decide(req(props={"level": 1.0})).cached  # 1 and 1.0 are one value


def test_evaluation_errors_are_counted_and_never_cached() -> None:
    clock = FakeClock()
    engine = make(clock)
    for _ in range(3):
        decision = engine.decide(req("sort", props={"level": "high"}))
        assert decision.effect is Effect.DENY and not decision.cached
        assert decision.reason.startswith("evaluation error in rule level-lt:")
    assert engine.evaluation_errors == 3


def test_activation_swaps_atomically_and_the_cache_is_keyed_by_version() -> None:
    clock = FakeClock()
    engine = make(clock)
    assert engine.decide(req(props={"level": 1})).bundle_version == "v1"
    deny_all = load_bundle('{"metadata": {"name": "d", "revision": "2"}, "rules": []}')
    engine.activate(compile_bundle(deny_all, version="v2", sequence=2))
    decision = engine.decide(req(props={"level": 1}))
    assert (decision.effect, decision.bundle_version, decision.cached) == (Effect.DENY, "v2", False)
    assert engine.policy is not None and engine.policy.sequence == 2


def test_activation_under_concurrent_decisions_never_mixes_versions() -> None:
    clock = FakeClock()
    engine = make(clock)
    policies = [compile_bundle(load_bundle(BUNDLE), version=f"v{i}") for i in range(20)]
    seen: list[str] = []
    stop = threading.Event()

    def worker() -> None:
        while not stop.is_set():
            d = engine.decide(req(props={"level": 1}))
            assert d.allowed and d.rule_id == "level-one"
            seen.append(d.bundle_version)

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for t in threads:
        t.start()
    for p in policies:
        engine.activate(p)
    stop.set()
    for t in threads:
        t.join()
    assert seen and set(seen) <= {"v1", *(p.version for p in policies)}


def test_clock_reading_decision_expires_at_the_window_boundary_across_dst() -> None:
    # 2025-10-26, Berlin falls back at 03:00 CEST -> 02:00 CET; the window is 02:00-02:30 local.
    clock = FakeClock(_t("2025-10-26T00:10:00Z"))  # 02:10 CEST: inside
    engine = make(clock, ttl=24 * 3600)
    assert engine.decide(req("work")).allowed
    clock.set(_t("2025-10-26T00:29:59Z"))
    assert engine.decide(req("work")).cached
    clock.set(_t("2025-10-26T00:30:00Z"))  # 02:30 CEST: window closed, the cache must not say allow
    closed = engine.decide(req("work"))
    assert not closed.allowed and not closed.cached
    clock.set(_t("2025-10-26T00:59:59Z"))
    assert engine.decide(req("work")).cached
    clock.set(_t("2025-10-26T01:00:00Z"))  # 02:00 CET again: the window reopens
    reopened = engine.decide(req("work"))
    assert reopened.allowed and not reopened.cached


def test_window_next_change_never_overshoots_spring_forward() -> None:
    policy = compile_bundle(load_bundle(BUNDLE), version="v")
    start = _t("2025-03-29T12:00:00Z")
    for step in range(0, 26 * 3600, 600):  # every 10 minutes over the DST night
        now = start + step
        d, expires, _ = policy.decide_for_cache(req("work"), now)
        assert expires > now
        probe = now
        while probe < min(expires, now + 3600):
            assert policy.evaluate(req("work"), now=probe).effect is d.effect
            probe += 60


def test_decision_cache_rejects_bad_settings() -> None:
    for kwargs in ({"max_size": 0}, {"ttl": 0}, {"admission": "sometimes"}):
        try:
            DecisionCache(**kwargs)  # type: ignore[arg-type]
        except ValueError:
            continue
        raise AssertionError(kwargs)


def test_full_decision_cache_evicts_oldest_first_and_stays_bounded() -> None:
    clock = FakeClock(1_000.0)
    cache = DecisionCache(max_size=3, ttl=60, clock=clock, admission="all")
    decision = Decision(Effect.ALLOW, "r", "allowed by rule r", "v1")
    for i in range(10):  # a churning, always-full cache: every put evicts one entry
        cache.put(("k", i), decision)
        assert cache.stats().size == min(i + 1, 3)
    assert [cache.get(("k", i)) is not None for i in range(10)] == [False] * 7 + [True] * 3
    hit = cache.get(("k", 9))
    assert hit is not None and hit.cached and hit.rule_id == "r"
    clock.advance(61)  # expired entries are dropped on read, and a new put still fits
    assert cache.get(("k", 9)) is None
    cache.put(("k", 10), decision)
    assert cache.get(("k", 10)) is not None and len(cache._order) <= 3


def test_a_decision_is_cached_when_asked_for_a_second_time() -> None:
    clock = FakeClock(1_000.0)
    engine = PolicyEngine(cache=DecisionCache(clock=clock), clock=clock)  # admission "repeat"
    engine.activate(compile_bundle(load_bundle(BUNDLE), version="v1"))
    first, second, third = (engine.decide(req()) for _ in range(3))
    assert (first.cached, second.cached, third.cached) == (False, False, True)
    assert first.effect is second.effect is third.effect
    stats = engine.cache.stats() if engine.cache is not None else None
    assert stats is not None and (stats.hits, stats.misses, stats.size) == (1, 2, 1)


def test_one_off_keys_never_fill_the_cache_nor_push_out_repeated_ones() -> None:
    clock = FakeClock(1_000.0)
    cache = DecisionCache(max_size=3, ttl=60, clock=clock)
    decision = Decision(Effect.ALLOW, "r", "allowed by rule r", "v1")
    cache.put(("hot",), decision)
    cache.put(("hot",), decision)  # asked for again: stored
    for i in range(100):  # one-off keys: decided, never stored
        cache.put(("once", i), decision)
    assert cache.stats().size == 1 and cache.get(("hot",)) is not None


def test_the_doorkeeper_remembers_a_key_for_one_to_two_generations() -> None:
    cache = DecisionCache(max_size=4, ttl=60, clock=FakeClock(1_000.0))
    assert not cache.admits("k")  # first time: remembered
    for i in range(4):  # the generation fills and rotates: "k" is in the previous one
        assert not cache.admits(("other", i))
    assert cache.admits("k")
    for i in range(4, 12):  # two more generations: forgotten
        assert not cache.admits(("other", i))
    assert not cache.admits("k")
    assert cache.admits("k")
    cache.clear()  # forgets what it saw, too
    assert not cache.admits("k")


def test_admission_all_stores_at_once() -> None:
    cache = DecisionCache(admission="all", clock=FakeClock(1_000.0))
    cache.put(("k",), Decision(Effect.ALLOW, "r", "", "v1"))
    assert cache.get(("k",)) is not None


def test_cache_keys_hold_each_attribute_read_one_reader_or_several() -> None:
    """The key holds every attribute a rule reads, with one reader (the short way) and with
    several: requests that differ in any one of them never share a key."""
    one = compile_bundle(load_bundle(json.dumps({
        "metadata": {"name": "k", "revision": "1"},
        "rules": [{"id": "own", "effect": "allow", "actions": ["read"],
                   "when": {"attr": "resource.properties.owner", "eq": {"attr": "subject.id"}}}],
    })), version="v1")
    several = compile_bundle(load_bundle(json.dumps({
        "metadata": {"name": "k", "revision": "1"},
        "rules": [{"id": "both", "effect": "allow", "actions": ["read"],
                   "when": {"all": [{"attr": "context.a", "eq": 1}, {"attr": "context.b", "eq": 2},
                                    {"attr": "context.c", "eq": [3]}]}}],
    })), version="v1")

    def request(owner: object = "alice", **context: object) -> Request:
        return Request(Subject("user", "alice"), Action("read"),
                       Resource("doc", "d1", {"owner": owner}), context)

    assert one.cache_key(request()) != one.cache_key(request("bob"))
    assert one.cache_key(request(True)) != one.cache_key(request(1))
    assert one.cache_key(request([1])) == one.cache_key(request([1.0]))  # lists are frozen
    base = {"a": 1, "b": 2, "c": [3]}
    keys = {several.cache_key(request(**base))}
    for name, other in (("a", 9), ("b", 9), ("c", [9])):
        keys.add(several.cache_key(request(**(base | {name: other}))))
    assert len(keys) == 4
    assert several.cache_key(request(**base)) == several.cache_key(request(**base))
