"""Bundle signatures: Ed25519, detached, over a bundle's canonical digest, with key ids.

The signed bytes are ``b"pdp-bundle-v1\\n" + digest`` (domain separation); several
keys can be trusted at once so that a signing key can be rotated without a gap.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from pdp.errors import BundleSignatureError, ConfigError

__all__ = [
    "DOMAIN",
    "BundleKeyError",
    "BundleSigningConfig",
    "BundleVerifier",
    "SignatureFile",
    "generate_bundle_key",
    "key_fingerprint",
    "load_public_key",
    "read_signature",
    "sign_digest",
    "signed_message",
    "valid_key_id",
]

DOMAIN = b"pdp-bundle-v1\n"
_DIGEST = re.compile(r"[0-9a-f]{64}")
_KEY_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}")
_SIGNATURE_BYTES = 64


class BundleKeyError(ConfigError):
    """A bundle signing key file is missing, unreadable, of the wrong type or unsafe."""


@dataclass(frozen=True, slots=True, kw_only=True)
class BundleSigningConfig:
    """The `[bundles]` section: which keys may sign policy bundles."""

    trusted_keys: dict[str, Path] = field(default_factory=dict)  # key id -> Ed25519 public PEM
    require_signature: bool = True  # refuse unsigned bundles (dev mode may turn this off)

    def __post_init__(self) -> None:
        for key_id in self.trusted_keys:
            if not _KEY_ID.fullmatch(key_id):
                raise ValueError(f"bad bundle key id {key_id!r}")


def valid_key_id(key_id: str) -> bool:
    """Whether ``key_id`` is an acceptable bundle key id (letters, digits, ``._:@-``)."""
    return bool(_KEY_ID.fullmatch(key_id))


def signed_message(digest: str) -> bytes:
    """The exact bytes a bundle signature covers. Raises ValueError for a malformed digest."""
    if not isinstance(digest, str) or not _DIGEST.fullmatch(digest):
        raise ValueError("digest must be 64 lowercase hex characters (sha256)")
    return DOMAIN + digest.encode()


def key_fingerprint(public_key: Ed25519PublicKey) -> str:
    """A short, stable fingerprint of a public key: sha256 of its raw bytes, 16 hex chars."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def _write_new(path: Path, data: bytes, mode: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def generate_bundle_key(private_path: Path, public_path: Path) -> str:
    """Create an Ed25519 key pair: private PEM (0600), public PEM. Never overwrites.

    Returns the key's fingerprint. Raises BundleKeyError if a file exists or cannot be written.
    """
    key = Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    try:
        _write_new(private_path, private_pem, 0o600)
        try:
            _write_new(public_path, public_pem, 0o644)
        except OSError:
            os.unlink(private_path)
            raise
    except OSError as exc:
        raise BundleKeyError(f"cannot write bundle key: {exc}") from None
    return key_fingerprint(key.public_key())


