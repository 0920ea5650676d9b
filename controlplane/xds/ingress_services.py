"""Leader-only upkeep of this zone's ZoneIngresses' `availableServices`: what other zones can reach here.

Computed from this zone's own Dataplanes only (never from other zones' services: an ingress fronts its zone),
one entry per mesh and distinct tag set of healthy inbounds, with how many instances carry it and their apps'
real ports; `kuma.io/zone` is this zone's. Store changes are debounced (100 ms: Kuma refreshes its ingresses
on a 1 s tick; a burst of registrations still becomes one write) and an ingress is written only when its list
changed, with the version it was read at (a concurrent write, e.g. its kuma-dp re-registering, makes the next
round try again). KDS then carries the ingress to global and on to every other zone, where it becomes remote
endpoints (remote_endpoints.py). The ingresses and Dataplanes are read from a StoreView fed by the same watch,
so a change re-reads what it names instead of listing every Dataplane of the zone again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable

from controlplane.resources.base import Resource
from controlplane.resources.dataplane import DATAPLANE, ZONE_TAG, DataplaneSpec
from controlplane.resources.zone import ZONE_INGRESS, AvailableService, ZoneIngressSpec
from controlplane.store.base import ChangeEvent, Conflict, NotFound, ResourceStore
from controlplane.supervise import Supervisor, cancel_and_wait
from kuma_shared.logs import ErrorLog

from .remote_endpoints import ingress_zone
from .store_view import ALL_MESHES, StoreView
from .topology import is_healthy

log = logging.getLogger("kuma.xds.ingress")

_WATCHED = {"Dataplane", "ZoneIngress", "Mesh"}


def available_services(dataplanes: Iterable[Resource], zone: str) -> list[AvailableService]:
    """Every (mesh, tag set) of healthy inbounds in `dataplanes`, with its instances and ports, sorted."""
    found: dict[tuple[str, tuple[tuple[str, str], ...]], tuple[int, set[int]]] = {}
    for dp in dataplanes:
        spec = dp.spec
        assert isinstance(spec, DataplaneSpec)
        for inbound in spec.networking.inbound:
            if not is_healthy(inbound):
                continue
            key = (dp.meta.mesh, tuple(sorted({**inbound.tags, ZONE_TAG: zone}.items())))
            instances, ports = found.get(key, (0, set()))
            ports.add(inbound.workload_port)
            found[key] = (instances + 1, ports)
    return [AvailableService(tags=dict(tags), instances=instances, mesh=mesh, ports=sorted(ports))
            for (mesh, tags), (instances, ports) in sorted(found.items())]


class IngressServices:
    name = "ingress-services"

    def __init__(self, store: ResourceStore, zone: str, *, debounce: float = 0.1,
                 supervisor: Supervisor | None = None) -> None:
        self.store, self.zone, self.debounce = store, zone, debounce
        self.supervisor = supervisor or Supervisor()
        self._task: asyncio.Task[None] | None = None
        self._errors = ErrorLog(log)
        self.writes = 0  # ingresses updated (tests, metrics)
        self.view = StoreView(store)  # while the loop watches the store: what refresh() reads

    async def start(self) -> None:
        self._task = self.supervisor.spawn(self.name, self._loop)

    async def stop(self) -> None:
        task, self._task = self._task, None
        await cancel_and_wait(task)

    async def _loop(self) -> None:
        wake = asyncio.Event()
        wake.set()  # a first pass at start: changes made while no leader ran

        async def watch() -> None:
            try:
                async with self.store.watch() as events:
                    self.view.start_watching()
                    while True:
                        event: ChangeEvent = await events.get()
                        self.view.on_event(event)
                        if event.op == "resync" or event.type in _WATCHED:
                            wake.set()
            finally:
                self.view.stop_watching()
                wake.set()  # a failed watch wakes the loop, which raises it to the supervisor

        watcher = asyncio.get_running_loop().create_task(watch(), name="ingress-services-watch")
        try:
            while True:
                await wake.wait()
                await asyncio.sleep(self.debounce)  # a burst of registrations becomes one write per ingress
                wake.clear()
                try:
                    if await self.refresh():
                        wake.set()  # lost a race with another writer: read again
                except asyncio.CancelledError:
                    raise
                except Exception as e:
                    self._errors.report("refresh", "cannot update the zone ingresses' available services; will "
                                        "retry", error=e, extra={"zone": self.zone})
                    wake.set()
                if watcher.done():
                    watcher.result()  # the watch failed: let the supervisor restart us
        finally:
            await cancel_and_wait(watcher)

    async def refresh(self) -> bool:
        """One pass. Returns whether a write lost a race (the caller comes back after the debounce)."""
        ingresses = [i for i in await self.view.list(ZONE_INGRESS, ALL_MESHES) if ingress_zone(i) in (None, self.zone)]
        if not ingresses:
            return False
        wanted = available_services(await self.view.list(DATAPLANE, ALL_MESHES), self.zone)
        raced = False
        for ingress in ingresses:
            spec = ingress.spec
            assert isinstance(spec, ZoneIngressSpec)
            if spec.available_services == wanted and spec.zone == self.zone:
                continue
            updated = spec.model_copy(update={"available_services": wanted, "zone": self.zone})
            try:
                await self.store.update(Resource(ingress.type, ingress.meta, updated))
            except (Conflict, NotFound):
                raced = True
                continue
            self.writes += 1
            log.info("zone ingress available services updated",
                     extra={"zone": self.zone, "zoneIngress": ingress.meta.name, "services": len(wanted),
                            "instances": sum(s.instances for s in wanted)})
        return raced
