"""Several server processes on one data port (SO_REUSEPORT), so one replica uses every core.

The kernel spreads connections, not calls, across the workers; `pdp-client` keeps several
channels. Worker 0 also serves the admin listener. Each worker writes its own audit chain
(``audit/worker-N``) and keeps its own decision cache and token-replay memory; bundles and
quarantine reach every worker through the shared store.
"""

from __future__ import annotations

import dataclasses
import logging
import multiprocessing
import signal
import threading
import time
from multiprocessing.process import BaseProcess
from pathlib import Path

from pdp.clock import system_clock
from pdp.errors import ConfigError
from pdp.server.config import Config, load_config

__all__ = ["WORKER_RESTART_DELAY", "run_workers", "worker_config"]

log = logging.getLogger(__name__)

WORKER_RESTART_DELAY = 1.0  # seconds before a crashed worker is started again


def worker_config(config: Config, index: int) -> Config:
    """The config of worker ``index``: its own audit chain and replica id; admin on worker 0."""
    base = config.server.replica_id or "replica"
    server = dataclasses.replace(config.server, replica_id=f"{base}-w{index}",
                                 serve_admin=index == 0)
    audit = dataclasses.replace(config.audit_config,
                                dir=config.audit_config.dir / f"worker-{index}")
    return dataclasses.replace(config, server=server, audit=audit)


def _worker_main(config_path: str, index: int) -> None:
    from pdp.server.app import PDPServer

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when to stop
    server = PDPServer(worker_config(load_config(Path(config_path)), index))
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda signum, frame: stop.set())
    server.start()
    admin = f", admin on port {server.admin_port}" if server.admin_port else ""
    print(f"pdp: worker {index} serving data on port {server.data_port}{admin} "
          f"(replica {server.replica_id})", flush=True)
    stop.wait()
    server.stop()


def run_workers(config_path: Path, config: Config, stop: threading.Event) -> int:
    """Run ``config.server.workers`` worker processes until ``stop`` is set; restart crashes."""
    count = config.server.workers
    if config.server.data.address.endswith(":0"):
        raise ConfigError("several workers need a fixed data port, not 0",
                          field="[server.data].address")
    # Make the shared one-time state (the first signing key) before the workers race for it.
    from pdp.security.keys import KeyStore

    KeyStore(config.key_config, clock=system_clock).ensure_active()
    context = multiprocessing.get_context("spawn")
    procs: dict[int, BaseProcess] = {}

    def start(index: int) -> None:
        proc = context.Process(target=_worker_main, args=(str(config_path), index),
                               name=f"pdp-worker-{index}", daemon=False)
        proc.start()
        procs[index] = proc

    for index in range(count):
        start(index)
    print(f"pdp: {count} workers on {config.server.data.address} "
          f"(admin on {config.server.admin.address} in worker 0)", flush=True)
    while not stop.wait(0.5):
        for index, proc in list(procs.items()):
            if not proc.is_alive():
                log.error("worker %d exited with %s; restarting", index, proc.exitcode)
                time.sleep(WORKER_RESTART_DELAY)
                start(index)
    for proc in procs.values():
        if proc.is_alive() and proc.pid is not None:
            proc.terminate()  # SIGTERM: the worker drains and flushes its audit trail
    deadline = time.monotonic() + config.server.grace_seconds + 10
    for proc in procs.values():
        proc.join(max(0.1, deadline - time.monotonic()))
        if proc.is_alive():
            proc.kill()
    return 0
