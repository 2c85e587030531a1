"""The TLS 1.3-only mutual-TLS transport: server credentials that hot-reload, the CRL, and
the start-up probe that proves a TLS 1.2 client gets no connection.

gRPC 1.85 has no minimum-version knob; ``import pdp`` pins the TLS 1.2 cipher list to a PSK
suite nobody can negotiate, and :func:`assert_tls13_only` checks that it took effect.
"""

from __future__ import annotations

import socket
import ssl
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from pdp.clock import Clock
from pdp.errors import ConfigError
from pdp.security.pki import CertStatus, cert_status

__all__ = [
    "CRLFile",
    "ServerTLS",
    "TLSConfig",
    "TLSDowngradeError",
    "TLSMaterialError",
    "TLSProbeError",
    "assert_tls13_only",
]


class TLSMaterialError(ConfigError):
    """A certificate, key, CA bundle or CRL is unreadable, mismatched, expired or unverifiable."""


class TLSDowngradeError(ConfigError):
    """A listener completed a TLS 1.2 handshake: the TLS 1.3-only guarantee does not hold."""


class TLSProbeError(ConfigError):
    """The TLS probe could not reach the listener or complete its TLS 1.3 control handshake."""


@dataclass(frozen=True, slots=True, kw_only=True)
class TLSConfig:
    """[tls]: the listener's certificate, key, client CA bundle and CRL."""

    cert_file: Path = Path("certs/server.crt")  # the server certificate chain (PEM)
    key_file: Path = Path("certs/server.key")  # its private key (PEM, unencrypted, mode 0600)
    ca_file: Path = Path("certs/ca.crt")  # CA certificate(s) that client certificates chain to
    crl_file: Path | None = None  # CRL signed by that CA; revoked clients are refused per call
    reload_interval: float = 1.0  # minimum seconds between checks of the files for changes

    def __post_init__(self) -> None:
        if self.reload_interval < 0:
            raise ValueError("reload_interval must not be negative")


def _stamp(paths: Sequence[Path]) -> tuple[tuple[int, int, int], ...]:
    out = []
    for p in paths:
        try:
            st = p.stat()
        except OSError:
            out.append((-1, -1, -1))
        else:
            out.append((st.st_mtime_ns, st.st_size, st.st_ino))
    return tuple(out)


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise TLSMaterialError(f"cannot read {path}: {exc.strerror}") from None


def _load_cas(path: Path) -> list[x509.Certificate]:
    try:
        cas = x509.load_pem_x509_certificates(_read(path))
    except ValueError:
        raise TLSMaterialError(f"{path} holds no PEM certificate") from None
    for ca in cas:
        try:
            ok = ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
        except x509.ExtensionNotFound:
            ok = False
        if not ok:
            raise TLSMaterialError(f"{path}: {ca.subject.rfc4514_string()} is not a CA")
    return cas


class CRLFile:
    """A CRL on disk, verified against the CA, re-read (rate limited) when the file changes.

    A new CRL that does not parse or verify is refused and the previous one kept.
    """

    def __init__(self, path: Path, cas: Sequence[x509.Certificate], *, clock: Clock,
                 reload_interval: float = 1.0,
                 on_reload: Callable[[str], None] | None = None) -> None:
        """Load ``path``; raise TLSMaterialError when it is unreadable or unverifiable."""
        self._path, self._cas, self._clock = path, list(cas), clock
        self._interval, self._on_reload = reload_interval, on_reload
        self._lock = threading.Lock()
        self._stamp = _stamp([path])
        self._serials = self._load()
        self._next_check = clock() + reload_interval

    def _load(self) -> frozenset[int]:
        try:
            crl = x509.load_pem_x509_crl(_read(self._path))
        except ValueError:
            raise TLSMaterialError(f"{self._path} is not a PEM CRL") from None
        for ca in self._cas:
            if crl.issuer == ca.subject and crl.is_signature_valid(ca.public_key()):  # type: ignore[arg-type]
                break
        else:
            raise TLSMaterialError(f"{self._path}: CRL signature does not verify against the CA")
        next_update = crl.next_update_utc
        if next_update is not None and next_update.timestamp() < self._clock():
            # Still enforced (an old CRL revokes no less), but someone must publish a new one.
            self._report(f"{self._path}: CRL is past its next update; publish a new one")
        return frozenset(r.serial_number for r in crl)

    def set_cas(self, cas: Sequence[x509.Certificate]) -> None:
        """Verify future CRLs against ``cas`` (after a CA bundle reload)."""
        with self._lock:
            self._cas = list(cas)

    def revoked_serials(self) -> frozenset[int]:
        """The serials on the current CRL, re-reading the file if it changed."""
        if self._clock() >= self._next_check:
            self._check()
        return self._serials

    def _check(self) -> None:
        with self._lock:
            now = self._clock()
            if now < self._next_check:
                return
            self._next_check = now + self._interval
            stamp = _stamp([self._path])
            if stamp == self._stamp:
                return
            self._stamp = stamp
            try:
                self._serials = self._load()
            except TLSMaterialError as exc:
                self._report(f"CRL reload refused, keeping the previous CRL: {exc}")
            else:
                self._report(f"CRL reloaded: {len(self._serials)} revoked serial(s)")

    def _report(self, message: str) -> None:
        if self._on_reload is not None:
            self._on_reload(message)


@dataclass(frozen=True, slots=True)
class _Material:
    key: bytes
    chain: bytes
    ca: bytes
    cert: x509.Certificate
    cas: list[x509.Certificate]


