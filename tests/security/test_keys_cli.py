"""The key commands as a user runs them: `pdp keys rotate|list|prune`, `pdp bundle keygen|sign`."""

from __future__ import annotations

import argparse
import json
import os
import stat
import time
from pathlib import Path

import pytest

from pdp.clock import FakeClock
from pdp.security import key_commands
from pdp.security.keys import KeyConfig, KeyStore
from pdp.security.signing import BundleVerifier, load_public_key, read_signature

EXAMPLE_BUNDLE = Path(__file__).resolve().parents[2] / "examples" / "bundle.yaml"


def run(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="pdp")
    sub = parser.add_subparsers(dest="command", required=True)
    key_commands.register(sub)
    bundle = sub.add_parser("bundle")
    key_commands.register_bundle_signing(bundle.add_subparsers(dest="bundle_command"))
    args = parser.parse_args(list(argv))
    code: int = args.func(args)
    return code


def test_exported_names() -> None:
    assert set(key_commands.__all__) == {"register", "register_bundle_signing"}


def test_keys_rotate_list_prune(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = str(tmp_path / "keys")
    assert run("keys", "rotate", "--dir", d) == 0
    out = capsys.readouterr().out
    assert out.startswith("created first key: ")
    first = out.split(": ")[1].strip()
    assert run("keys", "rotate", "--dir", d) == 0
    out = capsys.readouterr().out
    assert out.startswith("active key: ")
    second = out.split(": ")[1].strip()
    assert second != first and (Path(d) / f"{second}.pem").exists()
    assert run("keys", "list", "--dir", d) == 0
    table = capsys.readouterr().out
    assert f"{first}" in table and "previous" in table and "active" in table
    assert run("keys", "prune", "--dir", d) == 0
    assert "nothing to retire" in capsys.readouterr().out  # key 1's tokens may still be alive
    store = KeyStore(KeyConfig(dir=Path(d)), clock=FakeClock(time.time() + 331))
    assert store.prune() == [first]  # the CLI recorded the default ttl + leeway
    assert run("keys", "list", "--dir", d) == 0
    assert "retired" in capsys.readouterr().out


def test_keys_rotate_rs256_with_matching_ttl(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    d = tmp_path / "keys"
    assert run("keys", "rotate", "--dir", str(d), "--algorithm", "ES256") == 0
    assert run("keys", "rotate", "--dir", str(d), "--algorithm", "RS256",
               "--max-token-ttl", "600", "--leeway", "60") == 0
    capsys.readouterr()
    metas = [json.loads(p.read_text()) for p in d.glob("*.json")]
    assert sorted(m["alg"] for m in metas) == ["ES256", "RS256"]
    previous = next(m for m in metas if m["alg"] == "ES256")
    # The ES256 key was made with ttl 300 + leeway 30: it may retire 330 s after rotation.
    assert previous["not_used_after"] - previous["deactivated_at"] == pytest.approx(330)


def test_keys_error_is_one_line_on_stderr(tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    d = tmp_path / "keys"
    assert run("keys", "rotate", "--dir", str(d)) == 0
    (pem,) = d.glob("*.pem")
    os.chmod(pem, 0o644)
    capsys.readouterr()
    assert run("keys", "list", "--dir", str(d)) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "readable by others" in err


def test_bundle_keygen(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    prefix = tmp_path / "release-2025"
    assert run("bundle", "keygen", "--out", str(prefix)) == 0
    out = capsys.readouterr().out
    assert "fingerprint:" in out and "BEGIN" not in out  # never prints key material
    assert stat.S_IMODE(os.stat(f"{prefix}.key").st_mode) == 0o600
    assert run("bundle", "keygen", "--out", str(prefix)) == 1  # never overwrites
    err = capsys.readouterr().err
    assert err.startswith("pdp bundle keygen: error:") and err.count("\n") == 1


def test_bundle_sign_round_trip(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from pdp.policy import load_bundle

    prefix = tmp_path / "k"
    assert run("bundle", "keygen", "--out", str(prefix)) == 0
    bundle = tmp_path / "bundle.yaml"
    bundle.write_bytes(EXAMPLE_BUNDLE.read_bytes())
    assert run("bundle", "sign", str(bundle), "--key", f"{prefix}.key", "--key-id", "k1") == 0
    sig = read_signature(Path(f"{bundle}.sig").read_bytes())
    digest = load_bundle(bundle.read_bytes()).digest
    assert sig.key_id == "k1" and sig.digest == digest
    verifier = BundleVerifier({"k1": load_public_key(Path(f"{prefix}.pub"))})
    assert verifier.verify(digest, sig.signature, sig.key_id) == "k1"
    capsys.readouterr()
    assert run("bundle", "sign", str(bundle), "--key", f"{prefix}.key", "--key-id", "../x") == 1
    assert "bad key id" in capsys.readouterr().err


def test_bundle_sign_refuses_an_invalid_bundle(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    prefix = tmp_path / "k"
    assert run("bundle", "keygen", "--out", str(prefix)) == 0
    bad = tmp_path / "bad.yaml"
    bad.write_text("rules: 5\n")
    capsys.readouterr()
    assert run("bundle", "sign", str(bad), "--key", f"{prefix}.key", "--key-id", "k1",
               "--out", str(tmp_path / "bad.sig")) == 1
    err = capsys.readouterr().err
    assert err.startswith("pdp bundle sign: error:") and err.count("\n") == 1
    assert not (tmp_path / "bad.sig").exists()


def test_keys_retire(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = str(tmp_path / "keys")
    assert run("keys", "rotate", "--dir", d) == 0
    first = capsys.readouterr().out.split(": ")[1].strip()
    assert run("keys", "retire", first, "--dir", d) == 1  # the active key
    assert "rotate first" in capsys.readouterr().err
    assert run("keys", "rotate", "--dir", d) == 0
    assert run("keys", "retire", first, "--dir", d) == 0
    assert f"retired now: {first}" in capsys.readouterr().out
