"""The targets measured with a native load generator: is pdp-client the bottleneck?

``python -m benchmarks.native`` (``make bench-native``) builds ``benchmarks/native/load.cc``
(C++, grpc++'s generic stub: raw request bytes, no generated code) into benchmarks/.cache when
absent, then measures the floor, pdp and Cerbos as ``make bench`` does (servers pinned to the
server core, the generator to the client core, real mTLS on 127.0.0.1, 1,000 rules, every
configuration once per round, interleaved, medians), with that generator in place of
pdp-client. The issue's reference figures were taken with a native load generator too.

Why: on two cores the Python load generators of ``make bench`` run on one core, and they
saturate it (client CPU 92-100 % in the single-call and batch rows), so those rows are a
bound of what pdp-client can send, not of what the server can answer. The native generator
spends a small fraction of that CPU per call; the "client CPU %" column shows it.

The request bytes are built here with the project's own protobuf classes; the generator
replaces a marker in them with a counter on every call (a new resource every call: uncached)
and checks every answer (a DENY where an ALLOW is expected is a failed call). It needs g++,
pkg-config and grpc++'s development files (Debian: ``apt-get install g++ pkg-config
libgrpc++-dev``); without them it says so and exits with status 2.

Prints the table and the targets and writes ``benchmarks/results/native.json``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.bundles import bundle_json
from benchmarks.harness import (
    BenchEnv,
    ServerProc,
    pinned,
    settle,
    start_floor,
    start_pdp,
    stop_all,
)
from benchmarks.peers import cerbos
from benchmarks.report import (
    Row,
    Window,
    machine,
    meets,
    paired_ratio,
    print_table,
    print_targets,
    write_json,
)
from benchmarks.run import CLIENT_CORE, RESULTS, SERVER_CORE, WORK

__all__ = ["MARKER", "NativeUnavailable", "Shape", "build", "main", "request_bytes", "run",
           "window"]

SOURCE = Path(__file__).resolve().parent / "native" / "load.cc"
CACHE = Path(__file__).resolve().parent / ".cache" / "native"
MARKER = "%" * 12  # replaced by a 12-digit counter on every call (same width, same length)
CHANNELS = 2  # connections at most, as make bench's two load generators keep (one each)
AUTHORIZE = "/pdp.v1.Authorization/Authorize"
BATCH = "/pdp.v1.Authorization/AuthorizeBatch"
CHECK = "/cerbos.svc.v1.CerbosService/CheckResources"


class NativeUnavailable(Exception):
    """The generator cannot be built here (no compiler or no grpc++ development files)."""


@dataclass(frozen=True)
class Shape:
    """One row: which server, which request, how many in flight, how to check the answers."""

    name: str
    server: str  # which server of the run answers it: "floor", "pdp" or "cerbos" here
    method: str
    request: str  # a kind of request_bytes()
    inflight: int
    check: str  # the generator's --check: pdp, pdp-batch, cerbos
    items: int = 1  # decisions per call


SHAPES = (
    Shape("floor no-op, 1 in flight", "floor", AUTHORIZE, "single", 1, "pdp"),
    Shape("Authorize uncached, 1 in flight", "pdp", AUTHORIZE, "single", 1, "pdp"),
    Shape("floor no-op, 32 in flight", "floor", AUTHORIZE, "single", 32, "pdp"),
    Shape("Authorize uncached, 32 in flight", "pdp", AUTHORIZE, "single", 32, "pdp"),
    Shape("floor no-op AuthorizeBatch(100), 8 in flight", "floor", BATCH, "batch100", 8,
          "pdp-batch", 100),
    Shape("AuthorizeBatch(100) uncached, 8 in flight", "pdp", BATCH, "batch100", 8,
          "pdp-batch", 100),
    Shape(f"Cerbos {cerbos.VERSION} CheckResources(1 res, 3 actions), 32", "cerbos", CHECK,
          "check3", 32, "cerbos", 3),
    Shape("pdp AuthorizeBatch(3), 32 (the same request, as Cerbos gets)", "pdp", BATCH,
          "batch3", 32, "pdp-batch", 3),
    Shape("pdp AuthorizeBatch(3) uncached, 32", "pdp", BATCH, "batch3-fresh", 32,
          "pdp-batch", 3),
    # Not a target: the bulk shape a service filtering a list asks, beside the uncached
    # AuthorizeBatch(100) above (the same 100 new resources a call, the same decision).
    Shape(f"Cerbos {cerbos.VERSION} CheckResources(100 res, 1 action), 8", "cerbos", CHECK,
          "check100", 8, "cerbos", 100),
)
# (the AuthorizeBatch(100) row, the Cerbos bulk row) compared by `bulk` below.
BULK = (SHAPES[5].name, SHAPES[9].name)


def build(cache: Path = CACHE) -> Path:
    """The generator's binary, compiled from SOURCE when its build is not cached yet (the
    name holds the source's hash). Raises NativeUnavailable with what is missing."""
    source = SOURCE.read_bytes()
    binary = cache / f"native-load-{hashlib.sha256(source).hexdigest()[:12]}"
    if binary.exists():
        return binary
    missing = [tool for tool in ("g++", "pkg-config") if shutil.which(tool) is None]
    if missing:
        raise NativeUnavailable(f"{' and '.join(missing)} not found; on Debian: apt-get install "
                                "g++ pkg-config libgrpc++-dev")
    flags = subprocess.run(["pkg-config", "--cflags", "--libs", "grpc++"], capture_output=True,
                           text=True)
    if flags.returncode != 0:
        raise NativeUnavailable("grpc++ development files not found (pkg-config grpc++: "
                                f"{flags.stderr.strip()}); on Debian: apt-get install "
                                "libgrpc++-dev")
    cache.mkdir(parents=True, exist_ok=True)
    partial = binary.with_name(f"{binary.name}.{os.getpid()}.partial")  # one per builder
    compiled = subprocess.run(["g++", "-O2", "-std=c++17", "-o", str(partial), str(SOURCE),
                               *flags.stdout.split()], capture_output=True, text=True)
    if compiled.returncode != 0:
        raise NativeUnavailable(f"g++ failed on {SOURCE.name}: {compiled.stderr[-2000:]}")
    partial.replace(binary)  # whole or not at all
    return binary


