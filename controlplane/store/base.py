"""The ResourceStore contract every backend (memory, sqlite, postgres) keeps.

One conformance suite (tests/unit/store_conformance.py) runs against all of them. The rules:
- create() takes a resource with version 0 and stores version 1; update() takes the version it read and
  stores version+1, or raises Conflict if the stored version differs (never merges, never overwrites);
  create_all() and update_all() do the same for several resources in one transaction (all or none);
- a mesh-scoped resource can only be written while its mesh exists (checked in the same transaction);
- deleting a Mesh deletes everything in it, in one transaction;
- every committed write emits one ChangeEvent to every watcher (on every instance, for postgres).
"""

from __future__ import annotations

import asyncio
import contextlib
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from controlplane.resources.base import Meta, Resource, ResourceType


class StoreError(Exception):
    """Base of every store error; `str()` is a message for a person."""


class NotFound(StoreError):
    pass


class AlreadyExists(StoreError):
    pass


class Conflict(StoreError):
    """The resource changed since it was read (optimistic concurrency)."""


class MeshNotFound(StoreError):
    """A mesh-scoped write named a mesh that does not exist."""


class StoreUnavailable(StoreError):
    """The backend cannot be reached (database down); the write did not happen."""


# "resync": changes may have been missed (a postgres LISTEN connection was down): re-read everything.
Op = Literal["create", "update", "delete", "resync"]


@dataclass(frozen=True, slots=True)
class ChangeEvent:
    op: Op
    type: str
    mesh: str
    name: str
    version: int


@dataclass(frozen=True, slots=True)
class ResourceList:
    items: list[Resource]
    total: int
    next_offset: int | None = None


@dataclass(frozen=True, slots=True)
class RawResource:
    """A stored resource without its spec model: the metadata as `get`/`list` give it and the spec's stored JSON
    text (an object in the spec's wire form, `Spec.to_wire()`, as it was validated and written; key order and
    spacing are the backend's). For readers that pass specs on rather than use them (KDS sends thousands at a
    first sync): building and dumping a model per resource would be most of their work."""

    type: ResourceType
    meta: Meta
    spec_json: str

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.type.name, self.meta.mesh, self.meta.name)


@dataclass(frozen=True, slots=True)
class RawResourceList:
    items: list[RawResource]
    total: int
    next_offset: int | None = None


@dataclass(frozen=True, slots=True)
class ListQuery:
    mesh: str | None = None  # None: every mesh (for mesh-scoped types)
    labels: Mapping[str, str] = field(default_factory=dict)  # all must match
    name_prefix: str | None = None
    offset: int = 0
    size: int | None = None  # None: all


def describe(rtype: ResourceType, name: str, mesh: str) -> str:
    return f"{rtype.name} {name!r}" + (f" in mesh {mesh!r}" if mesh else "")


class EventBus:
    """Fan-out of change events to watchers in this process. Each watcher has its own unbounded queue, so
    a slow watcher never blocks a write; consumers coalesce (the xDS layer debounces)."""

    def __init__(self) -> None:
        self._queues: set[asyncio.Queue[ChangeEvent]] = set()

    def publish(self, event: ChangeEvent) -> None:
        for q in self._queues:
            q.put_nowait(event)

    @contextlib.asynccontextmanager
    async def subscribe(self) -> AsyncIterator[asyncio.Queue[ChangeEvent]]:
        q: asyncio.Queue[ChangeEvent] = asyncio.Queue()
        self._queues.add(q)
        try:
            yield q
        finally:
            self._queues.discard(q)


class LeaderElector(ABC):
    """Leadership for leader-only components (VIP allocation, KDS zone client, GC)."""

    def __init__(self) -> None:
        self.is_leader = False
        self._callbacks: list[Callable[[bool], Awaitable[None]]] = []

    def on_change(self, callback: Callable[[bool], Awaitable[None]]) -> None:
        self._callbacks.append(callback)

    async def _set(self, leader: bool) -> None:
        if leader == self.is_leader:
            return
        self.is_leader = leader
        for cb in self._callbacks:
            await cb(leader)

    @abstractmethod
    async def start(self) -> None: ...

    @abstractmethod
    async def stop(self) -> None: ...


class AlwaysLeader(LeaderElector):
    """A store only one control plane can use (sqlite, memory) makes that control plane the leader."""

    async def start(self) -> None:
        await self._set(True)

    async def stop(self) -> None:
        await self._set(False)


class ResourceStore(ABC):
    backend: str = ""

    def __init__(self) -> None:
        self.events = EventBus()

    async def start(self) -> None:
        """Open connections, check the schema version."""

    async def close(self) -> None:
        """Release connections; idempotent."""

    @abstractmethod
    async def create(self, resource: Resource) -> Resource: ...

    @abstractmethod
    async def create_all(self, resources: Sequence[Resource]) -> list[Resource]:
        """Create several resources in one transaction, in order: all of them, or (AlreadyExists, MeshNotFound
        for the first that cannot be) none. A mesh-scoped resource may belong to a Mesh created earlier in the
        same call (a new Mesh and its default policies)."""

    @abstractmethod
    async def update(self, resource: Resource) -> Resource: ...

    @abstractmethod
    async def update_all(self, resources: Sequence[Resource]) -> list[Resource]:
        """Update several resources in one transaction, each from the version it was read at (as update()):
        all of them, or (NotFound, Conflict for the first that cannot be) none. One resource named twice is a
        Conflict (its second write would start from a version the first replaced). For writers of many small
        records at once (DataplaneInsights): one commit and one round trip instead of one per resource."""

    @abstractmethod
    async def delete(self, rtype: ResourceType, name: str, mesh: str = "", *,
                     version: int | None = None) -> None: ...

    @abstractmethod
    async def get(self, rtype: ResourceType, name: str, mesh: str = "") -> Resource: ...

    @abstractmethod
    async def list(self, rtype: ResourceType, query: ListQuery | None = None) -> ResourceList: ...

    @abstractmethod
    async def list_raw(self, rtype: ResourceType, query: ListQuery | None = None) -> RawResourceList:
        """What `list` returns for the same query (the same resources, order, total and next offset, from one
        snapshot), each as a `RawResource`: its `Meta` equals the listed resource's, and `json.loads` of its
        `spec_json` equals `spec.to_wire()` of the listed resource. No spec model is built."""

    def leader_elector(self) -> LeaderElector:
        return AlwaysLeader()

    def watch(self) -> contextlib.AbstractAsyncContextManager[asyncio.Queue[ChangeEvent]]:
        """`async with store.watch() as events:` every committed change from now on."""
        return self.events.subscribe()
