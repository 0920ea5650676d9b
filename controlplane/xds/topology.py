"""A mesh as the generators see it: computed once per (debounced) change and shared by every proxy.

Everything per-mesh lives here (services and their endpoints, protocols, policies by type, mTLS); per-proxy
work in the generators only picks from it.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property

from controlplane.resources.base import Resource
from controlplane.resources.dataplane import PROTOCOL_TAG, ZONE_TAG, DataplaneSpec, Inbound
from controlplane.resources.mesh import MeshSpec, MtlsBackend

from .remote_endpoints import LOCAL_PRIORITY, REMOTE_PRIORITY, remote_services
from .resources import content_hash


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where other proxies send a service's traffic: one healthy inbound of a local dataplane (its inbound
    listener), or another zone's ingress fronting `weight` instances of it (priority 1: failover)."""

    address: str
    port: int
    dataplane: str  # the dataplane, or the other zone's ZoneIngress
    tags: tuple[tuple[str, str], ...]  # sorted items: hashable, so endpoints can be part of memo keys
    zone: str = ""  # "" in a zone without a name
    priority: int = LOCAL_PRIORITY
    weight: int = 1

    @property
    def remote(self) -> bool:
        return self.priority != LOCAL_PRIORITY

    @property
    def key(self) -> tuple[str, int]:
        return (self.address, self.port)


@dataclass(frozen=True)
class MeshTopology:
    mesh: Resource
    generation: int
    dataplanes: Mapping[str, Resource]
    endpoints: Mapping[str, Sequence[Endpoint]]  # service -> healthy endpoints, sorted
    protocols: Mapping[str, str]  # service -> protocol every instance agrees on (else tcp)
    policies: Mapping[str, Sequence[Resource]]  # policy type name -> policies, sorted by name
    service_ports: Mapping[str, tuple[int, ...]] = field(default_factory=dict)  # service -> its apps' real ports
    endpoint_keys: Mapping[str, str] = field(default_factory=dict)  # service -> content key of its endpoints
    ca_bundle_pem: bytes | None = None  # the mesh CA(s) proxies trust; None: mTLS off
    zone: str = ""  # the zone this control plane serves ("" when unnamed)
    # dataplane name -> (the Dataplane, what its inbounds contribute): what the next topology reuses for the
    # very same Dataplane objects (the store view hands out the same object while a Dataplane is unchanged).
    contributions: Mapping[str, tuple[Resource, tuple[_Contribution, ...]]] = field(
        default_factory=dict, compare=False, repr=False)

    @property
    def name(self) -> str:
        return self.mesh.meta.name

    @cached_property  # asked per proxy: computed once per topology (frozen: fields never change)
    def mtls_backend(self) -> MtlsBackend | None:
        spec = self.mesh.spec
        assert isinstance(spec, MeshSpec)
        return spec.mtls.enabled() if spec.mtls else None

    @cached_property
    def mtls_enabled(self) -> bool:
        return self.mtls_backend is not None and self.ca_bundle_pem is not None

    @cached_property
    def permissive(self) -> bool:
        b = self.mtls_backend
        return b is not None and b.mode == "PERMISSIVE"

    def protocol(self, service: str) -> str:
        return self.protocols.get(service, "tcp")

    def services(self) -> list[str]:
        return sorted(self.endpoints)


# One inbound's part of the topology: its service, protocol, application port, and its endpoint (None when
# it is not healthy).
_Contribution = tuple[str, str, int, Endpoint | None]


def _contributions(dp: Resource, zone: str) -> tuple[_Contribution, ...]:
    spec = dp.spec
    assert isinstance(spec, DataplaneSpec)
    out = []
    for inbound in spec.networking.inbound:
        endpoint = None
        if is_healthy(inbound):
            tags = {**inbound.tags, ZONE_TAG: zone} if zone else inbound.tags
            endpoint = Endpoint(endpoint_address(spec, inbound), inbound.port, dp.meta.name,
                                tuple(sorted(tags.items())), zone)
        out.append((inbound.service, inbound.tags.get(PROTOCOL_TAG, "tcp"), inbound.workload_port, endpoint))
    return tuple(out)


