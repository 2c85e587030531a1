"""The on-disk CA: issue, renew, revoke, CRL, status, dev PKI, and `pdp certs` commands."""

from __future__ import annotations

import argparse
import stat
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID

from pdp.clock import FakeClock
from pdp.security import cert_commands, pki
from pdp.security.pki import PKIError

DAY = 86400.0


def load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture()
def ca_dir(tmp_path: Path) -> Path:
    d = tmp_path / "ca"
    pki.init_ca(d, common_name="unit CA", days=365)
    return d


def test_exported_names_are_exactly_the_public_api() -> None:
    assert sorted(pki.__all__) == sorted([
        "REASONS", "CertStatus", "DevPKI", "IssuedCert", "KeyType", "PKIError", "cert_status",
        "init_ca", "issue", "load_passphrase", "make_crl", "make_dev_pki", "renew", "revoke",
        "status", "write_atomic"])
    assert cert_commands.__all__ == ["register"]


def test_init_ca_layout_modes_and_ca_extensions(ca_dir: Path) -> None:
    assert mode(ca_dir / "ca.key") == 0o600 and mode(ca_dir / "ca.crt") == 0o644
    assert {p.name for p in ca_dir.iterdir()} >= {"ca.crt", "ca.key", "index.json", "crl.pem"}
    cert = load(ca_dir / "ca.crt")
    bc = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and bc.value.ca
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
    with pytest.raises(PKIError, match="already exists"):
        pki.init_ca(ca_dir, common_name="again")


def test_issued_leaf_has_sans_usages_and_key_mode(ca_dir: Path, tmp_path: Path) -> None:
    out = pki.issue(ca_dir, tmp_path / "svc", common_name="svc", spiffe_id="spiffe://t.test/svc",
                    dns=["svc.test"], ips=["10.0.0.1"], server=True, client=True, days=10)
    assert mode(out.key_path) == 0o600 and mode(out.cert_path) == 0o644
    cert = load(out.cert_path)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == ["spiffe://t.test/svc"]
    assert san.get_values_for_type(x509.DNSName) == ["svc.test"]
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    cert.verify_directly_issued_by(load(ca_dir / "ca.crt"))
    verified = subprocess.run(["openssl", "verify", "-CAfile", str(ca_dir / "ca.crt"),
                               str(out.cert_path)], capture_output=True, text=True, check=False)
    assert verified.returncode == 0, verified.stderr


def test_rsa_keys_on_request(tmp_path: Path) -> None:
    pki.init_ca(tmp_path / "ca", common_name="rsa CA", key_type="rsa-3072")
    ca_key = load(tmp_path / "ca" / "ca.crt").public_key()
    assert isinstance(ca_key, rsa.RSAPublicKey) and ca_key.key_size == 3072
    out = pki.issue(tmp_path / "ca", tmp_path / "r", common_name="r", key_type="rsa-2048")
    leaf_key = load(out.cert_path).public_key()
    assert isinstance(leaf_key, rsa.RSAPublicKey) and leaf_key.key_size == 2048
    ku = load(out.cert_path).extensions.get_extension_for_class(x509.KeyUsage).value
    assert ku.digital_signature and ku.key_encipherment


def test_passphrase_encrypted_ca_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    secret_file = tmp_path / "pass"
    secret_file.write_bytes(b"correct horse\n")
    secret = pki.load_passphrase(file=secret_file)
    assert secret == b"correct horse"
    monkeypatch.setenv("PDP_TEST_CA_PASS", "correct horse")
    assert pki.load_passphrase(env="PDP_TEST_CA_PASS") == secret
    ca_dir = tmp_path / "ca"
    pki.init_ca(ca_dir, common_name="enc CA", passphrase=secret)
    assert b"ENCRYPTED" in (ca_dir / "ca.key").read_bytes()
    with pytest.raises(PKIError, match="encrypted"):
        pki.issue(ca_dir, tmp_path / "a", common_name="a")
    with pytest.raises(PKIError, match="wrong passphrase"):
        pki.issue(ca_dir, tmp_path / "a", common_name="a", passphrase=b"wrong")
    assert not (tmp_path / "a.crt").exists()
    pki.issue(ca_dir, tmp_path / "a", common_name="a", passphrase=secret)
    monkeypatch.setenv("PDP_TEST_EMPTY", "")
    with pytest.raises(PKIError, match="empty"):
        pki.load_passphrase(env="PDP_TEST_EMPTY")


