"""The store operations written once, in SQL both SQLite and PostgreSQL accept.

Backends supply a transaction (:class:`Tx`) that serializes writers on the one state
row; every mutation of activation, shadow or quarantine bumps its change counter.
"""

from __future__ import annotations

import abc
import builtins
import contextlib
from collections.abc import Iterator
from typing import Any

from pdp.errors import UnknownVersionError
from pdp.store.base import (
    Activation,
    BundleStore,
    QuarantineEntry,
    StoredBundle,
    check_put_arguments,
    make_version,
    verify_bundle,
)

__all__ = ["SqlStore", "Tx", "schema_statements"]

Row = tuple[Any, ...]

_SELECT_BUNDLES = (
    "SELECT version, sequence, digest, data, data_sha256, signature, key_id, "
    "pushed_by, pushed_at, name, revision, rule_count FROM pdp_bundles"
)
_INSERT_BUNDLE = (
    "INSERT INTO pdp_bundles (version, sequence, digest, data, data_sha256, signature, "
    "key_id, pushed_by, pushed_at, name, revision, rule_count) "
    "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
)
_ACTIVATION_BY_SEQUENCE = (
    "SELECT sequence, version, actor, at, previous FROM pdp_activations WHERE sequence = %s"
)
_CURRENT_ACTIVATION = (
    "SELECT sequence, version, actor, at, previous FROM pdp_activations "
    "WHERE sequence = (SELECT active FROM pdp_state WHERE id = 1)"
)


class Tx(abc.ABC):
    """One open transaction; SQL uses ``%s`` placeholders."""

    @abc.abstractmethod
    def rows(self, sql: str, params: tuple[Any, ...] = ()) -> list[Row]:
        """Run ``sql`` and return every row."""

    @abc.abstractmethod
    def run(self, sql: str, params: tuple[Any, ...] = ()) -> int:
        """Run ``sql`` and return the number of rows it changed."""

    @abc.abstractmethod
    def lock_state(self) -> None:
        """Take the write lock on the state row (serializes writers across replicas)."""

    @abc.abstractmethod
    def changed(self, counter: int) -> None:
        """Announce, at commit, that the change counter is now ``counter``."""

    def one(self, sql: str, params: tuple[Any, ...] = ()) -> Row | None:
        """Run ``sql`` and return its first row, or None."""
        found = self.rows(sql, params)
        return found[0] if found else None


def _bundle(row: Row) -> StoredBundle:
    return verify_bundle(
        StoredBundle(
            version=row[0], sequence=int(row[1]), digest=row[2], data=bytes(row[3]),
            data_sha256=row[4], signature=None if row[5] is None else bytes(row[5]),
            key_id=row[6], pushed_by=row[7], pushed_at=float(row[8]), name=row[9],
            revision=row[10], rule_count=int(row[11]),
        )
    )


def _activation(row: Row) -> Activation:
    return Activation(sequence=int(row[0]), version=row[1], by=row[2], at=float(row[3]))


