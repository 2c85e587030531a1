"""Service-token signing keys on disk, with rotation and retirement.

One directory holds every key: ``<kid>.pem`` (private, 0600) and ``<kid>.json`` (metadata);
the previous keys stay in the key set until every token they could have signed has expired.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import secrets
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from pdp import files
from pdp.clock import Clock
from pdp.errors import ConfigError

__all__ = [
    "ALGORITHMS",
    "KeyConfig",
    "KeyInfo",
    "KeyStore",
    "KeyStoreError",
    "PrivateKey",
    "PublicKey",
    "SigningKey",
    "atomic_write",
    "public_jwk",
]

ALGORITHMS: tuple[str, ...] = ("ES256", "RS256")
RSA_BITS = 3072
PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
PublicKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey
_LOCK_NAME = ".lock"


class KeyStoreError(ConfigError):
    """The key directory is missing, unreadable, or holds a key that is unsafe or malformed."""

    def __init__(self, message: str) -> None:
        super().__init__(message, field="[keys].dir")


@dataclass(frozen=True, slots=True, kw_only=True)
class KeyConfig:
    """The `[keys]` section: where service-token signing keys live and how long tokens last."""

    dir: Path = Path("data/keys")  # directory of <kid>.pem (0600) + <kid>.json files
    algorithm: Literal["ES256", "RS256"] = "ES256"  # algorithm of newly created keys
    max_token_ttl: float = 300.0  # seconds; no issued token lives longer
    leeway: float = 30.0  # seconds of clock skew verifiers tolerate on exp/nbf/iat

    def __post_init__(self) -> None:
        if not self.max_token_ttl > 0:
            raise ValueError("max_token_ttl must be positive")
        if not self.leeway >= 0:
            raise ValueError("leeway must not be negative")


@dataclass(frozen=True, slots=True)
class SigningKey:
    """The active key: what a token issuer signs with. The key never shows in repr."""

    kid: str
    alg: str
    private_key: PrivateKey = field(repr=False)
    max_token_ttl: float = 300.0  # the ttl cap recorded when the key was made


@dataclass(frozen=True, slots=True, kw_only=True)
class KeyInfo:
    """One key's metadata, as stored in ``<kid>.json``."""

    kid: str
    alg: str
    created_at: float
    max_token_ttl: float  # cap on tokens this key signs; fixes when it may retire
    leeway: float
    deactivated_at: float | None = None  # when a newer key became active
    not_used_after: float | None = None  # no token it signed is valid after this
    retired_at: float | None = None  # pruned: private key deleted, out of the key set

    @property
    def status(self) -> str:
        """``active``, ``previous`` (still verifies) or ``retired``."""
        if self.retired_at is not None:
            return "retired"
        return "active" if self.deactivated_at is None else "previous"

    def to_json(self) -> dict[str, Any]:
        return {
            "kid": self.kid,
            "alg": self.alg,
            "created_at": self.created_at,
            "max_token_ttl": self.max_token_ttl,
            "leeway": self.leeway,
            "active": self.deactivated_at is None and self.retired_at is None,
            "deactivated_at": self.deactivated_at,
            "not_used_after": self.not_used_after,
            "retired_at": self.retired_at,
        }


def atomic_write(path: Path, data: bytes, *, mode: int) -> None:
    """Write ``data`` to ``path`` crash-safely (temp, fsync, rename); raises OSError."""
    files.write_atomic(path, data, mode=mode)


def _number(meta: dict[str, Any], name: str, *, optional: bool = False) -> float | None:
    value = meta.get(name)
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise KeyStoreError(f"key metadata field {name!r} is not a number: {value!r}")
    return float(value)


def _parse_info(kid: str, raw: bytes) -> KeyInfo:
    try:
        meta = json.loads(raw)
    except ValueError as exc:
        raise KeyStoreError(f"key {kid}: metadata is not JSON: {exc}") from None
    if not isinstance(meta, dict) or meta.get("kid") != kid:
        raise KeyStoreError(f"key {kid}: metadata kid does not match its file name")
    if meta.get("alg") not in ALGORITHMS:
        raise KeyStoreError(f"key {kid}: algorithm {meta.get('alg')!r} not allowed")
    return KeyInfo(
        kid=kid,
        alg=meta["alg"],
        created_at=_number(meta, "created_at") or 0.0,
        max_token_ttl=_number(meta, "max_token_ttl") or 0.0,
        leeway=_number(meta, "leeway") or 0.0,
        deactivated_at=_number(meta, "deactivated_at", optional=True),
        not_used_after=_number(meta, "not_used_after", optional=True),
        retired_at=_number(meta, "retired_at", optional=True),
    )


