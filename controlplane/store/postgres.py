"""PostgreSQL store: several control-plane instances share one database.

- Writes are single statements where possible (autocommit: one statement is one transaction), so the happy
  path is one round trip. The mesh-exists check rides inside the INSERT as a `FOR KEY SHARE` sub-select on
  the mesh row: a concurrent mesh delete (which takes the row's FOR UPDATE lock) either waits for our
  commit and then deletes what we wrote, or commits first and our INSERT finds no mesh. No orphans.
- Every write notifies `kuma_resource_changes` from inside its own statement (`RETURNING pg_notify(...)`),
  so a notification exists exactly when the write committed, and PostgreSQL delivers it in commit order.
- Each store instance has one dedicated LISTEN connection; what it receives is the only source of this
  instance's change events, its own writes included, so every instance sees every change exactly once.
- Leadership (leader-only components) is a session-level advisory lock held on its own connection.
- The schema is versioned (controlplane/store/migrations/postgres); `start()` refuses to run against a
  schema that is behind, `migrate_up()` (`kuma-cp migrate up`) brings it up.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import socket
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime
from typing import Any

import psycopg
from psycopg.conninfo import make_conninfo
from psycopg.rows import TupleRow
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from controlplane.resources import load_all
from controlplane.resources.base import Meta, Resource, ResourceType
from controlplane.resources.codec import spec_from_store
from controlplane.supervise import wait_set

from . import migrations
from ._sql import MESH_TYPE, conflict, next_offset, spec_json, total_from_page
from .base import (
    AlreadyExists,
    ChangeEvent,
    LeaderElector,
    ListQuery,
    MeshNotFound,
    NotFound,
    RawResource,
    RawResourceList,
    ResourceList,
    ResourceStore,
    StoreError,
    StoreUnavailable,
    describe,
)
from .postgres_config import PostgresConfig

log = logging.getLogger("kuma.store")

CHANNEL = "kuma_resource_changes"
# Advisory lock keys (64-bit, database-wide). Arbitrary but fixed: every kuma-cp must agree on them.
LEADER_LOCK_ID = 0x6B756D61_6C656164  # "kumalead"
MIGRATION_LOCK_ID = 0x6B756D61_6D696772  # "kumamigr"

AsyncConn = psycopg.AsyncConnection[TupleRow]

_COLUMNS = "name, mesh, version, spec, labels, creation_time, modification_time"
_MESH_ROW = f"type = '{MESH_TYPE}' AND mesh = '' AND name"


def _notify_sql(op: str) -> str:
    """A RETURNING item that notifies about the row it returns (column values after the write)."""
    return (f"pg_notify('{CHANNEL}', json_build_object('op', '{op}', 'type', type, 'mesh', mesh, "
            "'name', name, 'version', version)::text)")


class SchemaOutOfDate(StoreError):
    """The database schema is older than this kuma-cp needs."""


def default_instance_id() -> str:
    # Host and pid say which process it is; the suffix tells apart two stores in one process (tests).
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(2)}"


def conninfo(config: PostgresConfig, application_name: str) -> str:
    return make_conninfo("", **config.connect_kwargs(application_name))


def _unavailable(config: PostgresConfig, err: BaseException) -> StoreUnavailable:
    detail = str(err).strip() or type(err).__name__
    return StoreUnavailable(f"PostgreSQL {config.describe()} is unavailable: {detail}")


# --- schema migrations -----------------------------------------------------------------------------------

_MIGRATIONS_TABLE = b"""CREATE TABLE IF NOT EXISTS schema_migrations (
    version    integer PRIMARY KEY,
    name       text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)"""


def required_schema_version() -> int:
    """The schema version this kuma-cp needs (its newest migration)."""
    return migrations.latest_version("postgres")


def migrate_up(config: PostgresConfig) -> list[str]:
    """Apply every migration the database lacks; returns their names (empty: already up to date).

    Blocking on purpose: `kuma-cp migrate up` calls it from the CLI. Safe to run from several hosts at
    once: a transaction-scoped advisory lock makes them take turns, and all steps commit together.
    """
    steps = migrations.load("postgres")
    applied: list[str] = []
    try:
        with psycopg.connect(conninfo(config, "kuma-cp migrate"), autocommit=True) as conn, \
                conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK_ID,))
            conn.execute(_MIGRATIONS_TABLE)
            done = {row[0] for row in conn.execute("SELECT version FROM schema_migrations")}
            for step in steps:
                if step.version in done:
                    continue
                # bytes: a migration file is several statements, sent as one simple query.
                conn.execute(step.sql.encode())
                conn.execute("INSERT INTO schema_migrations (version, name) VALUES (%s, %s)",
                             (step.version, step.name))
                applied.append(step.name)
    except psycopg.OperationalError as e:
        raise _unavailable(config, e) from e
    for name in applied:
        log.info("postgres schema migrated", extra={"db": config.describe(), "migration": name})
    if not applied:
        log.info("postgres schema already up to date",
                 extra={"db": config.describe(), "version": required_schema_version()})
    return applied


def current_schema_version(config: PostgresConfig) -> int:
    """The database's schema version (0: never migrated)."""
    try:
        with psycopg.connect(conninfo(config, "kuma-cp migrate"), autocommit=True) as conn:
            reg = conn.execute("SELECT to_regclass('schema_migrations') IS NOT NULL").fetchone()
            if not reg or not reg[0]:
                return 0
            row = conn.execute("SELECT coalesce(max(version), 0) FROM schema_migrations").fetchone()
            return int(row[0]) if row else 0
    except psycopg.OperationalError as e:
        raise _unavailable(config, e) from e


