"""Load generators: persistent worker processes, each an asyncio loop with N calls in flight.

A job says which client (the shipped AsyncPDPClient, a raw grpc.aio stub, or Cerbos's stub),
which call, how many in flight and for how long; every worker reports calls, errors,
per-call latencies and its own CPU time, so the harness can show the client is not the limit.
"""

from __future__ import annotations

import asyncio
import itertools
import multiprocessing as mp
import os
import resource
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["Job", "LoadPool", "WorkerResult"]

Call = Callable[[int], Awaitable[int]]  # call(sequence number) -> decisions answered


@dataclass(frozen=True)
class Job:
    """What one worker does in one window."""

    client: str  # "pdp" (AsyncPDPClient), "raw" (grpc.aio stub), "cerbos"
    op: str  # "authorize", "batch", "token"; raw: "authorize", "batch3"; cerbos: "check3"
    target: str
    inflight: int = 1
    duration: float = 1.0  # seconds of timed calls
    max_calls: int = 1_000_000  # bound on calls per worker, whatever the duration
    vary: bool = False  # a new resource id per call (defeats the decision cache)
    batch: int = 1  # items per AuthorizeBatch
    channels: int = 1  # connections per worker
    tls: bool = True  # raw client only: False = plaintext
    files: tuple[tuple[str, str], ...] = ()  # ca_file, cert_file, key_file
    stubs_dir: str = ""  # where the Cerbos stubs were compiled
    tag: str = ""  # makes resource ids unique across windows


@dataclass(frozen=True)
class WorkerResult:
    """One worker's window."""

    calls: int
    decisions: int
    errors: int
    elapsed: float
    cpu: float  # this worker process's CPU seconds in the window
    latencies: list[float]
    first_error: str = ""


async def _pdp_call(job: Job, worker: int) -> tuple[Call, Callable[[], Awaitable[None]]]:
    from pdp_client import AccessRequest, Action, AsyncPDPClient, Resource, Subject

    files = dict(job.files)
    client = AsyncPDPClient(job.target, ca_file=files["ca_file"], cert_file=files["cert_file"],
                            key_file=files["key_file"], server_name="localhost", timeout=10.0,
                            retries=0, fail_closed=False, channels=job.channels)
    alice, write = Subject("user", "alice"), Action("write")
    props = {"owner": "alice"}
    prefix = f"{job.tag}-{worker}-"

    def rid(n: int) -> str:
        return f"{prefix}{n}" if job.vary else "doc-1"

    if job.op == "authorize":
        async def call(n: int) -> int:
            d = await client.authorize(subject=alice, action=write,
                                       resource=Resource("doc", rid(n), props))
            if not d.allowed:
                raise RuntimeError(f"unexpected {d.decision.name}: {d.reason}")
            return 1
    elif job.op == "batch":
        defaults = AccessRequest(subject=alice, action=write)

        async def call(n: int) -> int:
            items = [AccessRequest(resource=Resource("doc", rid(n * job.batch + i), props))
                     for i in range(job.batch)]
            ds = await client.authorize_batch(items, defaults=defaults)
            if not all(d.allowed for d in ds):
                raise RuntimeError("unexpected DENY in batch")
            return len(ds)
    elif job.op == "token":
        async def call(n: int) -> int:
            token = await client.issue_service_token("pdp", ttl_seconds=60)
            if not token.token:
                raise RuntimeError("empty token")
            return 1
    else:
        raise ValueError(f"unknown pdp op {job.op}")
    return call, client.aclose


async def _raw_call(job: Job, worker: int) -> tuple[Call, Callable[[], Awaitable[None]]]:
    import grpc
    import grpc.aio

    from pdp_client._proto import authorization_pb2 as pb
    from pdp_client._proto import authorization_pb2_grpc as pb_grpc

    files = dict(job.files)
    channels = []
    for i in range(job.channels):
        opts = [("grpc.use_local_subchannel_pool", 1), ("bench.channel", i),
                ("grpc.ssl_target_name_override", "localhost")]
        if job.tls:
            creds = grpc.ssl_channel_credentials(
                Path(files["ca_file"]).read_bytes(), Path(files["key_file"]).read_bytes(),
                Path(files["cert_file"]).read_bytes())
            channels.append(grpc.aio.secure_channel(job.target, creds, options=opts))
        else:
            channels.append(grpc.aio.insecure_channel(job.target, options=opts))
    stubs = itertools.cycle([pb_grpc.AuthorizationStub(ch) for ch in channels])
    prefix = f"{job.tag}-{worker}-raw-"
    single = pb.AuthorizeRequest()
    single.subject.type, single.subject.id, single.action.name = "user", "alice", "write"
    single.resource.type, single.resource.id = "doc", "doc-1"
    single.resource.properties.update({"owner": "alice"})
    batch = pb.AuthorizeBatchRequest()
    batch.defaults.subject.type, batch.defaults.subject.id = "user", "alice"
    batch.defaults.resource.CopyFrom(single.resource)
    for action in ("read", "write", "delete"):
        batch.requests.add().action.name = action

    async def call(n: int) -> int:
        stub = next(stubs)
        if job.op == "batch3":
            request_batch = batch
            if job.vary:  # a fresh resource id, as for single calls
                request_batch = pb.AuthorizeBatchRequest()
                request_batch.CopyFrom(batch)
                request_batch.defaults.resource.id = f"{prefix}{n}"
            out = await stub.AuthorizeBatch(request_batch, timeout=10.0)
            allowed = [r.decision == pb.DECISION_ALLOW for r in out.responses]
            if allowed != [True, True, True]:
                raise RuntimeError("unexpected decision in batch of 3")
            return 3
        request = single
        if job.vary:  # a fresh resource id: the raw stub's own cost is a field set and a copy
            request = pb.AuthorizeRequest()
            request.CopyFrom(single)
            request.resource.id = f"{prefix}{n}"
        r = await stub.Authorize(request, timeout=10.0)
        if r.decision != pb.DECISION_ALLOW:
            raise RuntimeError(f"unexpected decision: {r.reason}")
        return 1

    async def close() -> None:
        for ch in channels:
            await ch.close()
    return call, close


