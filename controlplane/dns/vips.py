"""The VIP map as others use it: per mesh, service -> VIP, DNS name -> service, and a version.

    view = VipView(store, domain="mesh")         # a component: loads the stored allocation, follows changes
    m = view.mesh("default")                     # MeshVips (empty, with a version, for a mesh with no VIPs)
    m.vips        {"backend": "127.240.0.1"}     # primary range: what `<service>.mesh` resolves to
    m.tproxy_vips {"backend": "240.0.0.1"}       # transparent-proxy range ({} when none is configured)
    m.names       {"backend.mesh": "backend"}    # every DNS name (lowercase, no trailing dot) -> service
    m.version     "3f1c2a9b0d4e5f60"             # content hash: changes exactly when the map does
    await view.wait_changed("default", m.version, timeout=30)   # long poll
    view.on_change(callback)                     # callback(vip_map, changed_meshes), in the event loop
    await load_mesh_vips(store, "default")       # the same, read from the store (no view needed)

Only services that exist now are in the map; a service that went away keeps its VIP reserved (not served)
for the release grace period, so it gets the same VIP if it comes back in time.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from controlplane.resources.vip import VIP_ALLOCATION, VIP_ALLOCATION_NAME, VipAllocationSpec
from controlplane.store.base import ChangeEvent, NotFound, ResourceStore
from controlplane.supervise import Supervisor, cancel_and_wait, wait_set

from .names import mesh_names

log = logging.getLogger("kuma.dns")


def _version(vips: Mapping[str, str], tproxy: Mapping[str, str], names: Mapping[str, str]) -> str:
    doc = json.dumps([vips, tproxy, names], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(doc.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class MeshVips:
    mesh: str
    vips: Mapping[str, str]
    tproxy_vips: Mapping[str, str]
    names: Mapping[str, str]
    unallocated: Mapping[str, str] = field(default_factory=dict)  # service -> why it has no VIP
    version: str = ""

    @classmethod
    def build(cls, mesh: str, vips: Mapping[str, str], tproxy_vips: Mapping[str, str], domain: str,
              unallocated: Mapping[str, str] | None = None) -> MeshVips:
        vips, tproxy_vips = dict(sorted(vips.items())), dict(sorted(tproxy_vips.items()))
        names = dict(sorted(mesh_names(vips, domain).items()))
        return cls(mesh=mesh, vips=vips, tproxy_vips=tproxy_vips, names=names,
                   unallocated=dict(sorted((unallocated or {}).items())),
                   version=_version(vips, tproxy_vips, names))

    def to_json(self) -> dict[str, Any]:
        """The shape of `GET /meshes/{mesh}/vips`."""
        out: dict[str, Any] = {"mesh": self.mesh, "version": self.version, "vips": dict(self.vips),
                               "tproxyVips": dict(self.tproxy_vips), "names": dict(self.names)}
        if self.unallocated:
            out["unallocated"] = dict(self.unallocated)
        return out


@dataclass(frozen=True)
class VipMap:
    """Every mesh's MeshVips, from one stored VipAllocation."""

    domain: str
    meshes: Mapping[str, MeshVips]
    stored_version: int = 0  # the VipAllocation resource's store version (0: none stored yet)

    @classmethod
    def from_spec(cls, spec: VipAllocationSpec | None, domain: str, stored_version: int = 0) -> VipMap:
        meshes: dict[str, MeshVips] = {}
        spec = spec or VipAllocationSpec()
        for mesh in sorted(set(spec.meshes) | set(spec.unallocated)):
            alloc = spec.meshes.get(mesh)
            live = {s: e for s, e in (alloc.services.items() if alloc else ()) if e.gone_since is None}
            meshes[mesh] = MeshVips.build(
                mesh, {s: e.ip for s, e in live.items()},
                {s: e.tproxy_ip for s, e in live.items() if e.tproxy_ip}, domain, spec.unallocated.get(mesh))
        return cls(domain=domain, meshes=meshes, stored_version=stored_version)

    def mesh(self, mesh: str) -> MeshVips:
        found = self.meshes.get(mesh)
        return found if found is not None else MeshVips.build(mesh, {}, {}, self.domain)


