"""The shared bundle store of several replicas: PostgreSQL through psycopg 3.

Writes serialize on one state row (SELECT ... FOR UPDATE) and NOTIFY every replica at
commit; watchers LISTEN on a dedicated connection, poll as a fallback and reconnect.
"""

from __future__ import annotations

import contextlib
import logging
import random
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from pdp.clock import Clock, system_clock
from pdp.errors import ConfigError, StoreError, StoreUnavailableError
from pdp.store._sql import Row, SqlStore, Tx, schema_statements, seen_tokens_statements
from pdp.store.base import run_callback

__all__ = ["CHANNEL", "SCHEMA_VERSION", "PostgresStore"]

_log = logging.getLogger("pdp.store.postgres")

CHANNEL = "pdp_store"  # the NOTIFY channel; the payload is the new change counter
_MIGRATION_LOCK = 0x7064705F73746F  # advisory lock key: replicas starting together migrate once
_BACKOFF_MIN, _BACKOFF_MAX = 0.1, 5.0  # seconds between watcher reconnection attempts
_WAIT_SLICE = 0.25  # longest blocking wait of a watcher, so close() is prompt

# Entry i migrates the schema from version i to i + 1; table pdp_schema records it.
_MIGRATIONS: tuple[tuple[str, ...], ...] = (
    tuple(schema_statements("BYTEA", "DOUBLE PRECISION")),
    tuple(seen_tokens_statements("DOUBLE PRECISION")),
)
SCHEMA_VERSION = len(_MIGRATIONS)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class _PgTx(Tx):
    def __init__(self, cur: psycopg.Cursor[Any]) -> None:
        self._cur = cur

    def rows(self, sql: str, params: tuple[Any, ...] = ()) -> list[Row]:
        self._cur.execute(sql, params)
        return [tuple(r) for r in self._cur.fetchall()] if self._cur.description else []

    def run(self, sql: str, params: tuple[Any, ...] = ()) -> int:
        self._cur.execute(sql, params)
        return self._cur.rowcount

    def lock_state(self) -> None:
        self.rows("SELECT id FROM pdp_state WHERE id = 1 FOR UPDATE")

    def changed(self, counter: int) -> None:
        self.rows("SELECT pg_notify(%s, %s)", (CHANNEL, str(counter)))


