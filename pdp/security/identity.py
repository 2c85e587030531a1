"""Peer identity: who is calling, from the verified client certificate of a TLS 1.3 call.

Checked on every call, not only at the handshake: TLS version, presence of a certificate,
validity against the injected clock, and the current CRL (connections outlive both).
"""

from __future__ import annotations

import contextlib
import hashlib
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import grpc._server
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from pdp.clock import Clock
from pdp.errors import CertificateError

__all__ = [
    "Peer",
    "PeerCertificateError",
    "PeerVerifier",
    "RevocationSource",
    "StaticRevocation",
    "common_name_of",
    "spiffe_id_of",
]


def spiffe_id_of(cert: x509.Certificate) -> str | None:
    """The certificate's SPIFFE ID (its ``spiffe://`` URI SAN), or None when it has none.

    Raises CertificateError when it carries more than one: an X509-SVID has exactly one.
    """
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None
    ids = [u for u in san.get_values_for_type(x509.UniformResourceIdentifier)
           if u.lower().startswith("spiffe://")]
    if len(ids) > 1:
        raise CertificateError("certificate carries more than one SPIFFE ID")
    return ids[0] if ids else None


def common_name_of(cert: x509.Certificate) -> str:
    """The subject's first common name, or "" when it has none."""
    attrs = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if not attrs:
        return ""
    value = attrs[0].value
    return value if isinstance(value, str) else value.decode("utf-8", "replace")


@dataclass(frozen=True, slots=True)
class Peer:
    """The verified caller of one RPC."""

    identity: str  # the SPIFFE ID if present, else the CN
    spiffe_id: str | None  # the URI SAN spiffe://..., if any
    common_name: str  # the subject CN ("" if none)
    serial: int  # the certificate's serial number
    not_after: float  # end of validity, seconds since the epoch
    fingerprint: str  # sha256 of the DER certificate, lowercase hex
    address: str  # the connection's address as gRPC reports it, e.g. "ipv4:127.0.0.1:5555"


class PeerCertificateError(CertificateError):
    """A caller's certificate was refused on a call; ``kind`` says why, for detectors.

    ``kind`` is one of not_tls13, no_certificate, not_yet_valid, expired, revoked.
    """

    def __init__(self, kind: str, reason: str, *, identity: str = "", serial: int = 0) -> None:
        super().__init__(reason)
        self.kind = kind
        self.identity = identity
        self.serial = serial


class RevocationSource(Protocol):
    """Anything that knows the currently revoked serials (e.g. ServerTLS, reloading its CRL)."""

    def revoked_serials(self) -> frozenset[int]: ...


class StaticRevocation:
    """A fixed set of revoked serials (an empty one when no CRL is configured)."""

    def __init__(self, serials: frozenset[int] = frozenset()) -> None:
        self._serials = serials

    def revoked_serials(self) -> frozenset[int]:
        """The serials given at construction."""
        return self._serials


@dataclass(frozen=True, slots=True)
class _Parsed:
    identity: str
    spiffe_id: str | None
    common_name: str
    serial: int
    not_before: float
    not_after: float
    fingerprint: str


_TLS13 = [b"TLSv1.3"]
_EMPTY: dict[bytes, list[bytes]] = {}
# grpcio's own sync-server context, and the reader behind its public auth_context(): see
# _properties. Both are private to grpcio; without either, every context takes the public way.
_GRPC_CONTEXT: Any = getattr(grpc._server, "_Context", None)
_read_properties: Callable[[Any], dict[bytes, list[bytes]] | None] | None = getattr(
    getattr(grpc._server, "cygrpc", None), "auth_context", None)


def _properties(context: Any) -> Mapping[bytes, Sequence[bytes]]:
    """The call's authentication properties as gRPC core reports them, keyed by bytes.

    ``ServicerContext.auth_context()`` reads them with ``cygrpc.auth_context`` and then
    decodes every key into a str (twelve on an mTLS call): 3.2 µs a call, against 1.15 µs
    for the read alone. A context of grpcio's own sync server is read the way it reads
    itself; any other (grpc.aio's, a test's) through the public method.
    """
    if type(context) is _GRPC_CONTEXT and _read_properties is not None:
        return _read_properties(context._rpc_event.call) or _EMPTY
    return {key.encode(): value for key, value in context.auth_context().items()}