async def _schema_version(conn: AsyncConn) -> int:
    cur = await conn.execute("SELECT to_regclass('schema_migrations') IS NOT NULL")
    reg = await cur.fetchone()
    if not reg or not reg[0]:
        return 0
    cur = await conn.execute("SELECT coalesce(max(version), 0) FROM schema_migrations")
    row = await cur.fetchone()
    return int(row[0]) if row else 0


# --- the store -------------------------------------------------------------------------------------------

_Rows = tuple[list[TupleRow], int]  # a page's rows, the number of matches


class PostgresStore(ResourceStore):
    backend = "postgres"

    def __init__(self, config: PostgresConfig, *, instance: str | None = None,
                 listen_health_interval: float = 5.0, listen_max_backoff: float = 5.0) -> None:
        super().__init__()
        self.config = config
        self.instance = instance or default_instance_id()
        self._listen_health_interval = listen_health_interval
        self._listen_max_backoff = listen_max_backoff
        self._pool: AsyncConnectionPool[AsyncConn] | None = None
        self._listener: asyncio.Task[None] | None = None
        self._listening = asyncio.Event()
        self._listen_conn: AsyncConn | None = None
        self._closing = False
        self._start_lock = asyncio.Lock()

    @property
    def listener_backend_pid(self) -> int | None:
        """The server process of the LISTEN connection (operators and tests terminate it to test resilience)."""
        conn = self._listen_conn
        return conn.info.backend_pid if conn is not None and not conn.closed else None

    @property
    def listening(self) -> bool:
        return self._listening.is_set()

    # -- lifecycle -------------------------------------------------------------------------------------

    async def start(self) -> None:
        async with self._start_lock:
            if self._pool is None:
                await self._start()

    async def _start(self) -> None:
        load_all()  # policy types must be known before rows of those types are read
        cfg = self.config
        try:
            async with await psycopg.AsyncConnection.connect(conninfo(cfg, f"kuma-cp {self.instance}"),
                                                             autocommit=True) as conn:
                current = await _schema_version(conn)
        except psycopg.OperationalError as e:
            raise _unavailable(cfg, e) from e
        required = required_schema_version()
        if current < required:
            raise SchemaOutOfDate(f"database schema is at version {current}, this kuma-cp needs {required}: "
                                  f"run `kuma-cp migrate up` (database {cfg.describe()})")
        if current > required:
            # A newer kuma-cp migrated (rolling upgrade). Migrations only add, so keep going, but say so.
            log.warning("database schema is newer than this kuma-cp",
                        extra={"db": cfg.describe(), "schema_version": current, "needs": required})

        pool: AsyncConnectionPool[AsyncConn] = AsyncConnectionPool(
            conninfo(cfg, f"kuma-cp {self.instance}"), kwargs={"autocommit": True},
            min_size=min(2, cfg.max_open_connections), max_size=cfg.max_open_connections,
            timeout=cfg.connection_timeout, open=False, name=f"kuma-store {self.instance}",
            # A pooled connection can die (server restart, failover, a DBA's pg_terminate_backend); check
            # it before use so a request fails only when the server really is gone.
            check=AsyncConnectionPool.check_connection,
        )
        try:
            await pool.open(wait=True, timeout=cfg.connection_timeout)
        except psycopg.OperationalError as e:
            await pool.close()
            raise _unavailable(cfg, e) from e
        self._pool = pool
        self._closing = False
        self._listener = asyncio.create_task(self._listen_loop(), name=f"kuma-store-listener {self.instance}")
        try:
            await asyncio.wait_for(self._listening.wait(), timeout=cfg.connection_timeout + 1)
        except TimeoutError as e:
            await self.close()
            raise StoreUnavailable(f"PostgreSQL {cfg.describe()}: could not LISTEN for changes within "
                                   f"{cfg.connection_timeout:g}s") from e
        log.info("postgres store started", extra={"db": cfg.describe(), "instance": self.instance,
                                                  "schema_version": current})

    async def close(self) -> None:
        self._closing = True
        task, self._listener = self._listener, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()
            log.info("postgres store closed", extra={"db": self.config.describe(), "instance": self.instance})

    # -- change events: LISTEN ---------------------------------------------------------------------------

    async def _listen_loop(self) -> None:
        delay = 0.1
        lost_at: datetime | None = None
        while not self._closing:
            conn: AsyncConn | None = None
            try:
                conn = await psycopg.AsyncConnection.connect(
                    conninfo(self.config, f"kuma-cp listener {self.instance}"), autocommit=True)
                await conn.execute(f"LISTEN {CHANNEL}")
                self._listen_conn = conn
                self._listening.set()
                if lost_at is not None:
                    # Changes committed while we were away were not delivered to us: say so, loudly.
                    log.warning("change listener reconnected; watchers told to resync what they missed",
                                extra={"db": self.config.describe(), "instance": self.instance,
                                       "down_since": lost_at.isoformat()})
                    lost_at = None
                    self.events.publish(ChangeEvent("resync", "", "", "", 0))
                delay = 0.1
                while True:
                    async for n in conn.notifies(timeout=self._listen_health_interval):
                        self._dispatch(n.payload)
                    # Quiet for a while: make sure the connection is alive (keepalives catch a vanished
                    # peer eventually; this catches it within the health interval + timeout).
                    await asyncio.wait_for(conn.execute("SELECT 1"), timeout=self.config.connection_timeout)
            except Exception as e:
                if self._closing:
                    break
                self._listening.clear()
                if lost_at is None:
                    lost_at = datetime.now(UTC)
                if isinstance(e, psycopg.Error | OSError | TimeoutError):
                    log.warning("change listener lost its connection; reconnecting",
                                extra={"db": self.config.describe(), "instance": self.instance,
                                       "error": str(e).strip(), "retry_in_s": delay})
                else:
                    # A bug, not an outage; still, a dead listener would silently stop every event.
                    log.exception("change listener failed; restarting it",
                                  extra={"db": self.config.describe(), "instance": self.instance})
                await asyncio.sleep(delay)
                delay = min(delay * 2, self._listen_max_backoff)
            finally:
                self._listen_conn = None
                if conn is not None:
                    with contextlib.suppress(Exception):
                        await conn.close()

    def _dispatch(self, payload: str) -> None:
        try:
            d = json.loads(payload)
            event = ChangeEvent(d["op"], d["type"], d["mesh"], d["name"], int(d["version"]))
        except (ValueError, KeyError, TypeError):
            log.warning("ignoring a malformed change notification", extra={"payload": payload[:200]})
            return
        self.events.publish(event)

    # -- plumbing ----------------------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _conn(self) -> AsyncIterator[AsyncConn]:
        """A pooled connection (autocommit); driver/connection failures become StoreUnavailable."""
        pool = self._pool
        if pool is None:
            if self._closing:
                raise StoreUnavailable(f"the postgres store ({self.config.describe()}) is closed")
            await self.start()
            pool = self._pool
            assert pool is not None
        try:
            async with pool.connection() as conn:
                yield conn
        except (psycopg.OperationalError, psycopg.InterfaceError) as e:
            raise _unavailable(self.config, e) from e

    @staticmethod
    def _meta(row: tuple[Any, ...]) -> Meta:
        name, mesh, version, _spec, labels, ctime, mtime = row[:7]
        return Meta(name=name, mesh=mesh, version=int(version), labels=labels,
                    creation_time=ctime.astimezone(UTC), modification_time=mtime.astimezone(UTC))

    @classmethod
    def _resource(cls, rtype: ResourceType, row: tuple[Any, ...]) -> Resource:
        return Resource(rtype, cls._meta(row), spec_from_store(rtype, json.loads(row[3])))

    @staticmethod
    async def _current_version(conn: AsyncConn, rtype: ResourceType, name: str, mesh: str) -> int | None:
        cur = await conn.execute("SELECT version FROM resources WHERE type = %s AND mesh = %s AND name = %s",
                                 (rtype.name, mesh, name))
        row = await cur.fetchone()
        return None if row is None else int(row[0])

    # -- writes ------------------------------------------------------------------------------------------

    async def create(self, resource: Resource) -> Resource:
        async with self._conn() as conn:
            return await self._insert(conn, resource)

    async def create_all(self, resources: Sequence[Resource]) -> list[Resource]:
        async with self._conn() as conn, conn.transaction():
            return [await self._insert(conn, r) for r in resources]

    async def _insert(self, conn: AsyncConn, resource: Resource) -> Resource:
        rtype, meta = resource.type, resource.meta
        mesh_check = (f" WHERE EXISTS (SELECT 1 FROM resources WHERE {_MESH_ROW} = %(mesh)s FOR KEY SHARE)"
                      if rtype.mesh_scoped else "")
        params = {"type": rtype.name, "mesh": meta.mesh, "name": meta.name, "spec": spec_json(resource),
                  "labels": Jsonb(dict(meta.labels))}
        # on the caller's connection: autocommit, or inside its transaction
        cur = await conn.execute(
            "INSERT INTO resources (type, mesh, name, version, spec, labels, creation_time, modification_time) "
            "SELECT %(type)s, %(mesh)s, %(name)s, 1, %(spec)s, %(labels)s, now(), now()" + mesh_check +
            " ON CONFLICT (type, mesh, name) DO NOTHING "
            "RETURNING creation_time, " + _notify_sql("create"), params)
        row = await cur.fetchone()
        if row is None:
            # Nothing inserted: find out why (the statement has already ended; nothing was written).
            if await self._current_version(conn, rtype, meta.name, meta.mesh) is not None:
                raise AlreadyExists(f"{describe(rtype, meta.name, meta.mesh)} already exists")
            raise MeshNotFound(f"mesh {meta.mesh!r} does not exist: create it first")
        now = row[0].astimezone(UTC)
        return resource.with_meta(version=1, creation_time=now, modification_time=now)

    async def update(self, resource: Resource) -> Resource:
        async with self._conn() as conn:
            return await self._update(conn, resource)

    async def update_all(self, resources: Sequence[Resource]) -> list[Resource]:
        async with self._conn() as conn, conn.transaction():
            return [await self._update(conn, r) for r in resources]

    async def _update(self, conn: AsyncConn, resource: Resource) -> Resource:
        rtype, meta = resource.type, resource.meta
        # The mesh row's KEY SHARE lock keeps a mesh delete from interleaving with this write. KEY SHARE, not
        # SHARE: it does not conflict with plain updates of the mesh itself (its mTLS settings, say), only
        # with deleting it.
        mesh_check = (f" AND EXISTS (SELECT 1 FROM resources m WHERE m.type = '{MESH_TYPE}' AND m.mesh = '' "
                      "AND m.name = %(mesh)s FOR KEY SHARE)" if rtype.mesh_scoped else "")
        params = {"type": rtype.name, "mesh": meta.mesh, "name": meta.name, "spec": spec_json(resource),
                  "labels": Jsonb(dict(meta.labels)), "version": meta.version}
        # on the caller's connection: autocommit, or inside its transaction
        cur = await conn.execute(
            "UPDATE resources SET version = version + 1, spec = %(spec)s, labels = %(labels)s, "
            "modification_time = now() "
            "WHERE type = %(type)s AND mesh = %(mesh)s AND name = %(name)s AND version = %(version)s"
            + mesh_check +
            " RETURNING version, creation_time, modification_time, " + _notify_sql("update"), params)
        row = await cur.fetchone()
        if row is None:
            current = await self._current_version(conn, rtype, meta.name, meta.mesh)
            if current is None:
                raise NotFound(f"{describe(rtype, meta.name, meta.mesh)} does not exist")
            raise conflict(rtype, meta.name, meta.mesh, current, meta.version)
        return resource.with_meta(version=int(row[0]), creation_time=row[1].astimezone(UTC),
                                  modification_time=row[2].astimezone(UTC))

    async def delete(self, rtype: ResourceType, name: str, mesh: str = "", *,
                     version: int | None = None) -> None:
        if rtype.name == MESH_TYPE:
            await self._delete_mesh(rtype, name, version)
            return
        async with self._conn() as conn:
            cur = await conn.execute(
                "DELETE FROM resources WHERE type = %s AND mesh = %s AND name = %s"
                + ("" if version is None else " AND version = %s") + " RETURNING " + _notify_sql("delete"),
                (rtype.name, mesh, name) + (() if version is None else (version,)))
            if await cur.fetchone() is None:
                current = await self._current_version(conn, rtype, name, mesh)
                if current is None:
                    raise NotFound(f"{describe(rtype, name, mesh)} does not exist")
                raise conflict(rtype, name, mesh, current, version or 0)

    async def _delete_mesh(self, rtype: ResourceType, name: str, version: int | None) -> None:
        async with self._conn() as conn, conn.transaction():
            # FOR UPDATE on the mesh row waits for in-flight writes into the mesh (they hold KEY SHARE on
            # it) and blocks new ones until we commit; then the mesh and everything in it go together.
            cur = await conn.execute(f"SELECT version FROM resources WHERE {_MESH_ROW} = %s FOR UPDATE", (name,))
            row = await cur.fetchone()
            if row is None:
                raise NotFound(f"{describe(rtype, name, '')} does not exist")
            if version is not None and row[0] != version:
                raise conflict(rtype, name, "", int(row[0]), version)
            # The mesh's own event first, then one per resource that was in it.
            await conn.execute(f"DELETE FROM resources WHERE {_MESH_ROW} = %s RETURNING {_notify_sql('delete')}",
                               (name,))
            cur = await conn.execute(f"DELETE FROM resources WHERE mesh = %s RETURNING {_notify_sql('delete')}",
                                     (name,))
            removed = cur.rowcount
        log.info("mesh deleted with everything in it",
                 extra={"mesh": name, "resources_removed": removed, "instance": self.instance})

    # -- reads -------------------------------------------------------------------------------------------

    async def get(self, rtype: ResourceType, name: str, mesh: str = "") -> Resource:
        async with self._conn() as conn:
            cur = await conn.execute(f"SELECT {_COLUMNS} FROM resources WHERE type = %s AND mesh = %s AND name = %s",
                                     (rtype.name, mesh, name))
            row = await cur.fetchone()
        if row is None:
            raise NotFound(f"{describe(rtype, name, mesh)} does not exist")
        return self._resource(rtype, row)

    async def list(self, rtype: ResourceType, query: ListQuery | None = None) -> ResourceList:
        q = query or ListQuery()
        rows, total = await self._rows(rtype, q)
        return ResourceList([self._resource(rtype, row) for row in rows], total, next_offset(q, total))

    async def list_raw(self, rtype: ResourceType, query: ListQuery | None = None) -> RawResourceList:
        q = query or ListQuery()
        rows, total = await self._rows(rtype, q)
        return RawResourceList([RawResource(rtype, self._meta(row), row[3]) for row in rows], total,
                               next_offset(q, total))

    async def _rows(self, rtype: ResourceType, q: ListQuery) -> _Rows:
        """The page's rows (their first 7 columns are _COLUMNS) and the number of matches."""
        clauses: list[str] = ["type = %s"]
        params: list[Any] = [rtype.name]
        if q.mesh is not None:
            clauses.append("mesh = %s")
            params.append(q.mesh)
        if q.name_prefix:
            # LIKE with the prefix escaped; with the "C" collation it is an index range scan.
            clauses.append("name LIKE %s")
            escaped = q.name_prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            params.append(escaped + "%")
        if q.labels:
            clauses.append("labels @> %s")
            params.append(Jsonb(dict(q.labels)))
        where = " AND ".join(clauses)
        page = "" if q.size is None else " LIMIT %s"
        page += " OFFSET %s" if q.offset else ""
        page_params = ([] if q.size is None else [q.size]) + ([q.offset] if q.offset else [])
        whole = q.size is None and q.offset == 0
        # Paged: the count comes from a sub-select of the same statement, so it and the page are one snapshot.
        count = "" if whole else f", (SELECT count(*) FROM resources WHERE {where})"
        async with self._conn() as conn:
            cur = await conn.execute(
                f"SELECT {_COLUMNS}{count} FROM resources WHERE {where} ORDER BY mesh, name{page}",
                (params if whole else params + params) + page_params)
            rows = await cur.fetchall()
            total = total_from_page(q, len(rows))
            if total is None:
                total = int(rows[0][7]) if rows else await self._count(conn, where, params)
        return rows, total

    @staticmethod
    async def _count(conn: AsyncConn, where: str, params: Sequence[Any]) -> int:
        cur = await conn.execute(f"SELECT count(*) FROM resources WHERE {where}", params)
        row = await cur.fetchone()
        return int(row[0]) if row else 0

    def leader_elector(self) -> LeaderElector:
        return PostgresLeaderElector(self.config, instance=self.instance)


