"""The sqlite store against the conformance suite, plus what only a file-backed store has."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from controlplane.resources.dataplane import DATAPLANE
from controlplane.resources.mesh import MESH
from controlplane.store import StoreUnavailable
from controlplane.store.factory import create_store
from controlplane.store.memory import MemoryStore
from controlplane.store.migrations import latest_version
from controlplane.store.sqlite import SqliteStore
from tests.unit.store_conformance import StoreConformance, dataplane, mesh


class TestSqliteStore(StoreConformance):
    @pytest.fixture
    async def store(self, tmp_path: Path) -> AsyncIterator[SqliteStore]:
        s = SqliteStore(tmp_path / "kuma.db")
        await s.start()
        yield s
        await s.close()


async def test_data_survives_close_and_reopen(tmp_path: Path) -> None:
    path = tmp_path / "state" / "kuma.db"
    first = SqliteStore(path)
    await first.start()
    await first.create(mesh())
    v2 = await first.update(await first.create(dataplane("dp-1", labels={"team": "a"}, inbounds=3)))
    await first.close()
    await first.close()  # idempotent

    second = SqliteStore(path)
    await second.start()
    try:
        assert await second.get(DATAPLANE, "dp-1", "default") == v2
        assert (await second.get(MESH, "default")).meta.version == 1
        v3 = await second.update(v2)
        assert v3.meta.version == 3 and v3.meta.creation_time == v2.meta.creation_time
    finally:
        await second.close()


async def test_schema_is_created_and_versioned(tmp_path: Path) -> None:
    path = tmp_path / "kuma.db"
    store = SqliteStore(path)
    await store.start()
    await store.close()
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        versions = [v for (v,) in db.execute("SELECT version FROM schema_migrations ORDER BY version")]
    assert versions == list(range(1, latest_version("sqlite") + 1))
    # Reopening applies nothing twice.
    again = SqliteStore(path)
    await again.start()
    await again.close()
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT count(*) FROM schema_migrations").fetchone()[0] == len(versions)


async def test_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "kuma.db"
    store = SqliteStore(path)
    await store.start()
    await store.close()
    with sqlite3.connect(path) as db:
        db.execute("INSERT INTO schema_migrations VALUES (999, '0999_future', '')")
    with pytest.raises(StoreUnavailable, match="newer"):
        await SqliteStore(path).start()


async def test_used_without_start_starts_itself_and_refuses_after_close(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "kuma.db")
    await store.create(mesh())
    await store.close()
    with pytest.raises(StoreUnavailable):
        await store.get(MESH, "default")


def test_factory(tmp_path: Path) -> None:
    assert isinstance(create_store("memory", work_dir=tmp_path, postgres=None), MemoryStore)
    sqlite_store = create_store("sqlite", work_dir=tmp_path, postgres=None)
    assert isinstance(sqlite_store, SqliteStore) and sqlite_store.path == tmp_path / "kuma.db"
    with pytest.raises(ValueError, match=r"unknown store type 'mysql'.*memory, sqlite, postgres"):
        create_store("mysql", work_dir=tmp_path, postgres=None)


async def test_a_write_whose_caller_is_cancelled_after_commit_still_publishes_its_event(tmp_path: Path) -> None:
    """The transaction runs on the store's thread; if the awaiting task is cancelled after COMMIT (a client that
    went away, a shutdown), the write happened, so watchers must still hear of it."""
    store = SqliteStore(tmp_path / "kuma.db")
    await store.start()
    try:
        async with store.watch() as events:
            task = asyncio.create_task(store.create(mesh("cancelled")))
            await asyncio.sleep(0)  # the task has handed its transaction to the store's thread
            committed = threading.Event()
            assert store._executor is not None
            store._executor.submit(committed.set)  # runs once the create's transaction is done (one thread)
            assert committed.wait(10)  # blocks the loop: the task cannot have resumed yet
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            event = await asyncio.wait_for(events.get(), 5)
            assert (event.op, event.type, event.name) == ("create", "Mesh", "cancelled")
        assert (await store.get(MESH, "cancelled")).meta.version == 1
    finally:
        await store.close()