def request_bytes(kind: str, tag: str) -> bytes:
    """The request bytes of one kind (a Shape's ``request``): pdp's as pdp-client sends them
    in make bench (alice writes her own doc; a batch's subject and action in its defaults),
    Cerbos's as benchmarks.peers.cerbos sends them. Resource ids hold ``tag`` and the marker:
    give every window its own tag, so that no two windows ask about the same resource.
    Raises KeyError for an unknown kind, CerbosUnavailable when Cerbos's stubs cannot be had."""
    from pdp_client._proto import authorization_pb2 as pb

    fresh = f"{tag}-{MARKER}"

    def single(rid: str) -> Any:
        request = pb.AuthorizeRequest()
        request.subject.type, request.subject.id, request.action.name = "user", "alice", "write"
        request.resource.type, request.resource.id = "doc", rid
        request.resource.properties.update({"owner": "alice"})
        return request

    def batch3(rid: str) -> Any:
        batch = pb.AuthorizeBatchRequest()
        batch.defaults.subject.type, batch.defaults.subject.id = "user", "alice"
        batch.defaults.resource.CopyFrom(single(rid).resource)
        for action in ("read", "write", "delete"):
            batch.requests.add().action.name = action
        return batch

    if kind == "single":
        return bytes(single(fresh).SerializeToString())
    if kind == "batch100":
        batch = pb.AuthorizeBatchRequest()
        batch.defaults.subject.type, batch.defaults.subject.id = "user", "alice"
        batch.defaults.action.name = "write"
        for _ in range(100):
            item = batch.requests.add()
            item.resource.type, item.resource.id = "doc", fresh
            item.resource.properties.update({"owner": "alice"})
        return bytes(batch.SerializeToString())
    if kind == "batch3":  # the same request on every call, as Cerbos gets
        return bytes(batch3("doc-1").SerializeToString())
    if kind == "batch3-fresh":
        return bytes(batch3(fresh).SerializeToString())
    if kind == "check3":
        cpb, _ = cerbos._stubs(str(cerbos.compile_stubs()))
        return bytes(cerbos._request(cpb, "doc-1", "alice").SerializeToString())
    if kind == "check100":  # alice writes 100 of her own new documents, as batch100 asks
        cpb, _ = cerbos._stubs(str(cerbos.compile_stubs()))
        check = cerbos._request(cpb, fresh, "alice")
        first = check.resources[0]
        del first.actions[:]
        first.actions.append("write")
        for _ in range(99):
            check.resources.add().CopyFrom(first)
        return bytes(check.SerializeToString())
    raise KeyError(kind)