async def load_vip_map(store: ResourceStore, domain: str = "mesh") -> VipMap:
    try:
        res = await store.get(VIP_ALLOCATION, VIP_ALLOCATION_NAME)
    except NotFound:
        return VipMap.from_spec(None, domain)
    assert isinstance(res.spec, VipAllocationSpec)
    return VipMap.from_spec(res.spec, domain, res.meta.version)


async def load_mesh_vips(store: ResourceStore, mesh: str, domain: str = "mesh") -> MeshVips:
    """The current VIP map of one mesh, straight from the store."""
    return (await load_vip_map(store, domain)).mesh(mesh)


ChangeCallback = Callable[[VipMap, set[str]], None]


class VipView:
    """The VIP map of every mesh, kept current from the store on every control-plane instance."""

    name = "vip-view"

    def __init__(self, store: ResourceStore, domain: str = "mesh", *, supervisor: Supervisor | None = None) -> None:
        self.store, self.domain = store, domain
        self.supervisor = supervisor or Supervisor()
        self.map = VipMap.from_spec(None, domain)
        self._callbacks: list[ChangeCallback] = []
        self._changed = asyncio.Event()  # replaced on every change: waiters hold the one they saw
        self._task: asyncio.Task[None] | None = None

    def mesh(self, mesh: str) -> MeshVips:
        return self.map.mesh(mesh)

    def on_change(self, callback: ChangeCallback) -> None:
        self._callbacks.append(callback)

    async def wait_changed(self, mesh: str, version: str, timeout: float) -> MeshVips:
        """The mesh's map as soon as its version differs from `version`, or the current one at `timeout`."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            current = self.mesh(mesh)
            left = deadline - loop.time()
            if current.version != version or left <= 0:
                return current
            changed = self._changed
            await wait_set(changed, left)

    async def start(self) -> None:
        loaded: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._task = self.supervisor.spawn("vip-view", lambda: self._run(loaded))
        try:
            await loaded  # serve the stored map from the first moment (the DNS server starts after this)
        except Exception:
            await cancel_and_wait(self._task)
            self._task = None
            raise

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None

    async def _run(self, loaded: asyncio.Future[None]) -> None:
        async with self.store.watch() as events:
            try:
                await self.reload()  # also after a restart: events may have been missed
            except Exception as e:
                if loaded.done():
                    raise  # a restart: the supervisor retries with a back-off
                loaded.set_exception(RuntimeError(f"cannot read the VIP allocation: {e}"))
                await asyncio.Future()  # start() fails and cancels this task
            if not loaded.done():
                loaded.set_result(None)
            while True:
                event: ChangeEvent = await events.get()
                if event.op != "resync" and event.type != VIP_ALLOCATION.name:
                    continue
                while not events.empty():  # coalesce a burst
                    events.get_nowait()
                try:
                    await self.reload()
                except Exception:
                    log.exception("cannot reload the VIP allocation; keeping the last one")

    async def reload(self) -> set[str]:
        new = await load_vip_map(self.store, self.domain)
        return self.replace(new)

    def replace(self, new: VipMap) -> set[str]:
        old = self.map
        changed = {m for m in set(old.meshes) | set(new.meshes) if old.mesh(m).version != new.mesh(m).version}
        unallocated_changed = any(old.mesh(m).unallocated != new.mesh(m).unallocated for m in new.meshes)
        self.map = new
        if changed or unallocated_changed:
            for cb in self._callbacks:
                try:
                    cb(new, changed)
                except Exception:
                    log.exception("VIP map listener failed")
            event, self._changed = self._changed, asyncio.Event()
            event.set()
        return changed
