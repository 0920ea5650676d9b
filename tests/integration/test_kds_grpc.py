"""KDS over real gRPC on loopback, in-process: global's KdsServer (TLS, zone tokens) and a zone's KdsClient,
each with its own real store. What an operator relies on: resources flow both ways, deletions converge,
and every refused zone is told why."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import grpc
import pytest

from controlplane.kds.client import KdsClient
from controlplane.kds.naming import zone_qualified_name
from controlplane.kds.server import KdsServer
from controlplane.resources import from_wire, load_all
from controlplane.resources.base import REGISTRY, Resource, ResourceType
from controlplane.resources.dataplane import DATAPLANE
from controlplane.resources.mesh import MESH
from controlplane.resources.zone import ZONE, ZONE_INGRESS
from controlplane.store.base import ListQuery, NotFound, ResourceStore
from controlplane.store.memory import MemoryStore
from controlplane.store.sqlite import SqliteStore
from controlplane.tls import ensure_cp_tls
from controlplane.tokens import TokenService
from tests.ports import free_port

load_all()
MESH_TIMEOUT = REGISTRY.by_name("MeshTimeout")
assert MESH_TIMEOUT is not None
WAIT = 20.0  # a bound on a hung test, not a timing assertion


def timeout_policy(name: str, idle: str = "5s") -> Resource:
    return from_wire({"type": "MeshTimeout", "name": name, "mesh": "default",
                      "spec": {"targetRef": {"kind": "Mesh"},
                               "to": [{"targetRef": {"kind": "Mesh"}, "default": {"idleTimeout": idle}}]}})


def dataplane(name: str) -> Resource:
    return from_wire({"type": "Dataplane", "name": name, "mesh": "default",
                      "networking": {"address": "10.0.0.1",
                                     "inbound": [{"port": 8080, "tags": {"kuma.io/service": "backend"}}]}})


@dataclass
class Lab:
    tmp: Path
    glob: ResourceStore
    tokens: TokenService
    server: KdsServer
    ca_file: Path

    async def token_file(self, zone: str, token: str | None = None) -> Path:
        path = self.tmp / f"token-{zone}-{time.monotonic_ns()}"
        path.write_text(token if token is not None else await self.tokens.issue_zone_token(zone, scope=["cp"]))
        return path

    def client(self, store: ResourceStore, zone: str, token_file: Path) -> KdsClient:
        return KdsClient(store, zone=zone, global_address=f"grpcs://127.0.0.1:{self.server.bound_port}",
                         ca_file=self.ca_file, token_file=token_file, backoff_first=0.05, backoff_max=0.2)


@pytest.fixture
async def lab(tmp_path: Path) -> AsyncIterator[Lab]:
    glob = SqliteStore(tmp_path / "global.db")
    await glob.start()
    tls = ensure_cp_tls(tmp_path / "global")
    assert tls.ca_file is not None
    tokens = TokenService(glob)
    server = KdsServer(glob, tokens, interface="127.0.0.1", port=free_port(),
                       key_cert_pairs=tls.grpc_key_cert_pairs(), instance="global-1")
    await server.start()
    await glob.create(from_wire({"type": "Mesh", "name": "default"}))
    try:
        yield Lab(tmp_path, glob, tokens, server, tls.ca_file)
    finally:
        await server.stop()
        await glob.close()


async def names(store: ResourceStore, rtype: ResourceType) -> set[str]:
    return {r.meta.name for r in (await store.list(rtype, ListQuery())).items}


async def until(store: ResourceStore, check: Callable[[], object]) -> None:
    """Wait for a store to reach a state: re-check after each of its changes (no polling, no sleeps)."""
    async def wait() -> None:
        async with store.watch() as events:
            while not await check():  # type: ignore[misc]
                await events.get()
    await asyncio.wait_for(wait(), WAIT)


@pytest.fixture
async def running() -> AsyncIterator[list[asyncio.Task[None]]]:
    tasks: list[asyncio.Task[None]] = []
    yield tasks
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def test_resources_flow_both_ways_and_deletions_converge(lab: Lab, running: list) -> None:  # type: ignore[type-arg]
    zone = MemoryStore()
    await lab.glob.create(timeout_policy("t1"))
    client = lab.client(zone, "zone-1", await lab.token_file("zone-1"))
    running.append(asyncio.create_task(client.run()))

    async def zone_has_t1() -> bool:
        return "t1" in await names(zone, MESH_TIMEOUT)
    await until(zone, zone_has_t1)
    assert (await zone.get(MESH_TIMEOUT, "t1", "default")).meta.labels["kuma.io/origin"] == "global"
    assert (await lab.glob.get(ZONE, "zone-1")).spec.enabled  # registered on first connect
    assert client.state == "connected"
    status = lab.server.zone_status()["zone-1"]
    assert set(status) == {"GlobalToZoneSync", "ZoneToGlobalSync"}
    assert status["GlobalToZoneSync"]["types"]["MeshTimeout"]["resources_sent"] >= 1

    await zone.create(dataplane("backend-1"))
    qualified = zone_qualified_name("backend-1", "default", "zone-1")

    async def global_has_dp() -> bool:
        return qualified in await names(lab.glob, DATAPLANE)
    await until(lab.glob, global_has_dp)
    stored = await lab.glob.get(DATAPLANE, qualified, "default")
    assert stored.meta.labels["kuma.io/zone"] == "zone-1" and stored.meta.labels["kuma.io/origin"] == "zone"
    assert stored.meta.labels["kuma.io/display-name"] == "backend-1"

    await lab.glob.delete(MESH_TIMEOUT, "t1", "default")
    await zone.delete(DATAPLANE, "backend-1", "default")

    async def t1_gone() -> bool:
        return "t1" not in await names(zone, MESH_TIMEOUT)

    async def dp_gone() -> bool:
        return qualified not in await names(lab.glob, DATAPLANE)
    await until(zone, t1_gone)
    await until(lab.glob, dp_gone)


async def test_a_reconnecting_zone_converges_with_deletions_made_while_it_was_away(lab: Lab, running: list) -> None:  # type: ignore[type-arg]
    zone = MemoryStore()
    for i in range(3):
        await lab.glob.create(timeout_policy(f"t{i}"))
    client = lab.client(zone, "zone-1", await lab.token_file("zone-1"))
    task = asyncio.create_task(client.run())
    running.append(task)

    async def all_three() -> bool:
        return await names(zone, MESH_TIMEOUT) == {"t0", "t1", "t2"}
    await until(zone, all_three)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await lab.glob.delete(MESH_TIMEOUT, "t0", "default")
    await lab.glob.create(timeout_policy("t3"))
    running.append(asyncio.create_task(client.run()))

    async def converged() -> bool:
        return await names(zone, MESH_TIMEOUT) == {"t1", "t2", "t3"}
    await until(zone, converged)


async def refused(lab: Lab, zone: str, token_file: Path) -> grpc.aio.AioRpcError:
    client = lab.client(MemoryStore(), zone, token_file)
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await asyncio.wait_for(client.connect_once(), WAIT)
    return e.value


async def test_wrong_expired_revoked_and_other_zone_tokens_are_refused_with_reasons(lab: Lab) -> None:
    other_global = MemoryStore()
    wrong = await TokenService(other_global).issue_zone_token("zone-1", scope=["cp"])
    e = await refused(lab, "zone-1", await lab.token_file("zone-1", wrong))
    assert e.code() is grpc.StatusCode.UNAUTHENTICATED and "zone token refused" in (e.details() or "")

    past = TokenService(lab.glob, clock=lambda: time.time() - 7200)
    expired = await past.issue_zone_token("zone-1", scope=["cp"], valid_for=timedelta(hours=1))
    e = await refused(lab, "zone-1", await lab.token_file("zone-1", expired))
    assert e.code() is grpc.StatusCode.UNAUTHENTICATED and "expired" in (e.details() or "")

    token = await lab.tokens.issue_zone_token("zone-1", scope=["cp"])
    claims = await lab.tokens.validate_zone_token(token)
    await lab.tokens.revoke("zone", claims.jti)
    e = await refused(lab, "zone-1", await lab.token_file("zone-1", token))
    assert e.code() is grpc.StatusCode.UNAUTHENTICATED and "revoked" in (e.details() or "")

    e = await refused(lab, "zone-1", await lab.token_file("zone-2"))
    assert e.code() is grpc.StatusCode.PERMISSION_DENIED
    assert "for zone 'zone-2', not 'zone-1'" in (e.details() or "")

    ingress_only = await lab.tokens.issue_zone_token("zone-1", scope=["ingress"])
    e = await refused(lab, "zone-1", await lab.token_file("zone-1", ingress_only))
    assert e.code() is grpc.StatusCode.PERMISSION_DENIED and "'cp'" in (e.details() or "")
    with pytest.raises(NotFound):
        await lab.glob.get(ZONE, "zone-1")  # nothing registered for refused zones


async def test_a_missing_token_is_refused_by_global_naming_the_fix(lab: Lab) -> None:
    channel_target = f"127.0.0.1:{lab.server.bound_port}"
    creds = grpc.ssl_channel_credentials(root_certificates=lab.ca_file.read_bytes())
    async with grpc.aio.secure_channel(channel_target, creds) as ch:
        call = ch.stream_stream("/kuma.mesh.v1alpha1.KDSSyncService/GlobalToZoneSync")(
            metadata=(("client-id", "zone-1"),))
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await asyncio.wait_for(call.read(), WAIT)
    assert e.value.code() is grpc.StatusCode.UNAUTHENTICATED
    assert "kumactl generate zone-token --zone zone-1 --scope cp" in (e.value.details() or "")


async def test_a_disabled_zone_is_refused_and_disabling_an_online_zone_closes_its_streams(
        lab: Lab, running: list) -> None:  # type: ignore[type-arg]
    zone = MemoryStore()
    token_file = await lab.token_file("zone-1")
    client = lab.client(zone, "zone-1", token_file)
    running.append(asyncio.create_task(client.connect_once()))

    async def mesh_arrived() -> bool:
        return "default" in await names(zone, MESH)
    await until(zone, mesh_arrived)
    record = await lab.glob.get(ZONE, "zone-1")
    await lab.glob.update(from_wire({"type": "Zone", "name": "zone-1", "enabled": False})
                          .with_meta(version=record.meta.version))
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await asyncio.wait_for(running[0], WAIT)
    assert e.value.code() is grpc.StatusCode.PERMISSION_DENIED and "disabled" in (e.value.details() or "")
    again = await refused(lab, "zone-1", token_file)
    assert again.code() is grpc.StatusCode.PERMISSION_DENIED
    assert "zone 'zone-1' is disabled on global: set 'enabled: true'" in (again.details() or "")


async def test_a_second_connection_for_the_same_zone_replaces_the_first(lab: Lab, running: list) -> None:  # type: ignore[type-arg]
    first_store, second_store = MemoryStore(), MemoryStore()
    token_file = await lab.token_file("zone-1")
    first = asyncio.create_task(lab.client(first_store, "zone-1", token_file).connect_once())
    running.append(first)

    async def mesh_in(store: ResourceStore) -> bool:
        return "default" in await names(store, MESH)
    await until(first_store, lambda: mesh_in(first_store))
    running.append(asyncio.create_task(lab.client(second_store, "zone-1", token_file).connect_once()))
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await asyncio.wait_for(first, WAIT)
    assert e.value.code() is grpc.StatusCode.ABORTED and "replaced by a newer" in (e.value.details() or "")
    await until(second_store, lambda: mesh_in(second_store))


async def test_a_refused_zone_backs_off_with_jitter_and_logs_the_refusal_once(
        lab: Lab, caplog: pytest.LogCaptureFixture) -> None:
    delays: list[float] = []
    enough = asyncio.Event()

    async def fake_sleep(delay: float) -> None:  # the back-off is observed, not waited out
        delays.append(delay)
        if len(delays) == 5:
            enough.set()
            await asyncio.Event().wait()

    client = KdsClient(MemoryStore(), zone="zone-1", global_address=f"grpcs://127.0.0.1:{lab.server.bound_port}",
                       ca_file=lab.ca_file, token_file=await lab.token_file("zone-2"), backoff_first=1.0,
                       backoff_max=30.0, sleep=fake_sleep)
    caplog.set_level("WARNING", logger="kuma.kds")
    task = asyncio.create_task(client.run())
    try:
        await asyncio.wait_for(enough.wait(), WAIT)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    for delay, nominal in zip(delays, [1.0, 2.0, 4.0, 8.0, 16.0], strict=True):
        assert nominal / 2 <= delay <= nominal  # doubling, each jittered down by up to half
    refusals = [r for r in caplog.records if r.getMessage() == "global refused this zone's KDS connection"]
    assert len(refusals) == 1 and "not 'zone-1'" in refusals[0].reason  # type: ignore[attr-defined]
    assert client.state == "refused" and "PERMISSION_DENIED" in client.last_error


async def test_a_zones_ingress_reaches_the_other_zone_through_global_and_not_back(lab: Lab, running: list) -> None:  # type: ignore[type-arg]
    zone1, zone2 = MemoryStore(), MemoryStore()
    for name, store in (("zone-1", zone1), ("zone-2", zone2)):
        running.append(asyncio.create_task(lab.client(store, name, await lab.token_file(name)).run()))
    await zone1.create(from_wire({"type": "ZoneIngress", "name": "ingress-1", "zone": "zone-1",
                                  "networking": {"address": "10.0.1.1", "port": 10001,
                                                 "advertisedAddress": "198.18.0.1", "advertisedPort": 10001}}))
    qualified = zone_qualified_name("ingress-1", "", "zone-1")

    async def in_zone2() -> bool:
        return qualified in await names(zone2, ZONE_INGRESS)
    await until(zone2, in_zone2)
    forwarded = await zone2.get(ZONE_INGRESS, qualified)
    assert forwarded.meta.labels["kuma.io/zone"] == "zone-1" and forwarded.meta.labels["kuma.io/origin"] == "zone"
    assert await names(zone1, ZONE_INGRESS) == {"ingress-1"}  # zone-1 is not sent its own ingress back

    await zone1.delete(ZONE_INGRESS, "ingress-1")

    async def gone_from_zone2() -> bool:
        return qualified not in await names(zone2, ZONE_INGRESS)
    await until(zone2, gone_from_zone2)
