"""`python -m benchmarks.run --quick|--full`: every measurement of issue 8, tables + JSON.

Servers on core 0, load generators on core 1 (where taskset exists); results are medians of
rounds measured side by side in one run, written to benchmarks/results/<name>.json.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks import otlp_sink
from benchmarks.bundles import bundle_json
from benchmarks.harness import (
    BenchEnv,
    ServerProc,
    SignedBundle,
    pinned,
    start_floor,
    start_pdp,
    stop_all,
)
from benchmarks.load import LoadPool
from benchmarks.peers import cerbos
from benchmarks.report import (
    Row,
    machine,
    meets,
    paired_ratio,
    print_table,
    print_targets,
    write_json,
)
from benchmarks.scenarios import Bench, handshakes, measure, rounds, spread, token_verification

__all__ = ["Settings", "main", "run"]

RESULTS = Path(__file__).resolve().parent / "results"
WORK = Path(__file__).resolve().parent / ".cache" / "work"
SERVER_CORE, CLIENT_CORE = "0", 1
WORKERS = 2  # load-generator processes (they share the client core)
CLIENT_BOUND_PCT = 85.0  # a client core this busy may be what sets a row's rate
FLOOR_BATCH = "floor no-op AuthorizeBatch(100), 8 in flight"
BATCH_SINGLE = "Authorize uncached, 32 in flight, in these rounds"
BATCH3_FRESH = "pdp AuthorizeBatch(3) uncached, 32"
SHADOW_ROW = "default + shadow evaluation of a candidate"
AUDIT_OFF = "[audit]\nenabled = false\n"
DETECT_OFF = "[detection]\nenabled = false\n"
# Spans go over OTLP to a collector (benchmarks.otlp_sink, on the client core), as they would
# in a deployment: the server pays for encoding and sending every span it records.
TRACES_ON = '[telemetry]\ntraces = "otlp"\notlp_endpoint = "{endpoint}"\n'
TRACES_SAMPLED = TRACES_ON + "trace_sample_ratio = 0.1\n"
METRICS_ON = '[telemetry]\nmetrics = "prometheus"\nprometheus_port = 0\n'  # any free port


@dataclass(frozen=True)
class Settings:
    """How much to measure."""

    name: str
    rounds: int
    seconds: float
    big_rules: int  # the large bundle (100,000 in --full)
    handshakes: int
    tokens: int
    peers: bool = True
    multiprocess: int = 2  # pdp processes sharing the port in the scaling row


QUICK = Settings("quick", rounds=3, seconds=0.8, big_rules=0, handshakes=20, tokens=200)
FULL = Settings("full", rounds=5, seconds=3.0, big_rules=100_000, handshakes=100, tokens=2000)


def _section(bench: Bench, title: str, rows: list[Row], out: dict[str, Any], key: str) -> None:
    bench.tables.append(print_table(title, rows))
    out[key] = [r.summary() for r in rows]


def core_rows(bench: Bench, floor: ServerProc, plain: ServerProc, pdp: ServerProc,
              out: dict[str, Any]) -> dict[str, Row]:
    """Floor vs Authorize: sequential, 8 and 32 in flight, cached/uncached, mTLS vs plaintext."""
    b = bench

    def seq(server: ServerProc, **kw: Any) -> Any:
        return lambda: [b.job(server, inflight=1, **kw)]

    def par(server: ServerProc, n: int, **kw: Any) -> Any:
        return lambda: spread(b.job(server, **kw), n, WORKERS)

    plan = [
        (Row("floor no-op, 1 in flight"), [floor], seq(floor)),
        (Row("Authorize uncached, 1 in flight"), [pdp], seq(pdp, vary=True)),
        (Row("Authorize cached, 1 in flight"), [pdp], seq(pdp)),
        (Row("floor no-op, 8 in flight"), [floor], par(floor, 8)),
        (Row("Authorize uncached, 8 in flight"), [pdp], par(pdp, 8, vary=True)),
        (Row("floor no-op, 32 in flight"), [floor], par(floor, 32)),
        (Row("Authorize uncached, 32 in flight"), [pdp], par(pdp, 32, vary=True)),
        (Row("Authorize cached, 32 in flight"), [pdp], par(pdp, 32)),
        (Row("floor raw stub mTLS, 32"), [floor], par(floor, 32, client="raw")),
        (Row("Authorize uncached, raw stub, 32", "a lighter client: is pdp-client the limit?"),
         [pdp], par(pdp, 32, client="raw", vary=True)),
        (Row("floor raw stub PLAINTEXT, 32", "plaintext: floor only, for the TLS cost"),
         [plain], par(plain, 32, client="raw", tls=False)),
    ]
    rows = rounds(b, plan)
    _section(b, "Authorize vs the no-op floor (1,000 rules, mTLS, pdp-client)", rows, out, "core")
    return {r.name: r for r in rows}


def bundle_rows(bench: Bench, servers: dict[int, ServerProc], out: dict[str, Any]) -> None:
    """Bundle size: sequential latency and 32-in-flight throughput, uncached."""
    plan = []
    for rules, server in sorted(servers.items()):
        plan.append((Row(f"{rules:,} rules, 1 in flight"), [server],
                     lambda s=server: [bench.job(s, inflight=1, vary=True)]))
        plan.append((Row(f"{rules:,} rules, 32 in flight"), [server],
                     lambda s=server: spread(bench.job(s, vary=True), 32, WORKERS)))
    _section(bench, "Authorize by bundle size (uncached)", rounds(bench, plan), out, "bundles")


def batch_rows(bench: Bench, pdp: ServerProc, floor: ServerProc,
               out: dict[str, Any]) -> dict[str, Row]:
    """AuthorizeBatch of 10, 100, 1000 (uncached), 8 in flight; the floor's batch(100), the
    most this client can send and read (its server does nothing per item); and single
    uncached Authorize calls at 32 in flight again, so that the batch(100) target also has
    a ratio taken within each round (report.paired_ratio), as the others do."""
    plan = [(Row(f"AuthorizeBatch({n}), 8 in flight"), [pdp],
             lambda n=n: spread(bench.job(pdp, op="batch", batch=n, vary=True), 8, WORKERS))
            for n in (10, 100, 1000)]
    plan.append((Row(FLOOR_BATCH, "no-op server: the client's own ceiling"), [floor],
                 lambda: spread(bench.job(floor, op="batch", batch=100, vary=True), 8, WORKERS)))
    plan.append((Row(BATCH_SINGLE, "the single-call rate of these rounds, for paired ratios"),
                 [pdp], lambda: spread(bench.job(pdp, vary=True), 32, WORKERS)))
    rows = rounds(bench, plan)
    _section(bench, "AuthorizeBatch decisions/s (uncached)", rows, out, "batch")
    return {r.name: r for r in rows}


def monitoring_rows(bench: Bench, env: BenchEnv, bundle: Any, full: bool,
                    out: dict[str, Any]) -> None:
    """Audit, tracing, detection, shadow evaluation on vs off: 32 in flight, uncached.
    Raises RuntimeError when the traced servers exported no span."""
    sink = otlp_sink.start_sink(pinned(str(CLIENT_CORE)))
    traces = TRACES_ON.format(endpoint=sink.endpoint)
    variants = [("all off", AUDIT_OFF + DETECT_OFF),
                ("default (audit + detection)", ""),
                (SHADOW_ROW, ""),
                ("all on (audit + detection + tracing)", traces)]
    if full:
        variants += [("default + metrics (Prometheus endpoint)", METRICS_ON),
                     ("audit only", DETECT_OFF), ("detection only", AUDIT_OFF),
                     ("tracing only", AUDIT_OFF + DETECT_OFF + traces),
                     ("tracing only, 1 call in 10 traced (trace_sample_ratio = 0.1)",
                      AUDIT_OFF + DETECT_OFF + TRACES_SAMPLED.format(endpoint=sink.endpoint))]
    servers = []
    try:
        plan = []
        for i, (label, extra) in enumerate(variants):
            s = start_pdp(env, f"mon{i}", cores=SERVER_CORE, extra=extra, bundle=bundle)
            servers.append(s)
            if label == SHADOW_ROW:  # the same rules under another revision: a candidate
                env.shadow(s, env.sign("candidate", bundle_json(bundle.rules, revision="2"),
                                       bundle.rules))
            plan.append((Row(label), [s],
                         lambda s=s: spread(bench.job(s, vary=True), 32, WORKERS)))
        _section(bench, "Monitoring impact (1,000 rules, 32 in flight, uncached)",
                 rounds(bench, plan), out, "monitoring")
        for s in servers:
            env.stop(s)  # a server flushes its last spans as it stops
        servers = []
        out["otlp_spans_received"] = spans = otlp_sink.received(sink.port)
        print(f"(the OTLP collector received {spans:,} spans from the traced servers)")
        if not spans:
            raise RuntimeError("the traced servers exported no span to the OTLP collector")
    finally:
        for s in servers:
            env.stop(s)
        sink.stop()


def peer_rows(bench: Bench, env: BenchEnv, pdp: ServerProc, bundle: Any, processes: int,
              out: dict[str, Any]) -> dict[str, Row]:
    """Cerbos CheckResources(3 actions) vs pdp AuthorizeBatch(3); scaling over processes."""
    b = bench
    rows: dict[str, Row] = {}
    plan: list[Any] = []
    try:
        c = cerbos.start_cerbos(env, cores=SERVER_CORE)
        time.sleep(0.5)
        mismatches = cerbos.check_same_decisions(env, c.port, pdp.port)
        out["cerbos_same_decisions"] = not mismatches
        if mismatches:
            raise cerbos.CerbosUnavailable("decisions differ: " + "; ".join(mismatches))
        stubs = str(cerbos.compile_stubs())
        plan += [
            (Row(f"Cerbos {cerbos.VERSION} CheckResources(1 res, 3 actions), 32"), [c],
             lambda: spread(b.job(c, client="cerbos", op="check3", stubs_dir=stubs), 32,
                            WORKERS)),
        ]
    except cerbos.CerbosUnavailable as exc:
        print(f"\nCerbos peer skipped: {exc}", flush=True)
        out["cerbos_skipped"] = str(exc)
    plan.append((Row("pdp AuthorizeBatch(3), 32", "the same request on every call, as Cerbos "
                     "gets: answered from pdp's decision cache"), [pdp],
                 lambda: spread(b.job(pdp, client="raw", op="batch3"), 32, WORKERS)))
    plan.append((Row(BATCH3_FRESH, "a new resource id on every call: never cached"), [pdp],
                 lambda: spread(b.job(pdp, client="raw", op="batch3", vary=True), 32,
                                WORKERS)))
    plan.append((Row("pdp Authorize uncached, 32 (1 process)"), [pdp],
                 lambda: spread(b.job(pdp, vary=True), 32, WORKERS)))
    # Several processes on one port (`[server] workers`): the kernel spreads connections, so
    # each load worker keeps several channels. No core pinning: the servers need both cores.
    multi: list[ServerProc] = []
    if processes > 1:
        multi = [start_pdp(env, "multi", cores=None, bundle=bundle, workers=processes)]
        plan.append((Row(f"pdp Authorize uncached, 32 ({processes} workers, 1 port)",
                         "servers and clients share both cores"), multi,
                     lambda: spread(b.job(multi[0], vary=True, channels=4), 32, WORKERS)))
    try:
        result = rounds(b, [(r, s, j) for r, s, j in plan])
    finally:
        for s in multi:
            env.stop(s)
    _section(b, "Peer comparison and scaling (same client, same run)", result, out, "peers")
    rows.update({r.name: r for r in result})
    return rows


def shadow_activation(bench: Bench, env: BenchEnv, server: ServerProc,
                      bundles: list[SignedBundle]) -> dict[str, Any]:
    """Activation in two steps, under the same 8-in-flight load as a push: each bundle is
    pushed without activation and set as shadow first (the server compiles it then, with no
    load), and only ``ActivateBundle`` is timed. The median, every figure, and the calls
    answered meanwhile (none may fail)."""
    times: list[float] = []
    loads = []
    for bundle in bundles:
        version = env.shadow(server, bundle)
        loads.append(measure(bench, [server], spread(bench.job(
            server, vary=True, duration=4.0), 8, WORKERS),
            during=lambda v=version: times.append(env.activate(server, v))))
    errors = [w.first_error for w in loads if w.first_error]
    return {"activation_s": statistics.median(times), "rounds_s": times,
            "calls": sum(w.calls for w in loads), "failed_calls": sum(w.errors for w in loads),
            "first_error": errors[0] if errors else "",
            "p99_ms_during": max(w.p99_ms for w in loads)}


def big_bundle(bench: Bench, env: BenchEnv, rules: int, out: dict[str, Any]) -> None:
    """Authorize latency and throughput with ``rules`` rules; RSS with them and a full cache;
    activation time and failed calls under load (one push per round, the median)."""
    t = time.perf_counter()
    first = env.sign(f"b{rules}", bundle_json(rules), rules)
    # A new revision per round: each push stores and activates a new version.
    later = [env.sign(f"b{rules}.{n}", bundle_json(rules, revision=str(n)), rules)
             for n in range(2, bench.rounds + 2)]
    # And a few for activation in two steps (shadow_activation).
    staged = [env.sign(f"b{rules}.s{n}", bundle_json(rules, revision=f"s{n}"), rules)
              for n in range(1, min(bench.rounds, 3) + 1)]
    print(f"\n(generated and signed {len(later) + len(staged) + 1} {rules:,}-rule bundles in "
          f"{time.perf_counter() - t:.1f} s)", flush=True)
    server = start_pdp(env, f"big{rules}", cores=SERVER_CORE, cache_size=100_000)
    try:
        first_push = env.push(server, first)
        rss_rules = server.rss()
        # Authorize against this bundle, as bundle_rows does for 10 and 1,000 rules (fresh ids:
        # with the default admission they leave the cache empty for the fill below).
        plan = [(Row(f"{rules:,} rules, 1 in flight"), [server],
                 lambda: [bench.job(server, inflight=1, vary=True)]),
                (Row(f"{rules:,} rules, 32 in flight"), [server],
                 lambda: spread(bench.job(server, vary=True), 32, WORKERS))]
        _section(bench, f"Authorize with {rules:,} rules (uncached)", rounds(bench, plan), out,
                 "bundles_big")
        # 100,000 fresh decisions, each asked for twice: the cache keeps a decision on its
        # second request (the default admission), so one pass would leave it empty.
        fill_jobs = spread(bench.job(
            server, op="batch", batch=1000, vary=True, max_calls=50, duration=120.0),
            2, WORKERS)
        for _ in range(2):
            measure(bench, [server], fill_jobs)
        cached = env.cache_size(server)
        rss_full = server.rss()
        # Activation under 8 calls in flight, once per round: the median push time, and
        # every call answered meanwhile (none may fail).
        pushes: list[float] = []
        loads = []
        for bundle in later:
            loads.append(measure(bench, [server], spread(bench.job(
                server, vary=True, duration=max(4.0, first_push * 2.5)), 8, WORKERS),
                during=lambda b=bundle: pushes.append(env.push(server, b))))
        errors = [w.first_error for w in loads if w.first_error]
        shadowed = shadow_activation(bench, env, server, staged)
        out["resources"] = {
            "rules": rules, "rss_mb_rules_only": rss_rules / 2**20,
            "cache_entries_filled": cached, "rss_mb_full_cache": rss_full / 2**20,
            "first_push_activate_s": first_push,
            "activation_under_load_s": statistics.median(pushes),
            "activation_under_load_rounds_s": pushes,
            "calls_during_activation": sum(w.calls for w in loads),
            "failed_calls": sum(w.errors for w in loads),
            "first_error": errors[0] if errors else "",
            "p99_ms_during": max(w.p99_ms for w in loads),
            "shadow_activation": shadowed}
        r = out["resources"]
        text = (f"\n== {rules:,} rules: RSS {r['rss_mb_rules_only']:.0f} MB with the bundle, "
                f"{r['rss_mb_full_cache']:.0f} MB after {r['cache_entries_filled']:,} cached "
                f"decisions; activation {r['activation_under_load_s']:.2f} s under load "
                f"(median of {len(pushes)}: {', '.join(f'{p:.2f}' for p in pushes)} s; "
                f"first push {first_push:.2f} s), {r['calls_during_activation']:,} calls, "
                f"{r['failed_calls']} failed, highest p99 {r['p99_ms_during']:.1f} ms; in two "
                f"steps (pushed and set as shadow, then ActivateBundle timed under the same "
                f"load) {shadowed['activation_s']:.2f} s (median of {len(shadowed['rounds_s'])}: "
                f"{', '.join(f'{p:.2f}' for p in shadowed['rounds_s'])} s), "
                f"{shadowed['calls']:,} calls, {shadowed['failed_calls']} failed")
        print(text, flush=True)
        bench.tables.append(text)
    finally:
        env.stop(server)


def targets(rows: dict[str, Row], out: dict[str, Any]) -> dict[str, Any]:
    """Each issue-8 target: measured figures and met / not met (None: not measured)."""
    def m(name: str, attr: str) -> float | None:
        row = rows.get(name)
        return row.median(attr) if row is not None and row.rounds else None

    def ratio(a: float | None, b: float | None) -> float | None:
        return a / b if a is not None and b else None

    def paired(a: str, b: str, attr: str) -> float | None:
        """report.paired_ratio of two rows of one section, reported beside the ratio of the
        medians (which decides "met")."""
        ra, rb = rows.get(a), rows.get(b)
        return paired_ratio(ra, rb, attr) if ra is not None and rb is not None else None

    t: dict[str, Any] = {}
    seq = ("Authorize uncached, 1 in flight", "floor no-op, 1 in flight", "p50_ms")
    r = ratio(m(seq[0], seq[2]), m(seq[1], seq[2]))
    t["sequential p50 <= 1.05x floor"] = {"ratio": r, "paired_ratio": paired(*seq),
                                          "met": meets("sequential p50 <= 1.05x floor", r)}
    cpu = ("Authorize uncached, 32 in flight", "floor no-op, 32 in flight",
           "server_cpu_us_per_call")
    r = ratio(m(cpu[0], cpu[2]), m(cpu[1], cpu[2]))
    t["server CPU/call <= 1.15x floor"] = {"ratio": r, "paired_ratio": paired(*cpu),
                                           "met": meets("server CPU/call <= 1.15x floor", r)}
    cerbos_name = next((n for n in rows if n.startswith("Cerbos")), None)
    if cerbos_name:
        r = ratio(m("pdp AuthorizeBatch(3), 32", "server_cpu_us_per_call"),
                  m(cerbos_name, "server_cpu_us_per_call"))
        # The target's figure is the same request as Cerbos gets; what a new resource on every
        # call costs against the same Cerbos figure is reported beside it.
        fresh = ratio(m(BATCH3_FRESH, "server_cpu_us_per_call"),
                      m(cerbos_name, "server_cpu_us_per_call"))
        t["CPU/call batch(3) <= Cerbos"] = {
            "ratio": r, "uncached_ratio": fresh,
            "paired_ratio": paired("pdp AuthorizeBatch(3), 32", cerbos_name,
                                   "server_cpu_us_per_call"),
            "met": meets("CPU/call batch(3) <= Cerbos", r)}
        best = max((n for n in rows if n.startswith("pdp Authorize uncached, 32")),
                   key=lambda n: m(n, "calls_per_s") or 0.0)
        r = ratio(m(best, "calls_per_s"), m(cerbos_name, "calls_per_s"))
        t["Authorize calls/s at 32 >= Cerbos"] = {
            "ratio": r, "paired_ratio": paired(best, cerbos_name, "calls_per_s"),
            "met": meets("Authorize calls/s at 32 >= Cerbos", r)}
    r = ratio(m("AuthorizeBatch(100), 8 in flight", "decisions_per_s"),
              m("Authorize uncached, 32 in flight", "decisions_per_s"))
    # The same ratio for the no-op floor: how far this client can take the target at all.
    ceiling = ratio(m(FLOOR_BATCH, "decisions_per_s"),
                    m("Authorize uncached, 32 in flight", "decisions_per_s"))
    # Beside them, the ratios taken round by round against the single calls measured in the
    # batch section's own rounds (the rows above come from two sections minutes apart).
    t["batch(100) >= 20x single decisions/s"] = {
        "ratio": r, "paired_ratio": paired("AuthorizeBatch(100), 8 in flight", BATCH_SINGLE,
                                           "decisions_per_s"),
        "floor_batch_ratio": ceiling,
        "floor_paired_ratio": paired(FLOOR_BATCH, BATCH_SINGLE, "decisions_per_s"),
        # How busy the load generators' core was in the batch row: near 100 %, the figure is
        # the client's (make bench-native measures the same without pdp-client).
        "client_cpu_pct": m("AuthorizeBatch(100), 8 in flight", "client_cpu_pct"),
        "met": meets("batch(100) >= 20x single decisions/s", r)}
    res = out.get("resources")
    if res:
        full = res["cache_entries_filled"] >= 0.99 * 100_000  # the cache really is full
        t["RSS <= 200 MB (100k rules, full cache)"] = {
            "mb": res["rss_mb_full_cache"], "cached": res["cache_entries_filled"],
            "met": full and res["rss_mb_full_cache"] <= 200}
        # Beside it, not deciding it: the same activation in two steps (shadow_activation).
        two = res.get("shadow_activation") or {}
        t["100k activation <= 3 s, 0 failed"] = {
            "s": res["activation_under_load_s"], "failed": res["failed_calls"],
            "two_steps_s": two.get("activation_s"), "two_steps_failed": two.get("failed_calls"),
            "met": res["activation_under_load_s"] <= 3 and res["failed_calls"] == 0}
    print_targets("Targets", t)
    batch = t["batch(100) >= 20x single decisions/s"]
    busy, ceiling = batch["client_cpu_pct"], batch["floor_batch_ratio"]
    if (busy is not None and busy >= CLIENT_BOUND_PCT) or (ceiling is not None and ceiling < 20):
        print(f"  (AuthorizeBatch(100): the load generators' core was {busy or 0:.0f} % busy, "
              f"and the no-op floor's own ratio was {ceiling or 0:.1f}x with this client, so "
              "the figure may be the client's; `make bench-native` measures it with a native "
              "load generator)")
    return t


def run(settings: Settings, *, out_dir: Path = RESULTS, work: Path = WORK) -> dict[str, Any]:
    """Run every measurement of ``settings``; write and return the results."""
    started = time.perf_counter()
    shutil.rmtree(work / "servers", ignore_errors=True)
    env = BenchEnv(work)
    out: dict[str, Any] = {"name": settings.name, "machine": machine(),
                           "settings": settings.__dict__,
                           "command": f"make bench{'-quick' if settings.name == 'quick' else ''}"}
    print(f"pdp benchmarks ({settings.name}): {out['machine']}", flush=True)
    pool = LoadPool(WORKERS, core=CLIENT_CORE)
    bench = Bench(env, pool, settings.rounds, settings.seconds, client_cores=1)
    rows: dict[str, Row] = {}
    try:
        b1k = env.sign("b1000", bundle_json(1000), 1000)
        floor = start_floor(env, "floor", cores=SERVER_CORE)
        plain = start_floor(env, "floor-plain", cores=SERVER_CORE, plaintext=True)
        pdp = start_pdp(env, "pdp", cores=SERVER_CORE, bundle=b1k)
        rows.update(core_rows(bench, floor, plain, pdp, out))
        small = start_pdp(env, "pdp10", cores=SERVER_CORE,
                          bundle=env.sign("b10", bundle_json(10), 10))
        bundle_rows(bench, {10: small, 1000: pdp}, out)
        env.stop(small)
        rows.update(batch_rows(bench, pdp, floor, out))
        out["tls_handshake"] = {"mtls": handshakes(env, floor, settings.handshakes),
                                "plaintext": handshakes(env, plain, settings.handshakes,
                                                        tls=False)}
        out["tokens"] = token_verification(work, settings.tokens)
        issue = rounds(bench, [(Row("IssueServiceToken, 1 in flight"), [pdp],
                                lambda: [bench.job(pdp, op="token", inflight=1)])])
        _section(bench, "IssueServiceToken", issue, out, "issue_token")
        text = (f"\n== TLS: new mTLS connection {out['tls_handshake']['mtls']['p50_ms']:.2f} ms "
                f"p50 (plaintext {out['tls_handshake']['plaintext']['p50_ms']:.2f} ms); token "
                f"verify {out['tokens']['verify_p50_us']:.0f} us p50 in-process, issue "
                f"{out['tokens']['issue_us']:.0f} us")
        print(text, flush=True)
        bench.tables.append(text)
        monitoring_rows(bench, env, b1k, settings.name == "full", out)
        if settings.peers:
            rows.update(peer_rows(bench, env, pdp, b1k, settings.multiprocess, out))
        if settings.big_rules:
            big_bundle(bench, env, settings.big_rules, out)
        out["targets"] = targets(rows, out)
    finally:
        pool.close()
        stop_all(env.servers)
    out["wall_seconds"] = time.perf_counter() - started
    out["tables"] = bench.tables
    write_json(out_dir / f"{settings.name}.json", out)
    print(f"\nwrote {out_dir / (settings.name + '.json')} in {out['wall_seconds']:.0f} s")
    return out


def main(argv: list[str] | None = None) -> int:
    """Parse --quick / --full (and --rounds/--seconds overrides); run."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.run")
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--quick", action="store_true", help="under 2 minutes")
    mode.add_argument("--full", action="store_true", help="everything, 100,000-rule bundles")
    p.add_argument("--rounds", type=int, help="override the number of rounds")
    p.add_argument("--seconds", type=float, help="override the window length")
    p.add_argument("--no-peers", action="store_true", help="skip Cerbos and multi-process")
    args = p.parse_args(argv)
    settings = FULL if args.full else QUICK
    changes: dict[str, Any] = {}
    if args.rounds:
        changes["rounds"] = args.rounds
    if args.seconds:
        changes["seconds"] = args.seconds
    if args.no_peers:
        changes["peers"] = False
    settings = Settings(**{**settings.__dict__, **changes})
    try:
        run(settings)
    except RuntimeError as exc:
        print(f"benchmarks: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
