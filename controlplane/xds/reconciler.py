"""Store changes -> per-mesh topology -> per-proxy snapshots, for the proxies connected to this instance.

Events are debounced (tens of ms) and coalesced by mesh; each dirty mesh's topology is computed once, then
every connected proxy of that mesh gets a snapshot built from shared resources. The cache compares content
versions, so proxies whose config did not change get no push. Identity certificates are renewed on time
(a timer at the earliest renew_at), and a failure for one proxy or mesh never stops the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import defaultdict
from collections.abc import Callable
from datetime import UTC, datetime

from controlplane.ca import CaError, CaManager, IdentityCache, IdentityCert
from controlplane.dns.vips import VipView
from controlplane.resources import REGISTRY, Resource
from controlplane.resources.dataplane import DataplaneSpec
from controlplane.store.base import ChangeEvent, ListQuery, NotFound, ResourceStore

from .bootstrap import split_node_id
from .cache import SnapshotCache
from .generate.context import Identity, ProxyContext
from .generate.memo import ResourceMemo
from .generate.proxy import generate_snapshot
from .snapshot import InconsistentSnapshot
from .topology import MeshTopology, build_topology

log = logging.getLogger("kuma.xds")

# Types whose changes can alter Envoy config (insights and tokens' secrets do not... except CA secrets).
_RELEVANT = {"Mesh", "Dataplane", "Secret"}


class Reconciler:
    name = "xds-reconciler"

    def __init__(self, store: ResourceStore, cache: SnapshotCache, ca: CaManager, *, debounce: float = 0.02,
                 vips: VipView | None = None) -> None:
        self.store, self.cache, self.ca, self.vips = store, cache, ca, vips
        self.vip_nodes: set[str] = set()  # proxies that own their host's VIP listeners
        if vips is not None:
            vips.on_change(self._vips_changed)
        self.identities = IdentityCache(ca)
        self.debounce = debounce
        self.topologies: dict[str, MeshTopology] = {}
        self.memos: dict[str, ResourceMemo] = defaultdict(ResourceMemo)
        self.connected: dict[str, int] = {}  # node id -> open streams on this instance
        self._dirty: set[str] = set()
        self._dirty_all: set[str] = set()  # meshes whose every proxy must be regenerated (VIPs, resync)
        self._dirty_nodes: set[str] = set()
        self.uses: dict[str, set[str]] = {}  # node id -> destination services its config holds
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._watch_task: asyncio.Task[None] | None = None
        self._generation = 0
        self.on_identity: list[Callable[[str, IdentityCert], None]] = []  # for insights
        self.rebuilds = 0  # mesh rebuilds done (for tests and metrics)

    # --- component -----------------------------------------------------------------------------------------------

    async def start(self) -> None:
        self._watch_task = asyncio.create_task(self._watch(), name="xds-watch")
        self._task = asyncio.create_task(self._loop(), name="xds-reconcile")

    async def stop(self) -> None:
        for task in (self._watch_task, self._task):
            if task:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    # --- inputs --------------------------------------------------------------------------------------------------

    def proxy_connected(self, node_id: str, *, vip_listeners: bool = False) -> None:
        self.connected[node_id] = self.connected.get(node_id, 0) + 1
        if vip_listeners:
            self.vip_nodes.add(node_id)
        else:
            self.vip_nodes.discard(node_id)
        self._dirty_nodes.add(node_id)
        self._wake.set()

    def proxy_disconnected(self, node_id: str) -> None:
        left = self.connected.get(node_id, 0) - 1
        if left > 0:
            self.connected[node_id] = left
            return
        self.connected.pop(node_id, None)
        self.vip_nodes.discard(node_id)
        self.uses.pop(node_id, None)
        self.cache.clear(node_id)
        with contextlib.suppress(ValueError):
            self.identities.forget(split_node_id(node_id))

    def _vips_changed(self, _map: object, meshes: set[str]) -> None:
        self._dirty_all.update(meshes)  # VIP owners' listeners change; the topology itself does not
        for mesh in meshes:
            self.mesh_changed(mesh)

    def mesh_changed(self, mesh: str) -> None:
        self._dirty.add(mesh)
        self._wake.set()

    async def _watch(self) -> None:
        policy_types = {t.name for t in REGISTRY.all() if t.is_policy}
        async with self.store.watch() as events:
            while True:
                event: ChangeEvent = await events.get()
                if event.op == "resync":
                    self._dirty.update(self.topologies)
                    self._dirty_all.update(self.topologies)
                elif event.type == "Mesh":
                    self._dirty.add(event.name)
                elif event.type in _RELEVANT or event.type in policy_types:
                    self._dirty.add(event.mesh)
                else:
                    continue
                self._wake.set()

    # --- the loop ------------------------------------------------------------------------------------------------

    async def _loop(self) -> None:
        while True:
            timeout = self._next_renewal_in()
            try:
                await asyncio.wait_for(self._wake.wait(), timeout)
            except TimeoutError:
                self._renewals_due()
            await asyncio.sleep(self.debounce)  # let a burst of events coalesce
            self._wake.clear()
            meshes, nodes, everything = self._dirty, self._dirty_nodes, self._dirty_all
            self._dirty, self._dirty_nodes, self._dirty_all = set(), set(), set()
            for mesh in sorted(meshes):
                await self._rebuild_mesh(mesh, everything=mesh in everything)
            for node_id in sorted(nodes):
                try:
                    mesh, _ = split_node_id(node_id)
                except ValueError:
                    continue
                if mesh in meshes:
                    continue  # already rebuilt with its mesh
                if mesh not in self.topologies:
                    await self._rebuild_mesh(mesh)
                else:
                    await self._rebuild_proxy(node_id)

    def _next_renewal_in(self) -> float | None:
        at = self.identities.next_renewal()
        if at is None:
            return None
        return max(0.0, (at - datetime.now(UTC)).total_seconds())

    def _renewals_due(self) -> None:
        for node_id in self.connected:
            with contextlib.suppress(ValueError):
                self._dirty_nodes.add(node_id)

    async def _load_topology(self, mesh_name: str) -> MeshTopology | None:
        mesh_type, dp_type = REGISTRY.by_name("Mesh"), REGISTRY.by_name("Dataplane")
        assert mesh_type is not None and dp_type is not None
        try:
            mesh = await self.store.get(mesh_type, mesh_name)
        except NotFound:
            return None
        dataplanes = (await self.store.list(dp_type, ListQuery(mesh=mesh_name))).items
        policies: dict[str, list[Resource]] = {}
        for rtype in REGISTRY.all():
            if rtype.is_policy:
                found = (await self.store.list(rtype, ListQuery(mesh=mesh_name))).items
                if found:
                    policies[rtype.name] = found
        bundle = None
        try:
            ca = await self.ca.get_ca(mesh)
            bundle = ca.trust_bundle_pem if ca else None
        except CaError as e:
            # Without a CA there is no safe config for an mTLS mesh: keep serving the last one.
            log.error("mesh CA unavailable, keeping the previous config", extra={"mesh": mesh_name, "error": str(e)})
            return self.topologies.get(mesh_name)
        self._generation += 1
        return build_topology(mesh, dataplanes, policies, self._generation, bundle)

    async def _rebuild_mesh(self, mesh_name: str, *, everything: bool = False) -> None:
        started = time.perf_counter()
        old = self.topologies.get(mesh_name)
        topo = await self._load_topology(mesh_name)
        if topo is None:
            self.topologies.pop(mesh_name, None)
            self.memos.pop(mesh_name, None)
            return
        self.topologies[mesh_name] = topo
        nodes = [n for n in self.connected if n.startswith(f"{mesh_name}.")]
        affected = nodes if everything else self._affected(old, topo, nodes)
        memo = self.memos[mesh_name]
        full = len(affected) == len(nodes)
        if full:
            memo.begin()  # a full rebuild also forgets resources nothing uses any more
        changed = 0
        for node_id in affected:
            changed += await self._rebuild_proxy(node_id)
        if full:
            memo.end()
        self.rebuilds += 1
        log.debug("mesh rebuilt", extra={"mesh": mesh_name, "generation": topo.generation, "proxies_changed": changed,
                                         "regenerated": len(affected), "connected": len(nodes),
                                         "built": memo.built, "reused": memo.reused,
                                         "ms": round((time.perf_counter() - started) * 1000, 1)})

    def _affected(self, old: MeshTopology | None, new: MeshTopology, nodes: list[str]) -> list[str]:
        """The connected proxies whose config can differ between two topologies of a mesh. Anything mesh-wide
        (the Mesh, its policies, its CA) touches everyone; otherwise a proxy is affected when its own
        Dataplane changed or it holds endpoints of a service whose endpoints, protocol or ports changed."""
        if old is None or _mesh_wide(old) != _mesh_wide(new):
            return nodes
        names = set(old.dataplanes) | set(new.dataplanes)
        changed_dps = {n for n in names if _version(old.dataplanes.get(n)) != _version(new.dataplanes.get(n))}
        services = set(old.protocols) | set(new.protocols)
        changed_services = {s for s in services
                            if old.endpoint_keys.get(s) != new.endpoint_keys.get(s)
                            or old.protocols.get(s) != new.protocols.get(s)
                            or old.service_ports.get(s) != new.service_ports.get(s)}
        out = []
        for node_id in nodes:
            _, name = split_node_id(node_id)
            uses = self.uses.get(node_id)
            if uses is None or name in changed_dps or uses & changed_services:
                out.append(node_id)
        return out

    async def _rebuild_proxy(self, node_id: str) -> int:
        mesh_name, name = split_node_id(node_id)
        topo = self.topologies.get(mesh_name)
        if topo is None:
            return 0
        dataplane = topo.dataplanes.get(name)
        if dataplane is None:
            return 0  # not registered yet (or deleted): nothing to serve; keeps its last config
        try:
            identity = await self._identity(topo, dataplane, node_id)
            vips = self.vips.mesh(mesh_name).vips if self.vips is not None and node_id in self.vip_nodes else None
            ctx = ProxyContext(topology=topo, dataplane=dataplane, identity=identity, memo=self.memos[mesh_name],
                               vips=vips)
            snapshot = generate_snapshot(ctx)
            self.uses[node_id] = ctx.used_services
        except (CaError, InconsistentSnapshot) as e:
            log.error("cannot build config for dataplane, keeping the previous one",
                      extra={"mesh": mesh_name, "dataplane": name, "error": str(e)})
            return 0
        return 1 if self.cache.set_snapshot(node_id, snapshot) else 0

    async def _identity(self, topo: MeshTopology, dataplane: Resource, node_id: str) -> Identity | None:
        if topo.ca_bundle_pem is None:
            return None
        spec = dataplane.spec
        assert isinstance(spec, DataplaneSpec)
        cert = await self.identities.identity_for(topo.mesh, (topo.name, dataplane.meta.name), spec.services(),
                                                  spec.tags())
        if cert is None:
            return None
        for callback in self.on_identity:
            callback(node_id, cert)
        return Identity(cert_pem=cert.cert_pem, key_pem=cert.key_pem, fingerprint=f"{cert.serial}")


def _version(resource: Resource | None) -> int:
    return resource.meta.version if resource is not None else -1


def _mesh_wide(topo: MeshTopology) -> tuple[object, ...]:
    """What every proxy of the mesh depends on: the Mesh, every policy (by version), the CA bundle."""
    policies = tuple(sorted((t, p.meta.name, p.meta.version) for t, ps in topo.policies.items() for p in ps))
    return (topo.mesh.meta.version, policies, topo.ca_bundle_pem)
