"""The measurements of issue 8, each a function of (bench context) -> rows or figures.

Configurations compared with each other are measured round by round, side by side in one run,
so machine noise (other engineers' tests) hits them alike; the tables show medians.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import grpc

from benchmarks.harness import BenchEnv, ServerProc, settle
from benchmarks.load import Job, LoadPool
from benchmarks.report import Row, percentile, window

__all__ = ["Bench", "handshakes", "measure", "rounds", "token_verification"]


@dataclass
class Bench:
    """What every scenario needs: the environment, the load pool and the run's settings."""

    env: BenchEnv
    pool: LoadPool
    rounds: int
    seconds: float
    client_cores: int
    tables: list[str] = field(default_factory=list)
    _tags: int = 0

    def tag(self) -> str:
        """A fresh tag so uncached resource ids never repeat across windows."""
        self._tags += 1
        return f"w{self._tags}"

    def job(self, server: ServerProc, client: str = "pdp", op: str = "authorize",
            **kw: Any) -> Job:
        """A job against ``server`` with the service identity and this run's window length."""
        kw.setdefault("duration", self.seconds)
        return Job(client=client, op=op, target=f"127.0.0.1:{server.port}",
                   files=tuple(self.env.client_files.items()), tag=self.tag(), **kw)


def spread(job: Job, inflight: int, workers: int) -> list[Job]:
    """``inflight`` calls in flight over ``workers`` worker processes."""
    per, extra = divmod(inflight, workers)
    return [replace(job, inflight=per + (1 if i < extra else 0), tag=f"{job.tag}.{i}")
            for i in range(workers) if per + (1 if i < extra else 0) > 0]


def measure(bench: Bench, servers: list[ServerProc], jobs: list[Job],
            during: Callable[[], None] | None = None) -> Any:
    """One window: CPU of ``servers`` (summed) around the workers' timed calls. It starts
    once every server of the run is idle (they share a core): see harness.settle."""
    marks: dict[str, float] = {}

    def start() -> None:
        settle(bench.env.servers)
        marks["cpu"] = sum(s.cpu() for s in servers)

    results = bench.pool.run(jobs, on_start=start, during=during)
    cpu = sum(s.cpu() for s in servers) - marks["cpu"]
    return window(results, cpu, client_cores=bench.client_cores)


def rounds(bench: Bench, plan: list[tuple[Row, list[ServerProc], Callable[..., list[Job]]]]
           ) -> list[Row]:
    """Measure every configuration of ``plan`` once per round, interleaved, for all rounds.

    Each round starts one configuration later: the first window of a round measured
    ~50 µs slower at 1 in flight (seen with the floor first, then with pdp first), and the
    median over rounds only removes that when no configuration is always first.
    """
    for r in range(bench.rounds):
        k = r % len(plan)
        for row, servers, jobs in plan[k:] + plan[:k]:
            row.rounds.append(measure(bench, servers, jobs()))
    return [row for row, _, _ in plan]


def handshakes(env: BenchEnv, server: ServerProc, n: int, *, tls: bool = True) -> dict[str, float]:
    """Time n new connections to ``server`` until ready (TCP + TLS 1.3 handshake + HTTP/2)."""
    f = env.client_files
    times = []
    for i in range(n):
        opts = [("grpc.use_local_subchannel_pool", 1), ("bench.hs", i),
                ("grpc.ssl_target_name_override", "localhost")]
        started = time.perf_counter()
        if tls:
            creds = grpc.ssl_channel_credentials(Path(f["ca_file"]).read_bytes(),
                                                 Path(f["key_file"]).read_bytes(),
                                                 Path(f["cert_file"]).read_bytes())
            ch = grpc.secure_channel(f"127.0.0.1:{server.port}", creds, options=opts)
        else:
            ch = grpc.insecure_channel(f"127.0.0.1:{server.port}", options=opts)
        grpc.channel_ready_future(ch).result(timeout=10)
        times.append(time.perf_counter() - started)
        ch.close()
    return {"n": n, "p50_ms": percentile(times, 50) * 1e3, "p99_ms": percentile(times, 99) * 1e3}


def token_verification(directory: Path, n: int) -> dict[str, float]:
    """In-process cost of TokenVerifier.verify on fresh ES256 tokens (each jti used once)."""
    from pdp.clock import system_clock
    from pdp.security.keys import KeyConfig, KeyStore
    from pdp.security.tokens import ReplayCache, TokenIssuer, TokenVerifier

    keys = KeyStore(KeyConfig(dir=directory / "token-keys"), clock=system_clock)
    keys.ensure_active()
    issuer = TokenIssuer(keys, issuer="pdp", clock=system_clock)
    verifier = TokenVerifier(keys=keys, issuer="pdp", audience="pdp", clock=system_clock,
                             replay=ReplayCache(clock=system_clock))
    subject = "spiffe://pdp.bench/svc/example"
    t0 = time.perf_counter()
    tokens = [issuer.issue(subject, "pdp", 60).token for _ in range(n)]
    t1 = time.perf_counter()
    times = []
    for token in tokens:
        started = time.perf_counter()
        verified = verifier.verify(token)
        times.append(time.perf_counter() - started)
        if verified.sub != subject:
            raise RuntimeError("token verified to the wrong subject")
    return {"n": n, "issue_us": (t1 - t0) / n * 1e6,
            "verify_p50_us": percentile(times, 50) * 1e6,
            "verify_p99_us": percentile(times, 99) * 1e6}
