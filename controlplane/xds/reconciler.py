"""Store changes -> per-mesh topology -> per-proxy snapshots, for the proxies connected to this instance.

Events are debounced and coalesced by mesh: the first change after a quiet spell waits only `first_debounce`
(a few ms: the events of one write arrive together), changes that keep coming wait `debounce` (tens of ms) so
that one pass takes many; each dirty mesh's topology is computed once, then
every connected proxy of that mesh gets a snapshot built from shared resources. The cache compares content
versions, so proxies whose config did not change get no push. A proxy whose only change is new endpoints of
services it calls is not generated again: its previous snapshot gets the new ClusterLoadAssignments
(generate/eds_patch.py says when that equals a full generation, and why). Identity certificates are renewed on time
(a deadline at the earliest renew_at, checked on every pass), and a failure for one proxy or mesh never stops
the others: it is logged (at most once per interval per mesh and kind of error), the mesh or proxy keeps its
previous config and is retried with a back-off, and the loop itself runs under a Supervisor.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import defaultdict
from collections.abc import Callable, Mapping
from datetime import UTC, datetime

from controlplane.ca import CaError, CaManager, IdentityCache, IdentityCert
from controlplane.dns.vips import VipView
from controlplane.resources import REGISTRY, Resource
from controlplane.resources.dataplane import SERVICE_TAG, identity_tags
from controlplane.resources.zone import ZONE_INGRESS
from controlplane.store.base import ChangeEvent, NotFound, ResourceStore
from controlplane.supervise import RetrySchedule, Supervisor, cancel_and_wait, wait_set
from kuma_shared.logs import ErrorLog

from .bootstrap import ingress_name, ingress_node_id, split_node_id
from .cache import SnapshotCache
from .generate.context import Identity, ProxyContext
from .generate.eds_patch import EndpointPatch, ProxyBuild, ServiceChanges, service_changes
from .generate.ingress import generate_ingress
from .generate.memo import ResourceMemo
from .generate.proxy import generate_snapshot
from .generate.rules import carry_rules
from .remote_endpoints import RemoteView, remote_view
from .snapshot import InconsistentSnapshot
from .store_view import ALL_MESHES, StoreView
from .topology import MeshTopology, build_topology

log = logging.getLogger("kuma.xds")

# Types whose changes can alter Envoy config (insights and tokens' secrets do not... except CA secrets).
_RELEVANT = {"Mesh", "Dataplane", "Secret"}
INGRESS = "ZoneIngress"  # other zones' ingresses are endpoints of every mesh; ours have their own config
# A mesh rebuild lets the event loop run after this many proxies, so the streams of the proxies done so far
# start sending (gRPC encrypts and writes in its own threads, on the other core) while the rest are built.
YIELD_EVERY = 50


class Reconciler:
    name = "xds-reconciler"

    def __init__(self, store: ResourceStore, cache: SnapshotCache, ca: CaManager, *, debounce: float = 0.02,
                 first_debounce: float = 0.002,
                 vips: VipView | None = None, supervisor: Supervisor | None = None, zone: str = "") -> None:
        self.store, self.cache, self.ca, self.vips = store, cache, ca, vips
        self.view = StoreView(store)  # what rebuilds list, kept current from the watch below
        self.zone = zone  # this control plane's zone: the kuma.io/zone of its dataplanes; others' are remote
        self.supervisor = supervisor or Supervisor()
        self.mesh_retries = RetrySchedule()  # meshes whose last rebuild failed
        self.node_retries = RetrySchedule()  # proxies whose last build failed
        self.errors = ErrorLog(log, interval=30.0)
        self._retry_everything: set[str] = set()  # failed meshes whose retry must regenerate every proxy
        self.vip_nodes: set[str] = set()  # proxies that own their host's VIP listeners
        if vips is not None:
            vips.on_change(self._vips_changed)
        self.identities = IdentityCache(ca)
        self.debounce = debounce
        self.first_debounce = min(first_debounce, debounce)
        self.topologies: dict[str, MeshTopology] = {}
        self.memos: dict[str, ResourceMemo] = defaultdict(ResourceMemo)
        self.connected: dict[str, int] = {}  # node id -> open streams on this instance
        self._dirty: set[str] = set()
        self._dirty_all: set[str] = set()  # meshes whose every proxy must be regenerated (VIPs, resync)
        self._dirty_nodes: set[str] = set()
        self.uses: dict[str, set[str]] = {}  # node id -> destination services its config holds
        # node id -> its latest successful build, for an endpoint-only change to patch (generate/eds_patch.py);
        # dropped when a build fails or the proxy goes, so a patch never starts from a config that is not current.
        self.builds: dict[str, ProxyBuild] = {}
        # How the proxies of the latest mesh rebuild got their config: "patch" or "full" (tests, debug log).
        self.last_paths: dict[str, str] = {}
        self.patched = 0  # proxies patched since the start (tests)
        self.ingress_nodes: set[str] = set()  # connected zone ingresses (their config spans every mesh)
        # Another zone's ZoneIngress changed: only the meshes whose remote endpoints are no longer what their
        # topology was built from are rebuilt (checked at the next pass), not every mesh.
        self._ingresses_changed = False
        self._built_from: dict[str, RemoteView] = {}  # mesh -> the remote endpoints its topology holds
        self.ingress_memo = ResourceMemo()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._watch_task: asyncio.Task[None] | None = None
        self._generation = 0
        self.on_identity: list[Callable[[str, IdentityCert], None]] = []  # for insights
        self.rebuilds = 0  # mesh rebuilds done (for tests and metrics)
        # When the latest pass that rebuilt something ended (the debounce's quiet spell, gc_pacing).
        self.last_pass_at = time.monotonic()
        self.on_pass_start: list[Callable[[], None]] = []  # before a pass that rebuilds something (gc_pacing)

    # --- component -----------------------------------------------------------------------------------------------

    async def start(self) -> None:
        self._watch_task = self.supervisor.spawn("xds-watch", self._watch)
        self._task = self.supervisor.spawn("xds-reconcile", self._loop)

    async def stop(self) -> None:
        for task in (self._watch_task, self._task):
            await cancel_and_wait(task)

    # --- inputs --------------------------------------------------------------------------------------------------

    def proxy_connected(self, node_id: str, *, vip_listeners: bool = False) -> None:
        self.connected[node_id] = self.connected.get(node_id, 0) + 1
        if ingress_name(node_id) is not None:
            self.ingress_nodes.add(node_id)
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
        if node_id in self.ingress_nodes:
            self.ingress_nodes.discard(node_id)
            self.ingress_memo.forget(node_id)
        self.uses.pop(node_id, None)
        self.builds.pop(node_id, None)
        self.last_paths.pop(node_id, None)
        self.cache.clear(node_id)
        self.node_retries.succeeded(node_id)
        with contextlib.suppress(ValueError):
            mesh, name = split_node_id(node_id)
            self.identities.forget((mesh, name))
            if (memo := self.memos.get(mesh)) is not None:
                memo.forget(node_id)

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
            self.view.start_watching()
            try:
                await self._consume(events, policy_types)
            finally:
                self.view.stop_watching()

    async def _consume(self, events: asyncio.Queue[ChangeEvent], policy_types: set[str]) -> None:
        # A restart after a crash may have missed events: look at every mesh again.
        self._dirty.update(self.topologies)
        self._dirty_all.update(self.topologies)
        self._wake.set()
        while True:
            event: ChangeEvent = await events.get()
            self.view.on_event(event)  # before the wake-up: the rebuild it causes reads the change
            if event.op == "resync":
                self._dirty.update(self.topologies)
                self._dirty_all.update(self.topologies)
            elif event.type == "Mesh":
                self._dirty.add(event.name)
            elif event.type == INGRESS:
                # Ours (connected here): its own config; its availableServices follow our dataplanes, whose
                # events rebuilt the meshes already. Any other: remote endpoints of the meshes it offers services
                # in, which the next pass finds (_meshes_with_other_remote_endpoints).
                self._dirty_nodes.update(self.ingress_nodes)
                if ingress_node_id(event.name) not in self.ingress_nodes:
                    self._ingresses_changed = True
            elif event.type in _RELEVANT or event.type in policy_types:
                self._dirty.add(event.mesh)
            else:
                continue
            self._wake.set()

    def pending(self) -> bool:
        """Whether a change waits for the next pass (gc_pacing defers its long collections then)."""
        return self._wake.is_set() or self._ingresses_changed or bool(self._dirty or self._dirty_nodes)

    # --- the loop ------------------------------------------------------------------------------------------------

    async def _loop(self) -> None:
        while True:
            # The next deadline is computed on every pass and checked after every wake-up: on Python 3.12+
            # wait_for() on an already-set event never times out, so steady change traffic would otherwise
            # starve certificate renewals and retries.
            timeout = self._next_deadline_in()
            if not self._wake.is_set() and (timeout is None or timeout > 0):
                await wait_set(self._wake, timeout)
            # Let a burst of events coalesce. After a quiet spell the change goes almost at once (a leading edge:
            # a single change is not held for a burst that is not coming); while changes keep coming, passes are
            # `debounce` apart and each takes what arrived meanwhile.
            quiet = time.monotonic() - self.last_pass_at >= self.debounce
            await asyncio.sleep(self.first_debounce if quiet else self.debounce)
            self._wake.clear()
            await self.reconcile_once()

    async def reconcile_once(self) -> None:
        """One pass: rebuild dirty meshes, then dirty proxies (renewals and retries that are due included).
        An error in one mesh or proxy is logged, scheduled for a retry with back-off, and the others go on."""
        if self._ingresses_changed:
            self._ingresses_changed = False
            self._dirty.update(await self._meshes_with_other_remote_endpoints())
        now = time.monotonic()
        retried = self.mesh_retries.due(now)
        self._dirty.update(retried)
        self._dirty_all.update(m for m in retried if m in self._retry_everything)
        self._dirty_nodes.update(self.node_retries.due(now))
        self._dirty_nodes.update(self._renewals_due())
        meshes, nodes, everything = self._dirty, self._dirty_nodes, self._dirty_all
        self._dirty, self._dirty_nodes, self._dirty_all = set(), set(), set()
        if meshes or nodes:
            for started in self.on_pass_start:
                started()
        try:
            await self._reconcile(meshes, nodes, everything)
        finally:
            if meshes or nodes:
                self.last_pass_at = time.monotonic()

    async def _meshes_with_other_remote_endpoints(self) -> set[str]:
        """The meshes whose remote endpoints (what other zones' ingresses offer in them) are no longer those
        their topology was built from."""
        ingresses = await self.view.list(ZONE_INGRESS, ALL_MESHES)
        return {mesh for mesh in self.topologies
                if self._built_from.get(mesh) != remote_view(mesh, self.zone or None, ingresses)}

    async def _reconcile(self, meshes: set[str], nodes: set[str], everything: set[str]) -> None:
        for mesh in sorted(meshes):
            await self._rebuild_mesh_guarded(mesh, everything=mesh in everything, regenerate=nodes)
        if meshes:
            nodes |= self.ingress_nodes  # an ingress fronts every mesh's local services
        for node_id in sorted(nodes):
            if node_id in self.ingress_nodes:
                await self._rebuild_ingress(node_id)
                continue
            try:
                mesh, _ = split_node_id(node_id)
            except ValueError:
                continue
            if mesh in meshes:
                continue  # already rebuilt with its mesh
            if mesh not in self.topologies:
                await self._rebuild_mesh_guarded(mesh)
            else:
                await self._rebuild_proxy(node_id)

    def _next_deadline_in(self) -> float | None:
        """Seconds until the earliest certificate renewal or retry (None: nothing scheduled)."""
        now = time.monotonic()
        at = [t for t in (self.mesh_retries.next_at(), self.node_retries.next_at()) if t is not None]
        renewal = self._next_renewal()
        if renewal is not None:
            at.append(now + (renewal - datetime.now(UTC)).total_seconds())
        return max(0.0, min(at) - now) if at else None

    def _next_renewal(self) -> datetime | None:
        """The earliest renewal among connected proxies that are not waiting for a retry."""
        earliest = None
        for node_id in self.connected:
            if node_id in self.node_retries:
                continue
            cert = self._identity_of(node_id)
            if cert is not None and (earliest is None or cert.renew_at < earliest):
                earliest = cert.renew_at
        return earliest

    def _renewals_due(self) -> list[str]:
        now = datetime.now(UTC)
        return [n for n in self.connected
                if n not in self.node_retries and (c := self._identity_of(n)) is not None and c.renew_at <= now]

    def _identity_of(self, node_id: str) -> IdentityCert | None:
        try:
            return self.identities.get(split_node_id(node_id))
        except ValueError:
            return None

    async def _load_topology(self, mesh_name: str) -> MeshTopology | None:
        mesh_type, dp_type = REGISTRY.by_name("Mesh"), REGISTRY.by_name("Dataplane")
        assert mesh_type is not None and dp_type is not None
        try:
            mesh = await self.store.get(mesh_type, mesh_name)
        except NotFound:
            return None
        dataplanes = await self.view.list(dp_type, mesh_name)
        ingresses = await self.view.list(ZONE_INGRESS, ALL_MESHES)
        built_from = remote_view(mesh_name, self.zone or None, ingresses)
        policies: dict[str, list[Resource]] = {}
        for rtype in REGISTRY.all():
            if rtype.is_policy:
                found = await self.view.list(rtype, mesh_name)
                if found:
                    policies[rtype.name] = found
        # Without a CA there is no safe config for an mTLS mesh: a CaError fails the rebuild, and the proxies
        # keep their last config until a retry succeeds.
        ca = await self.ca.get_ca(mesh)
        bundle = ca.trust_bundle_pem if ca else None
        self._generation += 1
        topology = build_topology(mesh, dataplanes, policies, self._generation, bundle, zone=self.zone,
                                  ingresses=ingresses, previous=self.topologies.get(mesh_name))
        self._built_from[mesh_name] = built_from
        return topology

    async def _rebuild_mesh_guarded(self, mesh_name: str, *, everything: bool = False,
                                    regenerate: set[str] | frozenset[str] = frozenset()) -> None:
        try:
            await self._rebuild_mesh(mesh_name, everything=everything, regenerate=regenerate)
        except asyncio.CancelledError:
            raise
        except Exception as e:
            delay = self.mesh_retries.failed(mesh_name, time.monotonic())
            if everything:
                self._retry_everything.add(mesh_name)
            self.errors.report(
                ("mesh", mesh_name, type(e).__name__), "cannot rebuild the mesh's config; its proxies keep their "
                "previous one", error=e, extra={"mesh": mesh_name, "retry_in": delay})
        else:
            self.mesh_retries.succeeded(mesh_name)
            self._retry_everything.discard(mesh_name)

    async def _rebuild_mesh(self, mesh_name: str, *, everything: bool = False,
                            regenerate: set[str] | frozenset[str] = frozenset()) -> None:
        """`everything`: regenerate every connected proxy of the mesh; `regenerate`: proxies that must get a
        full generation whatever changed (connected, renewed or retried in this pass)."""
        started = time.perf_counter()
        old = self.topologies.get(mesh_name)
        topo = await self._load_topology(mesh_name)
        if topo is None:
            self.topologies.pop(mesh_name, None)
            self.memos.pop(mesh_name, None)
            self._built_from.pop(mesh_name, None)
            return
        if old is not None:
            carry_rules(old, topo)  # same policies (an endpoint change): their matching is not done again
        self.topologies[mesh_name] = topo
        nodes = [n for n in self.connected if n.startswith(f"{mesh_name}.")]
        # Rule 1 of generate/eds_patch.py: nothing mesh-wide, no reason to regenerate every proxy.
        wide = "first build" if old is None else "every proxy (VIPs, resync)" if everything \
            else "mesh-wide change" if _mesh_wide(old) != _mesh_wide(topo) else None
        services = service_changes(old, topo) if old is not None and wide is None else None
        affected = nodes if old is None or services is None else self._affected(old, topo, nodes, services.changed)
        memo = self.memos[mesh_name]
        memo.reset_counters()
        self.last_paths = {}
        changed = patched = 0
        full_because: dict[str, int] = {}  # why proxies were generated in full (the debug line)
        patch = EndpointPatch(topo, memo)
        for i, node_id in enumerate(affected):
            if i and i % YIELD_EVERY == 0:
                await asyncio.sleep(0)
            plan: frozenset[str] | str = wide or "regenerated in this pass"
            if old is not None and services is not None and node_id not in regenerate:
                plan = self._endpoint_only(node_id, old, topo, services)
            if not isinstance(plan, str):
                result = self._patch_proxy(node_id, patch, plan)
                if result is not None:
                    changed += result
                    patched += 1
                    continue
                plan = "the patch failed"
            full_because[plan] = full_because.get(plan, 0) + 1
            self.last_paths[node_id] = "full"
            changed += await self._rebuild_proxy(node_id)
        self.rebuilds += 1
        why = ", ".join(f"{k}: {n}" for k, n in sorted(full_because.items()))
        log.debug("mesh rebuilt", extra={"mesh": mesh_name, "generation": topo.generation, "proxies_changed": changed,
                                         "regenerated": len(affected) - patched, "patched": patched,
                                         "full_because": why,
                                         "connected": len(nodes),
                                         "built": memo.built, "reused": memo.reused,
                                         "ms": round((time.perf_counter() - started) * 1000, 1)})

    def _affected(self, old: MeshTopology, new: MeshTopology, nodes: list[str],
                  changed_services: frozenset[str]) -> list[str]:
        """The connected proxies whose config can differ between two topologies of a mesh with the same
        mesh-wide inputs (a mesh-wide change touches everyone): a proxy is affected when its own Dataplane
        changed or it holds endpoints of a service whose endpoints, protocol or ports changed."""
        names = set(old.dataplanes) | set(new.dataplanes)
        changed_dps = {n for n in names if _version(old.dataplanes.get(n)) != _version(new.dataplanes.get(n))}
        out = []
        for node_id in nodes:
            _, name = split_node_id(node_id)
            uses = self.uses.get(node_id)
            if uses is None or name in changed_dps or uses & changed_services:
                out.append(node_id)
        return out

    def _endpoint_only(self, node_id: str, old: MeshTopology, new: MeshTopology,
                       services: ServiceChanges) -> frozenset[str] | str:
        """The changed services whose new endpoints are all that changes for this proxy (its config can be
        patched: generate/eds_patch.py, rules 2 and 3; rule 1 is the caller's), or why it is generated in full."""
        build = self.builds.get(node_id)
        uses = self.uses.get(node_id)
        if build is None or uses is None or node_id in self.node_retries:
            return "no current build"
        mesh_name, name = split_node_id(node_id)
        before, after = old.dataplanes.get(name), new.dataplanes.get(name)
        if before is None or after is None or _version(before) != _version(after):
            return "its dataplane changed"
        touched = services.changed.intersection(uses)
        if not touched or not touched <= services.endpoints_only:
            return "a service it uses changed more than its endpoints"
        if build.vips != self._vips_for(node_id, mesh_name):
            return "its VIPs changed"
        if build.vips is not None and not touched.isdisjoint(services.ports_changed):
            return "a service it has VIP listeners for changed its ports"
        if new.ca_bundle_pem is None:
            if build.identity is not None:
                return "its identity changed"
        else:
            cert = self.identities.get((mesh_name, name))
            if cert is None or f"{cert.serial}" != build.identity or cert.renew_at <= datetime.now(UTC):
                return "its identity changed or is due"
        return touched

    def _patch_proxy(self, node_id: str, patch: EndpointPatch, services: frozenset[str]) -> int | None:
        """A proxy's new config from its latest build with new ClusterLoadAssignments for `services`: 1 when it
        changed, 0 when not; None when the patch could not be made (the caller generates the config in full)."""
        build = self.builds[node_id]
        mesh_name, name = split_node_id(node_id)
        try:
            patched = patch.apply(build, node_id, services)
        except Exception as e:  # a defect: the full generation is still right, so the proxy gets that
            self.errors.report(("patch", mesh_name, type(e).__name__),
                               "cannot patch the dataplane's endpoints, generating its config in full", error=e,
                               extra={"mesh": mesh_name, "dataplane": name})
            return None
        self.builds[node_id] = patched
        self.last_paths[node_id] = "patch"
        self.patched += 1
        return 1 if self.cache.set_snapshot(node_id, patched.snapshot) else 0

    def _vips_for(self, node_id: str, mesh_name: str) -> Mapping[str, str] | None:
        """The VIP map the proxy's outbound listeners are made from: only the owner of its host's VIPs has one."""
        return self.vips.mesh(mesh_name).vips if self.vips is not None and node_id in self.vip_nodes else None

    async def _rebuild_proxy(self, node_id: str) -> int:
        if node_id not in self.connected:
            return 0  # disconnected while the pass ran (it yields): nothing to keep for it
        mesh_name, name = split_node_id(node_id)
        topo = self.topologies.get(mesh_name)
        if topo is None:
            return 0
        dataplane = topo.dataplanes.get(name)
        if dataplane is None:
            return 0  # not registered yet (or deleted): nothing to serve; keeps its last config
        memo = self.memos[mesh_name]
        try:
            identity = await self._identity(topo, dataplane, node_id)
            if node_id not in self.connected:
                return 0  # disconnected while its certificate was issued
            vips = self._vips_for(node_id, mesh_name)
            ctx = ProxyContext(topology=topo, dataplane=dataplane, identity=identity, memo=memo, vips=vips)
            with memo.for_proxy(node_id):
                snapshot = generate_snapshot(ctx)
            self.uses[node_id] = ctx.used_services
        except asyncio.CancelledError:
            self.builds.pop(node_id, None)
            raise
        except Exception as e:
            self.builds.pop(node_id, None)  # it keeps an older config: never patch that one
            delay = self.node_retries.failed(node_id, time.monotonic())
            # One line per mesh and kind of error per interval: an expired CA fails every proxy of the mesh on
            # every pass, which must not become a line per proxy per pass.
            self.errors.report(("proxy", mesh_name, type(e).__name__),
                               "cannot build config for dataplane, keeping the previous one", error=e,
                               extra={"mesh": mesh_name, "dataplane": name, "retry_in": delay},
                               traceback=not isinstance(e, CaError | InconsistentSnapshot))
            return 0
        self.node_retries.succeeded(node_id)
        self.builds[node_id] = ProxyBuild(snapshot, tuple(ctx.assignments),
                                          identity.fingerprint if identity is not None else None, vips)
        return 1 if self.cache.set_snapshot(node_id, snapshot) else 0

    async def _rebuild_ingress(self, node_id: str) -> int:
        """A zone ingress's config from every mesh's topology (loading the meshes no dataplane here uses)."""
        name = ingress_name(node_id)
        assert name is not None
        try:
            try:
                ingress = await self.store.get(ZONE_INGRESS, name)
            except NotFound:
                return 0  # not registered yet (or deleted): nothing to serve
            mesh_type = REGISTRY.by_name("Mesh")
            assert mesh_type is not None
            meshes = [m.meta.name for m in (await self.store.list(mesh_type)).items]
            for mesh in meshes:
                if mesh not in self.topologies:
                    await self._rebuild_mesh_guarded(mesh)
            topologies = [self.topologies[m] for m in meshes if m in self.topologies]
            with self.ingress_memo.for_proxy(node_id):
                snapshot = generate_ingress(ingress, topologies, self.ingress_memo)
        except asyncio.CancelledError:
            raise
        except Exception as e:
            delay = self.node_retries.failed(node_id, time.monotonic())
            self.errors.report(("ingress", name, type(e).__name__),
                               "cannot build config for zone ingress, keeping the previous one", error=e,
                               extra={"zoneIngress": name, "retry_in": delay},
                               traceback=not isinstance(e, InconsistentSnapshot))
            return 0
        self.node_retries.succeeded(node_id)
        return 1 if self.cache.set_snapshot(node_id, snapshot) else 0

    async def _identity(self, topo: MeshTopology, dataplane: Resource, node_id: str) -> Identity | None:
        if topo.ca_bundle_pem is None:
            return None
        tags = identity_tags(dataplane)  # inbounds' tags, or an outbound-only proxy's kuma.io/workload label
        cert = await self.identities.identity_for(topo.mesh, (topo.name, dataplane.meta.name),
                                                  tags.get(SERVICE_TAG, ()), tags)
        if cert is None:
            return None
        for callback in self.on_identity:
            callback(node_id, cert)
        return Identity(cert_pem=cert.cert_pem, key_pem=cert.key_pem, fingerprint=f"{cert.serial}")


def _version(resource: Resource | None) -> tuple[int, object]:
    """A stored resource's version; with its creation time, since a resource deleted and created again in one
    debounce window starts over at version 1 (its content may differ)."""
    return (resource.meta.version, resource.meta.creation_time) if resource is not None else (-1, None)


def _mesh_wide(topo: MeshTopology) -> tuple[object, ...]:
    """What every proxy of the mesh depends on: the Mesh, every policy (by version), the CA bundle."""
    policies = tuple(sorted((t, p.meta.name, p.meta.version) for t, ps in topo.policies.items() for p in ps))
    return (topo.mesh.meta.version, policies, topo.ca_bundle_pem)
