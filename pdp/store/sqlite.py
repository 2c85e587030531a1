"""The embedded bundle store: one SQLite file (WAL, synchronous=FULL) per data directory.

Several processes may share the file; every write is a BEGIN IMMEDIATE transaction and
sequences come from the database, so a process killed mid-write leaves it consistent.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from pdp.errors import StoreCorruptError, StoreError, StoreUnavailableError
from pdp.store._sql import Row, SqlStore, Tx, schema_statements, seen_tokens_statements
from pdp.store.base import run_callback

__all__ = ["SCHEMA_VERSION", "SqliteStore"]

_log = logging.getLogger("pdp.store.sqlite")

# Entry i migrates the schema from version i to i + 1; PRAGMA user_version records it.
_MIGRATIONS: tuple[tuple[str, ...], ...] = (
    tuple(schema_statements("BLOB", "REAL")),
    tuple(seen_tokens_statements("REAL")),
)
SCHEMA_VERSION = len(_MIGRATIONS)


def _translate(exc: sqlite3.Error, what: str) -> StoreError:
    """Turn a sqlite3 exception into the store's error family (never leak sqlite3)."""
    text = str(exc)
    if isinstance(exc, sqlite3.OperationalError) and any(
        word in text for word in ("locked", "busy", "unable to open", "disk I/O")
    ):
        return StoreUnavailableError(f"sqlite store: {what}: {text}")
    if "malformed" in text or "not a database" in text:
        return StoreCorruptError(f"sqlite store: {what}: {text}")
    return StoreError(f"sqlite store: {what}: {text}")


class _SqliteTx(Tx):
    def __init__(self, cur: sqlite3.Cursor) -> None:
        self._cur = cur

    def rows(self, sql: str, params: tuple[Any, ...] = ()) -> list[Row]:
        return self._cur.execute(sql.replace("%s", "?"), params).fetchall()

    def run(self, sql: str, params: tuple[Any, ...] = ()) -> int:
        return self._cur.execute(sql.replace("%s", "?"), params).rowcount

    def lock_state(self) -> None:
        """Nothing to do: writes run under BEGIN IMMEDIATE, the file's one write lock."""

    def changed(self, counter: int) -> None:
        """Nothing to do: watchers poll the change counter."""


class SqliteStore(SqlStore):
    """A :class:`BundleStore` in one SQLite file; safe across threads and processes."""

    def __init__(self, path: Path, *, busy_timeout: float = 5.0) -> None:
        """Open (creating and migrating if needed) the store at ``path``.

        Raises StoreUnavailableError if the file cannot be opened or stays locked,
        StoreCorruptError if it is not a valid database, StoreError if its schema is
        newer than this code supports.
        """
        self._path = Path(path)
        self._busy_timeout = busy_timeout
        self._lock = threading.RLock()  # one connection, one thread at a time
        self._closed = threading.Event()
        self._watchers: list[threading.Thread] = []
        self._conn = self._connect()
        try:
            self._migrate()
        except BaseException:
            self._conn.close()
            raise

    def _connect(self) -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(
                self._path, timeout=self._busy_timeout, isolation_level=None,
                check_same_thread=False,
            )
        except sqlite3.Error as exc:
            raise _translate(exc, f"opening {self._path}") from None
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout * 1000)}")
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise StoreError(f"sqlite store: {self._path}: cannot enable WAL (got {mode})")
            conn.execute("PRAGMA synchronous = FULL")
            conn.execute("PRAGMA foreign_keys = ON")
        except sqlite3.Error as exc:
            conn.close()
            raise _translate(exc, f"opening {self._path}") from None
        except StoreError:
            conn.close()
            raise
        return conn

    def _migrate(self) -> None:
        with self._lock:
            cur = self._conn.cursor()
            try:
                cur.execute("BEGIN IMMEDIATE")  # one process migrates, the others wait
                current = int(cur.execute("PRAGMA user_version").fetchone()[0])
                if current > SCHEMA_VERSION:
                    raise StoreError(
                        f"sqlite store: {self._path}: schema version {current} is newer "
                        f"than this pdp supports ({SCHEMA_VERSION})"
                    )
                for version in range(current, SCHEMA_VERSION):
                    for statement in _MIGRATIONS[version]:
                        cur.execute(statement)
                    _log.info("sqlite store %s: schema now at version %d", self._path, version + 1)
                cur.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
                cur.execute("COMMIT")
            except sqlite3.Error as exc:
                self._rollback()
                raise _translate(exc, f"migrating {self._path}") from None
            except BaseException:
                self._rollback()
                raise

    def _rollback(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            if self._conn.in_transaction:
                self._conn.execute("ROLLBACK")

    @contextlib.contextmanager
    def _transaction(self, *, write: bool, what: str) -> Iterator[Tx]:
        with self._lock:
            if self._closed.is_set():
                raise StoreError("sqlite store: the store is closed")
            try:
                cur = self._conn.cursor()
                # A read also opens a transaction so that it sees one consistent snapshot.
                cur.execute("BEGIN IMMEDIATE" if write else "BEGIN")
                try:
                    yield _SqliteTx(cur)
                except BaseException:
                    self._rollback()
                    raise
                cur.execute("COMMIT")
            except sqlite3.Error as exc:
                self._rollback()
                raise _translate(exc, what) from None

    def watch(self, on_change: Callable[[], None], *, poll_interval: float = 0.5) -> None:
        if poll_interval <= 0:
            raise ValueError("poll_interval must be positive")
        if self._closed.is_set():
            raise StoreError("sqlite store: the store is closed")
        # The watcher polls the change counter on its own connection, so commits by any
        # process sharing the file are seen; a failed poll is retried at the next tick.
        conn = self._connect()

        def read() -> int | None:
            try:
                return int(conn.execute("SELECT changes FROM pdp_state WHERE id = 1").fetchone()[0])
            except sqlite3.Error as exc:
                _log.warning("sqlite store watcher: %s", _translate(exc, "polling"))
                return None

        baseline = read()

        def loop() -> None:
            last = baseline
            try:
                while not self._closed.wait(poll_interval):
                    seen = read()
                    if seen is not None and seen != last:
                        last = seen
                        run_callback(on_change)
            finally:
                conn.close()

        thread = threading.Thread(target=loop, name="pdp-store-watch", daemon=True)
        self._watchers.append(thread)
        thread.start()

    def close(self) -> None:
        if self._closed.is_set():
            return
        self._closed.set()
        for thread in self._watchers:
            thread.join(timeout=5)
        with self._lock:
            self._conn.close()
