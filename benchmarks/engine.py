"""Policy engine benchmark: decision latency (uncached, cached) and compile time by bundle size.

Run: .venv/bin/python -m benchmarks.engine [--quick]; prints a table, writes results/engine.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import platform
import random
import time
from pathlib import Path
from typing import Any

from pdp.clock import system_clock
from pdp.policy import (
    Action,
    DecisionCache,
    PolicyEngine,
    Request,
    Resource,
    Subject,
    compile_bundle,
    load_bundle,
)

RESULTS = Path(__file__).resolve().parent / "results" / "engine.json"
TYPES = 1000
ACTIONS = [f"act{i}" for i in range(10)]
TARGETS = {
    "uncached_p50_us_1000": 15.0,
    "scaling_100000_vs_10": 2.0,
    "cached_p50_us": 3.0,
    "compile_s_100000": 3.0,
}


def make_bundle(n: int, rng: random.Random) -> dict[str, Any]:
    """n rules over 1,000 resource types and 10 actions; a third with conditions; ids mixed."""
    rules = []
    for i in range(n):
        rule: dict[str, Any] = {
            "id": f"r{i}",
            "effect": "deny" if i % 7 == 0 else "allow",
            "actions": [ACTIONS[i % 10]] if i % 5 else [ACTIONS[i % 10], ACTIONS[(i + 3) % 10]],
            "resources": {"type": f"type{(i * 7919) % TYPES}"},
            "subjects": {"type": "user"},
        }
        if i % 4 == 0:
            rule["resources"]["ids"] = [f"res{rng.randrange(100)}"]
        elif i % 4 == 1:
            rule["resources"]["ids"] = [f"res{rng.randrange(10)}*"]
        if i % 6 == 2:
            rule["subjects"]["ids"] = [f"user{rng.randrange(50)}", "admin-*"]
        if i % 3 == 0:
            rule["when"] = (
                {
                    "all": [
                        {"attr": "resource.properties.owner", "eq": {"attr": "subject.id"}},
                        {"attr": "subject.properties.clearance", "ge": rng.randrange(1, 5)},
                    ]
                }
                if i % 2
                else {"attr": "subject.properties.dept", "in": ["eng", "ops", "kg"]}
            )
        rules.append(rule)
    return {"metadata": {"name": f"bench-{n}", "revision": "1"}, "rules": rules}


def make_requests(count: int, rng: random.Random) -> list[Request]:
    out = []
    for _ in range(count):
        uid = f"user{rng.randrange(60)}"
        out.append(
            Request(
                Subject(
                    "user",
                    uid,
                    {"clearance": rng.randrange(0, 6), "dept": rng.choice(["eng", "hr"])},
                ),
                Action(rng.choice(ACTIONS)),
                Resource(
                    f"type{rng.randrange(TYPES)}",
                    f"res{rng.randrange(120)}",
                    {"owner": uid if rng.random() < 0.5 else "someone"},
                ),
            )
        )
    return out


def _percentiles(samples: list[int]) -> tuple[float, float]:
    samples.sort()
    return samples[len(samples) // 2] / 1000, samples[int(len(samples) * 0.99)] / 1000


def _time_calls(fn: Any, reqs: list[Request], rounds: int) -> dict[str, float]:
    clock = time.perf_counter_ns
    samples = []
    gc.disable()
    try:
        start = clock()
        for _ in range(rounds):
            for r in reqs:
                t0 = clock()
                fn(r)
                samples.append(clock() - t0)
        total = clock() - start
    finally:
        gc.enable()
    p50, p99 = _percentiles(samples)
    return {"p50_us": p50, "p99_us": p99, "per_s": len(samples) / (total / 1e9)}


def run_size(n: int, rounds: int, rng: random.Random) -> dict[str, Any]:
    text = json.dumps(make_bundle(n, rng))
    t0 = time.perf_counter()
    bundle = load_bundle(text)
    t1 = time.perf_counter()
    policy = compile_bundle(bundle, version="bench")
    t2 = time.perf_counter()
    reqs = make_requests(2000, rng)
    now = 1_800_000_000.0
    for r in reqs:  # warm the lazily built globs and the key memo, as a server would be
        policy.evaluate(r, now=now)
    uncached = _time_calls(lambda r: policy.evaluate(r, now=now), reqs, rounds)
    engine = PolicyEngine(cache=DecisionCache(clock=system_clock), clock=system_clock)
    engine.activate(policy)
    for _ in range(2):  # the cache keeps a decision on its second request
        for r in reqs:
            engine.decide(r)
    cached = _time_calls(engine.decide, reqs, rounds)
    return {
        "rules": n,
        "load_s": t1 - t0,
        "compile_s": t2 - t1,
        "uncached": uncached,
        "cached": cached,
        "full_cache": _full_cache(policy, reqs, rounds),
    }


def _with_id(request: Request, resource_id: str) -> Request:
    return dataclasses.replace(request,
                               resource=dataclasses.replace(request.resource, id=resource_id))


def _full_cache(policy: Any, reqs: list[Request], rounds: int) -> dict[str, float]:
    """Misses into a full 100,000-entry cache: every decide evaluates, stores and evicts.

    A server answering fresh resource ids with ``[cache] admission = "all"`` lives here
    once its cache has filled; eviction must stay O(1) (it once cost ~30 µs a put). (With
    the default admission a one-off id is not stored: the "uncached" column plus a lookup.)
    """
    engine = PolicyEngine(cache=DecisionCache(max_size=100_000, clock=system_clock,
                                              admission="all"), clock=system_clock)
    engine.activate(policy)
    # Fill it, then churn it as long again: a dict evicted from its front degrades as the
    # deleted slots pile up, so the steady state is only reached after many evictions.
    fresh = [_with_id(reqs[i % len(reqs)], f"fill-{i}") for i in range(250_000)]
    for r in fresh:
        engine.decide(r)
    unique = [_with_id(r, f"u{k}-{i}") for k in range(rounds) for i, r in enumerate(reqs)]
    return _time_calls(engine.decide, unique, 1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer samples")
    args = parser.parse_args(argv)
    rounds = 3 if args.quick else 15
    rng = random.Random(7)
    rows = [run_size(n, rounds, rng) for n in (10, 1000, 100_000)]
    print(
        f"{'rules':>8} {'load s':>7} {'compile s':>9} | {'uncached p50':>12} {'p99 µs':>7} "
        f"{'dec/s':>9} | {'cached p50':>10} {'p99 µs':>7} {'dec/s':>9} | {'full-cache miss':>15}"
    )
    for row in rows:
        u, c = row["uncached"], row["cached"]
        print(
            f"{row['rules']:>8} {row['load_s']:>7.2f} {row['compile_s']:>9.3f} | "
            f"{u['p50_us']:>12.2f} {u['p99_us']:>7.2f} {u['per_s']:>9.0f} | "
            f"{c['p50_us']:>10.2f} {c['p99_us']:>7.2f} {c['per_s']:>9.0f} | "
            f"{row['full_cache']['p50_us']:>15.2f}"
        )
    by_n = {row["rules"]: row for row in rows}
    measured = {
        "uncached_p50_us_1000": by_n[1000]["uncached"]["p50_us"],
        "scaling_100000_vs_10": by_n[100_000]["uncached"]["p50_us"]
        / by_n[10]["uncached"]["p50_us"],
        "cached_p50_us": max(row["cached"]["p50_us"] for row in rows),
        "compile_s_100000": by_n[100_000]["compile_s"],
    }
    for name, value in measured.items():
        verdict = "ok" if value <= TARGETS[name] else "MISSED"
        print(f"target {name}: {value:.2f} (<= {TARGETS[name]}) {verdict}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        json.dumps(
            {
                "python": platform.python_version(),
                "quick": args.quick,
                "sizes": rows,
                "targets": TARGETS,
                "measured": measured,
            },
            indent=2,
        )
        + "\n",
        encoding="utf-8",
    )
    print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
