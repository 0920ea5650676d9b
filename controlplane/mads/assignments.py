"""The monitoring assignments of every dataplane, from the store, kept current.

One MonitoringAssignment per dataplane selected by a MeshMetric with a Prometheus backend (Kuma's MADS v1
shape: mesh, service, one target per dataplane). A backend with a `clientId` is given only to the
Prometheus whose `kuma_sd_configs` `client_id` (the DiscoveryRequest's node id) is the same; a backend
without one to every client. Zone ingresses and dataplanes no MeshMetric selects are not assigned.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from dataclasses import dataclass, field
from typing import Any

from controlplane.policies.mesh_metric import POLICY, merged_conf, prometheus_backends
from controlplane.resources.base import REGISTRY, Resource
from controlplane.resources.dataplane import DataplaneSpec, identifying_service
from controlplane.store.base import ChangeEvent, ResourceStore
from controlplane.supervise import Supervisor
from controlplane.xds.generate.targeting import effective_target_ref, in_precedence_order, precedence_key
from controlplane.xds.store_view import ALL_MESHES, StoreView

log = logging.getLogger("kuma.mads")

TYPE_URL = "type.googleapis.com/kuma.observability.v1.MonitoringAssignment"
DEBOUNCE = 0.05  # seconds: a burst of writes (a kuma-dp registering, kumactl apply -f) is one recomputation


def matching(policies: list[Resource], dataplane: Resource) -> list[Resource]:
    """The MeshMetrics whose top-level targetRef selects `dataplane`, lowest precedence first (Kuma's order,
    as controlplane/xds/generate/rules.py's `matched`)."""
    selecting = [p for p in policies
                 if effective_target_ref(getattr(p.spec, "target_ref", None)).selects_dataplane(dataplane)]
    return in_precedence_order(
        selecting, key=lambda p: precedence_key(effective_target_ref(getattr(p.spec, "target_ref", None))),
        name=lambda p: p.meta.name)


def scrape_labels(dataplane: Resource, zone: str) -> dict[str, str]:
    """Labels of a dataplane's target: its first inbound's tags (or its gateway's), and its zone."""
    spec = dataplane.spec
    assert isinstance(spec, DataplaneSpec)
    net = spec.networking
    tags = dict(net.gateway.tags if net.gateway is not None else (net.inbound[0].tags if net.inbound else {}))
    if zone:
        tags.setdefault("kuma.io/zone", zone)
    return tags


@dataclass(frozen=True)
class DataplaneMetrics:
    """What one dataplane publishes: its merged MeshMetric conf and where it is scraped."""

    mesh: str
    name: str
    service: str
    address: str  # where Prometheus reaches it (the advertised address, if any)
    listen: str  # where kuma-dp listens (networking.address)
    conf: dict[str, Any]
    labels: dict[str, str]

    def assignment(self, backend: dict[str, Any]) -> dict[str, Any]:
        """A MonitoringAssignment (kuma.observability.v1) in proto3 JSON, as an Any."""
        return {"@type": TYPE_URL, "mesh": self.mesh, "service": self.service, "labels": {},
                "targets": [{"name": self.name, "scheme": _scheme(backend),
                             "address": f"{_host(self.address)}:{backend['port']}", "metricsPath": backend["path"],
                             "labels": self.labels}]}

    def for_client(self, client_id: str) -> list[dict[str, Any]]:
        return [self.assignment(b) for b in prometheus_backends(self.conf)
                if not b.get("clientId") or b.get("clientId") == client_id]


def _scheme(backend: dict[str, Any]) -> str:
    """kuma-dp serves a ProvidedTLS backend over TLS (agent/metrics_watch.py)."""
    return "https" if (backend.get("tls") or {}).get("mode") == "ProvidedTLS" else "http"


def _host(address: str) -> str:
    return f"[{address}]" if ":" in address else address


def compute(dataplanes: list[Resource], policies: dict[str, list[Resource]], zone: str) -> dict[tuple[str, str],
                                                                                                 DataplaneMetrics]:
    out: dict[tuple[str, str], DataplaneMetrics] = {}
    for dp in dataplanes:
        spec = dp.spec
        if not isinstance(spec, DataplaneSpec):
            continue
        conf = merged_conf(matching(policies.get(dp.meta.mesh, []), dp))
        if conf is None:
            continue
        net = spec.networking
        service = identifying_service(dp)  # Kuma: an outbound-only proxy's workload label, else "unknown"
        out[(dp.meta.mesh, dp.meta.name)] = DataplaneMetrics(
            mesh=dp.meta.mesh, name=dp.meta.name, service=service,
            address=net.advertised_address or net.address, listen=net.address, conf=conf,
            labels=scrape_labels(dp, zone))
    return out


@dataclass
class Assignments:
    """The current DataplaneMetrics of every dataplane, recomputed after store changes. `changed()` gives an
    event that is set at the next change (long-polling clients wait on it)."""

    store: ResourceStore
    zone: str
    supervisor: Supervisor
    name: str = "mads-assignments"
    current: dict[tuple[str, str], DataplaneMetrics] = field(default_factory=dict)
    _changed: asyncio.Event = field(default_factory=asyncio.Event)
    _task: asyncio.Task[None] | None = None
    _ready: asyncio.Event = field(default_factory=asyncio.Event)

    def changed(self) -> asyncio.Event:
        return self._changed

    async def wait_ready(self) -> None:
        await self._ready.wait()

    def for_client(self, client_id: str) -> tuple[str, list[dict[str, Any]]]:
        """(version, resources) for one Prometheus: the version is the hash of what it is given."""
        resources = [a for key in sorted(self.current) for a in self.current[key].for_client(client_id)]
        text = json.dumps(resources, sort_keys=True, separators=(",", ":"))
        return hashlib.blake2b(text.encode(), digest_size=8).hexdigest(), resources

    def of(self, mesh: str, name: str) -> DataplaneMetrics | None:
        return self.current.get((mesh, name))

    def __post_init__(self) -> None:
        # What refreshes read, kept current from the watch (controlplane/xds/store_view.py): a change re-reads
        # the resources it names, not every Dataplane of the zone.
        self.view = StoreView(self.store)
        self._everything = True  # every dataplane to recompute (at start, after a Mesh or MeshMetric change)
        self._changed_dps: set[tuple[str, str]] = set()  # else only these (mesh, name)
        self.recomputed = 0  # dataplanes whose assignments were recomputed (tests, metrics)

    def on_event(self, event: ChangeEvent) -> bool:
        """Note a store change; whether it can change the assignments."""
        self.view.on_event(event)
        if event.op == "resync" or event.type in ("Mesh", POLICY):
            self._everything = True
        elif event.type == "Dataplane":
            self._changed_dps.add((event.mesh, event.name))
        else:
            return False
        return True

    async def refresh(self) -> None:
        """Recompute what the changes noted since the last refresh can have changed."""
        dp_type, policy_type = REGISTRY.by_name("Dataplane"), REGISTRY.by_name(POLICY)
        assert dp_type is not None and policy_type is not None
        everything, changed = self._everything, self._changed_dps
        self._everything, self._changed_dps = False, set()  # changes from now on: the next refresh
        policies: dict[str, list[Resource]] = {}
        for p in await self.view.list(policy_type, ALL_MESHES):
            policies.setdefault(p.meta.mesh, []).append(p)
        if not policies:
            new: dict[tuple[str, str], DataplaneMetrics] = {}  # no MeshMetric: no dataplane to read
            self._everything = True  # the dataplanes' changes were not followed meanwhile
        elif everything:
            dataplanes = await self.view.list(dp_type, ALL_MESHES)
            new = compute(dataplanes, policies, self.zone)
            self.recomputed += len(dataplanes)
        else:
            by_key = {(d.meta.mesh, d.meta.name): d for d in await self.view.list(dp_type, ALL_MESHES)}
            new = dict(self.current)
            for key in changed:
                new.pop(key, None)
                if (dp := by_key.get(key)) is not None:
                    new.update(compute([dp], policies, self.zone))
            self.recomputed += len(changed)
        if new != self.current or not self._ready.is_set():
            self.current = new
            event, self._changed = self._changed, asyncio.Event()
            event.set()
            log.debug("monitoring assignments recomputed", extra={"dataplanes": len(new)})
        self._ready.set()

    async def _watch(self) -> None:
        async with self.store.watch() as events:
            self.view.start_watching()
            self._everything = True
            try:
                await self.refresh()  # after subscribing: nothing written meanwhile is missed
                while True:
                    if not self.on_event(await events.get()):
                        continue
                    await asyncio.sleep(DEBOUNCE)
                    while not events.empty():
                        self.on_event(events.get_nowait())
                    await self.refresh()
            finally:
                self.view.stop_watching()

    async def start(self) -> None:
        self._task = self.supervisor.spawn(self.name, self._watch)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
