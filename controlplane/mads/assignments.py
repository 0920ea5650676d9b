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
from controlplane.store.base import ListQuery, ResourceStore
from controlplane.supervise import Supervisor
from controlplane.xds.generate.targeting import effective_target_ref, in_precedence_order, precedence_key

log = logging.getLogger("kuma.mads")

TYPE_URL = "type.googleapis.com/kuma.observability.v1.MonitoringAssignment"
WATCHED_TYPES = frozenset({"Dataplane", "Mesh", POLICY})
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

    async def refresh(self) -> None:
        dp_type, policy_type = REGISTRY.by_name("Dataplane"), REGISTRY.by_name(POLICY)
        assert dp_type is not None and policy_type is not None
        dataplanes = (await self.store.list(dp_type, ListQuery())).items
        policies: dict[str, list[Resource]] = {}
        for p in (await self.store.list(policy_type, ListQuery())).items:
            policies.setdefault(p.meta.mesh, []).append(p)
        new = compute(dataplanes, policies, self.zone)
        if new != self.current or not self._ready.is_set():
            self.current = new
            event, self._changed = self._changed, asyncio.Event()
            event.set()
            log.debug("monitoring assignments recomputed", extra={"dataplanes": len(new)})
        self._ready.set()

    async def _watch(self) -> None:
        async with self.store.watch() as events:
            await self.refresh()  # after subscribing: nothing written meanwhile is missed
            while True:
                event = await events.get()
                if event.type not in WATCHED_TYPES and event.op != "resync":
                    continue
                await asyncio.sleep(DEBOUNCE)
                while not events.empty():
                    events.get_nowait()
                await self.refresh()

    async def start(self) -> None:
        self._task = self.supervisor.spawn(self.name, self._watch)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
