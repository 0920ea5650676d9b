"""The one conformance suite every ResourceStore backend passes (see controlplane/store/base.py).

A backend's test module subclasses `StoreConformance` and provides a `store` fixture (started, empty):

    class TestSqliteStore(StoreConformance):
        @pytest.fixture
        async def store(self, tmp_path): ...

Events are checked without sleeping: backends may deliver them asynchronously (postgres: LISTEN/NOTIFY), so
"no event for a failed write" is shown by making a sentinel write afterwards and seeing that the next event
is the sentinel's.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from controlplane.resources import Resource, from_wire, load_all
from controlplane.resources.base import ResourceType
from controlplane.resources.codec import spec_from_store
from controlplane.resources.dataplane import DATAPLANE
from controlplane.resources.mesh import MESH
from controlplane.resources.secret import GLOBAL_SECRET, SECRET
from controlplane.resources.zone import ZONE
from controlplane.store.base import (
    AlreadyExists,
    ChangeEvent,
    Conflict,
    ListQuery,
    MeshNotFound,
    NotFound,
    RawResource,
    ResourceStore,
)

load_all()

EVENT_TIMEOUT = 10.0


# --- builders ---------------------------------------------------------------------------------------------

def mesh(name: str = "default", **fields: Any) -> Resource:
    return from_wire({"type": "Mesh", "name": name, **fields})


def dataplane(name: str, mesh: str = "default", *, labels: dict[str, str] | None = None, inbounds: int = 1,
              address: str = "10.0.0.1", service: str = "web") -> Resource:
    doc: dict[str, Any] = {
        "type": "Dataplane", "mesh": mesh, "name": name,
        "networking": {
            "address": address,
            "inbound": [{"port": 8000 + i, "servicePort": 9000 + i,
                         "tags": {"kuma.io/service": f"{service}-{i}" if inbounds > 1 else service,
                                  "kuma.io/protocol": "http", "version": "v1"}}
                        for i in range(inbounds)],
            "outbound": [{"port": 10001, "tags": {"kuma.io/service": "backend"}}],
        },
    }
    if labels:
        doc["labels"] = labels
    return from_wire(doc)


def zone(name: str, enabled: bool = True) -> Resource:
    return from_wire({"type": "Zone", "name": name, "enabled": enabled})


def secret(name: str, mesh: str = "default", value: bytes = b"s3cr3t") -> Resource:
    return from_wire({"type": "Secret", "mesh": mesh, "name": name, "data": base64.b64encode(value).decode()})


def global_secret(name: str, value: bytes = b"signing-key") -> Resource:
    return from_wire({"type": "GlobalSecret", "name": name, "data": base64.b64encode(value).decode()})


def edit(stored: Resource, new: Resource) -> Resource:
    """`new`'s spec and labels, as an update of the `stored` version that was read."""
    return new.with_meta(version=stored.meta.version)


async def next_event(q: asyncio.Queue[ChangeEvent], timeout: float = EVENT_TIMEOUT) -> ChangeEvent:
    return await asyncio.wait_for(q.get(), timeout)


async def events_until_sentinel(store: ResourceStore, q: asyncio.Queue[ChangeEvent],
                                name: str = "sentinel") -> list[ChangeEvent]:
    """Write a sentinel Zone; return every event that arrived before the sentinel's (exclusive)."""
    await store.create(zone(name))
    seen: list[ChangeEvent] = []
    while True:
        e = await next_event(q)
        if e.type == "Zone" and e.name == name:
            return seen
        seen.append(e)


_barriers = itertools.count()


@contextlib.asynccontextmanager
async def watch_from_here(store: ResourceStore) -> AsyncIterator[asyncio.Queue[ChangeEvent]]:
    """`store.watch()`, minus events of writes made before it: a backend that delivers events
    asynchronously may still be delivering those. A barrier write (a Zone) marks where "now" is."""
    async with store.watch() as q:
        name = f"barrier-{next(_barriers)}"
        await store.create(zone(name))
        while (await next_event(q)).name != name:
            pass
        yield q


def names(items: list[Resource]) -> list[str]:
    return [r.meta.name for r in items]


