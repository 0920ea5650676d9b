"""DataplaneInsight flushes write every changed insight in a few transactions (store.update_all/create_all)
and fall back to one versioned read-merge-write per insight when another writer got in between."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from envoy.config.core.v3.base_pb2 import Node

from controlplane.resources import Resource, from_wire
from controlplane.resources.base import ResourceType
from controlplane.resources.insights import DATAPLANE_INSIGHT, DataplaneInsightSpec
from controlplane.store.base import ListQuery
from controlplane.store.memory import MemoryStore
from controlplane.xds.insights import BATCH, LIST_OVER, InsightsRecorder
from tests.unit.waiting import wait_until


class CountingStore(MemoryStore):
    """The memory store, counting the calls a flush makes."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: dict[str, int] = {}

    def _count(self, name: str) -> None:
        self.calls[name] = self.calls.get(name, 0) + 1

    async def get(self, rtype: ResourceType, name: str, mesh: str = "") -> Resource:
        self._count("get")
        return await super().get(rtype, name, mesh)

    async def list(self, rtype: ResourceType, query: ListQuery | None = None) -> Any:
        self._count("list")
        return await super().list(rtype, query)

    async def create(self, resource: Resource) -> Resource:
        self._count("create")
        return await super().create(resource)

    async def create_all(self, resources: Sequence[Resource]) -> list[Resource]:
        self._count("create_all")
        return await super().create_all(resources)

    async def update(self, resource: Resource) -> Resource:
        self._count("update")
        return await super().update(resource)

    async def update_all(self, resources: Sequence[Resource]) -> list[Resource]:
        self._count("update_all")
        return await super().update_all(resources)


async def _store(*meshes: str) -> CountingStore:
    store = CountingStore()
    await store.start()
    for mesh in meshes:
        await store.create(from_wire({"type": "Mesh", "name": mesh}))
    store.calls.clear()
    return store


def _subs(store: MemoryStore, name: str, mesh: str = "default") -> list[tuple[str, str, bool]]:
    spec = store._data[(DATAPLANE_INSIGHT.name, mesh, name)].spec
    assert isinstance(spec, DataplaneInsightSpec)
    return [(s.control_plane_instance_id, s.id, s.disconnect_time is None) for s in spec.subscriptions]


def _push(rec: InsightsRecorder, n: int) -> None:
    """A config push ACKed by every one of `n` proxies: every insight's counters change."""
    for i in range(n):
        rec.on_ack(f"default.dp-{i}", "type.googleapis.com/envoy.config.cluster.v3.Cluster", "2")


async def test_a_connect_storm_and_a_push_are_a_few_transactions() -> None:
    store = await _store("default")
    rec = InsightsRecorder(store, "a")
    n = BATCH + LIST_OVER + 1
    for i in range(n):
        rec.on_stream_open(i, f"default.dp-{i}", Node(id=f"default.dp-{i}"))
    await rec.flush()
    # One list instead of a read per insight, then two create transactions.
    assert store.calls == {"list": 1, "create_all": 2}
    assert all(_subs(store, f"dp-{i}") == [("a", str(i), True)] for i in range(n))
    store.calls.clear()
    _push(rec, n)  # every insight rewritten, from what was stored
    await rec.flush()
    assert store.calls == {"update_all": 2}
    assert all(store._data[(DATAPLANE_INSIGHT.name, "default", f"dp-{i}")].meta.version == 2 for i in range(n))
    store.calls.clear()
    await rec.flush()
    assert store.calls == {}  # nothing changed, nothing written


