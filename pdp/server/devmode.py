"""`pdp run`: a dev PKI, a dev bundle-signing key, a config and the example bundle.

Everything lives under one directory (``./.pdp-dev``) and is reused on the next run.
Dev mode keeps every check on: the example bundle is signed with a dev key.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from pdp.errors import ConfigError
from pdp.security.pki import make_dev_pki
from pdp.security.signing import generate_bundle_key, sign_digest

if TYPE_CHECKING:
    from pdp.server.app import PDPServer

__all__ = ["prepare_dev", "seed_example_bundle"]

DEV_KEY_ID = "dev"
TRUST_DOMAIN = "pdp.local"

_CONFIG = """\
# Written by `pdp run` (dev mode). Loopback only; every check is on.
data_dir = "data"

[server.data]
address = "127.0.0.1:7443"

[server.admin]
address = "127.0.0.1:7444"

[tls]
cert_file = "{server_cert}"
key_file = "{server_key}"
ca_file = "{ca_cert}"
crl_file = "{crl}"

[access]
authorize = ["spiffe://{td}/svc/*"]
explain = ["spiffe://{td}/svc/*"]
admin = ["spiffe://{td}/admin"]

[bundles]
trusted_keys = {{ {key_id} = "bundle-signing.pub" }}
require_signature = true

[client]
target = "127.0.0.1:7443"
admin_target = "127.0.0.1:7444"
server_name = "localhost"
ca_file = "{ca_cert}"
cert_file = "{service_cert}"
key_file = "{service_key}"
admin_cert_file = "{admin_cert}"
admin_key_file = "{admin_key}"
"""


def prepare_dev(directory: Path, bundle: Path) -> tuple[Path, str]:
    """Make (or reuse) the dev PKI, signing key and config; return (config path, banner)."""
    if not bundle.exists():
        raise ConfigError(f"example bundle not found: {bundle} (run from the repository root "
                          "or pass --bundle)", field="--bundle")
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    pki = make_dev_pki(directory / "pki", trust_domain=TRUST_DOMAIN)
    private, public = directory / "bundle-signing.key", directory / "bundle-signing.pub"
    if not private.exists():
        generate_bundle_key(private, public)
    config = directory / "pdp.toml"
    if not config.exists():
        rel = {name: str(path.resolve().relative_to(directory.resolve()))
               for name, path in (("server_cert", pki.server_cert),
                                  ("server_key", pki.server_key), ("ca_cert", pki.ca_cert),
                                  ("crl", pki.crl), ("service_cert", pki.service_cert),
                                  ("service_key", pki.service_key),
                                  ("admin_cert", pki.admin_cert), ("admin_key", pki.admin_key))}
        config.write_text(_CONFIG.format(td=TRUST_DOMAIN, key_id=DEV_KEY_ID, **rel),
                          encoding="utf-8")
    banner = (
        f"pdp (dev mode): config {config}, example bundle {bundle}\n"
        "Make a first decision in another terminal:\n"
        "  .venv/bin/pdp check --subject user:alice --action read --resource node:n1 \\\n"
        "      --subject-props '{\"teams\": [\"search\"]}' \\\n"
        "      --resource-props '{\"team\": \"search\"}'\n"
        "  .venv/bin/pdp status          # admin: active version, cache, certificates, audit\n"
        "Stop with Ctrl-C."
    )
    return config, banner


def seed_example_bundle(server: PDPServer, directory: Path, bundle: Path) -> None:
    """Push and activate the example bundle, signed with the dev key, if nothing is active."""
    if server.store.active() is not None:
        return
    data = bundle.read_bytes()
    valid = server.manager.validate(
        data, sign_digest(_digest(data, bundle), directory / "bundle-signing.key"),
        DEV_KEY_ID, source=str(bundle))
    stored = server.manager.store(valid, by="pdp run")
    server.manager.activate(stored.version, by="pdp run", bundle=valid.bundle)


def _digest(data: bytes, source: Path) -> str:
    from pdp.policy import load_bundle

    return load_bundle(data, source=str(source)).digest
