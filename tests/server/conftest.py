"""A real PDP server in-process on 127.0.0.1 (ports picked by the kernel), over real mTLS.

``pdp_server`` starts one with the session PKI, a fresh data dir and a bundle-signing key;
``harness.push(text)`` signs and pushes a bundle through the real admin plane.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest

from pdp.policy import load_bundle
from pdp.security.signing import generate_bundle_key, sign_digest
from pdp.server.app import PDPServer
from pdp.server.config import load_config
from pdp_client._proto import (
    admin_pb2,
    admin_pb2_grpc,
    authorization_pb2,
    authorization_pb2_grpc,
)

TEST_BUNDLE = """\
metadata: {name: test, revision: "1"}
rules:
  - id: owner-write
    effect: allow
    subjects: {type: user}
    actions: [write]
    resources: {type: doc}
    when: {attr: resource.properties.owner, eq: {attr: subject.id}}
  - id: deny-secret
    effect: deny
    actions: ["*"]
    resources: {type: doc, ids: ["secret-*"]}
  - id: read-docs
    effect: allow
    subjects: {type: user}
    actions: [read]
    resources: {type: doc}
"""

CONFIG = """\
data_dir = "data"
[server]
threads = 8
tls12_probe = {probe}
[server.data]
address = "127.0.0.1:{data_port}"
allow_cidrs = {data_cidrs}
[server.admin]
address = "127.0.0.1:{admin_port}"
[tls]
cert_file = "{server_cert}"
key_file = "{server_key}"
ca_file = "{ca}"
{crl_line}
[access]
authorize = {authorize}
explain = ["spiffe://pdp.test/svc/search"]
admin = ["spiffe://pdp.test/admin"]
[bundles]
trusted_keys = {{ test = "{public_key}" }}
[detection]
enabled = {detection}
"""


def channel(target: str, ca: Path, cert: Path, key: Path) -> grpc.Channel:
    creds = grpc.ssl_channel_credentials(ca.read_bytes(), key.read_bytes(), cert.read_bytes())
    return grpc.secure_channel(target, creds, options=[("grpc.ssl_target_name_override",
                                                        "localhost")])


@dataclass
class Harness:
    """A running server plus stubs as the search service (data) and the admin (admin)."""

    server: PDPServer
    pki: Any
    directory: Path
    private_key: Path
    config_path: Path
    _channels: list[grpc.Channel] = field(default_factory=list)

    @property
    def data_target(self) -> str:
        return f"127.0.0.1:{self.server.data_port}"

    @property
    def admin_target(self) -> str:
        return f"127.0.0.1:{self.server.admin_port}"

    def channel(self, pair: Any, *, admin: bool = False) -> grpc.Channel:
        ch = channel(self.admin_target if admin else self.data_target, self.pki.ca_cert,
                     pair.cert, pair.key)
        self._channels.append(ch)
        return ch

    def authz(self, pair: Any = None) -> authorization_pb2_grpc.AuthorizationStub:
        return authorization_pb2_grpc.AuthorizationStub(
            self.channel(pair or self.pki.service))

    def admin(self, pair: Any = None) -> admin_pb2_grpc.AdminStub:
        return admin_pb2_grpc.AdminStub(self.channel(pair or self.pki.admin, admin=True))

    def sign(self, text: str | bytes) -> bytes:
        data = text.encode() if isinstance(text, str) else text
        return sign_digest(load_bundle(data).digest, self.private_key)

    def push(self, text: str | bytes, *, activate: bool = True) -> admin_pb2.PushBundleResponse:
        data = text.encode() if isinstance(text, str) else text
        response: admin_pb2.PushBundleResponse = self.admin().PushBundle(
            admin_pb2.PushBundleRequest(bundle=data, signature=self.sign(data), key_id="test",
                                        activate=activate), timeout=60)
        return response

    def close(self) -> None:
        for ch in self._channels:
            ch.close()
        self.server.stop(grace=1.0)


def make_config(directory: Path, pki: Any, public_key: Path, *, data_port: int = 0,
                admin_port: int = 0, probe: bool = False, detection: bool = False,
                crl: Path | None = None, extra: str = "",
                authorize: tuple[str, ...] = ("spiffe://pdp.test/svc/search",),
                data_cidrs: tuple[str, ...] = ()) -> Path:
    path = directory / "pdp.toml"
    path.write_text(CONFIG.format(
        probe=str(probe).lower(), data_port=data_port, admin_port=admin_port,
        server_cert=pki.server.cert, server_key=pki.server.key, ca=pki.ca_cert,
        public_key=public_key, detection=str(detection).lower(),
        crl_line=f'crl_file = "{crl}"' if crl else "",
        authorize=json.dumps(list(authorize)), data_cidrs=json.dumps(list(data_cidrs))) + extra)
    return path


def authorize_request(subject: str, action: str, resource: str, *,
                      subject_type: str = "user", resource_type: str = "doc",
                      resource_props: dict[str, Any] | None = None,
                      **kwargs: Any) -> authorization_pb2.AuthorizeRequest:
    req = authorization_pb2.AuthorizeRequest(**kwargs)
    req.subject.type, req.subject.id = subject_type, subject
    req.action.name = action
    req.resource.type, req.resource.id = resource_type, resource
    if resource_props:
        req.resource.properties.update(resource_props)
    return req


@pytest.fixture
def start_server(tmp_path: Path, pki: Any) -> Iterator[Callable[..., Harness]]:
    """Factory: start a server (optionally reusing a directory) and stop it at teardown."""
    started: list[Harness] = []
    private_key, public_key = tmp_path / "signing.key", tmp_path / "signing.pub"
    generate_bundle_key(private_key, public_key)

    def start(*, directory: Path | None = None, seed: bool = True,
              telemetry: Any = None, **options: Any) -> Harness:
        d = directory or tmp_path / f"server{len(started)}"
        d.mkdir(exist_ok=True)
        config_path = make_config(d, pki, public_key, **options)
        server = PDPServer(load_config(config_path), telemetry=telemetry)
        server.start()
        harness = Harness(server, pki, d, private_key, config_path)
        started.append(harness)
        if seed and server.engine.policy is None:
            harness.push(TEST_BUNDLE)
        return harness

    yield start
    for harness in started:
        harness.close()


@pytest.fixture
def harness(start_server: Callable[..., Harness]) -> Harness:
    return start_server()
