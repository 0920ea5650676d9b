"""The collection pacer: full collections only after the reconciler has been quiet (and not more often than
its minimum interval), never when nothing happened, always within the maximum interval; survivors are frozen
and every thaw_every-th collection unfreezes first; it switches the automatic full collections off while it
runs and restores the thresholds it found."""

from __future__ import annotations

import gc

import pytest

from controlplane.xds.gc_pacing import NEVER, YOUNG_THRESHOLD, CollectionPacer


class Clock:
    def __init__(self) -> None:
        self.activity = 0.0

    def __call__(self) -> float:
        return self.activity


def pacer(clock: Clock) -> CollectionPacer:
    p = CollectionPacer(clock, quiet=1.0, min_interval=10.0, max_interval=100.0)
    p._last_full = 0.0  # a full collection at t=0
    return p


def test_without_pushes_a_full_collection_waits_for_the_maximum_interval() -> None:
    clock = Clock()
    p = pacer(clock)
    assert not p.due(50.0)  # no pass since the last one: the minimum interval and quiet do not trigger it
    assert p.due(100.0)  # the API, insights and KDS make garbage too: collected every max_interval anyway


def test_a_full_collection_waits_for_a_quiet_reconciler_and_the_minimum_interval() -> None:
    clock = Clock()
    p = pacer(clock)
    clock.activity = 5.0
    assert not p.due(5.5)  # before the minimum interval
    clock.activity = 10.5
    assert not p.due(11.0)  # a pass ended 0.5 s ago: pushes may be going out
    assert p.due(11.6)
    try:
        p.collect()
        assert gc.get_freeze_count() > 0  # what survived is out of the next collections' way
    finally:
        gc.unfreeze()
    assert p.collections == 1
    assert not p.due(50.0)  # no pass since


def test_every_thaw_every_th_collection_unfreezes_first(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    monkeypatch.setattr(gc, "unfreeze", lambda: calls.append("unfreeze"))
    monkeypatch.setattr(gc, "freeze", lambda: calls.append("freeze"))
    monkeypatch.setattr(gc, "collect", lambda: calls.append("collect") or 0)
    p = CollectionPacer(lambda: 0.0, thaw_every=3)
    for _ in range(6):
        p.collect()
    assert calls == ["unfreeze", "collect", "freeze", "collect", "freeze", "collect", "freeze",
                     "unfreeze", "collect", "freeze", "collect", "freeze", "collect", "freeze"]


def test_a_never_quiet_control_plane_still_collects_within_the_maximum_interval() -> None:
    clock = Clock()
    p = pacer(clock)
    for t in range(1, 100):
        clock.activity = float(t)
        assert not p.due(t + 0.2)
    clock.activity = 100.0
    assert p.due(100.2)


async def test_start_turns_automatic_full_collections_off_and_stop_restores_them() -> None:
    before = gc.get_threshold()
    p = CollectionPacer(lambda: 0.0)
    await p.start()
    try:
        assert gc.get_threshold() == (max(before[0], YOUNG_THRESHOLD), before[1], NEVER)
    finally:
        await p.stop()
    assert gc.get_threshold() == before


def test_bad_intervals_are_refused() -> None:
    with pytest.raises(ValueError, match="min_interval"):
        CollectionPacer(lambda: 0.0, min_interval=10.0, max_interval=5.0)
    with pytest.raises(ValueError, match="thaw_every"):
        CollectionPacer(lambda: 0.0, thaw_every=0)
