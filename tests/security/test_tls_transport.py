"""TLS 1.3-only mutual TLS over real gRPC on 127.0.0.1: refusals, revocation, hot reload."""

from __future__ import annotations

import os
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any, NamedTuple

import grpc
import pytest
from cryptography import x509

from pdp.configuration import build_section
from pdp.errors import CertificateError, ConfigError
from pdp.security import identity
from pdp.security import pki as ca
from pdp.security.identity import PeerCertificateError, PeerVerifier, StaticRevocation
from pdp.security.tls import (
    ServerTLS,
    TLSConfig,
    TLSDowngradeError,
    TLSMaterialError,
    TLSProbeError,
    assert_tls13_only,
)

METHOD = "/pdp.test.Echo/WhoAmI"
SessionPKI = Any  # the session `pki` fixture of tests/conftest.py


class CertPair(NamedTuple):
    cert: Path
    key: Path


class Server:
    """A generic-handler gRPC server that answers with the verified peer identity."""

    def __init__(self, config: TLSConfig) -> None:
        self.messages: list[str] = []
        self.tls = ServerTLS(config, clock=time.time, on_reload=self.messages.append)
        self.verifier = PeerVerifier(self.tls, clock=time.time)
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        handler = grpc.unary_unary_rpc_method_handler(self._who_am_i)
        self.server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler("pdp.test.Echo", {"WhoAmI": handler}),))
        self.port = self.server.add_secure_port("127.0.0.1:0", self.tls.credentials())
        self.server.start()

    def _who_am_i(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        try:
            peer = self.verifier.verify(context)
        except CertificateError as exc:
            context.abort(grpc.StatusCode.UNAUTHENTICATED, exc.reason)
        return peer.identity.encode()

    def stop(self) -> None:
        self.server.stop(grace=None).wait()


def channel(port: int, ca: Path, pair: CertPair | None) -> grpc.Channel:
    creds = grpc.ssl_channel_credentials(
        ca.read_bytes(), pair.key.read_bytes() if pair else None,
        pair.cert.read_bytes() if pair else None)
    return grpc.secure_channel(f"127.0.0.1:{port}", creds)


def who_am_i(ch: grpc.Channel) -> bytes:
    result: bytes = ch.unary_unary(METHOD)(b"", timeout=10)
    return result


def config_for(server: CertPair, ca: Path, crl: Path | None) -> TLSConfig:
    return TLSConfig(cert_file=server.cert, key_file=server.key, ca_file=ca, crl_file=crl,
                     reload_interval=0.0)


@pytest.fixture(scope="module")
def server(pki: SessionPKI) -> Iterator[Server]:
    s = Server(config_for(pki.server, pki.ca_cert, pki.crl))
    yield s
    s.stop()


def ssl_context(pki: SessionPKI, version: ssl.TLSVersion, pair: CertPair) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(pki.ca_cert))
    ctx.minimum_version = ctx.maximum_version = version
    ctx.load_cert_chain(str(pair.cert), str(pair.key))
    ctx.set_alpn_protocols(["h2"])
    return ctx


def handshake(port: int, ctx: ssl.SSLContext) -> ssl.SSLSocket:
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    return ctx.wrap_socket(raw, server_hostname="localhost")


# --- who gets a connection -----------------------------------------------------------------


def test_tls13_client_with_valid_certificate_is_served(server: Server, pki: SessionPKI) -> None:
    with channel(server.port, pki.ca_cert, pki.service) as ch:
        assert who_am_i(ch) == b"spiffe://pdp.test/svc/search"
    with handshake(server.port, ssl_context(pki, ssl.TLSVersion.TLSv1_3, pki.service)) as tls:
        assert tls.version() == "TLSv1.3"
        assert tls.selected_alpn_protocol() == "h2"


def test_tls12_only_client_gets_no_connection(server: Server, pki: SessionPKI) -> None:
    ctx = ssl_context(pki, ssl.TLSVersion.TLSv1_2, pki.service)
    with pytest.raises(ssl.SSLError):
        handshake(server.port, ctx).close()


