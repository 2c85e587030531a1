"""PeerVerifier: per-call checks of TLS version, certificate, validity and revocation."""

from __future__ import annotations

import datetime as dt
import hashlib
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from pdp.clock import FakeClock
from pdp.errors import CertificateError
from pdp.security import identity
from pdp.security.identity import PeerVerifier, StaticRevocation

SessionPKI = Any  # the session `pki` fixture of tests/conftest.py


class FakeContext:
    """Stands in for grpc.ServicerContext: what gRPC reports after a real handshake."""

    def __init__(self, pem: bytes | None, version: bytes | None = b"TLSv1.3") -> None:
        self.auth: dict[str, list[bytes]] = {"transport_security_type": [b"ssl"]}
        if version is not None:
            self.auth["ssl_tls_version"] = [version]
        if pem is not None:
            self.auth["x509_pem_cert"] = [pem]

    def auth_context(self) -> dict[str, list[bytes]]:
        return self.auth

    def peer(self) -> str:
        return "ipv4:127.0.0.1:40000"


def pem_of(path: Path) -> bytes:
    return path.read_bytes()


def validity(path: Path) -> tuple[float, float]:
    cert = x509.load_pem_x509_certificate(path.read_bytes())
    return cert.not_valid_before_utc.timestamp(), cert.not_valid_after_utc.timestamp()


def make_verifier(pem_path: Path, revoked: frozenset[int] = frozenset()) -> tuple[
        PeerVerifier, FakeClock]:
    start, _ = validity(pem_path)
    clock = FakeClock(start + 3600)
    return PeerVerifier(StaticRevocation(revoked), clock=clock), clock


def test_exported_names_are_exactly_the_public_api() -> None:
    assert sorted(identity.__all__) == [
        "Peer", "PeerCertificateError", "PeerVerifier", "RevocationSource", "StaticRevocation",
        "common_name_of",
        "spiffe_id_of"]


def test_valid_peer_has_spiffe_identity_serial_and_fingerprint(pki: SessionPKI) -> None:
    verifier, _ = make_verifier(pki.service.cert)
    peer = verifier.verify(FakeContext(pem_of(pki.service.cert)))
    cert = x509.load_pem_x509_certificate(pem_of(pki.service.cert))
    assert peer.identity == peer.spiffe_id == "spiffe://pdp.test/svc/search"
    assert peer.common_name == "search" and peer.serial == pki.service.serial
    assert peer.fingerprint == hashlib.sha256(cert.public_bytes(
        serialization.Encoding.DER)).hexdigest()
    assert peer.address == "ipv4:127.0.0.1:40000"


def test_identity_falls_back_to_common_name_without_spiffe_id(pki: SessionPKI,
                                                              tmp_path: Path) -> None:
    pair = pki.issue("cn-only", common_name="legacy-service", directory=tmp_path)
    verifier, _ = make_verifier(pair.cert)
    peer = verifier.verify(FakeContext(pem_of(pair.cert)))
    assert peer.identity == "legacy-service" and peer.spiffe_id is None


def test_tls12_session_is_refused(pki: SessionPKI) -> None:
    verifier, _ = make_verifier(pki.service.cert)
    with pytest.raises(CertificateError, match=r"not TLS 1\.3"):
        verifier.verify(FakeContext(pem_of(pki.service.cert), version=b"TLSv1.2"))


def test_plaintext_call_without_tls_is_refused(pki: SessionPKI) -> None:
    verifier, _ = make_verifier(pki.service.cert)
    ctx = FakeContext(None, version=None)
    ctx.auth = {}  # an insecure port reports an empty auth context
    with pytest.raises(CertificateError, match=r"not TLS 1\.3"):
        verifier.verify(ctx)


def test_call_without_client_certificate_is_refused(pki: SessionPKI) -> None:
    verifier, _ = make_verifier(pki.service.cert)
    with pytest.raises(CertificateError, match="no client certificate"):
        verifier.verify(FakeContext(None))


def test_long_lived_connection_outliving_its_certificate_is_refused(pki: SessionPKI) -> None:
    verifier, clock = make_verifier(pki.service.cert)
    ctx = FakeContext(pem_of(pki.service.cert))
    verifier.verify(ctx)  # accepted at first, then the same connection keeps calling
    clock.set(validity(pki.service.cert)[1])
    with pytest.raises(CertificateError, match="has expired"):
        verifier.verify(ctx)


