"""Feed the loader's and the compiler's C helpers (pdp/policy/_json.c) hostile bundles; run by
test_json_sanitized.py in a process where they were built with AddressSanitizer, so any read
or write outside a buffer aborts.

    python tests/policy/bundle_fuzz.py <path of the sanitized _json module> <bundles> <seed>

Bundles: a rule of valid parts, then copies of it with parts replaced by faulty values,
look-alikes and random JSON values (tests/policy/test_policy_large.py's pools), each loaded
with the fast path and with the full path alone (the two must agree), and each loaded bundle
compiled, evaluated and put in its canonical form; Keys of random values; and one bundle of
10,000 rules (three pieces for the C's chunked loops). Prints how many bundles loaded, how
many were refused, and how many Keys were made.
"""

from __future__ import annotations

import copy
import importlib.machinery
import importlib.util
import json
import random
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]


def _install(path: str) -> None:
    """The sanitized build as pdp.policy._json, before pdp.policy imports it."""
    loader = importlib.machinery.ExtensionFileLoader("pdp.policy._json", path)
    spec = importlib.util.spec_from_loader("pdp.policy._json", loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    sys.modules["pdp.policy._json"] = module


def _value(rng: random.Random, depth: int = 0) -> Any:
    pick = rng.random()
    if depth > 4 or pick < 0.5:
        return rng.choice([0, 1, -1, 2**64, 1.5, -0.0, 0.0, True, False, None, "", "read",
                           "doc", "a*", "[", "é", "\u2028", "x" * 50])
    if pick < 0.75:
        return [_value(rng, depth + 1) for _ in range(rng.randint(0, 3))]
    keys = ["type", "ids", "roles", "attr", "eq", "all", "any", "not", "in", "x"]
    return {rng.choice(keys): _value(rng, depth + 1) for _ in range(rng.randint(0, 3))}


def main(path: str, count: int, seed: int) -> int:
    _install(path)
    sys.path.insert(0, str(REPO))
    from pdp.errors import BundleError
    from pdp.policy import Action, Request, Resource, Subject, compile_bundle, load_bundle
    from pdp.policy._json import Key
    from tests.policy.test_policy_large import _MISSING, _REPLACED, _VALID, _outcomes

    assert sys.modules["pdp.policy._json"].__file__ == path
    rng = random.Random(seed)
    request = Request(Subject("user", "u"), Action("read"), Resource("doc", "a", {"owner": "u"}))
    loaded = refused = keys = 0
    for _ in range(count):
        base: dict[str, Any] = {"id": "r0"}
        for key, values in _VALID.items():
            if (value := rng.choice(values)) is not _MISSING:
                base[key] = copy.deepcopy(value)
        rules: list[Any] = [base]
        for j in range(rng.randint(1, 4)):
            rule = copy.deepcopy(base)
            rule["id"] = f"r{j + 1}"
            for _ in range(rng.randint(0, 2)):
                key = rng.choice([*_VALID, "id", "x"])
                if rng.random() < 0.5:
                    rule[key] = _value(rng)
                elif (value := rng.choice(_REPLACED.get(key, [1]))) is _MISSING:
                    rule.pop(key, None)
                else:
                    rule[key] = copy.deepcopy(value)
            if rng.random() < 0.3 and isinstance(rule.get("resources"), dict):
                rule["resources"][rng.choice(["type", "ids"])] = _value(rng)
            rules.append(rule)
        fast, full = _outcomes(rules)
        if fast != full:
            print(f"the fast and the full path differ on {rules!r}: {fast} / {full}")
            return 1
        if fast[0] == "refused":
            refused += 1
            continue
        loaded += 1
        doc = {"metadata": {"name": "p", "revision": "1"}, "roles": {"team": ["a"]},
               "segments": {"mesh": ["10.0.0.0/8"]}, "rules": rules}
        bundle = load_bundle(json.dumps(doc))
        bundle.canonical_bytes()
        compile_bundle(bundle, version="1-a").evaluate(request, now=0.0)
        value = _value(rng)
        keys += Key(value) == Key(copy.deepcopy(value))
    big = {"metadata": {"name": "big", "revision": "1"}, "rules": [
        {"id": f"r{i}", "effect": "allow", "actions": ["read"],
         "resources": {"type": f"t{i % 5000}", "ids": [f"{i % 7}*"]}} for i in range(10_000)]}
    try:
        bundle = load_bundle(json.dumps(big))
    except BundleError as exc:
        print(f"the 10,000-rule bundle was refused: {exc}")
        return 1
    compile_bundle(bundle, version="1-b").evaluate(request, now=0.0)
    canonical = len(bundle.canonical_bytes())
    print(f"loaded {loaded}, refused {refused}, keys {keys}, canonical {canonical}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3])))
