"""The postgres store on a real PostgreSQL server (tests/postgres_server.py): the conformance suite, and
what only a shared database has (several instances, LISTEN/NOTIFY, leader election, migrations, outages).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import psycopg
import pytest

from controlplane.resources.dataplane import DATAPLANE
from controlplane.resources.mesh import MESH
from controlplane.store import StoreUnavailable, migrations
from controlplane.store.base import ChangeEvent, ListQuery, MeshNotFound
from controlplane.store.factory import create_store
from controlplane.store.postgres import (
    PostgresLeaderElector,
    PostgresStore,
    SchemaOutOfDate,
    current_schema_version,
    migrate_up,
    required_schema_version,
)
from controlplane.store.postgres_config import PostgresConfig
from tests.postgres_server import PgServer
from tests.unit.store_conformance import (
    StoreConformance,
    dataplane,
    events_until_sentinel,
    mesh,
    next_event,
)


@contextlib.asynccontextmanager
async def started(config: PostgresConfig, **kw: object) -> AsyncIterator[PostgresStore]:
    store = PostgresStore(config, **kw)  # type: ignore[arg-type]
    await store.start()
    try:
        yield store
    finally:
        await store.close()


async def eventually(check: Callable[[], bool | Awaitable[bool]], timeout: float = 10.0,
                     what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.05)


async def terminate_backend(config: PostgresConfig, pid: int) -> None:
    async with await psycopg.AsyncConnection.connect(host=config.host, port=config.port, user=config.user,
                                                     password=config.password, dbname=config.db_name,
                                                     autocommit=True) as conn:
        cur = await conn.execute("SELECT pg_terminate_backend(%s)", (pid,))
        row = await cur.fetchone()
        assert row is not None and row[0], f"could not terminate backend {pid}"


@pytest.mark.postgres
class TestPostgresStore(StoreConformance):
    @pytest.fixture
    async def store(self, postgres_migrated_config: PostgresConfig) -> AsyncIterator[PostgresStore]:
        async with started(postgres_migrated_config) as s:
            yield s


# --- several instances on one database --------------------------------------------------------------------

@pytest.mark.postgres
async def test_a_write_on_one_instance_is_an_event_on_every_instance_exactly_once(
        postgres_migrated_config: PostgresConfig) -> None:
    async with started(postgres_migrated_config, instance="a") as a, \
            started(postgres_migrated_config, instance="b") as b, a.watch() as qa, b.watch() as qb:
        await a.create(mesh())
        created = ChangeEvent("create", "Mesh", "", "default", 1)
        assert await next_event(qa) == created
        assert await next_event(qb) == created
        dp = await b.create(dataplane("dp-1"))
        await a.update(dp)
        for q in (qa, qb):
            assert await next_event(q) == ChangeEvent("create", "Dataplane", "default", "dp-1", 1)
            assert await next_event(q) == ChangeEvent("update", "Dataplane", "default", "dp-1", 2)
        await a.delete(MESH, "default")
        expected = {ChangeEvent("delete", "Mesh", "", "default", 1),
                    ChangeEvent("delete", "Dataplane", "default", "dp-1", 2)}
        assert set(await events_until_sentinel(a, qa)) == expected
        # The sentinel was a's write: b sees it once too, and nothing twice.
        seen_by_b = []
        while (e := await next_event(qb)).name != "sentinel":
            seen_by_b.append(e)
        assert sorted(map(str, seen_by_b)) == sorted(map(str, expected))
        assert qa.empty() and qb.empty()


@pytest.mark.postgres
async def test_instances_see_each_others_data(postgres_migrated_config: PostgresConfig) -> None:
    async with started(postgres_migrated_config) as a, started(postgres_migrated_config) as b:
        await a.create(mesh())
        v1 = await b.create(dataplane("dp-1"))
        v2 = await a.update(v1)
        assert await b.get(v2.type, "dp-1", "default") == v2
        assert (await b.list(v2.type, ListQuery(mesh="default"))).total == 1


@pytest.mark.postgres
async def test_a_mesh_delete_racing_creates_leaves_no_orphans(postgres_migrated_config: PostgresConfig) -> None:
    async with started(postgres_migrated_config) as a, started(postgres_migrated_config) as b:
        for round_ in range(5):
            await a.create(mesh("racy"))

            async def create(i: int, round_: int = round_) -> None:
                with contextlib.suppress(MeshNotFound):
                    await b.create(dataplane(f"dp-{round_}-{i}", "racy"))

            async def delete_soon(round_: int = round_) -> None:
                await asyncio.sleep(0.005 * round_)
                await a.delete(MESH, "racy")

            await asyncio.gather(delete_soon(), *(create(i) for i in range(40)))
            assert (await a.list(DATAPLANE, ListQuery(mesh="racy"))).items == [], f"orphans in round {round_}"


# --- migrations -------------------------------------------------------------------------------------------

@pytest.mark.postgres
async def test_start_refuses_a_schema_that_is_behind_until_migrated(postgres_config: PostgresConfig) -> None:
    store = PostgresStore(postgres_config)
    needed = required_schema_version()
    with pytest.raises(SchemaOutOfDate) as err:
        await store.start()
    assert f"database schema is at version 0, this kuma-cp needs {needed}: run `kuma-cp migrate up`" \
        in str(err.value)
    assert current_schema_version(postgres_config) == 0

    applied = migrate_up(postgres_config)
    assert applied[0] == "0001_init" and len(applied) == needed
    assert current_schema_version(postgres_config) == needed
    assert migrate_up(postgres_config) == []  # a second run is a no-op
    assert current_schema_version(postgres_config) == needed

    async with started(postgres_config) as s:
        await s.create(mesh())
        assert (await s.get(MESH, "default")).meta.version == 1


@pytest.mark.postgres
async def test_concurrent_migrate_up_applies_each_step_once(postgres_config: PostgresConfig) -> None:
    results = await asyncio.gather(*(asyncio.to_thread(migrate_up, postgres_config) for _ in range(4)))
    # Each step was applied by exactly one of them.
    assert sorted(name for r in results for name in r) == [m.name for m in migrations.load("postgres")]
    assert current_schema_version(postgres_config) == required_schema_version()


# --- leader election --------------------------------------------------------------------------------------

@pytest.mark.postgres
async def test_exactly_one_leader_and_failover(postgres_migrated_config: PostgresConfig) -> None:
    cfg = postgres_migrated_config
    electors = [PostgresLeaderElector(cfg, poll_interval=0.2, instance=f"cp-{i}") for i in range(2)]
    changes: list[tuple[str, bool]] = []
    for e in electors:
        async def record(leader: bool, e: PostgresLeaderElector = e) -> None:
            changes.append((e.instance, leader))
        e.on_change(record)

    def leaders() -> list[PostgresLeaderElector]:
        return [e for e in electors if e.is_leader]

    try:
        for e in electors:
            await e.start()
        await eventually(lambda: len(leaders()) == 1, what="one leader")
        # ... and it stays that way: the follower keeps polling without getting the lock.
        await asyncio.sleep(1.0)
        assert len(leaders()) == 1
        first = leaders()[0]
        other = next(e for e in electors if e is not first)

        # A leader that stops hands over.
        await first.stop()
        assert not first.is_leader
        await eventually(lambda: other.is_leader, timeout=5, what="failover after stop")
        assert (first.instance, False) in changes and (other.instance, True) in changes

        # The stopped one comes back as a follower.
        await first.start()
        await asyncio.sleep(1.0)
        assert leaders() == [other]

        # A leader whose connection is killed steps down at once; someone leads again within seconds.
        pid = other.backend_pid
        assert pid is not None
        changes.clear()
        await terminate_backend(cfg, pid)
        await eventually(lambda: (other.instance, False) in changes, timeout=5, what="leader stepping down")
        await eventually(lambda: len(leaders()) == 1, timeout=5, what="a new leader")
        # The old leader stepped down before anyone (itself included, after reconnecting) took over.
        assert changes[0] == (other.instance, False), changes
        await asyncio.sleep(0.6)
        assert len(leaders()) == 1
    finally:
        for e in electors:
            await e.stop()
    assert leaders() == []


@pytest.mark.postgres
async def test_store_hands_out_a_postgres_elector(postgres_migrated_config: PostgresConfig) -> None:
    async with started(postgres_migrated_config) as s:
        elector = s.leader_elector()
        assert isinstance(elector, PostgresLeaderElector)
        await elector.start()
        try:
            await eventually(lambda: elector.is_leader, timeout=5, what="sole elector to lead")
        finally:
            await elector.stop()


# --- outages ----------------------------------------------------------------------------------------------

@pytest.mark.postgres
async def test_listener_reconnects_after_its_backend_is_terminated(postgres_migrated_config: PostgresConfig) -> None:
    async with started(postgres_migrated_config, listen_max_backoff=0.5) as s, s.watch() as q:
        pid = s.listener_backend_pid
        assert pid is not None
        await terminate_backend(postgres_migrated_config, pid)
        await eventually(lambda: s.listener_backend_pid not in (None, pid), what="listener to reconnect")
        # Watchers learn that they may have missed changes while the listener was away...
        assert await next_event(q) == ChangeEvent("resync", "", "", "", 0)
        await s.create(mesh())
        # ...and events flow again.
        assert await next_event(q) == ChangeEvent("create", "Mesh", "", "default", 1)
        assert await events_until_sentinel(s, q) == []


class TcpProxy:
    """127.0.0.1:<port> -> the server; `cut()` makes the database unreachable (refuses and drops)."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        self._writers |= {writer, up_writer}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError, asyncio.CancelledError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    async def cut(self) -> None:
        assert self._server is not None
        self._server.close()
        for w in self._writers:
            w.transport.abort()
        self._writers.clear()
        await self._server.wait_closed()


