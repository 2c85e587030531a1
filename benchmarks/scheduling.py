"""The CPU scheduling policy of the server process: Linux's default against SCHED_BATCH.

``python -m benchmarks.scheduling`` (``make bench-sched``) serves the floor and pdp (1,000
rules) twice each, pinned to the server core: under the default policy (SCHED_OTHER,
"normal") and under SCHED_BATCH (``chrt --batch 0``, "batch"; every thread inherits it).
All four are measured in the same rounds, in an order that rotates from round to round:

- uncached Authorize at 32 and at 1 call in flight, and the Cerbos comparison's
  AuthorizeBatch(3) at 32, on a server core of their own;
- uncached Authorize at 1 in flight with a **neighbour**: a CPU-bound process of the default
  policy pinned to the server core for the window, as another tenant of a shared core
  would be. This is where SCHED_BATCH can cost latency: its threads do not preempt the
  running thread when they wake, so a call may wait for the neighbour's time slice.

Why it matters to a Python server: every GIL hand-over wakes a waiting thread, and a woken
thread of the default policy preempts the running one at once; a thread that released the
GIL for a moment (``context.peer()`` does twice on every call) can then lose the core and
the GIL mid-call. Under SCHED_BATCH the woken thread waits for the running thread to block.

Each row shows its medians, its CPU per call against the floor of the same policy, and
against the same server under the default policy (medians of per-round ratios). The
policies the servers' threads ran under are read back from the kernel and written with the
results. Prints the table and writes ``benchmarks/results/scheduling.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from benchmarks.bundles import bundle_json
from benchmarks.harness import (
    POLICIES,
    BenchEnv,
    ServerProc,
    pinned,
    scheduling_policies,
    start_floor,
    start_pdp,
    stop_all,
)
from benchmarks.load import LoadPool
from benchmarks.report import Row, machine, paired_ratio, write_json
from benchmarks.run import CLIENT_CORE, RESULTS, SERVER_CORE, WORK, WORKERS
from benchmarks.scenarios import Bench, measure, spread

__all__ = ["SHAPES", "main", "neighbour", "run"]

# name: (op, calls in flight, batch size, a new resource every call, with a neighbour)
SHAPES: dict[str, tuple[str, int, int, bool, bool]] = {
    "authorize-32": ("authorize", 32, 1, True, False),
    "authorize-1": ("authorize", 1, 1, True, False),
    "batch3-32": ("batch", 32, 3, False, False),
    "authorize-1-shared": ("authorize", 1, 1, True, True),
}
SERVERS = ("floor", "pdp")


@contextlib.contextmanager
def neighbour(cores: str | None) -> Iterator[subprocess.Popen[bytes]]:
    """A CPU-bound process of the default policy pinned to ``cores`` while the block runs."""
    proc = subprocess.Popen([*pinned(cores), sys.executable, "-c", "while True: pass"])
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait()


def _table(title: str, table: dict[str, dict[tuple[str, str], Row]]) -> str:
    head = (f"{'shape':<20}{'server':<8}{'policy':<8}{'calls/s':>10}{'p50 ms':>9}"
            f"{'p99 ms':>9}{'CPU us/call':>13}{'vs floor':>10}{'vs normal':>11}"
            f"{'p50 vs normal':>15}")
    lines = [f"\n== {title}", head, "-" * len(head)]
    for shape, rows in table.items():
        for (who, policy), row in rows.items():
            floor = rows[("floor", policy)]
            normal = rows[(who, "normal")]
            vs_floor = paired_ratio(row, floor, "server_cpu_us_per_call") or 0.0
            vs_normal = paired_ratio(row, normal, "server_cpu_us_per_call") or 0.0
            p50_normal = paired_ratio(row, normal, "p50_ms") or 0.0
            errors = f"  errors={row.errors}" if row.errors else ""
            lines.append(
                f"{shape:<20}{who:<8}{policy:<8}{row.median('calls_per_s'):>10,.0f}"
                f"{row.median('p50_ms'):>9.2f}{row.median('p99_ms'):>9.2f}"
                f"{row.median('server_cpu_us_per_call'):>13,.1f}{vs_floor:>10.3f}"
                f"{vs_normal:>11.3f}{p50_normal:>15.3f}{errors}")
    text = "\n".join(lines)
    print(text, flush=True)
    return text


def run(*, rounds_: int = 6, seconds: float = 2.0, shapes: tuple[str, ...] = tuple(SHAPES),
        out_dir: Path = RESULTS, work: Path = WORK) -> dict[str, Any]:
    """Measure floor and pdp under each policy; write and return the results. Raises
    RuntimeError when a server cannot be started under a policy (no chrt) or its threads
    do not run under the policy asked for, ValueError for an unknown shape."""
    unknown = [s for s in shapes if s not in SHAPES]
    if unknown or not shapes:
        raise ValueError(f"unknown shape(s) {', '.join(unknown) or '(none given)'}; known: "
                         f"{', '.join(SHAPES)}")
    started = time.perf_counter()
    out: dict[str, Any] = {"machine": machine(), "rounds": rounds_, "seconds": seconds,
                           "command": "python -m benchmarks.scheduling"}
    with contextlib.ExitStack() as stack:
        env = BenchEnv(work / "scheduling")
        pool = LoadPool(WORKERS, core=CLIENT_CORE)
        stack.callback(pool.close)
        stack.callback(stop_all, env.servers)
        bench = Bench(env, pool, rounds_, seconds, client_cores=1)
        bundle = env.sign("b1000", bundle_json(1000), 1000)
        servers: dict[tuple[str, str], ServerProc] = {}
        for policy in POLICIES:
            servers[("floor", policy)] = start_floor(env, f"floor-{policy}", cores=SERVER_CORE,
                                                     policy=policy)
            servers[("pdp", policy)] = start_pdp(env, f"pdp-{policy}", cores=SERVER_CORE,
                                                 bundle=bundle, policy=policy)
        out["policies"] = {}
        for (who, policy), server in servers.items():
            seen = scheduling_policies(server.pid)
            if seen != {policy}:
                raise RuntimeError(f"{who} started under {policy} runs threads under "
                                   f"{', '.join(sorted(seen))}")
            out["policies"][f"{who}, {policy}"] = sorted(seen)
        table = {shape: {key: Row(f"{shape}, {key[0]}, {key[1]}") for key in servers}
                 for shape in shapes}
        order = list(servers)
        for r in range(rounds_):
            k = r % len(order)
            for shape in shapes:
                op, inflight, size, vary, shared = SHAPES[shape]
                with neighbour(SERVER_CORE) if shared else contextlib.nullcontext():
                    for key in order[k:] + order[:k]:
                        server = servers[key]
                        job = bench.job(server, op=op, vary=vary, batch=size)
                        table[shape][key].rounds.append(
                            measure(bench, [server], spread(job, inflight, WORKERS)))
        title = (f"floor and pdp (1,000 rules) under each CPU scheduling policy, median of "
                 f"{rounds_} rounds of {seconds} s; ratios: median of the per-round ratios")
        out["table"] = _table(title, table)
        out["shapes"] = {shape: {f"{who}, {policy}": row.summary()
                                 for (who, policy), row in rows.items()}
                         for shape, rows in table.items()}
    out["wall_seconds"] = time.perf_counter() - started
    write_json(out_dir / "scheduling.json", out)
    print(f"\nwrote {out_dir / 'scheduling.json'} in {out['wall_seconds']:.0f} s")
    return out


def main(argv: list[str] | None = None) -> int:
    """Parse the settings; run."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.scheduling",
                                description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--seconds", type=float, default=2.0, help="the length of each window")
    p.add_argument("--shapes", default=",".join(SHAPES),
                   help=f"comma-separated, of: {', '.join(SHAPES)}")
    args = p.parse_args(argv)
    if args.rounds < 1 or not args.seconds > 0:
        print("benchmarks.scheduling: rounds must be at least 1 and seconds positive",
              file=sys.stderr)
        return 1
    try:
        run(rounds_=args.rounds, seconds=args.seconds,
            shapes=tuple(s for s in args.shapes.split(",") if s))
    except (RuntimeError, ValueError) as exc:
        print(f"benchmarks.scheduling: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
