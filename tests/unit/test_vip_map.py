"""The VIP map others read: names, versions, the view following the store, and GET /meshes/{mesh}/vips."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Collection
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from controlplane.api.errors import error_middleware
from controlplane.dns.api import VipApi
from controlplane.dns.names import mesh_names, unnamed, zone_names
from controlplane.dns.vips import MeshVips, VipView
from controlplane.resources import Resource, from_wire
from controlplane.resources.base import Meta
from controlplane.resources.vip import VIP_ALLOCATION, VIP_ALLOCATION_NAME, VipAllocationSpec
from controlplane.store.memory import MemoryStore


def allocation(meshes: dict[str, dict[str, str]], gone: Collection[tuple[str, str]] = ()) -> VipAllocationSpec:
    return VipAllocationSpec.model_validate({"meshes": {
        mesh: {"services": {svc: {"ip": ip, "goneSince": "2024-01-01T00:00:00+00:00" if (mesh, svc) in gone else None}
                            for svc, ip in services.items()}}
        for mesh, services in meshes.items()}})


# --- names ---------------------------------------------------------------------------------------------------


def test_names_exact_and_kuma_dotted_variant() -> None:
    names = mesh_names(["backend_kuma-demo_svc_8080", "Web", "plain"], "mesh")
    assert names == {
        "backend_kuma-demo_svc_8080.mesh": "backend_kuma-demo_svc_8080",
        "backend.kuma-demo.svc.8080.mesh": "backend_kuma-demo_svc_8080",
        "web.mesh": "Web",
        "plain.mesh": "plain",
    }


def test_exact_name_wins_over_a_dotted_variant_and_invalid_names_get_none() -> None:
    names = mesh_names(["a_b", "a.b", "x" * 64, "sp ace", "ok/slash"], "mesh")
    assert names["a.b.mesh"] == "a.b"
    assert names["a_b.mesh"] == "a_b"
    assert unnamed(["x" * 64, "sp ace", "ok/slash", "fine"], "mesh") == sorted(["x" * 64, "sp ace", "ok/slash"])


def test_multi_mesh_names_resolve_to_the_first_mesh_by_name() -> None:
    names = zone_names({"zeta": {"backend": "127.240.0.9", "only_zeta": "127.240.0.8"},
                        "alpha": {"backend": "127.240.0.1", "only.zeta": "127.240.0.2"}}, "mesh")
    assert names["backend.mesh"] == "127.240.0.1"
    # An exact name in any mesh wins over a dotted variant in another.
    assert names["only.zeta.mesh"] == "127.240.0.2"
    assert names["only_zeta.mesh"] == "127.240.0.8"


# --- versions ------------------------------------------------------------------------------------------------


def test_version_changes_exactly_when_the_map_does() -> None:
    a = MeshVips.build("m", {"x": "127.240.0.1"}, {"x": "240.0.0.1"}, "mesh")
    same = MeshVips.build("m", {"x": "127.240.0.1"}, {"x": "240.0.0.1"}, "mesh")
    assert a.version == same.version and len(a.version) == 16
    assert MeshVips.build("m", {"x": "127.240.0.2"}, {"x": "240.0.0.1"}, "mesh").version != a.version
    assert MeshVips.build("m", {"x": "127.240.0.1"}, {}, "mesh").version != a.version
    assert MeshVips.build("m", {"x": "127.240.0.1"}, {"x": "240.0.0.1"}, "other").version != a.version
    assert a.to_json() == {"mesh": "m", "version": a.version, "vips": {"x": "127.240.0.1"},
                           "tproxyVips": {"x": "240.0.0.1"}, "names": {"x.mesh": "x"}}


# --- the view ------------------------------------------------------------------------------------------------


@pytest.fixture
async def store() -> AsyncIterator[MemoryStore]:
    s = MemoryStore()
    await s.start()
    await s.create(from_wire({"type": "Mesh", "name": "default"}))
    yield s
    await s.close()


async def put(store: MemoryStore, spec: VipAllocationSpec) -> None:
    try:
        cur = await store.get(VIP_ALLOCATION, VIP_ALLOCATION_NAME)
    except Exception:
        await store.create(Resource(VIP_ALLOCATION, Meta(name=VIP_ALLOCATION_NAME), spec))
        return
    await store.update(Resource(VIP_ALLOCATION, cur.meta, spec))


async def test_view_follows_the_store_and_wakes_waiters(store: MemoryStore) -> None:
    await put(store, allocation({"default": {"backend": "127.240.0.1"}}))
    view = VipView(store)
    seen: list[set[str]] = []
    view.on_change(lambda _m, changed: seen.append(changed))
    await view.start()
    try:
        first = view.mesh("default")
        assert first.vips == {"backend": "127.240.0.1"}
        assert view.mesh("nomesh").vips == {}
        waiter = asyncio.create_task(view.wait_changed("default", first.version, timeout=5))
        await asyncio.sleep(0.01)
        assert not waiter.done()
        await put(store, allocation({"default": {"backend": "127.240.0.1", "web": "127.240.0.2"}}))
        changed = await asyncio.wait_for(waiter, 2)
        assert changed.vips == {"backend": "127.240.0.1", "web": "127.240.0.2"}
        assert seen[-1] == {"default"}
        # Reserved (gone) services are not served, and the version says so.
        await put(store, allocation({"default": {"backend": "127.240.0.1", "web": "127.240.0.2"}},
                                    gone={("default", "web")}))
        current = await view.wait_changed("default", changed.version, timeout=2)
        assert current.vips == {"backend": "127.240.0.1"} and current.version == first.version
        # Timing out gives the unchanged map.
        assert (await view.wait_changed("default", current.version, timeout=0.05)).version == current.version
    finally:
        await view.stop()


# --- the API -------------------------------------------------------------------------------------------------


@pytest.fixture
async def client(store: MemoryStore) -> AsyncIterator[tuple[TestClient[Any, Any], MemoryStore]]:
    view = VipView(store)
    await view.start()
    app = web.Application(middlewares=[error_middleware])
    VipApi(store, view).add_routes(app)
    c: TestClient[Any, Any] = TestClient(TestServer(app))
    await c.start_server()
    yield c, store
    await c.close()
    await view.stop()


async def test_api_serves_the_map_with_etag_and_long_poll(client: tuple[TestClient[Any, Any], MemoryStore]) -> None:
    c, store = client
    await put(store, allocation({"default": {"backend_ns_svc_80": "127.240.0.1"}}))
    for _ in range(100):
        resp = await c.get("/meshes/default/vips")
        body = await resp.json()
        if body["vips"]:
            break
        await asyncio.sleep(0.01)
    assert resp.status == 200
    assert body["vips"] == {"backend_ns_svc_80": "127.240.0.1"}
    assert body["names"] == {"backend_ns_svc_80.mesh": "backend_ns_svc_80",
                             "backend.ns.svc.80.mesh": "backend_ns_svc_80"}
    assert resp.headers["ETag"] == f'"{body["version"]}"'
    # Nothing changed: 304.
    resp = await c.get("/meshes/default/vips", headers={"If-None-Match": resp.headers["ETag"]})
    assert resp.status == 304
    # Long poll: held until the map changes.
    poll = asyncio.create_task(c.get(f"/meshes/default/vips?version={body['version']}&wait=10s"))
    await asyncio.sleep(0.05)
    assert not poll.done()
    await put(store, allocation({"default": {"backend_ns_svc_80": "127.240.0.1", "web": "127.240.0.2"}}))
    resp = await asyncio.wait_for(poll, 5)
    assert (await resp.json())["vips"]["web"] == "127.240.0.2"
    # Errors.
    assert (await c.get("/meshes/nomesh/vips")).status == 404
    assert (await c.get("/meshes/default/vips?version=x&wait=soon")).status == 400