class SqlStore(BundleStore):
    """Every read and write of :class:`BundleStore`, over a backend's transactions."""

    @abc.abstractmethod
    def _transaction(self, *, write: bool, what: str) -> contextlib.AbstractContextManager[Tx]:
        """Open a transaction; translate backend errors into StoreError subclasses."""

    # --- helpers inside one transaction ------------------------------------------------

    @staticmethod
    def _get(tx: Tx, version: str) -> StoredBundle:
        row = tx.one(_SELECT_BUNDLES + " WHERE version = %s", (version,))
        if row is None:
            raise UnknownVersionError(f"unknown bundle version {version!r}")
        return _bundle(row)

    @staticmethod
    def _current(tx: Tx) -> tuple[Activation, int | None] | None:
        row = tx.one(_CURRENT_ACTIVATION)
        if row is None:
            return None
        return _activation(row), None if row[4] is None else int(row[4])

    @staticmethod
    def _bump(tx: Tx) -> None:
        tx.run("UPDATE pdp_state SET changes = changes + 1 WHERE id = 1")
        row = tx.one("SELECT changes FROM pdp_state WHERE id = 1")
        assert row is not None
        tx.changed(int(row[0]))

    def _record(
        self, tx: Tx, version: str, by: str, now: float, previous: int | None
    ) -> Activation:
        row = tx.one("SELECT next_activation FROM pdp_state WHERE id = 1")
        assert row is not None
        sequence = int(row[0])
        tx.run(
            "INSERT INTO pdp_activations (sequence, version, actor, at, previous) "
            "VALUES (%s, %s, %s, %s, %s)",
            (sequence, version, by, now, previous),
        )
        tx.run(
            "UPDATE pdp_state SET active = %s, next_activation = %s WHERE id = 1",
            (sequence, sequence + 1),
        )
        self._bump(tx)
        return Activation(sequence=sequence, version=version, by=by, at=now)

    # --- bundles ---------------------------------------------------------------------------

    def put(
        self,
        data: bytes,
        *,
        digest: str,
        signature: bytes | None,
        key_id: str | None,
        pushed_by: str,
        name: str,
        revision: str,
        rule_count: int,
        now: float,
    ) -> StoredBundle:
        data_sha256 = check_put_arguments(data, digest, rule_count, pushed_by)
        with self._transaction(write=True, what="storing a bundle") as tx:
            tx.lock_state()
            row = tx.one(_SELECT_BUNDLES + " WHERE digest = %s", (digest,))
            if row is not None:
                return _bundle(row)
            found = tx.one("SELECT next_bundle FROM pdp_state WHERE id = 1")
            assert found is not None
            sequence = int(found[0])
            version = make_version(sequence, digest)
            tx.run(
                _INSERT_BUNDLE,
                (version, sequence, digest, data, data_sha256, signature, key_id,
                 pushed_by, now, name, revision, rule_count),
            )
            tx.run("UPDATE pdp_state SET next_bundle = %s WHERE id = 1", (sequence + 1,))
        return StoredBundle(
            version=version, sequence=sequence, digest=digest, data=data,
            data_sha256=data_sha256, signature=signature, key_id=key_id,
            pushed_by=pushed_by, pushed_at=now, name=name, revision=revision,
            rule_count=rule_count,
        )

    def get(self, version: str) -> StoredBundle:
        with self._transaction(write=False, what=f"reading bundle {version!r}") as tx:
            return self._get(tx, version)

    def list(self) -> list[StoredBundle]:
        with self._transaction(write=False, what="listing bundles") as tx:
            rows = tx.rows(_SELECT_BUNDLES + " ORDER BY sequence")
            return [_bundle(row) for row in rows]

    # --- activation ---------------------------------------------------------------------

    def activate(self, version: str, *, by: str, now: float) -> Activation:
        with self._transaction(write=True, what=f"activating {version!r}") as tx:
            tx.lock_state()
            self._get(tx, version)  # unknown or corrupt bundles are never activated
            current = self._current(tx)
            if current is not None and current[0].version == version:
                return current[0]
            previous = None if current is None else current[0].sequence
            return self._record(tx, version, by, now, previous)

    def rollback(self, *, by: str, now: float) -> Activation:
        with self._transaction(write=True, what="rolling back") as tx:
            tx.lock_state()
            current = self._current(tx)
            if current is None or current[1] is None:
                raise UnknownVersionError("no previously active version to roll back to")
            row = tx.one(_ACTIVATION_BY_SEQUENCE, (current[1],))
            assert row is not None
            target = _activation(row)
            self._get(tx, target.version)
            # The new activation inherits the target's predecessor, so a second rollback
            # walks one step further back instead of toggling between two versions.
            previous = None if row[4] is None else int(row[4])
            return self._record(tx, target.version, by, now, previous)

    def active(self) -> tuple[Activation, StoredBundle] | None:
        with self._transaction(write=False, what="reading the active bundle") as tx:
            current = self._current(tx)
            if current is None:
                return None
            return current[0], self._get(tx, current[0].version)

    def activation(self) -> Activation | None:
        with self._transaction(write=False, what="reading the activation") as tx:
            current = self._current(tx)
            return None if current is None else current[0]

    def set_shadow(self, version: str | None, *, by: str, now: float) -> None:
        with self._transaction(write=True, what="setting the shadow version") as tx:
            tx.lock_state()
            if version is not None:
                self._get(tx, version)
            tx.run("UPDATE pdp_state SET shadow = %s WHERE id = 1", (version,))
            self._bump(tx)

    def shadow(self) -> str | None:
        with self._transaction(write=False, what="reading the shadow version") as tx:
            row = tx.one("SELECT shadow FROM pdp_state WHERE id = 1")
            return None if row is None or row[0] is None else str(row[0])

    # --- quarantine ---------------------------------------------------------------------

    def quarantine(self, entry: QuarantineEntry) -> None:
        if not entry.subject:
            raise ValueError("a quarantine entry needs a subject")
        with self._transaction(write=True, what="quarantining a subject") as tx:
            tx.lock_state()
            tx.run(
                "INSERT INTO pdp_quarantine (subject, until_ts, reason, actor) "
                "VALUES (%s, %s, %s, %s) ON CONFLICT (subject) DO UPDATE SET "
                "until_ts = excluded.until_ts, reason = excluded.reason, actor = excluded.actor",
                (entry.subject, entry.until, entry.reason, entry.by),
            )
            self._bump(tx)

    def release(self, subject: str) -> bool:
        with self._transaction(write=True, what="releasing a subject") as tx:
            tx.lock_state()
            if tx.run("DELETE FROM pdp_quarantine WHERE subject = %s", (subject,)) == 0:
                return False
            self._bump(tx)
            return True

    def quarantined(self, *, now: float) -> builtins.list[QuarantineEntry]:
        with self._transaction(write=False, what="listing quarantine") as tx:
            rows = tx.rows(
                "SELECT subject, until_ts, reason, actor FROM pdp_quarantine "
                "WHERE until_ts > %s ORDER BY subject",
                (now,),
            )
        return [
            QuarantineEntry(subject=r[0], until=float(r[1]), reason=r[2], by=r[3]) for r in rows
        ]

    # --- service-token replay memory -------------------------------------------------------

    def remember_token(self, issuer: str, jti: str, until: float, *, now: float) -> bool:
        with self._transaction(write=True, what="remembering a service token") as tx:
            tx.run("DELETE FROM pdp_seen_tokens WHERE until_ts <= %s", (now,))
            inserted = tx.run(
                "INSERT INTO pdp_seen_tokens (issuer, jti, until_ts) VALUES (%s, %s, %s) "
                "ON CONFLICT (issuer, jti) DO NOTHING",
                (issuer, jti, until),
            )
            return inserted == 1

    def state_token(self) -> object:
        return self.change_counter()

    def change_counter(self) -> int:
        """The store's change counter (the state token as an int)."""
        with self._transaction(write=False, what="reading the change counter") as tx:
            row = tx.one("SELECT changes FROM pdp_state WHERE id = 1")
            assert row is not None
            return int(row[0])