class PeerVerifier:
    """Turns a gRPC servicer context into a verified :class:`Peer`, or raises CertificateError.

    Each distinct certificate PEM is parsed once (bounded LRU), and each connection's Peer is
    kept by its address while the certificate stays the same; a call then costs a dict
    lookup, a bytes comparison, two time comparisons and a set membership test.
    """

    def __init__(self, revocation: RevocationSource, *, clock: Clock,
                 cache_size: int = 4096) -> None:
        if cache_size < 1:
            raise ValueError("cache_size must be at least 1")
        self._revocation = revocation
        self._clock = clock
        self._cache_size = cache_size
        self._cache: OrderedDict[bytes, _Parsed] = OrderedDict()
        self._by_address: dict[str, tuple[bytes, _Parsed, Peer]] = {}

    def verify(self, context: Any) -> Peer:
        """Verify the caller of ``context`` (a grpc.ServicerContext) and return it.

        Raises CertificateError with the precise reason: not TLS 1.3, no client certificate,
        unparsable or not for client authentication, not yet valid, expired, revoked.
        """
        auth = _properties(context)
        if auth.get(b"ssl_tls_version") != _TLS13:
            raise PeerCertificateError("not_tls13", "connection is not TLS 1.3")
        pems = auth.get(b"x509_pem_cert")
        if not pems:
            raise PeerCertificateError("no_certificate", "no client certificate")
        pem = pems[0]
        address = context.peer()
        # A connection calls many times with one certificate: its Peer is kept by address
        # and reused while the certificate is the same one (a new connection that reuses the
        # port with another certificate is parsed afresh). Validity and revocation are still
        # checked on every call.
        known = self._by_address.get(address)
        if known is None or known[0] != pem:
            parsed = self._parsed(pem)
            known = (pem, parsed, Peer(parsed.identity, parsed.spiffe_id, parsed.common_name,
                                       parsed.serial, parsed.not_after, parsed.fingerprint,
                                       address))
            if len(self._by_address) >= self._cache_size:
                self._by_address.clear()  # connections come and go; rebuilt on demand
            self._by_address[address] = known
        parsed = known[1]
        now = self._clock()
        if now < parsed.not_before:
            raise PeerCertificateError(
                "not_yet_valid", f"client certificate of {parsed.identity} is not yet valid",
                identity=parsed.identity, serial=parsed.serial)
        if now >= parsed.not_after:
            raise PeerCertificateError(
                "expired", f"client certificate of {parsed.identity} has expired",
                identity=parsed.identity, serial=parsed.serial)
        if parsed.serial in self._revocation.revoked_serials():
            raise PeerCertificateError(
                "revoked",
                f"client certificate of {parsed.identity} is revoked (serial {parsed.serial:#x})",
                identity=parsed.identity, serial=parsed.serial)
        return known[2]

    def _parsed(self, pem: bytes) -> _Parsed:
        # No lock: each OrderedDict call below is atomic under the GIL, and this runs on
        # every call of every gRPC thread (a lock here made the threads convoy).
        cache = self._cache
        hit = cache.get(pem)
        if hit is not None:
            with contextlib.suppress(KeyError):  # evicted meanwhile by another thread
                cache.move_to_end(pem)
            return hit
        parsed = _parse(pem)
        cache[pem] = parsed
        while len(cache) > self._cache_size:
            try:
                cache.popitem(last=False)
            except KeyError:  # emptied meanwhile by another thread
                break
        return parsed


def _parse(pem: bytes) -> _Parsed:
    try:
        cert = x509.load_pem_x509_certificate(pem)
    except ValueError:
        raise CertificateError("client certificate is unparsable") from None
    try:
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        eku = None
    if eku is not None and ExtendedKeyUsageOID.CLIENT_AUTH not in eku:
        raise CertificateError("certificate is not for client authentication (no clientAuth)")
    spiffe = spiffe_id_of(cert)
    cn = common_name_of(cert)
    identity = spiffe or cn
    if not identity:
        raise CertificateError("client certificate names no SPIFFE ID and no common name")
    return _Parsed(
        identity=identity,
        spiffe_id=spiffe,
        common_name=cn,
        serial=cert.serial_number,
        not_before=cert.not_valid_before_utc.timestamp(),
        not_after=cert.not_valid_after_utc.timestamp(),
        fingerprint=hashlib.sha256(cert.public_bytes(Encoding.DER)).hexdigest(),
    )