@pytest.mark.parametrize(("kwargs", "why"), [
    ({"server": False, "client": False}, "server or client"),
    ({"server": True}, "DNS name or IP"),
    ({"spiffe_id": "https://t.test/x"}, "SPIFFE"),
    ({"spiffe_id": "spiffe://t.test/x?q=1"}, "SPIFFE"),
    ({"days": 0}, "at least one day"),
    ({"days": 400}, "outlive its CA"),
    ({"ips": ["not-an-ip"]}, "IP"),
])
def test_unsafe_leaf_requests_are_refused(ca_dir: Path, tmp_path: Path,
                                          kwargs: dict[str, object], why: str) -> None:
    with pytest.raises(PKIError, match=why):
        pki.issue(ca_dir, tmp_path / "x", common_name="x", **kwargs)  # type: ignore[arg-type]
    assert not (tmp_path / "x.key").exists()


def test_directory_whose_ca_is_not_a_ca_is_refused(ca_dir: Path, tmp_path: Path) -> None:
    leaf = pki.issue(ca_dir, tmp_path / "leaf", common_name="leaf")
    fake = tmp_path / "fake-ca"
    fake.mkdir()
    (fake / "ca.crt").write_bytes(leaf.cert_path.read_bytes())
    (fake / "ca.key").write_bytes(leaf.key_path.read_bytes())
    with pytest.raises(PKIError, match="refusing to use it"):
        pki.issue(fake, tmp_path / "y", common_name="y")


def test_renew_keeps_names_changes_key_and_serial(ca_dir: Path, tmp_path: Path) -> None:
    first = pki.issue(ca_dir, tmp_path / "srv", common_name="srv", spiffe_id="spiffe://t.test/p",
                      dns=["srv.test"], ips=["127.0.0.1"], server=True, days=20)
    old_cert, old_key = load(first.cert_path), first.key_path.read_bytes()
    renewed = pki.renew(ca_dir, first.cert_path)
    new_cert = load(renewed.cert_path)
    assert renewed.serial != first.serial and first.key_path.read_bytes() != old_key
    assert mode(renewed.key_path) == 0o600
    assert new_cert.subject == old_cert.subject
    san = x509.SubjectAlternativeName
    assert (new_cert.extensions.get_extension_for_class(san).value
            == old_cert.extensions.get_extension_for_class(san).value)
    eku = x509.ExtendedKeyUsage
    assert (new_cert.extensions.get_extension_for_class(eku).value
            == old_cert.extensions.get_extension_for_class(eku).value)
    lifetime = new_cert.not_valid_after_utc - new_cert.not_valid_before_utc
    assert round(lifetime.total_seconds() / DAY) == 20
    assert not list(tmp_path.glob(".srv.*"))  # no temp files left behind


def test_renew_refuses_certificate_of_another_ca(ca_dir: Path, tmp_path: Path) -> None:
    pki.init_ca(tmp_path / "other", common_name="other CA")
    foreign = pki.issue(tmp_path / "other", tmp_path / "f", common_name="f")
    with pytest.raises(PKIError, match="not issued by this CA"):
        pki.renew(ca_dir, foreign.cert_path)


def test_revoke_and_crl_contains_serial_and_verifies(ca_dir: Path, tmp_path: Path) -> None:
    victim = pki.issue(ca_dir, tmp_path / "victim", common_name="victim")
    keeper = pki.issue(ca_dir, tmp_path / "keeper", common_name="keeper")
    assert pki.revoke(ca_dir, victim.cert_path, reason="key-compromise") == victim.serial
    crl = x509.load_pem_x509_crl(pki.make_crl(ca_dir, days=3).read_bytes())
    ca = load(ca_dir / "ca.crt")
    assert crl.is_signature_valid(ca.public_key())  # type: ignore[arg-type]
    entry = crl.get_revoked_certificate_by_serial_number(victim.serial)
    assert entry is not None
    assert entry.extensions.get_extension_for_class(x509.CRLReason).value.reason == \
        x509.ReasonFlags.key_compromise
    assert crl.get_revoked_certificate_by_serial_number(keeper.serial) is None
    openssl = subprocess.run(["openssl", "crl", "-in", str(ca_dir / "crl.pem"), "-CAfile",
                              str(ca_dir / "ca.crt"), "-noout"], capture_output=True, text=True,
                             check=False)
    assert "verify OK" in openssl.stderr + openssl.stdout


def test_revoke_refuses_unknown_serial_foreign_cert_and_bad_reason(ca_dir: Path,
                                                                   tmp_path: Path) -> None:
    with pytest.raises(PKIError, match="not issued by this CA"):
        pki.revoke(ca_dir, 12345)
    pki.init_ca(tmp_path / "other", common_name="other CA")
    foreign = pki.issue(tmp_path / "other", tmp_path / "f", common_name="f")
    with pytest.raises(PKIError, match="not issued by this CA"):
        pki.revoke(ca_dir, foreign.cert_path)
    mine = pki.issue(ca_dir, tmp_path / "m", common_name="m")
    with pytest.raises(PKIError, match="unknown reason"):
        pki.revoke(ca_dir, mine.serial, reason="because")


