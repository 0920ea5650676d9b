"""What flows where over KDS: the types each direction carries and which stored resources go to a peer."""

from __future__ import annotations

from collections.abc import Callable

from controlplane.ca import used_secrets
from controlplane.resources import load_all
from controlplane.resources.base import Meta, Resource, ResourceType
from controlplane.resources.dataplane import DATAPLANE
from controlplane.resources.insights import (
    DATAPLANE_INSIGHT,
    ZONE_INGRESS_INSIGHT,
    DataplaneInsightSpec,
    SubscriptionStatus,
    ZoneIngressInsightSpec,
)
from controlplane.resources.instance import CONTROL_PLANE_INSTANCE
from controlplane.resources.mesh import MESH
from controlplane.resources.secret import SECRET
from controlplane.resources.zone import ZONE_INGRESS
from controlplane.store.base import ListQuery, ResourceStore

from .naming import ORIGIN_GLOBAL, ORIGIN_LABEL, ORIGIN_ZONE, ZONE_LABEL
from .sync import SendType


def policy_types() -> list[ResourceType]:
    return sorted((t for t in load_all().all() if t.is_policy), key=lambda t: t.name)


def global_to_zone_types() -> list[ResourceType]:
    """Meshes first (a policy or secret needs its mesh), then the Secrets the meshes' CAs use, every policy
    type, then other zones' ZoneIngresses. No GlobalSecret goes to zones: global's are its own signing keys and
    revocation lists (zone and user tokens), which zones must never hold."""
    return [MESH, SECRET, *policy_types(), ZONE_INGRESS]


async def ca_secrets(store: ResourceStore) -> Callable[[Meta], bool]:
    """Which mesh Secrets go to zones: those a Mesh's CA backends use (Kuma's UsedSecrets), i.e. the builtin
    CAs' certificate and key (a zone signs its dataplanes' identities with the key, so it must have it) and the
    secrets of provided CAs. Every other Secret stays on global (dataplane token signing keys are per zone)."""
    meshes = (await store.list(MESH, ListQuery())).items
    wanted = {(m.meta.name, name) for m in meshes for name in used_secrets(m)}
    return lambda m: (m.mesh, m.name) in wanted


def zone_to_global_types() -> list[ResourceType]:
    """The zone's instances' heartbeat records first: global judges whether the subscriptions in the insights
    that follow are live by them (controlplane/xds/liveness.py)."""
    return [CONTROL_PLANE_INSTANCE, DATAPLANE, DATAPLANE_INSIGHT, ZONE_INGRESS, ZONE_INGRESS_INSIGHT]


def _from_zone(m: Meta) -> bool:
    return m.labels.get(ORIGIN_LABEL) == ORIGIN_ZONE


def global_sends(zone: str) -> list[SendType]:
    """On global, for `zone`: what global owns, and every other zone's ZoneIngresses (never the zone's own)."""
    def other_zones_ingress(m: Meta) -> bool:
        return _from_zone(m) and m.labels.get(ZONE_LABEL) != zone

    return [SendType(t, other_zones_ingress) if t is ZONE_INGRESS
            else SendType(t, prepare=ca_secrets) if t is SECRET
            else SendType(t, lambda m: not _from_zone(m))
            for t in global_to_zone_types()]


def zone_sends(zone: str) -> list[SendType]:
    """On a zone: its own resources only, not what global sent it."""
    def own(m: Meta) -> bool:
        labels = m.labels
        return labels.get(ORIGIN_LABEL) != ORIGIN_GLOBAL and labels.get(ZONE_LABEL) in (None, zone)

    return [SendType(t, own, transform=summarise_insight if t in (DATAPLANE_INSIGHT, ZONE_INGRESS_INSIGHT) else None)
            for t in zone_to_global_types()]


SUMMARY_SUBSCRIPTIONS = 2


def summarise_insight(r: Resource) -> Resource:
    """What global needs of a DataplaneInsight: online/offline (connect and disconnect times, and the instance
    whose heartbeat record, synced too, tells a live zone instance from a dead one), versions, the last NACK,
    certificate state and host DNS; not the xDS counters nor the subscription's last update time, which change on
    every push and its ACKs (each push in the zone would become a KDS message to global). So an insight reaches
    global only when something global shows changed. The two newest subscriptions."""
    spec = r.spec
    if not isinstance(spec, DataplaneInsightSpec | ZoneIngressInsightSpec):
        return r
    subs = []
    for sub in sorted(spec.subscriptions, key=lambda s: s.connect_time)[-SUMMARY_SUBSCRIPTIONS:]:
        subs.append(sub.model_copy(update={"status": SubscriptionStatus()}))
    return Resource(r.type, r.meta, spec.model_copy(update={"subscriptions": subs}))
