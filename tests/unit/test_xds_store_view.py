"""The reconciler's StoreView: lists kept current from change events equal what the store lists (and the
topologies built from them equal full rebuilds), after random sequences of creates, updates, deletes, resyncs
and mesh deletions; a change that lands while the first list is in flight is not lost; and a reconciler
re-reads only what a change names."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest

from controlplane.ca import CaManager
from controlplane.resources import REGISTRY, Resource, from_wire
from controlplane.resources.zone import ZONE_INGRESS
from controlplane.store.base import ChangeEvent, ListQuery, NotFound
from controlplane.store.memory import MemoryStore
from controlplane.supervise import Supervisor
from controlplane.xds.cache import SnapshotCache
from controlplane.xds.reconciler import Reconciler
from controlplane.xds.store_view import ALL_MESHES, StoreView
from controlplane.xds.topology import build_topology
from tests.unit.waiting import wait_until

from .xds_fixtures import dataplane, mesh

DP = REGISTRY.by_name("Dataplane")
TIMEOUT = REGISTRY.by_name("MeshTimeout")
MESH_TYPE = REGISTRY.by_name("Mesh")
assert DP is not None and TIMEOUT is not None and MESH_TYPE is not None


def timeout_policy(mesh_name: str, name: str, seconds: int) -> Resource:
    return from_wire({"type": "MeshTimeout", "mesh": mesh_name, "name": name, "spec": {
        "targetRef": {"kind": "Mesh"},
        "to": [{"targetRef": {"kind": "Mesh"}, "default": {"idleTimeout": f"{seconds}s"}}]}})


def random_dp(rnd: random.Random, mesh_name: str, name: str) -> Resource:
    service = f"svc-{rnd.randrange(4)}"
    port = 10000 + rnd.randrange(50)
    return dataplane(name, service, port=port, service_port=port + 1000, mesh_name=mesh_name,
                     protocol=rnd.choice(["tcp", "http"]), outbounds=((20000, f"svc-{rnd.randrange(4)}"),))


def key(items: list[Resource]) -> list[tuple[str, str, int, Any]]:
    return [(r.meta.mesh, r.meta.name, r.meta.version, r.spec.model_dump()) for r in items]


def feed(view: StoreView, events: asyncio.Queue[ChangeEvent]) -> None:
    """What the reconciler's watch does: every committed change reaches the view."""
    while not events.empty():
        view.on_event(events.get_nowait())


async def one_op(rnd: random.Random, store: MemoryStore, meshes: list[str]) -> None:
    m = rnd.choice(meshes)
    name = f"dp-{rnd.randrange(12)}"
    op = rnd.random()
    try:
        if op < 0.35:
            await store.create(random_dp(rnd, m, name))
        elif op < 0.65:
            current = await store.get(DP, name, m)
            await store.update(random_dp(rnd, m, name).with_meta(version=current.meta.version))
        elif op < 0.85:
            await store.delete(DP, name, m)
        elif op < 0.95:
            pname = f"t-{rnd.randrange(3)}"
            try:
                current = await store.get(TIMEOUT, pname, m)
            except NotFound:
                await store.create(timeout_policy(m, pname, rnd.randrange(1, 60)))
            else:
                await store.update(timeout_policy(m, pname, rnd.randrange(1, 60)).with_meta(
                    version=current.meta.version))
        else:  # the mesh goes, with everything in it, and comes back empty
            await store.delete(MESH_TYPE, m)
            await store.create(mesh(m))
    except Exception as e:  # exists already / not there: that op is a no-op, as a user's would be
        if type(e).__name__ not in ("AlreadyExists", "NotFound"):
            raise