def _load_private(path: Path, info: KeyInfo) -> PrivateKey:
    st = path.stat()
    if st.st_mode & 0o077:
        raise KeyStoreError(f"key {info.kid}: {path} is readable by others (mode must be 0600)")
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (ValueError, TypeError) as exc:
        raise KeyStoreError(f"key {info.kid}: cannot load private key: {exc}") from None
    if info.alg == "ES256":
        if isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(key.curve, ec.SECP256R1):
            return key
        raise KeyStoreError(f"key {info.kid}: ES256 needs a P-256 EC key")
    if isinstance(key, rsa.RSAPrivateKey) and key.key_size >= 2048:
        return key
    raise KeyStoreError(f"key {info.kid}: RS256 needs an RSA key of at least 2048 bits")


def _new_private_key(alg: str) -> PrivateKey:
    if alg == "ES256":
        return ec.generate_private_key(ec.SECP256R1())
    return rsa.generate_private_key(public_exponent=65537, key_size=RSA_BITS)


def public_jwk(kid: str, alg: str, key: PublicKey) -> dict[str, Any]:
    """The RFC 7517 JWK of a public key, with ``kid``, ``alg`` and ``use: sig``."""
    jwk: dict[str, Any]
    if isinstance(key, ec.EllipticCurvePublicKey):
        jwk = dict(ECAlgorithm.to_jwk(key, as_dict=True))
    else:
        jwk = dict(RSAAlgorithm.to_jwk(key, as_dict=True))
    jwk.update(kid=kid, alg=alg, use="sig")
    return jwk


