"""Fixtures for the replica tests: a scratch PostgreSQL database and three `pdp serve`
replicas on it, started once per module (processes are slow to start; tests share them)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.replicas.cluster import Certs, Cluster, DatabaseAbsentError, scratch_database


@pytest.fixture(scope="module")
def pg_url() -> Iterator[str]:
    """A fresh scratch database for this module, dropped afterwards."""
    try:
        with scratch_database() as url:
            yield url
    except DatabaseAbsentError as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="module")
def second_admin(pki: Any, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """Another administrator, spiffe://pdp.test/admin-2."""
    return pki.issue("admin-2", spiffe_id="spiffe://pdp.test/admin-2",
                     directory=tmp_path_factory.mktemp("admin2"))


@pytest.fixture(scope="module")
def cluster(pki: Any, pg_url: str, second_admin: Any,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """Replicas a, b, c on one database; the first bundle pushed and active."""
    certs = Certs(ca=pki.ca_cert, server_cert=pki.server.cert, server_key=pki.server.key,
                  admin_cert=pki.admin.cert, admin_key=pki.admin.key,
                  service_cert=pki.service.cert, service_key=pki.service.key,
                  trust_domain="spiffe://pdp.test",
                  admins=("spiffe://pdp.test/admin", "spiffe://pdp.test/admin-2"))
    # A 0.2 s poll bounds propagation even when a NOTIFY is lost.
    made = Cluster(tmp_path_factory.mktemp("cluster"), certs, pg_url, poll_interval=0.2)
    try:
        a, _, _ = made.start(["replica-a", "replica-b", "replica-c"])
        made.push(a, "initial")
        yield made
    finally:
        outputs = made.close()
        for name, out in outputs.items():
            if "Traceback" in out:  # shown only when a test fails
                print(f"--- {name} ---\n{out[-4000:]}")