def window(binary: Path, env: BenchEnv, server: ServerProc, shape: Shape, request: bytes,
           seconds: float) -> Window:
    """One timed window of ``shape`` against ``server`` sending ``request`` (see
    request_bytes): the generator connects and warms up (a failed warm-up call stops it),
    every server of the run settles, then the server's CPU is read around the calls. Raises
    RuntimeError when the generator does not start or gives no result."""
    files = env.client_files
    with tempfile.NamedTemporaryFile(dir=env.directory, suffix=".bin") as file:
        file.write(request)
        file.flush()
        args = [*pinned(str(CLIENT_CORE)), str(binary), "--target", f"127.0.0.1:{server.port}",
                "--ca", files["ca_file"], "--cert", files["cert_file"], "--key",
                files["key_file"], "--method", shape.method, "--request", file.name,
                "--marker", MARKER, "--inflight", str(shape.inflight), "--channels",
                str(min(CHANNELS, shape.inflight)), "--check", shape.check, "--items",
                str(shape.items), "--duration", str(seconds)]
        with subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) as proc:
            assert proc.stdin is not None and proc.stdout is not None
            assert proc.stderr is not None
            if proc.stdout.readline().strip() != "ready":
                proc.wait(10)
                raise RuntimeError(f"{shape.name}: the generator did not start: "
                                   f"{proc.stderr.read().strip()[-500:]}")
            settle(env.servers)
            before = server.cpu()
            proc.stdin.write("go\n")
            proc.stdin.flush()
            line = proc.stdout.readline()
            after = server.cpu()
            proc.wait(30)
            if not line:
                raise RuntimeError(f"{shape.name}: the generator gave no result: "
                                   f"{proc.stderr.read().strip()[-500:]}")
    try:
        got = json.loads(line)
    except ValueError:
        raise RuntimeError(f"{shape.name}: the generator's result is not JSON: {line[:300]!r}"
                           ) from None
    calls, elapsed = got["calls"], got["elapsed"]
    return Window(calls=calls, decisions=got["decisions"], errors=got["errors"],
                  seconds=elapsed, calls_per_s=calls / elapsed,
                  decisions_per_s=got["decisions"] / elapsed, p50_ms=got["p50_ms"],
                  p99_ms=got["p99_ms"], max_ms=got["max_ms"],
                  server_cpu_us_per_call=(after - before) / calls * 1e6 if calls else 0.0,
                  client_cpu_pct=100 * got["cpu"] / elapsed, first_error=got["first_error"],
                  workers=1)


def _pair(rows: dict[str, Row], a: str, b: str, attr: str) -> dict[str, float | None]:
    """Row ``a`` against row ``b`` on ``attr``: the ratio of the medians and the paired ratio."""
    over = rows[b].median(attr)
    return {"ratio": rows[a].median(attr) / over if over else None,
            "paired_ratio": paired_ratio(rows[a], rows[b], attr)}


def targets(rows: dict[str, Row]) -> dict[str, Any]:
    """Issue 8's targets from this run's rows (those whose rows ran)."""
    def m(name: str, attr: str) -> float:
        return rows[name].median(attr)

    def pair(a: str, b: str, attr: str) -> dict[str, float | None]:
        return _pair(rows, a, b, attr)

    names = [s.name for s in SHAPES]
    out: dict[str, Any] = {
        "sequential p50 <= 1.05x floor": pair(names[1], names[0], "p50_ms"),
        "server CPU/call <= 1.15x floor": pair(names[3], names[2], "server_cpu_us_per_call"),
        "batch(100) >= 20x single decisions/s": {
            **pair(names[5], names[3], "decisions_per_s"),
            "floor_ratio": m(names[4], "decisions_per_s") / m(names[2], "decisions_per_s")},
    }
    if names[6] in rows:
        out["CPU/call batch(3) <= Cerbos"] = {
            **pair(names[7], names[6], "server_cpu_us_per_call"),
            "uncached_ratio": m(names[8], "server_cpu_us_per_call")
            / m(names[6], "server_cpu_us_per_call")}
        out["Authorize calls/s at 32 >= Cerbos"] = pair(names[3], names[6], "calls_per_s")
    for name, target in out.items():
        target["met"] = meets(name, target["ratio"])
    return out