class StoreConformance:
    """Needs a `store` fixture yielding a started, empty store."""

    # --- create / get / update / delete -------------------------------------------------------------------

    async def test_create_then_get(self, store: ResourceStore) -> None:
        await store.create(mesh())
        created = await store.create(dataplane("dp-1"))
        assert created.meta.version == 1
        assert created.meta.creation_time is not None
        assert created.meta.creation_time == created.meta.modification_time
        got = await store.get(DATAPLANE, "dp-1", "default")
        assert got == created
        assert got.spec == dataplane("dp-1").spec
        assert got.type is DATAPLANE

    async def test_versions_start_at_one_and_increment(self, store: ResourceStore) -> None:
        m = await store.create(mesh())
        assert m.meta.version == 1
        for expected in (2, 3, 4):
            m = await store.update(m)
            assert m.meta.version == expected
        assert (await store.get(MESH, "default")).meta.version == 4

    async def test_update_changes_spec_and_labels(self, store: ResourceStore) -> None:
        await store.create(mesh())
        v1 = await store.create(dataplane("dp-1", labels={"team": "a", "env": "dev"}))
        v2 = await store.update(edit(v1, dataplane("dp-1", address="10.9.9.9", labels={"team": "b"})))
        got = await store.get(DATAPLANE, "dp-1", "default")
        assert got == v2
        assert got.spec.networking.address == "10.9.9.9"  # type: ignore[attr-defined]
        assert dict(got.meta.labels) == {"team": "b"}

    async def test_stale_update_conflicts_and_changes_nothing(self, store: ResourceStore) -> None:
        await store.create(mesh())
        v1 = await store.create(dataplane("dp-1"))
        v2 = await store.update(edit(v1, dataplane("dp-1", address="10.0.0.2")))
        with pytest.raises(Conflict):
            await store.update(edit(v1, dataplane("dp-1", address="10.0.0.3")))
        assert await store.get(DATAPLANE, "dp-1", "default") == v2

    async def test_update_of_never_read_resource_conflicts(self, store: ResourceStore) -> None:
        await store.create(mesh())
        await store.create(dataplane("dp-1"))
        with pytest.raises(Conflict):
            await store.update(dataplane("dp-1"))  # version 0: was not read from the store

    async def test_delete(self, store: ResourceStore) -> None:
        await store.create(mesh())
        await store.create(dataplane("dp-1"))
        await store.delete(DATAPLANE, "dp-1", "default")
        with pytest.raises(NotFound):
            await store.get(DATAPLANE, "dp-1", "default")
        assert (await store.list(DATAPLANE)).total == 0

    async def test_delete_with_version(self, store: ResourceStore) -> None:
        await store.create(mesh())
        v1 = await store.create(dataplane("dp-1"))
        v2 = await store.update(v1)
        with pytest.raises(Conflict):
            await store.delete(DATAPLANE, "dp-1", "default", version=1)
        assert await store.get(DATAPLANE, "dp-1", "default") == v2
        await store.delete(DATAPLANE, "dp-1", "default", version=2)
        with pytest.raises(NotFound):
            await store.get(DATAPLANE, "dp-1", "default")

    async def test_delete_mesh_with_stale_version_conflicts(self, store: ResourceStore) -> None:
        m = await store.update(await store.create(mesh()))
        await store.create(dataplane("dp-1"))
        with pytest.raises(Conflict):
            await store.delete(MESH, "default", version=1)
        assert await store.get(MESH, "default") == m
        assert (await store.list(DATAPLANE)).total == 1

    async def test_create_duplicate(self, store: ResourceStore) -> None:
        await store.create(mesh())
        first = await store.create(dataplane("dp-1"))
        with pytest.raises(AlreadyExists):
            await store.create(dataplane("dp-1", address="10.1.1.1"))
        with pytest.raises(AlreadyExists):
            await store.create(mesh())
        assert await store.get(DATAPLANE, "dp-1", "default") == first

    async def test_create_all_is_all_or_nothing(self, store: ResourceStore) -> None:
        async with store.watch() as events:
            created = await store.create_all([mesh("batch"), dataplane("dp-1", "batch"), dataplane("dp-2", "batch")])
            assert [r.meta.version for r in created] == [1, 1, 1]
            assert (await store.get(DATAPLANE, "dp-2", "batch")).meta.version == 1  # its mesh came in the batch
            got = [await asyncio.wait_for(events.get(), 5) for _ in range(3)]
            assert [(e.op, e.type, e.name) for e in got] == [("create", "Mesh", "batch"),
                                                              ("create", "Dataplane", "dp-1"),
                                                              ("create", "Dataplane", "dp-2")]
            # The third already exists: nothing of the batch is written, and no event says otherwise.
            with pytest.raises(AlreadyExists):
                await store.create_all([mesh("batch-2"), dataplane("dp-9", "batch-2"), dataplane("dp-1", "batch")])
            with pytest.raises(NotFound):
                await store.get(MESH, "batch-2")
            with pytest.raises(MeshNotFound):
                await store.create_all([dataplane("dp-3", "batch"), dataplane("dp-4", "no-mesh")])
            with pytest.raises(NotFound):
                await store.get(DATAPLANE, "dp-3", "batch")
            marker = await store.create(mesh("marker"))
            event = await asyncio.wait_for(events.get(), 5)
            assert (event.name, marker.meta.name) == ("marker", "marker")  # nothing came before it

    async def test_update_all_is_all_or_nothing(self, store: ResourceStore) -> None:
        async with store.watch() as events:
            await store.create(mesh())
            dp1, dp2 = await store.create_all([dataplane("dp-1"), dataplane("dp-2")])
            # Their events first (postgres delivers them asynchronously): the updates' come after.
            created = [await asyncio.wait_for(events.get(), EVENT_TIMEOUT) for _ in range(3)]
            assert [e.op for e in created] == ["create"] * 3
            updated = await store.update_all([dataplane("dp-1", address="10.0.0.7").with_meta(version=1),
                                              dataplane("dp-2", address="10.0.0.8").with_meta(version=1)])
            assert [r.meta.version for r in updated] == [2, 2]
            assert [r.meta.creation_time for r in updated] == [dp1.meta.creation_time, dp2.meta.creation_time]
            assert await store.get(DATAPLANE, "dp-2", "default") == updated[1]
            got = [await asyncio.wait_for(events.get(), EVENT_TIMEOUT) for _ in range(2)]
            assert [(e.op, e.name, e.version) for e in got] == [("update", "dp-1", 2), ("update", "dp-2", 2)]
            # dp-2 was read at version 1 (stale), a missing one, or one named twice: none of the batch is
            # written, and no event says otherwise.
            with pytest.raises(Conflict):
                await store.update_all([dataplane("dp-1", address="10.0.0.9").with_meta(version=2),
                                        dataplane("dp-2", address="10.0.0.9").with_meta(version=1)])
            with pytest.raises(NotFound):
                await store.update_all([dataplane("dp-1", address="10.0.0.9").with_meta(version=2),
                                        dataplane("nope").with_meta(version=1)])
            with pytest.raises(Conflict):
                await store.update_all([dataplane("dp-1", address="10.0.0.9").with_meta(version=2),
                                        dataplane("dp-1", address="10.0.0.10").with_meta(version=2)])
            assert await store.get(DATAPLANE, "dp-1", "default") == updated[0]
            assert await store.update_all([]) == []
            marker = await store.create(mesh("marker"))
            event = await asyncio.wait_for(events.get(), EVENT_TIMEOUT)
            assert (event.name, marker.meta.name) == ("marker", "marker")  # nothing came before it

    async def test_recreate_after_delete_starts_at_version_one(self, store: ResourceStore) -> None:
        await store.create(mesh())
        await store.update(await store.create(dataplane("dp-1")))
        await store.delete(DATAPLANE, "dp-1", "default")
        assert (await store.create(dataplane("dp-1"))).meta.version == 1

    async def test_missing(self, store: ResourceStore) -> None:
        await store.create(mesh())
        with pytest.raises(NotFound):
            await store.get(DATAPLANE, "nope", "default")
        with pytest.raises(NotFound):
            await store.get(DATAPLANE, "nope", "other-mesh")
        with pytest.raises(NotFound):
            await store.update(dataplane("nope").with_meta(version=1))
        with pytest.raises(NotFound):
            await store.delete(DATAPLANE, "nope", "default")
        with pytest.raises(NotFound):
            await store.delete(MESH, "nope")
        with pytest.raises(NotFound):
            await store.get(ZONE, "nope")

    async def test_same_name_in_other_mesh_or_type_is_another_resource(self, store: ResourceStore) -> None:
        await store.create(mesh("a"))
        await store.create(mesh("b"))
        await store.create(dataplane("x", "a", address="10.0.0.1"))
        await store.create(dataplane("x", "b", address="10.0.0.2"))
        await store.create(secret("x", "a"))
        assert (await store.get(DATAPLANE, "x", "a")).spec.networking.address == "10.0.0.1"  # type: ignore[attr-defined]
        assert (await store.get(DATAPLANE, "x", "b")).spec.networking.address == "10.0.0.2"  # type: ignore[attr-defined]
        await store.delete(DATAPLANE, "x", "a")
        assert (await store.get(SECRET, "x", "a")).type is SECRET
        assert (await store.get(DATAPLANE, "x", "b")).meta.version == 1

    # --- meshes -------------------------------------------------------------------------------------------

    async def test_mesh_scoped_create_needs_its_mesh(self, store: ResourceStore) -> None:
        async with watch_from_here(store) as q:
            with pytest.raises(MeshNotFound):
                await store.create(dataplane("dp-1", "nowhere"))
            with pytest.raises(MeshNotFound):
                await store.create(secret("s", "nowhere"))
            assert await events_until_sentinel(store, q) == []
        assert (await store.list(DATAPLANE)).total == 0
        assert (await store.list(SECRET)).total == 0
        with pytest.raises(NotFound):
            await store.get(DATAPLANE, "dp-1", "nowhere")
        # Creating the mesh afterwards finds nothing left over from the failed attempt.
        await store.create(mesh("nowhere"))
        assert (await store.list(DATAPLANE, ListQuery(mesh="nowhere"))).items == []

    async def test_deleting_a_mesh_deletes_everything_in_it_and_only_that(self, store: ResourceStore) -> None:
        await store.create(mesh("a"))
        await store.create(mesh("b"))
        for i in range(3):
            await store.create(dataplane(f"dp-{i}", "a"))
        await store.create(secret("ca", "a"))
        await store.create(dataplane("dp-0", "b"))
        await store.create(secret("ca", "b"))
        await store.create(zone("zone-1"))
        await store.create(global_secret("a"))  # same name as the mesh, but global: unaffected

        async with watch_from_here(store) as q:
            await store.delete(MESH, "a")
            events = await events_until_sentinel(store, q)
        assert len(events) == 5
        assert set(events) == {
            ChangeEvent("delete", "Mesh", "", "a", 1),
            *(ChangeEvent("delete", "Dataplane", "a", f"dp-{i}", 1) for i in range(3)),
            ChangeEvent("delete", "Secret", "a", "ca", 1),
        }
        assert events[0] == ChangeEvent("delete", "Mesh", "", "a", 1)

        assert (await store.list(DATAPLANE, ListQuery(mesh="a"))).total == 0
        assert (await store.list(SECRET, ListQuery(mesh="a"))).total == 0
        assert names((await store.list(DATAPLANE)).items) == ["dp-0"]
        assert (await store.get(SECRET, "ca", "b")).meta.mesh == "b"
        assert names((await store.list(MESH)).items) == ["b"]
        assert (await store.get(GLOBAL_SECRET, "a")).meta.name == "a"
        assert {"sentinel", "zone-1"} <= set(names((await store.list(ZONE)).items))
        # A mesh of the same name starts empty.
        await store.create(mesh("a"))
        assert (await store.list(DATAPLANE, ListQuery(mesh="a"))).total == 0

    async def test_deleting_a_resource_that_is_not_a_mesh_does_not_cascade(self, store: ResourceStore) -> None:
        await store.create(mesh("a"))
        await store.create(dataplane("dp-1", "a"))
        await store.create(zone("a"))
        await store.delete(ZONE, "a")
        assert (await store.list(DATAPLANE)).total == 1

    # --- list ---------------------------------------------------------------------------------------------

    async def test_list_empty(self, store: ResourceStore) -> None:
        result = await store.list(DATAPLANE)
        assert result.items == [] and result.total == 0 and result.next_offset is None
        paged = await store.list(DATAPLANE, ListQuery(size=10, offset=20))
        assert paged.items == [] and paged.total == 0 and paged.next_offset is None

    async def test_pagination(self, store: ResourceStore) -> None:
        await store.create(mesh())
        for i in range(25):
            await store.create(dataplane(f"dp-{i:02d}"))
        pages, offset = [], 0
        while True:
            page = await store.list(DATAPLANE, ListQuery(size=10, offset=offset))
            assert page.total == 25
            pages.append(names(page.items))
            if page.next_offset is None:
                break
            offset = page.next_offset
        assert [len(p) for p in pages] == [10, 10, 5]
        assert [n for p in pages for n in p] == [f"dp-{i:02d}" for i in range(25)]

        exact = await store.list(DATAPLANE, ListQuery(size=5, offset=20))
        assert names(exact.items) == [f"dp-{i}" for i in range(20, 25)]
        assert exact.next_offset is None and exact.total == 25
        past = await store.list(DATAPLANE, ListQuery(size=10, offset=40))
        assert past.items == [] and past.total == 25 and past.next_offset is None
        tail = await store.list(DATAPLANE, ListQuery(offset=22))
        assert names(tail.items) == ["dp-22", "dp-23", "dp-24"] and tail.total == 25
        everything = await store.list(DATAPLANE)
        assert everything.total == 25 and len(everything.items) == 25 and everything.next_offset is None

    async def test_label_filters(self, store: ResourceStore) -> None:
        await store.create(mesh())
        await store.create(dataplane("a", labels={"env": "prod", "team": "x", "kuma.io/zone": "east"}))
        await store.create(dataplane("b", labels={"env": "prod", "team": "y"}))
        await store.create(dataplane("c", labels={"env": "dev", "team": "x"}))
        await store.create(dataplane("d"))

        async def matching(labels: dict[str, str]) -> list[str]:
            result = await store.list(DATAPLANE, ListQuery(labels=labels))
            assert result.total == len(result.items)
            return names(result.items)

        assert await matching({}) == ["a", "b", "c", "d"]
        assert await matching({"env": "prod"}) == ["a", "b"]
        assert await matching({"env": "prod", "team": "x"}) == ["a"]
        assert await matching({"kuma.io/zone": "east"}) == ["a"]
        assert await matching({"team": "z"}) == []
        assert await matching({"missing": "x"}) == []
        assert await matching({"env": "prod", "team": "y", "other": "1"}) == []

    async def test_name_prefix(self, store: ResourceStore) -> None:
        await store.create(mesh())
        for n in ("dp-1", "dp-10", "dp-11", "dp-2", "web-1", "dpx"):
            await store.create(dataplane(n))
        assert names((await store.list(DATAPLANE, ListQuery(name_prefix="dp-1"))).items) == ["dp-1", "dp-10", "dp-11"]
        assert names((await store.list(DATAPLANE, ListQuery(name_prefix="dp-"))).items) == \
            ["dp-1", "dp-10", "dp-11", "dp-2"]
        # A prefix is literal: no wildcards, and case matters.
        assert (await store.list(DATAPLANE, ListQuery(name_prefix="dp_"))).total == 0
        assert (await store.list(DATAPLANE, ListQuery(name_prefix="dp%"))).total == 0
        assert (await store.list(DATAPLANE, ListQuery(name_prefix="DP-"))).total == 0
        assert names((await store.list(DATAPLANE, ListQuery(name_prefix="web-1"))).items) == ["web-1"]

    async def test_filters_combine_with_pagination(self, store: ResourceStore) -> None:
        await store.create(mesh("a"))
        await store.create(mesh("b"))
        for i in range(12):
            env = "prod" if i % 2 == 0 else "dev"
            await store.create(dataplane(f"svc-{i:02d}", "a", labels={"env": env}))
            await store.create(dataplane(f"svc-{i:02d}", "b", labels={"env": env}))
            await store.create(dataplane(f"other-{i:02d}", "a", labels={"env": env}))
        q = ListQuery(mesh="a", labels={"env": "prod"}, name_prefix="svc-", size=4)
        first = await store.list(DATAPLANE, q)
        assert first.total == 6 and first.next_offset == 4
        assert names(first.items) == ["svc-00", "svc-02", "svc-04", "svc-06"]
        second = await store.list(DATAPLANE, ListQuery(mesh="a", labels={"env": "prod"}, name_prefix="svc-",
                                                       size=4, offset=4))
        assert names(second.items) == ["svc-08", "svc-10"] and second.total == 6 and second.next_offset is None
        all_meshes = await store.list(DATAPLANE, ListQuery(labels={"env": "prod"}, name_prefix="svc-", size=100))
        assert all_meshes.total == 12

    async def test_list_one_mesh_or_all_meshes(self, store: ResourceStore) -> None:
        await store.create(mesh("a"))
        await store.create(mesh("b"))
        await store.create(dataplane("z", "a"))
        await store.create(dataplane("m", "a"))
        await store.create(dataplane("a", "b"))
        everywhere = await store.list(DATAPLANE, ListQuery(mesh=None))
        # Ordered by (mesh, name).
        assert [(r.meta.mesh, r.meta.name) for r in everywhere.items] == [("a", "m"), ("a", "z"), ("b", "a")]
        assert everywhere.total == 3
        assert names((await store.list(DATAPLANE, ListQuery(mesh="a"))).items) == ["m", "z"]
        assert names((await store.list(DATAPLANE, ListQuery(mesh="b"))).items) == ["a"]
        assert (await store.list(DATAPLANE, ListQuery(mesh="c"))).total == 0
        # A list is of one type only.
        assert names((await store.list(MESH)).items) == ["a", "b"]
        assert (await store.list(SECRET)).total == 0

    # --- global-scoped types ------------------------------------------------------------------------------

    async def test_global_scoped_types(self, store: ResourceStore) -> None:
        z = await store.create(zone("zone-1"))
        gs = await store.create(global_secret("signing-key"))
        assert z.meta.mesh == "" and z.meta.version == 1
        assert await store.get(ZONE, "zone-1") == z
        assert await store.get(GLOBAL_SECRET, "signing-key") == gs
        assert (await store.get(GLOBAL_SECRET, "signing-key")).spec.value() == b"signing-key"  # type: ignore[attr-defined]
        z2 = await store.update(edit(z, zone("zone-1", enabled=False)))
        assert (await store.get(ZONE, "zone-1")).spec.enabled is False  # type: ignore[attr-defined]
        assert z2.meta.version == 2
        listed = await store.list(ZONE)
        assert names(listed.items) == ["zone-1"] and listed.items[0].meta.mesh == ""
        await store.delete(GLOBAL_SECRET, "signing-key")
        with pytest.raises(NotFound):
            await store.get(GLOBAL_SECRET, "signing-key")
        assert (await store.list(MESH)).total == 0  # no mesh needed for any of this

    # --- events -------------------------------------------------------------------------------------------

    async def test_every_committed_write_emits_one_event(self, store: ResourceStore) -> None:
        async with watch_from_here(store) as q:
            await store.create(mesh())
            assert await next_event(q) == ChangeEvent("create", "Mesh", "", "default", 1)
            v1 = await store.create(dataplane("dp-1"))
            assert await next_event(q) == ChangeEvent("create", "Dataplane", "default", "dp-1", 1)
            v2 = await store.update(v1)
            assert await next_event(q) == ChangeEvent("update", "Dataplane", "default", "dp-1", 2)
            await store.update(v2)
            assert await next_event(q) == ChangeEvent("update", "Dataplane", "default", "dp-1", 3)
            await store.delete(DATAPLANE, "dp-1", "default")
            assert await next_event(q) == ChangeEvent("delete", "Dataplane", "default", "dp-1", 3)
            await store.create(zone("z"))
            assert await next_event(q) == ChangeEvent("create", "Zone", "", "z", 1)
            # Nothing else, not even a duplicate of the above.
            assert await events_until_sentinel(store, q) == []

    async def test_failed_writes_emit_nothing(self, store: ResourceStore) -> None:
        await store.create(mesh())
        v1 = await store.create(dataplane("dp-1"))
        await store.update(v1)
        async with watch_from_here(store) as q:
            for attempt in (
                store.create(dataplane("dp-1")),                          # AlreadyExists
                store.create(dataplane("dp-2", "nowhere")),               # MeshNotFound
                store.update(v1),                                         # Conflict
                store.update(dataplane("nope").with_meta(version=1)),     # NotFound
                store.delete(DATAPLANE, "dp-1", "default", version=1),   # Conflict
                store.delete(DATAPLANE, "nope", "default"),               # NotFound
                store.delete(MESH, "default", version=7),                 # Conflict
            ):
                with pytest.raises((AlreadyExists, MeshNotFound, Conflict, NotFound)):
                    await attempt
            assert await events_until_sentinel(store, q) == []

    async def test_every_watcher_gets_every_event(self, store: ResourceStore) -> None:
        async with store.watch() as q1, store.watch() as q2:
            await store.create(mesh())
            expected = ChangeEvent("create", "Mesh", "", "default", 1)
            assert await next_event(q1) == expected
            assert await next_event(q2) == expected

    # --- concurrency --------------------------------------------------------------------------------------

    async def test_concurrent_updates_of_one_version_exactly_one_wins(self, store: ResourceStore) -> None:
        await store.create(mesh())
        v1 = await store.create(dataplane("dp-1"))
        n = 10
        attempts = [edit(v1, dataplane("dp-1", address=f"10.0.1.{i}")) for i in range(n)]
        async with watch_from_here(store) as q:
            results = await asyncio.gather(*(store.update(a) for a in attempts), return_exceptions=True)
            winners = [r for r in results if isinstance(r, Resource)]
            assert len(winners) == 1, results
            assert all(isinstance(r, Conflict) for r in results if not isinstance(r, Resource)), results
            assert await events_until_sentinel(store, q) == [ChangeEvent("update", "Dataplane", "default",
                                                                         "dp-1", 2)]
        stored = await store.get(DATAPLANE, "dp-1", "default")
        assert stored.meta.version == 2
        assert stored.spec == winners[0].spec

    async def test_concurrent_creates_of_one_name_exactly_one_wins(self, store: ResourceStore) -> None:
        await store.create(mesh())
        results = await asyncio.gather(*(store.create(dataplane("dp-1", address=f"10.0.2.{i}"))
                                         for i in range(8)), return_exceptions=True)
        assert sum(isinstance(r, Resource) for r in results) == 1, results
        assert sum(isinstance(r, AlreadyExists) for r in results) == 7, results

    # --- metadata and specs -------------------------------------------------------------------------------

    async def test_creation_time_kept_and_modification_time_moves(self, store: ResourceStore) -> None:
        await store.create(mesh())
        v1 = await store.create(dataplane("dp-1"))
        await asyncio.sleep(0.02)
        v2 = await store.update(v1)
        assert v2.meta.creation_time == v1.meta.creation_time
        assert v2.meta.modification_time is not None and v1.meta.modification_time is not None
        assert v2.meta.modification_time > v1.meta.modification_time
        got = await store.get(DATAPLANE, "dp-1", "default")
        assert got.meta.creation_time == v1.meta.creation_time
        assert got.meta.modification_time == v2.meta.modification_time
        assert got.meta.creation_time is not None and got.meta.creation_time.utcoffset() is not None

    async def test_labels_round_trip(self, store: ResourceStore) -> None:
        labels = {"kuma.io/origin": "zone", "kuma.io/zone": "east-1", "team": "payments", "empty": ""}
        await store.create(mesh("default", labels={"kuma.io/display-name": "default"}))
        v1 = await store.create(dataplane("dp-1", labels=labels))
        assert dict((await store.get(DATAPLANE, "dp-1", "default")).meta.labels) == labels
        assert dict((await store.get(MESH, "default")).meta.labels) == {"kuma.io/display-name": "default"}
        assert dict((await store.list(DATAPLANE)).items[0].meta.labels) == labels
        await store.update(edit(v1, dataplane("dp-1")))
        assert dict((await store.get(DATAPLANE, "dp-1", "default")).meta.labels) == {}

    async def test_large_spec_round_trip(self, store: ResourceStore) -> None:
        await store.create(mesh())
        big = dataplane("big", inbounds=50)
        assert len(big.spec.networking.inbound) == 50  # type: ignore[attr-defined]
        await store.create(big)
        got = await store.get(DATAPLANE, "big", "default")
        assert got.spec == big.spec
        assert got.spec.to_wire() == big.spec.to_wire()
        assert (await store.list(DATAPLANE)).items[0].spec == big.spec

    async def test_nested_mesh_spec_round_trip(self, store: ResourceStore) -> None:
        m = mesh("default", mtls={
            "enabledBackend": "ca-1",
            "backends": [{"name": "ca-1", "type": "builtin",
                          "dpCert": {"rotation": {"expiration": "1d"}},
                          "conf": {"caCert": {"RSAbits": 2048, "expiration": "10y"}}}],
        }, networking={"outbound": {"passthrough": False}})
        await store.create(m)
        got = await store.get(MESH, "default")
        assert got.spec == m.spec
        assert got.spec.to_wire() == m.spec.to_wire()

    # --- raw listing ----------------------------------------------------------------------------------------

    async def test_list_raw_is_list_without_spec_models(self, store: ResourceStore) -> None:
        await store.create(mesh("a", mtls={"enabledBackend": "ca-1", "backends": [
            {"name": "ca-1", "type": "builtin", "conf": {"caCert": {"RSAbits": 2048, "expiration": "10y"}}}]}))
        await store.create(mesh("b", labels={"kuma.io/origin": "global"}))
        for i in range(7):
            await store.create(dataplane(f"dp-{i}", "a" if i % 2 else "b", inbounds=1 + i % 3,
                                         labels={"env": "prod" if i % 3 else "dev", "kuma.io/zone": "east"}))
        v1 = await store.create(dataplane("web-1", "a", address="10.0.0.7", service="web"))
        await store.update(edit(v1, dataplane("web-1", "a", address="10.0.0.8", labels={"env": "prod"})))
        await store.create(secret("s-1", "a"))
        await store.create(global_secret("signing-key"))
        await store.create(zone("zone-1"))
        queries = [ListQuery(), ListQuery(mesh="a"), ListQuery(mesh="nowhere"), ListQuery(labels={"env": "prod"}),
                   ListQuery(name_prefix="dp-"), ListQuery(size=3), ListQuery(size=3, offset=3),
                   ListQuery(size=3, offset=6), ListQuery(size=5, offset=20), ListQuery(offset=2),
                   ListQuery(mesh="a", labels={"env": "prod"}, name_prefix="dp-", size=1)]
        for rtype in (MESH, DATAPLANE, SECRET, GLOBAL_SECRET, ZONE):
            for q in queries if rtype is DATAPLANE else queries[:1]:
                await self._same_as_list(store, rtype, q)
        raw = (await store.list_raw(DATAPLANE, ListQuery(name_prefix="web-"))).items
        assert [r.meta.version for r in raw] == [2] and dict(raw[0].meta.labels) == {"env": "prod"}
        assert json.loads(raw[0].spec_json)["networking"]["address"] == "10.0.0.8"  # what the update wrote

    @staticmethod
    async def _same_as_list(store: ResourceStore, rtype: ResourceType, q: ListQuery) -> None:
        listed, raw = await store.list(rtype, q), await store.list_raw(rtype, q)
        assert (raw.total, raw.next_offset) == (listed.total, listed.next_offset), (rtype.name, q)
        assert [r.meta for r in raw.items] == [r.meta for r in listed.items], (rtype.name, q)
        for got, model in zip(raw.items, listed.items, strict=True):
            assert isinstance(got, RawResource) and got.type is rtype and got.key == model.key
            spec = json.loads(got.spec_json)
            assert spec == model.spec.to_wire()
            assert spec_from_store(rtype, spec) == model.spec