def seen_tokens_statements(real: str) -> Iterator[str]:
    """Migration 2: the service-token replay memory shared by every replica."""
    yield f"""CREATE TABLE pdp_seen_tokens (
        issuer TEXT NOT NULL,
        jti TEXT NOT NULL,
        until_ts {real} NOT NULL,
        PRIMARY KEY (issuer, jti))"""
    yield "CREATE INDEX pdp_seen_tokens_until ON pdp_seen_tokens (until_ts)"


def schema_statements(blob: str, real: str) -> Iterator[str]:
    """The first schema, with the backend's names for binary and float column types."""
    yield f"""CREATE TABLE pdp_bundles (
        sequence BIGINT PRIMARY KEY,
        version TEXT NOT NULL UNIQUE,
        digest TEXT NOT NULL UNIQUE,
        data {blob} NOT NULL,
        data_sha256 TEXT NOT NULL,
        signature {blob},
        key_id TEXT,
        pushed_by TEXT NOT NULL,
        pushed_at {real} NOT NULL,
        name TEXT NOT NULL,
        revision TEXT NOT NULL,
        rule_count INTEGER NOT NULL)"""
    yield f"""CREATE TABLE pdp_activations (
        sequence BIGINT PRIMARY KEY,
        version TEXT NOT NULL REFERENCES pdp_bundles(version),
        actor TEXT NOT NULL,
        at {real} NOT NULL,
        previous BIGINT REFERENCES pdp_activations(sequence))"""
    yield """CREATE TABLE pdp_state (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        active BIGINT REFERENCES pdp_activations(sequence),
        shadow TEXT REFERENCES pdp_bundles(version),
        next_bundle BIGINT NOT NULL,
        next_activation BIGINT NOT NULL,
        changes BIGINT NOT NULL)"""
    yield "INSERT INTO pdp_state VALUES (1, NULL, NULL, 1, 1, 0)"
    yield f"""CREATE TABLE pdp_quarantine (
        subject TEXT PRIMARY KEY,
        until_ts {real} NOT NULL,
        reason TEXT NOT NULL,
        actor TEXT NOT NULL)"""
