"""Zone and ZoneIngress: the multi-zone pieces (KDS and ingress behaviour come with their issues)."""

from __future__ import annotations

from .base import ResourceType, Scope, Spec, register
from .dataplane import SERVICE_TAG
from .errors import Violations
from .fields import check_address, check_name, check_port, check_tags


class ZoneSpec(Spec):
    enabled: bool = True


ZONE = register(ResourceType(
    name="Zone", plural="zones", singular="zone", scope=Scope.GLOBAL, spec_cls=ZoneSpec, flat=True,
    name_is_label=True, description="A zone known to the global control plane; disabled zones are refused.",
))


class IngressNetworking(Spec):
    address: str
    advertised_address: str | None = None
    port: int
    advertised_port: int | None = None

    def check(self, v: Violations, path: str) -> None:
        check_address(v, f"{path}.address", self.address)
        check_address(v, f"{path}.advertisedAddress", self.advertised_address, required=False)
        check_port(v, f"{path}.port", self.port)
        check_port(v, f"{path}.advertisedPort", self.advertised_port, required=False)
        if (self.advertised_address is None) != (self.advertised_port is None):
            v.add(f"{path}.advertisedPort",
                  "advertisedAddress and advertisedPort go together: set both or neither")


class AvailableService(Spec):
    """One distinct tag set of a service the ingress fronts, as Kuma lists it (tags, instances, mesh,
    externalService), plus `ports`: the apps' real ports (a kuma-vm addition), so callers in other zones open
    `<service>.mesh:<port>` as well as port 80. Kept current by the zone (controlplane/xds/ingress_services.py)."""

    tags: dict[str, str]
    instances: int = 1
    mesh: str
    external_service: bool = False
    ports: list[int] = []

    def check(self, v: Violations, path: str) -> None:
        check_tags(v, f"{path}.tags", self.tags, required=(SERVICE_TAG,))
        check_name(v, f"{path}.mesh", self.mesh, label=True)
        if self.instances < 0:
            v.add(f"{path}.instances", "cannot be negative")
        for i, port in enumerate(self.ports):
            check_port(v, f"{path}.ports[{i}]", port)


class ZoneIngressSpec(Spec):
    zone: str | None = None
    networking: IngressNetworking
    available_services: list[AvailableService] = []

    def check(self, v: Violations, path: str) -> None:
        if self.zone is not None:
            check_name(v, "zone", self.zone, label=True)
        self.networking.check(v, "networking")
        for i, s in enumerate(self.available_services):
            s.check(v, f"availableServices[{i}]")


ZONE_INGRESS = register(ResourceType(
    name="ZoneIngress", plural="zone-ingresses", singular="zone-ingress", scope=Scope.GLOBAL,
    spec_cls=ZoneIngressSpec, flat=True,
    description="A zone's ingress proxy and the services reachable through it.",
))


class KdsTypeStats(Spec):
    responses_sent: int = 0
    resources_sent: int = 0
    responses_acknowledged: int = 0
    responses_rejected: int = 0
    responses_received: int = 0  # zone -> global
    resources_rejected: int = 0  # zone -> global: resources global refused (NACKed)
    last_nack: str | None = None


class KdsSubscriptionStatus(Spec):
    last_update_time: str | None = None
    total: KdsTypeStats = KdsTypeStats()
    stat: dict[str, KdsTypeStats] = {}


class KumaCpVersion(Spec):
    version: str = ""


class ZoneVersion(Spec):
    kuma_cp: KumaCpVersion = KumaCpVersion()


class ZoneSubscription(Spec):
    id: str
    global_instance_id: str
    connect_time: str
    disconnect_time: str | None = None
    status: KdsSubscriptionStatus = KdsSubscriptionStatus()
    version: ZoneVersion = ZoneVersion()


class ZoneInsightSpec(Spec):
    subscriptions: list[ZoneSubscription] = []
    environment: str | None = None  # universal | kubernetes, as the zone says


ZONE_INSIGHT = register(ResourceType(
    name="ZoneInsight", plural="zone-insights", singular="zone-insight", scope=Scope.GLOBAL,
    spec_cls=ZoneInsightSpec, flat=True, readonly=True,
    description="A zone's KDS connections to global, kept by the global control plane.",
))
