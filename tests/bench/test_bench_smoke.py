"""Smoke test of the benchmark harness: the quick run, briefly, end to end, so it cannot rot.

Real server processes over real mTLS on 127.0.0.1; figures are not asserted, only that every
measurement ran, produced calls, saw no failed call and wrote its JSON.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from benchmarks.bundles import bundle_json
from benchmarks.harness import BenchEnv, ServerProc, settle, start_pdp, stop_all
from benchmarks.load import LoadPool, WorkerResult
from benchmarks.report import Row, Window, meets, paired_ratio, percentile, window
from benchmarks.run import (
    BATCH_SINGLE,
    CLIENT_BOUND_PCT,
    FLOOR_BATCH,
    QUICK,
    run,
    shadow_activation,
)
from benchmarks.scenarios import Bench, measure, spread
from pdp.policy import load_bundle
from pdp_client._proto import admin_pb2, admin_pb2_grpc


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50.0
    assert percentile(values, 99) == 99.0
    assert percentile([], 50) == 0.0


def test_paired_ratio_is_the_median_of_ratios_within_rounds() -> None:
    def row(*cpu: float) -> Row:
        return Row("r", rounds=[Window(calls=1, decisions=1, errors=0, seconds=1.0,
                                       calls_per_s=1.0, decisions_per_s=1.0, p50_ms=1.0,
                                       p99_ms=1.0, server_cpu_us_per_call=c,
                                       client_cpu_pct=1.0) for c in cpu])
    attr = "server_cpu_us_per_call"
    # Round by round 2.0, 0.5 and 1.5: the median 1.5, where the medians' ratio is 1.0.
    assert paired_ratio(row(200, 100, 300), row(100, 200, 200), attr) == 1.5
    assert paired_ratio(row(100, 50), row(0, 50), attr) == 1.0  # a zero round is left out
    assert paired_ratio(row(100), row(100, 100), attr) is None  # not the same rounds
    assert paired_ratio(row(), row(), attr) is None


def test_the_slowest_call_is_kept_per_window_and_over_rounds() -> None:
    # A stall (the collector walking a big policy) is one call in thousands: it shows in
    # the slowest call, not in a median or p99.
    def worker(*latencies_s: float) -> WorkerResult:
        return WorkerResult(calls=len(latencies_s), decisions=len(latencies_s), errors=0,
                            elapsed=1.0, cpu=0.1, latencies=list(latencies_s))
    first = window([worker(*[0.001] * 99, 0.150), worker(*[0.002] * 100)], 0.5,
                   client_cores=1)
    second = window([worker(0.003)], 0.5, client_cores=1)
    assert (first.max_ms, second.max_ms) == (150.0, 3.0)
    assert first.p99_ms == 2.0  # one call in 200: above the 99th percentile
    row = Row("r", rounds=[second, first])
    assert row.slowest_ms == 150.0 and row.summary()["slowest_ms"] == 150.0
    assert Row("empty").slowest_ms == 0.0
    assert window([worker()], 0.0, client_cores=1).max_ms == 0.0


def test_a_ratio_target_is_met_at_its_bound_and_never_without_a_ratio() -> None:
    assert meets("server CPU/call <= 1.15x floor", 1.15)
    assert not meets("server CPU/call <= 1.15x floor", 1.151)
    assert meets("batch(100) >= 20x single decisions/s", 20.0)
    assert not meets("batch(100) >= 20x single decisions/s", 19.99)
    assert not meets("sequential p50 <= 1.05x floor", None)
    with pytest.raises(KeyError):
        meets("no such target", 1.0)


def test_settle_waits_for_a_busy_server_and_not_for_an_idle_one() -> None:
    """A window starts once the servers have finished the previous one's work."""
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    idle = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert settle([ServerProc("busy", busy, 0)], timeout=0.6) >= 0.6
        assert settle([ServerProc("idle", idle, 0)], timeout=5.0) < 1.0
    finally:
        for proc in (busy, idle):
            proc.kill()
            proc.wait()


def test_bundle_generator_sizes() -> None:
    assert json.loads(bundle_json(10))["rules"][-1]["id"] == "read-docs"
    assert len(json.loads(bundle_json(1000))["rules"]) == 1000
    with pytest.raises(ValueError):
        bundle_json(2)