async def test_another_writer_in_between_falls_back_to_read_merge_write() -> None:
    store = await _store("default")
    rec = InsightsRecorder(store, "a")
    for i in range(3):
        rec.on_stream_open(i, f"default.dp-{i}", Node(id=f"default.dp-{i}"))
    await rec.flush()
    # Another instance adds its subscription to dp-1's insight: our remembered version is stale now.
    current = await store.get(DATAPLANE_INSIGHT, "dp-1", "default")
    doc = current.spec.model_dump(by_alias=True, exclude_none=True)
    doc["subscriptions"].append({"id": "9", "controlPlaneInstanceId": "b", "connectTime": "2999-01-01T00:00:00Z",
                                 "status": {}})
    await store.update(Resource(DATAPLANE_INSIGHT, current.meta, DataplaneInsightSpec.model_validate(doc)))
    # And dp-2's insight is deleted (its Dataplane was unregistered) before it reconnects.
    await store.delete(DATAPLANE_INSIGHT, "dp-2", "default")
    for i in range(3):
        rec.on_stream_closed(i, f"default.dp-{i}")
    rec.on_stream_open(7, "default.dp-2", Node(id="default.dp-2"))
    store.calls.clear()
    await rec.flush()
    assert store.calls["update_all"] == 1 and store.calls["get"] == 3  # the batch failed: one by one
    assert _subs(store, "dp-0") == [("a", "0", False)]
    assert _subs(store, "dp-1") == [("a", "1", False), ("b", "9", True)]  # theirs kept
    assert _subs(store, "dp-2") == [("a", "2", False), ("a", "7", True)]  # created again
    store.calls.clear()
    rec.on_ack("default.dp-2", "type.googleapis.com/envoy.config.cluster.v3.Cluster", "2")
    rec.on_host_dns("default.dp-0", "configured", "systemd-resolved: ~mesh")
    rec.on_host_dns("default.dp-1", "configured", "systemd-resolved: ~mesh")
    await rec.flush()
    assert store.calls == {"update_all": 1}  # what was read one by one is the base of the next batch


async def test_an_insight_of_a_deleted_mesh_is_dropped() -> None:
    store = await _store("default", "gone")
    rec = InsightsRecorder(store, "a")
    rec.on_stream_open(1, "default.dp-1", Node(id="default.dp-1"))
    rec.on_stream_open(2, "gone.dp-2", Node(id="gone.dp-2"))
    await rec.flush()
    mesh = await store.get(from_wire({"type": "Mesh", "name": "gone"}).type, "gone")
    await store.delete(mesh.type, "gone")
    rec.on_ack("default.dp-1", "type.googleapis.com/envoy.config.cluster.v3.Cluster", "2")
    rec.on_ack("gone.dp-2", "type.googleapis.com/envoy.config.cluster.v3.Cluster", "2")
    await rec.flush()
    assert "gone.dp-2" not in rec._records
    assert _subs(store, "dp-1") == [("a", "1", True)]
    assert store._data[(DATAPLANE_INSIGHT.name, "default", "dp-1")].meta.version == 2


async def test_a_heartbeat_is_one_write_whatever_the_fleet() -> None:
    """Idle proxies cost no insight write: a beat writes this instance's ControlPlaneInstance record, nothing else."""
    store = await _store("default")
    rec = InsightsRecorder(store, "a")
    await rec.beat()  # on start: the record is created (a read finds none)
    n = LIST_OVER + 1
    for i in range(n):
        rec.on_stream_open(i, f"default.dp-{i}", Node(id=f"default.dp-{i}"))
    await rec.flush()
    for _ in range(3):
        store.calls.clear()
        await rec.beat()
        await rec.flush()
        assert store.calls == {"update": 1}  # the record, from what was written last: no read
    _push(rec, 1)
    store.calls.clear()
    await rec.flush()
    assert store.calls == {"update_all": 1}  # the one insight that changed


def _total(store: MemoryStore, name: str, counter: str = "responsesAcknowledged") -> int:
    spec = store._data[(DATAPLANE_INSIGHT.name, "default", name)].spec
    doc = spec.model_dump(by_alias=True, exclude_none=True)
    return int(doc["subscriptions"][-1]["status"].get("total", {}).get(counter, 0))