def _load_private(path: Path) -> Ed25519PrivateKey:
    try:
        if path.stat().st_mode & 0o077:
            raise BundleKeyError(f"{path} is readable by others (mode must be 0600)")
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise BundleKeyError(f"cannot load bundle signing key {path}: {exc}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise BundleKeyError(f"{path} is not an Ed25519 private key")
    return key


def load_public_key(path: Path) -> Ed25519PublicKey:
    """Load an Ed25519 public key (PEM). Raises BundleKeyError."""
    try:
        key = serialization.load_pem_public_key(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise BundleKeyError(f"cannot load bundle public key {path}: {exc}") from None
    if not isinstance(key, Ed25519PublicKey):
        raise BundleKeyError(f"{path} is not an Ed25519 public key")
    return key


def sign_digest(digest: str, private_key_path: Path) -> bytes:
    """Sign a bundle digest; returns the 64-byte detached Ed25519 signature.

    Raises ValueError for a malformed digest, BundleKeyError for an unusable key.
    """
    message = signed_message(digest)
    return _load_private(private_key_path).sign(message)


@dataclass(frozen=True, slots=True)
class SignatureFile:
    """A detached bundle signature as stored next to a bundle (``BUNDLE.sig``)."""

    signature: bytes
    key_id: str | None = None  # None for a bare signature file
    digest: str | None = None  # the digest that was signed, for humans and a quick check

    def to_bytes(self) -> bytes:
        doc = {
            "alg": "Ed25519",
            "key_id": self.key_id,
            "digest": self.digest,
            "signature": base64.b64encode(self.signature).decode(),
        }
        return json.dumps(doc, indent=2).encode() + b"\n"


def read_signature(data: bytes) -> SignatureFile:
    """Decode a signature file: the JSON `pdp bundle sign` writes, base64 text, or raw bytes.

    Raises BundleSignatureError when it is none of these.
    """
    if len(data) == _SIGNATURE_BYTES:
        return SignatureFile(data)
    key_id = digest = None
    text = data.strip()
    if text.startswith(b"{"):
        try:
            doc = json.loads(text)
            text = doc["signature"].encode()
            key_id, digest = doc.get("key_id"), doc.get("digest")
        except (ValueError, KeyError, TypeError, AttributeError):
            raise BundleSignatureError("bad signature file: malformed JSON") from None
        if not isinstance(key_id, str | None) or not isinstance(digest, str | None):
            raise BundleSignatureError("bad signature file: key_id and digest must be strings")
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise BundleSignatureError("bad signature: not base64") from None
    if len(raw) != _SIGNATURE_BYTES:
        raise BundleSignatureError("bad signature: wrong length")
    return SignatureFile(raw, key_id, digest)


class BundleVerifier:
    """Checks bundle signatures against the trusted keys; verification raises."""

    def __init__(self, trusted: Mapping[str, Ed25519PublicKey], *, required: bool = True) -> None:
        """Raises ValueError when signatures are required but no key is trusted."""
        if required and not trusted:
            raise ValueError("bundle signatures are required but no signing key is trusted")
        self._trusted = dict(trusted)
        self.required = required

    @classmethod
    def from_config(cls, config: BundleSigningConfig) -> BundleVerifier:
        """Build from the `[bundles]` section. Raises BundleKeyError / ConfigError."""
        trusted = {kid: load_public_key(path) for kid, path in config.trusted_keys.items()}
        try:
            return cls(trusted, required=config.require_signature)
        except ValueError as exc:
            raise ConfigError(str(exc), field="[bundles].trusted_keys") from None

    @property
    def key_ids(self) -> tuple[str, ...]:
        """The trusted key ids, sorted."""
        return tuple(sorted(self._trusted))

    def verify(self, digest: str, signature: bytes | None, key_id: str | None) -> str | None:
        """Verify a detached signature over ``digest``; return the key id, or None for an
        unsigned bundle accepted because signatures are not required.

        Raises BundleSignatureError: "unsigned bundle", "unknown key id ...", "bad signature".
        A present but bad signature fails even when signatures are not required.
        """
        if not signature and not key_id:
            if self.required:
                raise BundleSignatureError("unsigned bundle")
            return None
        if not signature:
            raise BundleSignatureError(f"key id {key_id!r} given without a signature")
        if not key_id:
            raise BundleSignatureError("signature given without a key id")
        public_key = self._trusted.get(key_id)
        if public_key is None:
            raise BundleSignatureError(f"unknown key id {key_id[:128]!r}")
        try:
            message = signed_message(digest)
        except ValueError as exc:
            raise BundleSignatureError(f"bad signature: {exc}") from None
        if len(signature) != _SIGNATURE_BYTES:
            raise BundleSignatureError(f"bad signature (key id {key_id!r})")
        try:
            public_key.verify(signature, message)
        except InvalidSignature:
            raise BundleSignatureError(f"bad signature (key id {key_id!r})") from None
        return key_id