@pytest.mark.skipif(not Path("/usr/bin/openssl").exists(), reason="needs /usr/bin/openssl")
def test_tls12_openssl_s_client_gets_no_connection(server: Server, pki: SessionPKI) -> None:
    def s_client(version: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["/usr/bin/openssl", "s_client", "-connect", f"127.0.0.1:{server.port}", version,
             "-alpn", "h2", "-CAfile", str(pki.ca_cert), "-cert", str(pki.service.cert),
             "-key", str(pki.service.key), "-servername", "localhost", "-verify_return_error",
             "-brief"], input="", capture_output=True, encoding="utf-8", errors="replace",
            timeout=30, check=False)

    refused = s_client("-tls1_2")
    assert refused.returncode != 0
    assert "Protocol version: TLSv1.2" not in refused.stderr + refused.stdout
    accepted = s_client("-tls1_3")  # the control: same credentials, TLS 1.3
    assert "Protocol version: TLSv1.3" in accepted.stderr + accepted.stdout


def test_plaintext_grpc_client_gets_no_connection(server: Server) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as ch, \
            pytest.raises(grpc.RpcError) as info:
        ch.unary_unary(METHOD)(b"", timeout=5)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE


def test_plaintext_http2_preface_gets_no_http2_response(server: Server) -> None:
    settings = b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + settings)
        received = b""
        try:
            while chunk := sock.recv(4096):
                received += chunk
        except (TimeoutError, ConnectionResetError):
            pass
    # Nothing, or at most a TLS alert record (content type 21): never an HTTP/2 frame.
    assert received == b"" or received[0] == 21


def test_client_without_certificate_is_refused(server: Server, pki: SessionPKI) -> None:
    with channel(server.port, pki.ca_cert, None) as ch, pytest.raises(grpc.RpcError) as info:
        who_am_i(ch)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE


def test_certificate_from_another_ca_is_refused(server: Server, pki: SessionPKI) -> None:
    with channel(server.port, pki.ca_cert, pki.foreign) as ch, \
            pytest.raises(grpc.RpcError) as info:
        who_am_i(ch)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE


def test_expired_certificate_is_refused(server: Server, pki: SessionPKI) -> None:
    with channel(server.port, pki.ca_cert, pki.expired) as ch, \
            pytest.raises(grpc.RpcError) as info:
        who_am_i(ch)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE


# --- the start-up probe -----------------------------------------------------------------------


def test_assert_tls13_only_passes_against_our_server(server: Server, pki: SessionPKI) -> None:
    assert_tls13_only("127.0.0.1", server.port, ca_file=pki.ca_cert,
                      cert_file=pki.admin.cert, key_file=pki.admin.key, server_name="localhost")


_UNRESTRICTED = """
import sys, grpc  # deliberately no `import pdp`: gRPC keeps its default TLS 1.2 ciphers
from concurrent import futures
cert, key, ca = (open(p, "rb").read() for p in sys.argv[1:4])
creds = grpc.ssl_server_credentials([(key, cert)], ca, require_client_auth=True)
server = grpc.server(futures.ThreadPoolExecutor(max_workers=1))
port = server.add_secure_port("127.0.0.1:0", creds)
server.start()
print(port, flush=True)
sys.stdin.read()
"""