async def _setup(job: Job, worker: int) -> tuple[Call, Callable[[], Awaitable[None]]]:
    if job.client == "pdp":
        return await _pdp_call(job, worker)
    if job.client == "raw":
        return await _raw_call(job, worker)
    if job.client == "cerbos":
        from benchmarks.peers.cerbos import cerbos_call

        return await cerbos_call(job)
    raise ValueError(f"unknown client {job.client}")


async def _run(job: Job, worker: int, results: Any, go: Any) -> WorkerResult:
    call, close = await _setup(job, worker)
    try:
        for n in range(3):  # warm up: connect, handshake, first-call paths
            await call(-1 - n)
        results.put(("ready", worker, None))
        await asyncio.get_running_loop().run_in_executor(None, go.wait)
        counter = itertools.count()
        latencies: list[float] = []
        stats = {"decisions": 0, "errors": 0}
        first_error: list[str] = []
        start = time.perf_counter()
        stop_at = start + job.duration
        usage0 = resource.getrusage(resource.RUSAGE_SELF)

        async def loop() -> None:
            while time.perf_counter() < stop_at:
                n = next(counter)
                if n >= job.max_calls:
                    return
                t0 = time.perf_counter()
                try:
                    got = await call(n)
                    stats["decisions"] += got
                except Exception as exc:  # counted: a failed call is a result, not a crash
                    stats["errors"] += 1
                    if not first_error:
                        first_error.append(f"{type(exc).__name__}: {exc}"[:300])
                latencies.append(time.perf_counter() - t0)

        await asyncio.gather(*(loop() for _ in range(job.inflight)))
        elapsed = time.perf_counter() - start
        usage1 = resource.getrusage(resource.RUSAGE_SELF)
        cpu = (usage1.ru_utime - usage0.ru_utime) + (usage1.ru_stime - usage0.ru_stime)
        return WorkerResult(len(latencies), stats["decisions"], stats["errors"], elapsed, cpu,
                            latencies, first_error[0] if first_error else "")
    finally:
        await close()


def _worker_main(worker: int, jobs: Any, results: Any, go: Any, core: int | None) -> None:
    if core is not None and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {core})
    while True:
        job = jobs.get()
        if job is None:
            return
        try:
            result = asyncio.run(_run(job, worker, results, go))
        except Exception as exc:  # reported to the harness, which fails the scenario
            results.put(("failed", worker, f"{type(exc).__name__}: {exc}"[:500]))
            continue
        results.put(("done", worker, result))


class LoadPool:
    """``size`` persistent load-generator processes, pinned to ``core`` when given."""

    def __init__(self, size: int, *, core: int | None) -> None:
        ctx = mp.get_context("spawn")
        self._go = ctx.Event()
        self._results: Any = ctx.Queue()
        self._queues: list[Any] = [ctx.Queue() for _ in range(size)]
        self._procs = [ctx.Process(target=_worker_main, daemon=True,
                                   args=(i, q, self._results, self._go, core))
                       for i, q in enumerate(self._queues)]
        for p in self._procs:
            p.start()

    @property
    def size(self) -> int:
        return len(self._procs)

    def run(self, jobs: Sequence[Job], *, on_start: Callable[[], None],
            during: Callable[[], None] | None = None,
            timeout: float = 300.0) -> list[WorkerResult]:
        """Run one window: workers warm up, ``on_start`` runs, all start together, ``during``
        runs in this process while they call; return their results.

        Raises RuntimeError when a worker could not set up or run its job.
        """
        if len(jobs) > self.size:
            raise ValueError("more jobs than workers")
        self._go.clear()
        for q, job in zip(self._queues, jobs, strict=False):
            q.put(job)
        failures: list[str] = []
        ready = 0
        while ready + len(failures) < len(jobs):
            kind, worker, payload = self._results.get(timeout=timeout)
            if kind == "ready":
                ready += 1
            else:
                failures.append(f"worker {worker}: {payload}")
        if failures:
            self._go.set()
            self._drain(ready, timeout)
            raise RuntimeError("; ".join(failures))
        on_start()
        self._go.set()
        if during is not None:
            during()
        out: list[WorkerResult] = []
        while len(out) + len(failures) < len(jobs):
            kind, worker, payload = self._results.get(timeout=timeout)
            if kind == "done":
                out.append(payload)
            else:
                failures.append(f"worker {worker}: {payload}")
        self._go.clear()
        if failures:
            raise RuntimeError("; ".join(failures))
        return out

    def _drain(self, n: int, timeout: float) -> None:
        for _ in range(n):
            self._results.get(timeout=timeout)
        self._go.clear()

    def close(self) -> None:
        """Stop every worker."""
        for q in self._queues:
            q.put(None)
        for p in self._procs:
            p.join(5)
            if p.is_alive():
                p.terminate()
