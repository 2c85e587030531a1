"""Side by side: the no-op floor, pdp at an older revision and pdp as checked out, in one run.

``python -m benchmarks.ab REV`` (``make bench-ab OLD=REV``) checks REV out into a temporary
git worktree, builds its C modules there, and serves it beside this checkout's pdp and the
floor, each its own process pinned to the server core. Every shape is measured once per
round on every server, in an order that rotates from round to round. On these noisy 2-core
machines the same configuration can move by 10-20 % between windows a minute apart, so a
change is judged by the **median of the per-round ratios** new/old (each ratio taken within
one round, both sides measured seconds apart), shown beside the medians of each side.
``--new REV`` compares two revisions instead of REV and the working tree. ``--pushes N``
also pushes N new revisions of the bundle (of ``--rules`` rules) to each pdp side with no
load, then N under 8 uncached calls in flight, the sides by turns: how long a push and
activation takes, and whether any call failed meanwhile. ``--client native``
sends the load with the native generator of ``benchmarks.native`` instead of pdp-client (one
process on the client core, which it does not fill), so that the client's own limit does not
set how calls arrive.

Prints the table and writes ``benchmarks/results/ab.json``. The old revision must read the
configuration this checkout's harness writes (``benchmarks.harness.PDP_CONFIG``).
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks import native
from benchmarks.bundles import bundle_json
from benchmarks.harness import (
    ROOT,
    BenchEnv,
    code_env,
    settle,
    start_floor,
    start_pdp,
    stop_all,
)
from benchmarks.load import LoadPool
from benchmarks.report import Row, machine, paired_ratio, write_json
from benchmarks.run import CLIENT_CORE, RESULTS, SERVER_CORE, WORKERS
from benchmarks.scenarios import Bench, measure, spread

__all__ = ["SHAPES", "Shape", "checkout", "main", "run"]

WORK = Path(__file__).resolve().parent / ".cache" / "ab"


@dataclass(frozen=True)
class Shape:
    """One kind of load: what each call sends, and how many calls are in flight."""

    op: str  # "authorize" or "batch"
    inflight: int
    batch: int = 1
    vary: bool = True  # a new resource id per call: never answered from the cache


SHAPES = {
    "authorize-1": Shape("authorize", 1),  # sequential latency
    "authorize-32": Shape("authorize", 32),  # server CPU per call under load
    "batch100-8": Shape("batch", 8, batch=100),  # decisions/s of AuthorizeBatch(100)
    "batch3-32": Shape("batch", 32, batch=3, vary=False),  # the Cerbos comparison's request
}
DEFAULT_SHAPES = ("authorize-1", "authorize-32", "batch100-8")
CLIENTS = ("pdp-client", "native")
# The same shapes for the native generator: (its request kind, method, answer check).
NATIVE = {
    "authorize-1": ("single", native.AUTHORIZE, "pdp"),
    "authorize-32": ("single", native.AUTHORIZE, "pdp"),
    "batch100-8": ("batch100", native.BATCH, "pdp-batch"),
    "batch3-32": ("batch3", native.BATCH, "pdp-batch"),
}


def _git(*args: str) -> str:
    done = subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout.strip()


@contextlib.contextmanager
def checkout(rev: str, parent: Path) -> Iterator[tuple[Path, str]]:
    """A detached worktree of ``rev`` under ``parent`` with its C modules built in place, and
    the commit it is; removed on exit. Raises RuntimeError when ``rev`` is not a commit or
    its C modules do not build."""
    try:
        sha = _git("rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}")
    except RuntimeError:
        raise RuntimeError(f"{rev!r} names no commit of {ROOT}") from None
    path = parent / f"rev-{sha[:12]}"
    parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(RuntimeError):  # left over from an interrupted run
        _git("worktree", "remove", "--force", str(path))
    _git("worktree", "prune")
    _git("worktree", "add", "--detach", "--force", str(path), sha)
    try:
        if (path / "setup.py").exists():
            built = subprocess.run([sys.executable, "setup.py", "-q", "build_ext", "--inplace"],
                                   cwd=path, capture_output=True, text=True)
            if built.returncode != 0:
                raise RuntimeError(f"building {rev}'s C modules failed:\n{built.stderr[-2000:]}")
        yield path, sha
    finally:
        with contextlib.suppress(RuntimeError):
            _git("worktree", "remove", "--force", str(path))


def served_from(code: Path | None, cwd: Path) -> dict[str, str]:
    """Where a server started with ``code`` (see harness.code_env) imports pdp and pdp_client
    from; a check that the revision measured is the one named."""
    probe = subprocess.run(
        [sys.executable, "-c", "import pdp, pdp_client; print(pdp.__file__); "
                               "print(pdp_client.__file__)"],
        cwd=cwd, env=code_env(code), capture_output=True, text=True)
    if probe.returncode != 0:
        raise RuntimeError(f"pdp from {code or ROOT} does not import:\n{probe.stderr[-2000:]}")
    pdp_file, client_file = probe.stdout.splitlines()
    return {"pdp": pdp_file, "pdp_client": client_file}


def _median_ratio(new: Row, old: Row, attr: str) -> float:
    """report.paired_ratio, 0.0 when no round has one (so the table always has a figure)."""
    return paired_ratio(new, old, attr) or 0.0


def _table(title: str, shapes: dict[str, dict[str, Row]]) -> str:
    head = (f"{'shape':<14}{'server':<8}{'calls/s':>10}{'decisions/s':>13}{'p50 ms':>9}"
            f"{'p99 ms':>9}{'slowest':>9}{'CPU us/call':>13}{'vs floor':>10}{'new/old CPU':>13}"
            f"{'new/old dec/s':>15}")
    lines = [f"\n== {title}", head, "-" * len(head)]
    for name, rows in shapes.items():
        floor = rows["floor"]
        for who, row in rows.items():
            vs_floor = _median_ratio(row, floor, "server_cpu_us_per_call")
            cpu = dec = ""
            if who == "new":
                old = rows["old"]
                cpu = f"{_median_ratio(row, old, 'server_cpu_us_per_call'):.3f}"
                dec = f"{_median_ratio(row, old, 'decisions_per_s'):.3f}"
            errors = f"  errors={row.errors}" if row.errors else ""
            lines.append(
                f"{name:<14}{who:<8}{row.median('calls_per_s'):>10,.0f}"
                f"{row.median('decisions_per_s'):>13,.0f}{row.median('p50_ms'):>9.2f}"
                f"{row.median('p99_ms'):>9.2f}{row.slowest_ms:>9.1f}"
                f"{row.median('server_cpu_us_per_call'):>13,.1f}"
                f"{vs_floor:>10.3f}{cpu:>13}{dec:>15}{errors}")
    text = "\n".join(lines)
    print(text, flush=True)
    return text


def run(old: str, *, new: str | None = None, shapes: Sequence[str] = DEFAULT_SHAPES,
        rounds: int = 6, seconds: float = 2.0, out_dir: Path = RESULTS,
        work: Path = WORK, client: str = "pdp-client", rules: int = 1000,
        pushes: int = 0) -> dict[str, Any]:
    """Measure floor, ``old`` and ``new`` (None: the working tree) side by side, the load
    sent by ``client`` (one of CLIENTS), both pdp sides serving a bundle of ``rules`` rules,
    and then ``pushes`` pushes to each side with no load and as many under load (see
    :func:`_pushes`); write and return the results. Raises RuntimeError
    when a revision cannot be checked out or built, a server does not run the code it is
    meant to, a shape or client is unknown, or the native generator cannot be built."""
    if client not in CLIENTS:
        raise RuntimeError(f"unknown client {client!r}; known: {', '.join(CLIENTS)}")
    binary: Path | None = None
    if client == "native":
        try:
            binary = native.build()
        except native.NativeUnavailable as exc:
            raise RuntimeError(f"--client native: {exc}") from None
    unknown = [s for s in shapes if s not in SHAPES]
    if unknown or not shapes:
        raise RuntimeError(f"unknown shape(s) {', '.join(unknown) or '(none given)'}; known: "
                           f"{', '.join(SHAPES)}")
    if rules < 3:
        raise RuntimeError(f"a bundle has at least 3 rules here, not {rules}")
    if pushes < 0:
        raise RuntimeError(f"pushes must be 0 or more, not {pushes}")
    if rounds < 1 or not seconds > 0:
        raise RuntimeError(f"rounds must be at least 1 and seconds positive, not {rounds} and "
                           f"{seconds}")
    started = time.perf_counter()
    out: dict[str, Any] = {"machine": machine(), "rounds": rounds, "seconds": seconds,
                           "client": client, "rules": rules,
                           "command": f"python -m benchmarks.ab {old}"
                                      + (f" --new {new}" if new else "")
                                      + (f" --client {client}" if binary else "")
                                      + (f" --rules {rules}" if rules != 1000 else "")
                                      + (f" --pushes {pushes}" if pushes else "")}
    with contextlib.ExitStack() as stack:  # on exit: servers, load generators, worktrees
        old_path, old_sha = stack.enter_context(checkout(old, work))
        new_path, new_sha = (None, _git("rev-parse", "HEAD")) if new is None else (
            stack.enter_context(checkout(new, work)))
        env = BenchEnv(work / "env")
        out["old"] = _side(old, old_sha, old_path, env.directory)
        out["new"] = _side(new or "the working tree", new_sha, new_path, env.directory)
        pool = LoadPool(WORKERS, core=CLIENT_CORE)
        stack.callback(pool.close)
        stack.callback(stop_all, env.servers)
        bench = Bench(env, pool, rounds, seconds, client_cores=1)
        bundle = env.sign(f"b{rules}", bundle_json(rules), rules)
        servers = {
            "floor": start_floor(env, "floor", cores=SERVER_CORE),
            "old": start_pdp(env, "old", cores=SERVER_CORE, bundle=bundle, code=old_path),
            "new": start_pdp(env, "new", cores=SERVER_CORE, bundle=bundle, code=new_path),
        }
        for side, code in (("old", old_path), ("new", new_path)):
            out[side]["loaded"] = _loaded_modules(servers[side].pid, code or ROOT)
        table = {name: {who: Row(f"{name}, {who}") for who in servers} for name in shapes}
        order = list(servers)
        for r in range(rounds):
            k = r % len(order)
            for name in shapes:
                shape = SHAPES[name]
                for who in order[k:] + order[:k]:
                    server = servers[who]
                    if binary is not None:
                        kind, method, check = NATIVE[name]
                        load = native.Shape(name, who, method, kind, shape.inflight, check,
                                            shape.batch)
                        request = native.request_bytes(kind, f"{name}-r{r}-{who}")
                        table[name][who].rounds.append(
                            native.window(binary, env, server, load, request, seconds))
                        continue
                    job = bench.job(server, op=shape.op, vary=shape.vary, batch=shape.batch)
                    table[name][who].rounds.append(
                        measure(bench, [server], spread(job, shape.inflight, WORKERS)))
        title = (f"floor, pdp old ({old} = {old_sha[:12]}) and new "
                 f"({new or 'the working tree'}), {rules:,} rules, load from {client}, median "
                 f"of {rounds} rounds of {seconds} s; ratios: median of the per-round ratios; "
                 f"slowest: the slowest call of every round")
        out["table"] = _table(title, table)
        out["shapes"] = {name: _summary(rows) for name, rows in table.items()}
        if pushes:
            out["pushes"] = _pushes(bench, env, servers, rules, pushes)
    out["wall_seconds"] = time.perf_counter() - started
    write_json(out_dir / "ab.json", out)
    print(f"\nwrote {out_dir / 'ab.json'} in {out['wall_seconds']:.0f} s")
    return out


def _pushes(bench: Bench, env: BenchEnv, servers: dict[str, Any], rules: int,
            count: int) -> dict[str, Any]:
    """``count`` pushes (PushBundle, activating) of new revisions of a ``rules``-rule bundle
    to each pdp side with no load, then ``count`` more under 8 uncached Authorize calls in
    flight; the sides by turns, the order alternating, each side pushed the same bundles.
    Prints a table; returns each push's seconds, the calls answered and failed during the
    loaded ones, and the median of the per-pair ratios new/old."""
    bundles = [env.sign(f"push{rules}.{n}", bundle_json(rules, revision=f"p{n}"), rules)
               for n in range(2 * count)]
    sides: dict[str, dict[str, Any]] = {
        who: {"no_load_s": [], "under_load_s": [], "calls": 0, "failed_calls": 0,
              "p99_ms": [], "slowest_ms": []} for who in ("old", "new")}
    for n, bundle in enumerate(bundles):
        for who in ("old", "new") if n % 2 == 0 else ("new", "old"):
            server, got = servers[who], sides[who]
            if n < count:
                settle(env.servers)
                got["no_load_s"].append(env.push(server, bundle))
                continue
            took: list[float] = []
            seconds = max(4.0, 3 * max(got["no_load_s"]))  # the push ends inside the window
            job = bench.job(server, vary=True, duration=seconds)
            window = measure(bench, [server], spread(job, 8, WORKERS),
                             during=lambda s=server, b=bundle, t=took: t.append(env.push(s, b)))
            got["under_load_s"] += took
            got["calls"] += window.calls
            got["failed_calls"] += window.errors
            got["p99_ms"].append(window.p99_ms)
            got["slowest_ms"].append(window.max_ms)
    old, new = sides["old"], sides["new"]
    ratios = {key: statistics.median(b / a for a, b in zip(old[key], new[key], strict=True))
              for key in ("no_load_s", "under_load_s")}
    lines = [f"\n== {count} pushes of a {rules:,}-rule bundle to each side with no load, then "
             f"{count} under 8 uncached calls in flight (sides by turns; medians; new/old: "
             f"median of the per-pair ratios)",
             f"{'side':<6}{'no load s':>11}{'under load s':>14}{'calls':>9}{'failed':>8}"
             f"{'p99 ms, max':>13}{'slowest ms':>12}"]
    for who, got in sides.items():
        lines.append(f"{who:<6}{statistics.median(got['no_load_s']):>11.2f}"
                     f"{statistics.median(got['under_load_s']):>14.2f}{got['calls']:>9,}"
                     f"{got['failed_calls']:>8}{max(got['p99_ms']):>13.1f}"
                     f"{max(got['slowest_ms']):>12.1f}")
    lines.append(f"new/old{ratios['no_load_s']:>10.3f}{ratios['under_load_s']:>14.3f}")
    print("\n".join(lines), flush=True)
    return {**sides, "new_over_old": ratios, "table": "\n".join(lines)}


def _side(rev: str, sha: str, code: Path | None, cwd: Path) -> dict[str, Any]:
    """What one side runs; raises RuntimeError when its servers would import other code."""
    where = served_from(code, cwd)
    expected = code if code is not None else ROOT
    for module, path in where.items():
        if not Path(path).resolve().is_relative_to(expected.resolve()):
            raise RuntimeError(f"{rev}: {module} would be imported from {path}, not from "
                               f"{expected} (is pdp installed from this checkout?)")
    changed = code is None and bool(_git("status", "--porcelain", "--untracked-files=no"))
    return {"rev": rev, "commit": sha, "uncommitted_changes": changed, "served_from": where}


def _loaded_modules(pid: int, expected: Path) -> list[str]:
    """pdp's C modules the running server ``pid`` has loaded (none for a revision without
    any); raises RuntimeError when one comes from elsewhere than ``expected``."""
    paths = set()
    for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
        fields = line.split(maxsplit=5)  # address perms offset dev inode [path]
        path = fields[5] if len(fields) == 6 else ""
        if path.endswith(".so") and "/pdp/" in path:
            paths.add(path)
    for path in paths:
        if not Path(path).resolve().is_relative_to(expected.resolve()):
            raise RuntimeError(f"server {pid} runs {path}, not code from {expected}")
    return sorted(paths)


def _summary(rows: dict[str, Row]) -> dict[str, Any]:
    out: dict[str, Any] = {who: row.summary() for who, row in rows.items()}
    out["new_over_old"] = {
        attr: _median_ratio(rows["new"], rows["old"], attr)
        for attr in ("server_cpu_us_per_call", "decisions_per_s", "p50_ms")}
    return out


def main(argv: list[str] | None = None) -> int:
    """Parse the revisions and settings; run."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.ab", description=__doc__.split("\n")[0])
    p.add_argument("old", help="the revision to compare against (a commit, tag or branch)")
    p.add_argument("--new", help="a revision to measure instead of the working tree")
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--seconds", type=float, default=2.0, help="the length of each window")
    p.add_argument("--shapes", default=",".join(DEFAULT_SHAPES),
                   help=f"comma-separated, of: {', '.join(SHAPES)}")
    p.add_argument("--rules", type=int, default=1000,
                   help="the size of the bundle both pdp sides serve (the benchmark's, at "
                        "least 3)")
    p.add_argument("--pushes", type=int, default=0,
                   help="also push the bundle this many times to each side with no load, and "
                        "as many under load (activation time; 0: none)")
    p.add_argument("--client", default="pdp-client", choices=CLIENTS,
                   help="what sends the load: pdp-client (as make bench) or the native "
                        "generator of benchmarks.native")
    args = p.parse_args(argv)
    try:
        run(args.old, new=args.new, shapes=[s for s in args.shapes.split(",") if s],
            rounds=args.rounds, seconds=args.seconds, client=args.client, rules=args.rules,
            pushes=args.pushes)
    except RuntimeError as exc:
        print(f"benchmarks.ab: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