# --- leader election -------------------------------------------------------------------------------------

class PostgresLeaderElector(LeaderElector):
    """Leader = the holder of a session-level advisory lock, on a connection of its own.

    A follower tries `pg_try_advisory_lock` every `poll_interval`; the leader pings its connection as often.
    The server releases the lock when the leader's session ends (process killed, connection terminated),
    so a follower takes over within about two poll intervals (it holds the lock one interval before acting,
    which is how long the old leader may take to notice). A leader that loses its connection steps down
    at once (callbacks get False) and competes again after reconnecting.

    A leader that goes silent without closing its session (host crash, network partition, a frozen process)
    must not keep the lock for the hours TCP takes to notice, so the lock session is a lease of `lease`
    seconds: the server ends it once it has been idle that long (`idle_session_timeout`, PostgreSQL 14+) or
    its unacknowledged sends or keepalives exceed it (server- and client-side `tcp_user_timeout` and
    keepalives), which frees the lock for a follower. The leader pings every `poll_interval` and gives up
    leadership when a ping takes longer than half the lease, so a cut-off leader has stepped down before a
    follower can have held the lock for `poll_interval` after the server freed it.
    """

    def __init__(self, config: PostgresConfig, *, lock_id: int = LEADER_LOCK_ID, poll_interval: float = 1.0,
                 lease: float = 5.0, instance: str | None = None) -> None:
        super().__init__()
        if lease < 3 * poll_interval:
            raise ValueError(f"leader lease ({lease}s) must be at least 3 poll intervals ({poll_interval}s)")
        self.config = config
        self.lock_id = lock_id
        self.poll_interval = poll_interval
        self.lease = lease
        self.instance = instance or default_instance_id()
        self._task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()
        self._conn: AsyncConn | None = None

    @property
    def backend_pid(self) -> int | None:
        conn = self._conn
        return conn.info.backend_pid if conn is not None and not conn.closed else None

    async def start(self) -> None:
        if self._task is None:
            self._stop.clear()
            self._task = asyncio.create_task(self._run(), name=f"kuma-leader-elector {self.instance}")

    async def stop(self) -> None:
        self._stop.set()
        task, self._task = self._task, None
        if task is not None:
            try:
                # Let the loop finish its current step and unlock cleanly; do not wait on a hung server.
                await asyncio.wait_for(asyncio.shield(task), timeout=self.config.connection_timeout + 1)
            except TimeoutError:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await self._become(False, "elector stopped")

    async def _become(self, leader: bool, why: str) -> None:
        if leader == self.is_leader:
            return
        extra = {"instance": self.instance, "lock_id": self.lock_id, "db": self.config.describe(), "reason": why}
        if leader:
            log.info("leader elected", extra=extra)
        elif why == "elector stopped":
            log.info("leadership released", extra=extra)
        else:
            log.warning("leadership lost", extra=extra)
        try:
            await self._set(leader)
        except Exception:
            log.exception("leadership callback failed", extra={"instance": self.instance, "leader": leader})

    async def _sleep(self, seconds: float) -> bool:
        """Sleep unless stopped; True when stop() was called."""
        return await wait_set(self._stop, seconds)

    async def _connect(self) -> AsyncConn:
        """The lock session, set up as a lease (see the class docstring)."""
        lease_ms = round(self.lease * 1000)
        kwargs = {**self.config.connect_kwargs(f"kuma-cp leader-elector {self.instance}"),
                  "tcp_user_timeout": lease_ms, "keepalives_idle": max(1, round(self.lease / 3)),
                  "keepalives_interval": 1, "keepalives_count": max(1, round(self.lease / 3))}
        conn = await psycopg.AsyncConnection.connect(make_conninfo("", **kwargs), autocommit=True)
        try:
            for setting, value in (("idle_session_timeout", lease_ms), ("tcp_user_timeout", lease_ms),
                                   ("tcp_keepalives_idle", kwargs["keepalives_idle"]),
                                   ("tcp_keepalives_interval", 1),
                                   ("tcp_keepalives_count", kwargs["keepalives_count"])):
                await conn.execute("SELECT set_config(%s, %s, false)", (setting, str(value)))
        except BaseException:
            await conn.close()
            raise
        return conn

    async def _run(self) -> None:
        delay = self.poll_interval
        timeout = self.config.connection_timeout
        ping_timeout = min(timeout, self.lease / 2)
        while not self._stop.is_set():
            conn: AsyncConn | None = None
            try:
                conn = await self._connect()
                self._conn = conn
                delay = self.poll_interval
                while not self._stop.is_set():
                    if self.is_leader:
                        # Our session holds the lock for as long as it lives; proving it lives is enough.
                        await asyncio.wait_for(conn.execute("SELECT 1"), timeout=ping_timeout)
                    else:
                        cur = await asyncio.wait_for(
                            conn.execute("SELECT pg_try_advisory_lock(%s)", (self.lock_id,)), timeout=timeout)
                        row = await cur.fetchone()
                        if row and row[0]:
                            # The server frees the lock the moment the old leader's session ends, but the
                            # old leader learns that only at its next ping: wait one ping interval before
                            # acting as leader, so the two do not overlap.
                            if await self._sleep(self.poll_interval):
                                break
                            await asyncio.wait_for(conn.execute("SELECT 1"), timeout=timeout)
                            await self._become(True, "acquired the advisory lock")
                    if await self._sleep(self.poll_interval):
                        break
                if self.is_leader:
                    # Stop leader-only work first, then let go: never two instances acting as leader.
                    await self._become(False, "elector stopped")
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(conn.execute("SELECT pg_advisory_unlock(%s)", (self.lock_id,)),
                                               timeout=timeout)
            except Exception as e:
                if self.is_leader:
                    await self._become(False, f"lost the database connection: {str(e).strip()}")
                if isinstance(e, psycopg.Error | OSError | TimeoutError):
                    log.warning("leader election lost its database connection; reconnecting",
                                extra={"instance": self.instance, "db": self.config.describe(),
                                       "error": str(e).strip(), "retry_in_s": delay})
                else:
                    log.exception("leader election failed; retrying", extra={"instance": self.instance})
                if await self._sleep(delay):
                    break
                delay = min(delay * 2, 10.0)
            finally:
                self._conn = None
                if conn is not None:
                    with contextlib.suppress(Exception):
                        await conn.close()