class ServerTLS:
    """Server credentials for one listener that pick up renewed files for new handshakes.

    Calls on existing connections are unaffected by a reload; broken new files are refused,
    reported through ``on_reload`` and the previous material is kept.
    """

    def __init__(self, config: TLSConfig, *, clock: Clock,
                 on_reload: Callable[[str], None] | None = None) -> None:
        """Load the material; raise TLSMaterialError if any of it is unusable."""
        self._config, self._clock, self._on_reload = config, clock, on_reload
        self._files = [config.cert_file, config.key_file, config.ca_file]
        self._lock = threading.Lock()
        self._stamp = _stamp(self._files)
        self._material = self._load()
        self._next_check = clock() + config.reload_interval
        self._crl = (None if config.crl_file is None else
                     CRLFile(config.crl_file, self._material.cas, clock=clock,
                             reload_interval=config.reload_interval, on_reload=on_reload))

    def _load(self) -> _Material:
        cfg = self._config
        chain, key_pem, ca = _read(cfg.cert_file), _read(cfg.key_file), _read(cfg.ca_file)
        try:
            cert = x509.load_pem_x509_certificates(chain)[0]
        except ValueError:
            raise TLSMaterialError(f"{cfg.cert_file} holds no PEM certificate") from None
        try:
            key = serialization.load_pem_private_key(key_pem, password=None)
        except (ValueError, TypeError):
            raise TLSMaterialError(f"{cfg.key_file} is not an unencrypted PEM key") from None
        if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
                          | ed25519.Ed25519PrivateKey) or key.public_key() != cert.public_key():
            raise TLSMaterialError(f"{cfg.key_file} does not match {cfg.cert_file}")
        now = self._clock()
        if not (cert.not_valid_before_utc.timestamp() <= now
                < cert.not_valid_after_utc.timestamp()):
            raise TLSMaterialError(f"{cfg.cert_file} is expired or not yet valid")
        return _Material(key_pem, chain, ca, cert, _load_cas(cfg.ca_file))

    def _configuration(self) -> grpc.ServerCertificateConfiguration:
        m = self._material
        return grpc.ssl_server_certificate_configuration([(m.key, m.chain)], m.ca)

    def credentials(self) -> grpc.ServerCredentials:
        """Credentials requiring a client certificate, re-checking the files per handshake."""
        return grpc.dynamic_ssl_server_credentials(
            self._configuration(), self._fetch, require_client_authentication=True)

    def _fetch(self) -> grpc.ServerCertificateConfiguration | None:
        # Called by gRPC before every handshake; must never raise.
        try:
            if self._clock() < self._next_check:
                return None
            return self.reload()
        except Exception as exc:  # pragma: no cover - defensive: keep serving old material
            self._report(f"TLS reload failed, keeping the previous material: {exc}")
            return None

    def reload(self) -> grpc.ServerCertificateConfiguration | None:
        """Re-read the files if they changed; the new configuration, or None if unchanged/bad."""
        with self._lock:
            self._next_check = self._clock() + self._config.reload_interval
            stamp = _stamp(self._files)
            if stamp == self._stamp:
                return None
            self._stamp = stamp
            try:
                material = self._load()
            except TLSMaterialError as exc:
                self._report(f"TLS reload refused, keeping the previous material: {exc}")
                return None
            self._material = material
            if self._crl is not None:
                self._crl.set_cas(material.cas)
            self._report(f"TLS material reloaded: server certificate serial "
                         f"{material.cert.serial_number:#x}")
            return self._configuration()

    def revoked_serials(self) -> frozenset[int]:
        """The serials on the current CRL (empty without one); re-reads a changed CRL."""
        return frozenset() if self._crl is None else self._crl.revoked_serials()

    def server_certificate_status(self) -> CertStatus:
        """Subject, SPIFFE ID, serial, not_after and days left of the certificate now served."""
        return cert_status(self._material.cert, clock=self._clock,
                           path=str(self._config.cert_file))

    def _report(self, message: str) -> None:
        if self._on_reload is not None:
            self._on_reload(message)


def assert_tls13_only(host: str, port: int, *, ca_file: Path, cert_file: Path, key_file: Path,
                      server_name: str, timeout: float = 5.0) -> None:
    """Prove that ``host:port`` refuses TLS 1.2 with real handshakes, or raise.

    A TLS 1.3 control handshake with the same client credentials must succeed (else
    TLSProbeError: the probe proves nothing); a TLS 1.2 handshake must fail (else
    TLSDowngradeError).
    """
    for version in (ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_2):
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca_file))
        ctx.minimum_version = ctx.maximum_version = version
        ctx.load_cert_chain(str(cert_file), str(key_file))
        ctx.set_alpn_protocols(["h2"])
        try:
            raw = socket.create_connection((host, port), timeout=timeout)
        except OSError as exc:
            raise TLSProbeError(f"cannot reach {host}:{port}: {exc}") from None
        try:
            with ctx.wrap_socket(raw, server_hostname=server_name) as tls:
                negotiated = tls.version()
        except (ssl.SSLError, ConnectionError, TimeoutError) as exc:
            if version is ssl.TLSVersion.TLSv1_3:
                raise TLSProbeError(f"TLS 1.3 control handshake to {host}:{port} failed: "
                                    f"{exc}") from None
            return  # TLS 1.2 refused: the guarantee holds
        finally:
            raw.close()
        if version is ssl.TLSVersion.TLSv1_2:
            raise TLSDowngradeError(
                f"{host}:{port} accepted a {negotiated} handshake; refusing to serve "
                "(was GRPC_SSL_CIPHER_SUITES set before gRPC started? import pdp first)")