@pytest.mark.postgres
async def test_write_while_the_database_is_unreachable(postgres_server: PgServer,
                                                       postgres_migrated_config: PostgresConfig) -> None:
    proxy = TcpProxy(postgres_server.port)
    await proxy.start()
    from dataclasses import replace
    via_proxy = replace(postgres_migrated_config, port=proxy.port, connection_timeout=2.0)
    async with started(via_proxy, listen_max_backoff=0.5) as s:
        await s.create(mesh())
        await proxy.cut()
        t0 = time.monotonic()
        with pytest.raises(StoreUnavailable, match=r"PostgreSQL postgres://.* is unavailable"):
            await s.create(dataplane("dp-1"))
        assert time.monotonic() - t0 < 10
        with pytest.raises(StoreUnavailable):
            await s.get(MESH, "default")
    # Nothing was written (checked straight against the server).
    async with started(postgres_migrated_config) as direct:
        assert (await direct.list(DATAPLANE)).total == 0
        assert (await direct.get(MESH, "default")).meta.version == 1


@pytest.mark.postgres
async def test_start_and_migrate_against_an_unreachable_server(postgres_server: PgServer) -> None:
    import socket
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound but not listening: connections are refused
        cfg = postgres_server.config("nothing", port=port, connection_timeout=2.0)
        with pytest.raises(StoreUnavailable, match="is unavailable"):
            await PostgresStore(cfg).start()
        with pytest.raises(StoreUnavailable, match="is unavailable"):
            migrate_up(cfg)


