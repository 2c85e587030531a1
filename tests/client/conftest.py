"""Fixtures for pdp-client tests: a throwaway PKI and a real mTLS gRPC test PDP whose answers
the test controls and which records what arrived on the wire."""

from __future__ import annotations

import datetime as dt
import ipaddress
import threading
from collections.abc import Callable, Iterator
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

import pdp  # noqa: F401 - sets GRPC_SSL_CIPHER_SUITES (TLS 1.3 only) before any channel exists
from pdp_client._proto import (
    authorization_pb2,
    authorization_pb2_grpc,
    identity_pb2,
    identity_pb2_grpc,
)

pb = authorization_pb2


@dataclass
class Cert:
    cert: Path
    key: Path


class CA:
    """A test certificate authority writing PEM files under `root`."""

    def __init__(self, root: Path, name: str) -> None:
        self.root = root
        self.name = name
        self.key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{name} test CA")])
        now = dt.datetime.now(dt.UTC)
        self.cert = (
            x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self.key, hashes.SHA256())
        )
        self.ca_file = root / f"{name}-ca.pem"
        self.ca_file.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))

    def issue(self, label: str, *, cn: str, spiffe: str | None = None, server: bool = False,
              client: bool = True, directory: Path | None = None) -> Cert:
        """Issue a leaf certificate; write `<label>.pem` and `<label>.key`."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        sans: list[x509.GeneralName] = []
        if server:
            sans += [x509.DNSName("localhost"),
                     x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
        if spiffe:
            sans.append(x509.UniformResourceIdentifier(spiffe))
        eku = ([ExtendedKeyUsageOID.SERVER_AUTH] if server else []) + (
            [ExtendedKeyUsageOID.CLIENT_AUTH] if client else [])
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
            .issuer_name(self.cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(hours=2))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage(eku), critical=False)
        )
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        cert = builder.sign(self.key, hashes.SHA256())
        d = directory or self.root
        out = Cert(d / f"{label}.pem", d / f"{label}.key")
        out.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        out.key.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                              serialization.PrivateFormat.PKCS8,
                                              serialization.NoEncryption()))
        out.key.chmod(0o600)
        return out


@dataclass
class PKI:
    ca: CA
    other_ca: CA
    server: Cert
    client: Cert        # spiffe://test.local/svc/frontend
    backend: Cert       # spiffe://test.local/svc/backend (server + client)
    root: Path


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    root = tmp_path_factory.mktemp("pki")
    ca = CA(root, "main")
    other = CA(root, "other")
    return PKI(
        ca=ca, other_ca=other,
        server=ca.issue("server", cn="pdp.test", server=True, client=False),
        client=ca.issue("client", cn="frontend", spiffe="spiffe://test.local/svc/frontend"),
        backend=ca.issue("backend", cn="backend", server=True,
                         spiffe="spiffe://test.local/svc/backend"),
        root=root,
    )


@dataclass
class Seen:
    """One call as the test PDP saw it."""

    rpc: str
    request: Any
    metadata: dict[str, str]
    peer: str
    spiffe: str


Decide = Callable[[Any], Any]


def default_decide(req: Any) -> Any:
    """Allow `read` for alice; everything else is a default deny."""
    if req.subject.id == "alice" and req.action.name == "read":
        return pb.AuthorizeResponse(decision=pb.DECISION_ALLOW, rule_id="alice-read",
                                    bundle_version="1-abc", reason="allow", decision_id="d-1")
    return pb.AuthorizeResponse(decision=pb.DECISION_DENY, bundle_version="1-abc",
                                reason="default deny", decision_id="d-2")


@dataclass
class FakePDP(authorization_pb2_grpc.AuthorizationServicer, identity_pb2_grpc.IdentityServicer):
    """A test PDP: answers with `decide`, fails the next `unavailable` calls, records every call."""

    decide: Decide = default_decide
    unavailable: int = 0
    abort: tuple[grpc.StatusCode, str] | None = None
    gate: threading.Event | None = None        # when set, Authorize waits for it
    entered: threading.Event = field(default_factory=threading.Event)
    now: int = 1_000_000
    token_ttl: int = 100
    drop_batch_answer: bool = False             # a broken server that loses one answer
    seen: list[Seen] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def _record(self, rpc: str, request: Any, context: Any) -> None:
        auth = context.auth_context()
        spiffe = b"".join(auth.get("peer_spiffe_id", [b""])).decode()
        with self.lock:
            self.seen.append(Seen(rpc, request, dict(context.invocation_metadata()),
                                  context.peer(), spiffe))
            fail = self.unavailable > 0
            if fail:
                self.unavailable -= 1
        if fail:
            context.abort(grpc.StatusCode.UNAVAILABLE, "test: unavailable")
        if self.abort is not None:
            context.abort(*self.abort)

    def Authorize(self, request: Any, context: Any) -> Any:
        self._record("Authorize", request, context)
        gate = self.gate
        if gate is not None:
            self.entered.set()
            gate.wait(10)
        return self.decide(request)

    def AuthorizeBatch(self, request: Any, context: Any) -> Any:
        self._record("AuthorizeBatch", request, context)
        out = []
        for item in request.requests:
            merged = pb.AuthorizeRequest()
            merged.CopyFrom(request.defaults)
            merged.MergeFrom(item)
            out.append(self.decide(merged))
        if self.drop_batch_answer:
            del out[0]
        return pb.AuthorizeBatchResponse(responses=out)

    def IssueServiceToken(self, request: Any, context: Any) -> Any:
        self._record("IssueServiceToken", request, context)
        n = sum(1 for s in self.seen if s.rpc == "IssueServiceToken")
        return identity_pb2.IssueServiceTokenResponse(
            token=f"jwt-{n}-{request.audience}", expires_at=self.now + self.token_ttl,
            key_id="k1", jti=f"j{n}")

    def calls(self, rpc: str = "Authorize") -> list[Seen]:
        with self.lock:
            return [s for s in self.seen if s.rpc == rpc]


def server_credentials(pki: PKI, cert: Cert | None = None) -> grpc.ServerCredentials:
    c = cert or pki.server
    return grpc.ssl_server_credentials(
        [(c.key.read_bytes(), c.cert.read_bytes())],
        root_certificates=pki.ca.ca_file.read_bytes(), require_client_auth=True)


@dataclass
class Running:
    target: str
    fake: FakePDP
    server: grpc.Server


@pytest.fixture
def test_pdp(pki: PKI) -> Iterator[Running]:
    fake = FakePDP()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    authorization_pb2_grpc.add_AuthorizationServicer_to_server(fake, server)
    identity_pb2_grpc.add_IdentityServicer_to_server(fake, server)
    port = server.add_secure_port("127.0.0.1:0", server_credentials(pki))
    server.start()
    try:
        yield Running(f"127.0.0.1:{port}", fake, server)
    finally:
        if fake.gate is not None:
            fake.gate.set()
        server.stop(None).wait()


@pytest.fixture
def client_files(pki: PKI) -> dict[str, Path]:
    return {"ca_file": pki.ca.ca_file, "cert_file": pki.client.cert, "key_file": pki.client.key}
