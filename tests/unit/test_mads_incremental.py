"""MADS assignments follow store events incrementally (a Dataplane change recomputes that dataplane only,
no list of every Dataplane): after any sequence of dataplane and MeshMetric changes they equal a fresh
computation from the whole store."""

from __future__ import annotations

import random

from controlplane.mads.assignments import Assignments, compute
from controlplane.resources import from_wire, load_all
from controlplane.resources.base import REGISTRY, Resource
from controlplane.store.base import ChangeEvent, NotFound
from controlplane.store.memory import MemoryStore
from controlplane.supervise import Supervisor
from tests.unit.test_mesh_metric import dataplane, mesh_metric, prometheus

load_all()
DP, MM = REGISTRY.by_name("Dataplane"), REGISTRY.by_name("MeshMetric")
SERVICES = ("web", "backend", "db")
TARGETS = ({"kind": "Mesh"}, {"kind": "MeshService", "name": "backend"}, {"kind": "MeshService", "name": "web"},
           {"kind": "MeshSubset", "tags": {"kuma.io/service": "db"}})


async def _fresh(store: MemoryStore) -> dict[object, object]:
    assert DP is not None and MM is not None
    policies: dict[str, list[Resource]] = {}
    for p in (await store.list(MM)).items:
        policies.setdefault(p.meta.mesh, []).append(p)
    return dict(compute((await store.list(DP)).items, policies, "zone-1"))


async def _change(store: MemoryStore, rnd: random.Random) -> None:
    assert DP is not None and MM is not None
    roll = rnd.random()
    if roll < 0.7:
        name = f"dp-{rnd.randrange(30)}"
        try:
            current = await store.get(DP, name, "default")
        except NotFound:
            await store.create(dataplane(name, rnd.choice(SERVICES), f"10.0.0.{rnd.randrange(1, 250)}"))
            return
        if rnd.random() < 0.3:
            await store.delete(DP, name, "default")
        else:
            wanted = dataplane(name, rnd.choice(SERVICES), f"10.0.0.{rnd.randrange(1, 250)}")
            await store.update(wanted.with_meta(version=current.meta.version))
    else:
        name = f"mm-{rnd.randrange(4)}"
        try:
            current = await store.get(MM, name, "default")
        except NotFound:
            await store.create(mesh_metric(name, rnd.choice(TARGETS), prometheus(port=rnd.randrange(5000, 5010))))
            return
        await store.delete(MM, name, "default")


async def test_incremental_assignments_equal_a_fresh_computation() -> None:
    rnd = random.Random(14)
    store = MemoryStore()
    await store.start()
    await store.create(from_wire({"type": "Mesh", "name": "default"}))
    assignments = Assignments(store, "zone-1", Supervisor())
    async with store.watch() as events:
        assignments.view.start_watching()
        await assignments.refresh()
        for _ in range(120):
            for _ in range(rnd.randrange(1, 4)):
                await _change(store, rnd)
            while not events.empty():
                event: ChangeEvent = events.get_nowait()
                assignments.on_event(event)
            await assignments.refresh()
            assert assignments.current == await _fresh(store)
    # Dataplane changes under a policy recomputed only the dataplanes they named, not all of them each time.
    assert 0 < assignments.recomputed < 120 * 30
