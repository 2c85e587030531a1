"""Shared test fixtures: a throwaway session PKI made with pdp.security.pki (never committed keys).

Use ``pki`` for the standard CA, server and client certificates and ``pki.issue(...)`` for more.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from pdp.security import pki as pki_module


@dataclass(frozen=True, slots=True)
class CertPair:
    """A certificate and its key on disk."""

    cert: Path
    key: Path
    serial: int


@dataclass(frozen=True, slots=True)
class TestPKI:
    """The session PKI: CA ``spiffe://pdp.test`` and its certificates (all files PEM)."""

    __test__ = False  # not a test class despite the name

    dir: Path
    ca_dir: Path
    ca_cert: Path
    crl: Path
    server: CertPair  # CN localhost; SAN localhost, 127.0.0.1, ::1, spiffe://pdp.test/pdp
    admin: CertPair  # spiffe://pdp.test/admin
    service: CertPair  # spiffe://pdp.test/svc/search
    other_service: CertPair  # spiffe://pdp.test/svc/other
    expired: CertPair  # spiffe://pdp.test/svc/expired, validity entirely in the past
    foreign: CertPair  # spiffe://pdp.test/svc/search, but from an unrelated CA
    foreign_ca_cert: Path

    def issue(self, name: str, *, spiffe_id: str | None = None, common_name: str | None = None,
              dns: Sequence[str] = (), ips: Sequence[str] = (), server: bool = False,
              client: bool = True, days: int = 30, directory: Path | None = None) -> CertPair:
        """Issue one more certificate from the session CA into ``directory`` (default: dir)."""
        issued = pki_module.issue(
            self.ca_dir, (directory or self.dir) / name, common_name=common_name or name,
            spiffe_id=spiffe_id, dns=dns, ips=ips, server=server, client=client, days=days)
        return CertPair(issued.cert_path, issued.key_path, issued.serial)


def _pair(issued: pki_module.IssuedCert) -> CertPair:
    return CertPair(issued.cert_path, issued.key_path, issued.serial)


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TestPKI:
    """A session-scoped test PKI; do not modify its files (copy or ``pki.issue`` instead)."""
    d = tmp_path_factory.mktemp("pki")
    ca_dir = d / "ca"
    pki_module.init_ca(ca_dir, common_name="pdp test CA", days=365)
    td = "spiffe://pdp.test"

    def client(name: str, spiffe: str) -> CertPair:
        return _pair(pki_module.issue(ca_dir, d / name, common_name=name, spiffe_id=spiffe,
                                      days=30))

    server = _pair(pki_module.issue(
        ca_dir, d / "server", common_name="localhost", spiffe_id=f"{td}/pdp",
        dns=["localhost"], ips=["127.0.0.1", "::1"], server=True, client=True, days=30))
    # Expired without a fake clock: issued "ten days ago" for one day, so both its
    # notBefore and notAfter lie in the real past and every real TLS stack refuses it.
    expired = _pair(pki_module.issue(
        ca_dir, d / "expired", common_name="expired", spiffe_id=f"{td}/svc/expired", days=1,
        clock=lambda: time.time() - 10 * 86400))
    foreign_dir = d / "foreign-ca"
    pki_module.init_ca(foreign_dir, common_name="unrelated CA", days=365)
    foreign = _pair(pki_module.issue(foreign_dir, d / "foreign", common_name="search",
                                     spiffe_id=f"{td}/svc/search", days=30))
    return TestPKI(
        dir=d, ca_dir=ca_dir, ca_cert=ca_dir / "ca.crt", crl=ca_dir / "crl.pem", server=server,
        admin=client("admin", f"{td}/admin"), service=client("search", f"{td}/svc/search"),
        other_service=client("other", f"{td}/svc/other"), expired=expired, foreign=foreign,
        foreign_ca_cert=foreign_dir / "ca.crt")
