"""Is the client the bottleneck? The same load from 1 to 4 load-generator processes.

``python -m benchmarks.clients`` (``make bench-clients``) serves the floor and pdp (1,000
rules) as ``make bench`` does, pinned to the server core, and sends each the uncached
Authorize load of the targets (32 calls in flight) from 1, 2, 3 and 4 load-generator
processes, all pinned to the one client core, interleaved over the rounds. Beside the
figures of each row it prints the share of each core the window used: the server core's
(calls/s x server CPU per call) and the client core's (the load generators' CPU time).

How to read it: where adding a process raises the rate, one process was the limit (its own
event loop, not the core); where the rate stays flat while the server core is near 100 %,
the server is the limit and the client is not; where it stays flat while the client core
is near 100 %, the client core is the limit and the row is a lower bound of what the server
could answer. ``make bench`` uses 2 processes (benchmarks.run.WORKERS).

Prints the table and writes ``benchmarks/results/clients.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.bundles import bundle_json
from benchmarks.harness import BenchEnv, start_floor, start_pdp, stop_all
from benchmarks.load import LoadPool
from benchmarks.report import Row, machine, write_json
from benchmarks.run import CLIENT_CORE, RESULTS, SERVER_CORE, WORK
from benchmarks.scenarios import Bench, rounds, spread

__all__ = ["PROCESSES", "main", "run"]

PROCESSES = (1, 2, 3, 4)
INFLIGHT = 32


def _table(title: str, rows: list[tuple[str, int, Row]]) -> str:
    head = (f"{'server':<8}{'processes':>10}{'calls/s':>10}{'p50 ms':>9}{'p99 ms':>9}"
            f"{'srv CPU us/call':>17}{'server core %':>15}{'client core %':>15}")
    lines = [f"\n== {title}", head, "-" * len(head)]
    for who, count, row in rows:
        rate, cpu = row.median("calls_per_s"), row.median("server_cpu_us_per_call")
        lines.append(f"{who:<8}{count:>10}{rate:>10,.0f}{row.median('p50_ms'):>9.2f}"
                     f"{row.median('p99_ms'):>9.2f}{cpu:>17,.1f}{rate * cpu / 1e4:>15.0f}"
                     f"{row.median('client_cpu_pct'):>15.0f}")
    text = "\n".join(lines)
    print(text, flush=True)
    return text


def run(*, rounds_: int = 5, seconds: float = 2.0, out_dir: Path = RESULTS,
        work: Path = WORK) -> dict[str, Any]:
    """Measure both servers from each number of processes; write and return the results."""
    started = time.perf_counter()
    out: dict[str, Any] = {"machine": machine(), "rounds": rounds_, "seconds": seconds,
                           "inflight": INFLIGHT, "command": "python -m benchmarks.clients"}
    with contextlib.ExitStack() as stack:
        env = BenchEnv(work / "clients")
        pool = LoadPool(max(PROCESSES), core=CLIENT_CORE)
        stack.callback(pool.close)
        stack.callback(stop_all, env.servers)
        bench = Bench(env, pool, rounds_, seconds, client_cores=1)
        bundle = env.sign("b1000", bundle_json(1000), 1000)
        servers = {"floor": start_floor(env, "floor", cores=SERVER_CORE),
                   "pdp": start_pdp(env, "pdp", cores=SERVER_CORE, bundle=bundle)}
        plan = []
        labelled = []
        for count in PROCESSES:
            for who, server in servers.items():
                row = Row(f"{who}, {count} process{'es' if count > 1 else ''}")
                labelled.append((who, count, row))
                plan.append((row, [server], lambda s=server, n=count: spread(
                    bench.job(s, vary=True), INFLIGHT, n)))
        rounds(bench, plan)
        labelled.sort(key=lambda item: (item[0] != "floor", item[1]))
        title = (f"uncached Authorize, {INFLIGHT} in flight, from 1 to {max(PROCESSES)} "
                 f"load-generator processes on one core (median of {rounds_} rounds of "
                 f"{seconds} s)")
        out["table"] = _table(title, labelled)
        out["rows"] = [{"server": who, "processes": count, **row.summary()}
                       for who, count, row in labelled]
    out["wall_seconds"] = time.perf_counter() - started
    write_json(out_dir / "clients.json", out)
    print(f"\nwrote {out_dir / 'clients.json'} in {out['wall_seconds']:.0f} s")
    return out


def main(argv: list[str] | None = None) -> int:
    """Parse the settings; run."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.clients",
                                description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--seconds", type=float, default=2.0, help="the length of each window")
    args = p.parse_args(argv)
    if args.rounds < 1 or not args.seconds > 0:
        print("benchmarks.clients: rounds must be at least 1 and seconds positive",
              file=sys.stderr)
        return 1
    run(rounds_=args.rounds, seconds=args.seconds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