@pytest.mark.parametrize("seed", range(6))
async def test_kept_lists_equal_the_store_after_random_event_sequences(seed: int) -> None:
    rnd = random.Random(seed)
    store = MemoryStore()
    await store.start()
    meshes = ["m1", "m2"]
    for m in meshes:
        await store.create(mesh(m))
    view = StoreView(store)
    reads = 0
    async with store.watch() as events:
        view.start_watching()
        for _ in range(300):
            for _ in range(rnd.randrange(1, 5)):
                await one_op(rnd, store, meshes)
            if rnd.random() < 0.05:
                await events.put(ChangeEvent("resync", "", "", "", 0))
            feed(view, events)
            if rnd.random() < 0.5:
                continue  # several batches between reads: stale sets grow
            reads += 2 * len(meshes) + 1
            for m in meshes:
                got = await view.list(DP, m)
                want = (await store.list(DP, ListQuery(mesh=m))).items
                assert key(got) == key(want)
                assert key(await view.list(TIMEOUT, m)) == key((await store.list(TIMEOUT, ListQuery(mesh=m))).items)
                mesh_res = await store.get(MESH_TYPE, m)
                a = build_topology(mesh_res, got, {}, 1, None)
                b = build_topology(mesh_res, want, {}, 1, None)
                assert (a.endpoints, a.protocols, a.service_ports, a.endpoint_keys) == (
                    b.endpoints, b.protocols, b.service_ports, b.endpoint_keys)
            assert key(await view.list(DP, ALL_MESHES)) == key((await store.list(DP)).items)
        # the point of it: most reads were served from the kept lists (resyncs and mesh deletions list again)
        assert view.listed < reads / 3
    await store.close()


class ChangeDuringList(MemoryStore):
    """A store whose next list returns what it read, but only after another write committed (and its event was
    delivered): the change a list in flight cannot contain."""

    def __init__(self) -> None:
        super().__init__()
        self.during_list: Any = None

    async def list(self, rtype: Any, query: ListQuery | None = None) -> Any:
        result = await super().list(rtype, query)
        hook, self.during_list = self.during_list, None
        if hook is not None:
            await hook()
        return result


async def test_a_change_during_the_first_list_is_read_next_time() -> None:
    store = ChangeDuringList()
    await store.start()
    await store.create(mesh("m"))
    await store.create(dataplane("a", "svc", port=10001, service_port=11001, mesh_name="m"))
    view = StoreView(store)
    async with store.watch() as events:
        view.start_watching()
        feed(view, events)

        async def write() -> None:
            await store.create(dataplane("b", "svc", port=10002, service_port=11002, mesh_name="m"))
            feed(view, events)

        store.during_list = write
        # The list read only "a"; "b"'s event came while it was in flight, so it is read right after.
        assert [r.meta.name for r in await view.list(DP, "m")] == ["a", "b"]
        assert view.listed == 1 and view.fetched == 1
        assert [r.meta.name for r in await view.list(DP, "m")] == ["a", "b"]
        assert view.listed == 1 and view.fetched == 1
    await store.close()


async def test_without_a_watch_every_read_lists_and_nothing_is_kept() -> None:
    store = MemoryStore()
    await store.start()
    await store.create(mesh("m"))
    view = StoreView(store)
    await store.create(dataplane("a", "svc", port=10001, service_port=11001, mesh_name="m"))
    assert [r.meta.name for r in await view.list(DP, "m")] == ["a"]
    await store.create(dataplane("b", "svc", port=10002, service_port=11002, mesh_name="m"))
    assert [r.meta.name for r in await view.list(DP, "m")] == ["a", "b"]
    assert view.listed == 0  # passed through to the store
    view.start_watching()
    await view.list(ZONE_INGRESS)
    view.stop_watching()
    await store.close()