# --- configuration ----------------------------------------------------------------------------------------

def test_config_validation_and_connection_parameters() -> None:
    cfg = PostgresConfig(host="db.internal", port=6432, user="kuma", password="p@ss word", db_name="kuma",
                         tls_mode="verifyFull", ca_path="/etc/kuma/ca.pem")
    kw = cfg.connect_kwargs("kuma-cp test")
    assert kw["sslmode"] == "verify-full" and kw["sslrootcert"] == "/etc/kuma/ca.pem"
    assert kw["application_name"] == "kuma-cp test"
    assert "p@ss word" not in repr(cfg) and "p@ss word" not in cfg.describe()
    assert PostgresConfig(tls_mode="verifyNone").connect_kwargs()["sslmode"] == "require"
    with pytest.raises(ValueError, match="tls_mode 'bogus'"):
        PostgresConfig(tls_mode="bogus")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="set ca_path"):
        PostgresConfig(tls_mode="verifyCa")
    with pytest.raises(ValueError, match="together"):
        PostgresConfig(cert_path="/c.pem")


def test_factory_builds_a_postgres_store(tmp_path: object) -> None:
    from pathlib import Path
    cfg = PostgresConfig(db_name="x")
    store = create_store("postgres", work_dir=Path(str(tmp_path)), postgres=cfg)
    assert isinstance(store, PostgresStore) and store.config is cfg
