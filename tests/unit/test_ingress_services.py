"""The zone's upkeep of its ingresses' availableServices, on a real (memory) store: one entry per mesh and tag
set of healthy local inbounds with instances and real ports, the zone's own kuma.io/zone, a write only when
something changed, other zones' ingresses left alone."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from controlplane.resources import from_wire, load_all
from controlplane.resources.dataplane import DATAPLANE
from controlplane.resources.zone import ZONE_INGRESS
from controlplane.store.memory import MemoryStore
from controlplane.xds.ingress_services import IngressServices, available_services

load_all()


def dp(name: str, service: str, *, mesh: str = "default", ready: bool = True, port: int = 8080,
       **tags: str) -> dict[str, Any]:
    inbound: dict[str, Any] = {"port": 10000 + len(name), "servicePort": port,
                               "tags": {"kuma.io/service": service, **tags}}
    if not ready:
        inbound["health"] = {"ready": False}
    return {"type": "Dataplane", "mesh": mesh, "name": name, "networking": {"address": "10.0.0.1",
                                                                            "inbound": [inbound]}}


def ingress(name: str, zone: str | None = None) -> dict[str, Any]:
    doc: dict[str, Any] = {"type": "ZoneIngress", "name": name, "networking": {"address": "10.0.0.9", "port": 10001}}
    if zone:
        doc["zone"] = zone
    return doc


def test_available_services_group_healthy_inbounds_by_mesh_and_tags() -> None:
    dps = [from_wire(d) for d in (
        dp("a-1", "a", version="v1"), dp("a-2", "a", version="v1", port=8081), dp("a-3", "a", version="v2"),
        dp("a-4", "a", version="v2", ready=False), dp("b-1", "b", mesh="other", **{"kuma.io/zone": "fake"}))]
    got = [s.model_dump(by_alias=True, exclude_defaults=True) for s in available_services(dps, "zone-1")]
    assert got == [
        {"mesh": "default", "instances": 2, "ports": [8080, 8081],
         "tags": {"kuma.io/service": "a", "kuma.io/zone": "zone-1", "version": "v1"}},
        {"mesh": "default", "ports": [8080], "tags": {"kuma.io/service": "a", "kuma.io/zone": "zone-1",
                                                      "version": "v2"}},
        {"mesh": "other", "ports": [8080], "tags": {"kuma.io/service": "b", "kuma.io/zone": "zone-1"}},
    ]


@pytest.fixture
async def store() -> AsyncIterator[MemoryStore]:
    s = MemoryStore()
    await s.start()
    for mesh in ("default", "other"):
        await s.create(from_wire({"type": "Mesh", "name": mesh}))
    yield s
    await s.close()


async def test_only_this_zones_ingresses_are_written_and_only_on_change(store: MemoryStore) -> None:
    for doc in (ingress("mine"), ingress("also-mine", "zone-1"), ingress("theirs", "zone-2"), dp("a-1", "a")):
        await store.create(from_wire(doc))
    upkeep = IngressServices(store, "zone-1", debounce=0)
    assert not await upkeep.refresh()
    assert upkeep.writes == 2
    mine = (await store.get(ZONE_INGRESS, "mine")).spec
    assert mine.zone == "zone-1" and [s.tags["kuma.io/service"] for s in mine.available_services] == ["a"]
    assert (await store.get(ZONE_INGRESS, "theirs")).spec.available_services == []
    assert not await upkeep.refresh()
    assert upkeep.writes == 2  # nothing changed, nothing written
    await store.create(from_wire(dp("a-2", "a")))
    assert not await upkeep.refresh()
    assert upkeep.writes == 4
    assert (await store.get(ZONE_INGRESS, "mine")).spec.available_services[0].instances == 2


async def test_fed_by_events_a_change_rereads_only_what_it_names(store: MemoryStore) -> None:
    for doc in (ingress("mine"), *(dp(f"a-{i}", "a") for i in range(20))):
        await store.create(from_wire(doc))
    upkeep = IngressServices(store, "zone-1", debounce=0)
    async with store.watch() as events:
        upkeep.view.start_watching()
        assert not await upkeep.refresh()
        await store.create(from_wire(dp("b-1", "b")))
        current = await store.get(DATAPLANE, "a-3", "default")
        await store.update(from_wire(dp("a-3", "a", ready=False)).with_meta(version=current.meta.version))
        while not events.empty():
            upkeep.view.on_event(events.get_nowait())
        assert not await upkeep.refresh()
        assert upkeep.view.listed == 2  # the ingresses and the Dataplanes, once each
        wanted = available_services((await store.list(DATAPLANE)).items, "zone-1")
        assert (await store.get(ZONE_INGRESS, "mine")).spec.available_services == wanted
        assert {s.tags["kuma.io/service"]: s.instances for s in wanted} == {"a": 19, "b": 1}
