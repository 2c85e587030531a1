"""The one store contract, run against every backend (sqlite and postgresql).

Attack regressions are named for the attack: tampered rows, injected versions.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import pytest

from pdp.errors import StoreCorruptError, StoreError, UnknownVersionError
from pdp.store import BundleStore, QuarantineEntry, open_store

from .conftest import NOW, Push, RawSql, bundle_bytes, push_bytes


def test_put_then_get_round_trips_every_field(store: BundleStore, push: Push) -> None:
    stored = push(1)
    got = store.get(stored.version)
    assert got == stored
    assert got.data == bundle_bytes(1)
    assert got.version == f"{got.sequence}-{got.digest[:12]}"
    assert (got.signature, got.key_id, got.pushed_by, got.pushed_at) == (b"sig", "k1", "admin", NOW)
    assert (got.name, got.revision, got.rule_count) == ("example", "r1", 3)


def test_push_of_a_stored_digest_returns_the_existing_record(
    store: BundleStore, push: Push
) -> None:
    first = push(1)
    again = push(1, by="someone-else", now=NOW + 5)
    assert again == first
    assert [b.version for b in store.list()] == [first.version]


def test_sequences_strictly_increase_and_list_is_by_sequence(
    store: BundleStore, push: Push
) -> None:
    pushed = [push(n) for n in range(5)]
    sequences = [b.sequence for b in pushed]
    assert sequences == sorted(sequences) and len(set(sequences)) == 5
    assert store.list() == pushed


def test_put_refuses_malformed_arguments(store: BundleStore) -> None:
    common = dict(signature=None, key_id=None, name="n", revision="r", now=NOW)
    with pytest.raises(ValueError, match="digest"):
        store.put(b"x", digest="ABC", pushed_by="a", rule_count=0, **common)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="non-empty"):
        store.put(b"", digest="a" * 64, pushed_by="a", rule_count=0, **common)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="rule_count"):
        store.put(b"x", digest="a" * 64, pushed_by="a", rule_count=-1, **common)  # type: ignore[arg-type]
    assert store.list() == []


def test_unsigned_bundle_round_trips_none(store: BundleStore) -> None:
    stored = store.put(
        b"data", digest="b" * 64, signature=None, key_id=None, pushed_by="a",
        name="n", revision="r", rule_count=0, now=NOW,
    )
    assert store.get(stored.version).signature is None
    assert store.get(stored.version).key_id is None


def test_get_unknown_version_raises(store: BundleStore, push: Push) -> None:
    push(1)
    with pytest.raises(UnknownVersionError, match="99-"):
        store.get("99-000000000000")


def test_sql_injection_in_version_is_an_unknown_version(store: BundleStore, push: Push) -> None:
    push(1)
    for evil in ("1' OR '1'='1", "x'; DROP TABLE pdp_bundles; --", "%s", "?"):
        with pytest.raises(UnknownVersionError):
            store.get(evil)
    assert len(store.list()) == 1


def test_activate_and_active(store: BundleStore, push: Push) -> None:
    assert store.active() is None
    one, two = push(1), push(2)
    first = store.activate(one.version, by="alice", now=NOW + 1)
    second = store.activate(two.version, by="bob", now=NOW + 2)
    assert second.sequence > first.sequence
    current = store.active()
    assert current is not None
    assert current[0] == second and current[0].by == "bob" and current[0].at == NOW + 2
    assert current[1] == two


def test_activate_unknown_version_leaves_active_unchanged(store: BundleStore, push: Push) -> None:
    one = push(1)
    store.activate(one.version, by="a", now=NOW)
    token = store.state_token()
    with pytest.raises(UnknownVersionError):
        store.activate("7-deadbeefdead", by="a", now=NOW)
    current = store.active()
    assert current is not None and current[1].version == one.version
    assert store.state_token() == token


def test_activating_the_active_version_is_idempotent(store: BundleStore, push: Push) -> None:
    one = push(1)
    first = store.activate(one.version, by="a", now=NOW)
    assert store.activate(one.version, by="b", now=NOW + 1) == first


def test_rollback_walks_back_through_history_then_raises(store: BundleStore, push: Push) -> None:
    v1, v2, v3 = (push(n).version for n in (1, 2, 3))
    for v in (v1, v2, v3):
        store.activate(v, by="a", now=NOW)
    back = store.rollback(by="ops", now=NOW + 10)
    assert back.version == v2 and back.by == "ops" and back.at == NOW + 10
    assert store.rollback(by="ops", now=NOW + 11).version == v1
    with pytest.raises(UnknownVersionError, match="roll back"):
        store.rollback(by="ops", now=NOW + 12)
    current = store.active()
    assert current is not None and current[1].version == v1


def test_rollback_without_history_raises(store: BundleStore, push: Push) -> None:
    with pytest.raises(UnknownVersionError):
        store.rollback(by="ops", now=NOW)
    store.activate(push(1).version, by="a", now=NOW)
    with pytest.raises(UnknownVersionError):
        store.rollback(by="ops", now=NOW)


def test_activate_after_rollback_can_be_rolled_back(store: BundleStore, push: Push) -> None:
    v1, v2, v3 = (push(n).version for n in (1, 2, 3))
    store.activate(v1, by="a", now=NOW)
    store.activate(v2, by="a", now=NOW)
    store.rollback(by="a", now=NOW)
    store.activate(v3, by="a", now=NOW)
    assert store.rollback(by="a", now=NOW).version == v1


def test_shadow_set_clear_and_unknown(store: BundleStore, push: Push) -> None:
    assert store.shadow() is None
    one = push(1)
    store.set_shadow(one.version, by="a", now=NOW)
    assert store.shadow() == one.version
    with pytest.raises(UnknownVersionError):
        store.set_shadow("5-abcdefabcdef", by="a", now=NOW)
    assert store.shadow() == one.version
    store.set_shadow(None, by="a", now=NOW)
    assert store.shadow() is None


def test_quarantine_upsert_release_and_expiry(store: BundleStore) -> None:
    store.quarantine(QuarantineEntry(subject="spiffe://x/a", until=NOW + 60, reason="r1", by="d"))
    store.quarantine(QuarantineEntry(subject="spiffe://x/b", until=NOW + 10, reason="r", by="d"))
    store.quarantine(QuarantineEntry(subject="spiffe://x/a", until=NOW + 90, reason="r2", by="e"))
    assert store.quarantined(now=NOW) == [
        QuarantineEntry(subject="spiffe://x/a", until=NOW + 90, reason="r2", by="e"),
        QuarantineEntry(subject="spiffe://x/b", until=NOW + 10, reason="r", by="d"),
    ]
    assert [e.subject for e in store.quarantined(now=NOW + 10)] == ["spiffe://x/a"]
    assert store.release("spiffe://x/a") is True
    assert store.release("spiffe://x/a") is False
    assert store.quarantined(now=NOW) == [
        QuarantineEntry(subject="spiffe://x/b", until=NOW + 10, reason="r", by="d")
    ]


def test_state_token_changes_with_activation_shadow_and_quarantine(
    store: BundleStore, push: Push
) -> None:
    seen = [store.state_token()]
    one, two = push(1), push(2)
    store.get(one.version)
    assert store.state_token() == seen[-1], "pushes and reads are not state changes"
    steps: list[Callable[[], object]] = [
        lambda: store.activate(one.version, by="a", now=NOW),
        lambda: store.activate(two.version, by="a", now=NOW),
        lambda: store.rollback(by="a", now=NOW),
        lambda: store.set_shadow(two.version, by="a", now=NOW),
        lambda: store.quarantine(QuarantineEntry(subject="s", until=NOW + 1, reason="", by="a")),
        lambda: store.release("s"),
    ]
    for step in steps:
        step()
        assert store.state_token() not in seen
        seen.append(store.state_token())


def test_tampered_bundle_data_is_refused_loudly(
    store: BundleStore, push: Push, raw_sql: RawSql
) -> None:
    one = push(1)
    evil = b"rules: [allow-all]"
    raw_sql("UPDATE pdp_bundles SET data = %s WHERE version = %s", (evil, one.version))
    with pytest.raises(StoreCorruptError, match=one.version):
        store.get(one.version)
    with pytest.raises(StoreCorruptError):
        store.list()


def test_tampered_active_bundle_is_refused_by_active(
    store: BundleStore, push: Push, raw_sql: RawSql
) -> None:
    one = push(1)
    store.activate(one.version, by="a", now=NOW)
    raw_sql("UPDATE pdp_bundles SET data = %s WHERE version = %s", (b"evil", one.version))
    with pytest.raises(StoreCorruptError):
        store.active()


def test_tampered_bundle_is_never_activated_or_rolled_back_to(
    store: BundleStore, push: Push, raw_sql: RawSql
) -> None:
    one, two, three = push(1), push(2), push(3)
    store.activate(one.version, by="a", now=NOW)
    store.activate(two.version, by="a", now=NOW)
    raw_sql("UPDATE pdp_bundles SET data = %s WHERE version IN (%s, %s)",
            (b"evil", one.version, three.version))
    with pytest.raises(StoreCorruptError):
        store.activate(three.version, by="a", now=NOW)
    with pytest.raises(StoreCorruptError):
        store.rollback(by="a", now=NOW)
    current = store.active()
    assert current is not None and current[1] == two


def test_tampered_recorded_hash_or_version_is_refused(
    store: BundleStore, push: Push, raw_sql: RawSql
) -> None:
    one, two = push(1), push(2)
    raw_sql("UPDATE pdp_bundles SET data_sha256 = %s WHERE version = %s", ("0" * 64, one.version))
    with pytest.raises(StoreCorruptError):
        store.get(one.version)
    # Re-pointing a version at another digest is caught by the version check.
    raw_sql("UPDATE pdp_bundles SET digest = %s WHERE version = %s", ("c" * 64, two.version))
    with pytest.raises(StoreCorruptError, match="version"):
        store.get(two.version)


def test_reopening_restores_bundles_active_shadow_and_quarantine(store_url: str) -> None:
    with open_store(store_url) as first:
        one, two = push_bytes(first, bundle_bytes(1)), push_bytes(first, bundle_bytes(2))
        first.activate(one.version, by="a", now=NOW)
        first.set_shadow(two.version, by="a", now=NOW)
        first.quarantine(QuarantineEntry(subject="s", until=NOW + 9, reason="r", by="d"))
    with open_store(store_url) as again:
        current = again.active()
        assert current is not None and current[1] == one
        assert again.shadow() == two.version
        assert [e.subject for e in again.quarantined(now=NOW)] == ["s"]
        assert again.list() == [one, two]


def test_closed_store_raises_store_error(store_url: str) -> None:
    opened = open_store(store_url)
    opened.close()
    opened.close()  # idempotent
    with pytest.raises(StoreError, match="closed"):
        opened.list()


def test_concurrent_pushers_and_activators_lose_nothing(store_url: str) -> None:
    stores = [open_store(store_url), open_store(store_url)]
    try:
        with ThreadPoolExecutor(max_workers=4) as pool:
            pushed = list(pool.map(
                lambda n: push_bytes(stores[n % 2], bundle_bytes(n), by=f"admin{n % 2}"),
                range(12),
            ))
            assert len({b.sequence for b in pushed}) == 12
            assert sorted(b.version for b in stores[0].list()) == sorted(b.version for b in pushed)
            activations = list(pool.map(
                lambda b: stores[b.sequence % 2].activate(b.version, by="x", now=NOW), pushed
            ))
        sequences = sorted(a.sequence for a in activations)
        assert len(set(sequences)) == 12, "every activation got its own place in the order"
        assert sequences == list(range(sequences[0], sequences[0] + 12))
        last = max(activations, key=lambda a: a.sequence)
        current = stores[1].active()
        assert current is not None and current[0] == last
    finally:
        for s in stores:
            s.close()


def test_watch_fires_in_another_replica_after_activation(store_url: str) -> None:
    # PostgreSQL polls only every 60 s here, so a prompt call proves NOTIFY delivered it.
    poll = 0.05 if store_url.startswith("sqlite:") else 60.0
    admin, replica = open_store(store_url), open_store(store_url)
    try:
        one = push_bytes(admin, bundle_bytes(1))
        fired = threading.Event()
        replica.watch(fired.set, poll_interval=poll)
        admin.activate(one.version, by="a", now=NOW)
        assert fired.wait(10), "watch() did not report another replica's activation"
        current = replica.active()
        assert current is not None and current[1].version == one.version
        fired.clear()
        admin.quarantine(QuarantineEntry(subject="s", until=NOW + 5, reason="r", by="d"))
        assert fired.wait(10), "watch() did not report a quarantine change"
    finally:
        admin.close()
        replica.close()


def test_failing_watch_callback_does_not_stop_the_watcher(store: BundleStore, push: Push) -> None:
    calls: list[int] = []
    first, second = threading.Event(), threading.Event()

    def flaky() -> None:
        calls.append(1)
        if len(calls) == 1:
            first.set()
            raise RuntimeError("callback bug")
        second.set()

    one, two = push(1), push(2)
    store.watch(flaky, poll_interval=0.05)
    store.activate(one.version, by="a", now=NOW)
    assert first.wait(10)
    store.activate(two.version, by="a", now=NOW)
    assert second.wait(10)


def test_watch_refuses_a_non_positive_interval(store: BundleStore) -> None:
    with pytest.raises(ValueError):
        store.watch(lambda: None, poll_interval=0)


def test_remember_token_once_across_instances_until_it_expires(
    store: BundleStore, second_store: BundleStore,
) -> None:
    assert store.remember_token("pdp", "jti-1", 200.0, now=100.0) is True
    # Another replica (another store instance on the same database) sees it.
    assert second_store.remember_token("pdp", "jti-1", 200.0, now=101.0) is False
    assert store.remember_token("other-issuer", "jti-1", 200.0, now=101.0) is True
    # Once expired, the entry is forgotten (a token past exp is refused by its exp anyway).
    assert second_store.remember_token("pdp", "jti-1", 400.0, now=250.0) is True
