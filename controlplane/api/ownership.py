"""Who may write what in a multi-zone deployment (Kuma's rule): global owns meshes and policies, zones own their
dataplanes and ingresses. KDS copies each side's resources to the other; a write through the other side's API
would be overwritten by the next sync (or, on global, sent to every zone as if global owned it), so it is
refused with where to make it instead. KDS itself writes to the store, not through the API, so it is not
affected; reads are never refused; a standalone zone owns everything.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from controlplane.kds.naming import ORIGIN_GLOBAL, ORIGIN_LABEL, ORIGIN_ZONE, ZONE_LABEL
from controlplane.resources import ResourceType

# What zones create and send to global (controlplane/kds/types.py's zone -> global direction).
ZONE_OWNED = frozenset({"Dataplane", "DataplaneInsight", "ZoneIngress", "ZoneIngressInsight"})


def global_owned(rtype: ResourceType) -> bool:
    """Types only global creates (and sends to zones): meshes and every policy."""
    return rtype.name == "Mesh" or rtype.is_policy


@dataclass(frozen=True)
class Ownership:
    mode: str  # "global" or "zone"
    federated: bool = False  # a zone with a global address (a standalone zone owns everything)
    zone: str = ""

    def refusal(self, rtype: ResourceType, labels: Mapping[str, str] | None = None) -> str | None:
        """Why a write (create, update or delete) of this resource is not this control plane's, or None.
        `labels` are the stored resource's (or the written one's): they say where a copy came from."""
        origin = (labels or {}).get(ORIGIN_LABEL)
        if self.mode == "global":
            if rtype.name in ZONE_OWNED or origin == ORIGIN_ZONE:
                zone = (labels or {}).get(ZONE_LABEL)
                where = f"zone {zone!r}" if zone else "its zone"
                return (f"You are trying to change a {rtype.name} on the global control plane. In a multi-zone "
                        f"deployment it is created in a zone and synced to global: change it in {where} "
                        "(on that zone's control plane)")
            return None
        if not self.federated:
            return None
        if global_owned(rtype) or origin == ORIGIN_GLOBAL:
            return (f"You are trying to change a {rtype.name} on zone control plane {self.zone!r}. In a multi-zone "
                    "deployment it is applied on the global control plane and synced to every zone: apply it there")
        if origin == ORIGIN_ZONE and (labels or {}).get(ZONE_LABEL) not in (None, self.zone):
            return (f"This {rtype.name} belongs to zone {(labels or {}).get(ZONE_LABEL)!r} and reached this zone "
                    "through global: change it in its own zone")
        return None
