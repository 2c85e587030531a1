"""Several real `pdp serve` processes sharing one PostgreSQL bundle store, for tests and benchmarks.

A scratch database per use, one data dir per replica, one CA, one bundle-signing key and one
shared service-token key directory; stubs over real mutual TLS on 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import secrets
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import psycopg

from pdp.policy import load_bundle
from pdp.security.signing import generate_bundle_key, sign_digest
from pdp_client._proto import (
    admin_pb2,
    admin_pb2_grpc,
    authorization_pb2,
    authorization_pb2_grpc,
    identity_pb2_grpc,
)
from tests.ports import free_port
from tests.serving import ServeProcess

__all__ = [
    "ADMIN_URL",
    "Certs",
    "Cluster",
    "DatabaseAbsentError",
    "Replica",
    "bundle_text",
    "read_request",
    "scratch_database",
    "terminate_backends",
]

ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/test"  # where scratch databases are made

BUNDLE = """\
metadata: {{name: replicas, revision: "{revision}"}}
rules:
  - id: user-read
    effect: allow
    subjects: {{type: user}}
    actions: [read]
    resources: {{type: doc}}
  - id: service-read
    effect: allow
    subjects: {{type: service}}
    actions: [read]
    resources: {{type: doc}}
"""

CONFIG = """\
data_dir = "data"
[server]
threads = 4
replica_id = "{name}"
grace_seconds = 1.0
[server.data]
address = "127.0.0.1:{data_port}"
[server.admin]
address = "127.0.0.1:{admin_port}"
[tls]
cert_file = "{server_cert}"
key_file = "{server_key}"
ca_file = "{ca}"
[store]
url = "{url}?application_name={name}"
poll_interval = {poll_interval}
[keys]
dir = "{keys_dir}"
[tokens]
shared_replay = true
[access]
authorize = ["{td}/svc/*"]
admin = [{admins}]
[bundles]
trusted_keys = {{ replicas = "{public_key}" }}
"""


class DatabaseAbsentError(RuntimeError):
    """No PostgreSQL server answers at :data:`ADMIN_URL`."""


@dataclass(frozen=True, slots=True)
class Certs:
    """The PKI files a cluster uses: CA, the replicas' server pair, an admin and a service."""

    ca: Path
    server_cert: Path
    server_key: Path
    admin_cert: Path
    admin_key: Path
    service_cert: Path
    service_key: Path
    trust_domain: str  # "spiffe://pdp.test"
    admins: tuple[str, ...] = ()  # identities allowed to administer; default: <td>/admin


def bundle_text(revision: str) -> bytes:
    """The test bundle with ``revision`` (a distinct revision gives a distinct version)."""
    return BUNDLE.format(revision=revision).encode()


def read_request(subject: str = "alice", *, token: str = "") -> authorization_pb2.AuthorizeRequest:
    """`user <subject>` reads doc d1: allowed by every bundle of this module."""
    req = authorization_pb2.AuthorizeRequest(service_token=token)
    req.subject.type, req.subject.id = "user", subject
    req.action.name = "read"
    req.resource.type, req.resource.id = "doc", "d1"
    return req


