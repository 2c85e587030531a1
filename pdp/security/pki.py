"""A small certificate authority on disk: issue, renew, revoke, publish CRLs, report status.

ECDSA P-256 by default (RSA 2048/3072 on request); keys 0600, every write atomic; the
builders refuse unsafe certificates (CA without basicConstraints, leaf without EKU).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import ipaddress
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from pdp import files
from pdp.clock import Clock, system_clock
from pdp.errors import CredentialError
from pdp.security.identity import common_name_of, spiffe_id_of

__all__ = [
    "REASONS",
    "CertStatus",
    "DevPKI",
    "IssuedCert",
    "KeyType",
    "PKIError",
    "cert_status",
    "init_ca",
    "issue",
    "load_passphrase",
    "make_crl",
    "make_dev_pki",
    "renew",
    "revoke",
    "status",
    "write_atomic",
]

KeyType = Literal["ec-p256", "rsa-2048", "rsa-3072"]
PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey

REASONS: dict[str, x509.ReasonFlags] = {
    "unspecified": x509.ReasonFlags.unspecified,
    "key-compromise": x509.ReasonFlags.key_compromise,
    "ca-compromise": x509.ReasonFlags.ca_compromise,
    "affiliation-changed": x509.ReasonFlags.affiliation_changed,
    "superseded": x509.ReasonFlags.superseded,
    "cessation-of-operation": x509.ReasonFlags.cessation_of_operation,
    "privilege-withdrawn": x509.ReasonFlags.privilege_withdrawn,
}

_DAY = 86400.0


class PKIError(CredentialError):
    """A CA or certificate operation failed: missing or corrupt files, a wrong passphrase,
    or a request for an unsafe certificate; ``reason`` says which."""


@dataclass(frozen=True, slots=True)
class IssuedCert:
    """Where an issued certificate and its key were written."""

    cert_path: Path
    key_path: Path
    serial: int


@dataclass(frozen=True, slots=True)
class CertStatus:
    """One certificate as `pdp certs status` shows it."""

    subject: str  # RFC 4514 subject
    spiffe_id: str | None  # URI SAN spiffe://..., if any
    serial: int
    not_after: float  # seconds since the epoch
    days_left: float  # negative once expired
    revoked: bool
    path: str = ""  # the file it came from, "" for index entries


@dataclass(frozen=True, slots=True)
class DevPKI:
    """The paths of the development PKI that `pdp run` serves with."""

    ca_dir: Path
    ca_cert: Path
    crl: Path
    server_cert: Path
    server_key: Path
    admin_cert: Path
    admin_key: Path
    service_cert: Path
    service_key: Path


# --- files --------------------------------------------------------------------------------


def write_atomic(path: Path, data: bytes, *, mode: int) -> None:
    """Write ``data`` to ``path`` crash-safely with permission ``mode``, making its directory."""
    files.write_atomic(path, data, mode=mode, make_parents=True)


@contextlib.contextmanager
def _locked(ca_dir: Path) -> Iterator[None]:
    # Serialises index.json updates between concurrent `pdp certs` invocations.
    if not (ca_dir / "ca.crt").is_file():
        raise PKIError(f"no CA in {ca_dir} (run `pdp certs init-ca` first)")
    with open(ca_dir / ".lock", "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def load_passphrase(*, file: Path | None = None, env: str | None = None) -> bytes | None:
    """Read a CA key passphrase from a file (first line) or an environment variable.

    Raises PKIError when the file is unreadable, the variable unset, or the value empty.
    """
    if file is not None and env is not None:
        raise PKIError("give the passphrase from a file or from the environment, not both")
    if file is not None:
        try:
            lines = file.read_bytes().splitlines()
        except OSError as exc:
            raise PKIError(f"cannot read passphrase file {file}: {exc.strerror}") from None
        value = lines[0] if lines else b""
    elif env is not None:
        value = os.environ.get(env, "").encode()
    else:
        return None
    if not value:
        raise PKIError("the CA key passphrase is empty")
    return value


def _new_key(key_type: KeyType) -> PrivateKey:
    if key_type == "ec-p256":
        return ec.generate_private_key(ec.SECP256R1())
    if key_type in ("rsa-2048", "rsa-3072"):
        return rsa.generate_private_key(public_exponent=65537, key_size=int(key_type[4:]))
    raise PKIError(f"unknown key type {key_type!r} (choose from {', '.join(get_args(KeyType))})")


def _key_type_of(key: Any) -> KeyType:
    if isinstance(key, rsa.RSAPublicKey | rsa.RSAPrivateKey):
        return "rsa-3072" if key.key_size >= 3072 else "rsa-2048"
    return "ec-p256"


def _key_pem(key: PrivateKey, passphrase: bytes | None) -> bytes:
    enc: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(passphrase) if passphrase
        else serialization.NoEncryption())
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, enc)


def _time(t: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(t, dt.UTC)


# --- the CA ---------------------------------------------------------------------------------


def init_ca(ca_dir: Path, *, common_name: str, days: int = 3650, key_type: KeyType = "ec-p256",
            passphrase: bytes | None = None, clock: Clock = system_clock) -> Path:
    """Create a CA in ``ca_dir`` (ca.crt, ca.key 0600, index.json, crl.pem); return ca.crt.

    Raises PKIError if a CA already exists there or the request is unsafe.
    """
    if (ca_dir / "ca.crt").exists() or (ca_dir / "ca.key").exists():
        raise PKIError(f"a CA already exists in {ca_dir}")
    if days < 1 or not common_name:
        raise PKIError("a CA needs a common name and at least one day of validity")
    ca_dir.mkdir(parents=True, exist_ok=True)
    key = _new_key(key_type)
    now = clock()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(_time(now - 300)).not_valid_after(_time(now + days * _DAY))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=True, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
            encipher_only=False, decipher_only=False), critical=True)
        .add_extension(ski, critical=False)
        .sign(key, hashes.SHA256())
    )
    _check_ca(cert)
    write_atomic(ca_dir / "ca.key", _key_pem(key, passphrase), mode=0o600)
    write_atomic(ca_dir / "ca.crt", cert.public_bytes(serialization.Encoding.PEM), mode=0o644)
    _save_index(ca_dir, {"crl_number": 0, "certs": []})
    make_crl(ca_dir, passphrase=passphrase, clock=clock)
    return ca_dir / "ca.crt"


def _check_ca(cert: x509.Certificate) -> None:
    try:
        bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        ku = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound as exc:
        raise PKIError(f"CA certificate lacks {exc.oid._name}; refusing to use it") from None
    if not bc.ca or not ku.key_cert_sign or not ku.crl_sign:
        raise PKIError("certificate is not a CA (basicConstraints/keyUsage); refusing to use it")


def _load_ca(ca_dir: Path, passphrase: bytes | None,
             *, need_key: bool = True) -> tuple[x509.Certificate, PrivateKey | None]:
    try:
        cert = x509.load_pem_x509_certificate((ca_dir / "ca.crt").read_bytes())
    except FileNotFoundError:
        raise PKIError(f"no CA in {ca_dir} (run `pdp certs init-ca` first)") from None
    except ValueError:
        raise PKIError(f"{ca_dir / 'ca.crt'} is not a PEM certificate") from None
    _check_ca(cert)
    if not need_key:
        return cert, None
    data = (ca_dir / "ca.key").read_bytes()
    try:
        key = serialization.load_pem_private_key(data, password=passphrase)
    except TypeError:
        raise PKIError("the CA key is encrypted: give its passphrase (--passphrase-file or "
                       "--passphrase-env)" if passphrase is None
                       else "the CA key is not encrypted but a passphrase was given") from None
    except ValueError:
        raise PKIError("cannot decrypt the CA key: wrong passphrase or corrupt file") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise PKIError("unsupported CA key type")
    if key.public_key() != cert.public_key():
        raise PKIError("ca.key does not match ca.crt")
    return cert, key


def _load_index(ca_dir: Path) -> dict[str, Any]:
    try:
        index: dict[str, Any] = json.loads((ca_dir / "index.json").read_text())
    except FileNotFoundError:
        raise PKIError(f"no index.json in {ca_dir}") from None
    except ValueError:
        raise PKIError(f"{ca_dir / 'index.json'} is corrupt") from None
    return index


def _save_index(ca_dir: Path, index: dict[str, Any]) -> None:
    write_atomic(ca_dir / "index.json", json.dumps(index, indent=2).encode() + b"\n", mode=0o644)


# --- leaves ---------------------------------------------------------------------------------


def issue(ca_dir: Path, out_prefix: Path, *, common_name: str, spiffe_id: str | None = None,
          dns: Sequence[str] = (), ips: Sequence[str] = (), server: bool = False,
          client: bool = True, days: int = 90, key_type: KeyType = "ec-p256",
          passphrase: bytes | None = None, clock: Clock = system_clock) -> IssuedCert:
    """Issue a leaf certificate; write ``<out_prefix>.key`` (0600) then ``<out_prefix>.crt``.

    Raises PKIError for an unsafe request (no usage, bad SPIFFE ID, a server certificate
    without DNS/IP names, validity beyond the CA's) or an unusable CA.
    """
    key = _new_key(key_type)
    cert_path = out_prefix.with_name(out_prefix.name + ".crt")
    key_path = out_prefix.with_name(out_prefix.name + ".key")
    with _locked(ca_dir):
        ca_cert, ca_key = _load_ca(ca_dir, passphrase)
        assert ca_key is not None
        cert = _build_leaf(ca_cert, ca_key, key, common_name=common_name, spiffe_id=spiffe_id,
                           dns=dns, ips=ips, server=server, client=client, days=days, now=clock())
        _record_and_write(ca_dir, cert, key, cert_path, key_path)
    return IssuedCert(cert_path, key_path, cert.serial_number)


def _build_leaf(ca_cert: x509.Certificate, ca_key: PrivateKey, key: PrivateKey, *,
                common_name: str, spiffe_id: str | None, dns: Sequence[str], ips: Sequence[str],
                server: bool, client: bool, days: int, now: float) -> x509.Certificate:
    if not (server or client):
        raise PKIError("a certificate must be for server or client authentication (or both)")
    if not common_name:
        raise PKIError("a certificate needs a common name")
    if days < 1:
        raise PKIError("validity must be at least one day")
    if server and not (dns or ips):
        raise PKIError("a server certificate needs at least one DNS name or IP address")
    names: list[x509.GeneralName] = []
    if spiffe_id is not None:
        _check_spiffe(spiffe_id)
        names.append(x509.UniformResourceIdentifier(spiffe_id))
    names += [x509.DNSName(d) for d in dns]
    try:
        names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
    except ValueError as exc:
        raise PKIError(str(exc)) from None
    not_after = now + days * _DAY
    if not_after > ca_cert.not_valid_after_utc.timestamp():
        raise PKIError("the certificate would outlive its CA; issue fewer days or renew the CA")
    usages = ([ExtendedKeyUsageOID.SERVER_AUTH] if server else []) + (
        [ExtendedKeyUsageOID.CLIENT_AUTH] if client else [])
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca_cert.subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_time(now - 300)).not_valid_after(_time(not_after))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=True, content_commitment=False,
            key_encipherment=isinstance(key, rsa.RSAPrivateKey), data_encipherment=False,
            key_agreement=False, key_cert_sign=False, crl_sign=False, encipher_only=False,
            decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                       critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
            ca_key.public_key()), critical=False)
    )
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return builder.sign(ca_key, hashes.SHA256())


def _check_spiffe(spiffe_id: str) -> None:
    rest = spiffe_id[len("spiffe://"):] if spiffe_id.startswith("spiffe://") else None
    domain = rest.split("/", 1)[0] if rest else ""
    if (rest is None or not domain or any(c in spiffe_id for c in "?#@ ")
            or spiffe_id.endswith("/") or domain != domain.lower()):
        raise PKIError(f"not a valid SPIFFE ID: {spiffe_id!r} (want spiffe://domain/path)")


def _entry(cert: x509.Certificate, path: str) -> dict[str, Any]:
    return {"serial": f"{cert.serial_number:#x}", "subject": cert.subject.rfc4514_string(),
            "spiffe_id": spiffe_id_of(cert), "not_after": cert.not_valid_after_utc.timestamp(),
            "path": path, "revoked_at": None, "reason": None}


def renew(ca_dir: Path, cert_path: Path, *, key_path: Path | None = None, days: int | None = None,
          key_type: KeyType | None = None, passphrase: bytes | None = None,
          clock: Clock = system_clock) -> IssuedCert:
    """Re-issue ``cert_path`` with the same subject, SANs and usages, a new key and serial.

    Writes atomically, key first then certificate, so a watcher never pairs an old key with
    a new certificate for longer than one rename. ``days`` defaults to the old lifetime.
    Raises PKIError if the certificate is unreadable or not issued by this CA.
    """
    key_path = key_path or cert_path.with_suffix(".key")
    old = _read_cert(cert_path)
    with _locked(ca_dir):
        ca_cert, ca_key = _load_ca(ca_dir, passphrase)
        assert ca_key is not None
        _check_issued_by(old, ca_cert)
        try:
            san = old.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            eku = old.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        except x509.ExtensionNotFound:
            san, eku = x509.SubjectAlternativeName([]), x509.ExtendedKeyUsage([])
        lifetime = old.not_valid_after_utc - old.not_valid_before_utc
        key = _new_key(key_type or _key_type_of(old.public_key()))
        cert = _build_leaf(
            ca_cert, ca_key, key, common_name=common_name_of(old), spiffe_id=spiffe_id_of(old),
            dns=san.get_values_for_type(x509.DNSName),
            ips=[str(i) for i in san.get_values_for_type(x509.IPAddress)],
            server=ExtendedKeyUsageOID.SERVER_AUTH in eku,
            client=ExtendedKeyUsageOID.CLIENT_AUTH in eku,
            days=days or max(1, round((lifetime.total_seconds() - 300) / _DAY)), now=clock())
        _record_and_write(ca_dir, cert, key, cert_path, key_path)
    return IssuedCert(cert_path, key_path, cert.serial_number)


def _record_and_write(ca_dir: Path, cert: x509.Certificate, key: Any, cert_path: Path,
                      key_path: Path) -> None:
    """Add ``cert`` to the CA index and write the key (0600), then the certificate."""
    index = _load_index(ca_dir)
    index["certs"].append(_entry(cert, str(cert_path)))
    write_atomic(key_path, _key_pem(key, None), mode=0o600)
    write_atomic(cert_path, cert.public_bytes(serialization.Encoding.PEM), mode=0o644)
    _save_index(ca_dir, index)


def _read_cert(path: Path) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except OSError as exc:
        raise PKIError(f"cannot read {path}: {exc.strerror}") from None
    except ValueError:
        raise PKIError(f"{path} is not a PEM certificate") from None


def _check_issued_by(cert: x509.Certificate, ca_cert: x509.Certificate) -> None:
    try:
        cert.verify_directly_issued_by(ca_cert)
    except (ValueError, TypeError, InvalidSignature):
        raise PKIError("the certificate was not issued by this CA") from None


# --- revocation -------------------------------------------------------------------------------


def revoke(ca_dir: Path, serial_or_cert: int | Path, *, reason: str = "unspecified",
           clock: Clock = system_clock) -> int:
    """Mark a certificate revoked in the index (publish with :func:`make_crl`); return its serial.

    Raises PKIError for an unknown serial, a certificate of another CA or an unknown reason.
    """
    if reason not in REASONS:
        raise PKIError(f"unknown reason {reason!r} (choose from {', '.join(REASONS)})")
    with _locked(ca_dir):
        index = _load_index(ca_dir)
        if isinstance(serial_or_cert, Path):
            cert = _read_cert(serial_or_cert)
            ca_cert, _ = _load_ca(ca_dir, None, need_key=False)
            _check_issued_by(cert, ca_cert)
            serial = cert.serial_number
            if not any(int(e["serial"], 16) == serial for e in index["certs"]):
                index["certs"].append(_entry(cert, str(serial_or_cert)))
        else:
            serial = serial_or_cert
        entries = [e for e in index["certs"] if int(e["serial"], 16) == serial]
        if not entries:
            raise PKIError(f"serial {serial:#x} was not issued by this CA")
        for e in entries:
            if e["revoked_at"] is None:
                e["revoked_at"], e["reason"] = clock(), reason
        _save_index(ca_dir, index)
    return serial


def make_crl(ca_dir: Path, *, days: int = 7, passphrase: bytes | None = None,
             clock: Clock = system_clock) -> Path:
    """Sign and publish ``crl.pem`` listing every revoked serial; valid ``days``; return it.

    Raises PKIError when the CA cannot be loaded (missing, wrong passphrase).
    """
    with _locked(ca_dir):
        ca_cert, ca_key = _load_ca(ca_dir, passphrase)
        assert ca_key is not None
        index = _load_index(ca_dir)
        index["crl_number"] = int(index.get("crl_number", 0)) + 1
        now = clock()
        builder = (
            x509.CertificateRevocationListBuilder().issuer_name(ca_cert.subject)
            .last_update(_time(now - 60)).next_update(_time(now + days * _DAY))
            .add_extension(x509.CRLNumber(index["crl_number"]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                ca_key.public_key()), critical=False)
        )
        seen: set[int] = set()
        for e in index["certs"]:
            serial = int(e["serial"], 16)
            if e["revoked_at"] is None or serial in seen:
                continue
            seen.add(serial)
            rc = (x509.RevokedCertificateBuilder().serial_number(serial)
                  .revocation_date(_time(e["revoked_at"])))
            if e["reason"] and e["reason"] != "unspecified":  # RFC 5280: omit "unspecified"
                rc = rc.add_extension(x509.CRLReason(REASONS[e["reason"]]), critical=False)
            builder = builder.add_revoked_certificate(rc.build())
        crl = builder.sign(ca_key, hashes.SHA256())
        write_atomic(ca_dir / "crl.pem", crl.public_bytes(serialization.Encoding.PEM), mode=0o644)
        _save_index(ca_dir, index)
    return ca_dir / "crl.pem"


# --- status ------------------------------------------------------------------------------------


def cert_status(cert: x509.Certificate, *, clock: Clock, revoked: bool = False,
                path: str = "") -> CertStatus:
    """The :class:`CertStatus` of one parsed certificate at ``clock()``."""
    not_after = cert.not_valid_after_utc.timestamp()
    return CertStatus(cert.subject.rfc4514_string(), spiffe_id_of(cert), cert.serial_number,
                      not_after, (not_after - clock()) / _DAY, revoked, path)


def status(target: Path | Sequence[Path], *, ca_dir: Path | None = None,
           clock: Clock = system_clock) -> list[CertStatus]:
    """Status of a CA directory (the CA and everything it issued) or of certificate files.

    For files, revocation is looked up in ``ca_dir``'s index when given. Raises PKIError for
    unreadable files.
    """
    if isinstance(target, Path) and target.is_dir():
        ca_cert, _ = _load_ca(target, None, need_key=False)
        out = [cert_status(ca_cert, clock=clock, path=str(target / "ca.crt"))]
        now = clock()
        for e in _load_index(target)["certs"]:
            out.append(CertStatus(e["subject"], e["spiffe_id"], int(e["serial"], 16),
                                  e["not_after"], (e["not_after"] - now) / _DAY,
                                  e["revoked_at"] is not None, e["path"]))
        return out
    paths = [target] if isinstance(target, Path) else list(target)
    revoked: set[int] = set()
    if ca_dir is not None:
        revoked = {int(e["serial"], 16) for e in _load_index(ca_dir)["certs"]
                   if e["revoked_at"] is not None}
    result = []
    for p in paths:
        cert = _read_cert(p)
        result.append(cert_status(cert, clock=clock, revoked=cert.serial_number in revoked,
                                  path=str(p)))
    return result


# --- the development PKI ---------------------------------------------------------------------


def make_dev_pki(directory: Path, *, clock: Clock = system_clock,
                 trust_domain: str = "pdp.local") -> DevPKI:
    """Make (or reuse, when still valid for a day) a CA, server, admin and service certificate.

    Raises PKIError when the directory holds an unusable CA.
    """
    ca_dir = directory / "ca"
    now = clock()
    ca_path = ca_dir / "ca.crt"
    if ca_path.exists() and _read_cert(ca_path).not_valid_after_utc.timestamp() < now + 30 * _DAY:
        for stale in ("ca.crt", "ca.key", "index.json", "crl.pem"):
            (ca_dir / stale).unlink(missing_ok=True)
    if not ca_path.exists():
        init_ca(ca_dir, common_name=f"pdp dev CA ({trust_domain})", days=3650, clock=clock)
    ca_cert, _ = _load_ca(ca_dir, None, need_key=False)
    td = f"spiffe://{trust_domain}"
    specs: list[tuple[str, dict[str, Any]]] = [
        ("server", {"common_name": "localhost", "spiffe_id": f"{td}/pdp", "server": True,
                    "client": True, "dns": ["localhost"], "ips": ["127.0.0.1", "::1"]}),
        ("admin", {"common_name": "admin", "spiffe_id": f"{td}/admin"}),
        ("service", {"common_name": "example", "spiffe_id": f"{td}/svc/example"}),
    ]
    for name, kw in specs:
        crt = directory / f"{name}.crt"
        if crt.exists() and (directory / f"{name}.key").exists():
            cert = _read_cert(crt)
            with contextlib.suppress(PKIError):
                _check_issued_by(cert, ca_cert)
                if cert.not_valid_after_utc.timestamp() > now + _DAY:
                    continue
        issue(ca_dir, directory / name, days=365, clock=clock, **kw)
    return DevPKI(ca_dir, ca_path, ca_dir / "crl.pem", directory / "server.crt",
                  directory / "server.key", directory / "admin.crt", directory / "admin.key",
                  directory / "service.crt", directory / "service.key")
