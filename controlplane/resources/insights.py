"""DataplaneInsight: what the control plane knows about a dataplane's connection (read-only to users).

Written by the xDS server (connect/disconnect, per-type sent/ACK/NACK counts, config version, certificate);
`kumactl inspect dataplanes` and `/meshes/{mesh}/dataplanes/_overview` read online/offline from it.
"""

from __future__ import annotations

from pydantic import Field

from .base import ResourceType, Scope, Spec, register


class DiscoveryCounters(Spec):
    responses_sent: int = 0
    responses_acknowledged: int = 0
    responses_rejected: int = 0


class SubscriptionStatus(Spec):
    last_update_time: str | None = None
    total: DiscoveryCounters = DiscoveryCounters()
    cds: DiscoveryCounters = DiscoveryCounters()
    eds: DiscoveryCounters = DiscoveryCounters()
    lds: DiscoveryCounters = DiscoveryCounters()
    rds: DiscoveryCounters = DiscoveryCounters()
    sds: DiscoveryCounters = DiscoveryCounters()


class LastNack(Spec):
    type: str
    version: str
    error_detail: str
    time: str


class Subscription(Spec):
    id: str
    control_plane_instance_id: str
    connect_time: str
    disconnect_time: str | None = None
    status: SubscriptionStatus = SubscriptionStatus()
    config_version: str | None = None  # the last ACKed version of each type, joined
    kuma_dp_version: str | None = None
    envoy_version: str | None = None
    last_nack: LastNack | None = None


class MTls(Spec):
    certificate_expiration_time: str | None = None
    last_certificate_regeneration: str | None = None
    certificate_regenerations: int = 0


HOST_DNS_STATES = ("configured", "delegated", "reapplied", "rewritten", "given-up", "failed")


class HostDns(Spec):
    """What kuma-dp last reported about its host's resolver (a kuma-vm addition; Kuma has no host DNS):
    `configured` (pointed at the stub), `delegated` (left to root's `kuma-dp dns configure`), `reapplied` (another
    program rewrote it, pointed back), `rewritten` (another program rewrote it: .mesh names do not resolve),
    `given-up` (rewritten again and again: kuma-dp stopped), `failed` (could not point it back)."""

    state: str
    message: str
    time: str


class DataplaneInsightSpec(Spec):
    subscriptions: list[Subscription] = []
    m_tls: MTls | None = Field(default=None, alias="mTLS")  # Kuma's spelling
    host_dns: HostDns | None = None

    @property
    def online(self) -> bool:
        return bool(self.subscriptions) and self.subscriptions[-1].disconnect_time is None


DATAPLANE_INSIGHT = register(ResourceType(
    name="DataplaneInsight", plural="dataplane-insights", singular="dataplane-insight", scope=Scope.MESH,
    spec_cls=DataplaneInsightSpec, flat=True, readonly=True,
    description="Connection state of a dataplane, kept by the control plane.",
))


class ZoneIngressInsightSpec(Spec):
    """A zone ingress's connections to its zone control plane (Kuma's ZoneIngressInsight)."""

    subscriptions: list[Subscription] = []

    @property
    def online(self) -> bool:
        return bool(self.subscriptions) and self.subscriptions[-1].disconnect_time is None


ZONE_INGRESS_INSIGHT = register(ResourceType(
    name="ZoneIngressInsight", plural="zone-ingress-insights", singular="zone-ingress-insight", scope=Scope.GLOBAL,
    spec_cls=ZoneIngressInsightSpec, flat=True, readonly=True,
    description="Connection state of a zone ingress, kept by its zone control plane.",
))


def insight_type_of(rtype_name: str) -> ResourceType:
    """The insight kept for a proxy resource type: DataplaneInsight for a Dataplane, ZoneIngressInsight for a
    ZoneIngress."""
    return ZONE_INGRESS_INSIGHT if rtype_name == "ZoneIngress" else DATAPLANE_INSIGHT
