"""VIP allocation (leader-only): one VIP per `kuma.io/service` per mesh, stable, released after a grace period.

Services come from Dataplane inbounds (and gateways) and from ZoneIngress available services (services of
other zones). The allocation is one stored VipAllocation document; each pass reads it, computes the next one
with `plan()` (pure, so it is tested without a store) and writes it back with the version it read. A
Conflict (another writer got there first) means: read again and recompute, so two allocators, even two
leaders for a moment, never hand out one address twice, and a pass that fails leaves the stored document as
it was: nothing is ever half-allocated.

Rules of `plan()`:
- a service that exists keeps its VIP; a new one gets the next free address after the range's cursor (so a
  released address is the last to be reused: DNS caches may still hold it);
- a service that stops existing is marked `goneSince` (it leaves the served map, its VIP stays reserved) and
  released once it has been gone for the grace period; if it comes back before that, it gets the same VIP;
- VIPs are unique across meshes (one pool per range for the whole zone);
- with a transparent-proxy range configured, a service gets an address from each range or from neither: a
  range exhausted leaves the service without a VIP, listed under `unallocated` with the reason, logged as an
  error, and retried on every later pass;
- an address outside the configured range (the range setting was changed) is replaced.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TypeVar

from controlplane.resources.base import Meta, Resource
from controlplane.resources.dataplane import DATAPLANE, DataplaneSpec
from controlplane.resources.mesh import MESH
from controlplane.resources.vip import (
    VIP_ALLOCATION,
    VIP_ALLOCATION_NAME,
    MeshVipAllocation,
    VipAllocationSpec,
    VipEntry,
)
from controlplane.resources.zone import ZONE_INGRESS, ZoneIngressSpec
from controlplane.store.base import AlreadyExists, Conflict, ListQuery, NotFound, ResourceStore
from controlplane.supervise import Supervisor, cancel_and_wait, wait_set
from kuma_shared.logs import ErrorLog

from .ranges import VipRange, int_to_ip, ip_to_int

_T = TypeVar("_T")

log = logging.getLogger("kuma.dns")

WRITE_ATTEMPTS = 20
FULL_RELOAD_ABOVE = 200  # changed objects in one pass beyond which listing everything is cheaper


def _ts(t: datetime) -> str:
    return t.astimezone(UTC).isoformat()


def _parse_ts(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        t = datetime.fromisoformat(text)
    except ValueError:
        return None
    return t if t.tzinfo else t.replace(tzinfo=UTC)


@dataclass
class Plan:
    spec: VipAllocationSpec
    changed: bool
    allocated: list[tuple[str, str, str]] = field(default_factory=list)  # (mesh, service, ip)
    released: list[tuple[str, str, str]] = field(default_factory=list)
    unallocated: dict[str, dict[str, str]] = field(default_factory=dict)
    next_release: datetime | None = None


def plan(current: VipAllocationSpec, desired: Mapping[str, set[str]], primary: VipRange,
         tproxy: VipRange | None, now: datetime, grace: timedelta) -> Plan:
    """The next allocation document: `desired` is mesh -> services that exist now."""
    entries: dict[str, dict[str, dict[str, str | None]]] = {
        mesh: {svc: e.model_dump() for svc, e in alloc.services.items()} for mesh, alloc in current.meshes.items()}
    cursors = dict(current.cursors)
    released: list[tuple[str, str, str]] = []
    next_release: datetime | None = None

    # Existing entries: keep, mark gone, or release.
    for mesh, services in entries.items():
        for svc in list(services):
            e = services[svc]
            if svc in desired.get(mesh, ()):
                e["gone_since"] = None
                continue
            gone = _parse_ts(e["gone_since"])
            if gone is None:
                e["gone_since"] = _ts(now)
                gone = now
            release_at = gone + grace
            if release_at <= now:
                released.append((mesh, svc, str(e["ip"])))
                del services[svc]
            elif next_release is None or release_at < next_release:
                next_release = release_at

    # Addresses taken (reserved ones included), per range.
    used: dict[str, set[int]] = {primary.cidr: set()}
    if tproxy is not None:
        used[tproxy.cidr] = set()
    for mesh in sorted(entries):
        for svc in sorted(entries[mesh]):
            e = entries[mesh][svc]
            for rng, key in ((primary, "ip"), (tproxy, "tproxy_ip")):
                ip = ip_to_int(e[key])
                if rng is None or ip is None or ip not in rng:
                    continue
                if ip in used[rng.cidr]:
                    e[key] = None  # a duplicate (never written by plan(), but heal it): the later one moves
                else:
                    used[rng.cidr].add(ip)

    def take(rng: VipRange) -> int | None:
        ip = rng.next_free(used[rng.cidr], ip_to_int(cursors.get(rng.cidr)))
        if ip is not None:
            used[rng.cidr].add(ip)
            cursors[rng.cidr] = int_to_ip(ip)
        return ip

    def give_back(rng: VipRange, ip: int, cursor: str | None) -> None:
        used[rng.cidr].discard(ip)
        if cursor is None:
            cursors.pop(rng.cidr, None)
        else:
            cursors[rng.cidr] = cursor

    allocated: list[tuple[str, str, str]] = []
    unallocated: dict[str, dict[str, str]] = {}
    for mesh in sorted(desired):
        services = entries.setdefault(mesh, {})
        for svc in sorted(desired[mesh]):
            cur = services.get(svc)
            ip = ip_to_int(cur["ip"]) if cur else None
            tp = ip_to_int(cur["tproxy_ip"]) if cur else None
            need_ip = ip not in primary
            need_tp = tproxy is not None and tp not in tproxy
            if not need_ip and not need_tp:
                if tproxy is None and cur is not None and cur["tproxy_ip"] is not None:
                    cur["tproxy_ip"] = None  # the transparent-proxy range was switched off
                continue
            # Both addresses or neither: take what is missing, give it back if the other range is full.
            saved = {r.cidr: cursors.get(r.cidr) for r in (primary, tproxy) if r is not None}
            new_ip = take(primary) if need_ip else ip
            new_tp = (take(tproxy) if need_tp else tp) if tproxy is not None else None
            full = [r for r, want, got in ((primary, need_ip, new_ip), (tproxy, need_tp, new_tp))
                    if r is not None and want and got is None]
            if full:
                if need_ip and new_ip is not None:
                    give_back(primary, new_ip, saved[primary.cidr])
                if tproxy is not None and need_tp and new_tp is not None:
                    give_back(tproxy, new_tp, saved[tproxy.cidr])
                unallocated.setdefault(mesh, {})[svc] = "; ".join(
                    f"VIP range {r.cidr} ({r.setting}) is exhausted: all {r.size} addresses are in use or "
                    "held for the release grace period" for r in full)
                continue
            assert new_ip is not None
            services[svc] = {"ip": int_to_ip(new_ip), "tproxy_ip": int_to_ip(new_tp) if new_tp is not None else None,
                             "allocated": (cur or {}).get("allocated") if not need_ip else _ts(now),
                             "gone_since": None}
            if need_ip:
                allocated.append((mesh, svc, int_to_ip(new_ip)))

    spec = VipAllocationSpec(
        meshes={mesh: MeshVipAllocation(services={svc: VipEntry.model_validate(e)
                                                  for svc, e in sorted(services.items()) if e["ip"]})
                for mesh, services in sorted(entries.items()) if any(e["ip"] for e in services.values())},
        cursors=dict(sorted(cursors.items())),
        unallocated=unallocated,
    )
    return Plan(spec=spec, changed=spec != current, allocated=allocated, released=released,
                unallocated=unallocated, next_release=next_release)


class VipAllocator:
    """The leader-only component: follows Dataplane/ZoneIngress/Mesh changes and keeps the stored
    allocation in line with the services that exist (debounced; a timer releases VIPs when grace ends)."""

    name = "vip-allocator"

    def __init__(self, store: ResourceStore, primary: VipRange, tproxy: VipRange | None, *,
                 grace: timedelta = timedelta(hours=1), clock: Callable[[], datetime] | None = None,
                 debounce: float = 0.05, supervisor: Supervisor | None = None) -> None:
        self.store, self.primary, self.tproxy, self.grace = store, primary, tproxy, grace
        self.supervisor = supervisor or Supervisor()
        self._errors = ErrorLog(log, interval=60.0)
        self.clock = clock or (lambda: datetime.now(UTC))
        self.debounce = debounce
        self.passes = 0  # for tests and logs
        self._dp_services: dict[tuple[str, str], frozenset[str]] = {}  # (mesh, dataplane) -> services
        self._ingress_services: dict[str, frozenset[tuple[str, str]]] = {}  # ingress -> (mesh, service)
        self._meshes: set[str] = set()
        self._dirty: set[tuple[str, str, str]] = set()  # (type, mesh, name)
        self._full = True
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._last_unallocated: dict[str, dict[str, str]] = {}
        self._next_release: datetime | None = None

    # --- component -----------------------------------------------------------------------------------------

    async def start(self) -> None:
        ready = asyncio.Event()
        self._full = True
        self._wake.set()
        self._tasks = [self.supervisor.spawn("vip-watch", lambda: self._watch(ready))]
        await ready.wait()  # subscribed before the first pass reads anything: no change can slip between
        self._tasks.append(self.supervisor.spawn("vip-allocate", self._loop))

    async def stop(self) -> None:
        for task in self._tasks:
            await cancel_and_wait(task)
        self._tasks = []

    async def _watch(self, ready: asyncio.Event) -> None:
        watched = {DATAPLANE.name, ZONE_INGRESS.name, MESH.name}
        async with self.store.watch() as events:
            self._full = True  # a restart may have missed events: look at everything again
            self._wake.set()
            ready.set()
            while True:
                event = await events.get()
                if event.op == "resync":
                    self._full = True
                elif event.type in watched:
                    self._dirty.add((event.type, event.mesh, event.name))
                else:
                    continue
                self._wake.set()

    async def _loop(self) -> None:
        backoff = 0.5
        while True:
            timeout = None
            if self._next_release is not None:
                timeout = max(0.0, (self._next_release - self.clock()).total_seconds()) + 0.01
            await wait_set(self._wake, timeout)
            await asyncio.sleep(self.debounce)
            self._wake.clear()
            try:
                await self.reconcile()
                backoff = 0.5
            except asyncio.CancelledError:
                raise
            except Exception as e:
                self._full = True  # what the failed pass had read of the changes may be lost: list everything
                log.warning("VIP allocation pass failed; retrying", extra={"error": str(e), "retry_in": backoff})
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 10.0)
                self._wake.set()

    # --- what exists -----------------------------------------------------------------------------------------

    async def _load_all(self) -> None:
        self._dirty.clear()
        self._full = False
        meshes = await self.store.list(MESH)
        dps = await self.store.list(DATAPLANE, ListQuery(mesh=None))
        ingresses = await self.store.list(ZONE_INGRESS)
        self._meshes = {m.meta.name for m in meshes.items}
        self._dp_services = {(dp.meta.mesh, dp.meta.name): self._read(_dp_services, dp) for dp in dps.items}
        self._ingress_services = {i.meta.name: self._read(_ingress_services, i) for i in ingresses.items}

    async def _apply_dirty(self) -> None:
        dirty, self._dirty = self._dirty, set()
        for rtype_name, mesh, name in sorted(dirty):
            if rtype_name == MESH.name:
                try:
                    await self.store.get(MESH, name)
                    self._meshes.add(name)
                except NotFound:
                    self._meshes.discard(name)
            elif rtype_name == DATAPLANE.name:
                try:
                    dp = await self.store.get(DATAPLANE, name, mesh)
                    self._dp_services[(mesh, name)] = self._read(_dp_services, dp)
                except NotFound:
                    self._dp_services.pop((mesh, name), None)
            else:
                try:
                    ingress = await self.store.get(ZONE_INGRESS, name)
                    self._ingress_services[name] = self._read(_ingress_services, ingress)
                except NotFound:
                    self._ingress_services.pop(name, None)

    def _read(self, services_of: Callable[[Resource], frozenset[_T]], resource: Resource) -> frozenset[_T]:
        """The services one resource needs VIPs for; a resource that cannot be read counts as none (logged),
        so one bad Dataplane cannot stop allocation for every mesh."""
        try:
            return services_of(resource)
        except Exception as e:
            self._errors.report((resource.type.name, resource.meta.mesh, resource.meta.name),
                                "cannot read the services of a resource; it gets no VIP", error=e,
                                extra={"type": resource.type.name, "mesh": resource.meta.mesh,
                                       "resource": resource.meta.name})
            return frozenset()

    def desired(self) -> dict[str, set[str]]:
        out: dict[str, set[str]] = defaultdict(set)
        for (mesh, _), services in self._dp_services.items():
            if mesh in self._meshes:
                out[mesh].update(services)
        for pairs in self._ingress_services.values():
            for mesh, svc in pairs:
                if mesh in self._meshes:
                    out[mesh].add(svc)
        return dict(out)

    # --- one pass --------------------------------------------------------------------------------------------

    async def reconcile(self) -> Plan:
        """Bring the stored allocation in line with the services that exist now; returns what it did."""
        if self._full or not self._tasks or len(self._dirty) > FULL_RELOAD_ABOVE:
            await self._load_all()
        else:
            await self._apply_dirty()
        desired = self.desired()
        self.passes += 1
        for attempt in range(WRITE_ATTEMPTS):
            try:
                stored: Resource | None = await self.store.get(VIP_ALLOCATION, VIP_ALLOCATION_NAME)
            except NotFound:
                stored = None
            current = stored.spec if stored is not None else VipAllocationSpec()
            assert isinstance(current, VipAllocationSpec)
            p = plan(current, desired, self.primary, self.tproxy, self.clock(), self.grace)
            if p.changed:
                try:
                    if stored is None:
                        await self.store.create(Resource(VIP_ALLOCATION, Meta(name=VIP_ALLOCATION_NAME), p.spec))
                    else:
                        await self.store.update(Resource(VIP_ALLOCATION, stored.meta, p.spec))
                except (Conflict, AlreadyExists, NotFound):
                    # Another writer got there first: read its result and plan again on top of it.
                    await asyncio.sleep(random.uniform(0, 0.01 * (attempt + 1)))
                    continue
            self._report(p)
            self._next_release = p.next_release
            return p
        raise Conflict(f"the VIP allocation kept changing under {WRITE_ATTEMPTS} attempts to update it")

    def _report(self, p: Plan) -> None:
        for mesh, svc, ip in p.allocated:
            log.info("VIP allocated", extra={"mesh": mesh, "service": svc, "vip": ip})
        for mesh, svc, ip in p.released:
            log.info("VIP released", extra={"mesh": mesh, "service": svc, "vip": ip})
        if p.unallocated != self._last_unallocated:
            for mesh, services in sorted(p.unallocated.items()):
                for svc, why in sorted(services.items()):
                    if self._last_unallocated.get(mesh, {}).get(svc) != why:
                        log.error(f"service {svc!r} in mesh {mesh!r} has no VIP: {why}; widen the range or "
                                  "remove unused services", extra={"mesh": mesh, "service": svc})
            self._last_unallocated = p.unallocated


def _dp_services(dp: Resource) -> frozenset[str]:
    spec = dp.spec
    assert isinstance(spec, DataplaneSpec)
    return frozenset(spec.services())


def _ingress_services(ingress: Resource) -> frozenset[tuple[str, str]]:
    spec = ingress.spec
    assert isinstance(spec, ZoneIngressSpec)
    return frozenset((s.mesh, s.tags["kuma.io/service"]) for s in spec.available_services
                     if s.tags.get("kuma.io/service"))
