"""Pick the store backend the configuration names (KUMA_STORE_TYPE: memory | sqlite | postgres)."""

from __future__ import annotations

from pathlib import Path

from .base import ResourceStore
from .postgres_config import PostgresConfig

STORE_TYPES = ("memory", "sqlite", "postgres")
SQLITE_FILE = "kuma.db"


def create_store(store_type: str, *, work_dir: Path, postgres: PostgresConfig | None = None) -> ResourceStore:
    """A store, not started yet (call `await store.start()`). Backends are imported lazily so that a
    sqlite or memory control plane never loads the PostgreSQL driver."""
    if store_type == "memory":
        from .memory import MemoryStore

        return MemoryStore()
    if store_type == "sqlite":
        from .sqlite import SqliteStore

        return SqliteStore(Path(work_dir) / SQLITE_FILE)
    if store_type == "postgres":
        from .postgres import PostgresStore

        return PostgresStore(postgres or PostgresConfig())
    raise ValueError(f"unknown store type {store_type!r}: use one of {', '.join(STORE_TYPES)} "
                     "(KUMA_STORE_TYPE / store.type)")
