"""Subscriptions from several instances: merging, online status with heartbeats, and the leader's GC."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from envoy.config.core.v3.base_pb2 import Node

from controlplane.resources import REGISTRY, Meta, Resource, from_wire
from controlplane.resources.insights import DataplaneInsightSpec, ZoneIngressInsightSpec
from controlplane.store.base import Conflict
from controlplane.store.memory import MemoryStore
from controlplane.xds.auth import Caller
from controlplane.xds.gc import DataplaneGc
from controlplane.xds.insights import InsightsRecorder
from controlplane.xds.lifecycle import DataplaneLifecycle
from controlplane.xds.liveness import merge_subscriptions, offline_since, online

# A day ahead of the store's clock, whenever in a long test session these tests run: the Dataplanes they
# store were last written about a day before NOW.
NOW = datetime.now(UTC) + timedelta(days=1)
DAY = 86400


def ts(seconds_ago: float) -> str:
    return (NOW - timedelta(seconds=seconds_ago)).isoformat().replace("+00:00", "Z")


def sub(instance: str, sid: str, connected_ago: float, *, seen_ago: float | None = None,
        disconnected_ago: float | None = None) -> dict[str, Any]:
    s: dict[str, Any] = {"id": sid, "controlPlaneInstanceId": instance, "connectTime": ts(connected_ago),
                         "status": {"lastUpdateTime": ts(seen_ago if seen_ago is not None else connected_ago)}}
    if disconnected_ago is not None:
        s["disconnectTime"] = ts(disconnected_ago)
    return s


def spec(*subs: dict[str, Any]) -> DataplaneInsightSpec:
    return DataplaneInsightSpec.model_validate({"subscriptions": list(subs)})


def test_merge_keeps_other_instances_and_replaces_ours_by_id() -> None:
    stored = [sub("a", "1", 30, disconnected_ago=20), sub("b", "1", 10)]
    ours = [{**sub("a", "1", 30, disconnected_ago=20), "configVersion": "cds:2"}, sub("a", "2", 5)]
    merged = merge_subscriptions(stored, ours, "a", cap=5)
    assert [(s["controlPlaneInstanceId"], s["id"]) for s in merged] == [("a", "1"), ("b", "1"), ("a", "2")]
    assert merged[0]["configVersion"] == "cds:2"
    assert [s["id"] for s in merge_subscriptions(stored, ours, "a", cap=2)] == ["1", "2"]  # oldest dropped


def test_online_is_the_newest_subscription_open_and_fresh() -> None:
    hb = 2.0
    beats = {"a": NOW - timedelta(seconds=1), "b": NOW - timedelta(seconds=1)}
    assert online(spec(sub("a", "1", 30, disconnected_ago=20), sub("b", "1", 10, seen_ago=1)), hb, beats, NOW)
    # Newest closed, even if an older one is open: offline (Kuma's rule).
    assert not online(spec(sub("b", "1", 30, seen_ago=1), sub("a", "2", 10, disconnected_ago=5)), hb, beats, NOW)
    # No record of its instance (none written yet, or not synced yet): judged by its own last update. Open but
    # not updated for more than three heartbeats: its instance died.
    dead = spec(sub("c", "1", 60, seen_ago=20))
    assert not online(dead, hb, beats, NOW)
    assert offline_since(dead, hb, beats, NOW) == 20
    assert online(spec(sub("c", "1", 60, seen_ago=5)), hb, beats, NOW)
    assert offline_since(spec(), hb, beats, NOW) is None


async def _store_with(*dataplanes: tuple[str, bool, DataplaneInsightSpec | None]) -> MemoryStore:
    store = MemoryStore()
    await store.start()
    await store.create(from_wire({"type": "Mesh", "name": "default"}))
    insight_type = REGISTRY.by_name("DataplaneInsight")
    assert insight_type is not None
    for name, managed, insight in dataplanes:
        doc: dict[str, Any] = {"type": "Dataplane", "mesh": "default", "name": name, "networking": {
            "address": "127.0.0.1",
            "inbound": [{"port": 10000, "servicePort": 8080, "tags": {"kuma.io/service": name}}]}}
        if managed:
            doc["labels"] = {"kuma.io/managed-by": "kuma-dp"}
        await store.create(from_wire(doc))
        if insight is not None:
            await store.create(Resource(insight_type, Meta(name=name, mesh="default"), insight))
    return store


async def test_gc_deletes_managed_dataplanes_offline_past_grace_and_their_insights() -> None:
    store = await _store_with(
        ("dead-instance", True, spec(sub("b", "1", 120, seen_ago=60))),  # killed instance: stale for 60 s
        ("closed-long-ago", True, spec(sub("a", "1", 120, disconnected_ago=60))),
        ("closed-recently", True, spec(sub("a", "1", 120, disconnected_ago=3))),  # within the grace period
        ("moved", True, spec(sub("a", "1", 120, disconnected_ago=60), sub("b", "1", 50, seen_ago=1))),
        ("operators", False, spec(sub("a", "1", 120, disconnected_ago=60))),
    )
    insight_type = REGISTRY.by_name("DataplaneInsight")
    assert insight_type is not None
    await store.create(Resource(insight_type, Meta(name="orphan", mesh="default"),
                                spec(sub("a", "1", 120, disconnected_ago=60))))
    gc = DataplaneGc(store, grace=10, heartbeat=2)
    deleted = await gc.sweep(NOW)
    assert sorted(deleted) == [("default", "closed-long-ago"), ("default", "dead-instance")]
    dp_type = REGISTRY.by_name("Dataplane")
    assert dp_type is not None
    left = {d.meta.name for d in (await store.list(dp_type)).items}
    assert left == {"closed-recently", "moved", "operators"}
    insights = {i.meta.name for i in (await store.list(insight_type)).items}
    assert insights == {"closed-recently", "moved", "operators"}  # deleted ones' and the orphan's gone


async def test_recorder_merges_into_another_instances_insight() -> None:
    store = await _store_with(("web-1", True, spec(sub("b", "7", 2 * DAY, seen_ago=2 * DAY))))  # before ours
    rec = InsightsRecorder(store, "a")
    rec.on_stream_open(1, "default.web-1", Node(id="default.web-1"))
    await rec.flush()
    rtype = REGISTRY.by_name("DataplaneInsight")
    assert rtype is not None
    stored = await store.get(rtype, "web-1", "default")
    assert isinstance(stored.spec, DataplaneInsightSpec)
    assert [(s.control_plane_instance_id, s.id) for s in stored.spec.subscriptions] == [("b", "7"), ("a", "1")]
    rec.on_stream_closed(1, "default.web-1")
    await rec.flush()
    stored = await store.get(rtype, "web-1", "default")
    assert isinstance(stored.spec, DataplaneInsightSpec)
    assert len(stored.spec.subscriptions) == 2 and stored.spec.subscriptions[-1].disconnect_time is not None


async def test_gc_keeps_dataplanes_this_instance_serves_whatever_the_insight_says() -> None:
    # Reconnected here a moment ago: the insight still holds the previous, ended connection.
    store = await _store_with(("back", True, spec(sub("a", "1", 120, disconnected_ago=60))))
    gc = DataplaneGc(store, grace=10, heartbeat=2, served=lambda: frozenset({"default.back"}))
    assert await gc.sweep(NOW) == []
    gc.served = frozenset
    assert await gc.sweep(NOW) == [("default", "back")]


async def test_reconnect_rewrites_the_managed_dataplane_so_the_leaders_cleanup_spares_it() -> None:
    # Disconnected a day before the store's clock.
    store = await _store_with(("back", True, spec(sub("b", "1", 2 * DAY + 60, disconnected_ago=2 * DAY))))
    dp_type = REGISTRY.by_name("Dataplane")
    assert dp_type is not None
    before = await store.get(dp_type, "back", "default")
    # The kuma-dp reconnects to another instance and registers the same definition it had.
    lifecycle = DataplaneLifecycle(store, None, None, instance_id="a")  # type: ignore[arg-type]
    wanted = before.with_meta(labels={}, version=0)
    await lifecycle._register(Caller("default", "back", wanted, registering=True))
    after = await store.get(dp_type, "back", "default")
    assert after.meta.version == before.meta.version + 1 and after.spec == before.spec
    assert after.meta.labels["kuma.io/managed-by"] == "kuma-dp"
    # The leader read the Dataplane before the rewrite: its versioned delete fails.
    with pytest.raises(Conflict):
        await store.delete(dp_type, "back", "default", version=before.meta.version)
    # Read after the rewrite: written within the grace period, so not offline yet, whatever the insight says.
    assert after.meta.modification_time is not None
    gc = DataplaneGc(store, grace=10, heartbeat=2)
    assert await gc.sweep(after.meta.modification_time + timedelta(seconds=5)) == []
    assert await gc.sweep(NOW) == [("default", "back")]  # a day later, still offline: cleaned up


def ingress_spec(*subs: dict[str, Any]) -> ZoneIngressInsightSpec:
    return ZoneIngressInsightSpec.model_validate({"subscriptions": list(subs)})


async def test_gc_cleans_up_this_zones_offline_ingresses_and_never_another_zones() -> None:
    store = MemoryStore()
    await store.start()
    ingress_type, insight_type = REGISTRY.by_name("ZoneIngress"), REGISTRY.by_name("ZoneIngressInsight")
    assert ingress_type is not None and insight_type is not None
    managed = {"kuma.io/managed-by": "kuma-dp"}
    for name, zone, insight in (("gone", "zone-1", ingress_spec(sub("a", "1", 120, disconnected_ago=60))),
                                ("up", "zone-1", ingress_spec(sub("a", "1", 120, seen_ago=1))),
                                ("theirs", "zone-2", None)):  # synced from global: no insight here
        await store.create(from_wire({"type": "ZoneIngress", "name": name, "zone": zone, "labels": managed,
                                      "networking": {"address": "10.0.0.1", "port": 10001}}))
        if insight is not None:
            await store.create(Resource(insight_type, Meta(name=name), insight))
    gc = DataplaneGc(store, grace=10, heartbeat=2, zone="zone-1")
    assert await gc.sweep(NOW) == [("", "gone")]
    assert {i.meta.name for i in (await store.list(ingress_type)).items} == {"up", "theirs"}
    assert {i.meta.name for i in (await store.list(insight_type)).items} == {"up"}
    served = DataplaneGc(store, grace=10, heartbeat=2, zone="zone-1", served=lambda: frozenset({"ingress:up"}))
    await store.update(Resource(insight_type, (await store.get(insight_type, "up")).meta,
                                ingress_spec(sub("a", "1", 120, disconnected_ago=60))))
    assert await served.sweep(NOW) == []  # its stream is open here, whatever the insight says


async def test_gc_counts_no_offline_time_from_before_it_started() -> None:
    """After the control plane was down for longer than the grace period, every stored subscription looks stale,
    yet the proxies are reconnecting: none is deleted before it had STALE_HEARTBEATS heartbeats plus the grace
    period from the cleanup's start to come back; then the ones that did not are."""
    store = await _store_with(
        ("left-open", True, spec(sub("a", "1", 600, seen_ago=300))),  # its instance was down for 5 minutes
        ("closed", True, spec(sub("a", "1", 600, disconnected_ago=300))),
    )
    gc = DataplaneGc(store, grace=10, heartbeat=2)
    gc.started_at = NOW - timedelta(seconds=15)  # 3 heartbeats + grace = 16 s
    assert await gc.sweep(NOW) == []
    gc.started_at = NOW - timedelta(seconds=17)
    assert sorted(await gc.sweep(NOW)) == [("default", "closed"), ("default", "left-open")]