def test_status_of_ca_dir_and_of_files(ca_dir: Path, tmp_path: Path) -> None:
    clock = FakeClock(load(ca_dir / "ca.crt").not_valid_before_utc.timestamp() + 300)
    a = pki.issue(ca_dir, tmp_path / "a", common_name="a", spiffe_id="spiffe://t.test/a",
                  days=10, clock=clock)
    b = pki.issue(ca_dir, tmp_path / "b", common_name="b", days=10, clock=clock)
    pki.revoke(ca_dir, b.serial)
    clock.advance(4 * DAY)
    rows = pki.status(ca_dir, clock=clock)
    assert [r.subject for r in rows] == ["CN=unit CA", "CN=a", "CN=b"]
    by_serial = {r.serial: r for r in rows}
    assert by_serial[a.serial].spiffe_id == "spiffe://t.test/a"
    assert by_serial[a.serial].days_left == pytest.approx(6.0)
    assert by_serial[b.serial].revoked and not by_serial[a.serial].revoked
    files = pki.status([a.cert_path, b.cert_path], ca_dir=ca_dir, clock=clock)
    assert [r.revoked for r in files] == [False, True]


def test_dev_pki_is_idempotent_and_renews_what_expires(tmp_path: Path) -> None:
    clock = FakeClock(1_800_000_000.0)
    first = pki.make_dev_pki(tmp_path, clock=clock)
    serials = [load(p).serial_number for p in (first.server_cert, first.admin_cert)]
    again = pki.make_dev_pki(tmp_path, clock=clock)
    assert again == first
    assert [load(p).serial_number for p in (again.server_cert, again.admin_cert)] == serials
    server = load(first.server_cert)
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "spiffe://pdp.local/pdp" in san.get_values_for_type(x509.UniformResourceIdentifier)
    assert mode(first.server_key) == 0o600
    clock.advance(365 * DAY)  # the leaves expire, the CA does not
    pki.make_dev_pki(tmp_path, clock=clock)
    assert load(first.server_cert).serial_number != serials[0]
    assert load(first.ca_cert).serial_number == load(again.ca_cert).serial_number


# --- `pdp certs` ----------------------------------------------------------------------------


def run(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="pdp")
    cert_commands.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(list(argv))
    code: int = args.func(args)
    return code


def test_certs_commands_full_cycle(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    ca = str(tmp_path / "ca")
    monkeypatch.setenv("PDP_TEST_PASS", "s3cret")
    pw = ("--passphrase-env", "PDP_TEST_PASS")
    assert run("certs", "init-ca", "--ca-dir", ca, "--cn", "cli CA", *pw) == 0
    assert run("certs", "issue", "--ca-dir", ca, "--out", str(tmp_path / "srv"), "--cn",
               "localhost", "--dns", "localhost", "--ip", "127.0.0.1", "--server", *pw) == 0
    assert run("certs", "issue", "--ca-dir", ca, "--out", str(tmp_path / "svc"), "--cn", "svc",
               "--spiffe-id", "spiffe://cli.test/svc", *pw) == 0
    assert run("certs", "renew", "--ca-dir", ca, str(tmp_path / "srv.crt"), *pw) == 0
    serial = load(tmp_path / "svc.crt").serial_number
    assert run("certs", "revoke", "--ca-dir", ca, hex(serial), "--reason", "superseded",
               *pw) == 0
    assert run("certs", "crl", "--ca-dir", ca, "--days", "2", *pw) == 0
    capsys.readouterr()
    assert run("certs", "status", "--ca-dir", ca) == 0
    out = capsys.readouterr().out
    assert "spiffe://cli.test/svc" in out and f"{serial:#x}" in out
    line = next(ln for ln in out.splitlines() if f"{serial:#x}" in ln)
    assert " yes " in line
    crl = x509.load_pem_x509_crl((tmp_path / "ca" / "crl.pem").read_bytes())
    assert crl.get_revoked_certificate_by_serial_number(serial) is not None


def test_certs_command_errors_are_one_line_and_nonzero(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run("certs", "issue", "--ca-dir", str(tmp_path / "none"), "--out",
               str(tmp_path / "x"), "--cn", "x") == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no CA in" in err
    pki.init_ca(tmp_path / "ca", common_name="c", passphrase=b"pw")
    assert run("certs", "crl", "--ca-dir", str(tmp_path / "ca")) == 1
    assert "encrypted" in capsys.readouterr().err
    assert run("certs", "revoke", "--ca-dir", str(tmp_path / "ca"), "nonsense") == 2
    assert "neither a serial" in capsys.readouterr().err