async def test_the_reconciler_rereads_only_the_dataplane_a_change_names() -> None:
    store = MemoryStore()
    await store.start()
    cache = SnapshotCache()
    reconciler = Reconciler(store, cache, CaManager(store), debounce=0.001,
                            supervisor=Supervisor(backoff_min=0.05, backoff_max=0.2))
    try:
        await store.create(mesh("m"))
        for i in range(20):
            await store.create(dataplane(f"dp-{i}", "svc", port=10000 + i, service_port=11000 + i, mesh_name="m",
                                         outbounds=((20000, "svc"),)))
        await reconciler.start()
        for i in range(20):
            reconciler.proxy_connected(f"m.dp-{i}")

        await wait_until(lambda: all(cache.get_snapshot(f"m.dp-{i}") is not None for i in range(20)))
        listed, fetched = reconciler.view.listed, reconciler.view.fetched
        current = await store.get(DP, "dp-3", "m")
        changed = dataplane("dp-3", "svc", port=10100, service_port=11100, mesh_name="m",
                            outbounds=((20000, "svc"),)).with_meta(version=current.meta.version)
        await store.update(changed)
        await wait_until(lambda: any(e.port == 10100 for e in reconciler.topologies["m"].endpoints["svc"]))
        assert reconciler.view.listed == listed  # nothing listed again
        assert reconciler.view.fetched == fetched + 1  # only dp-3 re-read
        await store.delete(DP, "dp-5", "m")
        await wait_until(lambda: "dp-5" not in reconciler.topologies["m"].dataplanes)
        assert reconciler.view.listed == listed
    finally:
        await reconciler.stop()
        await store.close()


async def test_a_proxy_that_disconnects_while_a_rebuild_yields_gets_nothing_and_holds_nothing(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A mesh rebuild lets the streams run every few proxies; a proxy that disconnects meanwhile must not get a
    snapshot (nobody would clear it) nor keep resources in the memo."""
    from controlplane.xds import reconciler as reconciler_module

    monkeypatch.setattr(reconciler_module, "YIELD_EVERY", 1)
    store = MemoryStore()
    await store.start()
    cache = SnapshotCache()
    reconciler = Reconciler(store, cache, CaManager(store), debounce=0.001)
    try:
        await store.create(mesh("m"))
        for i in range(5):
            await store.create(dataplane(f"dp-{i}", f"svc-{i}", port=10000 + i, service_port=11000 + i,
                                         mesh_name="m", outbounds=((20000, "svc-0"),)))
            reconciler.proxy_connected(f"m.dp-{i}")
        task = asyncio.create_task(reconciler.reconcile_once())
        async with asyncio.timeout(5):
            while cache.get_snapshot("m.dp-0") is None:
                await asyncio.sleep(0)
        assert cache.get_snapshot("m.dp-4") is None  # not built yet: the pass is between proxies
        reconciler.proxy_disconnected("m.dp-4")
        await task
        assert all(cache.get_snapshot(f"m.dp-{i}") is not None for i in range(4))
        assert cache.get_snapshot("m.dp-4") is None
        assert "m.dp-4" not in reconciler.memos["m"]._by_proxy
        assert "m.dp-4" not in reconciler.uses
    finally:
        await store.close()


async def test_many_stale_are_listed_again_and_the_unchanged_stay_the_same_objects() -> None:
    rnd = random.Random(7)
    store = MemoryStore()
    await store.start()
    await store.create(mesh("m1"))
    for i in range(200):
        await store.create(random_dp(rnd, "m1", f"dp-{i}"))
    view = StoreView(store)
    async with store.watch() as events:
        view.start_watching()
        before = {r.meta.name: r for r in await view.list(DP, "m1")}
        for i in range(0, 200, 2):  # a reconnect storm: half of them written again
            current = await store.get(DP, f"dp-{i}", "m1")
            await store.update(random_dp(rnd, "m1", f"dp-{i}").with_meta(version=current.meta.version))
        feed(view, events)
        got = await view.list(DP, "m1")
        assert (view.listed, view.fetched) == (2, 0)  # one list again, not 100 reads
        assert key(got) == key((await store.list(DP, ListQuery(mesh="m1"))).items)
        assert all((r is before[r.meta.name]) == (int(r.meta.name[3:]) % 2 == 1) for r in got)
    await store.close()
