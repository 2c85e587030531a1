"""Propagation latency across replicas: three `pdp serve` on one PostgreSQL store.

For each push through replica A: the time from PushBundle(activate=True) returning until
every replica answers Authorize with the new version. `python -m benchmarks.propagation`.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from benchmarks.report import machine, percentile, write_json
from pdp.security.pki import make_dev_pki
from tests.replicas.cluster import (
    Certs,
    Cluster,
    DatabaseAbsentError,
    Replica,
    read_request,
    scratch_database,
)

__all__ = ["main", "measure_push"]

RESULTS = Path(__file__).resolve().parent / "results" / "propagation.json"
POLL = 0.005  # seconds between a poller's Authorize calls
TIMEOUT = 10.0  # seconds a replica may take before the push counts as not propagated


def _first_seen(replica: Replica, version: str, start: float, out: dict[str, float],
                go: threading.Event) -> None:
    go.wait()
    stub = replica.authz()
    while time.perf_counter() - start < TIMEOUT:
        answer = stub.Authorize(read_request(), timeout=5)
        if answer.bundle_version == version:
            out[replica.name] = (time.perf_counter() - start) * 1000.0
            return
        time.sleep(POLL)


def measure_push(cluster: Cluster, via: Replica, revision: str) -> dict[str, float]:
    """Push ``revision`` through ``via``; return ms until each replica answers it (and
    ``all``: the slowest). Raises RuntimeError when a replica never answers it."""
    go = threading.Event()
    seen: dict[str, float] = {}
    response = cluster.push(via, revision)
    start = time.perf_counter()  # from PushBundle returning
    version = response.bundle.version
    threads = [threading.Thread(target=_first_seen, args=(r, version, start, seen, go))
               for r in cluster.replicas]
    for t in threads:
        t.start()
    go.set()
    for t in threads:
        t.join()
    missing = [r.name for r in cluster.replicas if r.name not in seen]
    if missing:
        raise RuntimeError(f"{version} not answered by {missing} within {TIMEOUT} s")
    others = [seen[r.name] for r in cluster.replicas if r is not via]
    seen["all"] = max(seen.values())
    # ``via`` needs no propagation (it activates before replying): its time is the floor
    # of the method and of the machine's scheduling at that moment.
    seen["beyond_floor"] = max(0.0, max(others, default=0.0) - seen[via.name])
    return seen


def _stats(values: list[float]) -> dict[str, float]:
    return {"median_ms": statistics.median(values), "p90_ms": percentile(values, 90),
            "max_ms": max(values), "min_ms": min(values)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--pushes", type=int, default=20, help="pushes through replica A")
    parser.add_argument("--poll-interval", type=float, default=0.5,
                        help="[store] poll_interval of the replicas (NOTIFY fallback)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="pdp-propagation-") as tmp:
        work = Path(tmp)
        dev = make_dev_pki(work / "pki", trust_domain="pdp.bench")
        certs = Certs(dev.ca_cert, dev.server_cert, dev.server_key, dev.admin_cert,
                      dev.admin_key, dev.service_cert, dev.service_key, "spiffe://pdp.bench")
        with contextlib.ExitStack() as stack:
            try:
                url = stack.enter_context(scratch_database())
            except DatabaseAbsentError as exc:
                print(f"propagation: {exc}", file=sys.stderr)
                return 2
            cluster = Cluster(work / "cluster", certs, url, poll_interval=args.poll_interval)
            stack.callback(cluster.close)
            a, _, _ = cluster.start(["replica-a", "replica-b", "replica-c"])
            # The warm-up push also opens each poller's channel, so no sample pays a handshake.
            measure_push(cluster, a, "warm-up")
            samples = [measure_push(cluster, a, f"bench-{i}") for i in range(args.pushes)]
    names = ["all", *(r.name for r in cluster.replicas), "beyond_floor"]
    table: dict[str, dict[str, float]] = {n: _stats([s[n] for s in samples]) for n in names}
    print(f"\n== propagation: PushBundle(activate) through replica-a returning -> replica "
          f"answers the new version ({args.pushes} pushes, poll_interval "
          f"{args.poll_interval} s, polled every {POLL * 1000:.0f} ms)")
    print(f"{'replica':<12} {'median ms':>10} {'p90 ms':>10} {'max ms':>10}")
    for name in names:
        row = table[name]
        label = {"all": "every one", "beyond_floor": "others - A"}.get(name, name)
        print(f"{label:<12} {row['median_ms']:>10.1f} {row['p90_ms']:>10.1f} "
              f"{row['max_ms']:>10.1f}")
    result: dict[str, Any] = {
        "benchmark": "propagation", "replicas": 3, "pushes": args.pushes,
        "poll_interval_s": args.poll_interval, "poller_interval_s": POLL,
        "summary": table, "samples_ms": samples, "machine": machine(),
    }
    print("(replica-a activates before PushBundle returns: its column is the measurement floor,"
          " one poller thread start and one Authorize call)")
    write_json(RESULTS, result)
    print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