@pytest.mark.slow
def test_quick_run_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    settings = replace(QUICK, rounds=1, seconds=0.2, handshakes=3, tokens=5, peers=False)
    out = run(settings, out_dir=tmp_path / "results", work=tmp_path / "work")
    written = json.loads((tmp_path / "results" / "quick.json").read_text())
    assert written["name"] == "quick"
    sections = [out[k] for k in ("core", "bundles", "batch", "monitoring", "issue_token")]
    for rows in sections:
        for row in rows:
            assert row["errors"] == 0, row
            assert row["rounds"][0]["calls"] > 0, row
            assert row["median"]["server_cpu_us_per_call"] > 0, row
    assert out["tls_handshake"]["mtls"]["p50_ms"] > 0
    # The traced row exported its spans over OTLP to the run's collector.
    assert out["otlp_spans_received"] > 0
    assert out["tokens"]["verify_p50_us"] > 0
    assert "sequential p50 <= 1.05x floor" in out["targets"]
    # Beside each ratio of medians, the median of the per-round ratios (one round here: the
    # round's own ratio).
    for name in ("sequential p50 <= 1.05x floor", "server CPU/call <= 1.15x floor"):
        target = out["targets"][name]
        assert target["paired_ratio"] == pytest.approx(target["ratio"]), name
    # The floor's own batch(100) row is measured: the ceiling of the 20x target. Both batch
    # ratios are also taken against single calls measured in the batch section's rounds.
    batch = out["targets"]["batch(100) >= 20x single decisions/s"]
    assert batch["floor_batch_ratio"] > 0
    by_name = {row["name"]: row for row in out["batch"]}
    per_call = by_name[BATCH_SINGLE]["rounds"][0]["decisions_per_s"]
    for name, key in (("AuthorizeBatch(100), 8 in flight", "paired_ratio"),
                      (FLOOR_BATCH, "floor_paired_ratio")):
        rate = by_name[name]["rounds"][0]["decisions_per_s"]
        assert batch[key] == pytest.approx(rate / per_call)
    # and how busy the client's core was in pdp's batch row (is the figure the client's?)
    batch_row = by_name["AuthorizeBatch(100), 8 in flight"]["rounds"][0]
    assert batch["client_cpu_pct"] == pytest.approx(batch_row["client_cpu_pct"])
    # The pointer to make bench-native is printed exactly when the figure may be the client's.
    client_bound = batch["client_cpu_pct"] >= CLIENT_BOUND_PCT or batch["floor_batch_ratio"] < 20
    assert ("`make bench-native` measures it" in capsys.readouterr().out) == client_bound


@pytest.mark.slow
def test_wrong_decisions_count_as_failed_calls(tmp_path: Path) -> None:
    """A server that answers DENY where ALLOW is expected must show as failed calls, never as
    throughput: a broken bundle cannot make a benchmark look good."""
    env = BenchEnv(tmp_path)
    deny_all = env.sign("deny", b'{"metadata": {"name": "deny", "revision": "1"}, "rules": '
                        b'[{"id": "no", "effect": "deny", "actions": ["*"]}]}', 1)
    pool = LoadPool(1, core=None)
    try:
        server = start_pdp(env, "deny", cores=None, bundle=deny_all)
        bench = Bench(env, pool, rounds=1, seconds=0.2, client_cores=1)
        with pytest.raises(RuntimeError, match="unexpected DENY"):
            measure(bench, [server], spread(bench.job(server), 1, 1))
    finally:
        pool.close()
        stop_all(env.servers)


@pytest.mark.slow
def test_activation_in_two_steps_is_timed_under_load(tmp_path: Path) -> None:
    """A version pushed and set as shadow first, then ActivateBundle timed while calls run:
    the figure is the activation alone, and the version really is the one served after."""
    env = BenchEnv(tmp_path)
    pool = LoadPool(2, core=None)
    try:
        server = start_pdp(env, "two-steps", cores=None,
                           bundle=env.sign("b", bundle_json(1000), 1000))
        staged = env.sign("s", bundle_json(1000, revision="s1"), 1000)
        bench = Bench(env, pool, rounds=1, seconds=0.2, client_cores=1)
        result = shadow_activation(bench, env, server, [staged])
        assert result["calls"] > 0 and result["failed_calls"] == 0, result
        assert result["rounds_s"] == [result["activation_s"]] and result["activation_s"] > 0
        with env.admin_channel(server.admin_port) as ch:
            status = admin_pb2_grpc.AdminStub(ch).GetStatus(admin_pb2.GetStatusRequest(),
                                                            timeout=10)
        assert status.active_version.split("-")[1] == load_bundle(staged.data).digest[:12]
    finally:
        pool.close()
        stop_all(env.servers)
