"""Counted, not timed: the function calls a server makes per request, pdp beside the floor.

``python -m benchmarks.counts`` (``make bench-counts``) serves the floor, pdp (1,000 rules,
the default configuration) and pdp with audit and detection off, one after another, each
with a profile hook (``benchmarks/counting/sitecustomize.py``) that counts every Python and
C function call the server process makes. Each gets 300 sequential warm-up calls from the
shipped sync client, then ``--calls`` sequential uncached Authorize calls while it counts.

On a noisy VM, CPU time moves by 10-20 % between runs; these counts do not. The handler's
calls are exact (one request, one path); the audit writer's and the detectors' depend a
little on how many decisions each of their wake-ups finds, so they move slightly with the
call rate. Each server's total, what pdp adds over the floor per request, and the
functions behind it, are printed and written to ``benchmarks/results/counts.json``.
Instructions rather than calls: docs/performance.md, item 44 (callgrind).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.bundles import bundle_json
from benchmarks.harness import ROOT, BenchEnv, ServerProc, start_floor, start_pdp, stop_all
from benchmarks.report import machine, write_json
from benchmarks.run import AUDIT_OFF, DETECT_OFF, RESULTS, SERVER_CORE, WORK

__all__ = ["SERVERS", "main", "run"]

SERVERS = ("floor", "pdp", "pdp, audit and detection off")
WARM_UP = 300
HOOK = ROOT / "benchmarks" / "counting"


def _environ(out: Path) -> dict[str, str]:
    environ = dict(os.environ)
    environ["PYTHONPATH"] = os.pathsep.join(
        [str(HOOK), str(ROOT), *filter(None, [environ.get("PYTHONPATH")])])
    environ["PDP_BENCH_COUNT"] = str(out)
    return environ


def _count(server: ServerProc, env: BenchEnv, calls: int, out: Path) -> dict[str, float]:
    """Per-request counts of ``calls`` uncached Authorize calls to ``server``."""
    from pdp_client import Action, PDPClient, Resource, Subject

    alice, write = Subject("user", "alice"), Action("write")
    with PDPClient(f"127.0.0.1:{server.port}", server_name="localhost", timeout=30.0,
                   retries=0, fail_closed=False, **env.client_files) as client:
        def ask(rid: str) -> None:
            if not client.authorize(subject=alice, action=write,
                                    resource=Resource("doc", rid, {"owner": "alice"})).allowed:
                raise RuntimeError(f"{server.name}: unexpected DENY")

        for i in range(WARM_UP):
            ask(f"warm-{i}")
        time.sleep(0.3)  # the warm-up's audit and detection backlog, done before counting
        os.kill(server.pid, signal.SIGUSR1)
        time.sleep(0.2)
        for i in range(calls):
            ask(f"counted-{i}")
        time.sleep(0.3)  # the audit writer (50 ms) and the detectors (20 ms) catch up
        out.unlink(missing_ok=True)
        os.kill(server.pid, signal.SIGUSR2)
        deadline = time.monotonic() + 30.0
        while not out.exists():
            if time.monotonic() > deadline:
                raise RuntimeError(f"{server.name}: the counts were not written")
            time.sleep(0.05)
    counts: dict[str, int] = json.loads(out.read_text())
    return {name: n / calls for name, n in counts.items()}


def _table(per: dict[str, dict[str, float]], top: int) -> str:
    floor = per["floor"]
    lines = ["\n== Function calls per request (Python and C), sequential uncached Authorize",
             f"{'server':<32}{'calls/request':>15}{'over the floor':>16}{'pdp functions':>15}",
             "-" * 78]
    for who, counts in per.items():
        total = sum(counts.values())
        own = sum(n for name, n in counts.items() if name.startswith("pdp/"))
        lines.append(f"{who:<32}{total:>15.1f}{total - sum(floor.values()):>16.1f}{own:>15.1f}")
    pdp = per["pdp"]
    added = sorted(((pdp.get(k, 0.0) - floor.get(k, 0.0), k) for k in set(pdp) | set(floor)),
                   reverse=True)
    lines.append(f"\n== What pdp adds over the floor, per request (the {top} largest)")
    lines += [f"{n:>8.2f}  {name}" for n, name in added[:top] if n > 0]
    text = "\n".join(lines)
    print(text, flush=True)
    return text


def run(*, calls: int = 2000, top: int = 40, out_dir: Path = RESULTS,
        work: Path = WORK) -> dict[str, Any]:
    """Count each server's calls per request; write and return the results."""
    started = time.perf_counter()
    out: dict[str, Any] = {"machine": machine(), "calls": calls, "warm_up": WARM_UP,
                           "command": "python -m benchmarks.counts"}
    per: dict[str, dict[str, float]] = {}
    with contextlib.ExitStack() as stack:
        env = BenchEnv(work / "counts")
        stack.callback(stop_all, env.servers)
        bundle = env.sign("b1000", bundle_json(1000), 1000)
        starts: dict[str, Callable[[dict[str, str]], ServerProc]] = {
            "floor": lambda e: start_floor(env, "floor", cores=SERVER_CORE, environ=e),
            "pdp": lambda e: start_pdp(env, "pdp", cores=SERVER_CORE, bundle=bundle,
                                       environ=e),
            "pdp, audit and detection off": lambda e: start_pdp(
                env, "pdp-off", cores=SERVER_CORE, bundle=bundle, extra=AUDIT_OFF + DETECT_OFF,
                environ=e),
        }
        for who in SERVERS:
            file = env.directory / f"counts-{len(per)}.json"
            server = starts[who](_environ(file))
            try:
                per[who] = _count(server, env, calls, file)
            finally:
                env.stop(server)
    out["table"] = _table(per, top)
    out["per_request"] = per
    out["totals"] = {who: sum(c.values()) for who, c in per.items()}
    out["wall_seconds"] = time.perf_counter() - started
    write_json(out_dir / "counts.json", out)
    print(f"\nwrote {out_dir / 'counts.json'} in {out['wall_seconds']:.0f} s")
    return out


def main(argv: list[str] | None = None) -> int:
    """Parse the settings; run."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.counts",
                                description=__doc__.split("\n")[0])
    p.add_argument("--calls", type=int, default=2000, help="counted calls per server")
    p.add_argument("--top", type=int, default=40, help="how many functions to list")
    args = p.parse_args(argv)
    if args.calls < 1 or args.top < 1:
        print("benchmarks.counts: calls and top must be at least 1", file=sys.stderr)
        return 1
    run(calls=args.calls, top=args.top)
    return 0


if __name__ == "__main__":
    sys.exit(main())
