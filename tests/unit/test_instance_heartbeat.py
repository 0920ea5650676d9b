"""Liveness from per-instance heartbeat records (ControlPlaneInstance): one write per instance per heartbeat, no
insight rewritten when nothing changed, readers judging open subscriptions by their instance's record (falling back
to the subscription's own times without one), and the leader's cleanup of dead instances' records. On the real
store backends (memory and SQLite)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from envoy.config.core.v3.base_pb2 import Node

from controlplane.resources import Meta, Resource, from_wire
from controlplane.resources.codec import wire_time
from controlplane.resources.dataplane import DATAPLANE
from controlplane.resources.insights import DATAPLANE_INSIGHT, DataplaneInsightSpec
from controlplane.resources.instance import CONTROL_PLANE_INSTANCE, ControlPlaneInstanceSpec
from controlplane.store.base import NotFound, ResourceStore
from controlplane.store.memory import MemoryStore
from controlplane.store.sqlite import SqliteStore
from controlplane.xds.auth import Caller
from controlplane.xds.gc import DataplaneGc
from controlplane.xds.insights import InsightsRecorder
from controlplane.xds.instances import InstanceRecord, retention
from controlplane.xds.lifecycle import DataplaneLifecycle
from controlplane.xds.liveness import (
    STALE_HEARTBEATS,
    heartbeats_of,
    instance_heartbeats,
    offline_since,
    online,
)
from tests.unit.test_dataplane_liveness import NOW, spec, sub, ts

HB = 2.0  # heartbeat: stale after STALE_HEARTBEATS * HB = 6 s
CDS = "type.googleapis.com/envoy.config.cluster.v3.Cluster"


def ago(seconds: float) -> datetime:
    return NOW - timedelta(seconds=seconds)


@pytest.fixture(params=["memory", "sqlite"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[ResourceStore]:
    s: ResourceStore = MemoryStore() if request.param == "memory" else SqliteStore(tmp_path / "kuma.db")
    await s.start()
    await s.create(from_wire({"type": "Mesh", "name": "default"}))
    yield s
    await s.close()


def record(name: str, beat_ago: float, labels: dict[str, str] | None = None) -> Resource:
    return Resource(CONTROL_PLANE_INSTANCE, Meta(name=name, labels=labels or {}), ControlPlaneInstanceSpec(
        last_heartbeat_time=ts(beat_ago), start_time=ts(beat_ago + 600), mode="zone", zone="zone-1"))


# --- liveness ------------------------------------------------------------------------------------------------------

def test_an_open_subscription_is_live_while_its_instances_record_is_fresh() -> None:
    beats = {"a": ago(1), "dead": ago(20)}
    # Its own last update is a day old (nothing changed since: no insight write), its instance beats: online.
    idle = spec(sub("a", "1", 2 * 86400, seen_ago=86400))
    assert online(idle, HB, beats, NOW) and offline_since(idle, HB, beats, NOW) is None
    # Its instance's record is stale: offline since that instance's last heartbeat, whatever the subscription says.
    left_open = spec(sub("dead", "1", 600, seen_ago=15))
    assert not online(left_open, HB, beats, NOW)
    assert offline_since(left_open, HB, beats, NOW) == 20
    # Within the staleness window: still online.
    assert online(spec(sub("dead", "1", 600)), HB, {"dead": ago(STALE_HEARTBEATS * HB - 0.5)}, NOW)
    # No record of the instance (just started, or global has not received it yet): its own last update decides.
    assert online(spec(sub("new", "1", 600, seen_ago=1)), HB, beats, NOW)
    unknown = spec(sub("gone", "1", 600, seen_ago=30))
    assert not online(unknown, HB, beats, NOW) and offline_since(unknown, HB, beats, NOW) == 30
    # Closed: offline since the disconnect, however fresh its instance.
    closed = spec(sub("a", "1", 600, disconnected_ago=40))
    assert not online(closed, HB, beats, NOW) and offline_since(closed, HB, beats, NOW) == 40


def test_a_zones_records_on_global_are_read_by_the_instance_id_the_zone_gave_them() -> None:
    synced = record("cp-1-bcdfghjklmnpqrst", 1, {"kuma.io/origin": "zone", "kuma.io/zone": "zone-1",
                                                 "kuma.io/display-name": "cp-1"})
    beats = heartbeats_of([synced, record("cp-2", 30)])
    assert beats == {"cp-1": ago(1), "cp-2": ago(30)}
    assert online(spec(sub("cp-1", "1", 600)), HB, beats, NOW)
    assert not online(spec(sub("cp-2", "1", 600, seen_ago=1)), HB, beats, NOW)


# --- the recorder ----------------------------------------------------------------------------------------------------

async def _version(store: ResourceStore, name: str) -> int:
    return (await store.get(DATAPLANE_INSIGHT, name, "default")).meta.version


async def test_a_beat_writes_the_instance_record_and_no_insight_unless_one_changed(store: ResourceStore) -> None:
    rec = InsightsRecorder(store, "cp-a", heartbeat=HB, instance=InstanceRecord(store, "cp-a", zone="zone-1"))
    await rec.start()
    try:
        written = await store.get(CONTROL_PLANE_INSTANCE, "cp-a")  # on start, before any stream
        assert isinstance(written.spec, ControlPlaneInstanceSpec) and written.spec.zone == "zone-1"
        for i in range(3):
            rec.on_stream_open(i, f"default.dp-{i}", Node(id=f"default.dp-{i}"))
        await rec.flush()
        versions = [await _version(store, f"dp-{i}") for i in range(3)]
        first = written.meta.version
        for n in range(1, 4):  # heartbeats with nothing else happening: one write each, the record's
            await rec.beat()
            await rec.flush()
            beat = await store.get(CONTROL_PLANE_INSTANCE, "cp-a")
            assert beat.meta.version == first + n
            assert [await _version(store, f"dp-{i}") for i in range(3)] == versions
        assert rec.instance.writes == 4
        assert set(await instance_heartbeats(store)) == {"cp-a"}
        # Something an insight shows changes: that insight alone is written.
        rec.on_ack("default.dp-1", CDS, "2")
        await rec.flush()
        assert [await _version(store, f"dp-{i}") for i in range(3)] == [versions[0], versions[1] + 1, versions[2]]
    finally:
        await rec.stop()
    # A graceful stop: the disconnects are written, then the record goes.
    with pytest.raises(NotFound):
        await store.get(CONTROL_PLANE_INSTANCE, "cp-a")
    for i in range(3):
        stored = (await store.get(DATAPLANE_INSIGHT, f"dp-{i}", "default")).spec
        assert isinstance(stored, DataplaneInsightSpec) and stored.subscriptions[-1].disconnect_time is not None


async def test_a_record_deleted_or_rewritten_under_the_instance_is_written_again(store: ResourceStore) -> None:
    instance = InstanceRecord(store, "cp-a")
    await instance.beat()
    await store.delete(CONTROL_PLANE_INSTANCE, "cp-a")  # the leader took it for a dead instance's
    await instance.beat()
    current = await store.get(CONTROL_PLANE_INSTANCE, "cp-a")
    # Another writer in between: what the instance wrote last is not the stored version any more.
    other = await store.update(Resource(CONTROL_PLANE_INSTANCE, current.meta, record("cp-a", 3 * 86400).spec))
    await instance.beat()
    after = await store.get(CONTROL_PLANE_INSTANCE, "cp-a")
    assert after.meta.version == other.meta.version + 1
    assert isinstance(after.spec, ControlPlaneInstanceSpec)
    assert after.spec.last_heartbeat_time > record("cp-a", 3 * 86400).spec.last_heartbeat_time  # type: ignore[attr-defined]
    assert instance.writes == 3


# --- readers: the leader's GC, the lifecycle -------------------------------------------------------------------------

async def _dataplane(store: ResourceStore, name: str, insight: DataplaneInsightSpec) -> None:
    await store.create(from_wire({"type": "Dataplane", "mesh": "default", "name": name,
                                  "labels": {"kuma.io/managed-by": "kuma-dp"}, "networking": {
                                      "address": "127.0.0.1", "inbound": [
                                          {"port": 10000, "servicePort": 8080, "tags": {"kuma.io/service": name}}]}}))
    await store.create(Resource(DATAPLANE_INSIGHT, Meta(name=name, mesh="default"), insight))


async def test_gc_judges_open_subscriptions_by_their_instances_records(store: ResourceStore) -> None:
    await store.create(record("alive", 1))
    await store.create(record("killed", 60))
    # Idle for a day on a live instance: its insight was not rewritten, its instance beats. Kept.
    await _dataplane(store, "idle", spec(sub("alive", "1", 2 * 86400, seen_ago=86400)))
    # Left open by an instance killed a minute ago (grace 10 s): cleaned up, though its last update is recent.
    await _dataplane(store, "orphaned", spec(sub("killed", "1", 600, seen_ago=55)))
    gc = DataplaneGc(store, grace=10, heartbeat=HB)
    assert await gc.sweep(NOW) == [("default", "orphaned")]
    assert {d.meta.name for d in (await store.list(DATAPLANE)).items} == {"idle"}


async def test_gc_deletes_only_records_long_dead(store: ResourceStore) -> None:
    keep = retention(HB, 10)
    assert keep >= STALE_HEARTBEATS * HB * 10 and keep >= 2 * 10  # far past the staleness window and grace
    await store.create(record("alive", 1))
    await store.create(record("dead-recently", keep - 5))  # its dataplanes still judged by it
    await store.create(record("dead-long", keep + 5))
    # Another zone's, synced here: its own zone deletes it, and the deletion comes over KDS.
    await store.create(record("synced-bcdfghjklmnpqrst", keep + 5, {"kuma.io/origin": "zone", "kuma.io/zone": "z2",
                                                                     "kuma.io/display-name": "synced"}))
    await DataplaneGc(store, grace=10, heartbeat=HB).sweep(NOW)
    left = {r.meta.name for r in (await store.list(CONTROL_PLANE_INSTANCE)).items}
    assert left == {"alive", "dead-recently", "synced-bcdfghjklmnpqrst"}
    # What a dead instance's record said, its left-open subscription's own last update says once it is gone:
    # offline (and by then long past the grace period).
    beats = await instance_heartbeats(store)
    assert not online(spec(sub("dead-long", "1", keep + 600, seen_ago=keep)), HB, beats, NOW)


async def test_a_dataplane_moved_to_a_live_instance_is_not_unregistered(store: ResourceStore) -> None:
    """The lifecycle reads the wall clock: these records are written relative to it."""
    now = datetime.now(UTC)
    for name, beat in (("b", now), ("c", now - timedelta(seconds=60))):
        await store.create(Resource(CONTROL_PLANE_INSTANCE, Meta(name=name), ControlPlaneInstanceSpec(
            last_heartbeat_time=wire_time(beat), start_time=wire_time(now - timedelta(days=2)))))
    lifecycle = DataplaneLifecycle(store, None, None, instance_id="a", heartbeat=HB)  # type: ignore[arg-type]
    caller = Caller("default", "x", from_wire({"type": "Dataplane", "mesh": "default", "name": "x", "networking": {
        "address": "127.0.0.1", "inbound": [{"port": 10000, "tags": {"kuma.io/service": "x"}}]}}), registering=True)
    day_ago = wire_time(now - timedelta(days=1))
    # Its newest subscription is on instance b, idle for a day (no insight write), and b beats: it moved there.
    await store.create(Resource(DATAPLANE_INSIGHT, Meta(name="x", mesh="default"), DataplaneInsightSpec.model_validate(
        {"subscriptions": [{"id": "2", "controlPlaneInstanceId": "b", "connectTime": day_ago,
                            "status": {"lastUpdateTime": day_ago}}]})))
    assert await lifecycle._connected_elsewhere(caller) == "b"
    # On an instance whose record went stale a minute ago, however recent its own last update: not elsewhere.
    current = await store.get(DATAPLANE_INSIGHT, "x", "default")
    fresh = wire_time(now)
    await store.update(Resource(DATAPLANE_INSIGHT, current.meta, DataplaneInsightSpec.model_validate(
        {"subscriptions": [{"id": "3", "controlPlaneInstanceId": "c", "connectTime": day_ago,
                            "status": {"lastUpdateTime": fresh}}]})))
    assert await lifecycle._connected_elsewhere(caller) is None
