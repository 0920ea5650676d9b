"""SnapshotCache: storage, wake-ups only on change, latest wins, many nodes, waiting across threads."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable

from controlplane.xds.cache import SnapshotCache
from controlplane.xds.resources import CLUSTER, ENDPOINT
from tests.unit.test_ads_support import cla, eds_cluster, snapshot, static_cluster


def snap(port: int = 9000):
    return snapshot(eds_cluster("a"), cla("a", port))


async def test_set_get_clear() -> None:
    cache = SnapshotCache()
    assert cache.get_snapshot("n1") is None and cache.generation("n1") == 0
    s = snap()
    assert cache.set_snapshot("n1", s) is True
    assert cache.get_snapshot("n1") is s
    assert cache.generation("n1") == 1
    assert list(cache.node_ids()) == ["n1"] and len(cache) == 1
    cache.clear("n1")
    assert cache.get_snapshot("n1") is None and len(cache) == 0
    cache.clear("never-set")


async def test_wakes_only_on_change() -> None:
    cache = SnapshotCache()
    calls: list[str] = []
    w1 = cache.watch("n1", lambda: calls.append("n1"))
    cache.watch("n2", lambda: calls.append("n2"))
    cache.set_snapshot("n1", snap())
    assert calls == ["n1"]
    same = snap()  # rebuilt with the same content: stored, nobody woken
    assert cache.set_snapshot("n1", same) is False
    assert cache.get_snapshot("n1") is same
    assert calls == ["n1"] and cache.generation("n1") == 1
    assert cache.set_snapshot("n1", snap(9001)) is True  # EDS changed
    assert calls == ["n1", "n1"] and cache.generation("n1") == 2
    w1.cancel()
    cache.set_snapshot("n1", snap(9002))
    assert calls == ["n1", "n1"]


async def test_wait_for_change_latest_wins() -> None:
    cache = SnapshotCache()
    cache.set_snapshot("n1", snap())
    gen = cache.generation("n1")
    waiter = asyncio.create_task(cache.wait_for_change("n1", gen))
    await asyncio.sleep(0)
    assert not waiter.done()
    for port in range(9001, 9011):  # ten changes before the waiter runs: one wake-up, the latest snapshot
        cache.set_snapshot("n1", snap(port))
    new_gen = await asyncio.wait_for(waiter, 1)
    assert new_gen == gen + 10
    latest = cache.get_snapshot("n1")
    assert latest is not None and latest.version(ENDPOINT) == snap(9010).version(ENDPOINT)
    # already newer than `since`: returns at once
    assert await asyncio.wait_for(cache.wait_for_change("n1", gen), 0.1) == new_gen
    # an identical snapshot does not end a wait
    waiter = asyncio.create_task(cache.wait_for_change("n1", new_gen))
    cache.set_snapshot("n1", snap(9010))
    await asyncio.sleep(0.05)
    assert not waiter.done()
    waiter.cancel()


async def test_set_from_another_thread_wakes_the_loop() -> None:
    cache = SnapshotCache()
    event = asyncio.Event()
    cache.watch("n1", event.set)
    thread = threading.Thread(target=cache.set_snapshot, args=("n1", snap()))
    thread.start()
    await asyncio.wait_for(event.wait(), 1)
    thread.join()
    assert cache.get_snapshot("n1") is not None


async def test_many_nodes_cheap() -> None:
    cache = SnapshotCache()
    shared = [static_cluster(f"c{i}", 9000 + i) for i in range(20)]  # serialised once, shared by every node
    woken: dict[str, int] = {}
    snaps = {}

    def waker(node: str) -> Callable[[], None]:
        def wake() -> None:
            woken[node] = woken.get(node, 0) + 1
        return wake

    for i in range(2000):
        node = f"mesh.dp-{i}"
        cache.watch(node, waker(node))
        snaps[node] = snapshot(*shared[: 1 + i % 20])
    start = time.perf_counter()
    for node, s in snaps.items():
        cache.set_snapshot(node, s)
    first = time.perf_counter() - start
    assert len(woken) == 2000
    start = time.perf_counter()
    for node, s in snaps.items():  # same content again: nobody is woken
        cache.set_snapshot(node, snapshot(*s.of_type(CLUSTER).values()))
    again = time.perf_counter() - start
    assert sum(woken.values()) == 2000
    cache.set_snapshot("mesh.dp-5", snapshot(*shared[:3]))  # only this node changes
    assert sum(woken.values()) == 2001 and woken["mesh.dp-5"] == 2
    assert first < 1.0 and again < 2.0, (first, again)
    for node in snaps:
        cache.clear(node)
    assert len(cache) == 0
