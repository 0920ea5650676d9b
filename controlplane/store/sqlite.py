"""SQLite store: the default backend, one file in the control plane's work directory.

sqlite3 is blocking, so every statement runs on one dedicated worker thread that owns the only connection.
That thread is also what serialises writes: each write is one `BEGIN IMMEDIATE` transaction, and no two
run at once, so the optimistic-concurrency checks (version compare, mesh exists) need no extra locking.
Events are published on the event loop after the transaction has committed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from controlplane.resources import load_all
from controlplane.resources.base import Meta, Resource, ResourceType
from controlplane.resources.codec import spec_from_store

from . import migrations
from ._sql import MESH_TYPE, conflict, labels_json, next_offset, spec_json, total_from_page
from .base import (
    AlreadyExists,
    ChangeEvent,
    ListQuery,
    MeshNotFound,
    NotFound,
    RawResource,
    RawResourceList,
    ResourceList,
    ResourceStore,
    StoreUnavailable,
    describe,
)

log = logging.getLogger("kuma.store")

BUSY_TIMEOUT_MS = 5000

T = TypeVar("T")

_COLUMNS = "name, mesh, version, spec, labels, creation_time, modification_time"


def _ts(t: datetime) -> str:
    # Fixed-width ISO 8601 in UTC (always with microseconds) so the text sorts like the time.
    return t.astimezone(UTC).isoformat(timespec="microseconds")


_Rows = tuple[list[tuple[Any, ...]], int]  # a page's rows, the number of matches


class SqliteStore(ResourceStore):
    backend = "sqlite"

    def __init__(self, path: Path | str) -> None:
        super().__init__()
        self.path = Path(path)
        self._executor: ThreadPoolExecutor | None = None
        self._conn: sqlite3.Connection | None = None
        self._closed = False
        self._start_lock = asyncio.Lock()

    # -- lifecycle -------------------------------------------------------------------------------------

    async def start(self) -> None:
        async with self._start_lock:
            if self._executor is not None:
                return
            if self._closed:
                raise StoreUnavailable(f"the sqlite store at {self.path} was closed")
            load_all()  # policy types must be known before rows of those types are read
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kuma-sqlite")
            try:
                applied = await self._run(self._open)
            except BaseException:
                self._executor.shutdown(wait=False)
                self._executor = None
                raise
            log.info("sqlite store opened", extra={"path": str(self.path), "migrations_applied": applied})

    async def close(self) -> None:
        self._closed = True
        executor, self._executor = self._executor, None
        if executor is None:
            return
        loop = asyncio.get_running_loop()
        with contextlib.suppress(sqlite3.Error):
            await loop.run_in_executor(executor, self._close_conn)
        executor.shutdown(wait=True)
        log.info("sqlite store closed", extra={"path": str(self.path)})

    def _open(self) -> list[str]:
        """On the worker thread: open the file, set it up for one writer + WAL, bring the schema up."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: we issue BEGIN/COMMIT ourselves, so each write is exactly one transaction.
        conn = sqlite3.connect(self.path, isolation_level=None)
        try:
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            conn.execute("PRAGMA journal_mode = WAL")
            # NORMAL in WAL mode: a commit survives a crash of this process; only an OS crash / power loss
            # can lose the last transactions, and never corrupts the file.
            conn.execute("PRAGMA synchronous = NORMAL")
            applied = self._migrate(conn)
        except BaseException:
            conn.close()
            raise
        self._conn = conn
        return applied

    def _migrate(self, conn: sqlite3.Connection) -> list[str]:
        conn.execute("CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, "
                     "name TEXT NOT NULL, applied_at TEXT NOT NULL)")
        current = conn.execute("SELECT coalesce(max(version), 0) FROM schema_migrations").fetchone()[0]
        steps = migrations.load("sqlite")
        if steps and current > steps[-1].version:
            raise StoreUnavailable(f"the sqlite database {self.path} has schema version {current}, newer than "
                                   f"this kuma-cp knows ({steps[-1].version}): use a newer kuma-cp")
        applied = []
        for step in steps:
            if step.version <= current:
                continue
            # executescript() runs the step's statements; the explicit BEGIN/COMMIT around them makes the
            # step and its bookkeeping row one transaction.
            conn.executescript(
                f"BEGIN IMMEDIATE;\n{step.sql}\n;"
                f"INSERT INTO schema_migrations (version, name, applied_at) "
                f"VALUES ({step.version}, '{step.name}', '{_ts(datetime.now(UTC))}');\nCOMMIT;")
            log.info("sqlite schema migrated", extra={"path": str(self.path), "migration": step.name})
            applied.append(step.name)
        return applied

    def _close_conn(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        if self._executor is None:
            await self.start()
        executor = self._executor
        if executor is None:
            raise StoreUnavailable(f"the sqlite store at {self.path} is closed")
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(executor, fn, *args)
        except sqlite3.OperationalError as e:
            # "database is locked" (another process held it past busy_timeout), disk full, I/O errors:
            # the transaction was rolled back, so nothing was written.
            raise StoreUnavailable(f"sqlite database {self.path}: {e}") from e

    async def _write(self, fn: Callable[..., tuple[T, list[ChangeEvent]]], *args: Any) -> T:
        """Run a write transaction on the worker thread; its change events are published once it has
        committed, also when the caller is cancelled meanwhile (the write happened: watchers must hear of it)."""
        if self._executor is None:
            await self.start()
        executor = self._executor
        if executor is None:
            raise StoreUnavailable(f"the sqlite store at {self.path} is closed")
        done = asyncio.get_running_loop().run_in_executor(executor, fn, *args)

        def publish(f: asyncio.Future[tuple[T, list[ChangeEvent]]]) -> None:
            if not f.cancelled() and f.exception() is None:
                for event in f.result()[1]:
                    self.events.publish(event)

        done.add_done_callback(publish)
        try:
            result, _events = await asyncio.shield(done)
        except sqlite3.OperationalError as e:
            raise StoreUnavailable(f"sqlite database {self.path}: {e}") from e
        return result

    @property
    def _db(self) -> sqlite3.Connection:
        assert self._conn is not None, "sqlite store used before start()"
        assert threading.current_thread().name.startswith("kuma-sqlite"), "sqlite used off its worker thread"
        return self._conn

    @contextlib.contextmanager
    def _write_tx(self) -> Iterator[sqlite3.Connection]:
        db = self._db
        # IMMEDIATE takes the write lock up front, so the checks below and the write see one state even if
        # another process opened the same file.
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    # -- rows <-> resources ------------------------------------------------------------------------------

    @staticmethod
    def _meta(row: tuple[Any, ...]) -> Meta:
        name, mesh, version, _spec, labels, ctime, mtime = row
        return Meta(name=name, mesh=mesh, version=version, labels=json.loads(labels),
                    creation_time=datetime.fromisoformat(ctime), modification_time=datetime.fromisoformat(mtime))

    @classmethod
    def _resource(cls, rtype: ResourceType, row: tuple[Any, ...]) -> Resource:
        return Resource(rtype, cls._meta(row), spec_from_store(rtype, json.loads(row[3])))

    def _mesh_exists(self, db: sqlite3.Connection, mesh: str) -> bool:
        return db.execute("SELECT 1 FROM resources WHERE type = ? AND mesh = '' AND name = ?",
                          (MESH_TYPE, mesh)).fetchone() is not None

    # -- writes ------------------------------------------------------------------------------------------

    async def create(self, resource: Resource) -> Resource:
        now = datetime.now(UTC)
        stored = resource.with_meta(version=1, creation_time=now, modification_time=now)
        params = (resource.type.name, resource.meta.mesh, resource.meta.name, 1,
                  spec_json(resource), labels_json(resource.meta.labels), _ts(now), _ts(now))
        await self._write(self._create, resource, params)
        return stored

    async def create_all(self, resources: Sequence[Resource]) -> list[Resource]:
        now = datetime.now(UTC)
        batch = [(r, (r.type.name, r.meta.mesh, r.meta.name, 1, spec_json(r), labels_json(r.meta.labels), _ts(now),
                      _ts(now))) for r in resources]
        await self._write(self._create_all, batch)
        return [r.with_meta(version=1, creation_time=now, modification_time=now) for r in resources]

    def _create_all(self, batch: list[tuple[Resource, tuple[Any, ...]]]) -> tuple[None, list[ChangeEvent]]:
        events: list[ChangeEvent] = []
        with self._write_tx() as db:
            for resource, params in batch:
                events += self._insert(db, resource, params)
        return None, events

    def _create(self, resource: Resource, params: tuple[Any, ...]) -> tuple[None, list[ChangeEvent]]:
        with self._write_tx() as db:
            return None, self._insert(db, resource, params)

    def _insert(self, db: sqlite3.Connection, resource: Resource, params: tuple[Any, ...]) -> list[ChangeEvent]:
        rtype, meta = resource.type, resource.meta
        # inside the caller's write transaction
        if db.execute("SELECT 1 FROM resources WHERE type = ? AND mesh = ? AND name = ?",
                      resource.key).fetchone():
            raise AlreadyExists(f"{describe(rtype, meta.name, meta.mesh)} already exists")
        if rtype.mesh_scoped and not self._mesh_exists(db, meta.mesh):
            raise MeshNotFound(f"mesh {meta.mesh!r} does not exist: create it first")
        db.execute(f"INSERT INTO resources (type, mesh, name, version, spec, labels, creation_time, "
                   f"modification_time) VALUES ({', '.join('?' * len(params))})", params)
        return [ChangeEvent("create", rtype.name, meta.mesh, meta.name, 1)]

    async def update(self, resource: Resource) -> Resource:
        now = datetime.now(UTC)
        version, ctime = await self._write(self._update, resource, spec_json(resource),
                                           labels_json(resource.meta.labels), _ts(now))
        return resource.with_meta(version=version, creation_time=datetime.fromisoformat(ctime),
                                  modification_time=now)

    def _update(self, resource: Resource, spec: str, labels: str,
                now: str) -> tuple[tuple[int, str], list[ChangeEvent]]:
        with self._write_tx() as db:
            return self._update_row(db, resource, spec, labels, now)

    async def update_all(self, resources: Sequence[Resource]) -> list[Resource]:
        now = datetime.now(UTC)
        batch = [(r, spec_json(r), labels_json(r.meta.labels)) for r in resources]
        written = await self._write(self._update_all, batch, _ts(now))
        return [r.with_meta(version=version, creation_time=datetime.fromisoformat(ctime), modification_time=now)
                for r, (version, ctime) in zip(resources, written, strict=True)]

    def _update_all(self, batch: list[tuple[Resource, str, str]],
                    now: str) -> tuple[list[tuple[int, str]], list[ChangeEvent]]:
        written: list[tuple[int, str]] = []
        events: list[ChangeEvent] = []
        with self._write_tx() as db:
            for resource, spec, labels in batch:
                row, row_events = self._update_row(db, resource, spec, labels, now)
                written.append(row)
                events += row_events
        return written, events

    def _update_row(self, db: sqlite3.Connection, resource: Resource, spec: str, labels: str,
                    now: str) -> tuple[tuple[int, str], list[ChangeEvent]]:
        rtype, meta = resource.type, resource.meta
        # inside the caller's write transaction
        row = db.execute(
            "UPDATE resources SET version = version + 1, spec = ?, labels = ?, modification_time = ? "
            "WHERE type = ? AND mesh = ? AND name = ? AND version = ? RETURNING version, creation_time",
            (spec, labels, now, *resource.key, meta.version)).fetchone()
        if row is None:
            current = db.execute("SELECT version FROM resources WHERE type = ? AND mesh = ? AND name = ?",
                                 resource.key).fetchone()
            if current is None:
                raise NotFound(f"{describe(rtype, meta.name, meta.mesh)} does not exist")
            raise conflict(rtype, meta.name, meta.mesh, current[0], meta.version)
        version = int(row[0])
        return (version, str(row[1])), [ChangeEvent("update", rtype.name, meta.mesh, meta.name, version)]

    async def delete(self, rtype: ResourceType, name: str, mesh: str = "", *,
                     version: int | None = None) -> None:
        await self._write(self._delete, rtype, name, mesh, version)

    def _delete(self, rtype: ResourceType, name: str, mesh: str,
                version: int | None) -> tuple[None, list[ChangeEvent]]:
        with self._write_tx() as db:
            row = db.execute("SELECT version FROM resources WHERE type = ? AND mesh = ? AND name = ?",
                             (rtype.name, mesh, name)).fetchone()
            if row is None:
                raise NotFound(f"{describe(rtype, name, mesh)} does not exist")
            if version is not None and row[0] != version:
                raise conflict(rtype, name, mesh, row[0], version)
            events = [ChangeEvent("delete", rtype.name, mesh, name, row[0])]
            if rtype.name == MESH_TYPE:
                # Everything in the mesh goes with it, in this same transaction.
                removed = db.execute("DELETE FROM resources WHERE mesh = ? RETURNING type, name, version",
                                     (name,)).fetchall()
                events += [ChangeEvent("delete", t, name, n, v) for t, n, v in sorted(removed)]
            db.execute("DELETE FROM resources WHERE type = ? AND mesh = ? AND name = ?", (rtype.name, mesh, name))
            return None, events

    # -- reads -------------------------------------------------------------------------------------------

    async def get(self, rtype: ResourceType, name: str, mesh: str = "") -> Resource:
        return await self._run(self._get, rtype, name, mesh)

    def _get(self, rtype: ResourceType, name: str, mesh: str) -> Resource:
        row = self._db.execute(f"SELECT {_COLUMNS} FROM resources WHERE type = ? AND mesh = ? AND name = ?",
                               (rtype.name, mesh, name)).fetchone()
        if row is None:
            raise NotFound(f"{describe(rtype, name, mesh)} does not exist")
        return self._resource(rtype, row)

    async def list(self, rtype: ResourceType, query: ListQuery | None = None) -> ResourceList:
        return await self._run(self._list, rtype, query or ListQuery())

    def _list(self, rtype: ResourceType, q: ListQuery) -> ResourceList:
        rows, total = self._rows(rtype, q)
        return ResourceList([self._resource(rtype, row) for row in rows], total, next_offset(q, total))

    async def list_raw(self, rtype: ResourceType, query: ListQuery | None = None) -> RawResourceList:
        return await self._run(self._list_raw, rtype, query or ListQuery())

    def _list_raw(self, rtype: ResourceType, q: ListQuery) -> RawResourceList:
        rows, total = self._rows(rtype, q)
        return RawResourceList([RawResource(rtype, self._meta(row), row[3]) for row in rows], total,
                               next_offset(q, total))

    def _rows(self, rtype: ResourceType, q: ListQuery) -> _Rows:
        """The page's rows and the number of matches."""
        where, params = _where(rtype, q)
        db = self._db
        # One read transaction: the page and the count come from the same snapshot.
        db.execute("BEGIN")
        try:
            rows = db.execute(f"SELECT {_COLUMNS} FROM resources WHERE {where} ORDER BY mesh, name "
                              "LIMIT ? OFFSET ?", (*params, -1 if q.size is None else q.size, q.offset)).fetchall()
            total = total_from_page(q, len(rows))
            if total is None:
                total = db.execute(f"SELECT count(*) FROM resources WHERE {where}", params).fetchone()[0]
        finally:
            db.execute("COMMIT")
        return rows, total


def _where(rtype: ResourceType, q: ListQuery) -> tuple[str, list[Any]]:
    clauses, params = ["type = ?"], [rtype.name]
    if q.mesh is not None:
        clauses.append("mesh = ?")
        params.append(q.mesh)
    if q.name_prefix:
        # substr, not LIKE: LIKE is case-insensitive in SQLite and treats % and _ as wildcards.
        clauses.append("substr(name, 1, length(?)) = ?")
        params += [q.name_prefix, q.name_prefix]
    for key, value in q.labels.items():
        # json_each instead of json_extract: label keys contain '.' and '/', which JSON paths would need
        # quoted and escaped.
        clauses.append("EXISTS (SELECT 1 FROM json_each(resources.labels) AS l WHERE l.key = ? AND l.value = ?)")
        params += [key, value]
    return " AND ".join(clauses), params