async def test_gc_started_by_the_runtime_records_when() -> None:
    store = await _store_with()
    gc = DataplaneGc(store, grace=10, heartbeat=2, interval=3600)
    before = datetime.now(UTC)
    await gc.start()
    try:
        assert gc.started_at is not None and before <= gc.started_at <= datetime.now(UTC)
    finally:
        await gc.stop()


async def test_gc_passes_fed_by_events_read_only_the_insights_they_judge() -> None:
    served_here = {f"default.up-{i}" for i in range(150)}
    store = await _store_with(*((f"up-{i}", True, spec(sub("a", "1", 120, seen_ago=1))) for i in range(150)))
    insight_type = REGISTRY.by_name("DataplaneInsight")
    assert insight_type is not None
    gc = DataplaneGc(store, grace=10, heartbeat=2, served=lambda: frozenset(served_here))
    async with store.watch() as events:
        gc.view.start_watching()
        await gc.watched_pass(events, NOW)  # the first pass lists the insights once
        assert gc.insights_read == 150
        gc.insights_read = 0
        await gc.watched_pass(events, NOW)
        assert gc.insights_read == 0  # every dataplane is served here: nothing to read
        # One stops being served (its instance died: stale subscription), an insight loses its Dataplane,
        # a new dataplane registers and connects here: only the first two insights are read.
        served_here.discard("default.up-7")
        up7 = await store.get(insight_type, "up-7", "default")
        await store.update(Resource(insight_type, up7.meta, spec(sub("b", "1", 2 * DAY, seen_ago=2 * DAY))))
        dp_type = REGISTRY.by_name("Dataplane")
        assert dp_type is not None
        await store.delete(dp_type, "up-8", "default")
        await store.update(Resource(insight_type, (await store.get(insight_type, "up-8", "default")).meta,
                                    spec(sub("a", "1", 2 * DAY, disconnected_ago=2 * DAY))))
        await store.create(Resource(insight_type, Meta(name="new", mesh="default"), spec(sub("a", "2", 1))))
        served_here.add("default.new")
        await gc.watched_pass(events, NOW)
        assert gc.insights_read == 3  # up-7, up-8's orphan insight, and "new" (an insight without a Dataplane)
        left = {d.meta.name for d in (await store.list(dp_type)).items}
        assert "up-7" not in left and len(left) == 148
        insights = {i.meta.name for i in (await store.list(insight_type)).items}
        assert {"up-7", "up-8"}.isdisjoint(insights) and "new" in insights  # "new" is online: kept
