"""Bundle signatures: Ed25519 over the domain-separated digest; one test per attack."""

from __future__ import annotations

import base64
import hashlib
import os
import stat
from pathlib import Path

import pytest

from pdp.configuration import build_section
from pdp.errors import BundleSignatureError, ConfigError
from pdp.security import signing as signing_module
from pdp.security.signing import (
    BundleKeyError,
    BundleSigningConfig,
    BundleVerifier,
    SignatureFile,
    generate_bundle_key,
    load_public_key,
    read_signature,
    sign_digest,
)

DIGEST = hashlib.sha256(b"canonical bundle").hexdigest()


@pytest.fixture
def key_a(tmp_path: Path) -> tuple[Path, Path]:
    generate_bundle_key(tmp_path / "a.key", tmp_path / "a.pub")
    return tmp_path / "a.key", tmp_path / "a.pub"


@pytest.fixture
def key_b(tmp_path: Path) -> tuple[Path, Path]:
    generate_bundle_key(tmp_path / "b.key", tmp_path / "b.pub")
    return tmp_path / "b.key", tmp_path / "b.pub"


@pytest.fixture
def verifier(key_a: tuple[Path, Path]) -> BundleVerifier:
    return BundleVerifier({"release-2025": load_public_key(key_a[1])})


def test_exported_names() -> None:
    assert set(signing_module.__all__) == {
        "DOMAIN", "BundleKeyError", "BundleSigningConfig", "BundleVerifier", "SignatureFile",
        "generate_bundle_key", "key_fingerprint", "load_public_key", "read_signature",
        "sign_digest", "signed_message", "valid_key_id",
    }


def test_good_signature_verifies(verifier: BundleVerifier, key_a: tuple[Path, Path]) -> None:
    signature = sign_digest(DIGEST, key_a[0])
    assert len(signature) == 64
    assert verifier.verify(DIGEST, signature, "release-2025") == "release-2025"


def test_keygen_writes_private_key_0600_and_never_overwrites(key_a: tuple[Path, Path]) -> None:
    private, public = key_a
    assert stat.S_IMODE(os.stat(private).st_mode) == 0o600
    assert b"PRIVATE KEY" in private.read_bytes() and b"PUBLIC KEY" in public.read_bytes()
    before = private.read_bytes()
    with pytest.raises(BundleKeyError, match="cannot write"):
        generate_bundle_key(private, public.with_name("other.pub"))
    assert private.read_bytes() == before


def test_signature_is_domain_separated(verifier: BundleVerifier, key_a: tuple[Path, Path]) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = serialization.load_pem_private_key(key_a[0].read_bytes(), password=None)
    assert isinstance(key, Ed25519PrivateKey)
    raw = key.sign(DIGEST.encode())  # a signature over the bare digest: another protocol's
    with pytest.raises(BundleSignatureError, match="bad signature"):
        verifier.verify(DIGEST, raw, "release-2025")


def test_attack_digest_changed_by_one_byte(verifier: BundleVerifier,
                                           key_a: tuple[Path, Path]) -> None:
    signature = sign_digest(DIGEST, key_a[0])
    changed = ("0" if DIGEST[0] != "0" else "1") + DIGEST[1:]
    with pytest.raises(BundleSignatureError, match="bad signature"):
        verifier.verify(changed, signature, "release-2025")


def test_attack_signature_changed_by_one_bit(verifier: BundleVerifier,
                                             key_a: tuple[Path, Path]) -> None:
    signature = bytearray(sign_digest(DIGEST, key_a[0]))
    signature[10] ^= 0x01
    with pytest.raises(BundleSignatureError, match="bad signature"):
        verifier.verify(DIGEST, bytes(signature), "release-2025")


def test_attack_wrong_key_id(verifier: BundleVerifier, key_a: tuple[Path, Path]) -> None:
    signature = sign_digest(DIGEST, key_a[0])
    with pytest.raises(BundleSignatureError, match="unknown key id 'release-2024'"):
        verifier.verify(DIGEST, signature, "release-2024")


def test_attack_signed_by_an_untrusted_key_under_a_trusted_id(
    verifier: BundleVerifier, key_b: tuple[Path, Path]
) -> None:
    with pytest.raises(BundleSignatureError, match="bad signature"):
        verifier.verify(DIGEST, sign_digest(DIGEST, key_b[0]), "release-2025")


