"""Dataplane: one proxy (kuma-dp + Envoy) and the service instances behind it."""

from __future__ import annotations

from dataclasses import replace
from typing import Literal

from .base import Resource, ResourceType, Scope, Spec, register
from .errors import Violations
from .fields import check_address, check_duration, check_port, check_tags

SERVICE_TAG = "kuma.io/service"
PROTOCOL_TAG = "kuma.io/protocol"
ZONE_TAG = "kuma.io/zone"
# Kuma 2.14: the label that names an outbound-only (or tag-free) dataplane's workload, and so its identity.
WORKLOAD_LABEL = "kuma.io/workload"
# Kuma's name for "this proxy has no service" (mesh_proto.ServiceUnknown), in metrics, MADS and insights.
SERVICE_UNKNOWN = "unknown"
PROTOCOLS = ("tcp", "http", "http2", "grpc", "kafka")


def check_protocol_tag(v: Violations, path: str, tags: dict[str, str]) -> None:
    proto = tags.get(PROTOCOL_TAG)
    if proto is not None and proto not in PROTOCOLS:
        v.add(f'{path}["{PROTOCOL_TAG}"]',
              f"{proto!r} is not a known protocol: use one of {', '.join(PROTOCOLS)}")


class TcpProbe(Spec):
    pass


class ServiceProbe(Spec):
    interval: str | None = None
    timeout: str | None = None
    unhealthy_threshold: int | None = None
    healthy_threshold: int | None = None
    tcp: TcpProbe | None = None

    def check(self, v: Violations, path: str) -> None:
        check_duration(v, f"{path}.interval", self.interval)
        check_duration(v, f"{path}.timeout", self.timeout)
        for name in ("unhealthy_threshold", "healthy_threshold"):
            value = getattr(self, name)
            if value is not None and value < 1:
                alias = "unhealthyThreshold" if name.startswith("un") else "healthyThreshold"
                v.add(f"{path}.{alias}", "must be at least 1")


class Health(Spec):
    ready: bool = True


class Inbound(Spec):
    kuma_unsupported = frozenset({"name", "protocol"})

    port: int
    service_port: int | None = None
    service_address: str | None = None
    address: str | None = None
    tags: dict[str, str]
    service_probe: ServiceProbe | None = None
    health: Health | None = None
    state: Literal["Ready", "NotReady", "Ignored"] | None = None

    def check(self, v: Violations, path: str) -> None:
        check_port(v, f"{path}.port", self.port)
        if self.service_port != 0:  # Kuma: 0 means "not set" (the workload listens on `port`)
            check_port(v, f"{path}.servicePort", self.service_port, required=False)
        check_address(v, f"{path}.serviceAddress", self.service_address, required=False, ip_only=True)
        check_address(v, f"{path}.address", self.address, required=False, ip_only=True)
        if not self.tags:
            # Kuma 2.14 accepts it for its MeshService mode (Experimental.InboundTagsDisabled): the inbound,
            # named by `name` and typed by `protocol`, becomes a port of a MeshService generated from the
            # dataplane's kuma.io/workload label, which callers reach through that MeshService. kuma-vm has no
            # MeshService resources (nor inbound `name`/`protocol`), so no caller could ever address such an
            # inbound; refusing says so instead of serving an unreachable listener.
            v.add(f"{path}.tags", "an inbound without tags (Kuma's MeshService mode: a port of the MeshService "
                                  "generated from the dataplane's kuma.io/workload label) is not supported by "
                                  "kuma-vm yet, which has no MeshService resources: give the inbound tags with "
                                  f"{SERVICE_TAG}")
        else:
            check_tags(v, f"{path}.tags", self.tags, required=(SERVICE_TAG,))
        check_protocol_tag(v, f"{path}.tags", self.tags)
        if self.service_probe:
            self.service_probe.check(v, f"{path}.serviceProbe")

    @property
    def service(self) -> str:
        return self.tags[SERVICE_TAG]

    @property
    def workload_port(self) -> int:
        """The port the application itself listens on (Kuma: servicePort, else port)."""
        return self.service_port or self.port


class Outbound(Spec):
    kuma_unsupported = frozenset({"backendRef"})

    port: int
    address: str | None = None
    tags: dict[str, str]

    def check(self, v: Violations, path: str) -> None:
        check_port(v, f"{path}.port", self.port)
        check_address(v, f"{path}.address", self.address, required=False, ip_only=True)
        check_tags(v, f"{path}.tags", self.tags, required=(SERVICE_TAG,))

    @property
    def service(self) -> str:
        return self.tags[SERVICE_TAG]


class Gateway(Spec):
    type: Literal["DELEGATED", "BUILTIN"] = "DELEGATED"
    tags: dict[str, str]

    def check(self, v: Violations, path: str) -> None:
        check_tags(v, f"{path}.tags", self.tags, required=(SERVICE_TAG,))
        proto = self.tags.get(PROTOCOL_TAG)
        if proto is not None and proto != "tcp":  # Kuma: a gateway's own traffic is TCP; routes say more
            v.add(f'{path}.tags["{PROTOCOL_TAG}"]', f"a gateway's protocol tag must be 'tcp' (or left out), not "
                                                    f"{proto!r}")


