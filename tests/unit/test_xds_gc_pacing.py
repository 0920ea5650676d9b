"""The collection pacer: the collector off while a push goes out and what the push left frozen after it
settles; full collections of what is not frozen only after the reconciler has been quiet (and not more often
than the minimum interval, never with a change pending), never when nothing happened, always within the
maximum interval; a collection that unfreezes everything first only once the heap grew by thaw_growth;
automatic full collections off while it runs, and the thresholds and on/off state it found back when it stops.
Driven by a fake clock: no sleeps, no timing."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from controlplane.xds.gc_pacing import NEVER, YOUNG_THRESHOLD, CollectionPacer


class Clock:
    """The test's time and the reconciler's state the pacer reads: its latest pass end and pending changes."""

    def __init__(self) -> None:
        self.now = 0.0
        self.activity = 0.0
        self.waiting = False

    def __call__(self) -> float:
        return self.now

    def last_activity(self) -> float:
        return self.activity

    def pending(self) -> bool:
        return self.waiting


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture(autouse=True)
def _collector_restored() -> Iterator[None]:
    threshold, enabled = gc.get_threshold(), gc.isenabled()
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)
    (gc.enable if enabled else gc.disable)()


def pacer(clock: Clock, **kw: float) -> CollectionPacer:
    # a full collection at t=0
    return CollectionPacer(clock.last_activity, pending=clock.pending, clock=clock, quiet=1.0, min_interval=10.0,
                           max_interval=100.0, settle=0.2, max_off=2.0, **kw)


async def started(clock: Clock, **kw: float) -> CollectionPacer:
    p = pacer(clock, **kw)
    await p.start()
    assert p._task is not None
    p._task.cancel()  # the test drives tick() itself
    return p


def test_without_pushes_a_full_collection_waits_for_the_maximum_interval(clock: Clock) -> None:
    p = pacer(clock)
    assert not p.due(50.0)  # no pass since the last one: the minimum interval and quiet do not trigger it
    assert p.due(100.0)  # the API, insights and KDS make garbage too: collected every max_interval anyway


def test_a_full_collection_waits_for_a_quiet_reconciler_the_minimum_interval_and_no_pending_change(
        clock: Clock) -> None:
    p = pacer(clock)
    clock.activity = 5.0
    assert not p.due(5.5)  # before the minimum interval
    clock.activity = 10.5
    assert not p.due(11.0)  # a pass ended 0.5 s ago: pushes may be going out
    clock.waiting = True
    assert not p.due(11.6)  # a change waits for the reconciler: it goes first
    clock.waiting = False
    assert p.due(11.6)
    clock.now = 11.6
    p.collect()
    assert gc.get_freeze_count() > 0  # what survived is out of the next collections' way
    assert p.collections == 1
    assert not p.due(50.0)  # no pass since


def test_a_never_quiet_control_plane_still_collects_within_the_maximum_interval(clock: Clock) -> None:
    p = pacer(clock)
    for t in range(1, 100):
        clock.activity = float(t)
        assert not p.due(t + 0.2)
    clock.activity = 100.0
    assert p.due(100.2)


async def test_a_push_runs_with_the_collector_off_and_its_survivors_frozen_once_it_settled(clock: Clock) -> None:
    p = await started(clock)
    try:
        clock.now = 1.0
        p.push_started()
        assert not gc.isenabled()
        survivors = [[i] for i in range(1000)]  # what a push leaves: new snapshots, encoded responses
        frozen_before = gc.get_freeze_count()
        clock.now = 1.5
        p.tick()
        assert not gc.isenabled()  # the pass has not ended yet (the reconciler's last pass ended at 0.0)
        clock.activity = 1.5  # the pass ended
        clock.now = 1.6
        p.tick()
        assert not gc.isenabled()  # not settled: streams are still sending
        clock.now = 1.8
        clock.waiting = True
        p.tick()
        assert not gc.isenabled()  # the next change is already waiting: its push follows with the collector off
        clock.waiting = False
        clock.now = 1.9
        p.push_started()  # that change's pass begins: still the same window
        clock.now = 2.5
        p.tick()
        assert not gc.isenabled()  # the previous pass ended long ago, but this one is still running
        clock.activity = 2.5
        clock.now = 2.8
        p.tick()
        assert gc.isenabled()
        assert gc.get_freeze_count() >= frozen_before + len(survivors)
        assert p.pushes_frozen == 1
    finally:
        await p.stop()


async def test_a_never_settling_push_turns_the_collector_back_on_after_max_off(clock: Clock) -> None:
    p = await started(clock)
    try:
        clock.now = 1.0
        p.push_started()
        for step in range(1, 20):
            clock.now = 1.0 + step * 0.1
            clock.activity = clock.now  # a pass ends every 100 ms
            p.push_started()  # and the next one starts: still the same window
            p.tick()
            assert not gc.isenabled()
        clock.now = 3.0
        p.tick()
        assert gc.isenabled()
        assert p.pushes_frozen == 1
    finally:
        await p.stop()


def test_push_started_does_nothing_before_start(clock: Clock) -> None:
    p = pacer(clock)
    p.push_started()
    assert gc.isenabled()


async def test_a_collection_unfreezes_first_only_once_the_heap_grew_by_thaw_growth(
        clock: Clock, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    heap = [1000]
    monkeypatch.setattr(gc, "unfreeze", lambda: calls.append("unfreeze"))
    monkeypatch.setattr(gc, "freeze", lambda: calls.append("freeze"))
    monkeypatch.setattr(gc, "collect", lambda: calls.append("collect") or 0)
    p = CollectionPacer(clock.last_activity, pending=clock.pending, clock=clock, heap_size=lambda: heap[0])
    p.collect()
    heap[0] = 1250  # a quarter more: not yet
    p.collect()
    assert calls == ["collect", "freeze", "collect", "freeze"]
    heap[0] = 1251
    clock.waiting = True
    p.collect()  # due, but a change is pending: no whole-heap scan now
    assert calls[-2:] == ["collect", "freeze"] and "unfreeze" not in calls
    clock.waiting = False
    p.collect()
    assert calls[-3:] == ["unfreeze", "collect", "freeze"]
    assert p.thaws == 1
    heap[0] = 1500  # measured from what that collection kept (1251): 1500 is less than a quarter more
    p.collect()
    assert calls[-2:] == ["collect", "freeze"] and p.thaws == 1
    heap[0] = 2000
    clock.waiting = True  # from now on a change is always pending
    clock.now = 10.0
    p.collect()
    clock.now = 129.0
    p.collect()
    assert p.thaws == 1  # put off while changes are pending...
    clock.now = 130.0  # max_interval (120 s) after it was first put off
    p.collect()
    assert p.thaws == 2  # ...but not for longer than max_interval


async def test_start_turns_automatic_full_collections_off_and_stop_restores_them(clock: Clock) -> None:
    before = gc.get_threshold()
    p = CollectionPacer(lambda: 0.0)
    await p.start()
    try:
        assert gc.get_threshold() == (max(before[0], YOUNG_THRESHOLD), before[1], NEVER)
        p.push_started()
        assert not gc.isenabled()
    finally:
        await p.stop()
    assert gc.get_threshold() == before
    assert gc.isenabled()  # stopped in the middle of a push: the collector is on again


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="min_interval"):
        CollectionPacer(lambda: 0.0, min_interval=10.0, max_interval=5.0)
    with pytest.raises(ValueError, match="max_off"):
        CollectionPacer(lambda: 0.0, settle=3.0, max_off=2.0)
    with pytest.raises(ValueError, match="thaw_growth"):
        CollectionPacer(lambda: 0.0, thaw_growth=0)