def test_tls_downgrade_probe_raises_against_unrestricted_server(pki: SessionPKI) -> None:
    env = {k: v for k, v in os.environ.items() if k != "GRPC_SSL_CIPHER_SUITES"}
    with subprocess.Popen(
            [sys.executable, "-c", _UNRESTRICTED, str(pki.server.cert), str(pki.server.key),
             str(pki.ca_cert)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env,
            text=True) as proc:
        assert proc.stdout is not None and proc.stdin is not None
        try:
            port = int(proc.stdout.readline())
            with pytest.raises(TLSDowngradeError, match=r"accepted a TLSv1\.2 handshake"):
                assert_tls13_only("127.0.0.1", port, ca_file=pki.ca_cert,
                                  cert_file=pki.admin.cert, key_file=pki.admin.key,
                                  server_name="localhost")
        finally:
            proc.stdin.close()  # the server exits at end of input
            proc.wait(timeout=30)


def test_probe_that_cannot_connect_proves_nothing_and_raises(pki: SessionPKI) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound but not listening: connection refused
        with pytest.raises(TLSProbeError):
            assert_tls13_only("127.0.0.1", port, ca_file=pki.ca_cert,
                              cert_file=pki.admin.cert, key_file=pki.admin.key,
                              server_name="localhost")


# --- configuration and material -------------------------------------------------------------


def test_tls_config_section_from_toml_table(pki: SessionPKI) -> None:
    cfg = build_section(TLSConfig, {"cert_file": "a.crt", "key_file": "a.key",
                                    "ca_file": "ca.crt", "crl_file": "crl.pem"}, where="[tls]")
    assert cfg.crl_file == Path("crl.pem") and cfg.reload_interval == 1.0
    with pytest.raises(ConfigError, match=r"\[tls\]"):
        build_section(TLSConfig, {"reload_interval": -1}, where="[tls]")


def test_server_refuses_to_start_with_key_not_matching_certificate(pki: SessionPKI) -> None:
    cfg = TLSConfig(cert_file=pki.server.cert, key_file=pki.admin.key, ca_file=pki.ca_cert)
    with pytest.raises(TLSMaterialError, match="does not match"):
        ServerTLS(cfg, clock=time.time)


def test_server_refuses_to_start_with_crl_from_another_ca(pki: SessionPKI) -> None:
    cfg = config_for(pki.server, pki.ca_cert, pki.foreign_ca_cert.parent / "crl.pem")
    with pytest.raises(TLSMaterialError, match="does not verify"):
        ServerTLS(cfg, clock=time.time)


def test_server_certificate_status(server: Server) -> None:
    st = server.tls.server_certificate_status()
    assert st.spiffe_id == "spiffe://pdp.test/pdp" and st.subject == "CN=localhost"
    assert 29 < st.days_left <= 30 and not st.revoked


# --- revocation and rotation with their own CA (they rewrite files) ---------------------------


@pytest.fixture()
def dev(tmp_path: Path) -> Iterator[tuple[ca.DevPKI, Server]]:
    d = ca.make_dev_pki(tmp_path)
    s = Server(config_for(CertPair(d.server_cert, d.server_key), d.ca_cert, d.crl))
    yield d, s
    s.stop()


def test_revoked_certificate_is_refused_on_live_connection_others_unaffected(
        dev: tuple[ca.DevPKI, Server]) -> None:
    d, s = dev
    svc = CertPair(d.service_cert, d.service_key)
    admin = CertPair(d.admin_cert, d.admin_key)
    with channel(s.port, d.ca_cert, svc) as victim, channel(s.port, d.ca_cert, admin) as other:
        assert who_am_i(victim) == b"spiffe://pdp.local/svc/example"
        assert who_am_i(other) == b"spiffe://pdp.local/admin"
        ca.revoke(d.ca_dir, d.service_cert, reason="key-compromise")
        ca.make_crl(d.ca_dir)
        with pytest.raises(grpc.RpcError) as info:
            who_am_i(victim)  # the same, already established connection
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "revoked" in (info.value.details() or "")
        assert who_am_i(other) == b"spiffe://pdp.local/admin"
    assert any("CRL reloaded: 1 revoked" in m for m in s.messages)


def test_forged_crl_is_refused_and_previous_kept(dev: tuple[ca.DevPKI, Server],
                                                  pki: SessionPKI) -> None:
    d, s = dev
    ca.revoke(d.ca_dir, d.service_cert)
    ca.make_crl(d.ca_dir)
    revoked = s.tls.revoked_serials()
    assert len(revoked) == 1
    # An attacker who can write the CRL file swaps in a CRL that revokes nothing.
    shutil.copyfile(pki.foreign_ca_cert.parent / "crl.pem", d.crl)
    assert s.tls.revoked_serials() == revoked
    assert any("CRL reload refused" in m for m in s.messages)


@pytest.mark.parametrize("breakage", ["unparsable certificate", "key of another certificate"])
def test_broken_new_server_certificate_keeps_previous_material(
        dev: tuple[ca.DevPKI, Server], breakage: str) -> None:
    d, s = dev
    before = s.tls.server_certificate_status().serial
    if breakage == "unparsable certificate":
        d.server_cert.write_bytes(b"-----BEGIN CERTIFICATE-----\ngarbage\n")
    else:
        shutil.copyfile(d.admin_key, d.server_key)
    with channel(s.port, d.ca_cert, CertPair(d.admin_cert, d.admin_key)) as ch:
        assert who_am_i(ch) == b"spiffe://pdp.local/admin"  # a new handshake still works
    assert s.tls.server_certificate_status().serial == before
    assert any("TLS reload refused" in m for m in s.messages)


def test_ca_bundle_reload_admits_clients_of_an_added_ca(dev: tuple[ca.DevPKI, Server],
                                                       pki: SessionPKI) -> None:
    d, s = dev
    with channel(s.port, d.ca_cert, pki.foreign) as ch, pytest.raises(grpc.RpcError):
        who_am_i(ch)
    with d.ca_cert.open("ab") as bundle:  # CA rotation: trust old and new CA for a while
        bundle.write(pki.foreign_ca_cert.read_bytes())
    with channel(s.port, d.ca_cert, pki.foreign) as ch:
        assert who_am_i(ch) == b"spiffe://pdp.test/svc/search"
    assert any("TLS material reloaded" in m for m in s.messages)


def presented_serial(port: int, ca: Path, pair: CertPair) -> int:
    ctx = ssl.create_default_context(cafile=str(ca))
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.load_cert_chain(str(pair.cert), str(pair.key))
    ctx.set_alpn_protocols(["h2"])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
            ctx.wrap_socket(raw, server_hostname="localhost") as tls:
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


def test_server_certificate_rotation_under_load_drops_no_call(
        dev: tuple[ca.DevPKI, Server]) -> None:
    d, s = dev
    svc = CertPair(d.service_cert, d.service_key)
    old_serial = presented_serial(s.port, d.ca_cert, svc)
    stop = threading.Event()
    calls, failures = [0] * 8, [0] * 8

    def caller(i: int) -> None:
        while not stop.is_set():
            with channel(s.port, d.ca_cert, svc) as ch:  # a fresh handshake every few calls
                for _ in range(5):
                    try:
                        who_am_i(ch)
                        calls[i] += 1
                    except grpc.RpcError:
                        failures[i] += 1

    threads = [threading.Thread(target=caller, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    while sum(calls) < 200:
        time.sleep(0.01)
    renewed = ca.renew(d.ca_dir, d.server_cert)
    at_rotation = sum(calls)
    while sum(calls) < at_rotation + 400:
        time.sleep(0.01)
    stop.set()
    for t in threads:
        t.join()
    assert sum(failures) == 0 and sum(calls) >= 600
    assert presented_serial(s.port, d.ca_cert, svc) == renewed.serial != old_serial
    assert s.tls.server_certificate_status().serial == renewed.serial


# --- how a call's properties are read ------------------------------------------------------


def _properties_server(secure: TLSConfig | None) -> tuple[grpc.Server, int, list[Any]]:
    """A server whose one method records, per call: whether the context took the direct
    read, what it read, the public auth_context(), and what PeerVerifier made of it."""
    seen: list[Any] = []
    verifier = PeerVerifier(StaticRevocation(), clock=time.time)

    def record(request: bytes, context: grpc.ServicerContext) -> bytes:
        try:
            outcome: Any = verifier.verify(context).identity
        except CertificateError as exc:
            outcome = exc
        seen.append((type(context) is identity._GRPC_CONTEXT, identity._properties(context),
                     context.auth_context(), outcome))
        return b""

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
        "pdp.test.Echo", {"WhoAmI": grpc.unary_unary_rpc_method_handler(record)}),))
    if secure is None:
        port = server.add_insecure_port("127.0.0.1:0")
    else:
        port = server.add_secure_port(
            "127.0.0.1:0", ServerTLS(secure, clock=time.time).credentials())
    server.start()
    return server, port, seen


