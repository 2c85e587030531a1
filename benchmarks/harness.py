"""Benchmark harness: a throwaway PKI, server processes pinned to a core, and their CPU and RSS.

Servers run as separate processes (``pdp serve``, the no-op floor, Cerbos) so their own CPU
time can be read from /proc/<pid>/stat before and after a timed window.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from pdp.policy import load_bundle
from pdp.security.pki import DevPKI, make_dev_pki
from pdp.security.signing import generate_bundle_key, sign_digest
from pdp_client._proto import admin_pb2, admin_pb2_grpc
from tests.ports import free_port

__all__ = [
    "POLICIES",
    "BenchEnv",
    "ServerProc",
    "SignedBundle",
    "code_env",
    "cpu_seconds",
    "free_port",
    "launcher",
    "pinned",
    "rss_bytes",
    "scheduling_policies",
    "settle",
    "start_floor",
    "start_pdp",
    "stop_all",
    "tree_pids",
    "wait_port",
]

ROOT = Path(__file__).resolve().parent.parent
TRUST_DOMAIN = "pdp.bench"
SERVICE_ID = f"spiffe://{TRUST_DOMAIN}/svc/example"
_TICKS = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")

PDP_CONFIG = """\
data_dir = "data"
[server]
threads = {threads}
workers = {workers}
replica_id = "{replica}"
[server.data]
address = "127.0.0.1:{data_port}"
[server.admin]
address = "127.0.0.1:{admin_port}"
[tls]
cert_file = "{server_cert}"
key_file = "{server_key}"
ca_file = "{ca}"
[access]
authorize = ["spiffe://{td}/svc/*"]
admin = ["spiffe://{td}/admin"]
[bundles]
trusted_keys = {{ bench = "{public_key}" }}
[cache]
max_size = {cache_size}
"""


def pinned(cores: str | None) -> list[str]:
    """A `taskset -c CORES` prefix when taskset exists and cores are given, else nothing."""
    if cores is None or shutil.which("taskset") is None:
        return []
    return ["taskset", "-c", cores]


# CPU scheduling policies a server can be started under (see benchmarks.scheduling): Linux's
# default, and SCHED_BATCH, whose threads do not preempt the running thread when they wake.
POLICIES = {"normal": os.SCHED_OTHER, "batch": os.SCHED_BATCH}


def launcher(cores: str | None, policy: str = "normal") -> list[str]:
    """The command prefix that starts a server pinned to ``cores`` (see :func:`pinned`) under
    the CPU scheduling ``policy`` (one of POLICIES; "batch" through `chrt --batch 0`, whose
    policy the process's threads inherit). Raises RuntimeError when chrt is missing for
    "batch", ValueError for another policy."""
    if policy not in POLICIES:
        raise ValueError(f"unknown scheduling policy {policy!r}; known: {', '.join(POLICIES)}")
    if policy == "normal":
        return pinned(cores)
    if shutil.which("chrt") is None:
        raise RuntimeError("chrt (util-linux) is not installed: cannot start a server under "
                           "SCHED_BATCH")
    return ["chrt", "--batch", "0", *pinned(cores)]


def scheduling_policies(pid: int) -> set[str]:
    """The scheduling policies (names of POLICIES, or the number of another) that the
    threads of process ``pid`` run under now."""
    names = {number: name for name, number in POLICIES.items()}
    seen = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):  # a thread that just ended
            number = os.sched_getscheduler(int(task.name))
            seen.add(names.get(number, str(number)))
    return seen


def cpu_seconds(pid: int) -> float:
    """utime + stime of process ``pid`` (all its threads), in seconds, from /proc/<pid>/stat."""
    raw = Path(f"/proc/{pid}/stat").read_text()
    fields = raw[raw.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


def tree_pids(pid: int) -> list[int]:
    """``pid`` and all its descendants (from /proc/<pid>/task/*/children)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        for children in Path(f"/proc/{p}/task").glob("*/children"):
            with contextlib.suppress(OSError):
                todo.extend(int(c) for c in children.read_text().split())
    return out


def rss_bytes(pid: int) -> int:
    """Resident set size of process ``pid`` in bytes, from /proc/<pid>/statm."""
    return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * _PAGE


def wait_port(port: int, proc: subprocess.Popen[bytes] | None = None,
              timeout: float = 30.0) -> None:
    """Block until 127.0.0.1:port accepts; raise RuntimeError when the process died or time ran
    out."""
    deadline = time.monotonic() + timeout
    while True:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"nothing listens on 127.0.0.1:{port}") from None
            time.sleep(0.05)


@dataclass(frozen=True)
class SignedBundle:
    """A bundle document and its signature by the bench signing key."""

    name: str
    data: bytes
    signature: bytes
    rules: int


@dataclass
class ServerProc:
    """One server process and where it listens."""

    name: str
    proc: subprocess.Popen[bytes]
    port: int
    admin_port: int = 0
    directory: Path | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def cpu(self) -> float:
        """CPU seconds so far of this process and its children (worker processes)."""
        total = 0.0
        for pid in tree_pids(self.pid):
            with contextlib.suppress(OSError, ValueError):  # a child that just exited
                total += cpu_seconds(pid)
        return total

    def rss(self) -> int:
        """This process's resident set size in bytes."""
        return rss_bytes(self.pid)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 10 s."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@dataclass
class BenchEnv:
    """The work directory: PKI, bundle-signing key, started servers."""

    directory: Path
    pki: DevPKI = field(init=False)
    private_key: Path = field(init=False)
    public_key: Path = field(init=False)
    servers: list[ServerProc] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.pki = make_dev_pki(self.directory / "pki", trust_domain=TRUST_DOMAIN)
        self.private_key = self.directory / "bundle.key"
        self.public_key = self.directory / "bundle.pub"
        if not self.private_key.exists():
            generate_bundle_key(self.private_key, self.public_key)

    @property
    def client_files(self) -> dict[str, str]:
        """ca_file / cert_file / key_file of the data-plane service identity."""
        return {"ca_file": str(self.pki.ca_cert), "cert_file": str(self.pki.service_cert),
                "key_file": str(self.pki.service_key)}

    def sign(self, name: str, data: bytes, rules: int) -> SignedBundle:
        """Sign ``data`` (parsed once, to get its canonical digest)."""
        digest = load_bundle(data, source=name).digest
        return SignedBundle(name, data, sign_digest(digest, self.private_key), rules)

    def admin_channel(self, port: int) -> grpc.Channel:
        """An mTLS channel to an admin listener as the admin identity."""
        creds = grpc.ssl_channel_credentials(self.pki.ca_cert.read_bytes(),
                                             self.pki.admin_key.read_bytes(),
                                             self.pki.admin_cert.read_bytes())
        return grpc.secure_channel(f"127.0.0.1:{port}", creds,
                                   options=[("grpc.ssl_target_name_override", "localhost")])

    def cache_size(self, server: ServerProc) -> int:
        """How many decisions ``server``'s cache holds, from its admin GetStatus."""
        with self.admin_channel(server.admin_port) as ch:
            status = admin_pb2_grpc.AdminStub(ch).GetStatus(admin_pb2.GetStatusRequest(),
                                                            timeout=10.0)
            return int(status.cache.size)

    def push(self, server: ServerProc, bundle: SignedBundle, timeout: float = 120.0) -> float:
        """Push and activate ``bundle`` on ``server``'s admin listener; return the seconds it
        took. Raises grpc.RpcError when refused."""
        with self.admin_channel(server.admin_port) as ch:
            stub = admin_pb2_grpc.AdminStub(ch)
            started = time.perf_counter()
            stub.PushBundle(admin_pb2.PushBundleRequest(
                bundle=bundle.data, signature=bundle.signature, key_id="bench", activate=True),
                timeout=timeout, wait_for_ready=True)
            return time.perf_counter() - started

    def shadow(self, server: ServerProc, bundle: SignedBundle) -> str:
        """Store ``bundle`` on ``server`` without activating it and shadow-evaluate it (the
        server compiles it before it answers); return its version."""
        with self.admin_channel(server.admin_port) as ch:
            stub = admin_pb2_grpc.AdminStub(ch)
            pushed = stub.PushBundle(admin_pb2.PushBundleRequest(
                bundle=bundle.data, signature=bundle.signature, key_id="bench", activate=False),
                timeout=120, wait_for_ready=True)
            version = str(pushed.bundle.version)
            stub.SetShadow(admin_pb2.SetShadowRequest(version=version), timeout=120)
            return version

    def activate(self, server: ServerProc, version: str, timeout: float = 120.0) -> float:
        """Activate the stored ``version`` on ``server``; return the seconds it took. Raises
        grpc.RpcError when refused."""
        with self.admin_channel(server.admin_port) as ch:
            stub = admin_pb2_grpc.AdminStub(ch)
            started = time.perf_counter()
            stub.ActivateBundle(admin_pb2.ActivateBundleRequest(version=version),
                                timeout=timeout, wait_for_ready=True)
            return time.perf_counter() - started

    def stop(self, server: ServerProc) -> None:
        """Stop one server and forget it."""
        server.stop()
        if server in self.servers:
            self.servers.remove(server)


def settle(servers: Sequence[ServerProc], *, step: float = 0.1,
           timeout: float = 5.0) -> float:
    """Wait until ``servers`` are idle: at most one clock tick (10 ms) of CPU between them in
    ``step`` seconds, so that a window does not pay for the previous one's backlog (its
    audit records still being written, its decisions still being counted by the detectors).
    Gives up after ``timeout`` seconds; returns the seconds waited."""
    started = time.monotonic()
    before = sum(s.cpu() for s in servers)
    while time.monotonic() - started < timeout:
        time.sleep(step)
        now = sum(s.cpu() for s in servers)
        if now - before < 1.5 / _TICKS:  # (sums of whole ticks: no float equality)
            break
        before = now
    return time.monotonic() - started


def code_env(code: Path | None) -> dict[str, str] | None:
    """The environment in which a child process imports pdp and pdp_client from the checkout
    ``code`` (ahead of the installed ones), or None for the installed ones. The child must
    not run with a working directory that holds a ``pdp`` package of its own."""
    if code is None:
        return None
    env = dict(os.environ)
    paths = [str(code), str(code / "clients" / "python")]
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    return env


def start_pdp(env: BenchEnv, name: str, *, cores: str | None, port: int | None = None,
              threads: int = 16, extra: str = "", cache_size: int = 100_000,
              bundle: SignedBundle | None = None, workers: int = 1,
              code: Path | None = None, policy: str = "normal",
              environ: dict[str, str] | None = None) -> ServerProc:
    """Start `pdp serve` in its own directory (its own SQLite store and audit); push ``bundle``.

    ``workers`` > 1 runs that many processes on the data port (`[server] workers`); the bundle
    reaches them through the shared store, so this waits for them to pick it up. ``code``: a
    checkout whose pdp to serve instead of the installed one (see benchmarks.ab).
    ``environ``: the child's whole environment, in place of this process's (``code`` aside).
    """
    directory = env.directory / "servers" / name
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    data_port, admin_port = port or free_port(), free_port()
    config = directory / "pdp.toml"
    config.write_text(PDP_CONFIG.format(
        threads=threads, workers=workers, replica=name, data_port=data_port, admin_port=admin_port,
        server_cert=env.pki.server_cert, server_key=env.pki.server_key, ca=env.pki.ca_cert,
        td=TRUST_DOMAIN, public_key=env.public_key, cache_size=cache_size) + extra)
    with (directory / "server.log").open("wb") as log:  # the child keeps its own descriptor
        proc = subprocess.Popen(
            [*launcher(cores, policy), sys.executable, "-m", "pdp.cli", "serve", "--config",
             str(config)],
            cwd=directory, stdout=log, stderr=subprocess.STDOUT,
            env=code_env(code) if code is not None else environ)
    server = ServerProc(name, proc, data_port, admin_port, directory)
    env.servers.append(server)
    wait_port(admin_port, proc)
    if bundle is not None:
        env.push(server, bundle)
        if workers > 1:
            time.sleep(2.0)  # workers poll the store every 0.5 s
    return server


def start_floor(env: BenchEnv, name: str, *, cores: str | None, threads: int = 16,
                plaintext: bool = False, policy: str = "normal",
                environ: dict[str, str] | None = None) -> ServerProc:
    """Start the no-op floor server (benchmarks.floor) with the server certificate, under
    the CPU scheduling ``policy`` (see :func:`launcher`), in ``environ`` (the whole
    environment; default: this process's)."""
    port = free_port()
    args = [*launcher(cores, policy), sys.executable, "-m", "benchmarks.floor", "--port", str(port),
            "--threads", str(threads), "--cert", str(env.pki.server_cert),
            "--key", str(env.pki.server_key), "--ca", str(env.pki.ca_cert)]
    if plaintext:
        args.append("--plaintext")
    proc = subprocess.Popen(args, cwd=ROOT, env=environ)
    server = ServerProc(name, proc, port)
    env.servers.append(server)
    wait_port(port, proc)
    return server


def stop_all(servers: Sequence[ServerProc]) -> None:
    """Stop every server in ``servers``."""
    for server in list(servers):
        server.stop()
