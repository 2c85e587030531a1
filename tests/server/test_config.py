"""The server config: typed sections, PDP_* overrides, precise errors, paths (issue 3)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pdp.errors import ConfigError
from pdp.server.access import build_system_policy
from pdp.server.config import AccessConfig, load_config

MINIMAL = """\
[tls]
cert_file = "pki/server.crt"
key_file = "pki/server.key"
ca_file = "pki/ca.crt"
[access]
authorize = ["spiffe://corp/svc/*"]
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "conf" / "pdp.toml"
    path.parent.mkdir(exist_ok=True)
    path.write_text(text)
    return path


def test_relative_paths_resolve_against_the_config_file(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, MINIMAL), env={})
    assert config.tls.cert_file == tmp_path / "conf" / "pki" / "server.crt"
    assert config.data_dir == tmp_path / "conf" / "data"
    assert config.audit_config.dir == tmp_path / "conf" / "data" / "audit"
    assert config.server.data.address == "127.0.0.1:7443"
    assert config.server.admin.address == "127.0.0.1:7444"


def test_audit_and_keys_tables_without_dir_stay_under_data_dir(tmp_path: Path) -> None:
    text = 'data_dir = "/var/lib/pdp"\n' + MINIMAL + "[audit]\nfsync = \"always\"\n[keys]\n"
    config = load_config(write(tmp_path, text), env={})
    assert config.audit_config.dir == Path("/var/lib/pdp/audit")
    assert config.key_config.dir == Path("/var/lib/pdp/keys")
    assert config.audit_config.fsync == "always"


def test_environment_overrides_nested_settings(tmp_path: Path) -> None:
    env = {"PDP_SERVER__THREADS": "4", "PDP_AUDIT__FSYNC": "never", "PDP_CACHE__ADMISSION": "all",
           "PDP_SERVER__DATA__ADDRESS": "127.0.0.1:9000", "PDP_CA_PASSPHRASE": "not a setting",
           "PDP_DATA_DIR": "/srv/pdp"}
    config = load_config(write(tmp_path, MINIMAL), env=env)
    assert config.server.threads == 4
    assert config.audit_config.fsync == "never"
    assert config.cache.admission == "all"
    assert config.server.data.address == "127.0.0.1:9000"
    assert config.data_dir == Path("/srv/pdp")


@pytest.mark.parametrize(("text", "where", "what"), [
    (MINIMAL + "[server]\nthreads = \"many\"\n", "config.server.threads", "expected an integer"),
    (MINIMAL + "[server]\nthreds = 4\n", "config.server", "unknown setting 'threds'"),
    (MINIMAL + "[audit]\nfsync = \"sometimes\"\n", "config.audit.fsync", "expected one of"),
    (MINIMAL + "[cache]\nadmission = \"first\"\n", "config.cache.admission", "expected one of"),
    (MINIMAL + "[server]\nworkers = 0\n", "config.server", "workers must be at least 1"),
    ("[access]\nadmin = []\n", "pdp.toml", "missing [tls] section"),
    (MINIMAL + "[server\n", "pdp.toml", "not valid TOML"),
])
def test_bad_settings_name_the_field(tmp_path: Path, text: str, where: str, what: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, text), env={})
    assert where in str(err.value)
    assert what in str(err.value)


def test_bad_environment_override_names_the_field(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"config\.server\.max_batch"):
        load_config(write(tmp_path, MINIMAL), env={"PDP_SERVER__MAX_BATCH": "lots"})


def test_missing_config_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(tmp_path / "absent.toml", env={})


def test_no_system_policy_refuses_to_start() -> None:
    with pytest.raises(ConfigError, match="no system policy"):
        build_system_policy(AccessConfig())


def test_example_production_config_loads() -> None:
    config = load_config(Path("examples/pdp.toml"), env={})
    assert config.store.url.startswith("postgresql://")
    assert config.bundles.require_signature


def test_bad_allow_cidr_names_the_listener_setting() -> None:
    from pdp.server.access import _parse_networks

    with pytest.raises(ConfigError, match=r"\[server\.admin\]\.allow_cidrs\[1\]: not a CIDR"):
        _parse_networks(["10.0.0.0/8", "10.99.0.0/33"], "admin")


def _may(policy: object, identity: str, method: str, listener: str) -> bool:
    from pdp.policy import Action, Effect, Request, Resource, Subject

    decision = policy.evaluate(Request(  # type: ignore[attr-defined]
        Subject("service", identity, {}), Action(method, {}),
        Resource("pdp.listener", listener, {}), {}, None), now=0.0)
    return bool(decision.effect is Effect.ALLOW)


def test_short_form_system_policy_grants_exactly_what_it_lists() -> None:
    policy = build_system_policy(AccessConfig(authorize=("spiffe://corp/svc/*",),
                                              admin=("spiffe://corp/admin",)))
    authorize = "/pdp.v1.Authorization/Authorize"
    assert _may(policy, "spiffe://corp/svc/a", authorize, "data")
    assert not _may(policy, "spiffe://corp/svc/a", authorize, "admin")
    assert not _may(policy, "spiffe://corp/svc/a", "/pdp.v1.Admin/PushBundle", "admin")
    assert not _may(policy, "spiffe://corp/svc/a", "explain", "data")  # [access] explain empty
    assert _may(policy, "spiffe://corp/admin", "/pdp.v1.Admin/PushBundle", "admin")
    assert not _may(policy, "spiffe://corp/admin", authorize, "data")


def test_system_policy_file_is_used_and_its_faults_are_named(tmp_path: Path) -> None:
    from pdp.errors import BundleError

    good = tmp_path / "system.yaml"
    good.write_text('metadata: {name: system, revision: "1"}\nrules:\n'
                    '  - {id: ops, effect: allow, subjects: {type: service, ids: ["ops"]},\n'
                    '     actions: ["/pdp.v1.Admin/*"], resources: {type: pdp.listener}}\n')
    policy = build_system_policy(AccessConfig(policy_file=good))
    assert _may(policy, "ops", "/pdp.v1.Admin/Rollback", "admin")
    assert not _may(policy, "dev", "/pdp.v1.Admin/Rollback", "admin")
    bad = tmp_path / "bad.yaml"
    bad.write_text(good.read_text().replace("effect: allow", "effect: permit"))
    with pytest.raises(BundleError, match=r"bad\.yaml.*rules\[0\].*effect"):
        build_system_policy(AccessConfig(policy_file=bad))
