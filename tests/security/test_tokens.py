"""Service tokens: issuing, the full key-rotation cycle, and one regression test per attack."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from pdp.clock import FakeClock
from pdp.errors import ConfigError, TokenError
from pdp.security import tokens as tokens_module
from pdp.security.keys import KeyConfig, KeyStore, public_jwk
from pdp.security.tokens import (
    ReplayCache,
    ReplayCacheFullError,
    TokenIssuer,
    TokenReplayError,
    TokenVerifier,
)

ISS = "spiffe://pdp.test/pdp"
AUD = "spiffe://pdp.test/svc/b"
SUB = "spiffe://pdp.test/svc/a"


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(1_800_000_000.0)


@pytest.fixture
def store(tmp_path: Path, clock: FakeClock) -> KeyStore:
    s = KeyStore(KeyConfig(dir=tmp_path / "keys"), clock=clock)
    s.ensure_active()
    return s


@pytest.fixture
def issuer(store: KeyStore, clock: FakeClock) -> TokenIssuer:
    return TokenIssuer(store, issuer=ISS, clock=clock)


def make_verifier(store: KeyStore | None, clock: FakeClock, **kw: Any) -> TokenVerifier:
    args: dict[str, Any] = {"issuer": ISS, "audience": AUD, "leeway": 30.0}
    args.update(kw)
    return TokenVerifier(keys=store, clock=clock, replay=ReplayCache(clock=clock), **args)


@pytest.fixture
def verifier(store: KeyStore, clock: FakeClock) -> TokenVerifier:
    return make_verifier(store, clock)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def claims(clock: FakeClock, **over: Any) -> dict[str, Any]:
    now = int(clock())
    c: dict[str, Any] = {"iss": ISS, "sub": SUB, "aud": AUD, "iat": now, "nbf": now,
                         "exp": now + 60, "jti": "jti-" + str(now)}
    c.update(over)
    return {k: v for k, v in c.items() if v is not None}


def sign_with_store(store: KeyStore, payload: dict[str, Any], **headers: Any) -> str:
    key = store.active()
    return jwt.encode(payload, key.private_key, algorithm=key.alg,
                      headers={"kid": key.kid, **headers})


class Rejection:
    """What a rejected token raised: the machine-readable code and the reason."""

    def __init__(self, exc: TokenError) -> None:
        self.code: str = getattr(exc, "code", "")
        self.reason = exc.reason


def rejected(verifier: TokenVerifier, token: str) -> Rejection:
    with pytest.raises(TokenError) as info:
        verifier.verify(token)
    return Rejection(info.value)


def test_exported_names() -> None:
    assert set(tokens_module.__all__) == {
        "IssuedToken", "ReplayCache", "ReplayCacheFullError", "TokenAlgorithmError",
        "TokenAudienceError", "TokenExpiredError", "TokenIssuer", "TokenIssuerError",
        "TokenKeySetError", "TokenLifetimeError", "TokenMalformedError",
        "TokenMissingClaimError", "TokenNotYetValidError", "TokenReplayError",
        "TokenSignatureError", "TokenUnknownKeyError", "TokenVerifier", "VerifiedToken",
        "load_jwks",
    }


# --- issuing and the happy path ---------------------------------------------------------------


def test_issue_and_verify(issuer: TokenIssuer, verifier: TokenVerifier, store: KeyStore,
                          clock: FakeClock) -> None:
    issued = issuer.issue(SUB, AUD, ttl=60)
    header = jwt.get_unverified_header(issued.token)
    assert header["kid"] == issued.kid == store.active().kid and header["alg"] == "ES256"
    c = issued.claims
    assert c["iss"] == ISS and c["sub"] == SUB and c["aud"] == AUD
    assert c["iat"] == c["nbf"] == int(clock()) and c["exp"] == issued.expires_at == c["iat"] + 60
    assert len(base64.urlsafe_b64decode(issued.jti + "==")) == 16  # 128 random bits
    assert issued.token not in repr(issued)
    v = verifier.verify(issued.token)
    assert (v.sub, v.jti, v.iss, v.aud, v.kid) == (SUB, issued.jti, ISS, (AUD,), issued.kid)
    assert issuer.issue(SUB, AUD).jti != issued.jti


def test_ttl_is_capped_at_max_token_ttl(issuer: TokenIssuer, clock: FakeClock) -> None:
    assert issuer.issue(SUB, AUD, ttl=10_000).expires_at == int(clock()) + 300
    assert issuer.issue(SUB, AUD).expires_at == int(clock()) + 300
    with pytest.raises(ValueError, match="ttl"):
        issuer.issue(SUB, AUD, ttl=0)
    with pytest.raises(ValueError, match="empty"):
        issuer.issue("", AUD)


def test_rs256_works(tmp_path: Path, clock: FakeClock) -> None:
    store = KeyStore(KeyConfig(dir=tmp_path, algorithm="RS256"), clock=clock)
    store.ensure_active()
    token = TokenIssuer(store, issuer=ISS, clock=clock).issue(SUB, AUD).token
    assert jwt.get_unverified_header(token)["alg"] == "RS256"
    assert make_verifier(store, clock).verify(token).sub == SUB


def test_full_key_rotation_cycle(store: KeyStore, issuer: TokenIssuer,
                                 clock: FakeClock) -> None:
    k1 = store.active().kid
    t1 = issuer.issue(SUB, AUD, ttl=300)
    clock.advance(10)
    k2 = store.rotate()
    t2 = issuer.issue(SUB, AUD, ttl=300)
    assert (t1.kid, t2.kid) == (k1, k2)
    assert {k["kid"] for k in store.jwks()["keys"]} == {k1, k2}
    clock.advance(280)  # t1 still within its lifetime: key 1 still verifies
    assert make_verifier(store, clock).verify(t1.token).kid == k1
    clock.advance(40)  # past t1's exp + leeway: t1 is dead, key 1 still published
    assert rejected(make_verifier(store, clock), t1.token).code == "expired"
    assert store.prune() == []  # key 1 was deactivated 10 s after t1: 10 s to go
    clock.advance(10)
    assert store.prune() == [k1]
    assert {k["kid"] for k in store.jwks()["keys"]} == {k2}
    assert rejected(make_verifier(store, clock), t1.token).code == "unknown_kid"
    assert make_verifier(store, clock).verify(issuer.issue(SUB, AUD).token).kid == k2
    assert t2.kid == k2


def test_rotation_by_the_cli_is_picked_up_by_a_running_server(
    tmp_path: Path, clock: FakeClock
) -> None:
    server_keys = KeyStore(KeyConfig(dir=tmp_path), clock=clock)
    server_keys.ensure_active()
    server_issuer = TokenIssuer(server_keys, issuer=ISS, clock=clock)
    server_verifier = make_verifier(server_keys, clock)
    old = server_issuer.issue(SUB, AUD)
    new_kid = KeyStore(KeyConfig(dir=tmp_path), clock=clock).rotate()
    fresh = server_issuer.issue(SUB, AUD)
    assert fresh.kid == new_kid != old.kid
    assert server_verifier.verify(old.token).kid == old.kid
    assert server_verifier.verify(fresh.token).kid == new_kid


# --- one regression test per attack --------------------------------------------------------------


def test_attack_forged_signature_with_another_key(verifier: TokenVerifier, store: KeyStore,
                                                  clock: FakeClock) -> None:
    attacker = ec.generate_private_key(ec.SECP256R1())
    token = jwt.encode(claims(clock), attacker, algorithm="ES256",
                       headers={"kid": store.active().kid})
    err = rejected(verifier, token)
    assert err.code == "bad_signature" and err.reason == "bad signature"


def test_attack_tampered_payload(issuer: TokenIssuer, verifier: TokenVerifier) -> None:
    header, payload, sig = issuer.issue(SUB, AUD).token.split(".")
    body = json.loads(base64.urlsafe_b64decode(payload + "=="))
    body["sub"] = "spiffe://pdp.test/admin"
    token = ".".join([header, b64(json.dumps(body).encode()), sig])
    assert rejected(verifier, token).code == "bad_signature"


def test_attack_wrong_audience(issuer: TokenIssuer, verifier: TokenVerifier) -> None:
    token = issuer.issue(SUB, "spiffe://pdp.test/svc/other").token
    err = rejected(verifier, token)
    assert err.code == "wrong_audience" and err.reason == "wrong audience"


def test_attack_wrong_issuer(store: KeyStore, verifier: TokenVerifier, clock: FakeClock) -> None:
    token = TokenIssuer(store, issuer="https://evil.example", clock=clock).issue(SUB, AUD).token
    err = rejected(verifier, token)
    assert err.code == "wrong_issuer" and err.reason == "wrong issuer"


def test_attack_expired_token(issuer: TokenIssuer, verifier: TokenVerifier,
                              clock: FakeClock) -> None:
    token = issuer.issue(SUB, AUD, ttl=60).token
    clock.advance(60 + 30)  # exp + leeway
    err = rejected(verifier, token)
    assert err.code == "expired" and err.reason == "token expired"


def test_expired_token_within_leeway_still_verifies(issuer: TokenIssuer, verifier: TokenVerifier,
                                                    clock: FakeClock) -> None:
    token = issuer.issue(SUB, AUD, ttl=60).token
    clock.advance(60 + 29)
    assert verifier.verify(token).sub == SUB


def test_attack_not_yet_valid_token(store: KeyStore, verifier: TokenVerifier,
                                    clock: FakeClock) -> None:
    token = sign_with_store(store, claims(clock, nbf=int(clock()) + 120))
    err = rejected(verifier, token)
    assert err.code == "not_yet_valid" and "nbf" in err.reason
    # A token from an issuer whose clock runs ahead (iat = nbf in the future).
    future = FakeClock(clock() + 120)
    token = TokenIssuer(store, issuer=ISS, clock=future).issue(SUB, AUD).token
    assert rejected(verifier, token).code == "not_yet_valid"


def test_attack_iat_in_the_future(store: KeyStore, verifier: TokenVerifier,
                                  clock: FakeClock) -> None:
    token = sign_with_store(store, claims(clock, nbf=None, iat=int(clock()) + 600,
                                          exp=int(clock()) + 900))
    err = rejected(verifier, token)
    assert err.code == "not_yet_valid" and "iat" in err.reason


def test_attack_replayed_jti(issuer: TokenIssuer, verifier: TokenVerifier) -> None:
    token = issuer.issue(SUB, AUD).token
    verifier.verify(token)
    with pytest.raises(TokenReplayError) as info:
        verifier.verify(token)
    assert info.value.code == "replayed_jti" and info.value.jti
    assert "replay" in info.value.reason


def test_attack_replay_inside_the_leeway_window(issuer: TokenIssuer, verifier: TokenVerifier,
                                                clock: FakeClock) -> None:
    token = issuer.issue(SUB, AUD, ttl=60).token
    verifier.verify(token)
    clock.advance(60 + 20)  # past exp, within leeway: must still count as a replay
    with pytest.raises(TokenReplayError):
        verifier.verify(token)


def test_attack_concurrent_replay_only_one_wins(issuer: TokenIssuer,
                                                verifier: TokenVerifier) -> None:
    token = issuer.issue(SUB, AUD).token
    results: list[str] = []
    barrier = threading.Barrier(8)

    def go() -> None:
        barrier.wait()
        try:
            verifier.verify(token)
            results.append("ok")
        except TokenReplayError:
            results.append("replay")

    threads = [threading.Thread(target=go) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == ["ok"] + ["replay"] * 7


def test_attack_alg_none(store: KeyStore, verifier: TokenVerifier, clock: FakeClock) -> None:
    header = {"alg": "none", "typ": "JWT", "kid": store.active().kid}
    token = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims(clock)).encode())}."
    err = rejected(verifier, token)
    assert err.code == "alg_not_allowed" and "'none' not allowed" in err.reason


@pytest.mark.parametrize("secret_form", ["pem", "jwk"])
def test_attack_hs256_with_public_key_as_secret(store: KeyStore, verifier: TokenVerifier,
                                                clock: FakeClock, secret_form: str) -> None:
    kid = store.active().kid
    public = store.public_keys()[kid][1]
    if secret_form == "pem":
        secret = public.public_bytes(serialization.Encoding.PEM,
                                     serialization.PublicFormat.SubjectPublicKeyInfo)
    else:
        secret = json.dumps(store.jwks()["keys"][0]).encode()
    signing_input = (f"{b64(json.dumps({'alg': 'HS256', 'typ': 'JWT', 'kid': kid}).encode())}."
                     f"{b64(json.dumps(claims(clock)).encode())}")
    mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    err = rejected(verifier, f"{signing_input}.{b64(mac)}")
    assert err.code == "alg_not_allowed" and "'HS256' not allowed" in err.reason


def test_attack_rs256_header_on_an_es256_key(store: KeyStore, verifier: TokenVerifier,
                                             clock: FakeClock) -> None:
    attacker = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    token = jwt.encode(claims(clock), attacker, algorithm="RS256",
                       headers={"kid": store.active().kid})
    err = rejected(verifier, token)
    assert err.code == "alg_not_allowed" and "does not match key" in err.reason


def test_attack_unknown_kid(verifier: TokenVerifier, clock: FakeClock) -> None:
    attacker = ec.generate_private_key(ec.SECP256R1())
    token = jwt.encode(claims(clock), attacker, algorithm="ES256", headers={"kid": "nope"})
    err = rejected(verifier, token)
    assert err.code == "unknown_kid" and err.reason == "unknown kid 'nope'"
    token = jwt.encode(claims(clock), attacker, algorithm="ES256")
    assert rejected(verifier, token).reason == "token has no kid"


def test_attack_malformed_tokens(verifier: TokenVerifier) -> None:
    for bad in ["", "abc", "a.b.c", "x" * 10_000, "eyJhbGciOiJFUzI1NiJ9.!!.sig"]:
        assert rejected(verifier, bad).code == "malformed", bad


def test_attack_missing_claims(store: KeyStore, verifier: TokenVerifier,
                               clock: FakeClock) -> None:
    for claim in ("jti", "sub", "exp", "iat", "aud", "iss"):
        err = rejected(verifier, sign_with_store(store, claims(clock, **{claim: None})))
        assert err.code == "missing_claim" and claim in err.reason, claim
    err = rejected(verifier, sign_with_store(store, claims(clock, exp="soon")))
    assert err.code == "missing_claim"


def test_attack_overlong_lifetime(store: KeyStore, verifier: TokenVerifier,
                                  clock: FakeClock) -> None:
    token = sign_with_store(store, claims(clock, exp=int(clock()) + 30 * 86400))
    assert rejected(verifier, token).code == "lifetime_too_long"


def test_attack_critical_header_extension(store: KeyStore, verifier: TokenVerifier,
                                          clock: FakeClock) -> None:
    token = sign_with_store(store, claims(clock), crit=["exp"])
    assert rejected(verifier, token).code == "malformed"


# --- external issuers ---------------------------------------------------------------------------


def write_jwks(path: Path, *entries: dict[str, Any]) -> None:
    path.write_text(json.dumps({"keys": list(entries)}))


def test_external_issuer_jwks_file_and_its_rotation(tmp_path: Path, clock: FakeClock) -> None:
    jwks = tmp_path / "idp.jwks.json"
    k1, k2 = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    write_jwks(jwks, public_jwk("idp-1", "ES256", k1.public_key()))
    v = make_verifier(None, clock, jwks_file=jwks, issuer=("https://idp.test", ISS))
    c = claims(clock, iss="https://idp.test")
    token1 = jwt.encode(c, k1, algorithm="ES256", headers={"kid": "idp-1"})
    assert v.verify(token1).iss == "https://idp.test"
    # The issuer rotates: the file is rewritten with only the new key.
    write_jwks(jwks, public_jwk("idp-2", "ES256", k2.public_key()))
    again = jwt.encode(claims(clock, iss="https://idp.test", jti="other"), k1,
                       algorithm="ES256", headers={"kid": "idp-1"})
    assert rejected(v, again).code == "unknown_kid"
    token2 = jwt.encode({**c, "jti": "third"}, k2, algorithm="ES256", headers={"kid": "idp-2"})
    assert v.verify(token2).kid == "idp-2"


def test_attack_hmac_key_in_external_jwks_is_never_used(tmp_path: Path,
                                                        clock: FakeClock) -> None:
    jwks = tmp_path / "idp.jwks.json"
    secret = b"s" * 32
    write_jwks(jwks, {"kty": "oct", "kid": "h", "alg": "HS256", "k": b64(secret)})
    v = make_verifier(None, clock, jwks_file=jwks)
    token = jwt.encode(claims(clock), secret, algorithm="HS256", headers={"kid": "h"})
    assert rejected(v, token).code == "alg_not_allowed"
    assert tokens_module.load_jwks(jwks.read_bytes()) == {}


def test_attack_external_jwks_cannot_shadow_own_kid(store: KeyStore, tmp_path: Path,
                                                    clock: FakeClock) -> None:
    kid = store.active().kid
    attacker = ec.generate_private_key(ec.SECP256R1())
    jwks = tmp_path / "idp.jwks.json"
    write_jwks(jwks, public_jwk(kid, "ES256", attacker.public_key()))
    v = make_verifier(store, clock, jwks_file=jwks)
    token = jwt.encode(claims(clock), attacker, algorithm="ES256", headers={"kid": kid})
    assert rejected(v, token).code == "bad_signature"


def test_corrupt_external_jwks_denies_its_tokens(tmp_path: Path, clock: FakeClock) -> None:
    jwks = tmp_path / "idp.jwks.json"
    key = ec.generate_private_key(ec.SECP256R1())
    write_jwks(jwks, public_jwk("idp-1", "ES256", key.public_key()))
    v = make_verifier(None, clock, jwks_file=jwks)
    jwks.write_text('{"keys": [')  # half-written
    token = jwt.encode(claims(clock), key, algorithm="ES256", headers={"kid": "idp-1"})
    assert rejected(v, token).code == "key_set_unavailable"


# --- the replay cache -------------------------------------------------------------------------


def test_replay_cache_full_fails_closed_then_recovers(clock: FakeClock) -> None:
    cache = ReplayCache(2, clock=clock)
    cache.check_and_remember(ISS, "a", clock() + 10)
    cache.check_and_remember(ISS, "b", clock() + 100)
    with pytest.raises(ReplayCacheFullError, match="replay cache full"):
        cache.check_and_remember(ISS, "c", clock() + 10)
    clock.advance(10)  # "a" has expired: its slot is free again
    cache.check_and_remember(ISS, "c", clock() + 10)
    assert len(cache) == 2
    with pytest.raises(TokenReplayError):
        cache.check_and_remember(ISS, "b", clock() + 100)
    with pytest.raises(ValueError):
        ReplayCache(0, clock=clock)


def test_replay_is_per_issuer(clock: FakeClock) -> None:
    cache = ReplayCache(clock=clock)
    cache.check_and_remember(ISS, "same", clock() + 10)
    cache.check_and_remember("https://idp.test", "same", clock() + 10)
    with pytest.raises(TokenReplayError):
        cache.check_and_remember(ISS, "same", clock() + 10)


def test_verifier_needs_a_key_source(clock: FakeClock) -> None:
    with pytest.raises(ValueError, match="key store or a JWKS file"):
        TokenVerifier(keys=None, issuer=ISS, audience=AUD, clock=clock,
                      replay=ReplayCache(clock=clock))
    with pytest.raises(ValueError, match="audience"):
        TokenVerifier(keys=None, jwks_file=Path("x"), issuer=ISS, audience=(), clock=clock,
                      replay=ReplayCache(clock=clock))


def test_unreadable_jwks_file_refuses_to_start(tmp_path: Path, clock: FakeClock) -> None:
    with pytest.raises(ConfigError, match=r"\[tokens\].external_jwks_file"):
        make_verifier(None, clock, jwks_file=tmp_path / "missing.json")


def test_retired_compromised_key_stops_verifying_on_a_running_server(
    tmp_path: Path, clock: FakeClock
) -> None:
    server_keys = KeyStore(KeyConfig(dir=tmp_path), clock=clock)
    server_keys.ensure_active()
    issued = TokenIssuer(server_keys, issuer=ISS, clock=clock).issue(SUB, AUD)
    verifier = make_verifier(server_keys, clock)
    cli = KeyStore(KeyConfig(dir=tmp_path), clock=clock)
    cli.rotate()
    cli.retire(issued.kid)  # `pdp keys retire KID` after a compromise
    assert rejected(verifier, issued.token).code == "unknown_kid"
