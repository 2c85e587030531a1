"""The configuration reference matches the code, and examples/pdp.toml is a config that loads.

The example is production-shaped: PostgreSQL store, OTLP, signatures required, failing
closed, writable state only under /var/lib/pdp (the Docker image's data volume).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from pdp.errors import ConfigError
from pdp.server.config import Config, load_config
from tests.docs.confref import BEGIN, END, render
from tests.docs.sandbox import REPO

EXAMPLE = REPO / "examples" / "pdp.toml"
DATA_VOLUME = Path("/var/lib/pdp")


def test_reference_is_generated_from_the_code() -> None:
    text = (REPO / "docs" / "configuration.md").read_text(encoding="utf-8")
    assert BEGIN in text and END in text
    current = BEGIN + text.split(BEGIN, 1)[1].split(END, 1)[0] + END + "\n"
    assert current == render(), "docs/configuration.md is stale: python -m tests.docs.confref"


def test_reference_names_every_section_and_env_override() -> None:
    reference = render()
    for f in dataclasses.fields(Config):
        assert f"`[{f.name}]`" in reference or f"`{f.name}`" in reference
    for name in ("PDP_DATA_DIR", "PDP_SERVER__DATA__ADDRESS", "PDP_STORE__URL",
                 "PDP_DETECTION__DENY_STORM__THRESHOLD", "PDP_AUDIT__FSYNC"):
        assert f"`{name}`" in reference


def test_example_config_loads_and_is_production_shaped() -> None:
    config = load_config(EXAMPLE, env={})
    assert config.store.url.startswith("postgresql://")
    assert "sslmode=verify-full" in config.store.url
    assert config.telemetry.traces == "otlp" and config.telemetry.metrics == "otlp"
    assert config.bundles.require_signature and config.bundles.trusted_keys
    assert config.server.tls12_probe
    assert config.tls.crl_file is not None
    assert not config.audit_config.fail_open and config.audit_config.enabled
    assert config.access.authorize and config.access.admin
    assert config.server.data.allow_cidrs and config.server.admin.allow_cidrs


def test_example_config_writes_only_to_the_data_volume() -> None:
    config = load_config(EXAMPLE, env={})
    writable = [config.data_dir, config.audit_config.dir, config.key_config.dir,
                config.detection.alert_file]
    for path in writable:
        assert path is not None and path.is_relative_to(DATA_VOLUME), path


def test_example_config_reads_pki_and_keys_beside_itself(tmp_path: Path) -> None:
    # Copied to /etc/pdp/pdp.toml in the image, its relative paths land in /etc/pdp.
    etc = tmp_path / "etc" / "pdp"
    etc.mkdir(parents=True)
    (etc / "pdp.toml").write_bytes(EXAMPLE.read_bytes())
    config = load_config(etc / "pdp.toml", env={})
    read_only = [config.tls.cert_file, config.tls.key_file, config.tls.ca_file,
                 config.tls.crl_file, *config.bundles.trusted_keys.values(),
                 config.client.ca_file, config.client.cert_file, config.client.key_file]
    for path in read_only:
        assert path is not None and path.is_relative_to(etc), path


def test_environment_overrides_as_documented() -> None:
    config = load_config(EXAMPLE, env={
        "PDP_AUDIT__FSYNC": "always", "PDP_SERVER__DATA__ADDRESS": "0.0.0.0:8443",
        "PDP_DETECTION__DENY_STORM__THRESHOLD": "50", "PDP_DATA_DIR": "/var/lib/pdp/r2",
        "PDP_CA_PASS": "not a setting"})
    assert config.audit_config.fsync == "always"
    assert config.server.data.address == "0.0.0.0:8443"
    assert config.detection.deny_storm.threshold == 50
    assert config.data_dir == Path("/var/lib/pdp/r2")


def test_plaintext_otlp_to_a_remote_collector_is_refused() -> None:
    # Spans carry identities and decisions: an override must not send them in clear.
    with pytest.raises(ConfigError, match="loopback"):
        load_config(EXAMPLE, env={"PDP_TELEMETRY__OTLP_ENDPOINT": "http://collector.example.org:4317"})


def test_example_config_without_tls_is_refused(tmp_path: Path) -> None:
    text = EXAMPLE.read_text(encoding="utf-8").replace("[tls]", "[tls_disabled]")
    (tmp_path / "pdp.toml").write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError):
        load_config(tmp_path / "pdp.toml", env={})