def bulk(rows: dict[str, Row]) -> dict[str, Any] | None:
    """pdp's uncached AuthorizeBatch(100) against Cerbos's CheckResources of 100 resources
    (not one of issue 8's targets): server CPU per call (100 decisions each) and decisions/s,
    by the medians and paired; None when the Cerbos row did not run."""
    ours, theirs = BULK
    if theirs not in rows:
        return None
    return {attr: _pair(rows, ours, theirs, attr)
            for attr in ("server_cpu_us_per_call", "decisions_per_s")}


def print_bulk(found: dict[str, Any]) -> None:
    cpu, rate = found["server_cpu_us_per_call"], found["decisions_per_s"]

    def ratios(d: dict[str, float | None]) -> str:
        return ", ".join(f"{k}={v:.3f}" for k, v in d.items() if v is not None)

    print("\n== Beside the targets: pdp AuthorizeBatch(100) against Cerbos CheckResources(100 "
          "resources), pdp/Cerbos\n"
          f"  server CPU per call: {ratios(cpu)} (below 1: pdp cheaper)\n"
          f"  decisions/s: {ratios(rate)} (above 1: pdp faster)", flush=True)


def run(*, rounds: int = 5, seconds: float = 3.0, out_dir: Path = RESULTS,
        work: Path = WORK / "native") -> dict[str, Any]:
    """Measure every shape for ``rounds`` rounds, interleaved; print and write the results.
    Raises NativeUnavailable when the generator cannot be built, RuntimeError when a window
    fails to run."""
    if rounds < 1 or not seconds > 0:
        raise RuntimeError(f"rounds must be at least 1 and seconds positive, not {rounds} and "
                           f"{seconds}")
    started = time.perf_counter()
    binary = build()
    out: dict[str, Any] = {"machine": machine(), "rounds": rounds, "seconds": seconds,
                           "generator": str(SOURCE.relative_to(SOURCE.parents[2])),
                           "command": "python -m benchmarks.native"}
    env = BenchEnv(work)
    try:
        bundle = env.sign("b1000", bundle_json(1000), 1000)
        servers = {"floor": start_floor(env, "floor", cores=SERVER_CORE),
                   "pdp": start_pdp(env, "pdp", cores=SERVER_CORE, bundle=bundle)}
        try:
            servers["cerbos"] = cerbos.start_cerbos(env, cores=SERVER_CORE)
            time.sleep(0.5)
            mismatches = cerbos.check_same_decisions(env, servers["cerbos"].port,
                                                     servers["pdp"].port)
            if mismatches:
                raise cerbos.CerbosUnavailable("decisions differ: " + "; ".join(mismatches))
        except cerbos.CerbosUnavailable as exc:
            print(f"\nCerbos peer skipped: {exc}", flush=True)
            out["cerbos_skipped"] = str(exc)
            servers.pop("cerbos", None)
        shapes = [s for s in SHAPES if s.server in servers]
        rows = {s.name: Row(s.name) for s in shapes}
        for r in range(rounds):
            k = r % len(shapes)
            for i, shape in enumerate(shapes[k:] + shapes[:k]):
                request = request_bytes(shape.request, f"r{r}w{i}")  # its own resources
                rows[shape.name].rounds.append(window(
                    binary, env, servers[shape.server], shape, request, seconds))
        title = ("The targets with a native load generator (C++, grpc++; 1,000 rules, mTLS, "
                 f"{CHANNELS} connections, 1 at 1 in flight)")
        out["table"] = print_table(title, list(rows.values()))
        out["rows"] = {name: row.summary() for name, row in rows.items()}
        out["targets"] = targets(rows)
        out["bulk_vs_cerbos"] = bulk(rows)
    finally:
        stop_all(env.servers)
    print_targets("Targets (native load generator)", out["targets"])
    if out["bulk_vs_cerbos"] is not None:
        print_bulk(out["bulk_vs_cerbos"])
    out["wall_seconds"] = time.perf_counter() - started
    write_json(out_dir / "native.json", out)
    print(f"\nwrote {out_dir / 'native.json'} in {out['wall_seconds']:.0f} s")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.native", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--seconds", type=float, default=3.0)
    args = p.parse_args(argv)
    try:
        run(rounds=args.rounds, seconds=args.seconds)
    except NativeUnavailable as exc:
        print(f"native load generator unavailable: {exc}", file=sys.stderr)
        return 2
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