def test_a_real_call_is_read_directly_and_reads_what_auth_context_reports(
        pki: SessionPKI) -> None:
    """The direct read (grpcio's own reader, without decoding every key) must see exactly
    what the public ServicerContext.auth_context() reports: this fails when a grpcio
    release changes what the private reader returns."""
    server, port, seen = _properties_server(config_for(pki.server, pki.ca_cert, None))
    try:
        with channel(port, pki.ca_cert, pki.service) as ch:
            who_am_i(ch)
    finally:
        server.stop(grace=None).wait()
    [(direct, properties, public, outcome)] = seen
    assert direct, "grpcio's server context is no longer the type PeerVerifier reads directly"
    assert identity._read_properties is not None, "grpcio's cygrpc.auth_context is gone"
    assert properties == {key.encode(): value for key, value in public.items()}
    assert properties[b"ssl_tls_version"] == [b"TLSv1.3"]
    assert properties[b"x509_pem_cert"] == [pki.service.cert.read_bytes()]
    assert outcome == "spiffe://pdp.test/svc/search"


def test_a_plaintext_call_read_directly_is_refused_as_not_tls13() -> None:
    server, port, seen = _properties_server(None)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            who_am_i(ch)
    finally:
        server.stop(grace=None).wait()
    [(direct, properties, _, outcome)] = seen
    assert direct and b"ssl_tls_version" not in properties
    assert isinstance(outcome, PeerCertificateError) and outcome.kind == "not_tls13"
