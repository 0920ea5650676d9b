"""ZoneInsight: status with heartbeats and the grace period, stats from the KDS streams, merging several globals."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from controlplane.kds.zone_insights import ZoneInsights, stats_doc, zone_status
from controlplane.resources.zone import ZONE_INSIGHT, ZoneInsightSpec
from controlplane.store.memory import MemoryStore

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


def ts(ago: float) -> str:
    return (NOW - timedelta(seconds=ago)).isoformat().replace("+00:00", "Z")


def spec(*subs: dict[str, Any]) -> ZoneInsightSpec:
    return ZoneInsightSpec.model_validate({"subscriptions": list(subs)})


def sub(sid: str, connected: float, *, seen: float | None = None, gone: float | None = None) -> dict[str, Any]:
    doc: dict[str, Any] = {"id": sid, "globalInstanceId": "g", "connectTime": ts(connected),
                           "status": {"lastUpdateTime": ts(seen if seen is not None else connected)}}
    if gone is not None:
        doc["disconnectTime"] = ts(gone)
    return doc


def test_online_while_fresh_then_through_the_grace_period_then_offline() -> None:
    def status(s: ZoneInsightSpec) -> str:
        return zone_status(s, flush=10, grace=30, now=NOW)
    assert status(spec(sub("1", 100, seen=5))) == "Online"
    assert status(spec(sub("1", 100, gone=20))) == "Online"  # a reconnect within the grace is not an outage
    assert status(spec(sub("1", 100, gone=40))) == "Offline"
    assert status(spec(sub("1", 300, seen=100))) == "Offline"  # its global instance died: stale heartbeat
    assert status(spec(sub("1", 300, gone=200), sub("2", 10, seen=1))) == "Online"  # the newest decides
    assert status(spec()) == "Offline" and zone_status(None, flush=10, grace=30) == "Offline"


def test_stats_per_type_from_both_streams() -> None:
    doc = stats_doc({
        "GlobalToZoneSync": {"types": {"Mesh": {"responses_sent": 2, "resources_sent": 3, "acked": 2, "nacked": 0,
                                                "last_nack": "", "responses_received": 0, "rejected": 0}}},
        "ZoneToGlobalSync": {"types": {"Dataplane": {"responses_sent": 0, "resources_sent": 0, "acked": 0,
                                                     "nacked": 0, "last_nack": "mesh 'x' does not exist",
                                                     "responses_received": 4, "rejected": 1}}}})
    assert doc["stat"]["Mesh"] == {"responsesSent": 2, "resourcesSent": 3, "responsesAcknowledged": 2,
                                   "responsesRejected": 0}
    assert doc["stat"]["Dataplane"] == {"responsesReceived": 4, "resourcesRejected": 1,
                                        "lastNack": "mesh 'x' does not exist"}
    assert doc["total"]["responsesSent"] == 2 and doc["total"]["resourcesRejected"] == 1


async def test_two_global_instances_keep_each_others_subscriptions() -> None:
    store = MemoryStore()
    await store.start()
    a, b = (ZoneInsights(store, name, dict) for name in ("global-a", "global-b"))
    a.opened("zone-1", version="1.0", environment="universal")
    await a.flush()
    a.closed("zone-1")
    await a.flush()
    b.opened("zone-1", version="1.0", environment="kubernetes")  # the zone moved to the other instance
    await b.flush()
    stored = (await store.get(ZONE_INSIGHT, "zone-1")).spec
    assert isinstance(stored, ZoneInsightSpec)
    assert [s.global_instance_id for s in stored.subscriptions] == ["global-a", "global-b"]
    assert stored.subscriptions[0].disconnect_time and stored.subscriptions[1].disconnect_time is None
    assert stored.environment == "kubernetes"
