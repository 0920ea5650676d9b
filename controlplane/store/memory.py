"""In-memory store: for tests and ephemeral runs. Same contract as the durable backends."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from controlplane.resources.base import Resource, ResourceType

from ._sql import spec_json
from .base import (
    AlreadyExists,
    ChangeEvent,
    Conflict,
    ListQuery,
    MeshNotFound,
    NotFound,
    RawResource,
    RawResourceList,
    ResourceList,
    ResourceStore,
    describe,
)

MESH_TYPE = "Mesh"


_Page = tuple[list[Resource], int, int | None]  # items, total, next offset


class MemoryStore(ResourceStore):
    backend = "memory"

    def __init__(self) -> None:
        super().__init__()
        self._data: dict[tuple[str, str, str], Resource] = {}

    def _require_mesh(self, resource: Resource) -> None:
        if resource.type.mesh_scoped and (MESH_TYPE, "", resource.meta.mesh) not in self._data:
            raise MeshNotFound(f"mesh {resource.meta.mesh!r} does not exist: create it first")

    async def create(self, resource: Resource) -> Resource:
        key = resource.key
        if key in self._data:
            raise AlreadyExists(f"{describe(resource.type, resource.meta.name, resource.meta.mesh)} already exists")
        self._require_mesh(resource)
        now = datetime.now(UTC)
        stored = resource.with_meta(version=1, creation_time=now, modification_time=now)
        self._data[key] = stored
        self.events.publish(ChangeEvent("create", resource.type.name, resource.meta.mesh, resource.meta.name, 1))
        return stored

    async def create_all(self, resources: Sequence[Resource]) -> list[Resource]:
        # Check everything first (no await in between: nothing else runs), then write everything.
        keys: set[tuple[str, str, str]] = set()
        meshes = {r.meta.name for r in resources if r.type.name == MESH_TYPE}
        for r in resources:
            if r.key in self._data or r.key in keys:
                raise AlreadyExists(f"{describe(r.type, r.meta.name, r.meta.mesh)} already exists")
            keys.add(r.key)
            if r.meta.mesh not in meshes:
                self._require_mesh(r)
        now = datetime.now(UTC)
        stored = [r.with_meta(version=1, creation_time=now, modification_time=now) for r in resources]
        for r in stored:
            self._data[r.key] = r
        for r in stored:
            self.events.publish(ChangeEvent("create", r.type.name, r.meta.mesh, r.meta.name, 1))
        return stored

    async def update(self, resource: Resource) -> Resource:
        key = resource.key
        current = self._data.get(key)
        if current is None:
            raise NotFound(f"{describe(resource.type, resource.meta.name, resource.meta.mesh)} does not exist")
        if current.meta.version != resource.meta.version:
            raise Conflict(f"{describe(resource.type, resource.meta.name, resource.meta.mesh)} was changed "
                           f"(version {current.meta.version}, you read {resource.meta.version}): read it again")
        version = current.meta.version + 1
        stored = resource.with_meta(version=version, creation_time=current.meta.creation_time,
                                    modification_time=datetime.now(UTC))
        self._data[key] = stored
        self.events.publish(ChangeEvent("update", resource.type.name, resource.meta.mesh, resource.meta.name,
                                        version))
        return stored

    async def update_all(self, resources: Sequence[Resource]) -> list[Resource]:
        # Check everything first (no await in between: nothing else runs), then write everything.
        seen: set[tuple[str, str, str]] = set()
        for r in resources:
            current = self._data.get(r.key)
            if current is None:
                raise NotFound(f"{describe(r.type, r.meta.name, r.meta.mesh)} does not exist")
            if current.meta.version != r.meta.version or r.key in seen:
                raise Conflict(f"{describe(r.type, r.meta.name, r.meta.mesh)} was changed (version "
                               f"{current.meta.version}, you read {r.meta.version}): read it again")
            seen.add(r.key)
        now = datetime.now(UTC)
        stored = [r.with_meta(version=r.meta.version + 1, creation_time=self._data[r.key].meta.creation_time,
                              modification_time=now) for r in resources]
        for r in stored:
            self._data[r.key] = r
        for r in stored:
            self.events.publish(ChangeEvent("update", r.type.name, r.meta.mesh, r.meta.name, r.meta.version))
        return stored

    async def delete(self, rtype: ResourceType, name: str, mesh: str = "", *,
                     version: int | None = None) -> None:
        key = (rtype.name, mesh, name)
        current = self._data.get(key)
        if current is None:
            raise NotFound(f"{describe(rtype, name, mesh)} does not exist")
        if version is not None and current.meta.version != version:
            raise Conflict(f"{describe(rtype, name, mesh)} was changed (version {current.meta.version}, "
                           f"you read {version}): read it again")
        removed = [key]
        if rtype.name == MESH_TYPE:
            removed += [k for k in self._data if k[1] == name and k[0] != MESH_TYPE]
        events = [ChangeEvent("delete", k[0], k[1], k[2], self._data[k].meta.version) for k in removed]
        for k in removed:
            del self._data[k]
        for e in events:
            self.events.publish(e)

    async def get(self, rtype: ResourceType, name: str, mesh: str = "") -> Resource:
        found = self._data.get((rtype.name, mesh, name))
        if found is None:
            raise NotFound(f"{describe(rtype, name, mesh)} does not exist")
        return found

    async def list(self, rtype: ResourceType, query: ListQuery | None = None) -> ResourceList:
        page, total, next_offset = self._page(rtype, query or ListQuery())
        return ResourceList(page, total, next_offset)

    async def list_raw(self, rtype: ResourceType, query: ListQuery | None = None) -> RawResourceList:
        # Dumped here as the SQL backends store it: memory keeps models, so this costs what it saves elsewhere.
        page, total, next_offset = self._page(rtype, query or ListQuery())
        return RawResourceList([RawResource(r.type, r.meta, spec_json(r)) for r in page], total, next_offset)

    def _page(self, rtype: ResourceType, q: ListQuery) -> _Page:
        matched = sorted(
            (r for (t, m, n), r in self._data.items()
             if t == rtype.name
             and (q.mesh is None or m == q.mesh)
             and (q.name_prefix is None or n.startswith(q.name_prefix))
             and all(r.meta.labels.get(k) == v for k, v in q.labels.items())),
            key=lambda r: (r.meta.mesh, r.meta.name),
        )
        end = len(matched) if q.size is None else q.offset + q.size
        return matched[q.offset:end], len(matched), end if end < len(matched) else None