def test_attack_unsigned_bundle_when_required(verifier: BundleVerifier) -> None:
    for signature, key_id in [(None, None), (b"", ""), (b"", None)]:
        with pytest.raises(BundleSignatureError, match="unsigned bundle"):
            verifier.verify(DIGEST, signature, key_id)
    with pytest.raises(BundleSignatureError, match="without a signature"):
        verifier.verify(DIGEST, b"", "release-2025")
    with pytest.raises(BundleSignatureError, match="without a key id"):
        verifier.verify(DIGEST, b"x" * 64, "")


def test_unsigned_passes_when_not_required_but_a_bad_signature_still_fails(
    key_a: tuple[Path, Path], key_b: tuple[Path, Path]
) -> None:
    relaxed = BundleVerifier({"a": load_public_key(key_a[1])}, required=False)
    assert relaxed.verify(DIGEST, None, None) is None
    with pytest.raises(BundleSignatureError, match="bad signature"):
        relaxed.verify(DIGEST, sign_digest(DIGEST, key_b[0]), "a")
    with pytest.raises(BundleSignatureError, match="unknown key id"):
        relaxed.verify(DIGEST, sign_digest(DIGEST, key_b[0]), "b")
    assert BundleVerifier({}, required=False).verify(DIGEST, None, None) is None


def test_two_trusted_keys_at_once_for_rotation(key_a: tuple[Path, Path],
                                               key_b: tuple[Path, Path]) -> None:
    both = BundleVerifier({"old": load_public_key(key_a[1]), "new": load_public_key(key_b[1])})
    assert both.key_ids == ("new", "old")
    assert both.verify(DIGEST, sign_digest(DIGEST, key_a[0]), "old") == "old"
    assert both.verify(DIGEST, sign_digest(DIGEST, key_b[0]), "new") == "new"
    with pytest.raises(BundleSignatureError, match="bad signature"):  # keys are not interchangeable
        both.verify(DIGEST, sign_digest(DIGEST, key_a[0]), "new")


def test_required_without_trusted_keys_refuses_to_start() -> None:
    with pytest.raises(ValueError, match="no signing key is trusted"):
        BundleVerifier({})
    with pytest.raises(ConfigError, match=r"\[bundles\].trusted_keys"):
        BundleVerifier.from_config(BundleSigningConfig())


def test_from_config_section(key_a: tuple[Path, Path], key_b: tuple[Path, Path]) -> None:
    cfg = build_section(BundleSigningConfig,
                        {"trusted_keys": {"old": str(key_a[1]), "new": str(key_b[1])}},
                        where="[bundles]")
    v = BundleVerifier.from_config(cfg)
    assert v.required and v.key_ids == ("new", "old")
    with pytest.raises(ConfigError, match="bad bundle key id"):
        build_section(BundleSigningConfig, {"trusted_keys": {"../x": "p"}}, where="[bundles]")
    with pytest.raises(BundleKeyError, match=r"cannot load bundle public key"):
        BundleVerifier.from_config(BundleSigningConfig(trusted_keys={"k": key_a[0]}))


def test_malformed_digest_is_refused(verifier: BundleVerifier, key_a: tuple[Path, Path]) -> None:
    with pytest.raises(ValueError, match="64 lowercase hex"):
        sign_digest(DIGEST.upper(), key_a[0])
    with pytest.raises(BundleSignatureError, match="bad signature"):
        verifier.verify("zz", sign_digest(DIGEST, key_a[0]), "release-2025")


def test_group_readable_private_key_is_refused(key_a: tuple[Path, Path]) -> None:
    os.chmod(key_a[0], 0o640)
    with pytest.raises(BundleKeyError, match="readable by others"):
        sign_digest(DIGEST, key_a[0])


def test_signature_file_formats(key_a: tuple[Path, Path]) -> None:
    signature = sign_digest(DIGEST, key_a[0])
    parsed = read_signature(SignatureFile(signature, "k1", DIGEST).to_bytes())
    assert parsed == SignatureFile(signature, "k1", DIGEST)
    assert read_signature(base64.b64encode(signature) + b"\n") == SignatureFile(signature)
    assert read_signature(signature) == SignatureFile(signature)
    for bad in [b"not base64!", base64.b64encode(b"short"), b'{"signature": 5}', b"{"]:
        with pytest.raises(BundleSignatureError):
            read_signature(bad)