def is_healthy(inbound: Inbound) -> bool:
    if inbound.state is not None:
        return inbound.state == "Ready"
    return inbound.health is None or inbound.health.ready


def endpoint_address(dp: DataplaneSpec, inbound: Inbound) -> str:
    return inbound.address or dp.networking.advertised_address or dp.networking.address


def build_topology(mesh: Resource, dataplanes: Sequence[Resource], policies: Mapping[str, Sequence[Resource]],
                   generation: int, ca_bundle_pem: bytes | None, *, zone: str = "",
                   ingresses: Sequence[Resource] = (), previous: MeshTopology | None = None) -> MeshTopology:
    """`zone`: this control plane's zone; every local endpoint carries it as its `kuma.io/zone` tag (whatever the
    Dataplane claims), which is what routes split zones by. `ingresses`: the stored ZoneIngresses; other zones'
    ones become remote endpoints, in a mesh with mTLS on. `previous`: the mesh's topology before this one; what
    it computed for the very same Dataplane objects and for services whose endpoints are the same is reused
    (the result equals a topology built without it: tests/unit/test_topology_reuse.py)."""
    endpoints: dict[str, list[Endpoint]] = defaultdict(list)
    protocols: dict[str, set[str]] = defaultdict(set)
    ports: dict[str, set[int]] = defaultdict(set)
    reusable = previous.contributions if previous is not None and previous.zone == zone else {}
    contributions: dict[str, tuple[Resource, tuple[_Contribution, ...]]] = {}
    for dp in dataplanes:
        found = reusable.get(dp.meta.name)
        parts = found[1] if found is not None and found[0] is dp else _contributions(dp, zone)
        contributions[dp.meta.name] = (dp, parts)
        for service, protocol, port, endpoint in parts:
            protocols[service].add(protocol)
            ports[service].add(port)
            if endpoint is not None:
                endpoints[service].append(endpoint)
    spec = mesh.spec
    assert isinstance(spec, MeshSpec)
    if ca_bundle_pem is not None and spec.mtls is not None and spec.mtls.enabled() is not None:
        for service, remote in remote_services(mesh.meta.name, zone or None, ingresses).items():
            protocols[service].update(remote.protocols)
            ports[service].update(remote.ports)
            endpoints[service].extend(Endpoint(address, port, "", tags, rzone, REMOTE_PRIORITY, weight)
                                      for address, port, rzone, weight, tags in remote.endpoints)
    ordered = {svc: sorted(endpoints.get(svc, ()), key=lambda e: (e.priority, e.zone, e.address, e.port))
               for svc in protocols}
    keys = {}
    for svc, eps in ordered.items():
        # The same endpoints (mostly the very same objects: compared by identity first) keep their key.
        if previous is not None and (before := previous.endpoints.get(svc)) is not None and before == eps:
            keys[svc] = previous.endpoint_keys[svc]
        else:
            keys[svc] = content_hash(repr(eps).encode())
    # Services whose instances disagree on the protocol fall back to TCP, as Kuma does.
    agreed = {svc: next(iter(p)) if len(p) == 1 else "tcp" for svc, p in protocols.items()}
    return MeshTopology(
        mesh=mesh, generation=generation,
        dataplanes={dp.meta.name: dp for dp in dataplanes},
        # Every service known in the mesh, even with no healthy instance (its cluster exists, empty).
        endpoints=ordered,
        endpoint_keys=keys,
        protocols=agreed,
        service_ports={svc: tuple(sorted(p)) for svc, p in ports.items()},
        policies={t: sorted(ps, key=lambda p: p.meta.name) for t, ps in policies.items()},
        ca_bundle_pem=ca_bundle_pem,
        zone=zone,
        contributions=contributions,
    )
