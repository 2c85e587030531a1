"""Service tokens: short-lived JWTs issued for verified identities, and their verification.

Verification raises a TokenError leaf per failure (each with a machine-readable ``code``);
only ES256/RS256 are accepted, time comes from the injected clock, and a jti is used once.
"""

from __future__ import annotations

import heapq
import json
import math
import os
import secrets
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt

from pdp.clock import Clock
from pdp.errors import ConfigError, TokenError
from pdp.security.keys import ALGORITHMS, KeyStore, KeyStoreError, PublicKey

__all__ = [
    "IssuedToken",
    "ReplayCache",
    "ReplayCacheFullError",
    "TokenAlgorithmError",
    "TokenAudienceError",
    "TokenExpiredError",
    "TokenIssuer",
    "TokenIssuerError",
    "TokenKeySetError",
    "TokenLifetimeError",
    "TokenMalformedError",
    "TokenMissingClaimError",
    "TokenNotYetValidError",
    "TokenReplayError",
    "TokenSignatureError",
    "TokenUnknownKeyError",
    "TokenVerifier",
    "VerifiedToken",
    "load_jwks",
]

MAX_TOKEN_BYTES = 8192
MAX_JTI_CHARS = 256
_REQUIRED = ("iss", "sub", "aud", "iat", "exp", "jti")


class _CodedTokenError(TokenError):
    """Base of the leaves: ``code`` is machine-readable, ``jti`` set when known (replays)."""

    code = "invalid"

    def __init__(self, detail: str, *, jti: str = "") -> None:
        self.jti = jti
        super().__init__(detail)


class TokenMalformedError(_CodedTokenError):
    """The token is not a well-formed compact JWS with a JSON header and payload."""

    code = "malformed"


class TokenUnknownKeyError(_CodedTokenError):
    """The token names no kid, or a kid absent from every trusted key set."""

    code = "unknown_kid"


class TokenAlgorithmError(_CodedTokenError):
    """The token's alg is not allowed (none, HS*, ...) or does not match its key."""

    code = "alg_not_allowed"


class TokenSignatureError(_CodedTokenError):
    """The signature does not verify (forged, or header/payload tampered with)."""

    code = "bad_signature"


class TokenExpiredError(_CodedTokenError):
    """The token's exp has passed (beyond the leeway)."""

    code = "expired"


class TokenNotYetValidError(_CodedTokenError):
    """The token's nbf or iat lies in the future (beyond the leeway)."""

    code = "not_yet_valid"


class TokenAudienceError(_CodedTokenError):
    """The token's aud names none of the accepted audiences."""

    code = "wrong_audience"


class TokenIssuerError(_CodedTokenError):
    """The token's iss is not an accepted issuer."""

    code = "wrong_issuer"


class TokenMissingClaimError(_CodedTokenError):
    """A required claim is missing or has the wrong type."""

    code = "missing_claim"


class TokenLifetimeError(_CodedTokenError):
    """The token claims a lifetime (exp - iat) longer than the accepted maximum."""

    code = "lifetime_too_long"


class TokenReplayError(_CodedTokenError):
    """The token's jti was already presented within its lifetime (a replay)."""

    code = "replayed_jti"


class ReplayCacheFullError(_CodedTokenError):
    """The replay cache is full of unexpired jtis: new tokens are refused (fail closed)."""

    code = "replay_cache_full"


class TokenKeySetError(_CodedTokenError):
    """A trusted key set cannot be read: tokens it would verify are refused."""

    code = "key_set_unavailable"


# --- issuing ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class IssuedToken:
    """A freshly issued token; ``token`` is a bearer secret: never log it."""

    token: str = field(repr=False)
    jti: str
    kid: str
    expires_at: int
    claims: Mapping[str, Any]


