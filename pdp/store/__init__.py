"""Versioned bundle stores: bytes plus metadata, activation history, shadow, quarantine.

SQLite is the embedded default; several replicas share PostgreSQL. Chosen by URL.
"""

from pdp.store.base import Activation, BundleStore, QuarantineEntry, StoredBundle
from pdp.store.factory import StoreConfig, open_configured, open_store

__all__ = [
    "Activation",
    "BundleStore",
    "QuarantineEntry",
    "StoreConfig",
    "StoredBundle",
    "open_configured",
    "open_store",
]