def test_certificate_not_yet_valid_is_refused(pki: SessionPKI) -> None:
    verifier, clock = make_verifier(pki.service.cert)
    clock.set(validity(pki.service.cert)[0] - 1)
    with pytest.raises(CertificateError, match="not yet valid"):
        verifier.verify(FakeContext(pem_of(pki.service.cert)))


def test_revoked_certificate_is_refused_others_are_not(pki: SessionPKI) -> None:
    verifier, _ = make_verifier(pki.service.cert, revoked=frozenset({pki.service.serial}))
    with pytest.raises(CertificateError, match="revoked"):
        verifier.verify(FakeContext(pem_of(pki.service.cert)))
    assert verifier.verify(FakeContext(pem_of(pki.admin.cert))).identity.endswith("/admin")


def test_server_only_certificate_used_as_client_is_refused(pki: SessionPKI,
                                                          tmp_path: Path) -> None:
    pair = pki.issue("server-only", dns=["x.test"], server=True, client=False,
                     directory=tmp_path)
    verifier, _ = make_verifier(pair.cert)
    with pytest.raises(CertificateError, match="clientAuth"):
        verifier.verify(FakeContext(pem_of(pair.cert)))


def test_certificate_with_two_spiffe_ids_is_refused() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "two")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(7)
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([
                x509.UniformResourceIdentifier("spiffe://a.test/admin"),
                x509.UniformResourceIdentifier("spiffe://a.test/svc/x")]), critical=False)
            .sign(key, hashes.SHA256()))
    verifier = PeerVerifier(StaticRevocation(), clock=now.timestamp)
    with pytest.raises(CertificateError, match="more than one SPIFFE ID"):
        verifier.verify(FakeContext(cert.public_bytes(serialization.Encoding.PEM)))


def test_unparsable_certificate_is_refused() -> None:
    verifier = PeerVerifier(StaticRevocation(), clock=FakeClock())
    with pytest.raises(CertificateError, match="unparsable"):
        verifier.verify(FakeContext(b"-----BEGIN CERTIFICATE-----\nAAAA\n"))


def test_parse_cache_is_bounded(pki: SessionPKI) -> None:
    start, _ = validity(pki.service.cert)
    verifier = PeerVerifier(StaticRevocation(), clock=FakeClock(start + 3600), cache_size=2)
    for pair in (pki.service, pki.admin, pki.other_service, pki.service):
        verifier.verify(FakeContext(pem_of(pair.cert)))
    assert len(verifier._cache) == 2
    with pytest.raises(ValueError):
        PeerVerifier(StaticRevocation(), clock=FakeClock(), cache_size=0)



class SwitchableRevocation:
    """A CRL that changes while connections stay open."""

    def __init__(self) -> None:
        self.serials: frozenset[int] = frozenset()

    def revoked_serials(self) -> frozenset[int]:
        return self.serials


def test_connection_address_reused_with_another_certificate_gets_that_identity(
        pki: SessionPKI) -> None:
    # Peers are kept per connection address: a new connection that reuses the port with a
    # different certificate must be verified as that certificate, never as the cached one.
    verifier, _ = make_verifier(pki.service.cert)
    first = verifier.verify(FakeContext(pem_of(pki.service.cert)))
    assert verifier.verify(FakeContext(pem_of(pki.service.cert))) is first  # reused
    second = verifier.verify(FakeContext(pem_of(pki.admin.cert)))
    assert second.identity.endswith("/admin") and second.serial == pki.admin.serial
    assert first.identity.endswith("/svc/search")


def test_certificate_revoked_while_its_connection_stays_open_is_refused_next_call(
        pki: SessionPKI) -> None:
    start, _ = validity(pki.service.cert)
    crl = SwitchableRevocation()
    verifier = PeerVerifier(crl, clock=FakeClock(start + 3600))
    ctx = FakeContext(pem_of(pki.service.cert))
    verifier.verify(ctx)
    crl.serials = frozenset({pki.service.serial})
    with pytest.raises(CertificateError, match="revoked"):
        verifier.verify(ctx)
