"""Fixtures for the store tests: a store per backend, raw database access, pushes.

PostgreSQL tests make and drop a scratch database on 127.0.0.1:5432 (user postgres).
"""

from __future__ import annotations

import hashlib
import secrets
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from pdp.store import BundleStore, StoredBundle, open_store

ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/test"
NOW = 1_800_000_000.0

Push = Callable[..., StoredBundle]
RawSql = Callable[..., list[tuple[Any, ...]]]


def admin_connection() -> psycopg.Connection[Any]:
    """An autocommit connection to the `test` database; skips when the server is absent."""
    try:
        return psycopg.connect(ADMIN_URL, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as exc:
        pytest.skip(f"PostgreSQL server not reachable at 127.0.0.1:5432: {exc}")


@pytest.fixture
def pg_url() -> Iterator[str]:
    """The URL of a fresh scratch database, dropped afterwards."""
    name = f"pdp_test_{secrets.token_hex(6)}"
    with admin_connection() as admin:
        admin.execute(f"CREATE DATABASE {name}")
        try:
            yield f"postgresql://postgres@127.0.0.1:5432/{name}"
        finally:
            admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A URL for a fresh, empty store of each backend."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'data' / 'bundles.db'}"
    url: str = request.getfixturevalue("pg_url")
    return url


@pytest.fixture
def store(store_url: str) -> Iterator[BundleStore]:
    with open_store(store_url) as opened:
        yield opened


@pytest.fixture
def second_store(store: BundleStore, store_url: str) -> Iterator[BundleStore]:
    """Another instance on the same database: what another replica sees."""
    with open_store(store_url) as opened:
        yield opened


@pytest.fixture
def raw_sql(store_url: str) -> RawSql:
    """Run SQL on the store's database behind the store's back (an attacker with DB access)."""

    def run(sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        if store_url.startswith("sqlite:"):
            conn = sqlite3.connect(store_url[len("sqlite://"):], isolation_level=None)
            try:
                return conn.execute(sql.replace("%s", "?"), params).fetchall()
            finally:
                conn.close()
        with psycopg.connect(store_url, autocommit=True) as pg:
            cur = pg.execute(sql, params)
            return list(cur.fetchall()) if cur.description else []

    return run


def bundle_bytes(n: int) -> bytes:
    return f"name: b{n}\nrevision: r{n}\nrules: []\n".encode()


def push_bytes(
    store: BundleStore, data: bytes, *, by: str = "admin", now: float = NOW
) -> StoredBundle:
    """Push ``data`` with the digest a loader would compute (here: sha256 of the bytes)."""
    return store.put(
        data, digest=hashlib.sha256(b"canonical:" + data).hexdigest(), signature=b"sig",
        key_id="k1", pushed_by=by, name="example", revision="r1", rule_count=3, now=now,
    )


@pytest.fixture
def push(store: BundleStore) -> Push:
    """Push bundle number ``n`` (distinct bytes per n) into the fixture store."""

    def run(n: int, *, by: str = "admin", now: float = NOW) -> StoredBundle:
        return push_bytes(store, bundle_bytes(n), by=by, now=now)

    return run