async def test_counters_wait_for_the_status_flush_and_urgent_changes_do_not() -> None:
    """A push changes every insight it reaches (counters, ACKed version): written at the status flush, not after
    every push. A connect, a disconnect, a NACK, a certificate or a host DNS report go at the next flush."""
    store = await _store("default")
    rec = InsightsRecorder(store, "a")
    for i in range(3):
        rec.on_stream_open(i, f"default.dp-{i}", Node(id=f"default.dp-{i}"))
    await rec.flush(urgent_only=True)  # connects are urgent
    assert store.calls["create_all"] == 1 and _total(store, "dp-0") == 0
    store.calls.clear()
    for _ in range(5):  # five pushes, ACKed by all
        _push(rec, 3)
        await rec.flush(urgent_only=True)
    assert store.calls == {}  # nothing written after each push
    rec.on_nack("default.dp-1", "type.googleapis.com/envoy.config.cluster.v3.Cluster", "3", "bad cluster")
    rec.on_stream_closed(2, "default.dp-2")
    await rec.flush(urgent_only=True)
    assert store.calls == {"update_all": 1}
    assert _total(store, "dp-1") == 5 and _total(store, "dp-1", "responsesRejected") == 1  # its counters went along
    assert _subs(store, "dp-2") == [("a", "2", False)] and _total(store, "dp-0") == 0
    store.calls.clear()
    await rec.flush()  # the status flush: the rest
    assert store.calls == {"update_all": 1} and _total(store, "dp-0") == 5
    store.calls.clear()
    await rec.flush()
    assert store.calls == {}


class FailingStore(CountingStore):
    """Fails the next `failures` batch writes, as a store that went away would."""

    failures = 0

    async def update_all(self, resources: Sequence[Resource]) -> list[Resource]:
        if self.failures:
            self.failures -= 1
            raise OSError("database is gone")
        return await super().update_all(resources)


async def test_a_failed_write_is_written_again_at_the_next_flush() -> None:
    """An insight is written only when it changes: one whose write failed (a disconnect, say) must not be
    forgotten until its next change."""
    store = FailingStore()
    await store.start()
    await store.create(from_wire({"type": "Mesh", "name": "default"}))
    rec = InsightsRecorder(store, "a")
    rec.on_stream_open(1, "default.dp-1", Node(id="default.dp-1"))
    await rec.flush()
    rec.on_stream_closed(1, "default.dp-1")
    store.failures = 1
    try:
        await rec.flush(urgent_only=True)
    except OSError:
        pass
    else:
        raise AssertionError("the store's failure was swallowed")
    assert _subs(store, "dp-1") == [("a", "1", True)]  # not written
    await rec.flush(urgent_only=True)  # still urgent: written at the next flush
    assert _subs(store, "dp-1") == [("a", "1", False)]


async def test_the_flusher_keeps_counters_for_its_status_pace() -> None:
    """The loop itself: a flush that an urgent change wakes (a NACK) writes that insight, not the counters other
    insights gathered meanwhile; those go at the status flush."""
    store = await _store("default")
    rec = InsightsRecorder(store, "a", interval=0.01, status_interval=3600, heartbeat=3600)
    await rec.start()
    try:
        for i in range(2):
            rec.on_stream_open(i, f"default.dp-{i}", Node(id=f"default.dp-{i}"))
        await wait_until(lambda: all((DATAPLANE_INSIGHT.name, "default", f"dp-{i}") in store._data for i in range(2)))
        _push(rec, 2)  # counters of both change
        rec.on_nack("default.dp-1", "type.googleapis.com/envoy.config.cluster.v3.Cluster", "3", "bad cluster")
        await wait_until(lambda: _total(store, "dp-1", "responsesRejected") == 1)
        assert _total(store, "dp-1") == 1  # the urgent insight's counters went along
        assert _total(store, "dp-0") == 0  # the others wait for the status flush (an hour away here)
    finally:
        await rec.stop()


async def test_the_flusher_writes_counters_on_its_status_pace() -> None:
    """Counters reach the store with no urgent change at all: the status flush."""
    store = await _store("default")
    rec = InsightsRecorder(store, "a", interval=0.01, status_interval=0.05, heartbeat=3600)
    await rec.start()
    try:
        rec.on_stream_open(1, "default.dp-1", Node(id="default.dp-1"))
        await wait_until(lambda: (DATAPLANE_INSIGHT.name, "default", "dp-1") in store._data)
        _push(rec, 2)
        await wait_until(lambda: _total(store, "dp-1") == 1)
    finally:
        await rec.stop()