class KeyStore:
    """A directory of signing keys; thread-safe; mutations lock the directory (flock).

    Raises KeyStoreError when the directory holds an unsafe or malformed key.
    """

    def __init__(self, config: KeyConfig, *, clock: Clock) -> None:
        self.config = config
        self._clock = clock
        self._dir = config.dir
        self._lock = threading.RLock()
        self._infos: dict[str, KeyInfo] = {}
        self._private: dict[str, PrivateKey] = {}
        self._public: dict[str, PublicKey] = {}
        self._signature: frozenset[tuple[str, int, int, int]] | None = None

    # --- reading -----------------------------------------------------------------

    def _scan(self) -> frozenset[tuple[str, int, int, int]]:
        # Our writes are renames, so a changed file is a new inode: that catches changes
        # however close in time; mtime and size catch a file edited in place.
        try:
            with os.scandir(self._dir) as it:
                out = []
                for e in it:
                    if e.name.startswith(".") or not e.name.endswith((".json", ".pem")):
                        continue
                    try:
                        st = e.stat()
                    except FileNotFoundError:  # removed while we looked
                        continue
                    out.append((e.name, st.st_ino, st.st_mtime_ns, st.st_size))
                return frozenset(out)
        except FileNotFoundError:
            return frozenset()

    def _load(self) -> None:
        try:
            self._load_files()
        except OSError as exc:
            raise KeyStoreError(f"cannot read key directory {self._dir}: {exc}") from None

    def _load_files(self) -> None:
        signature = self._scan()
        infos: dict[str, KeyInfo] = {}
        private: dict[str, PrivateKey] = {}
        for name, *_ in sorted(signature):
            if not name.endswith(".json"):
                continue
            kid = name[: -len(".json")]
            info = _parse_info(kid, (self._dir / name).read_bytes())
            infos[kid] = info
            if info.retired_at is None:
                pem = self._dir / f"{kid}.pem"
                if not pem.exists():
                    raise KeyStoreError(f"key {kid}: private key file {pem} is missing")
                private[kid] = _load_private(pem, info)
        public = {kid: key.public_key() for kid, key in private.items()}
        self._infos, self._private, self._public = infos, private, public
        self._signature = signature

    def reload_if_changed(self) -> bool:
        """Reload when the directory changed (a directory scan, no file reads otherwise).

        Returns True when it reloaded. Raises KeyStoreError (and keeps the old state).
        """
        with self._lock:
            if self._signature is not None and self._scan() == self._signature:
                return False
            self._load()
            return True

    def key_infos(self) -> list[KeyInfo]:
        """Every key's metadata (retired ones too), oldest first."""
        with self._lock:
            if self._signature is None:
                self._load()
            return sorted(self._infos.values(), key=lambda i: (i.created_at, i.kid))

    def active(self) -> SigningKey:
        """The key to sign with. Raises KeyStoreError when there is none (see ensure_active)."""
        with self._lock:
            candidates = [i for i in self.key_infos() if i.status == "active"]
            if not candidates:
                raise KeyStoreError(f"no active signing key in {self._dir}")
            info = candidates[-1]  # mid-rotation two may be active: the newest wins
            return SigningKey(info.kid, info.alg, self._private[info.kid], info.max_token_ttl)

    def public_keys(self) -> dict[str, tuple[str, PublicKey]]:
        """kid -> (alg, public key) of every key that may still have valid tokens."""
        now = self._clock()
        with self._lock:
            return {
                i.kid: (i.alg, self._public[i.kid])
                for i in self.key_infos()
                if i.retired_at is None and (i.not_used_after is None or now < i.not_used_after)
            }

    def jwks(self) -> dict[str, Any]:
        """The RFC 7517 JWK set of :meth:`public_keys`."""
        return {"keys": [public_jwk(k, a, p) for k, (a, p) in self.public_keys().items()]}

    # --- changing ----------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        try:
            self._dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(self._dir / _LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise KeyStoreError(f"cannot use key directory {self._dir}: {exc}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            with self._lock:
                self._load()  # another process may have changed it
                try:
                    yield
                except OSError as exc:
                    raise KeyStoreError(f"cannot write key directory {self._dir}: {exc}") from None
                finally:
                    self._load()
        finally:
            os.close(fd)

    def _write_info(self, info: KeyInfo) -> None:
        data = json.dumps(info.to_json(), indent=2, sort_keys=True).encode() + b"\n"
        atomic_write(self._dir / f"{info.kid}.json", data, mode=0o644)

    def _create(self) -> str:
        alg = self.config.algorithm
        key = _new_private_key(alg)
        kid = secrets.token_hex(8)
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        # The private key lands first: a metadata file never points at a missing key.
        atomic_write(self._dir / f"{kid}.pem", pem, mode=0o600)
        self._write_info(
            KeyInfo(
                kid=kid,
                alg=alg,
                created_at=self._clock(),
                max_token_ttl=self.config.max_token_ttl,
                leeway=self.config.leeway,
            )
        )
        return kid

    def ensure_active(self) -> str:
        """Create the first key when there is no active one; return the active kid."""
        with self._locked():
            if not any(i.status == "active" for i in self._infos.values()):
                self._create()
        return self.active().kid

    def rotate(self) -> str:
        """Make a new active key; earlier active keys become ``previous``. Returns the new kid."""
        with self._locked():
            previous = [i for i in self._infos.values() if i.status == "active"]
            kid = self._create()
            now = self._clock()
            for info in previous:
                # A token signed just now lives max_token_ttl, and verifiers accept it
                # for leeway more: only then may the key leave the key set.
                until = now + info.max_token_ttl + info.leeway
                self._write_info(replace(info, deactivated_at=now, not_used_after=until))
        return kid

    def retire(self, kid: str) -> None:
        """Retire a previous key at once (it was compromised): its tokens stop verifying.

        Raises KeyStoreError for an unknown kid or the active key (rotate first).
        """
        with self._locked():
            info = self._infos.get(kid)
            if info is None:
                raise KeyStoreError(f"no key {kid!r} in {self._dir}")
            if info.status == "active":
                raise KeyStoreError(f"key {kid} is the active key: rotate first")
            if info.status == "previous":
                self._write_info(replace(info, retired_at=self._clock()))
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._dir / f"{kid}.pem")

    def prune(self) -> list[str]:
        """Retire previous keys whose tokens have all expired: delete the private key,
        mark the metadata retired. Returns the retired kids."""
        retired: list[str] = []
        with self._locked():
            now = self._clock()
            for info in self._infos.values():
                if info.status == "retired":  # finish a prune that stopped half-way
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(self._dir / f"{info.kid}.pem")
                if info.status != "previous" or info.not_used_after is None:
                    continue
                if now >= info.not_used_after:
                    self._write_info(replace(info, retired_at=now))
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(self._dir / f"{info.kid}.pem")
                    retired.append(info.kid)
        return retired
