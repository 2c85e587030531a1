"""PostgreSQL-only store behaviour: connections cut by the server, an unreachable
database, replicas migrating together, and secrets kept out of error messages."""

from __future__ import annotations

import secrets
import threading
from concurrent.futures import ThreadPoolExecutor

import psycopg
import pytest

from pdp.errors import ConfigError, StoreError, StoreUnavailableError
from pdp.store import open_store

from .conftest import NOW, admin_connection, bundle_bytes, push_bytes

pytestmark = pytest.mark.postgres


def _terminate(app_prefix: str) -> int:
    with admin_connection() as admin:
        rows = admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE application_name LIKE %s",
            (app_prefix + "%",),
        ).fetchall()
    return len(rows)


def _allow_connections(dbname: str, allow: bool) -> None:
    with admin_connection() as admin:
        admin.execute(f"ALTER DATABASE {dbname} ALLOW_CONNECTIONS {str(allow).lower()}")


def test_terminated_connections_reconnect_and_watch_catches_up(pg_url: str) -> None:
    dbname = pg_url.rsplit("/", 1)[1]
    name = f"pdp-replica-{secrets.token_hex(4)}"
    admin = open_store(pg_url + "?application_name=pdp-admin")
    replica = open_store(pg_url + f"?application_name={name}")
    try:
        one, two = push_bytes(admin, bundle_bytes(1)), push_bytes(admin, bundle_bytes(2))
        admin.activate(one.version, by="a", now=NOW)
        changed = threading.Event()
        replica.watch(changed.set, poll_interval=0.1)

        # Cut replica A off (its store and its LISTEN connection) and keep it out.
        _allow_connections(dbname, False)
        assert _terminate(name) == 2
        with pytest.raises(StoreUnavailableError, match="cannot connect"):
            replica.active()
        # An activation made while A is cut off: its NOTIFY never reaches A.
        admin.activate(two.version, by="a", now=NOW + 1)
        assert not changed.is_set()

        _allow_connections(dbname, True)
        assert changed.wait(20), "watch() did not catch up after reconnecting"
        current = replica.active()
        assert current is not None and current[1].version == two.version
    finally:
        _allow_connections(dbname, True)
        admin.close()
        replica.close()


def test_idle_connection_killed_by_server_is_replaced_transparently(pg_url: str) -> None:
    name = f"pdp-replica-{secrets.token_hex(4)}"
    with open_store(pg_url + f"?application_name={name}") as store:
        one = push_bytes(store, bundle_bytes(1))
        assert _terminate(name) == 1
        assert store.get(one.version) == one  # reconnects once, nothing was sent
        assert _terminate(name) == 1
        store.activate(one.version, by="a", now=NOW)
        current = store.active()
        assert current is not None and current[1] == one


def test_unreachable_database_raises_store_unavailable() -> None:
    with pytest.raises(StoreUnavailableError, match="cannot connect"):
        open_store("postgresql://postgres@127.0.0.1:1/nothing", connect_timeout=2)


def test_password_never_appears_in_errors() -> None:
    with pytest.raises(StoreUnavailableError) as caught:
        open_store("postgresql://postgres:hunter2secret@127.0.0.1:1/nothing")
    assert "hunter2secret" not in str(caught.value)
    with pytest.raises(ConfigError) as bad:
        open_store("postgresql://postgres:hunter2secret@[bad/x?sslmode=nonsense")
    assert "hunter2secret" not in str(bad.value)


def test_replicas_starting_together_migrate_exactly_once(pg_url: str) -> None:
    barrier = threading.Barrier(4)

    def start(_: int) -> None:
        barrier.wait()
        open_store(pg_url).close()

    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(start, range(4)))
    with psycopg.connect(pg_url) as conn:
        assert conn.execute("SELECT version FROM pdp_schema").fetchall() == [(1,), (2,)]


def test_schema_newer_than_this_code_is_refused(pg_url: str) -> None:
    open_store(pg_url).close()
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("INSERT INTO pdp_schema VALUES (99, 0)")
    with pytest.raises(StoreError, match="newer"):
        open_store(pg_url)
