"""The store's public surface and its ``[store]`` config section."""

from __future__ import annotations

from pathlib import Path

import pytest

import pdp.store
from pdp.configuration import build_section
from pdp.errors import ConfigError
from pdp.store import StoreConfig, open_configured

from .conftest import bundle_bytes, push_bytes


def test_exported_names_are_exactly_the_intended_ones() -> None:
    assert sorted(pdp.store.__all__) == [
        "Activation", "BundleStore", "QuarantineEntry", "StoreConfig", "StoredBundle",
        "open_configured", "open_store",
    ]
    for name in pdp.store.__all__:
        assert getattr(pdp.store, name) is not None


def test_store_section_from_toml_table() -> None:
    config = build_section(
        StoreConfig, {"url": "postgresql://pdp@db:5432/pdp", "poll_interval": 1}, where="[store]"
    )
    assert config.url == "postgresql://pdp@db:5432/pdp"
    assert config.poll_interval == 1.0
    assert build_section(StoreConfig, None, where="[store]") == StoreConfig()


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"url": "redis://x"}, "sqlite: or postgresql://"),
        ({"connect_timeout": 0}, "connect_timeout must be positive"),
        ({"poll_interval": -1}, "poll_interval must be positive"),
        ({"urll": "x"}, "unknown setting"),
    ],
)
def test_store_section_errors_name_the_section(table: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=r"\[store\]") as caught:
        build_section(StoreConfig, table, where="[store]")
    assert message in str(caught.value)


def test_default_url_is_sqlite_in_the_data_directory(tmp_path: Path) -> None:
    assert StoreConfig().resolve_url(tmp_path) == f"sqlite:///{tmp_path.resolve()}/pdp.db"
    with open_configured(StoreConfig(), data_dir=tmp_path / "data") as store:
        push_bytes(store, bundle_bytes(1))
    assert (tmp_path / "data" / "pdp.db").is_file()
