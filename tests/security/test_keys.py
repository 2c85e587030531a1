"""Signing keys on disk: creation, rotation, retirement, reload, and unsafe key directories."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from pdp.clock import FakeClock
from pdp.configuration import build_section
from pdp.errors import ConfigError
from pdp.security import keys as keys_module
from pdp.security.keys import KeyConfig, KeyStore, KeyStoreError


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(1_800_000_000.0)


@pytest.fixture
def store(tmp_path: Path, clock: FakeClock) -> KeyStore:
    return KeyStore(KeyConfig(dir=tmp_path / "keys"), clock=clock)


def test_exported_names() -> None:
    assert set(keys_module.__all__) == {
        "ALGORITHMS", "KeyConfig", "KeyInfo", "KeyStore", "KeyStoreError", "PrivateKey",
        "PublicKey", "SigningKey", "atomic_write", "public_jwk",
    }


def test_config_from_toml_table_and_checks() -> None:
    cfg = build_section(KeyConfig, {"dir": "/k", "algorithm": "RS256"}, where="[keys]")
    assert cfg == KeyConfig(dir=Path("/k"), algorithm="RS256")
    with pytest.raises(ConfigError, match=r"\[keys\].algorithm"):
        build_section(KeyConfig, {"algorithm": "HS256"}, where="[keys]")
    with pytest.raises(ConfigError, match="max_token_ttl must be positive"):
        build_section(KeyConfig, {"max_token_ttl": 0}, where="[keys]")
    with pytest.raises(ConfigError, match="leeway"):
        build_section(KeyConfig, {"leeway": -1}, where="[keys]")


def test_ensure_active_creates_one_private_key_0600_and_metadata(store: KeyStore) -> None:
    kid = store.ensure_active()
    assert store.ensure_active() == kid  # idempotent
    d = store.config.dir
    assert stat.S_IMODE(os.stat(d / f"{kid}.pem").st_mode) == 0o600
    assert stat.S_IMODE(os.stat(d).st_mode) == 0o700
    meta = json.loads((d / f"{kid}.json").read_text())
    assert meta["kid"] == kid and meta["alg"] == "ES256" and meta["active"] is True
    assert meta["created_at"] == 1_800_000_000.0 and meta["retired_at"] is None
    assert not [p for p in d.iterdir() if p.name.startswith(".tmp-")]
    active = store.active()
    assert active.kid == kid and isinstance(active.private_key, ec.EllipticCurvePrivateKey)
    assert "PrivateKey" not in repr(active) and "private_key" not in repr(active)


def test_active_without_any_key_raises(store: KeyStore) -> None:
    with pytest.raises(KeyStoreError, match="no active signing key"):
        store.active()


def test_rotation_keeps_previous_key_until_its_tokens_expire(
    store: KeyStore, clock: FakeClock
) -> None:
    k1 = store.ensure_active()
    clock.advance(1000)
    k2 = store.rotate()
    assert k2 != k1 and store.active().kid == k2
    info1 = {i.kid: i for i in store.key_infos()}[k1]
    assert info1.status == "previous"
    assert info1.not_used_after == clock() + 300 + 30
    assert set(store.public_keys()) == {k1, k2}
    assert {k["kid"] for k in store.jwks()["keys"]} == {k1, k2}

    clock.advance(329)
    assert store.prune() == []  # a token signed just before rotation is still valid
    assert set(store.public_keys()) == {k1, k2}
    clock.advance(1)
    assert set(store.public_keys()) == {k2}  # out of the key set even before prune
    assert store.prune() == [k1]
    assert not (store.config.dir / f"{k1}.pem").exists()  # private key destroyed
    assert {i.kid: i.status for i in store.key_infos()} == {k1: "retired", k2: "active"}
    assert store.prune() == []


def test_jwks_is_rfc7517_without_private_parts(store: KeyStore) -> None:
    kid = store.ensure_active()
    (jwk,) = store.jwks()["keys"]
    assert jwk["kid"] == kid and jwk["alg"] == "ES256" and jwk["use"] == "sig"
    assert jwk["kty"] == "EC" and jwk["crv"] == "P-256" and {"x", "y"} <= set(jwk)
    assert "d" not in jwk


def test_rs256_keys(tmp_path: Path, clock: FakeClock) -> None:
    store = KeyStore(KeyConfig(dir=tmp_path, algorithm="RS256"), clock=clock)
    store.ensure_active()
    key = store.active()
    assert key.alg == "RS256" and isinstance(key.private_key, rsa.RSAPrivateKey)
    assert key.private_key.key_size >= 3072
    (jwk,) = store.jwks()["keys"]
    assert jwk["kty"] == "RSA" and jwk["alg"] == "RS256" and "d" not in jwk


def test_reload_picks_up_rotation_by_another_process(tmp_path: Path, clock: FakeClock) -> None:
    server = KeyStore(KeyConfig(dir=tmp_path), clock=clock)
    k1 = server.ensure_active()
    assert server.reload_if_changed() is False
    cli = KeyStore(KeyConfig(dir=tmp_path), clock=clock)  # `pdp keys rotate` elsewhere
    k2 = cli.rotate()
    assert server.active().kid == k1  # not yet seen
    assert server.reload_if_changed() is True
    assert server.active().kid == k2
    assert server.reload_if_changed() is False


def test_group_readable_private_key_is_refused(store: KeyStore) -> None:
    kid = store.ensure_active()
    os.chmod(store.config.dir / f"{kid}.pem", 0o644)
    fresh = KeyStore(store.config, clock=FakeClock())
    with pytest.raises(KeyStoreError, match="readable by others"):
        fresh.active()


def test_metadata_with_foreign_kid_is_refused(store: KeyStore) -> None:
    kid = store.ensure_active()
    path = store.config.dir / f"{kid}.json"
    meta = json.loads(path.read_text())
    meta["kid"] = "../../etc/passwd"
    path.write_text(json.dumps(meta))
    with pytest.raises(KeyStoreError, match="does not match its file name"):
        store.reload_if_changed()


def test_metadata_with_hmac_algorithm_is_refused(store: KeyStore) -> None:
    kid = store.ensure_active()
    path = store.config.dir / f"{kid}.json"
    meta = json.loads(path.read_text())
    meta["alg"] = "HS256"
    path.write_text(json.dumps(meta))
    with pytest.raises(KeyStoreError, match="not allowed"):
        store.reload_if_changed()


def test_key_of_wrong_type_for_its_algorithm_is_refused(store: KeyStore) -> None:
    kid = store.ensure_active()
    path = store.config.dir / f"{kid}.json"
    meta = json.loads(path.read_text())
    meta["alg"] = "RS256"  # an EC key posing as RSA
    path.write_text(json.dumps(meta))
    with pytest.raises(KeyStoreError, match="RS256 needs an RSA key"):
        store.reload_if_changed()


def test_missing_private_key_is_refused_and_old_state_kept(store: KeyStore) -> None:
    kid = store.ensure_active()
    os.unlink(store.config.dir / f"{kid}.pem")
    with pytest.raises(KeyStoreError, match="missing"):
        store.reload_if_changed()
    assert store.active().kid == kid  # the last good state still serves


def test_atomic_write_leaves_no_temp_file_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "missing-dir" / "x.json"
    with pytest.raises(OSError):
        keys_module.atomic_write(target, b"{}", mode=0o600)
    keys_module.atomic_write(tmp_path / "x.json", b"{}", mode=0o600)
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"]


def test_retire_a_compromised_previous_key_at_once(store: KeyStore, clock: FakeClock) -> None:
    k1 = store.ensure_active()
    k2 = store.rotate()
    with pytest.raises(KeyStoreError, match="active key: rotate first"):
        store.retire(k2)
    with pytest.raises(KeyStoreError, match="no key"):
        store.retire("nope")
    store.retire(k1)
    assert set(store.public_keys()) == {k2}
    assert not (store.config.dir / f"{k1}.pem").exists()
    assert {i.kid: i.status for i in store.key_infos()} == {k1: "retired", k2: "active"}
