"""What flows where over KDS: the types each direction carries and which stored resources go to a peer."""

from __future__ import annotations

from controlplane.resources import load_all
from controlplane.resources.base import Resource, ResourceType
from controlplane.resources.dataplane import DATAPLANE
from controlplane.resources.insights import DATAPLANE_INSIGHT
from controlplane.resources.mesh import MESH
from controlplane.resources.zone import ZONE_INGRESS

from .naming import ORIGIN_GLOBAL, ORIGIN_LABEL, ORIGIN_ZONE, ZONE_LABEL
from .sync import SendType


def policy_types() -> list[ResourceType]:
    return sorted((t for t in load_all().all() if t.is_policy), key=lambda t: t.name)


def global_to_zone_types() -> list[ResourceType]:
    """Meshes first (a policy needs its mesh), then every policy type, then other zones' ZoneIngresses.
    Secrets (mesh CA material, GlobalSecrets zones need) are not synced yet: see docs and the issue."""
    return [MESH, *policy_types(), ZONE_INGRESS]


def zone_to_global_types() -> list[ResourceType]:
    return [DATAPLANE, DATAPLANE_INSIGHT, ZONE_INGRESS]


def _from_zone(r: Resource) -> bool:
    return r.meta.labels.get(ORIGIN_LABEL) == ORIGIN_ZONE


def global_sends(zone: str) -> list[SendType]:
    """On global, for `zone`: what global owns, and every other zone's ZoneIngresses (never the zone's own)."""
    def other_zones_ingress(r: Resource) -> bool:
        return _from_zone(r) and r.meta.labels.get(ZONE_LABEL) != zone

    return [SendType(t, other_zones_ingress if t is ZONE_INGRESS else (lambda r: not _from_zone(r)))
            for t in global_to_zone_types()]


def zone_sends(zone: str) -> list[SendType]:
    """On a zone: its own resources only, not what global sent it."""
    def own(r: Resource) -> bool:
        labels = r.meta.labels
        return labels.get(ORIGIN_LABEL) != ORIGIN_GLOBAL and labels.get(ZONE_LABEL) in (None, zone)

    return [SendType(t, own) for t in zone_to_global_types()]
