"""SQLite-only store behaviour: crash safety under SIGKILL, torn WAL writes, bytes
altered on disk, several processes sharing one file, URLs and schema versions."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from pdp.errors import ConfigError, StoreCorruptError, StoreError
from pdp.store import open_store
from pdp.store.sqlite import SCHEMA_VERSION

from .conftest import NOW, bundle_bytes, push_bytes

# Pushes and activates bundles start, start+1, ... forever, printing each number when done.
PUSHER = textwrap.dedent("""
    import hashlib, sys
    from pdp.store import open_store
    url, start, step = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    store = open_store(url)
    n = start
    while True:
        data = (f"name: b{n}\\n" + "x" * (n % 5000)).encode()
        b = store.put(data, digest=hashlib.sha256(data).hexdigest(), signature=b"s",
                      key_id="k", pushed_by=f"p{start}", name="n", revision="r",
                      rule_count=1, now=1.0)
        store.activate(b.version, by="p", now=1.0)
        print(n, flush=True)
        n += step
        if step > 1 and n >= start + step * 15:
            break
""")


def _spawn(url: str, start: int, step: int) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", PUSHER, url, str(start), str(step)],
        stdout=subprocess.PIPE, text=True,
    )


def _check_consistent(path: Path) -> int:
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
    finally:
        conn.close()
    with open_store(f"sqlite:///{path}") as store:
        listed = store.list()  # verifies every bundle's sha256
        for bundle in listed:
            assert store.get(bundle.version) == bundle
        current = store.active()
        assert current is not None and current[1] in listed
        return len(listed)


def test_process_killed_during_push_and_activate_leaves_store_consistent(tmp_path: Path) -> None:
    path = tmp_path / "bundles.db"
    count = 0
    for round_ in range(3):
        proc = _spawn(f"sqlite:///{path}", 1000 * round_, 1)
        assert proc.stdout is not None
        for _ in range(10 + 7 * round_):  # kill at a different point in each round
            assert proc.stdout.readline(), "pusher died on its own"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
        now = _check_consistent(path)
        assert now > count
        count = now


def test_torn_wal_frame_is_ignored_and_store_stays_consistent(tmp_path: Path) -> None:
    path = tmp_path / "bundles.db"
    proc = _spawn(f"sqlite:///{path}", 0, 1)
    assert proc.stdout is not None
    for _ in range(12):
        assert proc.stdout.readline()
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stdout.close()
    wal = Path(f"{path}-wal")
    size = wal.stat().st_size
    assert size > 5000, "the killed writer left a WAL behind"
    # Tear the last frame in half, as a power cut during its write would.
    with wal.open("r+b") as f:
        f.truncate(size - 1500)
    assert _check_consistent(path) >= 1


def test_bundle_bytes_altered_in_the_database_file_are_refused(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'bundles.db'}"
    marker = b"effect: deny-" + b"M" * 40
    with open_store(url) as store:
        bundle = push_bytes(store, marker)
        store.activate(bundle.version, by="a", now=NOW)
    conn = sqlite3.connect(tmp_path / "bundles.db")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    raw = (tmp_path / "bundles.db").read_bytes()
    assert raw.count(marker) == 1
    (tmp_path / "bundles.db").write_bytes(raw.replace(marker, marker.replace(b"deny", b"allo")))
    with open_store(url) as store, pytest.raises(StoreCorruptError, match=bundle.version):
        store.active()


def test_two_processes_pushing_into_one_file_lose_nothing(tmp_path: Path) -> None:
    path = tmp_path / "bundles.db"
    open_store(f"sqlite:///{path}").close()
    procs = [_spawn(f"sqlite:///{path}", start, 2) for start in (0, 1)]
    for proc in procs:
        out, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0
        assert len(out.split()) == 15
    with open_store(f"sqlite:///{path}") as store:
        listed = store.list()
        assert sorted(b.data.split(b"\n")[0] for b in listed) == sorted(
            f"name: b{n}".encode() for n in range(30)
        )
    conn = sqlite3.connect(path)
    seqs = [r[0] for r in conn.execute("SELECT sequence FROM pdp_activations ORDER BY sequence")]
    conn.close()
    assert seqs == list(range(1, 31)), "activations are totally ordered, none lost"


def test_store_file_is_wal_with_full_sync(tmp_path: Path) -> None:
    with open_store(f"sqlite:///{tmp_path / 'b.db'}"):
        conn = sqlite3.connect(tmp_path / "b.db")
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 2
        conn.close()


def test_file_that_is_not_a_database_is_refused(tmp_path: Path) -> None:
    (tmp_path / "b.db").write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreCorruptError):
        open_store(f"sqlite:///{tmp_path / 'b.db'}")


def test_schema_newer_than_this_code_is_refused(tmp_path: Path) -> None:
    open_store(f"sqlite:///{tmp_path / 'b.db'}").close()
    conn = sqlite3.connect(tmp_path / "b.db")
    conn.execute("PRAGMA user_version = 99")
    conn.close()
    with pytest.raises(StoreError, match="newer"):
        open_store(f"sqlite:///{tmp_path / 'b.db'}")


def test_relative_sqlite_url_and_private_data_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with open_store("sqlite:data/bundles.db") as store:
        push_bytes(store, bundle_bytes(1))
    assert (tmp_path / "data" / "bundles.db").is_file()
    assert os.stat(tmp_path / "data").st_mode & 0o077 == 0


@pytest.mark.parametrize(
    "url", ["sqlite://host/x.db", "sqlite:", "sqlite:///", "sqlite:///:memory:", "mysql://x/y"]
)
def test_malformed_urls_are_config_errors(url: str) -> None:
    with pytest.raises(ConfigError, match=r"\[store\]\.url"):
        open_store(url)