class PostgresStore(SqlStore):
    """A :class:`BundleStore` in a PostgreSQL database shared by every replica."""

    def __init__(
        self,
        url: str,
        *,
        clock: Clock = system_clock,
        connect_timeout: float = 2.0,
        statement_timeout: float = 5.0,
    ) -> None:
        """Connect to ``url`` and apply pending schema migrations.

        Raises ConfigError for a malformed URL, StoreUnavailableError if the database
        cannot be reached within ``connect_timeout`` seconds, StoreError if its schema
        is newer than this code supports.
        """
        try:
            params = conninfo_to_dict(url)
        except psycopg.Error:
            # libpq's message quotes the URL, which may hold a password: say less.
            raise ConfigError("invalid PostgreSQL URL", field="[store].url") from None
        # Never echo the URL itself: it may carry a password.
        self._where = (
            f"postgresql://{params.get('user', '')}@{params.get('host', '')}:"
            f"{params.get('port', '5432')}/{params.get('dbname', '')}"
        )
        app = str(params.get("application_name") or "pdp-store")
        timeout_ms = int(statement_timeout * 1000)
        options = f"{params.get('options', '')} -c statement_timeout={timeout_ms}"
        common: dict[str, Any] = {
            "connect_timeout": max(2, round(connect_timeout)),  # libpq's floor is 2 s
            "options": options.strip(),
            "keepalives": 1, "keepalives_idle": 5, "keepalives_interval": 2,
            "keepalives_count": 2,
        }
        self._conninfo = make_conninfo(url, application_name=app, **common)
        self._watch_conninfo = make_conninfo(url, application_name=f"{app}-watch", **common)
        self._clock = clock
        self._lock = threading.RLock()  # one connection, one thread at a time
        self._closed = threading.Event()
        self._conn: psycopg.Connection[Any] | None = None
        self._watchers: list[threading.Thread] = []
        try:
            self._migrate()
        except BaseException:
            self.close()
            raise

    def __repr__(self) -> str:
        return f"PostgresStore({self._where!r})"

    # --- connections and transactions -----------------------------------------------------

    def _connect(self, conninfo: str) -> psycopg.Connection[Any]:
        try:
            return psycopg.connect(conninfo, autocommit=True, prepare_threshold=None)
        except psycopg.Error as exc:
            raise StoreUnavailableError(
                f"postgresql store {self._where}: cannot connect: {_first_line(exc)}"
            ) from None

    def _drop(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(psycopg.Error):
                self._conn.close()
            self._conn = None

    @contextlib.contextmanager
    def _transaction(self, *, write: bool, what: str) -> Iterator[Tx]:
        with self._lock:
            if self._closed.is_set():
                raise StoreError(f"postgresql store {self._where}: the store is closed")
            with contextlib.ExitStack() as stack:
                # A connection cut since its last use (server restart, pg_terminate_backend)
                # fails at BEGIN, before anything was sent: reconnect once and go on.
                for attempt in (1, 2):
                    stale = self._conn is not None
                    if self._conn is None:
                        self._conn = self._connect(self._conninfo)
                    try:
                        stack.enter_context(self._conn.transaction())
                        break
                    except psycopg.OperationalError as exc:
                        self._drop()
                        if attempt == 2 or not stale:
                            raise self._unavailable(what, exc) from None
                assert self._conn is not None
                try:
                    with stack:
                        yield _PgTx(self._conn.cursor())
                except psycopg.OperationalError as exc:
                    self._drop()
                    raise self._unavailable(what, exc) from None
                except psycopg.Error as exc:
                    if self._conn is not None and self._conn.broken:
                        self._drop()
                    raise StoreError(
                        f"postgresql store {self._where}: {what}: {_first_line(exc)}"
                    ) from None

    def _unavailable(self, what: str, exc: BaseException) -> StoreUnavailableError:
        return StoreUnavailableError(f"postgresql store {self._where}: {what}: {_first_line(exc)}")

    def _migrate(self) -> None:
        with self._transaction(write=True, what="migrating the schema") as tx:
            tx.rows("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
            tx.run(
                "CREATE TABLE IF NOT EXISTS pdp_schema ("
                "version INTEGER PRIMARY KEY, applied_at DOUBLE PRECISION NOT NULL)"
            )
            row = tx.one("SELECT coalesce(max(version), 0) FROM pdp_schema")
            current = 0 if row is None else int(row[0])
            if current > SCHEMA_VERSION:
                raise StoreError(
                    f"postgresql store {self._where}: schema version {current} is newer than "
                    f"this pdp supports ({SCHEMA_VERSION})"
                )
            for version in range(current, SCHEMA_VERSION):
                for statement in _MIGRATIONS[version]:
                    tx.run(statement)
                tx.run(
                    "INSERT INTO pdp_schema (version, applied_at) VALUES (%s, %s)",
                    (version + 1, self._clock()),
                )
                _log.info("postgresql store %s: schema now at version %d", self._where, version + 1)

    # --- change notification -------------------------------------------------------------------

    def watch(self, on_change: Callable[[], None], *, poll_interval: float = 0.5) -> None:
        if poll_interval <= 0:
            raise ValueError("poll_interval must be positive")
        try:
            baseline: int | None = self.change_counter()
        except StoreUnavailableError:
            baseline = None  # unknown: report a change once the watcher first connects
        ready = threading.Event()
        thread = threading.Thread(
            target=self._watch_loop, args=(on_change, poll_interval, baseline, ready),
            name="pdp-store-watch", daemon=True,
        )
        self._watchers.append(thread)
        thread.start()
        ready.wait(timeout=30)

    def _watch_loop(
        self,
        on_change: Callable[[], None],
        poll_interval: float,
        last: int | None,
        ready: threading.Event,
    ) -> None:
        delay = _BACKOFF_MIN
        failing = False
        while not self._closed.is_set():
            conn: psycopg.Connection[Any] | None = None
            try:
                conn = self._connect(self._watch_conninfo)
                conn.execute(f"LISTEN {CHANNEL}")
                if failing:
                    _log.info("postgresql store %s: watcher reconnected", self._where)
                failing, delay = False, _BACKOFF_MIN
                ready.set()
                poll_now = True  # catch up with anything missed while disconnected
                while not self._closed.is_set():
                    if poll_now:
                        row = conn.execute("SELECT changes FROM pdp_state WHERE id = 1").fetchone()
                        seen = None if row is None else int(row[0])
                        if seen is not None and seen != last:
                            last = seen
                            run_callback(on_change)
                        next_poll = time.monotonic() + poll_interval
                    wait = max(0.0, min(_WAIT_SLICE, next_poll - time.monotonic()))
                    notified = any(True for _ in conn.notifies(timeout=wait, stop_after=1))
                    poll_now = notified or time.monotonic() >= next_poll
            except (psycopg.Error, StoreError) as exc:
                if not failing:
                    _log.warning(
                        "postgresql store %s: watcher lost the database, retrying: %s",
                        self._where, _first_line(exc),
                    )
                failing = True
            finally:
                if conn is not None:
                    with contextlib.suppress(psycopg.Error):
                        conn.close()
            ready.set()
            # Jitter spreads the reconnections of many replicas; it guards nothing.
            if self._closed.wait(delay * random.uniform(0.5, 1.0)):  # noqa: S311
                break
            delay = min(delay * 2, _BACKOFF_MAX)

    def close(self) -> None:
        if self._closed.is_set():
            return
        self._closed.set()
        for thread in self._watchers:
            thread.join(timeout=10)
        with self._lock:
            self._drop()
