"""`pdp serve` as a real process: SIGTERM drains, SIGKILL mid-push leaves a consistent store,
several workers share one port."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from pdp.security.signing import generate_bundle_key
from pdp.store import open_store
from pdp_client._proto import admin_pb2, admin_pb2_grpc, authorization_pb2_grpc
from tests.ports import free_port
from tests.server.conftest import TEST_BUNDLE, authorize_request, channel, make_config
from tests.serving import ServeProcess

pytestmark = pytest.mark.slow


class Proc(ServeProcess):
    """`pdp serve` with the server tests' config and PKI, started and ready."""

    def __init__(self, directory: Path, pki: Any, *, workers: int = 1) -> None:
        self.directory = directory
        self.pki = pki
        self.data_port, self.admin_port = free_port(), free_port()
        self.private, public = directory / "sign.key", directory / "sign.pub"
        if not self.private.exists():
            generate_bundle_key(self.private, public)
        self.config = make_config(directory, pki, public, data_port=self.data_port,
                                  admin_port=self.admin_port, probe=True)
        if workers > 1:
            text = self.config.read_text()
            self.config.write_text(text.replace("threads = 8", f"threads = 8\nworkers = {workers}"))
        super().__init__(self.config, cwd=directory, workers=workers)
        self.wait_ready(timeout=30)

    def admin(self) -> admin_pb2_grpc.AdminStub:
        return admin_pb2_grpc.AdminStub(channel(f"127.0.0.1:{self.admin_port}",
                                                self.pki.ca_cert, self.pki.admin.cert,
                                                self.pki.admin.key))

    def authz(self) -> authorization_pb2_grpc.AuthorizationStub:
        return authorization_pb2_grpc.AuthorizationStub(channel(
            f"127.0.0.1:{self.data_port}", self.pki.ca_cert, self.pki.service.cert,
            self.pki.service.key))

    def push(self, revision: str, *, activate: bool = True) -> Any:
        from pdp.policy import load_bundle
        from pdp.security.signing import sign_digest

        data = TEST_BUNDLE.replace('revision: "1"', f'revision: "{revision}"').encode()
        sig = sign_digest(load_bundle(data).digest, self.private)
        return self.admin().PushBundle(admin_pb2.PushBundleRequest(
            bundle=data, signature=sig, key_id="test", activate=activate), timeout=10)


@pytest.fixture
def procs() -> Iterator[list[Proc]]:
    started: list[Proc] = []
    yield started
    for p in started:
        output = p.stop(signal.SIGKILL)
        # pytest shows this only for a failed test: what each server said before it ended.
        print(f"--- pdp serve, data port {p.data_port}, exit {p.proc.returncode} ---\n{output}")


def test_sigterm_drains_and_restart_restores(tmp_path: Path, pki: Any,
                                              procs: list[Proc]) -> None:
    first = Proc(tmp_path, pki)
    procs.append(first)
    pushed = first.push("a")
    assert first.authz().Authorize(authorize_request("alice", "read", "d1"),
                                   timeout=5).bundle_version == pushed.bundle.version
    output = first.stop()
    assert first.proc.returncode == 0, output
    assert "draining" in output
    second = Proc(tmp_path, pki)
    procs.append(second)
    answer = second.authz().Authorize(authorize_request("alice", "read", "d1"), timeout=5)
    assert answer.bundle_version == pushed.bundle.version


def test_sigkill_during_pushes_leaves_the_store_consistent(tmp_path: Path, pki: Any,
                                                           procs: list[Proc]) -> None:
    proc = Proc(tmp_path, pki)
    procs.append(proc)
    stop = threading.Event()

    def pusher() -> None:
        i = 0
        while not stop.is_set():
            try:
                proc.push(f"p{i}")
            except grpc.RpcError:
                return
            i += 1

    thread = threading.Thread(target=pusher)
    thread.start()
    time.sleep(1.5)
    os.kill(proc.proc.pid, signal.SIGKILL)
    stop.set()
    thread.join()
    proc.stop(signal.SIGKILL)
    store = open_store(f"sqlite:///{tmp_path / 'data' / 'pdp.db'}")
    try:
        listed = store.list()
        assert listed, "some pushes must have landed"
        for stored in listed:
            assert store.get(stored.version).data  # sha256 verified on read
        active = store.active()
        assert active is not None
    finally:
        store.close()
    again = Proc(tmp_path, pki)
    procs.append(again)
    answer = again.authz().Authorize(authorize_request("alice", "read", "d1"), timeout=5)
    assert answer.bundle_version == active[1].version


def test_two_workers_share_the_port_and_both_follow_activation(
    tmp_path: Path, pki: Any, procs: list[Proc],
) -> None:
    proc = Proc(tmp_path, pki, workers=2)
    procs.append(proc)
    pushed = proc.push("w1")
    # Fresh connections land on either worker (decision ids start with a per-process
    # prefix); once the activation has reached both, every answer comes from the new bundle.
    deadline = time.monotonic() + 20
    prefixes: dict[str, str] = {}
    while time.monotonic() < deadline:
        with channel(f"127.0.0.1:{proc.data_port}", pki.ca_cert, pki.service.cert,
                     pki.service.key) as ch:
            stub = authorization_pb2_grpc.AuthorizationStub(ch)
            answer = stub.Authorize(authorize_request("alice", "read", "d1"), timeout=5)
        prefixes[answer.decision_id.split("-")[0]] = answer.bundle_version
        if len(prefixes) == 2 and set(prefixes.values()) == {pushed.bundle.version}:
            break
        time.sleep(0.05)
    assert len(prefixes) == 2, prefixes
    assert set(prefixes.values()) == {pushed.bundle.version}
    audit_dirs = sorted(p.name for p in (tmp_path / "data" / "audit").iterdir() if p.is_dir())
    assert audit_dirs == ["worker-0", "worker-1"]
    assert proc.stop() is not None and proc.proc.returncode == 0
