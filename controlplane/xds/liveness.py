"""Which subscription of a DataplaneInsight speaks for the dataplane, and whether it is still connected.

Several kuma-cp instances share one store; each writes its own subscriptions into a dataplane's insight. The
newest subscription (by connect time) is the dataplane's current one (Kuma's rule). It counts as connected
while it has no disconnect time and the instance that wrote it is alive: every instance rewrites its own
ControlPlaneInstance record every heartbeat (controlplane/resources/instance.py, written by
controlplane/xds/instances.py), so an instance killed with -9, which never writes the disconnects, is noticed
when its record goes stale (older than heartbeat * STALE_HEARTBEATS). One write per instance per heartbeat
tells about all of its proxies; insights are written only when what they say changes.

Readers pass the instances' last heartbeats (`Heartbeats`: instance id -> time, from `instance_heartbeats`).
A subscription whose instance has no record (an instance just starting, a record global has not received yet,
or an instance older than the records) is judged by its own `status.lastUpdateTime`, else its connect time, so
it is not called dead early. A zone's records reach global over KDS under zone-qualified names; the instance id
is their display name.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from controlplane.kds.naming import DISPLAY_NAME_LABEL
from controlplane.resources.base import Resource
from controlplane.resources.insights import DataplaneInsightSpec, Subscription, ZoneIngressInsightSpec
from controlplane.resources.instance import CONTROL_PLANE_INSTANCE, ControlPlaneInstanceSpec
from controlplane.resources.zone import ZoneSubscription
from controlplane.store.base import ResourceStore

STALE_HEARTBEATS = 3  # missed heartbeats before an open subscription counts as gone

Heartbeats = Mapping[str, datetime]  # instance id -> the last heartbeat of its ControlPlaneInstance record


def parse_time(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def instance_id_of(record: Resource) -> str:
    """The instance a ControlPlaneInstance record is the heartbeat of: its name, or on global, where a zone's
    records are stored under zone-qualified names, the name the zone gave it."""
    return record.meta.labels.get(DISPLAY_NAME_LABEL) or record.meta.name


def heartbeats_of(records: Iterable[Resource]) -> dict[str, datetime]:
    beats: dict[str, datetime] = {}
    for r in records:
        if isinstance(r.spec, ControlPlaneInstanceSpec):
            t = parse_time(r.spec.last_heartbeat_time)
            if t is not None:
                beats[instance_id_of(r)] = t
    return beats


async def instance_heartbeats(store: ResourceStore) -> dict[str, datetime]:
    """Every instance's last heartbeat, from one list of the (few) ControlPlaneInstance records."""
    return heartbeats_of((await store.list(CONTROL_PLANE_INSTANCE)).items)


def newest(spec: DataplaneInsightSpec | ZoneIngressInsightSpec) -> Subscription | None:
    return max(spec.subscriptions, key=lambda s: s.connect_time, default=None)


def last_seen(sub: Subscription | ZoneSubscription, beats: Heartbeats | None = None) -> datetime | None:
    """When the subscription (a dataplane's or a zone's) was last known to be true: its disconnect, else its
    instance's last heartbeat, else (no record of the instance) its own last update or connect time."""
    ended = parse_time(sub.disconnect_time)
    if ended is not None:
        return ended
    if beats is not None and isinstance(sub, Subscription):
        beat = beats.get(sub.control_plane_instance_id)
        if beat is not None:
            return beat
    return parse_time(sub.status.last_update_time) or parse_time(sub.connect_time)


def connected(sub: Subscription | None, heartbeat: float, beats: Heartbeats, now: datetime | None = None) -> bool:
    if sub is None or sub.disconnect_time is not None:
        return False
    seen = last_seen(sub, beats)
    now = now or datetime.now(UTC)
    return seen is not None and (now - seen).total_seconds() <= heartbeat * STALE_HEARTBEATS


def online(spec: DataplaneInsightSpec | ZoneIngressInsightSpec, heartbeat: float, beats: Heartbeats,
           now: datetime | None = None) -> bool:
    return connected(newest(spec), heartbeat, beats, now)


def offline_since(spec: DataplaneInsightSpec | ZoneIngressInsightSpec, heartbeat: float, beats: Heartbeats,
                  now: datetime | None = None) -> float | None:
    """Seconds the dataplane has been offline (None while online): since its newest subscription ended, or,
    for one left open by a dead instance, since that instance's last heartbeat."""
    now = now or datetime.now(UTC)
    sub = newest(spec)
    if sub is None:
        return None
    if connected(sub, heartbeat, beats, now):
        return None
    seen = last_seen(sub, beats)
    return (now - seen).total_seconds() if seen is not None else None


def merge_subscriptions(stored: Iterable[dict[str, Any]], ours: Iterable[dict[str, Any]], instance_id: str,
                        cap: int) -> list[dict[str, Any]]:
    """Stored subscriptions of other instances kept as they are, this instance's replaced by ours (by id),
    oldest first, at most `cap` (the oldest go)."""
    mine = list(ours)
    ids = {str(s.get("id")) for s in mine}
    kept = [s for s in stored
            if not (s.get("controlPlaneInstanceId") == instance_id and str(s.get("id")) in ids)]
    merged = sorted(kept + mine, key=lambda s: str(s.get("connectTime", "")))
    return merged[-cap:]