class TokenIssuer:
    """Issues service tokens with the key store's active key."""

    def __init__(self, keys: KeyStore, *, issuer: str, clock: Clock) -> None:
        if not issuer:
            raise ValueError("issuer must not be empty")
        self._keys = keys
        self._issuer = issuer
        self._clock = clock

    def issue(self, subject: str, audience: str, ttl: float | None = None) -> IssuedToken:
        """Sign a token for ``subject`` and ``audience``; ttl is capped at max_token_ttl.

        Raises ValueError for an empty subject/audience or a non-positive ttl, and
        KeyStoreError when there is no active key.
        """
        if not subject or not audience:
            raise ValueError("subject and audience must not be empty")
        if ttl is not None and not (ttl > 0 and math.isfinite(ttl)):
            raise ValueError(f"ttl must be a positive number of seconds, got {ttl!r}")
        self._keys.reload_if_changed()  # pick up a `pdp keys rotate` run by the CLI
        key = self._keys.active()
        cap = min(self._keys.config.max_token_ttl, key.max_token_ttl)
        lifetime = cap if ttl is None else min(ttl, cap)
        now = math.floor(self._clock())
        exp = now + max(1, math.floor(lifetime))
        jti = secrets.token_urlsafe(16)  # 128 random bits
        claims = {
            "iss": self._issuer,
            "sub": subject,
            "aud": audience,
            "iat": now,
            "nbf": now,
            "exp": exp,
            "jti": jti,
        }
        token = jwt.encode(claims, key.private_key, algorithm=key.alg, headers={"kid": key.kid})
        return IssuedToken(token, jti, key.kid, exp, claims)


# --- replay --------------------------------------------------------------------------------


class ReplayCache:
    """Remembers each (issuer, jti) until its token can no longer be valid; thread-safe, bounded.

    When full of unexpired entries it refuses new tokens (ReplayCacheFullError)
    rather than forget one that could still be replayed.
    """

    def __init__(self, max_entries: int = 1_000_000, *, clock: Clock) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self._max = max_entries
        self._clock = clock
        self._lock = threading.Lock()
        self._until: dict[str, float] = {}
        self._heap: list[tuple[float, str]] = []

    def __len__(self) -> int:
        with self._lock:
            return len(self._until)

    def _evict(self, now: float) -> None:
        while self._heap and self._heap[0][0] <= now:
            _, key = heapq.heappop(self._heap)
            self._until.pop(key, None)

    def check_and_remember(self, issuer: str, jti: str, until: float) -> None:
        """Record (issuer, jti) until ``until``; raise TokenReplayError if it is already
        recorded, ReplayCacheFullError if there is no room."""
        key = f"{issuer}\x00{jti}"
        now = self._clock()
        with self._lock:
            self._evict(now)
            if key in self._until:
                raise TokenReplayError("jti already used (replayed token)", jti=jti)
            if len(self._until) >= self._max:
                raise ReplayCacheFullError("replay cache full: refusing new tokens")
            self._until[key] = until
            heapq.heappush(self._heap, (until, key))


# --- verifying -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class VerifiedToken:
    """The facts of a token that passed every check."""

    sub: str
    jti: str
    iss: str
    aud: tuple[str, ...]
    exp: float
    kid: str


def load_jwks(data: bytes) -> dict[str, tuple[str, PublicKey]]:
    """kid -> (alg, public key) of the EC P-256 / RSA signing keys of a JWK set.

    Keys of other types (``oct`` above all: an HMAC secret is never a verification
    key here) or other algorithms are skipped. Raises ValueError for a malformed set.
    """
    doc = json.loads(data)
    if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list):
        raise ValueError("not a JWK set: expected an object with a 'keys' list")
    out: dict[str, tuple[str, PublicKey]] = {}
    for jwk in doc["keys"]:
        if not isinstance(jwk, dict) or not isinstance(jwk.get("kid"), str) or not jwk["kid"]:
            continue
        if jwk.get("kty") not in ("EC", "RSA") or jwk.get("use", "sig") != "sig":
            continue
        if "d" in jwk or "p" in jwk:  # a private key has no place in a published set
            continue
        default_alg = "ES256" if jwk["kty"] == "EC" else "RS256"
        alg = jwk.get("alg", default_alg)
        if alg not in ALGORITHMS or (jwk["kty"] == "EC" and jwk.get("crv") != "P-256"):
            continue
        try:
            key = jwt.PyJWK(jwk, algorithm=alg).key
        except (jwt.PyJWKError, jwt.InvalidKeyError, ValueError):
            continue
        out[jwk["kid"]] = (alg, key)
    return out