@contextlib.contextmanager
def scratch_database(admin_url: str = ADMIN_URL) -> Iterator[str]:
    """Create ``pdp_rep_<random>``, yield its URL, drop it (forcing out connections).

    Raises DatabaseAbsentError when the server cannot be reached.
    """
    try:
        admin = psycopg.connect(admin_url, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as exc:
        raise DatabaseAbsentError(f"PostgreSQL not reachable at {admin_url}: {exc}") from None
    name = f"pdp_rep_{secrets.token_hex(6)}"
    with admin:
        admin.execute(f"CREATE DATABASE {name}")
        try:
            yield admin_url.rsplit("/", 1)[0] + f"/{name}"
        finally:
            admin.execute(f"ALTER DATABASE {name} ALLOW_CONNECTIONS true")
            admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def terminate_backends(dbname: str, *, app_prefixes: Sequence[str] = (),
                       admin_url: str = ADMIN_URL) -> int:
    """pg_terminate_backend every connection to ``dbname`` (or those whose application_name
    starts with one of ``app_prefixes``); return how many were cut."""
    sql = ("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
           "WHERE datname = %s AND pid <> pg_backend_pid()")
    params: list[Any] = [dbname]
    if app_prefixes:
        sql += " AND (" + " OR ".join("application_name LIKE %s" for _ in app_prefixes) + ")"
        params += [f"{p}%" for p in app_prefixes]
    with psycopg.connect(admin_url, autocommit=True) as admin:
        return len(admin.execute(sql, params).fetchall())


def _channel(target: str, certs: Certs, cert: Path, key: Path) -> grpc.Channel:
    creds = grpc.ssl_channel_credentials(certs.ca.read_bytes(), key.read_bytes(),
                                         cert.read_bytes())
    return grpc.secure_channel(target, creds,
                               options=[("grpc.ssl_target_name_override", "localhost")])


@dataclass
class Replica:
    """One `pdp serve` process with its own data dir and ports."""

    name: str
    directory: Path
    certs: Certs
    data_port: int
    admin_port: int
    served: ServeProcess
    _channels: list[grpc.Channel] = field(default_factory=list)
    _authz: authorization_pb2_grpc.AuthorizationStub | None = None

    def channel(self, *, admin: bool = False, cert: Path | None = None,
                key: Path | None = None) -> grpc.Channel:
        """A channel to the admin or data listener (closed with the replica)."""
        port = self.admin_port if admin else self.data_port
        default = ((self.certs.admin_cert, self.certs.admin_key) if admin
                   else (self.certs.service_cert, self.certs.service_key))
        ch = _channel(f"127.0.0.1:{port}", self.certs, cert or default[0], key or default[1])
        self._channels.append(ch)
        return ch

    def authz(self) -> authorization_pb2_grpc.AuthorizationStub:
        """A long-lived Authorization stub as the service identity."""
        if self._authz is None:
            self._authz = authorization_pb2_grpc.AuthorizationStub(self.channel())
        return self._authz

    def identity(self) -> identity_pb2_grpc.IdentityStub:
        return identity_pb2_grpc.IdentityStub(self.channel())

    def admin(self, cert: Path | None = None, key: Path | None = None) -> admin_pb2_grpc.AdminStub:
        return admin_pb2_grpc.AdminStub(self.channel(admin=True, cert=cert, key=key))

    def version(self, subject: str = "alice") -> str:
        """The bundle version this replica answers with now (a call on the shared channel)."""
        answer = self.authz().Authorize(read_request(subject), timeout=5)
        return str(answer.bundle_version)

    def fresh_version(self) -> str:
        """Like :meth:`version`, on a new connection (no channel reuse)."""
        with _channel(f"127.0.0.1:{self.data_port}", self.certs, self.certs.service_cert,
                      self.certs.service_key) as ch:
            answer = authorization_pb2_grpc.AuthorizationStub(ch).Authorize(
                read_request(), timeout=5)
        return str(answer.bundle_version)

    def stop(self) -> str:
        """SIGTERM (SIGKILL after 15 s); return the process output."""
        for ch in self._channels:
            ch.close()
        self._channels.clear()
        self._authz = None
        return self.served.stop(timeout=15)


class Cluster:
    """Replicas sharing one store URL, one CA, one bundle-signing key, one token key dir."""

    def __init__(self, directory: Path, certs: Certs, url: str, *,
                 poll_interval: float = 0.5) -> None:
        self.directory = directory
        self.certs = certs
        self.url = url
        self.dbname = url.rsplit("/", 1)[1]
        self.poll_interval = poll_interval
        self.private_key = directory / "bundle-signing.key"
        self.public_key = directory / "bundle-signing.pub"
        self.keys_dir = directory / "token-keys"  # shared: a token from A verifies at B
        self.replicas: list[Replica] = []
        directory.mkdir(parents=True, exist_ok=True)
        if not self.private_key.exists():
            generate_bundle_key(self.private_key, self.public_key)

    def start(self, names: Sequence[str], *, timeout: float = 60.0) -> list[Replica]:
        """Start one `pdp serve` per name at once and wait until every one says it serves.

        Raises RuntimeError (with its output) when a replica exits or does not serve in time.
        """
        admins = self.certs.admins or (f"{self.certs.trust_domain}/admin",)
        started: list[Replica] = []
        for name in names:
            d = self.directory / name
            d.mkdir(exist_ok=True)
            data_port, admin_port = free_port(), free_port()
            config = d / "pdp.toml"
            config.write_text(CONFIG.format(
                name=name, data_port=data_port, admin_port=admin_port,
                server_cert=self.certs.server_cert, server_key=self.certs.server_key,
                ca=self.certs.ca, url=self.url, poll_interval=self.poll_interval,
                keys_dir=self.keys_dir, td=self.certs.trust_domain,
                admins=", ".join(f'"{a}"' for a in admins), public_key=self.public_key))
            started.append(Replica(name, d, self.certs, data_port, admin_port,
                                   ServeProcess(config, cwd=d)))
        self.replicas.extend(started)
        deadline = time.monotonic() + timeout
        for replica in started:
            try:
                replica.served.wait_ready(timeout=max(0.0, deadline - time.monotonic()))
            except RuntimeError as exc:
                raise RuntimeError(f"replica {replica.name}: {exc}") from None
        return started

    def sign(self, data: bytes) -> bytes:
        """The bundle-signing key's signature over ``data``'s canonical digest."""
        return sign_digest(load_bundle(data).digest, self.private_key)

    def push(self, via: Replica, revision: str, *, activate: bool = True,
             admin: admin_pb2_grpc.AdminStub | None = None) -> admin_pb2.PushBundleResponse:
        """Sign and push the bundle of ``revision`` through ``via``'s admin plane."""
        data = bundle_text(revision)
        stub = admin or via.admin()
        response: admin_pb2.PushBundleResponse = stub.PushBundle(admin_pb2.PushBundleRequest(
            bundle=data, signature=self.sign(data), key_id="replicas", activate=activate),
            timeout=15)
        return response

    def sql(self, query: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Run ``query`` on the cluster's database from outside the replicas."""
        with psycopg.connect(self.url, autocommit=True) as conn:
            cur = conn.execute(query, params)
            return list(cur.fetchall()) if cur.description else []

    def allow_connections(self, allow: bool) -> None:
        """Open or close the database to new connections (existing ones stay)."""
        with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
            admin.execute(f"ALTER DATABASE {self.dbname} ALLOW_CONNECTIONS {str(allow).lower()}")

    def connected(self) -> set[str]:
        """application_name of every connection to the database now."""
        with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
            rows = admin.execute("SELECT application_name FROM pg_stat_activity "
                                 "WHERE datname = %s", (self.dbname,)).fetchall()
        return {str(r[0]) for r in rows}

    def close(self) -> dict[str, str]:
        """Stop every replica; return each one's output by name."""
        return {r.name: r.stop() for r in self.replicas}
