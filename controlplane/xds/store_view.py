"""The lists a mesh rebuild reads (its Dataplanes, its policies of each type, the ZoneIngresses), kept current
from the store's change events, so a change re-reads only the resources it names instead of listing (and
parsing and validating) every Dataplane of the mesh again: with 1000 dataplanes, a list per change was tens
of milliseconds of store reads for a one-endpoint change.

A list is cached only while the view is fed by a live watch (`watching`): the first read of a (type, mesh)
lists it from the store; every event from then on marks the named resource stale, and the next read fetches
the stale ones by name (gone: dropped), or lists again when many are stale (a reconnect storm). The stale
set exists before the first list starts, so an event that arrives while the list is in flight is re-read
afterwards rather than lost. A "resync" event (changes may have
been missed) or the watch ending forgets every cached list: the next reads list again.

Readers get the same resources a `store.list()` at that moment would return, ordered like the stores order
them (mesh, then name), and the same `Resource` objects as long as a resource does not change.
"""

from __future__ import annotations

import logging

from controlplane.resources import Resource, ResourceType
from controlplane.store.base import ChangeEvent, ListQuery, NotFound, ResourceStore

log = logging.getLogger("kuma.xds")

ALL_MESHES = None  # a list across meshes (or of a global type)
RELIST_OVER = 64  # more stale resources than this (and than a quarter of the list): list again instead


class StoreView:
    def __init__(self, store: ResourceStore) -> None:
        self.store = store
        self._watching = False
        # (type name, mesh or ALL_MESHES) -> (mesh, name) -> resource
        self._lists: dict[tuple[str, str | None], dict[tuple[str, str], Resource]] = {}
        # the same keys -> (mesh, name) of resources changed since they were read
        self._stale: dict[tuple[str, str | None], set[tuple[str, str]]] = {}
        self._ordered: dict[tuple[str, str | None], list[Resource]] = {}  # a cached list, in store order
        self.listed = 0  # full lists read from the store (for tests and metrics)
        self.fetched = 0  # single resources re-read after a change

    @property
    def watching(self) -> bool:
        return self._watching

    def start_watching(self) -> None:
        """Call right after the store watch is subscribed: from now on every change reaches `on_event()`."""
        self.reset()
        self._watching = True

    def stop_watching(self) -> None:
        self._watching = False
        self.reset()

    def reset(self) -> None:
        self._lists.clear()
        self._stale.clear()
        self._ordered.clear()

    def on_event(self, event: ChangeEvent) -> None:
        if event.op == "resync":
            self.reset()
            return
        for key, stale in self._stale.items():
            type_name, mesh = key
            if type_name == event.type and (mesh is ALL_MESHES or mesh == event.mesh):
                stale.add((event.mesh, event.name))

    async def list(self, rtype: ResourceType, mesh: str | None = ALL_MESHES) -> list[Resource]:
        """What `store.list(rtype, ListQuery(mesh=mesh))` returns now (ordered by mesh and name)."""
        if not self._watching:
            return (await self.store.list(rtype, ListQuery(mesh=mesh))).items
        key = (rtype.name, mesh)
        stale = self._stale.setdefault(key, set())  # events from now on are recorded, also during the list
        cached = self._lists.get(key)
        previous: dict[tuple[str, str], Resource] = {}
        if cached is not None and len(stale) > max(RELIST_OVER, len(cached) // 4):
            previous, cached = cached, None  # a registration storm: one list reads them faster than a read each
        if cached is None:
            stale.clear()  # the list below reads everything committed before it
            items = (await self.store.list(rtype, ListQuery(mesh=mesh))).items
            self.listed += 1
            if not self._watching or self._stale.get(key) is not stale:
                return items  # reset (resync, watch ended) while listing: do not keep what may be stale
            # What did not change stays the same object (readers rely on it: controlplane/xds/generate/rules.py).
            items = [old if (old := previous.get((r.meta.mesh, r.meta.name))) is not None
                     and old.meta.version == r.meta.version else r for r in items]
            cached = self._lists[key] = {(r.meta.mesh, r.meta.name): r for r in items}
            self._ordered[key] = list(items)
        while stale:
            for res_key in sorted(stale):
                stale.discard(res_key)  # before the read: an event during it marks it again
                try:
                    found = await self.store.get(rtype, res_key[1], res_key[0])
                except NotFound:
                    cached.pop(res_key, None)
                except BaseException:
                    stale.add(res_key)  # not read: still stale
                    raise
                else:
                    cached[res_key] = found
                self.fetched += 1
                self._ordered.pop(key, None)
            if self._stale.get(key) is not stale:  # reset while fetching: read it all again
                return await self.list(rtype, mesh)
        ordered = self._ordered.get(key)
        if ordered is None:
            ordered = self._ordered[key] = [cached[k] for k in sorted(cached)]
        return list(ordered)