class _JwksFile:
    """An external issuer's JWK set file, reloaded when it changes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._sig: tuple[int, int, int] | None = None
        self._keys: dict[str, tuple[str, PublicKey]] = {}
        self._error = ""
        self._lock = threading.Lock()
        self.refresh()
        if self._error:
            raise ConfigError(
                f"cannot load JWKS {path}: {self._error}", field="[tokens].external_jwks_file"
            )

    def refresh(self) -> None:
        with self._lock:
            self._refresh()

    def _refresh(self) -> None:
        try:
            st = os.stat(self.path)
            sig = (st.st_ino, st.st_mtime_ns, st.st_size)
            if sig == self._sig:
                return
            data = self.path.read_bytes()
            keys = load_jwks(data)
        except (OSError, ValueError) as exc:
            # Deny on doubt: an unreadable set verifies nothing until it is fixed.
            self._keys, self._error, self._sig = {}, str(exc), None
            return
        self._keys, self._error, self._sig = keys, "", sig

    def get(self, kid: str) -> tuple[str, PublicKey] | None:
        self.refresh()
        if self._error:
            raise TokenKeySetError(f"external key set unavailable: {self._error}")
        return self._keys.get(kid)


def _as_tuple(value: str | tuple[str, ...], name: str) -> tuple[str, ...]:
    values = (value,) if isinstance(value, str) else tuple(value)
    if not values or not all(isinstance(v, str) and v for v in values):
        raise ValueError(f"{name} must be one or more non-empty strings")
    return values


class TokenVerifier:
    """Verifies service tokens against the key store and/or an external JWKS file."""

    def __init__(
        self,
        *,
        keys: KeyStore | None,
        jwks_file: Path | None = None,
        issuer: str | tuple[str, ...],
        audience: str | tuple[str, ...],
        leeway: float = 30.0,
        max_lifetime: float = 3600.0,
        clock: Clock,
        replay: ReplayCache,
    ) -> None:
        """Raises ValueError for a verifier that could accept nothing, ConfigError for an
        unreadable JWKS file."""
        if keys is None and jwks_file is None:
            raise ValueError("a token verifier needs a key store or a JWKS file")
        if leeway < 0 or max_lifetime <= 0:
            raise ValueError("leeway must be >= 0 and max_lifetime > 0")
        self._issuers = _as_tuple(issuer, "issuer")
        self._audiences = _as_tuple(audience, "audience")
        self._keys = keys
        self._jwks = _JwksFile(jwks_file) if jwks_file is not None else None
        self._leeway = leeway
        self._max_lifetime = max_lifetime
        self._clock = clock
        self._replay = replay

    def _key_for(self, kid: str) -> tuple[str, PublicKey]:
        if self._keys is not None:
            try:
                self._keys.reload_if_changed()
                found = self._keys.public_keys().get(kid)
            except KeyStoreError as exc:
                raise TokenKeySetError(f"key set unavailable: {exc.message}") from None
            if found is not None:  # own keys first: an external set cannot shadow them
                return found
        if self._jwks is not None:
            found = self._jwks.get(kid)
            if found is not None:
                return found
        raise TokenUnknownKeyError(f"unknown kid {kid[:64]!r}")

    def verify(self, token: str) -> VerifiedToken:
        """Verify ``token`` completely; raise a TokenError leaf naming the first failure."""
        if not isinstance(token, str) or not token:
            raise TokenMalformedError("empty token")
        if len(token) > MAX_TOKEN_BYTES:
            raise TokenMalformedError("token too large")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise TokenMalformedError(f"malformed token: {exc}") from None
        alg = header.get("alg")
        if alg not in ALGORITHMS:
            raise TokenAlgorithmError(f"algorithm {str(alg)[:20]!r} not allowed")
        if "crit" in header:
            raise TokenMalformedError("critical header extensions are not supported")
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise TokenUnknownKeyError("token has no kid")
        key_alg, key = self._key_for(kid)
        if alg != key_alg:
            raise TokenAlgorithmError(f"algorithm {alg} does not match key {kid!r} ({key_alg})")
        claims = self._decode(token, key, key_alg)
        return self._check_claims(claims, kid)

    def _decode(self, token: str, key: PublicKey, alg: str) -> dict[str, Any]:
        # PyJWT checks signature, iss, aud and presence; time is checked below with the
        # injected clock, since PyJWT would read the wall clock.
        options: dict[str, Any] = {
            "verify_signature": True,
            "verify_exp": False,
            "verify_nbf": False,
            "verify_iat": False,
            "verify_aud": True,
            "verify_iss": True,
            "require": list(_REQUIRED),
            "enforce_minimum_key_length": True,
        }
        try:
            return jwt.decode(
                token,
                key,
                algorithms=[alg],  # exactly the key's own algorithm: never HMAC
                audience=list(self._audiences),
                issuer=self._issuers,
                options=options,  # type: ignore[arg-type]
            )
        except jwt.InvalidSignatureError:
            raise TokenSignatureError("bad signature") from None
        except jwt.InvalidAudienceError:
            raise TokenAudienceError("wrong audience") from None
        except jwt.InvalidIssuerError:
            raise TokenIssuerError("wrong issuer") from None
        except jwt.MissingRequiredClaimError as exc:
            raise TokenMissingClaimError(f"missing claim {exc.claim!r}") from None
        except (jwt.exceptions.InvalidSubjectError, jwt.exceptions.InvalidJTIError):
            raise TokenMissingClaimError("claims 'sub' and 'jti' must be strings") from None
        except jwt.InvalidAlgorithmError:
            raise TokenAlgorithmError(f"algorithm not allowed for key ({alg})") from None
        except jwt.PyJWTError as exc:
            raise TokenMalformedError(f"malformed token: {exc}") from None

    def _check_claims(self, claims: dict[str, Any], kid: str) -> VerifiedToken:
        def number(name: str) -> float:
            value = claims.get(name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise TokenMissingClaimError(f"claim {name!r} must be a number")
            if not math.isfinite(value):
                raise TokenMissingClaimError(f"claim {name!r} must be finite")
            return float(value)

        for name in ("sub", "jti", "iss"):
            if not isinstance(claims.get(name), str) or not claims[name]:
                raise TokenMissingClaimError(f"claim {name!r} must be a non-empty string")
        if len(claims["jti"]) > MAX_JTI_CHARS:
            raise TokenMalformedError("jti too long")
        now, leeway = self._clock(), self._leeway
        exp, iat = number("exp"), number("iat")
        nbf = number("nbf") if "nbf" in claims else iat
        if now >= exp + leeway:
            raise TokenExpiredError("token expired")
        if iat > now + leeway:
            raise TokenNotYetValidError("token issued in the future (iat)")
        if nbf > now + leeway:
            raise TokenNotYetValidError("token not yet valid (nbf in the future)")
        if exp - iat > self._max_lifetime:
            raise TokenLifetimeError(f"token lifetime exceeds {self._max_lifetime:g} s")
        # Last, so that a token failing any other check never takes a replay slot.
        self._replay.check_and_remember(claims["iss"], claims["jti"], exp + leeway)
        aud = claims["aud"]
        return VerifiedToken(
            sub=claims["sub"],
            jti=claims["jti"],
            iss=claims["iss"],
            aud=(aud,) if isinstance(aud, str) else tuple(aud),
            exp=exp,
            kid=kid,
        )