class Admin(Spec):
    port: int

    def check(self, v: Violations, path: str) -> None:
        check_port(v, f"{path}.port", self.port)


class TransparentProxying(Spec):
    kuma_unsupported = frozenset({"reachableServices", "reachableBackends", "ipFamilyMode"})

    redirect_port_inbound: int | None = None
    redirect_port_outbound: int | None = None
    direct_access_services: list[str] | None = None

    def check(self, v: Violations, path: str) -> None:
        check_port(v, f"{path}.redirectPortInbound", self.redirect_port_inbound, required=False)
        check_port(v, f"{path}.redirectPortOutbound", self.redirect_port_outbound, required=False)


class Networking(Spec):
    kuma_unsupported = frozenset({"listeners"})

    address: str
    advertised_address: str | None = None
    inbound: list[Inbound] = []
    outbound: list[Outbound] = []
    gateway: Gateway | None = None
    admin: Admin | None = None
    transparent_proxying: TransparentProxying | None = None

    def check(self, v: Violations, path: str) -> None:
        check_dataplane_address(v, f"{path}.address", self.address)
        check_address(v, f"{path}.advertisedAddress", self.advertised_address, required=False)
        # Kuma 2.14 accepts a dataplane with neither inbounds nor a gateway: an outbound-only proxy (a batch job,
        # a client VM, usually with transparentProxying). Its identity: see `identity_service` below.
        if self.inbound and self.gateway is not None:
            v.add(f"{path}.inbound", f"inbound cannot be defined for {self.gateway.type.lower()} gateways")
        if self.outbound and self.gateway is not None and self.gateway.type == "BUILTIN":
            v.add(f"{path}.outbound", "outbound cannot be defined for builtin gateways")
        seen: dict[tuple[str, int], int] = {}
        for i, inbound in enumerate(self.inbound):
            inbound.check(v, f"{path}.inbound[{i}]")
            check_no_loop(v, f"{path}.inbound[{i}]", inbound, self.address)
            key = (inbound.address or self.address, inbound.port)
            if key in seen:
                v.add(f"{path}.inbound[{i}].port",
                      f"port {inbound.port} is already used by inbound[{seen[key]}]")
            seen[key] = i
        taken: dict[tuple[str, int], int] = {}
        for i, outbound in enumerate(self.outbound):
            outbound.check(v, f"{path}.outbound[{i}]")
            key = (outbound.address or "127.0.0.1", outbound.port)
            if key in taken:
                v.add(f"{path}.outbound[{i}].port",
                      f"{key[0]}:{key[1]} is already used by outbound[{taken[key]}]")
            taken[key] = i
        if self.gateway:
            self.gateway.check(v, f"{path}.gateway")
        if self.admin:
            self.admin.check(v, f"{path}.admin")
            self.check_admin_port(v, f"{path}.admin.port", self.admin.port)
        if self.transparent_proxying:
            self.transparent_proxying.check(v, f"{path}.transparentProxying")

    def check_admin_port(self, v: Violations, path: str, port: int) -> None:
        """Kuma: Envoy's admin listens on 127.0.0.1:port, so no inbound (its own address or its workload's)
        and no outbound may use that port on 127.0.0.1 or a wildcard address. The workload's address without
        serviceAddress is 127.0.0.1 here (Kuma: the dataplane's address), as the inbound cluster uses it."""
        for i, inbound in enumerate(self.inbound):
            dataplane_ip = inbound.address or self.address
            workload_ip = inbound.service_address or LOOPBACK
            if (port == inbound.port and _overlaps_loopback(dataplane_ip)) or \
                    (port == inbound.workload_port and _overlaps_loopback(workload_ip)):
                v.add(path, f"must differ from inbound: inbound[{i}] uses port {port} on {LOOPBACK}")
                return
        for i, outbound in enumerate(self.outbound):
            if port == outbound.port and _overlaps_loopback(outbound.address or LOOPBACK):
                v.add(path, f"must differ from outbound: outbound[{i}] uses port {port} on {LOOPBACK}")
                return


LOOPBACK = "127.0.0.1"


def _overlaps_loopback(address: str) -> bool:
    return address in (LOOPBACK, "0.0.0.0", "::")


def check_dataplane_address(v: Violations, path: str, address: str) -> None:
    """Kuma: required, an IP or a DNS name, and never a wildcard (others must be able to reach it there)."""
    if address in ("0.0.0.0", "::"):
        v.add(path, f"must not be 0.0.0.0 or ::: give the address other dataplanes reach this one at, not "
                    f"{address!r}")
        return
    check_address(v, path, address)


