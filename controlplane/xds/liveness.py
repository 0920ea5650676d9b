"""Which subscription of a DataplaneInsight speaks for the dataplane, and whether it is still connected.

Several kuma-cp instances share one store; each writes its own subscriptions into a dataplane's insight. The
newest subscription (by connect time) is the dataplane's current one (Kuma's rule). It counts as connected
when it has no disconnect time and the instance that wrote it still refreshes it: every instance rewrites
`status.lastUpdateTime` of its open subscriptions every heartbeat interval (controlplane/xds/insights.py), so
an instance killed with -9, which never writes the disconnect, is noticed when that time goes stale.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from controlplane.resources.insights import DataplaneInsightSpec, Subscription, ZoneIngressInsightSpec
from controlplane.resources.zone import ZoneSubscription

STALE_HEARTBEATS = 3  # missed heartbeats before an open subscription counts as gone


def parse_time(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def newest(spec: DataplaneInsightSpec | ZoneIngressInsightSpec) -> Subscription | None:
    return max(spec.subscriptions, key=lambda s: s.connect_time, default=None)


def last_seen(sub: Subscription | ZoneSubscription) -> datetime | None:
    """When the subscription (a dataplane's or a zone's) was last known to be true: its disconnect, else its
    instance's last refresh."""
    return parse_time(sub.disconnect_time) or parse_time(sub.status.last_update_time) or parse_time(
        sub.connect_time)


def connected(sub: Subscription | None, heartbeat: float, now: datetime | None = None) -> bool:
    if sub is None or sub.disconnect_time is not None:
        return False
    seen = last_seen(sub)
    now = now or datetime.now(UTC)
    return seen is not None and (now - seen).total_seconds() <= heartbeat * STALE_HEARTBEATS


def online(spec: DataplaneInsightSpec | ZoneIngressInsightSpec, heartbeat: float, now: datetime | None = None) -> bool:
    return connected(newest(spec), heartbeat, now)


def offline_since(spec: DataplaneInsightSpec | ZoneIngressInsightSpec, heartbeat: float,
                  now: datetime | None = None) -> float | None:
    """Seconds the dataplane has been offline (None while online): since its newest subscription ended, or,
    for one left open by a dead instance, since that instance's last refresh."""
    now = now or datetime.now(UTC)
    sub = newest(spec)
    if sub is None:
        return None
    if connected(sub, heartbeat, now):
        return None
    seen = last_seen(sub)
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
