"""Choosing a bundle store by URL: ``sqlite:`` (embedded default) or ``postgresql://``.

Also the ``[store]`` config section, with one doc line per setting.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pdp.clock import Clock, system_clock
from pdp.errors import ConfigError
from pdp.store.base import BundleStore

__all__ = ["StoreConfig", "open_configured", "open_store"]

_FIELD = "[store].url"


@dataclass(frozen=True, slots=True, kw_only=True)
class StoreConfig:
    """The ``[store]`` section: where bundles live and how long to wait for the database."""

    # "sqlite:///abs/pdp.db", "sqlite:rel/pdp.db" or "postgresql://user@host:port/db";
    # empty: the SQLite file pdp.db in the server's data directory.
    url: str = ""
    connect_timeout: float = 2.0  # PostgreSQL: seconds a connection attempt may take
    statement_timeout: float = 5.0  # PostgreSQL: seconds before a statement is cancelled
    busy_timeout: float = 5.0  # SQLite: seconds a write waits for another process's lock
    poll_interval: float = 0.5  # seconds between change polls (PostgreSQL: NOTIFY fallback)

    def __post_init__(self) -> None:
        for name in ("connect_timeout", "statement_timeout", "busy_timeout", "poll_interval"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
        if self.url:
            _scheme(self.url)  # raises for an unknown scheme

    def resolve_url(self, data_dir: Path) -> str:
        """The configured URL, or the default SQLite file in ``data_dir``."""
        return self.url or f"sqlite:///{Path(data_dir).resolve() / 'pdp.db'}"


def _scheme(url: str) -> str:
    if url.startswith("sqlite:"):
        return "sqlite"
    if url.startswith(("postgresql://", "postgres://")):
        return "postgresql"
    raise ValueError("store url must start with sqlite: or postgresql://")


def _sqlite_path(url: str) -> Path:
    rest = url[len("sqlite:"):]
    if rest.startswith("//"):
        if not rest.startswith("///"):
            raise ConfigError("sqlite URLs take no host: use sqlite:///abs/path.db", field=_FIELD)
        rest = rest[2:]
    # An in-memory database would be a store nobody else can see, lost at exit.
    if not rest or rest.endswith("/") or ":memory:" in rest:
        raise ConfigError("a sqlite URL needs a database file path", field=_FIELD)
    return Path(rest)


def open_store(
    url: str,
    *,
    clock: Clock = system_clock,
    connect_timeout: float = 2.0,
    statement_timeout: float = 5.0,
    busy_timeout: float = 5.0,
) -> BundleStore:
    """Open the store at ``url``: ``sqlite:///abs/path.db``, ``sqlite:rel/path.db`` or
    ``postgresql://user@host:port/db``; creates and migrates the schema as needed.

    Raises ConfigError for a malformed URL, StoreUnavailableError if the database
    cannot be reached, StoreCorruptError if a SQLite file is not a database.
    """
    try:
        scheme = _scheme(url)
    except ValueError as exc:
        raise ConfigError(str(exc), field=_FIELD) from None
    if scheme == "sqlite":
        from pdp.store.sqlite import SqliteStore

        path = _sqlite_path(url)
        # The data directory holds the only copy of the bundles: keep it private.
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        return SqliteStore(path, busy_timeout=busy_timeout)
    from pdp.store.postgres import PostgresStore

    return PostgresStore(
        url, clock=clock, connect_timeout=connect_timeout, statement_timeout=statement_timeout
    )


def open_configured(
    config: StoreConfig, *, data_dir: Path, clock: Clock = system_clock
) -> BundleStore:
    """Open the store a ``[store]`` section describes; raises as :func:`open_store`."""
    return open_store(
        config.resolve_url(data_dir),
        clock=clock,
        connect_timeout=config.connect_timeout,
        statement_timeout=config.statement_timeout,
        busy_timeout=config.busy_timeout,
    )