def check_no_loop(v: Violations, path: str, inbound: Inbound, dataplane_address: str) -> None:
    """Kuma: an inbound whose application address:port is its own address:port would send traffic back into
    Envoy. Kuma compares serviceAddress with the dataplane's address and with the inbound's own address."""
    if not inbound.service_address:
        return
    same_port = not inbound.service_port or inbound.service_port == inbound.port
    if same_port and inbound.service_address in (dataplane_address, inbound.address):
        v.add(f"{path}.serviceAddress", f"serviceAddress and servicePort must differ from address and port: "
                                        f"{inbound.service_address}:{inbound.workload_port} is the inbound itself, "
                                        "so traffic would loop back into Envoy")


class DataplaneSpec(Spec):
    kuma_unsupported = frozenset({"metrics", "probes"})

    networking: Networking

    def check(self, v: Violations, path: str) -> None:
        self.networking.check(v, "networking")

    def services(self) -> list[str]:
        if self.networking.gateway:
            return [self.networking.gateway.tags[SERVICE_TAG]]
        return [i.service for i in self.networking.inbound]

    def tag_sets(self) -> list[dict[str, str]]:
        """Each inbound's tags, and the gateway's (what a Mesh's dataplane constraints are checked against)."""
        sets = [dict(i.tags) for i in self.networking.inbound]
        if self.networking.gateway:
            sets.append(dict(self.networking.gateway.tags))
        return sets

    def tags(self) -> dict[str, set[str]]:
        """Every tag value over all inbounds (what a dataplane token's tags are checked against)."""
        out: dict[str, set[str]] = {}
        sources = [i.tags for i in self.networking.inbound]
        if self.networking.gateway:
            sources.append(self.networking.gateway.tags)
        for tags in sources:
            for k, value in tags.items():
                out.setdefault(k, set()).add(value)
        return out


def identity_tags(dataplane: Resource) -> dict[str, set[str]]:
    """The tags a dataplane's mTLS identity carries (its certificate's SPIFFE IDs and kuma:// URIs), as Kuma
    2.14's `identityTags`: its inbounds' (or gateway's) tags when they name a `kuma.io/service`; otherwise,
    for an outbound-only dataplane, `kuma.io/service` = its `kuma.io/workload` label; otherwise none (with mTLS
    on, Kuma then cannot give it an identity; kuma-vm refuses its bootstrap saying so)."""
    spec = dataplane.spec
    assert isinstance(spec, DataplaneSpec)
    tags = spec.tags()
    if tags.get(SERVICE_TAG):
        return tags
    workload = dataplane.meta.labels.get(WORKLOAD_LABEL)
    return {SERVICE_TAG: {workload}} if workload else {}


def identifying_service(dataplane: Resource) -> str:
    """The one service name a proxy is shown and measured under (Kuma's IdentifyingName): its first
    `kuma.io/service` (inbounds or gateway, else the workload label), or Kuma's "unknown"."""
    spec = dataplane.spec
    assert isinstance(spec, DataplaneSpec)
    services = spec.services()  # the first inbound's, in the document's order, as Kuma
    return services[0] if services else dataplane.meta.labels.get(WORKLOAD_LABEL) or SERVICE_UNKNOWN


def no_identity_reason(dataplane: Resource) -> str | None:
    """Why a dataplane cannot get an mTLS identity (None when it can): the bootstrap and the xDS layer say it."""
    if identity_tags(dataplane).get(SERVICE_TAG):
        return None
    return (f"dataplane {dataplane.meta.name!r} has no inbound or gateway with a {SERVICE_TAG} tag and no "
            f"{WORKLOAD_LABEL!r} label, so it cannot have an mTLS identity in mesh {dataplane.meta.mesh!r} (as "
            f"in Kuma 2.14): add the label `{WORKLOAD_LABEL}: <name>` to the Dataplane (its SPIFFE ID becomes "
            f"spiffe://{dataplane.meta.mesh}/<name>), or an inbound")


DATAPLANE = register(ResourceType(
    name="Dataplane", plural="dataplanes", singular="dataplane", scope=Scope.MESH,
    spec_cls=DataplaneSpec, flat=True,
    description="One proxy and the service instances (inbounds) behind it.",
))


def with_zone_tag(dataplane: Resource, zone: str) -> Resource:
    """The Dataplane as its zone control plane stores it: every inbound tagged `kuma.io/zone` with this zone,
    whatever the definition claims (Kuma's zone control plane does the same), so policies can select by zone and
    routes split by it. Unchanged without a zone name."""
    spec = dataplane.spec
    assert isinstance(spec, DataplaneSpec)
    if not zone or all(i.tags.get(ZONE_TAG) == zone for i in spec.networking.inbound):
        return dataplane
    inbound = [i.model_copy(update={"tags": {**i.tags, ZONE_TAG: zone}}) for i in spec.networking.inbound]
    networking = spec.networking.model_copy(update={"inbound": inbound})
    return replace(dataplane, spec=spec.model_copy(update={"networking": networking}))
