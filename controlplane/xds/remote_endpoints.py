"""Cross-zone endpoints: the ZoneIngresses of OTHER zones, as endpoints of a caller's services.

The input is what KDS stores in a zone: ZoneIngress resources of other zones synced from global (labelled
`kuma.io/zone`), each listing the services it fronts (`availableServices`: tags, instances, mesh). A caller
reaches a remote service through the ingress of the zone that runs it; the ingress routes by SNI
(`generate/envoy.sni`), so the caller's upstream TLS names the destination and still verifies its SPIFFE ID.
Remote endpoints sit at Envoy priority 1: local instances (priority 0) first, other zones as failover. Without
mTLS an ingress cannot route (a plain TCP stream carries no SNI), so a mesh without mTLS gets none.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping

from controlplane.resources.base import Resource
from controlplane.resources.dataplane import PROTOCOL_TAG, SERVICE_TAG, ZONE_TAG
from controlplane.resources.zone import AvailableService, ZoneIngressSpec

LOCAL_PRIORITY = 0
REMOTE_PRIORITY = 1


def ingress_zone(ingress: Resource) -> str | None:
    """The zone an ingress belongs to: its spec's zone, else the kuma.io/zone label KDS put on it."""
    spec = ingress.spec
    assert isinstance(spec, ZoneIngressSpec)
    return spec.zone or ingress.meta.labels.get(ZONE_TAG)


def ingress_address(spec: ZoneIngressSpec) -> tuple[str, int]:
    """Where other zones reach an ingress: its advertised address (the public side of a NAT), else its own."""
    net = spec.networking
    if net.advertised_address and net.advertised_port:
        return net.advertised_address, net.advertised_port
    return net.address, net.port


class RemoteService:
    """What other zones' ingresses say about one service of a mesh: where, how many, and how it speaks."""

    def __init__(self) -> None:
        self.endpoints: list[tuple[str, int, str, int, tuple[tuple[str, str], ...]]] = []  # addr, port, zone, w, tags
        self.protocols: set[str] = set()
        self.ports: set[int] = set()

    def add(self, address: str, port: int, zone: str, svc: AvailableService) -> None:
        tags = {**svc.tags, ZONE_TAG: zone}  # the zone that runs it, whatever the tags claim
        self.endpoints.append((address, port, zone, svc.instances, tuple(sorted(tags.items()))))
        self.protocols.add(svc.tags.get(PROTOCOL_TAG, "tcp"))
        self.ports.update(svc.ports)


def remote_services(mesh: str, local_zone: str | None, ingresses: Iterable[Resource]) -> Mapping[str, RemoteService]:
    """service -> what the other zones' ingresses offer of it in `mesh`. The local zone's own ingresses are
    skipped (local traffic goes direct), and so are services with no instance left. A zone cut off from global
    keeps the ingresses it last stored, so its callers keep failing over to them until they fail."""
    out: dict[str, RemoteService] = defaultdict(RemoteService)
    for ingress in sorted(ingresses, key=lambda r: r.meta.name):
        spec = ingress.spec
        assert isinstance(spec, ZoneIngressSpec)
        zone = ingress_zone(ingress)
        if not zone or zone == local_zone:
            continue
        address, port = ingress_address(spec)
        for svc in spec.available_services:
            if svc.mesh == mesh and svc.instances > 0 and not svc.external_service:
                out[svc.tags[SERVICE_TAG]].add(address, port, zone, svc)
    return dict(out)


RemoteView = dict[str, tuple[tuple[tuple[str, int, str, int, tuple[tuple[str, str], ...]], ...], tuple[str, ...],
                             tuple[int, ...]]]


def remote_view(mesh: str, local_zone: str | None, ingresses: Iterable[Resource]) -> RemoteView:
    """Everything a mesh's topology takes from the ZoneIngresses (`remote_services`), in a form that compares:
    when it is the same as before an ingress changed, the mesh's config cannot have changed either."""
    return {service: (tuple(remote.endpoints), tuple(sorted(remote.protocols)), tuple(sorted(remote.ports)))
            for service, remote in remote_services(mesh, local_zone, ingresses).items()}
