"""The native load generator (benchmarks.native): built from source, real mTLS, answers checked.

Figures are not asserted (a timed test could not fail honestly on a shared 2-core machine),
only that every shape ran without a failed call, that every call of an uncached shape asked
about a new resource, and that a DENY where an ALLOW is expected counts as a failed call.
The generator needs g++, pkg-config and grpc++'s development files: without them these tests
are skipped, saying which is missing.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from benchmarks.bundles import bundle_json
from benchmarks.harness import BenchEnv, ServerProc, free_port, start_pdp, stop_all
from benchmarks.native import (
    AUTHORIZE,
    BATCH,
    CHECK,
    MARKER,
    SHAPES,
    NativeUnavailable,
    Shape,
    build,
    request_bytes,
    run,
    window,
)
from pdp_client._proto import admin_pb2, admin_pb2_grpc


@pytest.fixture(scope="module")
def binary() -> Path:
    try:
        return build()
    except NativeUnavailable as exc:
        pytest.skip(f"the native load generator cannot be built here: {exc}")


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory,
           binary: Path) -> Iterator[tuple[BenchEnv, ServerProc]]:
    env = BenchEnv(tmp_path_factory.mktemp("native-env"))
    bundle = env.sign("b1000", bundle_json(1000), 1000)
    server = start_pdp(env, "pdp", cores=None, bundle=bundle)
    yield env, server
    stop_all(env.servers)


@pytest.mark.slow
def test_every_shape_runs_without_a_failed_call(tmp_path: Path, binary: Path) -> None:
    out = run(rounds=1, seconds=0.3, out_dir=tmp_path / "results", work=tmp_path / "work")
    written = json.loads((tmp_path / "results" / "native.json").read_text())
    expected = [s.name for s in SHAPES if "cerbos_skipped" not in out or s.server != "cerbos"]
    assert list(written["rows"]) == expected
    for name, row in written["rows"].items():
        assert row["errors"] == 0, (name, row["rounds"][0]["first_error"])
        assert row["rounds"][0]["calls"] > 0, name
        assert row["median"]["server_cpu_us_per_call"] > 0, name
        # decisions per call: 100 for a batch of 100, 3 for the Cerbos-shaped rows, else 1
        one = row["rounds"][0]
        items = next(s.items for s in SHAPES if s.name == name)
        assert one["decisions"] == one["calls"] * items, name
    assert {"sequential p50 <= 1.05x floor", "server CPU/call <= 1.15x floor",
            "batch(100) >= 20x single decisions/s"} <= set(written["targets"])
    if "cerbos_skipped" not in out:  # the bulk comparison, beside the targets
        assert written["bulk_vs_cerbos"]["server_cpu_us_per_call"]["ratio"] > 0
    assert "floor no-op, 32 in flight" in written["table"]


def _cache_hits(env: BenchEnv, server: ServerProc) -> int:
    """How many decisions the server answered from its cache so far (admin GetStatus)."""
    with env.admin_channel(server.admin_port) as channel:
        status = admin_pb2_grpc.AdminStub(channel).GetStatus(admin_pb2.GetStatusRequest(),
                                                             timeout=10.0)
        return int(status.cache.hits)


@pytest.mark.slow
def test_uncached_shapes_ask_about_a_new_resource_on_every_call(
        binary: Path, served: tuple[BenchEnv, ServerProc]) -> None:
    env, server = served
    assert request_bytes("single", "t1").count(MARKER.encode()) == 1
    assert request_bytes("batch100", "t1").count(MARKER.encode()) == 100
    with pytest.raises(KeyError):
        request_bytes("batch7", "t1")  # no such kind
    # Had any request repeated, within a window or across two, the cache (which stores a
    # decision on its second request) would have answered its third: no hit means none did.
    before = _cache_hits(env, server)
    for tag in ("t1", "t2"):
        single = Shape("single", "pdp", AUTHORIZE, "single", 8, "pdp")
        got = window(binary, env, server, single, request_bytes("single", f"{tag}a"), 0.3)
        assert got.errors == 0 and got.calls > 10, got
        batch = Shape("batch", "pdp", BATCH, "batch100", 2, "pdp-batch", 100)
        got = window(binary, env, server, batch, request_bytes("batch100", f"{tag}b"), 0.3)
        assert got.errors == 0 and got.decisions == 100 * got.calls, got
    assert _cache_hits(env, server) == before
    # The same request on every call (the Cerbos-shaped batch of 3) is answered from the
    # cache from its third call on: the check above can see a repeat.
    same = Shape("same", "pdp", BATCH, "batch3", 4, "pdp-batch", 3)
    got = window(binary, env, server, same, request_bytes("batch3", "t3"), 0.3)
    assert got.errors == 0, got
    assert _cache_hits(env, server) >= before + 3 * (got.calls - 2)


@pytest.mark.slow
def test_an_answer_that_is_not_the_expected_allow_stops_the_run(
        binary: Path, served: tuple[BenchEnv, ServerProc]) -> None:
    from pdp_client._proto import authorization_pb2 as pb

    env, server = served
    denied = pb.AuthorizeRequest()  # bob may not write alice's document: the default deny
    denied.subject.type, denied.subject.id, denied.action.name = "user", "bob", "write"
    denied.resource.type, denied.resource.id = "doc", f"d-{MARKER}"
    denied.resource.properties.update({"owner": "alice"})
    shape = Shape("denied", "pdp", AUTHORIZE, "single", 4, "pdp")
    with pytest.raises(RuntimeError, match=r"denied: the generator did not start: .*not ALLOW"):
        window(binary, env, server, shape, denied.SerializeToString(), 0.2)
    # ALLOW answers, but fewer than the items expected, fail too.
    short = Shape("short", "pdp", BATCH, "batch3", 4, "pdp-batch", 4)
    with pytest.raises(RuntimeError, match=r"short: .*not ALLOW"):
        window(binary, env, server, short, request_bytes("batch3", "t4"), 0.2)


@pytest.mark.slow
def test_a_cerbos_answer_must_allow_every_resource_asked_about(tmp_path: Path,
                                                               binary: Path) -> None:
    from benchmarks.peers import cerbos

    env = BenchEnv(tmp_path / "env")
    try:
        try:
            server = cerbos.start_cerbos(env, cores=None)
        except cerbos.CerbosUnavailable as exc:
            pytest.skip(f"the Cerbos peer cannot be had here: {exc}")
        bulk = Shape("bulk", "cerbos", CHECK, "check100", 2, "cerbos", 100)
        request = request_bytes("check100", "t6")
        assert request.count(MARKER.encode()) == 100  # 100 new resources a call
        got = window(binary, env, server, bulk, request, 0.3)
        assert got.errors == 0 and got.decisions == 100 * got.calls > 0, got
        # One resource of the 100 that alice may not write (bob's): the call fails.
        pb, _ = cerbos._stubs(str(cerbos.compile_stubs()))
        mixed = pb.CheckResourcesRequest.FromString(request)
        mixed.resources[57].resource.attr["owner"].string_value = "bob"
        with pytest.raises(RuntimeError, match=r"bulk: .*not ALLOW"):
            window(binary, env, server, bulk, mixed.SerializeToString(), 0.2)
        # Every resource allowed, but one decision fewer than expected: fails too.
        more = Shape("more", "cerbos", CHECK, "check100", 2, "cerbos", 101)
        with pytest.raises(RuntimeError, match=r"more: .*not ALLOW"):
            window(binary, env, server, more, request, 0.2)
    finally:
        stop_all(env.servers)


def test_a_server_that_cannot_be_reached_stops_the_run_saying_so(
        tmp_path: Path, binary: Path) -> None:
    env = BenchEnv(tmp_path / "env")
    nobody = ServerProc("nobody", subprocess.Popen(["sleep", "30"]), free_port())
    try:
        shape = Shape("unreachable", "pdp", AUTHORIZE, "single", 1, "pdp")
        with pytest.raises(RuntimeError,
                           match=r"unreachable: the generator did not start: .*warm-up call "
                                 r"failed: status 14"):
            window(binary, env, nobody, shape, request_bytes("single", "t5"), 0.2)
    finally:
        nobody.proc.kill()
        nobody.proc.wait()
